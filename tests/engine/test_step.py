"""One training step (step.py): the StepSettings of a run's arguments, the rule options
(gamma) each rule takes, the learned inverses' noise per run and step, and learned inverses
trained in float32 and, from a drawn start, on MNIST.
"""
import numpy
import pytest

from gaitprop.arrays import backend
from gaitprop.engine import step as training_step
from gaitprop.engine import training
from gaitprop.model import net as inv_net
from gaitprop.model.functions import one_hot
from gaitprop.model.net import InvNet, SquareInvNet, TowerInvNet
from helpers import PackOfOne, batches


def test_step_settings_of_run_arguments():
    from gaitprop.runs import settings
    args = settings.build_parser().parse_args(["--algorithm=TP", "--learning_rate=0.5",
                                          "--orthogonal_reg=3", "--log_alignment=7"])
    assert training_step.StepSettings.of(args) == training_step.StepSettings("TP", 0.5, 3.0, 7)
    args = settings.build_parser().parse_args(["--algorithm=GAIT", "--learn_inv", "--gamma=0.01",
                                               "--inv_learning_rate=0.002"])
    assert training_step.StepSettings.of(args) == training_step.StepSettings(
        "GAIT", 1e-4, 0.0, 0, 0.002, options=(("gamma", 0.01),))
    assert training_step.StepSettings.of(args).rule_options() == {"gamma": 0.01}
    args = settings.build_parser().parse_args(["--algorithm=GAIT"])
    assert training_step.StepSettings.of(args).rule_options() == {"gamma": 0.001}
    assert training_step.StepSettings("GAIT", 1e-4).inverse_learning_rate == 1e-4


def test_gamma_reaches_gait_and_no_other_rule():
    """--gamma is GAIT's: a step with gamma 0.5 gives GAIT's directions with gamma 0.5, which
    differ from gamma 0.001's where steps of that size cross zero; BP and TP take no gamma."""
    net = SquareInvNet(30, 2, start_seed=1, orthogonal_init=True)
    images, labels = batches(1, units=30)[0]
    _, _, directions = training_step.rule_directions(
        net, training_step.StepSettings("GAIT", 1e-4, options=(("gamma", 0.5),)), images,
        labels)
    forward = net.forward_pass(images)
    targets = inv_net.output_targets(forward[-1], labels)
    expected = net.directions("GAIT", forward, targets, gamma=0.5)
    published = net.directions("GAIT", forward, targets)
    for got, want in zip(directions, expected):
        numpy.testing.assert_array_equal(got["weights"], want["weights"])
    assert numpy.abs(directions[0]["weights"] - published[0]["weights"]).max() > 1e-3 * (
        numpy.abs(published[0]["weights"]).max())
    assert training_step.StepSettings("TP", 1e-4, options=(("gamma", 0.01),)).rule_options() == {}


@pytest.mark.parametrize("network", ["square, drawn start", "linear tower"])
def test_learned_inverses_train_in_float32(network):
    """float32 (the backend's dtype): V, c and their moments are float32 like W and b, the
    steps stay finite, and the quality rows are logged."""
    backend.select("numpy", dtype="float32")
    try:
        make = {"square, drawn start": lambda: SquareInvNet(48, 2, 1, True, learn_inverses=True,
                                                             exact_start=False),
                "linear tower": lambda: TowerInvNet([48, 48, 30, 10], 1, True, linear=True,
                                                    learn_inverses=True)}[network]
        runner = PackOfOne(make(), training_step.StepSettings("GAIT", 1e-3, 0.1, log_alignment=2))
        statistics = training.Statistics()
        for index, (images, labels) in enumerate(batches(6, units=48)):
            runner.step(backend.to_device(images), backend.to_device(labels), statistics, 0,
                        index)
        state = runner.net.state()
        assert {"V1", "c2", "mV1", "vc2"} <= set(state)
        assert all(array.dtype == numpy.float32 and numpy.isfinite(array).all()
                   for array in state.values())
        assert len(statistics.inverse_quality) == 3
    finally:
        backend.select("numpy", dtype="float64")


def test_learned_inverses_from_a_random_start_learn_on_mnist(data_root):
    """From a drawn start (V a second random orthogonal matrix, c = 0), 300 GAIT steps on
    genuine MNIST (one hidden layer of 784; the paper's lambda, learning rate 1e-4) bring
    the reconstruction error of the learned inverse from about 1 well down, and V nearer
    inv(W)."""
    from gaitprop.runs import data
    train, _ = data.load_dataset("MNIST", data_root.require("MNIST"))
    net = SquareInvNet(784, 1, start_seed=1, orthogonal_init=True, learn_inverses=True,
                       exact_start=False)
    runner = PackOfOne(net, training_step.StepSettings("GAIT", 1e-4, 0.1, log_alignment=50))
    statistics = training.Statistics()
    labels = one_hot(train[1])
    for index in range(301):
        rows = slice(60 * index, 60 * (index + 1))
        runner.step(train[0][rows], labels[rows], statistics, 0, index)
    (first, first_distance), (last, last_distance) = (statistics.inverse_quality[0][2:],
                                                      statistics.inverse_quality[-1][2:])
    assert len(statistics.inverse_quality) == 7
    assert first > 0.5 and last < 0.5 * first, statistics.inverse_quality
    assert last_distance < first_distance


def test_the_inverses_noise_is_the_runs_own_at_each_step():
    """inverse_noise: run k's noise at (epoch, batch) is drawn from its seed, the epoch and
    the batch alone, N(0, sigma**2) per unit: the same in a pack as alone, again when drawn
    again (a resumed run), other at another step or seed; none without learned inverses."""
    def make(seed):
        return TowerInvNet([30, 30, 20, 10], seed, True, learn_inverses=True)
    settings = training_step.StepSettings("DTP", 1e-4, inv_noise=0.5)
    pack = InvNet.stack([make(4), make(9)])
    noise = training_step.inverse_noise(pack, settings, 2, 17, 400)
    assert [array.shape for array in noise] == [(2, 400, 20), (2, 400, 10)]
    for position, seed in enumerate((4, 9)):
        alone = training_step.inverse_noise(InvNet.stack([make(seed)]), settings, 2, 17, 400)
        for together, single in zip(noise, alone):
            numpy.testing.assert_array_equal(together[position], single[0])
    again = training_step.inverse_noise(pack, settings, 2, 17, 400)
    later = training_step.inverse_noise(pack, settings, 2, 18, 400)
    numpy.testing.assert_array_equal(again[0], noise[0])
    assert not numpy.array_equal(later[0], noise[0])
    assert not numpy.array_equal(noise[0][0], noise[0][1])
    values = numpy.concatenate([array.ravel() for array in noise])
    assert abs(values.mean()) < 0.02 and abs(values.std() - 0.5) < 0.02
    assert training_step.inverse_noise(pack, training_step.StepSettings("DTP", 1e-4), 2, 17,
                                       400) == ()
    plain = InvNet.stack([TowerInvNet([30, 30, 20, 10], 4, True)])
    assert training_step.inverse_noise(plain, settings, 2, 17, 400) == ()
