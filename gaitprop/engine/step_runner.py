"""Running training steps: a network's or a pack's, checked at once on the host, queued on a
GPU without waiting for it (`StepRunner`), from five small pieces: the guard that checks
queued steps (`Guard`), the CUDA graph that replays them (`GraphReplay`), the kept inverses
and the switch back to LU solves (`InversePolicy`), the runs still in a pack (`Members`)
and the tally of the training batches (`BatchTally`). One checked step is
`training.train_step`."""
import contextlib
import sys
from typing import Any

import numpy

from gaitprop.arrays import backend
from gaitprop.arrays import products
from gaitprop.engine.training import (Diverged, batch_name, finiteness_sums, inverse_noise,
                                      parameter_faults, rule_directions, train_step)

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


def _tally_batch_on_host(outputs, labels, classes, width, tally):
    """Add each row's hit (argmax of its class outputs == its label) and squared error."""
    scores = outputs[..., :classes]
    tally[..., 0] += scores.argmax(axis=-1) == labels.argmax(axis=-1)
    tally[..., 1] += ((scores - labels) ** 2).sum(axis=-1)


_TALLY_BATCH = backend.Fused(
    _tally_batch_on_host, "raw T outputs, raw T labels, int32 classes, int32 width", "raw T tally",
    """int best = 0, label = 0;
    T squared_error = 0;
    for (int k = 0; k < classes; ++k) {
        T output = outputs[i * width + k], target = labels[i * classes + k];
        if (output > outputs[i * width + best]) best = k;
        if (target > labels[i * classes + label]) label = k;
        squared_error += (output - target) * (output - target);
    }
    tally[2 * i] += best == label ? 1 : 0;
    tally[2 * i + 1] += squared_error""", "tally_batch")


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


class InversePolicy:
    """Kept inverses (inv_layer.KeptInverse) in place of LU solves in queued GAIT and TP
    steps, and the switch back to LU solves: a kept inverse's solve fails in a run's first
    steps (the first updates move W most) and whenever W is badly conditioned; more than
    FAILURES_PER_100_STEPS failed steps within 100 steps (`failures`, by step number) and
    the run solves by LU from then on (`lu_only`, kept in the run's checkpoint: a resumed run
    starts switched)."""

    FAILURES_PER_100_STEPS = 20

    def __init__(self, lu_only=False):
        self.kept, self.failures, self.lu_only = [], [], lu_only

    def prepare(self, net, algorithm):
        """Keep inverses in the layers the rule inverts (not for BP, nor after the switch)."""
        if algorithm != "BP" and not self.lu_only:
            net.keep_inverses()
        self.kept = [layer.kept_inverse for layer in net.layers if layer.kept_inverse]

    @contextlib.contextmanager
    def set_aside(self):
        """LU solves inside the block (a checked step)."""
        kept = self.kept
        for each in kept:
            each.active = False
        try:
            yield
        finally:
            for each in kept:
                each.active = True

    def reset(self, net):
        """Exact inverses of the current weights again (after a failed step)."""
        for layer in net.layers:
            if layer.kept_inverse is not None:
                layer.kept_inverse.reset(layer.weight_matrix)

    def failed(self, step_number, net):
        """Note a failed solve at step `step_number`; whether it switched the run to LU."""
        self.failures = [step for step in self.failures if step > step_number - 100]
        self.failures.append(step_number)
        if not self.kept or len(self.failures) <= self.FAILURES_PER_100_STEPS:
            return False
        net.keep_inverses(False)
        self.kept, self.lu_only = [], True
        print("note: the weights are too badly conditioned for kept inverses; this run solves "
              "by LU from now on.", file=sys.stderr)
        return True


class Members:
    """The runs of a pack still training (`run_ids`, their indices in the pack as made) and
    the messages of those that diverged (`diverged`, by index)."""

    def __init__(self, runs):
        self.run_ids = list(range(runs))
        self.diverged = {}

    def now(self, arrays, run_ids):
        """A pack's arrays (one row per run of `run_ids`) cut to the runs still training."""
        if run_ids == self.run_ids:
            return arrays
        positions = [run_ids.index(run) for run in self.run_ids]
        return [array[positions] for array in arrays]

    def leave(self, faults):
        """Note the diverged runs at the positions of `faults` ({position: message}); the
        positions of the others; Diverged when none is left."""
        for position, message in faults.items():
            self.diverged[self.run_ids[position]] = message
        if len(faults) == len(self.run_ids):
            raise Diverged("every run of the pack diverged: " + "; ".join(faults.values()),
                           runs=faults)
        return [position for position in range(len(self.run_ids)) if position not in faults]


