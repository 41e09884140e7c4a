"""Token routing over the sequence: which tokens a Mixture-of-Depths block computes.

Each token t gets one router logit; per sequence the k = floor(capacity * seq_len) tokens with
the largest logits go through the block. Two details make or break it:

- Keep the chosen tokens in sequence order: `topk` returns indices in score order, so sort the
  INDICES (`idx.sort().values`). `idx.argsort()` is the classic bug: it returns the ranks
  0..k-1, and gathering those picks the first k tokens of the sequence instead of the chosen ones.
- Keep their true positions: the gathered tokens are rotated by RoPE at the positions they hold
  in the sequence and the causal mask compares those positions, not 0..k-1.

Gather and scatter are the two halves around the block:

    x_routed = x[b, idx[b]]                       (B, k, d_model)
    out      = x;  out[b, idx[b]] = new rows      skipped rows are copied unchanged
"""
from __future__ import annotations

import math

import torch

from ..config import ConfigError

__all__ = ["routed_tokens", "in_top_k", "select_tokens", "gather_tokens", "scatter_tokens"]


def routed_tokens(seq_len: int, capacity: float) -> int:
    """k = floor(capacity * seq_len), at least 1: how many tokens of a sequence a routed block computes."""
    if isinstance(seq_len, bool) or not isinstance(seq_len, int) or seq_len < 1:
        raise ConfigError("seq_len", seq_len, "must be a positive whole number")
    if isinstance(capacity, bool) or not isinstance(capacity, (int, float)) or not 0 < capacity <= 1:
        raise ConfigError("capacity", capacity, "must be a share of the sequence, 0 < capacity <= 1")
    return max(1, math.floor(capacity * seq_len + 1e-9))          # 1e-9: 0.3 * 10 is 3.0000000000000004


def select_tokens(logits: torch.Tensor, k: int) -> torch.Tensor:
    """(B, T) router logits -> (B, k) positions of the top-k tokens of each sequence, ascending."""
    idx = torch.topk(logits, k, dim=-1).indices                    # (B, k) in score order
    return idx.sort(dim=-1).values                                 # (B, k) in sequence order


def in_top_k(logits: torch.Tensor, k: int) -> torch.Tensor:
    """(B, T) bool: is token t among its sequence's top k? (the target of the causal fixes)"""
    chosen = torch.zeros_like(logits, dtype=torch.bool)
    return chosen.scatter(-1, torch.topk(logits, k, dim=-1).indices, True)


def gather_tokens(x: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    """x (B, T, d) and idx (B, k) -> (B, k, d): row j of sequence b is x[b, idx[b, j]]."""
    return x.gather(1, idx[..., None].expand(-1, -1, x.shape[-1]))


def scatter_tokens(x: torch.Tensor, idx: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
    """A copy of x (B, T, d) with rows (B, k, d) written at positions idx (B, k); other rows unchanged.
    Out of place, so gradients reach both x and rows."""
    return x.scatter(1, idx[..., None].expand(-1, -1, x.shape[-1]), rows)
