"""The Mixture-of-Experts layer: a drop-in replacement for the block's feed-forward.

    routing = router(x)                                    which experts, with what gates
    out     = sum_j gates_j * expert_{id_j}(x)             the dispatch backend computes this
            + shared(x)                                    if the config has shared experts
    losses  = {"load_balancing": aux_loss_coef * n_experts * sum_i f_i P_i,
               "z_loss":         z_loss_coef * mean(logsumexp(logits)^2)}

forward(x (B, T, d_model), trace=None) -> (out (B, T, d_model), losses). The losses are already
multiplied by their coefficients and are returned, never stored: the decoder block hands them up
and the model adds them to the language-model loss. (Expert choice is balanced by construction
and soft MoE has no routing to balance: their losses are zero.)

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
    Soft MoE records router_logits, dispatch_weights, combine_weights, router_probs (= combine
    weights), expert_ids (the expert of each slot), slots, slot_outputs and expert_load.
"""
from __future__ import annotations

import torch
from torch import nn

from ..attention import check_attention_input
from ..config import ConfigError, ModelConfig
from ..precision import compute_dtype
from ..trace import Trace, record
from .dispatch import get_dispatch
from .expert_choice import ExpertChoiceRouter
from .experts import Experts
from .llama4_router import Llama4Router
from .losses import load_balancing_loss, router_z_loss
from .routing import Router, Routing
from .shared import SharedExperts
from .sigmoid_bias import SigmoidBiasRouter
from .soft import SoftRouter
from .topk import NoisyTopKRouter, SwitchRouter, TopKRouter

__all__ = ["MoE", "make_router"]


