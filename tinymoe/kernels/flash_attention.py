"""Flash attention as Triton kernels: the tiled forward and the FlashAttention-2 backward.

The same algorithm as tinymoe.flash.reference (read that first; this file is its GPU form):

    flash_forward_kernel   grid (cdiv(T_q, BLOCK_M), batch * n_heads). Program (i, b*h) keeps
                           BLOCK_M queries of head h in registers and walks the key tiles its
                           mask can reach, keeping the online-softmax state m, l and acc (the
                           unnormalised output) in float32; it writes out = acc / l and the row's
                           log-sum-exp lse = m + log l (the only thing the backward needs).
    flash_dkdv_kernel      grid (cdiv(T_k, BLOCK_N), batch * n_kv_heads). Program (j, b*g) keeps a
                           tile of keys and values and walks every query that can see them, in
                           every query head of the kv head's group, accumulating
                           dV += P^T dO  and  dK += dS^T Q * scale  (P rebuilt as exp(S - lse)).
                           Looping over the group inside the program sums GQA's gradients
                           without atomics.
    flash_dq_kernel        grid (cdiv(T_q, BLOCK_M), batch * n_heads): dQ += dS K * scale over the
                           key tiles, with dS = P * (dO V^T - delta), delta = rowsum(dO * O).

The mask is tinymoe.flash.MaskRule's (queries are the last T_q positions: bottom-right causal;
window; chunk). Each program first narrows its loop to the tiles that can hold an allowed pair
(the tile skipping the widget in notebook 11 draws), then masks pair by pair inside them.

The trap this file is tested against (tests/test_flash_triton.py): the backward of the widely
copied Triton fused-attention tutorial (06-fused-attention.py) ignores its `causal` flag and
always computes the causal gradients (it masks the diagonal tiles and walks only one side of
the diagonal; triton-lang/triton issues 4541 and 5660), so with causal=False the forward is
right and the gradients are silently wrong. Here both passes take their loop bounds and masks
from the same rule for every mask kind, dense included, and the non-causal gradients are
compared with torch's.

Block sizes: tl.dot needs every dimension >= 16, so BLOCK_M, BLOCK_N >= 16 and the head
dimensions are padded to BLOCK_D = next power of two >= max(16, head_dim) with masked loads
(zeros add nothing to a dot product). At spreadsheet size (10 tokens, head_dim 3) most of a
tile is padding; that is the price of running the GPU kernel on the sheet's numbers.
"""
from __future__ import annotations

import math

import torch
import triton
import triton.language as tl

from ..flash.masks import MaskRule
from ..flash.reference import check_flash_input

__all__ = ["triton_flash_attention", "TritonFlashAttention", "flash_forward_kernel", "flash_dkdv_kernel",
           "flash_dq_kernel"]


