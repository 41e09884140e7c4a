"""The widget benchmark still runs and measures what it says (not a timed test: no figure is judged)."""
from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

pytest.importorskip("ipywidgets")
pytest.importorskip("plotly")

BENCH = Path(__file__).resolve().parent.parent / "benchmarks" / "bench_widgets.py"


def load_benchmark():
    spec = importlib.util.spec_from_file_location("bench_widgets", BENCH)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_benchmark_times_every_case_against_its_baseline_and_restores_the_comm():
    import comm
    bench = load_benchmark()
    original = comm.create_comm
    results = bench.run(rounds=1)
    assert comm.create_comm is original, "the benchmark must put back the comm it replaced"
    assert set(results) == set(bench.CASES), f"cases measured: {sorted(results)}"
    for name, row in results.items():
        assert row["update"]["median"] > 0 and row["update"]["cpu_median"] >= 0, f"{name}: no update time"
        assert row["bytes_per_update"] > 0, f"{name}: the widgets sent nothing, so the picture did not update"
        if bench.CASES[name][4] is not None:
            assert row["bare_forward"]["median"] > 0 and row["ratio_to_traced"] > 0, f"{name}: no baseline"
    assert {row["size"] for row in results.values()} == {"default", "medium"}
