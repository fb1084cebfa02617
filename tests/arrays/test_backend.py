"""The backend shim: dtype selection, float32 soundness, CuPy against NumPy (GPU only)."""
import concurrent.futures
import os
import shutil
import threading

import numpy
import pytest

from gaitprop.arrays import backend
from gaitprop.arrays import products
from gaitprop.arrays import cublas
from gaitprop.engine import training
from gaitprop.engine import faults
from gaitprop.engine import step as training_step
from helpers import REPO, PackOfOne, assert_clean, cli, one_ulp_runs, split
from gaitprop.model.net import SquareInvNet, output_targets
from gaitprop.model.functions import one_hot

RULES = ("BP", "GAIT", "TP")


@pytest.fixture
def restore_backend():
    """Put the session's NumPy float64 back after a test that switches backend or dtype."""
    yield
    backend.select("numpy", dtype="float64")


def batch(seed=0):
    """A batch of 60 inputs in [0, 1] and their one-hot labels (host float64)."""
    generator = numpy.random.RandomState(seed)
    return generator.rand(60, 784), one_hot(generator.randint(0, 10, 60))


def directions(rule, dtype, orthogonal, backend_name="numpy"):
    """Host float64 copies of `rule`'s weight directions of a 4-hidden-layer net on one batch."""
    backend.select(backend_name, dtype=dtype)
    net = SquareInvNet(784, 4, start_seed=1, orthogonal_init=orthogonal)
    images, labels = batch()
    forward = net.forward_pass(backend.to_device(images))
    targets = output_targets(forward[-1], backend.to_device(labels))
    weight_directions, bias_directions = split(net.directions(rule, forward, targets, 0.1))
    assert weight_directions[0].dtype == numpy.dtype(dtype)
    return [backend.to_host(d).astype(numpy.float64) for d in weight_directions + bias_directions]


def test_host_threads_follow_affinity_and_blas_limits(monkeypatch):
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.setenv("OPENBLAS_NUM_THREADS", "1")
    assert backend.host_threads() == 1
    monkeypatch.setenv("OPENBLAS_NUM_THREADS", "64")
    assert backend.host_threads() == len(os.sched_getaffinity(0))
    monkeypatch.setenv("OMP_NUM_THREADS", "not a number")
    assert backend.host_threads() == len(os.sched_getaffinity(0))


def test_available_cpus_without_an_affinity_call(monkeypatch):
    """macOS has no os.sched_getaffinity: every CPU of the machine counts."""
    assert backend.available_cpus() == len(os.sched_getaffinity(0))
    monkeypatch.delattr(os, "sched_getaffinity")
    assert backend.available_cpus() == os.cpu_count()


@pytest.mark.parametrize("threads", [1, 2, 3, 7])
def test_in_shares_deals_every_item_once(threads):
    seen = []
    lock = threading.Lock()
    together = threading.Barrier(threads, timeout=30)  # broken unless the shares run at once

    def work(share):
        together.wait()
        with lock:
            seen.append((threading.get_ident(), list(share)))
    backend.in_shares(list(range(20)), work, threads)
    assert sorted(item for _, share in seen for item in share) == list(range(20))
    assert len({ident for ident, _ in seen}) == len(seen) == threads


def test_in_shares_passes_errors_on():
    def work(share):
        if 3 in share:
            raise ValueError("share with 3")
    with pytest.raises(ValueError, match="share with 3"):
        backend.in_shares(list(range(8)), work, 2)


def test_row_blocks_cover_the_rows_in_order():
    big = numpy.arange(3000 * 784.0).reshape(3000, 784)
    blocks = backend.row_blocks(big)
    assert len(blocks) > 8 and all(numpy.shares_memory(b, big) for b in blocks)
    numpy.testing.assert_array_equal(numpy.concatenate(blocks), big)
    assert [len(b) for b in backend.row_blocks(big[:60])] == [41, 19]  # 2**15 values a block
    assert len(backend.row_blocks(big[:60], fewest=8)) == 1  # too little work to share
    assert len(backend.row_blocks(big, fewest=8)) == len(blocks)


