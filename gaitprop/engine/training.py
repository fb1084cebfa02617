"""The training loop: batches in stored order, the evaluation cadence, progress output."""
import dataclasses
import math
import sys
import time
import typing

import numpy

from gaitprop.arrays import backend
from gaitprop.model.net import output_targets
from gaitprop.engine.statistics import Statistics  # noqa: F401 (training.Statistics: the API's name)
from gaitprop.model.functions import angle_degrees, one_hot

RULES = {"BP": "backprop_directions", "GAIT": "gait_directions", "TP": "tp_directions",
         "DTP": "dtp_directions"}


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


def evaluation_moment(epoch, batch_index, nb_batches):
    """When an evaluation right after batch `batch_index` (0-based) of epoch `epoch` (0-based)
    was made, as a run prints it (batches and epochs counted from 1, as the progress line's
    "batch 10/1000" has done 10): "after epoch 1" after its last batch, else "after epoch 1
    batch 991"."""
    if batch_index == nb_batches - 1:
        return f"after epoch {epoch + 1}"
    return f"after epoch {epoch + 1} batch {batch_index + 1}"


def last_evaluation_moment(epochs_done, eval_interval, nb_batches):
    """The `evaluation_moment` of the latest evaluation of a run that has trained
    `epochs_done` whole epochs at the cadence `eval_interval`: "untrained" if it has trained
    none (or the cadence evaluates in no epoch)."""
    evaluated = [batch for batch in range(nb_batches)
                 if evaluates_after(batch, eval_interval, nb_batches)]
    if not epochs_done or not evaluated:
        return "untrained"
    return evaluation_moment(epochs_done - 1, evaluated[-1], nb_batches)


class Progress:
    """A tqdm bar per epoch on a terminal; plain lines (about ten an epoch) elsewhere.

    Each line (and the bar's note, as often) gives the accuracy and loss of the training
    batches since the previous line, as the forward pass computed them before each update
    ("batches"), and the latest evaluation of the whole sets, labelled with when it was made
    ("untrained", "after epoch 1", "after epoch 1 batch 991": batches counted from 1, as
    in "batch 1000/1000") (for a pack, each run's accuracies in the order of its runs).
    """

    def __init__(self, nb_epochs, nb_batches, stream=None):
        self.nb_epochs, self.nb_batches = nb_epochs, nb_batches
        self.stream = sys.stderr if stream is None else stream  # sys.stderr as it is now
        self.interactive = self.stream.isatty()
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
        elif len(running) == 1:
            batches = f"batches acc {running[0][0]:.4f} loss {running[0][1]:.4f}; "
        else:  # a pair per run of the pack
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
    """Of a pack's runs' Statistics (a list): Statistics.latest() of a pack of one, the test
    accuracies in order of several (evaluated together: the first run's moment)."""
    if len(statistics) == 1:
        return statistics[0].latest()
    return (f"evaluation{statistics[0].moment_label()}: test acc "
            + " ".join(f"{run.values['test_acc'][-1]:.4f}" for run in statistics))


class Diverged(RuntimeError):
    """Weights, directions or statistics stopped being finite; the message says where.

    In a pack, `runs` maps the position of each run at fault to its own message.
    """

    def __init__(self, message, runs=None):
        super().__init__(message)
        self.runs = runs


# A learning rate or lambda of StepSettings: a number (or None) for one run; for a pack
# (`of_pack`) a tuple of one per run, which `on_backend` makes a backend array (NumPy or CuPy,
# of shape (runs, 1, 1)). Any: what it is depends on the settings, not on the type.
PerRun = typing.Any


