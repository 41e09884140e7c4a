"""Mixture-of-Depths: a router decides which tokens a block computes at all.

Raposo et al. 2024, "Mixture-of-Depths: Dynamically allocating compute in transformer-based
language models". A Mixture-of-Experts layer routes each token to some of many feed-forwards;
Mixture-of-Depths routes along the other axis: per sequence, only the top `capacity` share of
the tokens goes through a routed block, the rest skip it on the residual stream.

One concept per module, read in this order:
    routing.py    how many tokens a block computes, top-k over the sequence, gather and scatter
    block.py      the MoD block wrapping the decoder block: x + r * (block(x) - x) for routed tokens
    causal.py     why top-k over the sequence breaks sampling, and the paper's two fixes
    reference.py  a naive per-token reference the batched block is tested against
    mode.py       MoDE: MoD routing with an MoE inside (staged), or no-op experts (integrated)
    flops.py      FLOPs of a forward pass as a function of capacity
"""
from .block import MoDBlock
from .causal import DECISIONS, Predictor, decision_agreement, set_decision
from .flops import block_flops, flops_saving, forward_flops
from .mode import IntegratedMoDE, NoOpRouter
from .reference import mod_block_reference
from .routing import gather_tokens, in_top_k, routed_tokens, scatter_tokens, select_tokens

__all__ = ["MoDBlock", "Predictor", "DECISIONS", "set_decision", "decision_agreement", "routed_tokens",
           "select_tokens", "in_top_k", "gather_tokens", "scatter_tokens", "mod_block_reference",
           "IntegratedMoDE", "NoOpRouter", "forward_flops", "block_flops", "flops_saving"]
