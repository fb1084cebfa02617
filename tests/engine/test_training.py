"""The training step and its runner: the checks, queued (deferred) steps with kept
inverses, the redo of a failed step, the batches' running statistics and the progress line.

The runner queues steps on a GPU; here it is made to queue on NumPy (deferred=True), which
runs the same code with the guard read by the host, so that CI (no GPU) tests the logic.
"""
import io
import re

import numpy
import pytest

from gaitprop.arrays import backend
from gaitprop.arrays import products
from gaitprop.arrays import cublas
from gaitprop.model import net as inv_net
from gaitprop.runs import settings as settings_table
from gaitprop.engine import step_runner
from gaitprop.engine import training
from helpers import PackOfOne, by_layer
from gaitprop.model.layer import KeptInverse
from gaitprop.model.net import InvNet, SquareInvNet, TowerInvNet
from gaitprop.model.functions import evaluate, one_hot

PAPER = {rule: (preset["orthogonal_reg"], preset["learning_rate"])  # (lambda, lr)
         for rule, preset in ((rule, settings_table.presets(settings_table.PAPER, rule))
                              for rule in ("BP", "GAIT", "TP", "DTP"))}


def batches(count, seed=0, units=784):
    """`count` batches of 60 random images in [0, 1] and one-hot labels."""
    generator = numpy.random.RandomState(seed)
    return [(generator.rand(60, units), one_hot(generator.randint(0, 10, 60)))
            for _ in range(count)]


def trained(algorithm, data, deferred, nb_hidden=2, check_every=None, net=None, inv_noise=0.0):
    """(the trained run, its runner) after a runner's steps over `data` (a pack of one, as
    run.py trains; paper lambda and learning rate)."""
    ortho_weighting, learning_rate = PAPER[algorithm]
    net = net or SquareInvNet(784, nb_hidden, start_seed=1, orthogonal_init=True)
    runner = PackOfOne(net, training.StepSettings(algorithm, learning_rate, ortho_weighting,
                                                  inv_noise=inv_noise),
                       deferred=deferred)
    if check_every:
        runner.guard.CHECK_EVERY = runner.guard.check_every = check_every
    statistics = training.Statistics()
    for index, (images, labels) in enumerate(data):
        runner.step(images, labels, statistics, 0, index)
    runner.settle(statistics)
    return runner.net, runner


def relative_difference(first, second):
    """max over arrays of |a - b|_F / |b|_F."""
    return max(numpy.linalg.norm(a - b) / numpy.linalg.norm(b) for a, b in zip(first, second))


def test_queued_bp_steps_are_bit_identical_to_checked_steps():
    data = batches(12)
    queued, _ = trained("BP", data, deferred=True, check_every=5)
    checked, _ = trained("BP", data, deferred=False)
    for a, b in zip(queued.parameters().values(), checked.parameters().values()):
        numpy.testing.assert_array_equal(a, b)
    numpy.testing.assert_array_equal(queued.optimizer.second_moments["b1"],
                                     checked.optimizer.second_moments["b1"])


@pytest.mark.parametrize("algorithm", ["GAIT", "TP"])
def test_queued_steps_with_kept_inverses_agree_with_lu_steps(algorithm):
    """Kept inverses (Newton-Schulz + refinement) instead of LU solves: the weights after
    8 steps differ by less than a rounding-level change of the inputs makes LU steps differ.
    Measured here: queued vs LU 2e-12 (GAIT) / 6e-12 (TP); inputs x (1 + 2^-52) 9e-11 / 2e-11
    (max-abs metric; 2 hidden layers)."""
    data = batches(8)
    queued, runner = trained(algorithm, data, deferred=True)
    checked, _ = trained(algorithm, data, deferred=False)
    nudged, _ = trained(algorithm, [(x * (1 + 2.0 ** -52), y) for x, y in data], deferred=False)
    spread = relative_difference(nudged.parameters().values(), checked.parameters().values())
    difference = relative_difference(queued.parameters().values(), checked.parameters().values())
    print(f"{algorithm}: queued vs LU {difference:.1e}, rounding spread {spread:.1e}")
    assert runner.inverses.kept and not runner.inverses.failures
    assert 0 < difference <= spread


def test_kept_inverse_solves_as_exactly_as_lu_after_a_step():
    generator = numpy.random.RandomState(3)
    weights = numpy.linalg.qr(generator.randn(784, 784))[0][None]  # a pack of one run
    kept = KeptInverse(weights)
    moved = weights + 1e-4 * numpy.sign(generator.randn(1, 784, 784)) / 28  # a step's move
    rhs = generator.randn(1, 60, 784)
    solution = kept.solve(moved, rhs)
    exact = numpy.linalg.solve(moved[0].T, rhs[0].T).T[None]
    assert kept.acceptable()
    assert numpy.linalg.norm(solution - exact) <= 1e-13 * numpy.linalg.norm(exact)
    assert numpy.linalg.norm(rhs - solution @ moved) <= numpy.linalg.norm(rhs - exact @ moved)


