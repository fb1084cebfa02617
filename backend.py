"""The one place that decides the array backend (NumPy or CuPy) and the float dtype.

Every other module is written once against an array module `xp` that it gets from
`array_module(x)` (CuPy's own idiom) and never imports CuPy itself. Weights are drawn on
the host with NumPy and moved to the backend with `to_device`, so a seed gives the same
network on CPU and GPU.
"""
import numpy

_state = {"xp": numpy, "dtype": numpy.float64, "device": None}
DTYPES = ("float64", "float32")


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


def solve_right(matrix, rhs):
    """`rhs @ inv(matrix)`, by an LU solve of matrix.T z = rhs.T (never forming the inverse).

    The array module's own solver is used, so that the LAPACK work runs in the same BLAS
    library (and thread pool) as the matrix products: SciPy's bundled OpenBLAS, called
    between NumPy's products, ran 3 to 4 times slower on 2 cores.
    """
    return array_module(rhs).linalg.solve(matrix.T, rhs.T).T
