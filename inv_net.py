"""Invertible multilayer networks, their three learning rules and their optimiser.

A network is a stack of square `InvLayer`s; layer l reads the first `width_l` units of
the activity h_l below it (all of them in a square network; the rest are "auxiliary").
BP, GAIT and TP differ only in how an error is passed from a layer's output down to its
input; the per-layer update they share is `_directions`.

`InvNet.stack` makes a pack: several runs of one network shape trained as one, every array
with a leading run axis (activities (runs, rows, units)); the formulas are the same.
"""
import copy
import os

import numpy

import backend
import run_folder
from inv_layer import InvLayer, regularised
from utils import NB_CLASSES


def _moment_step_on_host(u, learning_rate, p, m, v, scratch):
    """The update of one block of rows, in place, with two scratch arrays of its shape."""
    first, second = scratch[0], scratch[1]
    m *= 0.9
    numpy.multiply(u, 0.1, out=first)
    m += first
    v *= 0.99
    numpy.multiply(u, u, out=first)
    first *= 0.01
    v += first
    numpy.sqrt(v, out=first)
    first += 1e-8
    numpy.multiply(m, learning_rate, out=second)
    second /= first
    p += second


_MOMENT_UPDATE = ("m = m * (T)0.9 + u * (T)0.1; v = v * (T)0.99 + u * u * (T)0.01; "
                  "p = p + m * lr / (sqrt(v) + (T)1e-8)")
# On a GPU: one kernel per parameter array. The guarded kernel updates nothing once a step
# of the guard's window has failed its checks (guard[1] >= 0): see step_runner.StepRunner.
_MOMENT_STEP = backend.Fused(None, "T u, T lr", "T p, T m, T v", _MOMENT_UPDATE, "moment_step")
_GUARDED_MOMENT_STEP = backend.Fused(None, "T u, T lr, raw int64 guard", "T p, T m, T v",
                                     f"if (guard[1] < 0) {{ {_MOMENT_UPDATE}; }}",
                                     "guarded_moment_step")


