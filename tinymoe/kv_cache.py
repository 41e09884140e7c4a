"""The KV cache: keep every layer's keys and values so each new token costs one row, not a re-run.

A decoder's key and value at position p depend only on tokens 0..p (causal attention), so they
never change once computed. Generating without a cache recomputes all of them for every new
token; with a cache we run the prompt once (prefill), store its keys and values, and then feed
ONE token per step (decode): its query attends over the stored keys plus its own.

    prefill   model(prompt (B, T), cache=cache)      positions 0 .. T-1, fills the cache
    decode    model(token (B, 1), cache=cache)       position cache.length, appends one row

The API (what generation code uses):

    cache = KVCache(config, batch=B, max_len=None, dtype=torch.float32, device=None)
    out   = model(tokens, cache=cache)               # logits for the new tokens only
    cache.length                                     # tokens seen = the next token's position
    cache.layers[i]                                  # LayerKVCache of layer i:
        .k          (B, n_kv_heads, capacity, head_dim)   keys, AFTER RoPE (and QK-norm)
        .v          (B, n_kv_heads, capacity, v_dim)      values
        .positions  (capacity,) int64                     true position of each slot, -1 = empty
        .update(k, v, positions) -> (k_all, v_all, key_positions)   what the new queries attend over
    cache.nbytes() == sizes.kv_cache_bytes(config, max_len, batch, bytes_per_value)
    kv_cache_unsupported(config) -> None, or the reason this config cannot use a cache

Design choices, each one a thing that otherwise goes wrong:
- n_kv_heads, not n_heads: grouped-query attention's saving is exactly here (notebook 05).
- Positions are explicit. Keys are stored already rotated by RoPE at their true position, and a
  decoded token is rotated by its own position (cache.length), never by 0. Masks are built from
  the stored positions (`mask_from_positions`), so the same rule serves causal, sliding-window
  and chunked layers, prefill and decode.
- Bounded layers: a sliding-window layer keeps a ring buffer of `window` slots and a chunked
  layer (Llama 4) one of `attention_chunk_size` slots; slot = position % capacity. A slot that
  holds a key the query may not see (too old, or from the previous chunk) is masked by its
  position. Full layers keep max_len slots (preallocated, like a static cache on a GPU).
- One batch, one position: every sequence in the batch is at the same position (no ragged or
  left-padded batches; generate them one by one).
- What cannot be cached says so (`kv_cache_unsupported`): native sparse attention (its
  compressed blocks and selection are defined over the whole sequence), non-causal attention,
  and MoE routing whose result depends on the other tokens in the batch (capacity limits,
  expert choice, soft MoE). `TinyLM.generate` then recomputes, with a warning.
"""
from __future__ import annotations

import torch

from .attention import mask_from_positions          # the one position rule (re-exported here)
from .config import ConfigError, ModelConfig

__all__ = ["KVCache", "LayerKVCache", "mask_from_positions", "kv_cache_unsupported", "layer_cache_capacity"]


def _unsupported(config: ModelConfig) -> tuple[str, object, str] | None:
    """(field, value, reason) of the first thing that keeps this config from a KV cache, or None."""
    config.validate()
    if config.attention == "native_sparse":
        return ("attention", config.attention, "native sparse attention compresses and selects blocks over the "
                "whole sequence, so its keys are not a per-token cache")
    if not config.causal:
        return ("causal", config.causal,
                "non-causal attention lets earlier tokens see later ones, so their keys and values go stale")
    if len(set(config.v_dims[:: config.group_size])) > 1:
        return ("v_head_dims", config.v_head_dims,
                "the cache stores one value size for every kv head; this config has unequal v_head_dims")
    if config.mod is not None:
        return ("Mixture-of-Depths picks the top-k tokens of the whole sequence, so one decoded token "
                "is routed differently than in the full sequence")
    moe = config.moe
    if moe is not None:
        if moe.router in ("expert_choice", "soft"):
            return ("moe.router", moe.router,
                    f"the {moe.router} router mixes tokens across the batch: one decoded token is routed differently")
        if moe.capacity_factor is not None:
            return ("moe.capacity_factor", moe.capacity_factor,
                    "expert capacity depends on how many tokens are routed together: one decoded token "
                    "is never dropped where the full sequence might be")
    return None


def kv_cache_unsupported(config: ModelConfig) -> str | None:
    """None if a KV cache gives the same logits as recomputing; else the reason it cannot."""
    found = _unsupported(config)
    return None if found is None else found[2]


def layer_cache_capacity(config: ModelConfig, layer: int, max_len: int) -> int:
    """Slots layer `layer` needs to serve positions 0 .. max_len - 1: the window, the chunk, or all."""
    chunk = config.layer_chunk_size(layer)
    if chunk is not None:
        return min(chunk, max_len)
    if config.attention == "sliding_window":
        return min(config.window, max_len)
    return max_len


