"""Shared pytest set-up: the repository on sys.path, NumPy float64, the offline data."""
import os

# Small matrices: one BLAS thread is faster, and far faster on a busy machine, than
# OpenBLAS's thread pool (an explicit setting in the environment wins).
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import pytest  # noqa: E402

# helpers puts the repository on sys.path; DATA_ROOT: $GAITPROP_DATA or ../shared/data
from helpers import DATA_ROOT, RAW_STEMS, DataRoot, require_files  # noqa: E402

from gaitprop.arrays import backend  # noqa: E402


@pytest.fixture(scope="session", autouse=True)
def numpy_float64():
    """Every test runs on the NumPy backend in float64."""
    backend.select("numpy", dtype="float64")
    yield


@pytest.fixture(scope="session")
def mnist_raw():
    """The offline data root holding MNIST/raw/*.gz ($GAITPROP_DATA or ../shared/data)."""
    require_files(DATA_ROOT, *(os.path.join("MNIST", "raw", stem + ".gz") for stem in RAW_STEMS))
    return DATA_ROOT


@pytest.fixture(scope="session")
def data_root(tmp_path_factory):
    """One data root for the session, genuine MNIST and Fashion-MNIST copied and unpacked
    (helpers.DataRoot), for test_run.py, test_reliability.py and test_pack.py."""
    return DataRoot(str(tmp_path_factory.mktemp("data")))
