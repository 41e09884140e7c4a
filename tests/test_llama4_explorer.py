"""Llama4Explorer (notebook 10), tested without a browser: the masks it draws are the core's, and the
cache figures follow the chunk size."""
from __future__ import annotations

import pytest
import torch

pytest.importorskip("ipywidgets")
pytest.importorskip("plotly")

from tinymoe import causal_mask, chunked_mask, kv_cache_bytes  # noqa: E402
from tinymoe.viz import Llama4Explorer  # noqa: E402


def test_each_panel_is_its_layers_mask_chunked_or_global():
    e = Llama4Explorer(seq_len=9, attention_chunk_size=3, no_rope_layer_interval=2, n_layers=4)
    masks = e.view.heatmap                                                   # (n_layers, T, T)
    for layer in range(4):
        expected = causal_mask(9) if layer % 2 == 1 else chunked_mask(9, 3)
        assert torch.equal(masks[layer].bool(), expected), f"layer {layer}'s panel is not its mask"
    assert "1: NoPE, global" in e.shape_label and "0: RoPE, chunk 3" in e.shape_label, e.shape_label


def test_moving_the_chunk_changes_the_cache_bytes_it_reports():
    e = Llama4Explorer(seq_len=12, attention_chunk_size=4, no_rope_layer_interval=4, n_layers=4)
    before = e.shape_label
    e.set(attention_chunk_size=2)
    assert e.shape_label != before and e.error is None
    config = e.config(e.values)
    assert f"{kv_cache_bytes(config, 12):,} bytes" in e.shape_label, e.shape_label
    assert "slots per layer: layer 0: 2" in e.view.notes.replace("KV-cache ", "")