@pytest.mark.parametrize("change", ["large move", "singular"])
def test_kept_inverse_reports_a_solve_it_cannot_make_exact(change):
    generator = numpy.random.RandomState(4)
    weights = numpy.linalg.qr(generator.randn(50, 50))[0][None]  # a pack of one run
    kept = KeptInverse(weights)
    if change == "large move":
        weights = weights + 0.5 * generator.randn(1, 50, 50)
    else:
        weights = weights.copy()
        weights[..., 0] = weights[..., 1]
    kept.solve(weights, generator.randn(1, 60, 50))
    assert not kept.acceptable()


def test_a_failed_solve_is_redone_by_lu():
    """A kept inverse spoilt between steps: that step fails its check, is redone with an LU
    solve, and the run ends where LU steps end (to rounding)."""
    data = batches(10)
    net = SquareInvNet(784, 2, start_seed=1, orthogonal_init=True)
    settings = training.StepSettings("GAIT", 1e-4, 0.1)
    runner = PackOfOne(net, settings, deferred=True)
    statistics = training.Statistics()
    for index, (images, labels) in enumerate(data):
        if index == 4:
            runner.inverses.kept[0].inverse *= 1.5
        runner.step(images, labels, statistics, 0, index)
    runner.settle(statistics)
    checked, _ = trained("GAIT", data, deferred=False)
    assert runner.inverses.failures == [4]
    assert relative_difference(runner.net.parameters().values(),
                               checked.parameters().values()) <= 1e-10


def switched_to_lu(steps=30, algorithm="TP"):
    """(net, runner, statistics, data) after `steps` queued steps of a small network whose
    every kept-inverse solve fails its check (tolerance -1)."""
    data = batches(steps, units=48)
    net = SquareInvNet(48, 2, start_seed=1, orthogonal_init=True)
    ortho_weighting, learning_rate = PAPER[algorithm]
    runner = PackOfOne(net, training.StepSettings(algorithm, learning_rate, ortho_weighting),
                       deferred=True)
    runner.guard.tolerance = -1.0  # every solve fails its check
    statistics = training.Statistics()
    for index, (images, labels) in enumerate(data):
        runner.step(backend.to_device(images), backend.to_device(labels), statistics, 0, index)
    runner.settle(statistics)
    return runner.net, runner, statistics, data


def test_many_failed_solves_switch_the_run_to_lu():
    """Steps 0 to 20 fail (each once, though the steps after a failure are queued again):
    the 21st failure within 100 steps switches to LU; the run ends where LU steps end."""
    net, runner, _, data = switched_to_lu()
    checked, _ = trained("TP", data, deferred=False,
                         net=SquareInvNet(48, 2, start_seed=1, orthogonal_init=True))
    assert runner.steps_done == len(data)
    assert runner.inverses.failures == list(range(runner.inverses.FAILURES_PER_100_STEPS + 1))
    assert not runner.inverses.kept and all(layer.kept_inverse is None
                                            for layer in runner.runner.net.layers)
    assert relative_difference(net.parameters().values(), checked.parameters().values()) <= 1e-10


def test_a_singular_weight_matrix_met_by_a_queued_lu_solve_is_a_divergence():
    """After the switch to LU, a queued step's LU solve that finds W singular fails the step
    in the guard: when the host reads it, the run ends as a checked step does (Diverged
    naming the batch), not with numpy's LinAlgError."""
    net, runner, statistics, data = switched_to_lu(algorithm="GAIT")
    assert runner.inverses.lu_only
    net.layers[1].weight_matrix[...] = 0.0
    with pytest.raises(training.Diverged, match=r"epoch 1, batch 31: a layer's weights are "
                                                r"singular"):  # batch index 30, counted from 1
        runner.step(*map(backend.to_device, data[0]), statistics, 0, 30)
        runner.settle(statistics)


def test_finite_sums_that_overflow_are_redone_but_not_counted_as_failed_solves():
    """Two output units near the largest float64 (the labels never read them): every row sum
    of the output overflows, so each queued step is redone by a checked one, which finds
    nothing wrong; the kept inverses stay (an overflowing sum is not a solver failure)."""
    data = batches(30, units=48)
    net = SquareInvNet(48, 2, start_seed=1, orthogonal_init=True)
    net.layers[-1].biases[[20, 30]] = 1e308
    net, runner = trained("GAIT", data, deferred=True, net=net)
    assert runner.redone == len(data)
    assert runner.inverses.failures == [] and runner.inverses.kept and not runner.inverses.lu_only
    assert numpy.isfinite(net.layers[0].weight_matrix).all()


@pytest.mark.parametrize("deferred", [False, True], ids=["checked", "queued"])
def test_a_non_finite_batch_stops_training_before_the_weights_change(deferred):
    data = batches(9)
    data[6][0][3, 5] = numpy.nan
    runner = PackOfOne(SquareInvNet(784, 2, start_seed=1, orthogonal_init=True),
                       training.StepSettings("GAIT", *reversed(PAPER["GAIT"])), deferred=deferred)
    statistics = training.Statistics()
    with pytest.raises(training.Diverged, match=r"epoch 1, batch 7: the output of layer 0"):
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
    training.check_finite(net, forward, by_layer(weights, biases), statistics, "here")
    weights[1][1, 2, 3] = numpy.inf
    with pytest.raises(training.Diverged, match="at here: the update directions of layer 1 ") as (
            diverged):
        training.check_finite(net, forward, by_layer(weights, biases), statistics, "here")
    assert list(diverged.value.runs) == [1]


