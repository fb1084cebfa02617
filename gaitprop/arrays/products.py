"""Matrix products and CUDA graphs on the selected backend: `matmul` (on a GPU by cuBLAS
called directly, `cublas.gemm`, where it can), and `Graph`, work captured once and replayed
(the products it captures must be direct ones: CuPy's own cuBLAS calls refuse capture). Above
backend and cublas, so that neither imports the other's user."""
import numpy

from gaitprop.arrays import backend
from gaitprop.arrays import cublas


def matmul(left, right):
    """left @ right for 2-d arrays, or for two stacks of matrices (3-d arrays of one length:
    a pack's runs, product k = left[k] @ right[k]). On a GPU by cuBLAS called directly
    (`cublas.gemm`) where it can, else (and on the host) the array module's matmul."""
    xp = backend.array_module(left)
    if xp is not numpy:
        product = cublas.gemm(left, right)
        if product is not None:
            return product
    return xp.matmul(left, right)


class Graph:
    """Work captured once on the GPU as a CUDA graph and replayed by `launch()`.

    `capture(work)` runs nothing: it records the kernels that `work()` queues (the array
    operations, cuBLAS products) and returns a Graph, or None on the host. Its temporary
    arrays come from a memory pool of its own, kept as long as the graph, so that no other
    array ever shares their addresses. It is captured on a stream of its own (capture is
    not possible on the default stream) and replayed on the current stream. Products must
    go through `matmul` (CuPy's own cuBLAS calls refuse to be captured). Every address is
    fixed at capture: `work` must read its inputs from arrays that exist before the capture
    (copy new data into them before each launch), update its outputs in place, and must
    not wait for the GPU.
    """

    def __init__(self, graph, pool, stream):
        self.graph, self.pool, self.stream = graph, pool, stream

    @staticmethod
    def capture(work):
        cupy = backend.xp()
        if cupy is numpy:
            return None
        cublas.handles()  # its trial products cannot run during a capture
        pool, stream = cupy.cuda.MemoryPool(), cupy.cuda.Stream()
        with cupy.cuda.using_allocator(pool.malloc), stream:
            stream.begin_capture()
            try:
                work()
            finally:
                graph = stream.end_capture()
        return Graph(graph, pool, stream)

    def launch(self):
        """Queue one replay of the captured work on the current stream, after what is queued."""
        self.graph.launch()


def replay_milliseconds(graph, replays):
    """GPU milliseconds per replay of a Graph, between CUDA events around `replays` replays."""
    cupy = backend.xp()
    graph.launch()
    start, stop = cupy.cuda.Event(), cupy.cuda.Event()
    start.record()
    for _ in range(replays):
        graph.launch()
    stop.record()
    stop.synchronize()
    return cupy.cuda.get_elapsed_time(start, stop) / replays
