"""Project-wide pytest set-up: give the notebooks run by nbval the `nbval` marker, so
`pytest -m nbval` (or `-m "not nbval"`) selects them like every other part."""
import pytest


def pytest_collection_modifyitems(config, items):
    for item in items:
        if str(getattr(item, "fspath", "")).endswith(".ipynb"):
            item.add_marker(pytest.mark.nbval)
            item.add_marker(pytest.mark.slow)
