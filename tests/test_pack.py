"""Packs (inv_net.InvNet.stack, step_runner.StepRunner on a pack, pack.py): several runs trained
as one must compute, bit for bit on NumPy, what each run computes alone; a diverging run
leaves the pack alone; a killed pack resumes exactly; bad packs are refused.
"""
import json
import os
import signal
import subprocess
import sys
import time

import numpy
import pytest

import cublas
import pack
import run_folder
import step_runner
import training
from inv_net import InvNet, SquareInvNet, TowerInvNet
from helpers import ENV, REPO, PackOfOne, assert_clean, cli
from utils import one_hot
from settings import build_parser

PACK_PY = os.path.join(REPO, "pack.py")


def synthetic_sets(runs, nb_train=2000, nb_test=300, units=48, seed=0):
    """One (train, one-hot targets, test) triple of random data per run (batches of 2)."""
    generator = numpy.random.RandomState(seed)
    sets = []
    for _ in range(runs):
        labels, test_labels = generator.randint(0, 10, nb_train), generator.randint(0, 10, nb_test)
        sets.append(((generator.rand(nb_train, units), labels), one_hot(labels),
                     (generator.rand(nb_test, units), test_labels)))
    return sets


def train_alone(net, settings, feed_set, steps, deferred=False):
    """`net` after `steps` steps of a single run (as run.py trains it, a pack of one; the
    run's view), and its Statistics."""
    runner = PackOfOne(net, settings, deferred=deferred)
    statistics = training.Statistics()
    feed = training.Feed([feed_set])
    for batch_index in range(steps):
        images, labels = feed.batch(batch_index, [0])
        runner.step(images[0], labels[0], statistics, 0, batch_index)
    runner.settle(statistics)
    return runner.net, statistics


def train_packed(nets, settings, sets, steps, deferred=False, evaluate_at=()):
    """The runner of a pack of `nets` (settings: one StepSettings per run) after `steps` steps."""
    runner = step_runner.StepRunner(InvNet.stack(nets), training.StepSettings.of_pack(settings),
                                 deferred=deferred)
    statistics = [training.Statistics() for _ in nets]
    feed = training.Feed(sets)
    for batch_index in range(steps):
        runner.step(*feed.batch(batch_index, runner.run_ids), statistics, 0, batch_index)
        if batch_index in evaluate_at:
            runner.settle(statistics)
            feed.record(runner.net, statistics, runner.run_ids, (0, batch_index))
    runner.settle(statistics)
    return runner, statistics


def assert_same_state(single, packed_run):
    """Every array of the network and its optimiser equal, bit for bit."""
    expected, got = single.state(), packed_run.state()
    assert sorted(expected) == sorted(got)
    for name in expected:
        assert numpy.array_equal(expected[name], got[name]), name


NETWORKS = {"square": lambda seed, orthogonal: SquareInvNet(48, 2, seed, orthogonal),
            "tower": lambda seed, orthogonal: TowerInvNet([48, 48, 30, 20, 10], seed, orthogonal)}


@pytest.mark.parametrize("network", sorted(NETWORKS))
@pytest.mark.parametrize("algorithm, lambdas, rates", [
    ("BP", (0.0, 0.0, 0.0), (1e-4, 3e-4, 1e-3)),
    ("GAIT", (0.1, 0.5, 0.1), (1e-4, 1e-4, 1e-3)),
    ("TP", (1000.0, 100.0, 1000.0), (1e-5, 1e-5, 3e-5))])
