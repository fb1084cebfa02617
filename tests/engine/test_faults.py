"""What stops a run that diverges (faults.py): a batch that is not finite stops training
before the weights change, check_finite's look at every direction of every run, parameters
an epoch's last step overflows found before its checkpoint, messages naming the learning rate
to lower (--inv_learning_rate for learned inverses), and no alignment row from a diverging
step; each through the runner's checked and queued steps.
"""
import io
import re

import numpy
import pytest

from gaitprop.engine import faults
from gaitprop.engine import progress as progress_lines
from gaitprop.engine import step as training_step
from gaitprop.engine import step_runner
from gaitprop.engine import training
from gaitprop.model.functions import one_hot
from gaitprop.model.net import InvNet, SquareInvNet, TowerInvNet
from helpers import PAPER, PackOfOne, batches, by_layer, trained


@pytest.mark.parametrize("deferred", [False, True], ids=["checked", "queued"])
def test_a_non_finite_batch_stops_training_before_the_weights_change(deferred):
    data = batches(9)
    data[6][0][3, 5] = numpy.nan
    runner = PackOfOne(SquareInvNet(784, 2, start_seed=1, orthogonal_init=True),
                       training_step.StepSettings("GAIT", *reversed(PAPER["GAIT"])),
                       deferred=deferred)
    statistics = training.Statistics()
    with pytest.raises(faults.Diverged, match=r"epoch 1, batch 7: the output of layer 0"):
        for index, (images, labels) in enumerate(data):
            runner.step(images, labels, statistics, 0, index)
        runner.settle(statistics)
    before, _ = trained("GAIT", data[:6], deferred=False)
    for a, b in zip(runner.net.parameters().values(), before.parameters().values()):
        assert numpy.isfinite(a).all()
        assert numpy.linalg.norm(a - b) <= 1e-10 * numpy.linalg.norm(b)


def test_check_finite_looks_at_every_weight_direction_of_every_run():
    """A pack of two: an infinity in run 1's directions of layer 1 names that run and layer."""
    net = InvNet.stack([TowerInvNet([6, 6, 5, 4], start_seed=seed) for seed in (1, 2)])
    forward = net.forward_pass(numpy.ones((2, 3, 6)))
    weights = [numpy.ones((2, n, n)) for n in (6, 5, 4)]
    biases = [numpy.ones((2, n)) for n in (6, 5, 4)]
    statistics = [training.Statistics(), training.Statistics()]
    faults.check_finite(net, forward, by_layer(weights, biases), statistics, "here")
    weights[1][1, 2, 3] = numpy.inf
    with pytest.raises(faults.Diverged, match="at here: the update directions of layer 1 ") as (
            diverged):
        faults.check_finite(net, forward, by_layer(weights, biases), statistics, "here")
    assert list(diverged.value.runs) == [1]


def test_check_finite_ignores_finite_values_whose_sum_overflows():
    net = TowerInvNet([6, 6], start_seed=1)
    forward = net.forward_pass(numpy.ones((3, 6)))
    huge = numpy.full((6, 6), 1e307)
    assert faults.run_fault(net, forward, by_layer([huge], [numpy.ones(6)]),
                              training.Statistics()) is None
    huge[4, 1] = numpy.inf  # the positive control: one infinity among them is found
    assert faults.run_fault(net, forward, by_layer([huge], [numpy.ones(6)]),
                              training.Statistics()).startswith(
        "the update directions of layer 0 are not finite")


def small_sets(runs, units=16, seed=0):
    """One RunData of random data per run: 1000 training images (1000 batches of 1), 50 test
    images."""
    generator = numpy.random.RandomState(seed)
    sets = []
    for _ in range(runs):
        labels = generator.randint(0, 10, 1000)
        sets.append(((generator.rand(1000, units), labels), one_hot(labels),
                     (generator.rand(50, units), generator.randint(0, 10, 50))))
    return sets