class MomentOptimizer:
    """Adam-like steps without bias correction, one pair of moments per parameter array,
    both keyed by the parameter's name in the network (W0, b0, W1, ...).

    m = 0.9 m + 0.1 u;  v = 0.99 v + 0.01 u**2;  p = p + lr * m / (1e-8 + sqrt(v)).
    In place: on the host block by block of rows (`backend.block_rows`), so that the
    several passes of each block run in cache; on a GPU one kernel per array. Both are
    bit-identical to the formula written as one line.
    """

    def __init__(self, parameters):
        self.first_moments = {name: backend.array_module(p).zeros_like(p)
                              for name, p in parameters.items()}
        self.second_moments = {name: backend.array_module(p).zeros_like(p)
                               for name, p in parameters.items()}

    def step(self, parameters, directions, learning_rates, guard=None):
        """Apply one step to every parameter array ({name: array}), along the direction of
        the same name and with the learning rate of that name (`learning_rates`), in place.

        Host: blocks shared among threads (`backend.in_shares`), each block's passes in that
        thread's own scratch. `guard` (see step_runner.StepRunner): skip the step if the
        guard's window has failed. A learning rate is a number, or for a pack's arrays (a
        leading run axis) one rate per run (an array of shape (runs, 1, 1)): each run's arrays
        then take a step of their own with their rate, as a single run's.
        """
        first = next(iter(parameters.values()))
        xp = backend.array_module(first)
        arrays = [(parameters[name], directions[name], self.first_moments[name],
                   self.second_moments[name], learning_rates[name]) for name in parameters]
        if xp is not numpy:
            for p, u, m, v, rate in arrays:
                rates = (rate.reshape((-1,) + (1,) * (p.ndim - 1)) if numpy.ndim(rate) > 0
                         else p.dtype.type(rate))
                if guard is None:
                    _MOMENT_STEP(u, rates, p, m, v)
                else:
                    _GUARDED_MOMENT_STEP(u, rates, guard, p, m, v)
            return
        if guard is not None and guard[1] >= 0:
            return
        arrays = [(p[run], u[run], m[run], v[run], run_rate)
                  if numpy.ndim(rate) > 0 else (p, u, m, v, rate)
                  for p, u, m, v, rate in arrays
                  for run, run_rate in enumerate(numpy.ravel(rate))]
        blocks = [block + (rate,) for p, u, m, v, rate in arrays
                  for block in zip(*map(backend.row_blocks, (p, u, m, v)))]

        def step_blocks(share):
            largest = max(block[0].size for block in share)
            scratch = numpy.empty((2, largest), dtype=first.dtype)
            for p, u, m, v, rate in share:
                _moment_step_on_host(u, rate, p, m, v,
                                     scratch[:, :p.size].reshape((2,) + p.shape))

        backend.in_shares(blocks, step_blocks)

    @classmethod
    def stack(cls, optimizers, parameters):
        """The optimiser of a pack from its runs' optimisers (None: a run before its first
        step, whose moments are zero), for the pack's stacked `parameters`."""
        pack = cls(parameters)
        for run, optimizer in enumerate(optimizers):
            if optimizer is not None:
                for stacked, moments in ((pack.first_moments, optimizer.first_moments),
                                         (pack.second_moments, optimizer.second_moments)):
                    for name, moment in moments.items():
                        stacked[name][run] = moment
        return pack

    def run(self, index):
        """The optimiser of run `index` of a pack: views of the pack's moments."""
        single = copy.copy(self)
        single.first_moments = {name: m[index] for name, m in self.first_moments.items()}
        single.second_moments = {name: v[index] for name, v in self.second_moments.items()}
        return single

    def state(self):
        """{"mW0": ..., "vW0": ..., "mb0": ...}: the moments of each parameter, m or v before
        its name (the arrays themselves)."""
        state = {}
        for name in self.first_moments:
            state["m" + name], state["v" + name] = (self.first_moments[name],
                                                    self.second_moments[name])
        return state

    def set_state(self, state):
        """Copy moments named as in `state()` (host or device arrays) into this optimiser, each
        checked against its parameter's shape (ValueError naming it otherwise). Checkpoints
        of earlier versions named the moments by position (m0, v0, m1, ... in the order of
        the parameters W0, b0, W1, ...): those names are read too."""
        moments = {}
        for position, name in enumerate(self.first_moments):
            for letter, own in (("m", self.first_moments), ("v", self.second_moments)):
                stored = state.get(letter + name, state.get(f"{letter}{position}"))
                if stored is None or stored.shape != own[name].shape:
                    found = "missing" if stored is None else f"of shape {stored.shape}"
                    raise ValueError(f"the moment {letter}{name} is {found}, not of the "
                                     f"shape {own[name].shape} of {name}")
                moments[letter, name] = stored
        for (letter, name), stored in moments.items():
            own = self.first_moments if letter == "m" else self.second_moments
            own[name] = backend.to_device(backend.to_host(stored))


def output_targets(output, one_hot_labels):
    """The full-width output target: one-hot labels in the first 10 units, the output elsewhere."""
    targets = output.copy()
    targets[..., :one_hot_labels.shape[-1]] = one_hot_labels
    return targets


