"""Scaled dot-product attention, written out: scores, mask, safe softmax, weighted sum.

    scores  = q k^T / sqrt(d_k)          (every query against every key)
    weights = softmax(scores + mask)     (per query, over the keys)
    out     = weights v

q and k must share their last dimension d_k (a dot product needs equal lengths); v may have
its own d_v, and the output has d_v. Dividing by sqrt(d_k) keeps the scores' spread near 1 as
d_k grows, so the softmax does not saturate into a one-hot.

Masks here are boolean with True = "may attend". A query whose every key is masked (a padding
row, or a window with nothing in it) gets all-zero weights and a zero output, never NaN.
"""
from __future__ import annotations

import math

import torch

from .trace import Trace, record

__all__ = ["safe_softmax", "naive_softmax", "causal_mask", "padding_mask", "sliding_window_mask",
           "attention_weights", "scaled_dot_product_attention", "check_attention_input"]


def naive_softmax(x: torch.Tensor, dim: int = -1) -> torch.Tensor:
    """exp(x) / sum(exp(x)): the textbook formula. Overflows once x passes log(max float):
    about 11.09 in float16 (exp(11.09) ~ 65504), about 88.7 in float32."""
    e = torch.exp(x)
    return e / e.sum(dim=dim, keepdim=True)


def safe_softmax(x: torch.Tensor, dim: int = -1, mask: torch.Tensor | None = None) -> torch.Tensor:
    """softmax(x) = exp(x - max) / sum(exp(x - max)): the same value, but every exponent is <= 0
    so nothing overflows. Positions where `mask` is False get weight 0; a row with no True
    position gets all zeros (not the NaN of 0/0)."""
    if mask is not None:
        x = x.masked_fill(~mask, float("-inf"))
    row_max = x.amax(dim=dim, keepdim=True)
    row_max = torch.where(torch.isfinite(row_max), row_max, torch.zeros_like(row_max))  # all -inf row
    e = torch.exp(x - row_max)                                  # every exponent <= 0
    total = e.sum(dim=dim, keepdim=True)
    return e / torch.where(total > 0, total, torch.ones_like(total))


def causal_mask(seq_len: int, device=None) -> torch.Tensor:
    """(seq_len, seq_len) bool, True on and below the diagonal: query i sees keys 0..i."""
    return torch.ones(seq_len, seq_len, dtype=torch.bool, device=device).tril()


def sliding_window_mask(seq_len: int, window: int, device=None) -> torch.Tensor:
    """(seq_len, seq_len) bool: query i sees keys i-window+1 .. i (the `window` most recent
    positions, its own included). Convention: window=1 means a token sees only itself."""
    i = torch.arange(seq_len, device=device)[:, None]
    j = torch.arange(seq_len, device=device)[None, :]
    return (j <= i) & (j > i - window)


def padding_mask(lengths: torch.Tensor, seq_len: int) -> torch.Tensor:
    """(batch, 1, 1, seq_len) bool from each sequence's true length: keys past it are padding."""
    keys = torch.arange(seq_len, device=lengths.device)
    return (keys[None, :] < lengths[:, None])[:, None, None, :]


def attention_weights(q: torch.Tensor, k: torch.Tensor, mask: torch.Tensor | None = None,
                      causal: bool = False, scale: float | None = None,
                      trace: Trace | None = None) -> torch.Tensor:
    """softmax(q k^T / sqrt(d_k)) for q (..., T_q, d_k) and k (..., T_k, d_k): (..., T_q, T_k).

    mask: bool, broadcastable to (..., T_q, T_k), True = may attend.
    causal: also hide keys after each query (queries are the last T_q positions).
    """
    if q.shape[-1] != k.shape[-1]:
        raise ValueError(f"q has d_k={q.shape[-1]} but k has d_k={k.shape[-1]}: "
                         f"a query and a key must have the same length to take their dot product")
    if mask is not None and mask.dtype != torch.bool:
        raise TypeError(f"mask has dtype {mask.dtype}: pass a boolean mask with True = may attend "
                        f"(an additive float mask of 0 / -inf is a different convention)")
    d_k = q.shape[-1]
    scale = 1.0 / math.sqrt(d_k) if scale is None else scale
    scores = (q @ k.transpose(-2, -1)) * scale                  # (..., T_q, T_k)
    if causal:
        # The T_q queries are the LAST T_q positions of the T_k keys: query i sits at position
        # i + (T_k - T_q) and sees keys up to there (with T_q == T_k: the usual lower triangle).
        t_q, t_k = q.shape[-2], k.shape[-2]
        i = torch.arange(t_q, device=q.device)[:, None]
        j = torch.arange(t_k, device=q.device)[None, :]
        cm = j <= i + (t_k - t_q)                               # (T_q, T_k)
        mask = cm if mask is None else (mask & cm)
    weights = safe_softmax(scores, dim=-1, mask=mask)           # (..., T_q, T_k)
    record(trace, "scores", scores)
    if mask is not None:
        record(trace, "mask", torch.broadcast_to(mask, scores.shape))
    record(trace, "weights", weights)
    return weights


def scaled_dot_product_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                                 mask: torch.Tensor | None = None, causal: bool = False,
                                 scale: float | None = None, trace: Trace | None = None):
    """Attention for tensors shaped (..., seq, d). Returns (out, weights).

    q: (..., T_q, d_k)   k: (..., T_k, d_k)   v: (..., T_k, d_v)
    out: (..., T_q, d_v)   weights: (..., T_q, T_k)
    """
    if k.shape[-2] != v.shape[-2]:
        raise ValueError(f"k has {k.shape[-2]} positions but v has {v.shape[-2]}: every key needs its value")
    weights = attention_weights(q, k, mask=mask, causal=causal, scale=scale, trace=trace)
    out = weights @ v                                           # (..., T_q, d_v)
    record(trace, "out", out)
    return out, weights


def check_attention_input(x: torch.Tensor, d_model: int, key_padding_mask: torch.Tensor | None = None) -> None:
    """The input rules every attention module shares: x is (batch, seq_len, d_model), and a
    padding mask, if any, is (batch, seq_len). A clear ValueError instead of a matmul shape error."""
    if x.dim() != 3 or x.shape[-1] != d_model:
        raise ValueError(f"x has shape {tuple(x.shape)}: expected (batch, seq_len, d_model={d_model})")
    if key_padding_mask is not None and tuple(key_padding_mask.shape) != tuple(x.shape[:2]):
        raise ValueError(f"key_padding_mask has shape {tuple(key_padding_mask.shape)}: "
                         f"expected (batch, seq_len) = {tuple(x.shape[:2])}")
