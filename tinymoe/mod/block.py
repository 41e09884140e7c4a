"""The Mixture-of-Depths block: a router picks the tokens the wrapped decoder block computes.

Per sequence of T tokens, with k = floor(capacity * T) (Raposo et al. 2024, eq. 1):

    logits = x w_router + b                         (B, T)     one scalar per token
    idx    = the k largest logits, in sequence order (B, k)     (routing.select_tokens)
    x_r    = x[idx]                                 (B, k, d)  gathered with their true positions
    y_r    = block(x_r, positions=idx)              (B, k, d)  attention among the routed tokens only
    out    = x + r * (y - x)  on the routed rows,   r = sigmoid(logit) (or the logit itself, the paper's
             x                on the others              choice; or 1, to check against the plain block)

The block's update y - x is what r scales, never the whole residual: a skipped token and a
routed token with r = 0 both leave the block unchanged. Because r multiplies the update, the
language-model loss trains the router (top-k itself has no gradient). Capacity 1 with r = 1 is
the plain block, exactly.

At sampling time the top-k of a whole sequence is not known (it looks at future tokens); see
causal.py. `decide` chooses how tokens are picked:
    topk       the top-k of the sequence (training, and the reference decision)
    router     sigmoid(router logit) > 0.5, trained towards the top-k by an auxiliary BCE loss
    predictor  a small MLP on a stop-gradient copy of x, trained towards the top-k
With router/predictor each sequence routes its own number of tokens; the block runs on the
longest such set, the shorter ones padded and masked.

forward(x (B, T, d_model), trace=None, key_padding_mask=None) -> (out, aux_losses), like
DecoderBlock. aux_losses holds the inner block's (an MoE's: staged MoDE) plus
"mod_router_bce" (aux_loss_coef * BCE) and "mod_predictor_bce" (the predictor's BCE; its input
is detached, so it trains the predictor alone).

Trace names, under `mod.`: x, W_router, router_logits (B, T), in_top_k (B, T), routed (B, T),
idx (B, k), router_weights (B, k) = r, x_routed (B, k, d), y_routed (B, k, d), update (B, k, d),
predictor_logits (B, T); the inner block under `block.` (block.attn.weights, ...); then `out`.
"""
from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from ..block import DecoderBlock
from ..config import ConfigError, ModelConfig
from ..trace import Trace, record, scoped
from .causal import DECISIONS, Predictor
from .routing import gather_tokens, in_top_k, routed_tokens, scatter_tokens, select_tokens

__all__ = ["MoDBlock"]


