"""One invertible layer: h = f(x @ W + b) with a square weight matrix W.

A layer can also hold the same layer of several runs at once (a pack, see inv_net.InvNet.stack):
W of shape (runs, units, units), b of (runs, units), activities of (runs, rows, units); every
formula below is then applied to each run's matrices, as one batched product.
"""

import numpy
import scipy.stats

from gaitprop.arrays import backend
from gaitprop.arrays import products
from gaitprop.model import functions as utils
from gaitprop.model.parameters import LayerParameters
from gaitprop.model.published import PublishedLayer, check_transfer


def drawn_matrices(nb_units, seed=None, orthogonal_init=False, count=1):
    """`count` host (NumPy, float64) matrices drawn one after another from integer `seed`.

    Gaussian: RandomState(seed).randn(units, units) * sqrt(2 / (units + units)) each;
    orthogonal: scipy.stats.ortho_group.rvs(units, random_state=RandomState(seed)) each.
    The first is a layer's W; a learned inverse drawn at random is the second (as the
    authors' branch draws it).
    """
    generator = numpy.random.RandomState(seed)
    if orthogonal_init:
        return [scipy.stats.ortho_group.rvs(nb_units, random_state=generator)
                for _ in range(count)]
    return [generator.randn(nb_units, nb_units) * numpy.sqrt(2.0 / (nb_units + nb_units))
            for _ in range(count)]


def initial_weights(nb_units, seed=None, orthogonal_init=False):
    """The host initial weights W of a layer: the first of `drawn_matrices`."""
    return drawn_matrices(nb_units, seed, orthogonal_init)[0]


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
    All work writes into arrays made here, so that a CUDA graph can replay it. It serves a
    pack's layer (step_runner.StepRunner): W of shape (runs, units, units), X one inverse per
    run and `bound` one value per run.
    """

    REFINEMENTS = 3

    def __init__(self, weight_matrix):
        xp = backend.array_module(weight_matrix)
        units, dtype = weight_matrix.shape[-1], weight_matrix.dtype
        self.identity = xp.eye(units, dtype=dtype)
        self.inverse = xp.empty_like(weight_matrix)
        self.reset(weight_matrix)
        self.bound = xp.zeros(len(weight_matrix), dtype=dtype)
        self.active = True  # False: solve by LU (step_runner.StepRunner's checked steps)
        self.tolerance = float((128 * numpy.finfo(dtype).eps) ** 2)

    def reset(self, weight_matrix):
        """X = inv(W) by an LU solve (after a failed solve, or W set from outside); NaN for a
        singular W, so that every solve fails its check (and LU reports the singularity); run
        by run."""
        for run_weights, run_inverse in zip(weight_matrix, self.inverse):
            try:
                run_inverse[...] = backend.solve_right(run_weights, self.identity)
            except numpy.linalg.LinAlgError:
                run_inverse[...] = numpy.nan

    def solve(self, weight_matrix, y):
        """z with z W = y (z = y @ inv(W)), refined against X; see the class."""
        xp = backend.array_module(y)
        inverse = self.inverse
        inverse_error = products.matmul(inverse, weight_matrix)
        xp.subtract(self.identity, inverse_error, out=inverse_error)  # S = I - X W
        inverse += products.matmul(inverse_error, inverse)
        solution = products.matmul(y, inverse)
        for _ in range(self.REFINEMENTS):
            residual = y - products.matmul(solution, weight_matrix)
            solution += products.matmul(residual, inverse)
        _RESIDUAL_BOUND(backend.sum_of_squares(residual), backend.sum_of_squares(inverse_error),
                        backend.sum_of_squares(y), self.bound)
        return solution

    def acceptable(self):
        """Whether the last solve's residual is at rounding level (reads the GPU: waits)."""
        return bool((self.bound <= self.tolerance).all())


