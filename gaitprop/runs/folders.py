"""A run's results folder through its life, for run.py and pack.py alike: opened, locked and
checked against --load / --overwrite (`Folders`), begun or restored, kept current at each
epoch and given its outcome (`Run`); bad input and failures turned into one-paragraph
messages and exit statuses (`guarded`)."""
import contextlib
import os
import shlex
import sys
import traceback

from gaitprop.arrays import backend
from gaitprop.runs import checkpoint
from gaitprop.runs import data
from gaitprop.runs import run_folder
from gaitprop.model import functions as utils
from gaitprop.runs.checkpoint import RunFolderError, now
from gaitprop.runs.exit_status import EXIT_FAILED, EXIT_USAGE
from gaitprop.engine.statistics import Statistics
from gaitprop.runs.settings import build_net


class UsageError(Exception):
    """Bad input found after parsing; the message says what to do. Exit status 2."""


@contextlib.contextmanager
def reading(path):
    """Report an OSError inside the block as a failure to read `path` (RunFolderError, exit
    status 1), not to write: main's report of any other OSError."""
    try:
        yield
    except OSError as error:
        raise RunFolderError(f"cannot read {error.filename or path}: {error.strerror}. Make it "
                             f"readable, then run the same command again.") from None


def unmakeable(path):
    """Why the folder `path` cannot be made or written into (what is in the way, a phrase), or
    None: a file at it or above it, or the nearest existing folder above it not writable."""
    nearest = os.path.abspath(path)
    while not os.path.lexists(nearest) and os.path.dirname(nearest) != nearest:
        nearest = os.path.dirname(nearest)
    if not os.path.isdir(nearest):
        return f"{nearest} is a file, not a folder"
    if not os.access(nearest, os.W_OK | os.X_OK):
        return f"{nearest} is a folder this user cannot write into"
    return None


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


def replaced_files(names):
    """The files among `names` (a folder's) that a fresh run replaces: RESULT_FILES and the
    layers' parameter files."""
    return [name for name in names
            if name in run_folder.RESULT_FILES or run_folder.is_parameter_file(name)]


def check_folder(folder, args):
    """Check what an existing results folder holds against --load / --overwrite, changing
    nothing: raise UsageError (RunFolderError where it cannot be read) if it does not fit.
    Returns (its file names, its run record, its checkpoint); record and checkpoint are None
    where absent, and unread for a fresh run with --overwrite (it replaces them)."""
    with reading(folder):
        names = os.listdir(folder)
    if args.overwrite and not args.load:  # replace whatever it holds, readable or not
        return names, None, None
    record = read_record(os.path.join(folder, run_folder.RUN_RECORD))
    stored = checkpoint.read_checkpoint(folder)
    if record is None and stored is None:
        others = [name for name in sorted(replaced_files(names)) if name != run_folder.ERROR_LOG]
        if others:  # results with no run record: the published scripts', say
            shown = ", ".join(others[:3]) + (", ..." if len(others) > 3 else "")
            overwrite = "--overwrite (without --load)" if args.load else "--overwrite"
            raise UsageError(f"{folder} holds results this package did not make ({shown}; no "
                             f"{run_folder.RUN_RECORD}, no checkpoint): {overwrite} replaces "
                             f"them, or move them elsewhere; nothing was changed.")
        if args.load:
            raise UsageError(f"--load was given, but {folder} holds no run to continue. Drop "
                             f"--load to start this run.")
        return names, None, None
    if not args.load:
        status = record["status"] if record else "unknown"
        raise UsageError(f"{folder} already holds a run (status: {status}). Continue it with "
                         f"--load, or replace it with --overwrite; nothing was changed.")
    if stored is not None:
        differences = run_folder.setting_differences(stored[0]["settings"], args)
        if differences:
            raise UsageError(f"The checkpoint in {folder} was made with other settings ("
                             f"{'; '.join(differences)}). Resume with the stored settings, or "
                             f"start a fresh run with --overwrite.")
    return names, record, stored


def prepare_folder(folder, args):
    """Check what the folder holds against --load/--overwrite (`check_folder`), then make it
    ready: temporary files of unfinished writes removed and, for a fresh run, the files it
    replaces. Returns the checkpoint to continue from, or None."""
    names, _, stored = check_folder(folder, args)
    for name in names:  # temporary files of writes a killed run left unfinished
        if name.startswith(".") and name.endswith(".partial"):
            os.remove(os.path.join(folder, name))
    if args.load:
        if stored is None:
            print(f"{folder} holds a run stopped before its first checkpoint: starting over.")
        return stored
    for name in replaced_files(names):
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


