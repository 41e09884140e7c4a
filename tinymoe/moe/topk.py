"""Token choice: each token picks its top-k experts from a softmax over router scores.

    probs = softmax(x W_router^T)                       (N, n_experts), in float32
    expert_ids, gates = top-k of probs                   (N, k)
    gates = gates / sum(gates)                           only with renormalize=True

With renormalisation the k gates sum to 1 (Mixtral); without it they keep their share of the
full softmax, so a token unsure among many experts gets a smaller update (Qwen2-MoE's default,
norm_topk_prob=False). Top-k is what makes the layer sparse: each token runs k experts, not all.

Three variants live here:
- `TopKRouter`      softmax top-k (Shazeer et al. 2017; Mixtral, Jiang et al. 2024), optionally
                    with an expert capacity;
- `SwitchRouter`    top-1 with capacity ceil(capacity_factor * tokens / n_experts) (Switch
                    Transformer, Fedus et al. 2021): the overflow is dropped in token order;
- `NoisyTopKRouter` Gaussian noise with a learned, per-token, per-expert scale added to the
                    logits before top-k, in training only (Shazeer et al. 2017, eq. 4-5), so
                    experts the router undervalues still get tried.
"""
from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from ..precision import compute_dtype
from .capacity import apply_capacity, capacity
from .losses import routing_losses
from .routing import Router, Routing

__all__ = ["TopKRouter", "SwitchRouter", "NoisyTopKRouter", "select_top_k"]


def select_top_k(logits: torch.Tensor, probs: torch.Tensor, top_k: int, renormalize: bool,
                 capacity_factor: float | None, scores: torch.Tensor | None = None,
                 selection_bias: torch.Tensor | None = None, log_scores: torch.Tensor | None = None) -> Routing:
    """Top-k of scores (+ selection_bias, for choosing only), gates read from scores, then capacity.

    logits, probs, scores: (N, n_experts); scores default to probs (the softmax routers);
    selection_bias (n_experts,) is the sigmoid_bias router's b; log_scores, when given, renormalise
    the kept gates as a softmax of their logs (the same value, never 0 / 0 when every score
    underflows). Gates come back in at least float32."""
    N, n_experts = probs.shape
    scores = probs if scores is None else scores
    ranked = scores if selection_bias is None else scores + selection_bias.to(scores.dtype)  # (N, n_experts)
    chosen_ids = torch.topk(ranked, top_k, dim=-1).indices                  # (N, k)
    gates = scores.gather(-1, chosen_ids)                                    # (N, k)
    if renormalize and log_scores is not None:
        gates = F.softmax(log_scores.gather(-1, chosen_ids), dim=-1)         # (N, k) each row sums to 1
    elif renormalize:
        gates = gates / gates.sum(dim=-1, keepdim=True)                      # (N, k) each row sums to 1
    gates = gates.to(compute_dtype(gates.dtype))                             # (N, k) float32, or float64
    if capacity_factor is None:
        expert_capacity = None
        expert_ids, dropped = chosen_ids, torch.zeros_like(chosen_ids, dtype=torch.bool)
    else:
        expert_capacity = capacity(N * top_k, n_experts, capacity_factor)
        expert_ids, gates, dropped = apply_capacity(chosen_ids, gates, n_experts, expert_capacity)
    return Routing(logits=logits, probs=probs, expert_ids=expert_ids, gates=gates, chosen_ids=chosen_ids,
                   dropped=dropped, expert_load=Routing.count_load(expert_ids, n_experts),
                   capacity=expert_capacity, losses=routing_losses(logits, probs, chosen_ids, n_experts))


class TopKRouter(Router):
    """Softmax top-k; capacity_factor None is dropless."""

    def __init__(self, d_model: int, n_experts: int, top_k: int, renormalize: bool = True,
                 capacity_factor: float | None = None, router_fp32: bool = True):
        super().__init__(d_model, n_experts, router_fp32)
        self.top_k, self.renormalize, self.capacity_factor = top_k, renormalize, capacity_factor

    @classmethod
    def from_config(cls, config) -> "TopKRouter":
        moe = config.moe
        return cls(config.d_model, moe.n_experts, top_k=moe.top_k, renormalize=moe.renormalize,
                   capacity_factor=moe.capacity_factor, router_fp32=moe.router_fp32)

    def forward(self, x: torch.Tensor) -> Routing:
        logits = self.logits(x.reshape(-1, self.d_model))                    # (N, n_experts)
        probs = F.softmax(logits, dim=-1)                                    # (N, n_experts)
        return select_top_k(logits, probs, self.top_k, self.renormalize, self.capacity_factor)

    def extra_repr(self) -> str:
        return (f"{super().extra_repr()}, top_k={self.top_k}, renormalize={self.renormalize}, "
                f"capacity_factor={self.capacity_factor}")


class SwitchRouter(TopKRouter):
    """Switch Transformer: top-1, capacity ceil(capacity_factor * N / n_experts), overflow dropped.

    With one expert per token renormalising would make every gate 1 and cut the router's
    gradient, so the gate is the softmax probability itself (Fedus et al. 2021, eq. 2)."""

    def __init__(self, d_model: int, n_experts: int, capacity_factor: float, router_fp32: bool = True):
        super().__init__(d_model, n_experts, top_k=1, renormalize=False,
                         capacity_factor=capacity_factor, router_fp32=router_fp32)

    @classmethod
    def from_config(cls, config) -> "SwitchRouter":
        moe = config.moe
        return cls(config.d_model, moe.n_experts, capacity_factor=moe.capacity_factor, router_fp32=moe.router_fp32)


class NoisyTopKRouter(TopKRouter):
    """Noisy top-k gating: H = x W_router^T + N(0, 1) * softplus(x W_noise^T), training only.

    W_noise (n_experts, d_model) is learned and starts at zero (noise std softplus(0) = 0.69), as
    in the paper. Shazeer's gates are softmax over the k kept noisy logits, which is
    renormalize=True. In eval mode the router is plain softmax top-k."""

    def __init__(self, d_model: int, n_experts: int, top_k: int, renormalize: bool = True,
                 capacity_factor: float | None = None, router_fp32: bool = True):
        super().__init__(d_model, n_experts, top_k, renormalize, capacity_factor, router_fp32)
        self.noise_weight = nn.Parameter(torch.zeros(n_experts, d_model))  # W_noise, nn.Linear layout

    def forward(self, x: torch.Tensor) -> Routing:
        x = x.reshape(-1, self.d_model)                                      # (N, d_model)
        logits = self.logits(x)                                              # (N, n_experts) clean
        extra = {}
        if self.training:
            noise_std = F.softplus(self.logits(x, self.noise_weight))       # (N, n_experts)
            logits = logits + torch.randn_like(logits) * noise_std           # (N, n_experts) noisy
            extra["noise_std"] = noise_std
        probs = F.softmax(logits, dim=-1)                                    # (N, n_experts)
        routing = select_top_k(logits, probs, self.top_k, self.renormalize, self.capacity_factor)
        routing.extra.update(extra)
        return routing
