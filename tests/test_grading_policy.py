"""Grading rules that need no sandbox: the shortcut policy, verdicts that do not depend on luck,
partial credit, plain data across the wire, and the instructor's gradebook (overrides, LMS export,
deadline, reasons), all in-process and fast."""
import csv
import json
import math

import pytest
import torch

from tinymoe.grading import CORRECT, INCORRECT, Result, exercise
from tinymoe.grading import wire
from tinymoe.grading.grade import GradingError, Graded, export, read_overrides, seed_for, write_gradebook
from tinymoe.grading.policy import Tripwire, scan_source

pytestmark = pytest.mark.exercises

SEEDS = range(40)


# ---- verdicts that do not depend on luck ----------------------------------------------------------
def _attention_minus_100(q, k, v, causal=True):
    scores = q @ k.transpose(-2, -1) / math.sqrt(q.shape[-1])
    if causal:
        scores = scores.masked_fill(torch.ones(q.shape[-2], k.shape[-2], dtype=torch.bool).triu(1), -100.0)
    e = (scores - scores.amax(-1, keepdim=True)).exp()
    return e / e.sum(-1, keepdim=True) @ v


def _rms_norm_in_float32(x, weight, eps=1e-5):
    xf = x.float()
    return (xf / torch.sqrt(xf.pow(2).mean(-1, keepdim=True) + eps) * weight.float()).to(x.dtype)


@pytest.mark.parametrize("exercise_name, question, borderline", [
    ("01", "attention", _attention_minus_100),
    ("04", "rms_norm", _rms_norm_in_float32),
], ids=["mask_filled_with_minus_100", "rmsnorm_in_float32_cast_back"])
def test_borderline_answers_never_reach_full_marks_on_any_seed(exercise_name, question, borderline):
    q = getattr(exercise(exercise_name), question)
    full = [seed for seed in SEEDS if q.result(borderline, seed=seed, sources=[]).correct]
    assert not full, f"{question}: the borderline answer {borderline.__name__} was marked right on seeds {full}"


def test_the_same_seed_gives_the_same_verdict_and_message():
    q = exercise("01").attention
    first, again = (q.result(_attention_minus_100, seed=11, sources=[]) for _ in range(2))
    assert (first.score, first.message, first.misconception) == (again.score, again.message, again.misconception)


def test_seeds_are_sealed_per_run_student_and_question():
    assert seed_for(1, "alice", "attention") == seed_for(1, "alice", "attention")
    assert len({seed_for(1, "alice", "attention"), seed_for(2, "alice", "attention"),
                seed_for(1, "bob", "attention"), seed_for(1, "alice", "safe_softmax")}) == 4


# ---- partial credit --------------------------------------------------------------------------------
def test_partial_credit_is_the_share_of_cases_that_pass():
    q = exercise("01").attention
    r = q.result(_attention_minus_100, seed=3, sources=[])
    assert r.status == INCORRECT and 0 < r.passed < r.cases
    assert r.score == pytest.approx(round(r.passed / r.cases, 2)), f"{r.passed}/{r.cases} cases gave {r.score} points"
    assert f"{r.passed} of {r.cases} cases pass" in r.message


def test_a_function_wrong_on_every_case_scores_zero():
    r = exercise("01").safe_softmax.result(lambda x: torch.zeros_like(x), seed=0, sources=[])
    assert r.passed == 0 and r.score == 0


# ---- the shortcut policy ----------------------------------------------------------------------------
IMPORTS = "import torch\nimport torch.nn.functional as F\nfrom tinymoe.grading import exercise\nex = exercise('01')"


@pytest.mark.parametrize("body, used", [
    ("def safe_softmax(x):\n    return torch.softmax(x, -1)", ["torch.softmax"]),
    ("def safe_softmax(x):\n    return F.softmax(x, dim=-1)", ["torch.nn.functional.softmax"]),
    ("def safe_softmax(x):\n    return x.softmax(-1)", [".softmax"]),
    ("from tinymoe.attention import safe_softmax as s\ndef safe_softmax(x):\n    return s(x)", ["tinymoe"]),
    ("import tinymoe.attention as A\ndef helper(x):\n    return A.safe_softmax(x)\n"
     "def safe_softmax(x):\n    return helper(x)", ["tinymoe"]),
    ("def safe_softmax(x):\n    f = getattr(torch, 'softmax')\n    return f(x, -1)", ["torch.softmax"]),
    ("def safe_softmax(x):\n    e = (x - x.amax(-1, keepdim=True)).exp()\n    return e / e.sum(-1, keepdim=True)", []),
    ("def safe_softmax(x):\n    ex = x.exp()\n    return ex / ex.sum(-1, keepdim=True)", []),
])
def test_reading_the_code_finds_each_forbidden_name(body, used):
    q = exercise("01").safe_softmax
    found = scan_source([IMPORTS, body], "safe_softmax", q.forbidden, q.allowed)
    assert found == used, f"found {found} in\n{body}"


