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
# # Exercise 11: flash attention, merging partial softmax states
#
# Flash attention reads the keys a tile at a time and keeps, per query, a state `(m, l, o)`: the largest
# score seen `m`, the sum `l` of `exp(score - m)`, and the unnormalised output `o`, the sum of
# `exp(score - m) * v`. Two programs that read different keys for the same queries (split-K decoding)
# each end with a state; you write how to merge them, then how to turn a state into the attention output.
# The checks compare with `tinymoe.flash`.

# %%
import torch

from tinymoe.grading import exercise

ex = exercise("11_flash_merge_softmax")
ex


# %% [markdown]
# ## 1. Merge two states
#
# `state_a = (m_a, l_a, o_a)` covers some keys, `state_b` the others: `m` and `l` are `(..., T)`, `o` is
# `(..., T, d_v)`. Return `(m, l, o)` over all the keys, as if one program had read them all. A query may
# have seen no key in a part (its `m` is `-inf`, `l` and `o` zero); the result must never hold NaN.

# %%
def merge_softmax_states(state_a: tuple, state_b: tuple) -> tuple:
    """(m, l, o) over the keys of state_a and state_b together."""
    ### BEGIN SOLUTION
    (m_a, l_a, o_a), (m_b, l_b, o_b) = state_a, state_b
    m = torch.maximum(m_a, m_b)
    base = torch.where(torch.isfinite(m), m, torch.zeros_like(m))      # a query with no key: exponents vs 0
    scale_a, scale_b = torch.exp(m_a - base), torch.exp(m_b - base)    # exp(m_part - m_new) <= 1
    return m, scale_a * l_a + scale_b * l_b, scale_a[..., None] * o_a + scale_b[..., None] * o_b
    ### END SOLUTION
    raise NotImplementedError("see notebooks/11_flash_attention_kv_cache.ipynb, section: Two partial states merge")


# %%
ex.merge_softmax_states.check(merge_softmax_states)

# %% [markdown]
# Stuck? `ex.merge_softmax_states.hint()`.

# %% [markdown]
# ## 2. Finish a state
#
# After the last tile, return `(out, lse)`: the attention output `(..., T, d_v)` and each query's
# log-sum-exp of its scores `(..., T)`, the one number per row the backward pass keeps. A query that saw
# no key gets a zero output and an lse of `-inf`.

# %%
def finish_softmax_state(state: tuple) -> tuple:
    """(out, lse) from a final (m, l, o)."""
    ### BEGIN SOLUTION
    m, l, o = state
    seen = l > 0
    safe_l = torch.where(seen, l, torch.ones_like(l))
    out = o / safe_l[..., None]
    lse = torch.where(seen, m + torch.log(safe_l), torch.full_like(m, float("-inf")))
    return out, lse
    ### END SOLUTION
    raise NotImplementedError("see notebooks/11_flash_attention_kv_cache.ipynb, section: Finishing: the output and the log-sum-exp")


# %%
ex.finish_softmax_state.check(finish_softmax_state)

# %% [markdown]
# Stuck? `ex.finish_softmax_state.hint()`. Once both pass: why may the two programs of a split-K decode
# run in either order, and would a merge of normalised outputs `o / l` still work if you kept `l` too?
