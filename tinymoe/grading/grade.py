"""Grade a folder of submitted notebooks: a fresh kernel each, bounded, every check scored.

    python -m tinymoe.grading grade 01_attention_by_hand submissions/ --out grades/01

For each `*.ipynb` under the folder (the student is its path without `.ipynb`):
  1. read it; a file that is not a valid notebook gets a row with the reason and no kernel;
  2. run its code cells (but its own `ex.NAME.check(NAME)` cells) in a fresh kernel, in a scratch folder, each cell under a time limit
     (interrupted when it runs over) and the whole submission under a wall-clock limit (its
     kernel killed when that runs out); errors do not stop the run, output past a size cap is
     dropped;
  3. in the same kernel, check each question's function by name (tinymoe.grading.kernel) and
     read the results back from a file, never from the notebook's output.
Then it writes `gradebook.csv` (one row per submission, one column per check, the total and the
reasons) and `feedback/<student>.md` and `.html`, which show the check messages and hints but no
hidden input and no expected value. One broken submission never stops the others.
"""
from __future__ import annotations

import csv
import json
import os
import re
import secrets
import shutil
import signal
import subprocess
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from .feedback import CHECKER_ERROR, INCORRECT, Result, render_html, render_markdown
from .kernel import PURGE_SOURCE

__all__ = ["Graded", "grade_notebook", "grade_folder", "write_gradebook"]

MAX_NOTEBOOK_BYTES = 20_000_000
MAX_RESULTS_BYTES = 1_000_000
WARM_UP_SECONDS = 120
# Run before the submission, outside its time limits: the first import of torch can take
# seconds on a busy machine, and should not count against a student's first cell.
WARM_UP_SOURCE = "import torch\nimport tinymoe.grading\n"
_CHECK_CELL = re.compile(r"\s*ex\.\w+\.check\(\s*\w*\s*\)\s*;?\s*")


@dataclass
class Graded:
    """One submission's outcome: a Result per question and the notes on running it."""

    student: str
    file: str
    results: list[Result]
    notes: list[str] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def total(self) -> float:
        return sum(r.score for r in self.results)

    @property
    def maximum(self) -> float:
        return sum(r.points for r in self.results)


def _questions(exercise_name: str):
    from . import exercise
    return exercise(exercise_name).questions


def _not_graded(questions, why: str) -> list[Result]:
    return [Result(q.name, INCORRECT, f"not graded: {why}", stage="runs", points=q.points) for q in questions]


