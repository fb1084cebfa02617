"""The training step and its runner: the checks, queued (deferred) steps with kept
inverses, the redo of a failed step, the batches' running statistics and the progress line.

The runner queues steps on a GPU; here it is made to queue on NumPy (deferred=True), which
runs the same code with the guard read by the host, so that CI (no GPU) tests the logic.
"""
import io
import re

import numpy
import pytest

import backend
import training
from inv_layer import KeptInverse
from inv_net import SquareInvNet, TowerInvNet
from utils import evaluate, one_hot

PAPER = {"BP": (0.0, 1e-4), "GAIT": (0.1, 1e-4), "TP": (1000.0, 1e-5)}  # (lambda, lr)


def batches(count, seed=0, units=784):
    """`count` batches of 60 random images in [0, 1] and one-hot labels."""
    generator = numpy.random.RandomState(seed)
    return [(generator.rand(60, units), one_hot(generator.randint(0, 10, 60)))
            for _ in range(count)]


def trained(algorithm, data, deferred, nb_hidden=2, check_every=None, net=None):
    """(net, runner) after a runner's steps over `data` (paper lambda and learning rate)."""
    ortho_weighting, learning_rate = PAPER[algorithm]
    net = net or SquareInvNet(784, nb_hidden, start_seed=1, orthogonal_init=True)
    runner = training.StepRunner(net, training.StepSettings(algorithm, learning_rate,
                                                            ortho_weighting), deferred=deferred)
    if check_every:
        runner.CHECK_EVERY = runner.check_every = check_every
    statistics = training.Statistics()
    for index, (images, labels) in enumerate(data):
        runner.step(images, labels, statistics, 0, index)
    runner.settle(statistics)
    return net, runner


def relative_difference(first, second):
    """max over arrays of |a - b|_F / |b|_F."""
    return max(numpy.linalg.norm(a - b) / numpy.linalg.norm(b) for a, b in zip(first, second))


def test_queued_bp_steps_are_bit_identical_to_checked_steps():
    data = batches(12)
    queued, _ = trained("BP", data, deferred=True, check_every=5)
    checked, _ = trained("BP", data, deferred=False)
    for a, b in zip(queued.parameters(), checked.parameters()):
        numpy.testing.assert_array_equal(a, b)
    numpy.testing.assert_array_equal(queued.optimizer.second_moments[3],
                                     checked.optimizer.second_moments[3])


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
    spread = relative_difference(nudged.parameters(), checked.parameters())
    difference = relative_difference(queued.parameters(), checked.parameters())
    print(f"{algorithm}: queued vs LU {difference:.1e}, rounding spread {spread:.1e}")
    assert runner.kept and not runner.solver_failures
    assert 0 < difference <= spread


def test_kept_inverse_solves_as_exactly_as_lu_after_a_step():
    generator = numpy.random.RandomState(3)
    weights = numpy.linalg.qr(generator.randn(784, 784))[0]
    kept = KeptInverse(weights)
    moved = weights + 1e-4 * numpy.sign(generator.randn(784, 784)) / 28  # a training step's move
    rhs = generator.randn(60, 784)
    solution = kept.solve(moved, rhs)
    exact = numpy.linalg.solve(moved.T, rhs.T).T
    assert kept.acceptable()
    assert numpy.linalg.norm(solution - exact) <= 1e-13 * numpy.linalg.norm(exact)
    assert numpy.linalg.norm(rhs - solution @ moved) <= numpy.linalg.norm(rhs - exact @ moved)


@pytest.mark.parametrize("change", ["large move", "singular"])
def test_kept_inverse_reports_a_solve_it_cannot_make_exact(change):
    generator = numpy.random.RandomState(4)
    weights = numpy.linalg.qr(generator.randn(50, 50))[0]
    kept = KeptInverse(weights)
    if change == "large move":
        weights = weights + 0.5 * generator.randn(50, 50)
    else:
        weights = weights.copy()
        weights[:, 0] = weights[:, 1]
    kept.solve(weights, generator.randn(60, 50))
    assert not kept.acceptable()


def test_a_failed_solve_is_redone_by_lu():
    """A kept inverse spoilt between steps: that step fails its check, is redone with an LU
    solve, and the run ends where LU steps end (to rounding)."""
    data = batches(10)
    net = SquareInvNet(784, 2, start_seed=1, orthogonal_init=True)
    settings = training.StepSettings("GAIT", 1e-4, 0.1)
    runner = training.StepRunner(net, settings, deferred=True)
    statistics = training.Statistics()
    for index, (images, labels) in enumerate(data):
        if index == 4:
            runner.kept[0].inverse *= 1.5
        runner.step(images, labels, statistics, 0, index)
    runner.settle(statistics)
    checked, _ = trained("GAIT", data, deferred=False)
    assert runner.solver_failures == [4]
    assert relative_difference(net.parameters(), checked.parameters()) <= 1e-10


def test_many_failed_solves_switch_the_run_to_lu():
    data = batches(30)
    net = SquareInvNet(784, 2, start_seed=1, orthogonal_init=True)
    runner = training.StepRunner(net, training.StepSettings("TP", 1e-5, 1000.0), deferred=True)
    runner.tolerance = -1.0  # every solve fails its check
    statistics = training.Statistics()
    for index, (images, labels) in enumerate(data):
        runner.step(images, labels, statistics, 0, index)
    runner.settle(statistics)
    checked, _ = trained("TP", data, deferred=False)
    assert len(runner.solver_failures) == runner.FAILURES_PER_100_STEPS + 1
    assert not runner.kept and all(layer.kept_inverse is None for layer in net.layers)
    assert relative_difference(net.parameters(), checked.parameters()) <= 1e-10


