"""What a run leaves for others to read: its results folder and its exit status.

A results folder is named from the settings, as the published scripts named it
(`folder_name`; `settings_from_name` reads a name back). It holds the files named below,
and the weights `{i}Lweights.npy`, `{i}Lbiases.npy` (and a learned inverse's
`{i}Lbackward_weights.npy`, `{i}Lbackward_biases.npy`). `COMPUTATION` lists the settings that
change what a run computes: a stored run is continued only under equal ones
(`setting_differences`). run.py writes all this; checkpoint.py, sweep.py, sweep_launch.py
and summarize.py read it. Only the standard library (and the table of settings, the names of
the statistics and of the parameter files) is imported here.
"""
import os
import re

from gaitprop.runs import settings as settings_table
from gaitprop.model.parameter_files import is_parameter_file, parameter_file, parameter_prefix  # noqa: F401
from gaitprop.engine.statistic_names import STATISTICS, VALIDATION_STATISTICS, statistics_names  # noqa: F401

ALIGNMENT = "alignment.txt"
INVERSE_QUALITY = "inverse_quality.txt"  # with --learn_inv and --log_alignment
CHECKPOINT = "checkpoint.npz"
RUN_RECORD = "run.json"
LOCK = "run.lock"
ERROR_LOG = "error.log"

# The settings that change what a run computes: a stored run resumes only under equal ones.
COMPUTATION = settings_table.names(computation=True)
# The settings a folder name holds (eval_interval and dtype are not in it), in its order.
PIECES = {setting.name: setting.folder for setting in settings_table.TABLE
          if setting.folder is not None}  # {name: its settings.NamePiece}
NAMED = tuple(sorted(PIECES, key=lambda name: PIECES[name].position))
FOLDER_NAME = re.compile("".join(PIECES[name].pattern for name in NAMED))



def statistics_file(name):
    """The file of one of the STATISTICS: one value a line, one line per evaluation."""
    return name + ".txt"


# The files a fresh run replaces (the weights besides); the lock stays.
RESULT_FILES = tuple(map(statistics_file, STATISTICS + VALIDATION_STATISTICS)) + (
    ALIGNMENT, INVERSE_QUALITY, CHECKPOINT, RUN_RECORD, ERROR_LOG)


def folder_name(settings):
    """{dataset}_{algorithm}_[Linear_][OrthoInit_]{reg}OrthoReg_{seed}Seed_{lr}LR_{n}L|TOWER
    for run.py's arguments (or any object with those attributes), as published: the name
    pieces (settings.NamePiece) of the NAMED settings in order, in their canonical form (a
    value equal to the one it defaults to shows as the default)."""
    values = settings_table.canonical({name: getattr(settings, name) for name in NAMED})
    return "".join(PIECES[name].text(values[name]) for name in NAMED)


def settings_from_name(name):
    """The NAMED settings a results folder name holds (a dict), or None if it is not one."""
    match = FOLDER_NAME.fullmatch(name)
    if match is None:
        return None
    try:
        return {name: PIECES[name].parse(match[name]) for name in NAMED}
    except ValueError:
        return None


def results_folder(settings):
    """The results folder of run.py's arguments: results_dir/folder_name."""
    return os.path.join(settings.results_dir, folder_name(settings))


def computation_settings(settings):
    """The COMPUTATION settings of run.py's arguments, as a dict (stored with a run)."""
    return {name: getattr(settings, name) for name in COMPUTATION}


def setting_differences(stored, settings):
    """'name stored X, asked Y' for each COMPUTATION setting in which a stored run's settings
    (a dict, from run.json or the checkpoint; a setting added since takes the value such a
    run had) differ from run.py's arguments `settings`; both in their canonical form."""
    stored = settings_table.stored_settings(stored)
    asked = settings_table.canonical(computation_settings(settings))
    return [f"{name} stored {stored.get(name)!r}, asked {asked[name]!r}"
            for name in COMPUTATION if stored.get(name) != asked[name]]
