"""MoDExplorer: the layers x tokens picture and the FLOP figures follow the controls."""
import pytest
import tinymoe as tm
from tinymoe.mod import forward_flops, routed_tokens
from tinymoe.viz import MoDExplorer


@pytest.fixture(scope="module")
def explorer():
    return MoDExplorer()


def test_each_routed_block_computes_k_tokens_and_dense_blocks_all(explorer):
    explorer.set(capacity=0.25, every_n_layers=2, seq_len=12)
    picture = explorer.routed
    k = routed_tokens(12, 0.25)
    assert picture.shape == (6, 12)
    assert picture[[0, 2, 4]].sum() == 3 * 12, "a dense block should compute every token"
    assert list(picture[[1, 3, 5]].sum(1)) == [k] * 3, f"each routed block should compute k={k} tokens"
    assert (explorer.heatmap_data == picture).all()


def test_flops_match_the_core_and_shrink_with_capacity(explorer):
    savings = []
    for capacity in (1.0, 0.5, 0.125):
        explorer.set(capacity=capacity, every_n_layers=1, seq_len=40)
        config = explorer.config(explorer.values)
        assert explorer.flops["mod"] == forward_flops(config, 40)["total"]
        assert explorer.flops["dense"] == forward_flops(config.replace(mod=None), 40)["total"]
        savings.append(explorer.flops["saved"])
        assert f"{explorer.flops['mod']:,}" in explorer.shape_label
    assert savings[0] < savings[1] < savings[2], f"savings should grow as capacity shrinks: {savings}"


def test_every_control_value_draws_without_error(explorer):
    for name, value in explorer.grid():
        if name == "seq_len" and value % 16:
            continue                                    # a sample of lengths keeps this quick
        explorer.set(**{name: value})
        assert explorer.error is None, f"{name}={value!r}: {explorer.error}"


def test_display_shows_the_live_widget_and_a_static_snapshot():
    from test_explorer_snapshot import _displayed_bundle      # the shared display helper
    explorer = MoDExplorer(seq_len=8)
    bundle, snapshot = _displayed_bundle(explorer)                 # two outputs: the widget, then its snapshot
    assert "application/vnd.jupyter.widget-view+json" in bundle
    html = snapshot["text/html"]
    assert "<script" not in html and 'alt="heatmap"' in html, "the snapshot needs the layers x tokens picture"
    assert "FLOPs" in html


def test_moving_back_redraws_the_same_picture(explorer):
    explorer.set(capacity=0.5, every_n_layers=2, seq_len=16)
    first = explorer.routed
    explorer.set(capacity=0.25, seq_len=20)
    explorer.set(capacity=0.5, seq_len=16)
    assert (explorer.routed == first).all(), "the same seed and settings should route the same tokens"
