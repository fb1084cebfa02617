"""Shared by the test modules and conftest.py: where the real data and the golden file are
(data roots overridable by environment variables), missing data failing in CI and skipping
elsewhere, the session's copied data root (DataRoot), and `python run.py` as a subprocess
(`cli`, `spawn`) with single-threaded BLAS, and the steps several engine tests take (the
paper's settings `PAPER`, random `batches`, a pack of one `trained` on them).
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

from gaitprop.runs import settings as settings_table  # noqa: E402 (REPO on sys.path)

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
        from gaitprop.engine import step as training_step
        from gaitprop.model.net import InvNet
        self.runner = step_runner.StepRunner(
            InvNet.stack([net]), training_step.StepSettings.of_pack([settings]), **options)
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


# ----------------------------------------------------------------------------- steps

PAPER = {rule: (preset["orthogonal_reg"], preset["learning_rate"])  # (lambda, lr)
         for rule, preset in ((rule, settings_table.presets(settings_table.PAPER, rule))
                              for rule in ("BP", "GAIT", "TP"))}
PAPER["DTP"] = PAPER["TP"]  # the paper has no DTP: these tests take TP's settings


def batches(count, seed=0, units=784):
    """`count` batches of 60 random images in [0, 1] and one-hot labels."""
    import numpy

    from gaitprop.model.functions import one_hot
    generator = numpy.random.RandomState(seed)
    return [(generator.rand(60, units), one_hot(generator.randint(0, 10, 60)))
            for _ in range(count)]


def trained(algorithm, data, deferred, nb_hidden=2, check_every=None, net=None, inv_noise=0.0):
    """(the trained run, its runner) after a runner's steps over `data` (a pack of one, as
    run.py trains; paper lambda and learning rate)."""
    from gaitprop.engine import step as training_step
    from gaitprop.engine import training
    from gaitprop.model.net import SquareInvNet
    ortho_weighting, learning_rate = PAPER[algorithm]
    net = net or SquareInvNet(784, nb_hidden, start_seed=1, orthogonal_init=True)
    runner = PackOfOne(net, training_step.StepSettings(algorithm, learning_rate, ortho_weighting,
                                                  inv_noise=inv_noise),
                       deferred=deferred)
    if check_every:
        runner.guard.CHECK_EVERY = runner.guard.check_every = check_every
    statistics = training.Statistics()
    for index, (images, labels) in enumerate(data):
        runner.step(images, labels, statistics, 0, index)
    runner.settle(statistics)
    return runner.net, runner


# ----------------------------------------------------------------------------- packs

def synthetic_sets(runs, nb_train=2000, nb_test=300, units=48, seed=0):
    """One (train, one-hot targets, test) triple of random data per run (batches of 2)."""
    import numpy

    from gaitprop.model.functions import one_hot
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
    from gaitprop.engine import training
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
    from gaitprop.engine import step as training_step
    from gaitprop.engine import step_runner, training
    from gaitprop.model.net import InvNet
    runner = step_runner.StepRunner(InvNet.stack(nets),
                                    training_step.StepSettings.of_pack(settings),
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
    import numpy
    expected, got = single.state(), packed_run.state()
    assert sorted(expected) == sorted(got)
    for name in expected:
        assert numpy.array_equal(expected[name], got[name]), name


def assert_packs_equal_single_runs(algorithm, network="square", steps=25):
    """Three runs of `algorithm` whose seeds, initialisations, learning rates and data differ,
    trained 25 steps as one pack (with evaluations and the alignment log) and each alone:
    every array of each run and its alignment rows equal, bit for bit."""
    from gaitprop.engine import step as training_step
    from gaitprop.model.net import SquareInvNet, TowerInvNet
    makers = {"square": lambda seed, orthogonal: SquareInvNet(48, 2, seed, orthogonal),
              "tower": lambda seed, orthogonal: TowerInvNet([48, 48, 30, 20, 10], seed,
                                                            orthogonal)}
    make, seeds, orthogonal = makers[network], (1, 7, 3), (True, False, True)
    settings = [training_step.StepSettings(algorithm, rate, 0.0, log_alignment=10)
                for rate in (1e-4, 3e-4, 1e-3)]
    sets = synthetic_sets(3)
    runner, statistics = train_packed([make(seed, init) for seed, init in zip(seeds, orthogonal)],
                                      settings, sets, steps, evaluate_at=(9, 19))
    for position, (seed, init) in enumerate(zip(seeds, orthogonal)):
        single, single_statistics = train_alone(make(seed, init), settings[position],
                                                sets[position], steps)
        assert_same_state(single, runner.net.run(position))
        assert statistics[position].alignment == single_statistics.alignment
        assert len(statistics[position].alignment) == 3


def one_ulp_runs(unit):
    """(label, backend, deferred, input scale) of the three runs a GPU test compares: CuPy's
    queued steps, NumPy's checked steps, and NumPy's from inputs scaled by 1 + `unit` (one
    unit in the last place: 2**-52 in float64, 2**-23 in float32), whose difference from
    NumPy's measures the rounding spread the CuPy run may differ by."""
    return (("queued", "cupy", True, 1.0), ("numpy", "numpy", False, 1.0),
            ("nudged", "numpy", False, 1 + unit))


