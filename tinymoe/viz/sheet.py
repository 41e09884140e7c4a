"""A tensor drawn as a spreadsheet: one cell per number, coloured by its role, shape in the caption.

    sheet(trace["attn.q"], name="attn.q")        # or: show(trace, "attn.q")

What a sheet does with each kind of tensor:
  1-D (d,)                 one row of cells
  2-D (T, d)               a grid; tokens are rows ("pytorch") or columns ("by_hand")
  3-D (1, T, d)            the batch of one is dropped: a grid
  4-D (1, H, T, T)         one grid per head, side by side, all on one colour scale; heads
                           that do not fit the page's width wrap onto the next line
  a size-0 axis, (10, 0)   the caption and a note that there is nothing to draw
  more than `max_cells`    a heatmap picture (a PNG, see png.py) and the shape: never a
                           10,000-cell table

Orientation. PyTorch stores activations as (tokens, features): "pytorch" draws them as stored,
tokens as rows. The hand-built sheets draw Y = W X with tokens as columns: "by_hand" transposes
the last two axes of every activation so the sheet reads like those. A weight is (out, in) in
both, because that is how nn.Linear stores it and also how W sits in W X. The caption says
which orientation you are looking at; `note=` replaces that text for a table whose rows are
not tokens (rows of (m, n) pairs, of experts, ...).

The HTML is static (inline styles, no script), so it survives a static export and a notebook
preview on a code-hosting site.
"""
from __future__ import annotations

import numpy as np
import torch

from .html import Html, escape
from .palette import ROLE_EDGE, ROLE_TAG, ROLE_WIDTH, ROLES, category_colours, hex_colours
from .png import data_uri, heatmap_png
from .style import MONO, NOTE, shape_text

__all__ = ["Sheet", "sheet", "show", "ORIENTATIONS", "MONO"]

ORIENTATIONS = ("pytorch", "by_hand")
CATEGORY_SUFFIXES = ("_ids", "ids", "blocks", "expert")   # integer tensors that hold ids
SQUARE_NAMES = ("scores", "weights", "mask")   # attention matrices: (queries, keys), both tokens
MAX_PANELS = 16                                 # heads drawn in a summary picture


class Sheet(Html):
    """One tensor as a sheet. `.html` is the markup; the rest says what it shows:
    name, role, shape (as stored), orientation, degraded (True when summarised as a picture),
    panels (the 2-D arrays drawn, after dropping the batch and applying the orientation)."""

    def __init__(self, html: str, name: str, role: str, shape: tuple, orientation: str,
                 degraded: bool, panels: list[np.ndarray], panel_titles: list[str]):
        super().__init__(html)
        self.name, self.role, self.shape, self.orientation = name, role, shape, orientation
        self.degraded, self.panels, self.panel_titles = degraded, panels, panel_titles

    @property
    def cells(self) -> int:
        return int(sum(p.size for p in self.panels))

    def __repr__(self) -> str:
        kind = "summarised" if self.degraded else f"{self.cells} cells" if self.panels else "empty"
        return f"Sheet({self.name!r}, shape={self.shape}, role={self.role!r}, {self.orientation}, {kind})"


# ---- from a tensor to labelled 2-D panels --------------------------------------------------------

def as_numpy(tensor) -> np.ndarray:
    if isinstance(tensor, torch.Tensor):
        tensor = tensor.detach().cpu()
        if tensor.dtype == torch.bool:
            return tensor.numpy().astype(np.int64)
        if tensor.is_floating_point() and tensor.dtype != torch.float64:
            tensor = tensor.float()
        return tensor.numpy()
    values = np.asarray(tensor)
    return values.astype(np.int64) if values.dtype == bool else values


def _axis_kinds(name: str, role: str, values: np.ndarray) -> list[str]:
    """What each stored axis is: 'batch', 'head', 'token', 'feature' or '' (a plain index)."""
    n = values.ndim
    if role in ("weight", "bias") or n == 0:
        return [""] * n
    if n == 1:
        return [""]
    if n == 2 and np.issubdtype(values.dtype, np.integer) and role == "input":
        return ["batch", "token"]                                   # token ids (batch, seq)
    last = "token" if name.rsplit(".", 1)[-1] in SQUARE_NAMES else "feature"
    lead = {0: [], 1: ["batch"], 2: ["batch", "head"]}.get(n - 2, ["batch"] + ["head"] * (n - 3))
    return lead + ["token", last]


