"""A naive Mixture-of-Depths block: one token at a time, for testing the batched one.

For each sequence and each token t separately:
  1. t is routed if fewer than k tokens of its sequence have a larger router logit;
  2. if routed, run the wrapped block on the routed tokens up to and including t (at their
     true positions), take t's row y_t, and return x_t + r_t * (y_t - x_t);
  3. else return x_t.
No gather, no scatter, no sort: a different road to the same numbers (step 2 relies on the
block being causal, which is the point: a routed token sees only earlier routed tokens).
"""
from __future__ import annotations

import torch

from .routing import routed_tokens

__all__ = ["mod_block_reference"]


@torch.no_grad()
def mod_block_reference(mod_block, x: torch.Tensor) -> torch.Tensor:
    """The MoDBlock's output on x (B, T, d_model) with top-k routing, computed token by token."""
    B, T, _ = x.shape
    k = routed_tokens(T, mod_block.capacity)
    out = x.clone()
    for b in range(B):
        logits = mod_block.router(x[b]).squeeze(-1)                        # (T,)
        routed = [t for t in range(T) if int((logits > logits[t]).sum()) < k]
        for t in routed:
            prefix = torch.tensor([s for s in routed if s <= t])           # routed tokens up to t
            y, _ = mod_block.block(x[b, prefix][None], positions=prefix[None])  # (1, len(prefix), d_model)
            r = mod_block.weights(logits[t])
            out[b, t] = x[b, t] + r * (y[0, -1] - x[b, t])
    return out
