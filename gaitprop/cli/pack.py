"""Train several runs as one pack, in one process: the command line of packs.

Example (three seeds of GAIT on MNIST, trained at once):
  ./pack.py --member "--algorithm=GAIT --seed=1 --nb_layers=4 --orthogonal_reg=0.1" \\
            --member "--algorithm=GAIT --seed=2 --nb_layers=4 --orthogonal_reg=0.1" \\
            --member "--algorithm=GAIT --seed=3 --nb_layers=4 --orthogonal_reg=0.1"
Each --member takes run.py's flags (quoted, as one argument). The runs of a pack must be
compatible (`pack_key`): one rule, network, transfer, dtype, backend and device, evaluation
and alignment cadence, and lambda zero for all or for none; their data set, seed, learning
rate, lambda, initialisation and number of epochs may differ. Every weight array of the
pack has a leading run axis, so each product of a step is one batched product for all runs.

Each run writes its own results folder exactly as `./run.py` with its flags would (run.json,
checkpoint.npz, the statistics and weights); on NumPy its numbers are those of the single
run, bit for bit. A run that diverges stops alone (its run.json says diverged; its last
checkpoint stays) while the others go on; a run that reaches its --nb_epochs leaves the pack.
Kill the pack at any moment and run the same command with --load in each member (or resume
any member alone with run.py --load) to continue every run exactly.
Exit statuses as run.py's: 0 every run finished, 1 failed, 2 bad input, 3 a run diverged (the
others finished), 130/143 interrupted.
"""
import argparse
import shlex
import sys
import warnings

from gaitprop.runs.invocation import typed
from gaitprop.runs.stopping import StopSignal, install_stop_handlers, program, script_command

if __name__ == "__main__":  # python -m gaitprop.cli.pack: before the slow imports below
    install_stop_handlers()

from gaitprop.arrays import backend  # noqa: E402
from gaitprop.runs import data  # noqa: E402
from gaitprop.runs import run_folder  # noqa: E402
from gaitprop.runs import settings as settings_table  # noqa: E402
from gaitprop.runs import trainer  # noqa: E402
from gaitprop.engine import training  # noqa: E402
from gaitprop.runs.folders import Folders, Run, UsageError, guarded  # noqa: E402
from gaitprop.runs.exit_status import EXIT_USAGE  # noqa: E402

def pack_key(settings):
    """What makes runs compatible in a pack: the settings the table marks "shared" and, for
    those marked "zero or not", whether they are 0 (the square network's depth does not
    matter for the tower)."""
    key = {name: getattr(settings, name) for name in settings_table.names(pack="shared")}
    if settings.tower:
        key["nb_layers"] = None
    for name in settings_table.names(pack="zero or not"):
        key[f"whether {name} is 0"] = getattr(settings, name) == 0
    return tuple(sorted(key.items()))


class Parser(argparse.ArgumentParser):
    def error(self, message):
        label, command = typed("pack")
        self.exit(EXIT_USAGE, f"{label}: {message}. Run {command} --help; nothing was written.\n")

    def parse_args(self, args=None, namespace=None):
        """argparse's, but an unknown flag is named before a missing --member (argparse
        reports only the missing --member when a misspelt one, --membr, stands in for it)."""
        parsed, unknown = self.parse_known_args(args, namespace)
        flags = [text.split("=")[0] for text in unknown
                 if text.startswith("-") and " " not in text]
        if unknown:
            what = (f"unknown flag {', '.join(flags)}" if flags
                    else f"unrecognized arguments: {shlex.join(unknown)}")
            self.error(f"{what}: each run of the pack is one --member 'RUN.PY FLAGS'")
        if not parsed.member:
            self.error("the following arguments are required: --member")
        return parsed


