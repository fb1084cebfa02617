"""What sweep.py does with each run: decide (new, resume, skip), run it here or on SLURM, report.

A run's results folder decides its fate: no folder, a new run; run.json 'finished' with
enough epochs, skipped; 'interrupted', 'failed' or a stale 'running' with a checkpoint,
resumed with --load (without one, started again with --overwrite); 'diverged', skipped
unless --retry-diverged (then started again with --overwrite, since resuming the same
numbers would diverge the same way); a folder another process holds the lock of, skipped.

The runs to execute are launched one process each (run.py), or several to a process
(pack.py, sweep.py --pack); a pack's one exit status cannot say which run did what, so each
member's outcome is read from its run.json.
"""
import dataclasses
import json
import os
import shlex
import shutil
import signal
import subprocess
import sys
import time

from gaitprop.arrays import backend
from gaitprop.runs import checkpoint
from gaitprop.runs import run_folder
from gaitprop.runs.exit_status import (EXIT_DIVERGED, EXIT_FAILED, EXIT_FINISHED, EXIT_SIGNAL,
                                       EXIT_USAGE)
from gaitprop.runs.run_folder import CHECKPOINT, RUN_RECORD

MODES = {"new": None, "resume": "load", "restart": "overwrite"}  # the others are skipped
EXIT_MEANING = {EXIT_FINISHED: "finished", EXIT_FAILED: "failed", EXIT_USAGE: "bad input",
                EXIT_DIVERGED: "diverged", EXIT_SIGNAL[signal.SIGINT]: "interrupted",
                EXIT_SIGNAL[signal.SIGTERM]: "terminated"}
THREAD_VARIABLES = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")
SLURM_SCRIPT = """#!/bin/bash
# Written by sweep.py: array task i runs line i + 1 of {commands}.
#SBATCH --job-name={job_name}
#SBATCH --output={log_pattern}
#SBATCH --ntasks=1
{directives}
set -eu
export {thread_exports}
line=$(sed -n "$((SLURM_ARRAY_TASK_ID + 1))p" {commands})
echo "array task $SLURM_ARRAY_TASK_ID of job $SLURM_ARRAY_JOB_ID on $(hostname): $line"
eval "exec $line"
"""


class SweepError(Exception):
    """Bad input or an unusable environment; the message says what to do. Exit status 2."""


@dataclasses.dataclass
class Job:
    """One run of the sweep: its settings, its folder, what to do and what came of it."""
    settings: object
    folder: str
    action: str = "new"  # new, resume, restart, finished, diverged, busy, conflict
    note: str = ""
    outcome: str = "planned"  # planned, done, failed, interrupted, not started, submitted, prepared
    returncode: int | None = None  # once it ran: its exit status (run.py's, for a pack's run)
    log: str | None = None

    @property
    def mode(self):
        """run.py's extra flag ('load', 'overwrite' or None), or 'skip'."""
        return MODES.get(self.action, "skip")


@dataclasses.dataclass
class Launch:
    """One process of the sweep: the run.py command of one run, or the pack.py command of a
    pack of runs (its members), and what it did."""
    jobs: list[Job]
    command: list[str]
    # Set when it starts (`start`):
    log: str | None = None
    process: subprocess.Popen[bytes] | None = None
    started: float | None = None
    index: int | None = None
    records_before: list[str | None] | None = None  # each run's run.json text (or None) then

    @property
    def is_pack(self):
        return len(self.jobs) > 1

    @property
    def name(self):
        """The first run's folder name, with '+N' for the N other members of a pack."""
        first = os.path.basename(self.jobs[0].folder)
        return f"{first}+{len(self.jobs) - 1}" if self.is_pack else first


