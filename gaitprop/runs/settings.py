"""Every setting of a run, once: one row each in `TABLE`, from which the command line
(`build_parser`), the results folder's name and its parser (run_folder), the settings a
stored run must share to be continued, the pack key (pack.pack_key), the sweep's grid
(sweep.py), the paper's presets and the summaries' columns (summary_data) are derived;
and the network the settings name (`build_net`).

A new flag is one row; the flags of the learning rules' own options (GAIT's --gamma) are
made from the registry of rules (gaitprop.model.rules: `option_settings`), as are
--algorithm's choices, the refusals that name rules, and the paper's presets. Only the
standard library and the registry (which imports only the array backend) are imported at
the top: run_folder and the summaries read this module without loading the training code
(`build_parser` and `build_net` import what they need).
"""
import argparse
import dataclasses
import importlib
import math
import os
import re
from typing import Any, Callable

from gaitprop.model import rules


@dataclasses.dataclass(frozen=True)
class NamePiece:
    """How a setting shows in the results folder's name: at `position` (pieces in increasing
    order), the text `text(value)`, matched back by the regular expression `pattern` (whose
    group is the setting's name) and turned into the value by `parse(matched text or None)`."""

    position: float
    text: Callable[[Any], str]
    pattern: str
    parse: Callable[[str | None], Any]


def shown(value):
    """A value as a folder name shows it: str(), with a negative zero shown as 0.0 (the
    same number; '-0.0OrthoReg_' would be a second folder for it)."""
    return str(0.0 if isinstance(value, float) and value == 0 else value)


def value_piece(position, name, pattern, suffix, parse):
    """`{value}{suffix}`, e.g. 0.1OrthoReg_ (the value matched by `pattern`)."""
    return NamePiece(position, lambda value: f"{shown(value)}{suffix}",
                     f"(?P<{name}>{pattern}){re.escape(suffix)}", parse)


def word_piece(position, name, word):
    """`word` when the switch is on, nothing when off, e.g. Linear_."""
    return NamePiece(position, lambda value: word if value else "",
                     f"(?P<{name}>{re.escape(word)})?", lambda text: text is not None)


@dataclasses.dataclass(frozen=True)
class Setting:
    """One setting of a run (run.py's flag --name), and how each part of the package uses it.

    - kind: "value" (a number or a choice: `convert` checks it; `choices` names the module
      attribute whose keys are the allowed values), "path" (a folder), "switch" (on when
      given) or "action" (a switch that says what to do with the results folder);
    - published: a flag of the published scripts (else one added by this package);
    - computation: it changes what a run computes (a stored run continues only under an
      equal value);
    - folder: its NamePiece, if the results folder's name shows it;
    - pack: "shared" (a pack's runs have one value), "zero or not" (they agree on whether
      it is 0) or "free";
    - grid: its position in a sweep's grid (a sweep takes one or more values), or None;
      sweep: "passed" (one value, passed to every run of a sweep) or "device" (given
      round-robin by --devices); always_written: in every sweep command, even at its default;
    - column: (position, label, always shown) in the summaries' tables, or None;
    - absent: the value of a run stored before this setting existed (its run.json and
      checkpoint lack it), or None if every stored run records it.
    """

    name: str
    default: object
    help: str | None
    kind: str = "value"
    convert: Callable[[str], Any] | None = None
    choices: str | None = None
    aliases: tuple[str, ...] = ()
    metavar: str | None = None
    published: bool = False
    computation: bool = False
    folder: NamePiece | None = None
    pack: str = "free"
    grid: float | None = None
    sweep: str | None = None
    always_written: bool = False
    column: tuple[float, str, bool] | None = None
    absent: object = None


class Number:
    """An argparse type: a finite int or float >= minimum (> minimum if strict), and
    <= maximum if one is given."""

    def __init__(self, kind, minimum, strict=False, maximum=None):
        self.kind, self.minimum, self.strict, self.maximum = kind, minimum, strict, maximum

    def __call__(self, text):
        try:
            value = self.kind(text)
        except ValueError:
            expected = "an integer" if self.kind is int else "a number"
            raise argparse.ArgumentTypeError(f"{text!r} is not {expected}") from None
        if not math.isfinite(value):
            raise argparse.ArgumentTypeError(f"{text!r} must be a finite number")
        if (value < self.minimum or (self.strict and value == self.minimum)
                or (self.maximum is not None and value > self.maximum)):
            raise argparse.ArgumentTypeError(self.out_of_range(text))
        return value + 0  # -0.0 as 0.0

    def out_of_range(self, text):
        """Why `text` is outside the allowed values."""
        if self.maximum is not None and self.strict:
            return f"{text!r} must be greater than {self.minimum} and at most {self.maximum}"
        if self.maximum is not None:
            return f"{text!r} must be from {self.minimum} to {self.maximum}"
        return f"{text!r} must be {'greater than' if self.strict else 'at least'} {self.minimum}"