def test_each_run_of_a_pack_equals_its_single_run_bit_for_bit(network, algorithm, lambdas,
                                                              rates):
    """Seeds, initialisations, learning rates, lambdas and data all differ between the runs;
    after 25 steps (with evaluations and the alignment log) every array is the single run's."""
    make = NETWORKS[network]
    orthogonal = (True, False, True)
    settings = [training.StepSettings(algorithm, rate, reg, log_alignment=10)
                for rate, reg in zip(rates, lambdas)]
    sets = synthetic_sets(3)
    runner, statistics = train_packed([make(seed, init) for seed, init in zip((1, 7, 3),
                                                                              orthogonal)],
                                      settings, sets, 25, evaluate_at=(9, 19))
    for position, (seed, init) in enumerate(zip((1, 7, 3), orthogonal)):
        single, single_statistics = train_alone(make(seed, init), settings[position],
                                                sets[position], 25)
        assert_same_state(single, runner.net.run(position))
        assert statistics[position].alignment == single_statistics.alignment
        assert len(statistics[position].alignment) == 3
    assert all(len(each.values["test_acc"]) == 2 for each in statistics)


def test_a_pack_evaluates_each_run_on_its_own_sets():
    sets = synthetic_sets(2)
    nets = [SquareInvNet(48, 1, seed, True) for seed in (1, 2)]
    settings = [training.StepSettings("BP", 1e-3)] * 2
    runner, statistics = train_packed(nets, settings, sets, 10, evaluate_at=(9,))
    for position in range(2):
        expected = training.Statistics()
        train, _, test = sets[position]
        expected.record(runner.net.run(position), train, test)
        assert statistics[position].values == expected.values


def test_a_pack_evaluates_each_runs_validation_set_as_its_single_run():
    """Runs holding out a validation set (a RunData's fourth set): the pack's six statistics
    per run are those of each run alone."""
    generator = numpy.random.RandomState(3)
    sets = [training.RunData(*triple, validation=(generator.rand(200, 48),
                                                  generator.randint(0, 10, 200)))
            for triple in synthetic_sets(2)]
    names = run_folder.statistics_names(validation=200)
    settings = [training.StepSettings("BP", 1e-3)] * 2
    runner = step_runner.StepRunner(
        InvNet.stack([SquareInvNet(48, 1, seed, True) for seed in (1, 2)]),
        training.StepSettings.of_pack(settings))
    statistics = [training.Statistics(names=names) for _ in range(2)]
    feed = training.Feed(sets)
    for batch_index in range(10):
        runner.step(*feed.batch(batch_index, runner.run_ids), statistics, 0, batch_index)
    feed.record(runner.net, statistics, runner.run_ids, (0, 9))
    for position, seed in enumerate((1, 2)):
        single, _ = train_alone(SquareInvNet(48, 1, seed, True), settings[0], sets[position], 10)
        single_statistics = training.Statistics(names=names)
        training.Feed([sets[position]]).record(InvNet.stack([single]), [single_statistics], [0],
                                               (0, 9))
        assert statistics[position].values == single_statistics.values
        assert len(statistics[position].values["validation_acc"]) == 1


def test_runs_with_other_validation_splits_cannot_share_a_pack():
    parser = build_parser()
    assert pack.pack_key(parser.parse_args(["--validation=10000"])) != pack.pack_key(
        parser.parse_args([]))


@pytest.mark.parametrize("deferred", [False, True])
def test_a_diverging_run_leaves_the_pack_and_the_others_go_on(deferred):
    """Run 1's learning rate overflows its weights: it is taken out with its message, the
    statistics list loses it, and runs 0 and 2 end exactly as alone (BP: also when queued,
    whose guard sends the step to the checked path)."""
    sets = synthetic_sets(3)
    rates = (1e-3, 1e300, 2e-3)
    settings = [training.StepSettings("BP", rate) for rate in rates]
    runner, statistics = train_packed([SquareInvNet(48, 2, seed, True) for seed in (1, 2, 3)],
                                      settings, sets, 30, deferred=deferred)
    assert runner.run_ids == [0, 2]
    assert list(runner.diverged) == [1]
    assert "Training diverged at epoch 1, batch" in runner.diverged[1]
    assert len(statistics) == 2
    for position, run in ((0, 0), (1, 2)):
        single, _ = train_alone(SquareInvNet(48, 2, run + 1, True), settings[run], sets[run], 30)
        assert_same_state(single, runner.net.run(position))


