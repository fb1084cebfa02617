"""Networks (square and tower), the three learning rules (BP, GAIT, TP) and the optimiser.

Every expected value is recomputed here in plain NumPy, independently of the package:
explicit matrix inverses (np.linalg.inv), explicit transfer functions, finite differences.
"""
import numpy as np
import pytest
import scipy.stats

from gaitprop.model import net as inv_net
from gaitprop.model import functions as utils
from helpers import by_layer, split
from gaitprop.model.net import SquareInvNet, TowerInvNet
from gaitprop.model.optimizer import MomentOptimizer


def gaussian_weights(units, seed):
    np.random.seed(seed)
    return np.random.randn(units, units) * np.sqrt(2.0 / (2 * units))


def f(a, linear):
    return a if linear else np.where(a >= 0, a, 0.1 * a)


def finv(h, linear):
    return h if linear else np.where(h >= 0, h, 10.0 * h)


def g(h, linear):
    return np.ones_like(h) if linear else np.where(h >= 0, 1.0, 0.1)


def relative_error(a, b):
    return np.linalg.norm(a - b) / np.linalg.norm(b)


def randomise_biases(net, rng, scale=0.1):
    for layer in net.layers:
        layer.biases = rng.randn(len(layer.biases)) * scale


def reference_forward(weights, biases, x, linear):
    """[h_0, ..., h_L] with layer l reading the first len(b_l) units of h_l."""
    hs = [x]
    for w, b in zip(weights, biases):
        hs.append(f(hs[-1][:, :len(b)] @ w + b, linear))
    return hs


def params(net):
    return ([layer.weight_matrix.copy() for layer in net.layers],
            [layer.biases.copy() for layer in net.layers])


def pad(part, width):
    full = np.zeros((part.shape[0], width))
    full[:, :part.shape[1]] = part
    return full


# ----------------------------------------------------------------------------- seeds, shapes

@pytest.mark.parametrize("nb_hidden", [1, 3])
def test_square_seeds(nb_hidden):
    units, seed = 9, 5
    net = SquareInvNet(units, nb_hidden, start_seed=seed)
    assert len(net.layers) == nb_hidden + 1
    for k in range(nb_hidden):
        np.testing.assert_array_equal(net.layers[k].weight_matrix,
                                      gaussian_weights(units, seed + k))
    # the output layer repeats the last hidden layer's seed, as published
    np.testing.assert_array_equal(net.layers[-1].weight_matrix,
                                  gaussian_weights(units, seed + nb_hidden - 1))
    np.testing.assert_array_equal(net.layers[-1].weight_matrix, net.layers[-2].weight_matrix)
    for layer in net.layers:
        np.testing.assert_array_equal(layer.biases, np.zeros(units))


def test_square_without_hidden_layers_uses_start_seed():
    net = SquareInvNet(6, 0, start_seed=11)
    assert len(net.layers) == 1
    np.testing.assert_array_equal(net.layers[0].weight_matrix, gaussian_weights(6, 11))


def test_square_orthogonal_seeds():
    net = SquareInvNet(8, 2, start_seed=2, orthogonal_init=True)
    for layer, seed in zip(net.layers, [2, 3, 3]):
        expected = scipy.stats.ortho_group.rvs(8, random_state=np.random.RandomState(seed))
        np.testing.assert_array_equal(layer.weight_matrix, expected)


def test_tower_widths_and_seeds():
    net = TowerInvNet([784, 784, 500, 200, 10], start_seed=3)
    assert [len(layer.biases) for layer in net.layers] == [784, 500, 200, 10]
    for k, (layer, units) in enumerate(zip(net.layers, [784, 500, 200, 10])):
        assert layer.weight_matrix.shape == (units, units)
        np.testing.assert_array_equal(layer.weight_matrix, gaussian_weights(units, 3 + k))
    hs = net.forward_pass(np.random.RandomState(0).rand(4, 784))
    assert [h.shape for h in hs] == [(4, 784), (4, 784), (4, 500), (4, 200), (4, 10)]


def test_tower_rejects_increasing_widths():
    with pytest.raises(ValueError):
        TowerInvNet([10, 10, 12, 5], start_seed=1)
    with pytest.raises(ValueError):
        TowerInvNet([8, 9, 5], start_seed=1)


def test_forward_pass_matches_reference():
    rng = np.random.RandomState(2)
    net = TowerInvNet([12, 12, 8, 5, 3], start_seed=1)
    randomise_biases(net, rng)
    x = rng.randn(5, 12)
    weights, biases = params(net)
    for h, expected in zip(net.forward_pass(x), reference_forward(weights, biases, x, False)):
        np.testing.assert_allclose(h, expected, rtol=1e-13, atol=1e-15)


# ----------------------------------------------------------------------------- inverses

