"""Packs (inv_net.InvNet.stack, step_runner.StepRunner on a pack, pack.py): several runs trained
as one must compute, bit for bit on NumPy, what each run computes alone; a diverging run
leaves the pack alone; a killed pack resumes exactly; bad packs are refused.
"""
import json
import os
import shlex
import signal
import subprocess
import sys
import time

import numpy
import pytest

from gaitprop.arrays import cublas
from gaitprop.cli import pack
from gaitprop.arrays import products
from gaitprop.runs import exit_status, run_folder
from gaitprop.engine import step_runner
from gaitprop.engine import cadence
from gaitprop.engine import faults
from gaitprop.engine import step as training_step
from gaitprop.engine import training
from gaitprop.model.net import InvNet, SquareInvNet, TowerInvNet
from helpers import (ENV, REPO, PackOfOne, assert_clean, assert_same_state, cli, synthetic_sets,
                     train_alone, train_packed)
from gaitprop.model.functions import one_hot
from gaitprop.runs.settings import build_parser

PACK_PY = os.path.join(REPO, "pack.py")


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
    settings = [training_step.StepSettings(algorithm, rate, reg, log_alignment=10)
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
    settings = [training_step.StepSettings("BP", 1e-3)] * 2
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
    settings = [training_step.StepSettings("BP", 1e-3)] * 2
    runner = step_runner.StepRunner(
        InvNet.stack([SquareInvNet(48, 1, seed, True) for seed in (1, 2)]),
        training_step.StepSettings.of_pack(settings))
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
    settings = [training_step.StepSettings("BP", rate) for rate in rates]
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
    settings = [training_step.StepSettings("BP", 1e300)] * 2
    with pytest.raises(faults.Diverged, match="every run of the pack diverged"):
        train_packed([SquareInvNet(48, 2, seed, True) for seed in (1, 2)], settings, sets, 30)


def test_a_singular_solve_that_no_run_explains_stops_every_run(monkeypatch):
    """A run's zero weights make GAIT's solve fail; were no run found singular alone, every
    run is taken out (never the same step retried for ever)."""
    monkeypatch.setattr(training_step, "invertible", lambda run: True)
    nets = [SquareInvNet(48, 2, seed, True) for seed in (1, 2)]
    nets[1].layers[1].weight_matrix[...] = 0.0
    settings = [training_step.StepSettings("GAIT", 1e-4)] * 2
    with pytest.raises(faults.Diverged, match="every run of the pack diverged"):
        train_packed(nets, settings, synthetic_sets(2), 3)


def test_runs_with_other_rules_cannot_share_a_pack():
    with pytest.raises(ValueError, match="must share the rule"):
        training_step.StepSettings.of_pack([training_step.StepSettings("BP", 1e-4),
                                       training_step.StepSettings("GAIT", 1e-4)])
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
from gaitprop.arrays import cublas
from gaitprop.cli import pack
from gaitprop.engine import training
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
    from gaitprop.runs import checkpoint
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
    assert "epoch 2, batch 1:" in record["message"]  # its first batch, counted from 1
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
    settings = [training_step.StepSettings("GAIT", rate, 0.1, log_alignment=1)
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


@pytest.mark.parametrize("member, words", [
    ("--seed=-3", ["--seed", "not a seed"]),
    ("--seed=4294967295 --nb_layers=3", ["--seed", "at most 4294967293"]),
    ("--algorithm=TP --gamma=0.01", ["--gamma", "--algorithm=GAIT"]),
    ("--algorithm=GAIT --learn_inv --nb_layers=0", ["--learn_inv", "--nb_layers"]),
    ("--eval_interval=1000", ["--eval_interval", "at most 999"]),
    ("--load --overwrite", ["--load", "--overwrite"]),
    ("--learning_rate=nan", ["--learning_rate", "'nan' must be a finite number"]),
    ("--orthogonal_reg=inf", ["--orthogonal_reg", "'inf' must be a finite number"])])
def test_pack_py_refuses_what_run_py_refuses_in_a_member(member, words, tmp_path):
    from gaitprop.runs.folders import UsageError
    with pytest.raises(UsageError) as refused:
        pack.parse_members(["--seed=7", member])
    for word in ["--member 2", *words]:
        assert word in str(refused.value), str(refused.value)
    if member == "--seed=-3":  # as a process: exit 2, nothing written
        folders = [f"--results_dir={tmp_path}", f"--data_dir={tmp_path / 'data'}"]
        done = pack_cli([folders, [member, *folders]])
        assert_clean(done, 2)
        assert "--member 2" in done.output and os.listdir(tmp_path) == []


def pack_py(*arguments):
    """Run `python pack.py *arguments` (given as they are) to the end."""
    done = subprocess.run([sys.executable, PACK_PY, *map(str, arguments)], env=ENV,
                          capture_output=True, text=True, timeout=300)
    done.output = done.stdout + done.stderr
    return done


def test_pack_py_names_a_member_it_cannot_split(tmp_path):
    done = pack_py("--member", f"--seed=1 --results_dir={tmp_path}",
                   "--member", f"--seed=2 --results_dir={tmp_path} 'unbalanced")
    assert_clean(done, 2)
    assert "--member 2" in done.stderr and "quotation" in done.stderr, done.stderr
    assert "unexpected" not in done.stderr and run_folder.ERROR_LOG not in done.stderr
    assert done.stderr.count("\n") == 1, done.stderr
    assert os.listdir(tmp_path) == []


def test_pack_py_names_an_unknown_flag(tmp_path):
    done = pack_py("--membr", f"--seed=1 --results_dir={tmp_path}")
    assert_clean(done, 2)
    assert "--membr" in done.stderr and "required" not in done.stderr, done.stderr
    assert os.listdir(tmp_path) == []
    done = pack_py()  # no member at all
    assert_clean(done, 2)
    assert "--member" in done.stderr


def test_pack_py_checks_every_member_before_creating_any_folder(tmp_path):
    """The second member is refused (--load with nothing to load): the first member's folder
    is not made either, nor the results root."""
    results = tmp_path / "results"
    flags = ["--nb_layers=0", f"--results_dir={results}", f"--data_dir={tmp_path / 'data'}"]
    done = pack_cli([["--seed=1"] + flags, ["--seed=2", "--load"] + flags])
    assert_clean(done, 2)
    assert "--load" in done.stderr, done.stderr
    assert os.listdir(tmp_path) == [], os.listdir(tmp_path)


def test_pack_py_refuses_a_member_folder_of_results_it_did_not_make(tmp_path):
    """A member's folder holds the published scripts' results (no run.json, no checkpoint):
    refused with status 2, naming --overwrite; its files kept, no other folder made."""
    results = tmp_path / "results"
    flags = ["--nb_layers=0", f"--results_dir={results}", f"--data_dir={tmp_path / 'data'}"]
    folder = run_folder.results_folder(build_parser().parse_args(["--seed=2"] + flags))
    os.makedirs(folder)
    numpy.savetxt(os.path.join(folder, "test_acc.txt"), [0.1, 0.5])
    numpy.save(os.path.join(folder, "0Lweights.npy"), numpy.eye(3))
    before = {name: open(os.path.join(folder, name), "rb").read() for name in os.listdir(folder)}
    done = pack_cli([["--seed=1"] + flags, ["--seed=2"] + flags])
    assert_clean(done, 2)
    assert folder in done.stderr and "--overwrite" in done.stderr, done.stderr
    assert os.listdir(results) == [os.path.basename(folder)]
    assert {name: open(os.path.join(folder, name), "rb").read()
            for name in os.listdir(folder)} == before


def test_the_printed_resume_line_runs(monkeypatch):
    """Started as `python pack.py ...`, the pack prints a command that runs, not `pack.py ...`
    (not found on the PATH); the members keep their flags, with --load."""
    monkeypatch.setattr(sys, "argv", ["pack.py", "--member", "--seed=1"])
    monkeypatch.setattr(sys, "orig_argv", [sys.executable, "pack.py", "--member", "--seed=1"])
    members = [(None, ["--seed=1", "--overwrite"]), (None, ["--seed=2", "--data_dir=a b"])]
    words = shlex.split(pack.resume_line(members))
    start = words.index("--member")
    assert words[start:] == ["--member", "--seed=1 --load",
                             "--member", "--seed=2 '--data_dir=a b' --load"]
    done = subprocess.run(words[:start] + ["--help"], cwd=REPO, env=ENV, capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 0 and "--member" in done.stdout, done.stderr


def test_a_stopped_pack_records_runs_at_their_epochs_finished(tmp_path):
    """A run resumed at its epochs trains no more; a signal that stops the others leaves it
    recorded finished, not interrupted."""
    from gaitprop.runs import folders
    from gaitprop.runs import trainer
    runs = []
    for seed, epochs in ((1, 1), (2, 2)):
        argv = [f"--seed={seed}", "--nb_layers=0", f"--nb_epochs={epochs}",
                f"--results_dir={tmp_path}"]
        args = build_parser().parse_args(argv)
        folder = run_folder.results_folder(args)
        os.makedirs(folder)
        runs.append(folders.Run(args, argv, folder, None))
    runs[0].epoch = 1  # resumed (--load) from the checkpoint of its last epoch
    trained = []

    def stopped_by_a_signal(group, until):
        trained.append([each.args.seed for each in group])
        return exit_status.EXIT_SIGNAL[signal.SIGTERM]
    assert trainer.train_in_packs(runs, stopped_by_a_signal) == 143
    assert trained == [[2]]
    statuses = [json.load(open(os.path.join(each.folder, "run.json")))["status"]
                for each in runs]
    assert statuses == ["finished", "interrupted"]


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
    """products.matmul on stacks (strided batched gemm, called directly) against CuPy's matmul,
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
        assert float(xp.abs(products.matmul(left, right) - expected).max()) <= 1e-13
        out = xp.empty_like(expected)
        graph = products.Graph.capture(lambda: out.__setitem__(..., products.matmul(left, right)))
        graph.launch()
        backend.synchronize()
        assert float(xp.abs(out - expected).max()) <= 1e-13


@gpu
@pytest.mark.parametrize("algorithm", ["BP", "GAIT", "TP"])
def test_cupy_pack_steps_equal_single_runs(algorithm, cupy_float64):
    """A pack of three runs queued on the GPU (guard, CUDA graph) against each run queued
    alone, BP (a whole epoch, 1000 steps), GAIT and TP (120 steps): within 10 times what a
    one-ulp nudge of the inputs makes a single run differ, the criterion of the GAIT check.
    Not bit for bit, nor a fixed tolerance: a pack of three and a pack of one call different
    cuBLAS routines (strided batched and plain gemm), whose sums may round differently, and
    the optimiser's m / sqrt(v) amplifies that over the steps as it amplifies a nudge."""
    backend = cupy_float64
    steps = 1000 if algorithm == "BP" else 120
    paper = {"BP": (1e-4, 0.0), "GAIT": (1e-4, 0.1), "TP": (1e-5, 1000.0)}[algorithm]
    settings = training_step.StepSettings(algorithm, *paper)
    generator = numpy.random.RandomState(0)
    sets = []
    for _ in range(3):
        labels = generator.randint(0, 10, steps * 60)
        sets.append(((backend.to_device(generator.rand(steps * 60, 784)), labels),
                     backend.to_device(one_hot(labels)), None))

    def queued(nets, run_sets, scale=1.0):
        runner = step_runner.StepRunner(InvNet.stack(nets),
                                        training_step.StepSettings.of_pack([settings] * len(nets)))
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
        assert 0 < spread and difference <= 10 * spread


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


def counted_captures(monkeypatch, backend):
    """A list that grows by one at each CUDA graph capture (products.Graph.capture)."""
    captures, capture = [], products.Graph.capture

    def counted(work):
        captures.append(work)
        return capture(work)
    monkeypatch.setattr(products.Graph, "capture", staticmethod(counted))
    return captures


def state_of(net):
    """{name: host copy} of every array of a run (W, b, the optimiser's moments)."""
    return {name: pack.backend.to_host(array) for name, array in net.state().items()}


def state_difference(first, second):
    """largest_relative_difference over the arrays of two state_of dicts."""
    assert sorted(first) == sorted(second)
    return largest_relative_difference([first[name] for name in sorted(first)],
                                       [second[name] for name in sorted(second)])


def assert_same_tally(got, expected, samples):
    """Two (accuracy, loss) tallies of `samples` rows: the accuracy within one sample (a
    rounding-level difference may move an argmax), the loss to rounding."""
    assert abs(got[0] - expected[0]) <= 1.5 / samples, (got, expected)
    assert got[1] == pytest.approx(expected[1], rel=1e-9), (got, expected)


def poisoned_sets(scale=1.0):
    """synthetic_sets(3) on the selected backend (training.RunData), run 1's batch 17 (of 2
    rows) holding a NaN, every image multiplied by `scale` (on the host, in float64)."""
    sets = synthetic_sets(3)
    sets[1][0][0][2 * 17, 5] = numpy.nan
    return [training.to_device_sets((images * scale, labels), test)
            for (images, labels), _, test in sets]


@gpu
def test_cupy_a_run_diverging_mid_window_leaves_and_the_others_are_recaptured(cupy_float64,
                                                                              monkeypatch):
    """A pack of three BP runs queued on the GPU, 40 steps in one window of the guard (read
    after 50); run 1's batch 17 holds a NaN. When the host reads the guard, the step is redone,
    run 1 leaves with its message, and runs 0 and 2 go on from batch 17 as a new pack, whose
    step is captured again (two captures, the graph kept, its replay equal to the step). As the
    same pack queued on NumPy (the mirror of
    test_a_diverging_run_leaves_the_pack_and_the_others_go_on): the same runs left, their
    batches' accuracy and loss (steps redone after a failed check counting twice, as on
    NumPy), their arrays within 10 times a one-ulp nudge's spread."""
    backend = cupy_float64
    captures = counted_captures(monkeypatch, backend)
    settings = [training_step.StepSettings("BP", rate) for rate in (1e-3, 2e-3, 3e-3)]

    def queued(scale=1.0):
        nets = [SquareInvNet(48, 2, seed, True) for seed in (1, 2, 3)]
        runner, statistics = train_packed(nets, settings, poisoned_sets(scale), 40,
                                          deferred=True)
        samples = runner.tally.steps * 2
        return runner, statistics, runner.running_statistics(), samples
    runner, statistics, tally, samples = queued()
    assert runner.run_ids == [0, 2] and list(runner.diverged) == [1]
    assert f"Training diverged at {cadence.batch_name(0, 17)}" in runner.diverged[1]
    assert len(statistics) == 2
    print(f"captures {len(captures)}, replay difference {runner.replay.difference}")
    assert len(captures) == 2, "the pack left after run 1 is captured again"
    assert runner.replay.graph is not None and runner.replay.difference == 0.0
    states = [state_of(runner.net.run(position)) for position in range(2)]
    backend.select("numpy", dtype="float64")  # the mirror
    mirror, _, mirror_tally, mirror_samples = queued()
    nudged = queued(1 + 2.0 ** -52)[0]
    assert mirror.run_ids == [0, 2] and mirror.diverged == runner.diverged
    assert samples == mirror_samples
    for position in range(2):
        assert_same_tally(tally[position], mirror_tally[position], samples)
        expected = state_of(mirror.net.run(position))
        difference = state_difference(states[position], expected)
        spread = state_difference(state_of(nudged.net.run(position)), expected)
        print(f"run {[0, 2][position]}: cupy vs numpy {difference:.1e}, spread {spread:.1e}")
        assert difference <= 10 * spread + 1e-13


@gpu
def test_cupy_runs_leaving_shrink_a_pack_to_one_each_recaptured_with_the_right_tally(
        cupy_float64, monkeypatch):
    """A pack of three BP runs queued on the GPU: after 4 batches run 1 leaves (its epochs
    done), after 8 run 0 leaves too, and run 2 goes on alone to 12 (a pack of one: the plain
    gemm of a single run, not the batched one). Each new pack is captured again (three
    captures; the graph kept, its replay equal to the step); the batches' accuracy and loss
    read after 8 batches (runs 0 and 2) and after 12 (run 2's last 4) are those of each single
    run (as on NumPy, test_running_statistics_of_a_pack_go_on_after_a_run_leaves), and each
    run's arrays when it leaves are its single run's within 10 times a one-ulp nudge's
    spread."""
    backend = cupy_float64
    xp = backend.xp()
    captures = counted_captures(monkeypatch, backend)
    generator = numpy.random.RandomState(5)
    host = [(generator.rand(12, 60, 48),
             one_hot(generator.randint(0, 10, 720)).reshape(12, 60, 10)) for _ in range(3)]
    device = [tuple(backend.to_device(array) for array in each) for each in host]
    settings = [training_step.StepSettings("BP", rate) for rate in (1e-3, 2e-3, 3e-3)]
    runner = step_runner.StepRunner(InvNet.stack([SquareInvNet(48, 1, seed, True)
                                                  for seed in (1, 2, 3)]),
                                    training_step.StepSettings.of_pack(settings))
    statistics = [training.Statistics() for _ in range(3)]
    states, tallies = {}, {}
    for batch in range(12):
        for leaving, at in ((1, 4), (0, 8)):
            if batch == at:
                runner.settle(statistics)
                if at == 8:
                    tallies[8] = dict(zip(runner.run_ids, runner.running_statistics()))
                position = runner.run_ids.index(leaving)
                states[leaving] = state_of(runner.net.run(position))
                runner.remove([position], statistics)
        images = xp.stack([device[run][0][batch] for run in runner.run_ids])
        labels = xp.stack([device[run][1][batch] for run in runner.run_ids])
        runner.step(images, labels, statistics, 0, batch)
    runner.settle(statistics)
    tallies[12] = dict(zip(runner.run_ids, runner.running_statistics()))
    states[2] = state_of(runner.net.run(0))
    assert runner.run_ids == [2] and len(statistics) == 1
    print(f"captures {len(captures)}, replay difference {runner.replay.difference}")
    assert len(captures) == 3, "each pack left (two runs, then one) is captured again"
    assert runner.replay.graph is not None and runner.replay.difference == 0.0

    def alone(run, steps, scale=1.0):
        """(arrays after `steps` steps, tallies read after 8 and after `steps`) of a run alone."""
        single = PackOfOne(SquareInvNet(48, 1, run + 1, True), settings[run])
        single_statistics, read = training.Statistics(), {}
        for batch in range(steps):
            single.step(device[run][0][batch] * scale, device[run][1][batch], single_statistics,
                        0, batch)
            if batch + 1 in (8, steps):
                single.settle(single_statistics)
                read[batch + 1] = single.running_statistics()
        return state_of(single.net), read
    for run, steps in ((1, 4), (0, 8), (2, 12)):
        expected, read = alone(run, steps)
        spread = state_difference(alone(run, steps, 1 + 2.0 ** -52)[0], expected)
        difference = state_difference(states[run], expected)
        print(f"run {run} after {steps}: pack vs alone {difference:.1e}, spread {spread:.1e}")
        assert difference <= 10 * spread + 1e-13
        if run != 1:  # run 1's tally left with it, unread
            assert_same_tally(tallies[8][run], read[8], 8 * 60)
        if run == 2:
            assert_same_tally(tallies[12][2], read[12], 4 * 60)


# What cublas.py and step_runner.py print when they fall back to CuPy's matmul or eager steps.
FALLBACK_NOTES = ("note: direct cuBLAS products unavailable",
                  "note: direct cuBLAS batched products unavailable",
                  "note: CUDA graph capture failed", "note: a CUDA graph replay differed")

# POISONED_PACK_PY that also prints, after each epoch, whether the pack's runner keeps a CUDA
# graph, its replay's difference and how many graphs the process has captured
RECAPTURED_PACK_PY = """
import sys
from gaitprop.arrays import backend
from gaitprop.arrays import products
from gaitprop.cli import pack
from gaitprop.engine import training
seed, train_epoch, poisoned, captures = int(sys.argv[1]), training.train_epoch, [], []
capture = products.Graph.capture


def counted(work):
    captures.append(work)
    return capture(work)


def poisoning(runner, feed, statistics, eval_interval, progress, stop, epoch):
    seeds = runner.net.layers[0].seed
    print(f"pack of seeds {seeds} in epoch {epoch + 1}", flush=True)
    if epoch == 1 and seed in seeds and not poisoned:
        runner.net.layers[0].weight_matrix[seeds.index(seed)] = float("nan")
        poisoned.append(seed)
    done = train_epoch(runner, feed, statistics, eval_interval, progress, stop, epoch)
    replay = runner.replay
    print(f"after epoch {epoch + 1}, seeds {runner.net.layers[0].seed}: graph kept "
          f"{replay.graph is not None}, difference {replay.difference}, captures "
          f"{len(captures)}", flush=True)
    return done


products.Graph.capture = staticmethod(counted)
training.train_epoch = poisoning
sys.exit(pack.main(sys.argv[2:]))
"""


@gpu
def test_cupy_runs_resumed_at_other_epochs_merge_and_each_pack_is_recaptured(data_root,
                                                                             tmp_path):
    """On the GPU, as test_runs_resumed_at_other_epochs_merge_and_a_diverged_run_never_trains_again
    on NumPy: run A (seed 1) trains epoch 1 alone, B (seed 2, resumed after epoch 1) joins it
    in one pack (train_in_packs merges them), A's weights turn NaN at the start of epoch 2 and
    it leaves, B finishes alone. Each of the three packs (A; A and B; B) is captured as a CUDA
    graph and keeps it (its replay equal to the step); no fallback note is printed; A's record
    says diverged after 1 epoch with its checkpoint of epoch 1, B's finished after 2."""
    root = data_root.require("MNIST")
    results = tmp_path / "pack"

    def flags(seed, epochs):
        return [str(flag).replace("--backend=numpy", "--backend=cupy")
                for flag in member_flags(root, results, "MNIST", seed, epochs=epochs)]
    assert_clean(cli(flags(2, 1)), 0)
    members = {1: flags(1, 2), 2: flags(2, 2) + ["--load"]}
    done = subprocess.run([sys.executable, "-c", RECAPTURED_PACK_PY, "1"]
                          + [part for each in members.values()
                             for part in ("--member", " ".join(each))],
                          env=ENV, capture_output=True, text=True, timeout=900, cwd=REPO)
    output = done.stdout + done.stderr
    assert done.returncode == 3, output
    assert "Traceback" not in output, output
    assert not any(note in output for note in FALLBACK_NOTES), output
    lines = [line for line in done.stdout.splitlines()
             if line.startswith(("pack of seeds", "after epoch"))]
    assert lines[:3] == ["pack of seeds [1] in epoch 1",
                         "after epoch 1, seeds [1]: graph kept True, difference 0.0, captures 1",
                         "pack of seeds [1, 2] in epoch 2"], output
    assert lines[3:] == ["after epoch 2, seeds [2]: graph kept True, difference 0.0, "
                         "captures 3"], output
    folders = {seed: next(name for name in os.listdir(results) if f"_{seed}Seed_" in name)
               for seed in (1, 2)}
    record = json.load(open(results / folders[1] / "run.json"))
    assert (record["status"], record["epochs_done"]) == ("diverged", 1), record
    assert cadence.batch_name(1, 0) in record["message"]
    with numpy.load(results / folders[1] / "checkpoint.npz") as stored:
        assert json.loads(str(stored["meta"]))["epoch"] == 1
        assert numpy.isfinite(stored["W0"]).all()
    record = json.load(open(results / folders[2] / "run.json"))
    assert (record["status"], record["epochs_done"]) == ("finished", 2)
    assert len(numpy.loadtxt(results / folders[2] / "test_acc.txt")) == 3


LEARNING = {"square": lambda seed, exact: SquareInvNet(48, 2, seed, True, learn_inverses=True,
                                                       exact_start=exact),
            "tower": lambda seed, exact: TowerInvNet([48, 48, 30, 20, 10], seed, True,
                                                     learn_inverses=True, exact_start=exact)}


@pytest.mark.parametrize("network", sorted(LEARNING))
@pytest.mark.parametrize("algorithm, lambdas, rates, inv_noise", [
    ("GAIT", (0.1, 0.5, 0.1), (1e-4, 1e-4, 1e-3), 0.0),
    ("TP", (1000.0, 100.0, 1000.0), (1e-5, 1e-5, 3e-5), 0.0),
    ("DTP", (1000.0, 100.0, 1000.0), (1e-5, 1e-5, 3e-5), 0.0),
    ("DTP", (0.0, 0.0, 0.0), (1e-4, 1e-4, 3e-4), 0.1)])
def test_a_pack_of_learned_inverses_equals_its_single_runs_bit_for_bit(network, algorithm,
                                                                      lambdas, rates, inv_noise):
    """Learned inverses in a pack: runs starting exact and drawn, with their own learning
    rates of the inverses (and DTP's noise, each run's its own); after 25 steps every array
    (W, b, V, c and the moments of each) and every row of the alignment and inverse-quality
    logs is the single run's."""
    make = LEARNING[network]
    exact = (True, False, True)
    settings = [training_step.StepSettings(algorithm, rate, reg, log_alignment=10,
                                      inv_learning_rate=inverse_rate, inv_noise=inv_noise)
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


def dtp_settings(rate, inverse_rate=None):
    """DTP's step with the inverses' own steps (2 a batch), noise and the difference loss,
    and a small output step."""
    return training_step.StepSettings("DTP", rate, 0.1, log_alignment=10,
                                      inv_learning_rate=inverse_rate, inv_noise=0.1,
                                      options=(("target_step", 0.1),), inv_steps=2,
                                      inv_loss="difference")


def test_a_pack_of_dtp_runs_with_inverse_steps_equals_its_single_runs_bit_for_bit():
    """Each run's inverses take their own steps on their own noise: after 25 steps every
    array and log row of each run of the pack is the single run's."""
    make = LEARNING["square"]
    settings = [dtp_settings(rate, inverse_rate)
                for rate, inverse_rate in ((1e-4, None), (1e-4, 1e-3), (3e-4, 3e-3))]
    sets = synthetic_sets(3)
    runner, statistics = train_packed([make(seed, False) for seed in (1, 7, 3)], settings, sets,
                                      25, evaluate_at=(9,))
    for position, seed in enumerate((1, 7, 3)):
        single, single_statistics = train_alone(make(seed, False), settings[position],
                                                sets[position], 25)
        assert_same_state(single, runner.net.run(position))
        assert statistics[position].alignment == single_statistics.alignment
        assert statistics[position].inverse_quality == single_statistics.inverse_quality


def test_a_run_whose_inverses_diverge_in_their_own_steps_leaves_the_others_as_alone():
    """Run 1's inverses overflow in their own steps (before the step's last checks): the
    step is undone for the pack and done again without run 1, so runs 0 and 2 end exactly
    as alone."""
    make = LEARNING["square"]
    settings = [dtp_settings(1e-4, inverse_rate) for inverse_rate in (1e-3, 1e300, 2e-3)]
    sets = synthetic_sets(3)
    runner, statistics = train_packed([make(seed, False) for seed in (1, 2, 3)], settings, sets,
                                      20)
    assert runner.run_ids == [0, 2] and list(runner.diverged) == [1]
    assert "--inv_learning_rate" in runner.diverged[1]
    for position, run in ((0, 0), (1, 2)):
        single, _ = train_alone(make(run + 1, False), settings[run], sets[run], 20)
        assert_same_state(single, runner.net.run(position))


def test_runs_that_learn_inverses_and_runs_that_do_not_make_no_pack():
    with pytest.raises(ValueError, match="learn inverses"):
        InvNet.stack([SquareInvNet(48, 1, 1, True),
                      SquareInvNet(48, 1, 2, True, learn_inverses=True)])
    assert (pack.pack_key(build_parser().parse_args(["--algorithm=GAIT", "--learn_inv"]))
            != pack.pack_key(build_parser().parse_args(["--algorithm=GAIT"])))
    assert (pack.pack_key(build_parser().parse_args(["--algorithm=GAIT", "--learn_inv",
                                                     "--no_inv_init", "--seed=2"]))
            == pack.pack_key(build_parser().parse_args(["--algorithm=GAIT", "--learn_inv"])))
