"""Soft MoE: experts process slots, and every slot is a weighted mix of all the tokens.

Puigcerver et al. 2023, "From Sparse to Soft Mixtures of Experts". No token is routed
anywhere; instead each of the n_experts * slots_per_expert slots gets a learned vector phi_s:

    logits  = x Phi^T                          (B, T, S)   S = n_experts * slots_per_expert
    D       = softmax over the T tokens        (B, T, S)   dispatch: each slot a convex mix of tokens
    C       = softmax over the S slots         (B, T, S)   combine: each token a convex mix of slots
    slots   = D^T x                            (B, S, d_model)
    y_s     = expert_{s // slots_per_expert}(slots_s)
    out     = C y                              (B, T, d_model)

Everything is differentiable and dense: no top-k, no dropped tokens, perfect balance (every
expert has the same number of slots), so there is no load-balancing loss. The cost scales with
the number of slots, not the number of tokens.

Why it does not fit a decoder-only model: the dispatch softmax runs over all T tokens of the
sequence, so every slot, and through it every token's output, depends on the tokens that come
later. A causal language model must not see those; and when generating one token at a time a
slot over a single token is just that token, not the mix the model was trained on. Soft MoE
was made for encoders (vision transformers), where every token sees the whole input anyway.
"""
from __future__ import annotations

import torch
from torch.nn import functional as F

from ..precision import compute_dtype
from .routing import Router, Routing

__all__ = ["SoftRouter"]


class SoftRouter(Router):
    """Phi (n_experts * slots_per_expert, d_model): one learned vector per slot.

    forward(x (B, T, d_model)) -> Routing with logits, dispatch_weights and combine_weights (B, T, S),
    the slots (B, S, d_model), and one expert per slot: expert_ids (B * S, 1), gates 1. A 2-D x
    (N, d_model) is one sequence."""

    def __init__(self, d_model: int, n_experts: int, slots_per_expert: int = 1, router_fp32: bool = True):
        super().__init__(d_model, n_experts * slots_per_expert, router_fp32)
        self.n_experts, self.slots_per_expert = n_experts, slots_per_expert
        self.n_slots = n_experts * slots_per_expert

    @classmethod
    def from_config(cls, config) -> "SoftRouter":
        moe = config.moe
        return cls(config.d_model, moe.n_experts, slots_per_expert=moe.slots_per_expert, router_fp32=moe.router_fp32)

    def forward(self, x: torch.Tensor) -> Routing:
        if x.dim() == 2:
            x = x[None]                                                      # (1, N, d_model): one sequence
        B = x.shape[0]
        logits = self.logits(x)                                              # (B, T, S)
        dispatch_weights = F.softmax(logits, dim=-2)                         # (B, T, S) columns sum to 1 over tokens
        combine_weights = F.softmax(logits, dim=-1)                          # (B, T, S) rows sum to 1 over slots
        slots = torch.einsum("bts,btd->bsd", dispatch_weights, x.to(dispatch_weights.dtype)).to(x.dtype)  # (B, S, d_model)
        slot_expert = torch.arange(self.n_slots, device=x.device) // self.slots_per_expert  # (S,)
        expert_ids = slot_expert.repeat(B)[:, None]                          # (B*S, 1) every slot has one expert
        gates = torch.ones(B * self.n_slots, 1, dtype=compute_dtype(x.dtype), device=x.device)  # (B*S, 1)
        return Routing(logits=logits, probs=combine_weights, expert_ids=expert_ids, gates=gates, chosen_ids=expert_ids,
                       dropped=torch.zeros_like(expert_ids, dtype=torch.bool),
                       expert_load=Routing.count_load(expert_ids, self.n_experts),
                       losses=dict.fromkeys(("load_balancing", "z_loss"), torch.zeros((), device=x.device)),  # no routing to balance
                       dispatch_weights=dispatch_weights, combine_weights=combine_weights, slots=slots)

    def extra_repr(self) -> str:
        return (f"d_model={self.d_model}, n_experts={self.n_experts}, slots_per_expert={self.slots_per_expert}, "
                f"router_fp32={self.router_fp32}")
