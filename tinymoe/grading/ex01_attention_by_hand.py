"""Exercise 01, attention by hand: a softmax that never overflows, then causal attention.

    safe_softmax(x)                 softmax over the last axis, exp(x - max) / sum(exp(x - max))
    attention(q, k, v, causal)      softmax(q k^T / sqrt(d_k) + mask) v

Reference: tinymoe.attention (safe_softmax, scaled_dot_product_attention). The wrong answers
below are the classic ones: no max shift, one max for the whole tensor, softmax over the wrong
axis, no 1/sqrt(d_k) (or 1/d_k, or 1/sqrt(d_v)), a causal mask off by one or flipped, the mask
applied after the softmax, and K used untransposed (the scores come out transposed).
"""
from __future__ import annotations

import math

import torch

from ..attention import naive_softmax, safe_softmax as core_softmax, scaled_dot_product_attention
from .checks import Case, ErrorHint, Exercise, Misconception, Property, Question

NOTEBOOK = "notebooks/01_attention_by_hand.ipynb"


# ---- safe_softmax ------------------------------------------------------------------------------
def softmax_cases(d):
    cases = []

    def add(label, x):
        cases.append(Case(label, (x,), expected=core_softmax(x, dim=-1), info={"mask": torch.isneginf(x)}))

    t, k = d.randint(3, 6), d.randint(4, 7)
    add(f"a ({t}, {k}) matrix of ordinary scores", d.randn(t, k, scale=2.0))
    add("a (batch, heads, queries, keys) stack of score matrices", d.randn(2, 3, 4, 5, scale=2.0))
    add("rows with a single key", d.randn(3, 1))
    x = d.randn(4, 6, scale=2.0)
    hidden = torch.rand(4, 6, generator=d.generator) < 0.4
    hidden[:, d.randint(0, 5)] = False                     # every row keeps at least one key
    add("rows with some scores set to -inf (masked keys)", x.masked_fill(hidden, float("-inf")))
    add("scores near +1000 (exp overflows unless you shift by the max)", d.randn(3, 5, scale=3.0, shift=1000.0))
    add("scores near -1000 (exp underflows to 0/0 unless you shift)", d.randn(3, 5, scale=3.0, shift=-1000.0))
    add("rows on very different scales (one near 0, one near 1000)",
        torch.stack([d.randn(5, scale=2.0), d.randn(5, scale=2.0, shift=1000.0)]))
    add("float16 scores up to about 25 (float16 exp overflows past 11)",
        d.randn(4, 6, scale=3.0, shift=14.0, dtype=torch.float16))
    return cases


def _finite(what):
    def test(case, got, call):
        if not torch.isfinite(got).all():
            return f"it returned NaN or inf; {what}"
    return test


def _weights_in_unit_interval(case, got, call):
    g = got.double()
    if (g < -1e-6).any() or (g > 1 + 1e-3).any():
        return "some weights fall outside [0, 1]; every softmax weight is a share of the row"


def _rows_sum_to_one(case, got, call):
    tol = 2e-2 if got.dtype in (torch.float16, torch.bfloat16) else 1e-4
    if not torch.allclose(got.double().sum(-1), torch.ones(got.shape[:-1], dtype=torch.float64), atol=tol):
        return "its rows do not sum to 1; the weights of one query over its keys must add up to 1"


def _masked_get_zero(case, got, call):
    if (got.double()[case.info["mask"]].abs() > 1e-6).any():
        return "a score of -inf got a nonzero weight; exp(-inf) = 0, a masked key gets none"


SAFE_SOFTMAX = Question(
    "safe_softmax", "softmax over the last axis that never overflows", softmax_cases,
    forbidden=("torch.softmax", "torch.nn.functional.softmax", "torch.special.softmax", ".softmax",
               "torch.nn.Softmax", "torch.log_softmax", "torch.nn.functional.log_softmax", ".log_softmax"),
    section=f"{NOTEBOOK}, section: The safe softmax: subtract the row's maximum first",
    properties=[
        Property("finite", _finite("a safe softmax stays finite for any finite scores: subtract each row's max first")),
        Property("weights in [0, 1]", _weights_in_unit_interval),
        Property("rows sum to 1", _rows_sum_to_one),
        Property("masked keys get zero", _masked_get_zero),
    ],
    misconceptions=[
        Misconception("softmax_wrong_axis",
                      "your weights sum to 1 down each column, not along each row: the softmax runs over the keys, "
                      "the last axis (dim=-1), so each query's weights add up to 1",
                      lambda x: core_softmax(x, dim=-2)),
        Misconception("no_max_shift",
                      "exp of a large score overflows (inf / inf = NaN), of a very negative one underflows (0 / 0): "
                      "subtract each row's max before exp; softmax(x) = softmax(x - c) for any constant c",
                      lambda x: naive_softmax(x, dim=-1)),
        Misconception("global_max_shift",
                      "you subtract one max for the whole tensor; a row far below it underflows to 0 / 0. Subtract "
                      "each row's own max: x.amax(dim=-1, keepdim=True)",
                      lambda x: naive_softmax(x - x.max(), dim=-1)),
    ],
    hints=[
        "softmax(x)_j = exp(x_j) / sum_i exp(x_i), taken along the last axis (dim=-1) so every row sums to 1.",
        "Shifting a row by a constant does not change its softmax. Which constant makes every exponent <= 0?",
        "Keep the shape with keepdim=True so the row max and the row sum broadcast back over the row; "
        "stay in the input's dtype.",
    ],
)


