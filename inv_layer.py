"""One invertible layer: h = f(x @ W + b) with a square weight matrix W.

A layer can also hold the same layer of several runs at once (a pack, see inv_net.InvNet.stack):
W of shape (runs, units, units), b of (runs, units), activities of (runs, rows, units); every
formula below is then applied to each run's matrices, as one batched product.
"""
import copy

import numpy
import scipy.stats

import backend
import utils


def initial_weights(nb_units, seed=None, orthogonal_init=False):
    """The host (NumPy, float64) initial weights of a layer drawn from integer `seed`.

    Gaussian: RandomState(seed).randn(units, units) * sqrt(2 / (units + units));
    orthogonal: scipy.stats.ortho_group.rvs(units, random_state=RandomState(seed)).
    """
    generator = numpy.random.RandomState(seed)
    if orthogonal_init:
        return scipy.stats.ortho_group.rvs(nb_units, random_state=generator)
    return generator.randn(nb_units, nb_units) * numpy.sqrt(2.0 / (nb_units + nb_units))


def regularised(ortho_weighting):
    """Whether lambda is not zero: a number, or a pack's array of one lambda per run (a pack's
    runs are all regularised or none is, see inv_net.InvNet.stack)."""
    return not isinstance(ortho_weighting, (int, float)) or ortho_weighting != 0


def _residual_bound_on_host(residual, inverse_error, rhs, bound):
    """bound = residual * inverse_error**2 / rhs (all squared norms), on the host."""
    bound[...] = residual * inverse_error * inverse_error / rhs


_RESIDUAL_BOUND = backend.Fused(_residual_bound_on_host, "T residual, T inverse_error, T rhs",
                                "T bound", "bound = residual * inverse_error * inverse_error / rhs",
                                "residual_bound")


class KeptInverse:
    """An inverse X of a layer's W kept between training steps, and solves refined against it.

    Each `solve(W, y)` first brings X up to date for the current W by one Newton-Schulz step,
    X' = X + S X with S = I - X W (the same matrix as X + X (I - W X); W moves a little each
    step), solves z W = y by z = y X' and three refinements z <- z + (y - z W) X'. A
    refinement multiplies the residual y - z W on the right by I - X' W = S^2, so the
    result's residual is bounded by |y - z W| <= |r| |S|_F^2, r the residual before the last
    refinement. (I - W X is not the matrix that bounds it: S = X (I - W X) X^-1 can be
    cond(X) times larger.) `bound` (a 1-element array, read later) holds the bound squared
    over |y|^2; the solve is as exact as an LU solve when the bound is at rounding level
    (`acceptable`): an LU solve's relative residual is about 100 machine epsilons, the
    tolerance 128 (a refined solve's is about 3 once X is close; in a run's first steps,
    whose updates move W most, the bound can miss, and the caller redoes the step with LU
    solves).
    All work writes into arrays made here, so that a CUDA graph can replay it. For a pack,
    X holds one inverse per run and `bound` one value per run.
    """

    REFINEMENTS = 3

    def __init__(self, weight_matrix):
        xp = backend.array_module(weight_matrix)
        units, dtype = weight_matrix.shape[-1], weight_matrix.dtype
        self.runs = len(weight_matrix) if weight_matrix.ndim > 2 else None
        self.identity = xp.eye(units, dtype=dtype)
        self.inverse = xp.empty_like(weight_matrix)
        self.reset(weight_matrix)
        self.bound = xp.zeros(self.runs or 1, dtype=dtype)
        self.active = True  # False: solve by LU (step_runner.StepRunner's checked steps)
        self.tolerance = float((128 * numpy.finfo(dtype).eps) ** 2)

    def reset(self, weight_matrix):
        """X = inv(W) by an LU solve (after a failed solve, or W set from outside); NaN for a
        singular W, so that every solve fails its check (and LU reports the singularity); in a
        pack, run by run."""
        if self.runs is not None:
            for run in range(self.runs):
                self._reset_one(weight_matrix[run], self.inverse[run])
            return
        self._reset_one(weight_matrix, self.inverse)

    def _reset_one(self, weight_matrix, inverse):
        try:
            inverse[...] = backend.solve_right(weight_matrix, self.identity)
        except numpy.linalg.LinAlgError:
            inverse[...] = numpy.nan

    def solve(self, weight_matrix, y):
        """z with z W = y (z = y @ inv(W)), refined against X; see the class."""
        xp = backend.array_module(y)
        inverse = self.inverse
        inverse_error = backend.matmul(inverse, weight_matrix)
        xp.subtract(self.identity, inverse_error, out=inverse_error)  # S = I - X W
        inverse += backend.matmul(inverse_error, inverse)
        solution = backend.matmul(y, inverse)
        for _ in range(self.REFINEMENTS):
            residual = y - backend.matmul(solution, weight_matrix)
            solution += backend.matmul(residual, inverse)
        runs = self.runs is not None
        _RESIDUAL_BOUND(backend.sum_of_squares(residual, runs),
                        backend.sum_of_squares(inverse_error, runs),
                        backend.sum_of_squares(y, runs), self.bound)
        return solution

    def acceptable(self):
        """Whether the last solve's residual is at rounding level (reads the GPU: waits)."""
        return bool((self.bound <= self.tolerance).all())


