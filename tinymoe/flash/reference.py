"""Flash attention in plain PyTorch: tiled forward and backward that never hold a T_q x T_k matrix.

Forward (FlashAttention-2, Dao 2023, Algorithm 1): for each tile of `block_q` queries, walk the
key tiles the mask does not skip, folding each into the running state (m, l, o) with
`online_softmax.update`; then out = o / l and lse = m + log l per query row.

Backward (Algorithm 2). The forward saves only q, k, v, the output and the per-row log-sum-exp
(no attention matrix). For each (query tile, key tile) the weights are rebuilt from the lse:

    P  = exp(S - lse)                         S = q k^T * scale    (block_q, block_k)
    dV += P^T dO                              dP = dO V^T
    dS = P * (dP - delta),  delta = rowsum(dO * O)   (= sum_j P_ij dP_ij: the softmax Jacobian)
    dQ += dS K * scale,     dK += dS^T Q * scale

Grouped-query attention: q has n_heads heads, k and v have n_kv_heads; query head h reads kv
head h // group_size, so the kv head's gradient sums over its group. The mask rule (causal with
bottom-right alignment, sliding window, chunks) is `MaskRule` (masks.py); tiles it forbids
entirely are skipped in both passes, tiles it allows entirely are computed without a mask.

Arithmetic is in float32 (float64 for float64 inputs), results in the inputs' dtype.
"""
from __future__ import annotations

import math

import torch

from .masks import PARTIAL, SKIP, MaskRule, tile_map
from .online_softmax import empty_state, finish, update

__all__ = ["flash_attention", "FlashAttention", "check_flash_input"]


