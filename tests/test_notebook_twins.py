"""Every stored notebook has a readable text twin (jupytext percent script) with the same cells.

Reviewers read the .py; nbval runs the .ipynb. If they drift apart, a review would approve
something other than what runs. Fix: edit the .py and run `python scripts/build_notebooks.py NN`.
"""
from pathlib import Path

import jupytext
import nbformat
import pytest

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted((ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb"))


def _cells(nb):
    return [(c.cell_type, c.source.strip()) for c in nb.cells]


@pytest.mark.parametrize("ipynb", NOTEBOOKS, ids=lambda p: p.name)
def test_notebook_matches_its_text_twin(ipynb):
    twin = ipynb.with_suffix(".py")
    assert twin.exists(), f"{ipynb.name} has no text twin {twin.name}: author notebooks as percent scripts"
    stored = _cells(nbformat.read(ipynb, as_version=4))
    text = _cells(jupytext.read(twin))
    assert len(stored) == len(text), (
        f"{ipynb.name} has {len(stored)} cells but {twin.name} has {len(text)}: "
        f"rebuild with `python scripts/build_notebooks.py {ipynb.name[:2]}`")
    for i, (a, b) in enumerate(zip(stored, text)):
        assert a == b, (f"cell {i} of {ipynb.name} differs from {twin.name}: rebuild with "
                        f"`python scripts/build_notebooks.py {ipynb.name[:2]}`\n--- ipynb ---\n{a[1][:300]}\n--- py ---\n{b[1][:300]}")


@pytest.mark.parametrize("ipynb", NOTEBOOKS, ids=lambda p: p.name)
def test_notebook_is_stored_with_outputs_and_no_errors(ipynb):
    nb = nbformat.read(ipynb, as_version=4)
    code = [c for c in nb.cells if c.cell_type == "code" and c.source.strip()]
    unrun = [i for i, c in enumerate(code) if c.execution_count is None]
    assert not unrun, f"{ipynb.name}: code cells {unrun} were stored without running; nbval compares stored outputs"
    errors = [i for i, c in enumerate(code) for o in c.outputs if o.output_type == "error"]
    assert not errors, f"{ipynb.name}: stored outputs of code cells {errors} are errors"

