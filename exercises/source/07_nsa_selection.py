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
# # Exercise 07: native sparse attention, selecting blocks
#
# In native sparse attention (Yuan et al., 2025) each query attends at full resolution to a few blocks of
# `select_block_size` keys, chosen by how much attention the compressed branch gave them. You write the
# two steps of that choice: sharing the importances within a GQA group, then picking the blocks. The
# checks compare with `tinymoe.nsa`.

# %%
import torch

from tinymoe.grading import exercise

ex = exercise("07_nsa_selection")
ex


# %% [markdown]
# ## 1. One choice per kv head
#
# `p_slc` is `(batch, n_heads, T, n_sel)`: each query head's importance for every selection block. The
# query heads that share a kv head must load the same blocks, so their importances are summed:
# consecutive heads form a group, `group_size = n_heads // n_kv_heads` of them. Return
# `(batch, n_kv_heads, T, n_sel)`.

# %%
def group_importance(p_slc: torch.Tensor, n_kv_heads: int) -> torch.Tensor:
    """Sum the importances of each group of query heads that share a kv head."""
    ### BEGIN SOLUTION
    B, n_heads, T, n_sel = p_slc.shape
    return p_slc.reshape(B, n_kv_heads, n_heads // n_kv_heads, T, n_sel).sum(dim=2)
    ### END SOLUTION
    raise NotImplementedError("see notebooks/07_native_sparse_attention.ipynb, section: Selecting blocks, step 1: block scores from the compressed attention")


# %%
ex.group_importance.check(group_importance)

# %% [markdown]
# Stuck? `ex.group_importance.hint()`.

# %% [markdown]
# ## 2. Top-n blocks, with the first and the local blocks always kept
#
# `importance` is `(..., T, n_sel)`; block j covers keys `j * select_block_size` onwards. Query t may
# only select blocks that have begun, `j * select_block_size <= t`. Block 0 and the two local blocks (the
# query's own block `t // select_block_size` and the one before it) are always kept; the remaining places,
# up to `top_n` blocks in all, go to the most important of the other blocks that have begun. Return a
# boolean `(..., T, n_sel)` mask of the selected blocks.

# %%
def select_blocks(importance: torch.Tensor, select_block_size: int, top_n: int) -> torch.Tensor:
    """(..., T, n_sel) bool: True where query t selects block j."""
    ### BEGIN SOLUTION
    T, n_sel = importance.shape[-2:]
    t = torch.arange(T)[:, None]                                       # (T, 1)
    j = torch.arange(n_sel)[None, :]                                   # (1, n_sel)
    begun = j * select_block_size <= t
    own = t // select_block_size
    always = (j == 0) | (j == own) | (j == own - 1)
    ranked = importance.masked_fill(always, float("inf")).masked_fill(~begun, float("-inf"))
    values, chosen = torch.topk(ranked, min(top_n, n_sel), dim=-1)
    return torch.zeros_like(importance, dtype=torch.bool).scatter(-1, chosen, values > float("-inf"))
    ### END SOLUTION
    raise NotImplementedError("see notebooks/07_native_sparse_attention.ipynb, section: Selecting blocks, step 2: top-n, with the first and the local block always kept")


# %%
ex.select_blocks.check(select_blocks)

# %% [markdown]
# Stuck? `ex.select_blocks.hint()`. Once it passes: at T = 64k with blocks of 64 and top_n 16, what share of
# the keys does one query read at full resolution?
