"""The training loop: batches in stored order, the evaluation cadence, progress output."""
import dataclasses
import math
import sys
import time
import typing

import numpy

import backend
from inv_net import output_targets
from run_statistics import Statistics
from utils import angle_degrees, one_hot

RULES = {"BP": "get_backprop_updates", "GAIT": "get_gait_updates", "TP": "get_tp_updates"}


def batch_layout(nb_samples):
    """(batch_size, nb_batches): len(train) // 1000 samples a batch, len // batch_size batches."""
    batch_size = nb_samples // 1000
    return batch_size, nb_samples // batch_size


def evaluates_after(batch_index, eval_interval, nb_batches):
    """Whether the data sets are evaluated right after batch `batch_index` (0-based).

    eval_interval N > 0: after every batch with b % N == 0 and b != 0 (as published, N = 10);
    N = 0: after the last batch of the epoch only.
    """
    if eval_interval == 0:
        return batch_index == nb_batches - 1
    return batch_index % eval_interval == 0 and batch_index != 0


class Progress:
    """A tqdm bar per epoch on a terminal; plain lines (about ten an epoch) elsewhere.

    Each line (and the bar's note, as often) gives the accuracy and loss of the training
    batches since the previous line, as the forward pass computed them before each update
    ("batches"), and the latest evaluation of the whole sets, with the batch it followed
    (for a pack, each run's accuracies in the order of its runs).
    """

    def __init__(self, nb_epochs, nb_batches, stream=sys.stderr):
        self.nb_epochs, self.nb_batches, self.stream = nb_epochs, nb_batches, stream
        self.interactive = stream.isatty()
        self.bar = None

    def start_epoch(self, epoch):
        self.epoch, self.started = epoch, time.monotonic()
        if self.interactive:
            from tqdm import tqdm
            self.bar = tqdm(total=self.nb_batches, desc=f"epoch {epoch + 1}/{self.nb_epochs}",
                            unit="batch", file=self.stream, leave=False, dynamic_ncols=True)

    def batch_done(self, batch_index, statistics, runner):
        """After each batch: move the bar; at each tenth of the epoch, a line or a note."""
        if self.bar is not None:
            self.bar.update(1)
        if (batch_index + 1) % max(1, self.nb_batches // 10):
            return
        running = runner.running_statistics()
        if running is None:
            batches = ""
        elif isinstance(running, tuple):
            batches = f"batches acc {running[0]:.4f} loss {running[1]:.4f}; "
        else:  # a pack's list, a pair per run
            batches = "batches acc " + " ".join(f"{accuracy:.4f}" for accuracy, _ in running) + "; "
        note = batches + latest(statistics)
        if self.bar is not None:
            self.bar.set_postfix_str(note, refresh=False)
            return
        print(f"epoch {self.epoch + 1}/{self.nb_epochs} batch {batch_index + 1}/"
              f"{self.nb_batches} {time.monotonic() - self.started:.1f}s {note}",
              file=self.stream, flush=True)

    def end_epoch(self, statistics):
        if self.bar is not None:
            self.bar.close()
            self.bar = None
        print(f"epoch {self.epoch + 1}/{self.nb_epochs} done in "
              f"{time.monotonic() - self.started:.1f}s: {latest(statistics)}", flush=True)


def latest(statistics):
    """Statistics.latest() of a single run; of a pack (a list), the test accuracies in order."""
    if isinstance(statistics, Statistics):
        return statistics.latest()
    return "test acc " + " ".join(f"{run.values['test_acc'][-1]:.4f}" for run in statistics)


class Diverged(RuntimeError):
    """Weights, directions or statistics stopped being finite; the message says where.

    In a pack, `runs` maps the position of each run at fault to its own message.
    """

    def __init__(self, message, runs=None):
        super().__init__(message)
        self.runs = runs


@dataclasses.dataclass(frozen=True)
class StepSettings:
    """What a training step needs: the rule, the learning rate, lambda of the orthogonal
    regulariser, and every how many batches the alignment with BP is logged (0 = never)."""

    algorithm: str
    learning_rate: float
    orthogonal_reg: float = 0.0
    log_alignment: int = 0

    @classmethod
    def of(cls, args):
        """The step settings of run.py's parsed arguments (its settings of these names)."""
        return cls(**{field.name: getattr(args, field.name) for field in dataclasses.fields(cls)})

    @classmethod
    def of_pack(cls, settings):
        """The settings of a pack from its runs' settings (one rule and alignment cadence;
        lambda zero for all runs or for none): a learning rate and lambda per run, tuples."""
        algorithms = {(each.algorithm, each.log_alignment, each.orthogonal_reg == 0)
                      for each in settings}
        if len(algorithms) > 1:
            raise ValueError(f"the runs of a pack must share the rule, the alignment cadence and "
                             f"whether lambda is zero, not {sorted(algorithms)}")
        return cls(settings[0].algorithm, tuple(each.learning_rate for each in settings),
                   tuple(each.orthogonal_reg for each in settings), settings[0].log_alignment)

    def select(self, positions):
        """A pack's settings for the runs at `positions`."""
        return dataclasses.replace(
            self, learning_rate=tuple(self.learning_rate[p] for p in positions),
            orthogonal_reg=tuple(self.orthogonal_reg[p] for p in positions))

    def on_backend(self):
        """These settings as a step uses them: a pack's per-run learning rates and lambdas as
        backend arrays of shape (runs, 1, 1) (lambda 0.0 when it is zero for every run)."""
        if not isinstance(self.learning_rate, tuple):
            return self

        def per_run(values):
            return backend.to_device(numpy.asarray(values, dtype=float).reshape(-1, 1, 1))
        return dataclasses.replace(
            self, learning_rate=per_run(self.learning_rate),
            orthogonal_reg=per_run(self.orthogonal_reg) if any(self.orthogonal_reg) else 0.0)


def runs_of(net, statistics):
    """[(run network, its Statistics, take)] for each run of a pack (`take(array)` is the
    run's part of a pack array); [(net, statistics, identity)] for a single run."""
    if net.runs is None:
        return [(net, statistics, lambda array: array)]
    return [(net.run(position), statistics[position],
             lambda array, position=position: array[position])
            for position in range(net.runs)]


def finiteness_sums(arrays, out=None):
    """Row sums of every array (a 1-d array counts as one row), one after another in `out`
    (made if None; its size is the arrays' total number of rows).

    A sum is finite only if every element is (inf and NaN propagate; inf - inf is NaN), so
    finite sums prove everything finite; a non-finite one (or an overflow of finite values)
    calls for a closer look. One reduction per array, each over many rows at once (on a GPU
    one reduction of a whole array would run in one block), no wait for the GPU.
    """
    xp = backend.array_module(arrays[0])
    rows = [array.size // array.shape[-1] if array.ndim > 1 else 1 for array in arrays]
    if out is None:
        out = xp.empty(sum(rows), dtype=arrays[0].dtype)
    start = 0
    with numpy.errstate(over="ignore", invalid="ignore"):
        for array, count in zip(arrays, rows):
            xp.sum(array.reshape(count, -1), axis=1, out=out[start:start + count])
            start += count
    return out


def _first_not_finite(arrays):
    """The index of the first array holding a non-finite value, or None (waits for the GPU)."""
    xp = backend.array_module(arrays[0])
    return next((index for index, array in enumerate(arrays)
                 if not bool(xp.isfinite(array).all())), None)


def check_finite(net, forward, directions, statistics, where):
    """Raise Diverged unless the output, every layer's directions (a dict per layer, as the
    rules give them) and the statistics are finite; the message names the first layer at
    fault and `where`.

    One wait for the GPU: the sums of `finiteness_sums`, read together; the arrays are
    looked at one by one only when a sum is not finite. A pack is checked run by run
    (`statistics` a list), and Diverged names the runs at fault (its `runs`).
    """
    if net.runs is not None:
        faults = {}
        for position, (run, run_statistics, take) in enumerate(runs_of(net, statistics)):
            try:
                check_finite(run, list(map(take, forward)),
                             [{name: take(direction) for name, direction in layer.items()}
                              for layer in directions], run_statistics, where)
            except Diverged as diverged:
                faults[position] = str(diverged)
        if faults:
            raise Diverged("; ".join(faults.values()), runs=faults)
        return
    xp = backend.array_module(forward[-1])
    sums = finiteness_sums([forward[-1]] + list(net.named(directions).values()))
    latest = [values[-1] for values in statistics.values.values() if values]
    with numpy.errstate(over="ignore", invalid="ignore"):
        total = sums.sum()
    if bool(xp.isfinite(total)) and all(map(math.isfinite, latest)):
        return
    problem = None
    if _first_not_finite([forward[-1]]) is not None:
        first = _first_not_finite(forward[1:])
        problem = (f"the output of layer {first} is not finite (its weights, or those below "
                   f"it, overflowed)")
    else:
        layers = [_first_not_finite(list(layer.values())) is not None for layer in directions]
        if any(layers):
            top = max(index for index, bad in enumerate(layers) if bad)
            problem = (f"the update directions of layer {top} are not finite (the error passed "
                       f"down through layer {top + 1} overflowed, or its weights are singular "
                       f"and cannot be inverted)" if top + 1 < len(net.layers) else
                       f"the update directions of layer {top} are not finite")
        elif not all(map(math.isfinite, latest)):
            problem = "the accuracy or loss is not finite"
    if problem is None:  # finite values whose sum overflowed: nothing is wrong
        return
    raise Diverged(f"Training diverged at {where}: {problem}. Try a smaller --learning_rate, "
                   f"or a larger --orthogonal_reg, which keeps the weights well conditioned.")


def rule_directions(net, settings, images, one_hot_labels):
    """(forward, targets, directions: a dict per layer) of the settings' rule on one
    batch: the forward pass, the full-width output target, and the rule's directions."""
    forward = net.forward_pass(images)
    targets = output_targets(forward[-1], one_hot_labels)
    directions = getattr(net, RULES[settings.algorithm])(forward, targets,
                                                         settings.orthogonal_reg)
    return forward, targets, directions


def train_step(net, settings, images, one_hot_labels, statistics, epoch, batch_index):
    """One training step on one batch: forward pass, the rule's directions, the update.

    Raises Diverged, before anything reaches the weights or the logs, if the output or a
    direction is not finite or a weight matrix is singular; then logs the alignment with BP
    when due (one row per run and batch, only for a step that passed its checks).
    Waits for the GPU once (the checks); `StepRunner` queues steps without waiting.
    A pack (`settings.on_backend()`, `statistics` a list) is checked run by run.
    """
    try:
        forward, targets, directions = rule_directions(net, settings, images, one_hot_labels)
    except numpy.linalg.LinAlgError as error:
        message = (f"Training diverged at epoch {epoch + 1}, batch {batch_index}: a layer's "
                   f"weights are singular and cannot be inverted ({error}). Try a smaller "
                   f"--learning_rate, or a larger --orthogonal_reg, which keeps the weights "
                   f"well conditioned.")
        if net.runs is None:
            raise Diverged(message) from None
        runs = runs_of(net, statistics)
        # the runs whose weights are singular; all of them if none alone is (never a retry
        # without a run taken out)
        faults = {position: message for position, (run, _, _) in enumerate(runs)
                  if not invertible(run)}
        raise Diverged(message, faults or dict.fromkeys(range(len(runs)), message)) from None
    check_finite(net, forward, directions, statistics, f"epoch {epoch + 1}, batch {batch_index}")
    if settings.log_alignment and batch_index % settings.log_alignment == 0:
        for run, run_statistics, take in runs_of(net, statistics):
            run_statistics.alignment.append([epoch, batch_index] + alignment_with_bp(
                run, settings.algorithm, list(map(take, forward)), take(targets)))
    net.update_parameters(directions, settings.learning_rate)
    return forward


def invertible(net):
    """Whether every weight matrix of a (single) network can be inverted."""
    try:
        net.update_inverse_model()
    except numpy.linalg.LinAlgError:
        return False
    return True


# Why a queued step failed its checks (bits of guard[2]).
SUMS_NOT_FINITE, SOLVE_NOT_EXACT = 1, 2


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


class StepRunner:
    """Runs the training steps of one network, or of a pack, checked as `train_step` checks them.

    On the host each step is `train_step`, checked at once. On a GPU (`deferred`) a step is
    queued without waiting for the GPU: its checks (`finiteness_sums`; the residuals of the
    kept inverses, `inv_layer.KeptInverse`, that replace LU solves) go into a guard that
    stays on the GPU. guard = [steps queued, index of the first that failed or -1, why it
    failed: SUMS_NOT_FINITE | SOLVE_NOT_EXACT]; once a step has failed, the optimiser leaves
    the weights alone for the rest of the window. At `settle()` (before every evaluation,
    alignment log and epoch end, and every CHECK_EVERY steps) the host reads the guard; if a
    step failed, that step is redone by `train_step` (LU solves, exact checks: Diverged
    names its layer and batch) and the steps after it are queued again. Only a solve that
    was not exact counts towards the switch to LU solves (FAILURES_PER_100_STEPS, counted
    by step number: a step queued again is the same step). A queued LU solve (after that
    switch) that finds W singular makes the step a checked one, which says where. The
    queued step is captured once as a CUDA graph and replayed (`graphs`), after checking
    that a replay computes what the step does.
    Also keeps a running tally of the training batches' accuracy and loss.

    A pack (`net.runs` not None, `settings` of `StepSettings.of_pack`, `statistics` a list
    with one Statistics per run) shares one guard: a failed check of any run redoes the
    step for all. A run found diverged leaves the pack alone: its position's message goes
    to `diverged` (by the run's index in the pack as made, `run_ids` holds those of the runs
    still training), the others go on from the same step; Diverged is raised when none is left.
    """

    CHECK_EVERY = 50
    # A kept inverse's solve fails in the first steps of a run (the first updates move W
    # most) and whenever W is badly conditioned; more than this many failed steps within
    # the last 100 steps and the run solves by LU from then on.
    FAILURES_PER_100_STEPS = 20

    def __init__(self, net, settings, deferred=None, graphs=None):
        self.net, self.settings = net, settings
        self.step_settings = settings.on_backend()
        self.run_ids = None if net.runs is None else list(range(net.runs))
        self.diverged = {}
        self.xp = backend.array_module(net.layers[0].weight_matrix)
        self.deferred = self.xp is not numpy if deferred is None else deferred
        self.graphs = self.deferred and self.xp is not numpy if graphs is None else graphs
        self.graph, self.inputs, self.graph_difference = None, None, None
        self.window, self.queued_before, self.solver_failures = [], False, []
        self.steps_done, self.check_every, self.redone = 0, self.CHECK_EVERY, 0
        self.kept, self.tally, self.tallied, self.lu_only = [], None, 0, False
        if self.deferred:
            self._prepare_queue()

    def _prepare_queue(self):
        """The kept inverses, the checks vector, the guard: arrays a CUDA graph can keep."""
        net, xp = self.net, self.xp
        if self.settings.algorithm != "BP" and not self.lu_only:
            net.keep_inverses()
        dtype = net.layers[0].weight_matrix.dtype
        self.kept = [layer.kept_inverse for layer in net.layers if layer.kept_inverse]
        self.sums = None  # made at the first queued step, when the batch size is known
        runs = net.runs or 1
        self.bounds = xp.zeros(max(1, len(self.kept)) * runs, dtype=dtype)
        for slot, kept in enumerate(self.kept):
            kept.bound = self.bounds[slot * runs:(slot + 1) * runs]
        self.tolerance = self.kept[0].tolerance if self.kept else 0.0
        self.guard = xp.asarray(numpy.array([0, -1, 0], dtype=numpy.int64))

    def step(self, images, one_hot_labels, statistics, epoch, batch_index):
        """Train on one batch (device arrays; a pack's stacked, one per run in `run_ids`): at
        once on the host, queued on a GPU."""
        self.steps_done += 1
        self._step(images, one_hot_labels, statistics, epoch, batch_index, self.steps_done - 1)

    def _step(self, images, one_hot_labels, statistics, epoch, batch_index, step_number):
        """`step` of the step numbered `step_number` (0-based, in this runner's life): a new
        one, or one queued again after a failed step of its window (`settle`)."""
        alignment_due = (self.settings.log_alignment
                         and batch_index % self.settings.log_alignment == 0)
        self.tallied += 1
        if self.deferred and not alignment_due:
            self.window.append((images, one_hot_labels, epoch, batch_index, self.run_ids,
                                step_number))
            try:
                self._queue(images, one_hot_labels)
            except numpy.linalg.LinAlgError:  # an LU solve (no kept inverses) found W singular
                self.window.pop()  # nothing of it was queued: check it (Diverged says where)
            else:
                if len(self.window) >= self.check_every:
                    self.settle(statistics)
                return
        self.settle(statistics)
        forward, one_hot_labels = self._checked_step(images, one_hot_labels, statistics,
                                                     epoch, batch_index, self.run_ids)
        self._tally(forward[-1], one_hot_labels)

    def _of_runs_now(self, arrays, run_ids):
        """A pack's arrays (one row per run of `run_ids`) cut to the runs still training."""
        if run_ids == self.run_ids:
            return arrays
        positions = [run_ids.index(run) for run in self.run_ids]
        return [array[positions] for array in arrays]

    def _checked_step(self, images, one_hot_labels, statistics, epoch, batch_index, run_ids):
        """`train_step`, with LU solves (the kept inverses set aside for it); a pack's runs
        found diverged are taken out and the step is done again for the others. Returns
        the forward pass and the labels of the runs trained."""
        while True:
            images, one_hot_labels = self._of_runs_now((images, one_hot_labels), run_ids)
            run_ids = self.run_ids
            kept = self.kept
            for each in kept:
                each.active = False
            try:
                return train_step(self.net, self.step_settings, images, one_hot_labels,
                                  statistics, epoch, batch_index), one_hot_labels
            except Diverged as diverged:
                if diverged.runs is None:
                    raise
                self._drop(diverged.runs, statistics)
            finally:
                for each in kept:
                    each.active = True

    def _drop(self, faults, statistics):
        """Take the diverged runs at the positions of `faults` ({position: message}) out of
        the pack (`remove`); raise Diverged when no run is left."""
        for position, message in faults.items():
            self.diverged[self.run_ids[position]] = message
        if len(faults) == len(self.run_ids):
            raise Diverged("every run of the pack diverged: " + "; ".join(faults.values()),
                           runs=faults)
        self.remove(faults, statistics)

    def remove(self, positions, statistics):
        """Take the runs at `positions` out of the pack (between steps: a run diverged or has
        its epochs); the others go on as a pack of their own, their statistics list
        shortened in place. With no run left, `run_ids` is empty and nothing else changes."""
        keep = [position for position in range(len(self.run_ids)) if position not in positions]
        if not keep:
            self.run_ids = []
            return
        self.settle(statistics)
        self.net = self.net.select(keep)
        self.run_ids = [self.run_ids[position] for position in keep]
        statistics[:] = [statistics[position] for position in keep]
        self.settings = self.settings.select(keep)
        self.step_settings = self.settings.on_backend()
        self.graph, self.inputs, self.queued_before = None, None, False
        if self.tally is not None:  # the survivors' tally goes on (a copy: no graph has it)
            self.tally = self.tally[keep]
        if self.deferred:
            self._prepare_queue()

    def _queued_step(self, images, one_hot_labels):
        """The step without waiting: directions, checks into the guard, guarded update."""
        forward, _, directions = rule_directions(self.net, self.step_settings, images,
                                                 one_hot_labels)
        self.sums = finiteness_sums([forward[-1]] + list(self.net.named(directions).values()),
                                    self.sums)
        _UPDATE_GUARD(self.sums, numpy.int32(len(self.sums)), self.bounds,
                      numpy.int32(len(self.bounds) if self.kept else 0),
                      self.sums.dtype.type(self.tolerance), self.guard, size=1)
        self.net.update_parameters(directions, self.step_settings.learning_rate, self.guard)
        self._tally(forward[-1], one_hot_labels)

    def _queue(self, images, one_hot_labels):
        """Queue one step: eagerly the first time, then as replays of a captured graph."""
        if self.graph is None and self.graphs and self.queued_before:
            self.graph = self._capture(images, one_hot_labels)
            return  # _capture ran this step, replaying the graph or not
        if self.graph is None:
            self._queued_step(images, one_hot_labels)
            self.queued_before = True
            return
        self.inputs[0][...] = images
        self.inputs[1][...] = one_hot_labels
        self.graph.launch()

    def _arrays_of_a_step(self):
        """Every array a queued step changes (weights, moments, kept inverses, guard, tally)."""
        arrays = list(self.net.state().values()) + [self.guard, self.sums, self.bounds,
                                                    self.tally]
        return arrays + [kept.inverse for kept in self.kept]

    def _capture(self, images, one_hot_labels):
        """A CUDA graph of `_queued_step` on fixed input arrays, run on this batch: kept only
        if its replay gives what the step itself gives (else None: steps stay eager). Either
        way this batch's step is done."""
        xp = self.xp
        self.inputs = (xp.empty_like(images), xp.empty_like(one_hot_labels))
        self.inputs[0][...] = images
        self.inputs[1][...] = one_hot_labels
        arrays = self._arrays_of_a_step()
        before = [array.copy() for array in arrays]
        try:
            graph = backend.Graph.capture(lambda: self._queued_step(*self.inputs))
        except Exception as error:  # a CuPy or driver without the capture this needs
            print(f"note: CUDA graph capture failed ({error!r}); steps run without graphs.",
                  file=sys.stderr)
            self.graphs = False
            self._queued_step(images, one_hot_labels)
            return None
        self._queued_step(*self.inputs)
        eager = [array.copy() for array in arrays]
        for array, saved in zip(arrays, before):
            array[...] = saved
        graph.launch()
        self.graph_difference = max(
            float(xp.abs(array - expected).max() / max(float(xp.abs(expected).max()), 1e-300))
            for array, expected in zip(arrays, eager) if array.size)
        if self.graph_difference <= 1e-12:
            return graph
        print(f"note: a CUDA graph replay differed from the step by {self.graph_difference:.1e} "
              f"(relative); steps run without graphs.", file=sys.stderr)
        for array, expected in zip(arrays, eager):
            array[...] = expected
        self.graphs = False
        return None

    def reset_guard(self):
        """Start a new window: no step queued, none failed."""
        self.guard[0], self.guard[1], self.guard[2] = 0, -1, 0

    def settle(self, statistics):
        """Wait for the queued steps and read the guard; redo from a failed step (see class)."""
        if not self.window:
            return
        steps, first_failed, reason = (int(value) for value in backend.to_host(self.guard))
        window, self.window = self.window, []
        self.reset_guard()
        assert steps == len(window), (steps, len(window))
        if first_failed < 0:
            self.check_every = min(2 * self.check_every, self.CHECK_EVERY)
            return
        self.check_every = 1  # failures come in runs (a run's first steps): look sooner
        for layer in self.net.layers:  # a kept inverse may be garbage now
            if layer.kept_inverse is not None:
                layer.kept_inverse.reset(layer.weight_matrix)
        images, one_hot_labels, epoch, batch_index, run_ids, failed_at = window[first_failed]
        self._checked_step(images, one_hot_labels, statistics, epoch, batch_index, run_ids)
        # train_step found nothing wrong: a solve was not exact, or a sum of finite values
        # overflowed (not the solver's failure)
        self.redone += 1
        if reason & SOLVE_NOT_EXACT:
            self._solver_failed(failed_at)
        for images, one_hot_labels, epoch, batch_index, run_ids, number in (
                window[first_failed + 1:]):
            self._step(*self._of_runs_now((images, one_hot_labels), run_ids), statistics, epoch,
                       batch_index, number)
        self.settle(statistics)

    def _solver_failed(self, step_number):
        """Note a kept inverse's failed solve at step `step_number`; past
        FAILURES_PER_100_STEPS of them within 100 steps, solve by LU from now on."""
        self.solver_failures = [step for step in self.solver_failures
                                if step > step_number - 100]
        self.solver_failures.append(step_number)
        if self.kept and len(self.solver_failures) > self.FAILURES_PER_100_STEPS:
            self.net.keep_inverses(False)
            self.kept, self.graph, self.graphs, self.lu_only = [], None, False, True
            print("note: the weights are too badly conditioned for kept inverses; this run "
                  "solves by LU from now on.", file=sys.stderr)

    def _tally(self, output, one_hot_labels):
        """Add each row's hit (argmax of the class outputs == label) and squared error."""
        if self.tally is None:
            self.tally = self.xp.zeros(output.shape[:-1] + (2,), dtype=output.dtype)
        _TALLY_BATCH(output, one_hot_labels, numpy.int32(one_hot_labels.shape[-1]),
                     numpy.int32(output.shape[-1]), self.tally,
                     size=output.size // output.shape[-1])

    def running_statistics(self):
        """(accuracy, loss) of the training batches since the last call, as evaluate()
        computes them for a data set (a list of them, one per run, for a pack), or None if
        there was none (waits for the GPU). Steps redone after a failed check count twice."""
        if not self.tallied or self.tally is None:
            return None
        batch_size = self.tally.shape[-2]
        sums = backend.to_host(self.tally.sum(axis=-2)).reshape(-1, 2)
        samples = self.tallied * batch_size
        self.tally[...] = 0
        self.tallied = 0
        pairs = [(float(hits) / samples, float(squared_error) / samples)
                 for hits, squared_error in sums]
        return pairs[0] if self.run_ids is None else pairs


class Feed:
    """The data a StepRunner trains on: per run a RunData (`to_device_sets`; a triple
    (training set, one-hot targets, test set) is read as a RunData without validation set),
    one for a single run, one per run of a pack (all training sets of one size)."""

    def __init__(self, sets):
        self.sets = [RunData(*each) for each in sets]
        sizes = {len(each.train[0]) for each in self.sets}
        if len(sizes) > 1:
            raise ValueError(f"the training sets of a pack differ in size: {sorted(sizes)}")
        self.batch_size, self.nb_batches = batch_layout(sizes.pop())

    def batch(self, batch_index, run_ids):
        """(images, one-hot labels) of batch `batch_index`: a single run's (run_ids None), or
        the runs' batches stacked (runs, batch, units)."""
        rows = slice(batch_index * self.batch_size, (batch_index + 1) * self.batch_size)
        if run_ids is None:
            return self.sets[0].train[0][rows], self.sets[0].targets[rows]
        xp = backend.array_module(self.sets[0].targets)
        return (xp.stack([self.sets[run].train[0][rows] for run in run_ids]),
                xp.stack([self.sets[run].targets[rows] for run in run_ids]))

    def record(self, net, statistics, run_ids, evaluated_after):
        """Evaluate each run on its own sets (training, test, validation); append to its
        Statistics."""
        for position, (run, run_statistics, _) in enumerate(runs_of(net, statistics)):
            each = self.sets[0 if run_ids is None else run_ids[position]]
            run_statistics.record(run, each.train, each.test, each.validation)
            run_statistics.evaluated_after = evaluated_after


def train_epoch(runner, feed, statistics, eval_interval, progress, should_stop, epoch):
    """Train one epoch over the batches in stored order; evaluate on the cadence.

    Returns False if `should_stop()` turned true at a batch boundary (epoch incomplete);
    raises Diverged as soon as a step is found not finite, before it reaches the weights
    (in a pack, when no run is left; see StepRunner).
    """
    for batch_index in range(feed.nb_batches):
        if should_stop():
            return False
        runner.step(*feed.batch(batch_index, runner.run_ids), statistics, epoch, batch_index)
        if evaluates_after(batch_index, eval_interval, feed.nb_batches):
            runner.settle(statistics)
            feed.record(runner.net, statistics, runner.run_ids, (epoch, batch_index))
        progress.batch_done(batch_index, statistics, runner)
    runner.settle(statistics)
    return True


def alignment_with_bp(net, algorithm, forward, targets):
    """Angle (degrees) per layer between the rule's weight directions and BP's on one batch.

    Both without the regulariser (lambda = 0), so that the angle compares the error signals.
    """
    rule_directions = getattr(net, RULES[algorithm])(forward, targets)
    bp_directions = net.get_backprop_updates(forward, targets)
    return [angle_degrees(rule["weights"], bp["weights"])
            for rule, bp in zip(rule_directions, bp_directions)]


class RunData(typing.NamedTuple):
    """A run's data on the backend (`to_device_sets`): its training set (images, labels),
    the training set's one-hot targets, the test set and the validation set (None without
    one)."""

    train: tuple
    targets: object
    test: tuple
    validation: tuple = None


def to_device_sets(train, test, validation=None):
    """Host (images, labels) pairs -> a RunData of device arrays, with the one-hot training
    targets."""
    def on_device(images, labels):
        return backend.to_device(images), backend.xp().asarray(labels)
    return RunData(on_device(*train), backend.to_device(one_hot(train[1])), on_device(*test),
                   None if validation is None else on_device(*validation))
