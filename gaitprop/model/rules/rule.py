"""What a learning rule declares (`Rule`), its own options (`Option`) and what the shared
per-layer update hands it when it passes an error down (`Passing`). Only the standard
library: the command line reads the registry without loading the training code."""
import dataclasses
import functools
import inspect
import typing
from collections.abc import Callable, Mapping
from typing import Any


class Passing(typing.NamedTuple):
    """What the shared update (model.net.InvNet.directions) knows when it passes the error of
    layer l (`layer_index`) down to that layer's input h_l: x_l (`inputs`, the units layer l reads),
    h_{l+1} (`outputs`), the error e_{l+1} at the output (`errors`), d = g(h_{l+1}) * e_{l+1}
    (`local_errors`) and the top layer's d (`top_local_errors`, that of the output layer)."""

    layer_index: int
    inputs: Any
    outputs: Any
    errors: Any
    local_errors: Any
    top_local_errors: Any


@dataclasses.dataclass(frozen=True)
class Option:
    """An option of a rule: the flag --`name` (a positive number, at most `maximum` if set),
    the keyword its `error_below` takes, and its `default` for this rule. The results
    folder names a value other than the rule's default as `{value}{suffix}`. `absent`: the
    value that a run stored before the option existed ran with (None: the default). Rules
    may share an option (the same name, help and suffix), each with a default of its own."""

    name: str
    default: float
    help: str
    suffix: str
    maximum: float | None = None
    absent: float | None = None
    metavar: str | None = None


# How a learned inverse can learn (--inv_loss): what each loss compares.
INVERSE_LOSSES = {
    "reconstruction": "backward(forward(x~)) against x~, x~ the (noise-corrupted) input",
    "difference": "backward(forward(x + s)) - backward(forward(x)) against the noise s "
                  "(Meulemans et al. 2020): trains V on the Jacobian, leaves c as it starts"}


@dataclasses.dataclass(frozen=True)
class InverseTraining:
    """How a rule's learned inverses (--learn_inv) train by default: the standard deviation of
    the noise on the activities they learn on (--inv_noise), their learning rate as a multiple
    of the forward one (--inv_learning_rate), their steps a batch (--inv_steps) and their
    loss (--inv_loss, one of INVERSE_LOSSES)."""

    inv_noise: float = 0.0
    rate_factor: float = 1.0
    inv_steps: int = 1
    inv_loss: str = "reconstruction"


@dataclasses.dataclass(frozen=True)
class Rule:
    """A learning rule, as the registry (gaitprop.model.rules.RULES) knows it.

    - `name`: --algorithm=NAME; the results folder's name shows it;
    - `title`, `citation`: what it is and where it comes from;
    - `passes_error`: how it passes an error down, in words ("through W.T"), and
      `error_below(net, passing, **options)`: the error at layer l's input h_l, from a
      `Passing`, on the units layer l reads (the shared update pads the rest with zeros);
    - `output_error(errors, **options)`: the error e_L = h_L - t_L at the output from
      h_L - t (t: the labels on the class units, h_L elsewhere), where the rule's output
      target t_L is not t itself (None: e_L = h_L - t);
    - `uses_inverses`: whether it takes its targets through layer inverses (and so whether
      --learn_inv applies: learned inverses replace the exact ones);
    - `options`: its own options (`Option`), each passed by name to those of
      `error_below` and `output_error` that take it (`call`);
    - `paper`: its settings in the paper (Ahmad et al. 2020), {setting: value}: those of the
      authors' own commands for it (their README: learning rate and lambda, 4 hidden
      layers; their run.py initialises orthogonally only where lambda is 0), or None where
      the paper has none (the 'paper' preset refuses it);
    - `inverse_training`: how its learned inverses train by default (`InverseTraining`).
    """

    name: str
    title: str
    citation: str
    passes_error: str
    error_below: Callable[..., Any]
    uses_inverses: bool = False
    options: tuple[Option, ...] = ()
    paper: Mapping[str, Any] | None = None
    output_error: Callable[..., Any] | None = None
    inverse_training: InverseTraining = InverseTraining()

    def option_defaults(self):
        """{option name: its default for this rule}."""
        return {option.name: option.default for option in self.options}


def call(function, *arguments, options):
    """`function(*arguments, **those options it takes by name)`."""
    return function(*arguments, **{name: value for name, value in options.items()
                                   if name in keywords(function)})


@functools.cache
def keywords(function):
    """The names of the parameters of `function` (what `call` passes it of the options)."""
    return frozenset(inspect.signature(function).parameters)
