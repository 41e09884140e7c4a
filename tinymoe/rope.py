"""Position: absolute sinusoidal encodings (added once at the bottom) and RoPE (applied to
q and k in every head of every layer).

RoPE (Su et al. 2021, "RoFormer") rotates each pair of q/k dimensions by an angle m * theta_i
that grows with the position m, with theta_i = base^(-2i/head_dim). A dot product of two
rotated vectors depends only on the difference of their angles, so q_m . k_n depends only on
m - n: relative position, for free, with no trainable weight. cos and sin are precomputed once
(a buffer, not a parameter) from float64 angles. Casting the module (`model.double()`,
`.half()`) recomputes the tables at the new dtype instead of casting float32's rounding along, so
a float64 model rotates with float64 tables.

Which dimensions form a pair is a convention, and mixing them up is a classic bug:
  rotate_half  pairs (i, i + head_dim/2)  Llama in Hugging Face, GPT-NeoX
  interleaved  pairs (2i, 2i + 1)         the RoFormer paper, Meta's original Llama code
Both give the same relative-position property; they differ by a fixed permutation of dims.
"""
from __future__ import annotations

import math

import torch
from torch import nn

from .config import ROPE_PAIRINGS, ConfigError, real_number, whole_number
from .trace import Trace, record

__all__ = ["RotaryEmbedding", "rope_frequencies", "rotate_half", "apply_rope", "sinusoidal_positions"]


def rope_frequencies(head_dim: int, base: float = 10000.0) -> torch.Tensor:
    """theta_i = base^(-2i/head_dim) for i = 0 .. head_dim/2 - 1: fast pairs first, slow last."""
    return base ** (-torch.arange(0, head_dim, 2, dtype=torch.float64) / head_dim)


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    """(x1, x2) -> (-x2, x1) on the two halves of the last axis."""
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat((-x2, x1), dim=-1)


def _rotate_interleaved(x: torch.Tensor) -> torch.Tensor:
    """(x0, x1, x2, x3, ...) -> (-x1, x0, -x3, x2, ...): neighbours form the pairs."""
    pairs = x.unflatten(-1, (-1, 2))                         # (..., head_dim/2, 2)
    return torch.stack((-pairs[..., 1], pairs[..., 0]), dim=-1).flatten(-2)


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor,
               pairing: str = "rotate_half") -> torch.Tensor:
    """Rotate x (..., seq, head_dim) by the angles whose cos/sin are (seq, head_dim)."""
    if pairing not in ROPE_PAIRINGS:
        raise ConfigError("pairing", pairing, f"must be one of {', '.join(map(repr, ROPE_PAIRINGS))}")
    rotated = rotate_half(x) if pairing == "rotate_half" else _rotate_interleaved(x)
    return x * cos + rotated * sin


class RotaryEmbedding(nn.Module):
    """Precomputed cos/sin tables for positions 0 .. max_seq_len-1 (buffers, not trainable)."""

    def __init__(self, head_dim: int, max_seq_len: int, base: float = 10000.0,
                 pairing: str = "rotate_half"):
        super().__init__()
        whole_number("head_dim", head_dim)
        whole_number("max_seq_len", max_seq_len)
        if head_dim % 2:
            raise ConfigError("head_dim", head_dim, "RoPE rotates dimensions in pairs, so it must be even")
        real_number("base", base, "must be a finite number > 1", lambda v: v > 1)
        if pairing not in ROPE_PAIRINGS:
            raise ConfigError("pairing", pairing, f"must be one of {', '.join(map(repr, ROPE_PAIRINGS))}")
        self.head_dim, self.max_seq_len, self.base, self.pairing = head_dim, max_seq_len, base, pairing
        cos, sin = self._tables(torch.get_default_dtype(), None)
        self.register_buffer("cos", cos, persistent=False)                # (T, head_dim)
        self.register_buffer("sin", sin, persistent=False)

    def _tables(self, dtype: torch.dtype, device) -> tuple[torch.Tensor, torch.Tensor]:
        """cos and sin of every position's angles, computed in float64, rounded once to `dtype`."""
        theta = rope_frequencies(self.head_dim, self.base)                 # (head_dim/2,)
        angles = torch.arange(self.max_seq_len, dtype=torch.float64)[:, None] * theta[None, :]  # (T, head_dim/2)
        if self.pairing == "rotate_half":
            angles = torch.cat((angles, angles), dim=-1)                   # (T, head_dim): i and i+half share
        else:
            angles = angles.repeat_interleave(2, dim=-1)                   # (T, head_dim): 2i and 2i+1 share
        return angles.cos().to(device=device, dtype=dtype), angles.sin().to(device=device, dtype=dtype)

    def _apply(self, fn, *args, **kwargs):
        """.to() / .double() / .half() / .cuda(): move the tables, then recompute them at their new
        dtype from float64 (a cast would carry float32's rounding into a float64 model)."""
        super()._apply(fn, *args, **kwargs)
        if self.cos.is_floating_point() and self.cos.device.type != "meta":
            self.cos, self.sin = self._tables(self.cos.dtype, self.cos.device)
        return self

    def forward(self, q: torch.Tensor, k: torch.Tensor, positions: torch.Tensor | None = None,
                trace: Trace | None = None):
        """Rotate q (B, H, T, head_dim) and k (B, H_kv, T, head_dim) by their positions.

        positions: None (0 .. T-1), or int positions shaped (T,) or (B, T)."""
        seq_len = q.shape[-2]
        if q.shape[-1] != self.head_dim or k.shape[-1] != self.head_dim:
            raise ValueError(f"q has last dim {q.shape[-1]} and k {k.shape[-1]}, but this RoPE table "
                             f"was built for head_dim={self.head_dim}")
        if positions is None:
            if seq_len > self.max_seq_len:
                raise ValueError(f"seq_len={seq_len} exceeds max_seq_len={self.max_seq_len}: "
                                 f"raise max_seq_len in the config")
            cos, sin = self.cos[:seq_len], self.sin[:seq_len]             # (T, head_dim)
        else:
            if positions.numel() and (positions.min() < 0 or positions.max() >= self.max_seq_len):
                raise ValueError(f"positions must lie in 0..{self.max_seq_len - 1} (max_seq_len); "
                                 f"got {int(positions.min())}..{int(positions.max())}")
            cos, sin = self.cos[positions], self.sin[positions]           # (T, head_dim) or (B, T, head_dim)
            if positions.dim() == 2:
                cos, sin = cos[:, None], sin[:, None]                     # (B, 1, T, head_dim): every head
        cos, sin = cos.to(q.dtype), sin.to(q.dtype)
        record(trace, "rope_cos", cos, "buffer")
        record(trace, "rope_sin", sin, "buffer")
        return apply_rope(q, cos, sin, self.pairing), apply_rope(k, cos, sin, self.pairing)


def sinusoidal_positions(max_seq_len: int, d_model: int, base: float = 10000.0,
                         dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """(max_seq_len, d_model): PE[m, 2i] = sin(m / base^(2i/d)), PE[m, 2i+1] = cos(m / base^(2i/d)).
    Vaswani et al. 2017: added to the token embeddings once, at the bottom of the stack."""
    position = torch.arange(max_seq_len, dtype=torch.float64)[:, None]     # (T, 1)
    inv_freq = torch.exp(-math.log(base) * torch.arange(0, d_model, 2, dtype=torch.float64) / d_model)
    pe = torch.zeros(max_seq_len, d_model, dtype=torch.float64)
    pe[:, 0::2] = torch.sin(position * inv_freq)
    pe[:, 1::2] = torch.cos(position * inv_freq)
    return pe.to(dtype)
