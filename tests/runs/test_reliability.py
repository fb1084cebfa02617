"""Never lose a run (issue 4): checkpoints, run.json, --load, kill-and-resume, Ctrl-C and
SIGTERM, no silent overwrite, the folder lock, divergence and bad input.

Every run here is a real `python run.py` subprocess on genuine MNIST with small settings:
a 1-layer network (--nb_layers 0), 2 epochs, an evaluation every 50 batches.
"""
import concurrent.futures
import datetime
import errno
import fcntl
import json
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import threading
import time

import numpy
import pytest

from gaitprop.runs import checkpoint
from gaitprop.runs import run_folder
from helpers import (ENV, NO_NETWORK, RAW_STEMS, REPO, STATISTICS, assert_clean, cli,
                     line_count, spawn)
from gaitprop.model.layer import InvLayer
from gaitprop.runs.folders import prepare_folder
from gaitprop.runs.settings import build_parser

SMALL = ["--nb_layers", "0", "--eval_interval", "50"]
NB_EPOCHS = 2
LINES = 1 + 19 * NB_EPOCHS  # one evaluation before training, 19 an epoch
NAME = "MNIST_BP_0.0OrthoReg_1Seed_0.0001LR_0L"
RESULTS = [name + ".txt" for name in STATISTICS] + ["0Lweights.npy", "0Lbiases.npy"]


def small_run(root, results, *extra, epochs=NB_EPOCHS):
    """The command line of the small run: data root, results root, epochs, extra flags."""
    return SMALL + ["--nb_epochs", str(epochs), "--data_dir", root, "--results_dir",
                    str(results)] + list(extra)


def read_bytes(folder, names=RESULTS):
    return {name: open(os.path.join(folder, name), "rb").read() for name in names}


def snapshot(folder):
    """(bytes, mtime) of every file in a folder but the lock file."""
    return {name: (open(os.path.join(folder, name), "rb").read(),
                   os.stat(os.path.join(folder, name)).st_mtime_ns)
            for name in sorted(os.listdir(folder)) if name != run_folder.LOCK}


def checkpoint_arrays(folder):
    """(meta, arrays) of a folder's checkpoint.npz, read without pickles."""
    with numpy.load(os.path.join(folder, run_folder.CHECKPOINT), allow_pickle=False) as stored:
        arrays = {name: stored[name] for name in stored.files}
    return json.loads(str(arrays.pop("meta"))), arrays


def record_of(folder):
    with open(os.path.join(folder, run_folder.RUN_RECORD)) as file:
        return json.load(file)


def assert_same_as_reference(folder, reference):
    """Results files byte for byte, and every checkpoint array, equal to the reference's."""
    ours, theirs = read_bytes(folder), read_bytes(reference)
    different = [name for name in RESULTS if ours[name] != theirs[name]]
    assert not different, f"files differ from the uninterrupted run: {different}"
    (meta, arrays), (meta_ref, arrays_ref) = checkpoint_arrays(folder), checkpoint_arrays(reference)
    assert meta == meta_ref
    assert sorted(arrays) == sorted(arrays_ref)
    for name in arrays:
        assert arrays[name].dtype == arrays_ref[name].dtype, name
        assert numpy.array_equal(arrays[name], arrays_ref[name]), name


