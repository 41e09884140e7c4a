"""Expert choice: the experts pick their tokens, instead of the tokens picking experts.

Zhou et al. 2022, "Mixture-of-Experts with Expert Choice Routing":

    probs = softmax(x W_router^T)                 (N, n_experts), softmax over experts as before
    c     = ceil(capacity_factor * N / n_experts) tokens per expert (capacity_factor plays k's role)
    for each expert e: its c tokens = top-c of probs[:, e] over the N tokens; gate = probs[n, e]

Every expert gets exactly c tokens, so the load is perfectly balanced by construction and there
is no load-balancing loss. A token can be picked by several experts, or by none (then its MoE
output is zero and the residual carries it). In the `Routing` a token has n_experts slots, slot
e holding expert e if e picked it and -1 if not.

Why it peeks at the future in a decoder: whether expert e takes token t depends on how t ranks
among ALL N tokens, including the tokens after t. Change a later token and an earlier token's
output can change, which a causal language model forbids; and when generating one token at a
time the later tokens do not exist yet, so the choice cannot be made as it was in training.
(The paper evaluates it as an encoder / with full sequences; here the N tokens are the whole
batch, so it even mixes across sequences.)
"""
from __future__ import annotations

import torch
from torch.nn import functional as F

from ..precision import compute_dtype
from .capacity import capacity
from .losses import routing_losses
from .routing import Router, Routing

__all__ = ["ExpertChoiceRouter"]


class ExpertChoiceRouter(Router):
    """Each expert takes the c tokens it scores highest, c = ceil(capacity_factor * N / n_experts)."""

    def __init__(self, d_model: int, n_experts: int, capacity_factor: float, router_fp32: bool = True):
        super().__init__(d_model, n_experts, router_fp32)
        self.capacity_factor = capacity_factor

    @classmethod
    def from_config(cls, config) -> "ExpertChoiceRouter":
        moe = config.moe
        return cls(config.d_model, moe.n_experts, capacity_factor=moe.capacity_factor, router_fp32=moe.router_fp32)

    def forward(self, x: torch.Tensor) -> Routing:
        x = x.reshape(-1, self.d_model)                                      # (N, d_model)
        N, n_experts = x.shape[0], self.n_experts
        logits = self.logits(x)                                              # (N, n_experts)
        probs = F.softmax(logits, dim=-1)                                    # (N, n_experts)
        tokens_per_expert = min(capacity(N, n_experts, self.capacity_factor), N)
        token_idx = torch.topk(probs.t(), tokens_per_expert, dim=-1).indices  # (n_experts, c)
        picked = torch.zeros(n_experts, N, dtype=torch.bool, device=x.device)
        picked = picked.scatter(1, token_idx, True).t()                      # (N, n_experts) expert e took token n
        experts = torch.arange(n_experts, device=x.device).expand(N, n_experts)  # (N, n_experts)
        expert_ids = torch.where(picked, experts, -1)                        # (N, n_experts) slot e = expert e or -1
        gates = torch.where(picked, probs, 0.0)                              # (N, n_experts)
        gates = gates.to(compute_dtype(gates.dtype))
        return Routing(logits=logits, probs=probs, expert_ids=expert_ids, gates=gates, chosen_ids=expert_ids,
                       dropped=torch.zeros_like(picked), expert_load=Routing.count_load(expert_ids, n_experts),
                       capacity=tokens_per_expert,
                       losses=routing_losses(logits, None, None, n_experts))    # balanced by construction

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, capacity_factor={self.capacity_factor}"
