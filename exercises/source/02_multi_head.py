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
# # Exercise 02: multi-head attention
#
# Several heads attend side by side, each with its own queries, keys and values; their outputs are
# concatenated and one output projection `W_o` maps the concatenation back to `d_model`. You write the
# last step first (for heads of unequal value sizes, as in the sheet), then a whole causal multi-head
# attention from its four weight matrices. The checks compare with tinymoe's `MultiHeadAttention`.

# %%
import math

import torch

from tinymoe.grading import exercise

ex = exercise("02_multi_head")
ex


# %% [markdown]
# ## 1. Concatenate the heads, then project
#
# `heads` is a list of the heads' outputs, head h shaped `(batch, seq_len, v_h)`; the value sizes `v_h`
# may differ (the sheet has 5, 3 and 3). Put them side by side, head 0 first, into
# `(batch, seq_len, sum of v_h)`. `W_o` is stored like `nn.Linear`'s weight, `(d_model, sum of v_h)`, so
# the output is `concat @ W_o.T`, shaped `(batch, seq_len, d_model)`.

# %%
def combine_heads(heads: list[torch.Tensor], W_o: torch.Tensor) -> torch.Tensor:
    """concat(head_0, ..., head_{H-1}) along the features, then the output projection W_o."""
    ### BEGIN SOLUTION
    concat = torch.cat(heads, dim=-1)             # (batch, seq_len, sum of value sizes)
    return concat @ W_o.T                         # (batch, seq_len, d_model)
    ### END SOLUTION
    raise NotImplementedError("see notebooks/02_multi_head_attention.ipynb, sections: Concatenate the heads, then project back; Heads of unequal value size")


# %%
ex.combine_heads.check(combine_heads)

# %% [markdown]
# Stuck? `ex.combine_heads.hint()`.

# %% [markdown]
# ## 2. Causal multi-head attention
#
# `x` is `(batch, seq_len, d_model)`. `W_q` and `W_k` are `(n_heads * head_dim, d_model)`, `W_v` is
# `(n_heads * v_dim, d_model)` and `W_o` is `(d_model, n_heads * v_dim)`, all without bias. Head h owns
# the h-th block of `head_dim` columns of `x @ W_q.T` (and likewise for k and v). Each head runs causal
# scaled dot-product attention with its own `head_dim`; then combine the heads as above.

# %%
def multi_head_attention(x: torch.Tensor, W_q: torch.Tensor, W_k: torch.Tensor, W_v: torch.Tensor,
                         W_o: torch.Tensor, n_heads: int) -> torch.Tensor:
    """Causal multi-head attention: (batch, seq_len, d_model) -> (batch, seq_len, d_model)."""
    ### BEGIN SOLUTION
    B, T, _ = x.shape
    head_dim, v_dim = W_q.shape[0] // n_heads, W_v.shape[0] // n_heads
    q = (x @ W_q.T).view(B, T, n_heads, head_dim).transpose(1, 2)   # (B, n_heads, T, head_dim)
    k = (x @ W_k.T).view(B, T, n_heads, head_dim).transpose(1, 2)   # (B, n_heads, T, head_dim)
    v = (x @ W_v.T).view(B, T, n_heads, v_dim).transpose(1, 2)      # (B, n_heads, T, v_dim)
    scores = q @ k.transpose(-2, -1) / math.sqrt(head_dim)          # (B, n_heads, T, T)
    keep = torch.ones(T, T, dtype=torch.bool).tril()
    weights = torch.softmax(scores.masked_fill(~keep, float("-inf")), dim=-1)
    out = weights @ v                                               # (B, n_heads, T, v_dim)
    concat = out.transpose(1, 2).reshape(B, T, n_heads * v_dim)     # heads side by side
    return concat @ W_o.T                                           # (B, T, d_model)
    ### END SOLUTION
    raise NotImplementedError("see notebooks/02_multi_head_attention.ipynb, section: Three heads, every number")


# %%
ex.multi_head_attention.check(multi_head_attention)

# %% [markdown]
# Stuck? `ex.multi_head_attention.hint()`. Then ask: which of the four matrices would grow if you added one
# more head, and which would not change at all if the vocabulary doubled?