@pytest.mark.parametrize("linear", [False, True])
@pytest.mark.parametrize("structure", [[12] * 5, [12, 12, 8, 5, 3]])
def test_network_inverse_recovers_read_units(structure, linear):
    rng = np.random.RandomState(7)
    net = TowerInvNet(structure, start_seed=2, linear=linear)
    randomise_biases(net, rng)
    x = rng.randn(6, 12)
    hs = net.forward_pass(x)
    for index, layer in enumerate(net.layers):
        width = len(layer.biases)
        np.testing.assert_allclose(layer.inverse(hs[index + 1]), hs[index][:, :width],
                                   rtol=0, atol=1e-10)
    if len(set(structure)) == 1:  # square: invert the whole stack from the output down
        activity = hs[-1]
        for layer in reversed(net.layers):
            activity = layer.inverse(activity)
        np.testing.assert_allclose(activity, x, rtol=0, atol=1e-9)


def test_square_net_inverse_after_update_and_refactorisation():
    rng = np.random.RandomState(9)
    net = SquareInvNet(10, 2, start_seed=1)
    x = rng.randn(4, 10)
    hs = net.forward_pass(x)
    targets = hs[-1] + rng.randn(4, 10)
    net.step(net.directions("BP", hs, targets), 0.05)
    net.update_inverse_model()
    hs = net.forward_pass(x)
    for index, layer in enumerate(net.layers):
        np.testing.assert_allclose(layer.inverse(hs[index + 1]), hs[index], rtol=0, atol=1e-10)


# ----------------------------------------------------------------------------- BP

def half_squared_error(weights, biases, x, targets, linear):
    return 0.5 * np.sum((reference_forward(weights, biases, x, linear)[-1] - targets) ** 2) / len(x)


def regulariser(weights):
    total = 0.0
    for w in weights:
        gram = w @ w.T
        total += np.sum(gram ** 2) - np.sum(np.diag(gram) ** 2)
    return total


@pytest.mark.parametrize("ortho", [0.0, 0.05])
@pytest.mark.parametrize("linear", [False, True])
@pytest.mark.parametrize("structure", [[7, 7, 7, 7], [9, 9, 6, 4]])
def test_backprop_is_minus_the_finite_difference_gradient(structure, linear, ortho):
    rng = np.random.RandomState(12)
    net = TowerInvNet(structure, start_seed=4, linear=linear)
    randomise_biases(net, rng)
    n = 5
    x = rng.randn(n, structure[0])
    hs = net.forward_pass(x)
    targets = rng.randn(n, structure[-1])
    weights, biases = params(net)
    if not linear:  # keep away from the kink of the leaky ReLU
        for w, b, below in zip(weights, biases, hs):
            assert np.min(np.abs(below[:, :len(b)] @ w + b)) > 1e-4

    def objective(ws, bs):
        return half_squared_error(ws, bs, x, targets, linear) + ortho * regulariser(ws)

    dir_w, dir_b = split(net.directions("BP", hs, targets, ortho_weighting=ortho))
    eps = 1e-6
    for layer_index in range(len(net.layers)):
        for array, direction in ((weights, dir_w), (biases, dir_b)):
            base = array[layer_index]
            numeric = np.zeros_like(base)
            for position in np.ndindex(base.shape):
                saved = base[position]
                base[position] = saved + eps
                plus = objective(weights, biases)
                base[position] = saved - eps
                minus = objective(weights, biases)
                base[position] = saved
                numeric[position] = (plus - minus) / (2 * eps)
            assert direction[layer_index].shape == base.shape
            np.testing.assert_allclose(-direction[layer_index], numeric, rtol=1e-6, atol=1e-8)
            assert relative_error(-direction[layer_index], numeric) < 1e-7
            assert np.linalg.norm(numeric) > 1e-3


# ----------------------------------------------------------------------------- GAIT

def gait_reference(weights, biases, hs, targets, gamma, linear):
    """GAIT computed exactly, independently: explicit inv(W), piecewise phi.

    E_L = h_L - t; for layer l (k layers above): d = g(h_{l+1}) E_{l+1},
    dir_W = -x_l.T d / n, dir_b = -mean(d); delta = gamma**(k+1) g^2 E_{l+1};
    E_l = (phi(h_{l+1}, delta) / gamma**(k+1)) @ inv(W_l), zero on auxiliary units, with
    phi = delta / g(h) without a zero crossing and f^-1(h) - f^-1(h - delta) with one (the
    two terms then have opposite signs, so that subtraction does not cancel).
    Returns the directions and the number of crossing units per layer.
    """
    nb_layers, n = len(weights), len(hs[0])
    dir_w, dir_b, crossings = [None] * nb_layers, [None] * nb_layers, [0] * nb_layers
    errors = hs[-1] - targets
    for index in reversed(range(nb_layers)):
        k = nb_layers - 1 - index
        width = len(biases[index])
        inputs, outputs = hs[index][:, :width], hs[index + 1]
        slope = g(outputs, linear)
        local = slope * errors
        dir_w[index], dir_b[index] = -(inputs.T @ local) / n, -local.mean(axis=0)
        scale = gamma ** (k + 1)
        delta = scale * slope ** 2 * errors
        stepped = outputs - delta
        crossing = (outputs >= 0) != (stepped >= 0)
        if linear:
            crossing[:] = False
        crossings[index] = int(crossing.sum())
        phi = np.where(crossing, finv(outputs, linear) - finv(stepped, linear), delta / slope)
        errors = pad((phi / scale) @ np.linalg.inv(weights[index]), hs[index].shape[1])
    return dir_w, dir_b, crossings