class Run:
    """One run's results folder while it trains: its network, run record, checkpoint and
    results files, kept current at each step of the run's life (trainer.py trains it, alone
    for run.py or in a pack for pack.py)."""

    def __init__(self, args, argv, folder, stored, command=None):
        self.args, self.folder, self.stored = args, folder, stored
        self.record_path = os.path.join(folder, run_folder.RUN_RECORD)
        self.computation = run_folder.computation_settings(args)
        self.net, self.epoch, self.statistics = build_net(args), 0, None
        self.lu_only = False  # switched to LU solves (step_runner.InversePolicy), as checkpointed
        self.record = {"settings": vars(args),
                       "command": command or shlex.join([sys.argv[0]] + argv),
                       "versions": package_versions(), "backend": backend.describe(),
                       "dtype": args.dtype, "started": now(), "ended": None, "epochs_done": 0,
                       "nb_epochs": args.nb_epochs, "status": "running", "folder": folder}

    def begin(self, sets):
        """Restore the stored checkpoint (rewriting the results files from it), or evaluate
        the fresh network on `sets` (a training.RunData) and write the checkpoint of epoch 0;
        record the run as running. Returns the run's Statistics."""
        folder, record = self.folder, self.record
        if self.stored is not None:
            meta, arrays = self.stored
            old = read_record(self.record_path) or {}
            record["started"] = old.get("started", record["started"])
            record["resumed"] = old.get("resumed", []) + [now()]
            self.statistics = checkpoint.restore_checkpoint(self.net, arrays)
            self.lu_only = checkpoint.switched_to_lu(arrays)
            # A kill between the checkpoint and the results files leaves them an epoch behind.
            checkpoint.save_results(folder, self.net, self.statistics)
            self.epoch = meta["epoch"]
            print(f"Resuming {folder} from the checkpoint after epoch {self.epoch}.")
        record["epochs_done"] = self.epoch
        checkpoint.save_json(self.record_path, record)
        if self.stored is None:
            self.statistics = Statistics(
                names=run_folder.statistics_names(self.args.validation))
            self.statistics.record(self.net, sets.train, sets.test, sets.validation)
            checkpoint.save_checkpoint(folder, self.net, self.statistics, 0, self.computation)
            checkpoint.save_results(folder, self.net, self.statistics)
        return self.statistics

    def end_epoch(self, net, lu_only=False):
        """An epoch is done: checkpoint, results files and record of `net` (this run's
        network, or its view in a pack; `lu_only`: its runner had switched to LU solves)."""
        self.epoch += 1
        self.lu_only = lu_only
        checkpoint.save_checkpoint(self.folder, net, self.statistics, self.epoch,
                                   self.computation, lu_only)
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


