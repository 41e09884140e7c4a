"""A matrix product laid out by hand: the weight on the left, the input on top, the result where
a row of the weight meets a column of the input.

    by_hand (the hand-built sheets):   Y = W X         W (out, in) left, X (in, T) on top, Y (out, T)
    pytorch (how the code reads):      Y = X W^T       X (T, in) left, W^T (in, out) on top, Y (T, out)

Both are the same numbers: the by-hand Y is the PyTorch Y transposed. In either layout every
result cell sits at the crossing of the row and the column whose dot product it is, which is the
whole point: the reader can check one cell with a finger on each operand. Shapes sit on the edges
(each operand's caption) and in the equation line above.
"""
from __future__ import annotations

import numpy as np
import torch

from .html import Html, escape
from .sheet import MONO, as_numpy, cell_width_for, format_values, render, render_summary

__all__ = ["matmul_sheet", "MatmulSheet"]


class MatmulSheet(Html):
    """The by-hand product. `.result` is the product as computed or given (PyTorch layout,
    (T, out)); `.orientation` says which layout is drawn."""

    def __init__(self, html: str, result: np.ndarray, orientation: str, degraded: bool):
        super().__init__(html)
        self.result, self.orientation, self.degraded = result, orientation, degraded


def _one_sequence(x: np.ndarray, name: str) -> np.ndarray:
    """(T, in) from (T, in) or (1, T, in)."""
    if x.ndim == 3 and x.shape[0] == 1:
        x = x[0]
    if x.ndim == 1:
        x = x[None, :]
    if x.ndim != 2:
        raise ValueError(f"{name} has shape {x.shape}: a by-hand product draws one sequence, "
                         f"(seq_len, features) or (1, seq_len, features); pass {name}[0] for a batch")
    return x


def _prefix(name: str) -> str:
    letters = [c for c in name if c.isalpha()]
    return letters[0].lower() if letters else "y"


def matmul_sheet(weight, x, result=None, names=("W", "X", "Y"), orientation: str = "by_hand",
                 decimals: int = 2, max_cells: int = 600) -> MatmulSheet:
    """Lay out Y = W X (by_hand) or Y = X W^T (pytorch) with every number visible.

    weight  (out, in), as nn.Linear stores it
    x       (seq_len, in) or (1, seq_len, in)
    result  the product, (seq_len, out) or (1, seq_len, out); computed here if None (the plain
            matmul being illustrated: pass the traced output to show what the model computed)
    names   the three captions (weight, input, result), e.g. ("W_q", "X", "Q")
    """
    if orientation not in ("by_hand", "pytorch"):
        raise ValueError(f"orientation={orientation!r}: must be 'by_hand' or 'pytorch'")
    w_name, x_name, y_name = names
    w = as_numpy(weight).astype(np.float64)
    if w.ndim != 2:
        raise ValueError(f"{w_name} has shape {w.shape}: a weight is a matrix (out, in)")
    x_stored = tuple(np.shape(as_numpy(x)))
    xs = _one_sequence(as_numpy(x).astype(np.float64), x_name)                  # (T, in)
    if xs.shape[1] != w.shape[1]:
        raise ValueError(f"{w_name} is {w.shape} (out, in) but {x_name} has {xs.shape[1]} features: "
                         f"the weight's in-size must equal the input's last dimension")
    if result is None:
        y = (torch.from_numpy(xs) @ torch.from_numpy(w).T).numpy()              # (T, out)
        y_stored = y.shape
    else:
        y_stored = tuple(np.shape(as_numpy(result)))
        y = _one_sequence(as_numpy(result).astype(np.float64), y_name)
        if y.shape != (xs.shape[0], w.shape[0]):
            raise ValueError(f"{y_name} has shape {y.shape} but {w_name} {w.shape} times {x_name} "
                             f"{xs.shape} gives {(xs.shape[0], w.shape[0])}")
    T, d_in = xs.shape
    d_out = w.shape[0]
    tokens = [f"t{i}" for i in range(T)]
    features = [f"d{i}" for i in range(d_in)]
    outs = [f"{_prefix(y_name)}{i}" for i in range(d_out)]

    if orientation == "by_hand":
        left = (w, w_name, "weight", tuple(w.shape), outs, features, "")
        top = (xs.T, x_name, "input", x_stored, features, tokens, "tokens as columns")
        prod = (y.T, y_name, "activation", y_stored, outs, tokens, "tokens as columns")
        equation = f"{y_name} = {w_name} &middot; {x_name}"
        how = "by-hand layout: weight left, input on top, result where they meet"
        dims = f"({d_out}&times;{d_in}) &middot; ({d_in}&times;{T}) = ({d_out}&times;{T})"
    else:
        left = (xs, x_name, "input", x_stored, tokens, features, "tokens as rows")
        top = (w.T, f"{w_name}.T", "weight", tuple(w.T.shape), features, outs, "")
        prod = (y, y_name, "activation", y_stored, tokens, outs, "tokens as rows")
        equation = f"{y_name} = {x_name} &middot; {w_name}<sup>T</sup>"
        how = "PyTorch layout: tokens as rows, input left, weight transposed on top"
        dims = f"({T}&times;{d_in}) &middot; ({d_in}&times;{d_out}) = ({T}&times;{d_out})"

    degraded = any(part[0].size > max_cells for part in (left, top, prod))
    if degraded:
        blocks = [render_summary([p], [""], n, r, s, note, max_cells) for p, n, r, s, _, _, note in (left, top, prod)]
    else:
        texts = [format_values(part[0], decimals) for part in (left, top, prod)]
        width = cell_width_for(texts, features + tokens + outs)
        label = 0.62 * max(len(s) for s in tokens + features + outs) + 0.5
        blocks = [render([p], [""], n, r, s, note, decimals, rl, cl, cell_width=width, label_width=label)
                  for p, n, r, s, rl, cl, note in (left, top, prod)]
    left_html, top_html, prod_html = blocks
    head = (f'<div style="font-family:sans-serif;font-size:14px;color:#222;margin:0 0 8px 0;text-align:left">'
            f'<b style="font-family:{MONO}">{equation}</b> '
            f'<span style="font-size:12px;color:#666">{dims} &nbsp;({escape(how)})</span></div>')
    cell = "border:none;padding:0 10px 8px 0;background:transparent;text-align:left;"
    table = (f'<table style="border-collapse:collapse;margin:0;border:none;table-layout:auto;width:auto">'
             f'<tr style="background:transparent"><td style="{cell}"></td>'
             f'<td style="{cell}vertical-align:bottom">{top_html}</td></tr>'
             f'<tr style="background:transparent"><td style="{cell}vertical-align:top">{left_html}</td>'
             f'<td style="{cell}vertical-align:top">{prod_html}</td></tr></table>')
    return MatmulSheet(f'<div style="text-align:left;line-height:1.4">{head}{table}</div>', y, orientation, degraded)
