"""The explorer toolkit: sliders bound to a config that re-run the core and redraw in place.

This is the notebook's answer to "insert a row in the spreadsheet": move a slider and the same
core code runs again with the same seed; the shape line, the sheets, the heatmap and the
shapes table update where they are (widget values and plotly data swapped in place, never an
Output cleared and redrawn, so nothing flickers). An impossible combination (n_kv_heads that
does not divide n_heads) shows the config's own error message in a status line and leaves the
last good picture up; the reader never sees a traceback.

Everything on screen is readable from Python, so explorers are tested without a browser:
`.values`, `.set(...)`, `.shapes`, `.shape_label`, `.heatmap_data`, `.error`, `.table`.
"""
from __future__ import annotations

import builtins
import html as _html
import re
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .heatmap import MAX_SIZE, heatmap, update_heatmap
from .html import escape, row
from .palette import legend
from .style import EXPLORER_CSS, MONO, SNAPSHOT_CSS
from .table import ShapesTable

__all__ = ["Explorer", "View", "slider", "log_slider", "dropdown", "checkbox", "control_values",
           "EXPLORER_CELLS", "EXPLORER_COLUMNS"]

# What an explorer draws as cells, at most; past these a sheet is a picture. An explorer's controls
# reach sizes (16 tokens x 4 heads x 8 dims) whose cells would fill screens, and the reader moving a
# slider wants to see the whole picture change at once.
EXPLORER_CELLS = 240          # cells per sheet
EXPLORER_COLUMNS = 24         # columns per grid: wider would run off a laptop screen's right edge


@dataclass
class View:
    """What one build shows. Only `shapes` and `shape_label` are required.

    shapes        name -> shape of the tensors this picture is about (readable as .shapes)
    shape_label   one line of text summarising the shapes (the line a reader watches change)
    sheets        Sheets (or any objects with .html) laid side by side
    heatmap       a tensor or array for the heatmap (heads side by side), or None
    heatmap_title the heatmap's title
    heatmap_panels names of the heatmap's panels, left to right (default "head 0", "head 1", ...)
    table         a ShapesTable of this run; the explorer marks what changed since the last picture
    notes         a little extra HTML (parameter counts, cache bytes, a numerical check)
    curves        {label: (x, y)} for a line chart beside the heatmap (same labels on every build)
    curve_axes    (x title, y title) of that chart
    """
    shapes: dict
    shape_label: str
    sheets: list = field(default_factory=list)
    heatmap: Any = None
    heatmap_title: str = ""
    heatmap_panels: list | None = None
    table: ShapesTable | None = None
    notes: str = ""
    curves: dict | None = None
    curve_axes: tuple = ("", "")


# ---- controls ------------------------------------------------------------------------------------

def _style():
    return {"description_width": "initial"}


def slider(value: int, min: int, max: int, step: int = 1, description: str | None = None, width: str = "260px"):
    """A whole-number slider (its range stretched to include `value`)."""
    import ipywidgets as widgets
    return widgets.IntSlider(value=value, min=builtins.min(min, value), max=builtins.max(max, value), step=step,
                             description=description or "", continuous_update=False, style=_style(),
                             layout=widgets.Layout(width=width))


def log_slider(value: float, min_exponent: float, max_exponent: float, step: float = 0.25, base: float = 10,
               description: str | None = None):
    """A slider over base**exponent (for quantities like RoPE's base that span decades)."""
    import ipywidgets as widgets
    return widgets.FloatLogSlider(value=value, base=base, min=min_exponent, max=max_exponent, step=step,
                                  description=description or "", continuous_update=False, style=_style(),
                                  readout_format=",.0f", layout=widgets.Layout(width="300px"))


def dropdown(value, options, description: str | None = None, width: str = "200px"):
    """A list to choose from; options are values or (label, value) pairs. `width` must hold the
    description and the longest label (a cut-off label reads as a different option)."""
    import ipywidgets as widgets
    return widgets.Dropdown(value=value, options=list(options), description=description or "", style=_style(),
                            layout=widgets.Layout(width=width))