@pytest.mark.parametrize("deferred", [False, True], ids=["checked", "queued"])
def test_a_non_finite_batch_stops_training_before_the_weights_change(deferred):
    data = batches(9)
    data[6][0][3, 5] = numpy.nan
    net = SquareInvNet(784, 2, start_seed=1, orthogonal_init=True)
    with pytest.raises(training.Diverged, match=r"epoch 1, batch 6: the output of layer 0"):
        trained("GAIT", data, deferred=deferred, net=net)
    before, _ = trained("GAIT", data[:6], deferred=False)
    for a, b in zip(net.parameters(), before.parameters()):
        assert numpy.isfinite(a).all()
        assert numpy.linalg.norm(a - b) <= 1e-10 * numpy.linalg.norm(b)


def test_check_finite_looks_at_every_weight_direction():
    net = TowerInvNet([6, 6, 5, 4], start_seed=1)
    forward = net.forward_pass(numpy.ones((3, 6)))
    weights = [numpy.ones((n, n)) for n in (6, 5, 4)]
    biases = [numpy.ones(n) for n in (6, 5, 4)]
    training.check_finite(net, forward, weights, biases, training.Statistics(), "here")
    weights[1][2, 3] = numpy.inf
    with pytest.raises(training.Diverged, match="at here: the update directions of layer 1 "):
        training.check_finite(net, forward, weights, biases, training.Statistics(), "here")


def test_check_finite_ignores_finite_values_whose_sum_overflows():
    net = TowerInvNet([6, 6], start_seed=1)
    forward = net.forward_pass(numpy.ones((3, 6)))
    huge = numpy.full((6, 6), 1e307)
    training.check_finite(net, forward, [huge], [numpy.ones(6)], training.Statistics(), "here")


def test_running_statistics_are_the_batches_accuracy_and_loss_before_each_update():
    """With a negligible learning rate the batches' tally equals evaluate() on them."""
    data = batches(6)
    net = SquareInvNet(784, 1, start_seed=2, orthogonal_init=True)
    runner = training.StepRunner(net, training.StepSettings("BP", 1e-300))
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


def test_progress_lines_show_the_batches_and_the_latest_evaluation():
    stream = io.StringIO()
    progress = training.Progress(1, 20, stream)
    statistics = training.Statistics({"training_acc": [0.5], "training_loss": [1.0],
                                      "test_acc": [0.25], "test_loss": [1.0]})
    statistics.evaluated_after = (0, 9)

    class Runner:
        def running_statistics(self):
            return 0.75, 0.125
    progress.start_epoch(0)
    for batch_index in range(2):
        progress.batch_done(batch_index, statistics, Runner())
    assert re.fullmatch(r"epoch 1/1 batch 2/20 [0-9.]+s batches acc 0.7500 loss 0.1250; "
                        r"evaluation \(after epoch 1 batch 9\): train acc 0.5000, "
                        r"test acc 0.2500\n", stream.getvalue())


def test_step_settings_of_run_arguments():
    import run
    args = run.build_parser().parse_args(["--algorithm=TP", "--learning_rate=0.5",
                                          "--orthogonal_reg=3", "--log_alignment=7"])
    assert training.StepSettings.of(args) == training.StepSettings("TP", 0.5, 3.0, 7)


def test_guard_on_the_host_counts_steps_and_keeps_the_first_failure():
    guard = numpy.array([0, -1])
    bounds = numpy.array([0.5, 0.25])
    for sums, bound in (([1.0, 2.0], 0.5), ([1.0, 2.0], 0.5), ([1.0, numpy.nan], 0.5),
                        ([1.0, 2.0], 2.0), ([1.0, 2.0], 0.5)):
        bounds[1] = bound
        training._UPDATE_GUARD(numpy.array(sums), 2, bounds, 2, 1.0, guard)
    assert list(guard) == [5, 2]
    guard[:] = [0, -1]
    training._UPDATE_GUARD(numpy.array([1.0]), 1, numpy.array([2.0]), 1, 1.0, guard)
    assert list(guard) == [1, 0]  # a bound above the tolerance fails the step too


def test_gemm_plan_reads_every_layout():
    """The column-major gemm that backend.matmul hands to cuBLAS, carried out here on the
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
        transa, transb, m, n, k, first, lda, second, ldb, ldc = backend.gemm_plan(left, right)
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
    monkeypatch.setattr(backend.Graph, "capture", staticmethod(fake_capture))
    data = batches(7)
    net = SquareInvNet(784, 2, start_seed=1, orthogonal_init=True)
    runner = training.StepRunner(net, training.StepSettings("BP", 1e-4), deferred=True,
                                 graphs=True)
    statistics = training.Statistics()
    for index, (images, labels) in enumerate(data):
        runner.step(images, labels, statistics, 0, index)
    runner.settle(statistics)
    checked, _ = trained("BP", data, deferred=False)
    for a, b in zip(net.parameters(), checked.parameters()):
        numpy.testing.assert_array_equal(a, b)
    if capture == "works":
        assert isinstance(runner.graph, ReplayedPython) and runner.graph_difference == 0.0
    else:
        assert runner.graph is None and not runner.graphs