@pytest.mark.parametrize("threads", [2, 3])
def test_threaded_training_is_bit_identical_to_one_thread(monkeypatch, threads):
    """Optimiser blocks and the forward pass's bias-and-transfer shared among threads:
    the same numbers, bit for bit, as one thread (every element sees the same operations)."""
    results = {}
    for count in (1, threads):
        monkeypatch.setattr(backend, "host_threads", lambda count=count: count)
        runner = PackOfOne(SquareInvNet(784, 2, start_seed=3),
                           training_step.StepSettings("GAIT", 1e-3, 0.1), deferred=False)
        images, labels = batch(4)
        statistics = training.Statistics()
        for step in range(3):
            runner.step(images, labels, statistics, 0, step)
        net = runner.net
        chunk = numpy.random.RandomState(5).rand(4096, 784)
        results[count] = [p.copy() for p in net.parameters().values()] + [net.class_outputs(chunk)]
    for single, shared in zip(results[1], results[threads]):
        numpy.testing.assert_array_equal(single, shared)


def test_select_rejects_unknown_dtype_and_missing_gpu(restore_backend):
    with pytest.raises(backend.BackendError, match="float16"):
        backend.select("numpy", dtype="float16")
    if backend._import_cupy() is None:
        with pytest.raises(backend.BackendError, match="CuPy"):
            backend.select("cupy")
    assert "backend numpy, dtype float32" in backend.select("numpy", dtype="float32")


def test_weights_are_drawn_on_the_host_in_float64_then_cast(restore_backend):
    backend.select("numpy", dtype="float32")
    net32 = SquareInvNet(784, 1, start_seed=3)
    backend.select("numpy", dtype="float64")
    net64 = SquareInvNet(784, 1, start_seed=3)
    for layer32, layer64 in zip(net32.layers, net64.layers):
        assert layer32.weight_matrix.dtype == numpy.float32
        numpy.testing.assert_array_equal(layer32.weight_matrix,
                                         layer64.weight_matrix.astype(numpy.float32))


@pytest.mark.parametrize("orthogonal", [True, False], ids=["orthogonal", "gaussian"])
@pytest.mark.parametrize("rule", RULES)
def test_float32_directions_agree_with_float64(rule, orthogonal, restore_backend):
    """Per layer, cosine similarity of the float32 and float64 directions >= 0.9999."""
    single = directions(rule, "float32", orthogonal)
    double = directions(rule, "float64", orthogonal)
    for index, (a, b) in enumerate(zip(single, double)):
        cosine = a.ravel() @ b.ravel() / (numpy.linalg.norm(a) * numpy.linalg.norm(b))
        assert cosine >= 0.9999, f"array {index}: cosine {cosine}"


def test_float32_training_matches_float64_accuracy_on_mnist(tmp_path, mnist_raw):
    """One epoch of GAIT (2 hidden layers, orthogonal init, no regulariser, which only costs
    time here) in float32 reaches float64's test accuracy within 0.5 points. Both runs are
    `python run.py` subprocesses, side by side: run.main's signal handlers, warnings filter
    and backend selection stay out of this process."""
    data = tmp_path / "data" / "MNIST" / "raw"
    shutil.copytree(f"{mnist_raw}/MNIST/raw", data)

    def one_epoch(dtype):
        return cli(["--algorithm=GAIT", "--nb_layers=2", "--nb_epochs=1", "--eval_interval=0",
                    "--orthogonal_reg=0", f"--dtype={dtype}", "--backend=numpy",
                    f"--data_dir={tmp_path / 'data'}", f"--results_dir={tmp_path / dtype}"],
                   timeout=3600)
    with concurrent.futures.ThreadPoolExecutor(max_workers=2) as pool:
        runs = dict(zip(("float64", "float32"), pool.map(one_epoch, ("float64", "float32"))))
    accuracies = {}
    for dtype, done in runs.items():
        assert_clean(done, 0)
        folder = next((tmp_path / dtype).iterdir())
        accuracies[dtype] = numpy.loadtxt(folder / "test_acc.txt")[-1]
    print("one-epoch test accuracy", accuracies)
    assert accuracies["float64"] > 0.9
    assert abs(accuracies["float32"] - accuracies["float64"]) <= 0.005


class FakeCublas:
    """A stand-in for a loaded libcublas: its version, and the handles it destroyed."""

    def __init__(self, path, version):
        self.path, self.version, self.destroyed = path, version, []

    def cublasDestroy_v2(self, handle):
        self.destroyed.append(handle)


