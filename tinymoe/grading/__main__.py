"""The instructor's commands: build the source notebooks, release the student versions, grade.

    python -m tinymoe.grading build   [NN ...]       exercises/source/*.py -> *.ipynb
    python -m tinymoe.grading release [NN ...]       exercises/source -> exercises/release
    python -m tinymoe.grading grade EXERCISE FOLDER --out DIR [--cell-timeout S] [--timeout S]
                              [--deadline ISO] [--overrides CSV] [--seed N] [--jobs N]
    python -m tinymoe.grading export DIR [--deadline ISO] [--overrides CSV]   rewrite the gradebook, no regrade
    python -m tinymoe.grading list                   the exercises and their checks
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from .release import ROOT


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tinymoe.grading", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)

    build = sub.add_parser("build", help="convert the source percent scripts to notebooks (nbgrader metadata added)")
    build.add_argument("names", nargs="*", help="only exercises whose name starts with one of these (e.g. 01)")
    build.add_argument("--source", type=Path, default=ROOT / "exercises" / "source")

    release = sub.add_parser("release", help="write the student notebooks: solutions stripped, outputs cleared")
    release.add_argument("names", nargs="*", help="only exercises whose name starts with one of these (e.g. 01)")
    release.add_argument("--source", type=Path, default=ROOT / "exercises" / "source")
    release.add_argument("--release", type=Path, default=ROOT / "exercises" / "release")

    grade = sub.add_parser("grade", help="grade a folder of submitted notebooks")
    grade.add_argument("exercise", help="the exercise, e.g. 01_attention_by_hand (or 01)")
    grade.add_argument("folder", type=Path, help="folder of submissions: every *.ipynb below it is one student")
    grade.add_argument("--out", type=Path, required=True, help="where gradebook.csv and feedback/ go")
    grade.add_argument("--cell-timeout", type=float, default=30, help="seconds per cell (default 30)")
    grade.add_argument("--timeout", type=float, default=300, help="wall-clock seconds per submission (default 300)")
    grade.add_argument("--output-limit", type=int, default=1_000_000, help="bytes of output kept per submission")
    grade.add_argument("--jobs", type=int, default=1, help="submissions graded at once (default 1)")
    grade.add_argument("--memory", type=int, default=4096, help="address-space limit per submission, MB (default 4096)")
    grade.add_argument("--seed", type=int, default=None,
                       help="the run's seed (default: a fresh one, logged in run.json); the same seed regrades identically")
    grade.add_argument("--deadline", default=None, help="ISO date-time (UTC unless it has an offset); later ones are flagged late")
    grade.add_argument("--overrides", type=Path, default=None,
                       help="CSV of manual overrides: student, question, points, comment")
    grade.add_argument("--unsafe-no-sandbox", action="store_true",
                       help="grade without bubblewrap (student code runs with your permissions; the gradebook says so)")

    export = sub.add_parser("export", help="rewrite gradebook.csv, lms.csv and feedback from a graded folder "
                                           "(overrides, deadline) without running anything")
    export.add_argument("out", type=Path, help="the --out folder of a grade run")
    export.add_argument("--deadline", default=None)
    export.add_argument("--overrides", type=Path, default=None)

    sub.add_parser("list", help="list the exercises and their checks")
    args = parser.parse_args(argv)

    if args.command == "build":
        from .release import build_sources
        for path in build_sources(args.source, args.names):
            print(f"built {path}")
    elif args.command == "release":
        from .release import release as do_release
        for path in do_release(args.source, args.release, args.names):
            print(f"released {path}")
    elif args.command == "grade":
        from . import exercise
        from .grade import GradingError, grade_folder
        from .sandbox import SandboxUnavailable
        name = exercise(args.exercise).name
        if not args.folder.is_dir():
            parser.error(f"{args.folder} is not a folder of submissions")
        try:
            graded = grade_folder(name, args.folder, args.out, cell_timeout=args.cell_timeout, timeout=args.timeout,
                                  output_limit=args.output_limit, jobs=args.jobs, seed=args.seed,
                                  sandboxed=not args.unsafe_no_sandbox, memory_mb=args.memory,
                                  deadline=args.deadline, overrides=args.overrides)
        except (SandboxUnavailable, GradingError) as error:
            print(f"grade: {error}", file=sys.stderr)
            return 2
        _print_gradebook(args.out)
    elif args.command == "export":
        from .grade import GradingError, export as do_export
        try:
            do_export(args.out, deadline=args.deadline, overrides=args.overrides)
        except (GradingError, OSError) as error:
            print(f"export: {error}", file=sys.stderr)
            return 2
        _print_gradebook(args.out)
    elif args.command == "list":
        from . import EXERCISES, exercise
        for name in EXERCISES:
            print(exercise(name))
    return 0


def _print_gradebook(out: Path) -> None:
    """What the CSV on disk says (so what the console shows is what the file holds)."""
    import csv
    with open(out / "gradebook.csv", newline="", encoding="utf-8") as f:
        for row in csv.DictReader(f):
            reason = f"  ({row['reason']})" if row["reason"] else ""
            print(f"{row['student']:<30} {row['total']}/{row['max']}{reason}")
    print(f"gradebook: {out / 'gradebook.csv'}\nLMS:       {out / 'lms.csv'}\nfeedback:  {out / 'feedback'}\n"
          f"seeds:     {out / 'run.json'}")


if __name__ == "__main__":
    sys.exit(main())
