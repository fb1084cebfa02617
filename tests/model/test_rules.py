"""The registry of learning rules (gaitprop.model.rules): what every rule declares, that a
rule's name lives only in its own module, that everything else reads the registry, and the
docs' table of rules."""
import ast
import inspect
import os

import pytest

from gaitprop.model import rules
from gaitprop.runs import settings
from helpers import REPO

PACKAGE = os.path.join(REPO, "gaitprop")


def test_every_rule_declares_what_the_package_reads():
    assert len(rules.RULES) == len(rules.REGISTERED) >= 4
    assert rules.DEFAULT is rules.REGISTERED[0] and rules.REFERENCE.name in rules.RULES
    for rule in rules.REGISTERED:
        assert rule.name.isupper() and rule.title and rule.citation and rule.passes_error
        parameters = dict(inspect.signature(rule.error_below).parameters)
        assert list(parameters)[:2] == ["net", "passing"]
        del parameters["net"], parameters["passing"]
        if rule.output_error is not None:
            output = dict(inspect.signature(rule.output_error).parameters)
            assert list(output)[0] == "errors"
            del output["errors"]
            parameters.update(output)
        # every option reaches a function that takes it, and every keyword is an option
        assert set(parameters) == {option.name for option in rule.options}
        for option in rule.options:
            assert option.name not in {setting.name for setting in settings.TABLE
                                       if setting.name not in rules.options()}
        if rule.paper is not None:
            assert set(rule.paper) <= set(settings.SETTINGS)


def string_constants(path):
    """Every string constant of a Python file (docstrings included), with its line."""
    with open(path, encoding="utf-8") as file:
        tree = ast.parse(file.read())
    return [(node.value, node.lineno) for node in ast.walk(tree)
            if isinstance(node, ast.Constant) and isinstance(node.value, str)]


def test_a_rules_name_is_written_only_in_its_own_module():
    """No module of the package but a rule's own spells the rule's name as a string: the
    command line, presets, refusals, benchmark rows, plot colours and summaries read it from
    the registry."""
    modules = {rule.name: inspect.getmodule(rule.error_below).__file__
               for rule in rules.REGISTERED}
    found = []
    for folder, _, files in os.walk(PACKAGE):
        for name in files:
            if name.endswith(".py"):
                path = os.path.join(folder, name)
                found += [(os.path.relpath(path, REPO), line, value)
                          for value, line in string_constants(path)
                          if value in modules and os.path.samefile(path, modules[value])
                          is False]
    assert found == []


@pytest.mark.parametrize("page", ["README.md", os.path.join("docs", "rules.md")])
def test_the_docs_table_of_rules_is_the_registrys(page):
    with open(os.path.join(REPO, page), encoding="utf-8") as file:
        text = file.read()
    assert rules.markdown_table() in text


@pytest.mark.parametrize("rule", rules.REGISTERED, ids=lambda rule: rule.name)
def test_every_rule_trains_a_step_through_the_command_lines_settings(rule):
    """Each rule parses, names its folder and takes a step as run.py would: nothing of the
    package needs more than its module and its line in the registry."""
    import numpy

    from gaitprop.engine.step import StepSettings
    from gaitprop.engine.statistics import Statistics
    from gaitprop.model.functions import one_hot
    from gaitprop.model.net import SquareInvNet
    from gaitprop.runs import run_folder
    from helpers import PackOfOne
    args = settings.build_parser().parse_args([f"--algorithm={rule.name}", "--nb_layers=2"])
    assert run_folder.folder_name(args).startswith(f"MNIST_{rule.name}_")
    assert run_folder.settings_from_name(run_folder.folder_name(args))["algorithm"] == rule.name
    net = SquareInvNet(20, 2, 1, True)  # run.py's network, narrow
    generator = numpy.random.RandomState(0)
    runner = PackOfOne(net, StepSettings.of(args))
    runner.step(generator.rand(6, 20), one_hot(generator.randint(0, 10, 6)), Statistics(), 0, 0)
    assert all(numpy.isfinite(array).all() for array in runner.net.state().values())
