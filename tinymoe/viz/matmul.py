"""A matrix product laid out by hand: the weight on the left, the input on top, the result where
a row of the weight meets a column of the input.

    by_hand (the hand-built sheets):   Y = W X         W (out, in) left, X (in, T) on top, Y (out, T)
    pytorch (how the code reads):      Y = X W^T       X (T, in) left, W^T (in, out) on top, Y (T, out)

Both are the same numbers: the by-hand Y is the PyTorch Y transposed. In either layout every
result cell sits at the crossing of the row and the column whose dot product it is, which is the
whole point: the reader can check one cell with a finger on each operand. Shapes sit on the edges
(each operand's caption) and in the equation line above.

The same layout draws a product of two activations; `roles` says so, and nothing is bordered as
trainable that is not (pytorch layout, all three roles "activation"):

    scores = Q K^T        matmul_sheet(K, Q, result=scores)       Q left, K.T on top
    out = weights V       matmul_sheet(V.T, weights, result=out)  weights left, V on top
                          (name the first operand "Vᵀ": its transpose on top is captioned "V")
"""
from __future__ import annotations

import numpy as np
import torch

from .html import Html, escape
from .sheet import MONO, ROLES, as_numpy, cell_width_for, format_values, render, render_summary

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


def _transposed(name: str, caption: bool) -> str:
    """The name of the transpose: "W_q" -> "W_q.T" (caption) or "W_q<sup>T</sup>" (equation); a name
    that already says transposed ("Vᵀ", "V.T") loses the mark instead, since (Vᵀ)ᵀ = V."""
    for mark in ("ᵀ", ".T"):
        if name.endswith(mark) and len(name) > len(mark):
            return name[:-len(mark)]
    return f"{name}.T" if caption else f"{name}<sup>T</sup>"


def _prefix(name: str) -> str:
    letters = [c for c in name if c.isalpha()]
    return letters[0].lower() if letters else "y"


def matmul_sheet(weight, x, result=None, names=("W", "X", "Y"), orientation: str = "by_hand",
                 decimals: int = 2, max_cells: int = 600, roles=("weight", "input", "activation"),
                 labels=None) -> MatmulSheet:
    """Lay out Y = W X (by_hand) or Y = X W^T (pytorch) with every number visible.

    weight  (out, in), as nn.Linear stores it
    x       (seq_len, in) or (1, seq_len, in)
    result  the product, (seq_len, out) or (1, seq_len, out); computed here if None (the plain
            matmul being illustrated: pass the traced output to show what the model computed)
    names   the three captions (weight, input, result), e.g. ("W_q", "X", "Q")
    roles   the colour roles of the same three (by hand: the left operand, the top operand and
            the result). For a product of two activations, e.g. Q K^T:
                matmul_sheet(k, q, result=scores, names=("K", "Q", "scores"),
                             roles=("activation",) * 3, orientation="pytorch")
    labels  (out, in, seq_len) labels: the weight's rows, the shared dimension, the input's rows;
            default y0.. (the result's initial), d0.., t0..
    """
    if orientation not in ("by_hand", "pytorch"):
        raise ValueError(f"orientation={orientation!r}: must be 'by_hand' or 'pytorch'")
    w_name, x_name, y_name = names
    roles = tuple(roles)
    bad = [r for r in roles if r not in ROLES]
    if len(roles) != 3 or bad:
        raise ValueError(f"roles={roles!r}: give three roles (weight, input, result), each one of "
                         f"{', '.join(map(repr, ROLES))}")
    w_role, x_role, y_role = roles
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
    if labels is None:
        outs, features, tokens = ([f"{_prefix(y_name)}{i}" for i in range(d_out)], [f"d{i}" for i in range(d_in)],
                                  [f"t{i}" for i in range(T)])
    else:
        outs, features, tokens = (list(map(str, part)) for part in labels)
        if (len(outs), len(features), len(tokens)) != (d_out, d_in, T):
            raise ValueError(f"labels: got {len(outs)}, {len(features)} and {len(tokens)} labels for "
                             f"out={d_out}, in={d_in} and seq_len={T} ({w_name} {w.shape}, {x_name} {xs.shape})")

    plain = (w_role, x_role) == ("weight", "input")          # the default words, or the operands' names
    if orientation == "by_hand":
        left = (w, w_name, w_role, tuple(w.shape), outs, features, "")
        top = (xs.T, x_name, x_role, x_stored, features, tokens, "tokens as columns")
        prod = (y.T, y_name, y_role, y_stored, outs, tokens, "tokens as columns")
        equation = f"{y_name} = {w_name} &middot; {x_name}"
        how = (f"by-hand layout: {w_name} left, {x_name} on top, result where they meet" if not plain
               else "by-hand layout: weight left, input on top, result where they meet")
        dims = f"({d_out}&times;{d_in}) &middot; ({d_in}&times;{T}) = ({d_out}&times;{T})"
    else:
        left = (xs, x_name, x_role, x_stored, tokens, features, "tokens as rows")
        top = (w.T, _transposed(w_name, caption=True), w_role, tuple(w.T.shape), features, outs, "")
        prod = (y, y_name, y_role, y_stored, tokens, outs, "tokens as rows")
        equation = f"{y_name} = {x_name} &middot; {_transposed(w_name, caption=False)}"
        how = (f"PyTorch layout: tokens as rows, {x_name} left, {top[1]} on top" if not plain
               else "PyTorch layout: tokens as rows, input left, weight transposed on top")
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
