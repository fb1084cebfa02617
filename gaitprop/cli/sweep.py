"""Expand a grid of settings into run.py runs and execute them (locally, on SLURM, or print).

Example:
  ./sweep.py --preset paper --dataset MNIST FMNIST --algorithm BP GAIT TP --seed 1-5 \\
      --nb_layers 4 --jobs 2
Every run.py flag takes one or more values (integer ranges such as 1-5; on/off for the
switches --linear, --tower, --orthogonal_init, --learn_inv, --no_inv_init, which alone mean
on); the runs are the product of all values, less the combinations run.py refuses (each
reason printed once: --learn_inv with BP, say); a learning rule's own option (--gamma)
spans only the runs of the rules that take it. --preset paper sets, per algorithm, the
paper's learning rate, orthogonal regulariser and initialisation; flags given explicitly
override it.
Re-running a sweep skips finished runs and resumes interrupted or failed ones (--load).
--pack N trains up to N compatible runs (pack.pack_key: one algorithm, network, dtype and
cadence; data set, seed, learning rate, lambda, initialisation and epochs may differ) in one
pack.py process; each writes its own results folder and is counted, skipped and resumed alone.
Exit statuses: 0 every run finished or was skipped, 1 a run failed or was not started,
2 bad input, 130/143 the sweep was interrupted (SIGINT/SIGTERM).
"""
import argparse
import itertools
import math
import os
import re
import shlex
import sys

from gaitprop.cli import pack
from gaitprop.model import rules
from gaitprop.runs import run_folder
from gaitprop.runs import settings as settings_table
from gaitprop.runs.stopping import program
from gaitprop.experiments import launch as sweep_launch
from gaitprop.runs.exit_status import EXIT_USAGE
from gaitprop.experiments.launch import SweepError
from gaitprop.runs.folders import unmakeable
from gaitprop.runs.invocation import typed

# Grid flags (the table's `grid` rows), outermost first: the seeds of one setting are adjacent.
_GRID_POSITION = {setting.name: setting.grid for setting in settings_table.TABLE
                  if setting.grid is not None}
GRID = tuple(sorted(_GRID_POSITION, key=lambda name: _GRID_POSITION[name]))
ALWAYS_WRITTEN = settings_table.names(always_written=True)  # the others when not default
SWITCHES = tuple(name for name in GRID if settings_table.SETTINGS[name].kind == "switch")
INTEGERS = tuple(name for name in GRID
                 if getattr(settings_table.SETTINGS[name].convert, "kind", None) is int)
# Grid flags the results folder's name does not show: runs differing in them alone collide.
UNNAMED = tuple(name for name in GRID if settings_table.SETTINGS[name].folder is None)
PASSED = settings_table.names(sweep="passed")  # one value, passed to every run
PATHS = settings_table.names(kind="path")  # made absolute, always written
ON, OFF = ("on", "true", "yes", "1"), ("off", "false", "no", "0")
MAX_RUNS = 100_000  # the most runs of one sweep (a grid larger is a mistake, or several sweeps)

RUN_PY, PACK_PY = program("run"), program("pack")  # command lines: python and script


class Parser(argparse.ArgumentParser):
    def error(self, message):
        label, command = typed("sweep")
        self.exit(EXIT_USAGE, f"{label}: {message}. Run {command} --help for every option; "
                              f"nothing was run.\n")


