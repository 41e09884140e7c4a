"""The online softmax: attention over the keys one tile at a time, exactly.

Softmax attention for one query with scores s_j and values v_j is

    out = sum_j exp(s_j - m) v_j / sum_j exp(s_j - m),     m = max_j s_j

The max m is only there for safety (every exponent <= 0; notebook 01) and any m >= every s_j
gives the same quotient. So we may read the keys in tiles and keep three running numbers per
query (Milakov & Gimelshein 2018; FlashAttention, Dao et al. 2022):

    m   the largest score seen so far
    l   sum over keys seen of exp(s_j - m)
    o   sum over keys seen of exp(s_j - m) v_j         (the UNnormalised output, a d_v vector)

When a new tile raises the max from m_old to m_new, every earlier term was computed relative
to m_old; multiplying by exp(m_old - m_new) re-bases it. Nothing is approximated: after the last
tile, o / l is the softmax attention output, and m + log(l) is the row's log-sum-exp (what the
backward pass needs to rebuild the weights). Two partial states over different keys merge the
same way, which is how split-K decoding (flash-decoding) combines the work of several programs.

A query that has seen no key yet (or only masked ones) has m = -inf, l = 0, o = 0; the
rescale factor exp(-inf - -inf) would be NaN, so a max of -inf is treated as 0 in the exponents.
"""
from __future__ import annotations

from typing import NamedTuple

import torch

__all__ = ["SoftmaxState", "empty_state", "update", "merge", "finish"]


class SoftmaxState(NamedTuple):
    """m (..., T_q), l (..., T_q), o (..., T_q, d_v): the running max, sum and unnormalised output."""
    m: torch.Tensor
    l: torch.Tensor
    o: torch.Tensor


def _finite(m: torch.Tensor) -> torch.Tensor:
    """m where finite, else 0: the safe base for exponents of a row that has seen no key."""
    return torch.where(torch.isfinite(m), m, torch.zeros_like(m))


def empty_state(shape: tuple, d_v: int, dtype=torch.float32, device=None) -> SoftmaxState:
    """The state before any key: m = -inf, l = 0, o = 0, for queries of shape `shape` (..., T_q)."""
    return SoftmaxState(torch.full(shape, float("-inf"), dtype=dtype, device=device),
                        torch.zeros(shape, dtype=dtype, device=device),
                        torch.zeros(*shape, d_v, dtype=dtype, device=device))


def update(state: SoftmaxState, scores: torch.Tensor, v: torch.Tensor,
           mask: torch.Tensor | None = None) -> SoftmaxState:
    """Fold one tile of keys into the state.

    scores (..., T_q, block_k): this tile's scaled q.k; v (..., block_k, d_v); mask: True = may attend.
        m_new = max(m, max_j s_j)
        l_new = exp(m - m_new) l + sum_j exp(s_j - m_new)
        o_new = exp(m - m_new) o + sum_j exp(s_j - m_new) v_j
    """
    if mask is not None:
        scores = scores.masked_fill(~mask, float("-inf"))
    m_new = torch.maximum(state.m, scores.amax(dim=-1))                      # (..., T_q)
    base = _finite(m_new)
    rescale = torch.exp(state.m - base)                                      # exp(m_old - m_new); 0 from -inf
    p = torch.exp(scores - base[..., None])                                  # (..., T_q, block_k)
    l_new = rescale * state.l + p.sum(dim=-1)
    o_new = rescale[..., None] * state.o + p @ v                             # (..., T_q, d_v)
    return SoftmaxState(m_new, l_new, o_new)


def merge(a: SoftmaxState, b: SoftmaxState) -> SoftmaxState:
    """The state over the keys of a and b together (a and b saw disjoint sets of keys):
        m = max(m_a, m_b),  l = exp(m_a - m) l_a + exp(m_b - m) l_b,  o likewise."""
    m = torch.maximum(a.m, b.m)
    base = _finite(m)
    scale_a, scale_b = torch.exp(a.m - base), torch.exp(b.m - base)
    return SoftmaxState(m, scale_a * a.l + scale_b * b.l, scale_a[..., None] * a.o + scale_b[..., None] * b.o)


def finish(state: SoftmaxState) -> tuple[torch.Tensor, torch.Tensor]:
    """(out, lse): out = o / l (zeros for a row that saw no key) and lse = m + log(l) (-inf there)."""
    seen = state.l > 0
    out = state.o / torch.where(seen, state.l, torch.ones_like(state.l))[..., None]
    lse = torch.where(seen, state.m + torch.log(torch.where(seen, state.l, torch.ones_like(state.l))),
                      torch.full_like(state.m, float("-inf")))
    return out, lse
