"""The rest of the published scripts' Python API (SPEC section 9), beside the package's own
names: what the authors' run.py, and notebooks written like it, call.

- `utils`'s functions: the leaky-ReLU trio `leaky_relu`, `leaky_relu_derivative`,
  `leaky_relu_inverse`; `indices_to_onehot`; `performance(net, x, one_hot_targets)` ->
  (accuracy, loss); `progress`; and the array module `xp` with `is_cupy` (the backend in
  use, `select_published_backend`).
- `check_transfer`: a layer computes leaky ReLU (or the identity, `linear`) only, so its
  transfer keywords take the published trio above, identified by identity, or nothing;
  anything else is refused (ValueError), never ignored.
- `PublishedLayer` and `PublishedNet`: the published methods of `InvLayer` and of the
  networks that the package's own names do not cover (`__call__`, `update_weights`,
  `update_biases`, `inverse_matrix`; `inverse_pass`, `ortho_gradients`, `net_structure`).
"""
from typing import Any

import numpy

from gaitprop.arrays import backend
from gaitprop.model import functions
from gaitprop.model.optimizer import MomentOptimizer

# xp and is_cupy come from the module's __getattr__ (ruff cannot see them: F822)
__all__ = ["leaky_relu", "leaky_relu_derivative", "leaky_relu_inverse",  # noqa: F822
           "indices_to_onehot", "performance", "progress", "xp", "is_cupy"]


def __getattr__(name):
    """`xp` (the array module of the backend in use: NumPy or CuPy) and `is_cupy` (whether it
    is CuPy), read when asked for, as the published `utils` had them."""
    if name == "xp":
        return backend.xp()
    if name == "is_cupy":
        return backend.xp() is not numpy
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def select_published_backend():
    """Choose the backend as the published modules did when imported: CuPy when it imports
    and sees a GPU, NumPy otherwise (float64). The checkout's top-level modules (inv_layer,
    inv_net, utils) call it."""
    backend.select("auto")


# ----------------------------------------------------------------------------- utils

def leaky_relu(data):
    """f(a) = a for a >= 0, 0.1 a otherwise, as a new array (the published transfer_func)."""
    return functions.transfer(data)


def leaky_relu_derivative(data):
    """1 where data >= 0, 0.1 where data < 0, as a new float array (the published
    transfer_derivative_func; a pre-activation and its output have the same sign)."""
    xp = backend.array_module(data)
    return xp.where(data >= 0, 1.0, functions.SLOPE)


def leaky_relu_inverse(data):
    """f^-1(h) = h for h >= 0, 10 h otherwise, as a new array (the published
    transfer_inverse_func)."""
    return functions.inverse_transfer(data)


TRANSFER = {"transfer_func": leaky_relu, "transfer_derivative_func": leaky_relu_derivative,
            "transfer_inverse_func": leaky_relu_inverse}


def check_transfer(**given):
    """Refuse transfer keywords (`TRANSFER`'s names; None: not given) other than the published
    leaky-ReLU trio: ValueError naming what is supported."""
    wrong = [f"{name}={function!r}" for name, function in given.items()
             if function is not None and function is not TRANSFER[name]]
    if wrong:
        raise ValueError(
            f"{', '.join(wrong)}: a layer of this package computes leaky ReLU (slope 0.1) or, "
            f"with linear=True, the identity, nothing else. Give transfer_func=leaky_relu, "
            f"transfer_derivative_func=leaky_relu_derivative and "
            f"transfer_inverse_func=leaky_relu_inverse from utils (the published trio), or "
            f"leave them out (leaky ReLU), or give linear=True for linear layers")


def indices_to_onehot(data, nb_categories=functions.NB_CLASSES):
    """Rows of `nb_categories` with a 1 at each label (host NumPy float64, as published)."""
    return functions.one_hot(numpy.asarray(data), nb_categories)


def performance(net, input_data, target_data):
    """(accuracy, loss) of `net` on `input_data` against one-hot `target_data` (backend arrays):
    `functions.evaluate` with the labels argmax(target_data). The accuracy is the published
    one; the loss is the true squared error of the 10 class outputs, summed over the outputs
    and averaged over the samples (the published formula was wrong: docs/differences.md)."""
    xp = backend.array_module(target_data)
    return functions.evaluate(net, input_data, xp.argmax(target_data, axis=1))


