"""Causal sampling: top-k over the sequence looks at the future; the paper's two fixes.

Whether token t is in its sequence's top k depends on every other token's logit, including
those after t. In training the whole sequence is there; when sampling one token at a time the
future is not, so the decision a model was trained with cannot be made. Change a future token
and an earlier token's decision can flip: the top-k router is not causal.

Raposo et al. 2024 (sec. 3.5) give two fixes; both learn to predict, token by token, the top-k
decision (target: 1 if the token is in the top k, else 0), so sampling can decide with
sigmoid(logit) > 0.5, which reads token t alone:

1. an auxiliary binary cross-entropy loss on the router's own logits (`mod_router_bce`); it
   trains the router, so it nudges the language model too;
2. a small auxiliary MLP predictor that reads the router's input through a stop-gradient
   (`x.detach()`), trained with the same BCE (`mod_predictor_bce`): it cannot change the
   language model at all.

`decision_agreement` measures how often each fix agrees with the top-k decision, the figure
the paper reports (about 97-99% for the predictor).
"""
from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from ..trace import Trace

__all__ = ["DECISIONS", "Predictor", "set_decision", "decision_agreement"]

DECISIONS = ("topk", "router", "predictor")


class Predictor(nn.Module):
    """A small MLP, d_model -> hidden -> 1: the logit of "this token is in the top k"."""

    def __init__(self, d_model: int, hidden: int = 8):
        super().__init__()
        self.w_in = nn.Linear(d_model, hidden)
        self.w_out = nn.Linear(hidden, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x (B, T, d_model), already detached by the caller -> (B, T) logits."""
        return self.w_out(F.silu(self.w_in(x))).squeeze(-1)


def _mod_blocks(model: nn.Module):
    from .block import MoDBlock
    return [(name, m) for name, m in model.named_modules() if isinstance(m, MoDBlock)]


def set_decision(model: nn.Module, decide: str) -> nn.Module:
    """Make every MoD block of `model` pick its tokens by `decide`: topk | router | predictor."""
    if decide not in DECISIONS:
        raise ValueError(f"decide={decide!r}: must be one of {', '.join(map(repr, DECISIONS))}")
    blocks = _mod_blocks(model)
    if not blocks:
        raise ValueError("this model has no Mixture-of-Depths block (config.mod is None, or routes no layer)")
    for _, block in blocks:
        block.decide = decide
    return model


@torch.no_grad()
def decision_agreement(model: nn.Module, tokens: torch.Tensor) -> dict[str, dict[str, float]]:
    """How often the causal decisions agree with the top-k decision, per MoD layer and overall.

    Runs `model` on `tokens` (B, T) with top-k routing and compares, token by token,
    "router logit > 0" and "predictor logit > 0" with "in the top k":
    {"layers.1": {"router": 0.97, "predictor": 0.98, "routed_share": 0.125, "always_skip": 0.875},
     ..., "all": {...}}. Mind "always_skip": at 12.5% capacity a decider that never routes agrees
    87.5% of the time, so that is the figure to beat."""
    decisions = {name: block.decide for name, block in _mod_blocks(model)}
    was_training = model.training
    set_decision(model.eval(), "topk")
    try:
        trace = Trace()
        model(tokens, trace=trace)
    finally:
        for name, block in _mod_blocks(model):
            block.decide = decisions[name]
        model.train(was_training)
    result, totals = {}, {"router": [0, 0], "predictor": [0, 0], "routed_share": [0, 0]}
    for name in decisions:
        target = trace[f"{name}.mod.in_top_k"]                             # (B, T)
        row = {"router": float(((trace[f"{name}.mod.router_logits"] > 0) == target).float().mean())}
        totals["router"][0] += int(((trace[f"{name}.mod.router_logits"] > 0) == target).sum())
        totals["router"][1] += target.numel()
        if f"{name}.mod.predictor_logits" in trace:
            agree = (trace[f"{name}.mod.predictor_logits"] > 0) == target
            row["predictor"] = float(agree.float().mean())
            totals["predictor"][0] += int(agree.sum())
            totals["predictor"][1] += target.numel()
        row["routed_share"] = float(target.float().mean())
        totals["routed_share"][0] += int(target.sum())
        totals["routed_share"][1] += target.numel()
        result[name] = row
    result["all"] = {key: hits / count for key, (hits, count) in totals.items() if count}
    for row in result.values():                  # the agreement of "never route", to beat
        row["always_skip"] = 1 - row["routed_share"]
    return result
