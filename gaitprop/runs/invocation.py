"""How this process was started, for what the command lines print: the command the user
typed, which starts their messages and the command that shows its help (`typed`). Only the
standard library."""
import os
import sys

CLI = os.path.join(os.path.dirname(os.path.dirname(os.path.realpath(__file__))), "cli")


def typed(name):
    """(label, command) of the command line `name` ("run", "pack", "sweep", "summarize",
    "benchmark") as this process was started (sys.argv[0]): the label starts its messages,
    the command is what to type again (with --help, say).

    - the console script gaitprop-NAME: both "gaitprop-NAME";
    - the package's module: both "python3 -m gaitprop.cli.NAME" (the interpreter as it was
      started);
    - otherwise the checkout's script: "NAME.py", and the path as typed (./NAME.py where it
      was typed without a folder), also when something else calls the command line's
      main() (a test).
    """
    started = sys.argv[0] if sys.argv else ""
    base = os.path.basename(started)
    if base == f"gaitprop-{name}":
        return base, base
    if started and os.path.realpath(started) == os.path.join(CLI, f"{name}.py"):
        interpreter = (getattr(sys, "orig_argv", None) or [sys.executable])[0]
        command = f"{os.path.basename(interpreter)} -m gaitprop.cli.{name}"
        return command, command
    script = f"{name}.py"
    return script, started if base == script and os.sep in started else f"./{script}"
