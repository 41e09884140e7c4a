"""A tensor as an interactive plotly heatmap, in the sheets' colours (blue +, orange -, white at 0).

Heads are laid side by side in one picture, separated by a blank column, so an explorer can swap
the data of a single trace in place when a slider moves (no new figure, no flicker):

    fig = heatmap(trace["attn.weights"], title="attn.weights")      # (1, H, T, T) -> T x (H*T + H-1)
    heatmap(..., widget=True)                                         # a FigureWidget for live updates

A live widget sends its data to the browser as JSON on every move. A figure a few hundred pixels
wide cannot show more values than it has pixels, so a widget can ask for a `max_size`
(rows, columns): bigger panels are then averaged over square blocks of f x f values (the title
says so, and the axes keep the tensor's own row and column numbers). Eight heads of 128 x 128
become eight panels of 32 x 32: the same picture, 16 times less to send.

A static figure is stored in the notebook, so the same holds there: past MAX_SIZE (the
size the explorers' widgets send) it is block-averaged too, its title says so, and the averaged
values are stored as float32 (the precision the tensors have). Below that size a static figure
holds the exact values. Pass max_size=None to store every value anyway.

plotly is imported only when a heatmap is asked for, so sheets work without it.
"""
from __future__ import annotations

import math

import numpy as np

from .palette import PLOTLY_SCALE
from .sheet import as_numpy

__all__ = ["heatmap", "heatmap_array", "panel_ticks", "pooling_factor", "update_heatmap", "MAX_SIZE"]

MAX_SIZE = (160, 360)     # most (rows, columns) a static figure stores and an explorer sends


def _panels(tensor) -> np.ndarray:
    """(n_panels, rows, cols) after dropping leading batch dims of one."""
    values = as_numpy(tensor).astype(np.float64)
    while values.ndim > 2 and values.shape[0] == 1:
        values = values[0]
    if values.ndim == 0:
        values = values.reshape(1, 1)
    if values.ndim == 1:
        values = values[None, :]
    return values.reshape((-1,) + values.shape[-2:])


def pooling_factor(tensor, max_size: tuple[int, int] | None) -> int:
    """The smallest f such that averaging f x f blocks fits all panels into max_size (rows, cols)."""
    if max_size is None:
        return 1
    panels = _panels(tensor)
    n, rows, cols = panels.shape
    max_rows, max_cols = max_size
    f = 1
    while math.ceil(rows / f) > max_rows or n * math.ceil(cols / f) + (n - 1) > max_cols:
        f += 1
        if f >= max(rows, cols):
            break
    return f


def _pool(panel: np.ndarray, f: int) -> np.ndarray:
    """Mean over f x f blocks (the last block in each direction may be smaller)."""
    if f == 1:
        return panel
    rows, cols = panel.shape
    R, C = math.ceil(rows / f), math.ceil(cols / f)
    padded = np.zeros((R * f, C * f))
    counts = np.zeros((R * f, C * f))
    padded[:rows, :cols] = np.nan_to_num(panel)
    counts[:rows, :cols] = 1.0
    total = padded.reshape(R, f, C, f).sum(axis=(1, 3))
    n = counts.reshape(R, f, C, f).sum(axis=(1, 3))
    return total / n


def heatmap_array(tensor, max_size: tuple[int, int] | None = None) -> np.ndarray:
    """The 2-D array a heatmap draws: batch of one dropped, leading axes (heads) side by side
    with a column of NaN between them (plotly leaves NaN blank); averaged over blocks when
    bigger than max_size (rows, cols)."""
    panels = _panels(tensor)
    f = pooling_factor(tensor, max_size)
    pooled = [_pool(p, f) for p in panels]
    if len(pooled) == 1:
        return pooled[0]
    gap = np.full((pooled[0].shape[0], 1), np.nan)
    parts = []
    for i, panel in enumerate(pooled):
        if i:
            parts.append(gap)
        parts.append(panel)
    return np.concatenate(parts, axis=1)


def panel_ticks(tensor, names=None, factor: int = 1) -> tuple[list | None, list | None]:
    """x-axis ticks naming each panel at its centre ("head 0", "head 1", ...), or (None, None)
    for a single panel (plotly then numbers the columns itself)."""
    shape = tuple(np.shape(as_numpy(tensor)))
    ndim = len(shape)
    while len(shape) > 2 and shape[0] == 1:
        shape = shape[1:]
    if len(shape) <= 2:
        return None, None
    n_panels, width = int(np.prod(shape[:-2])), math.ceil(shape[-1] / factor)
    if names is None:
        names = [f"head {i}" if ndim == 4 else f"panel {i}" for i in range(n_panels)]
    centres = [i * (width + 1) + (width - 1) / 2 for i in range(n_panels)]
    return centres, list(names)[:n_panels]


def _json_safe(z: np.ndarray) -> list:
    """z ready to send: rounded to 4 significant digits of its largest value, NaN as None (a
    FigureWidget sends its data as strict JSON, which has no NaN: the gap columns between heads
    would otherwise print a serialization warning in the notebook), as nested lists.

    Lists, not a numpy array: the browser answers every update with the trace's computed
    defaults, and plotly's FigureWidget (its _remove_overlapping_props) tests a held value's truth
    with `not value`, which raises "truth value of an array ... is ambiguous" for a numpy array and
    puts that traceback in JupyterLab's log console."""
    finite = np.abs(z[np.isfinite(z)])
    if finite.size and finite.max() > 0:                 # 4 significant digits: what a hover shows,
        digits = 3 - int(np.floor(np.log10(finite.max())))   # and a third of the JSON of full floats
        z = np.round(z, max(digits, 0))
    safe = z.astype(object)                              # one C-level tolist() below
    safe[np.isnan(z)] = None
    return safe.tolist()


