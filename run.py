#!/usr/bin/env python3
"""Train an invertible multilayer perceptron with BP, GAIT-prop or TP: the command line.

Example: ./run.py --algorithm=GAIT --dataset=MNIST --nb_layers=4 --orthogonal_reg=0.1
Exit statuses: 0 finished, 1 failed (I/O, data, another process), 2 bad input,
3 diverged, 130 interrupted (Ctrl-C), 143 terminated (SIGTERM).
"""
import argparse
import contextlib
import math
import os
import shlex
import signal
import sys
import traceback
import warnings

import run_folder
from run_folder import EXIT_DIVERGED, EXIT_FAILED, EXIT_FINISHED, EXIT_SIGNAL, EXIT_USAGE


def stop_before_training(signum, frame):
    """Ctrl-C / SIGTERM before StopSignal takes over: quit at once, status 130 / 143, no traceback.

    os._exit, not SystemExit, which code under way (imports, the data-reading child's pool)
    may catch or wait on. The child reading the data is killed first, or it would block on
    its result forever. Files are written atomically and the kernel drops the folder lock.
    """
    print(f"\n{os.path.basename(sys.argv[0])}: {signal.Signals(signum).name} received before "
          f"training started: stopped. "
          f"Nothing was trained since the last checkpoint; run the command again (with --load "
          f"if the results folder holds a run) to go on.", file=sys.stderr, flush=True)
    # The signal may land inside `import multiprocessing`: a module only partly initialised
    # has no active_children yet, and then no child has been started either.
    active_children = getattr(sys.modules.get("multiprocessing.process"), "active_children", None)
    try:
        for child in active_children() if active_children else ():
            child.kill()
    finally:
        os._exit(EXIT_SIGNAL[signum])


if __name__ == "__main__":  # installed before the slow imports below
    for _signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(_signum, stop_before_training)

import backend  # noqa: E402
import checkpoint  # noqa: E402
import data  # noqa: E402
import training  # noqa: E402
import utils  # noqa: E402
from checkpoint import RunFolderError, now  # noqa: E402


class UsageError(Exception):
    """Bad input found after parsing; the message says what to do. Exit status 2."""


class Parser(argparse.ArgumentParser):
    def error(self, message):
        self.exit(EXIT_USAGE, f"run.py: {message}. Run ./run.py --help for every flag and its "
                              f"allowed values; nothing was written.\n")


def number(kind, minimum, strict=False):
    """An argparse type: a finite `kind` (int or float) >= minimum (> minimum if strict)."""
    def convert(text):
        try:
            value = kind(text)
        except ValueError:
            expected = "an integer" if kind is int else "a number"
            raise argparse.ArgumentTypeError(f"{text!r} is not {expected}") from None
        if not math.isfinite(value) or value < minimum or (strict and value == minimum):
            raise argparse.ArgumentTypeError(
                f"{text!r} must be {'greater than' if strict else 'at least'} {minimum}")
        return value
    return convert


def build_parser():
    parser = Parser(description="Train an invertible MLP with BP, GAIT-prop or TP and dump "
                                "accuracies, losses and weights (see README.md).")
    add = parser.add_argument
    add("--algorithm", choices=sorted(training.RULES), default="BP", help="learning rule")
    add("--seed", type=number(int, -2**31), default=1, help="base seed of the weights")
    add("--orthogonal_reg", "--orthogona_reg", type=number(float, 0.0), default=0.0,
        help="lambda of the orthogonal regulariser (0 also means orthogonal initialisation)")
    add("--device", type=number(int, 0), default=0, help="GPU id when CuPy is used")
    add("--nb_epochs", type=number(int, 1), default=100, help="epochs to train (in total)")
    add("--nb_layers", type=number(int, 0), default=1, help="hidden layers of a square network")
    add("--learning_rate", type=number(float, 0.0, strict=True), default=0.0001)
    add("--dataset", choices=list(data.DATASETS), default="MNIST")
    add("--linear", action="store_true", help="linear layers instead of leaky ReLU")
    add("--tower", action="store_true", help="the 784-784-500-200-10 tower network")
    add("--orthogonal_init", action="store_true",
        help="orthogonal initialisation even when --orthogonal_reg > 0")
    add("--load", action="store_true", help="continue the run stored in the results folder")
    ours = parser.add_argument_group("added by this package")
    ours.add_argument("--eval_interval", type=number(int, 0), default=10,
                      help="batches between evaluations (10, as published); 0 = only at the "
                           "end of each epoch")
    ours.add_argument("--log_alignment", type=number(int, 0), default=0, metavar="N",
                      help="every N batches, log per layer the angle between the rule's and "
                           "BP's weight directions to alignment.txt (0 = off)")
    ours.add_argument("--dtype", choices=backend.DTYPES, default="float64")
    ours.add_argument("--backend", choices=backend.CHOICES, default="auto",
                      help="auto = CuPy when it imports and sees a GPU, else NumPy")
    ours.add_argument("--data_dir", default="./data", help="torchvision data root")
    ours.add_argument("--results_dir", default="results", help="where results folders go")
    ours.add_argument("--overwrite", action="store_true",
                      help="replace a finished or interrupted run in the results folder")
    return parser


