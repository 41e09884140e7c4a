"""Grade a folder of submitted notebooks: each in a sandbox, every verdict computed here.

    python -m tinymoe.grading grade 01_attention_by_hand submissions/ --out grades/01

The grader never trusts a student's kernel with a verdict. For each `*.ipynb` under the folder
(the student is its path without `.ipynb`; every file is read into memory before anything runs,
so no submission can change another's on disk):
  1. a file that is not a valid notebook gets a row with the reason and no sandbox;
  2. its code cells (but its own `ex.NAME.check(NAME)` cells) run one by one in a bubblewrap sandbox
     (sandbox.py, runner.py) that sees only its own copy, each cell under a time limit and the
     whole submission under a wall-clock limit. A cell that kills its process (os._exit) or will
     not stop when interrupted is skipped and the notebook replayed without it, so the questions
     that ran still get graded;
  3. for each question the grader draws the hidden cases here from a sealed seed (derived from the
     run's seed, logged in run.json: `--seed` regrades identically), sends the sandbox only the
     inputs, gets back plain numbers (wire.py) and compares them here, with the same staged check
     a learner runs (checks.Question.evaluate). Shortcuts the question forbids (policy.py) are
     read from the notebook's text here and watched for while the function runs; either scores 0.
It writes `gradebook.csv` (a row per submission: timestamp, late flag, points per question
(partial credit per case), total, percentage, the reason for anything below full marks),
`lms.csv` (student id, total, max, percentage), `feedback/<student>.md`/`.html`, `results.json`
(for `export`, which merges a manual override file and a deadline without regrading) and
`run.json` (seeds and settings).
"""
from __future__ import annotations

import csv
import hashlib
import json
import os
import queue
import re
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path

from . import sandbox as sandboxing
from . import wire
from .checks import LearnerFailed
from .feedback import CHECKER_ERROR, INCORRECT, NOT_ATTEMPTED, Result, render_html, render_markdown
from .policy import forbidden_names, scan_source, shortcut_message

__all__ = ["Graded", "grade_notebook", "grade_folder", "write_gradebook", "export", "read_overrides",
           "seed_for", "GradingError"]

MAX_NOTEBOOK_BYTES = 20_000_000
MAX_LINE_BYTES = 60_000_000
WARM_UP_SECONDS = 120             # starting Python and importing torch, outside the student's limits
GRACE_SECONDS = 3                 # past a time limit, how long an interrupted cell has to give up
MAX_RESTARTS = 4
_CHECK_CELL = re.compile(r"\s*ex\.\w+\.check\(\s*\w*\s*\)\s*;?\s*")
_PATH = re.compile(r"(?:[A-Za-z]:)?(?:/[\w.\-~@+]+){2,}/?")


class GradingError(RuntimeError):
    """The instructor's input is wrong (an override for an unknown student, a bad deadline)."""


@dataclass
class Graded:
    """One submission's outcome: a Result per question and the notes on running it."""

    student: str
    file: str
    results: list[Result]
    notes: list[str] = field(default_factory=list)
    seconds: float = 0.0
    submitted: str = ""                     # ISO 8601, UTC
    sandbox: str = "bubblewrap"             # or "none (--unsafe-no-sandbox)"
    seeds: dict = field(default_factory=dict)

    @property
    def total(self) -> float:
        return round(sum(r.score for r in self.results), 2)

    @property
    def maximum(self) -> float:
        return sum(r.points for r in self.results)

    def to_dict(self) -> dict:
        data = asdict(self)
        data["results"] = [asdict(r) for r in self.results]
        return data

    @classmethod
    def from_dict(cls, data: dict) -> "Graded":
        results = [Result(**{k: r[k] for k in Result.__dataclass_fields__ if k in r}) for r in data["results"]]
        return cls(**{**{k: data[k] for k in cls.__dataclass_fields__ if k in data}, "results": results})


def _questions(exercise_name: str):
    from . import exercise
    return exercise(exercise_name).questions


def _not_graded(questions, why: str) -> list[Result]:
    return [Result(q.name, INCORRECT, f"not graded: {why}", stage="runs", points=q.points) for q in questions]


