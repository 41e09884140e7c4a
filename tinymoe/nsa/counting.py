"""How many query-key products native sparse attention computes, branch by branch, vs dense.

Per query head and per sequence of T tokens (multiply by heads, layers and batch as needed).
Query t (0-based) computes:

    dense  t + 1                                  every key at or before it
    cmp    floor((t - l + 1) / d) + 1, 0 if t < l-1  compressed blocks wholly in its past
    sel    (t mod l' + 1) + l' * (min(n, j+1) - 1)   its own block j = t // l' (cut at t), plus
                                                  the other chosen blocks, each whole
    win    min(w, t + 1)                          the window, its own position included

The selected count is exact when the query's own block is always kept (n_local_blocks >= 1,
the paper's choice). With n_local_blocks = 0 which blocks win depends on the data; the count is
then the most it can be, l' * min(n, j) + (t mod l' + 1 if n > j else 0).

Choosing the blocks costs no extra products: it reuses the cmp branch's probabilities.
Dense grows as T^2 / 2; NSA's three branches grow as T^2 / (2d), n*l'*T and w*T.
"""
from __future__ import annotations

import torch

from ..config import SparseAttentionConfig, whole_number

__all__ = ["qk_products"]


def qk_products(seq_len: int, nsa: SparseAttentionConfig) -> dict[str, int]:
    """{"cmp", "sel", "win", "nsa" (their sum), "dense", "saved" (dense - nsa)} for one head."""
    nsa.validate()
    whole_number("seq_len", seq_len, low=0)
    l, d, l_sel, n, w = nsa.block_size, nsa.stride, nsa.select_block_size, nsa.top_n, nsa.window
    t = torch.arange(seq_len, dtype=torch.int64)                           # every query position
    dense = t + 1
    cmp = torch.where(t >= l - 1, torch.div(t - l + 1, d, rounding_mode="floor") + 1, 0)
    own = torch.div(t, l_sel, rounding_mode="floor")                       # the query's own block
    in_own = t - own * l_sel + 1                                           # keys of it at or before t
    if nsa.n_local_blocks >= 1:
        sel = in_own + l_sel * (torch.clamp(own + 1, max=n) - 1)
    else:
        sel = l_sel * torch.clamp(own, max=n) + torch.where(own < n, in_own, 0)
    win = torch.clamp(t + 1, max=w)
    counts = {"cmp": int(cmp.sum()), "sel": int(sel.sum()), "win": int(win.sum())}
    counts["nsa"] = counts["cmp"] + counts["sel"] + counts["win"]
    counts["dense"] = int(dense.sum())
    counts["saved"] = counts["dense"] - counts["nsa"]
    return counts
