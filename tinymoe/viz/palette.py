"""What the colours of a sheet mean: the border says what a tensor IS, the fill says what a value IS.

Two questions, two channels, never the same hue for both:

  role (the cells' border and the caption's badge), as in the hand-built spreadsheets:
    weight      trainable parameter      red border     (count these cells: that is the parameter count)
    bias        trainable bias           grey border
    input       what goes in             gold border
    output      what comes out           purple border
    buffer      precomputed, not trained green border   (RoPE's cos/sin tables)
    activation  computed on the way      thin light-grey border
  value (the fill), for every tensor whatever its role: a diverging scale, blue for +, orange
    for -, white at 0. Red is kept for "trainable", blue only ever means "positive".
  categories (expert ids, block ids: labels, not amounts): one colour per id from a categorical
    palette (CATEGORY_COLOURS), never the numeric scale; -1 ("none") stays white.

The diverging scale maps v to a mix of white and blue (v > 0) or orange (v < 0) in proportion to
|v| / max|v| over the whole tensor, so two heads drawn side by side share one scale. The same
colours are used for the cells of a sheet, the pixels of a summarised (too big) tensor and the
plotly heatmaps.
"""
from __future__ import annotations

import numpy as np

from .html import Html, escape

__all__ = ["ROLE_EDGE", "ROLE_WIDTH", "ROLE_TAG", "ROLES", "POSITIVE", "NEGATIVE", "diverging_rgb",
           "hex_colours", "category_colours", "CATEGORY_COLOURS", "legend", "PLOTLY_SCALE"]

ROLES = ("weight", "bias", "input", "output", "buffer", "activation")
ROLE_EDGE = {"weight": "#d03b2c", "bias": "#8a8a8a", "input": "#c99a06", "output": "#7e57c2",
             "buffer": "#3f9a3f", "activation": "#d4d4d4"}
ROLE_WIDTH = {"weight": 2, "bias": 2, "input": 2, "output": 2, "buffer": 2, "activation": 1}   # border, px
ROLE_TAG = {"weight": "trainable", "bias": "trainable bias", "input": "input", "output": "output",
            "buffer": "buffer, not trainable", "activation": ""}

POSITIVE = np.array([66, 133, 196])      # the full-strength blue of +max
NEGATIVE = np.array([232, 128, 28])      # the full-strength orange of -max (red means "trainable")
WHITE = np.array([255, 255, 255])
BLANK = np.array([236, 236, 236])        # nan / inf: no colour on the scale
MAX_MIX = 0.72                           # keep the darkest cell light enough to read its number
# Ids are categories: light, clearly different colours (ColorBrewer Pastel1 + Set3), id i -> colour i mod 12.
CATEGORY_COLOURS = ("#a6cee3", "#b2df8a", "#fdbf6f", "#cab2d6", "#ffff99", "#fb9a99", "#8dd3c7", "#bebada",
                    "#80b1d3", "#fccde5", "#d9d9d9", "#ccebc5")

# The same scale for plotly heatmaps (zmid=0): orange below zero, white at zero, blue above.
PLOTLY_SCALE = [[0.0, "rgb(%d,%d,%d)" % tuple(NEGATIVE)], [0.5, "rgb(255,255,255)"],
                [1.0, "rgb(%d,%d,%d)" % tuple(POSITIVE)]]


def diverging_rgb(values: np.ndarray, scale: float | None = None, levels: int | None = None) -> np.ndarray:
    """(..., 3) uint8 colours for `values`: white at 0, blue for +, orange for -.
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


def category_colours(ids: np.ndarray) -> np.ndarray:
    """One colour per id ('#rrggbb'), from CATEGORY_COLOURS; negative ids (none, dropped) white."""
    ids = np.asarray(ids)
    table = np.array(CATEGORY_COLOURS, dtype=object)
    colours = table[np.mod(np.where(ids >= 0, ids, 0).astype(np.int64), len(table))]
    return np.where(ids >= 0, colours, "#ffffff").astype(object)


def _swatch(role: str, label: str) -> str:
    return (f'<span style="background:#ffffff;border:{ROLE_WIDTH[role]}px solid {ROLE_EDGE[role]};'
            f'padding:0 4px;margin:0 2px;border-radius:2px;color:#222">{escape(label)}</span>')


def _fill(rgb, label: str) -> str:
    colour = "#%02x%02x%02x" % tuple(int(c) for c in rgb)
    return f'<span style="background:{colour};border:1px solid #d4d4d4;padding:0 4px;margin:0 2px;color:#222">{label}</span>'


def legend() -> Html:
    """Two lines: what a border means (the role), what a fill means (the value)."""
    neg = np.rint(WHITE + (NEGATIVE - WHITE) * MAX_MIX)
    pos = np.rint(WHITE + (POSITIVE - WHITE) * MAX_MIX)
    ids = "".join(f'<span style="background:{c};padding:0 3px;margin:0 1px;color:#222">{i}</span>'
                  for i, c in enumerate(CATEGORY_COLOURS[:4]))
    html = ('<div style="font-family:sans-serif;font-size:12px;color:#555;margin:4px 0;text-align:left;line-height:1.7">'
            "<div>Border = role: " + _swatch("weight", "trainable weight") + _swatch("bias", "bias")
            + _swatch("input", "input") + _swatch("output", "output") + _swatch("buffer", "buffer (precomputed)")
            + _swatch("activation", "activation")
            + ". The parameter count is exactly the number of red- and grey-bordered cells.</div>"
            "<div>Fill = value: " + _fill(pos, "+") + _fill(WHITE, "0") + _fill(neg, "&minus;")
            + " (blue +, orange &minus;); ids (experts, blocks) get one colour each: " + ids + "</div></div>")
    return Html(html)
