"""What a learning rule declares (`Rule`), its own options (`Option`) and what the shared
per-layer update hands it when it passes an error down (`Passing`). Only the standard
library: the command line reads the registry without loading the training code."""
import dataclasses
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


@dataclasses.dataclass(frozen=True)
class Rule:
    """A learning rule, as the registry (gaitprop.model.rules.RULES) knows it.

    - `name`: --algorithm=NAME; the results folder's name shows it;
    - `title`, `citation`: what it is and where it comes from;
    - `passes_error`: how it passes an error down, in words ("through W.T"), and
      `error_below(net, passing, **options)`: the error at layer l's input h_l, from a
      `Passing`, on the units layer l reads (the shared update pads the rest with zeros);
    - `uses_inverses`: whether it takes its targets through layer inverses (and so whether
      --learn_inv applies: learned inverses replace the exact ones);
    - `options`: its own options (`Option`), passed to `error_below` by name;
    - `paper`: its settings in the paper (Ahmad et al. 2020), {setting: value}, or None
      where the paper has none (the 'paper' preset refuses it).
    """

    name: str
    title: str
    citation: str
    passes_error: str
    error_below: Callable[..., Any]
    uses_inverses: bool = False
    options: tuple[Option, ...] = ()
    paper: Mapping[str, Any] | None = None

    def option_defaults(self):
        """{option name: its default for this rule}."""
        return {option.name: option.default for option in self.options}
