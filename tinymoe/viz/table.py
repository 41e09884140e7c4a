"""The shapes-and-parameters table: every named tensor of a forward pass with its shape, every
module with its parameter count, and, after a change of config, what changed (old -> new).

This is the spreadsheet's "insert a row and watch everything move": add a head and the table
shows attn.q going from (1, 2, 10, 3) to (1, 3, 10, 3), W_q from 30 to 45 parameters, and which
rows did not move at all. Shapes come from a real traced forward of the core (forward.py), never
from a formula typed in here, so the table cannot disagree with the model.

    shapes_table(config)                        # one config
    shapes_table(new_config, previous=config)   # the rows that changed, highlighted, old struck out
    shapes_table(new_config, previous=config, fold_unchanged=True)   # only those, runs of the rest folded
"""
from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass

from torch import nn

from ..config import ModelConfig
from ..sizes import parameter_counts
from .forward import Run, traced_forward
from .html import Html, escape
from .palette import ROLE_EDGE, ROLE_WIDTH
from .style import MONO, shape_text

__all__ = ["ShapeRow", "ShapesTable", "shapes_table", "settings_of"]

PARAMETER_ROLES = ("weight", "bias")
CHANGED = "#fff0c2"      # a changed row (the gold of the mock)
FOLD_RUN = 3             # fold_unchanged: a run of this many unchanged tensor rows or more becomes one line
NEW = "#e5f4dd"          # a row that did not exist before


@dataclass
class ShapeRow:
    """One line of the table.
    kind: "tensor" (a trace record), "module" (a part of the model) or "total".
    parameters: trainable parameters (weights, biases, modules); None for activations.
    status: "same", "changed", "new" (not there before) or "removed" (gone now)."""
    name: str
    kind: str
    role: str = ""
    shape: tuple | None = None
    parameters: int | None = None
    buffers: int = 0
    module_type: str = ""
    status: str = "same"
    old_shape: tuple | None = None
    old_parameters: int | None = None

    @property
    def changed(self) -> bool:
        return self.status != "same"


def settings_of(config: ModelConfig, **extra) -> dict:
    """The config as flat field -> value (nested MoE / sparse-attention fields as moe.n_experts)."""
    flat = {}
    for key, value in dataclasses.asdict(config).items():
        if isinstance(value, dict):
            flat.update({f"{key}.{k}": v for k, v in value.items()})
        else:
            flat[key] = value
    flat.update(extra)
    return flat


def _units(module: nn.Module, kind: str) -> list[tuple[str, nn.Module]]:
    """The parts whose parameters get a row: the attention itself; a block's norms, attention and
    feed-forward; a model's embedding, each block's parts, final norm and LM head."""
    if kind == "attention":
        return [(module.name, module)]
    units = []
    for name, child in module.named_children():
        if isinstance(child, nn.ModuleList):
            for i, block in enumerate(child):
                units.extend((f"{name}.{i}.{n}", c) for n, c in block.named_children())
        else:
            units.append((name, child))
    return units


def _rows_from_run(run: Run) -> list[ShapeRow]:
    rows = []
    for rec in run.trace.records():
        params = rec.tensor.numel() if rec.role in PARAMETER_ROLES else None
        rows.append(ShapeRow(rec.name, "tensor", rec.role, tuple(rec.tensor.shape), params))
    seen: set[int] = set()
    for name, unit in _units(run.module, run.module_kind):
        fresh = [p for p in unit.parameters() if id(p) not in seen]        # a tied weight counts once
        seen.update(id(p) for p in fresh)
        rows.append(ShapeRow(name, "module", "", None, sum(p.numel() for p in fresh if p.requires_grad),
                             sum(b.numel() for b in unit.buffers()), type(unit).__name__))
    total = parameter_counts(run.module)["total"]
    rows.append(ShapeRow("total", "total", "", None, total["trainable"], total["buffers"],
                         type(run.module).__name__))
    return rows


def _merge(rows: list[ShapeRow], previous: list[ShapeRow]) -> list[ShapeRow]:
    """Mark each row same / changed / new against `previous`, and put back rows that are gone
    (as "removed") just after the row that preceded them."""
    before = {(r.kind, r.name): r for r in previous}
    now = {(r.kind, r.name) for r in rows}
    merged = []
    for row in rows:
        old = before.get((row.kind, row.name))
        if old is None:
            merged.append(dataclasses.replace(row, status="new"))
        elif old.shape != row.shape or old.parameters != row.parameters:
            merged.append(dataclasses.replace(row, status="changed", old_shape=old.shape,
                                              old_parameters=old.parameters))
        else:
            merged.append(dataclasses.replace(row))
    for i, old in enumerate(previous):
        if (old.kind, old.name) in now:
            continue
        anchor = next((p for p in reversed(previous[:i]) if (p.kind, p.name) in now), None)
        at = 0 if anchor is None else next(j for j, r in enumerate(merged)
                                           if (r.kind, r.name) == (anchor.kind, anchor.name)) + 1
        while at < len(merged) and merged[at].status == "removed":
            at += 1
        merged.insert(at, dataclasses.replace(old, status="removed", old_shape=old.shape,
                                              old_parameters=old.parameters))
    return merged