def test_direct_cublas_takes_the_mapped_library_of_cupys_version():
    """Two copies of libcublas mapped: the one whose version is CuPy's is used (with a handle
    of its own), whatever the order; none of CuPy's version: an error naming each one."""
    maps = ["7f00-7f10 r-xp 0 08:01 11 /opt/a/libcublasLt.so.12",
            "7f10-7f20 r-xp 0 08:01 12 /opt/a/libcublas.so.12",
            "7f20-7f30 r--p 0 08:01 12 /opt/a/libcublas.so.12",
            "7f30-7f40 rw-p 0 00:00 0",
            "7f40-7f50 r-xp 0 08:01 13 /opt/b/libcublas.so.13.1"]
    paths = cublas.mapped_paths(maps)
    assert paths == ["/opt/a/libcublas.so.12", "/opt/b/libcublas.so.13.1"]
    libraries = {"/opt/a/libcublas.so.12": FakeCublas("a", 120905),
                 "/opt/b/libcublas.so.13.1": FakeCublas("b", 130100)}

    def version_of(library):
        return library.version, f"handle of {library.path}"
    library, handle = cublas.matching_library(paths, 130100, libraries.get, version_of)
    assert (library.path, handle) == ("b", "handle of b")
    assert libraries["/opt/a/libcublas.so.12"].destroyed == ["handle of a"]
    with pytest.raises(RuntimeError, match=r"no mapped libcublas has CuPy's version 110000: "
                                           r"/opt/a/libcublas.so.12 \(version 120905\), "
                                           r"/opt/b/libcublas.so.13.1 \(version 130100\)"):
        cublas.matching_library(paths, 110000, libraries.get, version_of)


gpu = pytest.mark.skipif(backend._import_cupy() is None, reason="no GPU with CuPy here")


@gpu
def test_cupy_direct_products_use_the_cublas_of_cupys_handle(restore_backend):
    """The library called directly reports CuPy's cuBLAS version, and no workspace is set
    by hand (cublasSetStream before each product would drop it: cuBLAS's default is used)."""
    import ctypes
    backend.select("cupy", dtype="float64")
    direct = cublas.handles()
    assert direct is not None and direct["batched"]
    cupy = backend.xp()
    version = ctypes.c_int()
    direct["library"].cublasGetVersion_v2(direct["side_handle"], ctypes.byref(version))
    assert version.value == cupy.cuda.cublas.getVersion(cupy.cuda.device.get_cublas_handle())
    assert "workspaces" not in direct
    left, right = cupy.random.rand(60, 784), cupy.random.rand(784, 784)
    for _ in range(3):  # a stream set again before each product
        assert float(cupy.abs(products.matmul(left, right) - left @ right).max()) <= 1e-10


def matmul_layouts(xp, dtype, runs):
    """(name, left, right) of every operand layout products.matmul meets, as 2-d arrays
    (runs None) or as stacks of `runs` matrices: C-ordered, transposed views (swapaxes of
    C-ordered arrays), column slices `[..., :c]` (a tower's inputs, the class columns), a
    transposed column slice, rows broadcast from one row (stride 0: copied), and for stacks
    one matrix broadcast to every run (run stride 0)."""
    generator = numpy.random.RandomState(0)
    lead = () if runs is None else (runs,)

    def drawn(*shape):
        return xp.asarray(generator.randn(*lead, *shape), dtype=dtype)
    a, b = drawn(70, 50), drawn(50, 40)
    a_t, b_t = drawn(50, 70).swapaxes(-1, -2), drawn(40, 50).swapaxes(-1, -2)
    wide_a, wide_b, tall = drawn(70, 64), drawn(50, 64), drawn(50, 96)
    row = drawn(1, 50)
    layouts = [("C-ordered", a, b), ("transposed left", a_t, b), ("transposed right", a, b_t),
               ("both transposed", a_t, b_t), ("column slice left", wide_a[..., :50], b),
               ("column slice right", a, wide_b[..., :40]),
               ("column slices both", wide_a[..., :50], wide_b[..., :40]),
               ("transposed column slice", tall[..., :70].swapaxes(-1, -2), b),
               ("transposed product", b.swapaxes(-1, -2), a.swapaxes(-1, -2)),
               ("broadcast rows", xp.broadcast_to(row, lead + (70, 50)), b)]
    if runs is not None:
        single = xp.asarray(generator.randn(70, 50), dtype=dtype)
        layouts.append(("one matrix for every run", xp.broadcast_to(single, (runs, 70, 50)), b))
    return layouts