def build_parser():
    parser = Parser(description=__doc__.split("\n\n")[0],
                    formatter_class=settings_table.RawDefaultsShown,
                    epilog=__doc__.split("\n", 1)[1])
    grid = parser.add_argument_group("the grid (run.py's flags, each with one or more values)")
    for name in GRID:
        setting = settings_table.SETTINGS[name]
        # run.py's help, and the default a run takes when the grid does not name the flag
        default = "off" if name in SWITCHES else setting.default
        text = (setting.help or "").replace("%", "%%") + (
            "" if default is None else f" (default: {default})")
        if name in SWITCHES:
            grid.add_argument(f"--{name}", nargs="*", metavar="on|off", help=text)
        else:
            grid.add_argument(f"--{name}", *setting.aliases, nargs="+", metavar="VALUE",
                              help=text)
    grid.add_argument("--preset", choices=settings_table.PRESETS,
                      help="per-algorithm settings of the paper (explicit flags win)")
    shared = parser.add_argument_group("passed unchanged to every run")
    for name in PASSED:
        setting = settings_table.SETTINGS[name]
        shared.add_argument(
            f"--{name}", default=setting.default,
            type=setting.convert,  # type: ignore[arg-type]  # None: argparse's default
            choices=settings_table.choices(setting), help=setting.help)
    control = parser.add_argument_group("execution")
    control.add_argument("--jobs", type=int, help="processes (runs or packs) at a time "
                                                  "(default: one per --devices entry, else 1)")
    control.add_argument("--devices", type=int, nargs="+", metavar="ID",
                         help="GPU ids, given round-robin to the processes as --device")
    control.add_argument("--pack", type=int, default=1, metavar="N",
                         help="train up to N compatible runs in one pack.py process (1: each "
                              "run alone)")
    control.add_argument("--dry-run", action="store_true",
                         help="print one command per line instead (with --slurm: write the "
                              "job files and print the sbatch command)")
    control.add_argument("--retry-diverged", action="store_true",
                         help="start diverged runs again from scratch (--overwrite)")
    control.add_argument("--log-dir", help="local runs' logs (default RESULTS_DIR/logs)")
    slurm = parser.add_argument_group("SLURM (one job array, one run or pack per array task)")
    slurm.add_argument("--slurm", action="store_true", help="submit with sbatch --array")
    slurm.add_argument("--slurm-dir", help="job script, commands and logs (default "
                                           "RESULTS_DIR/slurm)")
    slurm.add_argument("--job-name", default="gait-sweep", help="sbatch --job-name")
    for option in ("partition", "time", "gpus-per-task", "mem", "cpus-per-task"):
        slurm.add_argument(f"--{option}", help=f"sbatch --{option}")
    slurm.add_argument("--max-parallel", type=int, help="array tasks running at a time (%%M)")
    return parser


def run_parser():
    """run.py's own parser, raising SweepError instead of exiting; it parses single flags, so
    the combinations run.py refuses are left out by `expand` instead."""
    parser = settings_table.build_parser()
    parser.refuses = False

    def error(message):
        raise SweepError(message)
    parser.error = error
    return parser


def grid_values(name, texts, parser):
    """The distinct values of one grid flag, converted and checked as run.py would."""
    if name in SWITCHES:
        if texts and any(text.lower() not in ON + OFF for text in texts):
            raise SweepError(f"--{name} takes on or off (or nothing, meaning on), not "
                             f"{' '.join(texts)}")
        return list(dict.fromkeys(text.lower() in ON for text in texts or ["on"]))

    def convert(text):
        try:
            return getattr(parser.parse_args([f"--{name}={text}"]), name)
        except SweepError as error:
            raise SweepError(f"{error} (in --{name} {' '.join(texts)})") from None
    parts = []  # each text, or the (first, last) of a range, its ends checked before it grows
    for text in texts:
        match = re.fullmatch(r"(-?\d+)-(-?\d+)", text) if name in INTEGERS else None
        if match is None:
            parts.append(text)
            continue
        first, last = convert(match[1]), convert(match[2])
        if last < first:
            raise SweepError(f"the range --{name} {text} is empty: write FIRST-LAST with "
                             f"FIRST <= LAST")
        parts.append((first, last))
    count = sum(part[1] - part[0] + 1 if isinstance(part, tuple) else 1 for part in parts)
    if count > MAX_RUNS:
        raise too_many(f"--{name} {' '.join(texts)} gives {count} values")
    expanded = [text for part in parts for text in (
        map(str, range(part[0], part[1] + 1)) if isinstance(part, tuple) else [part])]
    return list(dict.fromkeys(convert(text) for text in expanded))


