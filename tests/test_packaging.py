"""The project's metadata agrees with itself: pyproject.toml, requirements.txt, CITATION.cff."""
import os
import re
import tomllib

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