def _short(text: str, limit: int = 200) -> str:
    text = " ".join(str(text).split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _make_client(nb, workdir: str, output_limit: int):
    """An nbclient NotebookClient that drops outputs past `output_limit` bytes and records errors."""
    from nbclient import NotebookClient

    class BoundedClient(NotebookClient):
        def output(self, outs, msg, display_id, cell_index):
            size = len(json.dumps(msg.get("content", {}), default=str))
            self.output_bytes += size
            if self.output_bytes > output_limit:
                self.output_dropped = True
                return None
            return super().output(outs, msg, display_id, cell_index)

    client = BoundedClient(
        nb, kernel_name="python3", allow_errors=True, interrupt_on_timeout=True,
        error_on_timeout={"ename": "CellTimeoutError", "evalue": "the cell ran past its time limit", "traceback": []},
        iopub_timeout=2, shutdown_kernel="immediate", record_timing=False, startup_timeout=60,
        resources={"metadata": {"path": workdir}})
    client.output_bytes, client.output_dropped, client.errors = 0, False, {}

    def on_error(cell, cell_index, execute_reply):
        content = execute_reply.get("content", {}) if execute_reply else {}
        client.errors.setdefault(cell_index, (content.get("ename", "Error"), content.get("evalue", "")))

    client.on_cell_error = on_error
    return client


def _kernel_env() -> dict:
    env = dict(os.environ)
    env.pop("TINYMOE_SOLUTIONS", None)                 # no solutions inside a graded kernel
    env.pop("NBGRADER_EXECUTION", None)                # checks report, they do not raise
    env.update({"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "PYTHONDONTWRITEBYTECODE": "1",
                "MPLBACKEND": "Agg"})
    return env


def _kill_group(client) -> None:
    """SIGKILL the kernel's process group (the kernel and anything the notebook started)."""
    try:
        pgid = getattr(client.km.provisioner, "pgid", None)
        if pgid:
            os.killpg(pgid, signal.SIGKILL)
    except Exception:                                  # noqa: BLE001 - already gone
        pass


def grade_notebook(path: Path | str, exercise_name: str, student: str | None = None, cell_timeout: float = 30,
                   timeout: float = 300, output_limit: int = 1_000_000) -> Graded:
    """Run one submission and check every question; never raises."""
    path = Path(path)
    student = student or path.stem
    questions = _questions(exercise_name)
    start = time.monotonic()
    try:
        graded = _grade(path, exercise_name, student, questions, cell_timeout, timeout, output_limit)
    except BaseException as error:                     # noqa: BLE001 - the grader never stops part-way
        graded = Graded(student, str(path), _not_graded(questions, "the grader failed on this submission"),
                        [f"grader error: {type(error).__name__}: {_short(error)}"])
    graded.seconds = round(time.monotonic() - start, 1)
    return graded


def _grade(path, exercise_name, student, questions, cell_timeout, timeout, output_limit) -> Graded:
    import nbformat
    from nbclient.exceptions import DeadKernelError

    # 1. a valid notebook?
    try:
        if path.stat().st_size > MAX_NOTEBOOK_BYTES:
            raise ValueError(f"the file is larger than {MAX_NOTEBOOK_BYTES // 1_000_000} MB")
        submitted = nbformat.reads(path.read_text(encoding="utf-8", errors="replace"), as_version=4)
        nbformat.validate(submitted)
    except Exception as error:                         # noqa: BLE001 - any unreadable file
        why = f"not a valid notebook ({type(error).__name__}: {_short(error, 120)})"
        return Graded(student, str(path), _not_graded(questions, why), [why])

    # 2. the notebook to run: the submission's code cells, then one grading cell per question
    workdir = tempfile.mkdtemp(prefix="tinymoe-grade-")               # the kernel's working folder
    results_dir = tempfile.mkdtemp(prefix="tinymoe-results-")         # elsewhere, under a random name
    results_path = Path(results_dir) / f"results-{secrets.token_hex(8)}.jsonl"
    token = secrets.token_hex(16)
    all_code = [c.get("source", "") for c in submitted.cells if c.get("cell_type") == "code"]
    code = [(n, source) for n, source in enumerate(all_code, start=1)      # (code cell number, source)
            if source.strip() and not _CHECK_CELL.fullmatch(source)]      # the grader runs the checks itself
    cells = [nbformat.v4.new_code_cell(source) for _, source in code]
    n_learner = len(cells)
    cells.append(nbformat.v4.new_code_cell(PURGE_SOURCE))
    for q in questions:
        cells.append(nbformat.v4.new_code_cell(
            "from tinymoe.grading.kernel import grade_into as _tinymoe_grade_into\n"
            f"_tinymoe_grade_into({exercise_name!r}, {q.name!r}, {str(results_path)!r}, {token!r}, globals())"))
    cells.insert(0, nbformat.v4.new_code_cell(WARM_UP_SOURCE))
    nb = nbformat.v4.new_notebook(cells=cells)
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}

    notes: list[str] = []
    client = _make_client(nb, workdir, output_limit)
    limits: dict[int, int] = {}
    watchdog = threading.Timer(WARM_UP_SECONDS + timeout + 20, lambda: _kill_group(client))  # if nbclient hangs
    watchdog.daemon = True
    try:
        with client.setup_kernel(env=_kernel_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL):
            watchdog.start()
            client.timeout = WARM_UP_SECONDS
            client.execute_cell(nb.cells[0], 0)
            deadline = time.monotonic() + timeout
            for index, cell in enumerate(nb.cells[1:], start=1):
                learner = index <= n_learner
                remaining = deadline - time.monotonic()
                if remaining <= 1:
                    notes.append(f"stopped: the notebook used up its {timeout:g} s wall-clock limit"
                                 + (f" at {_cell_name(index, code)}" if learner else " before every check ran"))
                    break
                client.timeout = limits[index] = max(1, int(min(cell_timeout, remaining)))
                try:
                    client.execute_cell(cell, index)
                except DeadKernelError:
                    notes.append(f"the kernel died while running {_cell_name(index, code) if learner else 'the checks'}"
                                 " (a crash, os._exit, or the wall-clock limit)")
                    break
                cell.outputs = []                                          # outputs are never graded
    except Exception as error:                         # noqa: BLE001 - e.g. the kernel did not start
        notes.append(f"the notebook could not be run: {type(error).__name__}: {_short(error)}")
    finally:
        watchdog.cancel()
        _kill_group(client)
    for index, (ename, evalue) in sorted(client.errors.items()):
        if index == 0:
            notes.append(f"the grader's warm-up (import torch, tinymoe) failed: {ename}: {_short(evalue, 160)}")
        elif index > n_learner:
            if ename == "CellTimeoutError" and index > n_learner + 1:
                notes.append(f"checking {questions[index - n_learner - 2].name} ran past {limits.get(index, 0)} s "
                             "and was interrupted")
        elif ename == "CellTimeoutError":
            notes.append(f"{_cell_name(index, code)} did not finish within {limits.get(index, 0)} s and was interrupted")
        else:
            notes.append(f"{_cell_name(index, code)} raised {ename}: {_short(evalue, 160)}")
    if client.output_dropped:
        notes.append(f"the notebook printed more than {output_limit:,} bytes; the rest was discarded")

    # 3. the results the grading cells wrote
    found: dict[str, Result] = {}
    if results_path.exists():
        with open(results_path, encoding="utf-8", errors="replace") as f:
            text = f.read(MAX_RESULTS_BYTES)
        for line in text.splitlines():
            if line.startswith(token + " "):
                try:
                    r = Result.from_json(line[len(token) + 1:])
                    found.setdefault(r.question, r)
                except Exception:                      # noqa: BLE001 - a damaged line counts as missing
                    pass
    shutil.rmtree(workdir, ignore_errors=True)
    shutil.rmtree(results_dir, ignore_errors=True)
    results = []
    for q in questions:
        r = found.get(q.name) or Result(q.name, INCORRECT, "not graded: its check did not finish (time limit, or the "
                                        "kernel stopped)", stage="runs", points=q.points)
        if r.status == CHECKER_ERROR:
            notes.append(f"the checker failed on {q.name}; please report it")
        r.seed = None                                  # hidden-case seeds stay out of feedback and CSV
        results.append(r)
    return Graded(student, str(path), results, notes)


