"""A queued step captured once as a CUDA graph and replayed (`GraphReplay`), kept only if a
replay computes what the step computes (`replay_difference`)."""
import sys
from typing import Any

from gaitprop.arrays import backend
from gaitprop.arrays import products


class GraphReplay:
    """A queued step captured once as a CUDA graph on fixed input arrays and replayed
    (`enabled`): captured at the second step, and kept only if a replay computes what the
    step itself computes (`difference`, relative); else steps stay eager."""

    inputs: tuple[Any, ...] | None  # the backend arrays a graph reads (images, labels, noise)

    def __init__(self, enabled):
        self.enabled, self.difference = enabled, None
        self.forget()

    def forget(self):
        """Drop the graph (the arrays it was captured on change); capture again later."""
        self.graph, self.inputs, self.queued_before = None, None, False

    def disable(self):
        """Steps run eagerly from now on."""
        self.graph, self.enabled = None, False

    def queue(self, step, inputs, arrays):
        """Queue `step(*inputs)` (images, labels and the inverses' noise of one step):
        eagerly the first time, then as replays; `arrays()` lists every array a step changes
        (for the replay check)."""
        if self.graph is None and self.enabled and self.queued_before:
            self.graph = self._capture(step, inputs, arrays)
            return  # the capture ran this step, replaying the graph or not
        if self.graph is None:
            step(*inputs)
            self.queued_before = True
            return
        assert self.inputs is not None, "captured with the graph"
        for fixed, given in zip(self.inputs, inputs, strict=True):
            fixed[...] = given
        self.graph.launch()

    def _capture(self, step, inputs, arrays):
        """The graph of `step` on fixed inputs, run on this step's, or None (see class)."""
        xp = backend.array_module(inputs[0])
        self.inputs = tuple(xp.empty_like(given) for given in inputs)
        for fixed, given in zip(self.inputs, inputs):
            fixed[...] = given
        changed = arrays()
        before = [array.copy() for array in changed]
        try:
            graph = products.Graph.capture(lambda: step(*self.inputs))
        except Exception as error:  # a CuPy or driver without the capture this needs
            print(f"note: CUDA graph capture failed ({error!r}); steps run without graphs.",
                  file=sys.stderr)
            self.enabled = False
            step(*inputs)
            return None
        step(*self.inputs)
        eager = [array.copy() for array in changed]
        for array, saved in zip(changed, before):
            array[...] = saved
        graph.launch()
        self.difference = max((replay_difference(array, expected)
                               for array, expected in zip(changed, eager)), default=0.0)
        if self.difference <= 1e-12:
            return graph
        print(f"note: a CUDA graph replay differed from the step by {self.difference:.1e} "
              f"(relative); steps run without graphs.", file=sys.stderr)
        for array, expected in zip(changed, eager):
            array[...] = expected
        self.enabled = False
        return None


def replay_difference(replayed, expected):
    """How far a graph's replay is from the eager step, relative: max |r - e| / max |e| over
    the entries finite in both (0 where e is all 0), and inf where the two differ in an
    entry not finite in both (NaN against NaN, or the same infinity, is no difference: a run
    already diverged must not switch graphs off for the pack)."""
    xp = backend.array_module(replayed)
    finite = xp.isfinite(replayed) & xp.isfinite(expected)
    same = (replayed == expected) | (xp.isnan(replayed) & xp.isnan(expected))
    if not bool((finite | same).all()):
        return float("inf")
    if not bool(finite.any()):
        return 0.0
    replayed, expected = xp.where(finite, replayed, 0), xp.where(finite, expected, 0)
    gap, scale = float(xp.abs(replayed - expected).max()), float(xp.abs(expected).max())
    return gap / scale if scale > 0 else (0.0 if gap == 0 else float("inf"))
