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
# # Exercise 01: attention by hand
#
# You write two functions: a softmax that never overflows, then causal scaled dot-product attention.
# Each check runs your function on hidden inputs drawn fresh every time (sizes and values you have not
# seen, edge cases included) and compares it with tinymoe's own implementation. It tells you which step
# failed (runs at all, output shape, dtype, properties, values) and, for a known slip, a hint; it never
# shows the expected numbers.

# %%
import math

import torch

from tinymoe.grading import exercise

ex = exercise("01_attention_by_hand")
ex

# %% [markdown]
# ## 1. Safe softmax
#
# `softmax(x)_j = exp(x_j) / sum_i exp(x_i)` along the last axis, so every row sums to 1. Written
# literally it breaks: `exp(1000)` is `inf` in float32 and `exp(12)` already overflows float16.
# Subtracting each row's maximum first changes nothing mathematically and makes every exponent <= 0.
# Scores of `-inf` (masked keys) must get weight 0. Keep the input's dtype.

# %%
def safe_softmax(x: torch.Tensor) -> torch.Tensor:
    """Softmax over the last axis of x (any shape), computed as exp(x - max) / sum(exp(x - max))."""
    ### BEGIN SOLUTION
    row_max = x.amax(dim=-1, keepdim=True)        # (..., 1)
    e = torch.exp(x - row_max)                    # every exponent <= 0
    return e / e.sum(dim=-1, keepdim=True)
    ### END SOLUTION
    raise NotImplementedError("see notebooks/01_attention_by_hand.ipynb, section: The safe softmax: subtract the row's maximum first")


# %%
ex.safe_softmax.check(safe_softmax)

# %% [markdown]
# Stuck? `ex.safe_softmax.hint()` gives a hint; run it again for the next one.

# %% [markdown]
# ## 2. Causal scaled dot-product attention
#
# `q` is `(..., T_q, d_k)`, `k` is `(..., T_k, d_k)` and `v` is `(..., T_k, d_v)`; `d_v` need not equal
# `d_k`. The scores `q k^T / sqrt(d_k)` are `(..., T_q, T_k)`: row i holds query i against every key.
# With `causal=True` (the queries and keys are the same positions) query i may see keys 0..i only:
# hide the others with `-inf` before the softmax. Return the output `(..., T_q, d_v)`.

# %%
def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, causal: bool = True) -> torch.Tensor:
    """softmax(q k^T / sqrt(d_k), hiding future keys when causal) @ v."""
    ### BEGIN SOLUTION
    d_k = q.shape[-1]
    scores = q @ k.transpose(-2, -1) / math.sqrt(d_k)                 # (..., T_q, T_k)
    if causal:
        keep = torch.ones(q.shape[-2], k.shape[-2], dtype=torch.bool).tril()
        scores = scores.masked_fill(~keep, float("-inf"))
    return safe_softmax(scores) @ v                                   # (..., T_q, d_v)
    ### END SOLUTION
    raise NotImplementedError("see notebooks/01_attention_by_hand.ipynb, sections: Scores: every query against every key; The causal mask: no peeking ahead")


# %%
ex.attention.check(attention)

# %% [markdown]
# Stuck? `ex.attention.hint()`. When both checks say correct, try `attention` on a sequence whose scores are
# in the hundreds with a softmax that does not subtract the max, and see what comes out.
