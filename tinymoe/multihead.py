"""Multi-head attention, with grouped-query attention from the same module.

Each of n_heads query heads attends on its own with a q/k size head_dim and a value size of its
own; the heads' outputs are concatenated side by side and an output projection W_o maps the
concatenation back to d_model. Value sizes may differ per head (5, 3, 3 -> a concatenation of 11),
as in the hand-built sheets: nothing in attention needs them equal.

Grouped-query attention (Ainslie et al. 2023) keeps n_heads query heads but only n_kv_heads
key/value heads; each key/value head serves a group of n_heads // n_kv_heads consecutive query
heads (query head h reads kv head h // group_size). n_kv_heads == n_heads is ordinary MHA,
n_kv_heads == 1 is multi-query attention (Shazeer 2019). Fewer kv heads: fewer parameters in
W_k, W_v and a KV cache smaller by the group size.

A layer index picks Llama 4's per-layer kind (tinymoe/llama4.py): chunked local attention with
RoPE and QK-norm, or a global NoPE layer. With a `cache` (tinymoe/kv_cache.py) the layer stores
its new keys/values and attends over everything cached, masked by true positions.
"""
from __future__ import annotations

import torch
from torch import nn

from .attention import attention_weights, check_attention_input, causal_mask, sliding_window_mask
from .config import ModelConfig
from .kv_cache import LayerKVCache, mask_from_positions
from .llama4 import attention_temperature, chunked_mask, qk_norm
from .rope import RotaryEmbedding
from .trace import Trace, record, scoped

__all__ = ["MultiHeadAttention"]


