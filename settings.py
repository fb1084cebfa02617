"""Every setting of a run, once: one row each in `TABLE`, from which the command line
(`build_parser`), the results folder's name and its parser (run_folder), the settings a
stored run must share to be continued, the pack key (pack.pack_key), the sweep's grid
(sweep.py), the paper's presets and the summaries' columns (summary_data) are derived;
and the network the settings name (`build_net`).

A new flag is one row. Only the standard library is imported at the top: run_folder and
the summaries read this module without loading the training code (`build_parser` and
`build_net` import what they need).
"""
import argparse
import dataclasses
import importlib
import math
import re


@dataclasses.dataclass(frozen=True)
class NamePiece:
    """How a setting shows in the results folder's name: at `position` (pieces in increasing
    order), the text `text(value)`, matched back by the regular expression `pattern` (whose
    group is the setting's name) and turned into the value by `parse(matched text or None)`."""

    position: float
    text: object
    pattern: str
    parse: object


def value_piece(position, name, pattern, suffix, parse):
    """`{value}{suffix}`, e.g. 0.1OrthoReg_ (the value matched by `pattern`)."""
    return NamePiece(position, lambda value: f"{value}{suffix}",
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
    - presets: {preset: {algorithm: value}};
    - column: (position, label, always shown) in the summaries' tables, or None;
    - absent: the value of a run stored before this setting existed (its run.json and
      checkpoint lack it), or None if every stored run records it.
    """

    name: str
    default: object
    help: str
    kind: str = "value"
    convert: object = None
    choices: str = None
    aliases: tuple = ()
    metavar: str = None
    published: bool = False
    computation: bool = False
    folder: NamePiece = None
    pack: str = "free"
    grid: int = None
    sweep: str = None
    always_written: bool = False
    presets: dict = dataclasses.field(default_factory=dict)
    column: tuple = None
    absent: object = None


class Number:
    """An argparse type: a finite int or float >= minimum (> minimum if strict)."""

    def __init__(self, kind, minimum, strict=False):
        self.kind, self.minimum, self.strict = kind, minimum, strict

    def __call__(self, text):
        try:
            value = self.kind(text)
        except ValueError:
            expected = "an integer" if self.kind is int else "a number"
            raise argparse.ArgumentTypeError(f"{text!r} is not {expected}") from None
        if (not math.isfinite(value) or value < self.minimum
                or (self.strict and value == self.minimum)):
            raise argparse.ArgumentTypeError(
                f"{text!r} must be {'greater than' if self.strict else 'at least'} "
                f"{self.minimum}")
        return value


class HeldOut(Number):
    """An argparse type for --validation: a number of training images to hold out, at least 0
    and leaving the 1,000 images the published batch layout needs (len / 1000 per batch)."""

    def __init__(self):
        super().__init__(int, 0)

    def __call__(self, text):
        from data import TRAINING_IMAGES
        value = super().__call__(text)
        if (TRAINING_IMAGES - value) // 1000 < 1:  # training.batch_layout's batch size
            raise argparse.ArgumentTypeError(
                f"{text!r} leaves {max(TRAINING_IMAGES - value, 0)} of the {TRAINING_IMAGES} "
                f"training images, too few for a batch (the published layout takes len / 1000 "
                f"images a batch): hold out at most {TRAINING_IMAGES - 1000}")
        return value


GAMMA = 0.001  # GAIT's gamma as published (the authors' learned-inverse branch took 0.01)
PAPER = "paper"  # the preset of the paper's settings per algorithm (Ahmad et al. 2020, sec. 4)

# In run.py's order of flags (the published ones first); `grid` orders the sweep's grid
# (outermost first: the seeds of one setting are adjacent).
TABLE = (
    Setting("algorithm", "BP", "learning rule", choices="training.RULES", published=True,
            computation=True, folder=value_piece(1, "algorithm", "[A-Z]+", "_", str),
            pack="shared", grid=1, always_written=True, column=(1, "algorithm", True)),
    Setting("seed", 1, "base seed of the weights", convert=Number(int, -2**31), published=True,
            computation=True, folder=value_piece(5, "seed", r"-?\d+", "Seed_", int),
            grid=12, always_written=True),
    Setting("orthogonal_reg", 0.0,
            "lambda of the orthogonal regulariser (0 also means orthogonal initialisation)",
            convert=Number(float, 0.0), aliases=("--orthogona_reg",), published=True,
            computation=True,
            folder=value_piece(4, "orthogonal_reg", "[^_]+", "OrthoReg_", float),
            pack="zero or not", grid=6,
            presets={PAPER: {"BP": 0.0, "GAIT": 0.1, "TP": 1000.0}},
            column=(4, "ortho reg", True)),
    Setting("device", 0, "GPU id when CuPy is used", convert=Number(int, 0), published=True,
            pack="shared", sweep="device"),
    Setting("nb_epochs", 100, "epochs to train (in total)", convert=Number(int, 1),
            published=True, grid=11, always_written=True),
    Setting("nb_layers", 1, "hidden layers of a square network", convert=Number(int, 0),
            published=True, computation=True,
            folder=value_piece(7, "nb_layers", r"\d+", "", int), pack="shared", grid=2,
            column=(2, "net", True)),
    Setting("learning_rate", 0.0001, None, convert=Number(float, 0.0, strict=True),
            published=True, computation=True,
            folder=value_piece(6, "learning_rate", "[^_]+", "LR_", float), grid=7,
            presets={PAPER: {"BP": 1e-4, "GAIT": 1e-4, "TP": 1e-5}}, column=(3, "lr", True)),
    Setting("dataset", "MNIST", None, choices="data.DATASETS", published=True,
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
            presets={PAPER: {"BP": False, "GAIT": True, "TP": True}},
            column=(5, "ortho init", False)),
    Setting("load", False, "continue the run stored in the results folder", kind="action",
            published=True),
    Setting("learn_inv", False,
            "GAIT and TP use learned inverses (backward weights V and biases c per layer, "
            "trained down each layer's reconstruction loss) instead of exact ones",
            kind="switch", computation=True, folder=word_piece(4.1, "learn_inv", "LearnInv_"),
            pack="shared", grid=5.1, column=(5.1, "learn inv", False), absent=False),
    Setting("no_inv_init", False,
            "with --learn_inv: start V and c as drawn (V from the layer's seed, after W; c = 0) "
            "instead of at the exact inverse", kind="switch", computation=True,
            folder=word_piece(4.2, "no_inv_init", "NoInvInit_"), grid=5.2,
            column=(5.2, "no inv init", False), absent=False),
    Setting("gamma", GAMMA, f"GAIT's gamma ({GAMMA}, as published)",
            convert=Number(float, 0.0, strict=True), computation=True,
            folder=NamePiece(4.3, lambda value: "" if value == GAMMA else f"{value}Gamma_",
                             r"(?:(?P<gamma>[^_]+)Gamma_)?",
                             lambda text: GAMMA if text is None else float(text)),
            pack="shared", grid=6.5, column=(4.5, "gamma", False), absent=GAMMA),
    Setting("inv_learning_rate", None,
            "with --learn_inv: the learning rate of V and c (default: --learning_rate)",
            convert=Number(float, 0.0, strict=True), metavar="RATE", computation=True,
            folder=NamePiece(6.2, lambda value: "" if value is None else f"{value}InvLR_",
                             r"(?:(?P<inv_learning_rate>[^_]+)InvLR_)?",
                             lambda text: None if text is None else float(text)),
            grid=7.5, column=(3.5, "inv lr", False)),
    Setting("eval_interval", 10,
            "batches between evaluations (10, as published); 0 = only at the end of each epoch",
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
    Setting("dtype", "float64", None, choices="backend.DTYPES", computation=True,
            pack="shared", grid=8, column=(8, "dtype", False)),
    Setting("backend", "auto", "auto = CuPy when it imports and sees a GPU, else NumPy",
            choices="backend.CHOICES", pack="shared", sweep="passed"),
    Setting("data_dir", "./data", "torchvision data root", kind="path", sweep="passed"),
    Setting("results_dir", "results", "where results folders go", kind="path",
            sweep="passed"),
    Setting("overwrite", False, "replace a finished or interrupted run in the results folder",
            kind="action"),
)
SETTINGS = {setting.name: setting for setting in TABLE}


def names(**wanted):
    """The names of the settings whose fields have the given values, in table order."""
    return tuple(setting.name for setting in TABLE
                 if all(getattr(setting, field) == value for field, value in wanted.items()))


def stored_settings(stored):
    """A stored run's settings (from run.json or a checkpoint), with the value it had for
    each setting added after it was stored (`absent`)."""
    return {**{setting.name: setting.absent for setting in TABLE
               if setting.absent is not None}, **stored}


def presets(preset, algorithm):
    """{setting: value} of a preset for one algorithm."""
    return {setting.name: setting.presets[preset][algorithm] for setting in TABLE
            if preset in setting.presets}


PRESETS = sorted({preset for setting in TABLE for preset in setting.presets})
# The summaries' columns in order ({name: label}) and those always shown.
COLUMNS = {setting.name: setting.column[1] for setting in
           sorted((setting for setting in TABLE if setting.column),
                  key=lambda setting: setting.column[0])}
ALWAYS_SHOWN = tuple(name for name in COLUMNS if SETTINGS[name].column[2])


class Parser(argparse.ArgumentParser):
    refuses = True  # whether parse_args refuses flags that cannot make a run (sweep.py: off)

    def parse_args(self, args=None, namespace=None):
        """Parsed flags, refused (`error`) when they cannot make a run (`refusal`)."""
        parsed = super().parse_args(args, namespace)
        reason = refusal(parsed) if self.refuses else None
        if reason is not None:
            self.error(reason)
        return parsed

    def error(self, message):
        from run_folder import EXIT_USAGE
        self.exit(EXIT_USAGE, f"run.py: {message}. Run ./run.py --help for every flag and its "
                              f"allowed values; nothing was written.\n")


def choices(setting):
    """The allowed values of a setting: the keys of the module attribute it names."""
    if setting.choices is None:
        return None
    module, attribute = setting.choices.rsplit(".", 1)
    return list(getattr(importlib.import_module(module), attribute))


def refusal(args):
    """Why run.py's settings `args` cannot make a run (one paragraph), or None if they can:
    --learn_inv learns the inverses that GAIT's and TP's targets use, which BP has none of;
    --no_inv_init and --inv_learning_rate only mean something with --learn_inv."""
    if args.learn_inv and args.algorithm == "BP":
        return ("--learn_inv needs --algorithm=GAIT or TP: BP passes its errors down through "
                "W.T and uses no inverse, so there is nothing to learn. Drop --learn_inv, or "
                "choose GAIT or TP")
    needing = [f"--{name}" for name, unset in (("no_inv_init", False),
                                                ("inv_learning_rate", None))
               if getattr(args, name) != unset]
    if needing and not args.learn_inv:
        return (f"{' and '.join(needing)} {'apply' if len(needing) > 1 else 'applies'} only "
                f"to learned inverses: add --learn_inv "
                f"(with --algorithm=GAIT or TP), or drop {' and '.join(needing)}")
    return None


def build_parser():
    """run.py's parser: a flag per row of TABLE (the published ones, then this package's)."""
    parser = Parser(description="Train an invertible MLP with BP, GAIT-prop or TP and dump "
                                "accuracies, losses and weights (see README.md).")
    ours = parser.add_argument_group("added by this package")
    for setting in TABLE:
        group = parser if setting.published else ours
        flags = [f"--{setting.name}", *setting.aliases]
        if setting.kind in ("switch", "action"):
            group.add_argument(*flags, action="store_true", help=setting.help)
        else:
            group.add_argument(*flags, type=setting.convert, choices=choices(setting),
                               default=setting.default, metavar=setting.metavar,
                               help=setting.help)
    return parser


def build_net(args):
    """The network of the settings; orthogonal init also whenever lambda == 0 (as published);
    learned inverses with --learn_inv."""
    from inv_net import SquareInvNet, TowerInvNet
    orthogonal = args.orthogonal_init or args.orthogonal_reg == 0
    learned = {"learn_inverses": args.learn_inv, "exact_start": not args.no_inv_init}
    if args.tower:
        return TowerInvNet([784, 784, 500, 200, 10], args.seed, orthogonal, args.linear,
                           **learned)
    return SquareInvNet(784, args.nb_layers, args.seed, orthogonal, args.linear, **learned)
