"""Exercise 07, native sparse attention: which key blocks each query selects.

    group_importance(p_slc, n_kv_heads)          sum the block importances of the query heads
                                                 that share a kv head (consecutive heads form a group)
    select_blocks(importance, select_block_size, top_n)
                                                 (..., T, n_sel) bool: block j selected by query t

Selection (Yuan et al. 2025, NSA): only blocks that have begun by the query (j * l' <= t) can be
chosen; block 0 and the two local blocks (the query's own and the one before it) are always
kept; the rest of the top_n places go to the most important blocks.

Reference: tinymoe.nsa (block_importance, choose_blocks). The wrong answers: blocks from the
future allowed, the always-kept blocks forgotten or given places beyond top_n, one local block
instead of two, and for the groups, heads grouped by tiling or averaged instead of summed.
"""
from __future__ import annotations

import torch

from ..nsa import block_importance, choose_blocks
from .checks import Case, Exercise, Misconception, Property, Question
from .ex05_gqa import TILE_HINT

NOTEBOOK = "notebooks/07_native_sparse_attention.ipynb"


# ---- group_importance ----------------------------------------------------------------------------
def group_cases(d):
    specs = [("4 query heads sharing 2 kv heads", (1, 4, 6, 3), 2),
             ("6 query heads sharing 3 kv heads, batch 2", (2, 6, 5, 4), 3),
             ("8 query heads sharing 2 kv heads (groups of 4)", (1, 8, 4, 5), 2),
             ("multi-query: 4 query heads, 1 kv head", (1, 4, 5, 2), 1),
             ("one kv head per query head", (2, 3, 4, 3), 3)]
    cases = []
    for label, shape, n_kv_heads in specs:
        p_slc = torch.rand(*shape, generator=d.generator)
        identity = torch.eye(shape[-1])                       # selection blocks = compressed blocks
        cases.append(Case(label, (p_slc, n_kv_heads), expected=block_importance(p_slc, identity, n_kv_heads)))
    return cases


def _group_total(case, got, call):
    p_slc, _ = case.args
    if not torch.allclose(got.double().sum(1), p_slc.double().sum(1), rtol=1e-5, atol=1e-5):
        return ("the importances over all groups do not add up to those over all query heads; each query head's "
                "importance is counted once, in its own group's sum")


GROUP_IMPORTANCE = Question(
    "group_importance", "sum block importances over each kv head's group of query heads", group_cases,
    section=f"{NOTEBOOK}, section: Selecting blocks, step 1: block scores from the compressed attention",
    properties=[Property("every head counted once", _group_total)],
    misconceptions=[
        Misconception("gqa_tile_not_interleave", TILE_HINT.replace("Use repeat_interleave(group_size, dim=1), not "
                                                                  "repeat", "Reshape to (batch, n_kv_heads, group_size, "
                                                                  "T, n_sel) and sum over the group axis"),
                      lambda p, n_kv: p.reshape(p.shape[0], -1, n_kv, *p.shape[2:]).sum(1)),
        Misconception("group_mean_not_sum",
                      "sum the group's importances (NSA eq. 10), do not average them",
                      lambda p, n_kv: p.reshape(p.shape[0], n_kv, -1, *p.shape[2:]).mean(2)),
    ],
    hints=["Query heads g * group_size .. (g + 1) * group_size - 1 share kv head g (group_size = n_heads // n_kv_heads).",
           "p_slc.reshape(B, n_kv_heads, group_size, T, n_sel), then sum over the group axis."],
)


# ---- select_blocks -----------------------------------------------------------------------------
def _mask_of(blocks, valid, n_sel):
    mask = torch.zeros(*blocks.shape[:-1], n_sel, dtype=torch.bool)
    return mask.scatter(-1, blocks, valid)


def _core_select(importance, select_block_size, top_n, **kw):
    blocks, valid = choose_blocks(importance, select_block_size, top_n, **kw)
    return _mask_of(blocks, valid, importance.shape[-1])


def select_cases(d):
    specs = [("12 queries, blocks of 3, top_n 3", (12, 4), 3, 3),
             ("a (batch 2, kv heads 2) stack of 16 queries, blocks of 2, top_n 4", (2, 2, 16, 8), 2, 4),
             ("10 queries, blocks of 4 (the last cut short), top_n 5 (more than there are)", (10, 3), 4, 5),
             ("20 queries, blocks of 4, top_n 3", (20, 5), 4, 3),
             ("32 queries, blocks of 4, top_n 5", (32, 8), 4, 5)]
    cases = []
    for label, shape, block, top_n in specs:
        importance = torch.rand(*shape, generator=d.generator)
        cases.append(Case(label, (importance, block, top_n), expected=_core_select(importance, block, top_n)))
    return cases


def _rules(case, got, call):
    importance, block, top_n = case.args
    T, n_sel = importance.shape[-2:]
    t = torch.arange(T)[:, None]
    j = torch.arange(n_sel)[None, :]
    if (got & (j * block > t)).any():
        return "a query selected a block that starts after it; only blocks with j * select_block_size <= t exist yet"
    if (got.sum(-1) > top_n).any():
        return "a query selected more than top_n blocks"
    own = t // block
    must = (j == 0) | (j == own) | ((j == own - 1) & (own >= 1))
    if (must & ~got).any():
        return "a query dropped block 0 or one of its two local blocks (its own and the one before); those are always kept"


def _wrong_select(**kw):
    """The core's choice with other counts of always-kept blocks."""
    return lambda importance, block, top_n: _core_select(importance, block, top_n, **kw)


def _future_blocks_allowed(importance, block, top_n):
    """The always-kept blocks first, then top-n over every block, begun or not."""
    T, n_sel = importance.shape[-2:]
    t, j = torch.arange(T)[:, None], torch.arange(n_sel)[None, :]
    own = t // block
    always = (j < 1) | ((j <= own) & (j > own - 2))                       # (T, n_sel)
    chosen = torch.topk(importance.masked_fill(always, float("inf")), min(top_n, n_sel), dim=-1).indices
    return torch.zeros_like(importance, dtype=torch.bool).scatter(-1, chosen, True)


SELECT_BLOCKS = Question(
    "select_blocks", "which selection blocks each query attends at full resolution", select_cases,
    section=f"{NOTEBOOK}, section: Selecting blocks, step 2: top-n, with the first and the local block always kept",
    properties=[Property("selection rules", _rules)],
    misconceptions=[
        Misconception("future_blocks_selected",
                      "a query can only select blocks that have begun by its position (j * select_block_size <= t); "
                      "mask the others out before the top-n",
                      _future_blocks_allowed),
        Misconception("forced_blocks_forgotten",
                      "block 0 and the two local blocks are always kept, whatever their importance; top-n fills the "
                      "remaining places",
                      _wrong_select(n_initial_blocks=0, n_local_blocks=0)),
        Misconception("one_local_block",
                      "keep two local blocks: the query's own block and the one before it",
                      _wrong_select(n_local_blocks=1)),
    ],
    hints=["Query t's own block is t // select_block_size; block j has begun when j * select_block_size <= t.",
           "Give the always-kept blocks importance +inf and the blocks that have not begun -inf, then take the "
           "top min(top_n, n_sel) per query; a -inf pick is not a selection."],
)

EXERCISE = Exercise("07_nsa_selection", "Native sparse attention: block selection", NOTEBOOK,
                    [GROUP_IMPORTANCE, SELECT_BLOCKS])
