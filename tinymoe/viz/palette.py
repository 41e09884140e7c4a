"""The colour roles of a sheet, and the diverging scale for computed values.

As in the hand-built spreadsheets, a cell's colour says what kind of number it holds:

    weight      trainable parameter      light salmon   (count these cells: that is the parameter count)
    bias        trainable bias           grey
    input       what goes in             gold
    output      what comes out           blue
    buffer      precomputed, not trained light green    (RoPE's cos/sin tables)
    activation  computed on the way      no fill; a diverging scale instead: blue for +, red for -

The diverging scale maps v to a mix of white and blue (v > 0) or red (v < 0) in proportion to
|v| / max|v| over the whole tensor, so two heads drawn side by side share one scale. The same
colours are used for the cells of a sheet and the pixels of a summarised (too big) tensor.
"""
from __future__ import annotations

import numpy as np

from .html import Html, escape

__all__ = ["ROLE_FILL", "ROLE_EDGE", "ROLE_TAG", "POSITIVE", "NEGATIVE", "diverging_rgb",
           "hex_colours", "legend", "PLOTLY_SCALE"]

ROLE_FILL = {"weight": "#fbe0d6", "bias": "#e4e4e4", "input": "#fff2c2", "output": "#d9e9f7",
             "buffer": "#e3f1dc", "activation": "#ffffff"}
ROLE_EDGE = {"weight": "#e2ab98", "bias": "#bdbdbd", "input": "#e0c46c", "output": "#9cc0e2",
             "buffer": "#a8cf98", "activation": "#d4d4d4"}
ROLE_TAG = {"weight": "trainable", "bias": "trainable bias", "input": "input", "output": "output",
            "buffer": "buffer, not trainable", "activation": ""}

POSITIVE = np.array([66, 133, 196])      # the full-strength blue of +max
NEGATIVE = np.array([222, 84, 64])       # the full-strength red of -max
WHITE = np.array([255, 255, 255])
BLANK = np.array([236, 236, 236])        # nan / inf: no colour on the scale
MAX_MIX = 0.72                           # keep the darkest cell light enough to read its number

# The same scale for plotly heatmaps (zmid=0): red below zero, white at zero, blue above.
PLOTLY_SCALE = [[0.0, "rgb(%d,%d,%d)" % tuple(NEGATIVE)], [0.5, "rgb(255,255,255)"],
                [1.0, "rgb(%d,%d,%d)" % tuple(POSITIVE)]]


def diverging_rgb(values: np.ndarray, scale: float | None = None, levels: int | None = None) -> np.ndarray:
    """(..., 3) uint8 colours for `values`: white at 0, blue for +, red for -.
    `scale` is the |value| drawn at full strength (default: the largest finite |value|);
    `levels` rounds the strength to that many steps (fewer colours: a smaller picture)."""
    values = np.asarray(values, dtype=np.float64)
    finite = np.isfinite(values)
    if scale is None:
        scale = float(np.abs(values[finite]).max()) if finite.any() else 0.0
    t = np.zeros_like(values) if scale == 0 else np.clip(np.abs(np.where(finite, values, 0)) / scale, 0, 1)
    if levels:
        t = np.round(t * levels) / levels
    target = np.where((values >= 0)[..., None], POSITIVE, NEGATIVE)        # (..., 3)
    rgb = WHITE + (target - WHITE) * (MAX_MIX * t)[..., None]
    rgb = np.where(finite[..., None], rgb, BLANK)
    return np.rint(rgb).astype(np.uint8)


def hex_colours(values: np.ndarray, scale: float | None = None) -> np.ndarray:
    """The diverging colours as '#rrggbb' strings, one per value."""
    rgb = diverging_rgb(values, scale).reshape(-1, 3)
    table = np.array([f"#{r:02x}{g:02x}{b:02x}" for r, g, b in rgb], dtype=object)
    return table.reshape(np.shape(values))


def _swatch(role: str, label: str) -> str:
    return (f'<span style="background:{ROLE_FILL[role]};border:1px solid {ROLE_EDGE[role]};'
            f'padding:0 4px;margin:0 2px;border-radius:2px;color:#222">{escape(label)}</span>')


def legend() -> Html:
    """One line saying what each colour means."""
    neg = "#%02x%02x%02x" % tuple(np.rint(WHITE + (NEGATIVE - WHITE) * MAX_MIX).astype(int))
    pos = "#%02x%02x%02x" % tuple(np.rint(WHITE + (POSITIVE - WHITE) * MAX_MIX).astype(int))
    scale = (f'<span style="background:linear-gradient(to right,{neg},#ffffff,{pos});'
             f'border:1px solid #d4d4d4;padding:0 10px;margin:0 2px;color:#222">&minus; 0 +</span>')
    html = ('<div style="font-family:sans-serif;font-size:12px;color:#555;margin:4px 0;text-align:left;line-height:1.6">'
            "Colour roles: " + _swatch("weight", "trainable weight") + _swatch("bias", "bias")
            + _swatch("input", "input") + _swatch("output", "output")
            + _swatch("buffer", "buffer (precomputed)")
            + " activations: diverging scale " + scale + " (blue +, red &minus;)."
            " The parameter count is exactly the number of shaded weight and bias cells.</div>")
    return Html(html)
