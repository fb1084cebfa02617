"""What a run leaves for others to read: its results folder and its exit status.

A results folder is named from the settings, as the published scripts named it
(`folder_name`; `settings_from_name` reads a name back). It holds the files named below,
and the weights `{i}Lweights.npy`, `{i}Lbiases.npy`. `COMPUTATION` lists the settings that
change what a run computes: a stored run is continued only under equal ones
(`setting_differences`). run.py writes all this; checkpoint.py, sweep.py, sweep_launch.py
and summarize.py read it. Only the standard library is imported here.
"""
import os
import re
import signal

STATISTICS = ("training_acc", "training_loss", "test_acc", "test_loss")  # a .txt file each
ALIGNMENT = "alignment.txt"
CHECKPOINT = "checkpoint.npz"
RUN_RECORD = "run.json"
LOCK = "run.lock"
ERROR_LOG = "error.log"

# The settings that change what a run computes: a stored run resumes only under equal ones.
COMPUTATION = ("algorithm", "dataset", "seed", "nb_layers", "tower", "linear", "orthogonal_init",
               "orthogonal_reg", "learning_rate", "eval_interval", "dtype")
# The settings a folder name holds (eval_interval and dtype are not in it).
NAMED = ("dataset", "algorithm", "linear", "orthogonal_init", "orthogonal_reg", "seed",
         "learning_rate", "nb_layers", "tower")
FOLDER_NAME = re.compile(
    r"(?P<dataset>[A-Z]+)_(?P<algorithm>[A-Z]+)_(?P<linear>Linear_)?"
    r"(?P<orthogonal_init>OrthoInit_)?(?P<orthogonal_reg>[^_]+)OrthoReg_(?P<seed>-?\d+)Seed_"
    r"(?P<learning_rate>[^_]+)LR_(?P<nb_layers>\d+)(?P<tower>L|TOWER)")

# run.py's exit statuses (sweep.py's mean the same): README's table says what each asks for.
EXIT_FINISHED, EXIT_FAILED, EXIT_USAGE, EXIT_DIVERGED = 0, 1, 2, 3
EXIT_SIGNAL = {signal.SIGINT: 130, signal.SIGTERM: 143}


PARAMETER_FILE = re.compile(r"(?P<layer>\d+)L(?P<name>weights|biases)\.npy")


def parameter_prefix(index):
    """The prefix of layer `index`'s parameter files: InvLayer.save_params(prefix) writes
    prefix + "weights.npy" and prefix + "biases.npy" (as published: 0Lweights.npy, ...)."""
    return f"{index}L"


def parameter_file(index, name):
    """The file of layer `index`'s "weights" or "biases"."""
    return f"{parameter_prefix(index)}{name}.npy"


def is_parameter_file(name):
    """Whether a file name is one of the layers' parameter files."""
    return PARAMETER_FILE.fullmatch(name) is not None


def statistics_file(name):
    """The file of one of the STATISTICS: one value a line, one line per evaluation."""
    return name + ".txt"


# The files a fresh run replaces (the weights besides); the lock stays.
RESULT_FILES = tuple(map(statistics_file, STATISTICS)) + (ALIGNMENT, CHECKPOINT, RUN_RECORD,
                                                          ERROR_LOG)


def folder_name(settings):
    """{dataset}_{algorithm}_[Linear_][OrthoInit_]{reg}OrthoReg_{seed}Seed_{lr}LR_{n}L|TOWER
    for run.py's arguments (or any object with those attributes), as published."""
    return (f"{settings.dataset}_{settings.algorithm}_" + ("Linear_" if settings.linear else "")
            + ("OrthoInit_" if settings.orthogonal_init else "")
            + f"{settings.orthogonal_reg}OrthoReg_{settings.seed}Seed_{settings.learning_rate}LR_"
            + f"{settings.nb_layers}{'TOWER' if settings.tower else 'L'}")


def settings_from_name(name):
    """The NAMED settings a results folder name holds (a dict), or None if it is not one."""
    match = FOLDER_NAME.fullmatch(name)
    if match is None:
        return None
    try:
        return {"dataset": match["dataset"], "algorithm": match["algorithm"],
                "linear": bool(match["linear"]), "orthogonal_init": bool(match["orthogonal_init"]),
                "orthogonal_reg": float(match["orthogonal_reg"]), "seed": int(match["seed"]),
                "learning_rate": float(match["learning_rate"]),
                "nb_layers": int(match["nb_layers"]), "tower": match["tower"] == "TOWER"}
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
    (a dict, from run.json or the checkpoint) differ from run.py's arguments `settings`."""
    return [f"{name} stored {stored.get(name)!r}, asked {getattr(settings, name)!r}"
            for name in COMPUTATION if stored.get(name) != getattr(settings, name)]
