"""Train runs (folders.Run: a results folder each) to their epochs as packs: `train_in_packs`
groups them by epoch, `train_pack` trains one group as one pack (inv_net.InvNet.stack) and
keeps every run's folder current. run.py trains a pack of one run, pack.py several; the
training machinery below (step_runner.StepRunner, training.Feed) sees packs only."""
import sys

from gaitprop.engine import cadence
from gaitprop.engine import progress as progress_lines
from gaitprop.engine import step_runner
from gaitprop.engine import training
from gaitprop.engine.faults import Diverged
from gaitprop.engine.step import StepSettings
from gaitprop.model.net import InvNet
from gaitprop.runs.exit_status import EXIT_DIVERGED, EXIT_FINISHED, EXIT_SIGNAL


def data_key(args) -> tuple[str, str, int]:
    """What names a run's data (data.load_run_sets' arguments): data set, data root and the
    number of validation images held out."""
    return args.dataset, args.data_dir, args.validation


def where_checkpoints_are(runs):
    """What a stopped process tells of its checkpoints: the folder of a single run, or that
    each folder holds its own."""
    if len(runs) == 1:
        return f"{runs[0].folder} holds the checkpoint after epoch {runs[0].epoch}"
    return "each results folder holds the checkpoint after its last completed epoch"


def train_pack(runs, sets, command, stop, until=None):
    """Train `runs` (folders.Run, begun, all at the same epoch) as one pack until each has its
    epochs, has diverged or a signal stops them (`stop`, a stopping.StopSignal), or they reach
    epoch `until` (each run's `net` is then its state in the pack, to go on in another).
    `sets`: the device data (training.RunData) by `data_key`; `command`: the command line
    that resumes them. Returns the exit status."""
    args = runs[0].args
    net = InvNet.stack([each.net for each in runs])
    settings = StepSettings.of_pack([StepSettings.of(each.args)
                                              for each in runs])
    # one InversePolicy for the pack: switched to LU solves if any run's checkpoint says so
    runner = step_runner.StepRunner(net, settings, lu_only=any(each.lu_only for each in runs))
    statistics = [each.statistics for each in runs]
    feed = training.Feed([sets[data_key(each.args)] for each in runs])
    for each in runs:  # an evaluation not made in this process: the untrained or a checkpoint's
        if each.statistics.evaluation_moment is None:
            each.statistics.evaluation_moment = cadence.last_evaluation_moment(
                each.epoch, each.args.eval_interval, feed.nb_batches)
    progress = progress_lines.Progress(max(each.args.nb_epochs for each in runs), feed.nb_batches)
    reported, status = set(), EXIT_FINISHED
    while runner.run_ids:
        epoch = runs[runner.run_ids[0]].epoch
        progress.start_epoch(epoch)
        try:
            completed = training.train_epoch(runner, feed, statistics, args.eval_interval,
                                             progress, stop, epoch)
        except Diverged:
            completed = None  # every run left has diverged
        for index, message in runner.diverged.items():
            if index not in reported:
                reported.add(index)
                runs[index].diverged(message)
                status = EXIT_DIVERGED
        if completed is None:
            break
        if not completed:
            stopped = [runs[index] for index in runner.run_ids]
            for each in stopped:
                each.interrupted()
            print(f"Stopped during epoch {epoch + 1}; {where_checkpoints_are(stopped)}. "
                  f"Resume with:\n  {command}", file=sys.stderr)
            return EXIT_SIGNAL[stop.received]
        progress.end_epoch(statistics)
        done = []
        for position, index in enumerate(runner.run_ids):
            runs[index].net = runner.net.run(position)
            runs[index].end_epoch(runs[index].net, runner.inverses.lu_only)
            if runs[index].epoch >= runs[index].args.nb_epochs:
                runs[index].finished()
                print(f"Finished {runs[index].epoch} epochs; results in {runs[index].folder}")
                done.append(position)
        if done:
            runner.remove(done, statistics)
        if runner.run_ids and runs[runner.run_ids[0]].epoch == until:
            break
    return status


def training_left(run_):
    """Whether `run_` (a folders.Run) still trains in this process: it is running (not diverged)
    and short of its epochs."""
    return run_.record["status"] == "running" and run_.epoch < run_.args.nb_epochs


def train_in_packs(runs, train_group):
    """Train `runs` (folders.Run, begun) in packs of runs at one epoch: the runs at the earliest
    epoch train as a pack (`train_group(group, until)`, an exit status) until they reach
    `until`, the epoch of the next runs, which then join them in one pack. A run that has
    diverged never trains again; a run already at its epochs is recorded finished (before the
    others train: a signal that stops them leaves it finished). Returns the exit status (the
    worst; a signal's at once, every run left recorded interrupted)."""
    def finish_those_at_their_epochs():
        for each in runs:
            if each.record["status"] == "running" and each.epoch >= each.args.nb_epochs:
                each.finished()
                print(f"Finished {each.epoch} epochs; results in {each.folder}")
    finish_those_at_their_epochs()  # resumed at their epochs: nothing left to train
    status = EXIT_FINISHED
    while any(map(training_left, runs)):
        epochs = sorted({each.epoch for each in runs if training_left(each)})
        group = [each for each in runs if training_left(each) and each.epoch == epochs[0]]
        outcome = train_group(group, epochs[1] if len(epochs) > 1 else None)
        if outcome in EXIT_SIGNAL.values():
            for each in runs:  # the runs of later groups, too
                each.interrupted()
            return outcome
        status = max(status, outcome)
    finish_those_at_their_epochs()  # every run still running is at its epochs now
    return status


def train_runs(runs, sets, command, stop):
    """Begin every run (folders.Run) on its data (`sets` by `data_key`) and train them all
    (`train_in_packs`, each group by `train_pack`); the exit status."""
    for each in runs:
        each.begin(sets[data_key(each.args)])
    return train_in_packs(runs, lambda group, until: train_pack(group, sets, command, stop,
                                                                until))