def test_the_tripwire_sees_a_hidden_call_to_the_reference():
    import importlib
    module = importlib.import_module("tiny" + "moe.attention")
    q = exercise("01").safe_softmax
    r = q.result(lambda x: getattr(module, "safe_" + "softmax")(x, dim=-1), seed=0, sources=[])
    assert r.score == 0 and r.shortcuts and "reference implementation" in r.message, r.text
    with Tripwire(("torch.softmax",)) as wire_:
        torch.softmax(torch.ones(3), 0)
    assert "torch.softmax" in wire_.used


def test_self_check_warns_about_a_shortcut_before_submission():
    r = exercise("01").safe_softmax.check(lambda x: torch.softmax(x, -1))
    assert r.status == INCORRECT and "used the reference implementation (torch.softmax)" in r.message


def test_self_check_in_a_notebook_reads_the_cells_and_the_last_definition_wins():
    from IPython.core.interactiveshell import InteractiveShell
    shell = InteractiveShell.instance()
    try:
        shell.run_cell("import torch\nfrom tinymoe.grading import exercise\nex = exercise('01')", store_history=True)
        shell.run_cell("def safe_softmax(x):\n    if x.shape[-1] > 999:\n        return torch.softmax(x, -1)\n"
                       "    e = (x - x.amax(-1, keepdim=True)).exp()\n    return e / e.sum(-1, keepdim=True)",
                       store_history=True)
        shell.run_cell("_r1 = ex.safe_softmax.check(safe_softmax)", store_history=True)
        shell.run_cell("def safe_softmax(x):\n    e = (x - x.amax(-1, keepdim=True)).exp()\n"
                       "    return e / e.sum(-1, keepdim=True)", store_history=True)
        shell.run_cell("_r2 = ex.safe_softmax.check(safe_softmax)", store_history=True)
        first, second = shell.user_ns["_r1"], shell.user_ns["_r2"]
    finally:
        InteractiveShell.clear_instance()
    assert first.shortcuts == ["torch.softmax"], f"a branch the cases never reach still counts: {first.text}"
    assert second.correct, f"the rewritten function is judged, not the old cell: {second.text}"


def test_the_attention_question_may_use_torch_softmax_but_not_sdpa():
    q = exercise("01").attention
    sources = [IMPORTS, "import math\ndef attention(q, k, v, causal=True):\n"
                        "    return F.scaled_dot_product_attention(q, k, v, is_causal=causal)"]
    assert scan_source(sources, "attention", q.forbidden, q.allowed) == [
        "torch.nn.functional.scaled_dot_product_attention"]
    assert scan_source([IMPORTS, "def attention(q, k, v, causal=True):\n    return torch.softmax(q @ k.mT, -1) @ v"],
                       "attention", q.forbidden, q.allowed) == []


# ---- plain data across the wire ----------------------------------------------------------------
def test_wire_rebuilds_plain_tensors_from_numbers():
    class Sneaky(torch.Tensor):
        @classmethod
        def __torch_function__(cls, func, types, args=(), kwargs=None):
            if getattr(func, "__name__", "") in ("allclose", "equal", "eq", "__eq__"):
                return True
            return super().__torch_function__(func, types, args, kwargs or {})

    sent = (torch.zeros(2, 3).as_subclass(Sneaky), 3, 0.5, True, None, [torch.arange(4)], {"k": torch.ones(1)})
    got = wire.decode(json.loads(json.dumps(wire.encode(sent))))
    assert type(got[0]) is torch.Tensor and not torch.allclose(got[0], torch.ones(2, 3))
    assert got[1:5] == (3, 0.5, True, None) and torch.equal(got[5][0], torch.arange(4))
    assert type(wire.decode(wire.encode(object()))) is wire.Opaque


