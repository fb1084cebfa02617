"""What a run keeps on disk: atomic files, the checkpoint, the run record and the folder lock.

Every file is written atomically (a temporary file in the same folder, flushed and
fsynced, then renamed over the old one), so a crash at any instant leaves either the old
or the new file. Only NumPy arrays (read with allow_pickle=False) and JSON are used, so
opening a results folder someone else sent can never run code.
"""
import contextlib
import datetime
import errno
import fcntl
import io
import json
import os
import tempfile
import time

import numpy

from gaitprop.arrays import backend
from gaitprop.runs import run_folder
from gaitprop.runs.run_folder import ALIGNMENT, CHECKPOINT, LOCK
from gaitprop.engine.statistics import Statistics


class RunFolderError(RuntimeError):
    """The results folder cannot be used as asked; the message says what to do."""


def now():
    """The current local time, ISO 8601 with seconds."""
    return datetime.datetime.now().astimezone().isoformat(timespec="seconds")


def creation_mode():
    """The mode a plain open() gives a new file: 0666 without the process's umask bits."""
    umask = os.umask(0o022)  # reading the umask means setting it; set it back at once
    os.umask(umask)
    return 0o666 & ~umask


def write_atomically(path, write):
    """Call `write(file)` on a temporary binary file beside `path`, then rename it to `path`.

    The file gets the mode a plain open() would give it (`creation_mode`), not mkstemp's
    0600, so that the rest of a group can read the results on a shared machine."""
    folder = os.path.dirname(os.path.abspath(path))
    handle, temporary = tempfile.mkstemp(dir=folder, prefix="." + os.path.basename(path),
                                         suffix=".partial")
    try:
        with os.fdopen(handle, "wb") as file:
            os.fchmod(file.fileno(), creation_mode())
            write(file)
            file.flush()
            os.fsync(file.fileno())
        os.replace(temporary, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.remove(temporary)
        raise
    with contextlib.suppress(OSError):
        directory = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(directory)
        finally:
            os.close(directory)


def save_array(path, array):
    """numpy.save, atomically."""
    write_atomically(path, lambda file: numpy.save(file, array, allow_pickle=False))


def save_text(path, values):
    """numpy.savetxt (one value a line), atomically."""
    write_atomically(path, lambda file: numpy.savetxt(file, numpy.asarray(values, dtype=float)))


def save_json(path, data):
    """JSON, indented, atomically."""
    text = json.dumps(data, indent=2, sort_keys=True) + "\n"
    write_atomically(path, lambda file: file.write(text.encode()))


def load_json(path):
    with open(path, encoding="utf-8") as file:
        return json.load(file)


def save_table(path, rows, header):
    """Rows of numbers as text (numpy.savetxt) under a header, atomically."""
    write_atomically(path, lambda file: numpy.savetxt(file, numpy.asarray(rows, dtype=float),
                                                      header=header))


def save_statistics(folder, statistics):
    """training_acc.txt, training_loss.txt, test_acc.txt, test_loss.txt: one value a line;
    alignment.txt (epoch, batch, angle per layer in degrees, a row each) if it has rows, and
    inverse_quality.txt (epoch, batch, reconstruction error per learned inverse, distance to
    the exact inverse per learned inverse) if it has rows."""
    for name, values in statistics.values.items():
        save_text(os.path.join(folder, run_folder.statistics_file(name)), values)
    if statistics.alignment:
        nb_layers = len(statistics.alignment[0]) - 2
        save_table(os.path.join(folder, ALIGNMENT), statistics.alignment,
                   "epoch (0-based) batch (0-based) then, per layer, the angle in degrees "
                   "between the rule's weight directions and BP's on that batch: "
                   + " ".join(f"angle_layer{i}" for i in range(nb_layers)))
    if statistics.inverse_quality:
        learned = range(1, (len(statistics.inverse_quality[0]) - 2) // 2 + 1)
        save_table(os.path.join(folder, run_folder.INVERSE_QUALITY), statistics.inverse_quality,
                   "epoch (0-based) batch (0-based) then, per learned inverse (layers 1 and "
                   "up), |backward(h) - x| / |x| on that batch, then |V - inv(W)|_F / "
                   "|inv(W)|_F: " + " ".join([f"reconstruction_layer{i}" for i in learned]
                                             + [f"distance_layer{i}" for i in learned]))


def save_results(folder, net, statistics):
    """The published results files: the four statistics and the layers' parameter files."""
    save_statistics(folder, statistics)
    for name, array in net.parameter_files().items():
        save_array(os.path.join(folder, name), backend.to_host(array))


def save_checkpoint(folder, net, statistics, epoch, settings, lu_only=False):
    """Everything needed to continue, in one atomic `checkpoint.npz`.

    Arrays: the network's state (`InvNet.state()`: W{i}, b{i}, the optimiser's moments
    m{j}, v{j}), the four statistics, `lu_only` (whether the run had switched from kept
    inverses to LU solves, step_runner.InversePolicy); `meta` holds JSON text: epoch
    reached, settings, backend, dtype.
    """
    arrays = {name: backend.to_host(array) for name, array in net.state().items()}
    for name, values in statistics.values.items():
        arrays[name] = numpy.asarray(values, dtype=numpy.float64)
    arrays["alignment"] = numpy.asarray(statistics.alignment, dtype=numpy.float64)
    arrays["lu_only"] = numpy.array(bool(lu_only))
    if statistics.inverse_quality:
        arrays["inverse_quality"] = numpy.asarray(statistics.inverse_quality,
                                                  dtype=numpy.float64)
    meta = {"epoch": epoch, "settings": settings, "backend": backend.name(),
            "dtype": numpy.dtype(backend.dtype()).name}
    arrays["meta"] = numpy.array(json.dumps(meta, sort_keys=True))

    def write(file):
        buffer = io.BytesIO()
        numpy.savez(buffer, **arrays)
        file.write(buffer.getvalue())
    write_atomically(os.path.join(folder, CHECKPOINT), write)


def read_checkpoint(folder):
    """(meta, arrays) of a folder's checkpoint, or None if it has none. Never unpickles."""
    path = os.path.join(folder, CHECKPOINT)
    if not os.path.exists(path):
        return None
    try:
        with numpy.load(path, allow_pickle=False) as stored:
            arrays = {name: stored[name] for name in stored.files}
        return json.loads(str(arrays.pop("meta"))), arrays
    except Exception as error:
        raise RunFolderError(f"The checkpoint {path} cannot be read ({error}). It is not a "
                             f"checkpoint this package wrote, or it was damaged; start a fresh "
                             f"run with --overwrite.") from None


def switched_to_lu(arrays):
    """Whether a checkpoint's run had switched to LU solves (`save_checkpoint`'s `lu_only`;
    False for a checkpoint written before it was stored)."""
    return bool(arrays["lu_only"]) if "lu_only" in arrays else False


def restore_checkpoint(net, arrays):
    """Put a checkpoint's network state (weights, biases, optimiser moments) into `net`;
    return its Statistics."""
    net.set_state(arrays)
    names = run_folder.statistics_names(validation="validation_acc" in arrays)
    values = {name: [float(value) for value in arrays[name]] for name in names}
    rows = {log: [list(map(float, row)) for row in arrays.get(log, [])]
            for log in ("alignment", "inverse_quality")}
    return Statistics(values, **rows)


class FolderLock:
    """An exclusive lock on a results folder (flock on `run.lock`).

    The kernel drops it when the process ends in any way, SIGKILL included, so a crashed
    run never leaves it stuck. (flock may not work across machines on some network file
    systems.) `is_held` probes it by taking it for an instant, so `acquire` waits up to
    WAIT_SECONDS for a holder to let go before it reports another process.
    """

    WAIT_SECONDS = 2.0
    RETRY_SECONDS = 0.05

    def __init__(self, folder):
        self.path = os.path.join(folder, LOCK)
        self.file = None

    def acquire(self):
        """Take the lock, or raise RunFolderError if another process keeps it WAIT_SECONDS."""
        self.file = open(self.path, "a+")
        deadline = time.monotonic() + self.WAIT_SECONDS
        try:
            while not _try_lock(self.file):
                if time.monotonic() >= deadline:
                    raise RunFolderError(
                        f"Another process is running in {os.path.dirname(self.path)} (it "
                        f"holds {LOCK}). Wait for it to finish or stop it; two runs cannot "
                        f"share a results folder.")
                time.sleep(self.RETRY_SECONDS)
        except BaseException:
            self.file.close()
            self.file = None
            raise
        self.file.seek(0)
        self.file.truncate()
        self.file.write(f"{os.getpid()}\n")
        self.file.flush()

    def release(self):
        """Let go of the lock (nothing if it is not held)."""
        if self.file is not None:
            fcntl.flock(self.file, fcntl.LOCK_UN)
            self.file.close()
            self.file = None

    @staticmethod
    def is_held(folder):
        """Whether a process holds the lock of `folder` (a run is training there now).

        A lock that cannot be probed (no flock on the file system) counts as held.
        """
        path = os.path.join(folder, LOCK)
        if not os.path.exists(path):
            return False
        with open(path, "a") as file:
            try:
                if _try_lock(file):
                    fcntl.flock(file, fcntl.LOCK_UN)
                    return False
            except OSError:
                pass
        return True


def _try_lock(file):
    """Take the exclusive flock of an open file if no one holds it; whether it was taken."""
    try:
        fcntl.flock(file, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as error:
        if error.errno in (errno.EAGAIN, errno.EACCES):
            return False
        raise
    return True
