"""The look, in one place: how a shape is written and the few text styles every picture shares.

The fragments are plain HTML with inline `style="..."` attributes (a notebook preview strips
`<style>` blocks, see html.py), so a style is a named string here, used by name everywhere else,
never the same `font-family:...` typed again in each module:

    shape_text((1, 10, 5))      '(1, 10, 5)'  (a 1-tuple keeps its comma: '(64,)')
    text(html)                  a line of explanatory text (sans-serif, 12 px)
    note(html)                  a grey note under a picture (11 px)
    TABLE, CELL, HEAD_CELL      a small table of figures (name, number, comparison)

The live explorers also carry class names (EXPLORER_CSS): `tinymoe-stale` greys a picture that
no longer matches the controls, and the live widget hides its own static snapshot.
"""
from __future__ import annotations

from .html import escape

__all__ = ["shape_text", "MONO", "SANS", "TEXT", "NOTE", "TABLE", "CELL", "HEAD_CELL", "text", "note",
           "plural", "figures_table", "EXPLORER_CSS", "SNAPSHOT_CSS"]

MONO = "SFMono-Regular,Menlo,Consolas,'DejaVu Sans Mono','Liberation Mono',monospace"
SANS = "font-family:sans-serif"
TEXT = f"{SANS};font-size:12px;color:#333;text-align:left"
NOTE = f"{SANS};font-size:11px;color:#777;text-align:left"
TABLE = f"border-collapse:collapse;{SANS};font-size:12px;margin:2px 0 8px 0;width:auto"
CELL = f"padding:1px 10px;text-align:right;font-family:{MONO}"
HEAD_CELL = "padding:1px 10px;text-align:right;color:#666;font-weight:normal"


def shape_text(shape) -> str:
    """A shape as PyTorch prints it, without the `torch.Size`: (1, 10, 5), (64,), ()."""
    if shape is None:
        return ""
    shape = tuple(shape)
    return "(" + ", ".join(map(str, shape)) + ("," if len(shape) == 1 else "") + ")"


def plural(n: int, word: str) -> str:
    """'1 token', '2 tokens', '0 tokens'."""
    return f"{n} {word}{'' if n == 1 else 's'}"


def text(html: str, width: int | None = 460, margin: str = "2px 0 6px 0") -> str:
    """A line (or a few) of explanatory text; `html` is inserted as it is (escape plain text first)."""
    limit = f";max-width:{width}px" if width else ""
    return f'<div style="{TEXT};margin:{margin}{limit}">{html}</div>'


def note(html: str) -> str:
    """A grey note under a picture."""
    return f'<div style="{NOTE};margin:2px 0 0 0">{html}</div>'


def figures_table(rows, header=None) -> str:
    """A small table of figures: each row (label, number, comment); numbers right-aligned in monospace."""
    parts = [f'<table style="{TABLE}">']
    if header:
        parts.append("<tr>" + "".join(f'<td style="{HEAD_CELL}{";text-align:left" if i == 0 else ""}">{escape(h)}</td>'
                                      for i, h in enumerate(header)) + "</tr>")
    for label, *values in rows:
        parts.append(f'<tr><td style="padding:1px 10px 1px 0;text-align:left">{escape(label)}</td>'
                     + "".join(f'<td style="{CELL}">{v}</td>' if i < 1 or header else
                               f'<td style="padding:1px 0;text-align:left;color:#777">{v}</td>'
                               for i, v in enumerate(values))
                     + "</tr>")
    parts.append("</table>")
    return "".join(parts)


# The live explorer carries this stylesheet (in its title) and so does the snapshot; each rule is
# about the pair of outputs an explorer cell makes: [the live widget] [its static snapshot].
#   - live widget on screen: hide the snapshot beside it (the reader sees one picture);
#   - a stale picture (the controls hold an impossible combination): greyed out;
EXPLORER_CSS = (
    "<style>"
    ".jp-OutputArea-child:has(.tinymoe-explorer) + .jp-OutputArea-child:has(.tinymoe-snapshot),"
    ".output_area:has(.tinymoe-explorer) + .output_area:has(.tinymoe-snapshot){display:none}"
    ".tinymoe-stale{opacity:0.4;filter:grayscale(0.7)}"
    "</style>")
#   - no live widget (a saved notebook reopened: "model not found", or no kernel yet): hide the
#     widget output's error or "Loading widget..." line, the snapshot below it stands in.
SNAPSHOT_CSS = (
    "<style>"
    ".jp-OutputArea-child:has(+ .jp-OutputArea-child .tinymoe-snapshot):not(:has(.tinymoe-explorer)){display:none}"
    "</style>")