def _limit(z: np.ndarray) -> float:
    finite = np.abs(z[np.isfinite(z)])
    return float(finite.max()) if finite.size and finite.max() > 0 else 1.0


def _axes(factor: int) -> dict:
    """Where the averaged cells sit, in the tensor's own row and column numbers: block j spans
    columns j*f .. j*f + f-1, so its centre is j*f + (f-1)/2 (the axes and the hover text then
    read "feature 100", not "block 50")."""
    offset = (factor - 1) / 2
    return dict(x0=offset, dx=factor, y0=offset, dy=factor)


def _ticks_at(tickvals, factor: int):
    """Panel centres (in averaged cells) moved to the tensor's own column numbers."""
    return None if tickvals is None else [(factor - 1) / 2 + factor * v for v in tickvals]


def _whole_ticks(n: int) -> dict:
    """Axis ticks on whole row / column numbers, at most about eight (1, 2, 5, 10, 20, 50, ... apart):
    left alone, plotly labels a one-row heatmap -0.4, -0.2, 0, 0.2, 0.4."""
    power = 1
    while True:
        for step in (power, 2 * power, 5 * power):
            if n <= 8 * step:
                return dict(tickmode="linear", tick0=0, dtick=step)
        power *= 10


def _x_ticks(tickvals, ticktext, n_columns: int) -> dict:
    """Panel names at the panels' centres, or whole column numbers for a single panel."""
    if tickvals is None:
        return dict(tickvals=None, ticktext=None, **_whole_ticks(n_columns))
    return dict(tickmode="array", tickvals=tickvals, ticktext=ticktext, tick0=None, dtick=None)


def _titled(title: str | None, factor: int) -> str:
    title = title or ""
    if factor == 1:
        return title
    return f"{title} (mean over {factor}&times;{factor} blocks)" if title else f"mean over {factor}&times;{factor} blocks"


def heatmap(tensor, title: str | None = None, widget: bool = False, width: int = 440, height: int = 340,
            x_title: str = "", y_title: str = "", panel_names=None, max_size: tuple[int, int] | None | str = "auto"):
    """A plotly go.Figure (or go.FigureWidget with widget=True) of `tensor`; row 0 on top, like a sheet.
    Heads (or other leading axes) are panels side by side, named on the x axis by `panel_names`.
    max_size (rows, cols): average over blocks past this size (see the module docstring);
    "auto": MAX_SIZE for a static figure, no averaging for a widget; None: never."""
    import plotly.graph_objects as go

    if isinstance(max_size, str):
        if max_size != "auto":
            raise ValueError(f"max_size={max_size!r}: give (rows, columns), None or 'auto'")
        max_size = None if widget else MAX_SIZE
    factor = pooling_factor(tensor, max_size)
    z = heatmap_array(tensor, max_size)
    tickvals, ticktext = panel_ticks(tensor, panel_names, factor)
    limit = _limit(z)
    stored = z.astype(np.float32) if factor > 1 else z                  # averaged: float32 is plenty
    trace = go.Heatmap(z=_json_safe(z) if widget else stored, colorscale=PLOTLY_SCALE, zmid=0, zmin=-limit, zmax=limit,
                       hoverongaps=False, colorbar=dict(thickness=10, len=0.9), **(_axes(factor) if factor > 1 else {}))
    tickvals = _ticks_at(tickvals, factor)
    text = _titled(title, factor)
    layout = dict(title=dict(text=text, font=dict(size=13), x=0.02), width=width, height=height,
                  margin=dict(l=40, r=10, t=34 if text else 10, b=30),
                  yaxis=dict(autorange="reversed", title=y_title, **_whole_ticks(z.shape[0] * factor)),
                  xaxis=dict(title=x_title, side="bottom", **_x_ticks(tickvals, ticktext, z.shape[1] * factor)),
                  plot_bgcolor="white")
    return (go.FigureWidget if widget else go.Figure)(data=[trace], layout=layout)


def update_heatmap(figure, tensor, title: str | None = None, panel_names=None,
                   max_size: tuple[int, int] | None = None) -> np.ndarray:
    """Swap the data of `figure` (from heatmap(..., widget=True)) for `tensor`'s, in place.
    Returns the array now drawn."""
    factor = pooling_factor(tensor, max_size)
    z = heatmap_array(tensor, max_size)
    limit = _limit(z)
    tickvals, ticktext = panel_ticks(tensor, panel_names, factor)
    tickvals = _ticks_at(tickvals, factor)
    with figure.batch_update():
        figure.data[0].z = _json_safe(z)
        figure.data[0].update(_axes(factor))
        figure.data[0].zmin, figure.data[0].zmax = -limit, limit
        figure.layout.yaxis.update(_whole_ticks(z.shape[0] * factor))
        figure.layout.xaxis.update(_x_ticks(tickvals, ticktext, z.shape[1] * factor))
        if title is not None:
            figure.layout.title.text = _titled(title, factor)
    return z
