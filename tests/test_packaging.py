"""The set-up stays consistent: environment.yml lists the same packages as pyproject.toml, make pins
the tested torch, the two make targets exist, CI calls `make test`, and every pytest marker is declared."""
from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml  # PyYAML: a dependency of jupyterlab (via jupyter_events), so always present with [lab]
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

try:
    import tomllib                               # Python >= 3.11
except ModuleNotFoundError:                      # Python 3.10
    import tomli as tomllib

ROOT = Path(__file__).resolve().parent.parent
MARKERS = ("oracle", "nbval", "triton", "browser", "exercises", "slow")


def _pyproject() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())


def _normal(requirement: str) -> str:
    """One canonical spelling of a requirement: name, sorted specifiers, marker."""
    req = Requirement(requirement)
    text = canonicalize_name(req.name)
    if req.extras:
        text += "[" + ",".join(sorted(req.extras)) + "]"
    text += ",".join(sorted(str(s) for s in req.specifier))
    if req.marker:
        text += f"; {req.marker}"
    return text


def _environment_pip_list() -> list[str]:
    env = yaml.safe_load((ROOT / "environment.yml").read_text())
    pip_sections = [d["pip"] for d in env["dependencies"] if isinstance(d, dict) and "pip" in d]
    assert len(pip_sections) == 1, f"environment.yml should have exactly one pip: section, found {len(pip_sections)}"
    return pip_sections[0]


def test_environment_yml_lists_the_same_packages_as_pyproject():
    project = _pyproject()["project"]
    declared = list(project["dependencies"])
    for extra, requirements in project["optional-dependencies"].items():
        declared += requirements
    pip_list = [line for line in _environment_pip_list() if not line.startswith("-")]   # "-e ." is the package
    ours = {_normal(r) for r in declared}
    theirs = {_normal(r) for r in pip_list}
    only_pyproject, only_env = sorted(ours - theirs), sorted(theirs - ours)
    assert not only_pyproject and not only_env, (
        "environment.yml and pyproject.toml (dependencies + every extra) have drifted apart:\n"
        f"  only in pyproject.toml:  {only_pyproject}\n"
        f"  only in environment.yml: {only_env}\n"
        "add or change the lines so both list the same requirements")
    assert len(pip_list) == len(theirs), f"environment.yml lists a package twice: {sorted(pip_list)}"


def test_environment_yml_installs_the_package_itself_and_the_same_python():
    pip_list = _environment_pip_list()
    assert "-e ." in pip_list, f"environment.yml should install the project (`-e .`) under pip:; it has {pip_list}"
    env = yaml.safe_load((ROOT / "environment.yml").read_text())
    pythons = [d for d in env["dependencies"] if isinstance(d, str) and re.match(r"python\b", d)]
    requires = _pyproject()["project"]["requires-python"]
    assert pythons == [f"python{requires}"], f"environment.yml asks for {pythons}, pyproject for python{requires}"


def test_constraints_pin_torch_inside_the_package_range():
    lines = [line.split("#")[0].strip() for line in (ROOT / "constraints.txt").read_text().splitlines()]
    pins = {canonicalize_name(Requirement(line).name): Requirement(line) for line in lines if line}
    assert "torch" in pins, f"constraints.txt must pin torch; it constrains {sorted(pins)}"
    specs = list(pins["torch"].specifier)
    assert len(specs) == 1 and specs[0].operator == "==", f"torch must be pinned with ==, got {pins['torch']}"
    pinned = Version(specs[0].version)
    torch_range = next(Requirement(r) for r in _pyproject()["project"]["dependencies"]
                       if canonicalize_name(Requirement(r).name) == "torch")
    assert torch_range.specifier.contains(pinned), f"the pin torch=={pinned} is outside pyproject's {torch_range}"
    assert "triton" not in pins, "do not pin triton: CUDA builds of torch pin their own"


def test_makefile_has_lab_and_test_targets():
    makefile = (ROOT / "Makefile").read_text()
    targets = set(re.findall(r"^([A-Za-z_][\w-]*)\s*:(?!=)", makefile, flags=re.M))
    assert {"lab", "test"} <= targets, f"the Makefile must define `lab` and `test`; it defines {sorted(targets)}"
    test_recipe = re.search(r"^test\s*:.*\n((?:\t.*\n?)+)", makefile, flags=re.M)
    assert test_recipe and "pytest" in test_recipe.group(1), "`make test` should run pytest"
    lab_recipe = re.search(r"^lab\s*:.*\n((?:\t.*\n?)+)", makefile, flags=re.M)
    assert lab_recipe and "jupyter lab" in lab_recipe.group(1), "`make lab` should open JupyterLab"
    assert re.search(r"constraints\.txt", makefile), "make should install with the constraints file (-c constraints.txt)"


def test_ci_runs_make_test():
    script = ROOT / ".ci" / "run"
    assert script.exists(), ".ci/run is missing"
    commands = [line.strip() for line in script.read_text().splitlines()
                if line.strip() and not line.strip().startswith("#")]
    assert any(re.search(r"(^|[;&|]\s*)make test\b", c) for c in commands), \
        f".ci/run should call `make test`; its commands are: {commands}"
    assert script.stat().st_mode & 0o111, ".ci/run must be executable"


def test_pytest_markers_are_declared_and_strict():
    options = _pyproject()["tool"]["pytest"]["ini_options"]
    declared = {m.split(":")[0].strip() for m in options["markers"]}
    missing = sorted(set(MARKERS) - declared)
    assert not missing, f"pytest markers not declared in pyproject.toml: {missing}"
    assert "--strict-markers" in options["addopts"], "a misspelt marker must be an error (--strict-markers)"


def test_markers_are_registered_with_pytest(pytestconfig):
    registered = {line.split(":")[0].split("(")[0].strip() for line in pytestconfig.getini("markers")}
    missing = sorted(set(MARKERS) - registered)
    assert not missing, f"pytest does not know the markers {missing}"


@pytest.mark.parametrize("extra", ["lab", "test"])
def test_extras_exist(extra):
    assert extra in _pyproject()["project"]["optional-dependencies"], f"pyproject.toml has no [{extra}] extra"


def test_transformers_is_a_test_only_dependency():
    project = _pyproject()["project"]
    core = {canonicalize_name(Requirement(r).name) for r in project["dependencies"]}
    test = {canonicalize_name(Requirement(r).name) for r in project["optional-dependencies"]["test"]}
    assert "transformers" not in core and "transformers" in test
