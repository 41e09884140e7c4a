"""The generation benchmark still runs (at its quick size) and its two paths give the same tokens."""
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_generate_benchmark_runs_quick_and_both_paths_agree():
    done = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "bench_generate.py"), "--quick", "--repeats", "1"],
                          capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert done.returncode == 0, f"bench_generate.py --quick failed:\n{done.stdout}\n{done.stderr}"
    rows = [line for line in done.stdout.splitlines() if line.startswith(("small ", "medium "))]
    assert len(rows) == 2, f"expected a row per size:\n{done.stdout}"
    assert all(line.rstrip().endswith("True") for line in rows), f"cached and uncached tokens differ:\n{done.stdout}"