def folder(text):
    """An argparse type for a folder flag: any path but the empty one, which names no folder
    (the results folder would be made in the current folder, the data read from it)."""
    if not text:
        raise argparse.ArgumentTypeError("an empty path names no folder: give one (. for the "
                                         "current folder)")
    return text


SEEDS = 2**32  # NumPy's seeds: 0 to 2**32 - 1


class Seed(Number):
    """An argparse type for --seed: an integer from 0 to 2**32 - 1, NumPy's seeds (that every
    layer's seed S + k is one too is `refusal`'s to check)."""

    def __init__(self):
        super().__init__(int, 0, maximum=SEEDS - 1)

    def out_of_range(self, text):
        return (f"{text!r} is not a seed: NumPy takes seeds from 0 to {SEEDS - 1} (layer k of "
                f"the network is seeded with S + k), so give one from 0 to {SEEDS - 1}")


class HeldOut(Number):
    """An argparse type for --validation: a number of training images to hold out, at least 0
    and leaving the 1,000 images the published batch layout needs (len / 1000 per batch)."""

    def __init__(self):
        super().__init__(int, 0)

    def __call__(self, text):
        from gaitprop.runs.data import TRAINING_IMAGES
        value = super().__call__(text)
        if (TRAINING_IMAGES - value) // 1000 < 1:  # training.batch_layout's batch size
            raise argparse.ArgumentTypeError(
                f"{text!r} leaves {max(TRAINING_IMAGES - value, 0)} of the {TRAINING_IMAGES} "
                f"training images, too few for a batch (the published layout takes len / 1000 "
                f"images a batch): hold out at most {TRAINING_IMAGES - 1000}")
        return value


class Noise(Number):
    """An argparse type for --inv_noise: a standard deviation from 0 to MAXIMUM."""

    MAXIMUM = 1000.0

    def __init__(self):
        super().__init__(float, 0.0, maximum=self.MAXIMUM)

    def out_of_range(self, text):
        return (f"{text!r} is not a noise the learned inverses can learn on: they reconstruct "
                f"activities of order 1 (pixels are in [0, 1]), of which noise far beyond "
                f"{self.MAXIMUM:g} leaves nothing, and larger noise overflows their directions "
                f"(1e20 in float32, 1e300 in float64). Give a standard deviation from 0 to "
                f"{self.MAXIMUM:g}")


TOWER = (784, 784, 500, 200, 10)  # --tower's widths: four layers
PAPER = "paper"  # the preset of the paper's settings per rule (Ahmad et al. 2020, sec. 4)
PRESETS = [PAPER]


def optional_piece(position, name, suffix, kind: Callable[[str], Any] = float,
                   pattern="[^_]+"):
    """`{value}{suffix}` for a value, nothing for None (the default), e.g. 0.01Gamma_."""
    return NamePiece(position, lambda value: "" if value is None else f"{shown(value)}{suffix}",
                     rf"(?:(?P<{name}>{pattern}){re.escape(suffix)})?",
                     lambda text: None if text is None else kind(text))


def rule_help():
    """--algorithm's help: each registered rule's name and what it is."""
    return "learning rule: " + "; ".join(f"{rule.name} ({rule.title}, {rule.citation})"
                                         for rule in rules.REGISTERED)


def option_settings(first_position=4.3, first_grid=6.5, first_column=4.5):
    """A Setting per option of the learning rules (rules.options(): GAIT's gamma, ...), in
    registry order: --NAME, by default None (each rule's own default; `canonical`), shown
    in the folder name as {value}{suffix} when it is not the rule's default, shared by a
    pack's runs, in the sweep's grid and the summaries' columns."""
    made = []
    for offset, (name, declared) in enumerate(rules.options().items()):
        option = declared[0][1]
        defaults = ", ".join(f"{rule.name} {each.default:g}" for rule, each in declared)
        made.append(Setting(
            name, None, f"{option.help} (only --algorithm={'/'.join(r.name for r, _ in declared)};"
            f" default: {defaults})",
            convert=Number(float, 0.0, strict=True, maximum=option.maximum),
            metavar=option.metavar, computation=True,
            folder=optional_piece(first_position + offset / 100, name, option.suffix),
            pack="shared", grid=first_grid + offset / 100,
            column=(first_column + offset / 100, name, False), absent=option.absent))
    return tuple(made)


