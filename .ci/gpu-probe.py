#!/usr/bin/env python3
"""The first step of .ci/gpu-check and .ci/gpu-reproduce: within seconds, whether this machine
runs the package's GPU path as intended. Exit 0 only if

- CuPy imports and sees a GPU (backend.select("cupy"));
- cuBLAS is called directly (cublas.handles() is not None), strided batched products too
  (its "batched" entry is True);
- a training step queued by the real StepRunner is captured as a CUDA graph, kept (its
  replay computes what the step computes) and replayed at the later steps: a single GAIT run
  in float64 (kept inverses, the side stream of the regulariser), a pack of two BP runs in
  float64 (the batched products) and a single TP run in float32;
- nothing on stderr says that direct cuBLAS products are unavailable, or that a CUDA graph
  capture failed or its replay differed (the notes cublas.py and step_runner.py print when
  they fall back to CuPy's matmul or to eager steps; with them, every check above could
  still pass by mistake on a later run).

Exit 1 with a line "gpu-probe: FAIL: ..." otherwise; "gpu-probe: ok ..." on success.
"""
import io
import os
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

# The notes of a fallback (cublas.handles, graph_replay.GraphReplay._capture).
NOTES = ("note: direct cuBLAS products unavailable",
         "note: direct cuBLAS batched products unavailable",
         "note: CUDA graph capture failed",
         "note: a CUDA graph replay differed")
STEPS = 8  # step 0 eager, step 1 captured (and one launch to check it), steps 2-7 replayed


class Tee(io.TextIOBase):
    """stderr as it was, and a copy of everything written to it."""

    def __init__(self, stream):
        self.stream, self.copy = stream, io.StringIO()

    def write(self, text):
        self.copy.write(text)
        return self.stream.write(text)

    def flush(self):
        self.stream.flush()


def fail(message):
    print(f"gpu-probe: FAIL: {message}", flush=True)
    sys.exit(1)


def notes_seen(tee):
    return [line.strip() for line in tee.copy.getvalue().splitlines()
            if any(note in line for note in NOTES)]


def graph_check(backend, dtype, algorithm, runs, lambda_, learning_rate):
    """(launches, difference) of STEPS queued steps of a small pack run by the real StepRunner,
    or fail() saying what went wrong."""
    import numpy

    from gaitprop.arrays import products
    from gaitprop.engine import step_runner
    from gaitprop.engine import step as training_step
    from gaitprop.engine import training
    from gaitprop.model.net import InvNet, SquareInvNet
    from gaitprop.model.functions import one_hot
    backend.select("cupy", dtype=dtype)
    launches = [0]
    launch = products.Graph.launch

    def counted(graph):
        launches[0] += 1
        launch(graph)
    products.Graph.launch = counted
    try:
        nets = [SquareInvNet(64, 2, start_seed=seed, orthogonal_init=True)
                for seed in range(1, runs + 1)]
        settings = training_step.StepSettings(algorithm, learning_rate, lambda_)
        runner = step_runner.StepRunner(InvNet.stack(nets),
                                        training_step.StepSettings.of_pack([settings] * runs))
        what = f"{algorithm}, {runs} run(s), {dtype}"
        if not (runner.deferred and runner.replay.enabled):
            fail(f"{what}: the StepRunner does not queue steps with CUDA graphs on CuPy")
        generator = numpy.random.RandomState(0)
        statistics = [training.Statistics() for _ in range(runs)]
        for step in range(STEPS):
            images = backend.to_device(generator.rand(runs, 60, 64))
            labels = backend.to_device(
                one_hot(generator.randint(0, 10, runs * 60)).reshape(runs, 60, 10))
            runner.step(images, labels, statistics, 0, step)
        runner.settle(statistics)
        replay = runner.replay
        if replay.graph is None:
            fail(f"{what}: no CUDA graph was kept (enabled {replay.enabled}, replay difference "
                 f"{replay.difference}); see the notes above")
        if launches[0] < STEPS - 1:
            fail(f"{what}: the graph was launched {launches[0]} times in {STEPS} steps, not "
                 f"at least {STEPS - 1}")
        weights = [backend.to_host(layer.weight_matrix) for layer in runner.net.layers]
        if not all(numpy.isfinite(each).all() for each in weights):
            fail(f"{what}: the weights are not finite after {STEPS} steps")
        return launches[0], replay.difference
    finally:
        products.Graph.launch = launch


def main():
    started = time.monotonic()
    tee = Tee(sys.stderr)
    sys.stderr = tee
    import numpy

    from gaitprop.arrays import backend
    try:
        backend.select("cupy", dtype="float64")
    except backend.BackendError as error:
        fail(f"no usable GPU: {error}")
    cupy = backend.xp()
    print(f"gpu-probe: {backend.gpu_name()}, python {sys.version.split()[0]}, numpy "
          f"{numpy.__version__}, cupy {cupy.__version__}, CUDA runtime "
          f"{cupy.cuda.runtime.runtimeGetVersion()}", flush=True)
    from gaitprop.arrays import cublas
    direct = cublas.handles()
    if direct is None:
        fail("cublas.handles() is None: no direct cuBLAS products, so no CUDA graphs "
             f"({'; '.join(notes_seen(tee)) or 'no note printed'})")
    if not direct.get("batched"):
        fail("cublas.handles()['batched'] is False: packs would run without CUDA graphs "
             f"({'; '.join(notes_seen(tee)) or 'no note printed'})")
    results = []
    for dtype, algorithm, runs, lambda_, learning_rate in (
            ("float64", "GAIT", 1, 0.1, 1e-4), ("float64", "BP", 2, 0.0, 1e-4),
            ("float32", "TP", 1, 1000.0, 1e-5)):
        launches, difference = graph_check(backend, dtype, algorithm, runs, lambda_,
                                           learning_rate)
        results.append(f"{algorithm} x{runs} {dtype}: {launches} launches, replay difference "
                       f"{difference:.1e}")
    backend.select("numpy", dtype="float64")
    notes = notes_seen(tee)
    if notes:
        fail("stderr holds a fallback note: " + "; ".join(notes))
    print(f"gpu-probe: ok in {time.monotonic() - started:.1f}s: direct cuBLAS with batched "
          f"products; graphs captured and replayed ({'; '.join(results)})", flush=True)


if __name__ == "__main__":
    main()
