"""A trace: the named intermediates of one forward pass, for sheets, heatmaps and tests.

Every module's `forward(..., trace=None)` calls `record(trace, "attn.scores", scores)`, after
`trace = scoped(trace, self.name)` puts its own name in front.
With no trace that call returns at once: nothing is recorded, nothing is copied. With a trace,
the tensor is detached and cloned (so later in-place ops cannot change what was recorded) and
stored under its name, in the order the forward pass made it.

Names are a public vocabulary shared by the notebooks, the sheets, the exercises and the tests:
`attn.q`, `attn.scores`, `attn.weights`, `moe.router_probs`, ... A model scopes its blocks,
so the second layer's scores are `layers.1.attn.scores`.

Each record also carries a role, which the sheets draw as the cells' border (the fill is the value):
  weight (trainable: red), bias (grey), input (gold), output (purple), activation (plain),
  buffer (precomputed, not trainable: RoPE's cos/sin; green).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

__all__ = ["Trace", "Record", "record", "scoped", "ROLES"]

ROLES = ("weight", "bias", "input", "output", "activation", "buffer")


@dataclass
class Record:
    name: str
    tensor: torch.Tensor
    role: str = "activation"

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self.tensor.shape)


class Trace:
    """An ordered mapping name -> Record. `trace["attn.q"]` gives the tensor."""

    def __init__(self, prefix: str = "", _store: dict | None = None):
        self.prefix = prefix
        self._store: dict[str, Record] = {} if _store is None else _store

    def scope(self, name: str) -> "Trace":
        """A view that records into the same store with `name.` in front of every key."""
        return Trace(f"{self.prefix}{name}.", self._store)

    def add(self, name: str, tensor: torch.Tensor, role: str = "activation") -> None:
        if role not in ROLES:
            raise ValueError(f"role={role!r}: must be one of {ROLES}")
        self._store[self.prefix + name] = Record(self.prefix + name, tensor.detach().clone(), role)

    # -- reading --------------------------------------------------------------------------
    def __getitem__(self, name: str) -> torch.Tensor:
        try:
            return self._store[name].tensor
        except KeyError:
            raise KeyError(f"{name!r} is not in this trace; recorded names: {', '.join(self._store)}") from None

    def __contains__(self, name: str) -> bool:
        return name in self._store

    def __iter__(self):
        return iter(self._store)

    def __len__(self) -> int:
        return len(self._store)

    def keys(self):
        return self._store.keys()

    def records(self) -> list[Record]:
        return list(self._store.values())

    def role(self, name: str) -> str:
        return self._store[name].role

    def shapes(self) -> dict[str, tuple[int, ...]]:
        """name -> shape, in recording order."""
        return {name: rec.shape for name, rec in self._store.items()}

    def __repr__(self) -> str:
        rows = "\n".join(f"  {n:<32} {tuple(r.shape)}  [{r.role}]" for n, r in self._store.items())
        return f"Trace({len(self)} records)\n{rows}"


def record(trace: Trace | None, name: str, tensor: torch.Tensor, role: str = "activation") -> None:
    """Record `tensor` under `name` if a trace was passed; with None, do nothing at all."""
    if trace is not None:
        trace.add(name, tensor, role)


def scoped(trace: Trace | None, name: str) -> Trace | None:
    """`trace.scope(name)` if a trace was passed; with None, None (so nothing is recorded below)."""
    return None if trace is None else trace.scope(name)