def test_a_pack_whose_runs_all_diverge_raises():
    sets = synthetic_sets(2)
    settings = [training.StepSettings("BP", 1e300)] * 2
    with pytest.raises(training.Diverged, match="every run of the pack diverged"):
        train_packed([SquareInvNet(48, 2, seed, True) for seed in (1, 2)], settings, sets, 30)


def test_a_singular_solve_that_no_run_explains_stops_every_run(monkeypatch):
    """A run's zero weights make GAIT's solve fail; were no run found singular alone, every
    run is taken out (never the same step retried for ever)."""
    monkeypatch.setattr(training, "invertible", lambda run: True)
    nets = [SquareInvNet(48, 2, seed, True) for seed in (1, 2)]
    nets[1].layers[1].weight_matrix[...] = 0.0
    settings = [training.StepSettings("GAIT", 1e-4)] * 2
    with pytest.raises(training.Diverged, match="every run of the pack diverged"):
        train_packed(nets, settings, synthetic_sets(2), 3)


def test_runs_with_other_rules_cannot_share_a_pack():
    with pytest.raises(ValueError, match="must share the rule"):
        training.StepSettings.of_pack([training.StepSettings("BP", 1e-4),
                                       training.StepSettings("GAIT", 1e-4)])
    with pytest.raises(ValueError, match="share widths"):
        InvNet.stack([SquareInvNet(48, 1, 1), SquareInvNet(48, 2, 1)])


# ----------------------------------------------------------------------------- pack.py

def pack_cli(members, timeout=900):
    """Run `python pack.py --member ...` to the end (members: lists of run.py flags)."""
    started = time.monotonic()
    done = subprocess.run([sys.executable, PACK_PY]
                          + [part for flags in members
                             for part in ("--member", " ".join(map(str, flags)))],
                          env=ENV, capture_output=True, text=True, timeout=timeout)
    done.output = done.stdout + done.stderr
    done.seconds = time.monotonic() - started
    return done


def member_flags(root, results, dataset, seed, epochs=1, extra=()):
    return [f"--dataset={dataset}", f"--seed={seed}", "--nb_layers=0", f"--nb_epochs={epochs}",
            "--eval_interval=0", "--backend=numpy", f"--data_dir={root}",
            f"--results_dir={results}", *extra]


def folder_files(folder):
    """{file name: bytes} of the statistics and weight files, and the checkpoint's arrays."""
    files = {name: open(os.path.join(folder, name), "rb").read()
             for name in sorted(os.listdir(folder))
             if name.endswith(".txt") or name.endswith(".npy")}
    with numpy.load(os.path.join(folder, "checkpoint.npz")) as stored:
        files.update({f"checkpoint:{name}": stored[name].tobytes()
                      for name in stored.files if name != "meta"})
    return files


def test_pack_py_writes_exactly_what_single_runs_write(data_root, tmp_path):
    """MNIST and Fashion-MNIST, one BP epoch each (one layer of 784), as a pack and alone:
    the same files, bit for bit, and run.json records of finished runs."""
    root = data_root.require("MNIST") and data_root.require("FMNIST")
    members = [member_flags(root, tmp_path / "pack", "MNIST", 1),
               member_flags(root, tmp_path / "pack", "FMNIST", 2)]
    done = pack_cli(members)
    assert_clean(done, 0)
    for flags in members:
        alone = [flag.replace("/pack", "/alone") for flag in flags]
        assert_clean(cli(alone), 0)
    for name in sorted(os.listdir(tmp_path / "alone")):
        packed = folder_files(tmp_path / "pack" / name)
        assert packed == folder_files(tmp_path / "alone" / name), name
        record = json.load(open(tmp_path / "pack" / name / "run.json"))
        assert (record["status"], record["epochs_done"]) == ("finished", 1)
        assert record["settings"]["dataset"] in name
        assert "run.py --dataset=" in record["command"] and "pack.py" not in record["command"]


