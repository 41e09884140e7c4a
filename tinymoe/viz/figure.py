"""A static picture beside every plotly figure, for wherever plotly's JavaScript does not run.

JupyterLab draws a plotly figure from its JSON (`application/vnd.plotly.v1+json`), but an HTML
export (nbconvert), a code host's notebook preview and any renderer that strips scripts show
nothing for that mimetype. So every figure a notebook displays also carries an `image/png`: the
same traces drawn by matplotlib (heatmaps in the sheets' diverging colours, lines, markers, bars),
with the figure's title and axis titles. JupyterLab still prefers the live plotly figure; the
others fall back to the picture.

Importing tinymoe.viz registers the renderer "tinymoe_png" with plotly.io and, when plotly's
default is one of its automatic choices, makes the default "plotly_mimetype+tinymoe_png":

    import plotly.io as pio
    pio.renderers.default          # 'plotly_mimetype+tinymoe_png'
    figure_png(fig.to_dict())      # the PNG bytes, for a figure you hold
"""
from __future__ import annotations

import base64
import io
import re

import numpy as np

from .palette import diverging_rgb

__all__ = ["figure_png", "StaticPngRenderer", "register", "RENDERER", "DEFAULT"]

RENDERER = "tinymoe_png"
DEFAULT = "plotly_mimetype+" + RENDERER
# plotly's own automatic choices (by environment); a default someone set by hand is left alone
AUTOMATIC = ("", "plotly_mimetype", "plotly_mimetype+notebook", "notebook", "notebook_connected",
             "plotly_mimetype+notebook_connected", "vscode", "jupyterlab")
DPI = 100


def _plain(title) -> str:
    """A plotly title (a string or {"text": ...}) as plain text (its little HTML removed)."""
    if isinstance(title, dict):
        title = title.get("text", "")
    title = re.sub(r"<[^>]+>", "", str(title or ""))
    return title.replace("&times;", "×").replace("&minus;", "−").replace("&amp;", "&")


def _array(values) -> np.ndarray:
    """Trace data as floats: a list (None -> NaN), a numpy array, or plotly's packed typed array
    ({"dtype": "f8", "bdata": base64, "shape": "3, 4"})."""
    if values is None:
        return np.zeros(0)
    if isinstance(values, dict) and "bdata" in values:
        flat = np.frombuffer(base64.b64decode(values["bdata"]), dtype=np.dtype(values["dtype"]))
        shape = values.get("shape")
        if shape:
            flat = flat.reshape([int(n) for n in str(shape).split(",")])
        return flat.astype(float)
    values = np.asarray(values, dtype=object)
    if values.dtype == object:
        if values.ndim == 1 and len(values) and isinstance(values[0], (list, tuple, np.ndarray, dict)):
            return np.stack([_array(row) for row in values])
        values = np.where(values == None, np.nan, values)          # noqa: E711 (elementwise)
    return values.astype(float)


def _heatmap(ax, trace: dict) -> None:
    z = _array(trace.get("z", [[0]]))
    if z.ndim == 1:
        z = z[None, :]
    finite = np.abs(z[np.isfinite(z)])
    limit = max(abs(trace.get("zmin") or 0), abs(trace.get("zmax") or 0)) or (float(finite.max()) if finite.size else 1.0)
    rgb = diverging_rgb(z, scale=limit or 1.0)
    rgb = np.where(np.isfinite(z)[..., None], rgb, 255).astype(np.uint8)      # gaps between heads: white
    x0, dx = trace.get("x0", 0) or 0, trace.get("dx", 1) or 1
    y0, dy = trace.get("y0", 0) or 0, trace.get("dy", 1) or 1
    rows, cols = z.shape
    ax.imshow(rgb, interpolation="nearest", aspect="auto",
              extent=(x0 - dx / 2, x0 + dx * (cols - 0.5), y0 + dy * (rows - 0.5), y0 - dy / 2))


def _scatter(ax, trace: dict, index: int) -> None:
    y = _array(trace.get("y"))
    x = np.arange(len(y)) if trace.get("x") is None else _array(trace.get("x"))
    mode = trace.get("mode") or ("lines" if len(y) > 20 else "lines+markers")
    line = trace.get("line") or {}
    dash = {"dash": "--", "dot": ":", "dashdot": "-."}.get(line.get("dash"), "-")
    ax.plot(x, y, linestyle=dash if "lines" in mode else "none", marker="o" if "markers" in mode else None,
            markersize=4, linewidth=line.get("width", 1.5) or 1.5, label=trace.get("name"),
            color=line.get("color") or f"C{index}")


def _bar(ax, trace: dict, index: int) -> None:
    y = _array(trace.get("y"))
    x = trace.get("x")
    x = np.arange(len(y)) if x is None else (list(x) if isinstance(x, (list, tuple)) else _array(x))
    ax.bar(x, y, label=trace.get("name"), color=f"C{index}")


def figure_png(fig: dict) -> bytes:
    """The PNG of a plotly figure given as a dict (fig.to_dict() or plotly's fig_dict)."""
    import matplotlib
    from matplotlib.figure import Figure           # no pyplot: no global state, no GUI backend

    layout = fig.get("layout", {}) or {}
    width, height = layout.get("width") or 700, layout.get("height") or 450
    figure = Figure(figsize=(width / DPI, height / DPI), dpi=DPI)
    ax = figure.add_subplot(1, 1, 1)
    named = False
    with matplotlib.rc_context({"font.size": 9}):
        for i, trace in enumerate(fig.get("data", []) or []):
            kind = trace.get("type", "scatter")
            if kind == "heatmap":
                _heatmap(ax, trace)
            elif kind in ("scatter", "scattergl"):
                _scatter(ax, trace, i)
                named |= bool(trace.get("name"))
            elif kind == "bar":
                _bar(ax, trace, i)
                named |= bool(trace.get("name"))
        xaxis, yaxis = layout.get("xaxis", {}) or {}, layout.get("yaxis", {}) or {}
        ax.set_title(_plain(layout.get("title")), loc="left", fontsize=10)
        ax.set_xlabel(_plain(xaxis.get("title")))
        ax.set_ylabel(_plain(yaxis.get("title")))
        if xaxis.get("tickvals") is not None and xaxis.get("ticktext") is not None:
            ax.set_xticks(list(xaxis["tickvals"]), [_plain(t) for t in xaxis["ticktext"]])
        if yaxis.get("type") == "log":
            ax.set_yscale("log")
        if xaxis.get("type") == "log":
            ax.set_xscale("log")
        if named:
            ax.legend(fontsize=8, frameon=False)
        figure.tight_layout()
        buffer = io.BytesIO()
        figure.savefig(buffer, format="png", metadata={"Software": None})
    return buffer.getvalue()


class StaticPngRenderer:
    """A plotly.io mimetype renderer adding `image/png` (figure_png) to a figure's display."""

    def to_mimebundle(self, fig_dict: dict) -> dict:
        return {"image/png": base64.b64encode(figure_png(fig_dict)).decode("ascii")}

    def activate(self):           # what plotly.io asks of a renderer
        pass


def register() -> None:
    """Register "tinymoe_png" with plotly.io; make it part of the default when the default is automatic."""
    import plotly.io as pio
    from plotly.io._base_renderers import MimetypeRenderer

    class _Renderer(StaticPngRenderer, MimetypeRenderer):
        pass

    if RENDERER not in pio.renderers:
        pio.renderers[RENDERER] = _Renderer()
    if pio.renderers.default in AUTOMATIC:
        pio.renderers.default = DEFAULT
