"""cuBLAS called directly on a GPU, for products.matmul: CuPy's handle and a second one for
backend.Branch's stream, the library CuPy loaded (found among those mapped by its version),
the trial products that must agree with CuPy's before any is used, and the gemm plan of
each layout. CuPy refuses cuBLAS calls while a stream is captured into a CUDA graph;
cuBLAS itself supports capture, so the products called here are captured (and cost the
host less than CuPy's matmul). CuPy itself comes from backend (`backend.xp()`)."""
import ctypes
import os
import sys

import numpy

from gaitprop.arrays import backend


def handles():
    """The cuBLAS library CuPy loaded, through ctypes: CuPy's handle and a second one for
    `Branch`'s stream; None where that fails or a trial product (on either stream) disagrees
    with CuPy's. Its "batched" entry says whether the strided batched products (a pack's
    stacks) passed their own trials; where they did not, stacks go to CuPy's matmul (packs
    then run without CUDA graphs) and single runs keep the direct products.

    CuPy refuses any cuBLAS call while a stream is captured into a CUDA graph (its
    setStream raises); cuBLAS itself supports capture. Products called here directly are
    captured, and cost the host less than CuPy's matmul. The library is the mapped
    libcublas whose version is the one CuPy's handle reports (`matching_library`): a handle
    must go to the copy that made it. The handles keep cuBLAS's default workspace:
    cublasSetStream, which `matmul` calls before every product, resets a handle's workspace
    to that default, so a workspace set once would be dropped at the first product (every
    GPU figure in docs/ was measured with the default).
    """
    if "cublas" in backend._state:
        return backend._state["cublas"]
    backend._state["cublas"] = None
    cupy = backend.xp()
    try:
        handle = cupy.cuda.device.get_cublas_handle()
        with open("/proc/self/maps", encoding="utf-8") as maps:
            paths = mapped_paths(maps)
        library, side_handle = matching_library(paths, cupy.cuda.cublas.getVersion(handle))
        for name, _, scalar in _GEMM.values():
            _declare_gemm(getattr(library, name), scalar, strided=False)
        library.cublasSetStream_v2.argtypes = [ctypes.c_void_p, ctypes.c_void_p]
        library.cublasSetPointerMode_v2.argtypes = [ctypes.c_void_p, ctypes.c_int]
        # a handle per stream: Branch's stream runs beside the current one
        candidate = {"library": library, "handle": handle, "side_handle": side_handle,
                     "batched": False}
        backend._state["cublas"] = candidate
        _trial_products(stacked=False)
    except Exception as error:  # no such library or function, or a wrong result: CuPy's matmul
        print(f"note: direct cuBLAS products unavailable ({error!r}); using CuPy's matmul, "
              f"without CUDA graphs.", file=sys.stderr)
        backend._state["cublas"] = None
        return None
    try:
        for _, batched_name, scalar in _GEMM.values():
            _declare_gemm(getattr(library, batched_name), scalar, strided=True)
        candidate["batched"] = True
        _trial_products(stacked=True)
    except Exception as error:
        print(f"note: direct cuBLAS batched products unavailable ({error!r}); packs use CuPy's "
              f"matmul, without CUDA graphs.", file=sys.stderr)
        candidate["batched"] = False
    return candidate


def mapped_paths(maps):
    """The distinct paths of libcublas.so* (not libcublasLt) among the lines of
    /proc/self/maps, in the order they appear."""
    paths = []
    for line in maps:
        fields = line.split()
        path = fields[-1] if len(fields) >= 6 else ""
        if os.path.basename(path).startswith("libcublas.so") and path not in paths:
            paths.append(path)
    return paths


