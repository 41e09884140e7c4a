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
# # Exercise 03: rotary position embedding (RoPE)
#
# RoPE rotates each pair of a query's (or key's) dimensions by an angle proportional to its position, so
# the dot product of a query at m with a key at n depends only on m - n. Which dimensions form a pair is
# a convention: here, as in Llama under Hugging Face, dimension i pairs with i + head_dim/2 ("rotate
# half"). The checks compare with tinymoe's `rotate_half` and `RotaryEmbedding`.

# %%
import torch

from tinymoe.grading import exercise

ex = exercise("03_rope")
ex


# %% [markdown]
# ## 1. The quarter turn
#
# Split the last axis into halves `x1` and `x2` (each `head_dim/2` long). Turning every pair
# `(x1[i], x2[i])` a quarter turn gives `(-x2[i], x1[i])`, so the result is `(-x2, x1)` joined back
# together. Applying it twice must give `-x`.

# %%
def rotate_half(x: torch.Tensor) -> torch.Tensor:
    """(x1, x2) -> (-x2, x1) on the two halves of the last axis."""
    ### BEGIN SOLUTION
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat((-x2, x1), dim=-1)
    ### END SOLUTION
    raise NotImplementedError("see notebooks/03_position_rope.ipynb, section: Which dimensions form a pair: rotate-half or interleaved")


# %%
ex.rotate_half.check(rotate_half)

# %% [markdown]
# Stuck? `ex.rotate_half.hint()`.

# %% [markdown]
# ## 2. Rotating every position
#
# `x` is `(..., seq_len, head_dim)`, positions 0 .. seq_len - 1. Pair i turns at frequency
# `theta_i = base^(-2i / head_dim)` (i = 0 .. head_dim/2 - 1), so at position m its angle is `m * theta_i`.
# With rotate-half both members of pair i sit at i and i + head_dim/2, so the `(seq_len, head_dim)` angle
# table repeats the `head_dim/2` angles twice side by side. Then `x * cos + rotate_half(x) * sin`.
# The tables are precomputed from sizes alone: nothing here is trainable.

# %%
def rope(x: torch.Tensor, base: float = 10000.0) -> torch.Tensor:
    """Rotate x (..., seq_len, head_dim) by the RoPE angles of positions 0 .. seq_len - 1."""
    ### BEGIN SOLUTION
    seq_len, head_dim = x.shape[-2], x.shape[-1]
    theta = base ** (-torch.arange(0, head_dim, 2, dtype=torch.float64) / head_dim)    # (head_dim/2,)
    angles = torch.arange(seq_len, dtype=torch.float64)[:, None] * theta[None, :]      # (seq_len, head_dim/2)
    angles = torch.cat((angles, angles), dim=-1)                                        # (seq_len, head_dim)
    cos, sin = angles.cos().to(x.dtype), angles.sin().to(x.dtype)
    return x * cos + rotate_half(x) * sin
    ### END SOLUTION
    raise NotImplementedError("see notebooks/03_position_rope.ipynb, section: RoPE: rotate q and k, pair by pair")


# %%
ex.rope.check(rope)

# %% [markdown]
# Stuck? `ex.rope.hint()`. Once it passes: rotate one vector to positions 3 and 5 and another to 10 and 12,
# and compare the two dot products.
