"""The learning rules, one module each, and their registry: `RULES`, by name, in the order
of `REGISTERED`. The command line (--algorithm, its refusals, the presets, the folder
names), the training engine, the benchmark, the summaries and the docs' table of rules read
the rules from here; a new rule is a module that declares its `RULE` (rule.Rule) and one
line in `REGISTERED`.

Light: the rules' modules import only the array backend, so the command line can read the
registry without loading the training code."""
from gaitprop.model.rules import bp, dfa, dtp, fa, gait, tp
from gaitprop.model.rules.rule import Option, Passing, Rule

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


def markdown_table():
    """The docs' table of rules (docs/rules.md, README.md), one row per registered rule: its
    name, what it is and where from, how it passes the error down, whether --learn_inv
    applies, its options with their defaults, and its settings in the paper (as flags)."""
    rows = ["| `--algorithm` | rule | passes the error down | `--learn_inv` | options | "
            "paper settings |", "|---|---|---|---|---|---|"]
    for each in REGISTERED:
        options = ", ".join(f"`--{option.name}` {option.default:g}" for option in each.options)
        paper = "none" if each.paper is None else "`" + " ".join(
            f"--{name}" if value is True else f"--{name}={value:g}"
            for name, value in each.paper.items() if value is not False) + "`"
        rows.append(f"| {each.name} | {each.title} ({each.citation}) | {each.passes_error} | "
                    f"{'yes' if each.uses_inverses else 'no'} | {options or '-'} | {paper} |")
    return "\n".join(rows) + "\n"


__all__ = ["DEFAULT", "Option", "Passing", "REFERENCE", "REGISTERED", "RULES", "Rule",
           "markdown_table", "options", "resolved_options", "rule"]