class InvLayer(LayerParameters, PublishedLayer):
    """An invertible square layer with leaky-ReLU (or linear) transfer.

    Forward: h = f(x @ W + b). Inverse: x = (f^-1(h) - b) @ inv(W), by an LU solve against
    the current W, so it is always exact; in GPU training, by a `KeptInverse` whose residual
    is checked (the step is redone with LU solves when it is not at rounding level).
    A layer that learns its inverse (`learns_inverse`) has backward weights V and biases c
    instead, and its inverse is `backward(h) = (f^-1(h) - c) @ V` (a product, no solve),
    exact when V = inv(W) and c = b (how V and c start, unless `exact_start` is False: then
    V is the second matrix drawn from the layer's seed, c = 0).

    Its parameters by name (`parameter_names`: name -> the attribute that holds the array,
    and the letter that names it in a network's checkpoint): "weights" W and "biases" b
    (`PARAMETERS`), and for a learned inverse "backward_weights" V and "backward_biases" c
    (`LEARNED_INVERSE`). What handles parameters (stacking, views, state, files, directions,
    the optimiser) goes by these names.

    The published signature: the transfer keywords take the published leaky-ReLU trio of
    `utils` or nothing (published.check_transfer; leaky ReLU either way, the identity with
    `linear`); `adaptive` says how `update_weights` and `update_biases` step
    (published.PublishedLayer).
    """

    PARAMETERS = {"weights": ("weight_matrix", "W"), "biases": ("biases", "b")}
    TRANSIENT = ("kept_inverse", "layer_moments")
    LEARNED_INVERSE = {"backward_weights": ("backward_weights", "V"),
                       "backward_biases": ("backward_biases", "c")}

    def __init__(self, nb_units, seed=1, transfer_func=None, transfer_derivative_func=None,
                 transfer_inverse_func=None, orthogonal_init=False, adaptive=True, linear=False,
                 learns_inverse=False, exact_start=True):
        check_transfer(transfer_func=transfer_func,
                       transfer_derivative_func=transfer_derivative_func,
                       transfer_inverse_func=transfer_inverse_func)
        self.adaptive, self.layer_moments = adaptive, None
        self.nb_units = nb_units
        self.seed = seed
        self.linear = linear
        self.learns_inverse = learns_inverse
        self.parameter_names = dict(self.PARAMETERS)
        drawn = drawn_matrices(nb_units, seed, orthogonal_init, 2 if learns_inverse else 1)
        self.weight_matrix = backend.to_device(drawn[0])
        self.biases = backend.to_device(numpy.zeros(nb_units))
        if learns_inverse:
            self.parameter_names.update(self.LEARNED_INVERSE)
            self.backward_weights = backend.to_device(numpy.linalg.inv(drawn[0]) if exact_start
                                                      else drawn[1])
            self.backward_biases = backend.to_device(numpy.zeros(nb_units))
        self.kept_inverse = None
        self.runs = None  # the number of runs of a pack, None for a single run

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
        self.parameters_set()

    def parameters_set(self):
        """New parameters from outside (`set_state`, `update_inverse`): a kept inverse is
        made exact again."""
        if self.kept_inverse is not None:
            self.kept_inverse.reset(self.weight_matrix)

    def keep_inverse(self, keep=True):
        """Solve against a `KeptInverse` from now on (keep=True), or by LU solves again (a
        learned inverse solves nothing: it keeps none)."""
        keep = keep and not self.learns_inverse
        self.kept_inverse = KeptInverse(self.weight_matrix) if keep else None

    def forward(self, x, columns=None):
        """h = f(x @ W + b), computed in place in the product's own array.

        `columns` (an int c) computes only the first c output units: f(x @ W[:, :c] + b[:c]).
        """
        weights, biases = self.weight_matrix, self.biases
        if columns is not None:
            weights, biases = weights[..., :columns], biases[..., :columns]
        return utils.add_biases_and_transfer(products.matmul(x, weights), self._row_biases(biases),
                                             self.linear)

    def apply_inverse_weights(self, y):
        """y @ inv(W): an LU solve against the current W (never forming inv(W)), or a solve
        refined against the kept inverse; y @ V for a learned inverse."""
        if self.learns_inverse:
            return products.matmul(y, self.backward_weights)
        if self.kept_inverse is not None and self.kept_inverse.active:
            return self.kept_inverse.solve(self.weight_matrix, y)
        return backend.solve_right(self.weight_matrix, y)

    def _inverse_biases(self):
        """The biases the inverse subtracts, shaped for rows: b, or c for a learned inverse."""
        return self._row_biases(self.backward_biases if self.learns_inverse else self.biases)

    def inverse(self, h):
        """x = (f^-1(h) - b) @ inv(W), so that inverse(forward(x)) == x; for a learned
        inverse backward(h) = (f^-1(h) - c) @ V."""
        return self.apply_inverse_weights(utils.inverse_transfer(h, self.linear)
                                          - self._inverse_biases())

    def inverse_of_stepped(self, h, errors):
        """inverse(h - errors) = (f^-1(h - errors) - b) @ inv(W), TP's target below (c and V
        for a learned inverse)."""
        return self.apply_inverse_weights(utils.pre_inverse(h, errors, self._inverse_biases(),
                                                            self.linear))

    def inverse_directions(self, inputs, outputs):
        """Directions of V and c down the reconstruction loss of a learned inverse,
        L = mean_n 1/2 |backward(h_n) - x_n|^2 with h = forward(x) (`outputs`, x `inputs`):
        with u = f^-1(h) - c and e = u @ V - x,
        {"backward_weights": -u.T @ e / n, "backward_biases": mean(e) @ V.T}
        (the mean of e_n V^T over the rows, taken before the product)."""
        pre_activation = utils.inverse_transfer(outputs, self.linear) - self._inverse_biases()
        errors = products.matmul(pre_activation, self.backward_weights) - inputs
        weight_direction = products.matmul(pre_activation.swapaxes(-1, -2),
                                           errors / -inputs.shape[-2])
        bias_direction = products.matmul(errors.mean(axis=-2, keepdims=True),
                                         self.backward_weights.swapaxes(-1, -2))[..., 0, :]
        return {"backward_weights": weight_direction, "backward_biases": bias_direction}

    def difference_inverse_directions(self, noise):
        """Directions of V and c down the difference reconstruction loss of a learned inverse
        (Meulemans et al. 2020) for corruptions s (`noise`) of its input x:
        L = mean_n 1/2 |backward(forward(x + s)) - backward(forward(x)) - s|^2. The transfer is
        inverted exactly, so f^-1(forward(x + s)) - f^-1(forward(x)) = s @ W =: D, c cancels
        and, with e = D @ V - s, {"backward_weights": -D.T @ e / n, "backward_biases": 0}:
        V learns inv(W) from the directions of the noise, whatever x is. (Meulemans et al.
        also divide L by sigma^2: a constant scale, which the optimiser's step ignores.)"""
        xp = backend.array_module(noise)
        difference = products.matmul(noise, self.weight_matrix)
        errors = products.matmul(difference, self.backward_weights) - noise
        weight_direction = products.matmul(difference.swapaxes(-1, -2),
                                           errors / -noise.shape[-2])
        return {"backward_weights": weight_direction,
                "backward_biases": xp.zeros_like(self.backward_biases)}

    def inverse_quality(self, inputs, outputs):
        """(|backward(h) - x| / |x| on the batch, |V - inv(W)|_F / |inv(W)|_F) of a learned
        inverse (Frobenius norms; inv(W) by an LU solve), as Python floats."""
        xp = backend.array_module(inputs)
        reconstruction = float(xp.linalg.norm(self.inverse(outputs) - inputs)
                               / xp.linalg.norm(inputs))
        exact = backend.solve_right(self.weight_matrix,
                                    xp.eye(self.nb_units, dtype=self.weight_matrix.dtype))
        distance = float(xp.linalg.norm(self.backward_weights - exact) / xp.linalg.norm(exact))
        return reconstruction, distance

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
        gram = products.matmul(self.weight_matrix, self.weight_matrix.swapaxes(-1, -2))
        backend.zero_diagonal(gram)
        gram *= 4.0 * scale
        return products.matmul(gram, self.weight_matrix)

    def directions(self, inputs, local_errors, ortho_weighting=0.0):
        """Update directions by parameter name from this layer's inputs x and d = g * e:
        {"weights": -grad_W, "biases": -grad_b}.

        grad_W = x.T @ d / n + lambda * dR/dW, grad_b = mean(d over the rows). The scalings
        are applied to the small factors (d, O) rather than to the (units, units) products.
        """
        weight_direction = products.matmul(inputs.swapaxes(-1, -2),
                                           local_errors / -inputs.shape[-2])
        if regularised(ortho_weighting):
            weight_direction += self.orthogonality_gradient(-ortho_weighting)
        return {"weights": weight_direction, "biases": -local_errors.mean(axis=-2)}

