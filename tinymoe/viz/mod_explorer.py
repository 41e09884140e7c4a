"""MoDExplorer: Mixture-of-Depths with capacity, routed-block pattern and sequence length on controls.

A six-block model at sheet size (d_model 8, two heads) runs on seeded tokens; every other block
(or every block, or every third, as the pattern says) is a MoDBlock that computes only the top
`capacity` share of the tokens. From the trace:

  heatmap  layers x tokens: 1 where a block computed the token, 0 where the token skipped it
           (a dense block computes every token)
  sheets   the first routed block's router weights r (one per token) and its routed mask
  curve    FLOPs of one forward pass against capacity, MoD vs the dense model
           (tinymoe.mod.forward_flops), with a line at the current capacity
  notes    FLOPs now, dense and MoD, and the share saved
  table    the shapes that move (mod.idx, mod.x_routed: k = floor(capacity * seq_len) rows)

`.routed` is the (n_layers, seq_len) picture shown now; `.flops` its FLOP figures.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

from ..config import ModelConfig, MoDConfig
from ..mod import forward_flops, routed_tokens
from .explorer import Explorer, View, dropdown, slider
from .forward import traced_forward
from .sheet import sheet
from .style import plural
from .table import ShapesTable

__all__ = ["MoDExplorer", "MoDView"]

PATTERNS = [("every other block (1, 3, 5)", 2), ("every block", 1), ("every third block (2, 5)", 3)]
CAPACITIES = [("12.5%", 0.125), ("25%", 0.25), ("40%", 0.4), ("50%", 0.5), ("75%", 0.75), ("100%", 1.0)]


@dataclass
class MoDView(View):
    """A View that also keeps the numbers the picture was drawn from."""
    routed: np.ndarray = field(default_factory=lambda: np.zeros((0, 0)))   # (n_layers, seq_len) 1 = computed
    flops: dict = field(default_factory=dict)                              # dense, mod, saved


class MoDExplorer(Explorer):
    """Mixture-of-Depths: move the capacity, the routed-block pattern or the sequence length; the
    tokens each block computes and the FLOPs against the dense model follow."""

    title = "Mixture-of-Depths: which tokens each block computes"
    heatmap_size = (520, 300)

    def __init__(self, capacity: float = 0.4, every_n_layers: int = 2, seq_len: int = 10, n_layers: int = 6,
                 d_model: int = 8, n_heads: int = 2, vocab_size: int = 32, max_seq_len: int = 64, seed: int = 0):
        self.n_layers, self.d_model, self.n_heads, self.vocab_size = n_layers, d_model, n_heads, vocab_size
        controls = {"capacity": dropdown(capacity, CAPACITIES),
                    "every_n_layers": dropdown(every_n_layers, PATTERNS, description="routed blocks"),
                    "seq_len": slider(seq_len, 2, max_seq_len)}
        self.max_seq_len = controls["seq_len"].max
        self.curve_capacities = [c / 40 for c in range(1, 41)]
        super().__init__(controls, seed=seed)

    def config(self, values: dict) -> ModelConfig:
        mod = MoDConfig(capacity=values["capacity"], every_n_layers=values["every_n_layers"])
        return ModelConfig(vocab_size=self.vocab_size, d_model=self.d_model, n_layers=self.n_layers,
                           n_heads=self.n_heads, max_seq_len=self.max_seq_len, mod=mod).validate()

    @property
    def routed(self) -> np.ndarray:
        """(n_layers, seq_len): 1 where a block computed the token in the picture shown now."""
        return self.view.routed.copy()

    @property
    def flops(self) -> dict:
        return dict(self.view.flops)

    def build(self, values: dict) -> MoDView:
        config = self.config(values)
        T = values["seq_len"]
        run = traced_forward(config, "model", T, seed=self.seed)
        trace = run.trace
        routed_layers = [i for i in range(config.n_layers) if config.mod_in_layer(i)]
        picture = torch.ones(config.n_layers, T)
        for i in routed_layers:
            picture[i] = trace[f"layers.{i}.mod.routed"][0].float()
        k = routed_tokens(T, config.mod.capacity)
        dense_config = config.replace(mod=None)
        mod_flops, dense_flops = forward_flops(config, T)["total"], forward_flops(dense_config, T)["total"]
        flops = {"dense": dense_flops, "mod": mod_flops, "saved": 1 - mod_flops / dense_flops}

        sheets = []
        if routed_layers:
            first = routed_layers[0]
            chosen = trace[f"layers.{first}.mod.routed"][0]
            labels = [f"t{t} ▶" if chosen[t] else f"t{t}" for t in range(T)]
            logits = trace[f"layers.{first}.mod.router_logits"][0]
            sheets.append(sheet(torch.sigmoid(logits)[None], f"layers.{first}: r = sigmoid(router logit)",
                                row_labels=["r"], col_labels=labels, max_cells=24,
                                note=f"▶ = one of the top {k}; a picture past 24 tokens"))
            sheets.append(sheet(trace[f"layers.{first}.mod.x_routed"][0], f"layers.{first}.mod.x_routed",
                                row_labels=[f"t{int(t)}" for t in trace[f"layers.{first}.mod.idx"][0]], max_cells=96))

        curves = {"dense": ([], []), "MoD": ([], [])}
        for c in self.curve_capacities:
            curves["dense"][0].append(100 * c)
            curves["dense"][1].append(dense_flops)
            curves["MoD"][0].append(100 * c)
            curves["MoD"][1].append(forward_flops(config, T, capacity=c)["total"])
        curves["capacity now"] = ([100 * config.mod.capacity] * 2, [0, dense_flops])

        notes = (f'<div style="font-family:sans-serif;font-size:12px;color:#333;margin:2px 0 8px 0">'
                 f"<b>FLOPs of one forward pass, seq_len={T}</b><br>dense model: {dense_flops:,}<br>"
                 f"MoD ({len(routed_layers)} of {config.n_layers} blocks routed, k={k} of {plural(T, 'token')}): {mod_flops:,}"
                 f"<br>saved: {flops['saved']:.1%}</div>")
        full = ShapesTable.from_run(run)
        keep = {f"layers.{i}.mod.{n}" for i in routed_layers[:1] for n in ("x", "router_logits", "idx", "x_routed",
                                                                          "y_routed", "update")}
        keep |= {"tokens", "logits"}
        table = ShapesTable([r for r in full.rows if r.kind != "tensor" or r.name in keep],
                            full.settings, module_kind=full.module_kind)
        shapes = {n: tuple(trace[n].shape) for n in sorted(keep) if n in trace}
        label = (f"seq_len={T} · capacity {config.mod.capacity:.1%} → k={k} tokens per routed block · routed blocks "
                 f"{routed_layers} · FLOPs {mod_flops:,} vs dense {dense_flops:,} ({flops['saved']:.1%} saved)")
        return MoDView(
            shapes=shapes, shape_label=label, sheets=sheets, heatmap=picture,
            heatmap_title=f"tokens each block computes ({config.n_layers}×{T}): rows = blocks, columns = tokens, 1 = computed",
            heatmap_panels=["computed"], table=table, notes=notes, curves=curves,
            curve_axes=("capacity (% of the sequence)", "FLOPs per forward pass"),
            routed=picture.numpy(), flops=flops)