def build_net(args):
    """The network of the settings; orthogonal init also whenever lambda == 0 (as published)."""
    from inv_net import SquareInvNet, TowerInvNet
    orthogonal = args.orthogonal_init or args.orthogonal_reg == 0
    if args.tower:
        return TowerInvNet([784, 784, 500, 200, 10], args.seed, orthogonal, args.linear)
    return SquareInvNet(784, args.nb_layers, args.seed, orthogonal, args.linear)


def resume_command(argv):
    """The command line that resumes this run."""
    kept = [arg for arg in argv if arg not in ("--load", "--overwrite")]
    return shlex.join([sys.argv[0]] + kept + ["--load"])


@contextlib.contextmanager
def reading(path):
    """Report an OSError inside the block as a failure to read `path` (RunFolderError, exit
    status 1), not to write: main's report of any other OSError."""
    try:
        yield
    except OSError as error:
        raise RunFolderError(f"cannot read {error.filename or path}: {error.strerror}. Make it "
                             f"readable, then run the same command again.") from None


def read_record(record_path):
    """The run record (run.json) at `record_path`, or None if there is none."""
    if not os.path.exists(record_path):
        return None
    try:
        with reading(record_path):
            return checkpoint.load_json(record_path)
    except ValueError as error:
        raise RunFolderError(f"The run record {record_path} cannot be read ({error}). "
                             f"Replace the run with --overwrite.") from None


def prepare_folder(folder, args):
    """Check what the folder holds against --load/--overwrite; return the checkpoint or None."""
    with reading(folder):
        names = os.listdir(folder)
    for name in names:  # temporary files of writes a killed run left unfinished
        if name.startswith(".") and name.endswith(".partial"):
            os.remove(os.path.join(folder, name))
    if args.overwrite and not args.load:  # replace whatever it holds, readable or not
        record = stored = None
    else:
        record = read_record(os.path.join(folder, run_folder.RUN_RECORD))
        stored = checkpoint.read_checkpoint(folder)
    if args.load:
        if record is None and stored is None:
            raise UsageError(f"--load was given, but {folder} holds no run to continue. Drop "
                             f"--load to start this run.")
        if stored is None:
            print(f"{folder} holds a run stopped before its first checkpoint: starting over.")
            return None
        differences = run_folder.setting_differences(stored[0]["settings"], args)
        if differences:
            raise UsageError(f"The checkpoint in {folder} was made with other settings ("
                             f"{'; '.join(differences)}). Resume with the stored settings, or "
                             f"start a fresh run with --overwrite.")
        return stored
    if (record is not None or stored is not None) and not args.overwrite:
        status = record["status"] if record else "unknown"
        raise UsageError(f"{folder} already holds a run (status: {status}). Continue it with "
                         f"--load, or replace it with --overwrite; nothing was changed.")
    for name in names:
        if name in run_folder.RESULT_FILES or run_folder.is_parameter_file(name):
            os.remove(os.path.join(folder, name))
    return None


def package_versions():
    """Versions of the packages a run depends on."""
    import importlib.metadata
    versions = {"python": sys.version.split()[0]}
    for package in ("numpy", "scipy", "torch", "torchvision", "tqdm", "cupy"):
        try:
            versions[package] = importlib.metadata.version(package)
        except importlib.metadata.PackageNotFoundError:
            pass
    return versions


class StopSignal:
    """Turns the first SIGINT/SIGTERM into a request to stop at the next batch boundary; a
    second one calls `on_second()` and exits at once (SystemExit, status 130 / 143)."""

    def __init__(self, on_second):
        self.received = None
        self.on_second = on_second
        for number_ in EXIT_SIGNAL:
            signal.signal(number_, self.handle)

    def handle(self, signum, frame):
        """The signal handler: note the first signal, act on a second one."""
        if self.received is not None:
            self.on_second()
            raise SystemExit(EXIT_SIGNAL[signum])
        self.received = signum
        print(f"\n{signal.Signals(signum).name} received: stopping at the next batch boundary.",
              file=sys.stderr, flush=True)

    def __call__(self):
        return self.received is not None


