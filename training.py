"""The training loop: batches in stored order, the evaluation cadence, progress output."""
import dataclasses
import math
import sys
import time

import numpy

import backend
import run_folder
from inv_net import output_targets
from utils import angle_degrees, evaluate, one_hot

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


class Statistics:
    """Accuracy and loss on the training and test sets, one value per evaluation, and the
    alignment rows (epoch, batch, angle per layer) of --log_alignment."""

    NAMES = run_folder.STATISTICS

    def __init__(self, values=None, alignment=None):
        self.values = values or {name: [] for name in self.NAMES}
        self.alignment = alignment or []
        self.evaluated_after = None  # (epoch, batch) of the latest evaluation in this process

    def record(self, net, train, test):
        """Evaluate `net` on both sets and append the four numbers."""
        for prefix, (images, labels) in (("training", train), ("test", test)):
            accuracy, loss = evaluate(net, images, labels)
            self.values[prefix + "_acc"].append(accuracy)
            self.values[prefix + "_loss"].append(loss)

    def latest(self):
        """A short text of the latest evaluation: its accuracies and the batch it followed."""
        where = ("" if self.evaluated_after is None else
                 f" (after epoch {self.evaluated_after[0] + 1} batch {self.evaluated_after[1]})")
        return (f"evaluation{where}: train acc {self.values['training_acc'][-1]:.4f}, "
                f"test acc {self.values['test_acc'][-1]:.4f}")


class Progress:
    """A tqdm bar per epoch on a terminal; plain lines (about ten an epoch) elsewhere.

    Each line (and the bar's note, as often) gives the accuracy and loss of the training
    batches since the previous line, as the forward pass computed them before each update
    ("batches"), and the latest evaluation of the whole sets, with the batch it followed.
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
        batches = (f"batches acc {running[0]:.4f} loss {running[1]:.4f}; "
                   if running is not None else "")
        note = batches + statistics.latest()
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
              f"{time.monotonic() - self.started:.1f}s: {statistics.latest()}", flush=True)


class Diverged(RuntimeError):
    """Weights, directions or statistics stopped being finite; the message says where."""


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
        """The step settings of run.py's parsed arguments."""
        return cls(args.algorithm, args.learning_rate, args.orthogonal_reg, args.log_alignment)


def finiteness_sums(arrays, out=None):
    """Row sums of every array (a 1-d array counts as one row), one after another in `out`
    (made if None; its size is the arrays' total number of rows).

    A sum is finite only if every element is (inf and NaN propagate; inf - inf is NaN), so
    finite sums prove everything finite; a non-finite one (or an overflow of finite values)
    calls for a closer look. One reduction per array, each over many rows at once (on a GPU
    one reduction of a whole array would run in one block), no wait for the GPU.
    """
    xp = backend.array_module(arrays[0])
    rows = [array.shape[0] if array.ndim > 1 else 1 for array in arrays]
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


def check_finite(net, forward, weight_directions, bias_directions, statistics, where):
    """Raise Diverged unless the output, every layer's weight and bias directions and the
    statistics are finite; the message names the first layer at fault and `where`.

    One wait for the GPU: the sums of `finiteness_sums`, read together; the arrays are
    looked at one by one only when a sum is not finite.
    """
    xp = backend.array_module(forward[-1])
    sums = finiteness_sums([forward[-1]] + list(weight_directions) + list(bias_directions))
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
        layers = [_first_not_finite([w, b]) is not None
                  for w, b in zip(weight_directions, bias_directions)]
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
    """(forward, targets, weight_directions, bias_directions) of the settings' rule on one
    batch: the forward pass, the full-width output target, and the rule's directions."""
    forward = net.forward_pass(images)
    targets = output_targets(forward[-1], one_hot_labels)
    weight_directions, bias_directions = getattr(net, RULES[settings.algorithm])(
        forward, targets, settings.orthogonal_reg)
    return forward, targets, weight_directions, bias_directions


def train_step(net, settings, images, one_hot_labels, statistics, epoch, batch_index):
    """One training step on one batch: forward pass, the rule's directions, the update.

    Logs the alignment with BP when due; raises Diverged, before anything reaches the
    weights, if the output or a direction is not finite or a weight matrix is singular.
    Waits for the GPU once (the checks); `StepRunner` queues steps without waiting.
    """
    try:
        forward, targets, weight_directions, bias_directions = rule_directions(
            net, settings, images, one_hot_labels)
    except numpy.linalg.LinAlgError as error:
        raise Diverged(f"Training diverged at epoch {epoch + 1}, batch {batch_index}: a layer's "
                       f"weights are singular and cannot be inverted ({error}). Try a smaller "
                       f"--learning_rate, or a larger --orthogonal_reg, which keeps the weights "
                       f"well conditioned.") from None
    if settings.log_alignment and batch_index % settings.log_alignment == 0:
        statistics.alignment.append([epoch, batch_index] + alignment_with_bp(
            net, settings.algorithm, forward, targets))
    check_finite(net, forward, weight_directions, bias_directions, statistics,
                 f"epoch {epoch + 1}, batch {batch_index}")
    net.update_parameters(weight_directions, bias_directions, settings.learning_rate)
    return forward


