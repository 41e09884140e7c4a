"""Hidden checks: run a learner's function on inputs chosen at check time, against the core.

A `Question` is one function a learner writes. `question.check(fn)` takes the function itself
(never a notebook global), draws fresh hidden cases from a random seed, computes each case's
expected output WITH THE TINYMOE CORE (there is no second copy of the math here), and then
walks the steps in the order a learner can act on:

    runs at all -> output shape -> dtype -> properties -> values

The first step that fails ends the check. When the learner's output equals what a catalogued
wrong answer (a `Misconception`, e.g. "softmax over the wrong axis") gives on the same hidden
input, the feedback carries that misconception's hint. Nothing the learner's function does can
break the checker: its prints are swallowed, every exception (KeyboardInterrupt and SystemExit
included) is caught and reported, its inputs are copies, and global torch settings it changes
are put back.
"""
from __future__ import annotations

import contextlib
import math
import numbers
import random
import re
import secrets
import traceback
import warnings
from dataclasses import dataclass, field
from typing import Any, Callable

import torch

from .policy import allow_code
from .feedback import (CHECKER_ERROR, CORRECT, INCORRECT, NOT_ATTEMPTED, STAGE_TITLES, STAGES, Note,
                       Result)

__all__ = ["Case", "Dice", "Misconception", "Property", "ErrorHint", "Question", "Exercise",
           "LearnerFailed", "call_learner", "close", "TOLERANCES"]

# (rtol, atol) per dtype: loose enough for a different but sound order of operations, far
# tighter than any catalogued misconception moves the output.
TOLERANCES = {torch.float16: (1e-2, 2e-3), torch.bfloat16: (2e-2, 1e-2),
              torch.float32: (1e-4, 1e-4), torch.float64: (1e-7, 1e-9)}


# ---- hidden cases -------------------------------------------------------------------------
class Dice:
    """The random source of one check: a torch generator and a Python RNG from one seed.
    Independent of the learner's global RNG (torch.manual_seed in the notebook changes nothing)."""

    def __init__(self, seed: int):
        self.seed = seed
        self.generator = torch.Generator().manual_seed(seed)
        self.rng = random.Random(seed)

    def randn(self, *shape: int, dtype=torch.float32, scale: float = 1.0, shift: float = 0.0) -> torch.Tensor:
        x = torch.randn(*shape, generator=self.generator, dtype=torch.float64) * scale + shift
        return x.to(dtype)

    def randint(self, low: int, high: int) -> int:
        """A whole number in [low, high] (both ends included)."""
        return self.rng.randint(low, high)

    @contextlib.contextmanager
    def torch_seed(self):
        """Seed torch's global RNG for building a core module, then restore the learner's RNG state."""
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(self.seed)
            yield


@dataclass
class Case:
    """One hidden input. `label` is what the learner may be told about it (the kind of input,
    never its numbers); `expected` is the core's output on it (never shown)."""

    label: str
    args: tuple
    kwargs: dict = field(default_factory=dict)
    expected: Any = None
    info: dict = field(default_factory=dict)      # facts properties need (causal, group size, ...)
    points: float = 1.0                           # its weight in the question's partial credit


@dataclass
class Misconception:
    """A catalogued wrong answer: `wrong` computes what it gives on the same inputs as the
    learner's function; a learner output equal to it earns `hint`."""

    id: str
    hint: str
    wrong: Callable


@dataclass
class Property:
    """Something every correct output satisfies. `test(case, got, call)` returns None when it
    holds, else a sentence saying what broke; `call` re-runs the learner's function safely."""

    name: str
    test: Callable


@dataclass
class ErrorHint:
    """A hint for an exception whose "Type: message" matches `pattern` (a regular expression)."""

    pattern: str
    hint: str


# ---- calling the learner's function ---------------------------------------------------------
class LearnerFailed(Exception):
    """The learner's function raised (or was interrupted); `summary` is 'Type: message'."""

    def __init__(self, summary: str, error: BaseException):
        super().__init__(summary)
        self.summary, self.error = summary, error


@allow_code
class _Discard:
    """A stdout/stderr that swallows whatever the learner's function prints."""

    def write(self, text):
        return len(text) if isinstance(text, str) else 0

    def flush(self):
        pass

    def isatty(self):
        return False