@gpu
@pytest.mark.parametrize("runs", [None, 1, 3], ids=["2-d", "stack-of-one", "stack-of-three"])
@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_cupy_matmul_equals_cupy_matmul_for_every_layout_eagerly_and_in_a_graph(dtype, runs,
                                                                                 restore_backend):
    """products.matmul (cuBLAS called directly: gemm for 2-d arrays and stacks of one, strided
    batched gemm for stacks of several) against CuPy's matmul for every layout, on the current
    stream and on Branch's side stream, then captured into a CUDA graph on a stream of its own
    (a memory pool of its own) and replayed: within the tolerance of cublas.py's own trial
    products (100 machine epsilons of the largest value)."""
    backend.select("cupy", dtype=dtype)
    cupy = backend.xp()
    direct = cublas.handles()  # before any capture: its trial products cannot be captured
    assert direct is not None and direct["batched"], "direct cuBLAS products are off (stderr)"
    layouts = matmul_layouts(cupy, numpy.dtype(dtype), runs)
    expected = [cupy.matmul(left, right) for _, left, right in layouts]
    backend.synchronize()  # the side stream does not wait for the operands' kernels

    def assert_close(name, got, want, where):
        assert got.shape == want.shape and got.dtype == want.dtype, (name, where)
        tolerance = 100 * numpy.finfo(dtype).eps * float(cupy.abs(want).max())
        error = float(cupy.abs(got - want).max())
        assert error <= tolerance, f"{name} ({where}): off by {error:.1e} > {tolerance:.1e}"
    for stream in (cupy.cuda.get_current_stream(), backend.side_stream()):
        with stream:
            products = [products.matmul(left, right) for _, left, right in layouts]
        stream.synchronize()
        for (name, _, _), got, want in zip(layouts, products, expected):
            assert_close(name, got, want, "eager")
    outputs = [cupy.full(want.shape, numpy.nan, dtype=want.dtype) for want in expected]
    pool, capturing = cupy.cuda.MemoryPool(), cupy.cuda.Stream(non_blocking=True)
    backend.synchronize()
    with cupy.cuda.using_allocator(pool.malloc), capturing:
        capturing.begin_capture()
        try:
            for out, (_, left, right) in zip(outputs, layouts):
                out[...] = products.matmul(left, right)
        finally:
            graph = capturing.end_capture()
    assert all(bool(cupy.isnan(out).all()) for out in outputs), "the capture ran the products"
    for _ in range(2):  # replayed twice: the same products
        graph.launch()
        backend.synchronize()
        for (name, _, _), got, want in zip(layouts, outputs, expected):
            assert_close(name, got, want, "replayed from a CUDA graph")


@gpu
@pytest.mark.parametrize("orthogonal", [True, False], ids=["orthogonal", "gaussian"])
@pytest.mark.parametrize("rule", RULES)
def test_cupy_directions_equal_numpy(rule, orthogonal, restore_backend):
    gpu_directions = directions(rule, "float64", orthogonal, "cupy")
    cpu_directions = directions(rule, "float64", orthogonal, "numpy")
    for a, b in zip(gpu_directions, cpu_directions):
        assert numpy.linalg.norm(a - b) <= 1e-10 * numpy.linalg.norm(b)


def five_steps(algorithm, backend_name, nudge=False):
    """Host copies of W0, b0, W1, ... after five steps (regulariser on) on a backend;
    `nudge`: every initial weight moved by one unit in the last place, up or down."""
    backend.select(backend_name, dtype="float64")
    net = SquareInvNet(784, 4, start_seed=1, orthogonal_init=True)
    if nudge:
        signs = numpy.random.RandomState(9)
        for layer in net.layers:
            host = backend.to_host(layer.weight_matrix)
            layer.weight_matrix = backend.to_device(
                host * (1 + 2.0 ** -52 * signs.choice([-1, 1], host.shape)))
    statistics = training.Statistics()
    runner = PackOfOne(net, training_step.StepSettings(algorithm, 1e-4, 0.1), deferred=False)
    for step in range(5):
        images, labels = batch(step)
        runner.step(backend.to_device(images), backend.to_device(labels), statistics, 0, step)
    return [backend.to_host(array) for array in runner.net.parameters().values()]


