"""cublas.py on the CPU, through stand-ins for the GPU: `CublasStandIn`, a libcublas whose
gemm reads and writes memory through the raw addresses it is given, with cuBLAS's
column-major meaning of the operations, sizes, leading dimensions, scalars and batch
strides (so that a wrong plan gives a wrong answer, or cuBLAS's error status); and
`CupyStandIn`, a CuPy whose arrays (`DeviceArray`) are NumPy arrays, host memory standing
for the GPU's, with `data.ptr` the address of their first element. A test installs them as
the backend in a fresh `backend._state` (the `gpu` fixture); `handles()` then finds the
stand-in library among the lines of a stand-in /proc/self/maps."""
import ctypes
import functools
import io
import itertools
import re

import numpy
import pytest
from numpy.lib.array_utils import byte_bounds
from numpy.lib.stride_tricks import as_strided

from gaitprop.arrays import backend
from gaitprop.arrays import products
from gaitprop.arrays import cublas

# cuBLAS's status codes (cublasStatus_t) and operations (cublasOperation_t).
SUCCESS, NOT_INITIALIZED, INVALID_VALUE, EXECUTION_FAILED = 0, 1, 7, 13
OPERATIONS = (0, 1, 2)  # N, T, C (C is T for real matrices)
HOST_POINTERS = 0  # CUBLAS_POINTER_MODE_HOST
MAPS = "/usr/local/cuda/lib64/libcublas.so.12"
VERSION = 120905
HANDLES = itertools.count(0x7000, 0x10)  # the handles of every stand-in library: distinct


# ----------------------------------------------------------------------------- stand-in cuBLAS

class CFunction:
    """A function of the stand-in library, called as ctypes calls a foreign function: its
    `argtypes` must have been declared (undeclared, ctypes would pass 64-bit addresses as C
    ints), as many arguments as declared, each converted by its declared type (an integer
    wraps to the declared width; a pointer must point to the declared type: byref of a
    c_float where a POINTER(c_double) is declared is a TypeError, as in ctypes)."""

    def __init__(self, body):
        self.body, self.argtypes, self.restype = body, None, ctypes.c_int

    def __call__(self, *arguments):
        name = self.body.__name__
        if self.argtypes is None:
            raise TypeError(f"{name}: argtypes were not declared")
        if len(arguments) != len(self.argtypes):
            raise TypeError(f"{name} takes {len(self.argtypes)} arguments "
                            f"({len(arguments)} given)")
        converted = []
        for argument, kind in zip(arguments, self.argtypes):
            kind.from_param(argument)  # TypeError where ctypes refuses it
            if issubclass(kind, ctypes._Pointer):
                converted.append(ctypes.cast(argument, kind))
            else:
                if isinstance(argument, ctypes._SimpleCData):
                    argument = argument.value
                converted.append(kind(argument).value or 0)  # c_void_p(0).value is None
        return self.body(*converted)


class DeviceMemory:
    """The allocations of the stand-in GPU: the host buffers of every DeviceArray (kept alive
    for the test, so that no address is reused). A gemm that would read or write outside
    them fails (cuBLAS on a GPU: an illegal address) instead of touching stray memory."""

    def __init__(self):
        self.buffers = {}

    def register(self, array):
        while isinstance(array.base, numpy.ndarray):
            array = array.base
        self.buffers[byte_bounds(array)] = array

    def holds(self, low, high):
        return any(start <= low and high <= end for start, end in self.buffers)