def test_check_finite_ignores_finite_values_whose_sum_overflows():
    net = TowerInvNet([6, 6], start_seed=1)
    forward = net.forward_pass(numpy.ones((3, 6)))
    huge = numpy.full((6, 6), 1e307)
    assert training.run_fault(net, forward, by_layer([huge], [numpy.ones(6)]),
                              training.Statistics()) is None
    huge[4, 1] = numpy.inf  # the positive control: one infinity among them is found
    assert training.run_fault(net, forward, by_layer([huge], [numpy.ones(6)]),
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
    settings = training.StepSettings("GAIT", 1e-3, 0.1, inv_learning_rate=1e-3)
    runner = step_runner.StepRunner(
        InvNet.stack([SquareInvNet(16, 1, seed, True, learn_inverses=True) for seed in (1, 2, 3)]),
        training.StepSettings.of_pack([settings] * 3), deferred=deferred)
    statistics = [training.Statistics() for _ in range(3)]
    every_run = list(statistics)
    feed.record(runner.net, statistics, runner.run_ids, None)  # before training
    progress = training.Progress(1, feed.nb_batches, io.StringIO())
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


@pytest.mark.parametrize("deferred", [False, True], ids=["checked", "queued"])
def test_learned_inverses_that_noise_blows_up_name_the_noise(deferred):
    """Noise of standard deviation 1e300 for the learned inverses: their directions overflow
    at the first step. The message names --inv_noise, the cause (it named only
    --inv_learning_rate)."""
    data = batches(2, units=16)
    runner = PackOfOne(SquareInvNet(16, 1, 1, True, learn_inverses=True),
                       training.StepSettings("DTP", 1e-4, inv_noise=1e300), deferred=deferred)
    statistics = training.Statistics()
    with pytest.raises(training.Diverged) as diverged:
        for index, (images, labels) in enumerate(data):
            runner.step(images, labels, statistics, 0, index)
        runner.settle(statistics)
    message = str(diverged.value)
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
                       training.StepSettings("GAIT", 1e-4, 0.1, inv_learning_rate=1e200),
                       deferred=deferred)
    statistics = training.Statistics()
    with pytest.raises(training.Diverged) as diverged:
        for index, (images, labels) in enumerate(data):
            runner.step(images, labels, statistics, 0, index)
        runner.settle(statistics)
    message = str(diverged.value)
    assert re.search(r"Training diverged at epoch 1, batch 2: the update directions of layer 1's "
                    r"learned inverse \((V1, c1|V1|c1)\) are not finite", message), message
    assert "--inv_learning_rate" in message and "--learning_rate" not in message
    net = InvNet.stack([SquareInvNet(16, 1, 1, True, learn_inverses=True)])
    images, labels = batches(1, units=16)[0]
    forward, _, directions = training.rule_directions(net, training.StepSettings("GAIT", 1e-4),
                                                      images[None], labels[None])
    directions[1]["weights"][0, 2, 3] = numpy.inf
    with pytest.raises(training.Diverged, match="the update directions of layer 1 are not "
                                                "finite.* Try a smaller --learning_rate"):
        training.check_finite(net, forward, directions, [training.Statistics()], "here")


@pytest.mark.parametrize("deferred", [False, True], ids=["checked", "queued"])
def test_a_diverging_step_logs_no_alignment_row(deferred):
    """Alignment due at every second batch; batch 6 holds a NaN: rows for batches 0, 2 and 4
    only, all finite (the row of a step is written after its checks)."""
    data = batches(9, units=48)
    data[6][0][3, 5] = numpy.nan
    net = SquareInvNet(48, 2, start_seed=1, orthogonal_init=True)
    runner = PackOfOne(net, training.StepSettings("GAIT", 1e-4, 0.1, log_alignment=2),
                       deferred=deferred)
    statistics = training.Statistics()
    with pytest.raises(training.Diverged, match="batch 7"):  # index 6, counted from 1
        for index, (images, labels) in enumerate(data):
            runner.step(images, labels, statistics, 0, index)
    assert [row[:2] for row in statistics.alignment] == [[0, 0], [0, 2], [0, 4]]
    assert numpy.isfinite(statistics.alignment).all()


def test_running_statistics_are_the_batches_accuracy_and_loss_before_each_update():
    """With a negligible learning rate the batches' tally equals evaluate() on them."""
    data = batches(6)
    net = SquareInvNet(784, 1, start_seed=2, orthogonal_init=True)
    runner = PackOfOne(net, training.StepSettings("BP", 1e-300))
    statistics = training.Statistics()
    for index, (images, labels) in enumerate(data):
        runner.step(images, labels, statistics, 0, index)
    accuracy, loss = runner.running_statistics()
    images = numpy.concatenate([x for x, _ in data])
    labels = numpy.concatenate([y for _, y in data]).argmax(axis=1)
    expected = evaluate(net, images, labels)
    assert accuracy == pytest.approx(expected[0], abs=1e-12)
    assert loss == pytest.approx(expected[1], rel=1e-12)
    assert runner.running_statistics() is None  # the tally starts again