@triton.jit
def _allowed(q_pos, k_pos, window, chunk_size,
             CAUSAL: tl.constexpr, HAS_WINDOW: tl.constexpr, HAS_CHUNK: tl.constexpr):
    """MaskRule.allowed on broadcast position tensors (True = may attend)."""
    ok = (q_pos >= -2147483647) & (k_pos >= 0)             # all True, with the broadcast shape
    if CAUSAL:
        ok = ok & (k_pos <= q_pos)
    if HAS_WINDOW:
        ok = ok & (k_pos > q_pos - window)
    if HAS_CHUNK:   # q_pos < 0 (more queries than keys) is in no key's chunk; `//` truncates toward 0 here
        ok = ok & (q_pos >= 0) & ((k_pos // chunk_size) == (q_pos // chunk_size))
    return ok


@triton.jit
def _key_range(first_q_pos, last_q_pos, T_k, window, chunk_size,
               CAUSAL: tl.constexpr, HAS_WINDOW: tl.constexpr, HAS_CHUNK: tl.constexpr, BLOCK_N: tl.constexpr):
    """[lo, hi): the keys queries at positions first_q_pos..last_q_pos can see, lo rounded down to a tile."""
    lo = first_q_pos * 0
    hi = lo + T_k
    if CAUSAL:
        hi = tl.minimum(hi, last_q_pos + 1)
    if HAS_WINDOW:
        lo = tl.maximum(lo, first_q_pos - window + 1)
    if HAS_CHUNK:
        lo = tl.maximum(lo, (first_q_pos // chunk_size) * chunk_size)
        hi = tl.minimum(hi, (last_q_pos // chunk_size + 1) * chunk_size)
    lo = (lo // BLOCK_N) * BLOCK_N
    return lo, hi


@triton.jit
def flash_forward_kernel(
    q_ptr, k_ptr, v_ptr,      # (B, H, T_q, D), (B, H_kv, T_k, D), (B, H_kv, T_k, D_v), contiguous
    out_ptr,                  # (B, H, T_q, D_v) out
    lse_ptr,                  # (B, H, T_q) float32 out: log-sum-exp of each query's scores
    T_q, T_k, n_heads, group_size, head_dim, v_dim, scale, window, chunk_size,
    CAUSAL: tl.constexpr, HAS_WINDOW: tl.constexpr, HAS_CHUNK: tl.constexpr, INPUT_PRECISION: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_DV: tl.constexpr,
):
    pid_m, bh = tl.program_id(0), tl.program_id(1)
    b, h = bh // n_heads, bh % n_heads
    bh_kv = b * (n_heads // group_size) + h // group_size          # query head h reads kv head h // group
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)                # (BLOCK_M,) query rows
    offs_d, offs_dv = tl.arange(0, BLOCK_D), tl.arange(0, BLOCK_DV)
    row_ok = offs_m < T_q
    q_base = q_ptr + bh.to(tl.int64) * T_q * head_dim
    k_base = k_ptr + bh_kv.to(tl.int64) * T_k * head_dim
    v_base = v_ptr + bh_kv.to(tl.int64) * T_k * v_dim
    q = tl.load(q_base + offs_m[:, None] * head_dim + offs_d[None, :],
                mask=row_ok[:, None] & (offs_d[None, :] < head_dim), other=0.0)          # (BLOCK_M, BLOCK_D)

    q_pos = offs_m + (T_k - T_q)                                    # bottom-right: queries are the last T_q
    first_q_pos = pid_m * BLOCK_M + (T_k - T_q)
    last_q_pos = tl.minimum(first_q_pos + BLOCK_M, T_k) - 1         # of the rows that exist
    lo, hi = _key_range(first_q_pos, last_q_pos, T_k, window, chunk_size, CAUSAL, HAS_WINDOW, HAS_CHUNK, BLOCK_N)

    m_i = tl.full((BLOCK_M,), float("-inf"), tl.float32)           # running max
    l_i = tl.zeros((BLOCK_M,), tl.float32)                          # running sum of exp(s - m)
    acc = tl.zeros((BLOCK_M, BLOCK_DV), tl.float32)                 # running unnormalised output
    for start_n in range(lo, hi, BLOCK_N):
        offs_n = start_n + tl.arange(0, BLOCK_N)                    # (BLOCK_N,) key positions
        key_ok = offs_n < T_k
        k_t = tl.load(k_base + offs_n[None, :] * head_dim + offs_d[:, None],
                      mask=key_ok[None, :] & (offs_d[:, None] < head_dim), other=0.0)    # (BLOCK_D, BLOCK_N): K^T
        s = tl.dot(q, k_t, input_precision=INPUT_PRECISION) * scale                      # (BLOCK_M, BLOCK_N)
        ok = key_ok[None, :] & _allowed(q_pos[:, None], offs_n[None, :], window, chunk_size,
                                        CAUSAL, HAS_WINDOW, HAS_CHUNK)
        s = tl.where(ok, s, float("-inf"))
        m_new = tl.maximum(m_i, tl.max(s, axis=1))
        base = tl.where(m_new == float("-inf"), 0.0, m_new)         # a row with no key yet: exponents vs 0
        alpha = tl.exp(m_i - base)                                  # exp(m_old - m_new): re-base the old terms
        p = tl.exp(s - base[:, None])                               # (BLOCK_M, BLOCK_N)
        l_i = l_i * alpha + tl.sum(p, axis=1)
        v = tl.load(v_base + offs_n[:, None] * v_dim + offs_dv[None, :],
                    mask=key_ok[:, None] & (offs_dv[None, :] < v_dim), other=0.0)        # (BLOCK_N, BLOCK_DV)
        acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v, input_precision=INPUT_PRECISION)
        m_i = m_new

    seen = l_i > 0
    out = acc / tl.where(seen, l_i, 1.0)[:, None]                   # a row that saw no key: zeros
    lse = tl.where(seen, m_i + tl.log(tl.where(seen, l_i, 1.0)), float("-inf"))
    out_base = out_ptr + bh.to(tl.int64) * T_q * v_dim
    tl.store(out_base + offs_m[:, None] * v_dim + offs_dv[None, :], out.to(out_ptr.dtype.element_ty),
             mask=row_ok[:, None] & (offs_dv[None, :] < v_dim))
    tl.store(lse_ptr + bh.to(tl.int64) * T_q + offs_m, lse, mask=row_ok)


@triton.jit
def flash_dkdv_kernel(
    q_ptr, k_ptr, v_ptr, do_ptr,  # as the forward; do = dL/dout (B, H, T_q, D_v)
    lse_ptr, delta_ptr,           # (B, H, T_q) float32: the forward's lse, rowsum(dO * O)
    dk_ptr, dv_ptr,               # (B, H_kv, T_k, D), (B, H_kv, T_k, D_v) out
    T_q, T_k, n_heads, group_size, head_dim, v_dim, scale, window, chunk_size,
    CAUSAL: tl.constexpr, HAS_WINDOW: tl.constexpr, HAS_CHUNK: tl.constexpr, INPUT_PRECISION: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_DV: tl.constexpr,
):
    pid_n, bh_kv = tl.program_id(0), tl.program_id(1)
    n_kv_heads = n_heads // group_size
    b, h_kv = bh_kv // n_kv_heads, bh_kv % n_kv_heads
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)                # (BLOCK_N,) key positions
    offs_d, offs_dv = tl.arange(0, BLOCK_D), tl.arange(0, BLOCK_DV)
    key_ok = offs_n < T_k
    k_base = k_ptr + bh_kv.to(tl.int64) * T_k * head_dim
    v_base = v_ptr + bh_kv.to(tl.int64) * T_k * v_dim
    k = tl.load(k_base + offs_n[:, None] * head_dim + offs_d[None, :],
                mask=key_ok[:, None] & (offs_d[None, :] < head_dim), other=0.0)          # (BLOCK_N, BLOCK_D)
    v = tl.load(v_base + offs_n[:, None] * v_dim + offs_dv[None, :],
                mask=key_ok[:, None] & (offs_dv[None, :] < v_dim), other=0.0)           # (BLOCK_N, BLOCK_DV)

    # The queries (as row indices 0..T_q-1) that can see keys offs_n: the mirror of _key_range.
    first_k, last_k = pid_n * BLOCK_N, tl.minimum(pid_n * BLOCK_N + BLOCK_N, T_k) - 1
    shift = T_k - T_q                                               # query row i sits at position i + shift
    lo = first_k * 0
    hi = lo + T_q
    if CAUSAL:
        lo = tl.maximum(lo, first_k - shift)
    if HAS_WINDOW:
        hi = tl.minimum(hi, last_k + window - shift)
    if HAS_CHUNK:
        lo = tl.maximum(lo, (first_k // chunk_size) * chunk_size - shift)
        hi = tl.minimum(hi, (last_k // chunk_size + 1) * chunk_size - shift)
    lo = (lo // BLOCK_M) * BLOCK_M

    dk = tl.zeros((BLOCK_N, BLOCK_D), tl.float32)
    dv = tl.zeros((BLOCK_N, BLOCK_DV), tl.float32)
    for g in range(0, group_size):                                  # every query head reading this kv head
        bh = b * n_heads + h_kv * group_size + g
        q_base = q_ptr + bh.to(tl.int64) * T_q * head_dim
        do_base = do_ptr + bh.to(tl.int64) * T_q * v_dim
        for start_m in range(lo, hi, BLOCK_M):
            offs_m = start_m + tl.arange(0, BLOCK_M)
            row_ok = offs_m < T_q
            q = tl.load(q_base + offs_m[:, None] * head_dim + offs_d[None, :],
                        mask=row_ok[:, None] & (offs_d[None, :] < head_dim), other=0.0)  # (BLOCK_M, BLOCK_D)
            do = tl.load(do_base + offs_m[:, None] * v_dim + offs_dv[None, :],
                         mask=row_ok[:, None] & (offs_dv[None, :] < v_dim), other=0.0)   # (BLOCK_M, BLOCK_DV)
            lse = tl.load(lse_ptr + bh.to(tl.int64) * T_q + offs_m, mask=row_ok, other=0.0)
            delta = tl.load(delta_ptr + bh.to(tl.int64) * T_q + offs_m, mask=row_ok, other=0.0)
            lse = tl.where(lse == float("-inf"), 0.0, lse)         # a row with no key: P is 0 there anyway
            s_t = tl.dot(k, tl.trans(q), input_precision=INPUT_PRECISION) * scale          # (BLOCK_N, BLOCK_M): S^T
            ok = key_ok[:, None] & row_ok[None, :] & _allowed((offs_m + shift)[None, :], offs_n[:, None],
                                                              window, chunk_size, CAUSAL, HAS_WINDOW, HAS_CHUNK)
            p_t = tl.where(ok, tl.exp(s_t - lse[None, :]), 0.0)     # P^T, rebuilt from the lse
            dv += tl.dot(p_t.to(do.dtype), do, input_precision=INPUT_PRECISION)           # dV += P^T dO
            dp_t = tl.dot(v, tl.trans(do), input_precision=INPUT_PRECISION)               # (BLOCK_N, BLOCK_M): dP^T
            ds_t = p_t * (dp_t - delta[None, :])
            dk += tl.dot(ds_t.to(q.dtype), q, input_precision=INPUT_PRECISION)            # dK += dS^T Q
    dk = dk * scale
    tl.store(dk_ptr + bh_kv.to(tl.int64) * T_k * head_dim + offs_n[:, None] * head_dim + offs_d[None, :],
             dk.to(dk_ptr.dtype.element_ty), mask=key_ok[:, None] & (offs_d[None, :] < head_dim))
    tl.store(dv_ptr + bh_kv.to(tl.int64) * T_k * v_dim + offs_n[:, None] * v_dim + offs_dv[None, :],
             dv.to(dv_ptr.dtype.element_ty), mask=key_ok[:, None] & (offs_dv[None, :] < v_dim))


@triton.jit
def flash_dq_kernel(
    q_ptr, k_ptr, v_ptr, do_ptr, lse_ptr, delta_ptr,
    dq_ptr,                       # (B, H, T_q, D) out
    T_q, T_k, n_heads, group_size, head_dim, v_dim, scale, window, chunk_size,
    CAUSAL: tl.constexpr, HAS_WINDOW: tl.constexpr, HAS_CHUNK: tl.constexpr, INPUT_PRECISION: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_DV: tl.constexpr,
):
    pid_m, bh = tl.program_id(0), tl.program_id(1)
    b, h = bh // n_heads, bh % n_heads
    bh_kv = b * (n_heads // group_size) + h // group_size
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_d, offs_dv = tl.arange(0, BLOCK_D), tl.arange(0, BLOCK_DV)
    row_ok = offs_m < T_q
    q = tl.load(q_ptr + bh.to(tl.int64) * T_q * head_dim + offs_m[:, None] * head_dim + offs_d[None, :],
                mask=row_ok[:, None] & (offs_d[None, :] < head_dim), other=0.0)          # (BLOCK_M, BLOCK_D)
    do = tl.load(do_ptr + bh.to(tl.int64) * T_q * v_dim + offs_m[:, None] * v_dim + offs_dv[None, :],
                 mask=row_ok[:, None] & (offs_dv[None, :] < v_dim), other=0.0)           # (BLOCK_M, BLOCK_DV)
    lse = tl.load(lse_ptr + bh.to(tl.int64) * T_q + offs_m, mask=row_ok, other=0.0)
    delta = tl.load(delta_ptr + bh.to(tl.int64) * T_q + offs_m, mask=row_ok, other=0.0)
    lse = tl.where(lse == float("-inf"), 0.0, lse)
    k_base = k_ptr + bh_kv.to(tl.int64) * T_k * head_dim
    v_base = v_ptr + bh_kv.to(tl.int64) * T_k * v_dim

    q_pos = offs_m + (T_k - T_q)
    first_q_pos = pid_m * BLOCK_M + (T_k - T_q)
    last_q_pos = tl.minimum(first_q_pos + BLOCK_M, T_k) - 1
    lo, hi = _key_range(first_q_pos, last_q_pos, T_k, window, chunk_size, CAUSAL, HAS_WINDOW, HAS_CHUNK, BLOCK_N)
    dq = tl.zeros((BLOCK_M, BLOCK_D), tl.float32)
    for start_n in range(lo, hi, BLOCK_N):
        offs_n = start_n + tl.arange(0, BLOCK_N)
        key_ok = offs_n < T_k
        k = tl.load(k_base + offs_n[:, None] * head_dim + offs_d[None, :],
                    mask=key_ok[:, None] & (offs_d[None, :] < head_dim), other=0.0)      # (BLOCK_N, BLOCK_D)
        v = tl.load(v_base + offs_n[:, None] * v_dim + offs_dv[None, :],
                    mask=key_ok[:, None] & (offs_dv[None, :] < v_dim), other=0.0)       # (BLOCK_N, BLOCK_DV)
        s = tl.dot(q, tl.trans(k), input_precision=INPUT_PRECISION) * scale             # (BLOCK_M, BLOCK_N)
        ok = row_ok[:, None] & key_ok[None, :] & _allowed(q_pos[:, None], offs_n[None, :], window, chunk_size,
                                                          CAUSAL, HAS_WINDOW, HAS_CHUNK)
        p = tl.where(ok, tl.exp(s - lse[:, None]), 0.0)
        dp = tl.dot(do, tl.trans(v), input_precision=INPUT_PRECISION)                  # (BLOCK_M, BLOCK_N)
        ds = p * (dp - delta[:, None])
        dq += tl.dot(ds.to(k.dtype), k, input_precision=INPUT_PRECISION)                # dQ += dS K
    dq = dq * scale
    tl.store(dq_ptr + bh.to(tl.int64) * T_q * head_dim + offs_m[:, None] * head_dim + offs_d[None, :],
             dq.to(dq_ptr.dtype.element_ty), mask=row_ok[:, None] & (offs_d[None, :] < head_dim))


def _pad(n: int) -> int:
    """The block for a head dimension: a power of two, at least 16 (tl.dot's minimum)."""
    return max(16, triton.next_power_of_2(n))


def _launch_settings(q, k, v, rule: MaskRule, block_m: int, block_n: int) -> dict:
    return dict(CAUSAL=rule.causal, HAS_WINDOW=rule.window is not None, HAS_CHUNK=rule.chunk_size is not None,
                INPUT_PRECISION="ieee" if q.dtype == torch.float32 else None, BLOCK_M=block_m, BLOCK_N=block_n,
                BLOCK_D=_pad(q.shape[-1]), BLOCK_DV=_pad(v.shape[-1]))


def _sizes(q, k, v, rule: MaskRule, scale: float) -> tuple:
    """The runtime arguments every kernel takes after its pointers."""
    return (q.shape[2], k.shape[2], q.shape[1], q.shape[1] // k.shape[1], q.shape[-1], v.shape[-1], scale,
            rule.window or 0, rule.chunk_size or 1)


class TritonFlashAttention(torch.autograd.Function):
    """Flash attention with the three kernels above; saves (q, k, v, out, lse) only."""

    @staticmethod
    def forward(ctx, q, k, v, rule: MaskRule, scale: float, block_m: int, block_n: int):
        q, k, v = q.contiguous(), k.contiguous(), v.contiguous()
        B, H, T_q, _ = q.shape
        out = torch.empty(B, H, T_q, v.shape[-1], dtype=q.dtype, device=q.device)
        lse = torch.empty(B, H, T_q, dtype=torch.float32, device=q.device)
        settings = _launch_settings(q, k, v, rule, block_m, block_n)
        grid = (triton.cdiv(T_q, block_m), B * H)
        flash_forward_kernel[grid](q, k, v, out, lse, *_sizes(q, k, v, rule, scale), **settings)
        ctx.save_for_backward(q, k, v, out, lse)
        ctx.settings = (rule, scale, block_m, block_n)
        return out

    @staticmethod
    def backward(ctx, grad_out):
        q, k, v, out, lse = ctx.saved_tensors
        rule, scale, block_m, block_n = ctx.settings
        do = grad_out.to(q.dtype).contiguous()                              # (B, H, T_q, D_v)
        delta = (do.float() * out.float()).sum(-1).contiguous()            # (B, H, T_q): rowsum(dO * O)
        dq, dk, dv = torch.empty_like(q), torch.empty_like(k), torch.empty_like(v)
        settings = _launch_settings(q, k, v, rule, block_m, block_n)
        sizes = _sizes(q, k, v, rule, scale)
        B, H, T_q, _ = q.shape
        H_kv, T_k = k.shape[1], k.shape[2]
        flash_dkdv_kernel[(triton.cdiv(T_k, block_n), B * H_kv)](q, k, v, do, lse, delta, dk, dv, *sizes, **settings)
        flash_dq_kernel[(triton.cdiv(T_q, block_m), B * H)](q, k, v, do, lse, delta, dq, *sizes, **settings)
        return dq, dk, dv, None, None, None, None


def triton_flash_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *, causal: bool = False,
                           window: int | None = None, chunk_size: int | None = None, scale: float | None = None,
                           block_m: int = 64, block_n: int = 64) -> torch.Tensor:
    """tinymoe.flash.flash_attention's signature and result, computed by the Triton kernels.

    q (batch, n_heads, T_q, head_dim); k (batch, n_kv_heads, T_k, head_dim); v (batch, n_kv_heads, T_k, v_dim).
    block_m, block_n: query and key tile sizes, powers of two >= 16 (tl.dot's minimum).
    """
    from .api import interpreted
    check_flash_input(q, k, v)
    rule = MaskRule(causal=causal, window=window, chunk_size=chunk_size)
    for name, block in (("block_m", block_m), ("block_n", block_n)):
        if isinstance(block, bool) or not isinstance(block, int) or block < 16 or block & (block - 1):
            raise ValueError(f"{name}={block!r}: a Triton tile must be a power of two >= 16 (tl.dot's minimum)")
    if interpreted() and type(tl.zeros).__name__ == "JITFunction":
        raise RuntimeError("Triton was imported before TRITON_INTERPRET=1 was set (torch.nn.attention imports it, "
                           "for one), so its own library is not interpreted: import tinymoe.kernels first, or set "
                           "TRITON_INTERPRET=1 in the environment before starting Python")
    if q.dtype == torch.bfloat16 and interpreted():
        raise ValueError("bfloat16 under TRITON_INTERPRET=1: the interpreter computes dots with numpy, which has no "
                         "bfloat16; use float16 or float32 on the CPU")
    if q.device.type == "cpu" and not interpreted():
        raise ValueError("q is on the CPU but the Triton kernels were compiled for a GPU: move the tensors to CUDA, "
                         "or set TRITON_INTERPRET=1 before importing tinymoe.kernels to run them on the CPU")
    if q.dtype == torch.float64:
        raise ValueError("float64: the Triton kernels compute in float32 with float16/float32 inputs; use "
                         "tinymoe.flash.flash_attention (the PyTorch reference) for float64")
    scale = 1.0 / math.sqrt(q.shape[-1]) if scale is None else float(scale)
    return TritonFlashAttention.apply(q, k, v, rule, scale, block_m, block_n)
