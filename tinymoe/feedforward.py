"""The position-wise feed-forward network: the same small MLP applied to every token.

ReLU MLP (the original transformer):   out = W_2 relu(W_1 x)
SwiGLU (Llama, Mixtral, Qwen):         out = W_down (silu(W_gate x) * W_up x)

SwiGLU has three matrices instead of two; at the same parameter count its d_ff is about 2/3 of
the ReLU one. An MoE expert is exactly one of these.

forward returns (out, aux_losses), what the MoE layer returns, with no auxiliary losses: the
decoder block treats a dense and an MoE feed-forward alike.
"""
from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from .config import ModelConfig, whole_number
from .trace import Trace, record, scoped

__all__ = ["MLP", "SwiGLU", "make_feedforward", "relu_hidden", "swiglu_hidden"]


def _check(d_model, d_ff) -> None:
    whole_number("d_model", d_model)
    whole_number("d_ff", d_ff)


def relu_hidden(x: torch.Tensor, w_1: torch.Tensor, b_1: torch.Tensor | None = None) -> torch.Tensor:
    """relu(W_1 x): the ReLU MLP's hidden layer, (..., d_model) -> (..., d_ff)."""
    return F.relu(F.linear(x, w_1, b_1))


def swiglu_hidden(x: torch.Tensor, w_gate: torch.Tensor, w_up: torch.Tensor,
                  b_gate: torch.Tensor | None = None, b_up: torch.Tensor | None = None) -> torch.Tensor:
    """silu(W_gate x) * W_up x: SwiGLU's hidden layer, (..., d_model) -> (..., d_ff).
    The dense feed-forward and every MoE expert compute it here."""
    return F.silu(F.linear(x, w_gate, b_gate)) * F.linear(x, w_up, b_up)


class MLP(nn.Module):
    """ReLU feed-forward: d_model -> d_ff -> d_model."""

    def __init__(self, d_model: int, d_ff: int, bias: bool = False, name: str = "ffn"):
        super().__init__()
        _check(d_model, d_ff)
        self.name = name
        self.w_1 = nn.Linear(d_model, d_ff, bias=bias)
        self.w_2 = nn.Linear(d_ff, d_model, bias=bias)

    def forward(self, x: torch.Tensor, trace: Trace | None = None) -> tuple[torch.Tensor, dict]:
        """x (..., d_model) -> (out (..., d_model), {}): no auxiliary losses."""
        trace = scoped(trace, self.name)
        hidden = relu_hidden(x, self.w_1.weight, self.w_1.bias)                 # (..., d_ff)
        out = self.w_2(hidden)                           # (..., d_model)
        record(trace, "W_1", self.w_1.weight, "weight")
        record(trace, "hidden", hidden)
        record(trace, "W_2", self.w_2.weight, "weight")
        record(trace, "out", out)
        return out, {}


class SwiGLU(nn.Module):
    """Gated feed-forward: W_down (silu(W_gate x) * W_up x), after Shazeer 2020."""

    def __init__(self, d_model: int, d_ff: int, bias: bool = False, name: str = "ffn"):
        super().__init__()
        _check(d_model, d_ff)
        self.name = name
        self.w_gate = nn.Linear(d_model, d_ff, bias=bias)
        self.w_up = nn.Linear(d_model, d_ff, bias=bias)
        self.w_down = nn.Linear(d_ff, d_model, bias=bias)

    def forward(self, x: torch.Tensor, trace: Trace | None = None) -> tuple[torch.Tensor, dict]:
        """x (..., d_model) -> (out (..., d_model), {}): no auxiliary losses."""
        trace = scoped(trace, self.name)
        hidden = swiglu_hidden(x, self.w_gate.weight, self.w_up.weight,
                               self.w_gate.bias, self.w_up.bias)                # (..., d_ff)
        out = self.w_down(hidden)                        # (..., d_model)
        record(trace, "W_gate", self.w_gate.weight, "weight")
        record(trace, "W_up", self.w_up.weight, "weight")
        record(trace, "hidden", hidden)
        record(trace, "W_down", self.w_down.weight, "weight")
        record(trace, "out", out)
        return out, {}


def make_feedforward(config: ModelConfig, d_ff: int | None = None, name: str = "ffn") -> nn.Module:
    """The dense feed-forward the config asks for (SwiGLU or ReLU MLP)."""
    d_ff = config.ff_dim if d_ff is None else d_ff
    cls = SwiGLU if config.ffn == "swiglu" else MLP
    return cls(config.d_model, d_ff, bias=config.bias, name=name)