def _count(n) -> str:
    return "" if n is None else f"{n:,}"


class ShapesTable(Html):
    """The table as data (`.rows`, `.shapes`, `.parameters`, `.changes`) and as HTML (`.html`)."""

    def __init__(self, rows: list[ShapeRow], settings: dict, changes: dict | None = None,
                 module_kind: str = "model", fold_unchanged: bool = False):
        self.rows, self.settings, self.module_kind = rows, settings, module_kind
        self.changes, self.fold_unchanged = changes or {}, fold_unchanged
        super().__init__(self._render())

    @classmethod
    def from_run(cls, run: Run) -> "ShapesTable":
        settings = settings_of(run.config, seq_len=run.seq_len, batch=run.batch)
        return cls(_rows_from_run(run), settings, module_kind=run.module_kind)

    def against(self, previous: "ShapesTable | None") -> "ShapesTable":
        """This table, with the rows that differ from `previous` marked (old -> new)."""
        if previous is None:
            return ShapesTable([dataclasses.replace(r, status="same", old_shape=None, old_parameters=None)
                                for r in self.rows if r.status != "removed"], self.settings, None, self.module_kind)
        current = [r for r in self.rows if r.status != "removed"]
        before = [r for r in previous.rows if r.status != "removed"]
        changes = {k: (previous.settings.get(k), v) for k, v in self.settings.items()
                   if previous.settings.get(k) != v}
        changes.update({k: (old, None) for k, old in previous.settings.items()
                        if k not in self.settings and old is not None})
        changes = _collapse_groups(changes, previous.settings, self.settings)
        return ShapesTable(_merge(current, before), self.settings, changes, self.module_kind, self.fold_unchanged)

    def folded(self, fold_unchanged: bool = True) -> "ShapesTable":
        """The same table drawn with each run of unchanged tensor rows folded into one line, so a
        step that changes four rows of a block shows those four, not the block's fifty."""
        return ShapesTable(self.rows, self.settings, self.changes, self.module_kind, fold_unchanged)

    # -- reading ---------------------------------------------------------------------------------
    @property
    def shapes(self) -> dict[str, tuple]:
        """tensor name -> shape (rows that exist now)."""
        return {r.name: r.shape for r in self.rows if r.kind == "tensor" and r.status != "removed"}

    @property
    def parameters(self) -> dict[str, int]:
        """module name (and "total") -> trainable parameters."""
        return {r.name: r.parameters for r in self.rows if r.kind != "tensor" and r.status != "removed"}

    @property
    def changed_rows(self) -> list[ShapeRow]:
        return [r for r in self.rows if r.changed]

    # -- drawing ---------------------------------------------------------------------------------
    def _render(self) -> str:
        td = ("border:none;border-bottom:1px solid #e6e6e6;padding:2px 10px;text-align:left;white-space:nowrap;"
              "line-height:16px;")
        head = "border:none;border-bottom:1px solid #bbb;padding:2px 10px;text-align:left;font-weight:bold;line-height:16px;"
        if self.changes:
            moved = ", ".join(f"{escape(k)} {escape(_value(a))} &rarr; {escape(_value(b))}"
                              for k, (a, b) in self.changes.items())
            note = f'<span style="font-size:12px;color:#555;font-weight:normal"> {moved}</span>'
        else:
            s = self.settings
            note = (f'<span style="font-size:12px;color:#777;font-weight:normal"> {escape(self.module_kind)}, '
                    f'seq_len={s.get("seq_len")}, batch={s.get("batch")}</span>')
        out = [f'<div style="text-align:left;line-height:1.4"><div style="font-family:sans-serif;font-size:14px;font-weight:bold;'
               f'color:#222;margin:4px 0 4px 0">Shapes and parameters{note}</div>'
               f'<table style="border-collapse:collapse;font-family:sans-serif;font-size:12px;color:#222;'
               f'margin:0;table-layout:auto;width:auto">'
               f'<tr style="background:transparent"><td style="{head}">tensor / module</td>'
               f'<td style="{head}">shape</td><td style="{head}text-align:right">parameters</td></tr>']
        modules_started = False
        rows = collapse_heads(collapse_layers(self.rows))
        if self.fold_unchanged and self.changes:
            rows = fold_unchanged_rows(rows)
        for r in rows:
            if isinstance(r, _Fold):
                names = escape(r.names[0]) + " &hellip; " + escape(r.names[-1])
                out.append(f'<tr style="background:transparent"><td colspan="3" style="{td}color:#888;'
                           f'font-style:italic">&#8942; {len(r.names)} rows unchanged '
                           f'<span style="font-family:{MONO};font-style:normal">({names})</span></td></tr>')
                continue
            if r.kind != "tensor" and not modules_started:
                modules_started = True
                out.append(f'<tr style="background:transparent"><td colspan="3" style="{td}color:#777;'
                           f'font-style:italic;padding-top:6px">modules</td></tr>')
            fill = {"changed": CHANGED, "new": NEW}.get(r.status, "transparent")
            struck = r.status == "removed"
            name = escape(r.name) + (f' <span style="color:#999">{escape(r.module_type)}</span>'
                                     if r.module_type and r.kind == "module" else "")
            swatch = (f'<span style="display:inline-block;width:9px;height:9px;margin-right:5px;'
                      f'background:#ffffff;border:{ROLE_WIDTH.get(r.role, 1)}px solid {ROLE_EDGE.get(r.role, "#ccc")}">'
                      f"</span>" if r.kind == "tensor" else "")
            weight = "font-weight:bold;" if r.kind == "total" else ""
            shape = shape_text(r.shape)
            params = _count(r.parameters)
            if r.buffers and r.kind != "tensor":
                params += f' <span style="color:#999">+{r.buffers:,} buffer</span>'
            if r.role == "buffer":
                params = '<span style="color:#999">buffer</span>'
            if r.status == "changed":
                if r.old_shape != r.shape:
                    shape = f'<s style="color:#999">{shape_text(r.old_shape)}</s> {shape}'
                if r.old_parameters != r.parameters:
                    params = f'<s style="color:#999">{_count(r.old_parameters)}</s> {params}'
            elif r.status == "new":
                shape = f'<span style="color:#4a7f3a;font-size:10px">new</span> {shape}'
            elif struck:
                shape = f'<s style="color:#999">{shape}</s> <span style="color:#999;font-size:10px">removed</span>'
                params = f'<s style="color:#999">{params}</s>'
            name_html = f'<s style="color:#999">{name}</s>' if struck else name
            out.append(f'<tr style="background:{fill}"><td style="{td}{weight}background:{fill}">{swatch}'
                       f'<span style="font-family:{MONO}">{name_html}</span></td>'
                       f'<td style="{td}font-family:{MONO};background:{fill}">{shape}</td>'
                       f'<td style="{td}{weight}text-align:right;font-family:{MONO};background:{fill}">{params}</td></tr>')
        out.append("</table></div>")
        return "".join(out)


