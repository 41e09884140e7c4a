"""tinymoe.grading: exercises with hidden checks, and the instructor's release-and-grade flow.

A separate concept from the model core: it imports the core (the core's functions are the
reference every check compares against) and the core never imports it.

In an exercise notebook:

    from tinymoe.grading import exercise
    ex = exercise("01_attention_by_hand")
    ...
    ex.safe_softmax.check(safe_softmax)    # not attempted / incorrect (+ hint) / correct
    ex.safe_softmax.hint()                 # the next hint
    ex.safe_softmax.solution()             # only where the instructor switched solutions on

For the instructor (see exercises/README.md, "Teaching with tinymoe"):

    python -m tinymoe.grading build                      # source .py twins -> source .ipynb
    python -m tinymoe.grading release                    # source -> exercises/release (no solutions)
    python -m tinymoe.grading grade 01_attention_by_hand submissions/ --out grades/   # sandboxed (grade.py)
    python -m tinymoe.grading export grades/ --overrides overrides.csv               # no regrade
"""
from __future__ import annotations

import importlib

from .checks import Case, Exercise, Misconception, Property, Question
from .feedback import CORRECT, INCORRECT, NOT_ATTEMPTED, Result

__all__ = ["exercise", "EXERCISES", "Exercise", "Question", "Case", "Misconception", "Property",
           "Result", "CORRECT", "INCORRECT", "NOT_ATTEMPTED"]

# exercise name -> the module (in this package) that defines its questions
EXERCISES = {
    "01_attention_by_hand": "ex01_attention_by_hand",
    "02_multi_head": "ex02_multi_head",
    "03_rope": "ex03_rope",
    "04_rmsnorm": "ex04_rmsnorm",
    "05_gqa": "ex05_gqa",
    "06_moe_gating": "ex06_moe_gating",
    "07_nsa_selection": "ex07_nsa_selection",
    "08_routing_alignment": "ex08_routing_alignment",
    "10_chunked_mask": "ex10_chunked_mask",
    "11_kv_cache_decode": "ex11_kv_cache_decode",
    "11_flash_merge_softmax": "ex11_flash_merge_softmax",
    "12_mixture_of_depths": "ex12_mixture_of_depths",
}


def exercise(name: str) -> Exercise:
    """The exercise called `name` ("01_attention_by_hand"), or the one whose number is `name` ("01")."""
    matches = [full for full in EXERCISES if full == name or full.split("_", 1)[0] == str(name).zfill(2)]
    if len(matches) != 1:
        raise KeyError(f"no exercise {name!r}; the exercises are {', '.join(EXERCISES)}")
    module = importlib.import_module(f"{__name__}.{EXERCISES[matches[0]]}")
    return module.EXERCISE
