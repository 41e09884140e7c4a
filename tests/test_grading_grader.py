"""The grader on a folder of fixture submissions (exercise 01): every submission gets a row and a
reason, no run is unbounded, a cell that kills its process or will not stop still leaves the
questions graded, a regrade with the run's seed is identical, and the feedback shows no hidden
input or expected value.

The fixtures (tests/fixtures/submissions, written by tests/fixtures/make_submissions.py) are a
good answer, a partly right one, one that raises, one that loops forever, one that prints
megabytes, one with a renamed and a deleted function, one that kills its kernel, broken JSON,
and JSON that is not a notebook. (That an untouched released notebook reads "not attempted" is tested in-process, in
test_exercises_checks.py, to keep this file's kernels few.)
"""
import csv
import json
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tinymoe.grading.grade import grade_folder
from tinymoe.grading.sandbox import bwrap_path

pytestmark = [pytest.mark.exercises, pytest.mark.slow,
              pytest.mark.skipif(bwrap_path() is None, reason="bubblewrap (bwrap) is not installed; "
                                 "`apt-get install bubblewrap` (.ci/run does)")]

ROOT = Path(__file__).resolve().parents[1]
FIXTURES = ROOT / "tests" / "fixtures" / "submissions"
CELL_TIMEOUT, TIMEOUT = 4, 30

# student -> (safe_softmax, attention, words the reason must contain); "partial" is strictly between 0 and 1
EXPECTED = {
    "good": (1, 1, []),
    "partly_right": (1, "partial", ["attention: incorrect at values", "[no_scale]"]),
    "raising": (1, 0, ["raised ValueError: a cell of mine is broken", "attention: incorrect at runs (0 of"]),
    "infinite_loop": (1, 0, ["did not finish within 4 s", "checking attention: it ran past 4 s"]),
    "huge_output": (1, 1, ["printed more than"]),
    "renamed_function": (0, 0, ["no function of that name (renamed or deleted)"]),
    "kills_kernel": (1, 1, ["the kernel died while running code cell 4", "os._exit", "it was skipped"]),
    "broken_json": (0, 0, ["not a valid notebook (NotJSONError)"]),
    "not_a_notebook": (0, 0, ["not a valid notebook"]),
}


@pytest.fixture(scope="module")
def graded(tmp_path_factory):
    folder = tmp_path_factory.mktemp("submissions")
    for path in FIXTURES.glob("*.ipynb"):
        shutil.copy(path, folder / path.name)
    out = tmp_path_factory.mktemp("grades")
    start = time.monotonic()
    results = grade_folder("01_attention_by_hand", folder, out, cell_timeout=CELL_TIMEOUT, timeout=TIMEOUT,
                           output_limit=200_000, jobs=2)
    return results, out, time.monotonic() - start, folder


def _rows(out: Path) -> dict:
    with open(out / "gradebook.csv", newline="", encoding="utf-8") as f:
        return {row["student"]: row for row in csv.DictReader(f)}


def test_gradebook_has_one_row_per_submission_and_one_column_per_check(graded):
    _, out, _, _ = graded
    with open(out / "gradebook.csv", newline="", encoding="utf-8") as f:
        header = next(csv.reader(f))
    assert header == ["student", "file", "submitted", "late", "safe_softmax", "attention", "total", "max",
                      "percentage", "seconds", "reason"]
    assert sorted(_rows(out)) == sorted(EXPECTED), "every submission, broken or not, must get exactly one row"


@pytest.mark.parametrize("student", list(EXPECTED))
def test_each_fixture_gets_its_expected_scores_and_reason(graded, student):
    _, out, _, _ = graded
    row = _rows(out)[student]
    softmax, attention, reasons = EXPECTED[student]
    got = (float(row["safe_softmax"]), float(row["attention"]))
    if attention == "partial":
        assert 0 < got[1] < 1, f"{student}: attention scored {got[1]}, expected partial credit; reason: {row['reason']}"
        attention = got[1]
    assert got == (softmax, attention), f"{student}: scores {got}, expected {(softmax, attention)}; reason: {row['reason']}"
    assert float(row["total"]) == pytest.approx(softmax + attention) and float(row["max"]) == 2
    if float(row["total"]) < 2:
        assert row["reason"], f"{student} is below full marks with no reason in the CSV"
    for words in reasons:
        assert words in row["reason"], f"{student}: the reason should say {words!r}; it says {row['reason']!r}"