def test_running_statistics_of_a_pack_go_on_after_a_run_leaves():
    """A pack of three: after 4 batches run 1 leaves (its epochs done); after 2 more the
    batches' accuracy and loss of runs 0 and 2 are those of their single runs' 6 batches."""
    generator = numpy.random.RandomState(5)
    sets = [(generator.rand(6, 60, 48), one_hot(generator.randint(0, 10, 360)).reshape(6, 60, 10))
            for _ in range(3)]
    settings = [training.StepSettings("BP", rate) for rate in (1e-3, 2e-3, 3e-3)]
    nets = [SquareInvNet(48, 1, seed, True) for seed in (1, 2, 3)]
    singles = []
    for net, setting, (images, labels) in zip(nets, settings, sets):
        runner = PackOfOne(net, setting)
        for batch in range(6):
            runner.step(images[batch], labels[batch], training.Statistics(), 0, batch)
        singles.append(runner.running_statistics())
    pack = step_runner.StepRunner(InvNet.stack([SquareInvNet(48, 1, seed, True)
                                             for seed in (1, 2, 3)]),
                               training.StepSettings.of_pack(settings))
    statistics = [training.Statistics() for _ in range(3)]
    for batch in range(6):
        if batch == 4:
            pack.remove([1], statistics)
        images = numpy.stack([sets[run][0][batch] for run in pack.run_ids])
        labels = numpy.stack([sets[run][1][batch] for run in pack.run_ids])
        pack.step(images, labels, statistics, 0, batch)
    for got, expected in zip(pack.running_statistics(), (singles[0], singles[2])):
        assert got == pytest.approx(expected, rel=1e-12)


def test_progress_lines_show_the_batches_and_the_latest_evaluation():
    stream = io.StringIO()
    progress = training.Progress(1, 20, stream)
    statistics = training.Statistics({"training_acc": [0.5], "training_loss": [1.0],
                                      "test_acc": [0.25], "test_loss": [1.0]})
    statistics.evaluation_moment = training.evaluation_moment(0, 9, 20)

    class Runner:  # a pack of one run, as run.py trains it
        def running_statistics(self):
            return [(0.75, 0.125)]
    progress.start_epoch(0)
    for batch_index in range(2):
        progress.batch_done(batch_index, [statistics], Runner())
    assert re.fullmatch(r"epoch 1/1 batch 2/20 [0-9.]+s batches acc 0.7500 loss 0.1250; "
                        r"evaluation \(after epoch 1 batch 10\): train acc 0.5000, "
                        r"test acc 0.2500\n", stream.getvalue())


def test_evaluations_are_labelled_with_when_they_were_made_batches_counted_from_1():
    """Batches are counted from 1 in what a run prints (the progress line's "batch 10/20" has
    done 10): an evaluation after batch index 9 of 20 is "after epoch 1 batch 10", after the
    last batch "after epoch 1"; the one a run starts or resumes with is the untrained one or
    its checkpoint epoch's last (at the published cadence after batch index 990)."""
    assert training.evaluation_moment(0, 9, 20) == "after epoch 1 batch 10"
    assert training.evaluation_moment(1, 19, 20) == "after epoch 2"
    assert training.last_evaluation_moment(0, 10, 1000) == "untrained"
    assert training.last_evaluation_moment(2, 10, 1000) == "after epoch 2 batch 991"
    assert training.last_evaluation_moment(2, 0, 1000) == "after epoch 2"
    assert training.last_evaluation_moment(2, 1000, 1000) == "untrained"  # none in training
    pack = [training.Statistics({name: [0.125] for name in training.Statistics.NAMES})
            for _ in range(2)]
    for statistics in pack:
        statistics.evaluation_moment = "untrained"
    assert training.latest(pack) == "evaluation (untrained): test acc 0.1250 0.1250"


def test_eval_interval_0_labels_the_untrained_evaluation_until_the_epochs_end(capsys):
    """--eval_interval=0: every line of the first epoch shows the evaluation before training,
    labelled "untrained"; the evaluation after the last batch (on the last line, "batch
    20/20", and the epoch's summary) is "after epoch 1"."""
    generator = numpy.random.RandomState(0)
    labels = generator.randint(0, 10, 1000)
    feed = training.Feed([((generator.rand(1000, 16), labels), one_hot(labels),
                           (generator.rand(50, 16), generator.randint(0, 10, 50)))])
    runner = step_runner.StepRunner(InvNet.stack([SquareInvNet(16, 1, 1, True)]),
                                    training.StepSettings.of_pack([training.StepSettings(
                                        "BP", 1e-3)]))
    statistics = [training.Statistics()]
    feed.record(runner.net, statistics, [0], None)  # before training
    stream = io.StringIO()
    progress = training.Progress(1, feed.nb_batches, stream)
    progress.start_epoch(0)
    assert training.train_epoch(runner, feed, statistics, 0, progress, lambda: False, 0)
    progress.end_epoch(statistics)
    lines = stream.getvalue().splitlines()
    assert len(lines) == 10
    for line in lines[:-1]:
        assert re.search(r"batch \d+00/1000 .*; evaluation \(untrained\): ", line), line
    assert re.fullmatch(r"epoch 1/1 batch 1000/1000 .*; evaluation \(after epoch 1\): .*",
                        lines[-1])
    assert "evaluation (after epoch 1): " in capsys.readouterr().out


