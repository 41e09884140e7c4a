"""Stage 4, combine: each token's k expert outputs summed back into one row, in a fixed order.

After the down projection, the (already gate-weighted) output of pair p = token * top_k + slot
sits in row `pair_rows[p]` of the permuted buffer. The layer's output is

    out[t] = rows[pair_rows[t*k + 0]] + rows[pair_rows[t*k + 1]] + ... + rows[pair_rows[t*k + k-1]]

A dropped pair (row -1) adds nothing. The sum runs slot 0, 1, ..., k-1, accumulated in float32
and rounded once at the end. The easy alternative, every down-projection program adding its
rows into `out` with atomic adds, lets the arrival order (and so the rounding) change from run
to run; summing here in a fixed order makes the same input give bitwise the same output.
The backward pass reuses this kernel to sum the k input gradients of each token.

Launch grid and block sizes:
    grid = (cdiv(n_tokens, BLOCK_TOKENS), cdiv(d_model, BLOCK_D)); each program owns a
    BLOCK_TOKENS x BLOCK_D block of the output and makes TOP_K gathered loads into it
    (TOP_K is a compile-time constant, so the loop over slots is unrolled).
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from .align import Alignment

__all__ = ["combine_kernel", "combine"]


@triton.jit
def combine_kernel(
    rows_ptr,            # (n_rows, d_model) per-pair outputs, expert-sorted
    pair_rows_ptr,       # (n_tokens * TOP_K,) int32 row of every pair, -1 = dropped
    out_ptr,             # (n_tokens, d_model) out
    n_tokens, d_model,
    stride_rows_row, stride_rows_d,
    stride_out_token, stride_out_d,
    TOP_K: tl.constexpr,
    BLOCK_TOKENS: tl.constexpr, BLOCK_D: tl.constexpr,
):
    tokens = tl.program_id(0) * BLOCK_TOKENS + tl.arange(0, BLOCK_TOKENS)   # (BLOCK_TOKENS,)
    dims = tl.program_id(1) * BLOCK_D + tl.arange(0, BLOCK_D)                # (BLOCK_D,)
    token_ok = tokens < n_tokens
    dim_ok = dims < d_model
    acc = tl.zeros((BLOCK_TOKENS, BLOCK_D), dtype=tl.float32)
    for slot in tl.static_range(TOP_K):                                      # slot 0 first, always
        rows = tl.load(pair_rows_ptr + tokens * TOP_K + slot, mask=token_ok, other=-1)
        kept = rows >= 0
        values = tl.load(rows_ptr + rows[:, None].to(tl.int64) * stride_rows_row + dims[None, :] * stride_rows_d,
                         mask=kept[:, None] & dim_ok[None, :], other=0.0)
        acc += values.to(tl.float32)
    out = tokens[:, None].to(tl.int64) * stride_out_token + dims[None, :] * stride_out_d
    tl.store(out_ptr + out, acc.to(out_ptr.dtype.element_ty), mask=token_ok[:, None] & dim_ok[None, :])


def combine(rows: torch.Tensor, alignment: Alignment, out_dtype: torch.dtype | None = None) -> torch.Tensor:
    """(n_rows, d_model) per-pair rows -> (n_tokens, d_model): each token's k rows summed in slot order."""
    n_tokens, d_model = alignment.n_tokens, rows.shape[1]
    out = torch.empty(n_tokens, d_model, dtype=out_dtype or rows.dtype, device=rows.device)
    block_tokens = min(32, triton.next_power_of_2(max(n_tokens, 1)))
    block_d = min(128, triton.next_power_of_2(d_model))
    grid = (triton.cdiv(n_tokens, block_tokens), triton.cdiv(d_model, block_d))
    if n_tokens:
        combine_kernel[grid](rows, alignment.pair_rows, out, n_tokens, d_model,
                             rows.stride(0), rows.stride(1), out.stride(0), out.stride(1),
                             TOP_K=alignment.top_k, BLOCK_TOKENS=block_tokens, BLOCK_D=block_d)
    return out