def test_the_feedback_says_what_went_wrong_for_each_check(graded):
    results, _, _, _ = graded
    by_student = {g.student: {r.question: r for r in g.results} for g in results}
    assert by_student["partly_right"]["attention"].misconception == "no_scale"
    assert by_student["raising"]["attention"].stage == "runs" and "IndexError" in by_student["raising"]["attention"].message
    assert "interrupted" in by_student["infinite_loop"]["attention"].message
    assert by_student["kills_kernel"]["attention"].correct, "the questions after an os._exit cell were not graded"
    assert "no function named attention" in by_student["renamed_function"]["attention"].message
    assert "no function named safe_softmax" in by_student["renamed_function"]["safe_softmax"].message


def test_every_submission_is_bounded_by_its_wall_clock_limit(graded):
    results, _, elapsed, _ = graded
    slowest = max(results, key=lambda g: g.seconds)
    # the limit counts the submission's own cells and checks; the margin covers starting the kernel
    # and importing torch on a busy machine
    assert slowest.seconds < TIMEOUT + 30, \
        f"{slowest.student} took {slowest.seconds} s under a {TIMEOUT} s limit (whole folder: {elapsed:.0f} s)"


def test_feedback_files_exist_and_show_no_hidden_values(graded):
    _, out, _, _ = graded
    for student in EXPECTED:
        for suffix in (".md", ".html"):
            text = (out / "feedback" / f"{student}{suffix}").read_text(encoding="utf-8")
            assert f"Feedback: 01_attention_by_hand" in text
            assert "tensor(" not in text, f"{student}{suffix} prints a tensor"
            decimals = re.findall(r"\d\.\d{3,}", text)
            assert not decimals, f"{student}{suffix} shows numbers {decimals}: feedback never shows values"
    partly = (out / "feedback" / "partly_right.md").read_text(encoding="utf-8")
    assert "Hint: scale the scores by 1/sqrt(d_k)" in partly


def test_a_regrade_with_the_logged_seed_is_identical(graded, tmp_path):
    results, out, _, folder = graded
    run = json.loads((out / "run.json").read_text(encoding="utf-8"))
    again = tmp_path / "in"
    again.mkdir()
    shutil.copy(folder / "partly_right.ipynb", again / "partly_right.ipynb")
    regraded = grade_folder("01_attention_by_hand", again, tmp_path / "out", cell_timeout=CELL_TIMEOUT, timeout=TIMEOUT,
                            seed=run["seed"])
    first = next(g for g in results if g.student == "partly_right")
    assert [(r.score, r.message, r.seed) for r in regraded[0].results] == [(r.score, r.message, r.seed)
                                                                          for r in first.results]
    assert run["seeds"]["partly_right"] == regraded[0].seeds


def test_cli_grades_a_folder_without_valid_notebooks_quickly(tmp_path):
    folder = tmp_path / "in"
    folder.mkdir()
    shutil.copy(FIXTURES / "broken_json.ipynb", folder / "alice.ipynb")
    (folder / "bob").mkdir()
    shutil.copy(FIXTURES / "not_a_notebook.ipynb", folder / "bob" / "01_attention_by_hand.ipynb")
    done = subprocess.run([sys.executable, "-m", "tinymoe.grading", "grade", "01", str(folder), "--out",
                           str(tmp_path / "out")], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    rows = _rows(tmp_path / "out")
    assert sorted(rows) == ["alice", "bob/01_attention_by_hand"]
    assert (tmp_path / "out" / "feedback" / "bob__01_attention_by_hand.md").exists()