class Watched:
    """A run.py process whose merged output is read line by line in a thread."""

    def __init__(self, args):
        self.process = spawn(args)
        self.started = time.monotonic()
        self.lines, self.ended = [], False
        self.condition = threading.Condition()
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()

    def _read(self):
        for line in self.process.stdout:
            with self.condition:
                self.lines.append(line)
                self.condition.notify_all()
        with self.condition:
            self.ended = True
            self.condition.notify_all()

    def wait_for_line(self, pattern, timeout=900):
        """True once a line matches `pattern`; False if the output ended first."""
        regex = re.compile(pattern)
        with self.condition:
            self.condition.wait_for(
                lambda: self.ended or any(regex.search(line) for line in self.lines), timeout)
            return any(regex.search(line) for line in self.lines)

    def wait_for_file(self, path, timeout=900):
        """True once `path` exists; False if the process ended first."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if os.path.exists(path):
                return True
            if self.process.poll() is not None:
                return os.path.exists(path)
            time.sleep(0.02)
        raise TimeoutError(path)

    def elapsed(self):
        return time.monotonic() - self.started

    def finish(self, timeout=900):
        """Wait for the exit; returns the status."""
        self.process.wait(timeout)
        self.reader.join(timeout)
        return self.process.returncode

    @property
    def output(self):
        with self.condition:
            return "".join(self.lines)


# ----------------------------------------------------------------------------- reference

class Reference:
    """The uninterrupted 2-epoch run, started in the background when first needed."""

    def __init__(self, root, results):
        self.results = results
        self.run = Watched(small_run(root, results))
        self.folder = os.path.join(results, NAME)

    def result(self):
        status = self.run.finish()
        assert status == 0 and "Traceback" not in self.run.output, self.run.output
        return self.folder


@pytest.fixture(scope="module")
def reference(data_root, tmp_path_factory):
    reference = Reference(data_root.require("MNIST"), str(tmp_path_factory.mktemp("reference")))
    yield reference
    if reference.run.process.poll() is None:
        reference.run.process.kill()
        reference.run.finish()


_BACKGROUND = {}


@pytest.fixture(scope="module", autouse=True)
def start_background_runs(request, data_root, tmp_path_factory):
    """With the first test of this file, start the reference run and the kill sequence (if
    selected): they run alongside the other tests, which use few cores each."""
    needed = set()
    for item in request.session.items:
        needed.update(getattr(item, "fixturenames", ()))
    if not data_root.missing["MNIST"]:
        if "reference" in needed:
            request.getfixturevalue("reference")
        if "kill_sequence" in needed:
            kill_sequence_future(data_root.path, tmp_path_factory)
    yield
    if "kill" in _BACKGROUND:  # never leave its processes behind
        _BACKGROUND["kill"].exception()


@pytest.fixture
def mnist(data_root):
    return data_root.require("MNIST")


def copy_of_reference(reference, tmp_path):
    """A copy of the finished reference folder under a new results root."""
    results = tmp_path / "results"
    shutil.copytree(reference.result(), results / NAME)
    return results, str(results / NAME)


# ----------------------------------------------------------------------------- checkpoints

def test_checkpoint_and_run_record_then_load_extends_to_identical_files(mnist, reference,
                                                                       tmp_path):
    """1 epoch, then --load --nb_epochs 2: the files equal a straight 2-epoch run's."""
    results = tmp_path / "results"
    folder = str(results / NAME)
    done = cli(small_run(mnist, results, epochs=1))
    assert_clean(done, 0)
    meta, arrays = checkpoint_arrays(folder)
    assert meta["epoch"] == 1 and meta["dtype"] == "float64" and meta["backend"] == "numpy"
    assert meta["settings"]["eval_interval"] == 50 and meta["settings"]["nb_layers"] == 0
    for name in ("W0", "b0", "mW0", "vW0", "mb0", "vb0"):  # weights, biases, their moments
        assert name in arrays and numpy.isfinite(arrays[name]).all(), name
    assert arrays["W0"].shape == arrays["mW0"].shape == (784, 784)
    assert arrays["b0"].shape == arrays["mb0"].shape == (784,)
    for name in STATISTICS:
        assert arrays[name].shape == (1 + 19,), name
        assert line_count(os.path.join(folder, name + ".txt")) == 1 + 19

    record = record_of(folder)
    assert record["status"] == "finished" and record["epochs_done"] == 1
    for name, value in {"algorithm": "BP", "dataset": "MNIST", "seed": 1, "nb_layers": 0,
                        "eval_interval": 50, "nb_epochs": 1, "learning_rate": 0.0001,
                        "orthogonal_reg": 0.0, "dtype": "float64"}.items():
        assert record["settings"][name] == value, name
    assert "run.py" in record["command"] and "--nb_epochs 1" in record["command"]
    assert record["versions"]["numpy"] == numpy.__version__ and "python" in record["versions"]
    assert "numpy" in record["backend"] and record["dtype"] == "float64"
    started = datetime.datetime.fromisoformat(record["started"])
    ended = datetime.datetime.fromisoformat(record["ended"])
    assert started <= ended

    done = cli(small_run(mnist, results, "--load", epochs=2))
    assert_clean(done, 0)
    assert "Resuming" in done.output
    record = record_of(folder)
    assert record["status"] == "finished" and record["epochs_done"] == 2
    assert datetime.datetime.fromisoformat(record["started"]) == started
    assert len(record["resumed"]) == 1
    assert checkpoint_arrays(folder)[0]["epoch"] == 2
    assert_same_as_reference(folder, reference.result())


def test_load_rewrites_results_files_left_behind_by_a_kill(reference, mnist, tmp_path):
    """Killed after the last checkpoint was renamed but before the results files were written:
    --load of the finished checkpoint brings the results files up to date."""
    results, folder = copy_of_reference(reference, tmp_path)
    for name in STATISTICS:  # the epoch-1 state of the results files
        path = os.path.join(folder, name + ".txt")
        lines = open(path).read().splitlines(keepends=True)
        open(path, "w").write("".join(lines[:1 + 19]))
    numpy.save(os.path.join(folder, "0Lweights.npy"), numpy.zeros((784, 784)))
    record = record_of(folder)
    record.update(status="running", epochs_done=1, ended=None)
    checkpoint.save_json(os.path.join(folder, run_folder.RUN_RECORD), record)
    torn = os.path.join(folder, ".checkpoint.npz_x1y2.partial")  # an unfinished write
    with open(torn, "wb") as file:
        file.write(b"PK\x03\x04 half a checkpoint")
    done = cli(small_run(mnist, results, "--load"))
    assert_clean(done, 0)
    assert record_of(folder)["status"] == "finished"
    assert not os.path.exists(torn), "the temporary file of a killed write was left behind"
    assert_same_as_reference(folder, reference.result())


# ----------------------------------------------------------------------------- overwrite, lock

def test_no_silent_overwrite_then_overwrite_starts_afresh(reference, mnist, tmp_path):
    results, folder = copy_of_reference(reference, tmp_path)
    root = mnist
    before = snapshot(folder)
    done = cli(small_run(root, results))
    assert_clean(done, 2)
    assert "--load" in done.stderr and "--overwrite" in done.stderr
    assert snapshot(folder) == before  # same bytes, same modification times

    record = record_of(folder)
    record["status"] = "interrupted"
    checkpoint.save_json(os.path.join(folder, run_folder.RUN_RECORD), record)
    before = snapshot(folder)
    done = cli(small_run(root, results))
    assert_clean(done, 2)
    assert "--load" in done.stderr and "--overwrite" in done.stderr
    assert snapshot(folder) == before

    done = cli(small_run(root, results, "--overwrite", epochs=1))
    assert_clean(done, 0)
    record = record_of(folder)
    assert record["status"] == "finished" and record["epochs_done"] == 1
    assert "resumed" not in record
    assert checkpoint_arrays(folder)[0]["epoch"] == 1
    reference_acc = open(os.path.join(reference.folder, "test_acc.txt")).read().splitlines()
    ours = open(os.path.join(folder, "test_acc.txt")).read().splitlines()
    assert ours == reference_acc[:1 + 19]  # a fresh first epoch, the old lines gone


