"""A whole trace laid out as a sequence of sheets, in the order the forward pass made them:

    input -> norm -> q / k / v (and RoPE) -> scores -> weights -> heads -> concat
          -> output projection -> residual -> norm -> feed-forward -> residual -> ...

Each step is one line of sheets under a heading that names the module and the step, with an
arrow to the next. The sheets come straight from the trace's records (the tensors the core
computed), so the walk is a picture of what the model did, not a re-derivation of it.
The one liberty taken with the recording order: an output projection's weight (W_o) is recorded
with the other weights at the top of attention but drawn next to the output it makes.
"""
from __future__ import annotations

from .html import Html, escape
from .sheet import show

__all__ = ["walk", "step_of"]

# The last part of a record's name -> the step it belongs to.
STEPS = {
    "tokens": "input", "x": "input",
    "W_E": "embedding", "pos": "embedding", "with_pos": "embedding",
    "rms": "norm", "mean": "norm", "var": "norm", "x_hat": "norm", "gamma": "norm", "beta": "norm",
    "W_q": "q / k / v", "W_k": "q / k / v", "W_v": "q / k / v", "q": "q / k / v", "k": "q / k / v",
    "v": "q / k / v", "rope_cos": "RoPE", "rope_sin": "RoPE", "q_rot": "RoPE", "k_rot": "RoPE",
    "scores": "scores", "mask": "scores", "weights": "weights",
    "concat": "concat", "W_o": "output projection", "resid_attn": "residual",
    "W_U": "LM head", "logits": "LM head",
}
NORMS = ("norm", "norm_1", "norm_2", "final_norm")
FFNS = ("ffn", "moe")


def step_of(name: str) -> tuple[str, str]:
    """(module scope, step) for a trace name: 'layers.0.attn.scores' -> ('layers.0.attn', 'scores')."""
    scope, _, leaf = name.rpartition(".")
    parent = scope.rpartition(".")[2]
    if leaf.startswith("head") and leaf[4:].isdigit():
        return scope, "heads"
    if leaf.startswith("v") and leaf[1:].isdigit():               # values of kv head j, sizes unequal
        return scope, "q / k / v"
    if parent in NORMS:
        return scope, "norm"
    if parent in FFNS or parent.startswith("expert"):
        return scope, "feed-forward" if parent == "ffn" else "mixture of experts"
    if leaf == "out":
        return scope, {"attn": "output projection", "embed": "embedding"}.get(parent, "residual" if
                                                                              parent.isdigit() else "output")
    return scope, STEPS.get(leaf, leaf)


def _order(names: list[str]) -> list[str]:
    """Recording order, with each W_o moved to just before the output it projects to."""
    names = list(names)
    for w in [n for n in names if n.endswith("W_o")]:
        out = w[: -len("W_o")] + "out"
        if out in names:
            names.remove(w)
            names.insert(names.index(out), w)
    return names


def walk(trace, names=None, prefix: str = "", **sheet_kw) -> Html:
    """Every record of `trace` (or just `names`, or those starting with `prefix`) as sheets,
    one line per step of the forward pass. Keyword arguments go to each sheet
    (orientation, decimals, max_cells)."""
    chosen = list(names) if names is not None else [n for n in trace.keys() if n.startswith(prefix)]
    missing = [n for n in chosen if n not in trace]
    if missing:
        raise KeyError(f"not in this trace: {', '.join(missing)}; recorded names: {', '.join(trace.keys())}")
    if names is None:
        chosen = _order(chosen)
    groups: list[tuple[tuple[str, str], list[str]]] = []
    for name in chosen:
        key = step_of(name)
        if groups and groups[-1][0] == key:
            groups[-1][1].append(name)
        else:
            groups.append((key, [name]))
    parts = ['<div style="text-align:left;line-height:1.4">']
    for i, ((scope, step), members) in enumerate(groups):
        where = f'<span style="color:#888;font-weight:normal"> {escape(scope)}</span>' if scope else ""
        arrow = "" if i == 0 else '<span style="color:#aaa">&darr;</span> '
        parts.append(f'<div style="font-family:sans-serif;font-size:13px;font-weight:bold;color:#333;'
                     f'margin:10px 0 4px 0">{arrow}{i + 1}. {escape(step)}{where}</div><div>')
        for name in members:
            parts.append(f'<div style="display:inline-block;vertical-align:top;margin:0 18px 8px 0">'
                         f"{show(trace, name, **sheet_kw).html}</div>")
        parts.append("</div>")
    parts.append("</div>")
    return Html("".join(parts))
