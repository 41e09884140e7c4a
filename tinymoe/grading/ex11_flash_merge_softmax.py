"""Exercise 11, flash attention: merging two partial softmax states, and finishing one.

    merge_softmax_states(state_a, state_b)   (m, l, o) over keys A and (m, l, o) over keys B
                                             -> (m, l, o) over A and B together
    finish_softmax_state(state)              (m, l, o) -> (out, lse): out = o / l, lse = m + log l

A state is (m, l, o): m (..., T) the largest score seen, l (..., T) the sum of exp(score - m),
o (..., T, d_v) the unnormalised output, sum of exp(score - m) v. Reference: tinymoe.flash
(merge, finish), whose states the cases are made with (real tiles of scores and values).

The wrong answers: adding the states without re-basing them on the new max; re-basing by
exp(m_new - m_old) (upside down); re-basing l but not o; returning the normalised output o / l
from the merge; finishing without dividing by l, or with lse = log(l) (the max forgotten).
A merge that gives NaN when neither part has seen a key (m = -inf on both sides) is caught by a
property, since a NaN row and a zero row look alike to the value comparison.
"""
from __future__ import annotations

import torch

from ..flash import SoftmaxState, empty_state, finish, merge, update
from .checks import Case, Exercise, Misconception, Property, Question

NOTEBOOK = "notebooks/11_flash_attention_kv_cache.ipynb"


def _state(scores: torch.Tensor, v: torch.Tensor, mask: torch.Tensor) -> tuple:
    """The core's state after one tile: (m, l, o) as a plain tuple."""
    start = empty_state(tuple(scores.shape[:-1]), v.shape[-1])
    return tuple(update(start, scores, v, mask))


def _two_states(d, shape, n_a, n_b, d_v, scale=1.0, shift=0.0, empty_a=0.0, empty_rows=0.0):
    """Two states over disjoint key sets for queries of `shape`, from random scores and values.
    empty_a: share of queries whose A keys are all masked; empty_rows: share that see no key at all."""
    scores = d.randn(*shape, n_a + n_b, scale=scale, shift=shift)                 # (..., T, n_a + n_b)
    v = d.randn(*shape[:-1], n_a + n_b, d_v)                                       # (..., n_a + n_b, d_v)
    mask = torch.ones(*shape, n_a + n_b, dtype=torch.bool)
    rows = torch.rand(*shape, generator=d.generator)
    mask[..., :n_a] &= (rows >= empty_a)[..., None]
    mask &= (rows >= empty_rows)[..., None] | (empty_rows == 0)
    return (_state(scores[..., :n_a], v[..., :n_a, :], mask[..., :n_a]),
            _state(scores[..., n_a:], v[..., n_a:, :], mask[..., n_a:]))


def merge_cases(d):
    specs = [("8 queries, parts of 3 and 5 keys, d_v 4", dict(shape=(8,), n_a=3, n_b=5, d_v=4)),
             ("a (batch 2, heads 3, 4 queries) stack, parts of 4 and 2 keys",
              dict(shape=(2, 3, 4), n_a=4, n_b=2, d_v=3)),
             ("scores spread widely (the two maxes far apart)", dict(shape=(6,), n_a=2, n_b=6, d_v=2, scale=12.0)),
             ("scores near 100 (exp of a score overflows float32)", dict(shape=(5,), n_a=3, n_b=3, d_v=3, shift=100.0)),
             ("some queries saw only masked keys in part A (m = -inf there)",
              dict(shape=(10,), n_a=3, n_b=4, d_v=2, empty_a=0.5)),
             ("some queries saw no key in either part (both m = -inf)",
              dict(shape=(10,), n_a=2, n_b=3, d_v=2, empty_rows=0.4))]
    cases = []
    for label, spec in specs:
        a, b = _two_states(d, **spec)
        cases.append(Case(label, (a, b), expected=tuple(merge(SoftmaxState(*a), SoftmaxState(*b)))))
    return cases


def _no_nan(case, got, call):
    if any(torch.isnan(t).any() for t in got if isinstance(t, torch.Tensor)):
        return ("the merged state holds NaN: where neither part has seen a key, m_a = m_b = -inf and "
                "exp(-inf - (-inf)) is NaN; use 0 in place of a max of -inf in the exponents")


def _rebased(factor):
    """A merge that re-bases each part by factor(m_part, m_new) (and guards -inf like the core)."""
    def wrong(a, b):
        (m_a, l_a, o_a), (m_b, l_b, o_b) = a, b
        m = torch.maximum(m_a, m_b)
        base = torch.where(torch.isfinite(m), m, torch.zeros_like(m))
        fa, fb = factor(m_a, base), factor(m_b, base)
        fa, fb = torch.nan_to_num(fa, posinf=0.0), torch.nan_to_num(fb, posinf=0.0)
        return m, fa * l_a + fb * l_b, fa[..., None] * o_a + fb[..., None] * o_b
    return wrong