def published_results(folder):
    """A results folder as the published scripts left it: statistics and weights, no run.json,
    no checkpoint. Returns {name: bytes} of what it holds."""
    os.makedirs(folder)
    for name in ("training_acc.txt", "test_acc.txt"):
        numpy.savetxt(os.path.join(folder, name), [0.1, 0.5])
    numpy.save(os.path.join(folder, "0Lweights.npy"), numpy.eye(3))
    return {name: open(os.path.join(folder, name), "rb").read() for name in os.listdir(folder)}


def test_a_fresh_run_refuses_results_it_did_not_make(tmp_path):
    """The published scripts' results in the folder: a fresh run (or --load) refuses with
    status 2, names --overwrite, and changes nothing, not even a lock file."""
    results = tmp_path / "results"
    folder = str(results / NAME)
    before = published_results(folder)
    for extra in ([], ["--load"]):
        done = cli(SMALL + ["--results_dir", results, "--data_dir", tmp_path / "nodata"] + extra,
                   env=NO_NETWORK)
        assert_clean(done, 2)
        assert "--overwrite" in done.stderr and "move them" in done.stderr, done.stderr
        assert done.stderr.count("\n") == 1, done.stderr
        after = {name: open(os.path.join(folder, name), "rb").read()
                 for name in os.listdir(folder)}
        assert after == before
    assert not (tmp_path / "nodata").exists()


def test_second_process_on_a_folder_refuses_and_a_killed_one_frees_it(mnist, tmp_path):
    results = tmp_path / "results"
    folder = results / NAME
    first = Watched(small_run(mnist, results))
    lock = folder / run_folder.LOCK
    deadline = time.monotonic() + 600
    while not (lock.exists() and lock.read_text().strip() == str(first.process.pid)):
        assert first.process.poll() is None and time.monotonic() < deadline, first.output
        time.sleep(0.02)
    second = cli(small_run(mnist, results))
    running = first.process.poll() is None
    assert_clean(second, 1)
    assert "Another process" in second.stderr and str(folder) in second.stderr
    assert running, "the second run must refuse at once, not wait for the first"

    assert first.wait_for_file(str(folder / run_folder.CHECKPOINT))
    first.process.kill()
    assert first.finish() == -signal.SIGKILL
    third = cli(small_run(mnist, results))  # past the lock: refuses to overwrite the run
    assert_clean(third, 2)
    assert "Another process" not in third.output and "--load" in third.stderr
    fourth = cli(small_run(mnist, results, "--load", "--eval_interval", "10"))
    assert_clean(fourth, 2)  # past the lock: the checkpoint's settings differ
    assert "Another process" not in fourth.output and "eval_interval" in fourth.stderr



def test_a_run_waits_out_a_probe_of_its_lock(tmp_path, monkeypatch):
    """sweep.py probes a folder by taking its lock for an instant (FolderLock.is_held): a run
    starting in that instant waits for it instead of reporting another process."""
    folder = str(tmp_path)
    probe = open(tmp_path / run_folder.LOCK, "a")
    fcntl.flock(probe, fcntl.LOCK_EX | fcntl.LOCK_NB)
    threading.Timer(0.3, probe.close).start()  # closing the file lets go of the lock
    lock = checkpoint.FolderLock(folder)
    started = time.monotonic()
    lock.acquire()
    assert time.monotonic() - started >= 0.25  # it did wait
    assert checkpoint.FolderLock.is_held(folder)
    lock.release()
    assert not checkpoint.FolderLock.is_held(folder)
    monkeypatch.setattr(checkpoint.FolderLock, "WAIT_SECONDS", 0.2)
    with open(tmp_path / run_folder.LOCK, "a") as holder:
        fcntl.flock(holder, fcntl.LOCK_EX | fcntl.LOCK_NB)
        with pytest.raises(checkpoint.RunFolderError, match="Another process"):
            checkpoint.FolderLock(folder).acquire()
    assert not checkpoint.FolderLock.is_held(folder)

# ----------------------------------------------------------------------------- pickles

class Planted:
    """Unpickling this runs a shell command."""

    def __init__(self, command):
        self.command = command

    def __reduce__(self):
        return os.system, (self.command,)


def plant(path, marker):
    """A checkpoint-like .npz whose W0 is a pickled object that would create `marker`."""
    numpy.savez(path, W0=numpy.array([Planted(f"touch {marker}")], dtype=object),
                meta=numpy.array(json.dumps({"epoch": 0, "settings": {}})))


def test_planted_pickle_in_a_checkpoint_is_refused_and_never_run(tmp_path):
    results = tmp_path / "results"
    folder = results / NAME
    folder.mkdir(parents=True)
    marker = tmp_path / "code_ran"
    plant(str(folder / run_folder.CHECKPOINT), marker)
    for extra in (["--load"], []):
        done = cli(SMALL + ["--results_dir", results, "--data_dir", tmp_path / "nodata"] + extra)
        assert done.returncode == 1, done.output
        assert "Traceback" not in done.output
        assert "checkpoint.npz" in done.stderr, done.stderr
        assert not marker.exists(), "the pickled object was loaded"
    # --overwrite replaces the unreadable checkpoint without reading it
    args = build_parser().parse_args(SMALL + ["--results_dir", str(results), "--overwrite"])
    assert run_folder.results_folder(args) == str(folder)
    assert prepare_folder(str(folder), args) is None
    assert not marker.exists() and not (folder / run_folder.CHECKPOINT).exists()
    # the planted file really was dangerous: loading it with pickles runs the command
    plant(str(tmp_path / "check.npz"), marker)
    with numpy.load(tmp_path / "check.npz", allow_pickle=True) as stored:
        stored["W0"]
    assert marker.exists()