def plan(settings, retry_diverged=False):
    """The Job of a run's settings, its action decided from what its results folder holds."""
    folder = run_folder.results_folder(settings)
    job = Job(settings, folder)
    if not os.path.isdir(folder):
        return job
    if checkpoint.FolderLock.is_held(folder):
        job.action, job.note = "busy", "another process is training in it now"
        return job
    has_checkpoint = os.path.exists(os.path.join(folder, CHECKPOINT))
    try:
        record = checkpoint.load_json(os.path.join(folder, RUN_RECORD))
    except FileNotFoundError:
        record = None
    except (OSError, ValueError) as error:
        job.action, job.note = "conflict", f"its {RUN_RECORD} cannot be read ({error})"
        return job
    if record is None:
        if has_checkpoint:
            job.action, job.note = "resume", f"a checkpoint without {RUN_RECORD}"
        elif os.path.exists(os.path.join(folder, run_folder.statistics_file("training_acc"))):
            job.action, job.note = "conflict", (f"it holds results without a {RUN_RECORD} (from "
                                                f"the published scripts?); move them elsewhere")
        return job
    differences = run_folder.setting_differences(record.get("settings", {}), settings)
    status, epochs = record.get("status"), record.get("epochs_done", 0)
    if differences:
        job.action, job.note = "conflict", (f"it holds a run with other settings ("
                                            f"{'; '.join(differences)}); use another "
                                            f"--results_dir")
    elif status == "finished" and epochs >= settings.nb_epochs:
        job.action, job.note = "finished", f"{epochs} epochs"
    elif status == "diverged":
        job.action = "restart" if retry_diverged else "diverged"
        job.note = record.get("message", "diverged")
    elif has_checkpoint:
        job.action, job.note = "resume", f"{status} after epoch {epochs}"
    else:
        job.action, job.note = "restart", f"{status} before its first checkpoint"
    return job


def report_plan(jobs, stream):
    """One line per run that is not simply new: why it is skipped, resumed or restarted."""
    verbs = {"resume": "resume", "restart": "start again", "finished": "skip (finished)",
             "diverged": "skip (diverged; --retry-diverged starts it again)",
             "busy": "skip (running elsewhere)", "conflict": "cannot run"}
    for job in jobs:
        if job.action != "new":
            print(f"{verbs[job.action]}: {job.folder}: {job.note}", file=stream)


def print_commands(launches):
    """One shell command per line on stdout, for GNU parallel or any other runner."""
    for launch in launches:
        print(shlex.join(launch.command))
        set_outcome(launch.jobs, "prepared")


def set_outcome(jobs, outcome):
    """Give every job of `jobs` the same outcome."""
    for job in jobs:
        job.outcome = outcome


