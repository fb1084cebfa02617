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


class InvLayer:
    """An invertible square layer with leaky-ReLU (or linear) transfer.

    Forward: h = f(x @ W + b). Inverse: x = (f^-1(h) - b) @ inv(W), by an LU solve against
    the current W, so it is always exact.
    """

    def __init__(self, nb_units, seed=None, orthogonal_init=False, linear=False):
        self.nb_units = nb_units
        self.seed = seed
        self.linear = linear
        self.weight_matrix = backend.to_device(initial_weights(nb_units, seed, orthogonal_init))
        self.biases = backend.to_device(numpy.zeros(nb_units))

    def update_inverse(self):
        """Check that the current W can be inverted, so that `inverse` is exact for it.

        Raises numpy.linalg.LinAlgError (or CuPy's) for a singular W.
        """
        xp = backend.array_module(self.weight_matrix)
        probe = xp.eye(1, self.nb_units, dtype=self.weight_matrix.dtype)
        backend.solve_right(self.weight_matrix, probe)

    def forward(self, x, columns=None):
        """h = f(x @ W + b), computed in place in the product's own array.

        `columns` (an int c) computes only the first c output units: f(x @ W[:, :c] + b[:c]).
        """
        weights, biases = self.weight_matrix, self.biases
        if columns is not None:
            weights, biases = weights[:, :columns], biases[:columns]
        activity = x @ weights

        def add_biases_and_transfer(blocks):
            for block in blocks:
                block += biases
                utils.transfer(block, self.linear, out=block)
        backend.in_shares(backend.row_blocks(activity, fewest=8), add_biases_and_transfer)
        return activity

    def apply_inverse_weights(self, y):
        """y @ inv(W), by an LU solve against the current W (never forming inv(W))."""
        return backend.solve_right(self.weight_matrix, y)

    def inverse(self, h):
        """x = (f^-1(h) - b) @ inv(W), so that inverse(forward(x)) == x."""
        return self.apply_inverse_weights(utils.inverse_transfer(h, self.linear) - self.biases)

    def derivative(self, h):
        """g(h), the transfer derivative evaluated from this layer's output h."""
        return utils.transfer_derivative(h, self.linear)

    def scaled_inverse_difference(self, h, local_errors, scale):
        """(f^-1(h) - f^-1(h - scale * g(h) * local_errors)) / scale, see utils."""
        return utils.scaled_inverse_difference(h, local_errors, scale, self.linear)

    def orthogonality_gradient(self, scale=1.0):
        """scale * dR/dW = (4 * scale * O) @ W for R(W) = sum_{i != j} ((W @ W.T)[i, j])**2.

        O = W @ W.T with its diagonal set to zero; the scale is applied to O, not to the product.
        """
        xp = backend.array_module(self.weight_matrix)
        gram = self.weight_matrix @ self.weight_matrix.T
        xp.fill_diagonal(gram, 0.0)
        gram *= 4.0 * scale
        return gram @ self.weight_matrix

    def directions(self, inputs, local_errors, ortho_weighting=0.0):
        """Update directions (-grad_W, -grad_b) from this layer's inputs x and d = g * e.

        grad_W = x.T @ d / n + lambda * dR/dW, grad_b = mean(d, axis=0). The scalings are
        applied to the small factors (d, O) rather than to the (units, units) products.
        """
        weight_direction = inputs.T @ (local_errors / -len(inputs))
        if ortho_weighting:
            weight_direction += self.orthogonality_gradient(-ortho_weighting)
        return weight_direction, -local_errors.mean(axis=0)

    def save_params(self, prefix):
        """Write `prefix + "weights.npy"` and `prefix + "biases.npy"` (host NumPy arrays)."""
        numpy.save(prefix + "weights.npy", backend.to_host(self.weight_matrix))
        numpy.save(prefix + "biases.npy", backend.to_host(self.biases))

    def load_params(self, prefix):
        """Read the files of `save_params` (no pickles) and refactorise W."""
        weights = numpy.load(prefix + "weights.npy", allow_pickle=False)
        biases = numpy.load(prefix + "biases.npy", allow_pickle=False)
        if weights.shape != (self.nb_units, self.nb_units) or biases.shape != (self.nb_units,):
            raise ValueError(f"{prefix}weights.npy / biases.npy hold shapes {weights.shape} / "
                             f"{biases.shape}, not those of a {self.nb_units}-unit layer")
        self.weight_matrix = backend.to_device(weights)
        self.biases = backend.to_device(biases)