class InvNet:
    """Layers of widths `widths[1:]` on an input of width `widths[0]`, seeds given per layer.

    `learn_inverses`: the layers whose inverses the rules use (all but the first) learn them
    (InvLayer.learns_inverse), starting exact or, if not `exact_start`, as drawn.
    """

    def __init__(self, widths, seeds, orthogonal_init=False, linear=False, learn_inverses=False,
                 exact_start=True):
        for below, width in zip(widths, widths[1:]):
            if width > below:
                raise ValueError(f"a layer of {width} units cannot read an activity of "
                                 f"{below} units: widths {widths} must not increase")
        self.widths = list(widths)
        self.linear = linear
        self.learn_inverses = learn_inverses
        self.layers = [InvLayer(width, seed=seed, orthogonal_init=orthogonal_init, linear=linear,
                                learns_inverse=learn_inverses and index > 0,
                                exact_start=exact_start)
                       for index, (width, seed) in enumerate(zip(widths[1:], seeds))]
        self.optimizer = None
        self.runs = None  # the number of runs of a pack (`stack`), None for a single run

    @classmethod
    def stack(cls, nets):
        """A pack: the runs `nets` (of one network shape and transfer) as one network whose
        arrays (weights, biases, moments) are theirs stacked along a leading run axis. Each
        product of a step is then one batched product; run k's results are what net k alone
        would compute (bit for bit on NumPy). The arrays are copies."""
        shapes = {(tuple(net.widths), net.linear, net.learn_inverses) for net in nets}
        if len(shapes) > 1:
            raise ValueError(f"the runs of a pack must share widths, transfer and whether they "
                             f"learn inverses, not {shapes}")
        pack = copy.copy(nets[0])
        pack.layers = [InvLayer.stack(layers) for layers in zip(*(net.layers for net in nets))]
        pack.runs = len(nets)
        pack.optimizer = None
        if any(net.optimizer is not None for net in nets):
            pack.optimizer = MomentOptimizer.stack([net.optimizer for net in nets],
                                                   pack.parameters())
        return pack

    def run(self, index):
        """Run `index` of a pack as a network of its own whose arrays are views of the pack's
        (evaluating, saving or checkpointing it reads that run's state)."""
        single = copy.copy(self)
        single.layers = [layer.run(index) for layer in self.layers]
        single.optimizer = None if self.optimizer is None else self.optimizer.run(index)
        single.runs = None
        return single

    def select(self, indices):
        """A pack of the runs `indices` of this pack (copies), e.g. without a diverged run."""
        return InvNet.stack([self.run(index) for index in indices])

    def _inputs(self, index, activity):
        """x_l: the first width_l units of h_l, the part that layer `index` reads."""
        return activity[..., :self.layers[index].nb_units]

    def forward_pass(self, x):
        """[h_0, h_1, ..., h_L] with h_0 = x and h_{l+1} = layer_l.forward(x_l)."""
        activities = [x]
        for index, layer in enumerate(self.layers):
            activities.append(layer.forward(self._inputs(index, activities[-1])))
        return activities

    def class_outputs(self, x, nb_classes=NB_CLASSES):
        """The first `nb_classes` units of h_L, computing only those columns of the top layer."""
        activity = x
        for index, layer in enumerate(self.layers):
            top = index == len(self.layers) - 1
            activity = layer.forward(self._inputs(index, activity), nb_classes if top else None)
        return activity

    @staticmethod
    def _widen(part, activity):
        """`part` on the units a layer reads, padded with zeros to the width of `activity`."""
        if part.shape[-1] == activity.shape[-1]:
            return part
        xp = backend.array_module(activity)
        full = xp.zeros_like(activity)
        full[..., :part.shape[-1]] = part
        return full

    def _directions(self, forward, targets, ortho_weighting, error_below):
        """Per-layer update directions shared by the three rules, from the top down: a list
        with a dict per layer, {parameter name: direction} (InvLayer.directions).

        e_L = h_L - t. For layer l: d = g(h_{l+1}) * e_{l+1}; grad_W = x_l.T @ d / n
        (+ lambda dR/dW); grad_b = mean(d); e_l = error_below(l, x_l, h_{l+1}, e_{l+1}, d)
        on the units layer l reads, zero on the auxiliary units. The regulariser's
        gradients depend on the weights alone: on a GPU they are computed on a second
        stream while the errors are passed down, and added at the end. In a pack,
        `ortho_weighting` may hold one lambda per run (an array of shape (runs, 1, 1)).
        """
        nb_layers = len(self.layers)
        directions = [None] * nb_layers
        with backend.Branch(enabled=regularised(ortho_weighting)) as regularising:
            regularisers = [layer.orthogonality_gradient(-ortho_weighting)
                            for layer in self.layers] if regularised(ortho_weighting) else []
        errors = forward[-1] - targets
        for index in reversed(range(nb_layers)):
            layer = self.layers[index]
            inputs, outputs = self._inputs(index, forward[index]), forward[index + 1]
            local_errors = layer.derivative_times(outputs, errors)
            directions[index] = layer.directions(inputs, local_errors)
            if index:
                errors = self._widen(error_below(index, inputs, outputs, errors, local_errors),
                                     forward[index])
        regularising.join()
        for layer_directions, regulariser in zip(directions, regularisers):
            layer_directions["weights"] += regulariser
        return directions

    def get_backprop_updates(self, forward, targets, ortho_weighting=0.0):
        """BP: e_l = d @ W_l.T, the gradient of 0.5 * sum((h_L - t)**2) / n."""
        def error_below(index, inputs, outputs, errors, local_errors):
            return backend.matmul(local_errors,
                                  self.layers[index].weight_matrix.swapaxes(-1, -2))
        return self._directions(forward, targets, ortho_weighting, error_below)

    def get_gait_updates(self, forward, targets, ortho_weighting=0.0, gamma=0.001):
        """GAIT, computed exactly: e_l = E_l = (phi(h_{l+1}, delta) / gamma**(k+1)) @ inv(W_l).

        E_{l+1} = (h_{l+1} - t_{l+1}) / gamma**k with k = L - 1 - l layers above layer l,
        delta = gamma**(k+1) * g(h_{l+1})**2 * E_{l+1}; without zero crossings this is
        E_l = (g * E_{l+1}) @ inv(W_l). The target is t_l = x_l - gamma**(k+1) * E_l.
        """
        nb_layers = len(self.layers)

        def error_below(index, inputs, outputs, errors, local_errors):
            layer = self.layers[index]
            step = layer.scaled_inverse_difference(outputs, local_errors,
                                                   gamma ** (nb_layers - index))
            return layer.apply_inverse_weights(step)
        return self._directions(forward, targets, ortho_weighting, error_below)

    def get_tp_updates(self, forward, targets, ortho_weighting=0.0):
        """TP: t_l = inverse_l(t_{l+1}), so e_l = x_l - inverse_l(h_{l+1} - e_{l+1})."""
        def error_below(index, inputs, outputs, errors, local_errors):
            return inputs - self.layers[index].inverse_of_stepped(outputs, errors)
        return self._directions(forward, targets, ortho_weighting, error_below)

    def parameters(self):
        """{name: array} of every layer's parameters, the arrays the optimiser updates in
        place: W0, b0, W1, b1, V1, c1, ... (the letter of InvLayer.parameter_names, then the
        layer)."""
        return {letter + str(index): getattr(layer, attribute)
                for index, layer in enumerate(self.layers)
                for attribute, letter in layer.parameter_names.values()}

    def named(self, directions):
        """A rule's directions (a dict per layer, keyed like InvLayer.parameter_names) keyed
        as `parameters()`: {"W0": ..., "b0": ..., "W1": ...}."""
        return {layer.parameter_names[name][1] + str(index): direction
                for index, (layer, layer_directions) in enumerate(zip(self.layers, directions))
                for name, direction in layer_directions.items()}

    def add_inverse_directions(self, forward, directions):
        """Add to a rule's directions (a dict per layer) the directions of each learned
        inverse down its reconstruction loss (InvLayer.inverse_directions), from the forward
        pass `forward` made before the update; in place."""
        for index, layer in enumerate(self.layers):
            if layer.learns_inverse:
                directions[index].update(layer.inverse_directions(
                    self._inputs(index, forward[index]), forward[index + 1]))

    def inverse_quality(self, forward):
        """Per learned inverse, in layer order: (reconstruction error, distance to the exact
        inverse) on the batch of `forward` (InvLayer.inverse_quality); a single run's."""
        return [layer.inverse_quality(self._inputs(index, forward[index]), forward[index + 1])
                for index, layer in enumerate(self.layers) if layer.learns_inverse]

    def update_parameters(self, directions, learning_rate, guard=None,
                          inverse_learning_rate=None):
        """One optimiser step (MomentOptimizer) along a rule's directions (a dict per layer),
        W and b with `learning_rate`, V and c with `inverse_learning_rate` (None: the same);
        `guard`: skip it if the guard's window has failed (step_runner.StepRunner). In a pack,
        a learning rate may hold one rate per run (an array of shape (runs, 1, 1))."""
        if self.optimizer is None:
            self.optimizer = MomentOptimizer(self.parameters())
        inverse_rate = learning_rate if inverse_learning_rate is None else inverse_learning_rate
        rates = {letter + str(index): inverse_rate if name in InvLayer.LEARNED_INVERSE
                 else learning_rate
                 for index, layer in enumerate(self.layers)
                 for name, (_, letter) in layer.parameter_names.items()}
        self.optimizer.step(self.parameters(), self.named(directions), rates, guard)

    def update_inverse_model(self):
        """Make every inverse exact for the current weights: check that each W can be
        inverted (numpy.linalg.LinAlgError if not) and reset the kept inverses."""
        for layer in self.layers:
            layer.update_inverse()

    def keep_inverses(self, keep=True):
        """Solve against kept inverses (`inv_layer.KeptInverse`) in the layers the rules invert
        (all but the first), or by LU solves again (keep=False)."""
        for layer in self.layers[1:]:
            layer.keep_inverse(keep)

    def state(self):
        """The arrays that define the network and its optimiser, by checkpoint name: the
        `parameters()` (W0, b0, W1, ...) and, after the first step, their moments (mW0, vW0,
        ...); the arrays themselves, on the backend."""
        state = dict(self.parameters())
        if self.optimizer is not None:
            state.update(self.optimizer.state())
        return state

    def set_state(self, state):
        """Copy arrays named as in `state()` (host or device) into the network, each checked
        against the shape it replaces (ValueError); moments present make the optimiser
        (MomentOptimizer.set_state also reads an earlier version's names), absent ones
        leave it unmade."""
        for index, layer in enumerate(self.layers):
            layer.set_state({name: state[letter + str(index)]
                             for name, (_, letter) in layer.parameter_names.items()})
        self.optimizer = None
        first = next(iter(self.parameters()))
        if "m" + first in state or "m0" in state:
            self.optimizer = MomentOptimizer(self.parameters())
            self.optimizer.set_state(state)

    def parameter_files(self):
        """{file name: array} of every layer's parameters (the arrays themselves):
        0Lweights.npy, 0Lbiases.npy, 1Lweights.npy, ... as published, and a learned inverse's
        1Lbackward_weights.npy, 1Lbackward_biases.npy, ..."""
        return {run_folder.parameter_file(index, name): array
                for index, layer in enumerate(self.layers)
                for name, array in layer.state().items()}

    def save_params(self, folder):
        """Write the `parameter_files()` into `folder`."""
        for index, layer in enumerate(self.layers):
            layer.save_params(os.path.join(folder, run_folder.parameter_prefix(index)))

    def load_params(self, folder):
        """Read the files of `save_params` from `folder`."""
        for index, layer in enumerate(self.layers):
            layer.load_params(os.path.join(folder, run_folder.parameter_prefix(index)))


class TowerInvNet(InvNet):
    """Layers of widths net_structure[1:] on inputs of width net_structure[0]; layer k has
    seed start_seed + k."""

    def __init__(self, net_structure, start_seed=None, orthogonal_init=False, linear=False,
                 learn_inverses=False, exact_start=True):
        nb_layers = len(net_structure) - 1
        seeds = [None if start_seed is None else start_seed + k for k in range(nb_layers)]
        super().__init__(net_structure, seeds, orthogonal_init, linear, learn_inverses,
                         exact_start)


class SquareInvNet(InvNet):
    """`nb_hidden_layers` hidden layers and an output layer, all `nb_units` wide.

    Hidden layer k has seed start_seed + k; the output layer reuses the seed of the last
    hidden layer (start_seed when there is none), as published.
    """

    def __init__(self, nb_units, nb_hidden_layers, start_seed=None, orthogonal_init=False,
                 linear=False, learn_inverses=False, exact_start=True):
        offsets = list(range(nb_hidden_layers)) + [max(nb_hidden_layers - 1, 0)]
        seeds = [None if start_seed is None else start_seed + k for k in offsets]
        super().__init__([nb_units] * (nb_hidden_layers + 2), seeds, orthogonal_init, linear,
                         learn_inverses, exact_start)