class Run:
    """One run's results folder while it trains: its network, run record, checkpoint and
    results files, kept current at each step of the run's life. A single run (`train_run`)
    and each run of a pack (pack.py) keep their folders alike through this class."""

    def __init__(self, args, argv, folder, stored, command=None):
        self.args, self.folder, self.stored = args, folder, stored
        self.record_path = os.path.join(folder, run_folder.RUN_RECORD)
        self.computation = run_folder.computation_settings(args)
        self.net, self.epoch, self.statistics = build_net(args), 0, None
        self.record = {"settings": vars(args),
                       "command": command or shlex.join([sys.argv[0]] + argv),
                       "versions": package_versions(), "backend": backend.describe(),
                       "dtype": args.dtype, "started": now(), "ended": None, "epochs_done": 0,
                       "nb_epochs": args.nb_epochs, "status": "running", "folder": folder}

    def begin(self, train, test):
        """Restore the stored checkpoint (rewriting the results files from it), or evaluate
        the fresh network and write the checkpoint of epoch 0; record the run as running.
        Returns the run's Statistics."""
        folder, record = self.folder, self.record
        if self.stored is not None:
            meta, arrays = self.stored
            old = read_record(self.record_path) or {}
            record["started"] = old.get("started", record["started"])
            record["resumed"] = old.get("resumed", []) + [now()]
            self.statistics = checkpoint.restore_checkpoint(self.net, arrays)
            # A kill between the checkpoint and the results files leaves them an epoch behind.
            checkpoint.save_results(folder, self.net, self.statistics)
            self.epoch = meta["epoch"]
            print(f"Resuming {folder} from the checkpoint after epoch {self.epoch}.")
        record["epochs_done"] = self.epoch
        checkpoint.save_json(self.record_path, record)
        if self.stored is None:
            self.statistics = training.Statistics()
            self.statistics.record(self.net, train, test)
            checkpoint.save_checkpoint(folder, self.net, self.statistics, 0, self.computation)
            checkpoint.save_results(folder, self.net, self.statistics)
        return self.statistics

    def end_epoch(self, net):
        """An epoch is done: checkpoint, results files and record of `net` (this run's
        network, or its view in a pack)."""
        self.epoch += 1
        checkpoint.save_checkpoint(self.folder, net, self.statistics, self.epoch,
                                   self.computation)
        checkpoint.save_results(self.folder, net, self.statistics)
        self.record.update(epochs_done=self.epoch, peak_memory_mb=utils.peak_memory_mb())
        checkpoint.save_json(self.record_path, self.record)

    def diverged(self, message):
        """Record divergence: the statistics so far; the checkpoint stays that of the last epoch."""
        checkpoint.save_statistics(self.folder, self.statistics)
        self.record.update(status="diverged", ended=now(), message=message)
        checkpoint.save_json(self.record_path, self.record)
        print(f"{os.path.basename(sys.argv[0])}: {message} The checkpoint after epoch "
              f"{self.epoch} and the statistics so far are in {self.folder}.", file=sys.stderr)

    def interrupted(self, at_once=False):
        """Record the run as interrupted (a signal); the checkpoint is that of the last epoch."""
        if self.record["status"] != "running":
            return
        self.record.update(status="interrupted", ended=now())
        if at_once:  # inside the signal handler: the files are whole, the record may not be
            with contextlib.suppress(OSError):
                checkpoint.save_json(self.record_path, self.record)
            return
        checkpoint.save_json(self.record_path, self.record)

    def finished(self):
        self.record.update(status="finished", ended=now())
        checkpoint.save_json(self.record_path, self.record)


def train_run(args, argv, folder, stored):
    """Load data, build or restore the network, train to --nb_epochs, keep the folder current."""
    (train, test) = data.load_dataset(args.dataset, args.data_dir)
    train, test, train_targets = training.to_device_sets(train, test)
    run = Run(args, argv, folder, stored)

    def stopped_at_once():
        """A second Ctrl-C / SIGTERM: the files are whole; record the run as interrupted."""
        if run.record["status"] == "running":
            run.interrupted(at_once=True)
            print(f"Stopped at once; {folder} holds the checkpoint of the last completed epoch. "
                  f"Resume with:\n  {resume_command(argv)}", file=sys.stderr, flush=True)
    stop = StopSignal(stopped_at_once)
    statistics = run.begin(train, test)
    feed = training.Feed([(train, train_targets, test)])
    progress = training.Progress(args.nb_epochs, feed.nb_batches)
    runner = training.StepRunner(run.net, training.StepSettings.of(args))
    while run.epoch < args.nb_epochs:
        progress.start_epoch(run.epoch)
        try:
            completed = training.train_epoch(runner, feed, statistics, args.eval_interval,
                                             progress, stop, run.epoch)
        except training.Diverged as diverged:
            run.diverged(str(diverged))
            return EXIT_DIVERGED
        if not completed:
            run.interrupted()
            print(f"Stopped during epoch {run.epoch + 1}; {folder} holds the checkpoint after "
                  f"epoch {run.epoch}. Resume with:\n  {resume_command(argv)}", file=sys.stderr)
            return EXIT_SIGNAL[stop.received]
        progress.end_epoch(statistics)
        run.end_epoch(run.net)
    run.finished()
    print(f"Finished {run.epoch} epochs; results in {folder}")
    return EXIT_FINISHED