# ---- attention ---------------------------------------------------------------------------------
def attention_cases(d):
    cases = []

    def add(label, q, k, v, causal):
        out, _ = scaled_dot_product_attention(q, k, v, causal=causal)
        cases.append(Case(label, (q, k, v), {"causal": causal}, expected=out, info={"causal": causal}))

    t = d.randint(4, 6)
    add(f"one causal sequence (seq_len {t}, d_k 4, d_v 3)", d.randn(t, 4), d.randn(t, 4), d.randn(t, 3), True)
    add("a causal batch shaped (batch 2, heads 3, seq_len 5, d_k 6) with d_v 5",
        d.randn(2, 3, 5, 6), d.randn(2, 3, 5, 6), d.randn(2, 3, 5, 5), True)
    add("causal=False with 3 queries and 7 keys (cross-attention, d_k 4, d_v 2)",
        d.randn(3, 4), d.randn(7, 4), d.randn(7, 2), False)
    add("a causal sequence of a single position", d.randn(1, 1, 4), d.randn(1, 1, 4), d.randn(1, 1, 3), True)
    add("a causal sequence with d_k 64", d.randn(5, 64), d.randn(5, 64), d.randn(5, 3), True)
    add("a causal sequence with scores in the hundreds (float32 exp overflows past 88)",
        d.randn(4, 8, scale=200.0), d.randn(4, 8), d.randn(4, 3), True)
    # Every visible score near -400: a finite mask value (-100, -1e2) would then outweigh them all,
    # whatever the seed, so "masked_fill(..., -100)" never passes by luck.
    add("a causal sequence whose every score is far below -100",
        -d.randn(5, 16, scale=0.2, shift=10.0), d.randn(5, 16, scale=0.2, shift=10.0), d.randn(5, 3), True)
    return cases


def _first_position_sees_itself(case, got, call):
    if case.info["causal"]:
        v = case.args[2]
        if not torch.allclose(got[..., 0, :].double(), v[..., 0, :].double(), rtol=1e-4, atol=1e-4):
            return ("the first position's output is not its own value vector; with causal=True the first query "
                    "sees only key 0, so all its weight is on v[0]")


def _causal(case, got, call):
    q, k, v = case.args
    if not case.info["causal"] or q.shape[-2] < 2:
        return None
    k2, v2 = k.clone(), v.clone()
    k2[..., -1, :] += 3.0
    v2[..., -1, :] -= 5.0
    other = call(q, k2, v2, causal=True)
    if not torch.allclose(other[..., :-1, :].double(), got[..., :-1, :].double(), rtol=1e-4, atol=1e-4):
        return ("changing the last position's key and value changed the outputs of earlier positions; with "
                "causal=True a query must not see any key after it")


def _constant_values(case, got, call):
    q, k, v = case.args
    same = v[..., :1, :].expand_as(v).clone()
    out = call(q, k, same, causal=case.info["causal"])
    if not torch.allclose(out.double(), same[..., :1, :].expand(out.shape).double(), rtol=1e-4, atol=1e-4):
        return ("when every key carries the same value vector, every output must equal it; it does not, so a "
                "row of weights does not sum to 1 over the keys it may see")


def _with_mask(q, k, v, keep):
    """Attention with a hand-made (T_q, T_k) mask, through the core."""
    return scaled_dot_product_attention(q, k, v, mask=keep)[0]


def _shifted_causal(diagonal):
    def wrong(q, k, v, causal=True):
        if not causal:
            return scaled_dot_product_attention(q, k, v)[0]
        keep = torch.ones(q.shape[-2], k.shape[-2], dtype=torch.bool).tril(diagonal)
        return _with_mask(q, k, v, keep)
    return wrong


def _flipped_causal(q, k, v, causal=True):
    if not causal:
        return scaled_dot_product_attention(q, k, v)[0]
    return _with_mask(q, k, v, torch.ones(q.shape[-2], k.shape[-2], dtype=torch.bool).triu())


def _softmax_over_queries(q, k, v, causal=True):
    scores = q @ k.transpose(-2, -1) / math.sqrt(q.shape[-1])
    keep = torch.ones(scores.shape[-2:], dtype=torch.bool).tril() if causal else None
    return core_softmax(scores, dim=-2, mask=keep) @ v


def _mask_after_softmax(q, k, v, causal=True):
    weights = core_softmax(q @ k.transpose(-2, -1) / math.sqrt(q.shape[-1]), dim=-1)
    if causal:
        weights = weights * torch.ones(weights.shape[-2:]).tril()
    return weights @ v


