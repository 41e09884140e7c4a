"""NormExplorer (notebook 04), tested without a browser: what it shows is readable from Python."""
from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("ipywidgets")
pytest.importorskip("plotly")

from tinymoe.viz.norm_explorer import NormExplorer  # noqa: E402


def test_switching_the_norm_swaps_the_statistics_and_the_parameter_count():
    e = NormExplorer(norm="rmsnorm", d_model=5, seq_len=10)
    assert "rms (1, 10, 1)" in e.shape_label and "= 5" in e.shape_label, e.shape_label
    assert "norm.beta" not in e.shapes, "RMSNorm has no bias"
    e.set(norm="layernorm")
    assert "mean (1, 10, 1), var (1, 10, 1)" in e.shape_label, e.shape_label
    assert "gamma 5 + beta 5 = 10" in e.shape_label, "LayerNorm trains 2 * d_model numbers"
    assert e.shapes["norm.beta"] == (5,) and "norm.rms" not in e.shapes
    assert {r.name for r in e.table.changed_rows} >= {"norm.rms", "norm.mean", "norm.var", "norm.beta"}


def test_d_model_moves_every_per_feature_shape_and_the_heatmap():
    e = NormExplorer(d_model=5, seq_len=10)
    assert e.heatmap_data.shape == (10, 2 * 5 + 1), "x and out side by side, one blank column between"
    e.set(d_model=8, seq_len=4)
    assert e.shapes["norm.out"] == (1, 4, 8) and e.shapes["norm.gamma"] == (8,)
    assert e.shapes["norm.rms"] == (1, 4, 1), "one statistic per token, whatever d_model is"
    assert e.heatmap_data.shape == (4, 17)


@pytest.mark.parametrize("norm", ["rmsnorm", "layernorm"])
def test_output_rows_are_normalised_as_the_notes_say(norm):
    e = NormExplorer(norm=norm, d_model=16, seq_len=6)
    out = e.view.heatmap[1].numpy()                                  # the right panel, as computed
    assert np.allclose(e.heatmap_data[:, 17:], out, atol=1e-3), "the heatmap draws the norm's output"
    rms = np.sqrt((out ** 2).mean(axis=1))
    if norm == "rmsnorm":
        np.testing.assert_allclose(rms, 1.0, atol=1e-3)
    else:
        np.testing.assert_allclose(out.mean(axis=1), 0.0, atol=1e-5)
        np.testing.assert_allclose(out.std(axis=1), 1.0, atol=1e-3)


def test_every_control_value_draws_without_error():
    e = NormExplorer()
    for name, value in e.grid():
        e.set(**{name: value})
        assert e.error is None, f"{name}={value}: {e.error}"
