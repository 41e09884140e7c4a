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
# # Exercise 11: one KV-cache decode step
#
# After the prompt, a model generates one token at a time. The keys and values of the earlier tokens
# never change, so they are kept in a cache; each step computes only the new token's q, k and v, adds
# its key and value to the cache, and lets its query attend over everything cached. The checks
# compare with tinymoe's `MultiHeadAttention` running on a `KVCache`.

# %%
import math

import torch

from tinymoe.grading import exercise
from tinymoe.rope import apply_rope

ex = exercise("11_kv_cache_decode")
ex


# %% [markdown]
# ## One decode step with grouped-query attention and RoPE
#
# `x` is the new token, `(batch, 1, d_model)`; `k_cache` `(batch, n_kv_heads, t, head_dim)` holds the keys
# of positions `0 .. t-1`, already rotated by RoPE, and `v_cache` `(batch, n_kv_heads, t, v_dim)` their
# values. `W_q` is `(n_heads * head_dim, d_model)`, `W_k` `(n_kv_heads * head_dim, d_model)`, `W_v`
# `(n_kv_heads * v_dim, d_model)`, `W_o` `(d_model, n_heads * v_dim)`; `cos` and `sin` are RoPE's tables,
# one row per position, for `apply_rope(x, cos_rows, sin_rows)`. Return the attention output
# `(batch, 1, d_model)` and the two caches grown by one position.

# %%
def decode_step(x, W_q, W_k, W_v, W_o, k_cache, v_cache, cos, sin):
    """(out, k_cache, v_cache) after decoding the token x at position t = k_cache.shape[2]."""
    ### BEGIN SOLUTION
    B = x.shape[0]
    n_kv_heads, t, head_dim = k_cache.shape[1:]
    n_heads, v_dim = W_q.shape[0] // head_dim, v_cache.shape[-1]
    q = (x @ W_q.T).view(B, 1, n_heads, head_dim).transpose(1, 2)            # (B, n_heads, 1, head_dim)
    k = (x @ W_k.T).view(B, 1, n_kv_heads, head_dim).transpose(1, 2)         # (B, n_kv_heads, 1, head_dim)
    v = (x @ W_v.T).view(B, 1, n_kv_heads, v_dim).transpose(1, 2)            # (B, n_kv_heads, 1, v_dim)
    q, k = apply_rope(q, cos[t:t + 1], sin[t:t + 1]), apply_rope(k, cos[t:t + 1], sin[t:t + 1])
    k_cache, v_cache = torch.cat([k_cache, k], dim=2), torch.cat([v_cache, v], dim=2)   # t + 1 positions
    group = n_heads // n_kv_heads
    keys, values = k_cache.repeat_interleave(group, dim=1), v_cache.repeat_interleave(group, dim=1)
    weights = torch.softmax(q @ keys.transpose(-2, -1) / math.sqrt(head_dim), dim=-1)   # (B, n_heads, 1, t + 1)
    out = (weights @ values).transpose(1, 2).reshape(B, 1, n_heads * v_dim) @ W_o.T
    return out, k_cache, v_cache
    ### END SOLUTION
    raise NotImplementedError("see notebooks/10_llama_1_to_4.ipynb, section: Running it: the KV cache of a Llama 4")


# %%
ex.decode_step.check(decode_step)

# %% [markdown]
# Stuck? `ex.decode_step.hint()`. Once it passes: which of the three tensors you return grows with
# every token, and by how many numbers per layer?