def relative_differences(first, second):
    """|a - b|_F / |b|_F per array (|a - b|_F where b is all zeros: DTP's c and its moments
    under the difference loss stay at their zero start)."""
    return [numpy.linalg.norm(a - b) / (numpy.linalg.norm(b) or 1.0)
            for a, b in zip(first, second)]


@gpu
@pytest.mark.parametrize("algorithm", ["BP", "GAIT", "TP", "FA", "DFA"])
def test_cupy_steps_equal_numpy(algorithm, restore_backend):
    """Five training steps (regulariser on) on CuPy and on NumPy give the same weights, to
    rounding. The tolerance is measured: NumPy itself, started from weights moved by one
    unit in the last place, ends up to ~8e-10 away (the output layer: its columns past the
    tenth get tiny updates, whose step m / sqrt(v) amplifies rounding); CuPy rounds
    differently in every product of the five steps, so it may differ by ten such spreads."""
    gpu_weights = five_steps(algorithm, "cupy")
    cpu_weights = five_steps(algorithm, "numpy")
    spread = max(relative_differences(five_steps(algorithm, "numpy", nudge=True), cpu_weights))
    differences = relative_differences(gpu_weights, cpu_weights)
    print(f"{algorithm}: CuPy vs NumPy {max(differences):.1e}, one-ulp spread {spread:.1e}")
    assert max(differences) <= 10 * spread


def random_with_specials(shape, seed):
    """Random values of both signs with zeros, negative zeros, infinities and NaNs among them."""
    generator = numpy.random.RandomState(seed)
    values = generator.randn(*shape)
    flat = values.reshape(-1)
    flat[::17], flat[5::19], flat[7::23] = 0.0, -0.0, numpy.nan
    flat[11::29], flat[13::31] = numpy.inf, -numpy.inf
    return values


@gpu
@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_cupy_fused_kernels_equal_numpy_bit_for_bit(dtype, restore_backend):
    """Each fused kernel against the NumPy operations it replaces (NaN, -0, inf included)."""
    from gaitprop.model import functions as utils
    from gaitprop.model.optimizer import MomentOptimizer
    results = {}
    for name in ("numpy", "cupy"):
        backend.select(name, dtype=dtype)
        h, e = (backend.to_device(random_with_specials((60, 784), seed)) for seed in (1, 2))
        b = backend.to_device(numpy.random.RandomState(3).randn(784))
        crossing = backend.to_device(numpy.random.RandomState(4).randn(60, 784) * 1e-3)
        out = {"transfer": utils.add_biases_and_transfer(h.copy(), b),
               "linear": utils.add_biases_and_transfer(h.copy(), b, linear=True),
               "derivative": utils.derivative_times(h, e),
               "pre_inverse": utils.pre_inverse(h, e, b),
               "gait": utils.scaled_inverse_difference(h, e, 1e-3),
               "gait_crossing": utils.scaled_inverse_difference(crossing, e, 2.0)}
        parameters = {"W0": backend.to_device(numpy.random.RandomState(5).randn(784, 784))}
        optimizer = MomentOptimizer(parameters)
        for step in range(3):
            optimizer.step(parameters, {"W0": backend.to_device(
                numpy.random.RandomState(6 + step).randn(784, 784))}, {"W0": 1e-3})
        out.update(p=parameters["W0"], m=optimizer.first_moments["W0"],
                   v=optimizer.second_moments["W0"])
        results[name] = {key: backend.to_host(value) for key, value in out.items()}
    for key, expected in results["numpy"].items():
        numpy.testing.assert_array_equal(results["cupy"][key], expected, err_msg=key)