class MoDBlock(nn.Module):
    """A DecoderBlock whose tokens are routed: only the top `capacity` share of each sequence runs it."""

    def __init__(self, config: ModelConfig, layer: int = 0):
        super().__init__()
        config.validate()
        if config.mod is None:
            raise ConfigError("mod", None, "a Mixture-of-Depths block needs config.mod = MoDConfig(...)")
        if config.attention == "native_sparse":
            raise ConfigError("attention", config.attention,
                              "a Mixture-of-Depths block runs attention on routed tokens at their true positions, "
                              "which native sparse attention does not take; use 'dense' or 'sliding_window'")
        self.config, self.layer = config, layer
        mod = config.mod
        self.capacity, self.router_weight = mod.capacity, mod.router_weight
        self.router = nn.Linear(config.d_model, 1)                         # w_router, b: one logit per token
        nn.init.normal_(self.router.weight, std=config.d_model ** -0.5)
        nn.init.zeros_(self.router.bias)
        self.predictor = Predictor(config.d_model, mod.predictor_hidden) if mod.predictor else None
        self.block = DecoderBlock(config, layer=layer)
        self.decide = "topk"

    def weights(self, logits: torch.Tensor) -> torch.Tensor:
        """r from the router logits: sigmoid(logit), the logit itself, or 1."""
        if self.router_weight == "sigmoid":
            return torch.sigmoid(logits)
        if self.router_weight == "logit":
            return logits
        return torch.ones_like(logits)

    def forward(self, x: torch.Tensor, trace: Trace | None = None,
                key_padding_mask: torch.Tensor | None = None):
        if x.dim() != 3 or x.shape[-1] != self.config.d_model:
            raise ValueError(f"x has shape {tuple(x.shape)}: expected (batch, seq_len, d_model={self.config.d_model})")
        if self.decide not in DECISIONS:
            raise ValueError(f"decide={self.decide!r}: must be one of {', '.join(map(repr, DECISIONS))}")
        B, T, d_model = x.shape
        outer = trace
        trace = scoped(trace, "mod")
        record(trace, "x", x, "input")
        record(trace, "W_router", self.router.weight, "weight")
        logits = self.router(x).squeeze(-1)                                # (B, T)
        real = None if key_padding_mask is None else key_padding_mask.bool()  # (B, T) True for real tokens
        ranked = logits if real is None else logits.masked_fill(~real, float("-inf"))
        k = routed_tokens(T, self.capacity)
        top_k = in_top_k(ranked.detach(), k)                               # (B, T) the training decision
        if real is not None:
            top_k = top_k & real
        record(trace, "router_logits", logits)
        record(trace, "in_top_k", top_k)

        aux_losses: dict[str, torch.Tensor] = {}
        target = top_k.float()
        weight = None if real is None else real.float()
        coef = self.config.mod.aux_loss_coef
        if coef > 0:
            aux_losses["mod_router_bce"] = coef * F.binary_cross_entropy_with_logits(logits, target, weight=weight)
        predictor_logits = None
        if self.predictor is not None:
            predictor_logits = self.predictor(x.detach())                  # (B, T) stop-gradient input
            record(trace, "predictor_logits", predictor_logits)
            aux_losses["mod_predictor_bce"] = F.binary_cross_entropy_with_logits(predictor_logits, target, weight=weight)

        # Which tokens run the block: idx (B, k_max) positions in sequence order, valid (B, k_max).
        if self.decide == "topk":
            idx = select_tokens(ranked, k)                                 # (B, k)
            valid = torch.ones_like(idx, dtype=torch.bool) if real is None else real.gather(1, idx)
        else:
            if self.decide == "predictor" and predictor_logits is None:
                raise ConfigError("mod.predictor", False, "decide='predictor' needs a predictor (mod.predictor=True)")
            scores = logits if self.decide == "router" else predictor_logits
            chosen = scores > 0                                            # sigmoid(score) > 0.5, token by token
            if real is not None:
                chosen = chosen & real
            k_max = max(int(chosen.sum(-1).max()), 1)
            # Chosen tokens first, each in sequence order; the tail of a short row is padding.
            order = torch.sort((~chosen).to(torch.int8), dim=-1, stable=True).indices  # (B, T)
            idx = order[:, :k_max]                                         # (B, k_max)
            valid = chosen.gather(1, idx)                                  # (B, k_max)
        routed = torch.zeros(B, T, dtype=torch.bool, device=x.device).scatter(1, idx, valid)  # (B, T)
        record(trace, "routed", routed)
        record(trace, "idx", idx)

        x_routed = gather_tokens(x, idx)                                   # (B, k, d_model)
        r = self.weights(logits).gather(1, idx)                            # (B, k)
        record(trace, "router_weights", r)
        record(trace, "x_routed", x_routed)
        inner = scoped(outer, "block")
        pad = None if bool(valid.all()) else valid
        y_routed, block_losses = self.block(x_routed, inner, key_padding_mask=pad, positions=idx)  # (B, k, d_model)
        aux_losses.update(block_losses)
        update = r[..., None].to(x.dtype) * (y_routed - x_routed)          # (B, k, d_model): r scales the update
        update = update * valid[..., None]                                 # padding slots change nothing
        record(trace, "y_routed", y_routed)
        record(trace, "update", update)
        out = scatter_tokens(x, idx, x_routed + update)                    # (B, T, d_model)
        record(outer, "out", out, "output")
        return out, aux_losses

    def extra_repr(self) -> str:
        return f"layer={self.layer}, capacity={self.capacity}, router_weight={self.router_weight!r}, decide={self.decide!r}"
