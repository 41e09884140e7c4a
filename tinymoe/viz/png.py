"""A tensor too big for cells, as a small static picture: a PNG heatmap inlined as base64.

A sheet past its cell budget shows this instead of a 10,000-cell table: one pixel per value in
the sheets' diverging colours, panels (heads) side by side with a white gap; the page scales it
up (the <img> width and height, drawn pixelated). No JavaScript, so it survives a static export.
The colour scale is quantised to LEVELS steps each side of zero, so the picture has few colours
and Pillow (which matplotlib brings) stores it as an indexed PNG: a third of the bytes of RGB.
"""
from __future__ import annotations

import base64
import io

import numpy as np
from PIL import Image

from .palette import diverging_rgb

__all__ = ["png_bytes", "heatmap_png", "data_uri"]

GAP = 3          # white pixels between panels
LEVELS = 24      # colour steps from 0 to +max (and to -max)


def png_bytes(rgb: np.ndarray) -> bytes:
    """Encode an (height, width, 3) uint8 image as PNG bytes: indexed (a palette) when it has at
    most 256 colours, as a quantised heatmap has, else plain RGB."""
    rgb = np.ascontiguousarray(rgb, dtype=np.uint8)
    colours, index = np.unique(rgb.reshape(-1, 3), axis=0, return_inverse=True)
    if len(colours) <= 256:
        picture = Image.fromarray(index.reshape(rgb.shape[:2]).astype(np.uint8), mode="P")
        picture.putpalette(colours.reshape(-1).tolist())
    else:
        picture = Image.fromarray(rgb, mode="RGB")
    buffer = io.BytesIO()
    picture.save(buffer, format="PNG")
    return buffer.getvalue()


def data_uri(png: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(png).decode("ascii")


def heatmap_png(panels: list[np.ndarray], width: int = 640, height: int = 280,
                scale: float | None = None) -> tuple[bytes, int]:
    """One PNG of 2-D panels side by side on a shared diverging scale, one pixel per value.
    Also returns `pixels`: how many screen pixels a value should take so the picture fills about
    width x height (the page scales it up with the <img> width/height attributes, pixelated)."""
    rows = max(p.shape[0] for p in panels)
    cols = sum(p.shape[1] for p in panels) + GAP * (len(panels) - 1)
    pixels = int(np.clip(min(width // max(cols, 1), height // max(rows, 1)), 1, 16))
    if scale is None:
        finite = [np.abs(p[np.isfinite(p)]) for p in panels]
        scale = max((float(f.max()) for f in finite if f.size), default=0.0)
    blocks = []
    for i, panel in enumerate(panels):
        rgb = diverging_rgb(panel, scale, levels=LEVELS)                 # (r, c, 3)
        if rgb.shape[0] < rows:                                          # shorter panel: pad below
            rgb = np.concatenate([rgb, np.full((rows - rgb.shape[0], rgb.shape[1], 3), 255, np.uint8)], axis=0)
        if i:
            blocks.append(np.full((rows, GAP, 3), 255, np.uint8))
        blocks.append(rgb)
    return png_bytes(np.concatenate(blocks, axis=1)), pixels