def gait_published_style(net, hs, targets, gamma, linear=False):
    """GAIT as the published code computed it: form each target, then subtract.

    t_L = t; c = gamma g(h_{l+1})^2; t_l = inverse_l((1 - c) h_{l+1} + c t_{l+1}) with
    explicit inv(W); auxiliary units of t_l take h_l; d = g(h_{l+1})(h_{l+1} - t_{l+1}) /
    gamma**k. Accurate only while gamma**k is not too small.
    """
    weights, biases = params(net)
    nb_layers, n = len(weights), len(hs[0])
    dir_w, dir_b = [None] * nb_layers, [None] * nb_layers
    target = targets
    for index in reversed(range(nb_layers)):
        k = nb_layers - 1 - index
        width = len(biases[index])
        inputs, outputs = hs[index][:, :width], hs[index + 1]
        slope = g(outputs, linear)
        local = slope * (outputs - target) / gamma ** k
        dir_w[index], dir_b[index] = -(inputs.T @ local) / n, -local.mean(axis=0)
        c = gamma * slope ** 2
        stepped = (1 - c) * outputs + c * target
        below = (finv(stepped, linear) - biases[index]) @ np.linalg.inv(weights[index])
        target = hs[index].copy()
        target[:, :width] = below
    return dir_w, dir_b


def assert_directions_close(actual, expected, tolerance):
    for layer_index, (a, e) in enumerate(zip(actual, expected)):
        assert a.shape == e.shape
        assert relative_error(a, e) < tolerance, (layer_index, relative_error(a, e))


@pytest.mark.parametrize("gamma", [1e-3, 1e-5])
@pytest.mark.parametrize("orthogonal", [False, True])
def test_gait_closed_form_without_zero_crossings(orthogonal, gamma):
    units, n = 200, 8
    rng = np.random.RandomState(21)
    net = SquareInvNet(units, 4, start_seed=1, orthogonal_init=orthogonal)
    randomise_biases(net, rng, 0.01)
    x = rng.rand(n, units)
    hs = net.forward_pass(x)
    targets = hs[-1] - 1e-3 * rng.randn(n, units)
    weights, biases = params(net)

    # closed form: E_L = h_L - t, d_l = g E_{l+1}, E_l = d_l @ inv(W_l)
    expected_w, expected_b = [None] * 5, [None] * 5
    errors = hs[-1] - targets
    for index in reversed(range(5)):
        k = 4 - index
        slope = g(hs[index + 1], False)
        delta = gamma ** (k + 1) * slope ** 2 * errors
        # no unit crosses zero on the step that forms the target below
        assert np.all((hs[index + 1] >= 0) == (hs[index + 1] - delta >= 0))
        assert np.all(np.abs(delta) < 0.5 * np.abs(hs[index + 1]))
        local = slope * errors
        expected_w[index] = -(hs[index].T @ local) / n
        expected_b[index] = -local.mean(axis=0)
        errors = local @ np.linalg.inv(weights[index])

    dir_w, dir_b = split(net.directions("GAIT", hs, targets, gamma=gamma))
    assert_directions_close(dir_w, expected_w, 1e-8)
    assert_directions_close(dir_b, expected_b, 1e-8)
    reference_w, _, crossings = gait_reference(weights, biases, hs, targets, gamma, False)
    assert crossings == [0] * 5
    assert_directions_close(dir_w, reference_w, 1e-8)
    if not orthogonal:  # inv(W) is not W.T here: GAIT differs from BP below the top
        bp_w, _ = split(net.directions("BP", hs, targets))
        assert relative_error(dir_w[0], bp_w[0]) > 0.1


@pytest.mark.parametrize("structure", [[10, 10, 10], [8, 8, 5, 3]])
def test_gait_with_zero_crossings_matches_published_targets(structure):
    """gamma = 0.1 keeps the published subtraction accurate (~1e-14) and makes units cross."""
    gamma = 0.1
    rng = np.random.RandomState(5)
    net = TowerInvNet(structure, start_seed=3)
    randomise_biases(net, rng)
    n = 30
    x = rng.randn(n, structure[0])
    hs = net.forward_pass(x)
    targets = hs[-1] + 3.0 * rng.randn(n, structure[-1])
    weights, biases = params(net)
    _, _, crossings = gait_reference(weights, biases, hs, targets, gamma, False)
    assert sum(crossings[1:]) >= 1, crossings  # crossings on the steps passed down

    dir_w, dir_b = split(net.directions("GAIT", hs, targets, gamma=gamma))
    published_w, published_b = gait_published_style(net, hs, targets, gamma)
    assert_directions_close(dir_w, published_w, 1e-10)
    assert_directions_close(dir_b, published_b, 1e-10)
    # and the crossing really matters: the no-crossing formula gives other numbers
    errors = hs[-1] - targets
    naive_bottom = None
    for index in reversed(range(len(weights))):
        local = g(hs[index + 1], False) * errors
        naive_bottom = -(hs[index][:, :len(biases[index])].T @ local) / n
        errors = pad(local @ np.linalg.inv(weights[index]), hs[index].shape[1])
    assert relative_error(naive_bottom, published_w[0]) > 1e-3


