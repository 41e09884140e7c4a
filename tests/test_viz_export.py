"""Sheets survive a static HTML export of the notebook (nbconvert): every tag, inline style and
number arrives (nbconvert re-serialises the HTML, so the check compares parsed markup, not bytes)."""
from __future__ import annotations

from html.parser import HTMLParser

import pytest
import torch

import tinymoe
from tinymoe import viz

nbformat = pytest.importorskip("nbformat")
nbconvert = pytest.importorskip("nbconvert")


def exported(*html_outputs: str) -> str:
    """A notebook whose cells display these HTML fragments, exported as nbconvert's HTMLExporter does."""
    from nbformat.v4 import new_code_cell, new_notebook, new_output
    nb = new_notebook()
    for i, html in enumerate(html_outputs):
        cell = new_code_cell(f"# output {i}")
        cell.outputs = [new_output("display_data", data={"text/html": html, "text/plain": "<sheet>"})]
        nb.cells.append(cell)
    body, _ = nbconvert.HTMLExporter().from_notebook_node(nb)
    return body


class Events(HTMLParser):
    """The markup as a list of (start tag, sorted attributes) / text events: what a browser sees."""

    def __init__(self, html: str):
        super().__init__(convert_charrefs=True)
        self.events: list[tuple] = []
        self.feed(html)

    def handle_starttag(self, tag, attrs):
        self.events.append(("start", tag, tuple(sorted(attrs))))

    def handle_endtag(self, tag):
        self.events.append(("end", tag))

    def handle_data(self, data):
        if data.strip():
            self.events.append(("text", data.strip()))


def contains(body: list[tuple], part: list[tuple]) -> bool:
    starts = [i for i, e in enumerate(body) if e == part[0]]
    return any(body[i:i + len(part)] == part for i in starts)


def test_every_kind_of_sheet_reaches_the_export_unchanged():
    run = viz.traced_forward(tinymoe.ModelConfig(d_model=4, n_heads=2), "attention", seq_len=4)
    fragments = [viz.show(run.trace, "attn.W_q").html,
                 viz.show(run.trace, "attn.weights").html,
                 viz.sheet(torch.randn(40, 40), "big", max_cells=100).html,          # the picture form
                 viz.matmul_sheet(run.trace["attn.W_v"], run.trace["attn.x"]).html,
                 viz.shapes_table(tinymoe.ModelConfig(d_model=4, n_heads=2), module="attention").html,
                 viz.walk(run.trace, names=["attn.x", "attn.q"]).html,
                 viz.legend().html]
    body = exported(*fragments)
    events = Events(body).events
    for fragment in fragments:
        assert contains(events, Events(fragment).events), f"the export changed a sheet starting {fragment[:80]!r}"
    assert body.count("data:image/png;base64,") >= 1, "the summary picture should be inlined in the export"
