"""Shared by the test modules and conftest.py: where the real data and the golden file are
(data roots overridable by environment variables), missing data failing in CI and skipping
elsewhere, the session's copied data root (DataRoot), and `python run.py` as a subprocess
(`cli`, `spawn`) with single-threaded BLAS.
"""
import gzip
import os
import shutil
import subprocess
import sys
import time

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if REPO not in sys.path:
    sys.path.insert(0, REPO)
RUN_PY = os.path.join(REPO, "run.py")

# A data root laid out as torchvision expects (<root>/MNIST/raw/...): $GAITPROP_DATA if
# set, else the offline copies in ../shared/data beside the repository.
DATA_ROOT = os.environ.get("GAITPROP_DATA") or os.path.normpath(
    os.path.join(REPO, os.pardir, "shared", "data"))
# The folder of the published code's fingerprints (published_steps.npz): $GAITPROP_GOLDEN if
# set, else ../shared/golden beside the repository.
GOLDEN_ROOT = os.environ.get("GAITPROP_GOLDEN") or os.path.normpath(
    os.path.join(REPO, os.pardir, "shared", "golden"))

RAW_STEMS = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte",
             "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")
# Where DataRoot copies the genuine data from: shared MNIST .gz files, Debian's
# dataset-fashion-mnist.
SOURCES = {"MNIST": ("MNIST", os.path.join(DATA_ROOT, "MNIST", "raw")),
           "FMNIST": ("FashionMNIST", "/usr/share/datasets/fashion-mnist")}
# Single-threaded BLAS: runs go side by side on few cores; no network for the data sets.
ENV = dict(os.environ, OPENBLAS_NUM_THREADS="1", OMP_NUM_THREADS="1", MKL_NUM_THREADS="1",
           PYTHONUNBUFFERED="1", PYTHONDONTWRITEBYTECODE="1")
NO_NETWORK = {name: "http://127.0.0.1:9" for name in
              ("http_proxy", "https_proxy", "HTTP_PROXY", "HTTPS_PROXY")}
STATISTICS = ("training_acc", "training_loss", "test_acc", "test_loss")


# ----------------------------------------------------------------------------- missing data

def missing_data(message):
    """Fail when CI is set, skip otherwise."""
    if os.environ.get("CI"):
        pytest.fail(message)
    pytest.skip(message)


def require_files(root, *relative_paths):
    """Fail (CI set) or skip (otherwise) unless every file exists under `root`."""
    missing = [path for path in relative_paths if not os.path.exists(os.path.join(root, path))]
    if missing:
        missing_data(f"data files missing under {root}: {', '.join(missing)}")


def copy_raw(dataset, root, unpack=True):
    """Copy a data set's four .gz files into `<root>/<Name>/raw` (and unpack them).

    Returns None, or a text naming the missing source files.
    """
    name, source = SOURCES[dataset]
    files = [os.path.join(source, stem + ".gz") for stem in RAW_STEMS]
    missing = [path for path in files if not os.path.isfile(path)]
    if missing:
        return f"{dataset} data files missing: {', '.join(missing)}"
    raw = os.path.join(root, name, "raw")
    os.makedirs(raw, exist_ok=True)
    for path in files:
        target = os.path.join(raw, os.path.basename(path))
        shutil.copyfile(path, target)
        if unpack:
            with gzip.open(target, "rb") as packed, open(target[:-3], "wb") as plain:
                shutil.copyfileobj(packed, plain, 1 << 22)
    return None


class DataRoot:
    """One data root for the session: MNIST and Fashion-MNIST, copied once and unpacked."""

    def __init__(self, path):
        self.path = path
        self.missing = {dataset: copy_raw(dataset, path) for dataset in SOURCES}

    def require(self, dataset):
        """The root, after failing (CI) or skipping unless `dataset` is there."""
        if self.missing[dataset]:
            missing_data(self.missing[dataset])
        return self.path


# ----------------------------------------------------------------------------- run.py