@dataclasses.dataclass(frozen=True)
class StepSettings:
    """What a training step needs: the rule, the learning rate, lambda of the orthogonal
    regulariser, every how many batches the alignment with BP is logged (0 = never), GAIT's
    gamma, the learning rate of learned inverses (None: the learning rate) and the standard
    deviation of the noise they learn on (0: none)."""

    algorithm: str
    learning_rate: PerRun
    orthogonal_reg: PerRun = 0.0
    log_alignment: int = 0
    gamma: float = 0.001
    inv_learning_rate: PerRun = None
    inv_noise: float = 0.0

    @classmethod
    def of(cls, args):
        """The step settings of run.py's parsed arguments (its settings of these names)."""
        return cls(**{field.name: getattr(args, field.name) for field in dataclasses.fields(cls)})

    @property
    def inverse_learning_rate(self):
        """The learning rate of the learned inverses: inv_learning_rate, else learning_rate."""
        return self.learning_rate if self.inv_learning_rate is None else self.inv_learning_rate

    @classmethod
    def of_pack(cls, settings):
        """The settings of a pack from its runs' settings (one rule, alignment cadence, gamma
        and inverses' noise; lambda zero for all runs or for none): a learning rate (of the
        weights and of the inverses) and lambda per run, tuples."""
        algorithms = {(each.algorithm, each.log_alignment, each.gamma, each.inv_noise,
                       each.orthogonal_reg == 0) for each in settings}
        if len(algorithms) > 1:
            raise ValueError(f"the runs of a pack must share the rule, the alignment cadence, "
                             f"gamma, the inverses' noise and whether lambda is zero, not "
                             f"{sorted(algorithms)}")
        return cls(settings[0].algorithm, tuple(each.learning_rate for each in settings),
                   tuple(each.orthogonal_reg for each in settings), settings[0].log_alignment,
                   settings[0].gamma, tuple(each.inverse_learning_rate for each in settings),
                   settings[0].inv_noise)

    def select(self, positions):
        """A pack's settings for the runs at `positions`."""
        return dataclasses.replace(
            self, learning_rate=tuple(self.learning_rate[p] for p in positions),
            orthogonal_reg=tuple(self.orthogonal_reg[p] for p in positions),
            inv_learning_rate=tuple(self.inv_learning_rate[p] for p in positions))

    def on_backend(self):
        """A pack's settings (`of_pack`) as a step uses them: the per-run learning rates and
        lambdas as backend arrays of shape (runs, 1, 1) (lambda 0.0 when it is zero for every
        run)."""
        def per_run(values):
            return backend.to_device(numpy.asarray(values, dtype=float).reshape(-1, 1, 1))
        return dataclasses.replace(
            self, learning_rate=per_run(self.learning_rate),
            inv_learning_rate=per_run(self.inv_learning_rate),
            orthogonal_reg=per_run(self.orthogonal_reg) if any(self.orthogonal_reg) else 0.0)

    def rule_options(self):
        """The keyword arguments of the rule beyond lambda: GAIT's gamma."""
        return {"gamma": self.gamma} if self.algorithm == "GAIT" else {}


def runs_of(net, statistics):
    """[(run network, its Statistics, take)] for each run of a pack (`take(array)` is the
    run's part of a pack array)."""
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


def check_finite(net, forward, directions, statistics, where, inv_noise=0.0):
    """Raise Diverged unless, for every run of the pack `net`, the output, every layer's
    directions (a dict per layer, as the rules give them) and the statistics (a list, one
    Statistics per run) are finite; Diverged names the runs at fault (its `runs`), each
    message the first layer at fault, `where` and what to try (`advice`, which names the
    learned inverses' noise `inv_noise` where there is some)."""
    faults = {}
    for position, (run, run_statistics, take) in enumerate(runs_of(net, statistics)):
        problem = run_fault(run, list(map(take, forward)),
                            [{name: take(direction) for name, direction in layer.items()}
                             for layer in directions], run_statistics)
        if problem is not None:
            faults[position] = (f"Training diverged at {where}: {problem}. "
                                f"{advice(problem, inv_noise)}")
    if faults:
        raise Diverged("; ".join(faults.values()), runs=faults)


class Fault(str):
    """What `run_fault` found not finite (the text), and whether a learned inverse (V, c) is
    at fault (`inverse`)."""

    inverse: bool

    def __new__(cls, text, inverse=False):
        fault = super().__new__(cls, text)
        fault.inverse = inverse
        return fault