def build_parser():
    parser = Parser(description=__doc__.split("\n\n")[0],
                    formatter_class=settings_table.RawDefaultsShown,
                    epilog=__doc__.split("\n", 1)[1],
                    usage="%(prog)s [-h] --member 'RUN.PY FLAGS' [--member 'RUN.PY FLAGS' ...]")
    # required, but checked by Parser.parse_args, after unknown flags
    parser.add_argument("--member", action="append", metavar="'RUN.PY FLAGS'",
                        help="one run of the pack: run.py's flags as one quoted argument")
    return parser


def parse_members(texts):
    """[(run.py's Namespace, its argv)] of each --member, checked as run.py checks its flags
    and for compatibility; raises UsageError naming the member at fault."""
    members = []
    for index, text in enumerate(texts):
        try:
            argv = shlex.split(text)
        except ValueError as reason:  # an unbalanced quote, a trailing backslash
            raise UsageError(f"--member {index + 1} ({text}) cannot be split into flags "
                             f"({reason}): balance its quotes.") from None
        parser = settings_table.build_parser()

        def error(message, index=index, text=text):
            raise UsageError(f"--member {index + 1} ({text}): {message}")
        parser.error = error
        members.append((parser.parse_args(argv), argv))
    keys = {pack_key(args) for args, _ in members}
    if len(keys) > 1:
        differing = sorted({name for key in keys for name, value in key
                            if any(dict(other).get(name) != value for other in keys)})
        raise UsageError(f"the members cannot share a pack: they differ in "
                             f"{', '.join(differing)}. Give every member the same value of "
                             f"these (or make one pack per value).")
    folders = [run_folder.results_folder(args) for args, _ in members]
    if len(set(folders)) < len(folders):
        raise UsageError("two members would share a results folder: give each member its "
                             "own settings (seed, data set, ...)")
    return members


def resume_line(members):
    """The pack command that continues every member (--load in each), as it runs from the
    shell (`script_command`)."""
    texts = [shlex.join([arg for arg in argv if arg not in ("--load", "--overwrite")]
                        + ["--load"]) for _, argv in members]
    return shlex.join(script_command(sys.argv[0])
                      + [part for text in texts for part in ("--member", text)])


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    texts = build_parser().parse_args(argv).member
    warnings.simplefilter("ignore")  # overflow and singular-matrix warnings: divergence is checked
    folders = Folders()
    return guarded(typed("pack")[0], folders, lambda: train_members(texts, folders))


def train_members(texts, folders):
    """Open every member's results folder (`folders`), load the data sets, begin each run,
    and train the runs in packs of runs at the same epoch. Returns the exit status."""
    members = parse_members(texts)
    first = members[0][0]
    print(f"Using {backend.select(first.backend, first.device, first.dtype)}; a pack of "
          f"{len(members)} runs")
    # Every member checked (refused or not) and every data set read before any folder is made.
    for args, _ in members:
        folders.check(args)
    for dataset, data_dir in dict.fromkeys(trainer.data_key(args)[:2] for args, _ in members):
        data.fetch_missing(dataset, data_dir, separate_process=True)
    sets = {}
    for args, _ in members:  # each data set read and put on the device once
        key = trainer.data_key(args)
        if key not in sets:
            sets[key] = training.to_device_sets(*data.load_run_sets(*key, separate_process=True))
    runs = []
    for args, member_argv in members:
        folder, stored = folders.open(args)
        runs.append(Run(args, member_argv, folder, stored, command=shlex.join(
            program("run") + member_argv)))
    command = resume_line(members)

    def stopped_at_once():
        """A second Ctrl-C / SIGTERM: the files are whole; record the runs as interrupted."""
        for each in runs:
            each.interrupted(at_once=True)
        print(f"Stopped at once; each results folder holds the checkpoint of its last "
              f"completed epoch. Resume with:\n  {command}", file=sys.stderr, flush=True)
    return trainer.train_runs(runs, sets, command, StopSignal(stopped_at_once))


if __name__ == "__main__":
    sys.exit(main())