def cli(args, cwd=None, env=None, timeout=900):
    """Run `python run.py *args` to the end; returns CompletedProcess with `.output`."""
    started = time.monotonic()
    done = subprocess.run([sys.executable, RUN_PY, *map(str, args)], cwd=cwd,
                          env=dict(ENV, **(env or {})), capture_output=True, text=True,
                          timeout=timeout)
    done.output = done.stdout + done.stderr
    done.seconds = time.monotonic() - started
    return done


def spawn(args, cwd=None, env=None):
    """Start `python run.py *args` with stdout and stderr merged into one pipe."""
    return subprocess.Popen([sys.executable, RUN_PY, *map(str, args)], cwd=cwd,
                            env=dict(ENV, **(env or {})), stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)


def assert_clean(done, status):
    """Exit status as expected, and no traceback anywhere in the output."""
    assert done.returncode == status, (done.returncode, done.output)
    assert "Traceback" not in done.output, done.output


def line_count(path):
    with open(path) as file:
        return sum(1 for line in file if line.strip())


def synthetic_run_sets():
    """A run's (training, test, no validation) sets on the device: 1,000 random images of
    784 values with random labels, and 50 more to test on."""
    import numpy

    from gaitprop.engine import training
    generator = numpy.random.RandomState(0)
    labels = generator.randint(0, 10, 1000)
    return training.to_device_sets((generator.rand(1000, 784), labels),
                                   (generator.rand(50, 784), generator.randint(0, 10, 50)))


class NeverStop:
    """A stop signal that never asks a run to stop."""
    received = None

    def __call__(self):
        return False


def train_in_process(argv, sets):
    """Train run.py's run of `argv` here, as run.py does (Folders, Run, trainer.train_runs)
    on `sets`, asserting exit status 0; (its folder, the record it was resumed from or None)."""
    from gaitprop.runs import trainer
    from gaitprop.runs.folders import Folders, Run
    from gaitprop.runs.settings import build_parser
    args = build_parser().parse_args(argv)
    folders = Folders()
    try:
        folder, stored = folders.open(args)
        run = Run(args, argv, folder, stored)
        assert trainer.train_runs([run], {trainer.data_key(args): sets}, "resume",
                                  NeverStop()) == 0
    finally:
        folders.release()
    return folder, stored


# ----------------------------------------------------------------------------- directions

def by_layer(weight_directions, bias_directions):
    """A rule's directions (a dict per layer, as the rules give them) from lists of weight
    and bias directions."""
    return [{"weights": weights, "biases": biases}
            for weights, biases in zip(weight_directions, bias_directions)]


def split(directions):
    """(weight directions, bias directions) of a rule's directions (a dict per layer)."""
    return ([layer["weights"] for layer in directions],
            [layer["biases"] for layer in directions])


# ----------------------------------------------------------------------------- a pack of one

class PackOfOne:
    """A single network trained as run.py trains a run: by a StepRunner on a pack of one
    (InvNet.stack([net]); the pack's arrays are copies, `net` is the trained run's view).
    `step` and `settle` take a single run's batch (2-d arrays) and Statistics; the runner's
    other attributes (guard, inverses, replay, redone, ...) are the StepRunner's."""

    def __init__(self, net, settings, **options):
        from gaitprop.engine import step_runner
        from gaitprop.engine import training
        from gaitprop.model.net import InvNet
        self.runner = step_runner.StepRunner(InvNet.stack([net]),
                                             training.StepSettings.of_pack([settings]), **options)
        self.lists = {}

    def _list(self, statistics):
        """The one-run list of `statistics`, the same list each time (the runner edits it)."""
        return self.lists.setdefault(id(statistics), [statistics])

    def step(self, images, one_hot_labels, statistics, epoch, batch_index):
        self.runner.step(images[None], one_hot_labels[None], self._list(statistics), epoch,
                         batch_index)

    def settle(self, statistics):
        self.runner.settle(self._list(statistics))

    @property
    def net(self):
        """The trained run: a network of its own whose arrays are views of the pack's."""
        return self.runner.net.run(0)

    def running_statistics(self):
        """(accuracy, loss) of the run's batches since the last call, or None."""
        pairs = self.runner.running_statistics()
        return None if pairs is None else pairs[0]

    def __getattr__(self, name):
        return getattr(self.runner, name)