def test_a_killed_pack_resumes_exactly(data_root, tmp_path):
    """SIGTERM during the second epoch: both runs interrupted with their checkpoint after
    epoch 1; the resume line (--load in each member) ends them as an uninterrupted pack."""
    root = data_root.require("MNIST")
    members = [member_flags(root, tmp_path / "killed", "MNIST", seed, epochs=2)
               for seed in (1, 2)]
    command = [sys.executable, PACK_PY] + [part for flags in members
                                           for part in ("--member", " ".join(map(str, flags)))]
    process = subprocess.Popen(command, env=ENV, stdout=subprocess.PIPE,
                               stderr=subprocess.STDOUT, text=True)
    lines = []
    for line in process.stdout:
        lines.append(line)
        if "epoch 2/2 batch" in line:
            process.send_signal(signal.SIGTERM)
            break
    output = "".join(lines) + process.stdout.read()
    assert process.wait(timeout=300) == 143, output
    assert "Resume with:" in output and "Traceback" not in output
    folders = sorted(os.listdir(tmp_path / "killed"))
    for name in folders:
        record = json.load(open(tmp_path / "killed" / name / "run.json"))
        assert (record["status"], record["epochs_done"]) == ("interrupted", 1)
    resumed = pack_cli([flags + ["--load"] for flags in members])
    assert_clean(resumed, 0)
    assert resumed.output.count("Resuming") == 2
    whole = pack_cli([[str(flag).replace("/killed", "/whole") for flag in flags]
                      for flags in members])
    assert_clean(whole, 0)
    for name in folders:
        assert folder_files(tmp_path / "killed" / name) == folder_files(
            tmp_path / "whole" / name), name


# pack.py that prints the seeds of each pack's runs at each epoch, and makes the weights of
# the run of seed argv[1] NaN once, at the start of epoch 2
POISONED_PACK_PY = """
import sys
import cublas
import pack
import training
seed, train_epoch, poisoned = int(sys.argv[1]), training.train_epoch, []


def poisoning(runner, feed, statistics, eval_interval, progress, stop, epoch):
    seeds = runner.net.layers[0].seed
    print(f"pack of seeds {seeds} in epoch {epoch + 1}", flush=True)
    if epoch == 1 and seed in seeds and not poisoned:
        runner.net.layers[0].weight_matrix[seeds.index(seed)] = float("nan")
        poisoned.append(seed)
    return train_epoch(runner, feed, statistics, eval_interval, progress, stop, epoch)


training.train_epoch = poisoning
sys.exit(pack.main(sys.argv[2:]))
"""


def test_runs_resumed_at_other_epochs_merge_and_a_diverged_run_never_trains_again(
        data_root, tmp_path):
    """Run A starts at epoch 0, B resumes after epoch 1; A diverges at the start of epoch 2.
    A trains epoch 1 alone, then B joins it in one pack for epoch 2; A is never trained
    again: its run.json says diverged after 1 epoch, its checkpoint is that of epoch 1. Every
    file gets the mode a plain open() gives."""
    import checkpoint
    root = data_root.require("MNIST")
    results = tmp_path / "pack"
    members = {seed: member_flags(root, results, "MNIST", seed, epochs=2) for seed in (1, 2)}
    assert_clean(cli(member_flags(root, results, "MNIST", 2, epochs=1)), 0)
    members[2].append("--load")
    done = subprocess.run([sys.executable, "-c", POISONED_PACK_PY, "1"]
                          + [part for flags in members.values()
                             for part in ("--member", " ".join(map(str, flags)))],
                          env=ENV, capture_output=True, text=True, timeout=900, cwd=REPO)
    output = done.stdout + done.stderr
    assert done.returncode == 3, output
    assert "Traceback" not in output
    packs = [line for line in done.stdout.splitlines() if line.startswith("pack of seeds")]
    assert packs == ["pack of seeds [1] in epoch 1", "pack of seeds [1, 2] in epoch 2"], output
    folders = {seed: next(name for name in os.listdir(results) if f"_{seed}Seed_" in name)
               for seed in (1, 2)}
    record = json.load(open(results / folders[1] / "run.json"))
    assert (record["status"], record["epochs_done"]) == ("diverged", 1), record
    assert "epoch 2, batch 0" in record["message"]
    with numpy.load(results / folders[1] / "checkpoint.npz") as stored:
        assert json.loads(str(stored["meta"]))["epoch"] == 1
        assert numpy.isfinite(stored["W0"]).all()
    record = json.load(open(results / folders[2] / "run.json"))
    assert (record["status"], record["epochs_done"]) == ("finished", 2)
    mode = checkpoint.creation_mode()
    for folder in folders.values():
        for name in os.listdir(results / folder):
            if name != "run.lock":
                assert os.stat(results / folder / name).st_mode & 0o777 == mode, name