def _clone(value):
    if isinstance(value, torch.Tensor):
        return value.detach().clone()
    if isinstance(value, (list, tuple)):
        return type(value)(_clone(v) for v in value)
    if isinstance(value, dict):
        return {k: _clone(v) for k, v in value.items()}
    return value


def _summary(error: BaseException) -> str:
    if isinstance(error, KeyboardInterrupt):
        return "KeyboardInterrupt: it did not finish in time and was interrupted"
    try:
        text = str(error).strip().splitlines()[0] if str(error).strip() else ""
    except BaseException:                           # a learner's exception whose __str__ raises
        text = ""
    text = text if len(text) <= 200 else text[:197] + "..."
    return f"{type(error).__name__}: {text}" if text else type(error).__name__


def call_learner(fn: Callable, args: tuple = (), kwargs: dict | None = None, tripwire=None):
    """fn(*args, **kwargs), with its output swallowed and torch's global settings restored.
    Returns the value, or raises LearnerFailed whatever the function raised (BaseException too).
    Pass copies of anything the function must not be able to change. With a `tripwire`
    (policy.Tripwire) the forbidden functions it calls are recorded."""
    dtype, grad = torch.get_default_dtype(), torch.is_grad_enabled()
    sink = _Discard()
    try:
        with contextlib.redirect_stdout(sink), contextlib.redirect_stderr(sink), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            with (tripwire if tripwire is not None else contextlib.nullcontext()):
                return fn(*args, **(kwargs or {}))
    except BaseException as error:                  # noqa: BLE001 - a learner's code may raise anything
        raise LearnerFailed(_summary(error), error) from None
    finally:
        torch.set_default_dtype(dtype)
        torch.set_grad_enabled(grad)


# ---- comparing outputs (never printing them) --------------------------------------------------
def _tolerance(dtype) -> tuple[float, float]:
    return TOLERANCES.get(dtype, (1e-5, 1e-6))


def close(got, expected) -> bool:
    """Same structure, shape and (within the dtype's tolerance) values; NaN and inf count as 0
    and +-1e30 so that a NaN row matches a zero row of a catalogued wrong answer."""
    try:
        if isinstance(expected, (tuple, list)):
            return (isinstance(got, (tuple, list)) and len(got) == len(expected)
                    and all(close(g, e) for g, e in zip(got, expected)))
        if isinstance(expected, torch.Tensor):
            got = _as_tensor(got)
            if got is None or tuple(got.shape) != tuple(expected.shape):
                return False
            if expected.dtype == torch.bool or not (expected.is_floating_point() or got.is_floating_point()):
                return bool(torch.equal(got.to(expected.dtype), expected))
            rtol, atol = _tolerance(expected.dtype)
            g = torch.nan_to_num(got.detach().double(), nan=0.0, posinf=1e30, neginf=-1e30)
            e = torch.nan_to_num(expected.detach().double(), nan=0.0, posinf=1e30, neginf=-1e30)
            return bool(torch.allclose(g, e, rtol=rtol, atol=atol))
        if isinstance(expected, bool):
            return got is expected or got == expected
        if isinstance(expected, numbers.Integral):
            return _as_int(got) == expected
        if isinstance(expected, numbers.Real):
            return isinstance(got, numbers.Real) and math.isclose(float(got), float(expected), rel_tol=1e-6, abs_tol=1e-9)
        return bool(got == expected)
    except BaseException:                           # noqa: BLE001 - a strange output never breaks the checker
        return False


def _as_tensor(value):
    if isinstance(value, torch.Tensor):
        return value.detach()
    return None


def _as_int(value):
    if isinstance(value, bool):
        return None
    if isinstance(value, numbers.Integral):
        return int(value)
    if isinstance(value, torch.Tensor) and value.numel() == 1 and not value.is_floating_point() \
            and value.dtype != torch.bool:
        return int(value.item())
    return None


def _kind(value) -> str:
    """The type of a value as a learner would write it: 'NoneType', 'str', 'numpy.ndarray'."""
    from .wire import Opaque
    if isinstance(value, Opaque):
        return value.kind
    module = type(value).__module__.split(".")[0]
    return type(value).__name__ if module == "builtins" else f"{module}.{type(value).__name__}"