@dataclass
class _Fold:
    """A run of unchanged tensor rows, drawn as one line (fold_unchanged)."""
    names: list


def fold_unchanged_rows(rows: list) -> list:
    """Runs of FOLD_RUN or more unchanged tensor rows become one `_Fold`; changed, new and removed
    rows, and every module row, stay as they are."""
    out, run = [], []

    def flush():
        out.extend([_Fold([r.name for r in run])] if len(run) >= FOLD_RUN else run)
        run.clear()

    for r in rows:
        if r.kind == "tensor" and r.status == "same":
            run.append(r)
        else:
            flush()
            out.append(r)
    flush()
    return out


LAYER = re.compile(r"^layers\.(\d+)(\.|$)(.*)$")


def collapse_layers(rows: list[ShapeRow]) -> list[ShapeRow]:
    """Rows of identical layers drawn once: when every layer has the same row (same shape, same
    parameters, same status), `layers.0.attn.q` .. `layers.3.attn.q` become one row named
    `layers.0-3.attn.q (×4)` with the parameters of all four added up. A layer that differs (an
    MoE layer among dense ones, a changed row) keeps its own rows. The table's data (.rows) is not
    changed: this is only how it is drawn."""
    groups: dict[tuple, list[int]] = {}
    for i, r in enumerate(rows):
        m = LAYER.match(r.name)
        if m:
            groups.setdefault((r.kind, m.group(3), r.shape, r.parameters, r.status, r.old_shape,
                               r.old_parameters, r.module_type), []).append(i)
    layers = {int(m.group(1)) for r in rows if (m := LAYER.match(r.name))}
    if len(layers) < 2:
        return rows
    merged, skip = [], set()
    for i, r in enumerate(rows):
        if i in skip:
            continue
        m = LAYER.match(r.name)
        key = (r.kind, m.group(3), r.shape, r.parameters, r.status, r.old_shape, r.old_parameters,
               r.module_type) if m else None
        members = groups.get(key, [i]) if m else [i]
        numbers = sorted(int(LAYER.match(rows[j].name).group(1)) for j in members) if m else []
        if m and len(members) > 1 and numbers == list(range(numbers[0], numbers[0] + len(numbers))):
            skip.update(members)
            rest = m.group(3)
            name = f"layers.{numbers[0]}-{numbers[-1]}{'.' + rest if rest else ''} (×{len(members)})"
            total = None if r.parameters is None else r.parameters * len(members)
            old = None if r.old_parameters is None else r.old_parameters * len(members)
            merged.append(dataclasses.replace(r, name=name, parameters=total, old_parameters=old,
                                              buffers=r.buffers * len(members)))
        else:
            merged.append(r)
    return merged


