"""The files of a network's parameters, as the published scripts named them: layer i's
`{i}Lweights.npy` and `{i}Lbiases.npy` (and a learned inverse's `{i}Lbackward_weights.npy`,
`{i}Lbackward_biases.npy`). Only the standard library."""
import re

PARAMETER_FILE = re.compile(r"(?P<layer>\d+)L(?P<name>(?:backward_)?(?:weights|biases))\.npy")


def parameter_prefix(index):
    """The prefix of layer `index`'s parameter files: InvLayer.save_params(prefix) writes
    prefix + "weights.npy" and prefix + "biases.npy" (as published: 0Lweights.npy, ...)."""
    return f"{index}L"


def parameter_file(index, name):
    """The file of layer `index`'s "weights", "biases", "backward_weights" or
    "backward_biases"."""
    return f"{parameter_prefix(index)}{name}.npy"


def is_parameter_file(name):
    """Whether a file name is one of the layers' parameter files."""
    return PARAMETER_FILE.fullmatch(name) is not None
