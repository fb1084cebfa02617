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