class Folders:
    """The results folders a process trains in (one for run.py, one per run for pack.py):
    checked before any is made (`check`), opened and locked one by one (`open`), released at
    the end (`release`) and, after a failure, marked failed (`mark_failed`), with the advice
    that is true then (`advice`)."""

    def __init__(self):
        self.folders, self.created, self.locks, self.fresh = [], [], [], []

    @staticmethod
    def check(args):
        """Refuse the results folder of run.py's arguments `args` before anything is made or
        locked, if another process trains in it, if it does not fit --load / --overwrite
        (UsageError; `check_folder`, which `open` repeats under the lock) or if it cannot be
        made (RunFolderError, `unmakeable`). Returns the folder."""
        folder = run_folder.results_folder(args)
        if args.load and not os.path.isdir(folder):
            raise UsageError(f"--load was given, but there is no results folder {folder}. Drop "
                             f"--load to start this run (or check --results_dir).")
        if os.path.isdir(folder) and checkpoint.FolderLock.is_held(folder):
            raise RunFolderError(f"Another process is running in {folder} (it holds "
                                 f"{run_folder.LOCK}). Wait for it to finish or stop it; two runs "
                                 f"cannot share a results folder. Then run the same command "
                                 f"again.")
        if os.path.isdir(folder):
            check_folder(folder, args)
        reason = unmakeable(folder)
        if reason is not None:
            raise RunFolderError(
                f"cannot make the results folder {folder}: {reason}. Move what is in the way "
                f"or fix the permissions (or choose another --results_dir), then run the same "
                f"command again.")
        return folder

    def open(self, args):
        """Make and lock the results folder of run.py's arguments `args` and check it against
        --load / --overwrite (prepare_folder); returns (folder, stored checkpoint or None)."""
        folder = run_folder.results_folder(args)
        if args.load and not os.path.isdir(folder):
            raise UsageError(f"--load was given, but there is no results folder {folder}. Drop "
                             f"--load to start this run (or check --results_dir).")
        created = not os.path.isdir(folder)
        try:
            os.makedirs(folder, exist_ok=True)
        except OSError as error:
            raise RunFolderError(
                f"cannot make the results folder {folder}: {error.filename or folder}: "
                f"{error.strerror}. Move what is in the way or fix the permissions (or choose "
                f"another --results_dir), then run the same command again.") from None
        self.created.append(created)
        self.fresh.append(not args.load)
        self.folders.append(folder)
        self.locks.append(checkpoint.FolderLock(folder))
        try:
            self.locks[-1].acquire()
        except RunFolderError as error:  # another process: say what to run once it is gone
            raise RunFolderError(f"{error} Then run the same command again.") from None
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

    def advice(self):
        """What to run after a failure, true at this moment: the same command again, unless a
        fresh run of it (no --load) has written its run record since: then the same command
        with --load there (it continues from the checkpoint, or starts over before the
        first). Names the checkpoints kept, if any."""
        def holds(folder, name):
            return os.path.exists(os.path.join(folder, name))
        begun = [folder for folder, fresh in zip(self.folders, self.fresh)
                 if fresh and holds(folder, run_folder.RUN_RECORD)]
        kept = [folder for folder in self.folders if holds(folder, run_folder.CHECKPOINT)]
        if not begun:
            command = "run the same command again" + (
                "" if all(self.fresh) else ", with its --load")
        elif len(self.folders) == 1:
            command = "run the same command with --load"
        elif len(begun) == len(self.folders):
            command = "run the same command with --load in each member"
        else:
            command = f"run the same command with --load in the members of {', '.join(begun)}"
        if not kept:
            return command
        where = kept[0] if len(kept) == 1 else "each results folder that has one"
        return f"{command} (the last checkpoint in {where} is intact)"


def guarded(program, folders, work):
    """work()'s exit status, with bad input and failures turned into a one-paragraph message
    and run.py's exit statuses (2 bad input, 1 failed). `folders` (Folders) are released;
    after a failure each run is marked failed, and an unexpected error's traceback goes to
    error.log in each folder (to stderr where none is open). The advice after a failure is
    that of the moment (`Folders.advice`): nothing stored is lost, checkpoints are written
    atomically."""
    try:
        return work()
    except (UsageError, backend.BackendError) as error:
        print(f"{program}: {error}", file=sys.stderr)
        return EXIT_USAGE
    except RunFolderError as error:  # its message says what to do
        print(f"{program}: {error}", file=sys.stderr)
    except data.DataError as error:
        print(f"{program}: {error} Then {folders.advice()}.", file=sys.stderr)
    except OSError as error:
        where = folders.described()
        print(f"{program}: cannot write {error.filename or where}: {error.strerror}. Free disk "
              f"space or fix the permissions (or choose another --results_dir), then "
              f"{folders.advice()}.", file=sys.stderr)
    except Exception:
        details = traceback.format_exc()
        logged = []
        for folder in folders.folders:
            with contextlib.suppress(OSError):
                checkpoint.write_atomically(os.path.join(folder, run_folder.ERROR_LOG),
                                            lambda file: file.write(details.encode()))
                logged.append(folder)
        where = (f"the traceback is in {run_folder.ERROR_LOG} in "
                 f"{logged[0] if len(logged) == 1 else 'each results folder'}" if logged
                 else "its traceback follows")
        print(f"{program}: unexpected error ({sys.exc_info()[1]!r}); {where}. Please report "
              f"it. To go on, {folders.advice()}.", file=sys.stderr)
        if not logged:
            print(details, end="", file=sys.stderr)
    finally:
        folders.release()
    folders.mark_failed()
    return EXIT_FAILED


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
