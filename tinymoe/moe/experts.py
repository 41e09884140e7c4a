"""The experts: n_experts copies of the feed-forward, stacked into three weight tensors.

One expert is exactly the dense SwiGLU feed-forward (Shazeer 2020), with its own weights:

    expert_e(x) = W_down[e] (silu(W_gate[e] x) * W_up[e] x)

Stacking the copies gives three parameters, each in nn.Linear layout (out_features, in_features)
with the expert index in front, the layout Mixtral and Qwen2-MoE store:

    w_gate (n_experts, d_ff, d_model)    w_up (n_experts, d_ff, d_model)    w_down (n_experts, d_model, d_ff)

With ffn="relu" an expert is the original transformer's MLP, W_2 relu(W_1 x): `w_1` and `w_2`
are stored, and the dispatch functions receive w_gate=None, w_up=w_1, w_down=w_2.
Experts have no biases (Mixtral, Qwen2-MoE and DeepSeek have none), whatever config.bias says.
"""
from __future__ import annotations

import math

import torch
from torch import nn
from torch.nn import functional as F

from ..feedforward import relu_hidden, swiglu_hidden

__all__ = ["Experts", "expert_mlp"]


def expert_mlp(x: torch.Tensor, w_gate: torch.Tensor | None, w_up: torch.Tensor,
               w_down: torch.Tensor) -> torch.Tensor:
    """One expert on its tokens: (M, d_model) -> (M, d_model).

    w_gate, w_up (d_ff, d_model), w_down (d_model, d_ff); w_gate None means a ReLU expert."""
    hidden = relu_hidden(x, w_up) if w_gate is None else swiglu_hidden(x, w_gate, w_up)   # (M, d_ff)
    return F.linear(hidden, w_down)                                         # (M, d_model)


class Experts(nn.Module):
    """n_experts feed-forwards as stacked parameters; `weights()` hands them to a dispatch."""

    def __init__(self, n_experts: int, d_model: int, d_ff: int, ffn: str = "swiglu"):
        super().__init__()
        self.n_experts, self.d_model, self.d_ff, self.ffn = n_experts, d_model, d_ff, ffn
        # nn.Linear's default initialisation, expert by expert: U(-1/sqrt(fan_in), 1/sqrt(fan_in)).
        if ffn == "swiglu":
            self.w_gate = nn.Parameter(torch.empty(n_experts, d_ff, d_model))   # (E, d_ff, d_model)
            self.w_up = nn.Parameter(torch.empty(n_experts, d_ff, d_model))     # (E, d_ff, d_model)
            self.w_down = nn.Parameter(torch.empty(n_experts, d_model, d_ff))   # (E, d_model, d_ff)
            inputs = {"w_gate": d_model, "w_up": d_model, "w_down": d_ff}
        else:
            self.w_1 = nn.Parameter(torch.empty(n_experts, d_ff, d_model))      # (E, d_ff, d_model)
            self.w_2 = nn.Parameter(torch.empty(n_experts, d_model, d_ff))      # (E, d_model, d_ff)
            inputs = {"w_1": d_model, "w_2": d_ff}
        for name, fan_in in inputs.items():
            nn.init.uniform_(getattr(self, name), -1 / math.sqrt(fan_in), 1 / math.sqrt(fan_in))

    def weights(self) -> tuple[torch.Tensor | None, torch.Tensor, torch.Tensor]:
        """(w_gate, w_up, w_down) as the dispatch functions take them (w_gate None for ReLU)."""
        if self.ffn == "swiglu":
            return self.w_gate, self.w_up, self.w_down
        return None, self.w_1, self.w_2

    def named_weights(self) -> dict[str, torch.Tensor]:
        """The trace names of the stacked weights: W_gate, W_up, W_down (or W_1, W_2)."""
        if self.ffn == "swiglu":
            return {"W_gate": self.w_gate, "W_up": self.w_up, "W_down": self.w_down}
        return {"W_1": self.w_1, "W_2": self.w_2}

    def extra_repr(self) -> str:
        return f"n_experts={self.n_experts}, d_model={self.d_model}, d_ff={self.d_ff}, ffn={self.ffn!r}"
