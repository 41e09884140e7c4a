"""Hints on request, and solutions only where the instructor switches them on.

Hints live with each question (`Question.hints`) and never contain code. Solutions are not in
this package at all: they live only in the instructor's source notebooks
(`exercises/source/NN_topic.ipynb`, between nbgrader's `### BEGIN SOLUTION` / `### END SOLUTION`
markers). `solution()` shows one only when the environment variable TINYMOE_SOLUTIONS is set:

    TINYMOE_SOLUTIONS=1                  the repository's exercises/source folder
    TINYMOE_SOLUTIONS=/path/to/source    a folder of source notebooks kept elsewhere

The released notebooks never set it. In a graded run it does not matter what a notebook sets: its
sandbox (sandbox.py) does not contain the source folder at all. Release the student notebooks
without the source folder and solutions stay with the instructor.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

from .feedback import Note
from .release import solution_text

__all__ = ["solutions_folder", "solution_note", "under_nbgrader", "SOLUTIONS_ENV"]

SOLUTIONS_ENV = "TINYMOE_SOLUTIONS"
REPO_SOURCE = Path(__file__).resolve().parents[2] / "exercises" / "source"


def under_nbgrader() -> bool:
    """True while nbgrader autogrades or validates (it sets NBGRADER_EXECUTION): there a failed
    check must raise, since nbgrader scores a test cell by whether it raises."""
    return os.environ.get("NBGRADER_EXECUTION", "").lower() in ("autograde", "validate")


def solutions_folder() -> Path | None:
    """The folder of source notebooks solutions come from, or None while solutions are off."""
    value = os.environ.get(SOLUTIONS_ENV, "").strip()
    if value.lower() in ("", "0", "no", "off", "false"):
        return None
    if value.lower() in ("1", "yes", "on", "true"):
        return REPO_SOURCE
    return Path(value).expanduser()


def solution_note(exercise: str, name: str) -> Note:
    """The source notebook's solution of function `name`, or a note saying solutions are off."""
    folder = solutions_folder()
    if folder is None:
        return Note(f"No solution for {name} here",
                    "Solutions are switched off for this course. Try hint() first, then ask your instructor.")
    path = folder / f"{exercise}.ipynb"
    if not path.exists():
        return Note(f"No solution for {name} here", f"Solutions are switched on, but {path} does not exist.")
    cells = json.loads(path.read_text(encoding="utf-8"))["cells"]
    for cell in cells:
        source = "".join(cell["source"]) if isinstance(cell["source"], list) else cell["source"]
        if cell["cell_type"] == "code" and f"def {name}(" in source and "### BEGIN SOLUTION" in source:
            return Note(f"Solution: {name}", solution_text(source), code=True)
    return Note(f"No solution for {name} here", f"{path.name} has no solution cell defining {name}.")
