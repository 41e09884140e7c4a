"""Llama 4's router: top-k by logit, a sigmoid gate, and the gate scales the expert's INPUT.

Llama 4 (Meta 2025) routes each token to top_k = 1 routed expert, beside one shared expert that
every token uses:

    logits     = x W_router^T                          (N, n_experts)
    expert_ids = top-k of logits                        (N, k)
    gates      = sigmoid(logits[expert_ids])            (N, k), each in (0, 1), not renormalised
    out        = shared(x) + sum_j expert_{id_j}(gates_j * x)

Unlike Mixtral or DeepSeek, the gate multiplies the token before the expert, not the expert's
output. A SwiGLU expert is not linear, so expert(g x) != g expert(x): the Routing says
`scales_input`, and its `expert_inputs` feeds each slot its own scaled copy of the token. With one expert per token
a softmax over the chosen logits would always be 1; the sigmoid keeps a gradient to the router.
"""
from __future__ import annotations

import torch

from .routing import Router, Routing
from .topk import select_top_k

__all__ = ["Llama4Router"]


class Llama4Router(Router):
    """Top-k by logit; gates = sigmoid(chosen logits); the layer scales the expert inputs by them."""

    def __init__(self, d_model: int, n_experts: int, top_k: int = 1, router_fp32: bool = True):
        super().__init__(d_model, n_experts, router_fp32)
        self.top_k = top_k

    @classmethod
    def from_config(cls, config) -> "Llama4Router":
        moe = config.moe
        return cls(config.d_model, moe.n_experts, top_k=moe.top_k, router_fp32=moe.router_fp32)

    def forward(self, x: torch.Tensor) -> Routing:
        logits = self.logits(x.reshape(-1, self.d_model))                    # (N, n_experts)
        scores = torch.sigmoid(logits)                                       # (N, n_experts), same order as logits
        probs = scores / scores.sum(dim=-1, keepdim=True)                    # (N, n_experts) for the aux loss
        routing = select_top_k(logits, probs, self.top_k, renormalize=False, capacity_factor=None, scores=scores)
        routing.scales_input = True                                          # expert(g * x), not g * expert(x)
        return routing

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, top_k={self.top_k}"
