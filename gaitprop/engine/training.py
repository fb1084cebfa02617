"""The training loop: the data a pack trains on (`Feed`, `RunData`), batches in stored order
and evaluations on the cadence (`train_epoch`)."""
import typing

from gaitprop.arrays import backend
from gaitprop.engine.cadence import batch_layout, evaluates_after, evaluation_moment
from gaitprop.engine.faults import runs_of
from gaitprop.engine.statistics import Statistics  # noqa: F401 (training.Statistics: the API's name)
from gaitprop.model.functions import one_hot


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