def too_many(what):
    """The SweepError of a grid of more than MAX_RUNS runs (`what` says how it has that many)."""
    return SweepError(f"{what}, more than the {MAX_RUNS} runs a sweep takes: split the grid "
                      f"into sweeps of at most {MAX_RUNS} runs each (they may share "
                      f"--results_dir)")


def expand(args):
    """The runs of the grid: a list of run.py Namespaces, in grid order.

    Each run starts from run.py's defaults, then the preset of its algorithm, then the values
    given explicitly.
    """
    parser = run_parser()
    defaults = vars(parser.parse_args([]))
    given = {name: grid_values(name, getattr(args, name), parser)
             for name in GRID if getattr(args, name) is not None}
    size = math.prod(len(values) for values in given.values())
    if size > MAX_RUNS:
        factors = " x ".join(f"{len(values)} (--{name})" for name, values in given.items()
                             if len(values) > 1)
        raise too_many(f"the grid holds {factors} = {size} runs")
    shared = {name: os.path.abspath(getattr(args, name)) if name in PATHS else getattr(args, name)
              for name in PASSED}
    runs: list[argparse.Namespace] = []
    left_out: dict[str, int] = {}  # {refusal: how many combinations it left out}
    merged: dict[str, int] = {}  # {a rule's option: combinations that ran once without it}
    seen = set()
    for combination in itertools.product(*given.values()):
        explicit = dict(zip(given, combination))
        algorithm = explicit.get("algorithm", defaults["algorithm"])
        taken = rules.rule(algorithm).option_defaults()
        for name in rules.options():  # the grid of a rule's option spans only its rule's runs
            if name in explicit and name not in taken:
                merged[name] = merged.get(name, 0) + 1
                del explicit[name]
        preset = settings_table.presets(args.preset, algorithm) if args.preset else {}
        settings = argparse.Namespace(**{**defaults, **(preset or {}), **explicit, **shared})
        reason = (settings_table.preset_refusal(args.preset, algorithm) if preset is None
                  else settings_table.refusal(settings))
        if reason is not None:
            left_out[reason] = left_out.get(reason, 0) + 1
            continue
        vars(settings).update(settings_table.canonical(vars(settings)))  # as run.py's
        key = tuple(sorted(vars(settings).items()))
        if key not in seen:
            seen.add(key)
            runs.append(settings)
    for reason, count in left_out.items():
        print(f"{typed('sweep')[0]}: left out {count} combination{'s' if count > 1 else ''} "
              f"of the grid that run.py refuses: {reason}.", file=sys.stderr)
    for name, count in merged.items():
        takers = settings_table.names_of(rule for rule, _ in rules.options()[name])
        print(f"{typed('sweep')[0]}: --{name} applies only to --algorithm={takers}: the runs of "
              f"the other rules take none (their {count} combinations with it run once each "
              f"without it).", file=sys.stderr)
    if not runs:
        raise SweepError("every combination of the grid is one that run.py refuses (see "
                         "above): change the grid")
    folders: dict[str, argparse.Namespace] = {}
    for settings in runs:
        other = folders.setdefault(run_folder.results_folder(settings), settings)
        if other is not settings:
            differing = [name for name in UNNAMED
                         if getattr(settings, name) != getattr(other, name)] or UNNAMED
            raise SweepError(
                f"two runs of the grid would share the results folder "
                f"{run_folder.results_folder(settings)}: the folder name does not hold "
                f"{', '.join(UNNAMED)}, so give "
                f"{' and '.join(f'--{name}' for name in differing)} a single value (or run one "
                f"sweep per value with its own --results_dir)")
    return runs


def command(settings, mode=None):
    """The run.py command line of a run (mode None, 'load' or 'overwrite').

    It names the data set, algorithm, seed, epochs and folders, and every other setting
    that differs from run.py's default.
    """
    defaults = vars(settings_table.build_parser().parse_args([]))
    flags = []
    for name in GRID + settings_table.names(sweep="device") + PASSED:
        value = getattr(settings, name, None)
        if value is None or (value == defaults.get(name) and name not in ALWAYS_WRITTEN
                             and name not in PATHS):
            continue
        flags.append(f"--{name}" if name in SWITCHES else f"--{name}={value}")
    if mode is not None:
        flags.append(f"--{mode}")
    return RUN_PY + flags


