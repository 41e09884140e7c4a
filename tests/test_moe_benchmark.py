"""The MoE benchmark still runs (at its quick size), so it cannot rot between releases."""
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_moe_benchmark_runs_quick_and_reports_every_path():
    done = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "bench_moe.py"), "--quick", "--repeats", "1"],
                          capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert done.returncode == 0, f"bench_moe.py --quick failed:\n{done.stdout}\n{done.stderr}"
    for path in ("dense_ffn", "loop", "dense", "grouped"):
        assert f"\n{path} " in done.stdout, f"no timing row for {path}:\n{done.stdout}"
    agree = next(line for line in done.stdout.splitlines() if line.startswith("paths agree to"))
    err = float(agree.split()[3].rstrip(";"))
    assert err < 1e-5, f"the benchmarked paths disagree by {err:.1e}"