@gpu
@pytest.mark.parametrize("algorithm", ["BP", "GAIT", "TP"])
def test_cupy_queued_graph_steps_equal_checked_steps(algorithm, restore_backend):
    """120 steps queued (guard on the GPU, CUDA graph replays) against 120 checked steps
    (train_step): BP bit for bit; GAIT and TP (kept inverses instead of LU solves) within
    what a one-ulp change of the inputs makes checked steps differ."""
    backend.select("cupy", dtype="float64")
    generator = numpy.random.RandomState(0)
    images = backend.to_device(generator.rand(120 * 60, 784))
    labels = backend.to_device(one_hot(generator.randint(0, 10, 120 * 60)))
    lambdas = {"BP": (0.0, 1e-4), "GAIT": (0.1, 1e-4), "TP": (1000.0, 1e-5)}
    settings = training_step.StepSettings(algorithm, lambdas[algorithm][1], lambdas[algorithm][0])
    weights = {}
    for label, deferred, scale in (("queued", True, 1.0), ("checked", False, 1.0),
                                   ("nudged", False, 1 + 2.0 ** -52)):
        net = SquareInvNet(784, 4, start_seed=1, orthogonal_init=True)
        runner = PackOfOne(net, settings, deferred=deferred)
        statistics = training.Statistics()
        for step in range(120):
            rows = slice(60 * step, 60 * (step + 1))
            runner.step(images[rows] * scale, labels[rows], statistics, 0, step)
        runner.settle(statistics)
        weights[label] = [backend.to_host(p) for p in runner.net.parameters().values()]
        if deferred:
            print(f"{algorithm}: graph replay vs step {runner.replay.difference}, steps redone "
                  f"{runner.inverses.failures}")
            assert runner.replay.graph is not None and runner.replay.difference == 0.0
    difference = max(relative_differences(weights["queued"], weights["checked"]))
    spread = max(relative_differences(weights["nudged"], weights["checked"]))
    print(f"{algorithm}: queued vs checked {difference:.1e}, one-ulp spread {spread:.1e}")
    if algorithm == "BP":
        assert difference == 0.0
    else:
        assert difference <= 10 * spread


# GAIT and TP at the paper's lambda and learning rate, DTP at its defaults (a small output
# step, noise as an input of the graph, the difference loss).
SETTINGS = {"GAIT": training_step.StepSettings("GAIT", 1e-4, 0.1),
           "TP": training_step.StepSettings("TP", 1e-5, 1000.0),
           "DTP": training_step.StepSettings("DTP", 1e-4, 0.1, inv_learning_rate=1e-3,
                                             inv_noise=0.1, inv_loss="difference",
                                             options=(("target_step", 0.01),))}


def trained_states(settings, steps, runs, learned=True, lu_only=False):
    """For each (label, backend, deferred, input scale) of `runs`: host copies of every array
    (W, b, V, c, moments) after `steps` steps of a 4-hidden-layer net (learned inverses from
    a drawn start, or exact ones; `lu_only`: as a run resumed after its switch to LU solves),
    and the runner."""
    generator = numpy.random.RandomState(0)
    host_images = generator.rand(60 * steps, 784)
    host_labels = one_hot(generator.randint(0, 10, 60 * steps))
    results = {}
    for label, name, deferred, scale in runs:
        backend.select(name, dtype="float64")
        images, labels = backend.to_device(host_images * scale), backend.to_device(host_labels)
        net = SquareInvNet(784, 4, start_seed=1, orthogonal_init=True, learn_inverses=learned,
                           exact_start=not learned)
        runner = PackOfOne(net, settings, deferred=deferred, lu_only=lu_only)
        statistics = training.Statistics()
        for step in range(steps):
            rows = slice(60 * step, 60 * (step + 1))
            runner.step(images[rows], labels[rows], statistics, 0, step)
        runner.settle(statistics)
        results[label] = ({key: backend.to_host(value)
                           for key, value in runner.net.state().items()}, runner)
    return results


ONE_ULP_RUNS = one_ulp_runs(2.0 ** -52)  # CuPy queued, NumPy checked, NumPy one ulp away


def queued_against_checked(results):
    """(largest relative difference of the queued run's arrays from NumPy's checked ones, the
    same for NumPy's run from inputs moved by one unit in the last place)."""
    names = sorted(results["numpy"][0])
    return tuple(max(relative_differences([results[label][0][k] for k in names],
                                          [results["numpy"][0][k] for k in names]))
                 for label in ("queued", "nudged"))


@gpu
@pytest.mark.parametrize("algorithm", sorted(SETTINGS))
def test_cupy_learned_inverse_steps_equal_numpys_and_replay_from_a_graph(algorithm,
                                                                         restore_backend):
    """Learned inverses (drawn start), 60 steps on CuPy queued with CUDA graphs, against the
    same steps checked on NumPy: no kept inverse and no redone step, the graph's replay equal
    to the step (DTP's noise copied into the graph's input each step), every array (W, b, V,
    c, moments) within what a one-ulp change of the inputs makes NumPy's steps differ (BLAS
    sums in another order)."""
    results = trained_states(SETTINGS[algorithm], 60, ONE_ULP_RUNS)
    runner = results["queued"][1]
    assert runner.inverses.kept == [] and runner.redone == 0
    assert runner.replay.graph is not None and runner.replay.difference == 0.0
    difference, spread = queued_against_checked(results)
    print(f"{algorithm} learned inverses: cupy vs numpy {difference:.1e}, one-ulp spread "
          f"{spread:.1e}")
    assert difference <= 10 * spread + 1e-13


