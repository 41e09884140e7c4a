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
# # Exercise 08: the alignment step of the routing kernel
#
# Before a grouped GEMM can run every expert in one launch, the routed (token, slot) pairs must be
# rearranged so that each expert's pairs sit in one contiguous segment of rows, padded so that every tile
# of `block_m` rows belongs to a single expert. You compute that layout in plain PyTorch; the checks
# compare with the Triton kernels in `tinymoe.kernels.align` (run in Triton's interpreter without a GPU,
# so Triton must be installed).

# %%
import torch

from tinymoe.grading import exercise

ex = exercise("08_routing_alignment")
ex


# %% [markdown]
# ## 1. Padded offsets
#
# `expert_counts` is `(n_experts,)`: how many pairs each expert received. Pad every count up to a
# multiple of `block_m` (an expert with no pairs takes no rows), then return the exclusive prefix sum,
# `(n_experts + 1,)` int64: where each expert's segment starts, then the number of rows in use.

# %%
def padded_offsets(expert_counts: torch.Tensor, block_m: int) -> torch.Tensor:
    """First row of every expert's block_m-padded segment, then the total."""
    ### BEGIN SOLUTION
    padded = (expert_counts + block_m - 1) // block_m * block_m        # ceil to a multiple of block_m
    return torch.cat([torch.zeros(1, dtype=torch.long), padded.long().cumsum(0)])
    ### END SOLUTION
    raise NotImplementedError("see notebooks/09_gpu_scale.ipynb, section: Stage 2, alignment: give each expert a contiguous stretch of rows")


# %%
ex.padded_offsets.check(padded_offsets)

# %% [markdown]
# Stuck? `ex.padded_offsets.hint()`.

# %% [markdown]
# ## 2. The row of every pair
#
# `expert_ids` is `(n_tokens, top_k)` int64, -1 for a pair a full expert dropped. Number the pairs row by
# row, `pair = token * top_k + slot`. Each expert's pairs fill its segment from the top in pair order; a
# dropped pair gets row -1. Return `(n_tokens * top_k,)` int64.

# %%
def pair_rows(expert_ids: torch.Tensor, n_experts: int, block_m: int) -> torch.Tensor:
    """The row of the expert-sorted, padded layout that each (token, slot) pair lands in."""
    ### BEGIN SOLUTION
    flat = expert_ids.reshape(-1)                                       # (n_pairs,)
    counts = torch.bincount(flat[flat >= 0], minlength=n_experts)       # (n_experts,)
    offsets = padded_offsets(counts, block_m)
    rows = torch.full_like(flat, -1)
    for e in range(n_experts):
        pairs = torch.where(flat == e)[0]                               # in pair order
        rows[pairs] = offsets[e] + torch.arange(len(pairs))
    return rows
    ### END SOLUTION
    raise NotImplementedError("see notebooks/09_gpu_scale.ipynb, section: Stage 2, alignment: give each expert a contiguous stretch of rows")


# %%
ex.pair_rows.check(pair_rows)

# %% [markdown]
# Stuck? `ex.pair_rows.hint()`. Once it passes: how many rows of padding can one batch waste at most, and
# why does the kernel size its buffers for that worst case?
