"""An HTML fragment that renders the same everywhere: JupyterLab, a static HTML export, and a
code-hosting site's notebook preview.

Those three places agree on very little CSS: a preview strips `<style>` blocks and every
`<script>`, and JupyterLab's own table rules (centred tables, zebra rows, padding) apply to any
table without inline styles. So every fragment here is plain HTML with inline `style="..."`
attributes only, laid out with inline-blocks and tables, never with scripts or classes.
"""
from __future__ import annotations

import html as _html

__all__ = ["Html", "escape", "row", "column"]


def escape(text) -> str:
    """Text made safe to put inside HTML."""
    return _html.escape(str(text), quote=True)


class Html:
    """A piece of static HTML. A notebook shows it via `_repr_html_`; `.html` is the string."""

    def __init__(self, html: str):
        self.html = html

    def _repr_html_(self) -> str:
        return self.html

    def __str__(self) -> str:
        return self.html

    def __add__(self, other: "Html | str") -> "Html":
        return Html(self.html + (other.html if isinstance(other, Html) else str(other)))


def _fragment(part) -> str:
    return part.html if hasattr(part, "html") else str(part)


def row(*parts, gap: int = 18) -> Html:
    """Fragments side by side (wrapping onto the next line when the page is narrow)."""
    cells = "".join(f'<div style="display:inline-block;vertical-align:top;margin:0 {gap}px 10px 0">'
                    f"{_fragment(p)}</div>" for p in parts)
    return Html(f'<div style="text-align:left;line-height:1.4">{cells}</div>')


def column(*parts, gap: int = 8) -> Html:
    """Fragments one under the other."""
    return Html("".join(f'<div style="margin:0 0 {gap}px 0;text-align:left">{_fragment(p)}</div>'
                        for p in parts))