HEAD = re.compile(r"^(?P<before>.*\.head)(?P<h>\d+)(?P<after>(?: \(×\d+\))?)$")
HEADS_TO_COLLAPSE = 4    # four or more alike heads read better as one row; three stay apart (the lessons' size)


def collapse_heads(rows: list[ShapeRow]) -> list[ShapeRow]:
    """A run of per-head rows alike in all but the head number (`attn.head0` .. `attn.head8`, each
    (1, 10, 64)) drawn as one row `attn.head0-8`. Heads that differ (unequal value sizes, a changed
    row among them) stay apart, and so do runs shorter than HEADS_TO_COLLAPSE."""
    out, run = [], []

    def key(r):
        m = HEAD.match(r.name)
        return m and (m.group("before"), m.group("after"), r.kind, r.role, r.shape, r.parameters, r.status,
                      r.old_shape, r.old_parameters)

    def flush():
        numbers = [int(HEAD.match(r.name).group("h")) for r in run]
        if len(run) >= HEADS_TO_COLLAPSE and numbers == list(range(numbers[0], numbers[0] + len(run))):
            m = HEAD.match(run[0].name)
            out.append(dataclasses.replace(run[0], name=f"{m.group('before')}{numbers[0]}-{numbers[-1]}{m.group('after')}"))
        else:
            out.extend(run)
        run.clear()

    for r in rows:
        if run and key(r) != key(run[0]):
            flush()
        if key(r):
            run.append(r)
        else:
            out.append(r)
    flush()
    return out


def _collapse_groups(changes: dict, before: dict, after: dict) -> dict:
    """A nested config switched on or off (moe None -> MoEConfig) reads as one change,
    `moe None -> n_experts=4, top_k=2, router=softmax_topk`, not one line per sub-field."""
    for group in {k.split(".", 1)[0] for k in changes if "." in k}:
        switched_on = group in before and before[group] is None and group not in after
        switched_off = group in after and after[group] is None and group not in before
        if not (switched_on or switched_off):
            continue
        fields = {k.split(".", 1)[1]: v for k, v in (after if switched_on else before).items()
                  if k.startswith(group + ".")}
        summary = ", ".join(f"{k}={v}" for k, v in list(fields.items())[:3])
        changes = {k: v for k, v in changes.items() if not k.startswith(group + ".") and k != group}
        changes[group] = (None, summary) if switched_on else (summary, None)
    return changes


def _value(v) -> str:
    return "None" if v is None else str(v)


def shapes_table(config: ModelConfig, previous: "ModelConfig | ShapesTable | None" = None, seq_len: int = 10,
                 batch: int = 1, module: str = "model", seed: int = 0, fold_unchanged: bool = False) -> ShapesTable:
    """Every named tensor's shape and every module's parameter count for `config`, from a traced
    forward of the core `module` ("model", "block" or "attention") with `seed`.
    With `previous` (a config, or an earlier table) the rows that changed are marked old -> new;
    `fold_unchanged=True` then folds each run of unchanged tensor rows into one line."""
    if not isinstance(fold_unchanged, bool):
        raise TypeError(f"fold_unchanged={fold_unchanged!r}: must be True or False")
    table = ShapesTable.from_run(traced_forward(config, module, seq_len, batch, seed))
    if previous is None:
        return table
    if isinstance(previous, ModelConfig):
        previous = ShapesTable.from_run(traced_forward(previous, module, seq_len, batch, seed))
    return table.against(previous).folded(fold_unchanged)