def test_planted_pickle_in_layer_files_is_refused(tmp_path):
    marker = tmp_path / "code_ran"
    prefix = str(tmp_path / "0L")
    numpy.save(prefix + "weights.npy", numpy.array([Planted(f"touch {marker}")], dtype=object),
               allow_pickle=True)
    numpy.save(prefix + "biases.npy", numpy.zeros(784))
    layer = InvLayer(784, seed=1)
    with pytest.raises(ValueError):
        layer.load_params(prefix)
    assert not marker.exists()


def test_unreadable_run_record_is_refused_cleanly(tmp_path):
    results = tmp_path / "results"
    (results / NAME).mkdir(parents=True)
    (results / NAME / run_folder.RUN_RECORD).write_text('{"status": "runn')
    done = cli(SMALL + ["--results_dir", results, "--load"])
    assert done.returncode != 0 and "Traceback" not in done.output
    assert "run.json" in done.stderr, done.stderr



def test_a_run_record_that_cannot_be_read_is_reported_as_a_read_error(tmp_path):
    results = tmp_path / "results"
    record = results / NAME / run_folder.RUN_RECORD
    record.mkdir(parents=True)  # open() fails with EISDIR, even for root
    done = cli(SMALL + ["--results_dir", results, "--load"])
    assert_clean(done, 1)
    assert f"cannot read {record}" in done.stderr and "cannot write" not in done.stderr, done.stderr
    assert record.is_dir()

# ----------------------------------------------------------------------------- divergence

def test_divergence_stops_with_status_3_and_keeps_checkpoint(mnist, tmp_path):
    results = tmp_path / "results"
    done = cli(["--algorithm", "GAIT", "--nb_layers", "1", "--orthogonal_reg", "0.1",
                "--orthogonal_init", "--learning_rate", "1e200", "--eval_interval", "0",
                "--nb_epochs", "1", "--data_dir", mnist, "--results_dir", results])
    assert_clean(done, 3)
    message = done.stderr
    assert re.search(r"batch \d+", message) and re.search(r"layer \d+", message), message
    assert "--learning_rate" in message
    folder = str(results / "MNIST_GAIT_OrthoInit_0.1OrthoReg_1Seed_1e+200LR_1L")
    record = record_of(folder)
    assert record["status"] == "diverged" and "batch" in record["message"]
    meta, arrays = checkpoint_arrays(folder)
    assert meta["epoch"] == 0 and numpy.isfinite(arrays["W0"]).all()
    for name in STATISTICS:  # the statistics so far: the evaluation before training
        assert line_count(os.path.join(folder, name + ".txt")) == 1
    for index in (0, 1):
        assert numpy.isfinite(numpy.load(os.path.join(folder, f"{index}Lweights.npy"))).all()


# run.py whose update number argv[1] (the last step of an epoch) leaves W0 infinite
OVERFLOWING_RUN_PY = """
import sys
from gaitprop.model import parameters
from gaitprop.cli import run
update, updates = parameters.NetParameters.step, []


def overflowing(net, *args, **kwargs):
    update(net, *args, **kwargs)
    updates.append(None)
    if len(updates) == int(sys.argv[1]):
        net.layers[0].weight_matrix[..., 0, 0] = float("inf")


parameters.NetParameters.step = overflowing
sys.exit(run.main(sys.argv[2:]))
"""


def test_weights_the_last_step_of_an_epoch_overflows_are_never_checkpointed(mnist, tmp_path):
    """The last step of epoch 2 leaves W0 infinite (no later step would look at it): the run
    diverges at the end of epoch 2 (status 3, run.json "diverged" after 1 epoch, the message
    naming W0 and that batch), and the checkpoint and weight files stay those of epoch 1."""
    results = tmp_path / "results"
    done = subprocess.run(
        [sys.executable, "-c", OVERFLOWING_RUN_PY, "2000"]
        + list(map(str, small_run(mnist, results, "--eval_interval", "0"))),
        env=dict(ENV, **NO_NETWORK), capture_output=True, text=True, timeout=900, cwd=REPO)
    done.output = done.stdout + done.stderr
    assert_clean(done, 3)
    assert "epoch 2, batch 1000: W0 (the weights of layer 0) is not finite" in done.stderr
    folder = str(results / NAME)
    record = record_of(folder)
    assert (record["status"], record["epochs_done"]) == ("diverged", 1), record
    assert "W0" in record["message"] and "--learning_rate" in record["message"]
    meta, arrays = checkpoint_arrays(folder)
    assert meta["epoch"] == 1 and numpy.isfinite(arrays["W0"]).all()
    numpy.testing.assert_array_equal(numpy.load(os.path.join(folder, "0Lweights.npy")),
                                     arrays["W0"])
    for name in STATISTICS:  # before training and after epoch 1; none of the infinite W0
        assert line_count(os.path.join(folder, name + ".txt")) == 2


def test_learned_inverses_that_diverge_advise_a_smaller_inv_learning_rate(mnist, tmp_path):
    results = tmp_path / "results"
    done = cli(["--algorithm", "GAIT", "--nb_layers", "1", "--orthogonal_reg", "0.1",
                "--orthogonal_init", "--learn_inv", "--inv_learning_rate=1e200",
                "--eval_interval", "0", "--nb_epochs", "1", "--data_dir", mnist,
                "--results_dir", results])
    assert_clean(done, 3)
    assert re.search(r"layer 1's learned inverse \(V1", done.stderr), done.stderr
    assert "--inv_learning_rate" in done.stderr and "--learning_rate" not in done.stderr
    record = record_of(str(results / "MNIST_GAIT_OrthoInit_0.1OrthoReg_LearnInv_1Seed_0.0001LR_"
                                     "1e+200InvLR_1L"))
    assert record["status"] == "diverged" and "--inv_learning_rate" in record["message"]