def _short(text: str, limit: int = 200) -> str:
    text = " ".join(str(text).split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


def scrub(text: str, limit: int = 200) -> str:
    """Text from a student's kernel made safe for feedback: no file paths, one line, short."""
    return _short(_PATH.sub("<path>", str(text)), limit)


def seed_for(run_seed: int, student: str, question: str) -> int:
    """The hidden cases' seed of one question for one student: sealed (derived from the run's seed,
    which the notebook never sees) and reproducible (the same run seed gives the same cases)."""
    digest = hashlib.sha256(f"{run_seed}/{student}/{question}".encode()).digest()
    return int.from_bytes(digest[:4], "big") & 0x7FFFFFFF


# ---- the grader's end of a sandbox ------------------------------------------------------------
class Session:
    """One sandboxed runner (runner.py): start it, send it cells and calls, kill it."""

    def __init__(self, workdir: str, sandboxed: bool, cpu_seconds: float, memory_mb: int):
        env = {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "PYTHONDONTWRITEBYTECODE": "1",
               "MPLBACKEND": "Agg", "TINYMOE_GRADED": "1"}
        if os.environ.get("TRITON_INTERPRET"):
            env["TRITON_INTERPRET"] = os.environ["TRITON_INTERPRET"]
        argv = ["-m", "tinymoe.grading.runner"]
        if sandboxed:
            cmd = sandboxing.command(workdir, argv, env)
        else:                                               # --unsafe-no-sandbox: same protocol, no walls
            cmd = [sys.executable, *argv]
            env = {"HOME": workdir, "PATH": "/usr/bin:/bin", "PYTHONPATH": str(sandboxing.package_dir().parent),
                   **env}
        self.proc = subprocess.Popen(sandboxing.limited(cmd, cpu_seconds, memory_mb), stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, cwd=workdir,
                                     env=None if sandboxed else env, start_new_session=True)
        self.lines: queue.Queue = queue.Queue()
        self.alive, self.hung = True, False
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()

    def _read(self):
        try:
            while True:
                line = self.proc.stdout.readline(MAX_LINE_BYTES)
                if not line or not line.endswith(b"\n"):
                    break
                self.lines.put(line)
        except Exception:                                   # noqa: BLE001 - a closed pipe
            pass
        self.lines.put(None)

    def receive(self, timeout: float):
        """The next message, or None when the runner died, hung past `timeout` or broke the protocol
        (it is killed then)."""
        try:
            line = self.lines.get(timeout=max(0.1, timeout))
        except queue.Empty:
            line, self.hung = None, True
        if line is not None:
            try:
                message = json.loads(line)
                if isinstance(message, dict):
                    return message
            except ValueError:
                pass
        self.kill()
        return None

    def request(self, message: dict, timeout: float):
        if not self.alive:
            return None
        try:
            self.proc.stdin.write((json.dumps(message) + "\n").encode())
            self.proc.stdin.flush()
        except (OSError, ValueError):
            self.kill()
            return None
        return self.receive(timeout)

    def kill(self):
        """SIGKILL the sandbox's process group; bwrap's --die-with-parent and PID namespace take the rest."""
        self.alive = False
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            pass
        for stream in (self.proc.stdin, self.proc.stdout):
            try:
                stream.close()
            except Exception:                               # noqa: BLE001
                pass


class _Run:
    """Running one submission: its cells replayed in a fresh sandbox whenever one dies."""

    def __init__(self, code, workdir, sandboxed, cell_timeout, timeout, memory_mb, output_limit):
        self.code, self.workdir, self.sandboxed = code, workdir, sandboxed
        self.cell_timeout, self.memory_mb, self.output_limit = cell_timeout, memory_mb, output_limit
        self.timeout = timeout
        self.deadline = None
        self.session: Session | None = None
        self.skip: set[int] = set()
        self.notes: list[str] = []
        self.restarts = 0
        self.printed = 0

    def note(self, text: str):
        if text not in self.notes:
            self.notes.append(text)

    def remaining(self) -> float:
        return self.deadline - time.monotonic()

    def ready(self) -> bool:
        """A live sandbox that has run every cell (but those skipped); False when time or restarts ran out."""
        while self.session is None or not self.session.alive:
            if self.restarts > MAX_RESTARTS:
                self.note("not every question could be checked: the notebook's process died too often")
                return False
            if self.deadline is not None and self.remaining() <= 1:
                self.note(f"stopped: the notebook used up its {self.timeout:g} s wall-clock limit")
                return False
            self.restarts += 1
            self.session = Session(self.workdir, self.sandboxed, self.timeout + WARM_UP_SECONDS, self.memory_mb)
            hello = self.session.receive(WARM_UP_SECONDS)
            if not hello or not hello.get("ready"):
                self.session.kill()
                self.note("the sandbox did not start (Python or torch failed to import there)")
                return False
            if self.deadline is None:                   # the student's clock starts after the warm-up
                self.deadline = time.monotonic() + self.timeout
            self._replay()
        return True

    def _replay(self):
        for index, (number, source) in enumerate(self.code):
            if index in self.skip:
                continue
            remaining = self.remaining()
            if remaining <= 1:
                self.note(f"stopped: the notebook used up its {self.timeout:g} s wall-clock limit at "
                          f"{_cell_name(number, source)}")
                return
            limit = max(1, min(self.cell_timeout, remaining))
            reply = self.session.request({"op": "cell", "source": source, "timeout": limit}, limit + GRACE_SECONDS)
            if reply is None:                           # died, or would not stop: skip it next time
                self.skip.add(index)
                if self.session.hung:
                    self.note(f"{_cell_name(number, source)} did not stop within {limit:g} s, even when "
                              "interrupted; it was skipped")
                else:
                    self.note(f"the kernel died while running {_cell_name(number, source)} (a crash, os._exit, "
                              "or a memory or CPU limit); it was skipped and the rest run again")
                return
            self.printed += int(reply.get("printed") or 0)
            error = reply.get("error")
            if error:
                ename, evalue = str(error[0])[:60], error[1] if len(error) > 1 else ""
                if ename == "CellTimeoutError":
                    self.note(f"{_cell_name(number, source)} did not finish within {limit:g} s and was interrupted")
                else:
                    self.note(f"{_cell_name(number, source)} raised {scrub(ename, 60)}: {scrub(evalue, 160)}")
        if self.printed > self.output_limit:
            self.note(f"the notebook printed more than {self.output_limit:,} bytes (output is never graded)")

    def close(self):
        if self.session is not None:
            self.session.kill()


class _RemoteFunction:
    """A learner's function reached in the sandbox: call(args, kwargs) -> (output, changed inputs?)."""

    def __init__(self, run: _Run, question):
        self.run, self.question = run, question
        self.used: set[str] = set()
        self.failure: LearnerFailed | None = None   # once it hung or killed its process: every later call
        self.forbidden, self.allowed = forbidden_names(question.forbidden, question.allowed)

    def __call__(self, args, kwargs):
        if self.failure is not None:
            raise self.failure
        if not self.run.ready():
            raise self._fail("RuntimeError", "RuntimeError: the notebook could not be run again to check it")
        limit = max(1, min(self.run.cell_timeout, self.run.remaining()))
        reply = self.run.session.request({"op": "call", "name": self.question.name, "args": wire.encode(tuple(args)),
                                          "kwargs": wire.encode(dict(kwargs)), "timeout": limit,
                                          "forbidden": list(self.forbidden), "allowed": list(self.allowed)},
                                         limit + GRACE_SECONDS)
        if reply is None:
            if self.run.session.hung:
                self.run.note(f"checking {self.question.name}: it did not stop within {limit:g} s, even when "
                              "interrupted")
                raise self._fail("KeyboardInterrupt", "KeyboardInterrupt: it did not finish in time and was interrupted")
            self.run.note(f"checking {self.question.name}: the kernel died while it ran (os._exit, a crash, or a "
                          "memory limit)")
            raise self._fail("SystemExit", "SystemExit: the process died while it ran")
        self.used.update(str(u)[:120] for u in reply.get("used") or [])
        if "out" in reply:
            try:
                return wire.decode(reply["out"]), bool(reply.get("changed"))
            except (wire.WireError, RecursionError, TypeError, ValueError, RuntimeError, OverflowError) as error:
                raise LearnerFailed(f"ValueError: its output could not be read as plain data ({error})",
                                    ValueError(str(error))) from None
        raised = reply.get("raised") or {}
        summary = scrub(raised.get("summary", "Error"), 220)
        if raised.get("not_implemented"):
            raise LearnerFailed(summary, NotImplementedError(summary))
        if str(raised.get("type")) == "KeyboardInterrupt":
            self.run.note(f"checking {self.question.name}: it ran past {limit:g} s and was interrupted")
            raise self._fail("KeyboardInterrupt", summary)
        return_type = _builtin_exception(raised.get("type"))
        raise LearnerFailed(summary, return_type(summary))

    def _fail(self, kind: str, summary: str) -> LearnerFailed:
        self.failure = LearnerFailed(summary, _builtin_exception(kind)(summary))
        return self.failure


def _builtin_exception(name) -> type:
    import builtins
    cls = getattr(builtins, str(name), None)
    if isinstance(cls, type) and issubclass(cls, BaseException) and cls is not NotImplementedError:
        return cls
    return type(str(name)[:60] or "Error", (Exception,), {}) if str(name).isidentifier() else RuntimeError


# ---- one submission -----------------------------------------------------------------------------
def grade_notebook(path: Path | str, exercise_name: str, student: str | None = None, cell_timeout: float = 30,
                   timeout: float = 300, output_limit: int = 1_000_000, *, data: bytes | None = None,
                   run_seed: int = 0, sandboxed: bool = True, memory_mb: int = 4096, submitted: str = "") -> Graded:
    """Run one submission in a sandbox and check every question; never raises."""
    path = Path(path)
    student = student or path.stem
    questions = _questions(exercise_name)
    start = time.monotonic()
    seeds = {q.name: seed_for(run_seed, student, q.name) for q in questions}
    try:
        if data is None:
            data = path.read_bytes()[: MAX_NOTEBOOK_BYTES + 1]
        graded = _grade(data, path, exercise_name, student, questions, seeds, cell_timeout, timeout, output_limit,
                        sandboxed, memory_mb)
    except BaseException as error:                     # noqa: BLE001 - the grader never stops part-way
        graded = Graded(student, str(path), _not_graded(questions, "the grader failed on this submission"),
                        [f"grader error: {type(error).__name__} (details in the grader's console)"])
        print(f"grader error on {student}: {type(error).__name__}: {error}", file=sys.stderr)
    graded.seconds = round(time.monotonic() - start, 1)
    graded.submitted, graded.seeds = submitted, seeds
    graded.sandbox = "bubblewrap" if sandboxed else "none (--unsafe-no-sandbox)"
    return graded


def _grade(data, path, exercise_name, student, questions, seeds, cell_timeout, timeout, output_limit,
           sandboxed, memory_mb) -> Graded:
    import nbformat

    # 1. a valid notebook?
    try:
        if len(data) > MAX_NOTEBOOK_BYTES:
            raise ValueError(f"the file is larger than {MAX_NOTEBOOK_BYTES // 1_000_000} MB")
        submitted = nbformat.reads(data.decode("utf-8", errors="replace"), as_version=4)
        nbformat.validate(submitted)
    except Exception as error:                         # noqa: BLE001 - any unreadable file
        why = f"not a valid notebook ({type(error).__name__})"
        return Graded(student, str(path), _not_graded(questions, why), [why])

    all_code = [c.get("source", "") for c in submitted.cells if c.get("cell_type") == "code"]
    code = [(n, source) for n, source in enumerate(all_code, start=1)      # (code cell number, source)
            if source.strip() and not _CHECK_CELL.fullmatch(source)]      # the grader runs the checks itself
    sources = [source for _, source in code]

    # 2. its own copy in a scratch folder: the only file the sandbox sees
    workdir = tempfile.mkdtemp(prefix="tinymoe-grade-")
    os.chmod(workdir, 0o700)
    Path(workdir, "submission.ipynb").write_bytes(data)
    run = _Run(code, workdir, sandboxed, cell_timeout, timeout, memory_mb, output_limit)
    results = []
    try:
        run.ready()
        # 3. each question: cases here, inputs there, outputs back as numbers, verdict here
        for q in questions:
            results.append(_check(q, run, sources, seeds[q.name]))
    finally:
        run.close()
        shutil.rmtree(workdir, ignore_errors=True)
    return Graded(student, str(path), results, run.notes)


def _check(q, run: _Run, sources, seed: int) -> Result:
    static = scan_source(sources, q.name, q.forbidden, q.allowed)
    if not run.ready():
        return Result(q.name, INCORRECT, "not graded: the notebook could not be run to check it", stage="runs",
                      points=q.points, seed=seed)
    probe = _probe(run, q.name)
    if probe == "missing":
        return Result(q.name, INCORRECT, f"there is no function named {q.name} in the notebook (was it renamed or "
                      f"deleted?); the grader calls it by that name", stage="runs", points=q.points, seed=seed)
    if probe and probe.startswith("not_callable:"):
        return Result(q.name, INCORRECT, f"{q.name} is a {probe.split(':', 1)[1]}, not a function", stage="runs",
                      points=q.points, seed=seed)
    remote = _RemoteFunction(run, q)
    result = q.evaluate(remote, seed, shortcuts=lambda: sorted(set(static) | remote.used))
    if static and not result.shortcuts:                # not attempted, yet forbidden names in the text
        result = Result(q.name, INCORRECT, shortcut_message(static), stage="runs", points=q.points, seed=seed,
                        shortcuts=list(static), misconception="used_reference")
    result.message = scrub(result.message, 400)
    result.seed = seed
    return result


def _probe(run: _Run, name: str) -> str | None:
    """'missing', 'not_callable:<type>' or None (there is a function of that name)."""
    reply = run.session.request({"op": "has", "name": name}, 10)
    if reply is None:
        return None
    if reply.get("missing"):
        return "missing"
    if reply.get("not_callable"):
        return f"not_callable:{scrub(reply['not_callable'], 60)}"
    return None


def _cell_name(number: int, source: str) -> str:
    """'code cell 3 (`raise ValueError(...`)': which of the submission's code cells, and its first line."""
    first = next((line.strip() for line in source.splitlines() if line.strip()), "")
    return f"code cell {number} (`{scrub(first, 40)}`)"


# ---- a folder -----------------------------------------------------------------------------------
def _student_id(path: Path, folder: Path) -> str:
    return str(path.relative_to(folder).with_suffix("")).replace(os.sep, "/")


def _timestamp(path: Path) -> str:
    """When it was handed in: nbgrader's timestamp.txt beside it if there is one, else the file's mtime (UTC)."""
    stamp = path.parent / "timestamp.txt"
    if stamp.is_file():
        try:
            return _parse_time(stamp.read_text(encoding="utf-8").strip().splitlines()[0]).isoformat(timespec="seconds")
        except (ValueError, IndexError, GradingError):
            pass
    return datetime.fromtimestamp(path.stat().st_mtime, timezone.utc).isoformat(timespec="seconds")


def _parse_time(text: str) -> datetime:
    text = str(text).strip().replace(" UTC", "").replace("Z", "+00:00")
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        raise GradingError(f"{text!r} is not a date and time; write it as 2026-12-01T23:59 (UTC) or with an "
                           f"offset, 2026-12-01T23:59+01:00") from None
    return moment if moment.tzinfo else moment.replace(tzinfo=timezone.utc)


def grade_folder(exercise_name: str, folder: Path | str, out: Path | str, cell_timeout: float = 30,
                 timeout: float = 300, output_limit: int = 1_000_000, jobs: int = 1, *, seed: int | None = None,
                 sandboxed: bool = True, memory_mb: int = 4096, deadline: str | None = None,
                 overrides: Path | str | None = None) -> list[Graded]:
    """Grade every *.ipynb under `folder` (checkpoints skipped) and write the gradebook, LMS export,
    feedback, results.json and run.json. Refuses (SandboxUnavailable) where bwrap cannot run,
    unless sandboxed=False."""
    folder, out = Path(folder), Path(out)
    if sandboxed:
        sandboxing.require()
    if deadline is not None:
        _parse_time(deadline)
    override_rows = read_overrides(overrides) if overrides else []
    run_seed = secrets.randbits(48) if seed is None else int(seed)
    # every submission read (and stamped) before any runs: none can touch another's file
    paths = sorted(p for p in folder.rglob("*.ipynb") if ".ipynb_checkpoints" not in p.parts)
    snapshot = [(p, _student_id(p, folder), p.read_bytes()[: MAX_NOTEBOOK_BYTES + 1], _timestamp(p)) for p in paths]
    started = datetime.now(timezone.utc).isoformat(timespec="seconds")

    def one(item):
        path, student, data, stamp = item
        return grade_notebook(path, exercise_name, student, cell_timeout, timeout, output_limit, data=data,
                              run_seed=run_seed, sandboxed=sandboxed, memory_mb=memory_mb, submitted=stamp)

    if jobs > 1 and len(snapshot) > 1:
        with ThreadPoolExecutor(max_workers=jobs) as pool:    # threads wait on sandboxes; they do the work
            graded = list(pool.map(one, snapshot))
    else:
        graded = [one(item) for item in snapshot]
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps({"exercise": exercise_name, "graded": [g.to_dict() for g in graded]},
                                                 indent=1), encoding="utf-8")
    (out / "run.json").write_text(json.dumps({
        "exercise": exercise_name, "seed": run_seed, "started": started,
        "finished": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "sandbox": "bubblewrap" if sandboxed else "none (--unsafe-no-sandbox)",
        "cell_timeout": cell_timeout, "timeout": timeout, "memory_mb": memory_mb,
        "regrade": f"python -m tinymoe.grading grade {exercise_name} {folder} --out {out} --seed {run_seed}",
        "seeds": {g.student: g.seeds for g in graded}}, indent=1), encoding="utf-8")
    write_gradebook(exercise_name, graded, out, deadline=deadline, overrides=override_rows)
    return graded