def advice(fault, inv_noise=0.0):
    """What a divergence message advises for `fault` (a Fault; None: W's): when a learned
    inverse's V or c is at fault, a smaller --inv_noise where the inverses learn on noise
    (`inv_noise`, its standard deviation), and a smaller --inv_learning_rate; else a smaller
    --learning_rate or a larger --orthogonal_reg."""
    if getattr(fault, "inverse", False) and inv_noise:
        return (f"The learned inverses learn on noise of standard deviation {inv_noise:g} "
                f"(--inv_noise), which can make them overflow: try a smaller --inv_noise, or a "
                f"smaller --inv_learning_rate, the learning rate of the learned inverses (V and "
                f"c).")
    if getattr(fault, "inverse", False):
        return ("Try a smaller --inv_learning_rate, the learning rate of the learned inverses "
                "(V and c).")
    return ("Try a smaller --learning_rate, or a larger --orthogonal_reg, which keeps the "
            "weights well conditioned.")


def run_fault(net, forward, directions, statistics):
    """What is not finite in one run (`net` a network of its own, the other arguments its
    arrays and Statistics): a Fault, or None.

    One wait for the GPU: the sums of `finiteness_sums`, read together; the arrays are
    looked at one by one only when a sum is not finite.
    """
    xp = backend.array_module(forward[-1])
    sums = finiteness_sums([forward[-1]] + list(net.named(directions).values()))
    latest = [values[-1] for values in statistics.values.values() if values]
    with numpy.errstate(over="ignore", invalid="ignore"):
        total = sums.sum()
    if bool(xp.isfinite(total)) and all(map(math.isfinite, latest)):
        return None
    if _first_not_finite([forward[-1]]) is not None:
        first = _first_not_finite(forward[1:])
        return Fault(f"the output of layer {first} is not finite (its weights, or those below "
                     f"it, overflowed)")
    layers = [[name for name, direction in layer.items()
               if _first_not_finite([direction]) is not None] for layer in directions]
    if any(layers):
        top = max(index for index, names in enumerate(layers) if names)
        layer = net.layers[top]
        if all(name in layer.LEARNED_INVERSE for name in layers[top]):
            # the output is finite, so W is: V or c grew until their own directions overflowed
            keys = ", ".join(layer.parameter_names[name][1] + str(top) for name in layers[top])
            return Fault(f"the update directions of layer {top}'s learned inverse ({keys}) are "
                         f"not finite (its backward weights V or biases c grew too large)",
                         inverse=True)
        return Fault(f"the update directions of layer {top} are not finite (the error passed "
                     f"down through layer {top + 1} overflowed, or its weights are singular "
                     f"and cannot be inverted)" if top + 1 < len(net.layers) else
                     f"the update directions of layer {top} are not finite")
    if not all(map(math.isfinite, latest)):
        return Fault("the accuracy or loss is not finite")
    return None  # finite values whose sum overflowed: nothing is wrong


def parameter_faults(net, where, inv_noise=0.0):
    """{position: message} of the runs of the pack `net` with a parameter (W, b, and a learned
    inverse's V, c) that is not finite, each message naming the run's first such parameter,
    `where` and what to try (`advice`, with the learned inverses' noise `inv_noise`). A
    step's checks see its outputs and directions, so what its update made is seen by the
    next step; the last step of an epoch has none before the epoch's checkpoint: this check.
    Waits for the GPU (once per parameter array)."""
    faults: dict[int, str] = {}
    for index, layer in enumerate(net.layers):
        for name, (attribute, letter) in layer.parameter_names.items():
            array = getattr(layer, attribute)
            xp = backend.array_module(array)
            finite = backend.to_host(xp.isfinite(array).reshape(len(array), -1).all(axis=1))
            inverse = name in layer.LEARNED_INVERSE
            owner = f"layer {index}'s learned inverse" if inverse else f"layer {index}"
            kind = "weights" if name.endswith("weights") else "biases"
            problem = Fault(f"{letter}{index} (the {kind} of {owner}) is not finite after the "
                            f"step", inverse=inverse)
            for position in numpy.flatnonzero(~finite):
                faults.setdefault(int(position), f"Training diverged at {where}: {problem}. "
                                                 f"{advice(problem, inv_noise)}")
    return faults


