"""DTP (gaitprop.model.rules.dtp) by hand: imperfect learned inverses, a small output step
and the inverses' noise; the difference reconstruction loss of its inverses."""
import numpy
import pytest

from gaitprop.model import functions
from gaitprop.model.net import SquareInvNet, TowerInvNet, output_targets


def backward(layer, y):
    """A learned inverse by hand: (f^-1(y) - c) @ V."""
    return (functions.inverse_transfer(y) - layer.backward_biases) @ layer.backward_weights


def imperfect_net(seed=4):
    """A tiny network whose learned inverses are off: V and c made for the test."""
    generator = numpy.random.RandomState(seed)
    net = SquareInvNet(6, 2, start_seed=3, orthogonal_init=True, learn_inverses=True)
    for layer in net.layers:
        layer.biases = 0.1 * generator.randn(6)
        if layer.learns_inverse:
            layer.backward_weights = layer.backward_weights + 0.2 * generator.randn(6, 6)
            layer.backward_biases = layer.biases + 0.1 * generator.randn(6)
    return net, generator


def test_dtp_with_imperfect_inverses_by_hand():
    """DTP's directions from the top down with the labels as the target (beta 1), with
    backward(y) = (f^-1(y) - c) @ V, e_l = backward(h_{l+1}) - backward(h_{l+1} - e_{l+1});
    TP's differ."""
    net, generator = imperfect_net()
    x = generator.rand(5, 6)
    forward = net.forward_pass(x)
    targets = forward[-1] + 0.3 * generator.randn(5, 6)
    got = net.directions("DTP", forward, targets, target_step=1.0)
    errors = forward[-1] - targets
    for index in reversed(range(3)):
        layer = net.layers[index]
        local = numpy.where(forward[index + 1] >= 0, 1.0, 0.1) * errors
        numpy.testing.assert_allclose(got[index]["weights"], -forward[index].T @ local / 5,
                                      rtol=1e-10, atol=1e-14)
        numpy.testing.assert_allclose(got[index]["biases"], -local.mean(axis=0), rtol=1e-10,
                                      atol=1e-14)
        if index:
            errors = (backward(layer, forward[index + 1])
                      - backward(layer, forward[index + 1] - errors))
    tp = net.directions("TP", forward, targets, target_step=1.0)
    assert numpy.abs(tp[0]["weights"] - got[0]["weights"]).max() > 1e-3 * numpy.abs(
        got[0]["weights"]).max()


def test_a_dtp_step_with_imperfect_inverses_a_small_beta_and_noise_by_hand():
    """From the top down: e_L = beta * (h_L - t); d = g(h_{l+1}) * e_{l+1}; W's direction
    -x_l.T @ d / n; e_l = backward(h_{l+1}) - backward(h_{l+1} - e_{l+1}). The inverses'
    directions, on the noise x~ = x_l + s: with u = f^-1(forward(x~)) - c and e = u @ V -
    x~, V's is -u.T @ e / n and c's mean(e) @ V.T."""
    from gaitprop.engine.step import StepSettings, rule_directions
    net, generator = imperfect_net()
    beta, sigma = 0.05, 0.3
    x = generator.rand(5, 6)
    labels = numpy.eye(6)[generator.randint(0, 6, 5)][:, :10]
    noise = tuple(sigma * generator.randn(1, 5, 6) for _ in range(2))
    pack = SquareInvNet.stack([net])
    settings = StepSettings("DTP", 1e-3, inv_noise=sigma, options=(("target_step", beta),))
    forward, targets, got = rule_directions(pack, settings.of_pack([settings]).on_backend(),
                                            x[None], labels[None], noise)
    hs = net.forward_pass(x)
    errors = beta * (hs[-1] - output_targets(hs[-1], labels))
    for index in reversed(range(3)):
        layer = net.layers[index]
        local = numpy.where(hs[index + 1] >= 0, 1.0, 0.1) * errors
        numpy.testing.assert_allclose(got[index]["weights"][0], -hs[index].T @ local / 5,
                                      rtol=1e-10, atol=1e-15)
        numpy.testing.assert_allclose(got[index]["biases"][0], -local.mean(axis=0), rtol=1e-10,
                                      atol=1e-15)
        if index:
            errors = backward(layer, hs[index + 1]) - backward(layer, hs[index + 1] - errors)
            corrupted = hs[index] + noise[index - 1][0]
            u = (functions.inverse_transfer(layer.forward(corrupted)) - layer.backward_biases)
            e = u @ layer.backward_weights - corrupted
            numpy.testing.assert_allclose(got[index]["backward_weights"][0], -u.T @ e / 5,
                                          rtol=1e-10, atol=1e-15)
            numpy.testing.assert_allclose(got[index]["backward_biases"][0],
                                          e.mean(axis=0) @ layer.backward_weights.T,
                                          rtol=1e-10, atol=1e-15)


def difference_loss(layer, x, noise):
    """mean_n 1/2 |backward(forward(x + s)) - backward(forward(x)) - s|^2, by hand."""
    residual = (backward(layer, layer.forward(x + noise)) - backward(layer, layer.forward(x))
                - noise)
    return 0.5 * (residual ** 2).sum() / len(x)


def test_the_difference_loss_directions_are_minus_its_gradient_and_leave_c_alone():
    net, generator = imperfect_net(seed=7)
    layer = net.layers[1]
    x, noise = generator.rand(9, 6) - 0.3, 0.2 * generator.randn(9, 6)
    got = layer.difference_inverse_directions(noise)
    assert not got["backward_biases"].any()  # c cancels in the difference
    step = 1e-6
    gradient = numpy.zeros((6, 6))
    for i in range(6):
        for j in range(6):
            for sign in (1, -1):
                layer.backward_weights[i, j] += sign * step
                gradient[i, j] += sign * difference_loss(layer, x, noise) / (2 * step)
                layer.backward_weights[i, j] -= sign * step
    numpy.testing.assert_allclose(got["backward_weights"], -gradient, rtol=1e-6, atol=1e-10)


def test_the_difference_loss_is_zero_at_the_exact_inverse_whatever_c_is():
    net, generator = imperfect_net(seed=8)
    layer = net.layers[2]
    layer.backward_weights = numpy.linalg.inv(layer.weight_matrix)
    layer.backward_biases = generator.randn(6)  # c does not matter
    got = layer.difference_inverse_directions(0.5 * generator.randn(11, 6))
    assert numpy.abs(got["backward_weights"]).max() < 1e-13


@pytest.mark.parametrize("net", [SquareInvNet(12, 2, 1, True, learn_inverses=True,
                                              exact_start=False),
                                 TowerInvNet([12, 12, 9, 7], 1, True, learn_inverses=True,
                                             exact_start=False)], ids=["square", "tower"])
def test_the_network_adds_each_inverses_difference_directions_on_its_noise(net):
    generator = numpy.random.RandomState(3)
    forward = net.forward_pass(generator.rand(4, 12))
    noise = [0.1 * generator.randn(4, width) for width in net.learned_inverse_widths()]
    directions = [{} for _ in net.layers]
    net.add_inverse_directions(forward, directions, noise, "difference")
    assert directions[0] == {}
    for position, index in enumerate(range(1, len(net.layers))):
        want = net.layers[index].difference_inverse_directions(noise[position])
        for name in want:
            numpy.testing.assert_array_equal(directions[index][name], want[name])
