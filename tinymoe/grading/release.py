"""Author once, release the student version: solutions out, outputs cleared, byte-for-byte repeatable.

An exercise is authored as a jupytext percent script `exercises/source/NN_topic.py` (reviewed as
text) and built into `exercises/source/NN_topic.ipynb`. Inside a function the solution sits
between nbgrader's markers, followed by the stub line learners keep:

    def safe_softmax(x):
        \"\"\"...\"\"\"
        ### BEGIN SOLUTION
        row_max = x.amax(dim=-1, keepdim=True)
        ...
        ### END SOLUTION
        raise NotImplementedError("see notebooks/01_attention_by_hand.ipynb, section ...")

(in the source the stub line is never reached: the solution returns first). Releasing replaces
each marked block with `# YOUR CODE HERE`, so the learner's function raises the stub's
NotImplementedError and its check reads "not attempted". The same markers and the nbgrader
cell metadata `build` adds make the sources importable into nbgrader unchanged.

    python -m tinymoe.grading build     # exercises/source/*.py -> *.ipynb (nbgrader metadata added)
    python -m tinymoe.grading release   # exercises/source/*.ipynb -> exercises/release/*.ipynb
"""
from __future__ import annotations

import re
from pathlib import Path

__all__ = ["BEGIN", "END", "STUB", "MarkerError", "strip_solutions", "solution_text", "has_solution",
           "release_notebook", "release", "build_sources", "ROOT"]

BEGIN, END, STUB = "### BEGIN SOLUTION", "### END SOLUTION", "# YOUR CODE HERE"
ROOT = Path(__file__).resolve().parents[2]
_CHECK_CALL = re.compile(r"^ex\.(\w+)\.check\(", re.MULTILINE)


class MarkerError(ValueError):
    """Solution markers that do not pair up: where, and what to fix."""


def has_solution(source: str) -> bool:
    return BEGIN in source


def _blocks(source: str, where: str = "a cell"):
    """Yield (begin line index, end line index) of each marked solution block."""
    lines = source.split("\n")
    begin = None
    for i, line in enumerate(lines):
        text = line.strip()
        if text == BEGIN:
            if begin is not None:
                raise MarkerError(f"{where}, line {i + 1}: {BEGIN} inside another solution block; close the first with {END}")
            begin = i
        elif text == END:
            if begin is None:
                raise MarkerError(f"{where}, line {i + 1}: {END} without a {BEGIN} before it")
            yield begin, i
            begin = None
        elif "BEGIN SOLUTION" in text or "END SOLUTION" in text:
            raise MarkerError(f"{where}, line {i + 1}: write the marker alone on its line as {BEGIN!r} or {END!r}")
    if begin is not None:
        raise MarkerError(f"{where}, line {begin + 1}: {BEGIN} is never closed with {END}")


def strip_solutions(source: str, where: str = "a cell") -> str:
    """The student version of a cell: each marked block becomes `# YOUR CODE HERE`."""
    lines = source.split("\n")
    out, last = [], 0
    for begin, end in _blocks(source, where):
        indent = lines[begin][: len(lines[begin]) - len(lines[begin].lstrip())]
        out += lines[last:begin] + [indent + STUB]
        last = end + 1
    return "\n".join(out + lines[last:])


def solution_text(source: str, where: str = "a cell") -> str:
    """The solution version of a cell: markers gone, and the unreachable stub line after each block."""
    lines = source.split("\n")
    drop = set()
    for begin, end in _blocks(source, where):
        drop |= {begin, end}
        if end + 1 < len(lines) and lines[end + 1].strip().startswith("raise NotImplementedError"):
            drop.add(end + 1)
    return "\n".join(line for i, line in enumerate(lines) if i not in drop)


def _exercise_name(path: Path) -> str:
    return path.stem