def _no_rescale(a, b):
    (m_a, l_a, o_a), (m_b, l_b, o_b) = a, b
    return torch.maximum(m_a, m_b), l_a + l_b, o_a + o_b


def _o_not_rescaled(a, b):
    m, l, _ = merge(SoftmaxState(*a), SoftmaxState(*b))
    return m, l, a[2] + b[2]


def _normalised(a, b):
    m, l, o = merge(SoftmaxState(*a), SoftmaxState(*b))
    return m, l, o / torch.where(l > 0, l, torch.ones_like(l))[..., None]


MERGE = Question(
    "merge_softmax_states", "merge two partial (m, l, o) states over disjoint keys", merge_cases,
    section=f"{NOTEBOOK}, section: Two partial states merge",
    properties=[Property("no NaN", _no_nan)],
    misconceptions=[
        Misconception("no_rescale",
                      "each part's l and o were computed relative to its own max; before adding them, multiply "
                      "each by exp(m_part - m_new) so both are relative to the new max",
                      _no_rescale),
        Misconception("rescale_upside_down",
                      "the factor that moves a sum from base m_part to base m_new is exp(m_part - m_new) (at most 1), "
                      "not exp(m_new - m_part)",
                      _rebased(lambda m_part, m_new: torch.exp(m_new - m_part))),
        Misconception("o_not_rescaled",
                      "o is a sum of exp(score - m) v, relative to the max exactly like l: re-base o with the same "
                      "factor as l",
                      _o_not_rescaled),
        Misconception("normalised_output",
                      "keep o unnormalised in a state (sum of exp(score - m) v); divide by l only when finishing",
                      _normalised),
    ],
    hints=["The new max is m = max(m_a, m_b). A sum relative to m_a becomes a sum relative to m when multiplied "
           "by exp(m_a - m).",
           "l = exp(m_a - m) l_a + exp(m_b - m) l_b, and o the same way (the factor broadcast over d_v). Where m is "
           "-inf, use 0 in its place in the exponents."],
)


# ---- finishing a state -----------------------------------------------------------------------
def finish_cases(d):
    specs = [("8 queries after 6 keys, d_v 3", dict(shape=(8,), n_a=6, n_b=1, d_v=3)),
             ("a (batch 2, heads 2, 5 queries) stack", dict(shape=(2, 2, 5), n_a=4, n_b=1, d_v=2)),
             ("scores near 50", dict(shape=(6,), n_a=5, n_b=1, d_v=2, shift=50.0)),
             ("some queries saw no key (l = 0)", dict(shape=(10,), n_a=3, n_b=1, d_v=2, empty_a=1.0, empty_rows=0.5))]
    cases = []
    for label, spec in specs:
        a, b = _two_states(d, **spec)
        state = tuple(merge(SoftmaxState(*a), SoftmaxState(*b)))
        cases.append(Case(label, (state,), expected=tuple(finish(SoftmaxState(*state)))))
    return cases


def _finish_no_nan(case, got, call):
    if any(torch.isnan(t).any() for t in got if isinstance(t, torch.Tensor)):
        return "the output holds NaN: a query that saw no key has l = 0; give it a zero output, not o / 0"


def _lse_without_max(state):
    out, lse = finish(SoftmaxState(*state))
    m = state[0]
    return out, torch.where(torch.isfinite(m), lse - m, lse)


def _not_divided(state):
    _, lse = finish(SoftmaxState(*state))
    return state[2], lse


FINISH = Question(
    "finish_softmax_state", "the output o / l and the log-sum-exp m + log l of a state", finish_cases,
    section=f"{NOTEBOOK}, section: Finishing: the output and the log-sum-exp",
    properties=[Property("no NaN", _finish_no_nan)],
    misconceptions=[
        Misconception("lse_without_max",
                      "l is a sum of exp(score - m), so log(l) is the log-sum-exp minus m: add m back",
                      _lse_without_max),
        Misconception("output_not_divided",
                      "o is unnormalised: divide it by l (the softmax denominator) to get the attention output",
                      _not_divided),
    ],
    hints=["out = o / l over the d_v axis (l broadcast), lse = m + log(l).",
           "Where l is 0 (no key seen) the output is 0 and the lse is -inf."],
)

EXERCISE = Exercise("11_flash_merge_softmax", "Flash attention: merging partial softmax states", NOTEBOOK,
                    [MERGE, FINISH])
