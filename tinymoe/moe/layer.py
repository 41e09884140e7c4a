"""The Mixture-of-Experts layer: a drop-in replacement for the block's feed-forward.

    routing = router(x)                                    which experts, with what gates (a Routing)
    out     = sum_j gates_j * expert_{id_j}(x)             the dispatch backend computes this
            + shared(x)                                    if the config has shared experts
    losses  = {"load_balancing": aux_loss_coef * n_experts * sum_i f_i P_i,
               "z_loss":         z_loss_coef * mean(logsumexp(logits)^2)}

forward(x (B, T, d_model), trace=None) -> (out (B, T, d_model), losses). The losses are already
multiplied by their coefficients and are returned, never stored: the decoder block hands them up
and the model adds them to the language-model loss. Each router computes its own losses into its
Routing (expert choice is balanced by construction and soft MoE has no routing to balance: theirs
are zero, bar expert choice's z-loss), so the layer treats every router alike.

The routers (config.moe.router):
    softmax_topk   TopKRouter          Shazeer et al. 2017, Mixtral
    switch         SwitchRouter        top-1 with capacity, Fedus et al. 2021
    noisy_topk     NoisyTopKRouter     learned noise in training, Shazeer et al. 2017
    expert_choice  ExpertChoiceRouter  experts pick tokens, Zhou et al. 2022
    soft           SoftRouter          slots as mixes of tokens, Puigcerver et al. 2023
    sigmoid_bias   SigmoidBiasRouter   aux-loss-free balancing, DeepSeek-V3 (with n_group, topk_group,
                                       routed_scaling_factor: group-limited routing in full)
    llama4         Llama4Router        sigmoid top-1 whose gate scales the expert's input, Llama 4

Trace names, under the layer's name (`moe.`), N = B * T flattened tokens:
    x, W_router, W_gate, W_up, W_down (weights), router_logits (N, E), router_probs (N, E),
    expert_ids (N, k), gates (N, k), dropped (N, k), dropped_tokens (N,), expert_load (E,),
    capacity (when there is one), noise_std / selection_bias (their routers), routed_out,
    shared.* (shared experts), out, load_balancing_loss, z_loss (before their coefficients).
    Soft MoE also records dispatch_weights, combine_weights (B, T, S), slots and slot_outputs
    (B, S, d_model); its router_logits and router_probs (= combine weights) are (B, T, S) and its
    expert_ids, gates (B * S, 1) hold each slot's expert and gate 1.
"""
from __future__ import annotations

import torch
from torch import nn

from ..attention import check_attention_input
from ..config import ConfigError, ModelConfig
from ..trace import Trace, record, scoped
from .dispatch import get_dispatch
from .expert_choice import ExpertChoiceRouter
from .experts import Experts
from .llama4_router import Llama4Router
from .routing import Router, Routing
from .shared import SharedExperts
from .sigmoid_bias import SigmoidBiasRouter
from .soft import SoftRouter
from .topk import NoisyTopKRouter, SwitchRouter, TopKRouter

__all__ = ["MoE", "make_router", "ROUTER_CLASSES"]


ROUTER_CLASSES: dict[str, type[Router]] = {
    "softmax_topk": TopKRouter,
    "switch": SwitchRouter,
    "noisy_topk": NoisyTopKRouter,
    "expert_choice": ExpertChoiceRouter,
    "soft": SoftRouter,
    "sigmoid_bias": SigmoidBiasRouter,
    "llama4": Llama4Router,
}


def make_router(config: ModelConfig) -> Router:
    """The router config.moe.router names, built from the config (as attention is)."""
    if config.moe.router not in ROUTER_CLASSES:
        raise ConfigError("moe.router", config.moe.router, f"must be one of {', '.join(map(repr, ROUTER_CLASSES))}")
    return ROUTER_CLASSES[config.moe.router].from_config(config)