def test_gait_with_zero_crossings_at_small_gamma_matches_reference():
    """Where the published subtraction is useless (gamma**k ~ 1e-9), the independent
    piecewise reference still pins the values down."""
    gamma = 1e-3
    rng = np.random.RandomState(1)
    net = SquareInvNet(100, 3, start_seed=1)
    randomise_biases(net, rng)
    x = rng.randn(100, 100)
    hs = net.forward_pass(x)
    targets = hs[-1] + rng.randn(100, 100)
    weights, biases = params(net)
    reference_w, reference_b, crossings = gait_reference(weights, biases, hs, targets, gamma,
                                                         False)
    assert sum(crossings[1:]) >= 3, crossings
    dir_w, dir_b = split(net.directions("GAIT", hs, targets, gamma=gamma))
    assert_directions_close(dir_w, reference_w, 1e-8)
    assert_directions_close(dir_b, reference_b, 1e-8)


def test_gait_top_layer_and_regulariser():
    rng = np.random.RandomState(3)
    net = SquareInvNet(6, 1, start_seed=2)
    hs = net.forward_pass(rng.randn(4, 6))
    targets = rng.randn(4, 6)
    plain_w, plain_b = split(net.directions("GAIT", hs, targets))
    reg_w, reg_b = split(net.directions("GAIT", hs, targets, ortho_weighting=0.2))
    bp_w, bp_b = split(net.directions("BP", hs, targets))
    # the top layer has no layer above it: its GAIT direction is the BP direction
    np.testing.assert_allclose(plain_w[-1], bp_w[-1], rtol=1e-13)
    np.testing.assert_allclose(plain_b[-1], bp_b[-1], rtol=1e-13)
    for layer, p, r, pb, rb in zip(net.layers, plain_w, reg_w, plain_b, reg_b):
        w = layer.weight_matrix
        gram = w @ w.T - np.diag(np.diag(w @ w.T))
        np.testing.assert_allclose(r, p - 0.2 * 4 * gram @ w, rtol=1e-12, atol=1e-15)
        np.testing.assert_array_equal(rb, pb)


# ----------------------------------------------------------------------------- GAIT vs BP

# Scaling: GAIT's direction (rules.gait) is d = g (h - t) / gamma**k, which
# already divides out the gamma**k by which the target of a layer with k layers above
# differs from its activity. So GAIT and BP directions are compared as they are, with no rescaling
# (multiplying the GAIT direction by gamma**k would break the equality below the top).

def orthogonal_case(units, linear, target_kind, seed=3, n=60):
    net = SquareInvNet(units, 4, start_seed=seed, orthogonal_init=True, linear=linear)
    rng = np.random.RandomState(0)
    if target_kind == "labels":  # MNIST-like: inputs in [0, 1), one-hot class targets
        hs = net.forward_pass(rng.rand(n, units))
        targets = inv_net.output_targets(hs[-1], utils.one_hot(rng.randint(0, 10, n)))
    else:  # Gaussian inputs, random full-width targets at distance O(1)
        hs = net.forward_pass(rng.randn(n, units))
        targets = hs[-1] + rng.randn(n, units)
    return net, hs, targets


def worst_difference(net, hs, targets, gamma):
    gait_w, gait_b = split(net.directions("GAIT", hs, targets, gamma=gamma))
    bp_w, bp_b = split(net.directions("BP", hs, targets))
    return max(relative_error(a, b) for a, b in zip(gait_w + gait_b, bp_w + bp_b))


@pytest.mark.parametrize("target_kind", ["labels", "random"])
def test_gait_equals_bp_on_orthogonal_linear_network(target_kind):
    net, hs, targets = orthogonal_case(100, True, target_kind)
    for gamma in (1e-1, 1e-3, 1e-5):
        assert worst_difference(net, hs, targets, gamma) < 1e-8


def test_gait_approaches_bp_on_orthogonal_leaky_network_classification_like():
    """200 units, 4 hidden layers, inputs in [0, 1), one-hot targets (as in training).

    With orthogonal W, inv(W) == W.T, so GAIT's error passes down exactly as BP's wherever
    no unit crosses zero on the step delta = gamma**(k+1) g^2 E (then phi / scale = g E).
    A crossing unit's error changes by up to a factor 10 (the two slopes of f^-1), and the
    fraction of crossing units shrinks with gamma. One-hot targets make crossings rare (a
    unit whose target is 0 steps towards 0 and never crosses it). Measured (seed 2):
    1.8e-1 (gamma 1e-1, 6 crossing units), 1.1e-2 (1e-2, 1 unit), 1.2e-14 (1e-3 and 1e-4,
    none). At 784 units, seed 3: 1.6e-1, 8.7e-3, 3.7e-14, 3.7e-14.
    """
    net, hs, targets = orthogonal_case(200, False, "labels", seed=2, n=60)
    differences = [worst_difference(net, hs, targets, gamma)
                   for gamma in (1e-1, 1e-2, 1e-3, 1e-4)]
    assert differences[0] > differences[1] > 1e-3, differences
    assert differences[1] < 5e-2, differences
    assert differences[2] < 1e-10 and differences[3] < 1e-10, differences


