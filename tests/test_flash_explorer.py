"""FlashExplorer: the tiles it draws are tinymoe.flash's tile map, its bytes are attention_bytes, every
mask kind and tile size gives a picture (no exception escapes), and the tiled reference it runs agrees
with plain attention at every position of the controls it visits."""
import pytest
import torch

pytest.importorskip("ipywidgets")
pytest.importorskip("plotly")

from tinymoe.flash import SKIP, MaskRule, attention_bytes, tile_map  # noqa: E402
from tinymoe.viz import FlashExplorer  # noqa: E402
from tinymoe.viz.flash_explorer import MASK_KINDS  # noqa: E402


@pytest.fixture(scope="module")
def explorer():
    return FlashExplorer(seq_len=10, block=4, mask="causal", window=3, chunk_size=4, max_seq_len=24, max_block=8,
                         curve_max_len=64)


RULES = {"dense": MaskRule(), "causal": MaskRule(causal=True), "sliding window": MaskRule(causal=True, window=3),
         "chunked": MaskRule(causal=True, chunk_size=4)}


def assert_picture_matches_the_core(e: FlashExplorer):
    T, block = e.values["seq_len"], e.values["block"]
    rule = RULES[e.values["mask"]] if (e.values["window"], e.values["chunk_size"]) == (3, 4) else None
    assert e.error is None, e.error
    if rule is not None:
        expected = attention_bytes(T, T, 3, block, block, rule)
        assert {k: e.counts[k] for k in expected} == expected
        tiles = tile_map(rule, T, T, block, block)
        skipped = (tiles == SKIP).repeat_interleave(block, 0).repeat_interleave(block, 1)[:T, :T]
        picture = torch.tensor(e.heatmap_data.copy())
        assert picture.shape == (T, T), picture.shape
        assert torch.equal(picture == 0, skipped), "the heatmap's zeros should be exactly the skipped tiles"
        assert torch.equal(picture == 1, rule.dense(T, T)), "the heatmap's ones should be exactly the kept pairs"
    assert e.counts["max_error"] < 1e-5, f"the tiled reference is off plain attention by {e.counts['max_error']:.2e}"
    assert f"seq_len={T}" in e.shape_label and f"tile {block}×{block}" in e.shape_label


def test_starting_picture_is_the_notebooks_causal_sheet(explorer):
    assert_picture_matches_the_core(explorer)
    assert explorer.counts["tiles"] == 9 and explorer.counts["tiles_skipped"] == 3, explorer.counts
    assert explorer.shapes["tile_map"] == (3, 3)


@pytest.mark.parametrize("mask", MASK_KINDS)
@pytest.mark.parametrize("seq_len, block", [(10, 4), (17, 3), (24, 8), (5, 1)])
def test_every_mask_kind_and_tile_size_draws_the_core_tile_map(explorer, mask, seq_len, block):
    explorer.set(mask=mask, seq_len=seq_len, block=block)
    assert_picture_matches_the_core(explorer)


def test_bigger_tiles_move_fewer_bytes_for_dense_attention(explorer):
    explorer.set(mask="dense", seq_len=24, block=2)
    small = explorer.counts["tiled_bytes"]
    explorer.set(block=8)
    assert explorer.counts["tiled_bytes"] < small, (explorer.counts["tiled_bytes"], small)
    assert explorer.counts["naive_bytes"] > explorer.counts["tiled_bytes"]


def test_every_control_value_gives_a_picture(explorer):
    for name, value in explorer.grid():
        explorer.set(**{name: value})
        assert explorer.error is None, f"{name}={value}: {explorer.error}"


def test_static_snapshot_shows_the_settings_the_tile_map_and_the_bytes():
    e = FlashExplorer(seq_len=12, block=4, mask="chunked", chunk_size=4, max_seq_len=16, curve_max_len=32)
    html = e.snapshot_html()
    assert "<code>mask = chunked</code>" in html and 'alt="heatmap"' in html, "settings or heatmap picture missing"
    assert "tile map" in html and "bytes moved, tiled" in html
    assert f"{e.counts['tiled_bytes']:,}" in html
