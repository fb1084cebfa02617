"""Shared pytest set-up: the repository on sys.path, NumPy float64, the offline data."""
import os
import sys

# Small matrices: one BLAS thread is faster, and far faster on a busy machine, than
# OpenBLAS's thread pool (an explicit setting in the environment wins).
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import pytest  # noqa: E402

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if REPO not in sys.path:
    sys.path.insert(0, REPO)

import backend  # noqa: E402

# A data root laid out as torchvision expects (<root>/MNIST/raw/...): $GAITPROP_DATA if
# set, else the offline copies in ../shared/data beside the repository.
DATA_ROOT = os.environ.get("GAITPROP_DATA") or os.path.normpath(
    os.path.join(REPO, os.pardir, "shared", "data"))


@pytest.fixture(scope="session", autouse=True)
def numpy_float64():
    """Every test runs on the NumPy backend in float64."""
    backend.select("numpy", dtype="float64")
    yield


def _require_files(root, *relative_paths):
    """Fail (CI set) or skip (otherwise) unless every file exists under `root`."""
    missing = [path for path in relative_paths if not os.path.exists(os.path.join(root, path))]
    if missing:
        message = f"data files missing under {root}: {', '.join(missing)}"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)


@pytest.fixture(scope="session")
def mnist_raw():
    """The offline data root holding MNIST/raw/*.gz ($GAITPROP_DATA or ../shared/data)."""
    _require_files(DATA_ROOT, *(os.path.join("MNIST", "raw", name + ".gz") for name in (
        "train-images-idx3-ubyte", "train-labels-idx1-ubyte",
        "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")))
    return DATA_ROOT


@pytest.fixture(scope="session")
def data_root(tmp_path_factory):
    """One data root for the session, genuine MNIST and Fashion-MNIST copied and unpacked
    (test_run.DataRoot), for test_run.py and test_reliability.py."""
    from test_run import DataRoot
    return DataRoot(str(tmp_path_factory.mktemp("data")))
