"""The hidden checks, checked: solutions pass, stubs read "not attempted", every catalogued wrong
answer earns its own hint, and no feedback ever shows an expected value.

The solutions and stubs are the exercise notebooks' own cells (exercises/source with the solution,
exercises/release without), run in-process; the wrong answers are the checks' catalogue.
"""
import math
import re
from pathlib import Path

import nbformat
import pytest
import torch

from tinymoe import MultiHeadAttention, ModelConfig, Trace, attention_weights
from tinymoe.grading import CORRECT, EXERCISES, INCORRECT, NOT_ATTEMPTED, exercise
from tinymoe.grading.checks import Dice
from tinymoe.grading.ex02_multi_head import attention_from_parts
from tinymoe.grading.ex05_gqa import kv_of_query_head

pytestmark = pytest.mark.exercises

ROOT = Path(__file__).resolve().parents[1]
SEEDS = (0, 1, 2)


def _run_cells(path: Path) -> dict:
    """Execute a notebook's code cells in one fresh namespace, as a kernel would."""
    namespace = {"__name__": "__main__"}
    for cell in nbformat.read(path, as_version=4).cells:
        if cell.cell_type == "code":
            exec(compile(cell.source, f"{path.name}", "exec"), namespace)
    return namespace


@pytest.fixture(scope="module")
def solutions():
    return {name: _run_cells(ROOT / "exercises" / "source" / f"{name}.ipynb") for name in EXERCISES}


@pytest.fixture(scope="module")
def stubs():
    return {name: _run_cells(ROOT / "exercises" / "release" / f"{name}.ipynb") for name in EXERCISES}


QUESTIONS = [(name, q.name) for name in EXERCISES for q in exercise(name).questions]
WRONG_ANSWERS = [(name, q.name, m.id) for name in EXERCISES for q in exercise(name).questions
                 for m in q.misconceptions]


def _question(name, question):
    return getattr(exercise(name), question)


@pytest.mark.parametrize("name, question", QUESTIONS, ids=[f"{e}.{q}" for e, q in QUESTIONS])
def test_every_solution_passes_every_check(solutions, name, question):
    q = _question(name, question)
    for seed in SEEDS:
        result = q.result(solutions[name][question], seed=seed)
        assert result.status == CORRECT, f"the source solution of {name}.{question} fails (seed {seed}): {result.text}"


@pytest.mark.parametrize("name, question", QUESTIONS, ids=[f"{e}.{q}" for e, q in QUESTIONS])
def test_every_stub_reads_as_not_attempted(stubs, name, question):
    result = _question(name, question).check(stubs[name][question])
    assert result.status == NOT_ATTEMPTED, f"the released stub of {name}.{question} reads {result.status}: {result.text}"
    assert "NotImplementedError" in result.message


@pytest.mark.parametrize("name, question, wrong", WRONG_ANSWERS, ids=[f"{e}.{q}.{m}" for e, q, m in WRONG_ANSWERS])
def test_each_catalogued_wrong_answer_fails_with_its_own_hint(name, question, wrong):
    q = _question(name, question)
    misconception = next(m for m in q.misconceptions if m.id == wrong)
    for seed in SEEDS:
        result = q.result(misconception.wrong, seed=seed)
        assert result.status == INCORRECT, f"wrong answer {wrong} passed {name}.{question} (seed {seed})"
        assert result.misconception == wrong, (
            f"wrong answer {wrong} of {name}.{question} got the hint for {result.misconception!r} at step "
            f"{result.stage} (seed {seed}): {result.text}")
        assert result.hint == misconception.hint


def _decimals(text: str) -> list[str]:
    return re.findall(r"-?\d+\.\d+", text)


def _leaks(text: str, expected_values: torch.Tensor) -> list[str]:
    """Decimal numbers in `text` that equal some expected value to the decimals they show."""
    leaks = []
    for number in _decimals(text):
        places = len(number.split(".")[1])
        if (expected_values - float(number)).abs().le(0.5 * 10 ** -places).any():
            leaks.append(number)
    return leaks


def _expected_values(q, seed) -> torch.Tensor:
    values = []
    for case in q.make_cases(Dice(seed)):
        outputs = case.expected if isinstance(case.expected, (tuple, list)) else [case.expected]
        for out in outputs:
            t = torch.as_tensor(out).double().flatten()
            values.append(t[torch.isfinite(t) & ((t - t.round()).abs() > 1e-3)])   # whole numbers are shapes too
    return torch.cat(values)