def test_step_settings_of_run_arguments():
    from gaitprop.runs import settings
    args = settings.build_parser().parse_args(["--algorithm=TP", "--learning_rate=0.5",
                                          "--orthogonal_reg=3", "--log_alignment=7"])
    assert training.StepSettings.of(args) == training.StepSettings("TP", 0.5, 3.0, 7)
    args = settings.build_parser().parse_args(["--algorithm=GAIT", "--learn_inv", "--gamma=0.01",
                                               "--inv_learning_rate=0.002"])
    assert training.StepSettings.of(args) == training.StepSettings("GAIT", 1e-4, 0.0, 0, 0.01,
                                                                   0.002)
    assert training.StepSettings("GAIT", 1e-4).inverse_learning_rate == 1e-4


def test_gamma_reaches_gait_and_no_other_rule():
    """--gamma is GAIT's: a step with gamma 0.5 gives the directions of
    gait_directions(..., gamma=0.5), which differ from gamma 0.001's where steps of that size
    cross zero; BP and TP take no gamma."""
    net = SquareInvNet(30, 2, start_seed=1, orthogonal_init=True)
    images, labels = batches(1, units=30)[0]
    _, _, directions = training.rule_directions(
        net, training.StepSettings("GAIT", 1e-4, gamma=0.5), images, labels)
    forward = net.forward_pass(images)
    targets = inv_net.output_targets(forward[-1], labels)
    expected = net.gait_directions(forward, targets, gamma=0.5)
    published = net.gait_directions(forward, targets)
    for got, want in zip(directions, expected):
        numpy.testing.assert_array_equal(got["weights"], want["weights"])
    assert numpy.abs(directions[0]["weights"] - published[0]["weights"]).max() > 1e-3 * (
        numpy.abs(published[0]["weights"]).max())
    assert training.StepSettings("TP", 1e-4, gamma=0.01).rule_options() == {}


@pytest.mark.parametrize("algorithm, inv_noise", [("GAIT", 0.0), ("TP", 0.0), ("DTP", 0.0),
                                                  ("DTP", 0.1)])
def test_queued_steps_of_learned_inverses_equal_checked_steps(algorithm, inv_noise):
    """The queued path (deferred, as on a GPU; here on NumPy) with learned inverses keeps no
    inverse and checks no solve, and ends where checked steps end, bit for bit (with the
    inverses' noise too: the queued step is given the noise the checked step draws)."""
    data = batches(12)

    def make():
        return SquareInvNet(784, 2, start_seed=1, orthogonal_init=True, learn_inverses=True,
                            exact_start=False)
    queued, runner = trained(algorithm, data, deferred=True, check_every=5, net=make(),
                             inv_noise=inv_noise)
    checked, _ = trained(algorithm, data, deferred=False, net=make(), inv_noise=inv_noise)
    if inv_noise:
        noiseless, _ = trained(algorithm, data, deferred=False, net=make())
        assert not numpy.array_equal(noiseless.state()["V1"], checked.state()["V1"])
    assert runner.inverses.kept == [] and runner.redone == 0
    for name, array in checked.state().items():
        numpy.testing.assert_array_equal(queued.state()[name], array, err_msg=name)


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
        runner = PackOfOne(make(), training.StepSettings("GAIT", 1e-3, 0.1, log_alignment=2))
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
    runner = PackOfOne(net, training.StepSettings("GAIT", 1e-4, 0.1, log_alignment=50))
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


def test_guard_on_the_host_counts_steps_and_keeps_the_first_failure():
    guard = numpy.array([0, -1, 0])
    bounds = numpy.array([0.5, 0.25])
    for sums, bound in (([1.0, 2.0], 0.5), ([1.0, 2.0], 0.5), ([1.0, numpy.nan], 0.5),
                        ([1.0, 2.0], 2.0), ([1.0, 2.0], 0.5)):
        bounds[1] = bound
        step_runner._UPDATE_GUARD(numpy.array(sums), 2, bounds, 2, 1.0, guard)
    assert list(guard) == [5, 2, step_runner.SUMS_NOT_FINITE]
    guard[:] = [0, -1, 0]
    step_runner._UPDATE_GUARD(numpy.array([1.0]), 1, numpy.array([2.0]), 1, 1.0, guard)
    assert list(guard) == [1, 0, step_runner.SOLVE_NOT_EXACT]  # a bound above the tolerance
    guard[:] = [0, -1, 0]
    step_runner._UPDATE_GUARD(numpy.array([1e308, 1e308]), 2, bounds, 2, 1.0, guard)
    assert list(guard) == [1, -1, 0]  # finite sums whose total overflows pass
    step_runner._UPDATE_GUARD(numpy.array([numpy.inf]), 1, numpy.array([numpy.nan]), 1, 1.0, guard)
    assert list(guard) == [2, 1, step_runner.SUMS_NOT_FINITE | step_runner.SOLVE_NOT_EXACT]


