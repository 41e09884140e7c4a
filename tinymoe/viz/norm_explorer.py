"""NormExplorer: LayerNorm or RMSNorm at any d_model, drawn from the core's own trace.

Controls: the norm (rmsnorm | layernorm), d_model and seq_len. Each move builds the norm the
config asks for (`make_norm`), runs it on seeded tokens of different sizes and redraws:

  shape line   x -> the per-token statistics (mean and var, or rms: one number per token)
               -> x_hat -> out, and the trainable count (LayerNorm 2 * d_model, RMSNorm d_model)
  sheets       the per-token statistics, gamma (and LayerNorm's beta)
  heatmap      x (left) and the norm's output (right) on one colour scale: the rows of x have
               different sizes, the rows of the output all the same size
  notes        each output row's mean and rms, measured (LayerNorm: mean 0, std 1; RMSNorm: rms 1)
  table        the shapes and parameters, marked where they changed since the last picture
"""
from __future__ import annotations

import torch

from ..config import NORMS, ModelConfig
from .explorer import EXPLORER_CELLS, EXPLORER_COLUMNS, Explorer, View, dropdown, slider
from .forward import traced_forward
from .sheet import show
from .style import shape_text, text
from .table import ShapesTable

__all__ = ["NormExplorer"]


class NormExplorer(Explorer):
    """LayerNorm against RMSNorm: what each computes per token, and what each trains."""

    title = "Normalisation: LayerNorm or RMSNorm"
    heatmap_size = (520, 300)

    def __init__(self, norm: str = "rmsnorm", d_model: int = 5, seq_len: int = 10, seed: int = 0,
                 max_cells: int = EXPLORER_CELLS):
        self.max_cells = max_cells
        controls = {"norm": dropdown(norm, NORMS), "d_model": slider(d_model, 1, 64),
                    "seq_len": slider(seq_len, 1, 16)}
        super().__init__(controls, seed=seed)

    def config(self, values: dict) -> ModelConfig:
        return ModelConfig(d_model=values["d_model"], n_heads=1, position="none", norm=values["norm"]).validate()

    @torch.no_grad()
    def build(self, values: dict) -> View:
        config = self.config(values)
        T, d = values["seq_len"], config.d_model
        # Tokens of different sizes (scales 0.5 for the first .. 3 for the last) and a mean not 0.
        g = torch.Generator().manual_seed(self.seed)
        size = torch.linspace(0.5, 3.0, T)[None, :, None]
        x = torch.randn(1, T, d, generator=g) * size + 0.5                   # (1, T, d_model)
        run = traced_forward(config, "norm", seed=self.seed, inputs=x)
        trace = run.trace
        out = trace["norm.out"]
        stats = ("norm.mean", "norm.var") if config.norm == "layernorm" else ("norm.rms",)
        params = {name: trace[name].numel() for name in ("norm.gamma", "norm.beta") if name in trace}
        label = (f"{config.norm}: x {shape_text(x.shape)} → "
                 + ", ".join(f"{s.split('.')[1]} {shape_text(trace[s].shape)}" for s in stats)
                 + f" → x_hat {shape_text(trace['norm.x_hat'].shape)} → out {shape_text(out.shape)} · trainable: "
                 + " + ".join(f"{n.split('.')[1]} {c}" for n, c in params.items())
                 + f" = {sum(params.values())}")
        row_mean = out.mean(dim=-1).flatten()
        row_std = out.std(dim=-1, unbiased=False).flatten()
        row_rms = out.pow(2).mean(dim=-1).sqrt().flatten()
        notes = text(f"Each output row, measured: mean {float(row_mean.min()):+.2f} .. {float(row_mean.max()):+.2f}, "
                 f"std {float(row_std.min()):.2f} .. {float(row_std.max()):.2f}, "
                 f"rms {float(row_rms.min()):.2f} .. {float(row_rms.max()):.2f}. "
                 + ("LayerNorm centres every token (mean 0) and scales it to std 1."
                    if config.norm == "layernorm" else
                    "RMSNorm only scales every token to rms 1; its mean is left where it was."))
        return View(
            shapes={name: tuple(trace[name].shape) for name in trace.keys()},
            shape_label=label,
            sheets=[show(trace, s, max_cells=self.max_cells, max_columns=EXPLORER_COLUMNS) for s in stats]
                   + [show(trace, n, max_cells=self.max_cells, max_columns=EXPLORER_COLUMNS) for n in params],
            heatmap=torch.stack([x[0], out[0]]),                             # (2, T, d_model): side by side
            heatmap_title=f"x (left) and norm.out (right), each {shape_text(out.shape)}",
            heatmap_panels=["x", "norm.out"],
            table=ShapesTable.from_run(run),
            notes=notes)