# In run.py's order of flags (the published ones first); `grid` orders the sweep's grid
# (outermost first: the seeds of one setting are adjacent).
TABLE = (
    Setting("algorithm", rules.DEFAULT.name, rule_help(), choices="gaitprop.model.rules.RULES",
            published=True, computation=True,
            folder=value_piece(1, "algorithm", "[A-Z]+", "_", str), pack="shared", grid=1,
            always_written=True, column=(1, "algorithm", True)),
    Setting("seed", 1, "base seed of the weights (layer k: S + k; each from 0 to 2**32 - 1)",
            convert=Seed(), published=True,
            computation=True, folder=value_piece(5, "seed", r"-?\d+", "Seed_", int),
            grid=12, always_written=True),
    Setting("orthogonal_reg", 0.0,
            "lambda of the orthogonal regulariser (0 also means orthogonal initialisation)",
            convert=Number(float, 0.0), aliases=("--orthogona_reg",), published=True,
            computation=True,
            folder=value_piece(4, "orthogonal_reg", "[^_]+", "OrthoReg_", float),
            pack="zero or not", grid=6, column=(4, "ortho reg", True)),
    Setting("device", 0, "GPU id when CuPy is used", convert=Number(int, 0), published=True,
            pack="shared", sweep="device"),
    Setting("nb_epochs", 100, "epochs to train (in total)", convert=Number(int, 1),
            published=True, grid=11, always_written=True),
    Setting("nb_layers", 1, "hidden layers of a square network", convert=Number(int, 0),
            published=True, computation=True,
            folder=value_piece(7, "nb_layers", r"\d+", "", int), pack="shared", grid=2,
            column=(2, "net", True)),
    Setting("learning_rate", 0.0001, "learning rate of the Adam-like optimiser",
            convert=Number(float, 0.0, strict=True),
            published=True, computation=True,
            folder=value_piece(6, "learning_rate", "[^_]+", "LR_", float), grid=7,
            column=(3, "lr", True)),
    Setting("dataset", "MNIST", "data set", choices="gaitprop.runs.data.DATASETS", published=True,
            computation=True, folder=value_piece(0, "dataset", "[A-Z]+", "_", str),
            grid=0, always_written=True, column=(0, "dataset", True)),
    Setting("linear", False, "linear layers instead of leaky ReLU", kind="switch",
            published=True, computation=True, folder=word_piece(2, "linear", "Linear_"),
            pack="shared", grid=4, column=(6, "linear", False)),
    Setting("tower", False, "the 784-784-500-200-10 tower network", kind="switch",
            published=True, computation=True,
            folder=NamePiece(8, lambda value: "TOWER" if value else "L", "(?P<tower>L|TOWER)",
                             lambda text: text == "TOWER"),
            pack="shared", grid=3),
    Setting("orthogonal_init", False,
            "orthogonal initialisation even when --orthogonal_reg > 0", kind="switch",
            published=True, computation=True,
            folder=word_piece(3, "orthogonal_init", "OrthoInit_"), grid=5,
            column=(5, "ortho init", False)),
    Setting("load", False, "continue the run stored in the results folder (not with "
            "--overwrite)", kind="action", published=True),
    Setting("learn_inv", False,
            "GAIT, TP and DTP use learned inverses (backward weights V and biases c per layer, "
            "trained down each layer's reconstruction loss) instead of exact ones",
            kind="switch", computation=True, folder=word_piece(4.1, "learn_inv", "LearnInv_"),
            pack="shared", grid=5.1, column=(5.1, "learn inv", False), absent=False),
    Setting("no_inv_init", False,
            "with --learn_inv: start V and c as drawn (V from the layer's seed, after W; c = 0) "
            "instead of at the exact inverse", kind="switch", computation=True,
            folder=word_piece(4.2, "no_inv_init", "NoInvInit_"), grid=5.2,
            column=(5.2, "no inv init", False), absent=False),
    *option_settings(),
    Setting("inv_noise", None,
            "with --learn_inv: standard deviation of the Gaussian noise added to the activities "
            "each learned inverse learns on (DTP's corrupted activities); 0 = none (default: "
            "the rule's)", convert=Noise(), metavar="SIGMA", computation=True,
            folder=optional_piece(4.4, "inv_noise", "InvNoise_"), pack="shared", grid=6.6,
            column=(4.6, "inv noise", False), absent=0.0),
    Setting("inv_steps", None,
            "with --learn_inv: steps the learned inverses take on each batch (default: the "
            "rule's)", convert=Number(int, 1, maximum=100), metavar="K", computation=True,
            folder=optional_piece(4.45, "inv_steps", "InvSteps_", int), pack="shared",
            grid=6.65, column=(4.65, "inv steps", False), absent=1),
    Setting("inv_loss", None,
            "with --learn_inv: the loss the learned inverses learn down (default: the rule's)",
            choices="gaitprop.model.rules.INVERSE_LOSSES", computation=True,
            folder=optional_piece(4.46, "inv_loss", "InvLoss_", str, "[a-z]+"), pack="shared",
            grid=6.66, column=(4.66, "inv loss", False), absent="reconstruction"),
    Setting("inv_learning_rate", None,
            "with --learn_inv: the learning rate of V and c (default: --learning_rate times the "
            "rule's factor)", convert=Number(float, 0.0, strict=True), metavar="RATE",
            computation=True, folder=optional_piece(6.2, "inv_learning_rate", "InvLR_"),
            grid=7.5, column=(3.5, "inv lr", False)),
    Setting("eval_interval", 10,
            "batches between evaluations, as published; 0 = only at the end of each epoch; "
            "fewer than the batches of an epoch (1000)",
            convert=Number(int, 0), computation=True, pack="shared", grid=9,
            column=(7, "eval every", False)),
    Setting("log_alignment", 0,
            "every N batches, log per layer the angle between the rule's and BP's weight "
            "directions to alignment.txt (0 = off)", convert=Number(int, 0), metavar="N",
            pack="shared", grid=10),
    Setting("validation", 0,
            "training images held out as a validation set, evaluated beside the others (10000: "
            "the authors' own split, chosen by seed 42); 0 = none, train on all",
            convert=HeldOut(), metavar="N", computation=True,
            folder=NamePiece(6.5, lambda value: f"{value}Val_" if value else "",
                             r"(?:(?P<validation>\d+)Val_)?",
                             lambda text: int(text) if text else 0),
            pack="shared", grid=9.5, column=(7.5, "validation", False), absent=0),
    Setting("dtype", "float64", "float type of the computation",
            choices="gaitprop.arrays.backend.DTYPES", computation=True,
            pack="shared", grid=8, column=(8, "dtype", False)),
    Setting("backend", "auto", "auto = CuPy when it imports and sees a GPU, else NumPy",
            choices="gaitprop.arrays.backend.CHOICES", pack="shared", sweep="passed"),
    Setting("data_dir", "./data", "torchvision data root", kind="path", convert=folder,
            sweep="passed"),
    Setting("results_dir", "results", "where results folders go", kind="path",
            convert=folder, sweep="passed"),
    Setting("overwrite", False, "replace a finished or interrupted run in the results folder "
            "(not with --load)", kind="action"),
)
SETTINGS = {setting.name: setting for setting in TABLE}


