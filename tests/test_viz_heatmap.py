"""The plotly heatmap: heads side by side, the sheets' colours, data swapped in place."""
from __future__ import annotations

import numpy as np
import torch

from tinymoe import viz
from tinymoe.viz.heatmap import panel_ticks, pooling_factor


def test_heads_are_tiled_with_a_blank_column_between():
    weights = torch.rand(1, 3, 4, 4)
    z = viz.heatmap_array(weights)
    assert z.shape == (4, 3 * 4 + 2), f"3 heads of 4 columns and 2 gaps expected, got {z.shape}"
    assert np.isnan(z[:, 4]).all() and np.isnan(z[:, 9]).all(), "the gap columns should be blank (NaN)"
    np.testing.assert_allclose(z[:, 5:9], weights[0, 1].numpy(), err_msg="head 1 should be the second panel")


def test_a_matrix_is_drawn_as_is_and_a_vector_as_one_row():
    assert viz.heatmap_array(torch.zeros(3, 5)).shape == (3, 5)
    assert viz.heatmap_array(torch.zeros(5)).shape == (1, 5)


def test_figure_has_row_zero_on_top_and_a_diverging_scale_centred_on_zero():
    fig = viz.heatmap(torch.randn(1, 2, 3, 3), title="attn.scores")
    assert fig.layout.yaxis.autorange == "reversed", "row 0 should be on top, like a sheet"
    assert fig.data[0].zmid == 0 and fig.data[0].zmin == -fig.data[0].zmax
    assert fig.layout.title.text == "attn.scores"
    assert list(fig.layout.xaxis.ticktext) == ["head 0", "head 1"]


def test_panel_names_sit_at_each_panel_centre():
    values, names = panel_ticks(torch.zeros(1, 2, 4, 3), ["kv head 0", "kv head 1"])
    assert values == [1.0, 5.0] and names == ["kv head 0", "kv head 1"]
    assert panel_ticks(torch.zeros(4, 3)) == (None, None)


def test_widget_update_swaps_the_data_in_place():
    fig = viz.heatmap(torch.rand(1, 1, 4, 4), widget=True)
    same_trace = fig.data[0]
    viz.update_heatmap(fig, torch.rand(1, 2, 5, 5), title="new")
    assert fig.data[0] is same_trace, "the update should change the existing trace, not make a new one"
    assert np.asarray(fig.data[0].z).shape == (5, 11) and fig.layout.title.text == "new"


def test_a_live_heatmap_past_max_size_is_averaged_over_blocks():
    weights = torch.rand(1, 8, 128, 128)
    z = viz.heatmap_array(weights, max_size=(160, 360))
    assert z.shape[0] <= 160 and z.shape[1] <= 360, f"{z.shape} does not fit (160, 360)"
    f = pooling_factor(weights, (160, 360))
    width = int(np.ceil(128 / f))
    assert f > 1 and z.shape == (width, 8 * width + 7), f"factor {f}: expected 8 panels of {width}, got {z.shape}"
    block = weights[0, 0, :f, :f].mean().item()
    assert abs(z[0, 0] - block) < 1e-6, f"the first value should be the mean of the first {f}x{f} block"
    assert np.isnan(z[:, width]).all(), "panels stay separated by a blank column"
    fig = viz.heatmap(weights, title="w", widget=True, max_size=(160, 360))
    assert "mean over" in fig.layout.title.text
    assert viz.heatmap_array(torch.rand(1, 2, 10, 10), max_size=(160, 360)).shape == (10, 21), "small stays exact"