@pytest.mark.parametrize("name, question", QUESTIONS, ids=[f"{e}.{q}" for e, q in QUESTIONS])
def test_feedback_never_contains_expected_values(name, question):
    q = _question(name, question)
    seed = 7
    expected = _expected_values(q, seed)
    labels = [case.label for case in q.make_cases(Dice(seed))]       # the kinds of input may be told
    for wrong in [m.wrong for m in q.misconceptions] + [lambda *a, **k: torch.zeros(3)]:
        result = q.result(wrong, seed=seed)
        text = result.text + result._repr_html_()
        for label in labels:
            text = text.replace(label, "")
        assert not _leaks(text, expected), f"{name}.{question} feedback shows expected values {_leaks(text, expected)}: {text}"
        assert "tensor(" not in text, f"{name}.{question} feedback prints a tensor: {text}"


def test_feedback_names_the_failed_step_in_order():
    q = exercise("01").attention
    assert "step 1 of 5 (runs at all)" in q.check(lambda q_, k, v, causal=True: 1 / 0).message
    assert "step 2 of 5 (output shape)" in q.check(lambda q_, k, v, causal=True: q_).message
    assert "step 3 of 5 (dtype)" in q.check(lambda q_, k, v, causal=True: _solution_attention(q_, k, v, causal).double()).message
    assert "step 4 of 5 (properties)" in q.check(lambda q_, k, v, causal=True: _solution_attention(q_, k, v, False)).message
    assert "step 5 of 5 (values)" in q.check(
        lambda q_, k, v, causal=True: _solution_attention(q_, k, v, causal, scale=0.3)).message


def _solution_attention(q, k, v, causal, scale=None):
    scores = q @ k.transpose(-2, -1) * (scale or 1 / math.sqrt(q.shape[-1]))
    if causal:
        scores = scores.masked_fill(~torch.ones(q.shape[-2], k.shape[-2], dtype=torch.bool).tril(), float("-inf"))
    return torch.softmax(scores, dim=-1) @ v


class _Hostile:
    """An output whose every comparison raises."""

    def __eq__(self, other):
        raise RuntimeError("no comparing me")

    __hash__ = None


@pytest.mark.parametrize("learner", [
    lambda x: print("x" * 3_000_000) or x.softmax(-1) / 0,
    lambda x: (_ for _ in ()).throw(SystemExit(3)),
    lambda x: (_ for _ in ()).throw(KeyboardInterrupt()),
    lambda x: None,
    lambda x: "not a tensor",
    lambda x: x.numpy(),
    lambda x: _Hostile(),
], ids=["prints-megabytes-then-nan", "SystemExit", "KeyboardInterrupt", "None", "str", "numpy", "hostile-object"])
def test_a_learners_output_prints_or_errors_never_break_the_checker(capsys, learner):
    result = exercise("01").safe_softmax.check(learner)
    assert result.status == INCORRECT, f"expected incorrect, got {result.status}: {result.text}"
    captured = capsys.readouterr()
    assert len(captured.out) + len(captured.err) == 0, "the learner's prints leaked out of the check"


def test_torch_settings_a_learners_function_changes_are_put_back():
    def correct_but_rude(x):
        torch.set_default_dtype(torch.float64)
        torch.set_grad_enabled(False)
        e = (x - x.amax(-1, keepdim=True)).exp()
        return e / e.sum(-1, keepdim=True)
    result = exercise("01").safe_softmax.check(correct_but_rude)
    assert result.correct, result.text
    assert torch.get_default_dtype() == torch.float32 and torch.is_grad_enabled(), \
        "the check did not restore torch's default dtype and grad mode"


def test_check_takes_the_function_itself_not_its_name():
    result = exercise("01").safe_softmax.check("safe_softmax")
    assert result.status == INCORRECT and "check(safe_softmax)" in result.message, result.text


def test_a_function_that_writes_into_its_input_is_told_so():
    def in_place(x):
        x -= x.amax(-1, keepdim=True)
        x.exp_()
        return x / x.sum(-1, keepdim=True)
    result = exercise("01").safe_softmax.check(in_place)
    assert result.stage == "properties" and "in place" in result.message, result.text


