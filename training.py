"""The training loop: batches in stored order, the evaluation cadence, progress output."""
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

    def record(self, net, train, test):
        """Evaluate `net` on both sets and append the four numbers."""
        for prefix, (images, labels) in (("training", train), ("test", test)):
            accuracy, loss = evaluate(net, images, labels)
            self.values[prefix + "_acc"].append(accuracy)
            self.values[prefix + "_loss"].append(loss)

    def latest(self):
        """A short text of the latest accuracies."""
        return (f"train acc {self.values['training_acc'][-1]:.4f}, "
                f"test acc {self.values['test_acc'][-1]:.4f}")


class Progress:
    """A tqdm bar per epoch on a terminal; plain lines (about ten an epoch) elsewhere."""

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

    def batch_done(self, batch_index, statistics, evaluated):
        if self.bar is not None:
            self.bar.update(1)
            if evaluated:
                self.bar.set_postfix_str(statistics.latest(), refresh=False)
        elif (batch_index + 1) % max(1, self.nb_batches // 10) == 0:
            print(f"epoch {self.epoch + 1}/{self.nb_epochs} batch {batch_index + 1}/"
                  f"{self.nb_batches} {time.monotonic() - self.started:.1f}s "
                  f"{statistics.latest()}", file=self.stream, flush=True)

    def end_epoch(self, statistics):
        if self.bar is not None:
            self.bar.close()
            self.bar = None
        print(f"epoch {self.epoch + 1}/{self.nb_epochs} done in "
              f"{time.monotonic() - self.started:.1f}s: {statistics.latest()}", flush=True)


class Diverged(RuntimeError):
    """Weights, directions or statistics stopped being finite; the message says where."""


def check_finite(net, forward, bias_directions, statistics, where):
    """Raise Diverged unless the output, every layer's directions and the statistics are finite.

    One host synchronisation a batch: the finiteness flags are gathered into one array.
    """
    xp = backend.array_module(forward[-1])
    flags = backend.to_host(xp.stack([xp.isfinite(forward[-1]).all()]
                                     + [xp.isfinite(d).all() for d in bias_directions]))
    latest = [values[-1] for values in statistics.values.values() if values]
    if flags.all() and all(map(math.isfinite, latest)):
        return
    if not flags[0]:
        first = next(index for index, activity in enumerate(forward[1:])
                     if not bool(xp.isfinite(activity).all()))
        problem = (f"the output of layer {first} is not finite (its weights, or those below "
                   f"it, overflowed)")
    elif not flags.all():
        top = max(index for index, ok in enumerate(flags[1:]) if not ok)
        problem = (f"the update directions of layer {top} are not finite (the error passed "
                   f"down through layer {top + 1} overflowed, or its weights are singular and "
                   f"cannot be inverted)" if top + 1 < len(net.layers) else
                   f"the update directions of layer {top} are not finite")
    else:
        problem = "the accuracy or loss is not finite"
    raise Diverged(f"Training diverged at {where}: {problem}. Try a smaller --learning_rate, "
                   f"or a larger --orthogonal_reg, which keeps the weights well conditioned.")


def train_step(net, algorithm, images, one_hot_labels, settings, statistics, epoch, batch_index):
    """One training step on one batch: forward pass, the rule's directions, the update.

    Logs the alignment with BP when due; raises Diverged, before anything reaches the
    weights, if the output or a direction is not finite.
    """
    forward = net.forward_pass(images)
    targets = output_targets(forward[-1], one_hot_labels)
    try:
        weight_directions, bias_directions = getattr(net, RULES[algorithm])(
            forward, targets, settings["orthogonal_reg"])
    except numpy.linalg.LinAlgError as error:
        raise Diverged(f"Training diverged at epoch {epoch + 1}, batch {batch_index}: a layer's "
                       f"weights are singular and cannot be inverted ({error}). Try a smaller "
                       f"--learning_rate, or a larger --orthogonal_reg, which keeps the weights "
                       f"well conditioned.") from None
    if settings["log_alignment"] and batch_index % settings["log_alignment"] == 0:
        statistics.alignment.append([epoch, batch_index]
                                    + alignment_with_bp(net, algorithm, forward, targets))
    check_finite(net, forward, bias_directions, statistics,
                 f"epoch {epoch + 1}, batch {batch_index}")
    net.update_parameters(weight_directions, bias_directions, settings["learning_rate"])


def train_epoch(net, algorithm, train, train_targets, test, statistics, settings, progress,
                should_stop, epoch):
    """Train one epoch over the batches in stored order; evaluate on the cadence.

    Returns False if `should_stop()` turned true at a batch boundary (epoch incomplete);
    raises Diverged as soon as anything stops being finite, before it reaches the weights.
    """
    images, _ = train
    batch_size, nb_batches = batch_layout(len(images))
    for batch_index in range(nb_batches):
        if should_stop():
            return False
        rows = slice(batch_index * batch_size, (batch_index + 1) * batch_size)
        train_step(net, algorithm, images[rows], train_targets[rows], settings, statistics,
                   epoch, batch_index)
        evaluated = evaluates_after(batch_index, settings["eval_interval"], nb_batches)
        if evaluated:
            statistics.record(net, train, test)
        progress.batch_done(batch_index, statistics, evaluated)
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