def _shape_problem(got, expected, where: str = "") -> str | None:
    """What is wrong with the output's type or shape, in a sentence (expected shapes may be told)."""
    if isinstance(expected, (tuple, list)):
        if not isinstance(got, (tuple, list)):
            return f"it returned {_kind(got)}{where}; it should return a tuple of {len(expected)} values"
        if len(got) != len(expected):
            return f"it returned {len(got)} values{where}; it should return {len(expected)}"
        for i, (g, e) in enumerate(zip(got, expected)):
            problem = _shape_problem(g, e, f" (output {i})")
            if problem:
                return problem
        return None
    if isinstance(expected, torch.Tensor):
        if not isinstance(got, torch.Tensor):
            return f"it returned {_kind(got)}{where}; it should return a torch.Tensor"
        if tuple(got.shape) != tuple(expected.shape):
            return f"its output{where} has shape {tuple(got.shape)}; it should have shape {tuple(expected.shape)}"
        return None
    if isinstance(expected, bool):
        return None if isinstance(got, bool) else f"it returned {_kind(got)}{where}; it should return True or False"
    if isinstance(expected, numbers.Integral):
        return None if _as_int(got) is not None or isinstance(got, numbers.Real) else \
            f"it returned {_kind(got)}{where}; it should return a whole number (int)"
    if isinstance(expected, numbers.Real):
        return None if isinstance(got, numbers.Real) else f"it returned {_kind(got)}{where}; it should return a number"
    return None


def _dtype_problem(got, expected, where: str = "") -> str | None:
    if isinstance(expected, (tuple, list)):
        for i, (g, e) in enumerate(zip(got, expected)):
            problem = _dtype_problem(g, e, f" (output {i})")
            if problem:
                return problem
        return None
    if isinstance(expected, torch.Tensor):
        if got.dtype != expected.dtype:
            return f"its output{where} is {str(got.dtype).replace('torch.', '')}; it should be " \
                   f"{str(expected.dtype).replace('torch.', '')}"
        return None
    if isinstance(expected, numbers.Integral) and not isinstance(expected, bool) and _as_int(got) is None:
        return f"it returned a {_kind(got)}{where}; it should return a whole number (int), e.g. with math.ceil or //"
    return None


def _value_problem(got, expected, where: str = "") -> str | None:
    """How many values differ and where the first one is: counts and indices, never values."""
    if isinstance(expected, (tuple, list)):
        for i, (g, e) in enumerate(zip(got, expected)):
            problem = _value_problem(g, e, f" of output {i}")
            if problem:
                return problem
        return None
    if close(got, expected):
        return None
    if isinstance(expected, torch.Tensor) and expected.numel() > 0:
        g = got.detach().double()
        e = expected.detach().double()
        if expected.is_floating_point():
            rtol, atol = _tolerance(expected.dtype)
            bad = ~torch.isclose(g, e, rtol=rtol, atol=atol)
        else:
            bad = g != e
        n_bad = int(bad.sum())
        first = tuple(int(i) for i in bad.nonzero()[0]) if n_bad else ()
        return (f"{n_bad} of {expected.numel()} values{where} differ from the reference "
                f"(the first at index {first})")
    return f"the value{where} differs from the reference"


