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
# # Exercise 10: chunked local attention (Llama 4)
#
# Llama 4's local layers cut the sequence into chunks of `chunk_size` tokens: a token sees only
# itself and the earlier tokens of its own chunk. With `chunk_size = 3`, token 4 sits in the chunk of
# positions 3, 4, 5 and sees tokens 3 and 4. The checks compare with tinymoe's `chunked_mask` and
# its attention.

# %%
import math

import torch

from tinymoe.grading import exercise

ex = exercise("10_chunked_mask")
ex


# %% [markdown]
# ## 1. The chunked mask
#
# Return a `(seq_len, seq_len)` boolean tensor, `True` where query `i` (row) may attend to key `j`
# (column).

# %%
def chunked_mask(seq_len: int, chunk_size: int) -> torch.Tensor:
    """True where key j lies in query i's chunk and j <= i."""
    ### BEGIN SOLUTION
    i = torch.arange(seq_len)[:, None]
    j = torch.arange(seq_len)[None, :]
    return (j <= i) & (i // chunk_size == j // chunk_size)
    ### END SOLUTION
    raise NotImplementedError("see notebooks/10_llama_1_to_4.ipynb, section: Step 6 · Llama 4's attention: chunked local layers and global NoPE layers")


# %%
ex.chunked_mask.check(chunked_mask)

# %% [markdown]
# Stuck? `ex.chunked_mask.hint()`.

# %% [markdown]
# ## 2. Attention inside the chunks
#
# `q`, `k` are `(batch, heads, seq_len, head_dim)` and `v` is `(batch, heads, seq_len, v_dim)`. Return
# the attention output `(batch, heads, seq_len, v_dim)`: scaled dot products, your mask, softmax,
# weighted values.

# %%
def chunked_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, chunk_size: int) -> torch.Tensor:
    """softmax(q k^T / sqrt(head_dim), hidden outside the chunk) v."""
    ### BEGIN SOLUTION
    scores = q @ k.transpose(-2, -1) / math.sqrt(q.shape[-1])                # (B, H, T, T)
    scores = scores.masked_fill(~chunked_mask(q.shape[-2], chunk_size), float("-inf"))
    return torch.softmax(scores, dim=-1) @ v
    ### END SOLUTION
    raise NotImplementedError("see notebooks/10_llama_1_to_4.ipynb, section: Step 6 · Llama 4's attention: chunked local layers and global NoPE layers")


# %%
ex.chunked_attention.check(chunked_attention)

# %% [markdown]
# Stuck? `ex.chunked_attention.hint()`. Once it passes: how many keys does the KV cache of a chunked
# layer need to keep while decoding, however long the sequence?
