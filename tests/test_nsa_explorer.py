"""NSAExplorer: every slider moves the masks and the product count the way the rules say, an
impossible combination shows the config's message and keeps the last picture, and no slider
position (alone or combined) lets an exception escape."""
import itertools

import numpy as np
import pytest
import torch

pytest.importorskip("ipywidgets")
pytest.importorskip("plotly")

from tinymoe import ConfigError, SparseAttentionConfig, causal_mask, sliding_window_mask  # noqa: E402
from tinymoe.nsa import compressed_visibility, n_compressed_blocks, qk_products  # noqa: E402
from tinymoe.viz import NSAExplorer  # noqa: E402

START = dict(seq_len=10, block_size=3, stride=3, select_block_size=3, top_n=3, window=3)


@pytest.fixture
def explorer():
    return NSAExplorer(**START, max_seq_len=24, curve_max_len=64)


def settings(values: dict) -> SparseAttentionConfig:
    return SparseAttentionConfig(block_size=values["block_size"], stride=values["stride"],
                                 select_block_size=values["select_block_size"], top_n=values["top_n"],
                                 window=values["window"], n_initial_blocks=1, n_local_blocks=1)


def assert_picture_is_consistent(e: NSAExplorer) -> None:
    """The picture on screen: masks of the right shapes, counts equal to the masks and to
    qk_products, the heatmap holding the three masks."""
    values = e.values
    T, nsa = values["seq_len"], settings(values)
    n_blocks = n_compressed_blocks(T, nsa.block_size, nsa.stride)
    masks = e.view.masks
    assert tuple(masks["cmp"].shape) == (T, n_blocks), (masks["cmp"].shape, T, n_blocks)
    assert tuple(masks["sel"].shape) == (T, T) and tuple(masks["win"].shape) == (T, T)
    assert torch.equal(masks["cmp"], compressed_visibility(T, nsa.block_size, nsa.stride))
    assert torch.equal(masks["win"], sliding_window_mask(T, nsa.window))
    assert not (masks["sel"] & ~causal_mask(T)).any(), "a selected key lies after its query"
    expected = qk_products(T, nsa)
    assert e.view.counts == expected, (e.view.counts, expected)
    assert {b: int(masks[b].sum()) for b in ("cmp", "sel", "win")} == {b: expected[b] for b in ("cmp", "sel", "win")}
    assert e.heatmap_data.shape == (T, 3 * T + 2), e.heatmap_data.shape       # three panels, two gaps
    assert f"seq_len={T}" in e.shape_label


def test_starting_picture_is_the_notebooks_sheet_size(explorer):
    assert explorer.error is None
    assert_picture_is_consistent(explorer)
    assert explorer.shapes["attn.cmp.mask"] == (1, 2, 10, 3)
    assert explorer.shapes["attn.sel.block_mask"] == (1, 1, 10, 4)
    assert explorer.view.counts["nsa"] == 94 and explorer.view.counts["dense"] == 55
    assert "NSA 94 vs dense 55" in explorer.shape_label


def test_seq_len_grows_every_mask_and_the_dense_count(explorer):
    explorer.set(seq_len=20)
    assert_picture_is_consistent(explorer)
    assert explorer.shapes["attn.cmp.mask"] == (1, 2, 20, 6)                  # (20 - 3) // 3 + 1 blocks
    assert explorer.shapes["attn.sel.mask"] == (1, 2, 20, 20)
    assert explorer.view.counts["dense"] == 210


def test_block_size_changes_compressed_keys_and_phi_parameters(explorer):
    before = explorer.table.parameters["attn"]
    explorer.set(block_size=6)
    assert explorer.error is None
    assert_picture_is_consistent(explorer)
    assert explorer.shapes["attn.cmp.k_compressed"] == (1, 1, 2, 3)           # (10 - 6) // 3 + 1
    # two compressors, each W_phi (3, l*3) and P (l, 3): 36 -> 72 parameters each
    assert explorer.table.parameters["attn"] - before == 2 * ((3 * 18 + 18) - (3 * 9 + 9))


def test_stride_overlaps_the_blocks(explorer):
    explorer.set(stride=1)                                                     # select_block_size 3 is a multiple of 1
    assert explorer.error is None
    assert_picture_is_consistent(explorer)
    assert explorer.view.masks["cmp"].shape == (10, 8)                              # (10 - 3) // 1 + 1
    assert explorer.view.counts["cmp"] == sum(max(0, t - 1) for t in range(10))    # query t sees blocks 0 .. t-2


