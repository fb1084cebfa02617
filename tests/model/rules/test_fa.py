"""FA (gaitprop.model.rules.fa): the fixed feedback matrices, FA's directions against BP's,
packs, resume, and the command line."""
import numpy
import pytest

from gaitprop.model.net import InvNet, SquareInvNet, TowerInvNet
from gaitprop.model.rules import fa
from gaitprop.runs.settings import build_parser
from helpers import assert_packs_equal_single_runs, assert_resumes_exactly, forward_and_targets

NETWORKS = {"square": lambda: SquareInvNet(32, 3, start_seed=4),
            "tower": lambda: TowerInvNet([32, 32, 24, 16, 10], start_seed=4)}



@pytest.mark.parametrize("network", sorted(NETWORKS))
def test_with_b_equal_to_w_transposed_fa_is_bp(network):
    """B_l = W_l.T injected: FA passes errors down exactly as BP."""
    net = NETWORKS[network]()
    for index, layer in enumerate(net.layers[1:], start=1):
        fa.feedback_matrix(net, index)[...] = layer.weight_matrix.T
    forward, targets = forward_and_targets(net)
    got, expected = net.directions("FA", forward, targets), net.directions("BP", forward, targets)
    for layer_got, layer_expected in zip(got, expected):
        for name in ("weights", "biases"):
            numpy.testing.assert_allclose(layer_got[name], layer_expected[name], rtol=1e-12,
                                          atol=1e-15)
    drawn = NETWORKS[network]()  # without the injection, FA is not BP below the top
    got = drawn.directions("FA", forward, targets)
    assert not numpy.allclose(got[0]["weights"], expected[0]["weights"])
    numpy.testing.assert_allclose(got[-1]["weights"], expected[-1]["weights"], rtol=1e-12)


def test_the_feedback_matrices_are_fixed_seeded_scaled_like_w_and_leave_w_alone():
    net = SquareInvNet(200, 3, start_seed=5)
    matrix = fa.feedback_matrix(net, 1)
    assert matrix.shape == (200, 200) and fa.feedback_matrix(net, 1) is matrix  # kept
    again = SquareInvNet(200, 3, start_seed=5)
    numpy.testing.assert_array_equal(fa.feedback_matrix(again, 1), matrix)  # from the seed
    assert not numpy.array_equal(fa.feedback_matrix(net, 2), matrix)  # a layer's own
    assert not numpy.array_equal(fa.feedback_matrix(SquareInvNet(200, 3, start_seed=6), 1),
                                 matrix)
    assert abs(matrix.std() / numpy.sqrt(2.0 / 400) - 1) < 0.02  # Gaussian W's scale
    assert abs(matrix.mean()) < 0.005
    gaussian = SquareInvNet(200, 3, start_seed=5)
    numpy.testing.assert_array_equal(gaussian.layers[1].weight_matrix,
                                     net.layers[1].weight_matrix)  # W's stream untouched
    assert not numpy.allclose(matrix, net.layers[1].weight_matrix.T)


def test_a_pack_draws_each_runs_matrices_from_its_seed_and_a_run_sees_its_own():
    pack = InvNet.stack([SquareInvNet(20, 2, start_seed=seed) for seed in (3, 9)])
    stacked = fa.feedback_matrix(pack, 2)
    assert stacked.shape == (2, 20, 20)
    for position, seed in enumerate((3, 9)):
        numpy.testing.assert_array_equal(stacked[position], fa.feedback_matrix(
            SquareInvNet(20, 2, start_seed=seed), 2))
        view = pack.run(position)
        assert fa.feedback_matrix(view, 2).base is stacked  # the run's part, not a new draw
    shrunk = pack.select([1])
    numpy.testing.assert_array_equal(fa.feedback_matrix(shrunk, 2)[0], stacked[1])


@pytest.mark.parametrize("network", ["square", "tower"])
def test_a_pack_of_fa_runs_is_bit_identical_to_single_runs(network):
    assert_packs_equal_single_runs("FA", network)


def test_fa_resumes_exactly_from_a_checkpoint(tmp_path):
    assert_resumes_exactly(tmp_path, "FA")


def test_fa_aligns_with_bp_as_it_learns():
    """Lillicrap et al.'s result on a small task (a random linear teacher's classes): FA's
    angles to BP start near 90 degrees in the layers below the top (B is random) and fall
    well below 90 as W comes to align with B. (Measured: 88, 97, 92 -> 63, 67, 66 degrees.)"""
    from gaitprop.engine.step import StepSettings
    from gaitprop.engine.statistics import Statistics
    from gaitprop.model.functions import one_hot
    from helpers import PackOfOne
    generator = numpy.random.RandomState(0)
    teacher = generator.randn(40, 10)
    images = generator.rand(30000, 40) - 0.5
    targets = one_hot((images @ teacher).argmax(axis=1))
    net = SquareInvNet(40, 3, start_seed=2, orthogonal_init=True)
    runner = PackOfOne(net, StepSettings("FA", 3e-3, log_alignment=100))
    statistics = Statistics()
    for step in range(1500):
        rows = slice(20 * step, 20 * (step + 1))
        runner.step(images[rows], targets[rows], statistics, 0, step)
    angles = numpy.array(statistics.alignment)[:, 2:]
    first, last = angles[0], angles[-3:].mean(axis=0)  # the last three logs: less noise
    assert (abs(first[:-1] - 90) < 10).all(), first
    assert (last[:-1] < 75).all() and (last[:-1] < first[:-1] - 15).all(), (first, last)
    assert last[-1] == pytest.approx(0, abs=1e-3)  # the top layer's error is BP's


def test_the_command_line_takes_fa_and_refuses_learned_inverses(capsys):
    from gaitprop.runs import run_folder
    args = build_parser().parse_args(["--algorithm=FA", "--nb_layers=4"])
    assert run_folder.folder_name(args) == "MNIST_FA_0.0OrthoReg_1Seed_0.0001LR_4L"
    for flags, message in ((["--learn_inv"], "--learn_inv needs --algorithm=GAIT, TP or DTP: "
                                             "FA passes its errors down through a fixed random "
                                             "matrix B of W.T's shape and uses no inverse"),
                           (["--gamma=0.01"], "--gamma applies only to --algorithm=GAIT: FA "
                                              "takes no gamma")):
        with pytest.raises(SystemExit) as stopped:
            build_parser().parse_args(["--algorithm=FA", *flags])
        assert stopped.value.code == 2 and message in capsys.readouterr().err