# ----------------------------------------------------------------------------- bad input

def test_load_with_no_run_exits_2_and_writes_nothing(tmp_path):
    results = tmp_path / "results"
    done = cli(SMALL + ["--results_dir", results, "--data_dir", tmp_path, "--load"])
    assert_clean(done, 2)
    assert "--load" in done.stderr
    assert not (results / NAME).exists()
    (results / NAME).mkdir(parents=True)  # a folder that holds no run
    done = cli(SMALL + ["--results_dir", results, "--data_dir", tmp_path, "--load"])
    assert_clean(done, 2)
    assert "--load" in done.stderr and "no run" in done.stderr


@pytest.mark.parametrize("extra, word", [(["--eval_interval", "10"], "eval_interval"),
                                         (["--dtype", "float32"], "dtype"),
                                         (["--orthogonal_init"], None)])
def test_load_with_other_settings_exits_2_and_changes_nothing(reference, mnist, tmp_path, extra,
                                                             word):
    results, folder = copy_of_reference(reference, tmp_path)
    if word is None:  # another folder name: nothing to continue
        word = "--load"
    before = snapshot(folder)
    done = cli(small_run(mnist, results, "--load", *extra))
    assert_clean(done, 2)
    assert word in done.stderr, done.stderr
    assert snapshot(folder) == before


def test_results_folder_that_cannot_be_created(mnist, tmp_path):
    blocker = tmp_path / "a_file"
    blocker.write_text("not a folder")
    done = cli(small_run(mnist, blocker / "results"))
    assert done.returncode != 0 and "Traceback" not in done.output
    assert str(blocker) in done.stderr, done.stderr
    assert blocker.read_text() == "not a folder"


@pytest.mark.parametrize("blocked", ["results_dir", "folder"])
def test_a_failure_before_the_first_checkpoint_says_to_run_the_command_again(mnist, tmp_path,
                                                                             blocked):
    """The results folder cannot be made (--results_dir, or the folder itself, is a file):
    status 1, and the advice fits, since there is no checkpoint: the same command again,
    not --load (which would be refused)."""
    results = tmp_path / "results"
    blocker = results if blocked == "results_dir" else results / NAME
    blocker.parent.mkdir(parents=True, exist_ok=True)
    blocker.write_text("not a folder")
    done = cli(small_run(mnist, results))
    assert_clean(done, 1)
    assert str(blocker) in done.stderr and "run the same command again" in done.stderr
    assert "--load" not in done.stderr and "checkpoint" not in done.stderr, done.stderr
    assert done.stderr.count("\n") == 1, done.stderr
    assert blocker.read_text() == "not a folder"


def test_a_missing_data_set_creates_nothing_and_says_where_the_files_go(tmp_path):
    """No data set, no network: status 1 (docs/flags.md: data missing is a failure), a
    message naming <data_dir>/MNIST/raw and the files, the advice to run the same command
    again (not --load), and neither an empty data folder nor a results folder left behind."""
    data, results = tmp_path / "data", tmp_path / "results"
    done = cli(small_run(str(data), results), env=NO_NETWORK)
    assert_clean(done, 1)
    assert str(data / "MNIST" / "raw") in done.stderr, done.stderr
    for stem in RAW_STEMS:
        assert stem in done.stderr
    assert "run the same command again" in done.stderr and "--load" not in done.stderr
    assert not data.exists() and not results.exists(), os.listdir(tmp_path)
    data.mkdir()  # an existing data root: it stays, empty
    done = cli(small_run(str(data), results), env=NO_NETWORK)
    assert_clean(done, 1)
    assert os.listdir(data) == [] and not results.exists()


def test_the_results_folder_is_checked_before_the_data_set_is_fetched(tmp_path):
    """A results folder that cannot be made is named at once, before the data set is
    downloaded or read (it was found only then): status 1, nothing made."""
    blocker = tmp_path / "a_file"
    blocker.write_text("not a folder")
    data = tmp_path / "data"
    done = cli(small_run(str(data), blocker / "results"), env=NO_NETWORK)
    assert_clean(done, 1)
    assert str(blocker) in done.stderr and "data set" not in done.stderr, done.stderr
    assert done.stderr.count("\n") == 1, done.stderr
    assert sorted(os.listdir(tmp_path)) == ["a_file"] and blocker.read_text() == "not a folder"


def test_a_failed_download_leaves_none_of_the_folders_it_made(tmp_path):
    """--data_dir a/b/data, none of which exists, and no network: the download fails and
    every folder it made is gone again, a and a/b too (they stayed, empty)."""
    (tmp_path / "kept").mkdir()
    data = tmp_path / "kept" / "a" / "b" / "data"
    done = cli(small_run(str(data), tmp_path / "results"), env=NO_NETWORK)
    assert_clean(done, 1)
    assert str(data / "MNIST" / "raw") in done.stderr, done.stderr
    assert sorted(os.listdir(tmp_path)) == ["kept"] and os.listdir(tmp_path / "kept") == []


