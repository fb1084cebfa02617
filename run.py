#!/usr/bin/env python3
"""Train an invertible multilayer perceptron with BP, GAIT-prop or TP: the command line.

Example: ./run.py --algorithm=GAIT --dataset=MNIST --nb_layers=4 --orthogonal_reg=0.1
Exit statuses: 0 finished, 1 failed (I/O, data, another process), 2 bad input,
3 diverged, 130 interrupted (Ctrl-C), 143 terminated (SIGTERM).
"""
import shlex
import signal
import sys
import warnings

from run_folder import EXIT_DIVERGED, EXIT_FINISHED, EXIT_SIGNAL
from stopping import StopSignal, stop_before_training

if __name__ == "__main__":  # installed before the slow imports below
    for _signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(_signum, stop_before_training)

import backend  # noqa: E402
import data  # noqa: E402
import step_runner  # noqa: E402
import training  # noqa: E402
from folders import Folders, Run, guarded  # noqa: E402
from settings import build_parser  # noqa: E402


def resume_command(argv):
    """The command line that resumes this run."""
    kept = [arg for arg in argv if arg not in ("--load", "--overwrite")]
    return shlex.join([sys.argv[0]] + kept + ["--load"])


def train_run(args, argv, folder, stored):
    """Load data, build or restore the network, train to --nb_epochs, keep the folder current."""
    sets = training.to_device_sets(*data.load_run_sets(args.dataset, args.data_dir,
                                                       args.validation))
    run = Run(args, argv, folder, stored)

    def stopped_at_once():
        """A second Ctrl-C / SIGTERM: the files are whole; record the run as interrupted."""
        if run.record["status"] == "running":
            run.interrupted(at_once=True)
            print(f"Stopped at once; {folder} holds the checkpoint of the last completed epoch. "
                  f"Resume with:\n  {resume_command(argv)}", file=sys.stderr, flush=True)
    stop = StopSignal(stopped_at_once)
    statistics = run.begin(sets)
    feed = training.Feed([sets])
    progress = training.Progress(args.nb_epochs, feed.nb_batches)
    runner = step_runner.StepRunner(run.net, training.StepSettings.of(args))
    while run.epoch < args.nb_epochs:
        progress.start_epoch(run.epoch)
        try:
            completed = training.train_epoch(runner, feed, statistics, args.eval_interval,
                                             progress, stop, run.epoch)
        except training.Diverged as diverged:
            run.diverged(str(diverged))
            return EXIT_DIVERGED
        if not completed:
            run.interrupted()
            print(f"Stopped during epoch {run.epoch + 1}; {folder} holds the checkpoint after "
                  f"epoch {run.epoch}. Resume with:\n  {resume_command(argv)}", file=sys.stderr)
            return EXIT_SIGNAL[stop.received]
        progress.end_epoch(statistics)
        run.end_epoch(run.net)
    run.finished()
    print(f"Finished {run.epoch} epochs; results in {folder}")
    return EXIT_FINISHED


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    args = build_parser().parse_args(argv)
    warnings.simplefilter("ignore")  # overflow and singular-matrix warnings: divergence is checked
    folders = Folders()

    def work():
        print(f"Using {backend.select(args.backend, args.device, args.dtype)}")
        folder, stored = folders.open(args)
        return train_run(args, argv, folder, stored)
    return guarded("run.py", folders, work)


if __name__ == "__main__":
    sys.exit(main())