def documented_default(setting):
    """A setting's default as the docs' table of flags gives it: off for a switch, each
    rule's own for a rule's option ("GAIT 0.001"), else str() of the default."""
    if setting.kind in ("switch", "action"):
        return "off"
    declared = rules.options().get(setting.name)
    if declared:
        return ", ".join(f"{rule.name} {option.default:g}" for rule, option in declared)
    if setting.name in INVERSE_TRAINING + ("inv_learning_rate",):
        return ", ".join(f"{rule.name} {inverse_default(rule, setting.name)}"
                         for rule in rules.REGISTERED if rule.uses_inverses)
    return str(setting.default)


def inverse_default(rule, name):
    """A rule's default of a learned inverse's setting as the docs write it: 0.1, "lr" or
    "10 x lr" for --inv_learning_rate."""
    if name == "inv_learning_rate":
        factor = rule.inverse_training.rate_factor
        return "lr" if factor == 1 else f"{factor:g} x lr"
    value = getattr(rule.inverse_training, name)
    return f"{value:g}" if isinstance(value, (int, float)) else str(value)


def names(**wanted):
    """The names of the settings whose fields have the given values, in table order."""
    return tuple(setting.name for setting in TABLE
                 if all(getattr(setting, field) == value for field, value in wanted.items()))