def _update_guard_on_host(sums, nb_sums, bounds, nb_bounds, tolerance, guard):
    """The guard's update on the host: count the step; note it if it is the first that failed
    (a non-finite sum, or a solve's residual bound above the tolerance)."""
    ok = (numpy.isfinite(sums[:nb_sums].sum())
          and bool(numpy.all(bounds[:nb_bounds] <= tolerance)))
    if guard[1] < 0 and not ok:
        guard[1] = guard[0]
    guard[0] += 1


_UPDATE_GUARD = backend.Fused(
    _update_guard_on_host,
    "raw T sums, int32 nb_sums, raw T bounds, int32 nb_bounds, T tolerance", "raw int64 guard",
    """T total = 0;
    for (int k = 0; k < nb_sums; ++k) total += sums[k];
    bool ok = isfinite(total);
    for (int k = 0; k < nb_bounds; ++k) ok = ok && bounds[k] <= tolerance;
    if (guard[1] < 0 && !ok) guard[1] = guard[0];
    guard[0] += 1""", "update_guard")


def _tally_batch_on_host(outputs, labels, classes, width, tally):
    """Add each row's hit (argmax of its class outputs == its label) and squared error."""
    scores = outputs[:, :classes]
    tally[:, 0] += scores.argmax(axis=1) == labels.argmax(axis=1)
    tally[:, 1] += ((scores - labels) ** 2).sum(axis=1)


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
    """Runs the training steps of one network, checked as `train_step` checks them.

    On the host each step is `train_step`, checked at once. On a GPU (`deferred`) a step is
    queued without waiting for the GPU: its checks (`finiteness_sums`; the residuals of the
    kept inverses, `inv_layer.KeptInverse`, that replace LU solves) go into a guard that
    stays on the GPU. guard = [steps queued, index of the first that failed or -1]; once a
    step has failed, the optimiser leaves the weights alone for the rest of the window. At
    `settle()` (before every evaluation, alignment log and epoch end, and every
    CHECK_EVERY steps) the host reads the guard; if a step failed, that step is redone by
    `train_step` (LU solves, exact checks: Diverged names its layer and batch) and the
    steps after it are queued again. The queued step is captured once as a CUDA graph and
    replayed (`graphs`), after checking that a replay computes what the step does.
    Also keeps a running tally of the training batches' accuracy and loss.
    """

    CHECK_EVERY = 50
    # A kept inverse's solve fails in the first steps of a run (the first updates move W
    # most) and whenever W is badly conditioned; more than this many failed steps within
    # the last 100 steps and the run solves by LU from then on.
    FAILURES_PER_100_STEPS = 20

    def __init__(self, net, settings, deferred=None, graphs=None):
        self.net, self.settings = net, settings
        self.xp = backend.array_module(net.layers[0].weight_matrix)
        self.deferred = self.xp is not numpy if deferred is None else deferred
        self.graphs = self.deferred and self.xp is not numpy if graphs is None else graphs
        self.graph, self.inputs, self.graph_difference = None, None, None
        self.window, self.queued_before, self.solver_failures = [], False, []
        self.steps_done, self.check_every, self.redone = 0, self.CHECK_EVERY, 0
        self.kept, self.tally, self.tallied = [], None, 0
        if self.deferred:
            self._prepare_queue()

    def _prepare_queue(self):
        """The kept inverses, the checks vector, the guard: arrays a CUDA graph can keep."""
        net, xp = self.net, self.xp
        if self.settings.algorithm != "BP":
            net.keep_inverses()
        dtype = net.layers[0].weight_matrix.dtype
        self.kept = [layer.kept_inverse for layer in net.layers if layer.kept_inverse]
        self.sums = None  # made at the first queued step, when the batch size is known
        self.bounds = xp.zeros(max(1, len(self.kept)), dtype=dtype)
        for slot, kept in enumerate(self.kept):
            kept.bound = self.bounds[slot:slot + 1]
        self.tolerance = self.kept[0].tolerance if self.kept else 0.0
        self.guard = xp.asarray(numpy.array([0, -1], dtype=numpy.int64))

    def step(self, images, one_hot_labels, statistics, epoch, batch_index):
        """Train on one batch (device arrays): at once on the host, queued on a GPU."""
        alignment_due = (self.settings.log_alignment
                         and batch_index % self.settings.log_alignment == 0)
        self.tallied += 1
        self.steps_done += 1
        if not self.deferred or alignment_due:
            self.settle(statistics)
            forward = self._checked_step(images, one_hot_labels, statistics, epoch, batch_index)
            self._tally(forward[-1], one_hot_labels)
            return
        self.window.append((images, one_hot_labels, epoch, batch_index))
        self._queue(images, one_hot_labels)
        if len(self.window) >= self.check_every:
            self.settle(statistics)

    def _checked_step(self, images, one_hot_labels, statistics, epoch, batch_index):
        """`train_step`, with LU solves (the kept inverses set aside for it)."""
        for kept in self.kept:
            kept.active = False
        try:
            return train_step(self.net, self.settings, images, one_hot_labels, statistics,
                              epoch, batch_index)
        finally:
            for kept in self.kept:
                kept.active = True

    def _queued_step(self, images, one_hot_labels):
        """The step without waiting: directions, checks into the guard, guarded update."""
        forward, _, weight_directions, bias_directions = rule_directions(
            self.net, self.settings, images, one_hot_labels)
        self.sums = finiteness_sums([forward[-1]] + weight_directions + bias_directions,
                                    self.sums)
        _UPDATE_GUARD(self.sums, numpy.int32(len(self.sums)), self.bounds,
                      numpy.int32(len(self.kept)), self.sums.dtype.type(self.tolerance),
                      self.guard, size=1)
        self.net.update_parameters(weight_directions, bias_directions,
                                   self.settings.learning_rate, self.guard)
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
        self.guard[0], self.guard[1] = 0, -1

    def settle(self, statistics):
        """Wait for the queued steps and read the guard; redo from a failed step (see class)."""
        if not self.window:
            return
        steps, first_failed = (int(value) for value in backend.to_host(self.guard))
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
        self._checked_step(*window[first_failed][:2], statistics, *window[first_failed][2:])
        # train_step found nothing wrong: a solve was not exact (or a sum overflowed)
        self.redone += 1
        failed_at = self.steps_done - len(window) + first_failed
        self.solver_failures = [step for step in self.solver_failures if step > failed_at - 100]
        self.solver_failures.append(failed_at)
        if self.kept and len(self.solver_failures) > self.FAILURES_PER_100_STEPS:
            self.net.keep_inverses(False)
            self.kept, self.graph, self.graphs = [], None, False
            print("note: the weights are too badly conditioned for kept inverses; this run "
                  "solves by LU from now on.", file=sys.stderr)
        for images, one_hot_labels, epoch, batch_index in window[first_failed + 1:]:
            self.step(images, one_hot_labels, statistics, epoch, batch_index)
        self.settle(statistics)

    def _tally(self, output, one_hot_labels):
        """Add each row's hit (argmax of the class outputs == label) and squared error."""
        if self.tally is None:
            self.tally = self.xp.zeros((len(output), 2), dtype=output.dtype)
        _TALLY_BATCH(output, one_hot_labels, numpy.int32(one_hot_labels.shape[1]),
                     numpy.int32(output.shape[1]), self.tally, size=len(output))

    def running_statistics(self):
        """(accuracy, loss) of the training batches since the last call, as evaluate()
        computes them for a data set, or None if there was none (waits for the GPU). Steps
        redone after a failed check count twice."""
        if not self.tallied:
            return None
        hits, squared_error = (float(value) for value in backend.to_host(self.tally.sum(axis=0)))
        samples = self.tallied * len(self.tally)
        self.tally[...] = 0
        self.tallied = 0
        return hits / samples, squared_error / samples


