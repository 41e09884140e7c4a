"""Authoring and release: the sources match their text twins, the release is up to date,
repeatable, free of solutions and outputs, and the markers are nbgrader's.

Fix a failure by editing exercises/source/NN_topic.py, then:
    python -m tinymoe.grading build && python -m tinymoe.grading release
"""
import re
import shutil
from pathlib import Path

import jupytext
import nbformat
import pytest

from tinymoe.grading import EXERCISES, exercise
from tinymoe.grading.release import BEGIN, END, MarkerError, build_sources, release, solution_text, strip_solutions

pytestmark = pytest.mark.exercises

ROOT = Path(__file__).resolve().parents[1]
SOURCE, RELEASE = ROOT / "exercises" / "source", ROOT / "exercises" / "release"
FIX = "run `python -m tinymoe.grading build && python -m tinymoe.grading release`"


def _cells(nb):
    return [(c.cell_type, c.source.strip()) for c in nb.cells]


def _solution_lines(name: str) -> set[str]:
    """Every non-trivial line between the solution markers of a source notebook."""
    lines, inside = set(), False
    for cell in nbformat.read(SOURCE / f"{name}.ipynb", as_version=4).cells:
        for line in cell.source.split("\n"):
            text = line.strip()
            if text == BEGIN:
                inside = True
            elif text == END:
                inside = False
            elif inside and len(text) > 8:
                lines.add(text)
    return lines


@pytest.mark.parametrize("name", list(EXERCISES))
def test_every_exercise_has_a_source_twin_and_a_release(name):
    for path in (SOURCE / f"{name}.py", SOURCE / f"{name}.ipynb", RELEASE / f"{name}.ipynb"):
        assert path.exists(), f"{path.relative_to(ROOT)} is missing: {FIX}"


@pytest.mark.parametrize("name", list(EXERCISES))
def test_source_notebook_matches_its_text_twin(name):
    stored = _cells(nbformat.read(SOURCE / f"{name}.ipynb", as_version=4))
    text = _cells(jupytext.read(SOURCE / f"{name}.py"))
    assert stored == text, f"exercises/source/{name}.ipynb differs from its .py twin: {FIX}"


def test_build_and_release_are_up_to_date_and_byte_for_byte_repeatable(tmp_path):
    source = tmp_path / "source"
    source.mkdir()
    for py in SOURCE.glob("[0-9][0-9]_*.py"):
        shutil.copy(py, source / py.name)
    built = build_sources(source)
    for path in built:
        assert path.read_bytes() == (SOURCE / path.name).read_bytes(), f"exercises/source/{path.name} is stale: {FIX}"
    first = {p.name: p.read_bytes() for p in release(source, tmp_path / "release")}
    second = {p.name: p.read_bytes() for p in release(source, tmp_path / "release")}
    assert first == second, "releasing twice gave different bytes"
    for name, data in first.items():
        assert data == (RELEASE / name).read_bytes(), f"exercises/release/{name} is stale: {FIX}"


@pytest.mark.parametrize("name", list(EXERCISES))
def test_released_notebook_contains_no_solution_text(name):
    text = (RELEASE / f"{name}.ipynb").read_text(encoding="utf-8")
    assert "BEGIN SOLUTION" not in text and "END SOLUTION" not in text
    leaked = [line for line in _solution_lines(name) if line in text]
    assert not leaked, f"exercises/release/{name}.ipynb still contains solution lines: {leaked}"


@pytest.mark.parametrize("name", list(EXERCISES))
def test_released_notebook_has_no_outputs_and_a_stub_per_question(name):
    nb = nbformat.read(RELEASE / f"{name}.ipynb", as_version=4)
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert all(not c.outputs and c.execution_count is None for c in code), f"{name}: released with outputs"
    for q in exercise(name).questions:
        cell = next((c for c in code if f"def {q.name}(" in c.source), None)
        assert cell is not None, f"{name}: no cell defines {q.name}"
        assert "# YOUR CODE HERE" in cell.source and 'raise NotImplementedError("see notebooks/' in cell.source, \
            f"{name}: the stub of {q.name} should raise NotImplementedError pointing at its notebook section"
        assert any(f"ex.{q.name}.check({q.name})" in c.source for c in code), f"{name}: no check cell for {q.name}"
    assert nb.metadata["tinymoe"]["exercise"] == name