@gpu
@pytest.mark.parametrize("algorithm", ["GAIT", "TP"])
def test_cupy_a_run_resumed_after_its_switch_to_lu_queues_without_graphs(algorithm,
                                                                         restore_backend):
    """A run whose checkpoint says it had switched to LU solves (lu_only) resumes on CuPy
    with queued steps, LU solves and no CUDA graph nor kept inverse, and trains as NumPy's
    checked steps do, within ten times a one-ulp nudge's spread."""
    results = trained_states(SETTINGS[algorithm], 30, ONE_ULP_RUNS, learned=False,
                             lu_only=True)
    runner = results["queued"][1]
    assert runner.deferred and runner.inverses.lu_only and runner.inverses.kept == []
    assert runner.replay.graph is None and not runner.replay.enabled
    difference, spread = queued_against_checked(results)
    print(f"{algorithm} resumed on LU: cupy vs numpy {difference:.1e}, one-ulp spread "
          f"{spread:.1e}")
    assert difference <= 10 * spread + 1e-13


@gpu
def test_cupy_a_non_finite_batch_in_a_queued_window_is_named(restore_backend):
    backend.select("cupy", dtype="float64")
    generator = numpy.random.RandomState(0)
    host_images = generator.rand(20 * 60, 784)
    host_images[13 * 60 + 2, 100] = numpy.nan
    images, labels = backend.to_device(host_images), backend.to_device(
        one_hot(generator.randint(0, 10, 20 * 60)))
    settings = training_step.StepSettings("BP", 1e-4)
    results = []
    for deferred, steps in ((True, 20), (False, 13)):
        net = SquareInvNet(784, 4, start_seed=1, orthogonal_init=True)
        runner = PackOfOne(net, settings, deferred=deferred)
        statistics = training.Statistics()
        with pytest.raises(faults.Diverged,
                           match=r"epoch 1, batch 14: the output of layer 0"):  # index 13
            for step in range(20):
                rows = slice(60 * step, 60 * (step + 1))
                runner.step(images[rows], labels[rows], statistics, 0, step)
            runner.settle(statistics)
        results.append([backend.to_host(p) for p in runner.net.parameters().values()])
    for queued, checked in zip(*results):
        numpy.testing.assert_array_equal(queued, checked)


@gpu
def test_cupy_singular_weights_raise_linalg_error(restore_backend):
    backend.select("cupy", dtype="float64")
    singular = backend.to_device(numpy.ones((5, 5)))
    with pytest.raises(numpy.linalg.LinAlgError):
        backend.solve_right(singular, backend.to_device(numpy.ones((2, 5))))


@gpu
def test_cupy_evaluations_never_change_what_a_run_trains(tmp_path, mnist_raw, restore_backend):
    """./run.py on the GPU, BP, 2 hidden layers, one epoch: evaluated after every 10th batch
    (the published cadence) or only at the end, the weights after the epoch are the same
    bits. (The published cadence's last evaluation follows batch 990, not the epoch's end:
    its last accuracy is not the end-of-epoch one.)"""
    import subprocess
    import sys
    shutil.copytree(f"{mnist_raw}/MNIST/raw", tmp_path / "data" / "MNIST" / "raw")
    weights = {}
    for interval in ("10", "0"):
        subprocess.run([sys.executable, "run.py", "--algorithm=BP", "--nb_layers=2",
                        "--nb_epochs=1", f"--eval_interval={interval}", "--backend=cupy",
                        f"--data_dir={tmp_path / 'data'}",
                        f"--results_dir={tmp_path / interval}"], check=True,
                       cwd=REPO)
        folder = next((tmp_path / interval).iterdir())
        weights[interval] = [numpy.load(folder / f"{index}Lweights.npy") for index in range(3)]
    for with_evaluations, without in zip(weights["10"], weights["0"]):
        numpy.testing.assert_array_equal(with_evaluations, without)
