"""How a run stops on Ctrl-C or SIGTERM: at once before training (`stop_before_training`, the
handler run.py and pack.py install before their slow imports), at the next batch boundary
during training (`StopSignal`); how to start a script again in the commands printed then
(`script_command`). Light: only the standard library, the exit statuses and how this
process was started (invocation)."""
import os
import shutil
import signal
import sys

from gaitprop.runs.exit_status import EXIT_SIGNAL
from gaitprop.runs.invocation import CLI


def install_stop_handlers():
    """Make Ctrl-C and SIGTERM `stop_before_training` until StopSignal takes over: what a
    command line that trains does first, before its slow imports."""
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, stop_before_training)


def stop_before_training(signum, frame):
    """Ctrl-C / SIGTERM before StopSignal takes over: quit at once, status 130 / 143, no traceback.

    os._exit, not SystemExit, which code under way (imports, the data-reading child's pool)
    may catch or wait on. The child reading the data is killed first, or it would block on
    its result forever. Files are written atomically and the kernel drops the folder lock.
    """
    print(f"\n{os.path.basename(sys.argv[0])}: {signal.Signals(signum).name} received before "
          f"training started: stopped. "
          f"Nothing was trained since the last checkpoint; run the command again (with --load "
          f"if the results folder holds a run) to go on.", file=sys.stderr, flush=True)
    # The signal may land inside `import multiprocessing`: a module only partly initialised
    # has no active_children yet, and then no child has been started either.
    active_children = getattr(sys.modules.get("multiprocessing.process"), "active_children", None)
    try:
        for child in active_children() if active_children else ():
            child.kill()
    finally:
        os._exit(EXIT_SIGNAL[signum])


def same_program(first, second):
    """Whether two paths name one program: the same file reached from the same folder (a
    virtual environment's python is a link to the system's, but not the same program)."""
    return (os.path.dirname(os.path.abspath(first)) == os.path.dirname(os.path.abspath(second))
            and os.path.realpath(first) == os.path.realpath(second))


def script_command(script):
    """The start of a shell command that runs `script` (a path, as in sys.argv[0]) as this
    process runs it, for the resume commands printed: the script itself where that runs (a
    path with a folder, executable, its `#!/usr/bin/env python3` finding this interpreter),
    otherwise this interpreter, named as it was started where the shell finds that name,
    then the script (`python3 run.py`, not `run.py`, which the shell does not look for in
    the current folder); for a module of the package's command lines (`python3 -m
    gaitprop.cli.run`), this interpreter running that module again."""
    interpreter = sys.executable
    started_as = (getattr(sys, "orig_argv", None) or [interpreter])[0]
    found = shutil.which(started_as)
    if found and same_program(found, interpreter):
        interpreter = started_as
    if os.path.dirname(os.path.realpath(script)) == CLI:
        return [interpreter, "-m", f"gaitprop.cli.{os.path.splitext(os.path.basename(script))[0]}"]
    on_path = shutil.which("python3")
    if (os.sep in script and os.access(script, os.X_OK) and on_path
            and same_program(on_path, sys.executable)):
        return [script]
    return [interpreter, script]


# Where `program` looks for a command's script: the checkout holding the package, and the
# folder of this Python's console scripts.
CHECKOUT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SCRIPTS = os.path.dirname(sys.executable)


def program(name):
    """The command line (a list) that starts command `name` ("run", "pack"; what a sweep
    starts, what a pack member's record names): this Python running the checkout's ./NAME.py
    beside the package where there is one, else the console script gaitprop-NAME installed
    with it (beside this Python, or on PATH), else the package's module (`python -m
    gaitprop.cli.NAME`: installed with `pip install --target`, or `--user` without its
    scripts folder on PATH)."""
    scripts = [os.path.join(CHECKOUT, f"{name}.py"), os.path.join(SCRIPTS, f"gaitprop-{name}"),
               shutil.which(f"gaitprop-{name}")]
    found = next((script for script in scripts if script and os.path.isfile(script)), None)
    if found is None:
        return [sys.executable, "-m", f"gaitprop.cli.{name}"]
    return [sys.executable, found]


class StopSignal:
    """Turns the first SIGINT/SIGTERM into a request to stop at the next batch boundary; a
    second one calls `on_second()` and exits at once (SystemExit, status 130 / 143)."""

    def __init__(self, on_second):
        self.received = None
        self.on_second = on_second
        for number_ in EXIT_SIGNAL:
            signal.signal(number_, self.handle)

    def handle(self, signum, frame):
        """The signal handler: note the first signal, act on a second one."""
        if self.received is not None:
            self.on_second()
            raise SystemExit(EXIT_SIGNAL[signum])
        self.received = signum
        print(f"\n{signal.Signals(signum).name} received: stopping at the next batch boundary.",
              file=sys.stderr, flush=True)

    def __call__(self):
        return self.received is not None