def test_gait_approaches_bp_on_orthogonal_leaky_network_random_targets():
    """100 units, Gaussian inputs, random targets at distance O(1): many more crossings.

    The number of crossing units falls like gamma (measured 83, 10, 2, 0 for gamma = 1e-2,
    1e-3, 1e-4, 1e-5), but each crossing unit changes its sample's error by O(1) (up to the
    factor 10 between the slopes of f^-1), and the units that cross are those with the
    largest errors. So the norm-relative difference falls only roughly like sqrt(gamma):
    measured 9.7e-1, 1.8e-1, 8.1e-2 and 5.6e-15 for gamma = 1e-2 .. 1e-5 (other seeds and
    batch sizes: 5e-2 to 4e-1 at 1e-4, with 1 to 20 crossing units). The difference is
    nonzero exactly when the independent reference counts crossing units.
    """
    net, hs, targets = orthogonal_case(100, False, "random", seed=1, n=100)
    weights, biases = params(net)
    differences, crossing_counts = [], []
    for gamma in (1e-2, 1e-3, 1e-4, 1e-5):
        differences.append(worst_difference(net, hs, targets, gamma))
        crossing_counts.append(sum(gait_reference(weights, biases, hs, targets, gamma,
                                                  False)[2][1:]))
    assert differences[0] > differences[1] > differences[2] > differences[3], differences
    assert crossing_counts[0] > crossing_counts[1] > crossing_counts[2] > 0, crossing_counts
    assert differences[2] < 0.15, differences
    assert crossing_counts[3] == 0 and differences[3] < 1e-12, (differences, crossing_counts)


# ----------------------------------------------------------------------------- TP

@pytest.mark.parametrize("linear", [False, True])
def test_tp_one_layer_closed_form(linear):
    rng = np.random.RandomState(4)
    net = SquareInvNet(8, 0, start_seed=6, linear=linear)
    randomise_biases(net, rng)
    x = rng.randn(5, 8)
    hs = net.forward_pass(x)
    targets = rng.randn(5, 8)
    d = g(hs[1], linear) * (hs[1] - targets)
    dir_w, dir_b = split(net.directions("TP", hs, targets))
    assert len(dir_w) == 1
    np.testing.assert_allclose(dir_w[0], -(x.T @ d) / 5, rtol=1e-12)
    np.testing.assert_allclose(dir_b[0], -d.mean(axis=0), rtol=1e-12)


@pytest.mark.parametrize("linear", [False, True])
@pytest.mark.parametrize("structure", [[8, 8, 8], [8, 8, 5, 3]])
def test_tp_targets_by_explicit_inverses(structure, linear):
    rng = np.random.RandomState(8)
    net = TowerInvNet(structure, start_seed=1, linear=linear)
    randomise_biases(net, rng)
    n = 6
    hs = net.forward_pass(rng.randn(n, structure[0]))
    targets = rng.randn(n, structure[-1])
    weights, biases = params(net)
    expected_w, expected_b = [None] * len(weights), [None] * len(weights)
    target = targets
    for index in reversed(range(len(weights))):
        width = len(biases[index])
        d = g(hs[index + 1], linear) * (hs[index + 1] - target)
        expected_w[index] = -(hs[index][:, :width].T @ d) / n
        expected_b[index] = -d.mean(axis=0)
        below = (finv(target, linear) - biases[index]) @ np.linalg.inv(weights[index])
        target = hs[index].copy()
        target[:, :width] = below
    dir_w, dir_b = split(net.directions("TP", hs, targets))
    assert_directions_close(dir_w, expected_w, 1e-9)
    assert_directions_close(dir_b, expected_b, 1e-9)


# ----------------------------------------------------------------------------- optimiser

