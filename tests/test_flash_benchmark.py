"""The flash memory benchmark still runs (at its quick size) and its two paths agree, so it cannot rot."""
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_flash_benchmark_runs_quick_and_its_paths_agree():
    done = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "bench_flash.py"), "--quick"],
                          capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert done.returncode == 0, f"bench_flash.py --quick failed:\n{done.stdout}\n{done.stderr}"
    rows = [line.split() for line in done.stdout.splitlines() if line.strip()[:1].isdigit()]
    assert [r[0] for r in rows] == ["256"], f"expected one row, for the quick size 256:\n{done.stdout}"
    agree = next(line for line in done.stdout.splitlines() if "agree to" in line)
    err = float(agree.split("agree to ")[1].split()[0])
    assert err < 1e-5, f"naive and flash attention disagree by {err:.1e} in the benchmark"