def test_a_pack_member_that_diverges_logs_each_batch_once_in_the_others():
    """Alignment logged at every batch; run 1 diverges early: runs 0 and 2 log one row per
    batch, the rows of their single runs."""
    sets = synthetic_sets(3)
    settings = [training.StepSettings("GAIT", rate, 0.1, log_alignment=1)
                for rate in (1e-3, 1e300, 2e-3)]
    runner, statistics = train_packed([SquareInvNet(48, 2, seed, True) for seed in (1, 2, 3)],
                                      settings, sets, 12)
    assert runner.run_ids == [0, 2]
    for position, run in ((0, 0), (1, 2)):
        _, single = train_alone(SquareInvNet(48, 2, run + 1, True), settings[run], sets[run], 12)
        assert [row[1] for row in statistics[position].alignment] == list(range(12))
        numpy.testing.assert_array_equal(statistics[position].alignment, single.alignment)


def test_pack_py_refuses_incompatible_members_and_writes_nothing(tmp_path):
    done = pack_cli([["--algorithm=BP", f"--results_dir={tmp_path}"],
                     ["--algorithm=GAIT", f"--results_dir={tmp_path}"]])
    assert_clean(done, 2)
    assert "cannot share a pack: they differ in algorithm" in done.output
    assert os.listdir(tmp_path) == []
    done = pack_cli([["--seed=1", f"--results_dir={tmp_path}"],
                     ["--seed=x", f"--results_dir={tmp_path}"]])
    assert_clean(done, 2)
    assert "--member 2" in done.output and "'x' is not an integer" in done.output


def test_pack_keys_group_what_may_share_a_pack():
    parser = build_parser()
    key = pack.pack_key
    assert key(parser.parse_args(["--seed=1"])) == key(parser.parse_args(
        ["--seed=2", "--dataset=FMNIST", "--learning_rate=0.001", "--nb_epochs=3"]))
    assert key(parser.parse_args(["--orthogonal_reg=0.1"])) == key(parser.parse_args(
        ["--orthogonal_reg=1000", "--orthogonal_init"]))
    assert key(parser.parse_args([])) != key(parser.parse_args(["--orthogonal_reg=0.1"]))
    assert key(parser.parse_args(["--tower", "--nb_layers=2"])) == key(parser.parse_args(
        ["--tower", "--nb_layers=4"]))


# ----------------------------------------------------------------------------- on a GPU

gpu = pytest.mark.skipif(pack.backend._import_cupy() is None, reason="no GPU with CuPy here")


@pytest.fixture
def cupy_float64():
    backend = pack.backend
    backend.select("cupy", dtype="float64")
    yield backend
    backend.select("numpy", dtype="float64")


def largest_relative_difference(first, second):
    return max(float(numpy.abs(a - b).max() / max(numpy.abs(b).max(), 1e-300))
               for a, b in zip(first, second))


