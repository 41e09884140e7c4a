"""What a training run records, step by step, and how the MoE routing numbers are collected.

`History` holds one row (a dict) per optimizer step:

    step            0-based index of the optimizer step
    lr              the learning rate it used
    loss            cross-entropy on the training batch (mean over accumulated micro-batches)
    <aux name>      each auxiliary loss the model returned, after its coefficient
                    (TinyLM with MoE: load_balancing, z_loss)
    total_loss      loss + the auxiliary losses: what was differentiated
    grad_norm       gradient norm before clipping (None without clipping)
    expert_load     per MoE layer, slots each expert processed: [[n_0, n_1, ...], ...]
    dropped_tokens  tokens that no expert processed (all their slots over capacity), all layers
    dropped_slots   (token, expert) slots turned away by a full expert, all layers
    tokens_per_s    training tokens / wall-clock seconds of this step
    val_loss        cross-entropy on the validation batches (None on steps without evaluation)

`RoutingMeter` gets the routing numbers without touching the model's code: a forward hook on
every router (each returns a `Routing`) adds up its `expert_load` and dropped tokens.
"""
from __future__ import annotations

import torch
from torch import nn

from ..moe.routing import Router, Routing

__all__ = ["History", "RoutingMeter"]


class History:
    """Rows of per-step metrics. history["loss"] is a column (a list, one value per step)."""

    def __init__(self, rows: list[dict] | None = None):
        self.rows: list[dict] = list(rows or [])

    def append(self, row: dict) -> None:
        self.rows.append(row)

    def __getitem__(self, name: str) -> list:
        if self.rows and name not in self.rows[-1]:
            raise KeyError(f"{name!r} is not a recorded metric; recorded: {', '.join(self.rows[-1])}")
        return [row.get(name) for row in self.rows]

    def __len__(self) -> int:
        return len(self.rows)

    @property
    def steps(self) -> list[int]:
        return [row["step"] for row in self.rows]

    @property
    def val(self) -> tuple[list[int], list[float]]:
        """(steps, validation losses) of the evaluated steps."""
        pairs = [(row["step"], row["val_loss"]) for row in self.rows if row.get("val_loss") is not None]
        return [s for s, _ in pairs], [v for _, v in pairs]

    @property
    def final_val_loss(self) -> float | None:
        losses = self.val[1]
        return losses[-1] if losses else None

    def to_dict(self) -> dict:
        return {"rows": self.rows}

    @classmethod
    def from_dict(cls, state: dict) -> "History":
        return cls(state["rows"])

    def __repr__(self) -> str:
        last = self.rows[-1] if self.rows else {}
        return (f"History({len(self)} steps, last loss {last.get('loss', float('nan')):.3f}, "
                f"final val_loss {self.final_val_loss})")


class RoutingMeter:
    """Hooks every `Router` in a model; while `active`, sums expert load and dropped tokens."""

    def __init__(self, model: nn.Module):
        self.routers = [m for m in model.modules() if isinstance(m, Router)]
        self.active = False
        self._handles = [r.register_forward_hook(self._hook) for r in self.routers]
        self.reset()

    def _hook(self, router: Router, inputs, routing) -> None:
        if not self.active or not isinstance(routing, Routing):      # every router returns a Routing
            return
        i = self._index[id(router)]
        load = routing.expert_load.detach()                         # (n_experts,)
        self.load[i] = load if self.load[i] is None else self.load[i] + load
        self.dropped = self.dropped + routing.dropped_tokens.sum().detach()
        self.dropped_slots = self.dropped_slots + routing.dropped.sum().detach()

    def reset(self) -> None:
        self._index = {id(r): i for i, r in enumerate(self.routers)}
        self.load: list[torch.Tensor | None] = [None] * len(self.routers)
        self.dropped = torch.zeros((), dtype=torch.int64)
        self.dropped_slots = torch.zeros((), dtype=torch.int64)

    def read(self) -> tuple[list[list[int]], int, int]:
        """(expert_load per router, dropped tokens, dropped slots) since the last reset."""
        loads = [l.tolist() for l in self.load if l is not None]
        return loads, int(self.dropped), int(self.dropped_slots)

    def close(self) -> None:
        for handle in self._handles:
            handle.remove()
