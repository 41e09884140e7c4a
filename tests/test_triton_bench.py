"""The GPU benchmark still runs: `--quick` at its tiny interpreter shape, every backend and stage.

Not a timing test (nothing here is timed against a threshold): it keeps benchmarks/bench_triton.py
from rotting on machines without a GPU. Runs in the interpreter (TRITON_INTERPRET=1, set if unset).
"""
import csv
import importlib.util
import os
from pathlib import Path

os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest  # noqa: E402

pytestmark = pytest.mark.triton
SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "bench_triton.py"


def test_quick_benchmark_writes_every_backend_and_stage(tmp_path, capsys):
    spec = importlib.util.spec_from_file_location("bench_triton", SCRIPT)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    results = bench.main(["--quick", "--out", str(tmp_path)])
    names = {r["name"] for r in results}
    expected = {"loop", "grouped_mm", "dense", "triton", "triton.route", "triton.align", "triton.gate_up",
                "triton.down", "triton.combine"}
    assert expected <= names, f"the benchmark lost rows: missing {sorted(expected - names)}"
    written = list(tmp_path.glob("bench_triton_*.csv"))
    assert written and list(tmp_path.glob("bench_triton_*.png")), f"no CSV/plot in {tmp_path}: {list(tmp_path.iterdir())}"
    with open(written[0]) as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == len(results), f"CSV has {len(rows)} rows, the run produced {len(results)}"
    printed = capsys.readouterr().out
    if "No CUDA GPU" in printed:
        assert "interpreter" in printed, "on a CPU the benchmark must say its times are the interpreter's"
