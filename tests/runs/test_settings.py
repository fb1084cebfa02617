"""settings.py: the one table of settings, and what is derived from it (the parser here; the
folder name in test_run_folder.py, the sweep in test_sweep.py, the pack key in test_pack.py)."""
import argparse
import os
import re
import subprocess
import sys

import pytest

from gaitprop.runs import settings
from helpers import ENV, REPO


def test_every_row_is_a_flag_of_run_py_with_its_default():
    parser = settings.build_parser()
    defaults = vars(parser.parse_args([]))
    assert list(defaults) == [setting.name for setting in settings.TABLE]
    for setting in settings.TABLE:
        assert defaults[setting.name] == setting.default, setting.name
        assert type(defaults[setting.name]) is type(setting.default), setting.name


def test_the_readme_documents_every_row_with_its_default_and_origin():
    """README.md's flag table: a line per setting, with its default (off for switches) and
    whether the published scripts had it."""
    with open(os.path.join(REPO, "README.md"), encoding="utf-8") as readme:
        rows = {match[1]: (match[2], match[3]) for match in re.finditer(
            r"^\| `--(\w+)[^`]*` \| ([^|]+) \| (published|ours) \|", readme.read(), re.M)}
    assert sorted(rows) == sorted(setting.name for setting in settings.TABLE)
    for setting in settings.TABLE:
        origin = "published" if setting.published else "ours"
        assert rows[setting.name] == (settings.documented_default(setting), origin), setting.name


def test_name_pieces_and_columns_have_distinct_positions():
    pieces = [setting.folder.position for setting in settings.TABLE if setting.folder]
    columns = [setting.column[0] for setting in settings.TABLE if setting.column]
    grid = [setting.grid for setting in settings.TABLE if setting.grid is not None]
    for positions in (pieces, columns, grid):
        assert len(set(positions)) == len(positions)


def test_the_paper_preset_per_algorithm():
    """The paper's settings of each rule, on the paper's network of 4 hidden layers."""
    assert settings.presets(settings.PAPER, "BP") == {
        "nb_layers": 4, "orthogonal_reg": 0.0, "learning_rate": 1e-4, "orthogonal_init": False}
    assert settings.presets(settings.PAPER, "GAIT") == {
        "nb_layers": 4, "orthogonal_reg": 0.1, "learning_rate": 1e-4, "orthogonal_init": True}
    assert settings.presets(settings.PAPER, "TP") == {
        "nb_layers": 4, "orthogonal_reg": 1000.0, "learning_rate": 1e-5, "orthogonal_init": True}
    # the paper has no DTP: the preset refuses it, naming the rules it has
    assert settings.presets(settings.PAPER, "DTP") is None
    assert "trained only BP, GAIT, TP" in settings.preset_refusal(settings.PAPER, "DTP")


@pytest.mark.parametrize("text, message", [("x", "'x' is not a number"),
                                           ("-1", "'-1' must be at least 0.0"),
                                           ("nan", "'nan' must be a finite number"),
                                           ("inf", "'inf' must be a finite number"),
                                           ("-inf", "'-inf' must be a finite number")])
def test_numbers_are_checked_with_a_message(text, message):
    import argparse
    with pytest.raises(argparse.ArgumentTypeError, match=re.escape(message)):
        settings.Number(float, 0.0)(text)


def help_entries(text):
    """{option: its help text, whitespace collapsed} of an argparse --help output: an entry
    starts on a line indented by two spaces with "-", its help runs on after two spaces and on
    the more indented lines below."""
    entries, current = {}, None
    for line in text.splitlines():
        start = re.match(r"^  (-\S.*?)(?: {2,}(.*))?$", line)
        if start:
            current = [start[2] or ""]
            for option in re.findall(r"(?:^|, )(--?[\w-]+)", start[1]):
                entries[option] = current
        elif current is not None and re.match(r"^ {4,}\S", line):
            current.append(line.strip())
        else:
            current = None
    return {option: " ".join(" ".join(parts).split()) for option, parts in entries.items()}


def script_help(script):
    done = subprocess.run([sys.executable, os.path.join(REPO, script), "--help"], env=ENV,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0 and done.stderr == "", done.stderr
    return done.stdout


@pytest.mark.parametrize("script", ["run.py", "pack.py", "sweep.py"])
def test_help_gives_every_flag_a_line_and_its_default(script):
    """Each flag of the script's --help has help text, with its default where it has one
    (a sweep's grid flag: run.py's default; switches are off)."""
    from gaitprop.cli import pack
    from gaitprop.cli import sweep
    parser = {"run.py": settings.build_parser, "pack.py": pack.build_parser,
              "sweep.py": sweep.build_parser}[script]()
    entries = help_entries(script_help(script))
    for action in parser._actions:
        for option in action.option_strings:
            assert entries.get(option), (option, entries)
        text = entries[action.option_strings[0]]
        default = action.default
        if script == "sweep.py" and action.dest in settings.SETTINGS:
            default = settings.SETTINGS[action.dest].default
            if action.dest in sweep.SWITCHES:
                default = "off"
        if default is not None and default is not False and default != argparse.SUPPRESS:
            assert f"(default: {default})" in text, (option, text)


def test_the_sweeps_help_names_every_switch():
    from gaitprop.cli import sweep
    text = " ".join(script_help("sweep.py").split())
    switches = re.search(r"on/off for the switches (.*?), which alone mean on", text)
    assert switches, text
    named = re.findall(r"--(\w+)", switches[1])
    assert sorted(named) == sorted(sweep.SWITCHES)
    assert {"learn_inv", "no_inv_init"} <= set(named)