class MultiHeadAttention(nn.Module):
    """Dense, causal or sliding-window attention with n_heads query and n_kv_heads kv heads."""

    def __init__(self, config: ModelConfig, name: str = "attn", layer: int = 0):
        super().__init__()
        self.config, self.name, self.layer = config, name, layer
        self.use_rope = config.layer_uses_rope(layer)               # False on Llama 4's NoPE layers
        self.chunk_size = config.layer_chunk_size(layer)            # Llama 4's chunked local layers
        self.n_heads, self.n_kv_heads = config.n_heads, config.kv_heads
        self.head_dim, self.group_size = config.qk_dim, config.group_size
        self.v_dims = config.v_dims                                 # value size of each query head
        self.kv_v_dims = self.v_dims[:: self.group_size]            # value size of each kv head
        d = config.d_model
        self.W_q = nn.Linear(d, self.n_heads * self.head_dim, bias=config.bias)
        self.W_k = nn.Linear(d, self.n_kv_heads * self.head_dim, bias=config.bias)
        self.W_v = nn.Linear(d, sum(self.kv_v_dims), bias=config.bias)
        self.W_o = nn.Linear(sum(self.v_dims), d, bias=config.bias)
        self.rope = (RotaryEmbedding(self.head_dim, config.max_seq_len, config.rope_base, config.rope_pairing)
                     if self.use_rope else None)

    def forward(self, x: torch.Tensor, trace: Trace | None = None,
                key_padding_mask: torch.Tensor | None = None, cache: LayerKVCache | None = None,
                positions: torch.Tensor | None = None) -> torch.Tensor:
        """x: (batch, seq, d_model) -> (batch, seq, d_model).
        key_padding_mask: optional (batch, seq) bool, True for real tokens.
        cache: this layer's LayerKVCache.
        positions: (seq,) or (batch, seq) true positions of x's tokens (default 0 .. seq-1). RoPE
        rotates by them and the mask compares them, so a cache's new tokens (positions from where
        the cache stands) or a subset of a sequence (Mixture-of-Depths' routed tokens) attend
        exactly as they would in place."""
        check_attention_input(x, self.config.d_model, key_padding_mask)
        if cache is not None and key_padding_mask is not None:
            raise ValueError("key_padding_mask with a KV cache: the cache serves unpadded batches only")
        B, T, _ = x.shape
        trace = scoped(trace, self.name)
        H, H_kv, D = self.n_heads, self.n_kv_heads, self.head_dim
        record(trace, "x", x, "input")
        for w in ("W_q", "W_k", "W_v", "W_o"):
            record(trace, w, getattr(self, w).weight, "weight")

        q = self.W_q(x).view(B, T, H, D).transpose(1, 2)            # (B, n_heads, T, head_dim)
        k = self.W_k(x).view(B, T, H_kv, D).transpose(1, 2)         # (B, n_kv_heads, T, head_dim)
        record(trace, "q", q)
        record(trace, "k", k)
        v = self._values(x, trace)        # (B, n_kv_heads, T, v_dim), or n_kv_heads x (B, T, v_dim_j) when sizes differ
        if self.rope is not None:
            q, k = self.rope(q, k, positions=positions, trace=trace)
            record(trace, "q_rot", q)
            record(trace, "k_rot", k)
            if self.config.qk_norm:                                 # Llama 4: after RoPE, RoPE layers only
                q, k = qk_norm(q, self.config.norm_eps), qk_norm(k, self.config.norm_eps)
                record(trace, "q_norm", q)
                record(trace, "k_norm", k)
        elif self.config.attn_temperature_tuning:                   # Llama 4's NoPE layers
            pos = torch.arange(T, device=x.device) if positions is None else positions
            scale = attention_temperature(pos, self.config.attn_scale, self.config.floor_scale)  # (T,) or (B, T)
            per_row = scale[:, None, :, None] if scale.dim() == 2 else scale[:, None]    # over heads and dims
            q = (q * per_row.to(q.dtype)).to(q.dtype)               # (B, n_heads, T, head_dim)
            record(trace, "q_temperature", scale)
        if cache is not None:
            if positions is None:
                raise ValueError("a KV cache needs the tokens' true positions (positions=cache.next_positions(seq))")
            k, v, key_positions = cache.update(k, v, positions)    # (B, n_kv_heads, S, .) S: cached + new
        else:
            key_positions = positions                               # the keys are the queries' own tokens

        if self.config.attention_backend != "eager" and (cache is None or not cache.ring):
            # tiled: no (T, T) weights at all. (A ring buffer's slots are out of position order: eager.)
            return self._flash_forward(q, k, v, key_padding_mask, trace)

        # Each query head reads the kv head of its group: kv head j serves query heads
        # j*group .. (j+1)*group - 1, so repeat each kv head `group` times in place.
        k = k.repeat_interleave(self.group_size, dim=1)             # (B, n_heads, T, head_dim)

        if positions is not None and (self.config.causal or cache is not None):
            window = self.config.window if self.config.attention == "sliding_window" else None
            mask = mask_from_positions(positions, key_positions, window, self.chunk_size)  # (T, S) or (B, T, S)
            if mask.dim() == 3:
                mask = mask[:, None]                                # (B, 1, T, S): every head
            if key_padding_mask is not None:
                mask = mask & key_padding_mask[:, None, None, :].bool()
        else:
            mask = self._mask(T, x.device, key_padding_mask)       # (T, T) or (B, 1, T, T)
        weights = attention_weights(q, k, mask=mask, trace=trace)   # (B, n_heads, T, T)

        # Per head: weights @ that head's values, then the heads side by side.
        v_heads = v.unbind(1) if torch.is_tensor(v) else v          # n_kv_heads x (B, S, v_dim of kv head j)
        heads = []
        for h in range(H):
            out_h = weights[:, h] @ v_heads[h // self.group_size]   # (B, T, v_dim of head h)
            record(trace, f"head{h}", out_h)
            heads.append(out_h)
        concat = torch.cat(heads, dim=-1)                           # (B, T, sum(v_dims))
        record(trace, "concat", concat)
        out = self.W_o(concat)                                      # (B, T, d_model)
        record(trace, "out", out, "output")
        return out

    def _flash_forward(self, q, k, v, key_padding_mask, trace):
        """The same attention by tinymoe.flash (config.attention_backend): k and v stay n_kv_heads wide,
        v (B, n_kv_heads, S, v_dim) with S keys: T, or cached + T (the last T)."""
        from .flash.backend import flash_backend
        B, _, T, _ = q.shape
        sliding = self.config.attention == "sliding_window"
        causal = self.config.causal or sliding or self.chunk_size is not None   # windows and chunks look back
        heads = flash_backend(q, k, v, self.config.attention_backend, causal=causal,
                              window=self.config.window if sliding else None, chunk_size=self.chunk_size,
                              key_padding_mask=key_padding_mask)       # (B, n_heads, T, v_dim)
        concat = heads.transpose(1, 2).reshape(B, T, -1)                 # (B, T, n_heads * v_dim)
        record(trace, "concat", concat)
        out = self.W_o(concat)                                           # (B, T, d_model)
        record(trace, "out", out, "output")
        return out

    def _values(self, x: torch.Tensor, trace: Trace | None):
        """The values, split by kv head like q and k. With one value size for every head (every
        model but the unequal-heads lesson): one tensor (B, n_kv_heads, T, v_dim), recorded as `v`.
        With sizes that differ (v_head_dims=(5, 3, 3)) the heads cannot share one tensor: a list of
        n_kv_heads tensors (B, T, v_dim_j), recorded as `v0`, `v1`, ..."""
        B, T, _ = x.shape
        v = self.W_v(x)                                             # (B, T, sum of kv value dims)
        if len(set(self.kv_v_dims)) == 1:
            v = v.view(B, T, self.n_kv_heads, -1).transpose(1, 2)   # (B, n_kv_heads, T, v_dim)
            record(trace, "v", v)
            return v
        v_heads = list(v.split(self.kv_v_dims, dim=-1))             # n_kv_heads x (B, T, v_dim_j)
        for j, v_j in enumerate(v_heads):
            record(trace, f"v{j}", v_j)
        return v_heads

    def _mask(self, T: int, device, key_padding_mask):
        """(T, T) or (B, 1, T, T) bool built from the config's causal/window rules and any padding."""
        mask = None
        if self.chunk_size is not None:
            mask = chunked_mask(T, self.chunk_size, device=device)
        elif self.config.attention == "sliding_window":
            mask = sliding_window_mask(T, self.config.window, device=device)
        elif self.config.causal:
            mask = causal_mask(T, device=device)
        if key_padding_mask is not None:
            pad = key_padding_mask[:, None, None, :].bool()         # (B, 1, 1, T): which keys are real
            mask = pad if mask is None else (mask & pad)
        return mask
