"""The one place that decides the array backend (NumPy or CuPy) and the float dtype.

Every other module is written once against an array module `xp` that it gets from
`array_module(x)` (CuPy's own idiom) and never imports CuPy itself. Weights are drawn on
the host with NumPy and moved to the backend with `to_device`, so a seed gives the same
network on CPU and GPU.
"""
import os
from concurrent.futures import ThreadPoolExecutor

# After each product OpenBLAS's idle threads spin for about 2**28 cycles, holding the core
# that `in_shares` needs: the optimiser then took 23 ms a step instead of 14 (2 cores).
# Let them sleep after 2**20 cycles, about 0.4 ms. Read when NumPy loads OpenBLAS (so it
# does nothing if NumPy came first); a value the user set wins.
os.environ.setdefault("OPENBLAS_THREAD_TIMEOUT", "20")
import numpy  # noqa: E402

_state = {"xp": numpy, "dtype": numpy.float64, "device": None}
DTYPES = ("float64", "float32")
CHOICES = ("auto", "numpy", "cupy")  # the backends `select` takes by name


class BackendError(RuntimeError):
    """The requested backend cannot be used on this machine."""


def _import_cupy():
    """CuPy if it imports and sees at least one GPU, else None."""
    try:
        import cupy
        if cupy.cuda.runtime.getDeviceCount() > 0:
            return cupy
    except Exception:
        pass
    return None


def select(name="auto", device=0, dtype="float64"):
    """Choose the backend ('auto', 'numpy' or 'cupy'), the GPU id and the dtype.

    'auto' means CuPy when it imports and a GPU is usable, NumPy otherwise. Returns a
    one-line description of the choice, for the run to print.
    """
    if dtype not in DTYPES:
        raise BackendError(f"unknown dtype {dtype!r}: use one of {', '.join(DTYPES)}")
    cupy = _import_cupy() if name in ("auto", "cupy") else None
    if name == "cupy" and cupy is None:
        raise BackendError("CuPy was asked for, but it does not import or sees no GPU: "
                           "install CuPy for your CUDA version, or use the NumPy backend.")
    if cupy is not None:
        count = cupy.cuda.runtime.getDeviceCount()
        if not 0 <= device < count:
            raise BackendError(f"--device={device} does not exist: this machine has {count} "
                               f"GPU(s), numbered 0 to {count - 1}.")
        cupy.cuda.Device(device).use()
        _state.update(xp=cupy, device=device)
    else:
        _state.update(xp=numpy, device=None)
    _state["dtype"] = numpy.dtype(dtype).type
    return describe()


def describe():
    """A line such as 'backend numpy, dtype float64, device cpu'."""
    device = "cpu" if _state["device"] is None else f"gpu {_state['device']}"
    return (f"backend {_state['xp'].__name__}, dtype {numpy.dtype(_state['dtype']).name}, "
            f"device {device}")


def xp():
    """The array module of the selected backend."""
    return _state["xp"]


def dtype():
    """The float type of the selected backend."""
    return _state["dtype"]


def device():
    """The selected GPU id, or None on the CPU."""
    return _state["device"]


def name():
    """'numpy' or 'cupy'."""
    return _state["xp"].__name__


def synchronize():
    """Wait until the GPU has finished its queued work (for timing); nothing on the CPU."""
    if _state["xp"] is not numpy:
        _state["xp"].cuda.Device().synchronize()


def array_module(array):
    """NumPy or CuPy, whichever module `array` belongs to."""
    return numpy if isinstance(array, (numpy.ndarray, numpy.generic)) else _state["xp"]


def to_device(array):
    """A host array as an array of the selected backend and dtype."""
    return _state["xp"].asarray(numpy.asarray(array), dtype=_state["dtype"])


def to_host(array):
    """Any backend array as a NumPy array."""
    if isinstance(array, numpy.ndarray):
        return array
    return array.get()


def block_rows(array, elements=1 << 15):
    """Rows of `array` an elementwise block should take: about `elements` values on the host
    (so that several passes over a block run in cache), the whole array on a GPU."""
    if array_module(array) is not numpy or array.ndim < 2:
        return max(1, len(array))
    return max(1, elements // max(1, array[0].size))


def row_blocks(array, elements=1 << 15, fewest=1):
    """`array` cut into views of `block_rows(array, elements)` rows, in order; one view
    when it holds fewer than `fewest` blocks' worth (too little work to share)."""
    rows = block_rows(array, elements) if array.size >= fewest * elements else len(array)
    return [array[start:start + rows] for start in range(0, len(array), rows)]


def evaluation_rows():
    """Rows a chunk of evaluation takes: 2,048 on the host, where a chunk's activities
    (12.8 MB in float64) and the passes over them stay in cache and the products run at
    the large-product rate (10,000 rows ran 20% slower on 2 cores); 10,000 on a GPU."""
    return 2048 if _state["xp"] is numpy else 10000


def available_cpus():
    """The CPUs this process may run on (its affinity where the system has one, as on Linux;
    all the machine's CPUs elsewhere, as on macOS)."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def host_threads():
    """Threads for host elementwise work: the CPUs this process may run on, capped by
    OPENBLAS_NUM_THREADS or OMP_NUM_THREADS where set (one job per core on a shared node)."""
    count = available_cpus()
    for variable in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS"):
        value = os.environ.get(variable, "")
        if value.isdigit() and int(value) > 0:
            count = min(count, int(value))
    return max(1, count)


def in_shares(items, work, threads=None):
    """work(share) for each share of `items`, dealt round-robin into one share a thread.

    On the host there are `threads` shares (host_threads() by default), run at once: the
    elementwise loops of NumPy release the GIL, so they run on separate cores. On a GPU
    there is one share (the device is parallel already). `work` must touch only its share.
    """
    count = 1 if _state["xp"] is not numpy else min(threads or host_threads(), len(items))
    shares = [items[k::count] for k in range(count)]
    if count <= 1:
        for share in shares:
            work(share)
        return
    workers, pool = _state.get("pool", (0, None))
    if workers != count - 1:
        if pool is not None:
            pool.shutdown(wait=False)
        pool = ThreadPoolExecutor(count - 1, thread_name_prefix="elementwise")
        _state["pool"] = (count - 1, pool)
    futures = [pool.submit(work, share) for share in shares[1:]]
    work(shares[0])
    for future in futures:
        future.result()


def solve_right(matrix, rhs):
    """`rhs @ inv(matrix)`, by an LU solve of matrix.T z = rhs.T (never forming the inverse).

    The array module's own solver is used, so that the LAPACK work runs in the same BLAS
    library (and thread pool) as the matrix products: SciPy's bundled OpenBLAS, called
    between NumPy's products, ran 3 to 4 times slower on 2 cores.
    """
    return array_module(rhs).linalg.solve(matrix.T, rhs.T).T
