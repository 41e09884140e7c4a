"""tinymoe.viz: the spreadsheet view of the core, and the live widgets.

Everything here draws from a `tinymoe.Trace` (the tensors the core recorded) and calls the core
for every number it shows; the core never imports this package.

Static (plain HTML with inline styles: renders in JupyterLab, a static export and a notebook
preview on a code-hosting site):
    sheet(tensor, name, role, ...)      a tensor as a grid of cells (a picture when too big)
    show(trace, name)                   the sheet of one trace record, coloured by its role
    matmul_sheet(W, X)                  a product laid out by hand: W left, X on top, Y where they meet
                                        (roles= for a product of two activations, e.g. Q Kᵀ)
    walk(trace)                         a whole forward pass as a sequence of sheets
    shapes_table(config, previous=...)  every tensor's shape and module's parameters; what changed
    legend()                            what the colours mean
Interactive (plotly, ipywidgets):
    (every plotly figure a notebook shows also carries a PNG of itself for static exports: figure.py)
    heatmap(tensor)                     a plotly heatmap (FigureWidget with widget=True); block-averaged
                                        past (160, 360) values so a stored notebook stays small
    Explorer, View                      the toolkit: controls -> config -> core -> in-place redraw
    AttentionExplorer, RopeExplorer, GQAExplorer, NormExplorer, NSAExplorer, MoEExplorer, Llama4Explorer, MoDExplorer,
    FlashExplorer
"""
from .figure import figure_png
from .explorer import Explorer, View, checkbox, control_values, dropdown, log_slider, slider
from .explorers import AttentionExplorer, GQAExplorer, RopeExplorer
from .flash_explorer import FlashExplorer
from .forward import Run, traced_forward
from .heatmap import heatmap, heatmap_array, update_heatmap
from .html import Html, column, row
from .matmul import MatmulSheet, matmul_sheet
from .llama4_explorer import Llama4Explorer
from .mod_explorer import MoDExplorer
from .moe_explorer import MoEExplorer
from .norm_explorer import NormExplorer
from .nsa_explorer import NSAExplorer
from .palette import legend
from .sheet import Sheet, sheet, show
from .table import ShapeRow, ShapesTable, shapes_table
from .style import shape_text
from .walk import walk

try:                                   # a PNG beside every plotly figure (static exports, previews)
    from .figure import register as _register_static_png
    _register_static_png()
except ImportError:                    # plotly is optional for the sheets
    pass

__all__ = ["sheet", "show", "Sheet", "matmul_sheet", "MatmulSheet", "walk", "shapes_table", "ShapesTable",
           "ShapeRow", "legend", "heatmap", "heatmap_array", "update_heatmap", "Explorer", "View", "slider",
           "log_slider", "dropdown", "checkbox", "control_values", "AttentionExplorer", "RopeExplorer",
           "GQAExplorer", "NormExplorer", "Llama4Explorer", "MoDExplorer", "NSAExplorer", "MoEExplorer", "FlashExplorer",
           "traced_forward", "Run", "Html", "row", "column", "figure_png", "shape_text"]