def train_epoch(runner, train, train_targets, test, statistics, eval_interval, progress,
                should_stop, epoch):
    """Train one epoch over the batches in stored order; evaluate on the cadence.

    Returns False if `should_stop()` turned true at a batch boundary (epoch incomplete);
    raises Diverged as soon as a step is found not finite, before it reaches the weights.
    """
    images, _ = train
    batch_size, nb_batches = batch_layout(len(images))
    for batch_index in range(nb_batches):
        if should_stop():
            return False
        rows = slice(batch_index * batch_size, (batch_index + 1) * batch_size)
        runner.step(images[rows], train_targets[rows], statistics, epoch, batch_index)
        if evaluates_after(batch_index, eval_interval, nb_batches):
            runner.settle(statistics)
            statistics.record(runner.net, train, test)
            statistics.evaluated_after = (epoch, batch_index)
        progress.batch_done(batch_index, statistics, runner)
    runner.settle(statistics)
    return True


def alignment_with_bp(net, algorithm, forward, targets):
    """Angle (degrees) per layer between the rule's weight directions and BP's on one batch.

    Both without the regulariser (lambda = 0), so that the angle compares the error signals.
    """
    rule_directions = getattr(net, RULES[algorithm])(forward, targets)[0]
    bp_directions = net.get_backprop_updates(forward, targets)[0]
    return [angle_degrees(a, b) for a, b in zip(rule_directions, bp_directions)]


def to_device_sets(train, test):
    """Host (images, labels) pairs -> device arrays, plus the one-hot training targets."""
    device_sets = [(backend.to_device(images), backend.xp().asarray(labels))
                   for images, labels in (train, test)]
    return device_sets[0], device_sets[1], backend.to_device(one_hot(train[1]))
