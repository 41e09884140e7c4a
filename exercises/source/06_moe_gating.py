# ---
# jupyter:
#   jupytext:
#     formats: ipynb,py:percent
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# # Exercise 06: MoE gating, capacity and dropped tokens
#
# A Mixture-of-Experts layer sends each token to a few experts chosen by a router, weighted by gates.
# You write the top-k gates, the expert capacity of the Switch Transformer, and a Switch (top-1) layer
# in which tokens past an expert's capacity are dropped. The checks compare with `tinymoe.moe`.

# %%
import math

import torch
from torch.nn import functional as F

from tinymoe.grading import exercise

ex = exercise("06_moe_gating")
ex


# %% [markdown]
# ## 1. Top-k gates
#
# `logits` is `(n_tokens, n_experts)`. The router's probabilities are the softmax over the experts; each
# token keeps its `top_k` most probable experts, best first. With `renormalize=True` the k kept gates are
# rescaled to sum to 1 (Mixtral); with `renormalize=False` each keeps its share of the full softmax
# (Qwen2-MoE's default). Return `(expert_ids, gates)`: int64 and float32, both `(n_tokens, top_k)`.

# %%
def top_k_gating(logits: torch.Tensor, top_k: int, renormalize: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """(expert_ids, gates) of each token's top_k experts, best first."""
    ### BEGIN SOLUTION
    probs = F.softmax(logits.float(), dim=-1)                 # (n_tokens, n_experts)
    gates, expert_ids = torch.topk(probs, top_k, dim=-1)      # (n_tokens, top_k) each
    if renormalize:
        gates = gates / gates.sum(dim=-1, keepdim=True)
    return expert_ids, gates
    ### END SOLUTION
    raise NotImplementedError("see notebooks/06_moe_gating.ipynb, section: Keep only the top-k gates: the layer becomes sparse")


# %%
ex.top_k_gating.check(top_k_gating)

# %% [markdown]
# Stuck? `ex.top_k_gating.hint()`.

# %% [markdown]
# ## 2. Expert capacity
#
# Hardware wants fixed shapes, so every expert gets the same number of slots (Fedus et al., 2021):
# `capacity = ceil(capacity_factor * tokens / n_experts)`. A factor of 1.0 is exactly enough for a
# perfectly balanced batch; 1.25 leaves 25% slack. Return an `int`.

# %%
def expert_capacity(tokens: int, n_experts: int, capacity_factor: float) -> int:
    """Slots per expert."""
    ### BEGIN SOLUTION
    return math.ceil(capacity_factor * tokens / n_experts)
    ### END SOLUTION
    raise NotImplementedError("see notebooks/06_moe_gating.ipynb, section: Switch: top-1, and a capacity per expert")


# %%
ex.expert_capacity.check(expert_capacity)

# %% [markdown]
# Stuck? `ex.expert_capacity.hint()`.

# %% [markdown]
# ## 3. A Switch layer that drops tokens
#
# `x` is `(n_tokens, d_model)`, `logits` is `(n_tokens, n_experts)` and `experts` is a list of
# `n_experts` functions, each mapping `(m, d_model)` to `(m, d_model)`. Each token goes to its most
# probable expert, with its softmax probability as the gate. An expert takes at most `capacity` tokens,
# the earliest ones; the rest are dropped. The output of a kept token is `gate * expert(x)`; the output
# of a dropped token is zero (the residual connection outside the layer carries it on).

# %%
def switch_moe(x: torch.Tensor, logits: torch.Tensor, experts: list, capacity_factor: float) -> torch.Tensor:
    """Top-1 MoE with expert capacity: (n_tokens, d_model) -> (n_tokens, d_model)."""
    ### BEGIN SOLUTION
    n_tokens, n_experts = logits.shape
    gate, choice = F.softmax(logits.float(), dim=-1).max(dim=-1)     # (n_tokens,) each
    seats = expert_capacity(n_tokens, n_experts, capacity_factor)
    out = torch.zeros_like(x)                                       # dropped tokens stay zero
    for e in range(n_experts):
        tokens = torch.where(choice == e)[0][:seats]                # the earliest tokens that fit
        if len(tokens):
            out[tokens] = gate[tokens, None] * experts[e](x[tokens])
    return out
    ### END SOLUTION
    raise NotImplementedError("see notebooks/06_moe_gating.ipynb, section: Switch: top-1, and a capacity per expert")


# %%
ex.switch_moe.check(switch_moe)

# %% [markdown]
# Stuck? `ex.switch_moe.hint()`. Once it passes: with capacity factor 1.0, how many tokens are dropped when
# every token prefers the same expert?