class BatchTally:
    """A running tally, on the device, of the training batches' accuracy and loss (each
    row's hit, argmax of its class outputs == its label, and squared error) and of the
    steps tallied."""

    def __init__(self, xp):
        self.xp, self.sums, self.steps = xp, None, 0

    def add(self, output, one_hot_labels):
        """Add a step's batch (the forward pass's output before the update)."""
        if self.sums is None:
            self.sums = self.xp.zeros(output.shape[:-1] + (2,), dtype=output.dtype)
        _TALLY_BATCH(output, one_hot_labels, numpy.int32(one_hot_labels.shape[-1]),
                     numpy.int32(output.shape[-1]), self.sums,
                     size=output.size // output.shape[-1])

    def select(self, keep):
        """Keep the tallies of the runs at the positions `keep` (a copy: no graph has it)."""
        if self.sums is not None:
            self.sums = self.sums[keep]

    def read(self):
        """[(accuracy, loss)] per run of the batches since the last read, as evaluate()
        computes them for a data set, or None if there was none (waits for the device); the
        tally starts again. Steps redone after a failed check count twice."""
        if not self.steps or self.sums is None:
            return None
        sums = backend.to_host(self.sums.sum(axis=-2)).reshape(-1, 2)
        samples = self.steps * self.sums.shape[-2]
        self.sums[...] = 0
        self.steps = 0
        return [(float(hits) / samples, float(squared_error) / samples)
                for hits, squared_error in sums]


class StepRunner:
    """Runs the training steps of a pack (InvNet.stack: one run or more), checked as
    `train_step` checks them.

    On the host each step is `train_step`, checked at once. On a GPU (`deferred`) a step is
    queued without waiting for the GPU: its checks go into the `guard`, and once a step has
    failed them the optimiser leaves the weights alone for the rest of the window. At
    `settle()` (before every evaluation, alignment log and epoch end, and whenever the guard
    is due) the host reads the guard; if a step failed, that step is redone by `train_step`
    (LU solves, exact checks: Diverged names its layer and batch) and the steps after it are
    queued again, until a window passes. Only a solve that was not exact counts towards the
    switch to LU solves (`inverses`); a queued LU solve that finds W singular fails its step
    like a check. The queued step is replayed from a CUDA graph (`replay`).

    The pack (`settings` of `StepSettings.of_pack`, `statistics` a list with one Statistics
    per run) shares one guard: a failed check of any run redoes the step for all. A run
    found diverged leaves the pack alone (`members`), the others go on from the same step;
    Diverged is raised when none is left.

    `lu_only`: the runs had switched to LU solves (InversePolicy; a resumed run's checkpoint
    says so): no graphs then, as after a switch in training.
    """

    def __init__(self, net, settings, deferred=None, graphs=None, lu_only=False):
        self.net, self.settings = net, settings
        self.step_settings = settings.on_backend()
        self.members = Members(net.runs)
        self.xp = backend.array_module(net.layers[0].weight_matrix)
        self.deferred = self.xp is not numpy if deferred is None else deferred
        self.replay = GraphReplay((self.deferred and self.xp is not numpy if graphs is None
                                  else graphs) and not lu_only)
        self.guard, self.inverses = Guard(self.xp), InversePolicy(lu_only)
        self.tally = BatchTally(self.xp)
        self.steps_done, self.redone = 0, 0
        if self.deferred:
            self._prepare_queue()

    @property
    def run_ids(self):
        """The indices (in the pack as made) of the runs still training."""
        return self.members.run_ids

    @property
    def diverged(self):
        """{index in the pack as made: message} of the runs that diverged."""
        return self.members.diverged

    def _prepare_queue(self):
        """The kept inverses and the guard's arrays, for the network as it is now."""
        self.inverses.prepare(self.net, self.settings.algorithm)
        self.guard.prepare(self.inverses.kept, self.net.runs,
                           self.net.layers[0].weight_matrix.dtype)

    def step(self, images, one_hot_labels, statistics, epoch, batch_index):
        """Train on one batch (device arrays; a pack's stacked, one per run in `run_ids`): at
        once on the host, queued on a GPU."""
        entry = (images, one_hot_labels, epoch, batch_index, self.run_ids, self.steps_done)
        self.steps_done += 1
        due = self.settings.log_alignment and batch_index % self.settings.log_alignment == 0
        if self.deferred and not due:
            self._queue(entry)
            if self.guard.due():
                self.settle(statistics)
            return
        self.settle(statistics)
        forward, one_hot_labels = self._checked_step(entry, statistics)
        self.tally.steps += 1
        self.tally.add(forward[-1], one_hot_labels)

    def _queue(self, entry):
        """Queue the step of a window entry (images, labels, epoch, batch, run_ids, its step
        number); an LU solve finding W singular fails it in the guard."""
        self.guard.window.append(entry)
        self.tally.steps += 1
        images, one_hot_labels = self.members.now(entry[:2], entry[4])
        noise = inverse_noise(self.net, self.step_settings, entry[2], entry[3], images.shape[-2])
        try:
            self.replay.queue(self._queued_step, (images, one_hot_labels) + noise,
                              self._arrays_of_a_step)
        except numpy.linalg.LinAlgError:  # nothing of this step reached the weights
            self.guard.fail(SINGULAR)

    def _queued_step(self, images, one_hot_labels, *noise):
        """The step without waiting: directions, checks into the guard, guarded update."""
        forward, _, directions = rule_directions(self.net, self.step_settings, images,
                                                 one_hot_labels, noise)
        self.guard.check([forward[-1]] + list(self.net.named(directions).values()))
        self.net.step(directions, self.step_settings.learning_rate,
                      self.guard.array, self.step_settings.inv_learning_rate)
        self.tally.add(forward[-1], one_hot_labels)

    def _arrays_of_a_step(self):
        """Every array a queued step changes (weights, moments, kept inverses, guard, tally)."""
        return (list(self.net.state().values())
                + [self.guard.array, self.guard.sums, self.guard.bounds, self.tally.sums]
                + [kept.inverse for kept in self.inverses.kept])

    def _checked_step(self, entry, statistics):
        """`train_step` of a window entry, with LU solves; a pack's runs found diverged are
        taken out and the step is done again for the others. Returns the forward pass and
        the labels of the runs trained."""
        images, one_hot_labels, epoch, batch_index, run_ids, _ = entry
        while True:
            images, one_hot_labels = self.members.now((images, one_hot_labels), run_ids)
            run_ids = self.run_ids
            try:
                with self.inverses.set_aside():
                    return train_step(self.net, self.step_settings, images, one_hot_labels,
                                      statistics, epoch, batch_index), one_hot_labels
            except Diverged as diverged:
                self._keep(self.members.leave(diverged.runs), statistics)

    def check_parameters(self, statistics, epoch, batch_index):
        """After the step of `batch_index`, the last of the epoch (before its evaluation and
        checkpoint): settle, then take the runs with a parameter that is not finite out of
        the pack (`training.parameter_faults`; the checks of a step see what its update made
        only at the next step); Diverged when none is left."""
        self.settle(statistics)
        faults = parameter_faults(self.net, batch_name(epoch, batch_index),
                                  self.settings.inv_noise)
        if faults:
            self._keep(self.members.leave(faults), statistics)

    def remove(self, positions, statistics):
        """Take the runs at `positions` out of the pack (between steps: a run has its epochs);
        the others go on as a pack of their own, their statistics list shortened in place.
        With no run left, `run_ids` is empty and nothing else changes."""
        keep = [position for position in range(len(self.run_ids)) if position not in positions]
        if not keep:
            self.members.run_ids = []
            return
        self.settle(statistics)
        self._keep(keep, statistics)

    def _keep(self, keep, statistics):
        """Go on with the runs at the positions `keep` only (no step queued)."""
        self.net = self.net.select(keep)
        self.members.run_ids = [self.run_ids[position] for position in keep]
        statistics[:] = [statistics[position] for position in keep]
        self.settings = self.settings.select(keep)
        self.step_settings = self.settings.on_backend()
        self.replay.forget()
        self.tally.select(keep)
        if self.deferred:
            self._prepare_queue()

    def settle(self, statistics):
        """Wait for the queued steps and read the guard; while a window holds a failed step,
        redo it (checked) and queue the steps after it again (see class)."""
        while self.guard.window:
            window, first_failed, reason = self.guard.read()
            if first_failed < 0:
                return
            self.inverses.reset(self.net)  # a kept inverse may be garbage now
            self._checked_step(window[first_failed], statistics)
            # train_step found nothing wrong: a solve was not exact, or a sum of finite
            # values overflowed (not the solver's failure)
            self.redone += 1
            if reason & SOLVE_NOT_EXACT and self.inverses.failed(window[first_failed][5],
                                                                 self.net):
                self.replay.disable()
                self._prepare_queue()  # no kept inverses: no bounds to check
            for entry in window[first_failed + 1:]:
                self._queue(entry)

    def running_statistics(self):
        """[(accuracy, loss)] of the training batches since the last call, one per run, or
        None if there was none (waits for the GPU)."""
        return self.tally.read()
