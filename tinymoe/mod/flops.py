"""FLOPs of one forward pass, and what Mixture-of-Depths saves as capacity shrinks.

A matrix product of an (n, a) input with an (a, b) weight costs 2 n a b FLOPs (a multiply and
an add per weight per token), so every projection costs 2 * tokens * its parameters, read from
the same sizes functions the notebooks use (`attention_parameters`, `moe_parameter_counts`).
Attention itself multiplies tokens by tokens:

    scores  q k^T      2 * n^2 * n_heads * head_dim
    mixing  weights v  2 * n^2 * sum(v_head_dims)

so a routed block that computes k = capacity * T tokens does linear work times capacity and
attention work times capacity^2. The router (and the predictor) still read every token.
Norms, softmax, biases and the residual adds are left out (a few FLOPs per value, not per
weight), the convention of torch.utils.flop_counter, which the tests count against.
"""
from __future__ import annotations

import dataclasses

from ..config import ConfigError, ModelConfig
from ..moe.sizes import moe_parameter_counts
from ..sizes import attention_parameters
from .routing import routed_tokens

__all__ = ["block_flops", "forward_flops", "flops_saving"]


def _ffn_parameters(config: ModelConfig, layer: int) -> float:
    """Parameters a token passes through in the block's feed-forward (MoE: the active ones)."""
    if config.moe_in_layer(layer):
        return moe_parameter_counts(config)["active"]
    matrices = 3 if config.ffn == "swiglu" else 2
    return matrices * config.d_model * config.ff_dim + (matrices - 1) * config.ff_dim * int(config.bias) \
        + config.d_model * int(config.bias)


def block_flops(config: ModelConfig, n_tokens: int, layer: int = 0) -> dict[str, float]:
    """FLOPs of one decoder block on n_tokens tokens: projections, attention, feed-forward, total."""
    projections = 2 * n_tokens * attention_parameters(config)["total"]
    attention = 2 * n_tokens ** 2 * (config.n_heads * config.qk_dim + sum(config.v_dims))
    ffn = 2 * n_tokens * _ffn_parameters(config, layer)
    return {"projections": projections, "attention": attention, "ffn": ffn,
            "total": projections + attention + ffn}


def forward_flops(config: ModelConfig, seq_len: int, capacity: float | None = None) -> dict:
    """FLOPs of one forward pass over one sequence of seq_len tokens.

    capacity overrides config.mod.capacity (so a curve over capacity needs one config).
    Returns {"layers": [per-block total], "routed_tokens": [tokens each block computes],
    "lm_head": ..., "total": ...}. The embedding is a lookup: 0 FLOPs."""
    config.validate()
    if isinstance(seq_len, bool) or not isinstance(seq_len, int) or seq_len < 1:
        raise ConfigError("seq_len", seq_len, "must be a positive whole number")
    mod = config.mod
    if capacity is None and mod is not None:
        capacity = mod.capacity
    layers, tokens = [], []
    for layer in range(config.n_layers):
        if config.mod_in_layer(layer):
            k = routed_tokens(seq_len, capacity)
            router = 2 * seq_len * config.d_model                       # one logit per token
            if mod.predictor:
                router += 2 * seq_len * mod.predictor_hidden * (config.d_model + 1)   # d -> hidden -> 1
            layers.append(block_flops(config, k, layer)["total"] + router)
            tokens.append(k)
        else:
            layers.append(block_flops(config, seq_len, layer)["total"])
            tokens.append(seq_len)
    lm_head = 2 * seq_len * config.d_model * config.vocab_size
    return {"layers": layers, "routed_tokens": tokens, "lm_head": lm_head, "total": sum(layers) + lm_head}


def flops_saving(config: ModelConfig, seq_len: int, capacity: float | None = None) -> float:
    """1 - FLOPs(MoD) / FLOPs(the same model with every block dense): the share of compute saved."""
    dense = dataclasses.replace(config, mod=None)
    return 1 - forward_flops(config, seq_len, capacity)["total"] / forward_flops(dense, seq_len)["total"]