def test_optimizer_hand_made_two_by_two():
    net = SquareInvNet(2, 0, start_seed=0)
    layer = net.layers[0]
    layer.weight_matrix = np.array([[1.0, 2.0], [3.0, 4.0]])
    layer.biases = np.array([0.5, -0.5])
    lr = 0.1
    w_dirs = [np.array([[1.0, -2.0], [0.5, 0.0]]), np.array([[-1.0, 1.0], [2.0, 0.0]]),
              np.array([[0.0, 0.0], [0.0, 3.0]])]
    b_dirs = [np.array([4.0, 0.0]), np.array([4.0, -1.0]), np.array([-4.0, 0.0])]

    net.step(by_layer([w_dirs[0]], [b_dirs[0]]), lr)
    # step 1: m = 0.1 u, v = 0.01 u^2, p += lr * 0.1 u / (1e-8 + 0.1 |u|); u = 0: no change
    np.testing.assert_allclose(layer.weight_matrix, [
        [1.0 + 0.01 / (1e-8 + 0.1), 2.0 - 0.02 / (1e-8 + 0.2)],
        [3.0 + 0.005 / (1e-8 + 0.05), 4.0]], rtol=1e-15)
    np.testing.assert_allclose(layer.biases, [0.5 + 0.04 / (1e-8 + 0.4), -0.5], rtol=1e-15)

    net.step(by_layer([w_dirs[1]], [b_dirs[1]]), lr)
    # step 2, entry W[0, 0]: m = 0.09 - 0.1 = -0.01, v = 0.0099 + 0.01 = 0.0199
    w00 = 1.0 + 0.01 / (1e-8 + 0.1) + lr * -0.01 / (1e-8 + np.sqrt(0.0199))
    assert abs(layer.weight_matrix[0, 0] - w00) < 1e-15
    # bias 0: m = 0.36 + 0.4 = 0.76, v = 0.1584 + 0.16 = 0.3184
    b0 = 0.5 + 0.04 / (1e-8 + 0.4) + lr * 0.76 / (1e-8 + np.sqrt(0.3184))
    assert abs(layer.biases[0] - b0) < 1e-15
    # W[1, 1] has seen only zero directions so far
    assert layer.weight_matrix[1, 1] == 4.0

    net.step(by_layer([w_dirs[2]], [b_dirs[2]]), lr)
    # the optimiser's scalar recurrences (Adam-like, no bias correction: see MomentOptimizer),
    # element by element, for all three steps
    for start, dirs, actual in (([[1.0, 2.0], [3.0, 4.0]], w_dirs, layer.weight_matrix),
                                ([0.5, -0.5], b_dirs, layer.biases)):
        expected = np.array(start, dtype=float)
        for position in np.ndindex(expected.shape):
            m = v = 0.0
            for direction in dirs:
                u = direction[position]
                m = 0.9 * m + 0.1 * u
                v = 0.99 * v + 0.01 * u * u
                expected[position] += lr * m / (1e-8 + np.sqrt(v))
        np.testing.assert_allclose(actual, expected, rtol=1e-14, atol=1e-15)
    # W[1, 1] after step 3: m = 0.3, v = 0.09
    assert abs(layer.weight_matrix[1, 1] - (4.0 + 0.03 / (1e-8 + 0.3))) < 1e-14
    # the inverse follows the new weights
    x = np.array([[0.3, -0.7]])
    np.testing.assert_allclose(layer.inverse(layer.forward(x)), x, rtol=0, atol=1e-12)


def test_moment_optimizer_keeps_moments_per_array():
    a, b = np.zeros(3), np.zeros(3)
    optimizer = MomentOptimizer({"a": a, "b": b})
    optimizer.step({"a": a, "b": b}, {"a": np.array([1.0, 2.0, -3.0]), "b": np.zeros(3)},
                   {"a": 0.5, "b": 0.5})
    np.testing.assert_allclose(a, 0.5 * np.array([0.1, 0.2, -0.3])
                               / (1e-8 + np.array([0.1, 0.2, 0.3])), rtol=1e-15)
    np.testing.assert_array_equal(b, 0.0)
    optimizer.step({"a": a, "b": b}, {"a": np.zeros(3), "b": np.array([2.0, 0.0, 0.0])},
                   {"a": 0.5, "b": 0.5})
    assert abs(b[0] - 0.5 * 0.2 / (1e-8 + 0.2)) < 1e-15 and b[1] == 0.0 and b[2] == 0.0
    # a after step 2 (u = 0): m = 0.09 u1, v = 0.0099 u1^2
    step2 = np.array([1.0, 2.0, -3.0])
    np.testing.assert_allclose(a, 0.5 * 0.1 * step2 / (1e-8 + 0.1 * np.abs(step2))
                               + 0.5 * 0.09 * step2 / (1e-8 + np.sqrt(0.0099) * np.abs(step2)),
                               rtol=1e-14)


# ----------------------------------------------------------------------------- outputs

def test_output_targets():
    rng = np.random.RandomState(0)
    output = rng.randn(4, 15)
    original = output.copy()
    labels = np.array([3, 0, 9, 3])
    targets = inv_net.output_targets(output, utils.one_hot(labels))
    expected_head = np.zeros((4, 10))
    expected_head[np.arange(4), labels] = 1.0
    np.testing.assert_array_equal(targets[:, :10], expected_head)
    np.testing.assert_array_equal(targets[:, 10:], original[:, 10:])
    np.testing.assert_array_equal(output, original)
    # so the unlabelled output units carry no error
    net = SquareInvNet(15, 1, start_seed=1)
    hs = net.forward_pass(rng.rand(4, 15))
    errors = hs[-1] - inv_net.output_targets(hs[-1], utils.one_hot(labels))
    np.testing.assert_array_equal(errors[:, 10:], 0.0)


