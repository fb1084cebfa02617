"""Train an invertible multilayer perceptron with BP, GAIT-prop or TP: the command line.

Example: ./run.py --algorithm=GAIT --dataset=MNIST --nb_layers=4 --orthogonal_reg=0.1
The exit statuses (gaitprop.runs.exit_status) and what each asks of the user: docs/flags.md.
"""
import shlex
import sys
import warnings

from gaitprop.runs.invocation import typed
from gaitprop.runs.stopping import StopSignal, install_stop_handlers, script_command

if __name__ == "__main__":  # python -m gaitprop.cli.run: before the slow imports below
    install_stop_handlers()

from gaitprop.arrays import backend  # noqa: E402
from gaitprop.runs import data  # noqa: E402
from gaitprop.runs import trainer  # noqa: E402
from gaitprop.engine import training  # noqa: E402
from gaitprop.runs.folders import Folders, Run, guarded  # noqa: E402
from gaitprop.runs.settings import build_parser  # noqa: E402


def resume_command(argv):
    """The command line that resumes this run, as it runs from the shell (`script_command`)."""
    kept = [arg for arg in argv if arg not in ("--load", "--overwrite")]
    return shlex.join(script_command(sys.argv[0]) + kept + ["--load"])


def train_run(args, argv, folder, stored, sets):
    """Build or restore the network, train to --nb_epochs on `sets` ({data key: the run's
    device sets}) as a pack of one (trainer.train_runs), keep the folder current. Returns the
    exit status."""
    run = Run(args, argv, folder, stored)

    def stopped_at_once():
        """A second Ctrl-C / SIGTERM: the files are whole; record the run as interrupted."""
        if run.record["status"] == "running":
            run.interrupted(at_once=True)
            print(f"Stopped at once; {folder} holds the checkpoint of the last completed epoch. "
                  f"Resume with:\n  {resume_command(argv)}", file=sys.stderr, flush=True)
    return trainer.train_runs([run], sets, resume_command(argv), StopSignal(stopped_at_once))


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    args = build_parser().parse_args(argv)
    warnings.simplefilter("ignore")  # overflow and singular-matrix warnings: divergence is checked
    folders = Folders()

    def work():
        print(f"Using {backend.select(args.backend, args.device, args.dtype)}")
        folders.check(args)  # bad input refused, and the data set read, before anything is made
        data.fetch_missing(args.dataset, args.data_dir, separate_process=True)
        key = trainer.data_key(args)
        sets = {key: training.to_device_sets(*data.load_run_sets(*key, separate_process=True))}
        folder, stored = folders.open(args)
        return train_run(args, argv, folder, stored, sets)
    return guarded(typed("run")[0], folders, work)


if __name__ == "__main__":
    sys.exit(main())
