"""Shared experts: feed-forwards every token uses, beside the routed ones.

DeepSeekMoE (Dai et al. 2024) and Qwen2-MoE keep a few experts out of the routing: every token
runs them, so common knowledge lives there once instead of being copied into every routed
expert, and the routed experts are free to specialise.

    out = routed(x) + shared(x)                       DeepSeek
    out = routed(x) + sigmoid(w . x) * shared(x)      Qwen2-MoE (shared_expert_gate=True)

n_shared_experts experts of hidden size d_ff_expert, all always on, are one feed-forward of
hidden size n_shared_experts * d_ff_expert (their hidden units side by side, outputs summed),
which is how both models store them.
"""
from __future__ import annotations

import torch
from torch import nn

from ..feedforward import MLP, SwiGLU
from ..trace import Trace, record, scoped

__all__ = ["SharedExperts"]


class SharedExperts(nn.Module):
    """n_shared_experts always-on experts as one feed-forward, with an optional sigmoid gate."""

    def __init__(self, d_model: int, d_ff_expert: int, n_shared_experts: int, ffn: str = "swiglu",
                 gated: bool = False, name: str = "shared"):
        super().__init__()
        self.name = name
        cls = SwiGLU if ffn == "swiglu" else MLP
        self.ffn = cls(d_model, n_shared_experts * d_ff_expert, bias=False, name="ffn")
        self.gate = nn.Linear(d_model, 1, bias=False) if gated else None  # w: (1, d_model)

    def forward(self, x: torch.Tensor, trace: Trace | None = None) -> torch.Tensor:
        trace = scoped(trace, self.name)
        out, _ = self.ffn(x, trace)                                          # (N, d_model); a dense ffn has no losses
        if self.gate is not None:
            gate = torch.sigmoid(self.gate(x))                               # (N, 1)
            record(trace, "W_shared_gate", self.gate.weight, "weight")
            record(trace, "gate", gate)
            out = gate * out                                                 # (N, d_model)
        record(trace, "out", out)
        return out
