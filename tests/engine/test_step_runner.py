"""The step runner (step_runner.py): queued (deferred) steps against checked ones, kept
inverses and LU solves (InversePolicy), a failed solve redone and the switch to LU, finite
sums that overflow redone, the batches' running statistics (the tally) of a runner and of a
pack, steps replayed from a captured graph, and the same on a GPU with CuPy.

The runner queues steps on a GPU; here it is made to queue on NumPy (deferred=True), which
runs the same code with the guard read by the host, so that CI (no GPU) tests the logic.
"""
import numpy
import pytest

from gaitprop.arrays import backend
from gaitprop.arrays import products
from gaitprop.engine import faults
from gaitprop.engine import step as training_step
from gaitprop.engine import step_runner
from gaitprop.engine import training
from gaitprop.model.functions import evaluate, one_hot
from gaitprop.model.net import InvNet, SquareInvNet, TowerInvNet
from helpers import PAPER, PackOfOne, batches, one_ulp_runs, trained


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


def test_a_failed_solve_is_redone_by_lu():
    """A kept inverse spoilt between steps: that step fails its check, is redone with an LU
    solve, and the run ends where LU steps end (to rounding)."""
    data = batches(10)
    net = SquareInvNet(784, 2, start_seed=1, orthogonal_init=True)
    settings = training_step.StepSettings("GAIT", 1e-4, 0.1)
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
    runner = PackOfOne(net, training_step.StepSettings(algorithm, learning_rate, ortho_weighting),
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
    with pytest.raises(faults.Diverged, match=r"epoch 1, batch 31: a layer's weights are "
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


def test_running_statistics_are_the_batches_accuracy_and_loss_before_each_update():
    """With a negligible learning rate the batches' tally equals evaluate() on them."""
    data = batches(6)
    net = SquareInvNet(784, 1, start_seed=2, orthogonal_init=True)
    runner = PackOfOne(net, training_step.StepSettings("BP", 1e-300))
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
    settings = [training_step.StepSettings("BP", rate) for rate in (1e-3, 2e-3, 3e-3)]
    nets = [SquareInvNet(48, 1, seed, True) for seed in (1, 2, 3)]
    singles = []
    for net, setting, (images, labels) in zip(nets, settings, sets):
        runner = PackOfOne(net, setting)
        for batch in range(6):
            runner.step(images[batch], labels[batch], training.Statistics(), 0, batch)
        singles.append(runner.running_statistics())
    pack = step_runner.StepRunner(InvNet.stack([SquareInvNet(48, 1, seed, True)
                                             for seed in (1, 2, 3)]),
                               training_step.StepSettings.of_pack(settings))
    statistics = [training.Statistics() for _ in range(3)]
    for batch in range(6):
        if batch == 4:
            pack.remove([1], statistics)
        images = numpy.stack([sets[run][0][batch] for run in pack.run_ids])
        labels = numpy.stack([sets[run][1][batch] for run in pack.run_ids])
        pack.step(images, labels, statistics, 0, batch)
    for got, expected in zip(pack.running_statistics(), (singles[0], singles[2])):
        assert got == pytest.approx(expected, rel=1e-12)


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
    runner = PackOfOne(net, training_step.StepSettings("BP", 1e-4), deferred=True, graphs=True)
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


def test_a_dtp_step_replayed_from_a_captured_graph_takes_its_noise_and_options(monkeypatch):
    """DTP with a small output step, noise and the difference loss, queued and replayed from a
    captured graph (Python standing in for the CUDA graph): the noise of each step is an
    input of the graph, copied into its fixed array; every step equals the checked one."""
    monkeypatch.setattr(products.Graph, "capture", staticmethod(ReplayedPython))
    data = batches(7, units=64)
    settings = training_step.StepSettings("DTP", 1e-4, 0.1, inv_learning_rate=1e-3,
                                          inv_noise=0.1, options=(("target_step", 0.05),),
                                          inv_loss="difference")

    def train(**options):
        net = SquareInvNet(64, 2, start_seed=1, orthogonal_init=True, learn_inverses=True,
                           exact_start=False)
        runner = PackOfOne(net, settings, **options)
        statistics = training.Statistics()
        for index, (images, labels) in enumerate(data):
            runner.step(images, labels, statistics, 0, index)
        runner.settle(statistics)
        return runner
    replayed, checked = train(deferred=True, graphs=True), train(deferred=False)
    assert isinstance(replayed.replay.graph, ReplayedPython)
    assert replayed.replay.difference == 0.0 and len(replayed.replay.inputs) == 2 + 2
    for name, array in checked.net.state().items():
        numpy.testing.assert_array_equal(replayed.net.state()[name], array, err_msg=name)


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
    with pytest.raises(faults.Diverged, match=r"batch 31: a layer's weights are singular"):
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
    settings = training_step.StepSettings(algorithm, learning_rate, ortho_weighting)

    def make():
        return SquareInvNet(256, 2, start_seed=1, orthogonal_init=True, learn_inverses=learned,
                            exact_start=not learned)
    data = batches(40, units=256)
    held_out = batches(10, seed=1, units=256)
    results = {}
    try:
        for label, name, deferred, scale in one_ulp_runs(2.0 ** -23):
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
    settings = training_step.StepSettings(algorithm, learning_rate, ortho_weighting,
                                          log_alignment=10)

    def make():
        return TowerInvNet(TOWER, 1, True, learn_inverses=learned, exact_start=not learned)
    data = batches(30)
    results = {}
    try:
        for label, name, deferred, scale in one_ulp_runs(2.0 ** -52):
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


def test_a_runner_resumed_after_the_switch_to_lu_solves_replays_no_graph():
    """Graphs are off whenever a run solves by LU (`lu_only`): a run resumed switched (its
    checkpoint says so) as well as one that switches during training (StepRunner.settle).
    On CuPy an LU solve reads back to the host, which a CUDA graph's capture cannot hold."""
    for lu_only in (False, True):
        runner = step_runner.StepRunner(
            InvNet.stack([SquareInvNet(16, 1, 1, True)]),
            training_step.StepSettings.of_pack([training_step.StepSettings("GAIT", 1e-4)]),
            deferred=True, graphs=True, lu_only=lu_only)
        assert runner.inverses.lu_only is lu_only
        assert runner.replay.enabled is not lu_only
