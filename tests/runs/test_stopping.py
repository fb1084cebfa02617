"""How a command starts the commands it runs (stopping.program): sweep.py starts run.py and
pack.py, and a pack member's record names run.py."""
import os
import subprocess
import sys

import pytest

from gaitprop.runs import stopping
from helpers import ENV, REPO


@pytest.mark.parametrize("name", ["run", "pack"])
def test_without_a_script_to_run_a_command_runs_as_the_packages_module(name, tmp_path,
                                                                       monkeypatch):
    """No ./NAME.py beside the package, no console script beside this Python nor on PATH
    (`pip install --target`, or `--user` without ~/.local/bin on PATH): the command is this
    Python running the package's module, which exists, rather than a path that does not
    (every member of a sweep then failed with exit 2)."""
    monkeypatch.setattr(stopping, "CHECKOUT", str(tmp_path))
    monkeypatch.setattr(stopping, "SCRIPTS", str(tmp_path))
    monkeypatch.setenv("PATH", str(tmp_path))
    command = stopping.program(name)
    assert command == [sys.executable, "-m", f"gaitprop.cli.{name}"]
    done = subprocess.run(command + ["--help"], cwd=REPO, env=dict(ENV, PATH=str(tmp_path)),
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("usage:")


def test_a_command_is_the_checkout_script_else_the_console_script(tmp_path, monkeypatch):
    assert stopping.program("run") == [sys.executable, os.path.join(REPO, "run.py")]
    monkeypatch.setattr(stopping, "CHECKOUT", str(tmp_path / "none"))
    monkeypatch.setattr(stopping, "SCRIPTS", str(tmp_path))
    (tmp_path / "gaitprop-pack").write_text("")
    assert stopping.program("pack") == [sys.executable, str(tmp_path / "gaitprop-pack")]
    elsewhere = tmp_path / "bin"
    elsewhere.mkdir()
    (elsewhere / "gaitprop-run").write_text("#!/bin/sh\n")
    (elsewhere / "gaitprop-run").chmod(0o755)
    monkeypatch.setenv("PATH", str(elsewhere))
    assert stopping.program("run") == [sys.executable, str(elsewhere / "gaitprop-run")]


def test_the_resume_command_of_a_module_run_is_the_module():
    """A run started with `python -m gaitprop.cli.run` is resumed the same way, not by running
    the module's file as a script."""
    from gaitprop.runs import invocation
    for name in ("run", "pack"):
        command = stopping.script_command(os.path.join(invocation.CLI, f"{name}.py"))
        assert command[1:] == ["-m", f"gaitprop.cli.{name}"], command
    assert stopping.script_command(os.path.join(REPO, "run.py"))[-1] == os.path.join(REPO,
                                                                                   "run.py")
