"""Scaled dot-product attention, written out: scores, mask, safe softmax, weighted sum.

    scores  = q k^T / sqrt(d_k)          (every query against every key)
    weights = softmax(scores + mask)     (per query, over the keys)
    out     = weights v

q and k must share their last dimension d_k (a dot product needs equal lengths); v may have
its own d_v, and the output has d_v. Dividing by sqrt(d_k) keeps the scores' spread near 1 as
d_k grows, so the softmax does not saturate into a one-hot.

Masks here are boolean with True = "may attend". A query whose every key is masked (a padding
row, or a window with nothing in it) gets all-zero weights and a zero output, never NaN.

Half precision: float16 stops at 65504, so q . k of two modest vectors can already overflow.
The scores and the softmax are computed in float32 (float64 stays float64) and the weights are
returned in q's dtype, as fused attention kernels do.
"""
from __future__ import annotations

import math

import torch

from .precision import compute_dtype
from .trace import Trace, record

__all__ = ["safe_softmax", "naive_softmax", "causal_mask", "padding_mask", "sliding_window_mask", "mask_from_positions",
           "attention_weights", "scaled_dot_product_attention", "check_attention_input"]


def naive_softmax(x: torch.Tensor, dim: int = -1) -> torch.Tensor:
    """exp(x) / sum(exp(x)): the textbook formula. Overflows once x passes log(max float):
    about 11.09 in float16 (exp(11.09) ~ 65504), about 88.7 in float32."""
    e = torch.exp(x)
    return e / e.sum(dim=dim, keepdim=True)


def safe_softmax(x: torch.Tensor, dim: int = -1, mask: torch.Tensor | None = None) -> torch.Tensor:
    """softmax(x) = exp(x - max) / sum(exp(x - max)): the same value, but every exponent is <= 0
    so nothing overflows. Positions where `mask` is False get weight 0; a row with no True
    position gets all zeros (not the NaN of 0/0). A row holding +inf gives its +inf entries equal
    shares of the weight and the rest 0 (the limit as those scores grow), not the NaN of inf - inf."""
    if mask is not None:
        x = x.masked_fill(~mask, float("-inf"))
    if x.shape[dim] == 0:
        return x.clone()                                        # nothing to normalise over
    posinf = torch.isposinf(x)
    row_has_inf = posinf.any(dim=dim, keepdim=True)
    x = torch.where(row_has_inf, torch.zeros_like(x).masked_fill(~posinf, float("-inf")), x)
    row_max = x.amax(dim=dim, keepdim=True)
    row_max = torch.where(torch.isfinite(row_max), row_max, torch.zeros_like(row_max))  # all -inf row
    e = torch.exp(x - row_max)                                  # every exponent <= 0
    total = e.sum(dim=dim, keepdim=True)
    return e / torch.where(total > 0, total, torch.ones_like(total))


def causal_mask(seq_len: int, device=None, n_keys: int | None = None) -> torch.Tensor:
    """(seq_len, n_keys) bool: query i sees keys 0..i, True on and below the diagonal.

    n_keys (default seq_len) may be larger: then the seq_len queries are the LAST seq_len of the
    n_keys positions (decoding with earlier keys cached), and query i sits at i + n_keys - seq_len."""
    n_keys = seq_len if n_keys is None else n_keys
    i = torch.arange(seq_len, device=device)[:, None]
    j = torch.arange(n_keys, device=device)[None, :]
    return j <= i + (n_keys - seq_len)                          # (seq_len, n_keys)


def sliding_window_mask(seq_len: int, window: int, device=None) -> torch.Tensor:
    """(seq_len, seq_len) bool: query i sees keys i-window+1 .. i (the `window` most recent
    positions, its own included). Convention: window=1 means a token sees only itself."""
    positions = torch.arange(seq_len, device=device)
    return mask_from_positions(positions, positions, window=window)


