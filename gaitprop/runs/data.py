"""The data sets: MNIST, Fashion-MNIST and Kuzushiji-MNIST, read with torchvision.

`load_dataset` returns host float64 arrays, read from `<data_dir>/<Name>/raw/` by torchvision:
in this process when called from a library or notebook, in a child process for the command
lines that train (`separate_process=True`: torch's import stays out of the training
process, which a spawned child needs a script's `__main__` guard for); gzipped files
are unpacked beside themselves first, and missing ones are downloaded by torchvision first
(`fetch_missing`, which leaves no folder behind where that fails: run.py and pack.py call it
before they make a results folder). Every failure is a DataError whose message names the
folder and the files to put there.
"""
import contextlib
import gzip
import os

import numpy

DATASETS = {"MNIST": "MNIST", "FMNIST": "FashionMNIST", "KMNIST": "KMNIST"}
RAW_FILES = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte",
             "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")
TRAINING_IMAGES = 60000  # in each data set (and 10,000 test images)


class DataError(RuntimeError):
    """A data set could not be found, fetched or read; the message says what to do."""


def raw_folder(data_dir, dataset):
    """Where torchvision keeps a data set's IDX files: <data_dir>/<Name>/raw."""
    return os.path.join(data_dir, DATASETS[dataset], "raw")


def _unpack_gzipped(folder):
    """Unpack every `<file>.gz` of RAW_FILES whose unpacked IDX file is missing.

    torchvision only accepts .gz files whose md5 it knows; unpacking them here also lets
    re-compressed copies (Debian's Fashion-MNIST) load with no network.
    """
    for stem in RAW_FILES:
        target, packed = os.path.join(folder, stem), os.path.join(folder, stem + ".gz")
        if os.path.exists(target) or not os.path.exists(packed):
            continue
        partial = f"{target}.{os.getpid()}.partial"  # per process: runs may start together
        try:
            with gzip.open(packed, "rb") as source, open(partial, "wb") as sink:
                while chunk := source.read(1 << 22):
                    sink.write(chunk)
            os.replace(partial, target)
        except (OSError, EOFError, gzip.BadGzipFile) as error:
            if os.path.exists(partial):
                os.remove(partial)
            raise DataError(f"The data file {packed} is corrupt or truncated ({error}). "
                            f"Delete it and put a good copy in {folder}.") from None


def _idx_file_intact(path):
    """Whether an unsigned-byte IDX file's header is valid and its size matches its shape."""
    try:
        with open(path, "rb") as file:
            header = file.read(4)
            if len(header) != 4 or header[:3] != b"\x00\x00\x08" or not 1 <= header[3] <= 3:
                return False
            dims = numpy.frombuffer(file.read(4 * header[3]), dtype=">i4")
        return (len(dims) == header[3]
                and os.path.getsize(path) == 4 + 4 * header[3] + int(numpy.prod(dims)))
    except OSError:
        return False


def missing_files(folder):
    """The RAW_FILES of which `folder` holds neither the file nor its `.gz`."""
    return [stem for stem in RAW_FILES
            if not any(os.path.exists(os.path.join(folder, stem + suffix))
                       for suffix in ("", ".gz"))]


def not_there(dataset, folder, missing, why=""):
    """The DataError of a data set whose files `missing` are not in `folder` (`why`: what
    follows, such as " and could not be downloaded (...)")."""
    return DataError(f"The {dataset} data set is not in {folder}{why}. Put these files there "
                     f"(gzipped .gz or unpacked): {', '.join(missing)}; or run once on a "
                     f"machine with internet access and copy the folder.")


def _download(dataset, data_dir):
    """In a child process: download a data set with torchvision; None, or why it failed."""
    import torchvision.datasets
    try:
        getattr(torchvision.datasets, DATASETS[dataset])(data_dir, train=True, download=True)
    except Exception as error:
        return type(error).__name__
    return None


def fetch_missing(dataset, data_dir, separate_process=False):
    """Download a data set whose files are not all in its raw folder (torchvision; in a
    child process if `separate_process`); nothing if they are. Where that fails, the
    folders the attempt made (`raw`, `<Name>`, the data root and any missing folder above it)
    are removed again if empty, and a DataError names the folder and the files to put there:
    a run that cannot have its data leaves nothing behind."""
    folder = raw_folder(data_dir, dataset)
    if not missing_files(folder):
        return
    made, path = [], os.path.abspath(folder)  # the folders a download makes, deepest first
    while not os.path.lexists(path) and os.path.dirname(path) != path:
        made.append(path)
        path = os.path.dirname(path)
    failure = "interrupted"
    try:
        failure = _computed(separate_process, _download, dataset, data_dir)
    finally:
        missing = missing_files(folder)
        for path in made if missing else []:
            with contextlib.suppress(OSError):  # a folder holding anything stays
                os.rmdir(path)
    if missing:
        raise not_there(dataset, folder, missing, f" and could not be downloaded ({failure})")


