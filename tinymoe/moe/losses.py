"""The two auxiliary losses of a routed MoE: spread the load, keep the logits small.

Load-balancing loss (Switch Transformer, Fedus et al. 2021, eq. 4-6):

    loss = n_experts * sum_i f_i * P_i
    f_i  = fraction of the token-to-expert assignments that went to expert i
    P_i  = mean router probability of expert i over the tokens

f_i comes from an argmax/top-k and has no gradient; P_i does, and the product pushes the
router's probability away from the experts that are already busy. At perfect balance
f_i = P_i = 1 / n_experts and the loss is 1, its minimum, whatever n_experts and top_k.
f_i counts all k slots of a token and divides by N * k, so the f_i sum to 1 and the minimum is 1
whatever top_k. Hugging Face's `load_balancing_loss_func` (Mixtral, Qwen2-MoE, and its Switch
variant) divides by N only: its f_i sum to top_k, so its value is top_k times ours (equal at
top-1), and its coefficient is tuned for that scale.

Router z-loss (ST-MoE, Zoph et al. 2022, eq. 5):

    z_loss = mean over tokens of logsumexp(logits)^2

It penalises large logits, which overflow in low precision and make the softmax brittle.

Both are plain functions of the routing (no coefficient here, no global state): the MoE layer
multiplies them by aux_loss_coef and z_loss_coef and returns them beside its output.
"""
from __future__ import annotations

import torch
from torch.nn import functional as F

from ..precision import compute_dtype

__all__ = ["load_balancing_loss", "router_z_loss", "expert_fractions", "routing_losses"]


def expert_fractions(expert_ids: torch.Tensor, n_experts: int) -> torch.Tensor:
    """f: (..., N, k) expert ids (-1 = empty slot) -> (..., n_experts) share of the N * k
    assignments each expert received. Empty slots count in N * k but for no expert."""
    N, k = expert_ids.shape[-2:]
    if N * k == 0:
        raise ValueError(f"expert_ids has shape {tuple(expert_ids.shape)}: no assignments to count "
                         f"(the fractions of zero tokens are undefined)")
    one_hot = F.one_hot(expert_ids.clamp(min=0), n_experts)                # (..., N, k, n_experts)
    one_hot = one_hot * (expert_ids >= 0).unsqueeze(-1)                     # empty slots count for nobody
    return one_hot.float().sum(dim=(-3, -2)) / (N * k)                      # (..., n_experts)


def load_balancing_loss(probs: torch.Tensor, expert_ids: torch.Tensor, n_experts: int) -> torch.Tensor:
    """n_experts * sum_i f_i * P_i.

    probs (..., N, n_experts) router probabilities; expert_ids (..., N, k) the experts chosen
    (pass the choice before capacity dropped anything). Leading dimensions are groups
    (Switch balances each group, then averages); (N, n_experts) is one group of N tokens.
    """
    if probs.shape[-1] != n_experts:
        raise ValueError(f"probs has {probs.shape[-1]} experts in its last dimension; n_experts={n_experts}")
    if probs.shape[:-1] != expert_ids.shape[:-1]:
        raise ValueError(f"probs {tuple(probs.shape)} and expert_ids {tuple(expert_ids.shape)} must agree "
                         f"on every dimension but the last (groups..., tokens)")
    f = expert_fractions(expert_ids, n_experts)                             # (..., n_experts)
    P = probs.to(compute_dtype(probs.dtype)).mean(dim=-2)                   # (..., n_experts)
    return (n_experts * (f * P).sum(dim=-1)).mean()                         # () averaged over groups


def router_z_loss(logits: torch.Tensor) -> torch.Tensor:
    """mean over tokens of logsumexp(logits)^2; logits (..., n_experts)."""
    if logits.numel() == 0:
        raise ValueError(f"logits has shape {tuple(logits.shape)}: the z-loss of zero tokens is undefined")
    log_z = torch.logsumexp(logits.to(compute_dtype(logits.dtype)), dim=-1)  # (...,)
    return (log_z ** 2).mean()


def routing_losses(logits: torch.Tensor, probs: torch.Tensor | None, chosen_ids: torch.Tensor | None,
                   n_experts: int) -> dict[str, torch.Tensor]:
    """What a router puts in its Routing: {"load_balancing", "z_loss"}, before coefficients.
    probs / chosen_ids None: a router balanced by construction (load_balancing 0). A router that
    saw no tokens (a rank with an empty batch) has nothing to balance or penalise: both 0."""
    zero = torch.zeros((), dtype=torch.float32, device=logits.device)
    if logits.numel() == 0:
        return {"load_balancing": zero, "z_loss": zero}
    balance = zero if probs is None else load_balancing_loss(probs, chosen_ids, n_experts)
    return {"load_balancing": balance, "z_loss": router_z_loss(logits)}
