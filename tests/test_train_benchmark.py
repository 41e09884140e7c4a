"""The training benchmark still runs (at its quick size) and reports every path with its ratio."""
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_train_benchmark_runs_quick_and_reports_every_path():
    done = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "bench_train.py"), "--quick", "--threads", "1"],
                          capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert done.returncode == 0, f"bench_train.py --quick failed:\n{done.stdout}\n{done.stderr}"
    for path in ("dense_model", "moe_loop", "moe_dense", "moe_grouped"):
        row = next((line for line in done.stdout.splitlines() if line.startswith(path + " ")), None)
        assert row is not None, f"no row for {path}:\n{done.stdout}"
        assert float(row.split()[-1]) > 0, f"{path}: no positive ratio in {row!r}"