def _torchvision_split(dataset, data_dir, train):
    """(images, labels) of one split as uint8 NumPy arrays, through torchvision (which
    downloads nothing here: `fetch_missing` did)."""
    import torchvision.datasets
    folder = raw_folder(data_dir, dataset)
    cls = getattr(torchvision.datasets, DATASETS[dataset])
    try:
        data = cls(data_dir, train=train, download=False)
    except Exception as error:
        missing = [stem for stem in RAW_FILES if not os.path.exists(os.path.join(folder, stem))]
        if missing:  # removed since fetch_missing looked
            raise not_there(dataset, folder, missing) from None
        damaged = [stem for stem in RAW_FILES if not _idx_file_intact(os.path.join(folder, stem))]
        raise DataError(f"The {dataset} files in {folder} could not be read ({error}): "
                        f"{', '.join(damaged) or 'a file'} is corrupt or truncated. Replace "
                        f"the damaged file(s) with good copies.") from None
    return data.data.numpy(), data.targets.numpy()


def _read_raw_splits(dataset, data_dir):
    """Unpack any .gz files, then read both splits with torchvision: four uint8 arrays."""
    folder = raw_folder(data_dir, dataset)
    if os.path.isdir(folder):
        _unpack_gzipped(folder)
    return (_torchvision_split(dataset, data_dir, train=True)
            + _torchvision_split(dataset, data_dir, train=False))


def _die_with_parent(parent):
    """In the child: be killed when the parent dies (Linux), even by SIGKILL; otherwise a
    child left alone blocks forever on sending its result, holding the data in memory."""
    import ctypes
    import signal
    try:
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except (AttributeError, OSError):  # not Linux: no such call
        return
    if os.getppid() != parent:  # the parent died before prctl
        os._exit(1)


def _computed(separate_process, function, *arguments):
    """function(*arguments): in a child process (`_in_child_process`) if `separate_process`,
    else here."""
    return (_in_child_process(function, *arguments) if separate_process
            else function(*arguments))


def _in_child_process(function, *arguments):
    """function(*arguments) computed in a fresh Python process, its result sent back.

    Importing torch costs a process about 650 MB of resident memory for the rest of its
    life; reading the data in a child keeps a training run's memory to what it uses.
    """
    import multiprocessing

    # imported by name: an interrupted lazy import of concurrent.futures.process would
    # otherwise turn this except clause itself into an AttributeError
    from concurrent.futures.process import BrokenProcessPool, ProcessPoolExecutor
    context = multiprocessing.get_context("spawn")
    try:
        with ProcessPoolExecutor(1, mp_context=context, initializer=_die_with_parent,
                                 initargs=(os.getpid(),)) as pool:
            return pool.submit(function, *arguments).result()
    except BrokenProcessPool:
        raise DataError("The process reading the data set stopped before it finished "
                        "(interrupted, or out of memory). Run again.") from None


def load_dataset(dataset, data_dir="./data", separate_process=False):
    """Training and test sets as ((x_train, y_train), (x_test, y_test)), host float64.

    Images are flattened to 784 values and divided by the largest absolute pixel value of
    the training set (255); labels are integers 0..9 (see `utils.one_hot`). Missing files are
    downloaded first (`fetch_missing`); the files are read by torchvision, in a child process
    if `separate_process` (see `_in_child_process`; the process that calls it must then be a
    script with an `if __name__ == "__main__":` guard, as run.py and pack.py are).
    """
    if dataset not in DATASETS:
        raise DataError(f"unknown data set {dataset!r}: use one of {', '.join(DATASETS)}")
    fetch_missing(dataset, data_dir, separate_process)
    train_images, train_labels, test_images, test_labels = _computed(
        separate_process, _read_raw_splits, dataset, data_dir)
    scale = float(numpy.max(numpy.abs(train_images)))
    flat = []
    for images in (train_images, test_images):
        values = images.reshape(len(images), -1).astype(numpy.float64)
        values /= scale
        flat.append(values)
    return ((flat[0], train_labels.astype(numpy.int64)),
            (flat[1], test_labels.astype(numpy.int64)))


VALIDATION_SEED = 42  # the authors' choice of validation images (their run.py, commented out)


def validation_indices(nb_images, size):
    """The `size` training images held out as a validation set, by the authors' rule:
    numpy.random.seed(42); numpy.random.choice(nb_images, size=size, replace=False) (drawn
    here from a generator of its own, which gives the same indices)."""
    return numpy.random.RandomState(VALIDATION_SEED).choice(nb_images, size=size, replace=False)


def split_validation(train, size):
    """(kept, held out) of a training set (images, labels): the validation images of
    `validation_indices` (in the order drawn) and the others, in stored order."""
    images, labels = train
    held = validation_indices(len(labels), size)
    kept = numpy.ones(len(labels), dtype=bool)
    kept[held] = False
    return (images[kept], labels[kept]), (images[held], labels[held])


def load_run_sets(dataset, data_dir, validation=0, separate_process=False):
    """(training set, test set, validation set or None) of a run, host float64: the data set
    read once (`load_dataset`), `validation` training images held out when it is not 0."""
    train, test = load_dataset(dataset, data_dir, separate_process)
    if not validation:
        return train, test, None
    train, held_out = split_validation(train, validation)
    return train, test, held_out
