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
    assert training_step.StepSettings("TP", 1e-4, options=(("gamma", 0.01),)).rule_options() == {
        "target_step": 1.0}  # TP takes its own options only


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


def test_each_of_the_inverses_steps_on_a_batch_has_noise_of_its_own():
    """With inv_steps = K the noise of a step is K sets, one per inverse step, drawn one after
    another: the first is what a single inverse step draws."""
    import dataclasses
    pack = InvNet.stack([TowerInvNet([30, 30, 20, 10], 4, True, learn_inverses=True)])
    one = training_step.StepSettings("DTP", 1e-4, inv_noise=0.5)
    three = dataclasses.replace(one, inv_steps=3)
    noise = training_step.inverse_noise(pack, three, 2, 17, 40)
    assert [array.shape for array in noise] == [(1, 40, 20), (1, 40, 10)] * 3
    for first, single in zip(noise, training_step.inverse_noise(pack, one, 2, 17, 40)):
        numpy.testing.assert_array_equal(first, single)
    assert not numpy.array_equal(noise[0], noise[2])


def test_the_inverses_take_their_own_steps_before_the_rules_directions():
    """inv_steps = 3: the inverses step twice on their own on the batch (each down their
    loss on its own noise), the rule's directions pass through the inverses so improved,
    and the third inverse step goes with the forward weights' step: as done by hand with the
    network's own pieces. With one step there is none of their own (the published step)."""
    import dataclasses
    from gaitprop.model.net import output_targets
    make = lambda: InvNet.stack([SquareInvNet(16, 2, 3, True, learn_inverses=True,  # noqa: E731
                                              exact_start=False)])
    settings = dataclasses.replace(training_step.StepSettings(
        "DTP", 1e-3, 0.1, inv_learning_rate=1e-2, inv_noise=0.2,
        options=(("target_step", 0.1),), inv_loss="difference"), inv_steps=3)
    settings = settings.of_pack([settings]).on_backend()
    images, labels = batches(1, units=16)[0]
    noise = training_step.inverse_noise(make(), settings, 0, 5, 60)
    net = make()
    forward, _, directions = training_step.rule_directions(net, settings, images[None],
                                                           labels[None], noise)
    net.step(directions, settings.learning_rate, inverse_learning_rate=settings.inv_learning_rate)
    by_hand = make()
    forward = by_hand.forward_pass(images[None])
    for step in range(2):
        own = [{} for _ in by_hand.layers]
        by_hand.add_inverse_directions(forward, own, noise[2 * step:2 * step + 2], "difference")
        assert own[0] == {} and set(own[1]) == {"backward_weights", "backward_biases"}
        by_hand.step(own, settings.learning_rate, inverse_learning_rate=settings.inv_learning_rate)
    last = by_hand.directions("DTP", forward, output_targets(forward[-1], labels[None]),
                              settings.orthogonal_reg, target_step=0.1)
    by_hand.add_inverse_directions(forward, last, noise[4:], "difference")
    by_hand.step(last, settings.learning_rate, inverse_learning_rate=settings.inv_learning_rate)
    for name, array in by_hand.state().items():
        numpy.testing.assert_array_equal(net.state()[name], array, err_msg=name)
    assert not numpy.array_equal(make().state()["V1"], net.state()["V1"])


def test_a_runner_whose_inverses_take_steps_of_their_own_checks_every_step():
    """Queued steps take the inverses' step with the forward one; with more inverse steps a
    batch the runner takes checked steps (on a GPU too)."""
    import dataclasses
    from gaitprop.engine.step_runner import StepRunner
    net = InvNet.stack([SquareInvNet(16, 2, 3, True, learn_inverses=True)])
    settings = training_step.StepSettings("DTP", 1e-3)
    assert StepRunner(net, settings.of_pack([settings]), deferred=True).deferred
    more = dataclasses.replace(settings, inv_steps=2)
    assert not StepRunner(net, more.of_pack([more]), deferred=True).deferred
