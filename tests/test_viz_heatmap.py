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


def test_a_stored_figure_past_the_size_is_averaged_and_stays_small():
    """A static figure is saved in the notebook: 2 x 256 x 256 values must not become 1.4 MB of JSON."""
    import plotly.io as pio
    mask = (torch.rand(2, 256, 256, generator=torch.Generator().manual_seed(0)) > 0.5).float()
    fig = viz.heatmap(mask, title="attn.sel.mask")
    z = np.asarray(fig.data[0].z, dtype=float)
    assert z.shape == (128, 2 * 128 + 1), f"2 x 2 blocks of 2 panels of 256 expected, got {z.shape}"
    np.testing.assert_allclose(z[0, 0], mask[0, :2, :2].mean().item(), rtol=1e-6)
    assert "mean over 2&times;2 blocks" in fig.layout.title.text, "an averaged figure must say so in its title"
    size = len(pio.to_json(fig))
    assert size < 300_000, f"the stored figure is {size:,} characters of JSON"
    full = viz.heatmap(mask, title="attn.sel.mask", max_size=None)
    assert np.asarray(full.data[0].z).shape == (256, 513) and "mean" not in full.layout.title.text, \
        "max_size=None should keep every value"


def test_a_stored_figure_at_a_small_size_keeps_the_exact_values():
    weights = torch.rand(1, 8, 32, 32)
    fig = viz.heatmap(weights, title="attn.weights")
    np.testing.assert_array_equal(np.asarray(fig.data[0].z, dtype=float), viz.heatmap_array(weights))
    assert fig.layout.title.text == "attn.weights"
    assert viz.heatmap(torch.rand(40, 64)).data[0].z.dtype == np.float64, "small figures store the values as they are"
    untitled = viz.heatmap(torch.rand(300, 10))
    assert untitled.layout.title.text == "mean over 2&times;2 blocks" and untitled.layout.margin.t > 10


def test_a_widget_still_sends_everything_unless_asked():
    fig = viz.heatmap(torch.rand(1, 2, 200, 200), widget=True)
    assert np.asarray(fig.data[0].z).shape == (200, 401), "a widget is averaged only when given a max_size"


def test_an_averaged_figure_keeps_the_tensors_own_row_and_column_numbers():
    """Averaged 2 x 2, feature 100 of (64, 512) must still sit at x = 100 on the axis, not at 50."""
    x = torch.zeros(64, 512)
    x[:, 100] = 8.0
    fig = viz.heatmap(x, title="x")
    trace = fig.data[0]
    assert (trace.x0, trace.dx, trace.y0, trace.dy) == (0.5, 2, 0.5, 2), "block j's centre is 2j + 0.5"
    column = int(np.nanargmax(np.asarray(trace.z, dtype=float)[0]))
    assert abs(trace.x0 + trace.dx * column - 100.5) < 1e-9, "the loud feature should be drawn at columns 100-101"
    heads = viz.heatmap(torch.rand(2, 256, 256), panel_names=["a", "b"])
    assert list(heads.layout.xaxis.tickvals) == [127.5, 385.5], "panel names sit at the panels' centres, in columns"
    widget = viz.heatmap(torch.rand(1, 1, 4, 4), widget=True)
    viz.update_heatmap(widget, torch.rand(1, 1, 400, 400), max_size=(160, 360))
    assert widget.data[0].dx == 3 and widget.data[0].x0 == 1.0, "a live update moves the axes with the averaging"
    viz.update_heatmap(widget, torch.rand(1, 1, 4, 4), max_size=(160, 360))
    assert widget.data[0].dx == 1 and widget.data[0].x0 == 0.0


def test_axes_are_labelled_on_whole_rows_and_columns_at_any_size():
    """A one-token heatmap must not read -0.4 .. 0.4 on its axes: ticks sit on whole numbers, about
    eight at most, and follow the data when a widget is updated (panels keep their names)."""
    one = viz.heatmap(torch.rand(1, 1))
    assert (one.layout.yaxis.tick0, one.layout.yaxis.dtick) == (0, 1) and one.layout.yaxis.tickmode == "linear"
    assert (one.layout.xaxis.tick0, one.layout.xaxis.dtick) == (0, 1)
    fig = viz.heatmap(torch.rand(64, 8), widget=True)
    assert fig.layout.yaxis.dtick == 10 and fig.layout.xaxis.dtick == 1, "64 rows: every 10th; 8 columns: each"
    viz.update_heatmap(fig, torch.rand(1, 3, 5, 5))
    assert fig.layout.yaxis.dtick == 1 and fig.layout.xaxis.tickmode == "array", "three heads: named panels"
    assert list(fig.layout.xaxis.ticktext) == ["head 0", "head 1", "head 2"]
    viz.update_heatmap(fig, torch.rand(17, 3))
    assert fig.layout.xaxis.tickmode == "linear" and fig.layout.xaxis.ticktext is None and fig.layout.yaxis.dtick == 5
