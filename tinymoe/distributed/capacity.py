"""Expert capacity across ranks: the same seats as in one process, decided from the counts alone.

In one process (`tinymoe.moe.capacity`) an expert holds

    capacity = ceil(capacity_factor * N * top_k / n_experts)         N = every token in the batch

seats, given out first choices first, then in token order. Spread over ranks, the batch is the
ranks' tokens one after the other (rank 0's, then rank 1's, ...). Every rank knows how many of
its tokens chose each expert in each slot, counts (world_size, top_k, n_experts), because the
ranks exchange these counts before any token moves. The seats taken before rank r's slot-j
choices of expert e are then

    before[r, j, e] = sum_{j' < j} sum_{all ranks} counts[., j', e] + sum_{r' < r} counts[r', j, e]

and rank r keeps the first  kept[r, j, e] = clamp(capacity - before[r, j, e], 0, counts[r, j, e])
of them, in token order. Every rank computes the whole `kept` table the same way, so no second
exchange is needed, and dropped tokens are never sent anywhere.

(GShard and most systems instead give each rank its own, local capacity: cheaper to agree on,
but the dropped tokens then depend on how the batch was split. Here they do not.)
"""
from __future__ import annotations

import torch
from torch.nn import functional as F

from ..config import ConfigError
from ..moe.capacity import capacity

__all__ = ["experts_per_rank", "slot_counts", "seats_kept", "exchange_plan", "drop_overflow"]


def experts_per_rank(n_experts: int, world_size: int) -> int:
    """E_local = n_experts / world_size, which must be whole: every rank holds as many experts."""
    if n_experts % world_size != 0:
        raise ConfigError("moe.n_experts", n_experts,
                          f"is not divisible by world_size={world_size}: every rank holds the same number of "
                          f"experts (n_experts / world_size); use a multiple of {world_size}")
    return n_experts // world_size


def slot_counts(chosen_ids: torch.Tensor, n_experts: int) -> torch.Tensor:
    """chosen_ids (N, k) -> (k, n_experts): how many tokens chose each expert in each slot."""
    return F.one_hot(chosen_ids, n_experts).sum(dim=0)                    # (k, E)


def seats_kept(counts: torch.Tensor, expert_capacity: int) -> torch.Tensor:
    """counts (world_size, top_k, n_experts) chosen slots -> kept (same shape): slots that get a seat."""
    W, k, E = counts.shape
    seating = counts.transpose(0, 1).reshape(k * W, E)                      # (k*W, E) in seating order
    before = seating.cumsum(dim=0) - seating                                # (k*W, E) seats taken earlier
    kept = (expert_capacity - before).clamp(min=0).minimum(seating)         # (k*W, E)
    return kept.reshape(k, W, E).transpose(0, 1)                            # (W, k, E)


def exchange_plan(counts: torch.Tensor, n_tokens: torch.Tensor, capacity_factor: float | None,
                  world_size: int) -> dict:
    """What every rank derives from the exchanged counts, (world_size, top_k, n_experts) chosen
    slots and (world_size,) tokens per rank: {"capacity" (None: dropless), "kept" (W, k, E),
    "routing_counts" (W, E) pairs each rank sends to each expert, "pairs" (W, W) pairs rank s
    sends to rank d}."""
    W, k, E = counts.shape
    if capacity_factor is None:
        expert_capacity, kept = None, counts
    else:
        expert_capacity = capacity(int(n_tokens.sum()) * k, E, capacity_factor)
        kept = seats_kept(counts, expert_capacity)                          # (W, k, E)
    routing_counts = kept.sum(dim=1)                                        # (W, E)
    pairs = routing_counts.reshape(W, world_size, experts_per_rank(E, world_size)).sum(dim=-1)  # (W src, W dst)
    return {"capacity": expert_capacity, "kept": kept, "routing_counts": routing_counts, "pairs": pairs}


def drop_overflow(expert_ids: torch.Tensor, gates: torch.Tensor, kept: torch.Tensor):
    """Keep this rank's first kept[j, e] slot-j choices of expert e (token order), drop the rest.

    expert_ids, gates (N, k); kept (k, n_experts) -> (expert_ids, gates, dropped), dropped slots
    with id -1 and gate 0, as `tinymoe.moe.apply_capacity` returns them."""
    N, k = expert_ids.shape
    n_experts = kept.shape[-1]
    valid = expert_ids >= 0                                                 # (N, k)
    one_hot = F.one_hot(expert_ids.clamp(min=0), n_experts) * valid[..., None]  # (N, k, E)
    position = (one_hot.cumsum(dim=0) * one_hot).sum(dim=-1)                # (N, k) 1-based seat among this rank's
    allowed = kept.gather(1, expert_ids.clamp(min=0).t()).t()               # (N, k) kept[j, expert_ids[n, j]]
    dropped = valid & (position > allowed)                                  # (N, k)
    return expert_ids.masked_fill(dropped, -1), gates.masked_fill(dropped, 0.0), dropped