class MoE(nn.Module):
    """Router + n_experts stacked experts (+ shared experts); the dispatch backend is `self.dispatch`
    (from config.moe.dispatch; set it to "loop", "dense", "grouped" or "triton" to switch)."""

    def __init__(self, config: ModelConfig, name: str = "moe"):
        super().__init__()
        if config.moe is None:
            raise ConfigError("moe", None, "an MoE layer needs config.moe = MoEConfig(...)")
        moe = config.moe
        self.name, self.config = name, config
        self.n_experts, self.top_k, self.dispatch = moe.n_experts, moe.top_k, moe.dispatch
        self.d_ff = config.ff_dim if moe.d_ff_expert is None else moe.d_ff_expert
        self.router = make_router(config)
        self.experts = Experts(moe.n_experts, config.d_model, self.d_ff, config.ffn)
        self.shared = (SharedExperts(config.d_model, self.d_ff, moe.n_shared_experts, config.ffn,
                                     gated=moe.shared_expert_gate) if moe.n_shared_experts else None)
        self.last_expert_load: torch.Tensor | None = None   # (n_experts,) from the latest forward, for update_bias

    # the stacked expert weights, reachable as moe.w_gate etc. (they live in moe.experts)
    @property
    def w_gate(self) -> torch.Tensor:
        return self.experts.w_gate

    @property
    def w_up(self) -> torch.Tensor:
        return self.experts.w_up

    @property
    def w_down(self) -> torch.Tensor:
        return self.experts.w_down

    def forward(self, x: torch.Tensor, trace: Trace | None = None):
        trace = scoped(trace, self.name)
        check_attention_input(x, self.config.d_model)            # (batch >= 1, seq_len >= 1, d_model) floats
        record(trace, "x", x, "input")
        record(trace, "W_router", self.router.weight, "weight")
        for weight_name, weight in self.experts.named_weights().items():
            record(trace, weight_name, weight, "weight")
        routing = self.router(x)                                             # every router: one Routing
        self.last_expert_load = routing.expert_load.detach()
        self._record_routing(routing, trace)
        inputs, expert_ids, gates = routing.expert_inputs(x)                 # (M, d_model): tokens, slots or scaled copies
        outputs = get_dispatch(self.dispatch)(inputs, expert_ids, gates, *self.experts.weights())  # (M, d_model)
        routed = routing.combine(outputs, x, trace)                          # (B, T, d_model)
        record(trace, "routed_out", routed)
        out = routed
        if self.shared is not None:
            out = out + self.shared(x, trace)                                # (B, T, d_model)
        record(trace, "out", out, "output")
        record(trace, "load_balancing_loss", routing.losses["load_balancing"])
        record(trace, "z_loss", routing.losses["z_loss"])
        moe = self.config.moe
        coefficients = {"load_balancing": moe.aux_loss_coef, "z_loss": moe.z_loss_coef}
        return out, {name: coefficients[name] * value for name, value in routing.losses.items()}

    def _record_routing(self, routing: Routing, trace: Trace | None) -> None:
        if trace is None:
            return
        record(trace, "router_logits", routing.logits)
        for name in ("dispatch_weights", "combine_weights"):    # soft MoE: how tokens and slots mix
            if getattr(routing, name) is not None:
                record(trace, name, getattr(routing, name))
        record(trace, "router_probs", routing.probs)
        record(trace, "chosen_ids", routing.chosen_ids)          # the router's choice, before capacity
        record(trace, "expert_ids", routing.expert_ids)          # what was kept (-1: dropped)
        record(trace, "gates", routing.gates)
        record(trace, "dropped", routing.dropped)
        record(trace, "dropped_tokens", routing.dropped_tokens)
        if routing.slots is not None:
            record(trace, "slots", routing.slots)                # soft MoE: the experts' inputs
        record(trace, "expert_load", routing.expert_load)
        if routing.capacity is not None:
            record(trace, "capacity", torch.tensor(routing.capacity))
        for extra_name, value in routing.extra.items():
            record(trace, extra_name, value, "buffer" if extra_name == "selection_bias" else "activation")

    def update_bias(self, expert_load: torch.Tensor | None = None) -> torch.Tensor:
        """Aux-loss-free balancing step (router='sigmoid_bias'): move the selection bias against
        the load. expert_load (n_experts,) defaults to the load of the latest forward."""
        if not hasattr(self.router, "update_bias"):
            raise ConfigError("moe.router", self.config.moe.router,
                              "has no selection bias: update_bias is for router='sigmoid_bias'")
        if expert_load is None:
            if self.last_expert_load is None:
                raise ValueError("update_bias() without an expert_load needs a forward pass first")
            expert_load = self.last_expert_load
        return self.router.update_bias(expert_load)

    def extra_repr(self) -> str:
        return f"name={self.name!r}, dispatch={self.dispatch!r}"