# ---- a question: one function to write --------------------------------------------------------
class Question:
    """One function a learner writes, with its hidden cases, properties and known wrong answers.

    name            the function's name in the notebook (the grader looks it up by this name)
    make_cases      dice -> list[Case], expected outputs computed with the tinymoe core
    properties      Property list, checked in order after shape and dtype
    misconceptions  Misconception list: known wrong answers and their hints
    error_hints     ErrorHint list: hints for exceptions a known mistake raises
    hints           progressive hints for hint()
    section         where the notebook explains it, for messages
    points          the question's points; each case earns its share (Case.points) of them
    forbidden       the shortcuts it forbids (policy.py): dotted names (`torch.softmax`), packages,
                    methods (`.softmax`); the library's own reference (`tinymoe`) always, unless
    allowed         names it may use after all (a tinymoe helper the exercise hands out)
    """

    def __init__(self, name: str, title: str, make_cases: Callable, *, exercise: str = "",
                 section: str = "", properties=(), misconceptions=(), error_hints=(), hints=(),
                 points: float = 1.0, forbidden=(), allowed=()):
        self.name, self.title, self.make_cases = name, title, make_cases
        self.forbidden, self.allowed = tuple(forbidden), tuple(allowed)
        self.exercise, self.section = exercise, section
        self.properties = list(properties)
        self.misconceptions = list(misconceptions)
        self.error_hints = list(error_hints)
        self.hints = list(hints)
        self.points = points
        self._hints_shown = 0

    def __repr__(self) -> str:
        return f"<question {self.name!r}: {self.title}; check({self.name}), hint(), solution()>"

    # -- what the learner calls --------------------------------------------------------------
    def check(self, fn=None, seed: int | None = None) -> Result | None:
        """Run the hidden cases on `fn` (your function itself, e.g. check(safe_softmax)).
        Returns the Result, which shows the feedback as the cell's last line. Under nbgrader's
        autograder (NBGRADER_EXECUTION set) it raises AssertionError unless correct."""
        result = self.result(fn, seed=seed)
        from .hints import under_nbgrader
        if under_nbgrader():                         # nbgrader scores a test cell by whether it raises, and
            if not result.correct:                   # reads a displayed value as partial credit: print instead
                raise AssertionError(result.text)
            print(result.text)
            return None
        return result

    def hint(self, n: int | None = None) -> Note:
        """The next hint (or hint number n, from 1). Hints never give the code away."""
        if not self.hints:
            return Note(f"No hints for {self.name}", "Reread the notebook section: " + self.section)
        if n is None:
            self._hints_shown = min(self._hints_shown + 1, len(self.hints))
            n = self._hints_shown
        n = max(1, min(int(n), len(self.hints)))
        return Note(f"Hint {n} of {len(self.hints)} for {self.name}", self.hints[n - 1])

    def solution(self) -> Note:
        """The solution, only where the instructor has switched solutions on (see hints.py)."""
        from .hints import solution_note
        return solution_note(self.exercise, self.name)

    # -- the check itself ---------------------------------------------------------------------
    def result(self, fn, seed: int | None = None, sources=None) -> Result:
        """The staged check of `fn` in this process; never raises (a checker bug comes back as
        status checker_error). Shortcuts are looked for in `sources` (the notebook's cells; by
        default what IPython has run so far) and watched for while `fn` runs."""
        seed = secrets.randbits(31) if seed is None else int(seed)
        if fn is None or not callable(fn):
            return Result(self.name, INCORRECT, f"check() needs your function itself, e.g. "
                          f"check({self.name}); it was given {_kind(fn)}", stage="runs", seed=seed, points=self.points)
        from .policy import Tripwire, notebook_sources, scan_source
        try:
            static = scan_source(notebook_sources(fn) if sources is None else sources, self.name,
                                 self.forbidden, self.allowed)
        except Exception:                            # noqa: BLE001 - unreadable source: the tripwire still watches
            static = []
        tripwire = Tripwire(self.forbidden, self.allowed)

        def call(args, kwargs):
            a, k = _clone(args), _clone(kwargs)
            out = call_learner(fn, a, k, tripwire=tripwire)
            return out, not (_same(a, args) and _same(k, kwargs))

        return self.evaluate(call, seed, shortcuts=lambda: sorted(set(static) | tripwire.used))

    def evaluate(self, call: Callable, seed: int, shortcuts: Callable = lambda: []) -> Result:
        """The staged check of a learner's function reached through `call(args, kwargs) -> (output,
        changed its inputs?)`, which raises LearnerFailed when the function does: in this process
        (result) or in a sandbox (grade.py). Cases, expected values and the verdict stay here."""
        try:
            return self._run(call, seed, shortcuts)
        except BaseException as error:               # noqa: BLE001 - the checker never breaks a notebook
            if isinstance(error, KeyboardInterrupt):
                return Result(self.name, INCORRECT, "the check was interrupted before it finished "
                              "(did your function take too long?)", stage="runs", seed=seed, points=self.points)
            return Result(self.name, CHECKER_ERROR, "the checker itself failed, not your code; please tell your "
                          f"instructor ({_summary(error)}; {traceback.format_exc(limit=2).splitlines()[-1]})",
                          seed=seed, points=self.points)

    def _fail(self, stage: str, message: str, seed: int, n_cases: int, hint=None, misconception=None,
              passed: int = 0, fraction: float = 0.0) -> Result:
        step = STAGES.index(stage) + 1
        text = f"incorrect at step {step} of {len(STAGES)} ({STAGE_TITLES[stage]}): {message}."
        if passed:
            text += f" {passed} of {n_cases} cases pass every step (partial credit)."
        return Result(self.name, INCORRECT, text, stage=stage, hint=hint, misconception=misconception,
                      cases=n_cases, seed=seed, points=self.points, passed=passed, fraction=round(fraction, 6))

    def _run(self, call: Callable, seed: int, shortcuts: Callable) -> Result:
        cases = self.make_cases(Dice(seed))
        n = len(cases)
        # case index -> (stage, problem) of the first step it fails; the report is the earliest
        # step any case fails (on the first such case); each passing case earns its share
        failed: dict[int, tuple[str, str]] = {}

        # 1. runs at all (and the stub reads as "not attempted")
        outputs: dict[int, Any] = {}
        first_error = None
        for i, case in enumerate(cases):
            try:
                outputs[i], changed = call(case.args, case.kwargs)
                if changed:
                    failed[i] = ("properties", f"on {case.label}, your function changed its input tensors in place; "
                                 f"compute new tensors instead (e.g. x = x - m, not x -= m)")
            except LearnerFailed as error:
                if i == 0 and isinstance(error.error, NotImplementedError):
                    return Result(self.name, NOT_ATTEMPTED, f"not attempted yet: {self.name} still raises "
                                  f"NotImplementedError. Write its body, then run this check again.",
                                  cases=n, seed=seed, points=self.points)
                failed[i] = ("runs", f"on {case.label} it raised {error.summary}")
                if first_error is None:
                    first_error = (i, error)
        used = shortcuts()
        if used:
            from .policy import shortcut_message
            return Result(self.name, INCORRECT, shortcut_message(used), stage="runs", cases=n, seed=seed,
                          points=self.points, shortcuts=list(used), misconception="used_reference")

        # 2. output shape, 3. dtype, 4. properties, 5. values (against the core), case by case
        def call_again(*a, **k):
            return call(a, k)[0]

        for i, case in enumerate(cases):
            if i in failed:
                continue
            got = outputs[i]
            for stage, problem_of in (("shape", _shape_problem), ("dtype", _dtype_problem)):
                problem = problem_of(got, case.expected)
                if problem:
                    failed[i] = (stage, f"on {case.label}, {problem}")
                    break
            else:
                for prop in self.properties:
                    try:
                        problem = prop.test(case, got, call_again)
                    except LearnerFailed as error:
                        problem = f"re-running it for this property raised {error.summary}"
                    except Exception as error:       # noqa: BLE001 - an output the property cannot even read
                        problem = f"its output could not be checked for '{prop.name}' ({_summary(error)})"
                    if problem:
                        failed[i] = ("properties", f"on {case.label}, {problem}")
                        break
                else:
                    problem = _value_problem(got, case.expected)
                    if problem:
                        failed[i] = ("values", f"on {case.label}, {problem}")

        total = sum(c.points for c in cases) or 1.0
        passed = [i for i in range(n) if i not in failed]
        fraction = sum(cases[i].points for i in passed) / total
        if failed:
            i = min(failed, key=lambda j: (STAGES.index(failed[j][0]), j))
            stage, message = failed[i]
            if stage == "runs":                      # the first case that raised: every earlier one ran
                error = first_error[1]
                hint, misconception = self._diagnose_error(cases, [outputs[j] for j in range(i)], error.error)
                hint = hint or self._error_hint(error.summary)
            else:
                ran = sorted(outputs)
                hint, misconception = self._diagnose(cases[i], outputs[i], [cases[j] for j in ran],
                                                     [outputs[j] for j in ran])
            return self._fail(stage, message, seed, n, hint, misconception, passed=len(passed), fraction=fraction)

        return Result(self.name, CORRECT, f"correct: all {n} hidden cases pass every step "
                      f"({', '.join(STAGE_TITLES[s] for s in STAGES)}).", cases=n, seed=seed, points=self.points,
                      passed=n, fraction=1.0)

    def _diagnose(self, case: Case, got, cases: list[Case], outputs: list) -> tuple[str | None, str | None]:
        """(hint, id) of the catalogued wrong answer the learner's function behaves like: first one
        that matches it on every case, else the first that matches it on the failing case; in both
        it must differ from the right answer there. (None, None) when none does."""
        wrong_outputs = {}
        for m in self.misconceptions:
            try:
                wrong_outputs[m.id] = m.wrong(*_clone(case.args), **_clone(case.kwargs))
            except Exception:                      # noqa: BLE001 - a wrong answer may not run on this case
                continue
        candidates = [m for m in self.misconceptions if m.id in wrong_outputs
                      and close(got, wrong_outputs[m.id]) and not close(wrong_outputs[m.id], case.expected)]
        for m in candidates:
            if all(self._same_as_wrong(m, c, g) for c, g in zip(cases, outputs)):
                return m.hint, m.id
        return (candidates[0].hint, candidates[0].id) if candidates else (None, None)

    @staticmethod
    def _same_as_wrong(m: Misconception, case: Case, got) -> bool:
        try:
            return close(got, m.wrong(*_clone(case.args), **_clone(case.kwargs)))
        except Exception:                          # noqa: BLE001
            return False

    def _diagnose_error(self, cases: list[Case], outputs: list, error: BaseException):
        """(hint, id) of a catalogued wrong answer that behaves like the learner's function on every
        case so far: the same outputs where it ran (wrong on at least one), and the same kind of
        exception on the case where it raised."""
        failing = cases[len(outputs)]
        for m in self.misconceptions:
            try:
                m.wrong(*_clone(failing.args), **_clone(failing.kwargs))
                continue                             # the wrong answer runs here; the learner's did not
            except Exception as wrong_error:         # noqa: BLE001
                if type(wrong_error) is not type(error):
                    continue
            informative = False
            for case, got in zip(cases, outputs):
                try:
                    wrong = m.wrong(*_clone(case.args), **_clone(case.kwargs))
                except Exception:                    # noqa: BLE001
                    break
                if not close(got, wrong):
                    break
                informative = informative or not close(wrong, case.expected)
            else:
                if informative:
                    return m.hint, m.id
        return None, None

    def _error_hint(self, summary: str) -> str | None:
        for eh in self.error_hints:
            if re.search(eh.pattern, summary):
                return eh.hint
        return None


