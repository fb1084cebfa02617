"""InvLayer (one invertible layer), the transfer functions of utils it uses, and the inverse
a queued step keeps of its weights (KeptInverse)."""
import numpy as np
import pytest
import scipy.stats

from gaitprop.arrays import backend
from gaitprop.model import net as inv_net
from gaitprop.model import functions as utils
from helpers import by_layer
from gaitprop.model.layer import InvLayer, KeptInverse


def gaussian_weights(units, seed):
    np.random.seed(seed)
    return np.random.randn(units, units) * np.sqrt(2.0 / (2 * units))


def orthogonal_weights(units, seed):
    return scipy.stats.ortho_group.rvs(units, random_state=np.random.RandomState(seed))


def off_diagonal_gram_penalty(w):
    """R(W) = sum_{i != j} ((W W^T)_{ij})^2."""
    gram = w @ w.T
    return np.sum(gram ** 2) - np.sum(np.diag(gram) ** 2)


# ----------------------------------------------------------------------------- initialisation

@pytest.mark.parametrize("units, seed", [(5, 0), (17, 3), (784, 1)])
def test_gaussian_initialisation_is_the_legacy_generator(units, seed):
    layer = InvLayer(units, seed=seed)
    np.testing.assert_array_equal(layer.weight_matrix, gaussian_weights(units, seed))
    np.testing.assert_array_equal(layer.biases, np.zeros(units))
    assert layer.weight_matrix.dtype == np.float64 and layer.biases.shape == (units,)
    # the scale is sqrt(1/units): the sample variance is close to 1/units
    assert abs(np.var(layer.weight_matrix) * units - 1.0) < 0.3


@pytest.mark.parametrize("units, seed", [(6, 0), (40, 7)])
def test_orthogonal_initialisation_is_scipy_ortho_group(units, seed):
    layer = InvLayer(units, seed=seed, orthogonal_init=True)
    np.testing.assert_array_equal(layer.weight_matrix, orthogonal_weights(units, seed))
    np.testing.assert_array_equal(layer.biases, np.zeros(units))
    np.testing.assert_allclose(layer.weight_matrix @ layer.weight_matrix.T, np.eye(units),
                               rtol=0, atol=1e-12)


def test_different_seeds_give_different_weights():
    assert not np.array_equal(InvLayer(8, seed=1).weight_matrix, InvLayer(8, seed=2).weight_matrix)
    np.testing.assert_array_equal(InvLayer(8, seed=4).weight_matrix, gaussian_weights(8, 4))


# ----------------------------------------------------------------------------- forward / inverse

@pytest.mark.parametrize("linear", [False, True])
@pytest.mark.parametrize("orthogonal", [False, True])
def test_inverse_of_forward_is_identity(linear, orthogonal):
    rng = np.random.RandomState(5)
    layer = InvLayer(30, seed=2, orthogonal_init=orthogonal, linear=linear)
    layer.biases = rng.randn(30) * 0.3
    x = rng.randn(11, 30)
    a = x @ layer.weight_matrix + layer.biases
    expected = a if linear else np.where(a >= 0, a, 0.1 * a)
    h = layer.forward(x)
    np.testing.assert_allclose(h, expected, rtol=1e-14, atol=1e-14)
    if not linear:
        assert (h < 0).any() and (h > 0).any()
    np.testing.assert_allclose(layer.inverse(h), x, rtol=0, atol=1e-10)
    # the inverse is the stated formula, with an explicit matrix inverse
    finv = h if linear else np.where(h >= 0, h, 10.0 * h)
    np.testing.assert_allclose(layer.inverse(h), (finv - layer.biases) @ np.linalg.inv(
        layer.weight_matrix), rtol=0, atol=1e-10)


def test_inverse_exact_after_optimizer_step_in_place():
    net = inv_net.SquareInvNet(12, 1, start_seed=4)
    rng = np.random.RandomState(0)
    x = rng.randn(6, 12)
    for layer in net.layers:  # factorise the initial weights first
        np.testing.assert_allclose(layer.inverse(layer.forward(x)), x, rtol=0, atol=1e-10)
    before = [layer.weight_matrix.copy() for layer in net.layers]
    directions = [rng.randn(12, 12) for _ in net.layers]
    net.step(by_layer(directions, [rng.randn(12) for _ in net.layers]), 0.2)
    for layer, old in zip(net.layers, before):
        assert np.max(np.abs(layer.weight_matrix - old)) > 0.1  # really changed, in place
        np.testing.assert_allclose(layer.inverse(layer.forward(x)), x, rtol=0, atol=1e-10)


