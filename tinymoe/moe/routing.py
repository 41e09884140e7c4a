"""A routing decision: which experts each token goes to, and with what weight.

Every router (softmax top-k, Switch, noisy top-k, expert choice, sigmoid with a bias) ends in
the same `Routing`, so the experts and the dispatch backends never need to know which router
made it. A token has k slots; slot j names an expert and a gate:

    out_n = sum_j gates[n, j] * expert_{expert_ids[n, j]}(x_n)

A slot whose expert id is -1 is empty (the token was dropped by a full expert, or, under expert
choice, that expert did not pick it) and its gate is 0: it adds nothing, and a token with every
slot empty gets a zero MoE output, so only the residual stream carries it on.

Every router scores a token the same way, with one linear map to one logit per expert,

    logits = x W_router^T                    W_router: (n_experts, d_model)

computed in at least float32 whatever the input dtype (`router_fp32`; float64 stays float64). Softmax and top-k are where
half precision hurts: float16 logits overflow past 65504 and near-equal gates round together,
so a token's choice flips with rounding noise (Switch Transformer, Fedus et al. 2021, sec. 2.4,
"selective precision").
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
from torch import nn
from torch.nn import functional as F

from ..precision import compute_dtype

__all__ = ["Routing", "Router"]


@dataclass
class Routing:
    """What a router decided for N tokens (N = batch * seq_len) over n_experts experts.

    logits       (N, n_experts) float32+  router scores x W_router^T (float32, or float64 input's float64)
    probs        (N, n_experts) float32+  scores the gates are read from (softmax, or the
                                          normalised sigmoid scores); the load-balancing loss's P
    expert_ids   (N, k) int64             chosen expert per slot, -1 for an empty slot
    gates        (N, k) float32+          weight per slot, 0 for an empty slot
    chosen_ids   (N, k) int64             the router's choice before capacity dropped any slot
                                          (the load-balancing loss counts these)
    dropped      (N, k) bool              slot chosen, then turned away by a full expert
    expert_load  (n_experts,) int64       slots each expert actually processes
    capacity     int | None               slots per expert, None when dropless
    extra        dict[str, Tensor]        router-specific values the trace records too
                                          (noisy top-k's noise_std, sigmoid_bias's selection_bias)

    With router_fp32=False, logits and probs stay in the input's dtype (to show what goes wrong);
    gates are float32 (or float64) either way.
    """

    logits: torch.Tensor
    probs: torch.Tensor
    expert_ids: torch.Tensor
    gates: torch.Tensor
    chosen_ids: torch.Tensor
    dropped: torch.Tensor
    expert_load: torch.Tensor
    capacity: int | None = None
    extra: dict = field(default_factory=dict)

    @property
    def dropped_tokens(self) -> torch.Tensor:
        """(N,) bool: tokens no expert processes at all (their MoE output is zero)."""
        return (self.expert_ids < 0).all(dim=-1)

    @staticmethod
    def count_load(expert_ids: torch.Tensor, n_experts: int) -> torch.Tensor:
        """(n_experts,) int64: how many non-empty slots name each expert."""
        ids = expert_ids[expert_ids >= 0]                                  # (M,)
        return torch.bincount(ids, minlength=n_experts)


class Router(nn.Module):
    """The part every router shares: W_router (n_experts, d_model) and the float32 rule.

    Subclasses implement `forward(x) -> Routing` for x of shape (N, d_model).
    """

    def __init__(self, d_model: int, n_experts: int, router_fp32: bool = True):
        super().__init__()
        self.d_model, self.n_experts, self.router_fp32 = d_model, n_experts, router_fp32
        self.weight = nn.Parameter(torch.empty(n_experts, d_model))       # nn.Linear layout
        nn.init.uniform_(self.weight, -1 / math.sqrt(d_model), 1 / math.sqrt(d_model))

    def logits(self, x: torch.Tensor, weight: torch.Tensor | None = None) -> torch.Tensor:
        """x W^T in at least float32 (or in x's dtype when router_fp32 is off): (N, d_model) -> (N, n_experts)."""
        weight = self.weight if weight is None else weight
        if self.router_fp32:
            dtype = compute_dtype(x.dtype)                                 # float32, or float64 for float64 input
            with torch.autocast(device_type=x.device.type, enabled=False):   # autocast would cast the matmul down again
                return F.linear(x.to(dtype), weight.to(dtype))             # (N, n_experts)
        return F.linear(x, weight.to(x.dtype))                             # (N, n_experts) x.dtype

    def extra_repr(self) -> str:
        return f"d_model={self.d_model}, n_experts={self.n_experts}, router_fp32={self.router_fp32}"