@pytest.mark.parametrize("name", list(EXERCISES))
def test_sources_carry_nbgrader_cell_metadata(name):
    nb = nbformat.read(SOURCE / f"{name}.ipynb", as_version=4)
    solutions = [c.metadata["nbgrader"] for c in nb.cells if c.metadata.get("nbgrader", {}).get("solution")]
    graded = [c.metadata["nbgrader"] for c in nb.cells if c.metadata.get("nbgrader", {}).get("grade")]
    names = exercise(name).names
    assert sorted(m["grade_id"] for m in solutions) == sorted(names), \
        f"{name}: every function cell should be an nbgrader solution cell with grade_id = its name"
    assert sorted(m["grade_id"] for m in graded) == sorted(f"check_{n}" for n in names)
    assert all(m["points"] == 1 and m["locked"] for m in graded)
    ids = [m["grade_id"] for m in solutions + graded]
    assert len(ids) == len(set(ids)), f"{name}: nbgrader grade_ids must be unique"


def test_strip_and_solution_views_of_a_cell():
    cell = ("def f(x):\n    \"\"\"doc\"\"\"\n    ### BEGIN SOLUTION\n    y = x + 1\n    return y\n"
            "    ### END SOLUTION\n    raise NotImplementedError(\"see notebooks/x\")")
    assert strip_solutions(cell) == ("def f(x):\n    \"\"\"doc\"\"\"\n    # YOUR CODE HERE\n"
                                     "    raise NotImplementedError(\"see notebooks/x\")")
    assert solution_text(cell) == "def f(x):\n    \"\"\"doc\"\"\"\n    y = x + 1\n    return y"


@pytest.mark.parametrize("cell, complaint", [
    ("### BEGIN SOLUTION\nx = 1", "line 1: ### BEGIN SOLUTION is never closed"),
    ("x = 1\n### END SOLUTION", "line 2: ### END SOLUTION without"),
    ("### BEGIN SOLUTION\n### BEGIN SOLUTION\n### END SOLUTION", "line 2: ### BEGIN SOLUTION inside another"),
    ("x = 1  ### END SOLUTION", "write the marker alone on its line"),
])
def test_unpaired_markers_are_refused_with_the_line(cell, complaint):
    with pytest.raises(MarkerError, match=complaint.replace("(", r"\(")):
        strip_solutions(cell, "demo")


def _pointers(name: str) -> list[tuple[str, list[str]]]:
    """(notebook, [section headings]) named by each stub of a released notebook."""
    found = []
    for cell in nbformat.read(RELEASE / f"{name}.ipynb", as_version=4).cells:
        for notebook, sections in re.findall(r'NotImplementedError\("see (notebooks/\S+\.ipynb), sections?: ([^"]+)"\)',
                                             cell.source):
            found.append((notebook, [s.strip() for s in sections.split(";")]))
    return found


@pytest.mark.parametrize("name", list(EXERCISES))
def test_each_stub_points_at_a_section_of_a_course_notebook(name):
    pointers = _pointers(name)
    assert len(pointers) == len(exercise(name).questions), f"{name}: every stub should say which notebook section to read"
    for notebook, sections in pointers:
        path = ROOT / notebook
        if not path.exists():
            pytest.skip(f"{notebook} (named by exercise {name}'s stubs) is not written yet")
        headings = {re.sub(r"^#\s*#+\s*", "", line).strip()
                    for line in path.with_suffix(".py").read_text(encoding="utf-8").splitlines() if line.startswith("# #")}
        for section in sections:
            assert any(h.startswith(section) for h in headings), \
                f"{name}: a stub points at section {section!r} of {notebook}, which has no such heading"