def test_inverse_exact_after_assigning_weight_matrix():
    rng = np.random.RandomState(1)
    layer = InvLayer(10, seed=0)
    x = rng.randn(4, 10)
    np.testing.assert_allclose(layer.inverse(layer.forward(x)), x, rtol=0, atol=1e-10)
    layer.weight_matrix = rng.randn(10, 10)
    np.testing.assert_allclose(layer.inverse(layer.forward(x)), x, rtol=0, atol=1e-10)
    layer.update_inverse()
    np.testing.assert_allclose(layer.inverse(layer.forward(x)), x, rtol=0, atol=1e-10)


# ----------------------------------------------------------------------------- regulariser

def test_orthogonality_gradient_matches_finite_differences():
    rng = np.random.RandomState(3)
    layer = InvLayer(6, seed=1)
    layer.weight_matrix = rng.randn(6, 6)
    w = layer.weight_matrix.copy()
    eps = 1e-6
    numeric = np.zeros_like(w)
    for i in range(6):
        for j in range(6):
            plus, minus = w.copy(), w.copy()
            plus[i, j] += eps
            minus[i, j] -= eps
            numeric[i, j] = (off_diagonal_gram_penalty(plus)
                             - off_diagonal_gram_penalty(minus)) / (2 * eps)
    analytic = layer.orthogonality_gradient()
    np.testing.assert_allclose(analytic, numeric, rtol=1e-6, atol=1e-7)
    assert np.linalg.norm(analytic) > 1.0
    np.testing.assert_array_equal(layer.weight_matrix, w)  # W itself is untouched


def test_orthogonality_gradient_vanishes_on_orthogonal_weights():
    layer = InvLayer(9, seed=2, orthogonal_init=True)
    assert np.max(np.abs(layer.orthogonality_gradient())) < 1e-13