def read_overrides(path: Path | str) -> list[dict]:
    """The manual override file: CSV with columns student, question, points, comment."""
    rows = []
    with open(path, newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        missing = {"student", "question", "points"} - set(reader.fieldnames or [])
        if missing:
            raise GradingError(f"{path}: the override file needs the columns student, question, points (and "
                               f"comment); it lacks {', '.join(sorted(missing))}")
        for n, row in enumerate(reader, start=2):
            try:
                points = float(row["points"])
            except (TypeError, ValueError):
                raise GradingError(f"{path}, line {n}: points={row['points']!r} is not a number") from None
            rows.append({"student": row["student"].strip(), "question": row["question"].strip(), "points": points,
                         "comment": (row.get("comment") or "").strip(), "line": n})
    return rows


def _apply_overrides(graded: list[Graded], rows: list[dict], names: list[str], source: str = "the override file"):
    """{student: {question: (points, comment)}}, after checking every row names a real student and question."""
    students = {g.student for g in graded}
    maximum = {q: r.points for g in graded for r in g.results for q in [r.question]}
    merged: dict = {}
    for row in rows:
        if row["student"] not in students:
            raise GradingError(f"{source}, line {row['line']}: no submission from student {row['student']!r}")
        if row["question"] not in names:
            raise GradingError(f"{source}, line {row['line']}: no question {row['question']!r}; the questions are "
                               f"{', '.join(names)}")
        if not 0 <= row["points"] <= maximum.get(row["question"], 1.0):
            raise GradingError(f"{source}, line {row['line']}: points={row['points']:g} is outside 0.."
                               f"{maximum.get(row['question'], 1.0):g}")
        merged.setdefault(row["student"], {})[row["question"]] = (row["points"], row["comment"])
    return merged


def _reason(r: Result) -> str:
    """Why a question is below full marks, in a few words (the gradebook's reason column)."""
    if r.shortcuts:
        return "used the reference implementation (" + ", ".join(r.shortcuts[:3]) + ")"
    if r.status == NOT_ATTEMPTED:
        return "not attempted"
    if r.status == CHECKER_ERROR:
        return "the checker failed (please report it)"
    if r.message.startswith("there is no function named"):
        return "no function of that name (renamed or deleted)"
    if r.message.startswith("not graded"):
        return r.message
    if r.stage:
        return f"incorrect at {r.stage} ({r.passed} of {r.cases} cases pass)" + (
            f" [{r.misconception}]" if r.misconception else "")
    return r.status


def write_gradebook(exercise_name: str, graded: list[Graded], out: Path | str, deadline: str | None = None,
                    overrides: list[dict] | None = None) -> Path:
    """gradebook.csv, lms.csv and feedback/<student>.md and .html under `out`."""
    out = Path(out)
    (out / "feedback").mkdir(parents=True, exist_ok=True)
    names = [q.name for q in _questions(exercise_name)]
    merged = _apply_overrides(graded, overrides or [], names)
    due = _parse_time(deadline) if deadline else None
    gradebook = out / "gradebook.csv"
    rows = []
    for g in sorted(graded, key=lambda g: g.student):
        scores = {r.question: r.score for r in g.results}
        reasons = [f"{r.question}: {_reason(r)}" for r in g.results
                   if r.score < r.points and r.message[len("not graded: "):] not in g.notes]
        for question, (points, comment) in merged.get(g.student, {}).items():
            scores[question] = points
            reasons.append(f"{question}: override {points:g}" + (f" ({comment})" if comment else ""))
        total = round(sum(scores.get(n, 0.0) for n in names), 2)
        maximum = g.maximum or 1.0
        late = ""
        if due is not None and g.submitted:
            late = "yes" if _parse_time(g.submitted) > due else "no"
            if late == "yes":
                reasons.append(f"late: submitted {g.submitted}, due {due.isoformat(timespec='seconds')}")
        if g.sandbox != "bubblewrap":
            reasons.append(f"graded without a sandbox ({g.sandbox})")
        reasons += g.notes
        rows.append((g, scores, total, maximum, late, reasons))
    with open(gradebook, "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(["student", "file", "submitted", "late", *names, "total", "max", "percentage", "seconds",
                         "reason"])
        for g, scores, total, maximum, late, reasons in rows:
            writer.writerow([g.student, g.file, g.submitted, late, *(f"{scores.get(n, 0):g}" for n in names),
                             f"{total:g}", f"{maximum:g}", f"{100 * total / maximum:.1f}", f"{g.seconds:g}",
                             " | ".join(reasons)])
    with open(out / "lms.csv", "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(["student_id", "total", "max", "percentage", "late"])
        for g, scores, total, maximum, late, reasons in rows:
            writer.writerow([g.student, f"{total:g}", f"{maximum:g}", f"{100 * total / maximum:.1f}", late])
    for g, scores, total, maximum, late, reasons in rows:
        stem = _feedback_name(g.student)
        notes = list(g.notes) + [f"{q}: your instructor set {p:g} points" + (f" ({c})" if c else "")
                                 for q, (p, c) in merged.get(g.student, {}).items()]
        (out / "feedback" / f"{stem}.md").write_text(
            render_markdown(g.student, exercise_name, g.results, notes, total, maximum), encoding="utf-8")
        (out / "feedback" / f"{stem}.html").write_text(
            render_html(g.student, exercise_name, g.results, notes, total, maximum), encoding="utf-8")
    return gradebook


def export(out: Path | str, deadline: str | None = None, overrides: Path | str | None = None) -> Path:
    """Rewrite gradebook.csv, lms.csv and feedback from results.json, with overrides and a deadline (no regrade)."""
    out = Path(out)
    data = json.loads((out / "results.json").read_text(encoding="utf-8"))
    graded = [Graded.from_dict(g) for g in data["graded"]]
    return write_gradebook(data["exercise"], graded, out, deadline=deadline,
                           overrides=read_overrides(overrides) if overrides else [])


def _feedback_name(student: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", student.replace("/", "__")) or "submission"