@pytest.mark.parametrize("kept", [("train-labels-idx1-ubyte", "t10k-labels-idx1-ubyte")])
def test_missing_data_files_are_named(mnist, tmp_path, kept):
    root = tmp_path / "data"
    raw = root / "MNIST" / "raw"
    raw.mkdir(parents=True)
    source = os.path.join(mnist, "MNIST", "raw")
    for stem in kept:
        shutil.copyfile(os.path.join(source, stem + ".gz"), raw / (stem + ".gz"))
    results = tmp_path / "results"
    done = cli(small_run(str(root), results), env=NO_NETWORK)
    assert done.returncode != 0 and "Traceback" not in done.output
    assert str(raw) in done.stderr, done.stderr
    for stem in RAW_STEMS:
        assert (stem in done.stderr) == (stem not in kept), (stem, done.stderr)
    assert not (results / NAME).exists()  # no empty results folder left behind


@pytest.mark.parametrize("damaged", ["train-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte"])
def test_truncated_data_file_is_named(mnist, tmp_path, damaged):
    source = os.path.join(mnist, "MNIST", "raw")
    raw = tmp_path / "data" / "MNIST" / "raw"
    raw.mkdir(parents=True)
    packed = damaged.endswith(".gz")
    for stem in RAW_STEMS:
        name = stem + ".gz" if packed else stem
        if name == damaged:
            data = open(os.path.join(source, name), "rb").read()
            (raw / name).write_bytes(data[:len(data) // 2])
        else:
            os.symlink(os.path.join(source, name), raw / name)
    results = tmp_path / "results"
    done = cli(small_run(str(tmp_path / "data"), results), env=NO_NETWORK)
    assert done.returncode != 0 and "Traceback" not in done.output
    assert damaged in done.stderr, done.stderr
    assert not (results / NAME).exists()


@pytest.fixture
def small_disk(tmp_path):
    """A mount point for a tmpfs of a chosen size; skips where mounting is not allowed."""
    mounted = []

    def mount(size_bytes):
        point = tmp_path / "disk"
        point.mkdir()
        done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size_bytes}", "tmpfs",
                               str(point)], capture_output=True, text=True)
        if done.returncode != 0:
            pytest.skip(f"cannot mount a small tmpfs to fill: {done.stderr.strip()}")
        mounted.append(point)
        return point
    yield mount
    for point in mounted:
        subprocess.run(["umount", str(point)], check=False)


def test_full_disk_at_an_epoch_end_keeps_the_last_checkpoint(reference, mnist, small_disk):
    """The disk fills while epoch 3 is saved: clean message, the epoch-2 files intact."""
    source = reference.result()
    size = sum(os.path.getsize(os.path.join(source, name)) for name in os.listdir(source))
    disk = small_disk(size + 6 * 2**20)  # room for run.json updates, not a new checkpoint
    folder = disk / "results" / NAME
    shutil.copytree(source, folder)
    before = read_bytes(str(folder), RESULTS + [run_folder.CHECKPOINT])
    done = cli(small_run(mnist, disk / "results", "--load", epochs=3))
    assert done.returncode == 1 and "Traceback" not in done.output, done.output
    assert "No space left on device" in done.stderr and "--load" in done.stderr, done.stderr
    assert read_bytes(str(folder), RESULTS + [run_folder.CHECKPOINT]) == before
    assert record_of(str(folder))["status"] == "failed"
    assert not [name for name in os.listdir(folder) if name.endswith(".partial")]


def held_training_images(mnist, root):
    """A data root at `root` like `mnist`, but whose training images are a named pipe
    (train-images-idx3-ubyte.gz, nothing unpacked beside it): the child reading the data
    opens it first and waits there, before training, until the pipe's write end closes.
    Returns the pipe's path."""
    raw = os.path.join(root, "MNIST", "raw")
    os.makedirs(raw)
    for stem in RAW_STEMS[1:]:
        os.symlink(os.path.join(mnist, "MNIST", "raw", stem), os.path.join(raw, stem))
    pipe = os.path.join(raw, RAW_STEMS[0] + ".gz")
    os.mkfifo(pipe)
    return pipe


