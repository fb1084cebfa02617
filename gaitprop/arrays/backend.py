"""The one place that decides the array backend (NumPy or CuPy) and the float dtype.

Every other module is written once against an array module `xp` that it gets from
`array_module(x)` (CuPy's own idiom) and never imports CuPy itself. Weights are drawn on
the host with NumPy and moved to the backend with `to_device`, so a seed gives the same
network on CPU and GPU.
"""
import os
from concurrent.futures import ThreadPoolExecutor
from typing import Any

# After each product OpenBLAS's idle threads spin for about 2**28 cycles, holding the cores
# that `in_shares` needs for the optimiser (docs/performance.md says what it cost). Let them
# sleep after 2**20 cycles. Read when NumPy loads OpenBLAS (so it does nothing if NumPy came
# first); a value the user set wins.
os.environ.setdefault("OPENBLAS_THREAD_TIMEOUT", "20")
import numpy  # noqa: E402

# The selected array module (NumPy or CuPy: Any, as CuPy has no type information), dtype and
# GPU id, and what is made once for them (thread pool, kernels, side stream).
_state: dict[str, Any] = {"xp": numpy, "dtype": numpy.float64, "device": None}
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


def copied_into(target, source):
    """`source` (host or device) as an array of the selected backend and dtype, written
    into `target` where `target` is such an array of its shape (then `target` itself, at the
    same address: a captured CUDA graph that reads or writes it stays valid), else a new
    array (`to_device`)."""
    value = to_device(to_host(source))
    if (array_module(target) is array_module(value) and target.shape == value.shape
            and target.dtype == value.dtype):
        target[...] = value
        return target
    return value


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
    (12.8 MB in float64) and the passes over them stay in cache while the products still
    run at the large-product rate (larger chunks ran slower); 10,000 on a GPU."""
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
    """`rhs @ inv(matrix)`, by an LU solve of matrix.T z = rhs.T (never forming the inverse);
    for stacks of matrices (a pack's runs), one solve per matrix.

    The array module's own solver is used, so that the LAPACK work runs in the same BLAS
    library (and thread pool) as the matrix products (SciPy's bundled OpenBLAS, called
    between NumPy's products, was much slower). Raises numpy.linalg.LinAlgError for a
    singular matrix on both backends (CuPy checks only when asked, at the cost of a wait).
    """
    xp = array_module(rhs)
    matrix, rhs = matrix.swapaxes(-1, -2), rhs.swapaxes(-1, -2)  # .T, also of a stack
    if xp is numpy:
        return numpy.linalg.solve(matrix, rhs).swapaxes(-1, -2)
    import cupyx
    with cupyx.errstate(linalg="raise"):
        return xp.linalg.solve(matrix, rhs).swapaxes(-1, -2)


def zero_diagonal(matrix):
    """Set the diagonal of a square C-contiguous matrix (or of each matrix of a C-contiguous
    stack) to 0, in place (a strided view)."""
    matrix.reshape(matrix.shape[:-2] + (-1,))[..., ::matrix.shape[-1] + 1] = 0


# ----------------------------------------------------------------------------- fused work

class Fused:
    """One elementwise computation, written for each backend side by side.

    `host(*arguments)` runs on NumPy arrays (None: the caller handles the host). On CuPy
    arrays the CUDA statements `operation` run as one kernel (`cupy.ElementwiseKernel(
    in_params, out_params, operation, name)`, compiled on first use): outputs given as
    arguments are updated in place; inputs broadcast. The kernel is compiled without FMA
    contraction (--fmad=false), so that each operation rounds as the separate NumPy
    operations do: both backends give the same bits.
    """

    def __init__(self, host, in_params, out_params, operation, name):
        self.host = host
        self.specification = (in_params, out_params, operation, name)
        self.kernel = None

    def __call__(self, *arguments, **options):
        if array_module(arguments[0]) is numpy:
            return self.host(*arguments)
        if self.kernel is None:
            in_params, out_params, operation, name = self.specification
            self.kernel = _state["xp"].ElementwiseKernel(in_params, out_params, operation,
                                                         name, options=("--fmad=false",))
        return self.kernel(*arguments, **options)


def sum_of_squares(array):
    """sum(array**2) per run of a pack (over all axes but the first), a 1-d array of the
    array's backend (no wait for the GPU). On a GPU in two passes, row sums then their sums:
    one reduction kernel would use one block."""
    xp = array_module(array)
    if xp is numpy:
        flat = array.reshape(len(array), -1)
        return numpy.einsum("ij,ij->i", flat, flat)
    if "sum_of_squares" not in _state:
        _state["sum_of_squares"] = xp.ReductionKernel(
            "T x", "T y", "x * x", "a + b", "y = a", "0", "sum_of_squares")
    rows = array.reshape(len(array), -1, array.shape[-1]) if array.ndim > 2 else (
        array.reshape(len(array), 1, -1))
    return _state["sum_of_squares"](rows, axis=2).sum(axis=1)


def side_stream():
    """The second stream of `Branch` (made once)."""
    if "side_stream" not in _state:
        _state["side_stream"] = _state["xp"].cuda.Stream(non_blocking=True)
    return _state["side_stream"]


class Branch:
    """Work queued on a second stream, beside what the current stream queues meanwhile.

    `with Branch():` queues the enclosed work on the side stream after everything queued
    so far; `join()` makes the current stream wait for it before what it queues next. On
    the host, with enabled=False, or where GAITPROP_SIDE_STREAM=0, the work simply runs in
    line (join does nothing). Inside a CUDA graph capture the two streams become parallel branches.
    """

    def __init__(self, enabled=True):
        cupy = _state["xp"]
        self.side = None
        if not enabled or cupy is numpy or os.environ.get("GAITPROP_SIDE_STREAM", "1") == "0":
            return
        self.main = cupy.cuda.get_current_stream()
        self.side = side_stream()
        self.side.wait_event(self.main.record())

    def __enter__(self):
        if self.side is not None:
            self.side.__enter__()
        return self

    def __exit__(self, *exception):
        if self.side is not None:
            self.side.__exit__(*exception)
            self.done = self.side.record()
        return False

    def join(self):
        """The current stream waits for the branch's work (queued, not waited for here)."""
        if self.side is not None:
            self.main.wait_event(self.done)


# ----------------------------------------------------------------------------- CUDA graphs

def gpu_name():
    """The selected GPU's name (e.g. 'NVIDIA H200'), or 'cpu'."""
    if _state["device"] is None:
        return "cpu"
    cupy = _state["xp"]
    name = cupy.cuda.runtime.getDeviceProperties(_state["device"])["name"]
    return name.decode() if isinstance(name, bytes) else str(name)