def version_and_handle(library):
    """(version, handle) of a loaded libcublas (ctypes.CDLL): a handle it creates, and the
    version it reports through that handle (cublasGetVersion_v2, CuPy's own query)."""
    library.cublasCreate_v2.argtypes = [ctypes.POINTER(ctypes.c_void_p)]
    library.cublasGetVersion_v2.argtypes = [ctypes.c_void_p, ctypes.POINTER(ctypes.c_int)]
    library.cublasDestroy_v2.argtypes = [ctypes.c_void_p]
    handle, version = ctypes.c_void_p(), ctypes.c_int()
    if library.cublasCreate_v2(ctypes.byref(handle)):
        raise RuntimeError("cublasCreate_v2 failed")
    if library.cublasGetVersion_v2(handle, ctypes.byref(version)):
        library.cublasDestroy_v2(handle)
        raise RuntimeError("cublasGetVersion_v2 failed")
    return version.value, handle.value


def matching_library(paths, wanted, load=ctypes.CDLL, version_of=version_and_handle):
    """(library, a handle of its own) of the first of `paths` whose cuBLAS version is
    `wanted` (the version CuPy reports); RuntimeError naming each one's version otherwise
    (two copies of cuBLAS are loaded and none is CuPy's: the caller falls back)."""
    found = []
    for path in paths:
        library = load(path)
        try:
            version, handle = version_of(library)
        except RuntimeError as error:
            found.append(f"{path} ({error})")
            continue
        if version == wanted:
            return library, handle
        library.cublasDestroy_v2(handle)
        found.append(f"{path} (version {version})")
    raise RuntimeError(f"no mapped libcublas has CuPy's version {wanted}: "
                       f"{', '.join(found) or 'none is mapped'}")


def _declare_gemm(function, scalar, strided):
    """Declare a cuBLAS gemm's ctypes signature: (handle, transa, transb, m, n, k, alpha, A,
    lda, B, ldb, beta, C, ldc); strided batched: a stride (in elements) after each of A, B
    and C's leading dimensions, and the batch count last."""
    stride = [ctypes.c_longlong] if strided else []
    function.restype = ctypes.c_int
    function.argtypes = ([ctypes.c_void_p] + [ctypes.c_int] * 5
                         + [ctypes.POINTER(scalar), ctypes.c_void_p, ctypes.c_int] + stride
                         + [ctypes.c_void_p, ctypes.c_int] + stride
                         + [ctypes.POINTER(scalar), ctypes.c_void_p, ctypes.c_int] + stride
                         + ([ctypes.c_int] if strided else []))


def _trial_products(stacked):
    """Check `matmul` against CuPy's products, on both streams, in both dtypes, for the
    layouts the package uses (of 2-d arrays, or of stacks); raise RuntimeError if one is off."""
    cupy = backend.xp()
    generator = numpy.random.RandomState(0)
    for dtype in (numpy.float64, numpy.float32):
        a = cupy.asarray(generator.randn(70, 50), dtype=dtype)
        b = cupy.asarray(generator.randn(50, 40), dtype=dtype)
        if stacked:
            a, b = cupy.stack([a, 2 * a, -a]), cupy.stack([b, b + 1, 3 * b])
        for left, right in ((a, b), (a.swapaxes(-1, -2).copy().swapaxes(-1, -2), b),
                            (a, b.swapaxes(-1, -2).copy().swapaxes(-1, -2)),
                            (a[..., :30], b[..., :30, :]),
                            (b.swapaxes(-1, -2), a.swapaxes(-1, -2))):
            expected = cupy.matmul(left, right)
            cupy.cuda.Device().synchronize()
            for stream in (cupy.cuda.get_current_stream(), backend.side_stream()):
                with stream:
                    product = gemm(left, right)
                stream.synchronize()
                error = float(cupy.abs(product - expected).max())
                tolerance = 100 * numpy.finfo(dtype).eps * float(cupy.abs(expected).max())
                if not error <= tolerance:
                    raise RuntimeError(f"trial product of shapes {left.shape} @ {right.shape} "
                                       f"off by {error}")


