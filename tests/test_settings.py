"""settings.py: the one table of settings, and what is derived from it (the parser here; the
folder name in test_run_folder.py, the sweep in test_sweep.py, the pack key in test_pack.py)."""
import os
import re

import pytest

import settings
from helpers import REPO


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
        default = "off" if setting.kind in ("switch", "action") else str(setting.default)
        origin = "published" if setting.published else "ours"
        assert rows[setting.name] == (default, origin), setting.name


def test_name_pieces_and_columns_have_distinct_positions():
    pieces = [setting.folder.position for setting in settings.TABLE if setting.folder]
    columns = [setting.column[0] for setting in settings.TABLE if setting.column]
    grid = [setting.grid for setting in settings.TABLE if setting.grid is not None]
    for positions in (pieces, columns, grid):
        assert len(set(positions)) == len(positions)


def test_the_paper_preset_per_algorithm():
    assert settings.presets(settings.PAPER, "BP") == {
        "orthogonal_reg": 0.0, "learning_rate": 1e-4, "orthogonal_init": False}
    assert settings.presets(settings.PAPER, "GAIT") == {
        "orthogonal_reg": 0.1, "learning_rate": 1e-4, "orthogonal_init": True}
    assert settings.presets(settings.PAPER, "TP") == {
        "orthogonal_reg": 1000.0, "learning_rate": 1e-5, "orthogonal_init": True}


@pytest.mark.parametrize("text, message", [("x", "'x' is not a number"),
                                           ("-1", "'-1' must be at least 0.0"),
                                           ("nan", "'nan' must be at least 0.0")])
def test_numbers_are_checked_with_a_message(text, message):
    import argparse
    with pytest.raises(argparse.ArgumentTypeError, match=re.escape(message)):
        settings.Number(float, 0.0)(text)
