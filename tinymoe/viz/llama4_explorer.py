"""Llama 4's interleaved attention as a widget: every layer's mask side by side, and the KV cache.

Move the chunk size, the NoPE interval, the number of layers or the sequence length: the same
core model runs again, each layer's `attn.mask` (recorded by the core) is drawn as one panel, and
the notes give each layer's KV-cache slots from `tinymoe.kv_cache` (a chunked layer keeps one
chunk, a NoPE layer every token). An impossible combination shows the config's message.
"""
from __future__ import annotations

import torch

from ..config import ModelConfig
from ..kv_cache import layer_cache_capacity
from ..sizes import kv_cache_bytes
from .explorer import Explorer, View, slider
from .forward import traced_forward
from .html import escape
from .style import plural

__all__ = ["Llama4Explorer"]


class Llama4Explorer(Explorer):
    """Chunked local (RoPE) layers interleaved with global NoPE layers: masks and cache per layer."""

    title = "Llama 4: chunked local layers and global NoPE layers"
    heatmap_size = (640, 260)

    def __init__(self, seq_len: int = 10, attention_chunk_size: int = 4, no_rope_layer_interval: int = 4,
                 n_layers: int = 4, seed: int = 0):
        controls = {"seq_len": slider(seq_len, 1, 24), "attention_chunk_size": slider(attention_chunk_size, 1, 24),
                    "no_rope_layer_interval": slider(no_rope_layer_interval, 1, 6), "n_layers": slider(n_layers, 1, 6)}
        self.max_seq_len = controls["seq_len"].max
        super().__init__(controls, seed=seed)

    def config(self, values: dict) -> ModelConfig:
        return ModelConfig(vocab_size=32, d_model=8, n_heads=2, n_kv_heads=1, n_layers=values["n_layers"],
                           max_seq_len=self.max_seq_len, rope_pairing="interleaved",
                           attention_chunk_size=values["attention_chunk_size"],
                           no_rope_layer_interval=values["no_rope_layer_interval"], qk_norm=True).validate()

    def build(self, values: dict) -> View:
        config = self.config(values)
        T = values["seq_len"]
        run = traced_forward(config, "model", T, seed=self.seed)
        masks = torch.stack([run.trace[f"layers.{i}.attn.mask"][0, 0].float()
                             for i in range(config.n_layers)])                          # (n_layers, T, T)
        kinds = ["NoPE, global" if not config.layer_uses_rope(i) else f"RoPE, chunk {config.layer_chunk_size(i)}"
                 for i in range(config.n_layers)]
        slots = [layer_cache_capacity(config, i, T) for i in range(config.n_layers)]
        cache = kv_cache_bytes(config, T, bytes_per_value=2)
        full = kv_cache_bytes(config.replace(attention_chunk_size=None), T, bytes_per_value=2)
        label = (f"{config.n_layers} layers: " + " · ".join(f"{i}: {k}" for i, k in enumerate(kinds))
                 + f" · KV cache after {plural(T, 'token')}: {cache:,} bytes (all global: {full:,})")
        notes = ('<div style="font-family:sans-serif;font-size:12px;color:#333">KV-cache slots per layer: '
                 + escape(", ".join(f"layer {i}: {s}" for i, s in enumerate(slots))) + "</div>")
        return View(shapes={f"layers.{i}.attn.mask": tuple(masks[i].shape) for i in range(config.n_layers)},
                    shape_label=label, heatmap=masks,
                    heatmap_panels=[f"layer {i} ({k})" for i, k in enumerate(kinds)],
                    heatmap_title="attn.mask of every layer (1 = may attend; rows: queries, columns: keys)",
                    notes=notes)                                 # no shapes table: a 4-layer model's is pages long
