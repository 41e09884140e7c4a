"""Sigmoid scores with a selection-only bias: load balancing without an auxiliary loss.

DeepSeek-V3 (DeepSeek-AI 2024, sec. 2.1.2), after Wang et al. 2024, "Auxiliary-Loss-Free Load
Balancing Strategy for Mixture-of-Experts":

    scores     = sigmoid(x W_router^T)                  (N, n_experts), each expert scored alone
    expert_ids = top-k of (scores + b)                   b: one bias per expert, used to CHOOSE only
    gates      = scores[expert_ids] / their sum           the bias never enters the gates

After each training step the bias moves against the load:

    b_i <- b_i + gamma * sign(mean load - load_i)       (gamma = bias_update_rate)

An overloaded expert's bias falls, so it wins fewer close calls; an idle one's rises. The
balancing pressure never touches the gradient of the language-model loss, which an auxiliary
loss does. `b` is a buffer (not trained by the optimiser) and changes only when the training
loop calls `update_bias(expert_load)`: no hidden state moves during forward.

DeepSeek-V3 in full adds two things (both off by default: n_group = topk_group = 1, factor 1):

    group-limited routing  the experts are split into n_group equal groups; a group is scored by
                           the sum of its two best (scores + b); each token chooses its top-k
                           experts only inside its topk_group best groups (so a token's experts
                           sit on at most topk_group devices when a group is a device)
    routed_scaling_factor  the (renormalised) gates are multiplied by it (2.5 in DeepSeek-V3)

`probs` (for the load-balancing loss, if aux_loss_coef > 0; DeepSeek-V3 keeps a tiny one) are
the scores normalised to sum to 1 per token. Both divisions are done on log-scores,
s_i / sum_j s_j = softmax(log sigmoid(logits))_i, which is the same number but never 0 / 0: a
token whose every score underflows to 0 (logits below -104 in float32) still gets gates.
"""
from __future__ import annotations

import torch
from torch.nn import functional as F

from .routing import Router, Routing
from .topk import select_top_k

__all__ = ["SigmoidBiasRouter"]


class SigmoidBiasRouter(Router):
    """Top-k of sigmoid scores + a selection bias; gates from the unbiased scores."""

    def __init__(self, d_model: int, n_experts: int, top_k: int, renormalize: bool = True,
                 capacity_factor: float | None = None, bias_update_rate: float = 0.001,
                 router_fp32: bool = True, n_group: int = 1, topk_group: int = 1,
                 routed_scaling_factor: float = 1.0):
        super().__init__(d_model, n_experts, router_fp32)
        self.top_k, self.renormalize, self.capacity_factor = top_k, renormalize, capacity_factor
        self.bias_update_rate = bias_update_rate
        self.n_group, self.topk_group, self.routed_scaling_factor = n_group, topk_group, routed_scaling_factor
        self.register_buffer("selection_bias", torch.zeros(n_experts))      # b, (n_experts,)

    @classmethod
    def from_config(cls, config) -> "SigmoidBiasRouter":
        moe = config.moe
        return cls(config.d_model, moe.n_experts, top_k=moe.top_k, renormalize=moe.renormalize,
                   capacity_factor=moe.capacity_factor, bias_update_rate=moe.bias_update_rate,
                   router_fp32=moe.router_fp32, n_group=moe.n_group, topk_group=moe.topk_group,
                   routed_scaling_factor=moe.routed_scaling_factor)

    def forward(self, x: torch.Tensor) -> Routing:
        logits = self.logits(x.reshape(-1, self.d_model))                    # (N, n_experts)
        log_scores = F.logsigmoid(logits)                                    # (N, n_experts) log s_i, finite
        scores = log_scores.exp()                                            # (N, n_experts) s_i = sigmoid
        probs = F.softmax(log_scores, dim=-1)                                # (N, n_experts) s_i / sum_j s_j
        bias = self.selection_bias                                           # (n_experts,)
        if self.n_group > 1:
            bias = bias + self.group_limit(scores + self.selection_bias)    # (N, n_experts): -inf outside kept groups
        routing = select_top_k(logits, probs, self.top_k, self.renormalize, self.capacity_factor,
                               scores=scores, selection_bias=bias, log_scores=log_scores)
        if self.routed_scaling_factor != 1.0:
            routing.gates = routing.gates * self.routed_scaling_factor       # (N, k)
        routing.extra["selection_bias"] = self.selection_bias
        return routing

    def group_limit(self, ranked: torch.Tensor) -> torch.Tensor:
        """(N, n_experts): 0 for experts in each token's topk_group best groups, -inf elsewhere.
        A group's score is the sum of its two best ranked scores (DeepSeek-V3's gate)."""
        N = ranked.shape[0]
        per_group = ranked.view(N, self.n_group, self.n_experts // self.n_group)   # (N, n_group, experts per group)
        group_scores = per_group.topk(2, dim=-1).values.sum(dim=-1)          # (N, n_group)
        kept = torch.topk(group_scores, self.topk_group, dim=-1).indices     # (N, topk_group)
        keep = torch.zeros_like(group_scores, dtype=torch.bool).scatter_(1, kept, True)  # (N, n_group)
        keep = keep[:, :, None].expand_as(per_group).reshape(N, self.n_experts)          # (N, n_experts)
        return torch.zeros_like(ranked).masked_fill(~keep, float("-inf"))

    @torch.no_grad()
    def update_bias(self, expert_load: torch.Tensor) -> torch.Tensor:
        """b <- b + gamma * sign(mean(load) - load). expert_load (n_experts,): tokens per expert
        (from the trace's `moe.expert_load`, or the layer's `last_expert_load`). Returns b."""
        load = expert_load.float().to(self.selection_bias.device)           # (n_experts,)
        if load.shape != self.selection_bias.shape:
            raise ValueError(f"expert_load has shape {tuple(load.shape)}: expected ({self.n_experts},), "
                             f"one count per expert")
        self.selection_bias += self.bias_update_rate * torch.sign(load.mean() - load)
        return self.selection_bias

    def extra_repr(self) -> str:
        groups = (f", n_group={self.n_group}, topk_group={self.topk_group}" if self.n_group > 1 else "")
        scale = (f", routed_scaling_factor={self.routed_scaling_factor}" if self.routed_scaling_factor != 1.0 else "")
        return (f"{super().extra_repr()}, top_k={self.top_k}, renormalize={self.renormalize}, "
                f"bias_update_rate={self.bias_update_rate}{groups}{scale}")