def test_gemm_plan_reads_every_layout():
    """The column-major gemm that products.matmul hands to cuBLAS, carried out here on the
    memory it names (as strided NumPy views), is the row-major product for C-ordered,
    transposed, column-sliced and row-strided operands."""
    from numpy.lib.stride_tricks import as_strided

    def column_major(array, rows, columns, leading):
        return as_strided(array, shape=(rows, columns),
                          strides=(array.itemsize, leading * array.itemsize))
    generator = numpy.random.RandomState(0)
    a, b = generator.randn(70, 50), generator.randn(50, 40)
    rows, weights = generator.randn(60, 784), generator.randn(784, 784)
    for left, right in [(a, b), (a.T.copy().T, b), (a, b.T.copy().T), (a[:, :30], b[:30]),
                        (b.T, a.T), (rows[:, :500], weights[:500, :200]), (rows.T, rows),
                        (rows, weights.T), (weights[:, :10].T, rows.T), (a[::2], b),
                        (a[:, ::2], b[::2])]:
        transa, transb, m, n, k, first, lda, second, ldb, ldc = cublas.gemm_plan(left, right)
        op_a = column_major(first, *((m, k) if transa == 0 else (k, m)), lda)
        op_b = column_major(second, *((k, n) if transb == 0 else (n, k)), ldb)
        product = (op_a if transa == 0 else op_a.T) @ (op_b if transb == 0 else op_b.T)
        assert ldc == m and product.shape == (m, n)
        numpy.testing.assert_allclose(product.T, left @ right, rtol=1e-12, atol=1e-12)


class ReplayedPython:
    """A stand-in for a CUDA graph on the host: capture records the work, launch runs it."""

    def __init__(self, work):
        self.work = work

    def launch(self):
        self.work()


@pytest.mark.parametrize("capture", ["works", "fails"])
def test_steps_replayed_from_a_captured_graph_are_the_steps(monkeypatch, capture):
    """The runner's graph bookkeeping (fixed input arrays, the replay-against-step check,
    the fallback when capture fails), with Python standing in for the CUDA graph."""
    def fake_capture(work):
        if capture == "fails":
            raise RuntimeError("no capture here")
        return ReplayedPython(work)
    monkeypatch.setattr(products.Graph, "capture", staticmethod(fake_capture))
    data = batches(7)
    net = SquareInvNet(784, 2, start_seed=1, orthogonal_init=True)
    runner = PackOfOne(net, training.StepSettings("BP", 1e-4), deferred=True, graphs=True)
    statistics = training.Statistics()
    for index, (images, labels) in enumerate(data):
        runner.step(images, labels, statistics, 0, index)
    runner.settle(statistics)
    checked, _ = trained("BP", data, deferred=False)
    for a, b in zip(runner.net.parameters().values(), checked.parameters().values()):
        numpy.testing.assert_array_equal(a, b)
    if capture == "works":
        assert isinstance(runner.replay.graph, ReplayedPython) and runner.replay.difference == 0.0
    else:
        assert runner.replay.graph is None and not runner.replay.enabled


# ----------------------------------------------------------------------------- on a GPU

gpu = pytest.mark.skipif(backend._import_cupy() is None, reason="no GPU with CuPy here")


@pytest.fixture
def cupy_float64():
    """The CuPy backend in float64 for one test; NumPy again after it, whatever happens."""
    backend.select("cupy", dtype="float64")
    try:
        yield
    finally:
        backend.select("numpy", dtype="float64")


@gpu
def test_cupy_failed_solves_are_counted_once_each_and_switch_the_run_to_lu(cupy_float64):
    """As on the host: steps 0 to 20 fail once each (steps queued again are not counted
    again), then LU solves; a singular W met by a queued LU solve is a Diverged naming
    the batch (not CuPy's LinAlgError, exit 1)."""
    net, runner, statistics, data = switched_to_lu(algorithm="GAIT")
    assert runner.steps_done == len(data)
    assert runner.inverses.failures == list(range(runner.inverses.FAILURES_PER_100_STEPS + 1))
    assert runner.inverses.lu_only and not runner.inverses.kept
    net.layers[1].weight_matrix[...] = 0.0
    with pytest.raises(training.Diverged, match=r"batch 31: a layer's weights are singular"):
        runner.step(*map(backend.to_device, data[0]), statistics, 0, 30)
        runner.settle(statistics)


@gpu
def test_cupy_finite_sums_that_overflow_are_not_solver_failures(cupy_float64):
    """The guard's kernel tells an overflowing sum of finite values from a failed solve."""
    data = [tuple(map(backend.to_device, batch)) for batch in batches(30, units=48)]
    net = SquareInvNet(48, 2, start_seed=1, orthogonal_init=True)
    net.layers[-1].biases[[20, 30]] = 1e308
    net, runner = trained("GAIT", data, deferred=True, net=net)
    assert runner.redone == len(data)
    assert runner.inverses.failures == [] and runner.inverses.kept and not runner.inverses.lu_only


