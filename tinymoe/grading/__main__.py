"""The instructor's commands: build the source notebooks, release the student versions, grade.

    python -m tinymoe.grading build   [NN ...]       exercises/source/*.py -> *.ipynb
    python -m tinymoe.grading release [NN ...]       exercises/source -> exercises/release
    python -m tinymoe.grading grade EXERCISE FOLDER --out DIR [--cell-timeout S] [--timeout S]
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
        from .grade import grade_folder
        name = exercise(args.exercise).name
        if not args.folder.is_dir():
            parser.error(f"{args.folder} is not a folder of submissions")
        graded = grade_folder(name, args.folder, args.out, cell_timeout=args.cell_timeout, timeout=args.timeout,
                              output_limit=args.output_limit, jobs=args.jobs)
        for g in sorted(graded, key=lambda g: g.student):
            reason = f"  ({'; '.join(g.notes)})" if g.notes else ""
            print(f"{g.student:<30} {g.total:g}/{g.maximum:g}{reason}")
        print(f"gradebook: {args.out / 'gradebook.csv'}\nfeedback:  {args.out / 'feedback'}")
    elif args.command == "list":
        from . import EXERCISES, exercise
        for name in EXERCISES:
            print(exercise(name))
    return 0


if __name__ == "__main__":
    sys.exit(main())