class LayerKVCache:
    """One attention layer's keys and values, for n_kv_heads heads, in `capacity` slots."""

    def __init__(self, batch: int, n_kv_heads: int, head_dim: int, v_dim: int, capacity: int, ring: bool,
                 dtype=torch.float32, device=None):
        self.capacity, self.ring = capacity, ring
        self.k = torch.zeros(batch, n_kv_heads, capacity, head_dim, dtype=dtype, device=device)
        self.v = torch.zeros(batch, n_kv_heads, capacity, v_dim, dtype=dtype, device=device)
        self.positions = torch.full((capacity,), -1, dtype=torch.int64, device=device)

    def update(self, k: torch.Tensor, v: torch.Tensor, positions: torch.Tensor):
        """Store new keys k (B, n_kv_heads, T, head_dim) and values v (B, n_kv_heads, T, v_dim) at
        `positions` (T,), consecutive and following what is cached; return the keys, values and key positions the new queries attend over
        (mask them with `mask_from_positions`)."""
        if k.shape[0] != self.k.shape[0] or k.shape[1] != self.k.shape[1] or k.shape[-1] != self.k.shape[-1]:
            raise ValueError(f"k has shape {tuple(k.shape)}: this cache holds (batch, n_kv_heads, seq, head_dim) = "
                             f"({self.k.shape[0]}, {self.k.shape[1]}, seq, {self.k.shape[-1]})")
        T = k.shape[2]
        if not self.ring:
            start, end = int(positions[0]), int(positions[-1]) + 1
            if end > self.capacity:
                raise ValueError(f"position {end - 1} does not fit a cache of max_len={self.capacity} tokens: "
                                 f"make the KVCache with a larger max_len")
            self.k[:, :, start:end] = k
            self.v[:, :, start:end] = v
            self.positions[start:end] = positions
            return self.k[:, :, :end], self.v[:, :, :end], self.positions[:end]   # slots 0..end-1 = positions
        # Ring buffer: the new queries see the old slots AND all their own keys (a prefill longer
        # than the window still needs every in-window key of its own); then the newest
        # `capacity` keys overwrite the oldest slots.
        k_all = torch.cat([self.k, k], dim=2)                   # (B, n_kv_heads, capacity + T, head_dim)
        v_all = torch.cat([self.v, v], dim=2)                   # (B, n_kv_heads, capacity + T, v_dim)
        key_positions = torch.cat([self.positions, positions])  # (capacity + T,)
        keep = min(T, self.capacity)
        slots = positions[T - keep:] % self.capacity            # (keep,)
        self.k[:, :, slots] = k[:, :, T - keep:]
        self.v[:, :, slots] = v[:, :, T - keep:]
        self.positions[slots] = positions[T - keep:]
        return k_all, v_all, key_positions

    def nbytes(self) -> int:
        return self.k.numel() * self.k.element_size() + self.v.numel() * self.v.element_size()


class KVCache:
    """A LayerKVCache per layer, and the number of tokens seen so far (`length`)."""

    def __init__(self, config: ModelConfig, batch: int = 1, max_len: int | None = None,
                 dtype: torch.dtype = torch.float32, device=None):
        found = _unsupported(config)
        if found is not None:
            field, value, reason = found
            raise ConfigError(field, value, f"cannot use a KV cache: {reason}")
        max_len = config.max_seq_len if max_len is None else max_len
        for name, value in (("batch", batch), ("max_len", max_len)):
            if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
                raise ValueError(f"{name}={value!r}: must be a positive whole number")
        if max_len > config.max_seq_len:
            raise ValueError(f"max_len={max_len} exceeds max_seq_len={config.max_seq_len}: positions past it "
                             f"have no RoPE angle; raise max_seq_len in the config")
        self.config, self.batch, self.max_len, self.length = config, batch, max_len, 0
        v_dim = config.v_dims[0]
        self.layers = []
        for layer in range(config.n_layers):
            capacity = layer_cache_capacity(config, layer, max_len)
            self.layers.append(LayerKVCache(batch, config.kv_heads, config.qk_dim, v_dim, capacity,
                                            ring=capacity < max_len, dtype=dtype, device=device))

    def next_positions(self, seq_len: int) -> torch.Tensor:
        """(seq_len,) int64: the true positions of the next seq_len tokens."""
        if self.length + seq_len > self.max_len:
            raise ValueError(f"{self.length} cached + {seq_len} new tokens exceed max_len={self.max_len}")
        device = self.layers[0].positions.device
        return torch.arange(self.length, self.length + seq_len, device=device)

    def advance(self, seq_len: int) -> None:
        """Count seq_len more tokens as seen (the model calls this after all layers stored them)."""
        self.length += seq_len

    def nbytes(self) -> int:
        """Bytes held by all layers' key and value tensors."""
        return sum(layer.nbytes() for layer in self.layers)

    def __repr__(self) -> str:
        caps = sorted({layer.capacity for layer in self.layers})
        return (f"KVCache(layers={len(self.layers)}, batch={self.batch}, length={self.length}, "
                f"max_len={self.max_len}, slots per layer={caps}, bytes={self.nbytes()})")