def _cell_name(index: int, code: list[str]) -> str:
    """'code cell 3 (`raise ValueError(...`)': which of the submission's code cells, and its first line."""
    number, source = code[index - 1]
    first = next((line.strip() for line in source.splitlines() if line.strip()), "")
    return f"code cell {number} (`{_short(first, 40)}`)"


def _student_id(path: Path, folder: Path) -> str:
    return str(path.relative_to(folder).with_suffix("")).replace(os.sep, "/")


def grade_folder(exercise_name: str, folder: Path | str, out: Path | str, cell_timeout: float = 30,
                 timeout: float = 300, output_limit: int = 1_000_000, jobs: int = 1) -> list[Graded]:
    """Grade every *.ipynb under `folder` (checkpoints skipped) and write the gradebook and feedback."""
    folder, out = Path(folder), Path(out)
    paths = sorted(p for p in folder.rglob("*.ipynb") if ".ipynb_checkpoints" not in p.parts)
    args = [(p, exercise_name, _student_id(p, folder), cell_timeout, timeout, output_limit) for p in paths]
    if jobs > 1 and len(paths) > 1:
        with ThreadPoolExecutor(max_workers=jobs) as pool:   # threads wait on kernels; the kernels do the work
            futures = [pool.submit(grade_notebook, *a) for a in args]
            graded = []
            for a, future in zip(args, futures):
                try:
                    graded.append(future.result())
                except Exception as error:             # noqa: BLE001 - a worker that died
                    graded.append(Graded(a[2], str(a[0]), _not_graded(_questions(exercise_name), "the grader failed"),
                                         [f"grader error: {type(error).__name__}: {_short(error)}"]))
    else:
        graded = [grade_notebook(*a) for a in args]
    write_gradebook(exercise_name, graded, out)
    return graded


def _feedback_name(student: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", student.replace("/", "__")) or "submission"


def write_gradebook(exercise_name: str, graded: list[Graded], out: Path | str) -> Path:
    """gradebook.csv plus feedback/<student>.md and .html under `out`."""
    out = Path(out)
    (out / "feedback").mkdir(parents=True, exist_ok=True)
    names = [q.name for q in _questions(exercise_name)]
    gradebook = out / "gradebook.csv"
    with open(gradebook, "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(["student", "file", *names, "total", "max", "seconds", "reason"])
        for g in sorted(graded, key=lambda g: g.student):
            scores = {r.question: r.score for r in g.results}
            writer.writerow([g.student, g.file, *(f"{scores.get(n, 0):g}" for n in names), f"{g.total:g}",
                             f"{g.maximum:g}", f"{g.seconds:g}", " | ".join(g.notes)])
    for g in graded:
        stem = _feedback_name(g.student)
        (out / "feedback" / f"{stem}.md").write_text(
            render_markdown(g.student, exercise_name, g.results, g.notes, g.total, g.maximum), encoding="utf-8")
        (out / "feedback" / f"{stem}.html").write_text(
            render_html(g.student, exercise_name, g.results, g.notes, g.total, g.maximum), encoding="utf-8")
    return gradebook