def thread_environment(parallel):
    """os.environ with BLAS/OpenMP threads = cores // parallel, unless already set."""
    environment = dict(os.environ)
    threads = str(max(1, backend.available_cpus() // parallel))
    for name in THREAD_VARIABLES:
        environment.setdefault(name, threads)
    return environment


def describe_exit(code):
    """'exit 3 (diverged)' or 'killed by signal 9'."""
    if code < 0:
        return f"killed by signal {-code}"
    return f"exit {code} ({EXIT_MEANING.get(code, 'error')})"


def run_locally(launches, parallel, log_dir):
    """Run the launches, `parallel` at a time, each logging to LOG_DIR/<Launch.name>.log.

    A SIGINT or SIGTERM to the sweep is forwarded once to every process (whose runs stop at
    the next batch boundary, checkpoints intact) and no further one starts. Returns 0, or
    130/143 when the sweep was interrupted.
    """
    os.makedirs(log_dir, exist_ok=True)
    environment = thread_environment(parallel)
    running: list[Launch] = []  # started (`start`), so each has its process
    received: list[int] = []

    def forward(signum, frame):
        received.append(signum)
        for launch in running:
            if launch.process is not None:
                launch.process.send_signal(signum)
    previous = {signum: signal.signal(signum, forward) for signum in (signal.SIGINT,
                                                                      signal.SIGTERM)}
    pending, count = list(launches), 0
    try:
        while running or (pending and not received):
            while pending and len(running) < parallel and not received:
                launch, count = pending.pop(0), count + 1
                start(launch, count, len(launches), log_dir, environment)
                running.append(launch)
            time.sleep(0.2)
            for launch in [launch for launch in running
                           if launch.process is not None and launch.process.poll() is not None]:
                running.remove(launch)
                finish(launch, len(launches))
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
    for launch in pending:
        set_outcome(launch.jobs, "not started")
    return EXIT_SIGNAL[received[0]] if received else EXIT_FINISHED


def start(launch, index, total, log_dir, environment):
    """Start a launch's process, its output appended to its log, and print what it runs."""
    launch.log = os.path.join(log_dir, launch.name + ".log")
    launch.records_before = [record_text(job.folder) for job in launch.jobs]
    with open(launch.log, "a") as log:
        if launch.is_pack:
            log.write(f"# a pack of {len(launch.jobs)} runs: "
                      f"{', '.join(job.folder for job in launch.jobs)}\n")
        log.write(f"$ {shlex.join(launch.command)}\n")
        log.flush()
        launch.process = subprocess.Popen(launch.command, stdout=log, stderr=subprocess.STDOUT,
                                          env=environment, start_new_session=True)
    launch.started, launch.index = time.monotonic(), index
    for job in launch.jobs:
        job.log = launch.log
    if launch.is_pack:
        print(f"[{index}/{total}] a pack of {len(launch.jobs)} runs:" + "".join(
            f"\n    {job.action}: {job.folder}" for job in launch.jobs), flush=True)
    else:
        print(f"[{index}/{total}] {launch.jobs[0].action}: {launch.jobs[0].folder}", flush=True)


def record_text(folder):
    """A results folder's run.json as text, or None where there is none (or it is unreadable)."""
    try:
        with open(os.path.join(folder, RUN_RECORD), errors="replace") as file:
            return file.read()
    except OSError:
        return None


def exit_outcome(code):
    """A run's outcome from its process's exit status: done, interrupted or failed."""
    if code == EXIT_FINISHED:
        return "done"
    return "interrupted" if code in EXIT_SIGNAL.values() else "failed"


def settle_member(job, record_before, code):
    """Decide a pack member's outcome from its run.json; where the pack did not rewrite it (it
    stopped before this run began) or left it 'running', from the pack's exit status `code`.
    job.returncode becomes what run.py would have exited with: 3 if the run diverged, else
    `code`. Returns the status read, for the report."""
    text = record_text(job.folder)
    if text is None or text == record_before:
        status = "run.json not written"
    else:
        try:
            status = json.loads(text).get("status", "no status")
        except (ValueError, AttributeError):
            status = "run.json unreadable"
    job.returncode = EXIT_DIVERGED if status == "diverged" else code
    if status == "finished":
        job.outcome = "done"
    elif status == "interrupted":
        job.outcome = "interrupted"
    elif status in ("diverged", "failed"):
        job.outcome = "failed"
    else:
        job.outcome = "interrupted" if code in EXIT_SIGNAL.values() else "failed"
    return status


def finish(launch, total):
    """Record a finished launch's outcome for each of its runs and print it (with its log's
    last lines when it failed)."""
    code = launch.process.returncode
    elapsed = time.monotonic() - launch.started
    if launch.is_pack:
        statuses = [settle_member(job, before, code)
                    for job, before in zip(launch.jobs, launch.records_before)]
        print(f"[{launch.index}/{total}] {describe_exit(code)} after {elapsed:.0f}s: a pack of "
              f"{len(launch.jobs)} runs" + "".join(f"\n    {status}: {job.folder}" for job, status
                                                   in zip(launch.jobs, statuses)), flush=True)
    else:
        job = launch.jobs[0]
        job.returncode, job.outcome = code, exit_outcome(code)
        print(f"[{launch.index}/{total}] {describe_exit(code)} after {elapsed:.0f}s: "
              f"{job.folder}", flush=True)
    if code != 0:
        try:
            with open(launch.log, errors="replace") as log:
                tail = log.read().splitlines()[-3:]
        except OSError as error:
            tail = [f"(its log could not be read: {error.strerror})"]
        print("".join(f"    {line}\n" for line in tail) + f"    (log: {launch.log})", flush=True)


def submit_slurm(launches, args):
    """Write a job script and a commands file (a line per launch) and submit them as one
    `sbatch --array`."""
    if not launches:
        return EXIT_FINISHED
    if not args.dry_run and shutil.which("sbatch") is None:
        raise SweepError("--slurm needs sbatch, which is not on PATH: run the sweep on a SLURM "
                         "login node, or drop --slurm to run locally")
    folder = os.path.abspath(args.slurm_dir or os.path.join(args.results_dir, "slurm"))
    os.makedirs(folder, exist_ok=True)
    stem = time.strftime("sweep_%Y%m%d-%H%M%S")
    while os.path.exists(os.path.join(folder, stem + ".sh")):
        stem += "x"
    commands, script = (os.path.join(folder, stem + suffix) for suffix in (".commands", ".sh"))
    with open(commands, "w") as file:
        file.writelines(shlex.join(launch.command) + "\n" for launch in launches)
    options = {name: getattr(args, name.replace("-", "_")) for name in
               ("partition", "time", "gpus-per-task", "mem", "cpus-per-task")}
    with open(script, "w") as file:
        file.write(SLURM_SCRIPT.format(
            commands=shlex.quote(commands), job_name=args.job_name,
            log_pattern=os.path.join(folder, stem + "_%A_%a.log"),
            directives="\n".join(f"#SBATCH --{name}={value}" for name, value in
                                 options.items() if value is not None),
            thread_exports=" ".join(f"{name}=${{SLURM_CPUS_PER_TASK:-1}}"
                                    for name in THREAD_VARIABLES)))
    os.chmod(script, 0o755)
    array = f"0-{len(launches) - 1}" + (f"%{args.max_parallel}" if args.max_parallel else "")
    sbatch = ["sbatch", "--parsable", f"--array={array}", script]
    jobs = [job for launch in launches for job in launch.jobs]
    if args.dry_run:
        print(shlex.join(sbatch))
        set_outcome(jobs, "prepared")
        return EXIT_FINISHED
    result = subprocess.run(sbatch, capture_output=True, text=True)
    if result.returncode != 0:
        raise SweepError(f"sbatch refused the job array: {result.stderr.strip()} (script "
                         f"{script}; check --partition, --time and the other resources)")
    job_id = result.stdout.strip().split(";")[0]
    set_outcome(jobs, "submitted")
    packed = f" in {len(launches)} array tasks" if len(launches) < len(jobs) else ""
    print(f"Submitted job array {job_id}: {len(jobs)} runs{packed} (tasks {array}); script "
          f"{script}, logs {os.path.join(folder, stem)}_{job_id}_<task>.log. Follow it with "
          f"`squeue -j {job_id}`; once it ends, run this sweep again to resume any run the "
          f"time limit stopped.")
    return EXIT_FINISHED


def summarize(jobs, status):
    """Print what the sweep did; return its exit status (`status` if the sweep was interrupted,
    1 if a run failed)."""
    def select(**fields):
        return [job for job in jobs if all(getattr(job, k) == v for k, v in fields.items())]

    def breakdown(chosen):
        words = {"new": "new", "resume": "resumed", "restart": "restarted"}
        return ", ".join(f"{len([j for j in chosen if j.action == action])} {word}"
                         for action, word in words.items() if any(j.action == action
                                                                   for j in chosen))
    parts = [f"{verb} {len(select(outcome=outcome))} ({breakdown(select(outcome=outcome))})"
             for outcome, verb in (("done", "completed"), ("submitted", "submitted"),
                                   ("prepared", "prepared")) if select(outcome=outcome)]
    for action, words in (("finished", "skipped as finished"), ("diverged", "skipped as diverged"),
                          ("busy", "skipped as running elsewhere"), ("conflict", "could not run")):
        if select(action=action):
            parts.append(f"{words} {len(select(action=action))}")
    failed = select(outcome="failed")
    if failed:
        codes = sorted({job.returncode for job in failed})
        parts.append(f"failed {len(failed)} (" + ", ".join(
            f"{describe_exit(code)}: {len(select(outcome='failed', returncode=code))}"
            for code in codes) + ")")
    if select(outcome="interrupted"):
        parts.append(f"interrupted {len(select(outcome='interrupted'))} (run the sweep again "
                     f"to resume)")
    if select(outcome="not started"):
        parts.append(f"not started {len(select(outcome='not started'))}")
    stream = sys.stderr if select(outcome="prepared") else sys.stdout
    print(f"Sweep of {len(jobs)} runs: {'; '.join(parts) or 'nothing to do'}.", file=stream)
    for job in failed:
        print(f"  {describe_exit(job.returncode)}: {job.folder} (log: {job.log})", file=stream)
    if status:
        return status
    unfinished = select(outcome="not started") + select(outcome="interrupted")
    return EXIT_FAILED if failed or unfinished or select(action="conflict") else EXIT_FINISHED