def _panels(values: np.ndarray, kinds: list[str], orientation: str):
    """Drop a leading batch of one; split leading axes into panels; orient the last two axes.
    Returns (panels, panel titles, row kind, column kind, transposed)."""
    if len(kinds) >= 2 and kinds[0] == "batch" and values.shape[0] == 1:
        values, kinds = values[0], kinds[1:]
    if values.ndim == 0:
        values, kinds = values.reshape(1), [""]
    if values.ndim == 1:                                             # one row, no orientation
        return [values[None, :]], [""], "", kinds[0], False
    lead_shape, lead_kinds = values.shape[:-2], kinds[:-2]
    flat = values.reshape((-1,) + values.shape[-2:])
    titles = []
    for index in np.ndindex(*lead_shape) if lead_shape else [()]:
        titles.append(" ".join(f"{'head' if k == 'head' else 'batch' if k == 'batch' else 'index'} {i}"
                               for k, i in zip(lead_kinds, index)))
    row_kind, col_kind = kinds[-2], kinds[-1]
    transposed = orientation == "by_hand" and "token" in (row_kind, col_kind)
    panels = [p.T if transposed else p for p in flat]
    if transposed:
        row_kind, col_kind = col_kind, row_kind
    return panels, titles, row_kind, col_kind, transposed


def _labels(kind: str, n: int) -> list[str]:
    if kind == "" and n == 1:
        return [""]
    prefix = {"token": "t", "feature": "d", "batch": "b", "head": "h"}.get(kind, "")
    return [f"{prefix}{i}" for i in range(n)]


def format_values(values: np.ndarray, decimals: int) -> np.ndarray:
    """Each value as text: integers plainly, floats with `decimals` places ('-0.00' -> '0.00').
    A float tensor holding only whole numbers (a hand-made example) is written without '.00'."""
    flat = values.reshape(-1)
    if np.issubdtype(values.dtype, np.floating):
        finite = flat[np.isfinite(flat)]
        if finite.size and np.all(finite == np.round(finite)) and np.abs(finite).max() < 1e15:
            decimals = 0
    zero = f"{0:.{decimals}f}"
    text = []
    for v in flat:
        if np.issubdtype(values.dtype, np.integer):
            text.append(str(int(v)))
        elif not np.isfinite(v):
            text.append("nan" if np.isnan(v) else ("inf" if v > 0 else "-inf"))
        else:
            s = f"{v:.{decimals}f}"
            text.append(zero if s == "-" + zero else s)
    return np.array(text, dtype=object).reshape(values.shape)


# ---- the HTML --------------------------------------------------------------------------------

def caption(name: str, role: str, shape: tuple, note: str = "") -> str:
    """Name (monospace, bold), what kind of tensor, and its shape as PyTorch stores it."""
    tag = ROLE_TAG.get(role, "")
    tag_html = (f' <span style="font-size:11px;color:{"#b5553b" if role == "weight" else "#777"}">'
                f"({escape(tag)})</span>" if tag else "")
    note_html = f' <span style="font-size:11px;color:#8a8a8a">{note}</span>' if note else ""
    return (f'<div style="font-family:sans-serif;font-size:12px;color:#222;margin:0 0 3px 0;white-space:nowrap;'
            f'text-align:left"><b style="font-family:{MONO};font-size:13px">{escape(name)}</b>{tag_html} '
            f'<span style="font-family:{MONO};font-size:12px;background:#efefef;border-radius:3px;padding:0 4px">'
            f"{escape(shape_text(shape))}</span>{note_html}</div>")


def grid_html(panel: np.ndarray, text: np.ndarray, role: str, row_labels: list[str], col_labels: list[str],
              scale: float, cell_width: float, label_width: float, categorical: bool = False) -> str:
    """One 2-D panel as a table: column labels on top, row labels on the left.
    The border says the role, the fill the value (palette.py); ids get categorical fills.
    Widths are set on the label cells (table-layout auto takes a column's width from them), so two
    grids given the same cell_width line up when stacked, as in the by-hand product."""
    edge, width = ROLE_EDGE.get(role, "#d4d4d4"), ROLE_WIDTH.get(role, 1)
    fills = category_colours(panel) if categorical else hex_colours(panel, scale)
    label = "color:#8a8a8a;font-size:10px;border:none;background:transparent;padding:0 3px;"
    parts = [f'<table style="border-collapse:collapse;font-family:{MONO};font-size:12px;line-height:17px;'
             f'margin:0;table-layout:auto;color:#222;width:auto">',
             f'<tr><td style="{label}width:{label_width:.1f}em;min-width:{label_width:.1f}em"></td>']
    for c in col_labels:
        parts.append(f'<td style="{label}text-align:center;width:{cell_width:.1f}em;min-width:{cell_width:.1f}em">'
                     f"{escape(c)}</td>")
    parts.append("</tr>")
    cell = f"border:{width}px solid {edge};padding:1px 5px;text-align:right;white-space:nowrap;background:"
    for r in range(panel.shape[0]):
        parts.append(f'<tr><td style="{label}text-align:right;height:19px">{escape(row_labels[r])}</td>')
        parts.extend(f'<td style="{cell}{fills[r, c]}">{text[r, c]}</td>' for c in range(panel.shape[1]))
        parts.append("</tr>")
    parts.append("</table>")
    return "".join(parts)