def inverse_noise(net, settings, epoch, batch_index, rows):
    """The noise the learned inverses of the pack `net` learn on at one step (`inv_noise`
    > 0): per learned inverse, an array (runs, rows, its width) of N(0, inv_noise**2)
    values, run k's drawn on the host from numpy.random.default_rng([seed_k, epoch,
    batch_index]) (seed_k: its first layer's seed), inverse by inverse, bottom to top; so a
    resumed run draws what it would have drawn, and a pack's run what it would draw alone.
    () without noise."""
    widths = net.learned_inverse_widths()
    if not settings.inv_noise or not widths:
        return ()
    draws = []
    for seed in net.layers[0].seed:
        generator = numpy.random.default_rng([seed or 0, epoch, batch_index])
        draws.append([generator.standard_normal((rows, width)) * settings.inv_noise
                      for width in widths])
    return tuple(backend.to_device(numpy.stack(layer)) for layer in zip(*draws))


def rule_directions(net, settings, images, one_hot_labels, noise=()):
    """(forward, targets, directions: a dict per layer) of the settings' rule on one
    batch: the forward pass, the full-width output target, and the rule's directions (with
    those of the learned inverses, InvNet.add_inverse_directions, on `noise`)."""
    forward = net.forward_pass(images)
    targets = output_targets(forward[-1], one_hot_labels)
    directions = getattr(net, RULES[settings.algorithm])(forward, targets,
                                                         settings.orthogonal_reg,
                                                         **settings.rule_options())
    net.add_inverse_directions(forward, directions, noise)
    return forward, targets, directions


def train_step(net, settings, images, one_hot_labels, statistics, epoch, batch_index):
    """One training step on one batch: forward pass, the rule's directions, the update.

    Raises Diverged, before anything reaches the weights or the logs, if the output or a
    direction is not finite or a weight matrix is singular; then logs the alignment with BP
    and the learned inverses' quality when due (one row per run and batch, only for a step
    that passed its checks).
    `net` is a pack (of one run or more; `settings` of StepSettings.of_pack, on_backend();
    `statistics` a list, one Statistics per run), checked run by run. Waits for the GPU
    once per run (the checks); `StepRunner` queues steps without waiting.
    """
    try:
        forward, targets, directions = rule_directions(
            net, settings, images, one_hot_labels,
            inverse_noise(net, settings, epoch, batch_index, images.shape[-2]))
    except numpy.linalg.LinAlgError as error:
        message = (f"Training diverged at {batch_name(epoch, batch_index)}: a layer's weights "
                   f"are singular and cannot be inverted ({error}). {advice(None)}")
        runs = runs_of(net, statistics)
        # the runs whose weights are singular; all of them if none alone is (never a retry
        # without a run taken out)
        faults = {position: message for position, (run, _, _) in enumerate(runs)
                  if not invertible(run)}
        raise Diverged(message, faults or dict.fromkeys(range(len(runs)), message)) from None
    check_finite(net, forward, directions, statistics, batch_name(epoch, batch_index),
                 settings.inv_noise)
    if settings.log_alignment and batch_index % settings.log_alignment == 0:
        for run, run_statistics, take in runs_of(net, statistics):
            run_forward = list(map(take, forward))
            run_statistics.alignment.append([epoch, batch_index] + alignment_with_bp(
                run, settings, run_forward, take(targets)))
            if run.learn_inverses:
                reconstruction, distance = zip(*run.inverse_quality(run_forward))
                run_statistics.inverse_quality.append([epoch, batch_index, *reconstruction,
                                                       *distance])
    net.step(directions, settings.learning_rate,
             inverse_learning_rate=settings.inv_learning_rate)
    return forward


def batch_name(epoch, batch_index):
    """Where a step is, as a divergence message says it: batch index 6 of epoch index 0 is
    "epoch 1, batch 7", counted from 1 as a run prints batches (`evaluation_moment`; the
    rows of the files keep 0-based indices)."""
    return f"epoch {epoch + 1}, batch {batch_index + 1}"


def invertible(net):
    """Whether every weight matrix of a (single) network can be inverted."""
    try:
        net.update_inverse_model()
    except numpy.linalg.LinAlgError:
        return False
    return True


