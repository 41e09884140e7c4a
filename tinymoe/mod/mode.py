"""MoDE: Mixture-of-Depths meets Mixture-of-Experts (Raposo et al. 2024, sec. 3.6).

Staged MoDE: MoD routing around a block whose feed-forward is an MoE layer. Nothing new to
build: a ModelConfig with both `mod` and `moe` makes MoDBlocks that wrap MoE blocks.

Integrated MoDE: no routing around the block; instead the MoE layer's router chooses among
n_experts real experts plus n_noop_experts "no-op" experts that compute nothing. A token sent
to a no-op expert gets no feed-forward update from that slot, so with all its slots on no-op
experts only the residual stream carries it past the layer: "skip" is one more routing choice.

    logits = x W_router^T                    W_router: (n_experts + n_noop_experts, d_model)
    slot on a no-op expert -> expert id -1, gate 0 (an empty slot every dispatch backend skips)

The load-balancing loss counts the no-op experts as experts, so the router is pushed to use
them as much as any real one (an assumption of this implementation; the paper does not say).
Trace names: the MoE layer's, plus `moe.noop_slots` (N, k) bool.
"""
from __future__ import annotations

import dataclasses

import torch
from torch import nn

from ..config import ModelConfig
from ..moe import MoE, Routing, make_router

__all__ = ["IntegratedMoDE", "NoOpRouter"]


class NoOpRouter(nn.Module):
    """A router over n_experts + n_noop experts whose no-op choices come back as empty slots."""

    def __init__(self, router: nn.Module, n_experts: int):
        super().__init__()
        self.router, self.n_experts = router, n_experts

    @property
    def weight(self) -> torch.Tensor:
        return self.router.weight                                          # (n_experts + n_noop, d_model)

    def forward(self, x: torch.Tensor) -> Routing:
        routing = self.router(x)
        noop = routing.expert_ids >= self.n_experts                        # (N, k) slots on a no-op expert
        expert_ids = routing.expert_ids.masked_fill(noop, -1)              # (N, k) -1: nothing to compute
        gates = routing.gates.masked_fill(noop, 0.0)                       # (N, k)
        return dataclasses.replace(routing, expert_ids=expert_ids, gates=gates,
                                   expert_load=Routing.count_load(expert_ids, self.n_experts),
                                   extra={**routing.extra, "noop_slots": noop})


class IntegratedMoDE(MoE):
    """An MoE layer whose router may also pick config.mod.n_noop_experts experts that do nothing."""

    def __init__(self, config: ModelConfig, name: str = "moe"):
        super().__init__(config, name=name)
        n_noop = config.mod.n_noop_experts
        wider = dataclasses.replace(config, moe=dataclasses.replace(config.moe, n_experts=config.moe.n_experts + n_noop),
                                    mod=None)
        self.router = NoOpRouter(make_router(wider), config.moe.n_experts)
        self.n_noop_experts = n_noop
        self.n_experts = config.moe.n_experts + n_noop                     # routing choices (the loss counts all)