def test_select_block_size_changes_the_number_of_selection_blocks(explorer):
    explorer.set(select_block_size=6)
    assert explorer.error is None
    assert_picture_is_consistent(explorer)
    assert explorer.shapes["attn.sel.block_mask"] == (1, 1, 10, 2)


def test_top_n_limits_the_selected_keys(explorer):
    explorer.set(seq_len=24)
    wide = explorer.view.counts["sel"]
    explorer.set(top_n=2)                                                      # only the first and the own block
    assert explorer.error is None
    assert_picture_is_consistent(explorer)
    assert explorer.view.counts["sel"] < wide
    assert int(explorer.view.masks["sel"].sum(-1).max()) <= 2 * 3


def test_window_widens_the_band(explorer):
    explorer.set(window=5)
    assert_picture_is_consistent(explorer)
    assert explorer.view.counts["win"] == sum(min(5, t + 1) for t in range(10))


def test_a_sequence_shorter_than_a_block_has_no_compressed_keys(explorer):
    explorer.set(seq_len=1, block_size=8, stride=3, select_block_size=3)
    assert explorer.error is None
    assert_picture_is_consistent(explorer)
    assert explorer.view.masks["cmp"].shape == (1, 0) and explorer.view.counts["cmp"] == 0


def test_impossible_combination_shows_the_message_and_keeps_the_picture_marked_stale(explorer):
    counts, heatmap, label = explorer.view.counts, explorer.heatmap_data.copy(), explorer.shape_label
    explorer.set(stride=2)                                                     # 3 is not a multiple of 2
    assert explorer.error is not None and explorer.error.startswith("nsa.select_block_size="), explorer.error
    assert explorer.error in explorer.status and explorer.stale and "stride=3" in explorer.status
    assert explorer.view.counts == counts and explorer.shape_label == label
    np.testing.assert_array_equal(explorer.heatmap_data, heatmap)
    explorer.set(**START)                                                      # back to a possible one
    assert explorer.error is None and explorer.status == "" and not explorer.stale


@pytest.mark.parametrize("move, words", [
    (dict(stride=4), "stride <= block_size"),                 # longer than the block: tokens skipped
    (dict(top_n=1), "top_n >= n_initial_blocks"),             # no room for the first + the own block
])
def test_the_clamped_moves_cannot_be_made(explorer, move, words):
    with pytest.raises(ValueError, match=words):
        explorer.set(**move)
    assert explorer.values == START and explorer.error is None


def test_a_shorter_block_pulls_the_stride_down_with_it(explorer):
    explorer.controls["block_size"].value = 2                                 # as the browser would
    assert explorer.values["stride"] == 2 and explorer.controls["stride"].max == 2


def test_walking_every_slider_never_lets_an_exception_escape(explorer):
    errors, last = 0, None
    for name, value in explorer.grid():                                       # one control at a time
        if name != last:
            explorer.set(**START)
            last = name
        try:
            explorer.set(**{name: value})
        except ValueError as error:                                          # ruled out by a limit
            assert "the other settings allow" in str(error), str(error)
            continue
        try:
            settings(explorer.values).validate()
            possible = True
        except ConfigError as error:
            possible = False
            assert explorer.error == str(error), (name, value, explorer.error)
        if possible:
            assert explorer.error is None, (name, value, explorer.error)
            assert_picture_is_consistent(explorer)
        errors += not possible
    assert errors > 0, "the grid should include impossible positions"


def test_combined_moves_show_an_error_exactly_when_the_config_is_impossible(explorer):
    explorer.set(seq_len=12)
    for block_size, stride, select_block_size in itertools.product((2, 3, 4), (1, 2, 3, 4), (2, 3, 4, 6)):
        values = dict(block_size=block_size, stride=stride, select_block_size=select_block_size)
        if stride > block_size:
            with pytest.raises(ValueError, match="stride <= block_size"):
                explorer.set(**values)
            continue
        explorer.set(**values)
        try:
            settings(explorer.values).validate()
        except ConfigError as error:
            assert explorer.error == str(error), values
        else:
            assert explorer.error is None, (values, explorer.error)
            assert_picture_is_consistent(explorer)


def test_curves_are_qk_products_as_the_sequence_grows(explorer):
    curves = explorer.curve_data
    x, dense = curves["dense"]
    nsa = settings(explorer.values)
    assert list(dense) == [qk_products(int(n), nsa)["dense"] for n in x]
    assert list(curves["NSA"][1]) == [qk_products(int(n), nsa)["nsa"] for n in x]
    explorer.set(window=8)
    assert list(explorer.curve_data["win"][1]) == [qk_products(int(n), settings(explorer.values))["win"] for n in x]
    assert list(explorer.curve_data["seq_len now"][0]) == [10, 10]