def make_router(config: ModelConfig) -> Router:
    """The router config.moe.router names, sized from the config."""
    moe, d = config.moe, config.d_model
    if moe.router == "softmax_topk":
        return TopKRouter(d, moe.n_experts, moe.top_k, moe.renormalize, moe.capacity_factor, moe.router_fp32)
    if moe.router == "switch":
        return SwitchRouter(d, moe.n_experts, moe.capacity_factor, moe.router_fp32)
    if moe.router == "noisy_topk":
        return NoisyTopKRouter(d, moe.n_experts, moe.top_k, moe.renormalize, moe.capacity_factor, moe.router_fp32)
    if moe.router == "expert_choice":
        return ExpertChoiceRouter(d, moe.n_experts, moe.capacity_factor, moe.router_fp32)
    if moe.router == "soft":
        return SoftRouter(d, moe.n_experts, moe.slots_per_expert, moe.router_fp32)
    if moe.router == "sigmoid_bias":
        return SigmoidBiasRouter(d, moe.n_experts, moe.top_k, moe.renormalize, moe.capacity_factor,
                                 moe.bias_update_rate, moe.router_fp32, n_group=moe.n_group,
                                 topk_group=moe.topk_group, routed_scaling_factor=moe.routed_scaling_factor)
    if moe.router == "llama4":
        return Llama4Router(d, moe.n_experts, moe.top_k, moe.router_fp32)
    raise ConfigError("moe.router", moe.router, "is not a known router")


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
        trace = trace.scope(self.name) if trace is not None else None
        check_attention_input(x, self.config.d_model)            # (batch >= 1, seq_len >= 1, d_model) floats
        B, T, d_model = x.shape
        record(trace, "x", x, "input")
        record(trace, "W_router", self.router.weight, "weight")
        for weight_name, weight in self.experts.named_weights().items():
            record(trace, weight_name, weight, "weight")
        dispatch = get_dispatch(self.dispatch)
        if isinstance(self.router, SoftRouter):
            routed = self._soft_forward(x, dispatch, trace)                  # (B, T, d_model)
            zero = torch.zeros((), dtype=torch.float32, device=x.device)
            load_balancing, z_loss = zero, zero
        else:
            tokens = x.reshape(B * T, d_model)                               # (N, d_model)
            routing = self.router(tokens)
            self._record_routing(routing, trace)
            if getattr(self.router, "scales_input", False):                  # Llama 4: expert(g * x)
                routed = self._dispatch_scaled_inputs(tokens, routing, dispatch)  # (N, d_model)
            else:
                routed = dispatch(tokens, routing.expert_ids, routing.gates, *self.experts.weights())  # (N, d_model)
            routed = routed.reshape(B, T, d_model)                           # (B, T, d_model)
            self.last_expert_load = routing.expert_load.detach()
            if isinstance(self.router, ExpertChoiceRouter):                  # balanced by construction
                load_balancing = torch.zeros((), dtype=torch.float32, device=x.device)
            else:
                load_balancing = load_balancing_loss(routing.probs, routing.chosen_ids, self.n_experts)
            z_loss = router_z_loss(routing.logits)
        record(trace, "routed_out", routed)
        out = routed
        if self.shared is not None:
            out = out + self.shared(x, trace)                                # (B, T, d_model)
        record(trace, "out", out, "output")
        record(trace, "load_balancing_loss", load_balancing)
        record(trace, "z_loss", z_loss)
        moe = self.config.moe
        return out, {"load_balancing": moe.aux_loss_coef * load_balancing, "z_loss": moe.z_loss_coef * z_loss}

    def _dispatch_scaled_inputs(self, tokens: torch.Tensor, routing: Routing, dispatch) -> torch.Tensor:
        """sum_j expert_{id_j}(gates_j * x): each slot's expert reads the token scaled by its gate."""
        out = torch.zeros_like(tokens)                                       # (N, d_model)
        ones = torch.ones_like(routing.gates[:, :1])                         # (N, 1) the output is not scaled
        for j in range(routing.expert_ids.shape[1]):
            scaled = (tokens * routing.gates[:, j:j + 1].to(tokens.dtype))   # (N, d_model)
            out = out + dispatch(scaled, routing.expert_ids[:, j:j + 1], ones, *self.experts.weights())
        return out

    def _record_routing(self, routing: Routing, trace: Trace | None) -> None:
        if trace is None:
            return
        record(trace, "router_logits", routing.logits)
        record(trace, "router_probs", routing.probs)
        record(trace, "chosen_ids", routing.chosen_ids)          # the router's choice, before capacity
        record(trace, "expert_ids", routing.expert_ids)          # what was kept (-1: dropped)
        record(trace, "gates", routing.gates)
        record(trace, "dropped", routing.dropped)
        record(trace, "dropped_tokens", routing.dropped_tokens)
        record(trace, "expert_load", routing.expert_load)
        if routing.capacity is not None:
            record(trace, "capacity", torch.tensor(routing.capacity))
        for extra_name, value in routing.extra.items():
            record(trace, extra_name, value, "buffer" if extra_name == "selection_bias" else "activation")

    def _soft_forward(self, x: torch.Tensor, dispatch, trace: Trace | None) -> torch.Tensor:
        """Soft MoE: mix tokens into slots, run each expert on its slots, mix slots back."""
        B, T, d_model = x.shape
        router: SoftRouter = self.router
        logits, dispatch_weights, combine_weights = router(x)                # (B, T, S) each
        slots = torch.einsum("bts,btd->bsd", dispatch_weights, x.to(dispatch_weights.dtype)).to(x.dtype)  # (B, S, d_model)
        slot_expert = torch.arange(router.n_slots, device=x.device) // router.slots_per_expert  # (S,)
        expert_ids = slot_expert.repeat(B)[:, None]                          # (B*S, 1) every slot has one expert
        gates = torch.ones(B * router.n_slots, 1, dtype=compute_dtype(x.dtype), device=x.device)  # (B*S, 1)
        slot_outputs = dispatch(slots.reshape(B * router.n_slots, d_model), expert_ids, gates,
                                *self.experts.weights()).reshape(B, router.n_slots, d_model)  # (B, S, d_model)
        out = torch.einsum("bts,bsd->btd", combine_weights, slot_outputs.to(combine_weights.dtype))  # (B, T, d_model)
        expert_load = torch.full((self.n_experts,), B * router.slots_per_expert, dtype=torch.int64, device=x.device)
        self.last_expert_load = expert_load
        record(trace, "router_logits", logits)
        record(trace, "dispatch_weights", dispatch_weights)
        record(trace, "combine_weights", combine_weights)
        record(trace, "router_probs", combine_weights)
        record(trace, "expert_ids", slot_expert)
        record(trace, "slots", slots)
        record(trace, "slot_outputs", slot_outputs)
        record(trace, "expert_load", expert_load)
        return out.to(x.dtype)

    def update_bias(self, expert_load: torch.Tensor | None = None) -> torch.Tensor:
        """Aux-loss-free balancing step (router='sigmoid_bias'): move the selection bias against
        the load. expert_load (n_experts,) defaults to the load of the latest forward."""
        if not isinstance(self.router, SigmoidBiasRouter):
            raise ConfigError("moe.router", self.config.moe.router,
                              "has no selection bias: update_bias is for router='sigmoid_bias'")
        if expert_load is None:
            if self.last_expert_load is None:
                raise ValueError("update_bias() without an expert_load needs a forward pass first")
            expert_load = self.last_expert_load
        return self.router.update_bias(expert_load)

    def extra_repr(self) -> str:
        return f"name={self.name!r}, dispatch={self.dispatch!r}"
