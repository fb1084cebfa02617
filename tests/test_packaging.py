"""The project's metadata agrees with itself (pyproject.toml, requirements.txt, CITATION.cff),
and the package installs, imports from any folder and has no import cycle."""
import os
import re
import shutil
import subprocess
import sys
import tomllib
import zipfile

import grimp

from sweep_helpers import REPO


def read(name):
    """The text of a file at the top of the repository."""
    with open(os.path.join(REPO, name), encoding="utf-8") as file:
        return file.read()


def test_pyproject_dependencies_are_the_pins_of_requirements_txt():
    project = tomllib.loads(read("pyproject.toml"))["project"]
    pins = [line.strip() for line in read("requirements.txt").splitlines()
            if line.strip() and not line.startswith("#")]
    assert project["dependencies"] == pins


def test_citation_names_the_version_and_license_of_pyproject():
    project = tomllib.loads(read("pyproject.toml"))["project"]
    citation = read("CITATION.cff")
    assert re.search(r"^version: (.+)$", citation, re.MULTILINE)[1] == project["version"]
    assert re.search(r"^license: (.+)$", citation, re.MULTILINE)[1] == project["license"]
    assert "arXiv:2006.06438" in citation and "preferred-citation:" in citation


def test_every_file_the_project_files_name_exists():
    """pyproject.toml's comments named docs/testing.md, which no longer exists."""
    for name in ("pyproject.toml", "requirements-test.txt", "conda_requirements.txt"):
        for path in re.findall(r"(?<![\w/.])((?:docs|tests|gaitprop)/[\w./-]*\w)", read(name)):
            assert os.path.exists(os.path.join(REPO, path)), (name, path)


# ----------------------------------------------------------------------------- the package

PACKAGE = os.path.join(REPO, "gaitprop")
TOP_LEVEL = ("run.py", "pack.py", "sweep.py", "summarize.py", "benchmark.py", "inv_layer.py",
             "inv_net.py", "utils.py")


def package_modules():
    """Every module file of the package in the checkout, relative to the repository."""
    return sorted(os.path.relpath(os.path.join(folder, name), REPO)
                  for folder, _, names in os.walk(PACKAGE) for name in names
                  if name.endswith(".py"))


def test_the_top_level_holds_the_published_scripts_and_modules_only():
    modules = sorted(name for name in os.listdir(REPO) if name.endswith(".py"))
    assert modules == sorted(TOP_LEVEL)


def test_the_distribution_holds_every_module_of_the_package(tmp_path):
    """The wheel `pip install .` installs has every module of gaitprop/ (a module left out of
    the distribution fails here), and nothing at the top level."""
    source = tmp_path / "source"  # a copy: building writes build/ and egg-info beside it
    shutil.copytree(PACKAGE, source / "gaitprop",
                    ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("pyproject.toml", "README.md", "LICENSE"):
        shutil.copy(os.path.join(REPO, name), source)
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation",
                    "-q", "-w", str(tmp_path), str(source)], check=True, capture_output=True,
                   timeout=600)
    wheel, = tmp_path.glob("gaitprop-*.whl")
    with zipfile.ZipFile(wheel) as archive:
        shipped = sorted(name for name in archive.namelist() if name.endswith(".py"))
    assert shipped == package_modules()
    with zipfile.ZipFile(wheel) as archive:
        entry_points = next(archive.read(name).decode() for name in archive.namelist()
                            if name.endswith("entry_points.txt"))
    for command in ("run", "pack", "sweep", "summarize", "benchmark"):
        assert f"gaitprop-{command} = gaitprop.cli.entry:{command}" in entry_points


def test_the_installed_package_imports_and_runs_from_any_folder(tmp_path):
    """Installed as README says, `import gaitprop` and the console scripts work in a folder
    that has modules of its own named like the checkout's (data.py, utils.py)."""
    (tmp_path / "data.py").write_text("raise ImportError('a notebook folder of its own')\n")
    (tmp_path / "utils.py").write_text("raise ImportError('a notebook folder of its own')\n")
    code = ("import gaitprop.cli.run, gaitprop.cli.sweep, gaitprop.experiments.summary_data\n"
            "from gaitprop.model.net import SquareInvNet\n"
            "print(SquareInvNet(4, 1, start_seed=1).layers[0].weight_matrix.shape)\n")
    done = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "(4, 4)"
    for command in ("run", "pack", "sweep", "summarize", "benchmark"):
        program = shutil.which(f"gaitprop-{command}")
        assert program is not None, f"gaitprop-{command} is not installed"
        done = subprocess.run([program, "--help"], cwd=tmp_path, capture_output=True,
                              text=True, timeout=300)
        assert done.returncode == 0 and "usage:" in done.stdout, done.stderr


def test_no_module_of_the_package_imports_itself_through_others():
    """No import cycle anywhere in the package (lazy imports inside functions included); the
    layers themselves are import-linter's contracts in pyproject.toml (`lint-imports`)."""
    graph = grimp.build_graph("gaitprop")
    cycles = []
    for module in sorted(graph.modules):
        for imported in graph.find_modules_directly_imported_by(module):
            back = graph.find_shortest_chain(importer=imported, imported=module)
            if back is not None:
                cycles.append((module,) + tuple(back))
    assert cycles == []