def _finite_mask(q, k, v, causal=True):
    scores = q @ k.transpose(-2, -1) / math.sqrt(q.shape[-1])
    if causal:
        scores = scores.masked_fill(~torch.ones(scores.shape[-2:], dtype=torch.bool).tril(), -100.0)
    return core_softmax(scores, dim=-1) @ v


def _transposed_scores(q, k, v, causal=True):
    scores = k @ q.transpose(-2, -1) / math.sqrt(q.shape[-1])          # (T_k, T_q): the transpose
    keep = torch.ones(scores.shape[-2:], dtype=torch.bool).tril() if causal else None
    return core_softmax(scores, dim=-1, mask=keep) @ v                  # raises unless T_q == T_k


ATTENTION = Question(
    "attention", "causal scaled dot-product attention", attention_cases,
    forbidden=("torch.nn.functional.scaled_dot_product_attention", "torch.nn.MultiheadAttention",
               "torch.nn.functional.multi_head_attention_forward"),
    section=f"{NOTEBOOK}, sections: Scores: every query against every key; The causal mask: no peeking ahead",
    properties=[
        Property("finite", _finite("attention of finite inputs is finite; use your safe softmax")),
        Property("first position attends to itself", _first_position_sees_itself),
        Property("causal", _causal),
        Property("weights sum to 1", _constant_values),
    ],
    misconceptions=[
        Misconception("no_scale",
                      "scale the scores by 1/sqrt(d_k) before the softmax; without it the scores grow with d_k and "
                      "the softmax saturates towards a one-hot",
                      lambda q, k, v, causal=True: scaled_dot_product_attention(q, k, v, causal=causal, scale=1.0)[0]),
        Misconception("scale_not_sqrt",
                      "divide by sqrt(d_k), not by d_k: a dot product of d_k unit-variance terms has standard "
                      "deviation sqrt(d_k)",
                      lambda q, k, v, causal=True: scaled_dot_product_attention(
                          q, k, v, causal=causal, scale=1.0 / q.shape[-1])[0]),
        Misconception("scale_by_d_v",
                      "scale by 1/sqrt(d_k), the size of q and k (whose dot product you take), not by d_v, the "
                      "size of the values",
                      lambda q, k, v, causal=True: scaled_dot_product_attention(
                          q, k, v, causal=causal, scale=1.0 / math.sqrt(v.shape[-1]))[0]),
        Misconception("softmax_wrong_axis",
                      "your softmax runs over the queries (dim=-2); each query's weights must sum to 1 over the "
                      "keys, the last axis (dim=-1)",
                      _softmax_over_queries),
        Misconception("causal_mask_sees_next",
                      "your causal mask is off by one: each query also sees the next key. Query i may see keys "
                      "0..i: keep j <= i (torch.tril with diagonal=0)",
                      _shifted_causal(1)),
        Misconception("causal_mask_hides_self",
                      "your causal mask is off by one: a query does not see its own key, so the first query sees "
                      "nothing. Query i may see keys 0..i, itself included (diagonal=0, not -1)",
                      _shifted_causal(-1)),
        Misconception("causal_mask_flipped",
                      "your causal mask is upside down: it keeps the future and hides the past. Keep j <= i, the "
                      "lower triangle (torch.tril)",
                      _flipped_causal),
        Misconception("causal_mask_missing",
                      "with causal=True, hide the keys after each query: set their scores to -inf before the "
                      "softmax",
                      lambda q, k, v, causal=True: scaled_dot_product_attention(q, k, v)[0]),
        Misconception("mask_after_softmax",
                      "mask the scores (-inf) before the softmax, not the weights after it: zeroing weights "
                      "afterwards leaves rows that no longer sum to 1",
                      _mask_after_softmax),
        Misconception("finite_mask_value",
                      "hide future keys with -inf (float('-inf')), not a finite number like -100: when every "
                      "visible score is lower still, the 'hidden' keys win the softmax",
                      _finite_mask),
        Misconception("transposed_k",
                      "your scores come out transposed (k q^T): row i must hold query i's dot product with every "
                      "key, scores = q @ k.transpose(-2, -1), shape (T_q, T_k)",
                      _transposed_scores),
    ],
    error_hints=[
        ErrorHint(r"cannot be multiplied|must match the size of tensor|size mismatch|Expected size",
                  "q @ k only lines up with k transposed on its last two axes: q @ k.transpose(-2, -1) is "
                  "(..., T_q, T_k); then weights @ v is (..., T_q, d_v)"),
        ErrorHint(r"\.T|\bmT\b|permute|transpose", "use k.transpose(-2, -1): .T reverses every axis of a batched tensor"),
    ],
    hints=[
        "scores = q @ k^T / sqrt(d_k), shape (..., T_q, T_k); weights = softmax over the keys; out = weights @ v.",
        "For causal=True, query i may see keys 0..i: torch.ones(T_q, T_k).tril() is that pattern. Set the other "
        "scores to -inf BEFORE the softmax (masked_fill).",
        "d_v may differ from d_k: the output has the values' last size. Reuse your safe_softmax.",
    ],
)

EXERCISE = Exercise("01_attention_by_hand", "Attention by hand", NOTEBOOK, [SAFE_SOFTMAX, ATTENTION])