class Folders:
    """The results folders a process trains in (one for run.py, one per run for pack.py):
    opened and locked one by one (`open`), released at the end (`release`) and, after a
    failure, marked failed (`mark_failed`)."""

    def __init__(self):
        self.folders, self.created, self.locks = [], [], []

    def open(self, args):
        """Make and lock the results folder of run.py's arguments `args` and check it against
        --load / --overwrite (prepare_folder); returns (folder, stored checkpoint or None)."""
        folder = run_folder.results_folder(args)
        if args.load and not os.path.isdir(folder):
            raise UsageError(f"--load was given, but there is no results folder {folder}. Drop "
                             f"--load to start this run (or check --results_dir).")
        self.created.append(not os.path.isdir(folder))
        os.makedirs(folder, exist_ok=True)
        self.folders.append(folder)
        self.locks.append(checkpoint.FolderLock(folder))
        self.locks[-1].acquire()
        return folder, prepare_folder(folder, args)

    def described(self):
        """The folder's path, or "each results folder" for several ("the results folder"
        before any is open)."""
        if len(self.folders) == 1:
            return self.folders[0]
        return "each results folder" if self.folders else "the results folder"

    def release(self):
        """Let go of the locks."""
        for lock in self.locks:
            lock.release()

    def mark_failed(self):
        """After a failure: `mark_failed` for each folder."""
        for folder, created in zip(self.folders, self.created):
            mark_failed(folder, created)


def guarded(program, folders, work):
    """work()'s exit status, with bad input and failures turned into a one-paragraph message
    and run.py's exit statuses (2 bad input, 1 failed). `folders` (Folders) are released;
    after a failure each run is marked failed, and an unexpected error's traceback goes to
    error.log in each folder. Nothing stored is lost: checkpoints are written atomically."""
    try:
        return work()
    except (UsageError, backend.BackendError) as error:
        print(f"{program}: {error}", file=sys.stderr)
        return EXIT_USAGE
    except (data.DataError, RunFolderError) as error:
        print(f"{program}: {error}", file=sys.stderr)
    except OSError as error:
        where = folders.described()
        print(f"{program}: cannot write {error.filename or where}: {error.strerror}. Free disk "
              f"space or fix the permissions (or choose another --results_dir), then resume "
              f"with --load; the last checkpoint in {where} is intact.", file=sys.stderr)
    except Exception:
        details = traceback.format_exc().encode()
        for folder in folders.folders:
            with contextlib.suppress(OSError):
                checkpoint.write_atomically(os.path.join(folder, run_folder.ERROR_LOG),
                                            lambda file: file.write(details))
        print(f"{program}: unexpected error ({sys.exc_info()[1]!r}). The last checkpoint in "
              f"{folders.described()} is intact; the traceback is in {run_folder.ERROR_LOG} "
              f"there. Please report it.", file=sys.stderr)
    finally:
        folders.release()
    folders.mark_failed()
    return EXIT_FAILED


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    args = build_parser().parse_args(argv)
    warnings.simplefilter("ignore")  # overflow and singular-matrix warnings: divergence is checked
    folders = Folders()

    def work():
        print(f"Using {backend.select(args.backend, args.device, args.dtype)}")
        folder, stored = folders.open(args)
        return train_run(args, argv, folder, stored)
    return guarded("run.py", folders, work)


def mark_failed(folder, created):
    """After a failure: mark an existing run record failed; remove a folder this run created
    empty."""
    record_path = os.path.join(folder, run_folder.RUN_RECORD)
    with contextlib.suppress(OSError, ValueError):
        if os.path.exists(record_path):
            record = checkpoint.load_json(record_path)
            if record.get("status") == "running":
                record.update(status="failed", ended=now())
                checkpoint.save_json(record_path, record)
        elif created and set(os.listdir(folder)) <= {run_folder.LOCK}:
            os.remove(os.path.join(folder, run_folder.LOCK))
            os.rmdir(folder)


if __name__ == "__main__":
    sys.exit(main())