def _fit_dropdown(control) -> None:
    """Widen a dropdown so its description and its longest option both show in full (a cut-off
    "none (drop" reads as another option). About 8 px a character at the widgets' 13 px font."""
    longest = max((len(str(o[0] if isinstance(o, tuple) else o)) for o in control.options), default=0)
    needed = 8 * (len(control.description or "") + longest) + 56
    current = control.layout.width or ""
    have = int(current[:-2]) if current.endswith("px") and current[:-2].isdigit() else 0
    if needed > have:
        control.layout.width = f"{needed}px"


def checkbox(value: bool, description: str | None = None, width: str = "110px"):
    import ipywidgets as widgets
    return widgets.Checkbox(value=value, description=description or "", indent=False, style=_style(),
                            layout=widgets.Layout(width=width))



def control_values(control) -> list:
    """Every value a control can take (a slider's whole range, a dropdown's options, both booleans)."""
    import ipywidgets as widgets
    if isinstance(control, widgets.FloatLogSlider):
        exponents = np.arange(control.min, control.max + control.step / 2, control.step)
        return [float(control.base ** e) for e in exponents]
    if isinstance(control, (widgets.IntSlider, widgets.BoundedIntText)):
        first, last = _full_range(control)
        return list(range(first, last + 1, control.step))
    if isinstance(control, (widgets.Checkbox, widgets.ToggleButton)):
        return [False, True]
    if hasattr(control, "options"):
        return [o[1] if isinstance(o, tuple) else o for o in control.options]
    raise TypeError(f"cannot list the values of a {type(control).__name__}")


def _is_number(value) -> bool:
    return isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, (bool, np.bool_))


def _option_value(option):
    """A dropdown option's value: options are values or (label, value) pairs."""
    return option[1] if isinstance(option, tuple) else option


def _coerce(control, value):
    """A value as the control stores it (numpy ints become ints); anything else is left as is
    for _within to refuse."""
    import ipywidgets as widgets
    if isinstance(control, widgets.IntSlider) and isinstance(value, np.integer):
        return int(value)
    if isinstance(control, (widgets.FloatLogSlider, widgets.FloatSlider)) and _is_number(value):
        return float(value)
    return value


def _within(control, value, limit: dict | None = None) -> str | None:
    """Why `value` cannot be put on `control` (None if it can): the wrong kind of value, outside
    the slider's range (or the tighter `limit` other controls imply), or not one of the options."""
    import ipywidgets as widgets
    limit = limit or {}
    if isinstance(control, (widgets.Checkbox, widgets.ToggleButton)):
        return None if isinstance(value, (bool, np.bool_)) else "must be True or False"
    if isinstance(control, widgets.FloatLogSlider):
        if not _is_number(value) or not np.isfinite(float(value)):
            return "must be a number"
        low, high = control.base ** control.min, control.base ** control.max
        if not low * (1 - 1e-9) <= value <= high * (1 + 1e-9):
            return f"is outside this slider's range {low:g}..{high:g}"
    elif isinstance(control, (widgets.IntSlider, widgets.FloatSlider)):
        whole = isinstance(control, widgets.IntSlider)
        if not _is_number(value) or (whole and not isinstance(value, (int, np.integer))):
            return "must be a whole number" if whole else "must be a number"
        first, last = _full_range(control)
        low, high = limit.get("min", first), limit.get("max", last)
        if not first <= value <= last:
            return f"is outside this slider's range {first}..{last}"
        if not low <= value <= high:
            return f"is outside {low}..{high}, the range the other settings allow{_why(limit)}"
    elif hasattr(control, "options"):
        options = [_option_value(o) for o in limit["options"]] if "options" in limit else control_values(control)
        same_kind = [o for o in options if o == value and (_is_number(o) == _is_number(value))]
        if not same_kind:
            where = "the options the other settings allow" if "options" in limit else "the options"
            return f"is not one of {where} {list(options)}{_why(limit)}"
    return None


