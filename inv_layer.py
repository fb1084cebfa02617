"""One invertible layer: h = f(x @ W + b) with a square weight matrix W."""
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


def _residual_bound_on_host(residual, inverse_error, rhs, bound):
    """bound = residual * inverse_error**2 / rhs (all squared norms), on the host."""
    bound[...] = residual * inverse_error * inverse_error / rhs


_RESIDUAL_BOUND = backend.Fused(_residual_bound_on_host, "T residual, T inverse_error, T rhs",
                                "T bound", "bound = residual * inverse_error * inverse_error / rhs",
                                "residual_bound")


class KeptInverse:
    """An inverse X of a layer's W kept between training steps, and solves refined against it.

    Each `solve(W, y)` first brings X up to date for the current W by one Newton-Schulz step,
    X' = X + X R with R = I - W X (then I - W X' = R^2: W moves a little each step), solves
    z W = y by z = y X' and three refinements z <- z + (y - z W) X', and bounds the relative
    residual of the result: |y - z W| <= |r| |R|_F^2, r the residual before the last
    refinement. `bound` (a 1-element array, read later) holds that bound squared over |y|^2; the
    solve is as exact as an LU solve when the bound is at rounding level (`acceptable`): an
    LU solve's relative residual is about 100 machine epsilons, the tolerance 128 (a
    refined solve's is about 3 once X is close; in a run's first steps, whose updates move
    W most, the bound can miss, and the caller redoes the step with LU solves).
    All work writes into arrays made here, so that a CUDA graph can replay it.
    """

    REFINEMENTS = 3

    def __init__(self, weight_matrix):
        xp = backend.array_module(weight_matrix)
        units, dtype = weight_matrix.shape[0], weight_matrix.dtype
        self.identity = xp.eye(units, dtype=dtype)
        self.inverse = xp.empty_like(self.identity)
        self.reset(weight_matrix)
        self.bound = xp.zeros(1, dtype=dtype)
        self.active = True  # False: solve by LU (training.StepRunner's checked steps)
        self.tolerance = float((128 * numpy.finfo(dtype).eps) ** 2)

    def reset(self, weight_matrix):
        """X = inv(W) by an LU solve (after a failed solve, or W set from outside); NaN for a
        singular W, so that every solve fails its check (and LU reports the singularity)."""
        try:
            self.inverse[...] = backend.solve_right(weight_matrix, self.identity)
        except numpy.linalg.LinAlgError:
            self.inverse[...] = numpy.nan

    def solve(self, weight_matrix, y):
        """z with z W = y (z = y @ inv(W)), refined against X; see the class."""
        xp = backend.array_module(y)
        inverse = self.inverse
        inverse_error = backend.matmul(weight_matrix, inverse)
        xp.subtract(self.identity, inverse_error, out=inverse_error)
        inverse += backend.matmul(inverse, inverse_error)
        solution = backend.matmul(y, inverse)
        for _ in range(self.REFINEMENTS):
            residual = y - backend.matmul(solution, weight_matrix)
            solution += backend.matmul(residual, inverse)
        _RESIDUAL_BOUND(backend.sum_of_squares(residual),
                        backend.sum_of_squares(inverse_error), backend.sum_of_squares(y),
                        self.bound)
        return solution

    def acceptable(self):
        """Whether the last solve's residual is at rounding level (reads the GPU: waits)."""
        return bool(self.bound <= self.tolerance)