def group_packs(jobs, size):
    """The jobs in packs of at most `size` with equal pack.pack_key, each pack in grid order,
    the packs in the order of their first runs."""
    packs: list[list[sweep_launch.Job]] = []
    last_pack: dict[tuple, list[sweep_launch.Job]] = {}  # {pack key: its last pack}
    for job in jobs:
        key = pack.pack_key(job.settings)
        if key not in last_pack or len(last_pack[key]) == size:
            last_pack[key] = []
            packs.append(last_pack[key])
        last_pack[key].append(job)
    return packs


def launch_command(jobs):
    """run.py's command line for one run; pack.py's for several, a --member of each run's
    run.py flags."""
    commands = [command(job.settings, job.mode) for job in jobs]
    if len(commands) == 1:
        return commands[0]
    members = [part for each in commands
               for part in ("--member", shlex.join(each[len(RUN_PY):]))]
    return PACK_PY + members


def make_launches(jobs, pack_size, devices):
    """The processes that execute `jobs` (sweep_launch.Launch), the --devices given
    round-robin to them."""
    result = []
    for index, members in enumerate(group_packs(jobs, pack_size)):
        if devices:
            for job in members:
                job.settings.device = devices[index % len(devices)]
        result.append(sweep_launch.Launch(members, launch_command(members)))
    return result


def check_folders(args):
    """Refuse (SweepError) a folder the sweep writes into that cannot be made: --results_dir,
    and --log-dir for local runs or --slurm-dir under --slurm (default: inside the first)."""
    flags = [("--results_dir", args.results_dir, "the results folders")]
    if args.slurm and args.slurm_dir:
        flags.append(("--slurm-dir", args.slurm_dir, "the job files and logs"))
    elif not args.slurm and not args.dry_run and args.log_dir:
        flags.append(("--log-dir", args.log_dir, "the runs' logs"))
    for flag, path, what in flags:
        reason = unmakeable(path)
        if reason is not None:
            raise SweepError(f"{flag} {path} cannot hold {what}: {reason}. Give a folder (it "
                             f"is made if missing), or move what is in the way")


def main(argv=None):
    args = build_parser().parse_args(argv)
    try:
        if args.jobs is not None and args.jobs < 1:
            raise SweepError("--jobs must be at least 1")
        if args.pack < 1:
            raise SweepError(f"--pack must be at least 1, not {args.pack}: it is the most runs "
                             f"trained together in one process (1, the default, trains each "
                             f"run alone)")
        if args.max_parallel is not None and args.max_parallel < 1:
            raise SweepError("--max-parallel must be at least 1")
        if args.devices and min(args.devices) < 0:
            raise SweepError("--devices takes GPU ids, which start at 0")
        if args.slurm and (args.jobs or args.devices):
            raise SweepError("--jobs and --devices are for local runs: under --slurm, ask for "
                             "GPUs with --gpus-per-task and limit the array with "
                             "--max-parallel")
        check_folders(args)
        runs = expand(args)
        jobs = args.jobs or (len(args.devices) if args.devices else 1)
        planned = [sweep_launch.plan(settings, args.retry_diverged) for settings in runs]
        launches = make_launches([job for job in planned if job.mode != "skip"], args.pack,
                                 args.devices)
        report = sys.stderr if args.dry_run and not args.slurm else sys.stdout
        sweep_launch.report_plan(planned, report)
        if args.slurm:
            status = sweep_launch.submit_slurm(launches, args)
        elif args.dry_run:
            sweep_launch.print_commands(launches)
            status = 0
        else:
            log_dir = args.log_dir or os.path.join(os.path.abspath(args.results_dir), "logs")
            status = sweep_launch.run_locally(launches, jobs, log_dir)
        return sweep_launch.summarize(planned, status)
    except SweepError as error:
        print(f"{typed('sweep')[0]}: {error}. Nothing was run.", file=sys.stderr)
        return EXIT_USAGE


if __name__ == "__main__":
    sys.exit(main())
