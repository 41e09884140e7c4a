"""Every plotly figure a notebook displays carries a static PNG of itself (figure.py), so an HTML
export or a sanitising preview still shows it."""
from __future__ import annotations

import base64
import io

import numpy as np
import pytest
import torch

go = pytest.importorskip("plotly.graph_objects")
pio = pytest.importorskip("plotly.io")
Image = pytest.importorskip("PIL.Image")

from tinymoe import viz  # noqa: E402  (registers the renderer)
from tinymoe.viz.figure import DEFAULT, RENDERER  # noqa: E402


def png_of(figure) -> np.ndarray:
    bundle = figure._repr_mimebundle_()
    assert "image/png" in bundle, f"no static picture in the display: {sorted(bundle)}"
    assert "application/vnd.plotly.v1+json" in bundle, "the live plotly figure must stay first choice in JupyterLab"
    return np.asarray(Image.open(io.BytesIO(base64.b64decode(bundle["image/png"]))).convert("RGB")).astype(int)


def test_importing_viz_makes_the_default_renderer_add_a_picture():
    assert RENDERER in pio.renderers
    assert pio.renderers.default == DEFAULT, pio.renderers.default


def test_a_heatmap_picture_has_the_figure_size_and_the_sheet_colours():
    z = torch.zeros(8, 8)
    z[:, :4] = 1.0                                                      # left half +1 (blue), right half -1 (orange)
    z[:, 4:] = -1.0
    image = png_of(viz.heatmap(z, title="halves", width=400, height=300))
    assert image.shape[:2] == (300, 400), f"the picture should be the figure's size, got {image.shape[:2]}"
    middle = image[image.shape[0] // 2]
    blues = [p for p in middle if p[2] > p[0] + 40]
    oranges = [p for p in middle if p[0] > p[2] + 60 and p[1] > p[2]]
    assert blues and oranges, "the + half should be drawn blue and the - half orange, as in the sheets"


def test_a_line_chart_and_a_bar_chart_are_drawn():
    fig = go.Figure()
    fig.add_trace(go.Scatter(y=[3, 1, 2, 5], name="loss"))
    fig.add_trace(go.Bar(x=["a", "b"], y=[1, 2], name="count"))
    fig.update_layout(width=300, height=200, title="two traces")
    image = png_of(fig)
    assert image.shape[:2] == (200, 300)
    assert (image.reshape(-1, 3) < 200).any(axis=1).sum() > 200, "the picture should hold lines and bars, not be blank"


def test_packed_and_missing_values_are_read():
    z = np.array([[1.0, np.nan], [-1.0, 0.5]])
    fig = go.Figure(go.Heatmap(z=z))                                      # plotly packs z as base64 typed data
    png = viz.figure_png(fig.to_dict())
    assert png.startswith(b"\x89PNG")