def _same(a, b) -> bool:
    """Equal structure and contents (NaN equal to NaN): did the learner's function leave its inputs alone?"""
    if isinstance(a, torch.Tensor):
        if not isinstance(b, torch.Tensor) or a.shape != b.shape or a.dtype != b.dtype:
            return False
        if a.is_floating_point():
            return bool(torch.equal(torch.nan_to_num(a), torch.nan_to_num(b)))
        return bool(torch.equal(a, b))
    if isinstance(a, (list, tuple)):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    return True


# ---- an exercise: a notebook's questions ----------------------------------------------------
class Exercise:
    """The questions of one exercise notebook, reachable by function name: ex.safe_softmax.check(fn)."""

    def __init__(self, name: str, title: str, notebook: str, questions: list[Question]):
        self.name, self.title, self.notebook = name, title, notebook
        self.questions = list(questions)
        for q in self.questions:
            q.exercise = name

    def __getattr__(self, item: str) -> Question:
        for q in self.__dict__.get("questions", []):
            if q.name == item:
                return q
        raise AttributeError(f"exercise {self.__dict__.get('name')!r} has no question {item!r}; "
                             f"its questions are {', '.join(q.name for q in self.__dict__.get('questions', []))}")

    def __dir__(self):
        return list(super().__dir__()) + [q.name for q in self.questions]

    def __repr__(self) -> str:
        rows = "\n".join(f"  ex.{q.name}.check({q.name})   {q.title}" for q in self.questions)
        return f"Exercise {self.name}: {self.title}\n{rows}"

    @property
    def names(self) -> list[str]:
        return [q.name for q in self.questions]
