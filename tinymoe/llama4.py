"""What Llama 4 changes in attention: chunked local layers interleaved with global NoPE layers.

Llama 4 (Meta 2025; the "iRoPE" design) alternates two kinds of attention layer:

    RoPE layers   chunked local attention: the sequence is cut into chunks of
                  attention_chunk_size tokens and a token sees only the earlier tokens of its
                  own chunk; q and k are rotated by RoPE, then L2-normalised (QK-norm)
    NoPE layers   every no_rope_layer_interval-th layer: full causal attention with no position
                  encoding at all; the causal mask alone tells tokens apart. At long context
                  the scores flatten out, so q is scaled up with the position ("temperature
                  tuning", Nakanishi 2025, arXiv 2501.19399):

                      q_pos <- q_pos * (1 + attn_scale * log1p(floor((pos + 1) / floor_scale)))

The local layers keep a bounded KV cache (one chunk); only the NoPE layers see the whole context.
QK-norm here is RMS normalisation without a learned weight, x / sqrt(mean(x^2) + eps), applied
per head after RoPE.
"""
from __future__ import annotations

import torch

from .attention import mask_from_positions

__all__ = ["chunked_mask", "qk_norm", "attention_temperature"]


def chunked_mask(seq_len: int, chunk_size: int, device=None) -> torch.Tensor:
    """(seq_len, seq_len) bool: query i sees key j when j <= i and both lie in the same chunk,
    j // chunk_size == i // chunk_size. chunk_size >= seq_len is the plain causal mask."""
    if isinstance(chunk_size, bool) or not isinstance(chunk_size, int) or chunk_size <= 0:
        raise ValueError(f"chunk_size={chunk_size!r}: must be a positive whole number of tokens")
    positions = torch.arange(seq_len, device=device)
    return mask_from_positions(positions, positions, chunk_size=chunk_size)


def qk_norm(x: torch.Tensor, eps: float = 1e-5) -> torch.Tensor:
    """x / sqrt(mean(x^2) + eps) over the last axis (head_dim), in float32: no weight."""
    xf = x.float()
    return (xf * torch.rsqrt(xf.pow(2).mean(dim=-1, keepdim=True) + eps)).to(x.dtype)


def attention_temperature(positions: torch.Tensor, attn_scale: float = 0.1,
                          floor_scale: float = 8192.0) -> torch.Tensor:
    """(T,) float32: 1 + attn_scale * log1p(floor((pos + 1) / floor_scale)); 1 for the first
    floor_scale - 1 positions, then growing with log(position)."""
    return 1.0 + attn_scale * torch.log1p(torch.floor((positions.float() + 1.0) / floor_scale))
