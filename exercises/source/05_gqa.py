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
# # Exercise 05: grouped-query attention
#
# Grouped-query attention (Ainslie et al., 2023) keeps `n_heads` query heads but only `n_kv_heads`
# key/value heads. Each key/value head serves a group of `group_size = n_heads // n_kv_heads`
# consecutive query heads: query head h reads kv head `h // group_size`. One kv head is multi-query
# attention, one per query head is ordinary multi-head attention. The checks compare with tinymoe's
# `MultiHeadAttention` built with `n_kv_heads`.

# %%
import math

import torch

from tinymoe.grading import exercise

ex = exercise("05_gqa")
ex


# %% [markdown]
# ## 1. Expanding the key/value heads
#
# `kv` is `(batch, n_kv_heads, seq_len, head_dim)`. Return `(batch, n_heads, seq_len, head_dim)` in which
# query head h holds a copy of kv head `h // group_size`: with 2 kv heads and 4 query heads the order is
# kv heads 0, 0, 1, 1.

# %%
def repeat_kv(kv: torch.Tensor, n_heads: int) -> torch.Tensor:
    """Repeat each of the n_kv_heads heads (axis 1) for its group of n_heads // n_kv_heads query heads."""
    ### BEGIN SOLUTION
    group_size = n_heads // kv.shape[1]
    return kv.repeat_interleave(group_size, dim=1)                   # kv heads 0, 0, 1, 1, ...
    ### END SOLUTION
    raise NotImplementedError("see notebooks/05_grouped_query_attention.ipynb, section: Grouped-query attention: two query heads per key/value head")


# %%
ex.repeat_kv.check(repeat_kv)

# %% [markdown]
# Stuck? `ex.repeat_kv.hint()`.

# %% [markdown]
# ## 2. Causal grouped-query attention
#
# As multi-head attention in exercise 02, except that `W_k` and `W_v` project to `n_kv_heads` heads:
# `W_q` is `(n_heads * head_dim, d_model)`, `W_k` is `(n_kv_heads * head_dim, d_model)`, `W_v` is
# `(n_kv_heads * v_dim, d_model)`, `W_o` is `(d_model, n_heads * v_dim)`. Expand k and v with your
# `repeat_kv`, attend causally per query head, concatenate the heads and project.

# %%
def grouped_query_attention(x: torch.Tensor, W_q: torch.Tensor, W_k: torch.Tensor, W_v: torch.Tensor,
                            W_o: torch.Tensor, n_heads: int, n_kv_heads: int) -> torch.Tensor:
    """Causal GQA: (batch, seq_len, d_model) -> (batch, seq_len, d_model)."""
    ### BEGIN SOLUTION
    B, T, _ = x.shape
    head_dim, v_dim = W_q.shape[0] // n_heads, W_v.shape[0] // n_kv_heads
    q = (x @ W_q.T).view(B, T, n_heads, head_dim).transpose(1, 2)                   # (B, n_heads, T, head_dim)
    k = repeat_kv((x @ W_k.T).view(B, T, n_kv_heads, head_dim).transpose(1, 2), n_heads)
    v = repeat_kv((x @ W_v.T).view(B, T, n_kv_heads, v_dim).transpose(1, 2), n_heads)
    scores = q @ k.transpose(-2, -1) / math.sqrt(head_dim)                          # (B, n_heads, T, T)
    keep = torch.ones(T, T, dtype=torch.bool).tril()
    weights = torch.softmax(scores.masked_fill(~keep, float("-inf")), dim=-1)
    concat = (weights @ v).transpose(1, 2).reshape(B, T, n_heads * v_dim)           # heads side by side
    return concat @ W_o.T
    ### END SOLUTION
    raise NotImplementedError("see notebooks/05_grouped_query_attention.ipynb, section: Grouped-query attention: two query heads per key/value head")


# %%
ex.grouped_query_attention.check(grouped_query_attention)

# %% [markdown]
# Stuck? `ex.grouped_query_attention.hint()`. Once it passes: how many fewer bytes does the KV cache need
# with 2 kv heads instead of 8, and which weight matrices got smaller?