def train_on(name, dtype, make, settings, data, deferred, scale=1.0):
    """(runner, statistics) of a pack of one (`make()`, built on the backend `name` in `dtype`)
    after a step on each host batch of `data`, its images moved to the backend and multiplied
    by `scale` there (in `dtype`: 1 + 2**-23 moves a float32 value by one unit in the last
    place, which a float64 nudge before the cast would not)."""
    backend.select(name, dtype=dtype)
    runner = PackOfOne(make(), settings, deferred=deferred)
    statistics = training.Statistics()
    factor = numpy.dtype(dtype).type(scale)
    for index, (images, labels) in enumerate(data):
        runner.step(backend.to_device(images) * factor, backend.to_device(labels), statistics, 0,
                    index)
    runner.settle(statistics)
    return runner, statistics


def host_state(runner):
    """{name: host float64 copy} of every array of the trained run (W, b, V, c, moments)."""
    return {name: backend.to_host(array).astype(numpy.float64)
            for name, array in runner.net.state().items()}


def state_difference(first, second):
    """relative_difference over the arrays of two host_state dicts (of the same names)."""
    assert sorted(first) == sorted(second)
    return relative_difference([first[name] for name in sorted(first)],
                               [second[name] for name in sorted(second)])


@gpu
@pytest.mark.parametrize("inverses", ["kept", "learned"])
@pytest.mark.parametrize("algorithm", ["GAIT", "TP"])
def test_cupy_float32_queued_steps_keep_their_graph_and_agree_with_numpy_float32(algorithm,
                                                                                 inverses):
    """float32 on the GPU, 40 queued steps (paper lambda and learning rate; kept inverses, or
    learned ones from a drawn start): the CUDA graph is kept and its replay equals the step
    (difference 0), and the result is NumPy float32's (checked steps) within the spread the
    GAIT check measures: the weights within 10 times what a one-ulp (float32) nudge of the
    inputs makes NumPy's differ, and the accuracy on other data within the nudged run's
    accuracy difference and two samples."""
    learned = inverses == "learned"
    ortho_weighting, learning_rate = PAPER[algorithm]
    settings = training.StepSettings(algorithm, learning_rate, ortho_weighting)

    def make():
        return SquareInvNet(256, 2, start_seed=1, orthogonal_init=True, learn_inverses=learned,
                            exact_start=not learned)
    data = batches(40, units=256)
    held_out = batches(10, seed=1, units=256)
    results = {}
    try:
        for label, name, deferred, scale in (("queued", "cupy", True, 1.0),
                                             ("numpy", "numpy", False, 1.0),
                                             ("nudged", "numpy", False, 1 + 2.0 ** -23)):
            runner, _ = train_on(name, "float32", make, settings, data, deferred, scale)
            images = backend.to_device(numpy.concatenate([x for x, _ in held_out]))
            labels = backend.xp().asarray(numpy.concatenate([y for _, y in held_out]).argmax(1))
            results[label] = (host_state(runner), evaluate(runner.net, images, labels)[0])
            assert runner.net.layers[0].weight_matrix.dtype == numpy.float32
            if deferred:
                print(f"{algorithm} {inverses} float32: replay difference "
                      f"{runner.replay.difference}, steps redone {runner.redone}")
                assert runner.replay.graph is not None and runner.replay.difference == 0.0
                if learned:
                    assert runner.inverses.kept == [] and runner.redone == 0
                else:
                    assert runner.inverses.kept and not runner.inverses.lu_only
    finally:
        backend.select("numpy", dtype="float64")
    difference = state_difference(results["queued"][0], results["numpy"][0])
    spread = state_difference(results["nudged"][0], results["numpy"][0])
    accuracies = {label: accuracy for label, (_, accuracy) in results.items()}
    print(f"{algorithm} {inverses} float32: cupy vs numpy {difference:.1e}, one-ulp spread "
          f"{spread:.1e}; accuracies {accuracies}")
    assert difference <= 10 * spread
    assert abs(accuracies["queued"] - accuracies["numpy"]) <= (
        abs(accuracies["nudged"] - accuracies["numpy"]) + 2 / (60 * len(held_out)))


TOWER = [784, 784, 500, 200, 10]  # settings.build_net's --tower


