"""A routing decision: which experts each token goes to, and with what weight.

Every router (softmax top-k, Switch, noisy top-k, expert choice, sigmoid with a bias, soft MoE)
ends in the same `Routing`, with its own auxiliary losses, so the MoE layer, the experts and the
dispatch backends never need to know which router made it. A token has k slots; slot j names an
expert and a gate:

    out_n = sum_j gates[n, j] * expert_{expert_ids[n, j]}(x_n)

A slot whose expert id is -1 is empty (the token was dropped by a full expert, or, under expert
choice, that expert did not pick it) and its gate is 0: it adds nothing, and a token with every
slot empty gets a zero MoE output, so only the residual stream carries it on.

Soft MoE routes slots rather than tokens: its experts process B * S mixed "slots" (each with one
expert and gate 1) and every token takes back a mix of the slot outputs. Llama 4's gate scales
the expert's input, not its output: each slot gets its own copy g_j * x with gate 1. `expert_inputs`
and `combine` say how the layer's input reaches the experts and how their outputs come back, so
the layer runs every router through the same three lines.

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
from ..trace import record

__all__ = ["Routing", "Router", "scatter_gates"]


def scatter_gates(expert_ids: torch.Tensor, gates: torch.Tensor, n_experts: int) -> torch.Tensor:
    """The routing as a matrix: (..., N, k) expert ids (-1 = empty slot) and gates ->
    (..., N, n_experts) with [n, e] = the gate of the slot where token n chose expert e, 0 where
    it did not. Empty slots add nothing. The dense dispatch, the MoE explorer and notebook 06 use it."""
    columns = torch.where(expert_ids >= 0, expert_ids, n_experts)           # (..., N, k) empty -> a spare column
    matrix = torch.zeros(*expert_ids.shape[:-1], n_experts + 1, dtype=gates.dtype, device=gates.device)
    return matrix.scatter_add(-1, columns, gates)[..., :n_experts]           # (..., N, n_experts)


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
    losses       dict[str, Tensor]        the router's auxiliary losses, before their coefficients:
                                          "load_balancing" (n_experts sum f_i P_i) and "z_loss"
    extra        dict[str, Tensor]        router-specific values the trace records too
                                          (noisy top-k's noise_std, sigmoid_bias's selection_bias)
    dispatch_weights, combine_weights (B, T, S) and slots (B, S, d_model): soft MoE only (None
    otherwise); then N above counts the B * S slots, and logits / probs are (B, T, S).
    scales_input  bool                    the gates multiply each expert's input (Llama 4), not its output

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
    losses: dict = field(default_factory=dict)
    extra: dict = field(default_factory=dict)
    dispatch_weights: torch.Tensor | None = None
    combine_weights: torch.Tensor | None = None
    slots: torch.Tensor | None = None
    scales_input: bool = False

    def expert_inputs(self, x: torch.Tensor):
        """What the dispatch receives, (inputs (M, d_model), expert_ids (M, k), gates (M, k)): the
        tokens of x (..., d_model) flattened with this routing's ids and gates; soft MoE's slots;
        or, when the gates scale the input (Llama 4), one copy g_j * x per slot with gate 1."""
        if self.slots is not None:
            return self.slots.reshape(-1, self.slots.shape[-1]), self.expert_ids, self.gates   # (B*S, d_model)
        tokens = x.reshape(-1, x.shape[-1])                                 # (N, d_model)
        if not self.scales_input:
            return tokens, self.expert_ids, self.gates
        N, k = self.expert_ids.shape
        scaled = tokens[:, None, :] * self.gates[..., None].to(tokens.dtype)  # (N, k, d_model) g_j * x
        return (scaled.reshape(N * k, -1), self.expert_ids.reshape(N * k, 1),
                torch.ones(N * k, 1, dtype=self.gates.dtype, device=self.gates.device))

    def combine(self, outputs: torch.Tensor, x: torch.Tensor, trace=None) -> torch.Tensor:
        """The experts' weighted outputs (N, d_model) back in x's shape: the tokens' own rows, or
        for soft MoE each token's mix of the slot outputs, out = C y (recorded as slot_outputs)."""
        if self.scales_input:
            outputs = outputs.reshape(*self.expert_ids.shape, -1).sum(dim=1)  # (N, d_model): sum over the k slots
        if self.combine_weights is None:
            return outputs.reshape(x.shape)                                 # (..., d_model)
        slot_outputs = outputs.reshape(self.slots.shape)                    # (B, S, d_model)
        record(trace, "slot_outputs", slot_outputs)
        out = torch.einsum("bts,bsd->btd", self.combine_weights,
                           slot_outputs.to(self.combine_weights.dtype))      # (B, T, d_model)
        return out.to(x.dtype).reshape(x.shape)

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

    Subclasses implement `forward(x) -> Routing` for x of shape (..., d_model) (the token
    routers flatten it to (N, d_model)) and `from_config(config)`, which `make_router` calls.
    """

    def __init__(self, d_model: int, n_experts: int, router_fp32: bool = True):
        super().__init__()
        self.d_model, self.n_experts, self.router_fp32 = d_model, n_experts, router_fp32
        self.weight = nn.Parameter(torch.empty(n_experts, d_model))       # nn.Linear layout
        nn.init.uniform_(self.weight, -1 / math.sqrt(d_model), 1 / math.sqrt(d_model))

    @classmethod
    def from_config(cls, config) -> "Router":
        """The router sized and set up from a ModelConfig with an MoEConfig."""
        raise NotImplementedError(f"{cls.__name__} does not say how to build itself from a config")

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