def test_directions_with_and_without_regulariser():
    rng = np.random.RandomState(4)
    layer = InvLayer(5, seed=3)
    x, d = rng.randn(7, 5), rng.randn(7, 5)
    dir_w, dir_b = layer.directions(x, d).values()
    np.testing.assert_allclose(dir_w, -(x.T @ d) / 7, rtol=1e-13)
    np.testing.assert_allclose(dir_b, -d.mean(axis=0), rtol=1e-13)
    w = layer.weight_matrix
    gram = w @ w.T - np.diag(np.diag(w @ w.T))
    reg_w, reg_b = layer.directions(x, d, ortho_weighting=0.3).values()
    np.testing.assert_allclose(reg_w, dir_w - 0.3 * 4 * gram @ w, rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(reg_b, dir_b, rtol=1e-13)
    assert np.linalg.norm(reg_w - dir_w) > 1e-3


# ----------------------------------------------------------------------------- save / load

def test_save_load_round_trip(tmp_path):
    rng = np.random.RandomState(6)
    source = InvLayer(7, seed=1)
    source.weight_matrix = rng.randn(7, 7)
    source.biases = rng.randn(7)
    source.save_params(str(tmp_path / "0L"))
    np.testing.assert_array_equal(np.load(tmp_path / "0Lweights.npy"), source.weight_matrix)
    np.testing.assert_array_equal(np.load(tmp_path / "0Lbiases.npy"), source.biases)

    target = InvLayer(7, seed=2)
    x = rng.randn(3, 7)
    target.inverse(target.forward(x))  # factorise the old weights first
    target.load_params(str(tmp_path / "0L"))
    np.testing.assert_array_equal(target.weight_matrix, source.weight_matrix)
    np.testing.assert_array_equal(target.biases, source.biases)
    np.testing.assert_allclose(target.inverse(target.forward(x)), x, rtol=0, atol=1e-10)


def test_load_refuses_wrong_shape(tmp_path):
    InvLayer(6, seed=1).save_params(str(tmp_path / "x"))
    layer = InvLayer(5, seed=1)
    original = layer.weight_matrix.copy()
    with pytest.raises(ValueError):
        layer.load_params(str(tmp_path / "x"))
    np.testing.assert_array_equal(layer.weight_matrix, original)


def test_load_refuses_wrong_bias_shape(tmp_path):
    np.save(tmp_path / "yweights.npy", np.eye(4))
    np.save(tmp_path / "ybiases.npy", np.zeros(5))
    with pytest.raises(ValueError):
        InvLayer(4, seed=1).load_params(str(tmp_path / "y"))


# ----------------------------------------------------------------------------- transfer functions

def test_transfer_values():
    a = np.array([-2.0, -0.5, 0.0, 0.25, 3.0])
    np.testing.assert_array_equal(utils.transfer(a), [-0.2, -0.05, 0.0, 0.25, 3.0])
    np.testing.assert_array_equal(utils.transfer(a, linear=True), a)
    h = np.array([-0.2, -0.05, 0.0, 0.25, 3.0])
    np.testing.assert_allclose(utils.inverse_transfer(h), [-2.0, -0.5, 0.0, 0.25, 3.0],
                               rtol=1e-15)
    np.testing.assert_array_equal(utils.inverse_transfer(h, linear=True), h)
    np.testing.assert_array_equal(utils.transfer_derivative(np.array([-1e-9, 0.0, 2.0, -4.0])),
                                  [0.1, 1.0, 1.0, 0.1])
    assert np.all(np.asarray(utils.transfer_derivative(h, linear=True)) == 1.0)
    x = np.linspace(-3, 3, 61)
    np.testing.assert_allclose(utils.inverse_transfer(utils.transfer(x)), x, rtol=1e-15,
                               atol=1e-15)


def direct_phi_over_scale(h, local_errors, scale):
    """(f^-1(h) - f^-1(h - delta)) / scale by plain subtraction, delta = scale g(h) e."""
    g = np.where(h >= 0, 1.0, 0.1)
    delta = scale * g * local_errors
    finv = lambda v: np.where(v >= 0, v, 10.0 * v)  # noqa: E731
    return (finv(h) - finv(h - delta)) / scale, h - delta


def test_scaled_inverse_difference_without_crossing_is_local_errors():
    h = np.array([[0.5, -0.3, 2.0, -1.0]])
    e = np.array([[0.7, -0.2, -1.5, 0.4]])
    value = utils.scaled_inverse_difference(h, e, 1e-3)
    np.testing.assert_array_equal(value, e)
    direct, stepped = direct_phi_over_scale(h, e, 1e-3)
    assert np.all((stepped >= 0) == (h >= 0))
    np.testing.assert_allclose(value, direct, rtol=1e-9)
    np.testing.assert_array_equal(utils.scaled_inverse_difference(h, e, 0.5, linear=True), e)


def test_scaled_inverse_difference_on_zero_crossings():
    scale = 1e-3
    # unit 0: h = 2e-4 >= 0, delta = 1e-3, h - delta = -8e-4: phi = 2e-4 + 8e-3 = 8.2e-3.
    # unit 1: h = -2e-4 < 0, delta = 1e-3 * 0.1 * (-5) = -5e-4, h - delta = 3e-4:
    #         phi = -2e-3 - 3e-4 = -2.3e-3.
    # unit 2: no crossing (h = 0.4), result = local error 1.
    h = np.array([[2e-4, -2e-4, 0.4]])
    e = np.array([[1.0, -5.0, 1.0]])
    value = utils.scaled_inverse_difference(h, e, scale)
    direct, stepped = direct_phi_over_scale(h, e, scale)
    assert stepped[0, 0] < 0 <= h[0, 0] and h[0, 1] < 0 <= stepped[0, 1]
    np.testing.assert_allclose(value, direct, rtol=1e-10)
    np.testing.assert_allclose(value, [[8.2, -2.3, 1.0]], rtol=1e-10)
    # the crossing values differ from the local errors: the piecewise value is really used
    assert abs(value[0, 0] - e[0, 0]) > 1 and abs(value[0, 1] - 0.1 * e[0, 1]) > 1


def test_scaled_inverse_difference_random_crossings():
    rng = np.random.RandomState(8)
    h = rng.randn(50, 40) * 1e-2
    e = rng.randn(50, 40)
    value = utils.scaled_inverse_difference(h, e, 1e-2)
    direct, stepped = direct_phi_over_scale(h, e, 1e-2)
    crossing = (h >= 0) != (stepped >= 0)
    assert 20 < crossing.sum() < 2000
    np.testing.assert_allclose(value, direct, rtol=1e-9, atol=1e-12)
    np.testing.assert_array_equal(value[~crossing], e[~crossing])


# ----------------------------------------------------------------------------- kept inverses

def test_kept_inverse_solves_as_exactly_as_lu_after_a_step():
    generator = np.random.RandomState(3)
    weights = np.linalg.qr(generator.randn(784, 784))[0][None]  # a pack of one run
    kept = KeptInverse(weights)
    moved = weights + 1e-4 * np.sign(generator.randn(1, 784, 784)) / 28  # a step's move
    rhs = generator.randn(1, 60, 784)
    solution = kept.solve(moved, rhs)
    exact = np.linalg.solve(moved[0].T, rhs[0].T).T[None]
    assert kept.acceptable()
    assert np.linalg.norm(solution - exact) <= 1e-13 * np.linalg.norm(exact)
    assert np.linalg.norm(rhs - solution @ moved) <= np.linalg.norm(rhs - exact @ moved)


@pytest.mark.parametrize("change", ["large move", "singular"])
def test_kept_inverse_reports_a_solve_it_cannot_make_exact(change):
    generator = np.random.RandomState(4)
    weights = np.linalg.qr(generator.randn(50, 50))[0][None]  # a pack of one run
    kept = KeptInverse(weights)
    if change == "large move":
        weights = weights + 0.5 * generator.randn(1, 50, 50)
    else:
        weights = weights.copy()
        weights[..., 0] = weights[..., 1]
    kept.solve(weights, generator.randn(1, 60, 50))
    assert not kept.acceptable()


def test_kept_inverse_bound_holds_for_poor_inverses_of_ill_conditioned_weights():
    """A refined solve's residual contracts by S = I - X W, which can be cond(X) times
    larger than I - W X: with poor inverses X of badly conditioned W (4 x 4, condition
    1e6), the final residual |y - z W|^2 / |y|^2 stays within the squared bound in all 200
    trials (a bound made with I - W X falls short by up to 80 times here)."""
    assert max(kept_inverse_shortfalls(np.asarray)) <= 1.0


def kept_inverse_shortfalls(to_backend, trials=200):
    """Per trial, |y - z W|^2 / |y|^2 over the kept inverse's bound (4 x 4 W of condition
    1e6, X a poor inverse of it); `to_backend` puts the host arrays on the backend."""
    from gaitprop.model.layer import KeptInverse
    shortfalls = []
    for seed in range(trials):
        generator = np.random.RandomState(seed)
        left, right = (np.linalg.qr(generator.randn(4, 4))[0] for _ in range(2))
        weights = left @ np.diag(np.logspace(-3, 3, 4)) @ right.T
        inverse = np.linalg.inv(weights) @ (np.eye(4) - 0.075 * generator.randn(4, 4))
        rhs = generator.randn(5, 4)
        weights, inverse, rhs = (to_backend(array[None]) for array in (weights, inverse, rhs))
        kept = KeptInverse(weights)  # of a pack of one run
        kept.inverse[...] = inverse
        residual = rhs - kept.solve(weights, rhs) @ weights
        shortfalls.append(float((residual ** 2).sum() / (rhs ** 2).sum() / kept.bound[0]))
    return shortfalls


@pytest.mark.skipif(backend._import_cupy() is None, reason="no GPU with CuPy here")
def test_cupy_kept_inverse_bound_holds_for_poor_inverses():
    backend.select("cupy", dtype="float64")
    try:
        assert max(kept_inverse_shortfalls(backend.to_device)) <= 1.0
    finally:
        backend.select("numpy", dtype="float64")


# ----------------------------------------------------------------------------- learned inverses

def reconstruction_loss(layer, inputs, outputs):
    """L = mean_n 1/2 |backward(h_n) - x_n|^2."""
    return 0.5 * np.mean(np.sum((layer.inverse(outputs) - inputs) ** 2, axis=-1))


@pytest.mark.parametrize("linear", [False, True])
def test_learned_inverse_directions_are_minus_the_finite_difference_gradient(linear):
    """Both directions (V's and c's) against central differences of the reconstruction loss,
    away from the exact start (where the gradient vanishes) and with V not symmetric (the
    authors' branch used e V for c's direction, which this test tells from e V^T)."""
    rng = np.random.RandomState(4)
    layer = InvLayer(9, seed=2, linear=linear, learns_inverse=True)
    layer.biases = rng.randn(9) * 0.3
    layer.backward_weights = layer.backward_weights + 0.2 * rng.randn(9, 9)
    layer.backward_biases = 0.3 * rng.randn(9)
    assert np.abs(layer.backward_weights - layer.backward_weights.T).max() > 0.1
    inputs = rng.randn(7, 9)
    outputs = layer.forward(inputs)
    directions = layer.inverse_directions(inputs, outputs)
    for name, attribute in (("backward_weights", "backward_weights"),
                            ("backward_biases", "backward_biases")):
        array = getattr(layer, attribute)
        gradient = np.zeros_like(array)
        for index in np.ndindex(array.shape):
            kept = array[index]
            array[index] = kept + 1e-6
            above = reconstruction_loss(layer, inputs, outputs)
            array[index] = kept - 1e-6
            below = reconstruction_loss(layer, inputs, outputs)
            array[index] = kept
            gradient[index] = (above - below) / 2e-6
        assert np.abs(gradient).max() > 1e-2
        np.testing.assert_allclose(directions[name], -gradient, rtol=0, atol=1e-8)


def test_learned_inverse_starts_exact_or_as_drawn_after_w():
    """Exact start: V = inv(W), c = b, so backward(forward(x)) == x; drawn start: V is the
    second draw of the layer's seed (Gaussian or orthogonal), c = 0, and W is the first, the
    same as a layer without a learned inverse."""
    x = np.random.RandomState(0).randn(5, 12)
    exact = InvLayer(12, seed=3, learns_inverse=True)
    np.testing.assert_allclose(exact.backward_weights @ exact.weight_matrix, np.eye(12),
                               atol=1e-12)
    np.testing.assert_allclose(exact.inverse(exact.forward(x)), x, atol=1e-12)
    for orthogonal in (False, True):
        plain = InvLayer(12, seed=3, orthogonal_init=orthogonal)
        drawn = InvLayer(12, seed=3, orthogonal_init=orthogonal, learns_inverse=True,
                         exact_start=False)
        np.testing.assert_array_equal(drawn.weight_matrix, plain.weight_matrix)
        generator = np.random.RandomState(3)
        if orthogonal:
            second = [scipy.stats.ortho_group.rvs(12, random_state=generator) for _ in "WV"][1]
        else:
            second = [generator.randn(12, 12) * np.sqrt(2.0 / 24) for _ in "WV"][1]
        np.testing.assert_array_equal(drawn.backward_weights, second)
        np.testing.assert_array_equal(drawn.backward_biases, np.zeros(12))
        assert not np.allclose(drawn.backward_weights, drawn.weight_matrix)


def test_learned_inverse_quality_and_files(tmp_path):
    """inverse_quality: 0 at the exact start; for V = 2 inv(W), c = b the reconstruction
    error is |x| / |x| = 1 and the distance 1. save_params writes V and c beside W and b, and
    load_params reads them back; a learned inverse keeps no KeptInverse (it solves nothing)."""
    layer = InvLayer(10, seed=1, learns_inverse=True)
    x = np.random.RandomState(1).randn(6, 10)
    np.testing.assert_allclose(layer.inverse_quality(x, layer.forward(x)), (0, 0), atol=1e-13)
    layer.backward_weights = 2 * np.linalg.inv(layer.weight_matrix)
    np.testing.assert_allclose(layer.inverse_quality(x, layer.forward(x)), (1, 1), atol=1e-12)
    layer.save_params(str(tmp_path / "1L"))
    assert sorted(path.name for path in tmp_path.iterdir()) == [
        "1Lbackward_biases.npy", "1Lbackward_weights.npy", "1Lbiases.npy", "1Lweights.npy"]
    other = InvLayer(10, seed=5, learns_inverse=True)
    other.load_params(str(tmp_path / "1L"))
    np.testing.assert_array_equal(other.backward_weights, layer.backward_weights)
    layer.keep_inverse()
    assert layer.kept_inverse is None