@gpu
def test_cupy_batched_products_equal_cupy_matmul_also_in_a_graph(cupy_float64):
    """backend.matmul on stacks (strided batched gemm, called directly) against CuPy's matmul,
    for every layout a pack's step uses, eagerly and replayed from a CUDA graph."""
    backend = cupy_float64
    xp = backend.xp()
    assert cublas.handles()["batched"], "the batched trial products failed (see stderr)"
    generator = numpy.random.RandomState(0)
    weights = backend.to_device(generator.randn(3, 40, 40))
    activity = backend.to_device(generator.randn(3, 6, 40))
    pairs = [(activity, weights), (activity, weights.swapaxes(-1, -2)),
             (activity.swapaxes(-1, -2), activity), (weights, weights.swapaxes(-1, -2)),
             (activity, weights[..., :10])]
    for left, right in pairs:
        expected = xp.matmul(left, right)
        assert float(xp.abs(backend.matmul(left, right) - expected).max()) <= 1e-13
        out = xp.empty_like(expected)
        graph = backend.Graph.capture(lambda: out.__setitem__(..., backend.matmul(left, right)))
        graph.launch()
        backend.synchronize()
        assert float(xp.abs(out - expected).max()) <= 1e-13


@gpu
@pytest.mark.parametrize("algorithm", ["BP", "GAIT", "TP"])
def test_cupy_pack_steps_equal_single_runs(algorithm, cupy_float64):
    """A pack of three runs queued on the GPU (guard, CUDA graph) against each run queued
    alone: BP (a whole epoch, 1000 steps) within 1e-12 relative; GAIT and TP (120 steps,
    chaotic at rounding level) within 10 times what a one-ulp nudge of the inputs makes a
    single run differ."""
    backend = cupy_float64
    steps = 1000 if algorithm == "BP" else 120
    paper = {"BP": (1e-4, 0.0), "GAIT": (1e-4, 0.1), "TP": (1e-5, 1000.0)}[algorithm]
    settings = training.StepSettings(algorithm, *paper)
    generator = numpy.random.RandomState(0)
    sets = []
    for _ in range(3):
        labels = generator.randint(0, 10, steps * 60)
        sets.append(((backend.to_device(generator.rand(steps * 60, 784)), labels),
                     backend.to_device(one_hot(labels)), None))

    def queued(nets, run_sets, scale=1.0):
        runner = step_runner.StepRunner(InvNet.stack(nets),
                                        training.StepSettings.of_pack([settings] * len(nets)))
        statistics = [training.Statistics() for _ in nets]
        feed = training.Feed(run_sets)
        feed.batch_size, feed.nb_batches = 60, steps
        for batch_index in range(steps):
            images, labels = feed.batch(batch_index, runner.run_ids)
            runner.step(images * scale, labels, statistics, 0, batch_index)
        runner.settle(statistics)
        assert runner.replay.graph is not None
        return runner.net

    packed = queued([SquareInvNet(784, 4, seed, True) for seed in (1, 2, 3)], sets)
    for position, seed in enumerate((1, 2, 3)):
        alone = queued([SquareInvNet(784, 4, seed, True)], [sets[position]]).run(0)
        nudged = queued([SquareInvNet(784, 4, seed, True)], [sets[position]],
                        1 + 2.0 ** -52).run(0)
        got = [backend.to_host(array) for array in packed.run(position).parameters().values()]
        expected = [backend.to_host(array) for array in alone.parameters().values()]
        difference = largest_relative_difference(got, expected)
        spread = largest_relative_difference(
            [backend.to_host(array) for array in nudged.parameters().values()], expected)
        print(f"{algorithm} run {position}: pack vs alone {difference:.1e}, one-ulp spread "
              f"{spread:.1e}")
        assert difference <= (1e-12 if algorithm == "BP" else 10 * spread)


