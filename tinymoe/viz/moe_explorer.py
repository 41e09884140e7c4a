"""MoEExplorer: a Mixture-of-Experts layer with its routing on sliders.

n_experts, top_k, capacity_factor, router and seq_len build an MoE layer at sheet size
(d_model 5, SwiGLU experts with d_ff 4), run it on seeded tokens and show, from the trace:

  heatmap  tokens as rows, experts as columns, two panels side by side:
           left   moe.router_probs: what the router thinks of every expert
           right  the gate each token actually uses per expert, after top-k and capacity; an
                  assignment a full expert turned away is drawn as -1 (orange)
           (soft MoE: the dispatch and the combine weights, summed over each expert's slots)
  sheets   moe.expert_ids and moe.gates, tokens as columns (expert choice: one row per expert;
           soft: moe.dispatch_weights and moe.slots); a picture past max_columns tokens or 8 rows
  notes    one bar per expert: the slots it processes (moe.expert_load, blue) and the ones it
           turned away (orange) against its capacity (dashed);
           the dropped assignments and tokens; total parameters against the active ones per token
           (tinymoe.moe.moe_parameter_counts; a test checks it against the module built)
  table    the layer's shapes and parameters, with what changed since the last picture

capacity_factor 0 in the dropdown means "none" (dropless: no capacity at all). The noisy top-k
router runs in training mode, so its noise is on (seeded: the same picture every time).
An impossible combination (top_k > n_experts, the switch router with top_k 2, switch or expert
choice without a capacity factor) shows the config's message and keeps the last picture.
`.view` (a MoEView) holds the picture shown now: `.view.expert_load`, `.turned_away`,
`.capacity`, `.dropped`, `.parameters`, `.routing`.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

from ..config import ROUTERS, ModelConfig, MoEConfig
from ..moe import moe_parameter_counts, scatter_gates
from .explorer import Explorer, View, dropdown, slider
from .forward import traced_forward
from .style import TEXT, plural, shape_text
from .html import escape
from .sheet import show
from .table import ShapesTable

__all__ = ["MoEExplorer", "MoEView", "CAPACITY_FACTORS"]

# Llama 4's router (sigmoid top-1 that scales the expert's input, dropless) has its own explorer
# in notebook 10 (Llama4Explorer); this one offers the routers of notebook 06.
EXPLORER_ROUTERS = tuple(r for r in ROUTERS if r != "llama4")

# Dropdown (label, value): 0.0 stands for "no capacity" (capacity_factor=None, dropless).
CAPACITY_FACTORS = (("none (dropless)", 0.0), ("0.5", 0.5), ("0.75", 0.75), ("1.0", 1.0), ("1.25", 1.25),
                    ("1.5", 1.5), ("2.0", 2.0))
TABLE_ROWS = ("moe.x", "moe.W_router", "moe.W_gate", "moe.W_up", "moe.W_down", "moe.router_logits",
              "moe.router_probs", "moe.expert_ids", "moe.gates", "moe.dispatch_weights", "moe.slots",
              "moe.expert_load", "moe.routed_out", "moe.out")
BAR_WIDTH = 220          # pixels for the longest bar (or the capacity mark, whichever is further)


@dataclass
class MoEView(View):
    """A View that also keeps the numbers the picture was drawn from."""
    expert_load: list = field(default_factory=list)     # slots each expert processes (moe.expert_load)
    turned_away: list = field(default_factory=list)     # slots each expert turned away (capacity full)
    capacity: int | None = None                         # slots per expert, None when dropless
    dropped: dict = field(default_factory=dict)         # assignments / tokens turned away
    parameters: dict = field(default_factory=dict)      # moe_parameter_counts(config)
    routing: np.ndarray | None = None                   # (seq_len, n_experts) gate used per token and expert


def _count(n: float) -> str:
    return f"{int(n):,}" if float(n).is_integer() else f"{n:,.1f}"


def routing_matrix(expert_ids: torch.Tensor, gates: torch.Tensor, n_experts: int,
                   dropped_ids: torch.Tensor | None = None) -> torch.Tensor:
    """(N, k) ids and gates -> (N, n_experts): the gate each token gives each expert (0 if none).
    dropped_ids (N, k): the expert a dropped slot had chosen (-1 elsewhere); drawn as -1."""
    dense = scatter_gates(expert_ids, gates.float(), n_experts)                   # (N, E)
    if dropped_ids is not None:
        dense = dense - scatter_gates(dropped_ids, (dropped_ids >= 0).float(), n_experts)
    return dense                                                                  # (N, E)


class MoEExplorer(Explorer):
    """Mixture of Experts: move the number of experts, top_k, the capacity factor, the router or
    the sequence length; the routing, the load per expert, the dropped tokens and the parameter
    counts follow."""

    title = "Mixture of Experts: who goes where"
    heatmap_size = (380, 380)

    def __init__(self, n_experts: int = 3, top_k: int = 2, capacity_factor: float | None = 1.0,
                 router: str = "softmax_topk", seq_len: int = 10, d_model: int = 5, d_ff: int = 4,
                 max_experts: int = 16, max_top_k: int = 4, max_seq_len: int = 64, seed: int = 0,
                 max_columns: int = 16):
        self.d_model, self.d_ff, self.max_columns = d_model, d_ff, max_columns
        factor = 0.0 if capacity_factor is None else float(capacity_factor)
        options = list(CAPACITY_FACTORS)
        if factor not in [v for _, v in options]:
            options = sorted(options + [(f"{factor:g}", factor)], key=lambda o: o[1])
        self.max_top_k, self.capacity_options = max_top_k, options
        controls = {"n_experts": slider(n_experts, 1, max_experts),
                    "top_k": slider(top_k, 1, max_top_k),
                    "capacity_factor": dropdown(factor, options, width="190px"),
                    "router": dropdown(router, EXPLORER_ROUTERS, width="230px"),
                    "seq_len": slider(seq_len, 1, max_seq_len)}
        self.max_seq_len = controls["seq_len"].max
        super().__init__(controls, seed=seed)

    # -- the config --------------------------------------------------------------------------------
    def limits(self, values: dict) -> dict:
        """top_k cannot exceed n_experts (nor 1 with the switch router); the switch and
        expert-choice routers need a capacity factor, so "none" leaves their list."""
        top_k = min(self.max_top_k, values["n_experts"], 1 if values["router"] == "switch" else self.max_top_k)
        why = "the switch router takes top_k=1" if values["router"] == "switch" else "top_k <= n_experts"
        needs = values["router"] in ("switch", "expert_choice")
        options = [o for o in self.capacity_options if not (needs and o[1] == 0.0)]
        return {"top_k": {"max": top_k, "why": why},
                "capacity_factor": {"options": options,
                                    "why": f"the {values['router']} router needs a capacity factor" if needs else ""}}

    def config(self, values: dict) -> ModelConfig:
        """The MoE settings from the controls; validate() names an impossible combination."""
        factor = values["capacity_factor"] or None                                # 0.0 -> dropless
        moe = MoEConfig(n_experts=values["n_experts"], top_k=values["top_k"], router=values["router"],
                        capacity_factor=factor, dispatch="grouped")
        return ModelConfig(d_model=self.d_model, n_heads=1, d_ff=self.d_ff, position="none",
                           max_seq_len=self.max_seq_len, moe=moe).validate()

    # -- one picture -------------------------------------------------------------------------------
    @torch.no_grad()
    def build(self, values: dict) -> MoEView:
        config = self.config(values)
        moe_config, T, E = config.moe, values["seq_len"], values["n_experts"]
        # The tokens come from their own generator, drawn for the longest sequence and cut to
        # seq_len: a longer sequence adds tokens and leaves the earlier ones as they were.
        run = traced_forward(config, "moe", T, seed=self.seed, train=moe_config.router == "noisy_topk")
        trace, counts = run.trace, moe_parameter_counts(config)             # noise only in training mode
        load = [int(n) for n in trace["moe.expert_load"]]
        soft = moe_config.router == "soft"
        if soft:
            spe = moe_config.slots_per_expert
            dispatch = trace["moe.dispatch_weights"][0].reshape(T, E, spe).sum(-1)   # (T, E)
            combine = trace["moe.combine_weights"][0].reshape(T, E, spe).sum(-1)     # (T, E)
            panels, panel_names = torch.stack([dispatch, combine]), ["dispatch", "combine"]
            routing, capacity = combine, None
            dropped = {"assignments": 0, "tokens": 0}
            turned_away = [0] * E
            title = f"{plural(T, 'token')} × {plural(E, 'expert')} (soft: summed over each expert's slots)"
        else:
            dropped_ids = torch.where(trace["moe.dropped"], trace["moe.chosen_ids"], -1)  # (N, k)
            routing = routing_matrix(trace["moe.expert_ids"], trace["moe.gates"], E, dropped_ids)  # (T, E)
            panels = torch.stack([trace["moe.router_probs"], routing])                      # (2, T, E)
            panel_names = ["router_probs", "gates used (orange: dropped)"]
            capacity = int(trace["moe.capacity"]) if "moe.capacity" in trace else None
            dropped = {"assignments": int(trace["moe.dropped"].sum()),
                       "tokens": int(trace["moe.dropped_tokens"].sum())}
            turned_away = torch.bincount(dropped_ids[dropped_ids >= 0], minlength=E).tolist()   # per expert
            title = f"{plural(T, 'token')} (rows) × {plural(E, 'expert')}"

        label = self._label_text(config, trace, T, capacity, dropped, counts)
        notes = self._notes_html(config, load, turned_away, capacity, dropped, counts, T)
        # Tokens as columns (the by-hand layout): short, wide sheets; a picture when they would be
        # wider than max_columns tokens or taller than 8 rows.
        slots = [f"s{j}" for j in range(trace["moe.router_logits"].shape[-1])] if soft else (
            [f"e{e}" for e in range(E)] if moe_config.router == "expert_choice"
            else [f"choice {j + 1}" for j in range(trace["moe.expert_ids"].shape[-1])])
        names = ("moe.dispatch_weights", "moe.slots") if soft else ("moe.expert_ids", "moe.gates")
        fits = 10 ** 6 if T <= self.max_columns and len(slots) <= 8 else 0         # max_cells: all or nothing
        fits_slots = 10 ** 6 if len(slots) <= self.max_columns else 0              # moe.slots: (d_model, S) by hand
        sheets = [show(trace, names[0], orientation="by_hand", max_cells=fits, row_labels=slots),
                  show(trace, names[1], orientation="by_hand", max_cells=fits_slots if soft else fits,
                       **({"col_labels": slots} if soft else {"row_labels": slots}))]
        full = ShapesTable.from_run(run)
        table = ShapesTable([r for r in full.rows if r.kind != "tensor" or r.name in TABLE_ROWS],
                            full.settings, module_kind="moe")
        return MoEView(
            shapes={name: tuple(trace[name].shape) for name in trace.keys()},
            shape_label=label,
            sheets=sheets,
            heatmap=panels,
            heatmap_title=title,
            heatmap_panels=panel_names,
            table=table,
            notes=notes,
            expert_load=load,
            turned_away=turned_away,
            capacity=capacity,
            dropped=dropped,
            parameters=counts,
            routing=routing.numpy())

    # -- text --------------------------------------------------------------------------------------
    @staticmethod
    def _label_text(config, trace, T, capacity, dropped, counts) -> str:
        moe = config.moe
        if moe.router == "soft":
            route = (f"dispatch_weights {shape_text(trace['moe.dispatch_weights'].shape)} → "
                     f"slots {shape_text(trace['moe.slots'].shape)} → "
                     f"slot_outputs {shape_text(trace['moe.slot_outputs'].shape)}")
        else:
            pick = ("each expert picks its top tokens" if moe.router == "expert_choice"
                    else f"top-{moe.top_k}")
            route = (f"router_logits {shape_text(trace['moe.router_logits'].shape)} → {pick} → "
                     f"expert_ids {shape_text(trace['moe.expert_ids'].shape)}, gates {shape_text(trace['moe.gates'].shape)}")
        where = "no capacity" if capacity is None else f"capacity {capacity}"
        if moe.router == "soft":
            lost = ""
        elif moe.router == "expert_choice":
            lost = f" · {dropped['tokens']} token{'' if dropped['tokens'] == 1 else 's'} picked by no expert"
        else:
            lost = (f" · dropped {dropped['assignments']} assignment{'' if dropped['assignments'] == 1 else 's'}, "
                    f"{dropped['tokens']} token{'' if dropped['tokens'] == 1 else 's'}")
        return (f"{moe.router}, {moe.n_experts} experts: x {shape_text(trace['moe.x'].shape)} → {route} → "
                f"out {shape_text(trace['moe.out'].shape)} · {where}{lost} · parameters {_count(counts['total'])}, "
                f"active per token {_count(counts['active'])}")

    @staticmethod
    def _notes_html(config, load, turned_away, capacity, dropped, counts, T) -> str:
        moe = config.moe
        furthest = max([n + a for n, a in zip(load, turned_away)] + [capacity or 0, 1])
        scale = BAR_WIDTH / furthest
        text = TEXT
        rows = []
        for e, (n, away) in enumerate(zip(load, turned_away)):
            # blue: the slots the expert processes; red, past them: the ones it turned away
            mark = (f'<div style="position:absolute;left:{capacity * scale:.0f}px;top:-2px;height:18px;'
                    f'border-left:2px dashed #333"></div>' if capacity is not None else "")
            rows.append(f'<tr><td style="padding:1px 6px 1px 0;{text};font-family:monospace">e{e}</td>'
                        f'<td style="padding:1px 0"><div style="position:relative;width:{BAR_WIDTH + 4}px;height:14px">'
                        f'<div style="display:flex;height:14px"><div style="width:{n * scale:.0f}px;background:#4285c4">'
                        f'</div><div style="width:{away * scale:.0f}px;background:#e8801c"></div></div>{mark}</div></td>'
                        f'<td style="padding:1px 0 1px 8px;{text};font-family:monospace;text-align:left;white-space:nowrap">'
                        f"{n}{f' (+{away} turned away)' if away else ''}</td></tr>")
        if moe.router == "soft":
            what = f"slots per expert (soft MoE: {moe.slots_per_expert} per expert per sequence, always balanced)"
        elif moe.router == "expert_choice":
            what = f"tokens each expert picked (expert choice: exactly c = {capacity} each)"
        else:
            per = T * moe.top_k
            what = (f"assignments each expert processes ({plural(T, 'token')} × top-{moe.top_k} = {per}"
                    + (f"; dashed line: capacity {capacity}; orange: turned away)" if capacity is not None
                       else "; no capacity)"))
        if moe.router == "soft":
            lost = "Soft MoE drops nothing: every token is in every slot, a little."
        elif moe.router == "expert_choice":
            lost = (f"{dropped['tokens']} token{'' if dropped['tokens'] == 1 else 's'} no expert picked "
                    f"(MoE output zero; the residual carries them).")
        else:
            lost = (f"{dropped['assignments']} assignment{'' if dropped['assignments'] == 1 else 's'} turned away by a "
                    f"full expert; {dropped['tokens']} token{'' if dropped['tokens'] == 1 else 's'} "
                    f"got no expert at all (MoE output zero; the residual carries them).")
        if moe.router == "soft":
            used = f"all {moe.n_experts} experts (soft)"
        elif moe.router == "expert_choice":
            used = f"{min(moe.capacity_factor, moe.n_experts):g} experts on average (expert choice)"
        else:
            used = f"top_k={moe.top_k} expert{'' if moe.top_k == 1 else 's'}"
        router = counts["router"]
        params = (f"<b>Parameters</b>: router {_count(router)} + {moe.n_experts} × {_count(counts['expert'])} "
                  f"(one expert) = <b>{_count(counts['total'])}</b> in total; a token uses the router + {used}: "
                  f"<b>{_count(counts['active'])}</b> active per token.")
        noise = (" The noisy router is shown in training mode: its noise is on." if moe.router == "noisy_topk" else "")
        return (f'<div style="{text};margin:2px 0 4px 0;max-width:420px"><b>Load per expert</b>: {escape(what)}</div>'
                f'<table style="border-collapse:collapse;margin:0 0 4px 0">{"".join(rows)}</table>'
                f'<div style="{text};margin:0 0 4px 0;max-width:420px">{escape(lost)}</div>'
                f'<div style="{text};margin:0 0 8px 0;max-width:420px">{params}{escape(noise)}</div>')