class InvLayer:
    """An invertible square layer with leaky-ReLU (or linear) transfer.

    Forward: h = f(x @ W + b). Inverse: x = (f^-1(h) - b) @ inv(W), by an LU solve against
    the current W, so it is always exact; in GPU training, by a `KeptInverse` whose residual
    is checked (the step is redone with LU solves when it is not at rounding level).

    Its parameters by name (`PARAMETERS`: name -> the attribute that holds the array, and
    the letter that names it in a network's checkpoint): "weights" W and "biases" b. What
    handles parameters (stacking, views, state, files, directions, the optimiser) goes by
    these names.
    """

    PARAMETERS = {"weights": ("weight_matrix", "W"), "biases": ("biases", "b")}

    def __init__(self, nb_units, seed=None, orthogonal_init=False, linear=False):
        self.nb_units = nb_units
        self.seed = seed
        self.linear = linear
        self.weight_matrix = backend.to_device(initial_weights(nb_units, seed, orthogonal_init))
        self.biases = backend.to_device(numpy.zeros(nb_units))
        self.kept_inverse = None
        self.runs = None  # the number of runs of a pack, None for a single run

    @classmethod
    def stack(cls, layers):
        """The layer of a pack: the same layer of several runs (all of one width and transfer),
        each parameter stacked along a leading run axis (copies; no kept inverse)."""
        xp = backend.array_module(layers[0].weight_matrix)
        pack = copy.copy(layers[0])
        pack.seed = [layer.seed for layer in layers]
        for attribute, _ in cls.PARAMETERS.values():
            setattr(pack, attribute, xp.stack([getattr(layer, attribute) for layer in layers]))
        pack.kept_inverse, pack.runs = None, len(layers)
        return pack

    def run(self, index):
        """The layer of run `index` of a pack, whose parameters are views of the pack's arrays
        (what it computes and saves is that run's; it solves by LU)."""
        single = copy.copy(self)
        single.seed = self.seed[index]
        for attribute, _ in self.PARAMETERS.values():
            setattr(single, attribute, getattr(self, attribute)[index])
        single.kept_inverse, single.runs = None, None
        return single

    @staticmethod
    def _row_biases(biases):
        """b shaped to broadcast over an activity's rows: (units,) or (runs, 1, units)."""
        return biases if biases.ndim == 1 else biases[:, None, :]

    def update_inverse(self):
        """Make `inverse` exact for the current W: check that W can be inverted (raises
        numpy.linalg.LinAlgError for a singular W, on both backends) and reset a kept inverse."""
        xp = backend.array_module(self.weight_matrix)
        probe = xp.eye(1, self.nb_units, dtype=self.weight_matrix.dtype)
        backend.solve_right(self.weight_matrix, xp.broadcast_to(
            probe, self.weight_matrix.shape[:-2] + probe.shape))
        if self.kept_inverse is not None:
            self.kept_inverse.reset(self.weight_matrix)

    def keep_inverse(self, keep=True):
        """Solve against a `KeptInverse` from now on (keep=True), or by LU solves again."""
        self.kept_inverse = KeptInverse(self.weight_matrix) if keep else None

    def forward(self, x, columns=None):
        """h = f(x @ W + b), computed in place in the product's own array.

        `columns` (an int c) computes only the first c output units: f(x @ W[:, :c] + b[:c]).
        """
        weights, biases = self.weight_matrix, self.biases
        if columns is not None:
            weights, biases = weights[..., :columns], biases[..., :columns]
        return utils.add_biases_and_transfer(backend.matmul(x, weights), self._row_biases(biases),
                                             self.linear)

    def apply_inverse_weights(self, y):
        """y @ inv(W): an LU solve against the current W (never forming inv(W)), or a solve
        refined against the kept inverse."""
        if self.kept_inverse is not None and self.kept_inverse.active:
            return self.kept_inverse.solve(self.weight_matrix, y)
        return backend.solve_right(self.weight_matrix, y)

    def inverse(self, h):
        """x = (f^-1(h) - b) @ inv(W), so that inverse(forward(x)) == x."""
        return self.apply_inverse_weights(utils.inverse_transfer(h, self.linear)
                                          - self._row_biases(self.biases))

    def inverse_of_stepped(self, h, errors):
        """inverse(h - errors) = (f^-1(h - errors) - b) @ inv(W), TP's target below."""
        return self.apply_inverse_weights(utils.pre_inverse(h, errors,
                                                            self._row_biases(self.biases),
                                                            self.linear))

    def derivative_times(self, h, errors):
        """g(h) * errors: errors at this layer's output h made local to its pre-activation."""
        return utils.derivative_times(h, errors, self.linear)

    def scaled_inverse_difference(self, h, local_errors, scale):
        """(f^-1(h) - f^-1(h - scale * g(h) * local_errors)) / scale, see utils."""
        return utils.scaled_inverse_difference(h, local_errors, scale, self.linear)

    def orthogonality_gradient(self, scale=1.0):
        """scale * dR/dW = (4 * scale * O) @ W for R(W) = sum_{i != j} ((W @ W.T)[i, j])**2.

        O = W @ W.T with its diagonal set to zero; the scale is applied to O, not to the product.
        In a pack, `scale` may hold one value per run (an array of shape (runs, 1, 1)).
        """
        gram = backend.matmul(self.weight_matrix, self.weight_matrix.swapaxes(-1, -2))
        backend.zero_diagonal(gram)
        gram *= 4.0 * scale
        return backend.matmul(gram, self.weight_matrix)

    def directions(self, inputs, local_errors, ortho_weighting=0.0):
        """Update directions by parameter name from this layer's inputs x and d = g * e:
        {"weights": -grad_W, "biases": -grad_b}.

        grad_W = x.T @ d / n + lambda * dR/dW, grad_b = mean(d over the rows). The scalings
        are applied to the small factors (d, O) rather than to the (units, units) products.
        """
        weight_direction = backend.matmul(inputs.swapaxes(-1, -2),
                                          local_errors / -inputs.shape[-2])
        if regularised(ortho_weighting):
            weight_direction += self.orthogonality_gradient(-ortho_weighting)
        return {"weights": weight_direction, "biases": -local_errors.mean(axis=-2)}

    def state(self):
        """{name: array} of this layer's parameters (the arrays themselves), in PARAMETERS'
        order: {"weights": W, "biases": b}."""
        return {name: getattr(self, attribute)
                for name, (attribute, _) in self.PARAMETERS.items()}

    def set_state(self, state):
        """Set every parameter from host or device arrays of the shapes they have (copied);
        ValueError naming the parameters otherwise, with nothing changed."""
        wrong = [f"{name} of shape {state[name].shape}, not {getattr(self, attribute).shape}"
                 for name, (attribute, _) in self.PARAMETERS.items()
                 if state[name].shape != getattr(self, attribute).shape]
        if wrong:
            raise ValueError(f"{'; '.join(wrong)}: not those of this {self.nb_units}-unit "
                             f"layer")
        for name, (attribute, _) in self.PARAMETERS.items():
            setattr(self, attribute, backend.to_device(backend.to_host(state[name])))
        if self.kept_inverse is not None:
            self.kept_inverse.reset(self.weight_matrix)

    def save_params(self, prefix):
        """Write `prefix + name + ".npy"` of each parameter (weights.npy, biases.npy; host
        NumPy arrays)."""
        for name, array in self.state().items():
            numpy.save(prefix + name + ".npy", backend.to_host(array))

    def load_params(self, prefix):
        """Read the files of `save_params` (no pickles)."""
        try:
            self.set_state({name: numpy.load(prefix + name + ".npy", allow_pickle=False)
                            for name in self.PARAMETERS})
        except ValueError as error:
            files = " / ".join(f"{prefix}{name}.npy" for name in self.PARAMETERS)
            raise ValueError(f"{files}: {error}") from None
