"""Explorers displayed where no kernel drives them (a notebook opened without running it, an HTML
export, a notebook preview) show a static snapshot of the current picture, not a widget repr."""
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
    assert len(captured) == 1, f"expected one display, got {len(captured)}"
    return captured[0]


@pytest.mark.parametrize("cls", EXPLORERS, ids=lambda c: c.__name__)
def test_display_bundle_has_the_live_widget_and_a_static_snapshot(cls):
    explorer = cls()
    bundle = _displayed_bundle(explorer)
    assert "application/vnd.jupyter.widget-view+json" in bundle, "the live widget is missing from the display"
    html = bundle["text/html"]
    assert "<script" not in html and "<style" not in html, "the snapshot must be plain HTML with inline styles"
    label = re.sub(r"<[^>]+>", "", explorer._shape_label.value)
    assert label.strip() and label.strip()[:40] in re.sub(r"<[^>]+>", "", html), "the snapshot lacks the shape line"
    assert "VBox(" not in bundle["text/plain"], "the plain-text fallback is a widget repr, not a sentence"


def test_snapshot_follows_a_slider_move_and_shows_errors():
    explorer = viz.AttentionExplorer()
    before = explorer.snapshot_html()
    explorer.set(seq_len=explorer.values["seq_len"] + 1)
    after = explorer.snapshot_html()
    assert before != after, "the snapshot did not change after a slider move"
    assert f"seq_len = {explorer.values['seq_len']}" in after, "the snapshot does not list the new seq_len"
    explorer.set(position="rope", d_k=3)
    assert explorer.error and "head_dim" in explorer.snapshot_html(), "an impossible setting's message is missing"