def stored_settings(stored):
    """A stored run's settings (from run.json or a checkpoint), with the value it had for
    each setting added after it was stored (`absent`), in `canonical` form."""
    return canonical({**{setting.name: setting.absent for setting in TABLE
                         if setting.absent is not None}, **stored})


INVERSE_TRAINING = rules.INVERSE_TRAINING  # the learned inverses' settings a rule sets


def rule_defaults(values):
    """{setting: its default under the rule of `values` (a dict with "algorithm")}
    (rules.defaults: the rule's options, its learned inverses' training and
    --inv_learning_rate as its factor times --learning_rate, where that is given); {} for a
    rule the registry does not know."""
    rule = rules.RULES.get(values.get("algorithm"))
    return {} if rule is None else rules.defaults(rule, values.get("learning_rate"))


def resolved(values, name):
    """The value of setting `name` that a run of `values` computes with: its own, else the
    rule's default (`rule_defaults`; None where the rule has none)."""
    value = values.get(name)
    return rule_defaults(values).get(name) if value is None else value


def canonical(values):
    """Settings (a dict) in the form that names one run once (one run, one folder): a value
    equal to its default under the values' rule (`rule_defaults`: the rule's options, its
    learned inverses' training, --inv_learning_rate equal to its factor times
    --learning_rate) set to None, the default it equals; and a rule's option (`option_settings`)
    set to None where the values' rule takes no such option."""
    defaults = rule_defaults(values)
    if not defaults:
        return dict(values)
    same = {name: None for name, default in defaults.items()
            if values.get(name) is not None and values[name] == default}
    foreign = {name: None for name in rules.options() if name in values and name not in defaults}
    return {**values, **same, **foreign}


def presets(preset, algorithm):
    """{setting: value} of a preset for one algorithm (the rule's `paper` settings), or None
    if the rule has none (`preset_refusal` says why)."""
    paper = rules.rule(algorithm).paper
    return None if paper is None else dict(paper)


def preset_refusal(preset, algorithm):
    """Why `--preset` cannot set a rule's settings: the paper did not train it."""
    having = ", ".join(rule.name for rule in rules.REGISTERED if rule.paper)
    return (f"--preset {preset} has no settings for --algorithm={algorithm}: the paper "
            f"(Ahmad et al. 2020) trained only {having}. Give {algorithm}'s settings as flags, "
            f"or drop it from a sweep with --preset")


# The summaries' columns in order ({name: label}) and those always shown.
_COLUMN = {setting.name: setting.column for setting in TABLE if setting.column is not None}
COLUMNS = {name: _COLUMN[name][1] for name in sorted(_COLUMN, key=lambda name: _COLUMN[name][0])}
ALWAYS_SHOWN = tuple(name for name in COLUMNS if _COLUMN[name][2])


class DefaultsShown(argparse.HelpFormatter):
    """--help with each flag's default after its help, where it has one: not None, not a
    switch's False, and not already told ("(default: ...)")."""

    def _get_help_string(self, action):
        text = action.help or ""
        if (action.default is not None and action.default is not False
                and action.default is not argparse.SUPPRESS and "(default:" not in text):
            text += " (default: %(default)s)"
        return text


class RawDefaultsShown(DefaultsShown, argparse.RawDescriptionHelpFormatter):
    """DefaultsShown, with the description and epilog as written (pack.py's, sweep.py's)."""


class Parser(argparse.ArgumentParser):
    refuses = True  # whether parse_args refuses flags that cannot make a run (sweep.py: off)

    def parse_args(self, args=None, namespace=None):
        """Parsed flags, refused (`error`) when they cannot make a run (`refusal`), in
        `canonical` form."""
        parsed = super().parse_args(args, namespace)
        if not self.refuses:  # sweep.py's: single flags, checked in combination later
            return parsed
        reason = refusal(parsed)
        if reason is not None:
            self.error(reason)
        vars(parsed).update(canonical(vars(parsed)))
        return parsed

    def error(self, message):
        from gaitprop.runs.exit_status import EXIT_USAGE
        from gaitprop.runs.invocation import typed
        label, command = typed("run")
        self.exit(EXIT_USAGE, f"{label}: {message}. Run {command} --help for every flag and its "
                              f"allowed values; nothing was written.\n")