def _stored(array):
    """(operation, leading dimension, array) that present the transpose of `array`'s matrices
    (its last two axes) to a column-major BLAS: row-major rows are column-major columns. A
    copy where the strides allow neither."""
    size = array.itemsize
    rows, columns = array.shape[-2:]
    row_stride, column_stride = array.strides[-2:]
    if column_stride == size and row_stride >= max(1, columns) * size:
        return 0, row_stride // size, array  # as stored: the transpose, untransposed
    if row_stride == size and column_stride >= max(1, rows) * size:
        return 1, column_stride // size, array  # stored as itself: transpose it
    array = backend.array_module(array).ascontiguousarray(array)
    return 0, max(1, columns), array


def gemm_plan(left, right):
    """The column-major gemm that computes left @ right into a C-contiguous result C:
    (transa, transb, m, n, k, a, lda, b, ldb, ldc) for C^T = right^T left^T (op 0 = as
    stored, 1 = transposed; a and b the arrays whose memory the gemm reads). Stacks of
    matrices (3-d arrays) are planned by their last two axes."""
    rows, inner = left.shape[-2:]
    columns = right.shape[-1]
    left_operation, left_stride, left = _stored(left)
    right_operation, right_stride, right = _stored(right)
    return (right_operation, left_operation, columns, rows, inner, right, right_stride, left,
            left_stride, columns)


def gemm(left, right):
    """left @ right by cuBLAS's gemm (or strided batched gemm, for two stacks of one length)
    called directly, for products.matmul on a GPU: C = A B is computed as the column-major
    C^T = B^T A^T, with no copies of transposed views; stacks of one matrix (a pack of one
    run) by the plain gemm of a single run. None where it does not apply (no direct
    products, other dtypes or shapes, or stacks without batched products)."""
    if left.ndim == 3 and len(left) == 1 and right.ndim == 3 and len(right) == 1:
        product = gemm(left[0], right[0])  # a pack of one run: a single run's product
        return None if product is None else product[None]
    cublas = handles()
    if cublas is None or left.dtype != right.dtype or left.dtype.type not in _GEMM or not (
            left.size and right.size) or left.ndim != right.ndim or left.ndim not in (2, 3) or (
            left.shape[:-2] != right.shape[:-2]) or (left.ndim == 3 and not cublas["batched"]):
        return None
    xp = backend.xp()
    transa, transb, m, n, k, a, lda, b, ldb, ldc = gemm_plan(left, right)
    out = xp.empty(left.shape[:-1] + right.shape[-1:], dtype=left.dtype)
    library = cublas["library"]
    stream = xp.cuda.get_current_stream()
    handle = cublas["side_handle" if stream.ptr == backend.side_stream().ptr else "handle"]
    library.cublasSetStream_v2(handle, stream.ptr)
    library.cublasSetPointerMode_v2(handle, 0)  # scalars from the host
    name, batched_name, scalar = _GEMM[left.dtype.type]
    one, zero = ctypes.byref(scalar(1.0)), ctypes.byref(scalar(0.0))
    if left.ndim == 2:
        status = getattr(library, name)(handle, transa, transb, m, n, k, one, a.data.ptr, lda,
                                        b.data.ptr, ldb, zero, out.data.ptr, ldc)
    else:
        size = left.itemsize
        status = getattr(library, batched_name)(
            handle, transa, transb, m, n, k, one, a.data.ptr, lda, a.strides[0] // size,
            b.data.ptr, ldb, b.strides[0] // size, zero, out.data.ptr, ldc,
            out.strides[0] // size, len(out))
    if status:
        raise RuntimeError(f"cuBLAS gemm failed with status {status}")
    return out


_GEMM = {numpy.float64: ("cublasDgemm_v2", "cublasDgemmStridedBatched", ctypes.c_double),
         numpy.float32: ("cublasSgemm_v2", "cublasSgemmStridedBatched", ctypes.c_float)}