def check_flash_input(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> None:
    """q (batch, n_heads, T_q, head_dim), k (batch, n_kv_heads, T_k, head_dim), v (batch, n_kv_heads,
    T_k, v_dim): the layout flash attention expects, with a plain error for anything else."""
    for name, t in (("q", q), ("k", k), ("v", v)):
        if not isinstance(t, torch.Tensor) or t.dim() != 4:
            shape = tuple(t.shape) if isinstance(t, torch.Tensor) else type(t).__name__
            raise ValueError(f"{name} has shape {shape}: expected 4 dimensions (batch, heads, seq_len, dim)")
        if not t.is_floating_point():
            raise ValueError(f"{name} has dtype {t.dtype}: attention needs floating-point tensors")
    if q.shape[0] != k.shape[0] or k.shape[:3] != v.shape[:3]:
        raise ValueError(f"q {tuple(q.shape)}, k {tuple(k.shape)}, v {tuple(v.shape)}: batch must agree, and k and "
                         f"v need the same (batch, n_kv_heads, seq_len)")
    if q.shape[-1] != k.shape[-1]:
        raise ValueError(f"q has head_dim={q.shape[-1]} but k has {k.shape[-1]}: a query and a key must have the "
                         f"same length to take their dot product")
    if q.shape[1] % k.shape[1] != 0:
        raise ValueError(f"q has n_heads={q.shape[1]}, not a multiple of k's n_kv_heads={k.shape[1]}: each "
                         f"key/value head must serve a whole group of query heads")
    if not (q.dtype == k.dtype == v.dtype):
        raise ValueError(f"q, k, v have dtypes {q.dtype}, {k.dtype}, {v.dtype}: give them one dtype")


def _work_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if dtype == torch.float64 else torch.float32


def _tiles(n: int, block: int):
    return [(start, min(start + block, n)) for start in range(0, n, block)]


class FlashAttention(torch.autograd.Function):
    """out = softmax(q k^T * scale + mask) v, tile by tile; saves (q, k, v, out, lse) only."""

    @staticmethod
    def forward(ctx, q, k, v, rule: MaskRule, scale: float, block_q: int, block_k: int):
        B, H, T_q, D = q.shape
        H_kv, T_k, D_v = k.shape[1], k.shape[2], v.shape[-1]
        G = H // H_kv
        work = _work_dtype(q.dtype)
        qg = q.to(work).reshape(B, H_kv, G, T_q, D)                       # (B, n_kv_heads, group, T_q, D)
        kg = k.to(work)[:, :, None]                                       # (B, n_kv_heads, 1, T_k, D)
        vg = v.to(work)[:, :, None]                                       # (B, n_kv_heads, 1, T_k, D_v)
        tiles = tile_map(rule, T_q, T_k, block_q, block_k)                # (n_q_tiles, n_k_tiles)
        out = torch.zeros(B, H_kv, G, T_q, D_v, dtype=work, device=q.device)
        lse = torch.full((B, H_kv, G, T_q), float("-inf"), dtype=work, device=q.device)
        for i, (qs, qe) in enumerate(_tiles(T_q, block_q)):
            state = empty_state((B, H_kv, G, qe - qs), D_v, dtype=work, device=q.device)
            for j, (ks, ke) in enumerate(_tiles(T_k, block_k)):
                if tiles[i, j] == SKIP:
                    continue
                s = qg[..., qs:qe, :] @ kg[..., ks:ke, :].transpose(-2, -1) * scale   # (B, H_kv, G, bq, bk)
                mask = rule.block(qs, qe, ks, ke, T_q, T_k, q.device) if tiles[i, j] == PARTIAL else None
                state = update(state, s, vg[..., ks:ke, :], mask)
            out[..., qs:qe, :], lse[..., qs:qe] = finish(state)
        out, lse = out.reshape(B, H, T_q, D_v), lse.reshape(B, H, T_q)        # (B, n_heads, T_q, D_v), (B, n_heads, T_q)
        ctx.save_for_backward(q, k, v, out, lse)
        ctx.settings = (rule, scale, block_q, block_k, tiles)
        return out.to(q.dtype)

    @staticmethod
    def backward(ctx, grad_out):
        q, k, v, out, lse = ctx.saved_tensors
        rule, scale, block_q, block_k, tiles = ctx.settings
        B, H, T_q, D_v = out.shape
        H_kv, T_k, D = k.shape[1], k.shape[2], q.shape[-1]
        G = H // H_kv
        out, lse = out.reshape(B, H_kv, G, T_q, D_v), lse.reshape(B, H_kv, G, T_q)
        work = out.dtype
        qg = q.to(work).reshape(B, H_kv, G, T_q, D)
        kg, vg = k.to(work)[:, :, None], v.to(work)[:, :, None]
        do = grad_out.to(work).reshape(B, H_kv, G, T_q, D_v)              # (B, H_kv, G, T_q, D_v)
        delta = (do * out).sum(-1)                                        # (B, H_kv, G, T_q)
        lse_base = torch.where(torch.isfinite(lse), lse, torch.zeros_like(lse))   # a row with no key: P = 0 anyway
        dq = torch.zeros_like(qg)
        dk = torch.zeros(B, H_kv, T_k, D, dtype=work, device=q.device)
        dv = torch.zeros(B, H_kv, T_k, D_v, dtype=work, device=q.device)
        for j, (ks, ke) in enumerate(_tiles(T_k, block_k)):
            k_t, v_t = kg[..., ks:ke, :], vg[..., ks:ke, :]               # (B, H_kv, 1, bk, D), (.., bk, D_v)
            for i, (qs, qe) in enumerate(_tiles(T_q, block_q)):
                if tiles[i, j] == SKIP:
                    continue
                q_t, do_t = qg[..., qs:qe, :], do[..., qs:qe, :]
                s = q_t @ k_t.transpose(-2, -1) * scale                   # (B, H_kv, G, bq, bk)
                if tiles[i, j] == PARTIAL:
                    s = s.masked_fill(~rule.block(qs, qe, ks, ke, T_q, T_k, q.device), float("-inf"))
                p = torch.exp(s - lse_base[..., qs:qe, None])             # the forward's weights, rebuilt
                dv[..., ks:ke, :] += (p.transpose(-2, -1) @ do_t).sum(2)  # (B, H_kv, bk, D_v): sum over the group
                dp = do_t @ v_t.transpose(-2, -1)                         # (B, H_kv, G, bq, bk)
                ds = p * (dp - delta[..., qs:qe, None])
                dq[..., qs:qe, :] += ds @ k_t * scale
                dk[..., ks:ke, :] += (ds.transpose(-2, -1) @ q_t).sum(2) * scale
        return (dq.reshape(q.shape).to(q.dtype), dk.to(k.dtype), dv.to(v.dtype), None, None, None, None)


def flash_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *, causal: bool = False,
                    window: int | None = None, chunk_size: int | None = None, scale: float | None = None,
                    block_q: int = 64, block_k: int = 64) -> torch.Tensor:
    """softmax(q k^T * scale + mask) v computed tile by tile (differentiable).

    q (batch, n_heads, T_q, head_dim); k (batch, n_kv_heads, T_k, head_dim); v (batch, n_kv_heads, T_k, v_dim)
    -> (batch, n_heads, T_q, v_dim). causal / window / chunk_size: see MaskRule (queries are the last T_q
    positions). scale: default 1 / sqrt(head_dim). block_q, block_k: the tile sizes.
    A query that may see no key gets a zero output (and zero gradients), never NaN.
    """
    check_flash_input(q, k, v)
    rule = MaskRule(causal=causal, window=window, chunk_size=chunk_size)
    for name, block in (("block_q", block_q), ("block_k", block_k)):
        if isinstance(block, bool) or not isinstance(block, int) or block <= 0:
            raise ValueError(f"{name}={block!r}: a tile size must be a positive whole number")
    scale = 1.0 / math.sqrt(q.shape[-1]) if scale is None else float(scale)
    return FlashAttention.apply(q, k, v, rule, scale, block_q, block_k)
