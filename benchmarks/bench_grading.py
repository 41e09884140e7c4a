"""How long grading takes: 15 submissions of exercise 06, in bubblewrap sandboxes and, as the
baseline measured in the same run, without (--unsafe-no-sandbox). Prints seconds and the ratio.

    python benchmarks/bench_grading.py [--n 15] [--jobs 2] [--no-baseline]

The submissions are exercise 06's source notebook (correct), the same with capacity rounded down
(a typical wrong answer) and the released stub (not attempted), in equal parts.
"""
from __future__ import annotations

import argparse
import copy
import tempfile
import time
from pathlib import Path

import nbformat

from tinymoe.grading.grade import grade_folder

ROOT = Path(__file__).resolve().parents[1]


def make_submissions(folder: Path, n: int) -> None:
    source = nbformat.read(ROOT / "exercises" / "source" / "06_moe_gating.ipynb", as_version=4)
    release = nbformat.read(ROOT / "exercises" / "release" / "06_moe_gating.ipynb", as_version=4)
    for i in range(n):
        kind = i % 3
        nb = copy.deepcopy(release if kind == 2 else source)
        if kind == 1:
            for cell in nb.cells:
                if cell.cell_type == "code":
                    cell.source = cell.source.replace("math.ceil", "math.floor")
        nbformat.write(nb, folder / f"student{i:02d}.ipynb")


def timed(folder: Path, out: Path, jobs: int, sandboxed: bool) -> tuple[float, list]:
    start = time.monotonic()
    graded = grade_folder("06_moe_gating", folder, out, jobs=jobs, seed=0, sandboxed=sandboxed)
    return time.monotonic() - start, graded


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=15)
    parser.add_argument("--jobs", type=int, default=2)
    parser.add_argument("--no-baseline", action="store_true", help="skip the unsandboxed run")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="tinymoe-bench-grading-") as tmp:
        folder = Path(tmp) / "submissions"
        folder.mkdir()
        make_submissions(folder, args.n)
        sandboxed, graded = timed(folder, Path(tmp) / "sandboxed", args.jobs, True)
        totals = sorted(g.total for g in graded)
        print(f"{args.n} submissions of exercise 06, {args.jobs} at a time, in bubblewrap: {sandboxed:.1f} s "
              f"({sandboxed / args.n:.1f} s each); totals {totals}")
        if not args.no_baseline:
            plain, graded_plain = timed(folder, Path(tmp) / "plain", args.jobs, False)
            assert sorted(g.total for g in graded_plain) == totals, "the sandbox changed a grade"
            print(f"the same without a sandbox: {plain:.1f} s; sandbox / no sandbox = {sandboxed / plain:.2f}")


if __name__ == "__main__":
    main()