def progress(x, y):
    """Rewrite the current terminal line with "x Percent Complete: y acc (training)"."""
    print(f"\r{x} Percent Complete: {y} acc (training)", end="", flush=True)


# ----------------------------------------------------------------------------- layers

class PublishedLayer:
    """The published InvLayer's methods beyond the package's own (set by the layer: its
    `adaptive` and `layer_moments`, None until `update_weights` or `update_biases` takes an
    adaptive step).

    `update_weights(direction, learning_rate)` and `update_biases` take one step of one
    array: with `adaptive`, of the optimiser of SPEC section 5 with moments of the layer's
    own (`layer_moments`, apart from a network's optimiser, `NetParameters.step`); without,
    the published plain step W += learning_rate * direction.
    """

    transfer_func = staticmethod(leaky_relu)
    transfer_derivative_func = staticmethod(leaky_relu_derivative)
    transfer_inverse_func = staticmethod(leaky_relu_inverse)
    first_moment_factor, second_moment_factor = 0.9, 0.99  # the optimiser's, as published
    adaptive: bool
    layer_moments: MomentOptimizer | None
    parameter_names: dict[str, tuple[str, str]]
    learns_inverse: bool
    nb_units: int
    weight_matrix: Any
    backward_weights: Any
    forward: Any  # the layer's forward(x)

    def __call__(self, data):
        """forward(data)."""
        return self.forward(data)

    def _update(self, name, direction, learning_rate):
        """One step of the parameter `name` along `direction`, in place (see the class)."""
        array = getattr(self, self.parameter_names[name][0])
        if not self.adaptive:
            array += learning_rate * direction
            return
        if self.layer_moments is None:
            self.layer_moments = MomentOptimizer({key: getattr(self, attribute) for key, (
                attribute, _) in self.parameter_names.items()})
        self.layer_moments.step({name: array}, {name: direction}, {name: learning_rate})

    def update_weights(self, direction, learning_rate):
        """One step of W along `direction` (see the class)."""
        self._update("weights", direction, learning_rate)

    def update_biases(self, direction, learning_rate):
        """One step of b along `direction` (see the class)."""
        self._update("biases", direction, learning_rate)

    @property
    def inverse_matrix(self):
        """inv(W) of the current W, by an LU solve, so exact as `inverse` is (the published
        layer kept the inverse of W as it was at its last `update_inverse()`); V for a
        learned inverse."""
        if self.learns_inverse:
            return self.backward_weights
        xp = backend.array_module(self.weight_matrix)
        return backend.solve_right(self.weight_matrix,
                                   xp.eye(self.nb_units, dtype=self.weight_matrix.dtype))


class PublishedNet:
    """The published networks' methods beyond the package's own (set by the network: its
    `layers` and `widths`)."""

    layers: Any
    widths: list[int]

    @property
    def net_structure(self):
        """The widths [input, layer 0, layer 1, ...] (the published TowerInvNet's name)."""
        return self.widths

    def inverse_pass(self, data, forward=None):
        """[x_0, x_1, ..., x_L = data]: `data` taken down through every layer's inverse, in the
        order of a forward pass. A layer narrower than the activity below it gives only the
        units it reads: the others (auxiliary) are those of the forward pass `forward` (as
        the published TowerInvNet.inverse_pass(data, forward) took them); ValueError without
        one."""
        activities = [data]
        for index in reversed(range(len(self.layers))):
            below = self.layers[index].inverse(activities[-1])
            if below.shape[-1] < self.widths[index]:
                if forward is None:
                    raise ValueError(f"layer {index} reads {below.shape[-1]} of the "
                                     f"{self.widths[index]} units below it: give the forward "
                                     f"pass, inverse_pass(data, forward), for the others")
                xp = backend.array_module(below)
                below = xp.concatenate([below, forward[index][..., below.shape[-1]:]],
                                       axis=-1)
            activities.append(below)
        return activities[::-1]

    def ortho_gradients(self, ortho_weighting, layer_index):
        """ortho_weighting * dR/dW of layer `layer_index`, R(W) = sum_{i != j} ((W W^T)_ij)^2
        (the gradient the published rules added to grad_W; InvLayer.orthogonality_gradient)."""
        return self.layers[layer_index].orthogonality_gradient(ortho_weighting)