class Feed:
    """The data a StepRunner trains on: a RunData per run of the pack (`to_device_sets`; a
    triple (training set, one-hot targets, test set) is read as a RunData without validation
    set), all training sets of one size."""

    def __init__(self, sets):
        self.sets = [RunData(*each) for each in sets]
        sizes = {len(each.train[0]) for each in self.sets}
        if len(sizes) > 1:
            raise ValueError(f"the training sets of a pack differ in size: {sorted(sizes)}")
        self.batch_size, self.nb_batches = batch_layout(sizes.pop())

    def batch(self, batch_index, run_ids):
        """(images, one-hot labels) of batch `batch_index` of the runs `run_ids` (their
        positions in the sets), stacked (runs, batch, units): for one run, views of its sets
        (a stack would copy the batch at every step)."""
        rows = slice(batch_index * self.batch_size, (batch_index + 1) * self.batch_size)
        if len(run_ids) == 1:
            run = self.sets[run_ids[0]]
            return run.train[0][rows][None], run.targets[rows][None]
        xp = backend.array_module(self.sets[0].targets)
        return (xp.stack([self.sets[run].train[0][rows] for run in run_ids]),
                xp.stack([self.sets[run].targets[rows] for run in run_ids]))

    def record(self, net, statistics, run_ids, evaluated_after: tuple[int, int] | None):
        """Evaluate each run on its own sets (training, test, validation); append to its
        Statistics, with when it was made (`evaluated_after`: (epoch, batch index) of the
        step before it, None before training)."""
        moment = ("untrained" if evaluated_after is None
                  else evaluation_moment(*evaluated_after, self.nb_batches))
        for position, (run, run_statistics, _) in enumerate(runs_of(net, statistics)):
            each = self.sets[run_ids[position]]
            run_statistics.record(run, each.train, each.test, each.validation)
            run_statistics.evaluation_moment = moment


def train_epoch(runner, feed, statistics, eval_interval, progress, should_stop, epoch):
    """Train one epoch over the batches in stored order; evaluate on the cadence.

    Returns False if `should_stop()` turned true at a batch boundary (epoch incomplete);
    raises Diverged as soon as a step is found not finite, before it reaches the weights,
    or a parameter after the epoch's last step (before its evaluation; in a pack, when no
    run is left; see StepRunner).
    """
    for batch_index in range(feed.nb_batches):
        if should_stop():
            return False
        runner.step(*feed.batch(batch_index, runner.run_ids), statistics, epoch, batch_index)
        if batch_index == feed.nb_batches - 1:  # no step after it looks at what it updated
            runner.check_parameters(statistics, epoch, batch_index)
        if evaluates_after(batch_index, eval_interval, feed.nb_batches):
            runner.settle(statistics)
            feed.record(runner.net, statistics, runner.run_ids, (epoch, batch_index))
        progress.batch_done(batch_index, statistics, runner)
    runner.settle(statistics)
    return True


def alignment_with_bp(net, settings, forward, targets):
    """Angle (degrees) per layer between the rule's weight directions and BP's on one batch.

    Both without the regulariser (lambda = 0), so that the angle compares the error signals.
    """
    rule_directions = getattr(net, RULES[settings.algorithm])(forward, targets,
                                                              **settings.rule_options())
    bp_directions = net.backprop_directions(forward, targets)
    return [angle_degrees(rule["weights"], bp["weights"])
            for rule, bp in zip(rule_directions, bp_directions)]


class RunData(typing.NamedTuple):
    """A run's data on the backend (`to_device_sets`): its training set (images, labels),
    the training set's one-hot targets, the test set and the validation set (None without
    one)."""

    train: tuple
    targets: object
    test: tuple
    validation: tuple | None = None


def to_device_sets(train, test, validation=None):
    """Host (images, labels) pairs -> a RunData of device arrays, with the one-hot training
    targets."""
    def on_device(images, labels):
        return backend.to_device(images), backend.xp().asarray(labels)
    return RunData(on_device(*train), backend.to_device(one_hot(train[1])), on_device(*test),
                   None if validation is None else on_device(*validation))