def cell_width_for(texts: list[np.ndarray], col_labels: list[str]) -> float:
    widest = max([len(s) for t in texts for s in t.reshape(-1)] + [len(c) for c in col_labels] + [3])
    return 0.62 * widest + 0.9


def render(panels: list[np.ndarray], titles: list[str], name: str, role: str, shape: tuple, note: str,
           decimals: int, row_labels: list[str], col_labels: list[str], cell_width: float | None = None,
           label_width: float | None = None, scale: float | None = None, categorical: bool = False) -> str:
    """Caption + the panels as grids side by side. Two or more panels (heads) sit in a wrapping
    flex row, so the heads that do not fit the page's width move onto the next line instead of
    running off its right edge; a single grid is one inline block."""
    texts = [format_values(p, decimals) for p in panels]
    if scale is None:
        finite = [np.abs(p[np.isfinite(p)]) for p in panels if np.issubdtype(p.dtype, np.number)]
        scale = max((float(f.max()) for f in finite if f.size), default=0.0)
    cell_width = cell_width or cell_width_for(texts, col_labels)
    label_width = label_width or 0.62 * max([len(r) for r in row_labels] + [1]) + 0.5
    body = []
    for panel, text, title in zip(panels, texts, titles):
        head = (f'<div style="{NOTE};margin:0 0 1px 0;'
                f'text-align:left">{escape(title)}</div>' if title else "")
        grid = grid_html(panel, text, role, row_labels, col_labels, scale, cell_width, label_width, categorical)
        if len(panels) > 1:
            body.append(f'<div style="flex:none;margin:0 12px 0 0">{head}{grid}</div>')
        else:
            body.append(f'<div style="display:inline-block;vertical-align:top;margin:0 12px 0 0">{head}{grid}</div>')
    wrapper = ("display:flex;flex-wrap:wrap;align-items:flex-start;row-gap:8px" if len(panels) > 1
               else "white-space:nowrap")
    return (f'<div style="display:inline-block;vertical-align:top;text-align:left;line-height:1.4">'
            f'{caption(name, role, shape, note)}<div style="{wrapper}">{"".join(body)}</div></div>')


def render_empty(name: str, role: str, shape: tuple, note: str) -> str:
    """Caption + a line saying there is nothing to draw (some axis has size 0)."""
    zero = [str(i) for i, n in enumerate(shape) if n == 0]
    axes = f"axis {zero[0]} has" if len(zero) == 1 else f"axes {', '.join(zero[:-1])} and {zero[-1]} have"
    return (f'<div style="display:inline-block;vertical-align:top;text-align:left;line-height:1.4">'
            f'{caption(name, role, shape, note)}'
            f'<div style="{NOTE};margin:2px 0 0 0">'
            f"empty tensor: {axes} size 0, so there are no values to draw.</div></div>")


def render_summary(panels: list[np.ndarray], titles: list[str], name: str, role: str, shape: tuple,
                   note: str, max_cells: int, max_columns: int | None = None) -> str:
    """Caption + a heatmap picture instead of cells (the tensor is bigger than max_cells)."""
    shown = panels[:MAX_PANELS]
    floats = [p.astype(np.float64) for p in shown]
    finite = [np.abs(p[np.isfinite(p)]) for p in floats]
    scale = max((float(f.max()) for f in finite if f.size), default=0.0)
    png, pixels = heatmap_png(floats, scale=scale)
    w, h = int.from_bytes(png[16:20], "big"), int.from_bytes(png[20:24], "big")     # from the PNG header
    shown_w, shown_h = w * pixels, h * pixels
    keep_aspect = "height:auto;"
    if shown_h < 24:                                  # a long vector: a strip tall enough to see
        shown_h, keep_aspect = 24, ""
    cells = int(sum(p.size for p in panels))
    more = f"; first {MAX_PANELS} of {len(panels)} panels" if len(panels) > MAX_PANELS else ""
    heads = f" ({escape(titles[0])} &hellip; {escape(titles[len(shown) - 1])} left to right)" \
        if len(shown) > 1 and titles[0] else ""
    edge = ROLE_EDGE.get(role, "#d4d4d4")
    summary = (f'<div style="{NOTE};margin:2px 0 0 0">'
               + (f"{panels[0].shape[-1]} columns &gt; max_columns={max_columns}" if max_columns else
                  f"{cells:,} values &gt; max_cells={max_cells}")
               + f": summarised as a heatmap{heads}{more}. "
               f"Blue +, orange &minus;, full colour at |v| = {scale:.3g}. One value per "
               f"{pixels}&times;{shown_h // h} px block.</div>")
    return (f'<div style="display:inline-block;vertical-align:top;text-align:left;line-height:1.4">'
            f'{caption(name, role, shape, note)}'
            f'<img alt="{escape(name)} heatmap" src="{data_uri(png)}" width="{shown_w}" height="{shown_h}" '
            f'style="border:1px solid {edge};image-rendering:pixelated;max-width:100%;{keep_aspect}"/>{summary}</div>')