def mask_from_positions(q_positions: torch.Tensor, k_positions: torch.Tensor, window: int | None = None,
                        chunk_size: int | None = None) -> torch.Tensor:
    """(T_q, T_k) bool, True = may attend, from the true positions of queries and keys
    ((B, T_q, T_k) when the positions are given per sequence, (B, T)).

    causal: k <= q; sliding window: also k > q - window; chunked: also k // chunk == q // chunk.
    A key position of -1 is an empty cache slot and is never seen."""
    q = q_positions[..., :, None]                               # (T_q, 1) or (B, T_q, 1)
    k = k_positions[..., None, :]                               # (1, T_k) or (B, 1, T_k)
    mask = (k >= 0) & (k <= q)
    if window is not None:
        mask &= k > q - window
    if chunk_size is not None:
        mask &= torch.div(k, chunk_size, rounding_mode="floor") == torch.div(q, chunk_size, rounding_mode="floor")
    return mask


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
    for name, tensor in (("q", q), ("k", k)):
        if not isinstance(tensor, torch.Tensor) or not tensor.is_floating_point() or tensor.dim() < 2:
            raise TypeError(f"{name} must be a floating-point torch.Tensor shaped (..., seq, d_k); "
                            f"got {_describe(tensor)}")
    if q.shape[-1] != k.shape[-1]:
        raise ValueError(f"q has d_k={q.shape[-1]} but k has d_k={k.shape[-1]}: "
                         f"a query and a key must have the same length to take their dot product")
    t_q, t_k = q.shape[-2], k.shape[-2]
    if mask is not None:
        if not isinstance(mask, torch.Tensor):
            raise TypeError(f"mask must be a boolean torch.Tensor (True = may attend); got {_describe(mask)}")
        if mask.dtype != torch.bool:
            raise TypeError(f"mask has dtype {mask.dtype}: pass a boolean mask with True = may attend "
                            f"(an additive float mask of 0 / -inf is a different convention)")
        try:
            torch.broadcast_shapes(mask.shape, (*torch.broadcast_shapes(q.shape[:-2], k.shape[:-2]), t_q, t_k))
        except RuntimeError:
            raise ValueError(f"mask has shape {tuple(mask.shape)}: it must broadcast to the scores "
                             f"(..., T_q={t_q}, T_k={t_k})") from None
    d_k = q.shape[-1]
    scale = 1.0 / math.sqrt(d_k) if scale is None else scale
    dtype = compute_dtype(q.dtype)                              # float16 scores overflow at 65504
    scores = (q.to(dtype) @ k.to(dtype).transpose(-2, -1)) * scale  # (..., T_q, T_k)
    if causal:
        cm = causal_mask(t_q, device=q.device, n_keys=t_k)      # (T_q, T_k) queries are the last T_q keys
        mask = cm if mask is None else (mask & cm)
    weights = safe_softmax(scores, dim=-1, mask=mask).to(q.dtype)  # (..., T_q, T_k)
    record(trace, "scores", scores)
    if mask is not None:
        record(trace, "mask", torch.broadcast_to(mask, scores.shape))
    record(trace, "weights", weights)
    return weights


def _describe(value) -> str:
    """A short description of a value for an error message: a tensor's dtype and shape, or the type."""
    if isinstance(value, torch.Tensor):
        return f"a {value.dtype} tensor of shape {tuple(value.shape)}"
    return f"a {type(value).__name__}"


def scaled_dot_product_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                                 mask: torch.Tensor | None = None, causal: bool = False,
                                 scale: float | None = None, trace: Trace | None = None):
    """Attention for tensors shaped (..., seq, d). Returns (out, weights).

    q: (..., T_q, d_k)   k: (..., T_k, d_k)   v: (..., T_k, d_v)
    out: (..., T_q, d_v)   weights: (..., T_q, T_k)
    """
    if not isinstance(v, torch.Tensor) or v.dim() < 2:
        raise TypeError(f"v must be a torch.Tensor shaped (..., seq, d_v); got {_describe(v)}")
    if isinstance(k, torch.Tensor) and k.dim() >= 2 and k.shape[-2] != v.shape[-2]:
        raise ValueError(f"k has {k.shape[-2]} positions but v has {v.shape[-2]}: every key needs its value")
    weights = attention_weights(q, k, mask=mask, causal=causal, scale=scale, trace=trace)
    out = weights @ v.to(weights.dtype)                         # (..., T_q, d_v)
    record(trace, "out", out)
    return out, weights


def check_attention_input(x: torch.Tensor, d_model: int, key_padding_mask: torch.Tensor | None = None) -> None:
    """The input rules every attention module shares: x is a floating-point (batch, seq_len,
    d_model) tensor with at least one sequence and one token, and a padding mask, if any, is a
    (batch, seq_len) bool tensor. A clear error instead of a matmul shape error."""
    if not isinstance(x, torch.Tensor) or not x.is_floating_point():
        raise TypeError(f"x must be a floating-point torch.Tensor (batch, seq_len, d_model={d_model}); got {_describe(x)}")
    if x.dim() != 3 or x.shape[-1] != d_model:
        raise ValueError(f"x has shape {tuple(x.shape)}: expected (batch, seq_len, d_model={d_model})")
    if x.shape[0] == 0 or x.shape[1] == 0:
        raise ValueError(f"x has shape {tuple(x.shape)}: batch and seq_len must be at least 1 (nothing to attend over)")
    if key_padding_mask is not None:
        if not isinstance(key_padding_mask, torch.Tensor) or key_padding_mask.dtype != torch.bool:
            raise TypeError(f"key_padding_mask must be a bool torch.Tensor (batch, seq_len), True for real tokens; "
                            f"got {_describe(key_padding_mask)}")
        if tuple(key_padding_mask.shape) != tuple(x.shape[:2]):
            raise ValueError(f"key_padding_mask has shape {tuple(key_padding_mask.shape)}: "
                             f"expected (batch, seq_len) = {tuple(x.shape[:2])}")
