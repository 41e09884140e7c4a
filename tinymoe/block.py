"""The pre-norm decoder block: the residual stream with two side roads.

    h   = x + attention(norm_1(x))       attention mixes information across tokens
    out = h + feed_forward(norm_2(h))     the feed-forward transforms each token alone

The residual stream x -> h -> out is never normalised itself (pre-norm, GPT-2 and Llama); each
side road reads a normalised copy and adds its result back. The feed-forward is the dense MLP,
or a Mixture-of-Experts layer in the blocks the config's MoE settings choose.
"""
from __future__ import annotations

import torch
from torch import nn

from .attention import check_attention_input
from .config import ModelConfig
from .feedforward import make_feedforward
from .multihead import MultiHeadAttention
from .norm import make_norm
from .trace import Trace, record

__all__ = ["DecoderBlock", "make_attention", "make_ffn", "make_block"]


def make_attention(config: ModelConfig, layer: int = 0) -> nn.Module:
    """Dense / sliding-window / chunked attention, or native sparse attention, as the config says
    (the layer index picks Llama 4's chunked-RoPE or global-NoPE kind)."""
    if config.attention == "native_sparse":
        from .nsa import NativeSparseAttention          # the sparse-attention module (its own concept)
        return NativeSparseAttention(config, name="attn")
    return MultiHeadAttention(config, name="attn", layer=layer)


def make_ffn(config: ModelConfig, layer: int) -> nn.Module:
    """The dense feed-forward, or an MoE layer where the config puts one."""
    if config.moe_in_layer(layer) and config.mod is not None and config.mod.kind == "integrated":
        from .mod import IntegratedMoDE                   # MoE with no-op experts (Mixture-of-Depths)
        return IntegratedMoDE(config, name="moe")
    if config.moe_in_layer(layer):
        from .moe import MoE                              # the Mixture-of-Experts layer (its own concept)
        return MoE(config, name="moe")
    return make_feedforward(config, name="ffn")


class DecoderBlock(nn.Module):
    """One pre-norm block. forward returns (out, aux_losses) where aux_losses holds the MoE
    layer's auxiliary losses (empty for a dense block)."""

    def __init__(self, config: ModelConfig, layer: int = 0):
        super().__init__()
        self.d_model = config.d_model
        self.norm_1 = make_norm(config, name="norm_1")
        self.attn = make_attention(config, layer)
        self.norm_2 = make_norm(config, name="norm_2")
        self.ffn = make_ffn(config, layer)

    def forward(self, x: torch.Tensor, trace: Trace | None = None,
                key_padding_mask: torch.Tensor | None = None, cache=None, positions: torch.Tensor | None = None):
        """cache: this layer's LayerKVCache (tinymoe/kv_cache.py); positions: the tokens' true
        positions, (T,) or (B, T) (see MultiHeadAttention.forward)."""
        check_attention_input(x, self.d_model, key_padding_mask)    # (batch, seq_len, d_model), named if not
        record(trace, "x", x, "input")
        extra = {name: value for name, value in (("cache", cache), ("positions", positions)) if value is not None}
        h = x + self.attn(self.norm_1(x, trace), trace, key_padding_mask=key_padding_mask, **extra)  # (B, T, d_model)
        record(trace, "resid_attn", h)
        ffn_out, aux_losses = self.ffn(self.norm_2(h, trace), trace)  # dense: no losses; MoE: its own
        out = h + ffn_out                                                                    # (B, T, d_model)
        record(trace, "out", out, "output")
        return out, aux_losses


def make_block(config: ModelConfig, layer: int = 0) -> nn.Module:
    """The decoder block of layer `layer`: a Mixture-of-Depths block where config.mod routes it."""
    if config.mod_in_layer(layer):
        from .mod import MoDBlock                         # the token-routing wrapper (its own concept)
        return MoDBlock(config, layer=layer)
    return DecoderBlock(config, layer=layer)