def _full_range(control) -> tuple:
    """A slider's range before any limit narrowed it (remembered when the explorer was made)."""
    return getattr(control, "_full_range", (control.min, control.max))


def _why(limit: dict) -> str:
    return f" ({limit['why']})" if limit.get("why") else ""


# ---- the base class ------------------------------------------------------------------------------

class Explorer:
    """Controls bound to a config; every change re-runs the core and redraws in place.

    Writing a new explorer (MoE, sparse attention, ...) takes two things:

    1. In `__init__`, make the controls and hand them to this class:

           class MoEExplorer(Explorer):
               title = "Mixture of Experts"
               def __init__(self, n_experts=4, top_k=2, seq_len=10, seed=0):
                   super().__init__({"n_experts": slider(n_experts, 1, 16),
                                     "top_k": slider(top_k, 1, 4),
                                     "seq_len": slider(seq_len, 1, 32)}, seed=seed)

       The dict's keys are the names `.values`, `.set(...)` and `build` use; a control's label
       defaults to its key. Use `slider`, `log_slider`, `dropdown`, `checkbox` (or any ipywidgets
       value widget).

    2. Override `build(self, values) -> View`: make a ModelConfig from `values` (a dict of control
       values), run the core (usually `traced_forward(config, "model" | "block" | "attention",
       seq_len, seed=self.seed)`) and say what to show: shapes, a shape line, sheets, a heatmap
       tensor, a ShapesTable, notes, curves (see View). Do no drawing and no error handling:
       raise ConfigError (or let the core raise) for an impossible combination and the base class
       shows the message and keeps the last good picture. Call the core for all arithmetic.

    The first build happens in the constructor and must succeed (the starting values have to be
    possible). Optional class attributes: `title`, `heatmap_size` (width, height in pixels),
    `heatmap_max` (most rows, columns of heatmap data sent per move; see heatmap.py).
    """

    title = "Explorer"
    heatmap_size = (440, 340)        # the figure's width and height in pixels
    heatmap_max = MAX_SIZE           # most (rows, columns) sent to the browser, (160, 360); bigger is block-averaged

    def __init__(self, controls: dict, seed: int = 0):
        import ipywidgets as widgets

        self.seed = seed
        self.controls = dict(controls)
        for name, control in self.controls.items():
            if not getattr(control, "description", None):
                control.description = name
            if hasattr(control, "min") and hasattr(control, "max"):
                control._full_range = (control.min, control.max)
            if isinstance(control, widgets.Dropdown):               # room for the label and the longest option
                _fit_dropdown(control)
            control.observe(self._on_change, names="value")
        self.error: str | None = None
        self.errors: list[str] = []                       # every rule the controls break now
        self.view: View | None = None                     # the picture on screen (the last possible one)
        self.shown_values: dict = {}                      # the control values that picture was drawn for
        self.table: ShapesTable | None = None
        self.last_update_seconds = 0.0
        self._holding = 0

        self._apply_limits(self.values)
        view = self.build(self.values)                       # the starting picture must be possible
        self._title = widgets.HTML(f'{EXPLORER_CSS}<b style="font-size:15px">{escape(self.title)}</b>')
        self._status = widgets.HTML("")
        self._shape_label = widgets.HTML("")
        self._sheets = widgets.HTML("")
        self._notes = widgets.HTML("")
        self._table = widgets.HTML("")
        for w, cls in ((self._status, "tinymoe-status"), (self._shape_label, "tinymoe-shape-label"),
                       (self._sheets, "tinymoe-sheets"), (self._table, "tinymoe-table"),
                       (self._notes, "tinymoe-notes"), (self._title, "tinymoe-title")):
            w.add_class(cls)
        width, height = self.heatmap_size
        self._heatmap = heatmap(view.heatmap if view.heatmap is not None else np.zeros((1, 1)),
                                title=view.heatmap_title, widget=True, width=width, height=height,
                                panel_names=view.heatmap_panels, max_size=self.heatmap_max)
        heatmap_box = widgets.Box([self._heatmap])
        heatmap_box.add_class("tinymoe-heatmap")
        if view.heatmap is None:
            heatmap_box.layout.display = "none"
        self._curve = self._make_curve(view) if view.curves is not None else None
        figures = [heatmap_box]
        if self._curve is not None:
            curve_box = widgets.Box([self._curve])
            curve_box.add_class("tinymoe-curve")
            figures.append(curve_box)
        controls_box = widgets.HBox(list(self.controls.values()),
                                    layout=widgets.Layout(flex_flow="row wrap", align_items="center"))
        controls_box.add_class("tinymoe-controls")
        self._picture = widgets.VBox([
            self._shape_label, self._sheets,
            widgets.HBox([widgets.VBox(figures), widgets.VBox([self._notes, self._table])],
                         layout=widgets.Layout(flex_flow="row wrap", align_items="flex-start")),
        ])
        self._picture.add_class("tinymoe-picture")
        self.widget = widgets.VBox([self._title, controls_box, self._status, self._picture,
                                    widgets.HTML(legend().html)])
        self.widget.add_class("tinymoe-explorer")
        self._show(view)

    # -- for subclasses ---------------------------------------------------------------------------
    def build(self, values: dict) -> View:
        """Run the core for these control values and say what to show (see the class docstring)."""
        raise NotImplementedError(f"{type(self).__name__} must define build(values) -> View")

    # -- reading ------------------------------------------------------------------------------------
    @property
    def values(self) -> dict:
        """Control name -> the value it is set to now."""
        return {name: control.value for name, control in self.controls.items()}

    @property
    def shapes(self) -> dict:
        """name -> shape in the picture shown now (the last good one)."""
        return dict(self.view.shapes)

    @property
    def shape_label(self) -> str:
        """The text of the shape line on screen."""
        return _text(self._shape_label.value)

    @property
    def status(self) -> str:
        """The text of the status line on screen ('' when all is well)."""
        return _text(self._status.value)

    @property
    def heatmap_data(self) -> np.ndarray:
        """The array the heatmap figure holds now."""
        return np.asarray(self._heatmap.data[0].z, dtype=float)

    @property
    def curve_data(self) -> dict:
        """label -> (x, y) arrays the line chart holds now."""
        if self._curve is None:
            return {}
        return {t.name: (np.asarray(t.x, dtype=float), np.asarray(t.y, dtype=float)) for t in self._curve.data}

    @property
    def sheets_html(self) -> str:
        return self._sheets.value

    @property
    def table_html(self) -> str:
        return self._table.value

    def grid(self):
        """(name, value) for every value of every control, one control at a time: what a test walks."""
        for name, control in self.controls.items():
            for value in control_values(control):
                yield name, value

    # -- moving controls ------------------------------------------------------------------------
    def set(self, **values) -> "Explorer":
        """Move controls from code, exactly as a reader would (then one redraw for all of them).
        Every value is checked before any is applied: an unknown control, a value of the wrong
        kind, off a slider's range (after the limits the other new values imply) or not an option
        is a ValueError naming the control and the rule, and nothing moves."""
        unknown = [name for name in values if name not in self.controls]
        if unknown:
            raise ValueError(f"{type(self).__name__} has no control {unknown[0]!r}; controls: {', '.join(self.controls)}")
        wanted = {**self.values, **{name: _coerce(self.controls[name], value) for name, value in values.items()}}
        limits = self.limits(wanted)
        problems = []
        for name, value in values.items():
            why = _within(self.controls[name], value, limits.get(name, {}))
            if why:
                problems.append(f"{name}={value!r} {why}")
        if problems:
            raise ValueError("; ".join(problems))
        with self._hold():
            self._apply_limits(wanted)
            for name in values:
                self.controls[name].value = wanted[name]
        self._refresh()
        return self

    def limits(self, values: dict) -> dict:
        """Limits of some controls that depend on the others' values, so that the common
        impossible moves cannot be made: {name: {"min": .., "max": ..}} for a slider,
        {name: {"options": [...]}} for a dropdown. Override in an explorer (default: none)."""
        return {}

    def _apply_limits(self, values: dict) -> None:
        """Put the limits on the controls (a slider past its new maximum moves down to it, a
        dropdown whose option went away takes the nearest one), without a redraw per change."""
        with self._hold():
            for name, limit in self.limits(values).items():
                control = self.controls[name]
                if "disabled" in limit:
                    control.disabled = bool(limit["disabled"])
                if "options" in limit:
                    options = list(limit["options"])
                    if [_option_value(o) for o in control.options] != [_option_value(o) for o in options]:
                        value, allowed = control.value, [_option_value(o) for o in options]
                        if value not in allowed and allowed:
                            numeric = all(_is_number(v) for v in allowed + [value])
                            value = min(allowed, key=lambda v: abs(v - value)) if numeric else allowed[0]
                        control.options = options
                        control.value = value
                    continue
                if "min" not in limit and "max" not in limit:
                    continue
                first, last = _full_range(control)
                low = max(limit.get("min", first), first)
                high = max(min(limit.get("max", last), last), low)
                if high >= control.min:             # move the bounds in an order that never crosses them
                    control.max = high
                    control.min = low
                else:
                    control.min = low
                    control.max = high

    @contextmanager
    def _hold(self):
        """No redraw per control while several move together (re-entrant)."""
        self._holding += 1
        try:
            yield
        finally:
            self._holding -= 1

    def _on_change(self, change) -> None:
        if not self._holding:
            self._refresh()

    def _refresh(self) -> None:
        """Rebuild from the current values; on any error show its message and keep the picture."""
        start = time.perf_counter()
        try:
            self._apply_limits(self.values)
            view = self.build(self.values)
            self._show(view)
        except Exception as exc:                              # the reader must never see a traceback
            self._show_error(exc)
        self.last_update_seconds = time.perf_counter() - start

    # -- which rules are broken ---------------------------------------------------------------------
    field_controls: dict = {}        # a config field -> the control that sets it, where the names differ

    def _control_for(self, field: str) -> str | None:
        name = self.field_controls.get(field, field.rsplit(".", 1)[-1])
        return name if name in self.controls else None

    def broken_rules(self, values: dict) -> list:
        """Every ConfigError the config of `values` raises, not only the first: after each, the
        control that sets the field it names is moved to its nearest value that clears that rule,
        and the config is checked again. The config's own rules, found by asking it."""
        from ..config import ConfigError
        found, trial = [], dict(values)
        for _ in range(len(self.controls) + 1):
            try:
                self.config(trial)
                break
            except ConfigError as error:
                found.append(error)
                name = self._control_for(error.field)
                if name is None:
                    break
                fix = self._nearest_clearing(trial, name, error)
                if fix is None:
                    break
                trial[name] = fix
            except Exception:                                 # a rule outside the config: reported as it is
                break
        return found

    def _nearest_clearing(self, values: dict, name: str, error) -> Any:
        from ..config import ConfigError
        current = values[name]
        candidates = [v for v in control_values(self.controls[name]) if v != current]
        if all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in candidates + [current]):
            candidates.sort(key=lambda v: abs(v - current))
        for value in candidates:
            try:
                self.config({**values, name: value})
                return value
            except ConfigError as other:
                if other.field != error.field:
                    return value
            except Exception:
                continue
        return None

    # -- drawing ------------------------------------------------------------------------------------
    def _show(self, view: View) -> None:
        table = view.table.against(self.table) if view.table is not None and self.table is not None else view.table
        sheets = row(*view.sheets).html if view.sheets else ""
        if view.heatmap is not None:
            update_heatmap(self._heatmap, view.heatmap, view.heatmap_title, view.heatmap_panels, self.heatmap_max)
        if view.curves is not None and self._curve is not None:
            with self._curve.batch_update():
                for trace in self._curve.data:
                    x, y = view.curves.get(trace.name, ((), ()))
                    trace.x, trace.y = _floats(x), _floats(y)      # lists: see heatmap._json_safe
        self._shape_label.value = (f'<div style="font-family:{MONO};font-size:13px;padding:3px 6px;text-align:left;'
                                   f'background:#f4f4f4;border-radius:3px;overflow-wrap:anywhere">'
                                   f'{escape(view.shape_label)}</div>')
        self._sheets.value = _compact(sheets)
        self._notes.value = _compact(view.notes)
        self._table.value = _compact(table.html) if table is not None else ""
        self._status.value = ""
        self._picture.remove_class("tinymoe-stale")
        self.view, self.error, self.errors = view, None, []
        self.shown_values = self.values
        if table is not None:
            self.table = table

    def _show_error(self, exc: Exception) -> None:
        """The status line names every rule the controls break; the picture is marked stale and
        says which settings it still shows."""
        from ..config import ConfigError
        if isinstance(exc, ConfigError):
            rules = self.broken_rules(self.values) or [exc]
            messages = [str(r) for r in rules]
            if str(exc) not in messages:
                messages.insert(0, str(exc))
        else:                                   # not a config rule: say what could not be drawn, readably
            settings = ", ".join(f"{k}={v!r}" for k, v in self.values.items())
            messages = [f"these settings could not be drawn ({settings}): {type(exc).__name__}: {exc}"]
        self.error, self.errors = messages[0], messages
        shown = ", ".join(f"{k}={v}" for k, v in self.shown_values.items() if self.values.get(k) != v)
        items = "".join(f"<li>{escape(m)}</li>" for m in messages)
        count = "this rule" if len(messages) == 1 else f"these {len(messages)} rules"
        self._status.value = (f'<div style="color:#9b2c1f;background:#fdecea;border:1px solid #f3b8b0;'
                              f'border-radius:3px;padding:3px 8px;font-size:13px;text-align:left">'
                              f'&#9888; These settings break {count}:<ul style="margin:2px 0 2px 18px;padding:0">'
                              f'{items}</ul><span class="tinymoe-stale-note" style="color:#555">The picture below is '
                              f'stale: it still shows the last possible settings ({escape(shown or "the same values")}).'
                              f'</span></div>')
        self._picture.add_class("tinymoe-stale")

    @property
    def stale(self) -> bool:
        """True while the picture does not match the controls (they hold an impossible combination)."""
        return self.error is not None

    def _make_curve(self, view: View):
        import plotly.graph_objects as go
        x_title, y_title = view.curve_axes
        figure = go.FigureWidget(layout=dict(width=440, height=300, margin=dict(l=50, r=10, t=10, b=40),
                                             xaxis=dict(title=x_title), yaxis=dict(title=y_title),
                                             legend=dict(orientation="h", y=1.12, x=0), plot_bgcolor="white"))
        for i, (label, (x, y)) in enumerate(view.curves.items()):   # later curves dashed: overlaps stay visible
            figure.add_scatter(x=_floats(x), y=_floats(y), name=label,
                               mode="lines+markers", line=dict(dash="solid" if i == 0 else "dash"),
                               marker=dict(size=5 if i == 0 else 7, symbol="circle" if i == 0 else "circle-open"))
        return figure

    # -- notebook display -------------------------------------------------------------------------
    def _ipython_display_(self):
        """Two outputs: the live widget, then a static snapshot of the same picture.

        The snapshot is for wherever no kernel drives the widget: a notebook opened without
        running it, the instructor's own copy saved after Run All and reopened (the widget's
        output then reads "model not found"), an HTML export, a code host's preview. Each output
        carries a little CSS that JupyterLab applies to trusted output: the live widget hides
        the snapshot beside it, and the snapshot hides a widget output that has no live widget
        in it. Where CSS is stripped (a sanitising preview), the snapshot is plain HTML and
        images, and the widget output has nothing visible to show but one line of text."""
        from IPython.display import display
        bundle = self.widget._repr_mimebundle_() or {}
        bundle = dict(bundle[0] if isinstance(bundle, tuple) else bundle)
        bundle["text/plain"] = (f"{type(self).__name__}({', '.join(f'{k}={v!r}' for k, v in self.values.items())}): "
                                f"run the notebook to move its controls")
        bundle.pop("text/html", None)
        display(bundle, raw=True)
        display({"text/html": SNAPSHOT_CSS + self.snapshot_html(),
                 "text/plain": f"(a snapshot of the {type(self).__name__} above)"}, raw=True)

    def snapshot_html(self) -> str:
        """The current picture as static HTML (no JavaScript; inline styles only, so it reads the
        same with CSS stripped): the control values, the status, the shape line, the sheets, the
        heatmap and the line chart as pictures, the notes and the shapes table."""
        from .png import data_uri, heatmap_png
        settings = " &middot; ".join(f"<code>{escape(k)} = {escape(v)}</code>" for k, v in self.values.items())
        parts = [f'<b style="font-size:15px">{escape(self.title)}</b> '
                 f'<span style="color:#777">(a snapshot: run the notebook to move the controls)</span>',
                 f'<div style="margin:4px 0">{settings}</div>', self._status.value]
        picture = [self._shape_label.value, self._sheets.value]
        if self.view is not None and self.view.heatmap is not None:
            data = np.asarray(self.heatmap_data, dtype=float)
            panels = list(data) if data.ndim == 3 else [data]
            rows, cols = max(p.shape[0] for p in panels), sum(p.shape[1] for p in panels)
            f = int(np.clip(min(360 // max(cols, 1), 260 // max(rows, 1)), 1, 16))   # screen pixels per value
            # Enlarge in the picture itself: notebook sanitizers drop CSS that keeps scaled pixels sharp.
            big = [np.repeat(np.repeat(p, f, axis=0), f, axis=1) for p in panels]
            png, _ = heatmap_png(big, width=1, height=1)
            picture.append(f'<div style="font-size:12px;color:#555;margin-top:6px">{escape(self.view.heatmap_title)}</div>'
                           f'<img alt="heatmap" title="{escape(_text(self.view.heatmap_title))}" src="{data_uri(png)}">')
        if self._curve is not None:
            from .figure import figure_png
            picture.append(f'<img alt="line chart" src="{data_uri(figure_png(self._curve.to_dict()))}">')
        picture += [self._notes.value, self._table.value]
        stale = ' style="opacity:0.45"' if self.error else ""
        parts.append(f'<div{stale}>' + "".join(f"<div>{p}</div>" for p in picture if p) + "</div>")
        parts.append(legend().html)
        return ('<div class="tinymoe-snapshot" style="text-align:left">'
                + "".join(f"<div>{p}</div>" for p in parts if p) + "</div>")

    def __repr__(self) -> str:
        state = f"error={self.error!r}" if self.error else f"shapes={len(self.view.shapes)}"
        return f"{type(self).__name__}({self.values}, {state})"


def _floats(values) -> list:
    """Numbers to send to a FigureWidget as a plain list (see heatmap._json_safe for why not numpy)."""
    return [float(v) for v in np.asarray(values, dtype=float).reshape(-1)]


def _compact(markup: str) -> str:
    """Undo the widgets' tall line height (28 px, sized for a slider) inside an HTML widget."""
    return f'<div style="line-height:1.4">{markup}</div>' if markup else ""


def _text(markup: str) -> str:
    """Visible text of a bit of HTML."""
    return _html.unescape(re.sub(r"<[^>]+>", "", markup)).strip()
