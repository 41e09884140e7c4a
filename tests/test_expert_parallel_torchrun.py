"""The torchrun path: `torchrun -m tinymoe.distributed.demo` joins through torchrun's own store
(init_group reads RANK, WORLD_SIZE, MASTER_ADDR, MASTER_PORT) and each rank equals one process."""
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_torchrun_runs_the_demo_on_two_gloo_processes_and_each_rank_equals_one_process():
    torchrun = shutil.which("torchrun", path=str(Path(sys.executable).parent)) or shutil.which("torchrun")
    if torchrun is None:
        pytest.skip("torchrun is not installed next to this Python")
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]))
    done = subprocess.run([torchrun, "--standalone", "--nproc-per-node=2", "-m", "tinymoe.distributed.demo",
                           "--tokens", "16", "--timeout", "60"], capture_output=True, text=True, timeout=180,
                          cwd=ROOT, env=env)
    assert done.returncode == 0, f"torchrun failed:\n{done.stdout}\n{done.stderr[-3000:]}"
    ranks = dict(re.findall(r"rank (\d)/2 \(gloo\):.*?\|out - one process\| <= ([-+.e0-9]+)", done.stdout))
    assert sorted(ranks) == ["0", "1"], f"expected a report from each of 2 ranks:\n{done.stdout}"
    for rank, diff in ranks.items():
        assert float(diff) < 1e-5, f"rank {rank} differs from the one-process layer by {diff}"
