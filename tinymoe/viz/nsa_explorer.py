"""NSAExplorer: native sparse attention with its six sizes on sliders.

seq_len, block_size (l), stride (d), select_block_size (l'), top_n (n) and window (w) build a
NativeSparseAttention (at sheet size: d_model 5, two query heads sharing one key/value head,
head_dim 3), run it on seeded inputs and show, from the trace:

  heatmap  which keys query head 0 sees in each branch, three panels side by side:
           cmp  the keys inside the compressed blocks it may read (attn.cmp.mask, spread over
                the tokens each block was made from: the query sees them only as one key per block)
           sel  the keys of its chosen blocks (attn.sel.mask)
           win  its w most recent keys (attn.win.mask)
  sheets   attn.cmp.mask (query x compressed block) and attn.sel.block_mask (query x selection
           block) for head 0 / kv head 0
  curve    query-key products per head as the sequence grows, dense vs NSA and each branch
           (tinymoe.nsa.qk_products), with a line at the current seq_len
  notes    the products at this seq_len, counted on the trace's masks and by qk_products
  table    the shapes that move and the parameters (block_size changes phi's size)

An impossible combination (a stride longer than the block, a selection block that is not a
multiple of the stride, a top_n with no room for the blocks every query keeps) shows the
config's message and keeps the last picture. `.view` (an NSAView) holds the picture shown now:
`.view.counts` and `.view.masks`.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

from ..attention import causal_mask
from ..config import ModelConfig, SparseAttentionConfig
from ..nsa import BRANCHES, qk_products
from ..nsa.compress import block_members
from .explorer import EXPLORER_CELLS, EXPLORER_COLUMNS, Explorer, View, slider
from .forward import traced_forward
from .html import Html, escape
from .style import figures_table, shape_text, text
from .sheet import sheet
from .table import ShapesTable

__all__ = ["NSAExplorer", "NSAView"]

BRANCH_NAMES = BRANCHES                      # the core's branch order (cmp, sel, win)
TABLE_ROWS = ("attn.x", "attn.q", "attn.cmp.compress_k.blocks", "attn.cmp.k_compressed", "attn.cmp.mask",
              "attn.sel.block_scores", "attn.sel.blocks", "attn.sel.mask", "attn.win.mask", "attn.gates",
              "attn.out")


@dataclass
class NSAView(View):
    """A View that also keeps the numbers the picture was drawn from."""
    counts: dict = field(default_factory=dict)       # products per head: cmp, sel, win, nsa, dense, saved
    masks: dict = field(default_factory=dict)        # head 0: cmp (T, n_blocks), sel (T, T), win (T, T), bool


def keys_behind_blocks(visible: torch.Tensor, seq_len: int, block_size: int, stride: int) -> torch.Tensor:
    """(T, n_blocks) visibility of compressed blocks -> (T, T): the token positions those blocks
    were made from (block i covers i*d .. i*d + l - 1). For the picture only: the query reads one
    compressed key per block, not these keys."""
    member = block_members(seq_len, block_size, stride)                        # (n_blocks, T), from the core
    return (visible.float() @ member.float()) > 0                              # (T, T)


class NSAExplorer(Explorer):
    """Native sparse attention: move l, d, l', n, w or the sequence length; the masks of the
    three branches and the query-key product count follow."""

    title = "Native sparse attention: which keys each query sees"
    heatmap_size = (720, 300)

    def __init__(self, seq_len: int = 10, block_size: int = 3, stride: int = 3, select_block_size: int = 3,
                 top_n: int = 3, window: int = 3, n_initial_blocks: int = 1, n_local_blocks: int = 1,
                 d_model: int = 5, n_heads: int = 2, n_kv_heads: int = 1, head_dim: int = 3,
                 max_seq_len: int = 64, curve_max_len: int = 256, seed: int = 0):
        self.n_initial_blocks, self.n_local_blocks = n_initial_blocks, n_local_blocks
        self.d_model, self.n_heads, self.n_kv_heads, self.head_dim = d_model, n_heads, n_kv_heads, head_dim
        controls = {"seq_len": slider(seq_len, 1, max_seq_len),
                    "block_size": slider(block_size, 1, 8),
                    "stride": slider(stride, 1, 8),
                    "select_block_size": slider(select_block_size, 1, 16),
                    "top_n": slider(top_n, 1, 8),
                    "window": slider(window, 1, 32)}
        self.max_seq_len = controls["seq_len"].max
        self.curve_lengths = sorted({int(n) for n in np.linspace(1, curve_max_len, 48)})
        super().__init__(controls, seed=seed)

    # -- the config --------------------------------------------------------------------------------
    def limits(self, values: dict) -> dict:
        """stride <= block_size (longer strides skip tokens); top_n leaves room for the blocks
        every query keeps (n_initial_blocks + n_local_blocks)."""
        keep = self.n_initial_blocks + self.n_local_blocks
        return {"stride": {"max": values["block_size"], "why": "stride <= block_size"},
                "top_n": {"min": max(1, keep), "why": f"top_n >= n_initial_blocks + n_local_blocks = {keep}"}}

    def config(self, values: dict) -> ModelConfig:
        """The sparse-attention settings from the sliders; validate() names an impossible one."""
        sparse = SparseAttentionConfig(block_size=values["block_size"], stride=values["stride"],
                                       select_block_size=values["select_block_size"], top_n=values["top_n"],
                                       window=values["window"], n_initial_blocks=self.n_initial_blocks,
                                       n_local_blocks=self.n_local_blocks)
        return ModelConfig(d_model=self.d_model, n_heads=self.n_heads, n_kv_heads=self.n_kv_heads,
                           head_dim=self.head_dim, position="none", attention="native_sparse", nsa=sparse,
                           max_seq_len=self.max_seq_len).validate()

    # -- one picture -------------------------------------------------------------------------------
    def build(self, values: dict) -> NSAView:
        config = self.config(values)
        nsa, T = config.nsa, values["seq_len"]
        run = traced_forward(config, "attention", T, seed=self.seed)
        trace = run.trace
        masks = {b: trace[f"attn.{b}.mask"][0, 0].bool() for b in BRANCH_NAMES}   # head 0
        counts = qk_products(T, nsa)
        seen = {b: int(masks[b].sum()) for b in BRANCH_NAMES}                        # counted on the trace
        n_blocks, n_sel = masks["cmp"].shape[-1], trace["attn.sel.block_mask"].shape[-1]

        pictures = torch.stack([keys_behind_blocks(masks["cmp"], T, nsa.block_size, nsa.stride),
                                masks["sel"], masks["win"]]).float()                 # (3, T, T)
        queries = [f"q{t}" for t in range(T)]
        if n_blocks:
            cmp_sheet = sheet(trace["attn.cmp.mask"][0, 0], f"attn.cmp.mask (head 0, {n_blocks} compressed keys)",
                              row_labels=queries, col_labels=[f"c{i}" for i in range(n_blocks)],
                              max_cells=EXPLORER_CELLS, max_columns=EXPLORER_COLUMNS, note="rows: queries")
        else:                                                                  # nothing to draw cells for
            cmp_sheet = Html(text(f"<b>attn.cmp.mask</b> ({T}, 0): seq_len={T} &lt; block_size={nsa.block_size}, "
                                  f"no compressed block is complete yet; the cmp branch outputs zeros.", width=260))
        sheets = [cmp_sheet,
                  sheet(trace["attn.sel.block_mask"][0, 0], f"attn.sel.block_mask (kv head 0, top {nsa.top_n})",
                        row_labels=queries, col_labels=[f"b{j}" for j in range(n_sel)],
                        max_cells=EXPLORER_CELLS, max_columns=EXPLORER_COLUMNS, note="rows: queries")]

        label = (f"seq_len={T} · cmp: {n_blocks} compressed key{'' if n_blocks == 1 else 's'} "
                 f"(blocks of l={nsa.block_size}, stride d={nsa.stride}) · sel: top {nsa.top_n} of {n_sel} "
                 f"block{'' if n_sel == 1 else 's'} of l'={nsa.select_block_size} · win: w={nsa.window} · "
                 f"products per head: NSA {counts['nsa']:,} vs dense {counts['dense']:,}")

        lines = [(b, f"{seen[b]:,}", f"{counts[b]:,}") for b in BRANCH_NAMES]
        lines += [("NSA (sum)", f"{sum(seen.values()):,}", f"{counts['nsa']:,}"),
                  ("dense causal", f"{int(causal_mask(T).sum()):,}", f"{counts['dense']:,}")]
        verdict = (f"NSA computes {counts['saved']:,} fewer products than dense attention" if counts["saved"] > 0
                   else f"NSA computes {-counts['saved']:,} more products than dense attention"
                   if counts["saved"] < 0 else "NSA and dense attention compute the same number of products")
        notes = (text(f"<b>Query-key products per head at seq_len={T}</b>", margin="2px 0 4px 0")
                 + figures_table(lines, header=("branch", "trace masks", "qk_products"))
                 + text(f"{escape(verdict)}.", margin="0 0 8px 0"))

        curves = {name: ([], []) for name in ("dense", "NSA") + BRANCHES}
        for n in self.curve_lengths:
            c = qk_products(n, nsa)
            for name, key in (("dense", "dense"), ("NSA", "nsa")) + tuple((b, b) for b in BRANCHES):
                curves[name][0].append(n)
                curves[name][1].append(c[key])
        curves["seq_len now"] = ([T, T], [0, max(curves["dense"][1])])

        full = ShapesTable.from_run(run)
        table = ShapesTable([r for r in full.rows if r.kind != "tensor" or r.name in TABLE_ROWS],
                            full.settings, module_kind=full.module_kind)
        names = ("attn.x", "attn.q", "attn.cmp.k_compressed", "attn.cmp.mask", "attn.sel.block_scores",
                 "attn.sel.blocks", "attn.sel.block_mask", "attn.sel.mask", "attn.win.mask", "attn.gates",
                 "attn.out")
        return NSAView(
            shapes={n: tuple(trace[n].shape) for n in names},
            shape_label=label,
            sheets=sheets,
            heatmap=pictures,
            heatmap_title=f"keys each query sees (head 0), each panel {T}×{T}: rows = queries, columns = keys",
            heatmap_panels=[f"cmp ({seen['cmp']:,} products)", f"sel ({seen['sel']:,})", f"win ({seen['win']:,})"],
            table=table,
            notes=notes,
            curves=curves,
            curve_axes=("sequence length", "query-key products per head"),
            counts=counts,
            masks=masks)