@gpu
def test_cupy_pack_py_gait_accuracy_matches_single_runs(mnist_raw, tmp_path):
    """One GAIT (lambda 0.1) epoch on MNIST, 2 hidden layers, seeds 1 and 2, on the GPU: as a
    pack and alone, the final test accuracies agree within 0.5 percentage points."""
    import shutil
    root = tmp_path / "data"
    shutil.copytree(os.path.join(mnist_raw, "MNIST", "raw"), root / "MNIST" / "raw")
    flags = ["--algorithm=GAIT", "--orthogonal_reg=0.1", "--orthogonal_init", "--nb_layers=2",
             "--nb_epochs=1", "--eval_interval=0", "--backend=cupy", f"--data_dir={root}"]
    members = [flags + [f"--seed={seed}", f"--results_dir={tmp_path / 'pack'}"]
               for seed in (1, 2)]
    assert_clean(pack_cli(members), 0)
    for member in members:
        assert_clean(cli([flag.replace("/pack", "/alone") for flag in member]), 0)
    for name in sorted(os.listdir(tmp_path / "alone")):
        packed = numpy.loadtxt(tmp_path / "pack" / name / "test_acc.txt")[-1]
        alone = numpy.loadtxt(tmp_path / "alone" / name / "test_acc.txt")[-1]
        print(f"{name}: pack {packed:.4f}, alone {alone:.4f}")
        assert abs(packed - alone) <= 0.005


LEARNING = {"square": lambda seed, exact: SquareInvNet(48, 2, seed, True, learn_inverses=True,
                                                       exact_start=exact),
            "tower": lambda seed, exact: TowerInvNet([48, 48, 30, 20, 10], seed, True,
                                                     learn_inverses=True, exact_start=exact)}


@pytest.mark.parametrize("network", sorted(LEARNING))
@pytest.mark.parametrize("algorithm, lambdas, rates", [
    ("GAIT", (0.1, 0.5, 0.1), (1e-4, 1e-4, 1e-3)),
    ("TP", (1000.0, 100.0, 1000.0), (1e-5, 1e-5, 3e-5))])
def test_a_pack_of_learned_inverses_equals_its_single_runs_bit_for_bit(network, algorithm,
                                                                      lambdas, rates):
    """Learned inverses in a pack: runs starting exact and drawn, with their own learning
    rates of the inverses; after 25 steps every array (W, b, V, c and the moments of each)
    and every row of the alignment and inverse-quality logs is the single run's."""
    make = LEARNING[network]
    exact = (True, False, True)
    settings = [training.StepSettings(algorithm, rate, reg, log_alignment=10,
                                      inv_learning_rate=inverse_rate)
                for rate, reg, inverse_rate in zip(rates, lambdas, (None, 1e-3, 3e-4))]
    sets = synthetic_sets(3)
    runner, statistics = train_packed([make(seed, start) for seed, start in zip((1, 7, 3), exact)],
                                      settings, sets, 25, evaluate_at=(9,))
    for position, (seed, start) in enumerate(zip((1, 7, 3), exact)):
        single, single_statistics = train_alone(make(seed, start), settings[position],
                                                sets[position], 25)
        assert_same_state(single, runner.net.run(position))
        assert "V1" in single.state() and "mc1" in single.state()
        assert statistics[position].alignment == single_statistics.alignment
        assert statistics[position].inverse_quality == single_statistics.inverse_quality
        assert len(single_statistics.inverse_quality) == 3


def test_runs_that_learn_inverses_and_runs_that_do_not_make_no_pack():
    with pytest.raises(ValueError, match="learn inverses"):
        InvNet.stack([SquareInvNet(48, 1, 1, True),
                      SquareInvNet(48, 1, 2, True, learn_inverses=True)])
    assert (pack.pack_key(build_parser().parse_args(["--algorithm=GAIT", "--learn_inv"]))
            != pack.pack_key(build_parser().parse_args(["--algorithm=GAIT"])))
    assert (pack.pack_key(build_parser().parse_args(["--algorithm=GAIT", "--learn_inv",
                                                     "--no_inv_init", "--seed=2"]))
            == pack.pack_key(build_parser().parse_args(["--algorithm=GAIT", "--learn_inv"])))