class CublasStandIn:
    """A libcublas on the host: the functions cublas.py calls (ctypes-style `CFunction`s),
    the handles it created (each with its stream and pointer mode), and `calls`: (function,
    handle, stream) of each product, in order. `mistake(name, handle, result)` may alter a
    product's result before it is written (a library that computes a wrong answer)."""

    def __init__(self, memory, version=VERSION, create_status=SUCCESS, version_status=SUCCESS):
        self.memory, self.version = memory, version
        self.create_status, self.version_status = create_status, version_status
        self.handles, self.destroyed, self.calls = {}, [], []
        self.mistake = None
        for name, body in (("cublasCreate_v2", self.create), ("cublasDestroy_v2", self.destroy),
                           ("cublasGetVersion_v2", self.get_version),
                           ("cublasSetStream_v2", self.set_stream),
                           ("cublasSetPointerMode_v2", self.set_pointer_mode),
                           ("cublasDgemm_v2", self.dgemm), ("cublasSgemm_v2", self.sgemm),
                           ("cublasDgemmStridedBatched", self.dgemm_strided_batched),
                           ("cublasSgemmStridedBatched", self.sgemm_strided_batched)):
            setattr(self, name, CFunction(body))

    def new_handle(self):
        handle = next(HANDLES)
        self.handles[handle] = {"stream": 0, "pointer_mode": HOST_POINTERS}
        return handle

    def create(self, handle):
        if self.create_status:
            return self.create_status
        handle[0] = self.new_handle()
        return SUCCESS

    def destroy(self, handle):
        if handle not in self.handles:
            return NOT_INITIALIZED
        del self.handles[handle]
        self.destroyed.append(handle)
        return SUCCESS

    def get_version(self, handle, version):
        if self.version_status or handle not in self.handles:
            return self.version_status or NOT_INITIALIZED
        version[0] = self.version
        return SUCCESS

    def set_stream(self, handle, stream):
        if handle not in self.handles:
            return NOT_INITIALIZED
        self.handles[handle]["stream"] = stream
        return SUCCESS

    def set_pointer_mode(self, handle, mode):
        if handle not in self.handles:
            return NOT_INITIALIZED
        self.handles[handle]["pointer_mode"] = mode
        return SUCCESS

    def dgemm(self, handle, transa, transb, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc):
        return self.products("cublasDgemm_v2", numpy.float64, handle, transa, transb, m, n, k,
                             alpha, a, lda, 0, b, ldb, 0, beta, c, ldc, 0, 1)

    def sgemm(self, handle, transa, transb, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc):
        return self.products("cublasSgemm_v2", numpy.float32, handle, transa, transb, m, n, k,
                             alpha, a, lda, 0, b, ldb, 0, beta, c, ldc, 0, 1)

    def dgemm_strided_batched(self, handle, transa, transb, m, n, k, alpha, a, lda, stride_a,
                              b, ldb, stride_b, beta, c, ldc, stride_c, count):
        return self.products("cublasDgemmStridedBatched", numpy.float64, handle, transa,
                             transb, m, n, k, alpha, a, lda, stride_a, b, ldb, stride_b, beta,
                             c, ldc, stride_c, count)

    def sgemm_strided_batched(self, handle, transa, transb, m, n, k, alpha, a, lda, stride_a,
                              b, ldb, stride_b, beta, c, ldc, stride_c, count):
        return self.products("cublasSgemmStridedBatched", numpy.float32, handle, transa,
                             transb, m, n, k, alpha, a, lda, stride_a, b, ldb, stride_b, beta,
                             c, ldc, stride_c, count)

    def products(self, name, dtype, handle, transa, transb, m, n, k, alpha, a, lda, stride_a,
                 b, ldb, stride_b, beta, c, ldc, stride_c, count):
        """C_i = alpha op(A_i) op(B_i) + beta C_i for i < count, column-major: op(A) m x k,
        op(B) k x n, C m x n; element (row, column) of a matrix stored at `address` with
        leading dimension ld is at address + (row + column * ld) * itemsize, and matrix i of
        a batch `stride` elements further on. cuBLAS's argument checks and status codes."""
        if handle not in self.handles:
            return NOT_INITIALIZED
        if (transa not in OPERATIONS or transb not in OPERATIONS or min(m, n, k, count) < 0
                or lda < max(1, k if transa else m) or ldb < max(1, n if transb else k)
                or ldc < max(1, m)):
            return INVALID_VALUE
        state = self.handles[handle]
        self.calls.append((name, handle, state["stream"]))
        if state["pointer_mode"] != HOST_POINTERS:
            return EXECUTION_FAILED  # the scalars would be read as device addresses
        if m == 0 or n == 0 or count == 0:
            return SUCCESS
        left = self.matrices(a, (k, m) if transa else (m, k), lda, stride_a, count, dtype)
        right = self.matrices(b, (n, k) if transb else (k, n), ldb, stride_b, count, dtype)
        out = self.matrices(c, (m, n), ldc, stride_c, count, dtype)
        if left is None or right is None or out is None:
            return EXECUTION_FAILED
        left = left.swapaxes(-1, -2) if transa else left
        right = right.swapaxes(-1, -2) if transb else right
        result = alpha.contents.value * numpy.matmul(left, right)
        if beta.contents.value != 0:  # beta == 0: C is not read (it may hold NaN)
            result += beta.contents.value * out
        if self.mistake is not None:
            result = self.mistake(name, handle, result)
        out[...] = result
        return SUCCESS

    def matrices(self, address, shape, ld, stride, count, dtype):
        """The `count` column-major matrices of `shape` at `address` (a writable view of
        host memory), or None if any element lies outside the allocations."""
        rows, columns = shape
        size = numpy.dtype(dtype).itemsize
        offsets = [0, (rows - 1) * size, (columns - 1) * ld * size, (count - 1) * stride * size]
        low = address + sum(min(0, offset) for offset in offsets)
        high = address + sum(max(0, offset) for offset in offsets) + size
        if not (rows and columns):
            return numpy.zeros((count, rows, columns), dtype)
        if not self.memory.holds(low, high):
            return None
        flat = numpy.frombuffer((ctypes.c_char * (high - low)).from_address(low), dtype)
        return as_strided(flat[(address - low) // size:], shape=(count, rows, columns),
                          strides=(stride * size, size, ld * size))


# ----------------------------------------------------------------------------- stand-in CuPy

class DeviceArray:
    """A stand-in CuPy array: a NumPy array `host`, its memory standing for the GPU's;
    `data.ptr` is the address of its first element (as CuPy's MemoryPointer of a view).
    Operations give new DeviceArrays, views stay views; no implicit conversion to NumPy."""

    def __init__(self, cupy, host):
        self.cupy, self.host = cupy, host
        cupy.memory.register(host)

    shape = property(lambda self: self.host.shape)
    strides = property(lambda self: self.host.strides)
    dtype = property(lambda self: self.host.dtype)
    itemsize = property(lambda self: self.host.itemsize)
    ndim = property(lambda self: self.host.ndim)
    size = property(lambda self: self.host.size)
    data = property(lambda self: Pointer(self.host.ctypes.data))

    def __len__(self):
        return len(self.host)

    def __getitem__(self, key):
        return self.cupy.wrap(self.host[key])

    def __float__(self):
        return float(self.host)

    def swapaxes(self, first, second):
        return self.cupy.wrap(self.host.swapaxes(first, second))

    def copy(self):
        return self.cupy.wrap(self.host.copy())

    def max(self):
        return self.cupy.wrap(numpy.asarray(self.host.max()))

    def get(self):
        return self.host.copy()

    def _operate(self, operation, other):
        return self.cupy.wrap(operation(self.host, other.host if isinstance(
            other, DeviceArray) else other))

    def __neg__(self):
        return self.cupy.wrap(-self.host)

    def __add__(self, other):
        return self._operate(numpy.add, other)

    def __sub__(self, other):
        return self._operate(numpy.subtract, other)

    def __mul__(self, other):
        return self._operate(numpy.multiply, other)

    __radd__, __rmul__ = __add__, __mul__


class Pointer:
    """CuPy's MemoryPointer, as far as cublas.py reads it."""

    def __init__(self, ptr):
        self.ptr = ptr


class Stream:
    """A stand-in cupy.cuda.Stream: `with stream:` makes it the current stream; the events
    it records (in order of recording) are those other streams may wait for."""

    def __init__(self, cupy, ptr):
        self.cupy, self.ptr, self.waited = cupy, ptr, []

    def record(self):
        return ("event of", self.ptr)

    def wait_event(self, event):
        self.waited.append(event)

    def __enter__(self):
        self.cupy.streams.append(self)
        return self

    def __exit__(self, *exception):
        self.cupy.streams.pop()
        return False

    def synchronize(self):
        pass


class Namespace:
    def __init__(self, **attributes):
        self.__dict__.update(attributes)


class CupyStandIn:
    """A stand-in CuPy module: the array functions cublas.py and products.matmul call, the
    current stream (the null stream, address 0, until another is entered), `cuda.Stream`,
    and CuPy's own cuBLAS handle, made by `library` (whose version it reports)."""
    __name__ = "cupy"

    def __init__(self):
        self.memory = DeviceMemory()
        self.library = CublasStandIn(self.memory)
        self.streams = [Stream(self, 0)]
        handle, addresses = self.library.new_handle(), iter(range(0x5000, 0x6000, 0x10))
        self.cuda = Namespace(
            get_current_stream=lambda: self.streams[-1],
            Stream=lambda non_blocking=False: Stream(self, next(addresses)),
            Device=lambda *device: Namespace(synchronize=lambda: None),
            device=Namespace(get_cublas_handle=lambda: handle),
            cublas=Namespace(getVersion=lambda handle: self.library.version))

    def wrap(self, host):
        return DeviceArray(self, host)

    def asarray(self, array, dtype=None):
        host = array.host if isinstance(array, DeviceArray) else array
        return self.wrap(numpy.array(host, dtype=dtype, order="C"))

    def ascontiguousarray(self, array):
        return self.wrap(numpy.ascontiguousarray(array.host))

    def broadcast_to(self, array, shape):
        return self.wrap(numpy.broadcast_to(array.host, shape))

    def stack(self, arrays):
        return self.wrap(numpy.stack([array.host for array in arrays]))

    def matmul(self, left, right):
        return self.wrap(numpy.matmul(left.host, right.host))

    def abs(self, array):
        return self.wrap(numpy.abs(array.host))

    def empty(self, shape, dtype):
        return self.wrap(numpy.full(shape, numpy.nan, dtype=dtype))  # unwritten: NaN


def maps_text(*paths):
    """Lines of /proc/self/maps mapping each path (and libcublasLt and an anonymous map)."""
    lines = ["7f0000000000-7f0000001000 r-xp 00000000 08:01 11 /opt/cuda/libcublasLt.so.12",
             "7f0000001000-7f0000002000 rw-p 00000000 00:00 0"]
    lines += [f"7f00000{k}3000-7f00000{k}4000 r-xp 00000000 08:01 1{k} {path}"
              for k, path in enumerate(paths)]
    return "\n".join(lines) + "\n"


@pytest.fixture
def gpu(monkeypatch):
    """The stand-in GPU for one test: CupyStandIn as backend.xp() in a fresh backend._state
    (no cuBLAS handles, no side stream yet); /proc/self/maps (as cublas.py opens it) maps
    its library at MAPS, and matching_library loads the stand-ins by path (`libraries`)."""
    cupy = CupyStandIn()
    cupy.libraries = {MAPS: cupy.library}
    cupy.maps = maps_text(MAPS)
    monkeypatch.setattr(backend, "_state", {"xp": cupy, "dtype": numpy.float64, "device": 0})

    def open_maps(path, encoding=None):
        assert path == "/proc/self/maps"
        return io.StringIO(cupy.maps)
    monkeypatch.setattr(cublas, "open", open_maps, raising=False)
    monkeypatch.setattr(cublas, "matching_library", functools.partial(
        cublas.matching_library, load=lambda path: cupy.libraries[path]))
    return cupy


@pytest.fixture
def direct(gpu):
    """The stand-in GPU with its direct products (handles() found them, trials passed)."""
    assert cublas.handles() is not None, "the trial products failed (see stderr)"
    gpu.library.calls.clear()
    return gpu


# ----------------------------------------------------------------------------- the stand-in

def test_the_stand_in_gemm_reads_memory_as_cublas_does(gpu):
    """Checked by hand against the column-major definition: A stored with padding (lda > m),
    B transposed or not, alpha and beta; cuBLAS's checks of sizes, handles and addresses."""
    library, size = gpu.library, 8
    handle = library.new_handle()
    for name, _, scalar in cublas._GEMM.values():
        cublas._declare_gemm(getattr(library, name), scalar, strided=False)
    a = gpu.asarray(numpy.arange(12.0))  # column-major 3 x 3, lda 4: columns 0-2, 4-6, 8-10
    b = gpu.asarray(numpy.arange(6.0) - 2)  # stored 2 x 3 (ldb 2), used transposed: 3 x 2
    c = gpu.asarray(numpy.ones(6))
    alpha, beta = ctypes.c_double(2.0), ctypes.c_double(0.5)
    status = library.cublasDgemm_v2(handle, 0, 1, 3, 2, 3, ctypes.byref(alpha), a.data.ptr, 4,
                                     b.data.ptr, 2, ctypes.byref(beta), c.data.ptr, 3)
    matrix_a = numpy.array([[0, 4, 8], [1, 5, 9], [2, 6, 10]], dtype=float)
    matrix_b = numpy.array([[-2, 0, 2], [-1, 1, 3]], dtype=float).T
    assert status == SUCCESS
    assert c.get().tolist() == (2 * matrix_a @ matrix_b + 0.5).T.ravel().tolist()
    assert library.calls == [("cublasDgemm_v2", handle, 0)]
    # the same memory read with transb N: B is 2 x 3 (ldb 2), A's first two columns
    other = gpu.asarray(numpy.zeros(9))
    assert library.cublasDgemm_v2(handle, 0, 0, 3, 3, 2, ctypes.byref(alpha), a.data.ptr, 4,
                                  b.data.ptr, 2, ctypes.byref(beta), other.data.ptr, 3) == 0
    matrix_b = numpy.array([[-2, 0, 2], [-1, 1, 3]], dtype=float)
    assert other.get().tolist() == (2 * matrix_a[:, :2] @ matrix_b).T.ravel().tolist()
    # cuBLAS's argument checks, an address outside the allocations, an unknown handle
    call = functools.partial(library.cublasDgemm_v2, handle, 0, 1, 3, 2, 3,
                             ctypes.byref(alpha))
    assert call(a.data.ptr, 2, b.data.ptr, 2, ctypes.byref(beta), c.data.ptr, 3) == INVALID_VALUE
    assert call(a.data.ptr, 4, b.data.ptr, 1, ctypes.byref(beta), c.data.ptr, 3) == INVALID_VALUE
    assert call(a.data.ptr, 4, b.data.ptr, 2, ctypes.byref(beta), c.data.ptr, 2) == INVALID_VALUE
    assert call(a.data.ptr + 8 * size, 4, b.data.ptr, 2, ctypes.byref(beta), c.data.ptr,
                3) == EXECUTION_FAILED
    assert library.cublasDgemm_v2(handle + 1, 0, 1, 3, 2, 3, ctypes.byref(alpha), a.data.ptr,
                                  4, b.data.ptr, 2, ctypes.byref(beta), c.data.ptr,
                                  3) == NOT_INITIALIZED
    # nothing to compute (m = 0), no inner dimension (k = 0: C = beta C), device scalars
    assert library.cublasDgemm_v2(handle, 0, 1, 0, 2, 3, ctypes.byref(alpha), a.data.ptr, 4,
                                  b.data.ptr, 2, ctypes.byref(beta), c.data.ptr, 3) == SUCCESS
    before = c.get()
    assert library.cublasDgemm_v2(handle, 0, 1, 3, 2, 0, ctypes.byref(alpha), a.data.ptr, 4,
                                  b.data.ptr, 2, ctypes.byref(beta), c.data.ptr, 3) == SUCCESS
    assert c.get().tolist() == (0.5 * before).tolist()
    library.cublasSetPointerMode_v2.argtypes = [ctypes.c_void_p, ctypes.c_int]
    assert library.cublasSetPointerMode_v2(handle, 1) == SUCCESS
    assert call(a.data.ptr, 4, b.data.ptr, 2, ctypes.byref(beta), c.data.ptr,
                3) == EXECUTION_FAILED
    with pytest.raises(TypeError, match="takes 14 arguments"):
        call(a.data.ptr, 4, b.data.ptr, 2, ctypes.byref(beta), c.data.ptr)
    with pytest.raises(TypeError, match="LP_c_double"):  # a float where a double is declared
        call(a.data.ptr, 4, b.data.ptr, 2, ctypes.byref(ctypes.c_float(0)), c.data.ptr, 3)
    with pytest.raises(TypeError, match="argtypes were not declared"):
        library.cublasDgemmStridedBatched(handle, 0, 0, 1, 1, 1)


def test_the_stand_in_strided_batched_gemm_steps_by_the_batch_strides(gpu):
    library = gpu.library
    handle = library.new_handle()
    cublas._declare_gemm(library.cublasSgemmStridedBatched, ctypes.c_float, strided=True)
    generator = numpy.random.RandomState(1)
    a = gpu.asarray(generator.randn(3 * 2 * 4 + 5), dtype=numpy.float32)  # A_i: 2 x 4, ld 2
    b = gpu.asarray(generator.randn(4 * 3), dtype=numpy.float32)  # one B for all: stride 0
    c = gpu.asarray(numpy.zeros(3 * 7 * 3), dtype=numpy.float32)  # C_i: 2 x 3, ldc 7
    one, zero = ctypes.byref(ctypes.c_float(1)), ctypes.byref(ctypes.c_float(0))
    assert library.cublasSgemmStridedBatched(handle, 0, 0, 2, 3, 4, one, a.data.ptr, 2, 10,
                                             b.data.ptr, 4, 0, zero, c.data.ptr, 7, 21, 3) == 0
    host_a, host_b, host_c = a.get(), b.get(), c.get()
    for i in range(3):
        matrix_a = host_a[10 * i:10 * i + 8].reshape(4, 2).T
        matrix_c = host_c[21 * i:21 * i + 21].reshape(3, 7).T
        numpy.testing.assert_allclose(matrix_c[:2], matrix_a @ host_b.reshape(3, 4).T,
                                      rtol=1e-6)
        assert not matrix_c[2:].any()  # below m, within ldc: untouched
    assert library.cublasSgemmStridedBatched(handle, 0, 0, 2, 3, 4, one, a.data.ptr, 2, 10,
                                             b.data.ptr, 4, 0, zero, c.data.ptr, 7, 21,
                                             4) == EXECUTION_FAILED  # A_3 beyond its buffer


# ----------------------------------------------------------------------------- plans and products

ROWS, INNER, COLUMNS = 9, 7, 5
LAYOUTS = ("c-ordered", "left transposed view", "right transposed view",
           "both transposed views", "column slices", "row slice", "sliced transposed views",
           "broadcast rows", "one row", "one inner", "one column", "one matrix for each run")


def operands(xp, layout, runs=None, dtype=numpy.float64):
    """(left, right) of shapes (runs, ROWS, INNER) and (runs, INNER, COLUMNS) (2-d where
    `runs` is None) in a layout the package makes: C-ordered, swapaxes(-1, -2) views, column
    slices ([..., :c], forward(columns)), row slices, bias rows broadcast over the rows
    (stride-0 rows), a single row (a mean kept as a row) or column, the same matrix for each
    run of a stack (stride-0 stack: not made by the package, valid for cuBLAS)."""
    generator = numpy.random.RandomState(sum(map(ord, layout)))
    lead = () if runs is None else (runs,)

    def new(*shape):
        return xp.asarray(generator.randn(*lead, *shape), dtype=dtype)
    r, k, c = ROWS, INNER, COLUMNS
    if layout == "c-ordered":
        return new(r, k), new(k, c)
    if layout == "left transposed view":
        return new(k, r).swapaxes(-1, -2), new(k, c)
    if layout == "right transposed view":
        return new(r, k), new(c, k).swapaxes(-1, -2)
    if layout == "both transposed views":
        return new(k, r).swapaxes(-1, -2), new(c, k).swapaxes(-1, -2)
    if layout == "column slices":
        return new(r, k + 4)[..., :k], new(k, c + 3)[..., :c]
    if layout == "row slice":
        return new(r + 2, k)[..., 1:r + 1, :], new(k + 6, c)[..., :k, :]
    if layout == "sliced transposed views":
        return new(k, r + 2)[..., :r].swapaxes(-1, -2), new(c + 3, k)[..., 1:c + 1, :].swapaxes(
            -1, -2)
    if layout == "broadcast rows":
        return (xp.broadcast_to(new(1, k), lead + (r, k)),
                xp.broadcast_to(new(1, c), lead + (k, c)))
    if layout == "one row":
        return new(1, k), new(c, k).swapaxes(-1, -2)
    if layout == "one inner":
        return new(1, r).swapaxes(-1, -2), new(c, 1).swapaxes(-1, -2)
    if layout == "one column":
        return new(r, k), new(k, c)[..., 2:3]
    assert layout == "one matrix for each run"
    left, right = new(r, k), xp.asarray(generator.randn(k, c), dtype=dtype)
    return left, right if runs is None else xp.broadcast_to(right, lead + (k, c))


def assert_product(product, left, right):
    expected = numpy.matmul(left.host, right.host)
    assert product.shape == expected.shape and product.dtype == expected.dtype
    assert product.host.flags.c_contiguous
    eps = numpy.finfo(expected.dtype).eps
    numpy.testing.assert_allclose(product.host, expected, rtol=0,
                                  atol=20 * eps * INNER * numpy.abs(expected).max())


@pytest.mark.parametrize("dtype", [numpy.float64, numpy.float32], ids=["float64", "float32"])
@pytest.mark.parametrize("runs", [None, 1, 3], ids=["matrices", "stacks of one", "stacks"])
@pytest.mark.parametrize("layout", LAYOUTS)
def test_gemm_equals_matmul(direct, layout, runs, dtype):
    """Each layout, 2-d, a pack of one (the single product) and a pack of three (the strided
    batched product), in both dtypes: NumPy's product, as one call of the stand-in."""
    left, right = operands(direct, layout, runs, dtype)
    product = cublas.gemm(left, right)
    assert_product(product, left, right)
    name = cublas._GEMM[dtype][1 if runs == 3 else 0]
    assert direct.library.calls == [(name, cublas.handles()["handle"], 0)]


def strided(xp, generator, shape, dtype):
    """A random array of `shape` (matrices, or a stack of them) in random strides: its
    matrices row-major, column-major, padded, every other element, or broadcast along rows
    or columns, an axis of length one with any stride, the stack's matrices apart, or one."""
    rows, columns = shape[-2:]
    pad = generator.randint(3)
    row_stride, column_stride = [(columns + pad, 1), (1, rows + pad), (2 * columns + pad, 2),
                                 (0, 1), (1, 0)][generator.randint(5)]
    row_stride = generator.choice([0, 1, 3, 50]) if rows == 1 else row_stride
    column_stride = generator.choice([0, 1, 3, 50]) if columns == 1 else column_stride
    extent = (rows - 1) * row_stride + (columns - 1) * column_stride + 1
    strides = (row_stride, column_stride)
    if len(shape) == 3:
        strides = (generator.choice([0, extent, extent + 2]),) + strides
    buffer = xp.asarray(generator.randn((shape[0] - 1) * strides[0] + extent if len(
        shape) == 3 else extent), dtype=dtype)
    size = numpy.dtype(dtype).itemsize
    return xp.wrap(as_strided(buffer.host, shape, [stride * size for stride in strides]))


@pytest.mark.parametrize("dtype", [numpy.float64, numpy.float32], ids=["float64", "float32"])
def test_gemm_equals_matmul_for_any_strides(direct, dtype):
    """Products of random shapes (sides of 1, 2, 3 or 6) in random strides (`strided`):
    NumPy's product every time."""
    generator = numpy.random.RandomState(4)
    for _ in range(300):
        runs = [(), (1,), (3,)][generator.randint(3)]
        rows, inner, columns = generator.choice([1, 2, 3, 6], 3)
        left = strided(direct, generator, runs + (rows, inner), dtype)
        right = strided(direct, generator, runs + (inner, columns), dtype)
        assert_product(cublas.gemm(left, right), left, right)


def test_gemm_plan_reads_views_in_place_and_copies_broadcast_rows():
    """(transa, transb, m, n, k, a, lda, b, ldb, ldc) of C^T = right^T left^T: C-ordered and
    sliced matrices as stored (op 0, ld their row stride), transposed views transposed (op 1,
    ld their column stride), never copied; broadcast rows (stride 0) copied, C-ordered."""
    def plan(layout, runs=None):
        left, right = (operand.host for operand in operands(CupyStandIn(), layout, runs))
        transa, transb, m, n, k, a, lda, b, ldb, ldc = cublas.gemm_plan(left, right)
        assert (m, n, k, ldc) == (right.shape[-1], left.shape[-2], left.shape[-1], m)
        return transa, transb, a is right, lda, b is left, ldb
    r, k, c = ROWS, INNER, COLUMNS
    assert plan("c-ordered") == (0, 0, True, c, True, k)
    assert plan("c-ordered", runs=3) == (0, 0, True, c, True, k)
    assert plan("left transposed view") == (0, 1, True, c, True, r)
    assert plan("right transposed view") == (1, 0, True, k, True, k)
    assert plan("both transposed views", runs=3) == (1, 1, True, k, True, r)
    assert plan("column slices") == (0, 0, True, c + 3, True, k + 4)
    assert plan("row slice", runs=1) == (0, 0, True, c, True, k)
    assert plan("sliced transposed views") == (1, 1, True, k, True, r + 2)
    assert plan("broadcast rows") == (0, 0, False, c, False, k)
    assert plan("broadcast rows", runs=3) == (0, 0, False, c, False, k)
    assert plan("one row") == (1, 0, True, k, True, k)
    assert plan("one column") == (0, 0, True, c, True, k)
    assert plan("one matrix for each run", runs=3) == (0, 0, True, c, True, k)
    left, right = (operand.host for operand in operands(CupyStandIn(), "broadcast rows"))
    _, _, _, _, _, a, _, b, _, _ = cublas.gemm_plan(left, right)
    assert a.flags.c_contiguous and (a == right).all() and (b == left).all()


def test_gemm_plan_reads_every_layout():
    """The column-major gemm that products.matmul hands to cuBLAS, carried out here on the
    memory it names (as strided NumPy views), is the row-major product for C-ordered,
    transposed, column-sliced and row-strided operands."""
    def column_major(array, rows, columns, leading):
        return as_strided(array, shape=(rows, columns),
                          strides=(array.itemsize, leading * array.itemsize))
    generator = numpy.random.RandomState(0)
    a, b = generator.randn(70, 50), generator.randn(50, 40)
    rows, weights = generator.randn(60, 784), generator.randn(784, 784)
    for left, right in [(a, b), (a.T.copy().T, b), (a, b.T.copy().T), (a[:, :30], b[:30]),
                        (b.T, a.T), (rows[:, :500], weights[:500, :200]), (rows.T, rows),
                        (rows, weights.T), (weights[:, :10].T, rows.T), (a[::2], b),
                        (a[:, ::2], b[::2])]:
        transa, transb, m, n, k, first, lda, second, ldb, ldc = cublas.gemm_plan(left, right)
        op_a = column_major(first, *((m, k) if transa == 0 else (k, m)), lda)
        op_b = column_major(second, *((k, n) if transb == 0 else (n, k)), ldb)
        product = (op_a if transa == 0 else op_a.T) @ (op_b if transb == 0 else op_b.T)
        assert ldc == m and product.shape == (m, n)
        numpy.testing.assert_allclose(product.T, left @ right, rtol=1e-12, atol=1e-12)


def mutated_plan(position, change):
    original = cublas.gemm_plan

    def plan(left, right):
        steps = list(original(left, right))
        steps[position] = change(steps[position])
        return tuple(steps)
    return plan


@pytest.mark.parametrize("position, change", [
    (0, lambda operation: 1 - operation), (1, lambda operation: 1 - operation),
    (6, lambda ld: ld - 1), (8, lambda ld: ld + 1), (9, lambda ld: ld + 1),
    (2, lambda m: m - 1)], ids=["transa", "transb", "lda", "ldb", "ldc", "m"])
def test_a_wrong_plan_gives_a_wrong_product(direct, monkeypatch, position, change):
    """The stand-in computes from the plan, not from the arrays: any plan step changed makes
    the product wrong, or cuBLAS fail (an element outside the operands' memory)."""
    generator = numpy.random.RandomState(3)
    left = direct.asarray(generator.randn(6, 9))[:, :6]
    right = direct.asarray(generator.randn(6, 9))[:, 2:8]
    assert_product(cublas.gemm(left, right), left, right)
    monkeypatch.setattr(cublas, "gemm_plan", mutated_plan(position, change))
    try:
        product = cublas.gemm(left, right)
    except RuntimeError as error:
        assert str(error) == f"cuBLAS gemm failed with status {EXECUTION_FAILED}"
    else:
        with pytest.raises(AssertionError):
            assert_product(product, left, right)


def test_a_wrong_batch_stride_gives_a_wrong_product(direct, monkeypatch):
    left, right = operands(direct, "c-ordered", runs=3)
    function = direct.library.cublasDgemmStridedBatched
    body = function.body

    def shifted(*arguments):  # A's batch stride one element short
        return body(*arguments[:9], arguments[9] - 1, *arguments[10:])
    shifted.__name__ = body.__name__
    monkeypatch.setattr(function, "body", shifted)
    with pytest.raises(AssertionError):
        assert_product(cublas.gemm(left, right), left, right)


def test_gemm_picks_the_handle_of_the_current_stream(direct, monkeypatch):
    """The side stream (backend.side_stream, Branch's) takes the side handle, any other
    stream CuPy's; each product sets its handle's stream first, with scalars from the host."""
    monkeypatch.delenv("GAITPROP_SIDE_STREAM", raising=False)
    left, right = operands(direct, "c-ordered")
    handle, side_handle = cublas.handles()["handle"], cublas.handles()["side_handle"]
    assert side_handle != handle
    other = direct.cuda.Stream(non_blocking=True)
    assert_product(cublas.gemm(left, right), left, right)
    with backend.side_stream() as side:
        assert_product(cublas.gemm(left, right), left, right)
    with other:
        cublas.gemm(left, right)
    with backend.Branch() as branch:  # Branch's stream, as the package uses it
        cublas.gemm(left, right)
    branch.join()
    assert side.waited == [("event of", 0)] and direct.streams[0].waited == [("event of",
                                                                              side.ptr)]
    assert direct.library.calls == [("cublasDgemm_v2", handle, 0),
                                    ("cublasDgemm_v2", side_handle, side.ptr),
                                    ("cublasDgemm_v2", handle, other.ptr),
                                    ("cublasDgemm_v2", side_handle, side.ptr)]


def test_backend_matmul_takes_the_direct_products_where_they_apply(direct):
    left, right = operands(direct, "right transposed view", runs=3)
    assert_product(products.matmul(left, right), left, right)
    assert len(direct.library.calls) == 1
    numbers = direct.asarray(numpy.arange(6).reshape(2, 3))
    assert products.matmul(numbers, numbers.swapaxes(-1, -2)).get().tolist() == [[5, 14],
                                                                                [14, 50]]
    assert len(direct.library.calls) == 1  # integers: CuPy's matmul


@pytest.mark.parametrize("case", ["dtypes differ", "integers", "no rows", "vector", "4-d",
                                  "stacks of two lengths", "stack and matrix"])
def test_gemm_declines_what_it_does_not_compute(direct, case):
    xp = direct

    def new(*shape, dtype=numpy.float64):
        return xp.asarray(numpy.ones(shape), dtype=dtype)
    left, right = {
        "dtypes differ": (new(3, 4), new(4, 2, dtype=numpy.float32)),
        "integers": (new(3, 4, dtype=numpy.int64), new(4, 2, dtype=numpy.int64)),
        "no rows": (new(0, 4), new(4, 2)),
        "vector": (new(4), new(4, 2)),
        "4-d": (new(2, 2, 3, 4), new(2, 2, 4, 2)),
        "stacks of two lengths": (new(3, 3, 4), new(2, 4, 2)),
        "stack and matrix": (new(1, 3, 4), new(4, 2))}[case]
    assert cublas.gemm(left, right) is None
    assert direct.library.calls == []


def test_gemm_raises_when_cublas_fails(direct):
    left, right = operands(direct, "c-ordered")
    direct.library.cublasDestroy_v2(cublas.handles()["handle"])
    with pytest.raises(RuntimeError, match=f"cuBLAS gemm failed with status {NOT_INITIALIZED}"):
        cublas.gemm(left, right)


# ----------------------------------------------------------------------------- handles

def test_handles_take_the_library_of_cupys_version_and_pass_the_trial_products(gpu, capsys):
    """Two libcublas mapped (and libcublasLt): the one of CuPy's version, with CuPy's handle
    and one of its own for the side stream; every trial product (both dtypes, five layouts,
    both streams, matrices then stacks) passes through the stand-in; found once."""
    old = CublasStandIn(gpu.memory, version=110802)
    gpu.libraries["/opt/old/libcublas.so.11"] = old
    gpu.maps = maps_text("/opt/old/libcublas.so.11", MAPS, MAPS)
    direct = cublas.handles()
    assert direct is not None, capsys.readouterr().err
    library = gpu.library
    handle = gpu.cuda.device.get_cublas_handle()
    assert direct == {"library": library, "handle": handle,
                      "side_handle": direct["side_handle"], "batched": True}
    assert direct["side_handle"] in library.handles and direct["side_handle"] != handle
    assert len(old.destroyed) == 1 and not old.handles  # the handle that asked its version
    side = backend.side_stream().ptr
    expected = {(name, handle, 0) for names in cublas._GEMM.values() for name in names[:2]}
    expected |= {(name, direct["side_handle"], side) for name, _, _ in expected}
    assert set(library.calls) == expected and len(library.calls) == 2 * 2 * 5 * 2
    assert all(function.argtypes for function in vars(library).values()
               if isinstance(function, CFunction))
    assert capsys.readouterr().err == ""
    assert cublas.handles() is direct and len(library.calls) == 40
    assert backend._state["cublas"] is direct


def scaled(factor, only=lambda name, handle: True):
    """A mistake: products (those `only(function name, handle)` picks) times `factor`."""
    def mistake(name, handle, result):
        return result * factor if only(name, handle) else result
    return mistake


@pytest.mark.parametrize("case, note", [
    ("none mapped", "no mapped libcublas has CuPy's version 120905: none is mapped"),
    ("other version", "no mapped libcublas has CuPy's version 120905: "
                      r"/usr/local/cuda/lib64/libcublas.so.12 \(version 120904\)"),
    ("create fails", r"/usr/local/cuda/lib64/libcublas.so.12 \(cublasCreate_v2 failed\)"),
    ("function missing", "AttributeError.*cublasSgemm_v2"),
    ("wrong products", r"trial product of shapes \(70, 50\) @ \(50, 40\) off by"),
    ("wrong float32 products", r"trial product of shapes \(70, 50\) @ \(50, 40\) off by"),
    ("wrong side stream products", r"trial product of shapes \(70, 50\) @ \(50, 40\) off by"),
    ("failing products", "cuBLAS gemm failed with status 7")])
def test_handles_fall_back_to_cupys_matmul(gpu, capsys, monkeypatch, case, note):
    """No library of CuPy's version, a function missing, or a trial product wrong on either
    stream (by a relative 1e-9, or 1e-4 in float32): no direct products, and a note; then
    gemm declines and products.matmul is CuPy's."""
    library = gpu.library
    if case == "none mapped":
        gpu.maps = maps_text()
    elif case == "other version":
        monkeypatch.setattr(gpu.cuda.cublas, "getVersion", lambda handle: VERSION)
        library.version = VERSION - 1
    elif case == "create fails":
        library.create_status = 3
    elif case == "function missing":
        del library.cublasSgemm_v2
    elif case == "wrong products":
        library.mistake = scaled(1 + 1e-9)
    elif case == "wrong float32 products":
        library.mistake = scaled(1 + 1e-4, only=lambda name, handle: name[6] == "S")
    elif case == "wrong side stream products":
        cupys = gpu.cuda.device.get_cublas_handle()
        library.mistake = scaled(1 + 1e-9, only=lambda name, handle: handle != cupys)
    else:  # every double product refused
        library.cublasDgemm_v2.body = functools.wraps(library.dgemm)(
            lambda *arguments: INVALID_VALUE)
    assert cublas.handles() is None
    err = capsys.readouterr().err
    assert err.startswith("note: direct cuBLAS products unavailable (")
    assert err.endswith("); using CuPy's matmul, without CUDA graphs.\n")
    assert re.search(note, err), err
    calls = len(library.calls)
    assert cublas.handles() is None and backend._state["cublas"] is None
    left, right = operands(gpu, "c-ordered")
    assert cublas.gemm(left, right) is None
    assert_product(products.matmul(left, right), left, right)
    assert len(library.calls) == calls and capsys.readouterr().err == ""


@pytest.mark.parametrize("case, note", [
    ("functions missing", "AttributeError.*cublasDgemmStridedBatched"),
    ("wrong products", r"trial product of shapes \(3, 70, 50\) @ \(3, 50, 40\) off by")])
def test_failed_batched_trials_keep_the_single_products(gpu, capsys, case, note):
    """Strided batched products missing or wrong: stacks go to CuPy's matmul (with a note);
    matrices, and stacks of one (a pack of one run), keep the direct products."""
    library = gpu.library
    if case == "functions missing":
        del library.cublasDgemmStridedBatched
    else:
        library.mistake = scaled(1 + 1e-9, only=lambda name, handle: "Batched" in name)
    direct = cublas.handles()
    assert direct is not None and direct["batched"] is False
    err = capsys.readouterr().err
    assert err.startswith("note: direct cuBLAS batched products unavailable (")
    assert err.endswith("); packs use CuPy's matmul, without CUDA graphs.\n")
    assert re.search(note, err), err
    library.calls.clear()
    for runs in (None, 1, 3):
        left, right = operands(gpu, "left transposed view", runs)
        product = cublas.gemm(left, right)
        assert (product is None) == (runs == 3)
        assert_product(products.matmul(left, right), left, right)
    assert [call[0] for call in library.calls] == ["cublasDgemm_v2"] * 4  # gemm, matmul


def test_version_and_handle_ask_the_library_through_a_handle_of_its_own(gpu):
    library = gpu.library
    version, handle = cublas.version_and_handle(library)
    assert version == VERSION and handle in library.handles
    assert library.cublasGetVersion_v2.argtypes == [ctypes.c_void_p,
                                                    ctypes.POINTER(ctypes.c_int)]
    library.create_status = 3
    with pytest.raises(RuntimeError, match="cublasCreate_v2 failed"):
        cublas.version_and_handle(library)
    library.create_status, library.version_status = SUCCESS, 3
    with pytest.raises(RuntimeError, match="cublasGetVersion_v2 failed"):
        cublas.version_and_handle(library)
    assert len(library.destroyed) == 1  # the handle made for the question
    assert library.destroyed[0] not in library.handles and handle in library.handles
