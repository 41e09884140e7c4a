"""Build the course notebooks from their text twins, with outputs, ready for nbval.

Each notebook is authored as a jupytext percent script (`notebooks/NN_topic.py`, readable in a
code review) and stored as `notebooks/NN_topic.ipynb` WITH its outputs, which nbval re-runs and
compares. This script reads the .py, executes it in a fresh kernel from the notebook's folder,
and writes the .ipynb; it prints each notebook's run time.

    python scripts/build_notebooks.py                 # every notebooks/*.py
    python scripts/build_notebooks.py 01 02           # the ones whose name starts with 01 or 02
    python scripts/build_notebooks.py --dir exercises --no-execute   # convert only
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import jupytext
import nbformat
from nbclient import NotebookClient

ROOT = Path(__file__).resolve().parents[1]


def build(py_path: Path, execute: bool = True, timeout: int = 300) -> float:
    nb = jupytext.read(py_path)
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nb.metadata.setdefault("jupytext", {})["formats"] = "ipynb,py:percent"
    start = time.perf_counter()
    if execute:
        os.environ.setdefault("TRITON_INTERPRET", "1")     # the Triton cells run on the CPU here
        # Widget state is not stored: a plotly FigureWidget would save the whole plotly.js bundle
        # (~5 MB) into the notebook; the widgets come alive when the reader runs the cells.
        NotebookClient(nb, timeout=timeout, kernel_name="python3", store_widget_state=False,
                       resources={"metadata": {"path": str(py_path.parent)}}).execute()
    nb.metadata.pop("widgets", None)
    elapsed = time.perf_counter() - start
    nbformat.write(nb, py_path.with_suffix(".ipynb"))
    return elapsed


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("prefixes", nargs="*", help="only notebooks whose file name starts with one of these")
    parser.add_argument("--dir", default="notebooks", help="folder of percent scripts (default: notebooks)")
    parser.add_argument("--no-execute", action="store_true", help="convert without running")
    args = parser.parse_args()
    folder = ROOT / args.dir
    scripts = sorted(p for p in folder.glob("[0-9][0-9]_*.py")
                     if not args.prefixes or any(p.name.startswith(x) for x in args.prefixes))
    if not scripts:
        print(f"no notebooks matched in {folder}", file=sys.stderr)
        return 1
    for path in scripts:
        seconds = build(path, execute=not args.no_execute)
        print(f"{path.relative_to(ROOT)}: {seconds:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