def test_hidden_cases_are_drawn_fresh_for_each_check():
    q = exercise("01").safe_softmax
    first, second = q.make_cases(Dice(1)), q.make_cases(Dice(2))
    assert not torch.equal(first[0].args[0], second[0].args[0]) or first[0].args[0].shape != second[0].args[0].shape
    seeds = {q.check(lambda x: torch.softmax(x, -1)).seed for _ in range(3)}
    assert len(seeds) == 3, "check() reused its hidden seed"


def test_hints_come_one_at_a_time_and_never_show_code():
    q = exercise("03").rope
    shown = [repr(q.hint()) for _ in range(len(q.hints) + 1)]
    assert shown[0].startswith("Hint 1 of") and shown[1].startswith("Hint 2 of")
    assert shown[-1] == shown[-2], "asking past the last hint should repeat the last one"
    assert repr(q.hint(1)).startswith("Hint 1 of")
    assert all("def " not in s and "return" not in s for s in shown)


def test_solution_is_shown_only_where_the_instructor_switches_it_on(monkeypatch):
    q = exercise("01").safe_softmax
    monkeypatch.delenv("TINYMOE_SOLUTIONS", raising=False)
    off = repr(q.solution())
    assert "switched off" in off and "exp(" not in off
    monkeypatch.setenv("TINYMOE_SOLUTIONS", "1")
    on = repr(q.solution())
    assert "def safe_softmax(" in on and "torch.exp(x - row_max)" in on, on
    assert "BEGIN SOLUTION" not in on and "NotImplementedError" not in on, on
    monkeypatch.setenv("TINYMOE_SOLUTIONS", str(ROOT / "no-such-folder"))
    assert "does not exist" in repr(q.solution())


def test_under_nbgrader_a_failed_check_raises_and_a_passing_one_does_not(monkeypatch, solutions, stubs):
    q = exercise("04").rms_norm
    monkeypatch.setenv("NBGRADER_EXECUTION", "autograde")
    with pytest.raises(AssertionError, match="not attempted"):
        q.check(stubs["04_rmsnorm"]["rms_norm"])
    assert q.check(solutions["04_rmsnorm"]["rms_norm"]) is None, \
        "a passing check must display nothing under nbgrader (a displayed value would be read as partial credit)"


def test_exercise_lookup_by_number_or_name_and_a_clear_error_otherwise():
    assert exercise("1").name == exercise("01_attention_by_hand").name == "01_attention_by_hand"
    with pytest.raises(KeyError, match="the exercises are"):
        exercise("99")
    with pytest.raises(AttributeError, match="its questions are"):
        exercise("01").no_such_function


def test_the_gqa_rule_of_the_checks_is_the_cores():
    config = ModelConfig(d_model=8, n_heads=6, n_kv_heads=2, head_dim=2, position="none")
    torch.manual_seed(0)
    module = MultiHeadAttention(config)
    trace = Trace()
    with torch.no_grad():
        module(torch.randn(2, 5, 8), trace)
    k = trace["attn.k"][:, kv_of_query_head(6, 2)]
    ours = attention_weights(trace["attn.q"], k, causal=True)
    assert torch.allclose(ours, trace["attn.weights"], atol=1e-6), \
        "expanding kv heads with kv_of_query_head does not reproduce the core's GQA attention weights"


@pytest.mark.parametrize("n_heads, n_kv_heads, v_dim", [(2, 2, 3), (4, 2, 2), (4, 1, 3), (3, 3, 5)])
def test_wrong_answer_builder_with_no_mistake_equals_the_core(n_heads, n_kv_heads, v_dim):
    config = ModelConfig(d_model=6, n_heads=n_heads, n_kv_heads=n_kv_heads, head_dim=2, v_head_dim=v_dim,
                         position="none")
    torch.manual_seed(1)
    module = MultiHeadAttention(config)
    x = torch.randn(2, 4, 6)
    with torch.no_grad():
        expected = module(x)
        ours = attention_from_parts(x, module.W_q.weight, module.W_k.weight, module.W_v.weight, module.W_o.weight,
                                    n_heads, n_kv_heads)
    assert torch.allclose(ours, expected, atol=1e-5), \
        f"attention_from_parts differs from the core by {(ours - expected).abs().max():.2e}: its wrong answers " \
        f"would differ from the core by more than their one mistake"