def open_once_read(pipe, watched, timeout=600):
    """The write end of `pipe`, opened once the run's data-reading child has opened it to
    read (until then a non-blocking open for writing fails with ENXIO)."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            return os.open(pipe, os.O_WRONLY | os.O_NONBLOCK)
        except OSError as error:
            if error.errno != errno.ENXIO:
                raise
        assert watched.process.poll() is None, watched.output
        assert time.monotonic() < deadline, f"nothing read {pipe}: {watched.output}"
        time.sleep(0.01)


@pytest.mark.parametrize("moment", ["backend_selected", "data_being_read"])
@pytest.mark.parametrize("signum, status", [(signal.SIGINT, 130), (signal.SIGTERM, 143)],
                         ids=["SIGINT", "SIGTERM"])
def test_signal_before_training_exits_cleanly(mnist, tmp_path, signum, status, moment):
    """Ctrl-C or SIGTERM while the libraries and the data load: 130 / 143, no traceback. The
    signal goes once run.py has printed its backend, or once the child reading the data has
    opened the training images (a named pipe, which keeps it reading until the run ends)."""
    record = tmp_path / "results" / NAME / run_folder.RUN_RECORD
    root, pipe, writer = mnist, None, None
    if moment == "data_being_read":
        root = str(tmp_path / "data")
        pipe = held_training_images(mnist, root)
    watched = Watched(small_run(root, tmp_path / "results"))
    try:
        assert watched.wait_for_line(r"^Using backend"), watched.output
        if pipe:
            writer = open_once_read(pipe, watched)
        assert not record.exists(), "too late"
        watched.process.send_signal(signum)
        assert watched.finish() == status, watched.output
    finally:
        if watched.process.poll() is None:
            watched.process.kill()
            watched.finish()
        if writer is not None:
            os.close(writer)
    assert "Traceback" not in watched.output and "unexpected error" not in watched.output
    assert "before training started" in watched.output, watched.output
    assert not record.exists(), "the run got as far as its run record"
    # no results folder (it held only run.lock when the data was being read)
    assert not (tmp_path / "results").exists(), os.listdir(tmp_path / "results")


def test_a_second_signal_stops_at_once_and_records_the_run_interrupted(mnist, tmp_path):
    """Ctrl-C, then SIGTERM before the batch ends: the second exits at once (143), and
    run.json says 'interrupted', not 'running'."""
    watched = Watched(small_run(mnist, tmp_path / "results"))
    assert watched.wait_for_line(r"batch 100/1000"), watched.output
    watched.process.send_signal(signal.SIGINT)
    watched.process.send_signal(signal.SIGTERM)  # handled after SIGINT's handler, in order
    assert watched.finish() == 143, watched.output
    assert "Traceback" not in watched.output, watched.output
    assert "Stopped at once" in watched.output and "--load" in watched.output
    record = record_of(str(tmp_path / "results" / NAME))
    assert record["status"] == "interrupted" and record["ended"], record

def test_signal_inside_the_multiprocessing_import_exits_cleanly():
    """The handler when the signal lands while `multiprocessing` is half imported (a module
    in sys.modules without active_children yet): still status 143, no traceback."""
    code = ("import signal, sys, types\n"
            "from gaitprop.runs import stopping\n"
            "for name in ('multiprocessing', 'multiprocessing.process'):\n"
            "    sys.modules[name] = types.ModuleType(name)\n"
            "stopping.stop_before_training(signal.SIGTERM, None)\n")
    done = subprocess.run([sys.executable, "-c", code], cwd=REPO,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 143, done.stderr
    assert "Traceback" not in done.stderr and "before training started" in done.stderr


def process_children(pid):
    """Pids of the live processes whose parent is `pid` (Linux /proc)."""
    children = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                fields = open(f"/proc/{entry}/stat").read().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[1]) == pid and fields[0] != "Z":
                children.append(int(entry))
    return children


def alive(pid):
    try:
        return open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


@pytest.mark.skipif(not os.path.isdir("/proc"), reason="needs Linux /proc")
def test_sigkill_while_reading_data_leaves_no_process_behind(mnist, tmp_path):
    """The data is read in a child process: it must die with a SIGKILLed run, not block
    forever on its result, holding the data in memory."""
    watched = Watched(small_run(mnist, tmp_path / "results"))
    deadline = time.monotonic() + 600
    while not (children := process_children(watched.process.pid)):
        assert watched.process.poll() is None and time.monotonic() < deadline, watched.output
        time.sleep(0.05)
    time.sleep(1.0)  # the child is importing torch or reading the files
    children = process_children(watched.process.pid)
    watched.process.kill()
    assert watched.finish(timeout=120) == -signal.SIGKILL
    deadline = time.monotonic() + 60
    while any(map(alive, children)) and time.monotonic() < deadline:
        time.sleep(0.1)
    left = [pid for pid in children if alive(pid)]
    for pid in left:  # do not leave them running after the test
        os.kill(pid, signal.SIGKILL)
    assert not left, f"processes left behind by the killed run: {left}"


# ----------------------------------------------------------------------------- kill test

SEED = 20240601
PLAN = [  # (phase, signal, output line (regex) or file that starts the clock, delay range in s)
    ("startup: imports and data loading", signal.SIGKILL, r"^Using backend", (0.0, 1.0)),
    ("initial evaluation and first checkpoint", signal.SIGKILL, run_folder.RUN_RECORD, (0.0, 1.5)),
    ("mid-epoch training and evaluation", signal.SIGKILL, r"batch [3-6]00/1000", (0.0, 2.0)),
    ("epoch end: checkpoint and results writes", signal.SIGKILL, r"batch 1000/1000", (0.0, 0.3)),
    ("SIGTERM mid-epoch", signal.SIGTERM, r"batch 200/1000", (0.0, 1.0)),
    ("just after restoring the checkpoint", signal.SIGKILL, r"^Resuming", (0.0, 0.5)),
    ("SIGINT in epoch 2", signal.SIGINT, r"epoch 2/2 batch 100/1000", (0.0, 1.0)),
    ("end of the last epoch: final writes", signal.SIGKILL, r"epoch 2/2 batch 1000/1000",
     (0.0, 0.3)),
]


def folder_state(folder):
    """Check that everything in the folder is readable; return the checkpoint's epoch or None."""
    for name in STATISTICS:
        path = os.path.join(folder, name + ".txt")
        if os.path.exists(path):
            numpy.loadtxt(path, ndmin=1)
    for name in ("0Lweights.npy", "0Lbiases.npy"):
        path = os.path.join(folder, name)
        if os.path.exists(path):
            assert numpy.isfinite(numpy.load(path, allow_pickle=False)).all()
    if os.path.exists(os.path.join(folder, run_folder.RUN_RECORD)):
        record_of(folder)
    if not os.path.exists(os.path.join(folder, run_folder.CHECKPOINT)):
        return None
    meta, arrays = checkpoint_arrays(folder)
    for name in STATISTICS:
        assert len(arrays[name]) == 1 + 19 * meta["epoch"]
    return meta["epoch"]


