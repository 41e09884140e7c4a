"""Exercise 05, grouped-query attention: n_kv_heads key/value heads serve n_heads query heads.

    repeat_kv(kv, n_heads)     (batch, n_kv_heads, T, D) -> (batch, n_heads, T, D), each kv head
                               repeated for its group of consecutive query heads (repeat-interleave)
    grouped_query_attention(x, W_q, W_k, W_v, W_o, n_heads, n_kv_heads)   causal GQA, no bias

Reference: tinymoe.multihead.MultiHeadAttention, whose rule is "query head h reads kv head
h // group_size" (group_size = n_heads // n_kv_heads). The wrong answer that matters: tiling
(kv heads 0, 1, 0, 1) instead of repeat-interleave (0, 0, 1, 1), which silently pairs query heads
with the wrong keys; MHA (group 1) and MQA (one kv head) cannot tell the two apart.
"""
from __future__ import annotations

import torch

from ..config import ModelConfig
from .checks import Case, Exercise, Misconception, Property, Question
from .ex02_multi_head import _causal_in_x, _core_attention, _finite, attention_from_parts

NOTEBOOK = "notebooks/05_grouped_query_attention.ipynb"
TILE_HINT = ("GQA heads repeated in the wrong order: tiling gives kv heads 0, 1, 0, 1, but consecutive query "
             "heads form a group and share one kv head: 0, 0, 1, 1. Use repeat_interleave(group_size, dim=1), "
             "not repeat")


def kv_of_query_head(n_heads: int, n_kv_heads: int) -> torch.Tensor:
    """The core's rule (tinymoe/multihead.py): query head h reads kv head h // group_size. A test
    holds this to the core's GQA forward pass."""
    return torch.arange(n_heads) // (n_heads // n_kv_heads)


# ---- repeat_kv ---------------------------------------------------------------------------------
def repeat_cases(d):
    specs = [("2 kv heads serving 4 query heads", (1, 2, 3, 4), 4),
             ("2 kv heads serving 6 query heads (groups of 3), batch 2", (2, 2, 5, 3), 6),
             ("4 kv heads serving 8 query heads", (1, 4, 2, 2), 8),
             ("multi-query attention: 1 kv head for 5 query heads", (2, 1, 4, 3), 5),
             ("multi-head attention: 3 kv heads for 3 query heads", (1, 3, 3, 2), 3)]
    cases = []
    for label, shape, n_heads in specs:
        kv = d.randn(*shape)
        cases.append(Case(label, (kv, n_heads), expected=kv[:, kv_of_query_head(n_heads, shape[1])]))
    return cases


def _copies_of_kv_heads(case, got, call):
    kv, n_heads = case.args
    group = n_heads // kv.shape[1]
    uses = torch.zeros(kv.shape[1], dtype=torch.long)
    for h in range(n_heads):
        match = [j for j in range(kv.shape[1]) if torch.equal(got[:, h], kv[:, j])]
        if not match:
            return f"query head {h}'s keys/values are not a copy of any kv head"
        uses[match[0]] += 1
    if not (uses == group).all():
        return "some kv heads serve more query heads than others; each serves exactly n_heads // n_kv_heads"


REPEAT_KV = Question(
    "repeat_kv", "expand n_kv_heads key/value heads to n_heads query heads", repeat_cases,
    section=f"{NOTEBOOK}, section: Grouped-query attention: two query heads per key/value head",
    properties=[Property("finite", _finite), Property("copies of kv heads", _copies_of_kv_heads)],
    misconceptions=[
        Misconception("gqa_tile_not_interleave", TILE_HINT,
                      lambda kv, n_heads: kv.repeat(1, n_heads // kv.shape[1], 1, 1)),
    ],
    hints=["group_size = n_heads // n_kv_heads query heads share each kv head.",
           "Query heads 0 .. group_size-1 read kv head 0, the next group_size read kv head 1, and so on."],
)


# ---- grouped_query_attention -------------------------------------------------------------------
def gqa_cases(d):
    specs = [("d_model 8, 4 query heads sharing 2 kv heads", 1, 4, 8, 4, 2, 2),
             ("a batch of 2, 6 query heads sharing 3 kv heads", 2, 5, 6, 6, 3, 2),
             ("6 query heads sharing 2 kv heads (groups of 3)", 1, 4, 6, 6, 2, 2),
             ("multi-query attention: 4 query heads, 1 kv head", 2, 3, 8, 4, 1, 2),
             ("multi-head attention: 3 query heads, 3 kv heads", 1, 4, 6, 3, 3, 2),
             ("a single position", 1, 1, 8, 4, 2, 2)]
    cases = []
    for label, batch, seq_len, d_model, n_heads, n_kv_heads, head_dim in specs:
        config = ModelConfig(d_model=d_model, n_heads=n_heads, n_kv_heads=n_kv_heads, head_dim=head_dim,
                             position="none")
        _, x, trace, weights = _core_attention(d, config, batch, seq_len)
        cases.append(Case(label, (x, *weights, n_heads, n_kv_heads), expected=trace["attn.out"]))
    return cases


GROUPED_QUERY_ATTENTION = Question(
    "grouped_query_attention", "causal grouped-query attention from W_q, W_k, W_v, W_o", gqa_cases,
    forbidden=("torch.nn.functional.scaled_dot_product_attention", "torch.nn.MultiheadAttention",
               "torch.nn.functional.multi_head_attention_forward"),
    section=f"{NOTEBOOK}, section: Grouped-query attention: two query heads per key/value head",
    properties=[Property("finite", _finite), Property("causal", _causal_in_x)],
    misconceptions=[
        Misconception("gqa_tile_not_interleave", TILE_HINT,
                      lambda *a: attention_from_parts(*a, kv_order="tile")),
        Misconception("heads_split_strided",
                      "head h owns a contiguous block of the projection: reshape to (batch, seq_len, heads, "
                      "head_dim), not (batch, seq_len, head_dim, heads)",
                      lambda *a: attention_from_parts(*a, split="strided")),
        Misconception("no_scale", "scale each head's scores by 1/sqrt(head_dim) before the softmax",
                      lambda *a: attention_from_parts(*a, scale=1.0)),
        Misconception("causal_mask_missing", "a decoder's attention is causal: hide the keys after each query",
                      lambda *a: attention_from_parts(*a, causal=False)),
    ],
    hints=["W_k and W_v project to n_kv_heads heads: head_dim = W_q.shape[0] // n_heads, and "
           "W_k.shape[0] == n_kv_heads * head_dim.",
           "Split q into n_heads heads and k, v into n_kv_heads heads, expand k and v with your repeat_kv, then "
           "attend exactly as in multi-head attention."],
)

EXERCISE = Exercise("05_gqa", "Grouped-query attention", NOTEBOOK, [REPEAT_KV, GROUPED_QUERY_ATTENTION])
