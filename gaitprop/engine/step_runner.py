"""Running training steps: a network's or a pack's, checked at once on the host, queued on a
GPU without waiting for it (`StepRunner`), from small pieces: the guard that checks queued
steps (guard.Guard), the CUDA graph that replays them (graph_replay.GraphReplay), the kept
inverses and the switch back to LU solves (`InversePolicy`), the runs still in a pack
(`Members`) and the tally of the training batches (tally.BatchTally). One checked step is
`step.train_step`."""
import contextlib
import sys

import numpy

from gaitprop.engine.cadence import batch_name
from gaitprop.engine.faults import Diverged, parameter_faults
from gaitprop.engine.graph_replay import GraphReplay
from gaitprop.engine.guard import SINGULAR, SOLVE_NOT_EXACT, Guard
from gaitprop.engine.step import inverse_noise, rule_directions, train_step
from gaitprop.engine.tally import BatchTally
from gaitprop.arrays import backend
from gaitprop.model import rules


class InversePolicy:
    """Kept inverses (inv_layer.KeptInverse) in place of LU solves in the queued steps of the
    rules that use inverses (rules.Rule.uses_inverses), and the switch back to LU solves: a
    kept inverse's solve fails in a run's first steps (the first updates move W most) and
    whenever W is badly conditioned; more than FAILURES_PER_100_STEPS failed steps within 100
    steps (`failures`, by step number) and the run solves by LU from then on (`lu_only`,
    kept in the run's checkpoint: a resumed run starts switched)."""

    FAILURES_PER_100_STEPS = 20

    def __init__(self, lu_only=False):
        self.kept, self.failures, self.lu_only = [], [], lu_only

    def prepare(self, net, algorithm):
        """Keep inverses in the layers the rule inverts (for a rule that uses inverses; not
        after the switch)."""
        if rules.rule(algorithm).uses_inverses and not self.lu_only:
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
        # queued steps take the inverses' step with the forward one: with steps of their own
        # (inv_steps > 1) every step is a checked one
        self.deferred = (self.xp is not numpy if deferred is None else deferred) and (
            settings.inv_steps == 1)
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
