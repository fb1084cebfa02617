"""The learning rules, one module each, and their registry: `RULES`, by name, in the order
of `REGISTERED`. The command line (--algorithm, its refusals, the presets, the folder
names), the training engine, the benchmark, the summaries and the docs' table of rules read
the rules from here; a new rule is a module that declares its `RULE` (rule.Rule) and one
line in `REGISTERED`.

Light: the rules' modules import only the array backend, so the command line can read the
registry without loading the training code."""
from gaitprop.model.rules import bp, dfa, dtp, fa, gait, tp
from gaitprop.model.rules.rule import (INVERSE_LOSSES, InverseTraining, Option, Passing, Rule,
                                        call)

REGISTERED: tuple[Rule, ...] = (bp.RULE, gait.RULE, tp.RULE, dtp.RULE, fa.RULE, dfa.RULE)
RULES = {rule.name: rule for rule in REGISTERED}
DEFAULT = REGISTERED[0]  # --algorithm's default, and the reference of the angles logged
REFERENCE = bp.RULE  # the rule whose directions the others' angles are measured against


def rule(name_or_rule):
    """The Rule of a name (KeyError naming the registered ones), or a Rule itself."""
    if isinstance(name_or_rule, Rule):
        return name_or_rule
    try:
        return RULES[name_or_rule]
    except KeyError:
        raise KeyError(f"no learning rule {name_or_rule!r}: the rules are "
                       f"{', '.join(RULES)}") from None


def options():
    """{option name: [(rule, its Option)]} of every option some rule declares, in registry
    order (rules may share an option, each with its own default)."""
    declared: dict[str, list[tuple[Rule, Option]]] = {}
    for each in REGISTERED:
        for option in each.options:
            declared.setdefault(option.name, []).append((each, option))
    return declared


def resolved_options(rule_, given):
    """The keyword options of `rule_` for a run: each of its options' value in `given` (a
    mapping of option name to value; None or missing: the rule's default)."""
    return {option.name: option.default if given.get(option.name) is None
            else given[option.name] for option in rule_.options}


INVERSE_TRAINING = ("inv_noise", "inv_steps", "inv_loss")  # the settings of InverseTraining


def defaults(rule_, learning_rate=None):
    """{setting: its default for runs of `rule_`}: the rule's options, its learned inverses'
    training (--inv_noise, --inv_steps, --inv_loss) and, given the forward learning rate,
    --inv_learning_rate (the rule's factor times it)."""
    training = rule_.inverse_training
    values = {**rule_.option_defaults(),
              **{name: getattr(training, name) for name in INVERSE_TRAINING}}
    if learning_rate is not None:
        values["inv_learning_rate"] = training.rate_factor * learning_rate
    return values


def learned_inverses(rule_):
    """Whether --learn_inv applies to a rule, and how its inverses train where that is not
    the package's default (rules.InverseTraining), as the docs' table says it."""
    if not rule_.uses_inverses:
        return "no"
    training = rule_.inverse_training
    if training == InverseTraining():
        return "yes"
    return (f"yes: `--inv_noise={training.inv_noise:g} --inv_steps={training.inv_steps} "
            f"--inv_loss={training.inv_loss}`, inverse learning rate "
            f"{training.rate_factor:g} x lr")


def markdown_table():
    """The docs' table of rules (docs/rules.md, README.md), one row per registered rule: its
    name, what it is and where from, how it passes the error down, whether --learn_inv
    applies (and how its inverses train), its options with their defaults, and its
    settings in the paper (as flags)."""
    rows = ["| `--algorithm` | rule | passes the error down | `--learn_inv` | options | "
            "paper settings |", "|---|---|---|---|---|---|"]
    for each in REGISTERED:
        options = ", ".join(f"`--{option.name}` {option.default:g}" for option in each.options)
        paper = "none" if each.paper is None else "`" + " ".join(
            f"--{name}" if value is True else f"--{name}={value:g}"
            for name, value in each.paper.items() if value is not False) + "`"
        rows.append(f"| {each.name} | {each.title} ({each.citation}) | {each.passes_error} | "
                    f"{learned_inverses(each)} | {options or '-'} | {paper} |")
    return "\n".join(rows) + "\n"


__all__ = ["DEFAULT", "INVERSE_LOSSES", "INVERSE_TRAINING", "InverseTraining", "Option",
           "Passing", "REFERENCE", "REGISTERED", "RULES", "Rule", "call", "defaults",
           "markdown_table", "options", "resolved_options", "rule"]