class InvLayer:
    """An invertible square layer with leaky-ReLU (or linear) transfer.

    Forward: h = f(x @ W + b). Inverse: x = (f^-1(h) - b) @ inv(W), by an LU solve against
    the current W, so it is always exact; in GPU training, by a `KeptInverse` whose residual
    is checked (the step is redone with LU solves when it is not at rounding level).
    """

    def __init__(self, nb_units, seed=None, orthogonal_init=False, linear=False):
        self.nb_units = nb_units
        self.seed = seed
        self.linear = linear
        self.weight_matrix = backend.to_device(initial_weights(nb_units, seed, orthogonal_init))
        self.biases = backend.to_device(numpy.zeros(nb_units))
        self.kept_inverse = None

    def update_inverse(self):
        """Make `inverse` exact for the current W: check that W can be inverted (raises
        numpy.linalg.LinAlgError for a singular W, on both backends) and reset a kept inverse."""
        xp = backend.array_module(self.weight_matrix)
        probe = xp.eye(1, self.nb_units, dtype=self.weight_matrix.dtype)
        backend.solve_right(self.weight_matrix, probe)
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
            weights, biases = weights[:, :columns], biases[:columns]
        return utils.add_biases_and_transfer(backend.matmul(x, weights), biases, self.linear)

    def apply_inverse_weights(self, y):
        """y @ inv(W): an LU solve against the current W (never forming inv(W)), or a solve
        refined against the kept inverse."""
        if self.kept_inverse is not None and self.kept_inverse.active:
            return self.kept_inverse.solve(self.weight_matrix, y)
        return backend.solve_right(self.weight_matrix, y)

    def inverse(self, h):
        """x = (f^-1(h) - b) @ inv(W), so that inverse(forward(x)) == x."""
        return self.apply_inverse_weights(utils.inverse_transfer(h, self.linear) - self.biases)

    def inverse_of_stepped(self, h, errors):
        """inverse(h - errors) = (f^-1(h - errors) - b) @ inv(W), TP's target below."""
        return self.apply_inverse_weights(utils.pre_inverse(h, errors, self.biases, self.linear))

    def derivative_times(self, h, errors):
        """g(h) * errors: errors at this layer's output h made local to its pre-activation."""
        return utils.derivative_times(h, errors, self.linear)

    def scaled_inverse_difference(self, h, local_errors, scale):
        """(f^-1(h) - f^-1(h - scale * g(h) * local_errors)) / scale, see utils."""
        return utils.scaled_inverse_difference(h, local_errors, scale, self.linear)

    def orthogonality_gradient(self, scale=1.0):
        """scale * dR/dW = (4 * scale * O) @ W for R(W) = sum_{i != j} ((W @ W.T)[i, j])**2.

        O = W @ W.T with its diagonal set to zero; the scale is applied to O, not to the product.
        """
        gram = backend.matmul(self.weight_matrix, self.weight_matrix.T)
        backend.zero_diagonal(gram)
        gram *= 4.0 * scale
        return backend.matmul(gram, self.weight_matrix)

    def directions(self, inputs, local_errors, ortho_weighting=0.0):
        """Update directions (-grad_W, -grad_b) from this layer's inputs x and d = g * e.

        grad_W = x.T @ d / n + lambda * dR/dW, grad_b = mean(d, axis=0). The scalings are
        applied to the small factors (d, O) rather than to the (units, units) products.
        """
        weight_direction = backend.matmul(inputs.T, local_errors / -len(inputs))
        if ortho_weighting:
            weight_direction += self.orthogonality_gradient(-ortho_weighting)
        return weight_direction, -local_errors.mean(axis=0)

    def state(self):
        """{"weights": W, "biases": b}: this layer's parameters (the arrays themselves)."""
        return {"weights": self.weight_matrix, "biases": self.biases}

    def set_state(self, state):
        """Set W and b from host or device arrays of the right shapes (copied)."""
        weights, biases = state["weights"], state["biases"]
        if weights.shape != (self.nb_units, self.nb_units) or biases.shape != (self.nb_units,):
            raise ValueError(f"weights / biases of shapes {weights.shape} / {biases.shape} are "
                             f"not those of a {self.nb_units}-unit layer")
        self.weight_matrix = backend.to_device(backend.to_host(weights))
        self.biases = backend.to_device(backend.to_host(biases))
        if self.kept_inverse is not None:
            self.kept_inverse.reset(self.weight_matrix)

    def save_params(self, prefix):
        """Write `prefix + "weights.npy"` and `prefix + "biases.npy"` (host NumPy arrays)."""
        for name, array in self.state().items():
            numpy.save(prefix + name + ".npy", backend.to_host(array))

    def load_params(self, prefix):
        """Read the files of `save_params` (no pickles)."""
        try:
            self.set_state({name: numpy.load(prefix + name + ".npy", allow_pickle=False)
                            for name in ("weights", "biases")})
        except ValueError as error:
            raise ValueError(f"{prefix}weights.npy / biases.npy: {error}") from None
