"""Stage 3, grouped GEMMs: every expert's matrix products over its own rows, in one launch.

After alignment (align.py) the (token, slot) pairs sit in expert-sorted segments padded to
BLOCK_M rows, and `tile_experts[t]` names the expert of tile t. A grouped GEMM is then an
ordinary tiled matmul in which each BLOCK_M-row tile first looks up its expert and multiplies
by that expert's slice of the stacked weights. No copy of the tokens is made: the first GEMM
gathers its input rows straight from x (row r holds pair p = sorted_pairs[r], token p // top_k).

The SwiGLU expert, out = W_down (silu(W_gate x) * W_up x), takes two launches:

    gate_up_kernel          hidden[r] = silu(x[t] W_gate[e]^T) * (x[t] W_up[e]^T)   (n_rows, d_ff)
                            both products share the loaded x tile; SwiGLU is applied to the
                            float32 accumulators before anything is written ("fused").
                            With GATED=False it is the ReLU expert (ffn="relu", w_gate None):
                            hidden[r] = relu(x[t] W_up[e]^T)
    grouped_matmul_kernel   rows[r] = gate[p] * (hidden[r] W_down[e]^T)              (n_rows, d_model)
                            the routing weight multiplies the float32 accumulator (epilogue)

`grouped_matmul_kernel` is general: out[r, n] = scale[p] * sum_k a[row, k] * b[e, n, k] for any
strides of the stacked weights b (E, N, K), so passing `w.transpose(1, 2)` (a view, no copy)
multiplies by W[e] instead of W[e]^T. The backward pass (autograd.py) uses it that way, plus
`weight_grad_kernel`: dW[e] = sum over e's rows of g[r]^T a[r], one program per (expert, tile
of dW), looping over the expert's segment (segments are whole tiles, so the loop has no tail).

Launch grids and block sizes:
    gate_up / grouped_matmul: grid = (n_tiles, cdiv(N, BLOCK_N)); program (t, j) computes the
        BLOCK_M x BLOCK_N block of rows t*BLOCK_M.. and columns j*BLOCK_N.., stepping over K in
        BLOCK_K chunks; tiles marked -1 (past the rows in use) return at once.
    weight_grad: grid = (n_experts, cdiv(N, BLOCK_N), cdiv(K, BLOCK_K)).
    Sizes come from `tile_config`, a small table by shape (tested here, not autotuned: the
    interpreter would time every candidate). tl.dot needs every block dimension >= 16.

64-bit offsets: an expert's offset into the stacked weights is e * d_ff * d_model, past 2**31
at DeepSeek-V3 size (256 * 2048 * 7168), and row * stride can pass it for long batches, so
those products are taken in int64.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import triton
import triton.language as tl

from .align import Alignment

__all__ = ["TileConfig", "tile_config", "gate_up_kernel", "grouped_matmul_kernel", "weight_grad_kernel",
           "gate_up", "grouped_matmul", "weight_grad"]


@triton.jit
def gate_up_kernel(
    x_ptr,               # (n_tokens, d_model): the tokens, gathered row by row on load
    w_gate_ptr,          # (n_experts, d_ff, d_model) stacked W_gate, nn.Linear layout (read when GATED)
    w_up_ptr,            # (n_experts, d_ff, d_model) stacked W_up, same strides as W_gate
    hidden_ptr,          # (n_rows, d_ff) out: silu(gate) * up (or relu(up)), in expert-sorted rows
    gate_ptr, up_ptr,    # (n_rows, d_ff) out when SAVE_PREACTIVATIONS: x W_gate^T and x W_up^T (for backward)
    sorted_pairs_ptr,    # (n_rows,) pair of each row, -1 = padding
    tile_experts_ptr,    # (n_tiles,) expert of each tile, -1 = unused
    d_model, d_ff, top_k,
    stride_x_token, stride_x_model,
    stride_w_expert, stride_w_ff, stride_w_model,
    stride_h_row, stride_h_ff,
    GATED: tl.constexpr,               # True: SwiGLU; False: ReLU (no W_gate)
    SAVE_PREACTIVATIONS: tl.constexpr,
    INPUT_PRECISION: tl.constexpr,     # "ieee" for float32 inputs (as torch.matmul); None (the default) for 16-bit
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
):
    tile = tl.program_id(0)
    expert = tl.load(tile_experts_ptr + tile)
    if expert < 0:                                                         # past the last segment
        return
    rows = tile * BLOCK_M + tl.arange(0, BLOCK_M)                          # (BLOCK_M,) permuted rows
    pairs = tl.load(sorted_pairs_ptr + rows)
    row_ok = pairs >= 0                                                    # padding rows read zeros
    tokens = tl.where(row_ok, pairs, 0) // top_k                           # (BLOCK_M,) token of each row
    cols = tl.program_id(1) * BLOCK_N + tl.arange(0, BLOCK_N)              # (BLOCK_N,) hidden units
    col_ok = cols < d_ff
    ks = tl.arange(0, BLOCK_K)

    x_ptrs = x_ptr + tokens[:, None].to(tl.int64) * stride_x_token + ks[None, :] * stride_x_model   # (BLOCK_M, BLOCK_K)
    w_offsets = expert.to(tl.int64) * stride_w_expert + cols[None, :] * stride_w_ff + ks[:, None] * stride_w_model
    w_gate_ptrs = w_gate_ptr + w_offsets                                   # (BLOCK_K, BLOCK_N): W_gate[e]^T
    w_up_ptrs = w_up_ptr + w_offsets

    acc_gate = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    acc_up = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for k in range(0, d_model, BLOCK_K):
        k_ok = ks < d_model - k
        x = tl.load(x_ptrs, mask=row_ok[:, None] & k_ok[None, :], other=0.0)
        w_up = tl.load(w_up_ptrs, mask=k_ok[:, None] & col_ok[None, :], other=0.0)
        acc_up = tl.dot(x, w_up, acc_up, input_precision=INPUT_PRECISION)   # (BLOCK_M, BLOCK_N) float32
        if GATED:
            w_gate = tl.load(w_gate_ptrs, mask=k_ok[:, None] & col_ok[None, :], other=0.0)
            acc_gate = tl.dot(x, w_gate, acc_gate, input_precision=INPUT_PRECISION)
        x_ptrs += BLOCK_K * stride_x_model
        w_gate_ptrs += BLOCK_K * stride_w_model
        w_up_ptrs += BLOCK_K * stride_w_model

    if GATED:
        hidden = acc_gate * tl.sigmoid(acc_gate) * acc_up                  # silu(gate) * up, in float32
    else:
        hidden = tl.maximum(acc_up, 0.0)                                   # relu(up)
    out = rows[:, None].to(tl.int64) * stride_h_row + cols[None, :] * stride_h_ff
    out_ok = col_ok[None, :]                                               # every row of a used tile exists
    tl.store(hidden_ptr + out, hidden.to(hidden_ptr.dtype.element_ty), mask=out_ok)
    if SAVE_PREACTIVATIONS:
        if GATED:
            tl.store(gate_ptr + out, acc_gate.to(gate_ptr.dtype.element_ty), mask=out_ok)
        tl.store(up_ptr + out, acc_up.to(up_ptr.dtype.element_ty), mask=out_ok)


@triton.jit
def grouped_matmul_kernel(
    a_ptr,               # GATHER_ROWS: (n_tokens, K), row r reads token sorted_pairs[r] // top_k
                         # otherwise:   (n_rows, K), row r reads row r
    b_ptr,               # (n_experts, N, K) stacked weights, any strides (a transposed view works)
    out_ptr,             # (n_rows, N) out
    row_scales_ptr,      # (n_pairs,) float32 gate weight of every pair (read when HAS_ROW_SCALES)
    sorted_pairs_ptr, tile_experts_ptr,
    N, K, top_k,
    stride_a_row, stride_a_k,
    stride_b_expert, stride_b_n, stride_b_k,
    stride_out_row, stride_out_n,
    GATHER_ROWS: tl.constexpr, HAS_ROW_SCALES: tl.constexpr, INPUT_PRECISION: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
):
    tile = tl.program_id(0)
    expert = tl.load(tile_experts_ptr + tile)
    if expert < 0:
        return
    rows = tile * BLOCK_M + tl.arange(0, BLOCK_M)                          # (BLOCK_M,)
    pairs = tl.load(sorted_pairs_ptr + rows)
    row_ok = pairs >= 0
    if GATHER_ROWS:
        a_rows = tl.where(row_ok, pairs, 0) // top_k                       # the token of each row
    else:
        a_rows = rows
    cols = tl.program_id(1) * BLOCK_N + tl.arange(0, BLOCK_N)              # (BLOCK_N,)
    col_ok = cols < N
    ks = tl.arange(0, BLOCK_K)

    a_ptrs = a_ptr + a_rows[:, None].to(tl.int64) * stride_a_row + ks[None, :] * stride_a_k            # (BLOCK_M, BLOCK_K)
    b_ptrs = (b_ptr + expert.to(tl.int64) * stride_b_expert
              + cols[None, :] * stride_b_n + ks[:, None] * stride_b_k)                                  # (BLOCK_K, BLOCK_N)
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for k in range(0, K, BLOCK_K):
        k_ok = ks < K - k
        a = tl.load(a_ptrs, mask=row_ok[:, None] & k_ok[None, :], other=0.0)
        b = tl.load(b_ptrs, mask=k_ok[:, None] & col_ok[None, :], other=0.0)
        acc = tl.dot(a, b, acc, input_precision=INPUT_PRECISION)
        a_ptrs += BLOCK_K * stride_a_k
        b_ptrs += BLOCK_K * stride_b_k

    if HAS_ROW_SCALES:                                                     # epilogue: the gate weight, in float32
        scales = tl.load(row_scales_ptr + pairs, mask=row_ok, other=0.0)
        acc = acc * scales[:, None]
    out = rows[:, None].to(tl.int64) * stride_out_row + cols[None, :] * stride_out_n
    tl.store(out_ptr + out, acc.to(out_ptr.dtype.element_ty), mask=col_ok[None, :])


@triton.jit
def weight_grad_kernel(
    g_ptr,               # (n_tokens or n_rows, N): the gradient at the layer's output side
    a_ptr,               # (n_tokens or n_rows, K): the layer's input side
    dw_ptr,              # (n_experts, N, K) out: dW[e] = sum over e's rows of scale * g[r]^T a[r]
    row_scales_ptr,      # (n_pairs,) float32, multiplies g (read when HAS_ROW_SCALES)
    sorted_pairs_ptr, expert_offsets_ptr,
    N, K, top_k,
    stride_g_row, stride_g_n,
    stride_a_row, stride_a_k,
    stride_dw_expert, stride_dw_n, stride_dw_k,
    GATHER_G: tl.constexpr, GATHER_A: tl.constexpr, HAS_ROW_SCALES: tl.constexpr, INPUT_PRECISION: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
):
    expert = tl.program_id(0)
    ns = tl.program_id(1) * BLOCK_N + tl.arange(0, BLOCK_N)                # (BLOCK_N,)
    ks = tl.program_id(2) * BLOCK_K + tl.arange(0, BLOCK_K)                # (BLOCK_K,)
    n_ok = ns < N
    k_ok = ks < K
    start = tl.load(expert_offsets_ptr + expert)                           # this expert's segment
    end = tl.load(expert_offsets_ptr + expert + 1)

    acc = tl.zeros((BLOCK_N, BLOCK_K), dtype=tl.float32)
    for first in range(start, end, BLOCK_M):                               # an empty expert: no steps, dW = 0
        rows = first + tl.arange(0, BLOCK_M)                               # (BLOCK_M,)
        pairs = tl.load(sorted_pairs_ptr + rows)
        row_ok = pairs >= 0
        tokens = tl.where(row_ok, pairs, 0) // top_k
        if GATHER_G:
            g_rows = tokens
        else:
            g_rows = rows
        if GATHER_A:
            a_rows = tokens
        else:
            a_rows = rows
        g = tl.load(g_ptr + g_rows[:, None].to(tl.int64) * stride_g_row + ns[None, :] * stride_g_n,
                    mask=row_ok[:, None] & n_ok[None, :], other=0.0)      # (BLOCK_M, BLOCK_N)
        a = tl.load(a_ptr + a_rows[:, None].to(tl.int64) * stride_a_row + ks[None, :] * stride_a_k,
                    mask=row_ok[:, None] & k_ok[None, :], other=0.0)      # (BLOCK_M, BLOCK_K)
        if HAS_ROW_SCALES:
            scales = tl.load(row_scales_ptr + pairs, mask=row_ok, other=0.0)
            g = (g.to(tl.float32) * scales[:, None]).to(a.dtype)
        acc = tl.dot(tl.trans(g), a, acc, input_precision=INPUT_PRECISION)  # (BLOCK_N, BLOCK_K)

    out = expert.to(tl.int64) * stride_dw_expert + ns[:, None] * stride_dw_n + ks[None, :] * stride_dw_k
    tl.store(dw_ptr + out, acc.to(dw_ptr.dtype.element_ty), mask=n_ok[:, None] & k_ok[None, :])


# ---- tile sizes by shape -------------------------------------------------------------------

@dataclass(frozen=True)
class TileConfig:
    block_m: int        # rows per tile: also the padding unit of every expert's segment
    block_n: int
    block_k: int
    num_warps: int
    num_stages: int


def tile_config(rows_per_expert: float, n: int, k: int, dtype: torch.dtype) -> TileConfig:
    """Pick tile sizes from a small table instead of autotuning.

    rows_per_expert  n_tokens * top_k / n_experts: decode-sized batches (a few rows per expert)
                     waste most of a tall tile on padding, so they get short tiles.
    n, k             the product's output and reduction sizes; blocks never exceed them by more
                     than the next power of two (no work on columns that do not exist), and
                     never go below 16 (tl.dot's minimum).
    The large-shape entries follow the Triton matmul tutorial's H100 choices for 16-bit inputs;
    float32 gets a shorter BLOCK_K (twice the bytes per element).
    """
    if rows_per_expert <= 16:
        block_m, block_n, block_k, warps, stages = 16, 64, 128, 4, 4
    elif rows_per_expert <= 64:
        block_m, block_n, block_k, warps, stages = 32, 128, 64, 4, 4
    elif rows_per_expert <= 512:
        block_m, block_n, block_k, warps, stages = 64, 128, 64, 4, 3
    else:
        block_m, block_n, block_k, warps, stages = 128, 128, 64, 8, 3
    if dtype == torch.float32:
        block_k = max(16, block_k // 2)
    fit = lambda block, size: max(16, min(block, triton.next_power_of_2(size)))   # noqa: E731
    return TileConfig(block_m, fit(block_n, n), fit(block_k, k), warps, stages)


def _launch_options(config: TileConfig, dtype: torch.dtype) -> dict:
    # float32 inputs: full-precision products, as torch.matmul does by default (tl.dot would use TF32).
    return dict(BLOCK_M=config.block_m, BLOCK_N=config.block_n, BLOCK_K=config.block_k,
                INPUT_PRECISION="ieee" if dtype == torch.float32 else None,
                num_warps=config.num_warps, num_stages=config.num_stages)


def _check_block_m(alignment: Alignment, config: TileConfig) -> None:
    if config.block_m != alignment.block_m:
        raise ValueError(f"tile height block_m={config.block_m} differs from the alignment's {alignment.block_m}: "
                         f"segments are padded to the alignment's tile; use the same block_m for both")


# ---- the wrappers --------------------------------------------------------------------------

def gate_up(x: torch.Tensor, w_gate: torch.Tensor | None, w_up: torch.Tensor, alignment: Alignment,
            config: TileConfig, *, save_preactivations: bool = False):
    """hidden (n_rows, d_ff) = silu(x W_gate[e]^T) * (x W_up[e]^T) over the permuted rows
    (relu(x W_up[e]^T) when w_gate is None).

    Returns (hidden, gate, up); gate and up (the pre-activations) are None unless asked for
    (gate is None for a ReLU expert).
    """
    _check_block_m(alignment, config)
    n_experts, d_ff, d_model = w_up.shape
    gated = w_gate is not None
    if gated and w_up.stride() != w_gate.stride():
        w_gate, w_up = w_gate.contiguous(), w_up.contiguous()
    hidden = torch.empty(alignment.n_rows, d_ff, dtype=x.dtype, device=x.device)
    gate = torch.empty_like(hidden) if save_preactivations and gated else None
    up = torch.empty_like(hidden) if save_preactivations else None
    grid = (alignment.n_tiles, triton.cdiv(d_ff, config.block_n))
    if alignment.n_tiles:
        gate_up_kernel[grid](
            x, w_gate if gated else w_up, w_up, hidden, hidden if gate is None else gate, hidden if up is None else up,
            alignment.sorted_pairs, alignment.tile_experts,
            d_model, d_ff, alignment.top_k,
            x.stride(0), x.stride(1),
            w_up.stride(0), w_up.stride(1), w_up.stride(2),
            hidden.stride(0), hidden.stride(1),
            GATED=gated, SAVE_PREACTIVATIONS=save_preactivations, **_launch_options(config, x.dtype))
    return hidden, gate, up


def grouped_matmul(a: torch.Tensor, b: torch.Tensor, alignment: Alignment, config: TileConfig, *,
                   gather_rows: bool, row_scales: torch.Tensor | None = None,
                   out_dtype: torch.dtype | None = None) -> torch.Tensor:
    """out (n_rows, N) = row_scale * (a[row] @ b[e]^T), b of shape (n_experts, N, K), any strides.

    gather_rows  a is (n_tokens, K) and row r reads its token; otherwise a is (n_rows, K)
    row_scales   (n_tokens * top_k,) float32 weight of every pair, applied in the epilogue
    """
    _check_block_m(alignment, config)
    n_experts, n, k = b.shape
    out = torch.empty(alignment.n_rows, n, dtype=out_dtype or a.dtype, device=a.device)
    grid = (alignment.n_tiles, triton.cdiv(n, config.block_n))
    if alignment.n_tiles:
        grouped_matmul_kernel[grid](
            a, b, out, row_scales if row_scales is not None else out,
            alignment.sorted_pairs, alignment.tile_experts,
            n, k, alignment.top_k,
            a.stride(0), a.stride(1),
            b.stride(0), b.stride(1), b.stride(2),
            out.stride(0), out.stride(1),
            GATHER_ROWS=gather_rows, HAS_ROW_SCALES=row_scales is not None, **_launch_options(config, a.dtype))
    return out


def weight_grad(g: torch.Tensor, a: torch.Tensor, alignment: Alignment, config: TileConfig, *,
                gather_g: bool, gather_a: bool, row_scales: torch.Tensor | None = None,
                out_dtype: torch.dtype | None = None) -> torch.Tensor:
    """dW (n_experts, N, K): for every expert, the sum over its rows of (scale * g[row])^T a[row]."""
    _check_block_m(alignment, config)
    n, k = g.shape[1], a.shape[1]
    dw = torch.empty(alignment.n_experts, n, k, dtype=out_dtype or a.dtype, device=a.device)
    # Here N and K are both output dimensions; BLOCK_K tiles the second one.
    grid = (alignment.n_experts, triton.cdiv(n, config.block_n), triton.cdiv(k, config.block_k))
    weight_grad_kernel[grid](
        g, a, dw, row_scales if row_scales is not None else dw,
        alignment.sorted_pairs, alignment.expert_offsets,
        n, k, alignment.top_k,
        g.stride(0), g.stride(1), a.stride(0), a.stride(1),
        dw.stride(0), dw.stride(1), dw.stride(2),
        GATHER_G=gather_g, GATHER_A=gather_a, HAS_ROW_SCALES=row_scales is not None,
        **_launch_options(config, a.dtype))
    return dw
