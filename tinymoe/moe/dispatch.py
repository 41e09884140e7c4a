"""Dispatch: run each token through its chosen experts and add the results, weighted by gates.

    out_n = sum_j gates[n, j] * expert_{expert_ids[n, j]}(x_n)          (empty slots: id -1, gate 0)

The sum is the same whichever way it is computed; the backends differ in how much work they do
and how readable they are. All take the same arguments and give the same output within float32
rounding (the tests check it, with dropped tokens, empty experts and all tokens on one expert):

    x (N, d_model), expert_ids (N, k) int64, gates (N, k) float, w_gate, w_up (E, d_ff, d_model),
    w_down (E, d_model, d_ff)  ->  (N, d_model) in x's dtype

- `dispatch_loop`    the reference: for each expert, find its tokens, run it, add back. Reads like
                     the equation; Hugging Face's Mixtral does the same.
- `dispatch_dense`   every expert on every token, then weight by the (mostly zero) gate matrix
                     (`scatter_gates`). E / k times the work, but no token is picked out: the
                     spreadsheet view, for teaching and for checking the others.
- `dispatch_grouped` sort the (token, slot) pairs by expert so each expert reads one contiguous
                     slice, run the experts slice by slice, then put every result back into its
                     (token, slot) cell and sum the k slots in a fixed order (deterministic on any
                     device: no atomic adds). The layout a grouped-GEMM kernel wants (MegaBlocks,
                     Gale et al. 2022).
- `triton`           the same grouped computation as a GPU kernel, in `tinymoe.kernels`
                     (imported only when asked for).

Results are accumulated in the wider of float32 and x's dtype (float16 -> float32, float64 stays
float64) and returned in x's dtype.
"""
from __future__ import annotations

from typing import Callable

import torch

from ..config import ConfigError
from ..precision import compute_dtype
from .experts import expert_mlp
from .routing import scatter_gates

__all__ = ["dispatch_loop", "dispatch_dense", "dispatch_grouped", "get_dispatch", "DISPATCH_FUNCTIONS"]


def _check(x, expert_ids, gates, w_up) -> None:
    if x.dim() != 2:
        raise ValueError(f"x has shape {tuple(x.shape)}: dispatch takes flattened tokens (N, d_model)")
    if expert_ids.dim() != 2 or expert_ids.shape[0] != x.shape[0]:
        raise ValueError(f"expert_ids has shape {tuple(expert_ids.shape)}: expected (N, k) with N={x.shape[0]}")
    if gates.shape != expert_ids.shape:
        raise ValueError(f"gates has shape {tuple(gates.shape)}: must match expert_ids {tuple(expert_ids.shape)}")
    if expert_ids.dtype != torch.int64:
        raise ValueError(f"expert_ids has dtype {expert_ids.dtype}: expected torch.int64")
    if expert_ids.numel() and int(expert_ids.max()) >= w_up.shape[0]:
        raise ValueError(f"expert_ids contains {int(expert_ids.max())}: there are only n_experts={w_up.shape[0]} "
                         f"experts (ids 0..{w_up.shape[0] - 1}, -1 for an empty slot)")


def dispatch_loop(x, expert_ids, gates, w_gate, w_up, w_down) -> torch.Tensor:
    """The reference: one pass over the experts, each on the tokens that chose it."""
    _check(x, expert_ids, gates, w_up)
    acc = compute_dtype(x.dtype)
    out = torch.zeros(x.shape, dtype=acc, device=x.device)                 # (N, d_model)
    for e in range(w_up.shape[0]):
        token_idx, slot = torch.where(expert_ids == e)                     # (M_e,), (M_e,)
        if token_idx.numel() == 0:
            continue                                                        # an empty expert does nothing
        y = expert_mlp(x[token_idx], None if w_gate is None else w_gate[e], w_up[e], w_down[e])  # (M_e, d_model)
        out.index_add_(0, token_idx, y.to(acc) * gates[token_idx, slot, None].to(acc))         # (N, d_model)
    return out.to(x.dtype)


def dispatch_dense(x, expert_ids, gates, w_gate, w_up, w_down) -> torch.Tensor:
    """Every expert on every token, weighted by a dense (N, n_experts) gate matrix."""
    _check(x, expert_ids, gates, w_up)
    n_experts = w_up.shape[0]
    y = torch.stack([expert_mlp(x, None if w_gate is None else w_gate[e], w_up[e], w_down[e])
                     for e in range(n_experts)])                            # (E, N, d_model) every expert, every token
    acc = compute_dtype(x.dtype)
    combine = scatter_gates(expert_ids, gates.to(acc), n_experts)           # (N, E) mostly zeros
    out = torch.einsum("ne,end->nd", combine, y.to(acc))                    # (N, d_model)
    return out.to(x.dtype)


def dispatch_grouped(x, expert_ids, gates, w_gate, w_up, w_down) -> torch.Tensor:
    """Sort the (token, slot) pairs by expert, run each expert on one contiguous slice, scatter back."""
    _check(x, expert_ids, gates, w_up)
    N, k = expert_ids.shape
    n_experts = w_up.shape[0]
    flat_ids = expert_ids.reshape(N * k)                                    # (N*k,) pair p = token p // k, slot p % k
    order = torch.argsort(flat_ids, stable=True)                           # (N*k,) empty slots (-1) first, then by expert
    counts = torch.bincount(flat_ids + 1, minlength=n_experts + 1)         # (E+1,) counts[0] = empty slots
    sizes = counts.tolist()
    order = order[sizes[0]:]                                                # (M,) real pairs, grouped by expert
    x_sorted = x[order // k]                                                # (M, d_model) one contiguous slice per expert
    acc = compute_dtype(x.dtype)
    gates_sorted = gates.reshape(N * k)[order].to(acc)                      # (M,) the same order
    # Each expert's weighted results go straight back to their (token, slot) cells; the k slots
    # are then summed in slot order: a fixed order, so the result is the same on every run and
    # device (index_add would race on a GPU).
    cells = torch.zeros(N * k, x.shape[1], dtype=acc, device=x.device)     # (N*k, d_model)
    start = 0
    for e, size in enumerate(sizes[1:]):
        if size:
            rows = slice(start, start + size)                               # expert e's contiguous slice
            y_e = expert_mlp(x_sorted[rows], None if w_gate is None else w_gate[e], w_up[e], w_down[e])  # (M_e, d_model)
            cells.index_copy_(0, order[rows], y_e.to(acc) * gates_sorted[rows, None])
            start += size
    out = cells.reshape(N, k, x.shape[1]).sum(dim=1)                        # (N, d_model)
    return out.to(x.dtype)


DISPATCH_FUNCTIONS: dict[str, Callable] = {
    "loop": dispatch_loop,
    "dense": dispatch_dense,
    "grouped": dispatch_grouped,
}


def get_dispatch(name: str) -> Callable:
    """The dispatch function for a backend name: loop | dense | grouped | triton.

    "triton" imports `tinymoe.kernels` only now, so the rest of tinymoe never needs Triton."""
    if name in DISPATCH_FUNCTIONS:
        return DISPATCH_FUNCTIONS[name]
    if name == "triton":
        try:
            from ..kernels import triton_moe_dispatch
        except ImportError as error:
            raise ConfigError("moe.dispatch", name,
                              f"needs tinymoe.kernels.triton_moe_dispatch (the Triton routing kernel), which "
                              f"could not be imported ({error}); use dispatch='grouped' without it") from error
        return triton_moe_dispatch
    raise ConfigError("moe.dispatch", name, f"must be one of {', '.join(map(repr, [*DISPATCH_FUNCTIONS, 'triton']))}")
