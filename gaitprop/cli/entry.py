"""The console scripts (gaitprop-run, gaitprop-pack, gaitprop-sweep, gaitprop-summarize,
gaitprop-benchmark) and the checkout's scripts (./run.py, ...): each command that trains
installs its stop handlers before the slow imports of its command line, then runs it."""
import importlib

from gaitprop.runs.stopping import install_stop_handlers


def _command(name, trains):
    """Run the command line gaitprop.cli.`name` (its `main()`); its exit status."""
    if trains:
        install_stop_handlers()
    return importlib.import_module(f"gaitprop.cli.{name}").main()


def run():
    """./run.py: train one network."""
    return _command("run", trains=True)


def pack():
    """./pack.py: train several runs as one pack."""
    return _command("pack", trains=True)


def sweep():
    """./sweep.py: run a grid of settings."""
    return _command("sweep", trains=False)


def summarize():
    """./summarize.py: the table and curves of results folders."""
    return _command("summarize", trains=False)


def benchmark():
    """./benchmark.py: time steps and evaluations on this machine."""
    return _command("benchmark", trains=False)
