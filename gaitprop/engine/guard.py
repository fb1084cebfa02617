"""The checks of steps queued on a GPU without waiting for it, kept on the device (`Guard`):
one kernel a step counts it and notes the first that failed and why."""
from typing import Any

import numpy

from gaitprop.arrays import backend
from gaitprop.engine.faults import finiteness_sums

# Why a queued step failed its checks (bits of the guard's third value).
SUMS_NOT_FINITE, SOLVE_NOT_EXACT, SINGULAR = 1, 2, 4


def _update_guard_on_host(sums, nb_sums, bounds, nb_bounds, tolerance, guard):
    """The guard's update on the host: count the step; if it is the first that failed, note
    it (guard[1]) and why (guard[2]: SUMS_NOT_FINITE if a sum is not finite, SOLVE_NOT_EXACT
    if a solve's residual bound is above the tolerance). Each sum is looked at alone, so
    finite sums whose total would overflow pass."""
    reason = ((0 if numpy.isfinite(sums[:nb_sums]).all() else SUMS_NOT_FINITE)
              | (0 if numpy.all(bounds[:nb_bounds] <= tolerance) else SOLVE_NOT_EXACT))
    if guard[1] < 0 and reason:
        guard[1], guard[2] = guard[0], reason
    guard[0] += 1


_UPDATE_GUARD = backend.Fused(
    _update_guard_on_host,
    "raw T sums, int32 nb_sums, raw T bounds, int32 nb_bounds, T tolerance", "raw int64 guard",
    f"""long long reason = 0;
    for (int k = 0; k < nb_sums; ++k) if (!isfinite(sums[k])) reason |= {SUMS_NOT_FINITE};
    for (int k = 0; k < nb_bounds; ++k) if (!(bounds[k] <= tolerance)) reason |= {SOLVE_NOT_EXACT};
    if (guard[1] < 0 && reason) {{ guard[1] = guard[0]; guard[2] = reason; }}
    guard[0] += 1""", "update_guard")


class Guard:
    """The checks of queued steps, kept on the device: `array` = [steps queued, index of the
    first that failed or -1, why it failed (SUMS_NOT_FINITE | SOLVE_NOT_EXACT | SINGULAR)],
    the `window` of steps queued since the host last read it, and how many steps the host
    lets pass before it reads (`check_every`: CHECK_EVERY, 1 after a failure, doubling back).
    """

    CHECK_EVERY = 50

    def __init__(self, xp):
        self.xp, self.window, self.check_every = xp, [], self.CHECK_EVERY
        self.sums = self.bounds = None
        self.tolerance, self.nb_bounds = 0.0, 0
        self.array: Any | None = None  # the guard, a backend array (made by `prepare`)

    def prepare(self, kept, runs, dtype):
        """Arrays a CUDA graph can keep: the bounds of the kept inverses (`kept`, one slot per
        run each), the guard; the sums are made at the first step, when the batch is known."""
        xp = self.xp
        self.sums = None
        self.bounds = xp.zeros(max(1, len(kept)) * runs, dtype=dtype)
        for slot, each in enumerate(kept):
            each.bound = self.bounds[slot * runs:(slot + 1) * runs]
        self.tolerance = kept[0].tolerance if kept else 0.0
        self.nb_bounds = len(self.bounds) if kept else 0
        self.array = xp.asarray(numpy.array([0, -1, 0], dtype=numpy.int64))

    def check(self, arrays):
        """Queue a step's checks: the finiteness sums of `arrays` and the bounds of the kept
        inverses' solves, into the guard (no wait)."""
        self.sums = finiteness_sums(arrays, self.sums)
        _UPDATE_GUARD(self.sums, numpy.int32(len(self.sums)), self.bounds,
                      numpy.int32(self.nb_bounds), self.sums.dtype.type(self.tolerance),
                      self.array, size=1)

    def fail(self, reason):
        """Count a step that could not be queued as queued and failed (`reason`), in order
        with the steps queued before it (no wait)."""
        xp, guard = self.xp, self.array
        assert guard is not None, "Guard.prepare makes the guard"
        first = guard[1] < 0
        guard[2] = xp.where(first, reason, guard[2])
        guard[1] = xp.where(first, guard[0], guard[1])
        guard[0] += 1

    def due(self):
        """Whether the host should read the guard now."""
        return len(self.window) >= self.check_every

    def read(self):
        """(window, index of its first failed step or -1, why) of the steps queued since the
        last read (waits for the device); a new window starts."""
        steps, first_failed, reason = (int(value) for value in backend.to_host(self.array))
        window, self.window = self.window, []
        self.reset()
        assert steps == len(window), (steps, len(window))
        self.check_every = (min(2 * self.check_every, self.CHECK_EVERY) if first_failed < 0
                            else 1)  # failures come in runs (a run's first steps): look sooner
        return window, first_failed, reason

    def reset(self):
        """A new window: no step queued, none failed."""
        assert self.array is not None, "Guard.prepare makes the guard"
        self.array[0], self.array[1], self.array[2] = 0, -1, 0
