"""The grader's side inside a submission's kernel: check one function by name, write one JSON line.

After a submission's own cells have run, the grader sends one cell per question:

    grade_into("01_attention_by_hand", "safe_softmax", "/tmp/.../results.jsonl", "TOKEN", globals())

It looks the learner's function up by name in the notebook's namespace (so a renamed or deleted
function is reported as missing, not as a crash), runs the same hidden check a learner runs,
and appends `TOKEN {result json}` to the results file. The grader reads only that file, with a
size cap, so nothing the notebook printed or changed about sys.stdout can forge or hide a score.
Before the first such cell the grader drops every tinymoe module from sys.modules, so the
references and checks are imported afresh rather than taken from whatever the notebook patched.
"""
from __future__ import annotations

from .feedback import CHECKER_ERROR, INCORRECT, Result

__all__ = ["grade_into", "PURGE_SOURCE"]

# Sent as the first grading cell: forget any tinymoe module the submission imported or patched.
PURGE_SOURCE = ("import sys as _tinymoe_sys\n"
                "for _tinymoe_name in [m for m in list(_tinymoe_sys.modules) if m == 'tinymoe' or m.startswith('tinymoe.')]:\n"
                "    del _tinymoe_sys.modules[_tinymoe_name]\n")


def grade_into(exercise_name: str, question_name: str, path: str, token: str, namespace: dict) -> Result:
    """Check the function `question_name` found in `namespace`; append the result to `path`."""
    try:
        from . import exercise
        question = getattr(exercise(exercise_name), question_name)
        fn = namespace.get(question_name)
        if fn is None:
            result = Result(question_name, INCORRECT, f"there is no function named {question_name} in the notebook "
                            f"(was it renamed or deleted?); the grader calls it by that name", stage="runs",
                            points=question.points)
        elif not callable(fn):
            result = Result(question_name, INCORRECT, f"{question_name} is a {type(fn).__name__}, not a function",
                            stage="runs", points=question.points)
        else:
            result = question.result(fn)
    except BaseException as error:                   # noqa: BLE001 - always leave a line for the grader
        result = Result(question_name, CHECKER_ERROR, f"the checker failed: {type(error).__name__}: {error}"[:300])
    with open(path, "a", encoding="utf-8") as f:
        f.write(f"{token} {result.to_json()}\n")
    return result