def assert_resumes_halfway_exactly(directory, settings, make):
    """Eight steps of a network `make()` (48 units, 2 hidden layers) under `settings`, and
    the same run checkpointed after 4 steps into `directory` (checkpoint.npz and the
    statistics' files) and restored into a fresh `make()`, which goes on bit for bit as the
    uninterrupted run, its alignment rows too. Returns (the checkpoint's arrays, the
    statistics of the first 4 steps, of the resumed run and of the uninterrupted one) for
    further checks."""
    import numpy

    from gaitprop.engine import training
    from gaitprop.model.functions import one_hot
    from gaitprop.runs import checkpoint
    generator = numpy.random.RandomState(0)
    data = [(generator.rand(60, 48), one_hot(generator.randint(0, 10, 60))) for _ in range(8)]

    def steps(net, statistics, indices):
        runner = PackOfOne(net, settings)
        for index in indices:
            runner.step(*data[index], statistics, 0, index)
        return runner.net

    whole_statistics = training.Statistics()
    whole = steps(make(), whole_statistics, range(8))
    first_statistics = training.Statistics()
    first = steps(make(), first_statistics, range(4))
    checkpoint.save_checkpoint(directory, first, first_statistics, 0, {"seed": 5})
    checkpoint.save_statistics(directory, first_statistics)
    _, arrays = checkpoint.read_checkpoint(directory)
    resumed = make()
    resumed_statistics = checkpoint.restore_checkpoint(resumed, arrays)
    resumed = steps(resumed, resumed_statistics, range(4, 8))
    for name, array in whole.state().items():
        numpy.testing.assert_array_equal(resumed.state()[name], array, err_msg=name)
    assert resumed_statistics.alignment == whole_statistics.alignment
    return arrays, first_statistics, resumed_statistics, whole_statistics


def assert_resumes_exactly(tmp_path, algorithm):
    """A run of `algorithm` checkpointed after 4 steps and restored into a fresh network of
    the same seed goes on bit for bit as the uninterrupted run (what the rule keeps beside
    the parameters is made again from the seeds)."""
    from gaitprop.engine import step as training_step
    from gaitprop.model.net import SquareInvNet
    assert_resumes_halfway_exactly(str(tmp_path),
                                   training_step.StepSettings(algorithm, 1e-3, 0.0,
                                                              log_alignment=2),
                                   lambda: SquareInvNet(48, 2, 5, True))


def forward_and_targets(net, rows=12, seed=0):
    """A forward pass of `rows` random inputs through `net` and its full-width output target
    (random labels on the 10 class units)."""
    import numpy

    from gaitprop.model.net import output_targets
    generator = numpy.random.RandomState(seed)
    forward = net.forward_pass(generator.rand(rows, net.widths[0]))
    labels = numpy.zeros((rows, 10))
    labels[numpy.arange(rows), generator.randint(0, 10, rows)] = 1.0
    return forward, output_targets(forward[-1], labels)
