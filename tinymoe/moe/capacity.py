"""Expert capacity: a fixed number of slots per expert, and the tokens that do not fit.

Hardware likes fixed shapes, so Switch Transformer (Fedus et al. 2021, eq. 3) gives every
expert the same buffer:

    capacity = ceil(capacity_factor * tokens / n_experts)

capacity_factor 1.0 is exactly enough for perfect balance; 1.25 leaves 25% slack. A token sent
to an expert whose buffer is full is dropped: it gets no output from that expert, and the
residual connection carries it past the layer unchanged.

Which tokens win a full expert? Earlier ones, in token order. With top-k (k > 1) every token's
first choice is seated before any token's second choice (GShard, Lepikhin et al. 2020), so a
second opinion never pushes out a first one. For token-choice routing `tokens` counts
assignments, N * top_k, which is the Switch formula at k = 1.
"""
from __future__ import annotations

import math
import numbers
from fractions import Fraction

import torch
from torch.nn import functional as F

__all__ = ["capacity", "apply_capacity"]


def capacity(tokens: int, n_experts: int, capacity_factor: float) -> int:
    """Slots per expert: ceil(capacity_factor * tokens / n_experts), rounded UP so that a
    capacity_factor of 1.0 never leaves a token of a perfectly balanced batch without a seat."""
    for name, value in (("tokens", tokens), ("n_experts", n_experts)):
        if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 0:
            raise ValueError(f"{name}={value!r}: must be a whole number >= 0")
    if n_experts == 0:
        raise ValueError("n_experts=0: there must be at least one expert to hold the tokens")
    if not capacity_factor > 0:
        raise ValueError(f"capacity_factor={capacity_factor!r}: must be a positive number")
    # Exact arithmetic on the decimal the reader typed: in floats 1.1 * 10 is 11.000000000000002,
    # which would round up to 12.
    factor = Fraction(repr(float(capacity_factor)))
    return math.ceil(factor * tokens / n_experts)


def apply_capacity(expert_ids: torch.Tensor, gates: torch.Tensor, n_experts: int, expert_capacity: int):
    """Drop the slots that overflow their expert: first choices first, then in token order.

    expert_ids (N, k) int64, gates (N, k) float32 -> (expert_ids, gates, dropped), with dropped
    slots' ids set to -1 and gates to 0, and `dropped` (N, k) bool marking them.
    """
    N, k = expert_ids.shape
    slot_major = expert_ids.t().reshape(k * N)                              # (k*N,) all 1st choices, then 2nd ...
    valid = slot_major >= 0                                                 # (k*N,)
    one_hot = F.one_hot(slot_major.clamp(min=0), n_experts) * valid[:, None]  # (k*N, n_experts)
    position = (one_hot.cumsum(dim=0) * one_hot).sum(dim=-1)               # (k*N,) 1-based seat in its expert
    dropped = (valid & (position > expert_capacity)).reshape(k, N).t()      # (N, k)
    expert_ids = expert_ids.masked_fill(dropped, -1)                        # (N, k)
    gates = gates.masked_fill(dropped, 0.0)                                 # (N, k)
    return expert_ids, gates, dropped
