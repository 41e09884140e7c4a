"""What a check says back: one of three states, the step that failed, and a hint.

A check ends in one of three states (as in Kaggle's learntools):
  not_attempted  the function still raises the stub's NotImplementedError
  incorrect      it runs but fails a step; the message says which step and on what kind of input
  correct        every hidden case passes every step
(a fourth, `checker_error`, means the checker itself broke: never the learner's fault).

The steps run in the order a learner can act on: runs at all -> output shape -> dtype ->
properties -> values. Feedback names the kind of input ("a float16 batch with large scores"),
never its numbers, and never prints the expected tensor: a learner fixes a misconception, not
a mismatch in the fourth decimal.
"""
from __future__ import annotations

import html
import json
from dataclasses import asdict, dataclass

__all__ = ["Result", "Note", "STAGES", "STAGE_TITLES", "NOT_ATTEMPTED", "INCORRECT", "CORRECT",
           "CHECKER_ERROR", "render_markdown", "render_html"]

NOT_ATTEMPTED, INCORRECT, CORRECT, CHECKER_ERROR = "not_attempted", "incorrect", "correct", "checker_error"
STAGES = ("runs", "shape", "dtype", "properties", "values")
STAGE_TITLES = {"runs": "runs at all", "shape": "output shape", "dtype": "dtype",
                "properties": "properties", "values": "values"}
_ICONS = {CORRECT: "✅", INCORRECT: "❌", NOT_ATTEMPTED: "⬜", CHECKER_ERROR: "⚠️"}
_COLOURS = {CORRECT: "#2e7d32", INCORRECT: "#c62828", NOT_ATTEMPTED: "#616161", CHECKER_ERROR: "#8d6e00"}


@dataclass
class Result:
    """The outcome of checking one function. `message` and `hint` are safe to show a learner."""

    question: str
    status: str
    message: str
    stage: str | None = None          # the step that failed (one of STAGES), None when correct
    hint: str | None = None           # the misconception hint, when a known wrong answer matched
    misconception: str | None = None  # its id in the catalogue (for tests and the gradebook)
    cases: int = 0                    # hidden cases run
    seed: int | None = None           # the hidden cases' seed (kept for the instructor, not shown)
    points: float = 1.0
    passed: int = 0                   # cases that pass every step
    fraction: float = 0.0             # their share of the cases' weights: the partial credit
    shortcuts: list | None = None     # forbidden names it used (then it scores 0)

    @property
    def correct(self) -> bool:
        return self.status == CORRECT

    @property
    def score(self) -> float:
        if self.correct:
            return self.points
        if self.status != INCORRECT or self.shortcuts:
            return 0.0
        return round(self.points * max(0.0, min(1.0, float(self.fraction))), 2)

    @property
    def text(self) -> str:
        """The learner-facing feedback as plain text."""
        lines = [f"{_ICONS.get(self.status, '')} {self.question}: {self.message}"]
        if self.hint:
            lines.append(f"Hint: {self.hint}")
        return "\n".join(lines)

    def __repr__(self) -> str:           # what a notebook cell shows as plain text
        return self.text

    def _repr_html_(self) -> str:        # what JupyterLab shows
        colour = _COLOURS.get(self.status, "#616161")
        body = f"<b>{_ICONS.get(self.status, '')} <code>{html.escape(self.question)}</code></b>: {html.escape(self.message)}"
        if self.hint:
            body += f"<br><i>Hint:</i> {html.escape(self.hint)}"
        return f'<div style="border-left: 4px solid {colour}; padding: 4px 10px; margin: 4px 0">{body}</div>'

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, line: str) -> "Result":
        data = json.loads(line)
        return cls(**{k: data[k] for k in cls.__dataclass_fields__ if k in data})


class Note:
    """A short text shown as it is (a hint, a solution, a message), in plain text or HTML."""

    def __init__(self, title: str, body: str, code: bool = False):
        self.title, self.body, self.code = title, body, code

    def __repr__(self) -> str:
        return f"{self.title}\n{self.body}" if self.title else self.body

    def _repr_html_(self) -> str:
        body = (f"<pre>{html.escape(self.body)}</pre>" if self.code else html.escape(self.body))
        return f'<div style="border-left: 4px solid #1565c0; padding: 4px 10px"><b>{html.escape(self.title)}</b><br>{body}</div>'


def render_markdown(student: str, exercise: str, results: list[Result], notes: list[str],
                    total: float, maximum: float) -> str:
    """A student's feedback file: score, one line per check, and what went wrong running the notebook."""
    lines = [f"# Feedback: {exercise}", "", f"Submission: `{student}`", "",
             f"**Score: {total:g} / {maximum:g}**", ""]
    for r in results:
        lines.append(f"- {_ICONS.get(r.status, '')} **`{r.question}`** ({r.status.replace('_', ' ')}, "
                     f"{r.score:g}/{r.points:g}): {r.message}")
        if r.hint:
            lines.append(f"  - Hint: {r.hint}")
    if notes:
        lines += ["", "## Running your notebook", ""] + [f"- {n}" for n in notes]
    return "\n".join(lines) + "\n"


def render_html(student: str, exercise: str, results: list[Result], notes: list[str],
                total: float, maximum: float) -> str:
    """The same feedback as a small stand-alone HTML page."""
    e = html.escape
    rows = []
    for r in results:
        hint = f"<br><i>Hint:</i> {e(r.hint)}" if r.hint else ""
        rows.append(f'<li style="border-left: 4px solid {_COLOURS.get(r.status, "#616161")}; padding-left: 8px; '
                    f'margin: 6px 0">{_ICONS.get(r.status, "")} <b><code>{e(r.question)}</code></b> '
                    f'({e(r.status.replace("_", " "))}, {r.score:g}/{r.points:g}): {e(r.message)}{hint}</li>')
    notes_html = ""
    if notes:
        notes_html = "<h2>Running your notebook</h2><ul>" + "".join(f"<li>{e(n)}</li>" for n in notes) + "</ul>"
    return (f"<!DOCTYPE html>\n<html><head><meta charset=\"utf-8\"><title>Feedback: {e(exercise)}</title></head>"
            f"<body style=\"font-family: sans-serif; max-width: 50em\"><h1>Feedback: {e(exercise)}</h1>"
            f"<p>Submission: <code>{e(student)}</code></p><p><b>Score: {total:g} / {maximum:g}</b></p>"
            f"<ul style=\"list-style: none; padding-left: 0\">{''.join(rows)}</ul>{notes_html}</body></html>\n")