def release_notebook(nb, name: str):
    """A new notebook: solutions stripped, outputs and execution counts cleared, metadata trimmed."""
    import nbformat

    cells = []
    for i, cell in enumerate(nb.cells):
        source = cell.source
        where = f"{name}, cell {i}"
        if cell.cell_type == "code":
            source = strip_solutions(source, where)
            new = nbformat.v4.new_code_cell(source)
        elif cell.cell_type == "markdown":
            new = nbformat.v4.new_markdown_cell(strip_solutions(source, where))
        else:
            new = nbformat.v4.new_raw_cell(source)
        new.id = cell.get("id") or f"cell-{i}"
        kept = {k: v for k, v in cell.metadata.items() if k in ("nbgrader", "tags", "deletable", "editable")}
        new.metadata = nbformat.from_dict(kept)
        if BEGIN in new.source or END in new.source:
            raise MarkerError(f"{where}: solution markers left after release")
        cells.append(new)
    out = nbformat.v4.new_notebook(cells=cells)
    out.metadata = nbformat.from_dict({
        "kernelspec": {"display_name": "Python 3", "language": "python", "name": "python3"},
        "language_info": {"name": "python"},
        "tinymoe": {"exercise": name, "released": True},
    })
    return out


def release(source_dir: Path | str = ROOT / "exercises" / "source",
            release_dir: Path | str = ROOT / "exercises" / "release", names=()) -> list[Path]:
    """Write the student version of every source notebook (or those whose name starts with one of
    `names`). Idempotent: the same sources give byte-identical files."""
    import nbformat

    source_dir, release_dir = Path(source_dir), Path(release_dir)
    sources = _select(sorted(source_dir.glob("[0-9][0-9]_*.ipynb")), names)
    if not sources:
        raise FileNotFoundError(f"no source notebooks NN_topic.ipynb in {source_dir}"
                                + (f" matching {', '.join(names)}" if names else ""))
    release_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for path in sources:
        nb = nbformat.read(path, as_version=4)
        student = release_notebook(nb, _exercise_name(path))
        nbformat.validate(student)
        target = release_dir / path.name
        _write_if_changed(target, nbformat.writes(student) + "\n")
        written.append(target)
    return written


def build_sources(source_dir: Path | str = ROOT / "exercises" / "source", names=()) -> list[Path]:
    """Convert each percent script NN_topic.py to NN_topic.ipynb (no outputs), with nbgrader cell
    metadata: a cell with solution markers is a solution cell, a `ex.NAME.check(NAME)` cell an
    autograded test cell worth 1 point. Cell ids are fixed, so rebuilding changes nothing."""
    import jupytext
    import nbformat

    source_dir = Path(source_dir)
    scripts = _select(sorted(source_dir.glob("[0-9][0-9]_*.py")), names)
    written = []
    for path in scripts:
        nb = jupytext.read(path)
        for i, cell in enumerate(nb.cells):
            cell.id = f"cell-{i}"
            cell.metadata.pop("nbgrader", None)
            if cell.cell_type != "code":
                continue
            cell.outputs, cell.execution_count = [], None
            check = _CHECK_CALL.search(cell.source)
            definition = re.search(r"^def (\w+)\(", cell.source, re.MULTILINE)
            if has_solution(cell.source):
                list(_blocks(cell.source, f"{path.name}, cell {i}"))          # fail early on bad markers
                grade_id = definition.group(1) if definition else f"solution-{i}"
                cell.metadata["nbgrader"] = {"grade": False, "grade_id": grade_id, "locked": False,
                                             "schema_version": 3, "solution": True, "task": False}
            elif check:
                cell.metadata["nbgrader"] = {"grade": True, "grade_id": f"check_{check.group(1)}", "locked": True,
                                             "points": 1, "schema_version": 3, "solution": False, "task": False}
        nb.metadata = nbformat.from_dict({
            "kernelspec": {"display_name": "Python 3", "language": "python", "name": "python3"},
            "language_info": {"name": "python"},
            "jupytext": {"formats": "ipynb,py:percent"},
            "tinymoe": {"exercise": _exercise_name(path), "released": False},
        })
        nb.nbformat, nb.nbformat_minor = 4, 5
        nbformat.validate(nb)
        target = path.with_suffix(".ipynb")
        _write_if_changed(target, nbformat.writes(nb) + "\n")
        written.append(target)
    return written


def _select(paths: list[Path], names) -> list[Path]:
    names = [str(n) for n in names or ()]
    return [p for p in paths if not names or any(p.name.startswith(n) for n in names)]


def _write_if_changed(path: Path, text: str) -> None:
    if not path.exists() or path.read_text(encoding="utf-8") != text:
        path.write_text(text, encoding="utf-8")
