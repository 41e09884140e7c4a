"""The fair dense baseline of an MoE model: the same active parameters per token.

A token in an MoE layer runs top_k experts of hidden size d_ff_expert (plus any shared
experts), so per token it does the work of one feed-forward of hidden size

    d_ff = (top_k + n_shared_experts) * d_ff_expert

The dense baseline is the same model with that feed-forward in place of every MoE layer. It
has the MoE's active parameters per token, less the router's n_experts * d_model per layer,
and it trains on the same tokens: what the MoE adds is its extra, inactive experts.
"""
from __future__ import annotations

import dataclasses

from ..config import ConfigError, ModelConfig

__all__ = ["dense_baseline"]


def dense_baseline(config: ModelConfig) -> ModelConfig:
    """A dense ModelConfig whose feed-forward does the work of the MoE's active experts."""
    config.validate()
    if config.moe is None:
        raise ConfigError("moe", None, "the config is already dense: a dense baseline needs an MoE config")
    moe = config.moe
    if moe.router in ("expert_choice", "soft"):
        raise ConfigError("moe.router", moe.router, "has no fixed number of experts per token, so no dense "
                          "feed-forward does exactly its per-token work; use a token-choice router")
    if moe.every_n_layers != 1:
        raise ConfigError("moe.every_n_layers", moe.every_n_layers,
                          "must be 1 for dense_baseline: the blocks without MoE would keep their own d_ff")
    d_ff_expert = config.ff_dim if moe.d_ff_expert is None else moe.d_ff_expert
    return dataclasses.replace(config, moe=None, d_ff=(moe.top_k + moe.n_shared_experts) * d_ff_expert).validate()