@pytest.mark.parametrize("bad", [
    {"t": "float32", "s": [2, 2], "d": [1.0]},
    {"t": "object", "s": [1], "d": [1]},
    {"t": "float32", "s": [1], "d": ["1"]},
    {"pickle": "gASV"},
    {"tuple": [{"i": "3"}]},
])
def test_wire_refuses_anything_but_plain_data(bad):
    with pytest.raises(wire.WireError):
        wire.decode(bad)


# ---- what the instructor gets ------------------------------------------------------------------------
def _graded(student, attention_score, submitted="2026-11-29T12:00:00+00:00", notes=()):
    results = [Result("safe_softmax", CORRECT, "correct", passed=8, cases=8, fraction=1.0),
               Result("attention", INCORRECT if attention_score < 1 else CORRECT, "incorrect at step 5 of 5 (values)",
                      stage="values", passed=3, cases=7, fraction=attention_score)]
    return Graded(student, f"{student}.ipynb", results, list(notes), submitted=submitted)


def _read(path):
    with open(path, newline="", encoding="utf-8") as f:
        return {row.get("student") or row.get("student_id"): row for row in csv.DictReader(f)}


def test_gradebook_lms_export_overrides_and_late_flag(tmp_path):
    graded = [_graded("alice", 1.0), _graded("bob", 3 / 7, submitted="2026-11-30T09:00:00+00:00"),
              _graded("carol", 0.0, notes=["code cell 3 (`x`) raised ValueError: boom"])]
    overrides = tmp_path / "overrides.csv"
    overrides.write_text("student,question,points,comment\ncarol,attention,0.5,regraded by hand\n", encoding="utf-8")
    write_gradebook("01_attention_by_hand", graded, tmp_path, deadline="2026-11-29T23:59",
                    overrides=read_overrides(overrides))
    book, lms = _read(tmp_path / "gradebook.csv"), _read(tmp_path / "lms.csv")
    assert (book["alice"]["total"], book["alice"]["late"], book["alice"]["reason"]) == ("2", "no", "")
    assert book["bob"]["late"] == "yes" and "late: submitted" in book["bob"]["reason"]
    assert book["bob"]["attention"] == "0.43" and "incorrect at values (3 of 7 cases pass)" in book["bob"]["reason"]
    assert book["carol"]["attention"] == "0.5" and "override 0.5 (regraded by hand)" in book["carol"]["reason"]
    assert "raised ValueError: boom" in book["carol"]["reason"]
    assert lms["carol"] == {"student_id": "carol", "total": "1.5", "max": "2", "percentage": "75.0", "late": "no"}
    feedback = (tmp_path / "feedback" / "carol.md").read_text(encoding="utf-8")
    assert "Score: 1.5 / 2" in feedback and "your instructor set 0.5 points (regraded by hand)" in feedback


def test_export_reapplies_overrides_without_regrading(tmp_path):
    graded = [_graded("alice", 1.0), _graded("bob", 0.0)]
    (tmp_path / "results.json").write_text(json.dumps({"exercise": "01_attention_by_hand",
                                                       "graded": [g.to_dict() for g in graded]}))
    overrides = tmp_path / "o.csv"
    overrides.write_text("student,question,points,comment\nbob,attention,1,\n", encoding="utf-8")
    export(tmp_path, overrides=overrides)
    assert _read(tmp_path / "gradebook.csv")["bob"]["total"] == "2"


@pytest.mark.parametrize("text, words", [
    ("student,question,points\nmallory,attention,1\n", "no submission from student 'mallory'"),
    ("student,question,points\nalice,attn,1\n", "no question 'attn'"),
    ("student,question,points\nalice,attention,5\n", "outside 0..1"),
    ("student,question,points\nalice,attention,lots\n", "is not a number"),
    ("name,points\nalice,1\n", "needs the columns student, question, points"),
])
def test_a_wrong_override_file_is_refused_with_the_line(tmp_path, text, words):
    path = tmp_path / "o.csv"
    path.write_text(text, encoding="utf-8")
    with pytest.raises(GradingError, match=words.replace("(", r"\(").replace(")", r"\)").replace(".", r"\.")):
        write_gradebook("01_attention_by_hand", [_graded("alice", 1.0)], tmp_path, overrides=read_overrides(path))


def test_a_bad_deadline_is_refused():
    with pytest.raises(GradingError, match="2026-12-01T23:59"):
        write_gradebook("01_attention_by_hand", [_graded("alice", 1.0)], "/tmp", deadline="next friday")
