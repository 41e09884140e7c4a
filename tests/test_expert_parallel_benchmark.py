"""The expert-parallel benchmark still runs (quick size, two processes), so it cannot rot."""
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_expert_parallel_benchmark_runs_quick_and_its_bytes_match_the_counts():
    done = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "bench_expert_parallel.py"), "--quick",
                           "--repeats", "1", "--world-sizes", "2"], capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert done.returncode == 0, f"bench_expert_parallel.py --quick failed:\n{done.stdout}\n{done.stderr}"
    rows = {line.split()[0]: line for line in done.stdout.splitlines() if line.startswith(("one process", "2 processes"))}
    assert set(rows) == {"one", "2"}, f"missing timing rows:\n{done.stdout}"
    assert "measured bytes equal the counted bytes: True" in done.stdout, done.stdout
