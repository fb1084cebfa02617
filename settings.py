"""run.py's settings: the command line's flags (`build_parser`) and the network they name
(`build_net`)."""
import argparse
import math

import backend
import data
import training
from run_folder import EXIT_USAGE


class Parser(argparse.ArgumentParser):
    def error(self, message):
        self.exit(EXIT_USAGE, f"run.py: {message}. Run ./run.py --help for every flag and its "
                              f"allowed values; nothing was written.\n")


def number(kind, minimum, strict=False):
    """An argparse type: a finite `kind` (int or float) >= minimum (> minimum if strict)."""
    def convert(text):
        try:
            value = kind(text)
        except ValueError:
            expected = "an integer" if kind is int else "a number"
            raise argparse.ArgumentTypeError(f"{text!r} is not {expected}") from None
        if not math.isfinite(value) or value < minimum or (strict and value == minimum):
            raise argparse.ArgumentTypeError(
                f"{text!r} must be {'greater than' if strict else 'at least'} {minimum}")
        return value
    return convert


def build_parser():
    parser = Parser(description="Train an invertible MLP with BP, GAIT-prop or TP and dump "
                                "accuracies, losses and weights (see README.md).")
    add = parser.add_argument
    add("--algorithm", choices=sorted(training.RULES), default="BP", help="learning rule")
    add("--seed", type=number(int, -2**31), default=1, help="base seed of the weights")
    add("--orthogonal_reg", "--orthogona_reg", type=number(float, 0.0), default=0.0,
        help="lambda of the orthogonal regulariser (0 also means orthogonal initialisation)")
    add("--device", type=number(int, 0), default=0, help="GPU id when CuPy is used")
    add("--nb_epochs", type=number(int, 1), default=100, help="epochs to train (in total)")
    add("--nb_layers", type=number(int, 0), default=1, help="hidden layers of a square network")
    add("--learning_rate", type=number(float, 0.0, strict=True), default=0.0001)
    add("--dataset", choices=list(data.DATASETS), default="MNIST")
    add("--linear", action="store_true", help="linear layers instead of leaky ReLU")
    add("--tower", action="store_true", help="the 784-784-500-200-10 tower network")
    add("--orthogonal_init", action="store_true",
        help="orthogonal initialisation even when --orthogonal_reg > 0")
    add("--load", action="store_true", help="continue the run stored in the results folder")
    ours = parser.add_argument_group("added by this package")
    ours.add_argument("--eval_interval", type=number(int, 0), default=10,
                      help="batches between evaluations (10, as published); 0 = only at the "
                           "end of each epoch")
    ours.add_argument("--log_alignment", type=number(int, 0), default=0, metavar="N",
                      help="every N batches, log per layer the angle between the rule's and "
                           "BP's weight directions to alignment.txt (0 = off)")
    ours.add_argument("--dtype", choices=backend.DTYPES, default="float64")
    ours.add_argument("--backend", choices=backend.CHOICES, default="auto",
                      help="auto = CuPy when it imports and sees a GPU, else NumPy")
    ours.add_argument("--data_dir", default="./data", help="torchvision data root")
    ours.add_argument("--results_dir", default="results", help="where results folders go")
    ours.add_argument("--overwrite", action="store_true",
                      help="replace a finished or interrupted run in the results folder")
    return parser


def build_net(args):
    """The network of the settings; orthogonal init also whenever lambda == 0 (as published)."""
    from inv_net import SquareInvNet, TowerInvNet
    orthogonal = args.orthogonal_init or args.orthogonal_reg == 0
    if args.tower:
        return TowerInvNet([784, 784, 500, 200, 10], args.seed, orthogonal, args.linear)
    return SquareInvNet(784, args.nb_layers, args.seed, orthogonal, args.linear)