def choices(setting):
    """The allowed values of a setting: the keys of the module attribute it names."""
    if setting.choices is None:
        return None
    module, attribute = setting.choices.rsplit(".", 1)
    return list(getattr(importlib.import_module(module), attribute))


def last_seed_offset(args):
    """The largest k of the layer seeds S + k of the settings' network: 3 for the tower's four
    layers, nb_layers - 1 for a square network (its output layer reuses the last hidden
    layer's seed, S with no hidden layer). A learned inverse is drawn from its layer's seed."""
    return len(TOWER) - 2 if args.tower else max(args.nb_layers - 1, 0)


def batches_per_epoch(validation):
    """The batches of an epoch (training.batch_layout) on the training images left after
    holding out `validation` of them: 1000 for none or 10,000."""
    from gaitprop.runs.data import TRAINING_IMAGES
    images = TRAINING_IMAGES - validation
    return images // (images // 1000)


def names_of(chosen):
    """The names of rules as a refusal lists them: "GAIT, TP or DTP"."""
    names = [rule.name for rule in chosen]
    return names[0] if len(names) == 1 else f"{', '.join(names[:-1])} or {names[-1]}"


# What a run holds in memory, for the bound on --nb_layers (`memory_refusal`): per layer of u
# units, u * u values in each of LAYER_MATRICES arrays (W, its two moments, a step's
# direction, the regulariser's two products, a kept inverse and its refresh) and
# INVERSE_MATRICES more for a learned inverse (V, its two moments, its direction); and the
# data set, read and then on the backend: twice its 70,000 images of 784 values.
LAYER_MATRICES, INVERSE_MATRICES, DATA_VALUES = 8, 4, 2 * 70000 * 784
ITEM_BYTES = {"float64": 8, "float32": 4}


def machine_memory():
    """This machine's physical memory in bytes, or None where the system does not say."""
    try:
        return os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (AttributeError, ValueError, OSError):
        return None


