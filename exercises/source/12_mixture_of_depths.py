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
# # Exercise 12: Mixture-of-Depths, routing tokens around a block
#
# In a Mixture-of-Depths block (Raposo et al., 2024) a router gives every token one logit; per sequence
# only the `k` tokens with the largest logits go through the block, and the others skip it on the
# residual stream. You write the two halves around the block (gather, then scatter), then fix a draft of
# the whole step that has three classic bugs in it. The checks compare with `tinymoe.mod`.

# %%
import torch

from tinymoe.grading import exercise

ex = exercise("12_mixture_of_depths")
ex


# %% [markdown]
# ## 1. Gather the routed tokens
#
# `x` is `(batch, seq_len, d_model)` and `logits` is `(batch, seq_len)`. Per sequence, pick the `k` tokens
# with the largest logits and return `(idx, x_routed)`: `idx` `(batch, k)` int64, the chosen positions in
# sequence order (ascending), and `x_routed` `(batch, k, d_model)`, their rows of `x`.

# %%
def route_and_gather(x: torch.Tensor, logits: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(idx, x_routed): each sequence's top-k tokens in sequence order, and their rows of x."""
    ### BEGIN SOLUTION
    idx = torch.topk(logits, k, dim=-1).indices.sort(dim=-1).values       # (B, k) in sequence order
    x_routed = x.gather(1, idx[..., None].expand(-1, -1, x.shape[-1]))     # (B, k, d_model)
    return idx, x_routed
    ### END SOLUTION
    raise NotImplementedError("see notebooks/12_mixture_of_depths.ipynb, section: Which tokens go through: gather")


# %%
ex.route_and_gather.check(route_and_gather)

# %% [markdown]
# Stuck? `ex.route_and_gather.hint()`.

# %% [markdown]
# ## 2. Scatter the update back
#
# The block turned the routed rows `x_routed` into `y_routed` (both `(batch, k, d_model)`); `r` `(batch, k)`
# is each routed token's router weight. Return `(batch, seq_len, d_model)`: a routed token's row becomes
# `x + r * (y - x)` (r scales the block's update), every other row is copied from `x` unchanged.

# %%
def scatter_update(x: torch.Tensor, idx: torch.Tensor, r: torch.Tensor, y_routed: torch.Tensor) -> torch.Tensor:
    """x with the routed rows replaced by x + r * (y - x)."""
    ### BEGIN SOLUTION
    rows = idx.unsqueeze(-1).expand(-1, -1, x.shape[-1])                  # (B, k, d_model)
    before = torch.gather(x, 1, rows)
    return x.scatter(1, rows, before + r.unsqueeze(-1) * (y_routed - before))
    ### END SOLUTION
    raise NotImplementedError("see notebooks/12_mixture_of_depths.ipynb, section: The routed rows' update, scaled by r: scatter")


# %%
ex.scatter_update.check(scatter_update)

# %% [markdown]
# Stuck? `ex.scatter_update.hint()`.

# %% [markdown]
# ## 3. Find the bugs
#
# A colleague wrote the whole step. It runs, its shapes are right, and it is wrong in three places. Each
# is a mistake people really make with Mixture-of-Depths. `block(x, positions=...)` is a tinymoe
# `DecoderBlock` (RoPE attention); it returns `(y, aux_losses)`, and `positions` are the tokens' positions
# in the sequence.

# %%
def draft_mod_block_step(x, logits, k, block):
    idx = torch.topk(logits, k, dim=-1).indices.argsort(dim=-1)            # which tokens, in order
    index = idx[..., None].expand(-1, -1, x.shape[-1])
    x_routed = x.gather(1, index)
    y, _ = block(x_routed)                                                 # the block on the routed tokens
    r = torch.sigmoid(logits.gather(1, idx))[..., None]
    return x.scatter(1, index, r * y)                                      # the routed rows, updated


# %% [markdown]
# Write `mod_block_step`, the draft with its bugs fixed (same arguments, same output shape).

# %%
def mod_block_step(x: torch.Tensor, logits: torch.Tensor, k: int, block) -> torch.Tensor:
    """One Mixture-of-Depths step: gather, the block at true positions, r-scaled update, scatter."""
    ### BEGIN SOLUTION
    positions = torch.topk(logits, k, dim=-1).indices.sort(dim=-1).values  # positions, not ranks
    rows = positions.unsqueeze(-1).expand(-1, -1, x.shape[-1])            # (B, k, d_model)
    routed = torch.gather(x, 1, rows)
    y, _ = block(routed, positions=positions)                              # their true positions
    weight = logits.gather(1, positions).sigmoid().unsqueeze(-1)           # (B, k, 1)
    return x.scatter(1, rows, routed + weight * (y - routed))              # r scales the update only
    ### END SOLUTION
    raise NotImplementedError("see notebooks/12_mixture_of_depths.ipynb, sections: Which tokens go through: gather; The block runs among the routed tokens, at their true positions; The routed rows' update, scaled by r: scatter")


# %%
ex.mod_block_step.check(mod_block_step)

# %% [markdown]
# Stuck? `ex.mod_block_step.hint()`. Once it passes: which of the three bugs would a loss curve show, and
# which would train happily while quietly teaching the model something else?
