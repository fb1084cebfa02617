"""The user docs as a user meets them: README.md's Python runs as written from any folder,
and no user doc names a path outside the repository or how the package was built (the
flag table is checked against the settings table in tests/runs/test_settings.py)."""
import os
import re
import subprocess
import sys

import numpy as np

from helpers import ENV, REPO

from gaitprop.engine.statistics import Statistics
from gaitprop.model.net import SquareInvNet
from gaitprop.runs.data import load_dataset

USER_DOCS = ["README.md"] + [os.path.join("docs", name)
                             for name in sorted(os.listdir(os.path.join(REPO, "docs")))
                             if name.endswith(".md") and name != "development.md"]
QUICK_START = "results/MNIST_GAIT_OrthoInit_0.1OrthoReg_1Seed_0.0001LR_4L/"


def read(name):
    with open(os.path.join(REPO, name), encoding="utf-8") as file:
        return file.read()


def python_blocks(text):
    """The code of every ```python block of a Markdown text."""
    return re.findall(r"^```python\n(.*?)^```", text, re.M | re.S)


def test_the_readmes_python_runs_as_written_from_any_folder(tmp_path, data_root):
    """README's example, run in a folder of its own (the package installed, not the
    checkout), reads the quick start's folder and the MNIST test set with the package's
    loader and scores the loaded weights as the run scored them (test_acc.txt)."""
    blocks = python_blocks(read("README.md"))
    assert blocks, "README.md has no Python example"
    os.symlink(data_root.require("MNIST"), tmp_path / "data")
    folder = tmp_path / QUICK_START
    folder.mkdir(parents=True)
    net = SquareInvNet(784, 4, start_seed=5, orthogonal_init=True)
    rng = np.random.RandomState(0)
    for layer in net.layers:  # weights a run could have trained: not the drawn ones
        layer.weight_matrix += 0.01 * rng.randn(*layer.weight_matrix.shape)
    net.save_params(str(folder))
    train, test = load_dataset("MNIST", str(tmp_path / "data"))
    statistics = Statistics()
    statistics.record(net, (train[0][:100], train[1][:100]), test)
    np.savetxt(folder / "test_acc.txt", [0.1, statistics.values["test_acc"][-1]])
    for block in blocks:
        done = subprocess.run([sys.executable, "-c", block], cwd=tmp_path, env=ENV,
                              capture_output=True, text=True, timeout=600)
        assert done.returncode == 0, done.stderr
    printed = [float(line.rsplit(" ", 1)[1]) for line in done.stdout.splitlines()
               if line.startswith("test accuracy")]
    assert len(printed) == 2 and 0.05 < printed[0] < 1
    assert printed[0] == printed[1]


def test_no_user_doc_names_a_path_outside_the_repository_or_the_making_of_the_package():
    outside = re.compile(r"\.\./|(?<![\w.])/(?:work|tmp|root|home|usr|opt|mnt)/|\.devdata|"
                         r"\bissue \d+|\b20\d\d-\d\d-\d\d\b")
    found = {name: outside.findall(read(name)) for name in USER_DOCS}
    assert {name: hits for name, hits in found.items() if hits} == {}


def test_the_developers_doc_names_the_packages_modules():
    """docs/development.md names modules as the package has them: no module of the old flat
    layout (inv_layer.KeptInverse, `utils.py` for the transfer kernels, ...) outside the one
    line on the checkout's top-level files, and every `x.py` below its layout section a
    module of the package."""
    text = read(os.path.join("docs", "development.md"))
    modules = {name for _, _, names in os.walk(os.path.join(REPO, "gaitprop"))
               for name in names if name.endswith(".py")}
    old = re.compile(r"`(?:inv_layer|inv_net|utils)(?:\.py`|\.\w)")
    top_level = [line for line in text.splitlines() if "published import paths" in line or
                 "re-exports of `gaitprop.model`" in line]
    assert [line for line in text.splitlines() if old.search(line)
            and line not in top_level] == []
    below = text.split("## The test command", 1)[1]
    named = set(re.findall(r"`(\w+\.py)`", below))
    assert named and named <= modules, sorted(named - modules)


def test_the_readme_is_short_and_maps_each_experiment_of_the_paper_to_a_command_and_cost():
    """README.md: at most 8,000 characters, for a five-minute read; its "Reproduce the paper"
    table gives each experiment one command, its cost on a CPU and what this package got."""
    text = read("README.md")
    assert len(text) <= 8000, len(text)
    section = text.split("## Reproduce the paper", 1)[1].split("\n## ", 1)[0]
    rows = [line.split(" | ") for line in section.splitlines()
            if line.startswith("| ") and not line.startswith(("| the paper", "|---"))]
    assert len(rows) >= 4
    for row in rows:
        assert len(row) == 6, row
        assert re.search(r"`(\./sweep\.py|\./run\.py|python3) ", row[1]), row
        assert row[2].strip() and row[5].strip(" |"), row


def test_the_folder_name_template_is_what_the_settings_make():
    """docs/results.md's template of a results folder's name, with every optional part of a
    run set (GAIT's options, and DTP's), is what run_folder names the run's folder."""
    from gaitprop.runs import run_folder
    from gaitprop.runs.settings import build_parser
    template = re.search(r"`(results/\{dataset\}[^`]*)`", read(os.path.join("docs", "results.md")))
    assert template, "docs/results.md gives no template"
    for flags in (["--algorithm=GAIT", "--gamma=0.01"],
                  ["--algorithm=DTP", "--target_step=0.5", "--inv_steps=3",
                   "--inv_loss=reconstruction", "--inv_noise=0.2"]):
        args = build_parser().parse_args(flags + [
            "--linear", "--orthogonal_init", "--orthogonal_reg=0.5", "--learn_inv",
            "--no_inv_init", "--seed=3", "--learning_rate=0.002", "--inv_learning_rate=0.007",
            "--validation=10000", "--nb_layers=2", "--dataset=FMNIST"])
        values = vars(args)

        def part(match):
            names = re.findall(r"\{(\w+)\}", match[1])
            words = {"Linear_": "linear", "OrthoInit_": "orthogonal_init",
                     "LearnInv_": "learn_inv", "NoInvInit_": "no_inv_init"}
            shown = all(values[name] is not None for name in names) if names else \
                values[words[match[1]]]
            return match[1] if shown else ""
        filled = re.sub(r"\[([^\]]*)\]", part, template[1])
        filled = re.sub(r"\{(\w+)\}", lambda match: str(values[match[1]]), filled)
        assert filled == f"results/{run_folder.folder_name(args)}/", flags
