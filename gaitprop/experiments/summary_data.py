"""Reading results folders for summarize.py: runs, their settings, curves and groups.

A run is read from its statistics files (`training_acc.txt`, `test_acc.txt`: one value per
evaluation) and its `run.json` (settings and status). Without run.json (the published
scripts wrote none) the settings come from the folder name (run_folder.settings_from_name),
with the published cadence --eval_interval 10 and status 'unknown'.

Epochs: a run evaluates once before training, then `evaluations_per_epoch` times an
epoch; evaluation i is placed at epoch i / evaluations_per_epoch (the evaluations are
spread evenly over the epoch, and the last one of epoch e lands on e).
"""
import collections
import dataclasses
import functools
import os

import numpy

from gaitprop.runs import checkpoint
from gaitprop.runs import data
from gaitprop.runs import run_folder
from gaitprop.runs import settings as settings_table
from gaitprop.engine import cadence
from gaitprop.model import rules
from gaitprop.runs.run_folder import ALIGNMENT, RUN_RECORD

GROUP_KEYS = tuple(name for name in run_folder.COMPUTATION if name != "seed")
IN_PROGRESS = ("running", "interrupted", "failed")
# Groups in the order of these settings' allowed values (MNIST, FMNIST, KMNIST; BP, GAIT, TP).
ORDER = {name: tuple(settings_table.choices(settings_table.SETTINGS[name]))
         for name in ("dataset", "algorithm")}
# What a folder of the published scripts (no run.json) is assumed to have run with.
PUBLISHED_UNNAMED = {"eval_interval": 10, "dtype": None}
# A folder holding either file is a results folder (the published scripts wrote no run.json).
MARKERS = (RUN_RECORD, run_folder.statistics_file("training_acc"))


class SummaryError(Exception):
    """Nothing to summarise, or a path that does not exist; the message says what to do."""


def batches_per_epoch(validation=0):
    """Batches an epoch (cadence.batch_layout) of the training images left after holding
    out `validation` of them (1000 for none or 10,000)."""
    return cadence.batch_layout(data.TRAINING_IMAGES - validation)[1]


@functools.cache
def evaluations_per_epoch(eval_interval, validation=0):
    """Evaluations within an epoch, on the cadence of cadence.evaluates_after: 1 if
    eval_interval is 0, else one after each batch b with b % N == 0, b != 0 (99 at N = 10)."""
    nb_batches = batches_per_epoch(validation)
    return sum(cadence.evaluates_after(batch, eval_interval, nb_batches)
               for batch in range(nb_batches))


def mean_sd(values):
    """(mean, sample standard deviation); the sd is nan for a single value."""
    values = numpy.asarray(values, dtype=float)
    return float(values.mean()), float(values.std(ddof=1)) if len(values) > 1 else float("nan")


@dataclasses.dataclass
class Run:
    """One results folder: settings, status, the accuracy curves, the logged alignment and
    the logged quality of learned inverses."""
    folder: str
    settings: dict
    status: str
    curves: dict
    alignment: numpy.ndarray | None = None  # rows: epoch position, then one angle per layer
    # rows: epoch position, reconstruction error per learned inverse, then distance per one
    inverse_quality: numpy.ndarray | None = None

    def final_inverse_quality(self):
        """(reconstruction error, distance to the exact inverse) of the last logged row, each
        the mean over the learned inverses; None if none was logged."""
        if self.inverse_quality is None:
            return None
        errors, distances = numpy.split(self.inverse_quality[-1, 1:], 2)
        return float(errors.mean()), float(distances.mean())

    @property
    def per_epoch(self):
        return evaluations_per_epoch(self.settings.get("eval_interval", 10),
                                     self.settings.get("validation", 0))

    def epochs(self, length=None):
        """The epoch of each evaluation (of the first `length` ones)."""
        length = len(self.curves["test_acc"]) if length is None else length
        return numpy.arange(length) / max(self.per_epoch, 1)


def read_log(path, nb_batches):
    """alignment.txt or inverse_quality.txt as rows (epoch position, then the logged values),
    or None if absent or empty.

    Columns `epoch batch value ...` (0-based epoch and batch) with a '#' header; the position
    of a row is epoch + (batch + 1) / nb_batches (the batches of the run's epoch).
    """
    if not os.path.exists(path):
        return None
    table = numpy.loadtxt(path, comments="#", ndmin=2)
    if table.size == 0 or table.shape[1] < 3:
        return None
    position = table[:, 0] + (table[:, 1] + 1) / nb_batches
    return numpy.column_stack([position, table[:, 2:]])


def read_run(folder):
    """The Run of a results folder; raises ValueError if its files cannot be used."""
    record_path = os.path.join(folder, RUN_RECORD)
    if os.path.exists(record_path):
        record = checkpoint.load_json(record_path)
        settings = settings_table.stored_settings(record["settings"])
        status = record.get("status", "unknown")
    else:
        named = run_folder.settings_from_name(os.path.basename(os.path.normpath(folder)))
        if named is None:
            raise ValueError(f"no {RUN_RECORD}, and its name is not a results folder name")
        settings, status = {**named, **PUBLISHED_UNNAMED}, "unknown"
    curves = {}
    for name in ("training_acc", "test_acc", "validation_acc"):
        path = os.path.join(folder, run_folder.statistics_file(name))
        if name == "validation_acc" and not os.path.exists(path):
            continue  # a run without a validation set
        if os.path.exists(path) and os.path.getsize(path) == 0:
            raise ValueError(f"{run_folder.statistics_file(name)} is empty")
        values = numpy.loadtxt(path, ndmin=1)
        curves[name] = values
    nb_batches = batches_per_epoch(settings.get("validation", 0))
    return Run(os.path.normpath(folder), settings, status, curves,
               read_log(os.path.join(folder, ALIGNMENT), nb_batches),
               read_log(os.path.join(folder, run_folder.INVERSE_QUALITY), nb_batches))