@pytest.mark.parametrize("linear", [False, True])
def test_class_outputs_are_first_ten_output_units(linear):
    rng = np.random.RandomState(1)
    for width, net in ((16, SquareInvNet(16, 2, start_seed=1, linear=linear)),
                       (20, TowerInvNet([20, 20, 15, 12], start_seed=2, linear=linear))):
        randomise_biases(net, rng)
        x = rng.randn(9, width)
        scores = net.class_outputs(x)
        assert scores.shape == (9, 10)
        np.testing.assert_allclose(scores, net.forward_pass(x)[-1][:, :10], rtol=1e-12,
                                   atol=1e-14)


def test_parameter_files_are_what_save_params_writes(tmp_path):
    """One naming of the weight files: save_params writes exactly parameter_files(), the
    results-folder schema recognises each, and load_params reads them back."""
    from gaitprop.runs import run_folder
    net = TowerInvNet([9, 9, 6, 4], start_seed=3)
    net.save_params(str(tmp_path))
    written = sorted(path.name for path in tmp_path.iterdir())
    assert written == sorted(net.parameter_files()) == [
        "0Lbiases.npy", "0Lweights.npy", "1Lbiases.npy", "1Lweights.npy", "2Lbiases.npy",
        "2Lweights.npy"]
    assert all(run_folder.is_parameter_file(name) for name in written)
    assert not run_folder.is_parameter_file("0Lweights.npy.partial")
    other = TowerInvNet([9, 9, 6, 4], start_seed=4)
    other.load_params(str(tmp_path))
    for name, array in other.parameter_files().items():
        np.testing.assert_array_equal(array, net.parameter_files()[name])


def test_state_round_trip_carries_the_optimiser():
    """InvNet.state()/set_state(): weights, biases and moments by checkpoint name."""
    net = SquareInvNet(6, 1, start_seed=1)
    assert sorted(net.state()) == ["W0", "W1", "b0", "b1"]  # no moments before a step
    directions = [np.ones((6, 6))] * 2, [np.ones(6)] * 2
    net.step(by_layer(*directions), learning_rate=0.1)
    state = {name: array.copy() for name, array in net.state().items()}
    assert sorted(state) == ["W0", "W1", "b0", "b1", "mW0", "mW1", "mb0", "mb1",
                             "vW0", "vW1", "vb0", "vb1"]
    copy = SquareInvNet(6, 1, start_seed=2)
    copy.set_state(state)
    for name, array in copy.state().items():
        np.testing.assert_array_equal(array, state[name])
    net.step(by_layer(*directions), learning_rate=0.1)
    copy.step(by_layer(*directions), learning_rate=0.1)
    for a, b in zip(net.parameters().values(), copy.parameters().values()):
        np.testing.assert_array_equal(a, b)


# ----------------------------------------------------------------------------- learned inverses

LEARNING_NETS = {"square": lambda **learned: SquareInvNet(40, 3, 2, True, **learned),
                 "tower": lambda **learned: TowerInvNet([40, 40, 25, 16, 10], 2, True,
                                                        **learned)}


def rule_on_a_batch(net, rule, seed=0, **options):
    """The directions of `rule` ("GAIT", "TP" or "DTP"; its `options`) on a random batch,
    biases randomised the same way in every network."""
    rng = np.random.RandomState(seed)
    randomise_biases(net, np.random.RandomState(9))
    for layer in net.layers:
        if layer.learns_inverse:
            layer.backward_biases = layer.biases.copy()
    x = rng.rand(8, net.widths[0])
    forward = net.forward_pass(x)
    targets = inv_net.output_targets(forward[-1], np.eye(10)[rng.randint(0, 10, 8)])
    return forward, net.directions(rule, forward, targets, **options)


@pytest.mark.parametrize("network", sorted(LEARNING_NETS))
@pytest.mark.parametrize("rule", ["GAIT", "TP", "DTP"])
def test_learned_inverses_from_the_exact_start_give_the_exact_targets(network, rule):
    """V = inv(W), c = b: GAIT's and TP's directions are the exact inverses' to rounding; a
    drawn start gives other directions below the top layer. Only the layers whose inverses
    the targets use learn them (not layer 0)."""
    exact = LEARNING_NETS[network]()
    learned = LEARNING_NETS[network](learn_inverses=True)
    drawn = LEARNING_NETS[network](learn_inverses=True, exact_start=False)
    assert [layer.learns_inverse for layer in learned.layers] == [False, True, True, True]
    assert list(learned.parameters()) == ["W0", "b0", "W1", "b1", "V1", "c1", "W2", "b2", "V2",
                                          "c2", "W3", "b3", "V3", "c3"]
    _, expected = rule_on_a_batch(exact, rule)
    _, got = rule_on_a_batch(learned, rule)
    _, other = rule_on_a_batch(drawn, rule)
    for index, (want, have, far) in enumerate(zip(expected, got, other)):
        assert sorted(have) == ["biases", "weights"]
        for name in want:
            np.testing.assert_allclose(have[name], want[name], rtol=1e-9,
                                       atol=1e-12 * np.abs(want[name]).max())
        if index < len(expected) - 1:
            assert relative_error(far["weights"], want["weights"]) > 1e-2


