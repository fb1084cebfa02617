"""The backend shim: dtype selection, float32 soundness, CuPy against NumPy (GPU only)."""
import os
import threading

import numpy
import pytest

import backend
import training
from inv_net import SquareInvNet, output_targets
from utils import one_hot

RULES = ("get_backprop_updates", "get_gait_updates", "get_tp_updates")


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
    weight_directions, bias_directions = getattr(net, rule)(forward, targets, 0.1)
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
        net = SquareInvNet(784, 2, start_seed=3)
        images, labels = batch(4)
        settings = {"orthogonal_reg": 0.1, "learning_rate": 1e-3, "log_alignment": 0}
        for step in range(3):
            training.train_step(net, "GAIT", images, labels, settings, training.Statistics(), 0,
                                step)
        chunk = numpy.random.RandomState(5).rand(4096, 784)
        results[count] = [p.copy() for p in net.parameters()] + [net.class_outputs(chunk)]
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
    time here) in float32 reaches float64's test accuracy within 0.5 points."""
    import run
    import shutil
    data = tmp_path / "data" / "MNIST" / "raw"
    shutil.copytree(f"{mnist_raw}/MNIST/raw", data)
    accuracies = {}
    for dtype in ("float64", "float32"):
        status = run.main(["--algorithm=GAIT", "--nb_layers=2", "--nb_epochs=1",
                           "--eval_interval=0", "--orthogonal_reg=0",
                           f"--dtype={dtype}", "--backend=numpy",
                           f"--data_dir={tmp_path / 'data'}",
                           f"--results_dir={tmp_path / dtype}"])
        assert status == 0
        folder = next((tmp_path / dtype).iterdir())
        accuracies[dtype] = numpy.loadtxt(folder / "test_acc.txt")[-1]
    print("one-epoch test accuracy", accuracies)
    assert accuracies["float64"] > 0.9
    assert abs(accuracies["float32"] - accuracies["float64"]) <= 0.005
    backend.select("numpy", dtype="float64")


gpu = pytest.mark.skipif(backend._import_cupy() is None, reason="no GPU with CuPy here")


@gpu
@pytest.mark.parametrize("orthogonal", [True, False], ids=["orthogonal", "gaussian"])
@pytest.mark.parametrize("rule", RULES)
def test_cupy_directions_equal_numpy(rule, orthogonal, restore_backend):
    gpu_directions = directions(rule, "float64", orthogonal, "cupy")
    cpu_directions = directions(rule, "float64", orthogonal, "numpy")
    for a, b in zip(gpu_directions, cpu_directions):
        assert numpy.linalg.norm(a - b) <= 1e-10 * numpy.linalg.norm(b)


@gpu
@pytest.mark.parametrize("algorithm", ["BP", "GAIT", "TP"])
def test_cupy_steps_equal_numpy(algorithm, restore_backend):
    """Five training steps (regulariser on) on CuPy and on NumPy give the same weights."""
    settings = {"orthogonal_reg": 0.1, "learning_rate": 1e-4, "log_alignment": 0}
    weights = {}
    for name in ("cupy", "numpy"):
        backend.select(name, dtype="float64")
        net = SquareInvNet(784, 4, start_seed=1, orthogonal_init=True)
        statistics = training.Statistics()
        for step in range(5):
            images, labels = batch(step)
            training.train_step(net, algorithm, backend.to_device(images),
                                backend.to_device(labels), settings, statistics, 0, step)
        weights[name] = [backend.to_host(array) for array in net.parameters()]
    for a, b in zip(weights["cupy"], weights["numpy"]):
        assert numpy.linalg.norm(a - b) <= 1e-10 * numpy.linalg.norm(b)
