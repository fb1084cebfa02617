"""TP (gaitprop.model.rules.tp): the output target's step (--target_step), which TP shares
with DTP; at beta = 1 it is the published target, the labels."""
import numpy
import pytest

from gaitprop.model.net import SquareInvNet, output_targets
from gaitprop.model.rules import tp


def test_the_output_error_is_beta_times_the_distance_to_the_labels():
    errors = numpy.array([[0.5, -0.25, 0.0], [1.0, 2.0, -3.0]])
    assert tp.output_error(errors) is errors  # beta = 1: the published target, untouched
    numpy.testing.assert_array_equal(tp.output_error(errors, target_step=0.25), errors / 4)


@pytest.mark.parametrize("beta", [1.0, 0.2])
def test_a_target_step_is_the_target_h_minus_beta_times_the_error(beta):
    """TP with --target_step=beta computes what TP with the labels computes when handed the
    target t_L = h_L - beta * (h_L - y) on the class units (the rest: h_L)."""
    generator = numpy.random.RandomState(1)
    net = SquareInvNet(20, 2, start_seed=3, orthogonal_init=True)
    forward = net.forward_pass(generator.rand(7, 20))
    labels = numpy.eye(10)[generator.randint(0, 10, 7)]
    targets = output_targets(forward[-1], labels)
    stepped = forward[-1] - beta * (forward[-1] - targets)
    got = net.directions("TP", forward, targets, target_step=beta)
    want = net.directions("TP", forward, stepped, target_step=1.0)
    for layer_got, layer_want in zip(got, want):
        for name in ("weights", "biases"):
            numpy.testing.assert_allclose(layer_got[name], layer_want[name], rtol=1e-9,
                                          atol=1e-15)
    assert (stepped[:, 10:] == forward[-1][:, 10:]).all()