def find_folders(path):
    """Results folders at or below `path`: those holding run.json or training_acc.txt."""
    found = []
    for root, directories, files in os.walk(path):
        directories.sort()
        if any(marker in files for marker in MARKERS):
            found.append(root)
            directories.clear()
    return found


def read_runs(paths):
    """(runs, warnings): every readable results folder under the paths, each once, and a
    warning for each other one, naming it and why it was skipped (SummaryError if there is
    no results folder at all)."""
    runs, warnings, seen = [], [], set()
    for path in paths:
        if not os.path.isdir(path):
            raise SummaryError(f"{path} is not a folder: give results folders or folders that "
                               f"hold them")
        for folder in find_folders(path):
            if os.path.realpath(folder) in seen:
                continue
            seen.add(os.path.realpath(folder))
            try:
                runs.append(read_run(folder))
            except (OSError, ValueError, KeyError) as error:
                warnings.append(f"skipping {folder}: {error}")
    if not runs and not warnings:
        raise SummaryError(f"no results folders (with {' or '.join(MARKERS)}) under "
                           f"{', '.join(paths)}")
    return runs, warnings


class Group:
    """Runs whose settings differ only in the seed."""

    def __init__(self, key, runs):
        self.key, self.runs = key, sorted(runs, key=lambda run_: run_.settings["seed"])

    def final(self, name):
        return [run_.curves[name][-1] for run_ in self.runs]

    def peak(self, name):
        return [run_.curves[name].max() for run_ in self.runs]

    def peak_epoch(self, name):
        """Per run, the epoch of the first evaluation reaching its peak."""
        return [run_.epochs()[numpy.argmax(run_.curves[name])] for run_ in self.runs]

    def epochs(self):
        """Per run, the epochs its statistics cover."""
        return [float(run_.epochs()[-1]) for run_ in self.runs]

    def validated(self):
        """Whether every run of the group has a validation curve."""
        return all("validation_acc" in run_.curves for run_ in self.runs)

    def selected(self, name="test_acc"):
        """Per run, (`name` at the evaluation of best validation accuracy, that evaluation's
        epoch): model selection on the validation set (the first best evaluation)."""
        chosen = []
        for run_ in self.runs:
            validation = run_.curves["validation_acc"]
            best = int(numpy.argmax(validation[:len(run_.curves[name])]))
            chosen.append((float(run_.curves[name][best]), float(run_.epochs()[best])))
        return chosen

    def learned(self):
        """Whether every run of the group logged the quality of learned inverses."""
        return all(run_.inverse_quality is not None for run_ in self.runs)

    def final_inverse_quality(self):
        """([reconstruction error], [distance to the exact inverse]) per run, at its last
        logged row (means over the learned inverses, Run.final_inverse_quality)."""
        return tuple(map(list, zip(*(run_.final_inverse_quality() for run_ in self.runs))))

    def status_counts(self):
        return dict(collections.Counter(run_.status for run_ in self.runs))


def sort_key(key):
    """Groups in the order data set, network, algorithm (BP, GAIT, TP), then the rest."""
    def rank(name):
        value = key[name]
        order = ORDER.get(name, ())
        position = order.index(value) if value in order else len(order)
        if isinstance(value, (int, float)):
            return (position, 0, value, "")
        return (position, 1, 0, str(value))
    return [rank(name) for name in ("dataset", "tower", "nb_layers", "algorithm")
            ] + [rank(name) for name in GROUP_KEYS]


def group_runs(runs):
    """The runs grouped by every computation setting except the seed, in a readable order."""
    grouped = collections.defaultdict(list)
    for run_ in runs:
        key = tuple((name, run_.settings.get(name)) for name in GROUP_KEYS)
        grouped[key].append(run_)
    groups = [Group(dict(key), members) for key, members in grouped.items()]
    return sorted(groups, key=lambda group: sort_key(group.key))


LABELS = settings_table.COLUMNS  # {setting: its column's label}, in the columns' order
ALWAYS = settings_table.ALWAYS_SHOWN


def label_columns(groups):
    """The settings shown for each group: the main ones, plus any other that varies."""
    return [name for name in LABELS if name in ALWAYS
            or len({str(group.key[name]) for group in groups}) > 1]


def label_values(group, columns):
    """Display text of each shown setting of a group."""
    key = group.key
    text = {"nb_layers": f"{key['nb_layers']}{'TOWER' if key['tower'] else 'L'}",
            "orthogonal_init": ("yes" if key["orthogonal_init"]
                                else "yes (reg 0)" if key["orthogonal_reg"] == 0 else "no"),
            **{name: "yes" if key[name] else "no"
               for name in ("linear", "learn_inv", "no_inv_init")},
            "learning_rate": f"{key['learning_rate']:g}",
            "inv_learning_rate": ("lr" if key["inv_learning_rate"] is None
                                  else f"{key['inv_learning_rate']:g}"),
            "orthogonal_reg": f"{key['orthogonal_reg']:g}",
            "dtype": key["dtype"] or "?",
            **{name: option_text(key, name) for name in rules.options()}}
    return {name: text.get(name, str(key[name])) for name in columns}


def option_text(key, name):
    """A learning rule's option as a group shows it: its value, the rule's default where it
    is None, "-" where the group's rule takes no such option."""
    default = rules.RULES[key["algorithm"]].option_defaults().get(name) if (
        key["algorithm"] in rules.RULES) else None
    value = default if key.get(name) is None else key[name]
    return "-" if value is None else f"{value:g}"
