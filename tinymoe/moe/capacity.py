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
from fractions import Fraction

import torch
from torch.nn import functional as F

from ..config import real_number, whole_number

__all__ = ["capacity", "apply_capacity"]


def capacity(tokens: int, n_experts: int, capacity_factor: float) -> int:
    """Slots per expert: ceil(capacity_factor * tokens / n_experts), rounded UP so that a
    capacity_factor of 1.0 never leaves a token of a perfectly balanced batch without a seat,
    and at most `tokens` (an expert can never be offered more), so a huge factor means dropless
    rather than a number too large for a tensor."""
    whole_number("tokens", tokens, low=0)
    whole_number("n_experts", n_experts)
    real_number("capacity_factor", capacity_factor, "must be a positive finite number", lambda v: v > 0)
    # Exact arithmetic on the decimal the reader typed: in floats 1.1 * 10 is 11.000000000000002,
    # which would round up to 12.
    factor = Fraction(repr(float(capacity_factor)))
    return min(math.ceil(factor * tokens / n_experts), tokens)


def apply_capacity(expert_ids: torch.Tensor, gates: torch.Tensor, n_experts: int, expert_capacity: int):
    """Drop the slots that overflow their expert: first choices first, then in token order.

    expert_ids (N, k) int64, gates (N, k) float -> (expert_ids, gates, dropped), with dropped
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