@gpu
@pytest.mark.parametrize("algorithm, inverses", [("GAIT", "kept"), ("TP", "learned")])
def test_cupy_tower_trains_as_on_numpy_and_logs_alignment_and_inverse_quality(algorithm,
                                                                              inverses):
    """The tower on the GPU (float64, paper lambda and learning rate): each layer past the first
    reads a `[..., :width]` view of the activity below (not contiguous), and its 200- and
    10-unit layers are small enough for CuPy's batched LU (the LU solves of the checked steps,
    of the kept inverses' resets and of the quality's exact inverses), which solve as NumPy's.
    30 steps, the alignment with BP (and the learned inverses' quality) logged every 10th
    (checked steps between queued ones replayed from the graph): the graph is kept and its
    replay equals the step; the weights are NumPy's within 10 times a one-ulp nudge's spread,
    the logged rows NumPy's to 1e-6."""
    learned = inverses == "learned"
    ortho_weighting, learning_rate = PAPER[algorithm]
    settings = training.StepSettings(algorithm, learning_rate, ortho_weighting, log_alignment=10)

    def make():
        return TowerInvNet(TOWER, 1, True, learn_inverses=learned, exact_start=not learned)
    data = batches(30)
    results = {}
    try:
        for label, name, deferred, scale in (("queued", "cupy", True, 1.0),
                                             ("numpy", "numpy", False, 1.0),
                                             ("nudged", "numpy", False, 1 + 2.0 ** -52)):
            runner, statistics = train_on(name, "float64", make, settings, data, deferred, scale)
            results[label] = (host_state(runner), numpy.array(statistics.alignment),
                              numpy.array(statistics.inverse_quality))
            if name != "cupy":
                continue
            assert runner.replay.graph is not None and runner.replay.difference == 0.0
            assert bool(runner.inverses.kept) != learned and not runner.inverses.lu_only
            net = runner.net
            forward = net.forward_pass(backend.to_device(data[0][0]))
            inputs = [net._inputs(index, forward[index]) for index in range(len(net.layers))]
            assert [each.shape[-1] for each in inputs] == TOWER[1:]
            assert not any(each.flags.c_contiguous for each in inputs[1:])
            generator = numpy.random.RandomState(2)
            for layer in runner.runner.net.layers:  # the pack's (1, n, n) stacks
                rhs = generator.randn(1, 60, layer.nb_units)
                got = backend.to_host(backend.solve_right(layer.weight_matrix,
                                                          backend.to_device(rhs)))
                weights = backend.to_host(layer.weight_matrix)
                expected = numpy.linalg.solve(weights.swapaxes(-1, -2),
                                              rhs.swapaxes(-1, -2)).swapaxes(-1, -2)
                assert numpy.linalg.norm(got - expected) <= 1e-10 * numpy.linalg.norm(expected)
    finally:
        backend.select("numpy", dtype="float64")
    difference = state_difference(results["queued"][0], results["numpy"][0])
    spread = state_difference(results["nudged"][0], results["numpy"][0])
    print(f"tower {algorithm} {inverses}: cupy vs numpy {difference:.1e}, one-ulp spread "
          f"{spread:.1e}")
    assert difference <= 10 * spread + 1e-13
    (_, alignment, quality), (_, numpy_alignment, numpy_quality) = (results["queued"],
                                                                     results["numpy"])
    assert alignment.shape == (3, 2 + len(TOWER) - 1)
    assert list(alignment[:, 1]) == [0, 10, 20]
    numpy.testing.assert_allclose(alignment, numpy_alignment, rtol=1e-6, atol=1e-6)
    if learned:
        assert quality.shape == (3, 2 + 2 * (len(TOWER) - 2))
        numpy.testing.assert_allclose(quality, numpy_quality, rtol=1e-6, atol=1e-9)
    else:
        assert quality.size == numpy_quality.size == 0


def test_the_batch_layout_follows_the_training_images_left():
    """len // 1000 images a batch, len // batch batches: 60 x 1000 for all 60,000 images,
    50 x 1000 for the 50,000 left beside the authors' 10,000 validation images."""
    assert training.batch_layout(60000) == (60, 1000)
    assert training.batch_layout(50000) == (50, 1000)
    assert training.batch_layout(55500) == (55, 1009)
    feed = training.Feed([((numpy.zeros((50000, 4)), numpy.zeros(50000, dtype=int)),
                           numpy.zeros((50000, 10)), (numpy.zeros((3, 4)), numpy.zeros(3)))])
    assert (feed.batch_size, feed.nb_batches) == (50, 1000)


def test_the_inverses_noise_is_the_runs_own_at_each_step():
    """inverse_noise: run k's noise at (epoch, batch) is drawn from its seed, the epoch and
    the batch alone, N(0, sigma**2) per unit: the same in a pack as alone, again when drawn
    again (a resumed run), other at another step or seed; none without learned inverses."""
    def make(seed):
        return TowerInvNet([30, 30, 20, 10], seed, True, learn_inverses=True)
    settings = training.StepSettings("DTP", 1e-4, inv_noise=0.5)
    pack = InvNet.stack([make(4), make(9)])
    noise = training.inverse_noise(pack, settings, 2, 17, 400)
    assert [array.shape for array in noise] == [(2, 400, 20), (2, 400, 10)]
    for position, seed in enumerate((4, 9)):
        alone = training.inverse_noise(InvNet.stack([make(seed)]), settings, 2, 17, 400)
        for together, single in zip(noise, alone):
            numpy.testing.assert_array_equal(together[position], single[0])
    again = training.inverse_noise(pack, settings, 2, 17, 400)
    later = training.inverse_noise(pack, settings, 2, 18, 400)
    numpy.testing.assert_array_equal(again[0], noise[0])
    assert not numpy.array_equal(later[0], noise[0])
    assert not numpy.array_equal(noise[0][0], noise[0][1])
    values = numpy.concatenate([array.ravel() for array in noise])
    assert abs(values.mean()) < 0.02 and abs(values.std() - 0.5) < 0.02
    assert training.inverse_noise(pack, training.StepSettings("DTP", 1e-4), 2, 17, 400) == ()
    plain = InvNet.stack([TowerInvNet([30, 30, 20, 10], 4, True)])
    assert training.inverse_noise(plain, settings, 2, 17, 400) == ()