def memory_refusal(args):
    """Why the settings' network cannot fit in this machine's memory (LAYER_MATRICES's
    estimate against `machine_memory`), naming the largest --nb_layers that fits, or None."""
    memory = machine_memory()
    if args.tower or memory is None:
        return None
    matrices = LAYER_MATRICES + (INVERSE_MATRICES if args.learn_inv else 0)
    layer_values, item = matrices * 784 * 784, ITEM_BYTES.get(args.dtype, 8)
    needed = item * ((args.nb_layers + 1) * layer_values + DATA_VALUES)
    if needed <= memory:
        return None
    largest = max(memory // item - DATA_VALUES, 0) // layer_values - 1
    return (f"--nb_layers={args.nb_layers} makes a network of {args.nb_layers + 1} layers of 784 "
            f"units, which with the data set needs about {needed / 2**30:.3g} GiB of memory "
            f"(weights, optimiser moments, a step's directions and inverses, in {args.dtype}), "
            f"more than this machine's {memory / 2**30:.3g} GiB. Give --nb_layers at most "
            f"{largest}")


def refusal(args):
    """Why run.py's settings `args` cannot make a run (one paragraph naming the flag and the
    fix), or None if they can: --learn_inv learns the inverses a rule's targets go through,
    so it needs a rule that uses inverses (rules.Rule.uses_inverses), and layers above the
    first; --no_inv_init, --inv_learning_rate and the inverses' training (--inv_noise,
    --inv_steps, --inv_loss) only mean something with --learn_inv, and the difference loss
    needs noise; a rule's option (--gamma) only with a rule that declares it; every layer's
    seed must be NumPy's; an --eval_interval must leave an evaluation in an epoch; --load and
    --overwrite exclude each other; the network must fit in memory."""
    rule = rules.rule(args.algorithm)
    inverting = [each for each in rules.REGISTERED if each.uses_inverses]
    if args.learn_inv and not rule.uses_inverses:
        return (f"--learn_inv needs --algorithm={names_of(inverting)}: {rule.name} passes its "
                f"errors down {rule.passes_error} and uses no inverse, so there is nothing to "
                f"learn. Drop --learn_inv, or choose {names_of(inverting)}")
    needing = [f"--{name}" for name, unset in (("no_inv_init", False),
                                                ("inv_learning_rate", None),
                                                *((each, None) for each in INVERSE_TRAINING))
               if getattr(args, name) != unset]
    if needing and not args.learn_inv:
        return (f"{' and '.join(needing)} {'apply' if len(needing) > 1 else 'applies'} only "
                f"to learned inverses: add --learn_inv "
                f"(with --algorithm={names_of(inverting)}), or drop {' and '.join(needing)}")
    if args.learn_inv and not args.tower and args.nb_layers == 0:
        return ("--learn_inv needs --nb_layers=1 or more (or --tower): only the layers above "
                "the first learn an inverse (the rules never invert layer 0), and with "
                "--nb_layers=0 the square network has one layer. Give --nb_layers=1 or more, or "
                "--tower, or drop --learn_inv")
    if resolved(vars(args), "inv_loss") == "difference" and not resolved(vars(args),
                                                                          "inv_noise"):
        return ("--inv_loss=difference needs --inv_noise above 0: the loss compares the "
                "inverse at noise-corrupted activities with the noise itself. Give "
                "--inv_noise=SIGMA (0.1, say), or --inv_loss=reconstruction")
    for name, declared in rules.options().items():
        if getattr(args, name, None) is not None and name not in rule.option_defaults():
            takers = names_of(taker for taker, _ in declared)
            return (f"--{name} applies only to --algorithm={takers}: {rule.name} takes no "
                    f"{name}, so it would change nothing but the folder name. Drop --{name}, "
                    f"or choose {takers}")
    too_large = memory_refusal(args)
    if too_large is not None:
        return too_large
    last = last_seed_offset(args)
    if args.seed + last >= SEEDS:
        network = "the tower's 4 layers" if args.tower else f"{args.nb_layers} hidden layers"
        fix = (f"--seed at most {SEEDS - 1 - last}" if last < SEEDS
               else f"--nb_layers at most {SEEDS - args.seed}")
        return (f"--seed={args.seed} gives a layer a seed past NumPy's last, {SEEDS - 1}: layer "
                f"k is seeded with S + k, up to S + {last} with {network}. Give {fix}")
    batches = batches_per_epoch(args.validation)
    if args.eval_interval >= batches:
        held = f" with --validation={args.validation}" if args.validation else ""
        return (f"--eval_interval={args.eval_interval} is not below the {batches} batches of an "
                f"epoch{held}: an evaluation follows batch b (counted from 0) when b % "
                f"{args.eval_interval} == 0 and b != 0, so none would follow any batch. Give "
                f"--eval_interval at most {batches - 1}, or 0 to evaluate at the end of each "
                f"epoch")
    if args.load and args.overwrite:
        return ("--load and --overwrite exclude each other: --load continues the run stored in "
                "the results folder, --overwrite replaces it. Give one of them")
    return None


def build_parser():
    """run.py's parser: a flag per row of TABLE (the published ones, then this package's)."""
    parser = Parser(description="Train an invertible MLP with a learning rule (--algorithm) and "
                                "dump accuracies, losses and weights (see README.md).",
                    formatter_class=DefaultsShown)
    ours = parser.add_argument_group("added by this package")
    for setting in TABLE:
        group = parser if setting.published else ours
        flags = [f"--{setting.name}", *setting.aliases]
        if setting.kind in ("switch", "action"):
            group.add_argument(*flags, action="store_true", help=setting.help)
        else:
            group.add_argument(
                *flags, type=setting.convert,  # type: ignore[arg-type]  # None: argparse's default
                choices=choices(setting), default=setting.default, metavar=setting.metavar,
                help=setting.help)
    return parser


def build_net(args):
    """The network of the settings; orthogonal init also whenever lambda == 0 (as published);
    learned inverses with --learn_inv."""
    from gaitprop.model.net import SquareInvNet, TowerInvNet
    orthogonal = args.orthogonal_init or args.orthogonal_reg == 0
    learned = {"learn_inverses": args.learn_inv, "exact_start": not args.no_inv_init}
    if args.tower:
        return TowerInvNet(list(TOWER), args.seed, orthogonal, args.linear, **learned)
    return SquareInvNet(784, args.nb_layers, args.seed, orthogonal, args.linear, **learned)