@pytest.mark.parametrize("deferred", [False, True], ids=["checked", "queued"])
def test_parameters_an_epochs_last_step_overflows_are_found_before_its_checkpoint(
        deferred, monkeypatch):
    """A step's checks look at its outputs and directions, so a parameter its update makes
    not finite is seen at the next step, which the last step of an epoch does not have before
    the epoch's checkpoint. Here that update makes run 1's b0 NaN and run 2's c1 (a learned
    inverse's biases) infinite: the end of the epoch checks every parameter of every run
    (before the epoch's evaluation), runs 1 and 2 leave the pack, each message naming its
    parameter and the learning rate to lower, and run 0 alone is evaluated."""
    from gaitprop.model import parameters
    feed = training.Feed(small_sets(3))
    update, updates = parameters.NetParameters.step, []

    def overflowing(net, *args, **kwargs):
        update(net, *args, **kwargs)
        updates.append(None)
        if len(updates) == feed.nb_batches:  # the epoch's last step
            net.layers[0].biases[1, 3] = numpy.nan
            net.layers[1].backward_biases[2, 0] = numpy.inf
    monkeypatch.setattr(parameters.NetParameters, "step", overflowing)
    settings = training_step.StepSettings("GAIT", 1e-3, 0.1, inv_learning_rate=1e-3)
    runner = step_runner.StepRunner(
        InvNet.stack([SquareInvNet(16, 1, seed, True, learn_inverses=True) for seed in (1, 2, 3)]),
        training_step.StepSettings.of_pack([settings] * 3), deferred=deferred)
    statistics = [training.Statistics() for _ in range(3)]
    every_run = list(statistics)
    feed.record(runner.net, statistics, runner.run_ids, None)  # before training
    progress = progress_lines.Progress(1, feed.nb_batches, io.StringIO())
    progress.start_epoch(0)
    assert training.train_epoch(runner, feed, statistics, 0, progress, lambda: False, 0)
    assert len(updates) == feed.nb_batches and runner.redone == 0
    assert runner.run_ids == [0] and sorted(runner.diverged) == [1, 2]
    assert re.match(r"Training diverged at epoch 1, batch 1000: b0 \(the biases of layer 0\) is "
                    r"not finite after the step\. Try a smaller --learning_rate",
                    runner.diverged[1]), runner.diverged[1]
    assert re.match(r"Training diverged at epoch 1, batch 1000: c1 \(the biases of layer 1's "
                    r"learned inverse\) is not finite after the step\. Try a smaller "
                    r"--inv_learning_rate", runner.diverged[2]), runner.diverged[2]
    assert "--learning_rate" not in runner.diverged[2]
    assert statistics == [every_run[0]] and len(every_run[0].values["test_acc"]) == 2
    assert len(every_run[1].values["test_acc"]) == len(every_run[2].values["test_acc"]) == 1
    for array in runner.net.parameters().values():
        assert numpy.isfinite(array).all()


def divergence(runner, data):
    """The message of the Diverged that training `runner` (a PackOfOne) on `data` raises."""
    statistics = training.Statistics()
    with pytest.raises(faults.Diverged) as diverged:
        for index, (images, labels) in enumerate(data):
            runner.step(images, labels, statistics, 0, index)
        runner.settle(statistics)
    return str(diverged.value)


@pytest.mark.parametrize("deferred", [False, True], ids=["checked", "queued"])
def test_learned_inverses_that_noise_blows_up_name_the_noise(deferred):
    """Noise of standard deviation 1e300 for the learned inverses: their directions overflow
    at the first step. The message names --inv_noise, the cause (it named only
    --inv_learning_rate)."""
    data = batches(2, units=16)
    runner = PackOfOne(SquareInvNet(16, 1, 1, True, learn_inverses=True),
                       training_step.StepSettings("DTP", 1e-4, inv_noise=1e300),
                       deferred=deferred)
    message = divergence(runner, data)
    assert "batch 1: the update directions of layer 1's learned inverse" in message, message
    assert "a smaller --inv_noise" in message and "1e+300" in message, message


@pytest.mark.parametrize("deferred", [False, True], ids=["checked", "queued"])
def test_learned_inverses_that_blow_up_name_inv_learning_rate(deferred):
    """--learn_inv --inv_learning_rate=1e200: V and c grow until their own directions overflow
    at the second step (W and the output are still finite). The message names them and
    --inv_learning_rate, not --learning_rate; directions of W that overflow still name
    --learning_rate."""
    data = batches(4, units=16)
    runner = PackOfOne(SquareInvNet(16, 1, 1, True, learn_inverses=True),
                       training_step.StepSettings("GAIT", 1e-4, 0.1, inv_learning_rate=1e200),
                       deferred=deferred)
    message = divergence(runner, data)
    assert re.search(r"Training diverged at epoch 1, batch 2: the update directions of layer 1's "
                    r"learned inverse \((V1, c1|V1|c1)\) are not finite", message), message
    assert "--inv_learning_rate" in message and "--learning_rate" not in message
    net = InvNet.stack([SquareInvNet(16, 1, 1, True, learn_inverses=True)])
    images, labels = batches(1, units=16)[0]
    forward, _, directions = training_step.rule_directions(
        net, training_step.StepSettings("GAIT", 1e-4), images[None], labels[None])
    directions[1]["weights"][0, 2, 3] = numpy.inf
    with pytest.raises(faults.Diverged, match="the update directions of layer 1 are not "
                                                "finite.* Try a smaller --learning_rate"):
        faults.check_finite(net, forward, directions, [training.Statistics()], "here")


@pytest.mark.parametrize("deferred", [False, True], ids=["checked", "queued"])
def test_a_diverging_step_logs_no_alignment_row(deferred):
    """Alignment due at every second batch; batch 6 holds a NaN: rows for batches 0, 2 and 4
    only, all finite (the row of a step is written after its checks)."""
    data = batches(9, units=48)
    data[6][0][3, 5] = numpy.nan
    net = SquareInvNet(48, 2, start_seed=1, orthogonal_init=True)
    runner = PackOfOne(net, training_step.StepSettings("GAIT", 1e-4, 0.1, log_alignment=2),
                       deferred=deferred)
    statistics = training.Statistics()
    with pytest.raises(faults.Diverged, match="batch 7"):  # index 6, counted from 1
        for index, (images, labels) in enumerate(data):
            runner.step(images, labels, statistics, 0, index)
    assert [row[:2] for row in statistics.alignment] == [[0, 0], [0, 2], [0, 4]]
    assert numpy.isfinite(statistics.alignment).all()
