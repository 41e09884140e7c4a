"""FlashExplorer: which tiles flash attention computes, which it skips, and the bytes it moves.

Controls: seq_len, the tile size (query and key tiles alike), the mask (dense, causal, sliding
window, chunked) and its window / chunk_size. Every picture runs the core:

  heatmap  the (T, T) query-key pairs as the kernel sees them: 1 = in a computed tile and kept,
           0.35 = in a computed tile but masked (the tile was loaded, the pair set to -inf),
           0 = in a skipped tile (never loaded); tile borders every `block` cells
           (tinymoe.flash.tile_map)
  sheet    the tile map itself: one cell per (query tile, key tile), 2 full, 1 masked, 0 skipped
  curve    bytes moved per head as the sequence grows, naive vs tiled at this tile size and mask
           (tinymoe.flash.attention_bytes), with a line at the current seq_len
  notes    the counts at this size, and the max |flash - eager| of the core's tiled reference
           against its plain attention on seeded q, k, v (run at every move)
`.counts` reads the numbers of the picture shown now.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

from ..attention import scaled_dot_product_attention
from ..flash import FULL, PARTIAL, SKIP, MaskRule, attention_bytes, flash_attention, tile_map
from .explorer import Explorer, View, dropdown, slider
from .html import escape
from .sheet import sheet

__all__ = ["FlashExplorer", "FlashView", "MASK_KINDS"]

MASK_KINDS = ("dense", "causal", "sliding window", "chunked")


@dataclass
class FlashView(View):
    counts: dict = field(default_factory=dict)       # tiles, tiles_computed, tiles_skipped, ..., bytes, error


def mask_rule(values: dict) -> MaskRule:
    """The MaskRule the controls describe (window and chunk_size only used by their mask kind)."""
    kind = values["mask"]
    return MaskRule(causal=kind != "dense", window=values["window"] if kind == "sliding window" else None,
                    chunk_size=values["chunk_size"] if kind == "chunked" else None)


def pair_picture(rule: MaskRule, seq_len: int, block: int) -> torch.Tensor:
    """(T, T): 1 kept, 0.35 computed but masked, 0 skipped, from the tile map and the mask rule."""
    tiles = tile_map(rule, seq_len, seq_len, block, block)
    computed = (tiles != SKIP).repeat_interleave(block, 0).repeat_interleave(block, 1)[:seq_len, :seq_len]
    allowed = rule.dense(seq_len, seq_len)
    return torch.where(computed, torch.where(allowed, 1.0, 0.35), 0.0)


class FlashExplorer(Explorer):
    """Move the sequence length, the tile size or the mask: the tiles computed and skipped, and the
    bytes naive and tiled attention move, follow."""

    title = "Flash attention: tiles computed and skipped, bytes moved"
    heatmap_size = (380, 340)

    def __init__(self, seq_len: int = 10, block: int = 4, mask: str = "causal", window: int = 3, chunk_size: int = 4,
                 max_seq_len: int = 64, max_block: int = 16, head_dim: int = 3, curve_max_len: int = 256,
                 bytes_per_value: int = 2, seed: int = 0):
        self.head_dim, self.bytes_per_value = head_dim, bytes_per_value
        self.curve_lengths = sorted({int(n) for n in np.linspace(max(block, 2), max(curve_max_len, seq_len), 24)})
        controls = {"seq_len": slider(seq_len, 1, max_seq_len),
                    "block": slider(block, 1, max_block, description="tile size"),
                    "mask": dropdown(mask, MASK_KINDS),
                    "window": slider(window, 1, max_seq_len),
                    "chunk_size": slider(chunk_size, 1, max_seq_len)}
        super().__init__(controls, seed=seed)

    @property
    def counts(self) -> dict:
        """Tiles and bytes of the picture shown now (see tinymoe.flash.attention_bytes), and `max_error`."""
        return dict(self.view.counts)

    def build(self, values: dict) -> FlashView:
        T, block = values["seq_len"], values["block"]
        rule = mask_rule(values)
        tiles = tile_map(rule, T, T, block, block)                          # (n_tiles, n_tiles)
        counts = attention_bytes(T, T, self.head_dim, block, block, rule, self.bytes_per_value)

        # The tiled reference against plain attention, on seeded inputs at this size.
        g = torch.Generator().manual_seed(self.seed)
        q, k, v = (torch.randn(1, 1, T, self.head_dim, generator=g) for _ in range(3))   # (1, 1, T, head_dim)
        flash = flash_attention(q, k, v, causal=rule.causal, window=rule.window, chunk_size=rule.chunk_size,
                                block_q=block, block_k=block)
        eager, _ = scaled_dot_product_attention(q, k, v, mask=rule.dense(T, T))
        counts["max_error"] = float((flash - eager).abs().max())

        n = tiles.shape[0]
        tile_labels = [f"{i * block}-{min(T, (i + 1) * block) - 1}" for i in range(n)]
        sheets = [sheet(tiles, "tile map (2 full, 1 masked, 0 skipped)", row_labels=[f"q {t}" for t in tile_labels],
                        col_labels=[f"k {t}" for t in tile_labels], decimals=0,
                        note="rows: query tiles, columns: key tiles")]
        ratio = counts["naive_bytes"] / counts["tiled_bytes"]
        label = (f"seq_len={T} · tile {block}×{block} · {rule.kind} · tiles: {counts['tiles_computed']} of "
                 f"{counts['tiles']} computed ({counts['tiles_masked']} masked, {counts['tiles_skipped']} skipped) · "
                 f"bytes naive/tiled = {ratio:.2f}")

        cell = "padding:1px 10px;text-align:right;font-family:monospace"
        lines = [("query-key pairs kept", f"{int(rule.dense(T, T).sum()):,} of {T * T:,}"),
                 ("tiles computed", f"{counts['tiles_computed']:,} of {counts['tiles']:,}"),
                 ("bytes moved, naive", f"{counts['naive_bytes']:,}"),
                 ("bytes moved, tiled", f"{counts['tiled_bytes']:,}"),
                 ("naive / tiled", f"{ratio:.2f}"),
                 ("max |flash - eager|", f"{counts['max_error']:.1e}")]
        notes = (f'<div style="font-family:sans-serif;font-size:12px;color:#333;margin:2px 0 4px 0">'
                 f"<b>One head, head_dim={self.head_dim}, {self.bytes_per_value}-byte values</b></div>"
                 f'<table style="border-collapse:collapse;font-family:sans-serif;font-size:12px">'
                 + "".join(f'<tr><td style="padding:1px 10px">{escape(a)}</td><td style="{cell}">{b}</td></tr>'
                           for a, b in lines) + "</table>")

        curves = {"naive": ([], []), f"tiled ({block}×{block})": ([], [])}
        for length in self.curve_lengths:
            c = attention_bytes(length, length, self.head_dim, block, block, rule, self.bytes_per_value)
            curves["naive"][0].append(length)
            curves["naive"][1].append(c["naive_bytes"])
            curves[f"tiled ({block}×{block})"][0].append(length)
            curves[f"tiled ({block}×{block})"][1].append(c["tiled_bytes"])
        # Same labels on every build (the chart swaps data in place): rename the tiled curve's key.
        curves = {"naive": curves["naive"], "tiled": curves.pop(f"tiled ({block}×{block})"),
                  "seq_len now": ([T, T], [0, max(curves["naive"][1])])}

        return FlashView(
            shapes={"q": (1, 1, T, self.head_dim), "k": (1, 1, T, self.head_dim), "v": (1, 1, T, self.head_dim),
                    "out": tuple(flash.shape), "lse": (1, 1, T), "tile_map": tuple(tiles.shape)},
            shape_label=label,
            sheets=sheets,
            heatmap=pair_picture(rule, T, block),
            heatmap_title=f"query-key pairs ({T}×{T}): kept 1, masked in a computed tile 0.35, skipped tile 0",
            heatmap_panels=[rule.kind],
            notes=notes,
            curves=curves,
            curve_axes=("sequence length", "bytes moved per head"),
            counts=counts)
