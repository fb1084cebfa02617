"""The console scripts (entry.py: gaitprop-run, gaitprop-pack, gaitprop-sweep,
gaitprop-summarize) and the package's modules run with `python -m`: their messages name the
command the user typed, not the checkout's ./run.py."""
import os
import subprocess
import sys

import pytest

from helpers import ENV, REPO

COMMANDS = ["run", "pack", "sweep", "summarize"]


def console_script(folder, name):
    """A stand-in for the console script gaitprop-NAME that pip writes (it calls entry.NAME),
    in `folder`; returns its path."""
    path = os.path.join(folder, f"gaitprop-{name}")
    with open(path, "w") as file:
        file.write(f"import sys\nfrom gaitprop.cli.entry import {name}\nsys.exit({name}())\n")
    return path


@pytest.mark.parametrize("name", COMMANDS)
def test_an_installed_command_names_itself_in_its_messages(name, tmp_path):
    """`gaitprop-run --foo` printed "run.py: ... Run ./run.py --help"."""
    done = subprocess.run([sys.executable, console_script(str(tmp_path), name), "--foo"],
                          cwd=tmp_path, env=dict(ENV, PYTHONPATH=REPO), capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 2, done.stderr
    assert done.stderr.startswith(f"gaitprop-{name}: "), done.stderr
    assert f"Run gaitprop-{name} --help" in done.stderr, done.stderr
    assert f"{name}.py" not in done.stderr, done.stderr
    assert os.listdir(tmp_path) == [f"gaitprop-{name}"]


@pytest.mark.parametrize("name", COMMANDS)
def test_a_command_run_as_a_module_names_itself_so(name, tmp_path):
    interpreter = os.path.basename(sys.executable)
    done = subprocess.run([sys.executable, "-m", f"gaitprop.cli.{name}", "--foo"], cwd=REPO,
                          env=ENV, capture_output=True, text=True, timeout=300)
    assert done.returncode == 2, done.stderr
    command = f"{interpreter} -m gaitprop.cli.{name}"
    assert done.stderr.startswith(f"{command}: "), done.stderr
    assert f"Run {command} --help" in done.stderr, done.stderr


def test_the_checkouts_script_names_itself_as_typed(tmp_path):
    done = subprocess.run([sys.executable, os.path.join(REPO, "run.py"), "--foo"],
                          cwd=tmp_path, env=ENV, capture_output=True, text=True, timeout=300)
    assert done.returncode == 2
    assert done.stderr.startswith("run.py: ")
    assert f"Run {os.path.join(REPO, 'run.py')} --help" in done.stderr, done.stderr
    done = subprocess.run([sys.executable, "run.py", "--foo"], cwd=REPO, env=ENV,
                          capture_output=True, text=True, timeout=300)
    assert "Run ./run.py --help" in done.stderr, done.stderr
