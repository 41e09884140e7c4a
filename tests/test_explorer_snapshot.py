"""Explorers displayed where no kernel drives them (a notebook opened without running it, the
same notebook saved after Run All and reopened, an HTML export, a notebook preview) show a static
snapshot of the current picture, not a widget repr nor "model not found".

An explorer displays two outputs: the live widget (widget view + a line of text, no HTML: a
renderer that cannot draw the widget falls back to the text) and the snapshot (HTML)."""
import re

import pytest
from IPython.core.interactiveshell import InteractiveShell

from tinymoe import viz

EXPLORERS = [viz.AttentionExplorer, viz.RopeExplorer, viz.GQAExplorer, viz.NormExplorer, viz.MoEExplorer,
             viz.NSAExplorer]


def _displayed_bundle(explorer):
    shell = InteractiveShell.instance()
    captured = []
    publisher = shell.display_pub
    original = publisher.publish
    publisher.publish = lambda data, metadata=None, **kw: captured.append(data)
    try:
        explorer._ipython_display_()
    finally:
        publisher.publish = original
    assert len(captured) == 2, f"expected two displays (widget, snapshot), got {len(captured)}"
    return captured


@pytest.mark.parametrize("cls", EXPLORERS, ids=lambda c: c.__name__)
def test_display_has_the_live_widget_then_a_static_snapshot(cls):
    explorer = cls()
    bundle, snapshot = _displayed_bundle(explorer)
    assert "application/vnd.jupyter.widget-view+json" in bundle, "the live widget is missing from the display"
    assert "text/html" not in bundle, "HTML in the widget's output would show twice where the widget cannot draw"
    assert "application/vnd.jupyter.widget-view+json" not in snapshot, "the snapshot must stand alone"
    html = snapshot["text/html"]
    assert "<script" not in html, "the snapshot must be plain HTML"
    assert 'class="tinymoe-snapshot"' in html, "the live widget's CSS finds its snapshot by this class"
    without_css = re.sub(r"<style>.*?</style>", "", html, flags=re.S)
    assert "<style" not in without_css, "one stylesheet only, the one that hides a dead widget's error line"
    assert "tinymoe-snapshot" in explorer.widget.children[0].value and "display:none" in explorer.widget.children[0].value, \
        "the live widget should carry the CSS that hides its snapshot"
    label = re.sub(r"<[^>]+>", "", explorer._shape_label.value)
    assert label.strip() and label.strip()[:40] in re.sub(r"<[^>]+>", "", html), "the snapshot lacks the shape line"
    assert "VBox(" not in bundle["text/plain"], "the plain-text fallback is a widget repr, not a sentence"
    assert "run the notebook" in bundle["text/plain"]


def test_snapshot_follows_a_slider_move_and_shows_errors():
    explorer = viz.AttentionExplorer()
    before = explorer.snapshot_html()
    explorer.set(seq_len=explorer.values["seq_len"] + 1)
    after = explorer.snapshot_html()
    assert before != after, "the snapshot did not change after a slider move"
    assert f"seq_len = {explorer.values['seq_len']}" in after, "the snapshot does not list the new seq_len"
    explorer.set(position="rope", d_k=3)
    assert explorer.error and "head_dim" in explorer.snapshot_html(), "an impossible setting's message is missing"
    assert "stale" in explorer.snapshot_html(), "a stale picture's snapshot must say so"