@pytest.mark.parametrize("network", sorted(LEARNING_NETS))
def test_inverse_directions_compare_the_units_each_layer_reads(network):
    """add_inverse_directions gives each learning layer V's and c's directions from the
    units it reads (tower: 40, 25, 16 of widths 40, 40, 25, 16, 10 below), zero at the exact
    start, and equal to the layer's own formula on those units away from it."""
    net = LEARNING_NETS[network](learn_inverses=True)
    forward, directions = rule_on_a_batch(net, "GAIT")
    net.add_inverse_directions(forward, directions)
    for index, (layer, layer_directions) in enumerate(zip(net.layers, directions)):
        assert ("backward_weights" in layer_directions) == (index > 0)
        if index:
            assert layer_directions["backward_weights"].shape == (layer.nb_units,) * 2
            assert np.abs(layer_directions["backward_weights"]).max() < 1e-13
    rng = np.random.RandomState(3)
    for layer in net.layers[1:]:
        layer.backward_weights = layer.backward_weights + 0.1 * rng.randn(
            *layer.backward_weights.shape)
    directions = [{} for _ in net.layers]
    net.add_inverse_directions(forward, directions)
    quality = net.inverse_quality(forward)
    for index, layer in enumerate(net.layers[1:], start=1):
        inputs = forward[index][:, :layer.nb_units]
        u = finv(forward[index + 1], False) - layer.backward_biases
        e = u @ layer.backward_weights - inputs
        np.testing.assert_allclose(directions[index]["backward_weights"], -u.T @ e / 8,
                                   rtol=1e-12)
        np.testing.assert_allclose(directions[index]["backward_biases"],
                                   (e @ layer.backward_weights.T).mean(axis=0), rtol=1e-12)
        exact = np.linalg.inv(layer.weight_matrix)
        np.testing.assert_allclose(quality[index - 1], (
            np.linalg.norm(e) / np.linalg.norm(inputs),
            np.linalg.norm(layer.backward_weights - exact) / np.linalg.norm(exact)), rtol=1e-10)


def test_the_inverses_learn_at_their_own_rate():
    """step: W and b move by the learning rate, V and c by the inverses' (the
    optimiser's first step moves each entry by lr * u / (|u| + 1e-8 / 0.1), about lr)."""
    net = SquareInvNet(12, 1, 1, True, learn_inverses=True)
    before = {name: array.copy() for name, array in net.parameters().items()}
    directions = [{name: np.ones_like(array) for name, array in layer.state().items()}
                  for layer in net.layers]
    net.step(directions, 1e-3, inverse_learning_rate=1e-2)
    for name, array in net.parameters().items():
        rate = 1e-2 if name[0] in "Vc" else 1e-3
        np.testing.assert_allclose(array - before[name], rate, rtol=1e-6)
    assert sorted(net.optimizer.state()) == sorted(
        letter + name for name in before for letter in "mv")


# ----------------------------------------------------------------------------- DTP

@pytest.mark.parametrize("network", sorted(LEARNING_NETS))
@pytest.mark.parametrize("linear", [False, True])
def test_dtp_with_exact_inverses_is_tp(network, linear):
    """With exact inverses backward(h_{l+1}) = x_l: DTP's directions are TP's (to rounding),
    at the published TP target (beta = 1) and at a small step towards it."""
    net = LEARNING_NETS[network]()
    for layer in net.layers:
        layer.linear = linear
    for beta in (1.0, 0.05):
        _, tp = rule_on_a_batch(net, "TP", seed=3, target_step=beta)
        _, dtp = rule_on_a_batch(net, "DTP", seed=3, target_step=beta)
        for want, got in zip(tp, dtp):
            for name in want:
                np.testing.assert_allclose(got[name], want[name], rtol=1e-12,
                                           atol=1e-14 * np.abs(want[name]).max())


def test_learned_inverses_learn_on_the_noise_given():
    """With noise (one array per learned inverse), each inverse steps down
    mean_n 1/2 |backward(forward(x_l + eps)) - (x_l + eps)|^2 instead of the clean loss."""
    rng = np.random.RandomState(2)
    net = TowerInvNet([12, 12, 9, 7], 1, True, learn_inverses=True, exact_start=False)
    forward = net.forward_pass(rng.rand(4, 12))
    assert net.learned_inverse_widths() == [9, 7]
    noise = [0.1 * rng.randn(4, 9), 0.1 * rng.randn(4, 7)]
    clean = [{} for _ in net.layers]
    noisy = [{} for _ in net.layers]
    net.add_inverse_directions(forward, clean)
    net.add_inverse_directions(forward, noisy, noise)
    for position, index in enumerate((1, 2)):
        layer = net.layers[index]
        corrupted = forward[index][:, :layer.nb_units] + noise[position]
        want = layer.inverse_directions(corrupted, layer.forward(corrupted))
        for name in want:
            np.testing.assert_array_equal(noisy[index][name], want[name])
            assert relative_error(clean[index][name], want[name]) > 1e-3
    assert clean[0] == {} and noisy[0] == {}

