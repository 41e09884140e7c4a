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
# # Exercise 04: RMSNorm
#
# LayerNorm subtracts each token's mean, divides by its standard deviation, then scales and shifts.
# RMSNorm (Zhang and Sennrich, 2019; Llama uses it) keeps only the division: by the root-mean-square
# `sqrt(mean(x^2) + eps)` of each token's own `d_model` vector, followed by a learned scale. The check
# compares with tinymoe's `RMSNorm`.

# %%
import torch

from tinymoe.grading import exercise

ex = exercise("04_rmsnorm")
ex


# %% [markdown]
# ## RMSNorm
#
# `x` is `(..., d_model)` and `weight` is `(d_model,)`. Normalise over the last axis only, never across
# tokens. `eps` keeps an all-zero token finite. Keep the input's dtype.

# %%
def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float = 1e-5) -> torch.Tensor:
    """x / sqrt(mean(x^2 over the last axis) + eps) * weight."""
    ### BEGIN SOLUTION
    rms = torch.sqrt(x.pow(2).mean(dim=-1, keepdim=True) + eps)      # (..., 1)
    return x / rms * weight
    ### END SOLUTION
    raise NotImplementedError("see notebooks/04_normalisation.ipynb, section: RMSNorm: no mean, no bias")


# %%
ex.rms_norm.check(rms_norm)

# %% [markdown]
# Stuck? `ex.rms_norm.hint()`. Once it passes: feed it a token and the same token times 1000. What comes out,
# and why is that useful in the residual stream?