class KillSequence:
    """Interrupts a 2-epoch run at the moments of PLAN, resuming with --load each time."""

    def __init__(self, root, results):
        self.results, self.folder = results, os.path.join(results, NAME)
        self.args = small_run(root, results)
        self.rng = random.Random(SEED)
        self.attempts, self.log = [], []
        self.load_refused = None

    def has_run(self):
        return any(os.path.exists(os.path.join(self.folder, name))
                   for name in (run_folder.RUN_RECORD, run_folder.CHECKPOINT))

    def start(self):
        if self.has_run():
            return Watched(self.args + ["--load"])
        if os.path.isdir(self.folder) and self.load_refused is None:
            # killed before it wrote anything: --load has nothing to continue
            self.load_refused = cli(self.args + ["--load"])
        return Watched(self.args)

    def interrupt(self, phase, signum, trigger, delays):
        before = folder_state(self.folder) if os.path.isdir(self.folder) else None
        watched = self.start()
        if not trigger.endswith(".json"):
            reached = watched.wait_for_line(trigger)
        else:
            reached = watched.wait_for_file(os.path.join(self.folder, trigger))
        delay = self.rng.uniform(*delays)
        time.sleep(delay)
        alive = watched.process.poll() is None
        at = watched.elapsed()
        if alive:
            watched.process.send_signal(signum)
        status = watched.finish()
        # a SIGKILL cannot be caught: a clean exit means the process ended between poll()
        # and the signal (the last epoch's final writes are that short), so none was delivered
        alive = alive and not (signum == signal.SIGKILL and status == 0)
        attempt = dict(phase=phase, signal=signal.Signals(signum).name, delay=delay, at=at,
                       reached=reached, sent=alive, status=status, output=watched.output,
                       before=before, after=folder_state(self.folder),
                       record=record_of(self.folder)["status"] if os.path.exists(
                           os.path.join(self.folder, run_folder.RUN_RECORD)) else None,
                       loaded="--load" in watched.process.args)
        self.log.append(f"kill point {len(self.attempts) + 1}: {attempt['signal']} {phase}, "
              f"{delay:.3f} s after the trigger ({at:.2f} s into the process, "
              f"{'sent' if alive else 'process had ended'}), status {status}, checkpoint "
              f"epoch {before} -> {attempt['after']}")
        self.attempts.append(attempt)

    def run(self):
        for phase, signum, trigger, delays in PLAN:
            self.interrupt(phase, signum, trigger, delays)
        watched = self.start()
        self.final_status, self.final_output = watched.finish(), watched.output
        self.final_loaded = "--load" in watched.process.args
        return self


def kill_sequence_future(root, tmp_path_factory):
    """The kill sequence, run in a background thread (started once)."""
    if "kill" not in _BACKGROUND:
        sequence = KillSequence(root, str(tmp_path_factory.mktemp("killed")))
        executor = concurrent.futures.ThreadPoolExecutor(max_workers=1)
        _BACKGROUND["kill"] = executor.submit(sequence.run)
        executor.shutdown(wait=False)
    return _BACKGROUND["kill"]


@pytest.fixture(scope="module")
def kill_sequence(data_root, tmp_path_factory):
    sequence = kill_sequence_future(data_root.require("MNIST"), tmp_path_factory).result()
    print("\n" + "\n".join(sequence.log))
    return sequence


def test_sigkill_at_random_moments_then_load_is_bit_identical(kill_sequence, reference):
    sent = [a for a in kill_sequence.attempts if a["signal"] == "SIGKILL" and a["sent"]]
    assert len(sent) >= 5, [(a["phase"], a["sent"]) for a in kill_sequence.attempts]
    for attempt in sent:
        assert attempt["status"] == -signal.SIGKILL, attempt["output"]
    assert kill_sequence.final_status == 0, kill_sequence.final_output
    assert kill_sequence.final_loaded
    for output in [a["output"] for a in kill_sequence.attempts] + [kill_sequence.final_output]:
        assert "Traceback" not in output
        assert "Another process" not in output  # a killed run never leaves the lock stuck
    record = record_of(kill_sequence.folder)
    assert record["status"] == "finished" and record["epochs_done"] == NB_EPOCHS
    assert_same_as_reference(kill_sequence.folder, reference.result())


def test_every_kill_leaves_a_readable_checkpoint_that_never_goes_back(kill_sequence):
    epochs = [a["after"] for a in kill_sequence.attempts]
    known = [epoch for epoch in epochs if epoch is not None]
    assert known == sorted(known), epochs
    assert epochs[0] is None  # killed while loading data: nothing written yet
    assert 0 in known and 1 in known, epochs  # resumed from the initial and the epoch-1 ones
    refused = kill_sequence.load_refused
    if refused is not None:  # --load on a folder with nothing in it: a clean refusal
        assert_clean(refused, 2)
        assert "--load" in refused.output
    leftovers = [name for name in os.listdir(kill_sequence.folder) if name.endswith(".partial")]
    assert not leftovers, f"temporary files left behind: {leftovers}"


@pytest.mark.parametrize("name, status", [("SIGTERM", 143), ("SIGINT", 130)])
def test_signal_stops_at_a_batch_boundary_and_says_how_to_resume(kill_sequence, name, status):
    attempt = next(a for a in kill_sequence.attempts if a["signal"] == name)
    assert attempt["sent"], attempt["output"]
    assert attempt["status"] == status, attempt["output"]
    assert "Traceback" not in attempt["output"]
    assert "--load" in attempt["output"] and "Resume with" in attempt["output"]
    assert attempt["record"] == "interrupted"
    # the checkpoint is the one of the last completed epoch, as the message says
    epoch = attempt["after"]
    assert epoch is not None and epoch >= attempt["before"]
    assert f"Stopped during epoch {epoch + 1}" in attempt["output"], attempt["output"]
    assert f"checkpoint after epoch {epoch}" in attempt["output"]