# ---- public ------------------------------------------------------------------------------------

def orientation_note(row_kind: str, col_kind: str, orientation: str) -> str:
    if "token" not in (row_kind, col_kind) or "" in (row_kind, col_kind):
        return ""
    if orientation == "by_hand":
        return "tokens as columns (by hand)"
    return "tokens as rows (PyTorch)"


def sheet(tensor, name: str | None = None, role: str = "activation", decimals: int = 2,
          max_cells: int = 600, row_labels=None, col_labels=None, orientation: str = "pytorch",
          note: str | None = None, max_columns: int | None = None, categorical: bool | None = None) -> Sheet:
    """Draw `tensor` as a sheet (see the module docstring). Returns a Sheet; a notebook shows it.

    role         weight | bias | input | output | activation | buffer (sets the colour)
    decimals     places after the point
    max_cells    past this many numbers, a heatmap picture + shape instead of cells
    max_columns  past this many columns (as drawn), a picture too (None: no limit)
    categorical  ids, not amounts (expert ids, block ids): each value gets its own colour from a
                 categorical palette (-1, "none", stays blank). Default: integer tensors whose
                 name ends in "_ids" or "blocks".
    row_labels, col_labels   override the labels of the grid as drawn (after orientation)
    orientation  "pytorch" (tokens as rows) or "by_hand" (tokens as columns)
    note         the caption's grey note (plain text); default: the orientation when rows or
                 columns are tokens ("tokens as rows (PyTorch)"). Give one when they are not:
                 note="rows: (m, n) pairs". "" shows no note.
    """
    if orientation not in ORIENTATIONS:
        raise ValueError(f"orientation={orientation!r}: must be one of {', '.join(map(repr, ORIENTATIONS))}")
    if role not in ROLES:
        raise ValueError(f"role={role!r}: must be one of {', '.join(map(repr, ROLES))}")
    name = "tensor" if name is None else name
    values = as_numpy(tensor)
    shape = tuple(values.shape)
    if categorical and not np.issubdtype(values.dtype, np.integer):
        raise ValueError(f"{name}: categorical=True needs whole-number ids, got {values.dtype}")
    note = None if note is None else escape(note)
    if values.size == 0:                                  # (10, 0) and the like: nothing to draw
        html = render_empty(name, role, shape, note or "")
        return Sheet(html, name, role, shape, orientation, False, [], [])
    kinds = _axis_kinds(name, role, values)
    panels, titles, row_kind, col_kind, _ = _panels(values, kinds, orientation)
    if note is None:
        note = orientation_note(row_kind, col_kind, orientation)
    too_wide = max_columns is not None and panels[0].shape[-1] > max_columns
    if sum(p.size for p in panels) > max_cells or too_wide:
        html = render_summary(panels, titles, name, role, shape, note, max_cells, max_columns if too_wide else None)
        return Sheet(html, name, role, shape, orientation, True, panels, titles)
    rows, cols = panels[0].shape
    row_labels = list(row_labels) if row_labels is not None else _labels(row_kind, rows)
    col_labels = list(col_labels) if col_labels is not None else _labels(col_kind, cols)
    if len(row_labels) != rows or len(col_labels) != cols:
        raise ValueError(f"{name}: got {len(row_labels)} row labels and {len(col_labels)} column labels "
                         f"for a grid of {rows} x {cols} (as drawn, orientation={orientation!r})")
    if categorical is None:
        categorical = np.issubdtype(values.dtype, np.integer) and name.endswith(CATEGORY_SUFFIXES)
    html = render(panels, titles, name, role, shape, note, decimals, row_labels, col_labels, categorical=categorical)
    return Sheet(html, name, role, shape, orientation, False, panels, titles)


def show(trace, name: str, **kw) -> Sheet:
    """The sheet of one trace record, coloured by the role the core recorded it with."""
    if name not in trace:
        raise KeyError(f"{name!r} is not in this trace; recorded names: {', '.join(trace.keys())}")
    return sheet(trace[name], name=name, role=trace.role(name), **kw)
