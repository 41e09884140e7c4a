"""What an MoE layer costs: all its parameters, and the ones a single token actually uses.

The point of MoE in two numbers. With n_experts experts of P_e parameters each and top_k:

    total  = router + n_experts * P_e + shared
    active = router + top_k * P_e + shared               per token

so the model can grow (more experts) while the compute per token stays put (same top_k).
Mixtral 8x7B: 47B parameters, about 13B active per token.

Under expert choice a token is processed by capacity_factor experts on average (each of the
n_experts experts takes capacity_factor * N / n_experts tokens). Under soft MoE every expert
contributes to every token, so all of them count as active.
"""
from __future__ import annotations

from ..config import ModelConfig

__all__ = ["moe_parameter_counts"]


def moe_parameter_counts(config: ModelConfig) -> dict[str, float]:
    """Parameters of one MoE layer from the config alone (nothing is built):
    {"router", "expert" (one), "experts" (all routed), "shared", "total", "active"}.
    "active" is per token (a float under expert choice, where it is an average)."""
    config.validate()
    if config.moe is None:
        raise ValueError("config.moe is None: this config has no MoE layer to count")
    moe, d = config.moe, config.d_model
    d_ff = config.ff_dim if moe.d_ff_expert is None else moe.d_ff_expert
    matrices = 3 if config.ffn == "swiglu" else 2
    expert = matrices * d * d_ff
    slots = moe.slots_per_expert if moe.router == "soft" else 1
    router = moe.n_experts * slots * d
    if moe.router == "noisy_topk":
        router *= 2                                                          # W_router and W_noise
    shared = moe.n_shared_experts * expert + (d if moe.shared_expert_gate else 0)
    if moe.router == "soft":
        experts_per_token = moe.n_experts
    elif moe.router == "expert_choice":
        experts_per_token = min(moe.capacity_factor, moe.n_experts)
    else:
        experts_per_token = moe.top_k
    return {"router": router, "expert": expert, "experts": moe.n_experts * expert, "shared": shared,
            "total": router + moe.n_experts * expert + shared,
            "active": router + experts_per_token * expert + shared}
