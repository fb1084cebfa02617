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


def test_the_flags_page_documents_every_row_with_its_default_and_origin():
    """docs/flags.md's table: a line per setting, with its default (off for switches; each
    rule's for a rule's own settings) and whether the published scripts had it."""
    with open(os.path.join(REPO, "docs", "flags.md"), encoding="utf-8") as readme:
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
    """The paper's settings of each rule, on the paper's network of 4 hidden layers: the
    authors' README commands (no --orthogonal_init: their run.py initialises orthogonally
    only where lambda is 0, as BP's 0 does here too)."""
    assert settings.presets(settings.PAPER, "BP") == {
        "nb_layers": 4, "orthogonal_reg": 0.0, "learning_rate": 1e-4, "orthogonal_init": False}
    assert settings.presets(settings.PAPER, "GAIT") == {
        "nb_layers": 4, "orthogonal_reg": 0.1, "learning_rate": 1e-4, "orthogonal_init": False}
    assert settings.presets(settings.PAPER, "TP") == {
        "nb_layers": 4, "orthogonal_reg": 1000.0, "learning_rate": 1e-5, "orthogonal_init": False}
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


def inverse_rules():
    from gaitprop.model import rules
    return [rule for rule in rules.REGISTERED if rule.uses_inverses]


@pytest.mark.parametrize("rule", inverse_rules(), ids=lambda rule: rule.name)
def test_the_learned_inverses_training_defaults_to_the_rules_and_names_only_what_differs(rule):
    """--inv_noise, --inv_steps, --inv_loss and --inv_learning_rate default to the rule's
    (rules.InverseTraining; the learning rate as the rule's factor times --learning_rate):
    a run at those defaults, given or not, has none of them in its folder name; a value
    other than the rule's shows."""
    from gaitprop.runs import run_folder
    training = rule.inverse_training
    base = [f"--algorithm={rule.name}", "--learn_inv", "--learning_rate=0.0002"]
    plain = run_folder.folder_name(settings.build_parser().parse_args(base))
    assert not any(piece in plain for piece in ("InvNoise_", "InvSteps_", "InvLoss_", "InvLR_"))
    given = settings.build_parser().parse_args(base + [
        f"--inv_noise={training.inv_noise}", f"--inv_steps={training.inv_steps}",
        f"--inv_loss={training.inv_loss}",
        f"--inv_learning_rate={training.rate_factor * 0.0002!r}"])
    assert run_folder.folder_name(given) == plain
    assert (given.inv_noise, given.inv_steps, given.inv_loss, given.inv_learning_rate) == (
        None, None, None, None)
    other_loss = next(loss for loss in ("reconstruction", "difference")
                      if loss != training.inv_loss)
    other = settings.build_parser().parse_args(base + [
        f"--inv_noise={training.inv_noise + 0.5}", f"--inv_steps={training.inv_steps + 2}",
        f"--inv_loss={other_loss}"])
    name = run_folder.folder_name(other)
    assert f"{training.inv_noise + 0.5}InvNoise_{training.inv_steps + 2}InvSteps_" in name
    assert f"{other_loss}InvLoss_" in name
    assert run_folder.settings_from_name(name)["inv_steps"] == training.inv_steps + 2


@pytest.mark.parametrize("flags, words", [
    (["--algorithm=DTP", "--inv_steps=2"], "--inv_steps applies only to learned inverses"),
    (["--algorithm=DTP", "--inv_loss=difference"], "--inv_loss applies only to learned"),
    (["--algorithm=DTP", "--learn_inv", "--inv_loss=difference", "--inv_noise=0"],
     "--inv_loss=difference needs --inv_noise above 0"),
    (["--algorithm=GAIT", "--learn_inv", "--inv_steps=0"], "'0' must be from 1 to 100"),
    (["--algorithm=TP", "--target_step=0"], "'0' must be greater than 0.0 and at most 1.0"),
    (["--algorithm=TP", "--target_step=1.5"], "'1.5' must be greater than 0.0 and at most 1.0"),
    (["--algorithm=BP", "--target_step=0.5"], "--target_step applies only to "
                                              "--algorithm=TP or DTP")])
def test_the_learned_inverses_and_target_flags_are_refused_where_they_mean_nothing(capsys,
                                                                                   flags, words):
    with pytest.raises(SystemExit) as stopped:
        settings.build_parser().parse_args(flags)
    assert stopped.value.code == 2 and words in capsys.readouterr().err


def test_tp_keeps_the_published_target_and_its_folder_names():
    from gaitprop.runs import run_folder
    args = settings.build_parser().parse_args(["--algorithm=TP", "--nb_layers=4",
                                               "--target_step=1"])
    assert args.target_step is None
    assert run_folder.folder_name(args) == "MNIST_TP_0.0OrthoReg_1Seed_0.0001LR_4L"
    stepped = settings.build_parser().parse_args(["--algorithm=TP", "--target_step=0.1"])
    assert "_0.1TargetStep_" in run_folder.folder_name(stepped)
