"""DFA (gaitprop.model.rules.dfa): every hidden layer's error is the output layer's local
error through a fixed matrix of its own; against FA and a hand computation, packs, resume."""
import numpy
import pytest

from gaitprop.model.functions import transfer_derivative
from gaitprop.model.net import SquareInvNet, TowerInvNet
from gaitprop.model.rules import dfa, fa
from gaitprop.runs.settings import build_parser
from helpers import assert_packs_equal_single_runs, assert_resumes_exactly, forward_and_targets



def test_on_one_hidden_layer_dfa_is_fa_with_the_matching_matrix():
    """With one hidden layer the output layer is the only one above it: DFA's D_1 plays FA's
    B_1. Their own draws differ (streams of their own)."""
    net = SquareInvNet(30, 1, start_seed=3)
    forward, targets = forward_and_targets(net)
    assert not numpy.allclose(fa.feedback_matrix(net, 1), dfa.feedback_matrix(net, 1))
    fa.feedback_matrix(net, 1)[...] = dfa.feedback_matrix(net, 1)
    got, expected = net.directions("DFA", forward, targets), net.directions("FA", forward, targets)
    for layer_got, layer_expected in zip(got, expected):
        for name in ("weights", "biases"):
            numpy.testing.assert_array_equal(layer_got[name], layer_expected[name])


@pytest.mark.parametrize("net", [SquareInvNet(24, 3, start_seed=2),
                                 TowerInvNet([24, 24, 16, 12, 10], start_seed=2)],
                         ids=["square", "tower"])
def test_each_layer_gets_the_output_error_through_its_own_matrix(net):
    """By hand: d_L = g(h_L) * (h_L - t); below the top, e_l = d_L @ D_l on the units layer
    l reads, d_l = g(h_{l+1}) * e_{l+1}, and W_l's direction is -x_l.T @ d_l / n."""
    forward, targets = forward_and_targets(net)
    top = transfer_derivative(forward[-1]) * (forward[-1] - targets)
    got = net.directions("DFA", forward, targets)
    for index, layer in enumerate(net.layers[:-1]):
        errors = top @ dfa.feedback_matrix(net, index + 1)
        assert dfa.feedback_matrix(net, index + 1).shape == (net.widths[-1],
                                                              net.layers[index + 1].nb_units)
        local = transfer_derivative(forward[index + 1])[:, :errors.shape[1]] * errors
        inputs = forward[index][:, :layer.nb_units]
        expected = -inputs.T @ local / len(inputs)
        numpy.testing.assert_allclose(got[index]["weights"][:, :local.shape[1]],
                                      expected[:, :local.shape[1]], rtol=1e-12, atol=1e-15)


@pytest.mark.parametrize("network", ["square", "tower"])
def test_a_pack_of_dfa_runs_is_bit_identical_to_single_runs(network):
    assert_packs_equal_single_runs("DFA", network)


def test_dfa_resumes_exactly_from_a_checkpoint(tmp_path):
    assert_resumes_exactly(tmp_path, "DFA")


def test_the_command_line_takes_dfa_and_refuses_learned_inverses(capsys):
    from gaitprop.runs import run_folder
    args = build_parser().parse_args(["--algorithm=DFA", "--tower"])
    assert run_folder.folder_name(args) == "MNIST_DFA_0.0OrthoReg_1Seed_0.0001LR_1TOWER"
    with pytest.raises(SystemExit) as stopped:
        build_parser().parse_args(["--algorithm=DFA", "--learn_inv"])
    assert stopped.value.code == 2
    assert "DFA passes its errors down from the output layer straight to each layer" in (
        capsys.readouterr().err)
