"""Stage 2, alignment: where every (token, slot) pair goes so each expert's rows are contiguous.

After routing, token t sends copies of itself to k experts: n_tokens * top_k (token, slot)
pairs, named by their flat index `pair = token * top_k + slot`. A grouped GEMM wants each
expert's pairs next to each other, in tiles of BLOCK_M rows that all belong to one expert. So
we build a permuted, padded list of rows:

    expert 0: pairs ... | padding up to a multiple of BLOCK_M | expert 1: pairs ... | padding | ...

and the tables the GEMMs and the combine need to use it:

    expert_counts  (n_experts,)    pairs per expert (dropped pairs, id -1, are not counted)
    expert_offsets (n_experts + 1,) first row of every expert's segment; each segment is padded
                   to a multiple of BLOCK_M (prefix sum of the padded counts)
    sorted_pairs   (n_rows,)       the pair each permuted row holds; -1 for padding
    pair_rows      (n_pairs,)      the inverse: the row each pair landed in; -1 for a dropped pair
    tile_experts   (n_tiles,)      the expert of every BLOCK_M-row tile; -1 for a tile past the end

Stable: inside an expert's segment the pairs keep their flat order (token order, then slot), so
the result does not depend on anything but the routing, and permuting the batch permutes the
rows the same way. No sorting network is needed: a pair's row is

    row = expert_offsets[e] + (pairs of expert e in earlier blocks) + (pairs of e earlier in this block)

Nothing waits on the host: the number of rows is not known until the counts are, so every
buffer is sized for the worst case, n_pairs + n_experts * (BLOCK_M - 1) rows (each expert
wastes at most BLOCK_M - 1 rows of padding; at most n_pairs experts can be non-empty), and
tiles past the last expert are marked -1 so the GEMM programs there return at once.

Four small kernels, each one idea:
    count_kernel    grid (n_blocks,)        per block of tokens, pairs per expert (one-hot sum)
                    (the router kernel produces the same counts; then this one is skipped)
    scan_kernel     grid (cdiv(n_experts, BLOCK_EXPERTS),)  per expert, a running sum over the
                    blocks: where each block's pairs start inside the expert's segment, and the
                    expert's total
    offsets_kernel  grid (1,)               prefix sum of the padded totals, and the tile table
    scatter_kernel  grid (n_blocks,)        every pair's row; fills sorted_pairs and pair_rows
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import triton
import triton.language as tl

from .router import default_block_tokens

__all__ = ["Alignment", "align", "count_kernel", "scan_kernel", "offsets_kernel", "scatter_kernel",
           "max_rows"]


@triton.jit
def count_kernel(
    expert_ids_ptr,      # (n_pairs,) int32/64 flat (token, slot) expert ids, -1 = dropped
    block_counts_ptr,    # (n_blocks, n_experts) int32, out
    n_pairs, pairs_per_block, n_experts,
    BLOCK_PAIRS: tl.constexpr,    # pairs_per_block rounded up to a power of two
    BLOCK_EXPERTS: tl.constexpr,  # n_experts rounded up to a power of two
):
    block = tl.program_id(0)
    local = tl.arange(0, BLOCK_PAIRS)
    pairs = block * pairs_per_block + local                               # (BLOCK_PAIRS,)
    pair_ok = (local < pairs_per_block) & (pairs < n_pairs)
    ids = tl.load(expert_ids_ptr + pairs, mask=pair_ok, other=-1).to(tl.int32)
    experts = tl.arange(0, BLOCK_EXPERTS)
    one_hot = (ids[:, None] == experts[None, :]).to(tl.int32)            # (BLOCK_PAIRS, BLOCK_EXPERTS); -1 matches nothing
    tl.store(block_counts_ptr + block * n_experts + experts, tl.sum(one_hot, axis=0), mask=experts < n_experts)


@triton.jit
def scan_kernel(
    block_counts_ptr,    # (n_blocks, n_experts) int32
    block_starts_ptr,    # (n_blocks, n_experts) int32, out: exclusive running sum down each column
    expert_counts_ptr,   # (n_experts,) int32, out: column totals
    n_blocks, n_experts,
    BLOCK_BLOCKS: tl.constexpr,   # rows of block_counts read per step
    BLOCK_EXPERTS: tl.constexpr,  # columns (experts) per program
):
    experts = tl.program_id(0) * BLOCK_EXPERTS + tl.arange(0, BLOCK_EXPERTS)  # (BLOCK_EXPERTS,)
    expert_ok = experts < n_experts
    running = tl.zeros((BLOCK_EXPERTS,), dtype=tl.int32)                    # pairs in the blocks so far
    for first in range(0, n_blocks, BLOCK_BLOCKS):
        blocks = first + tl.arange(0, BLOCK_BLOCKS)                         # (BLOCK_BLOCKS,)
        ok = (blocks < n_blocks)[:, None] & expert_ok[None, :]
        offsets = blocks[:, None] * n_experts + experts[None, :]
        counts = tl.load(block_counts_ptr + offsets, mask=ok, other=0)      # (BLOCK_BLOCKS, BLOCK_EXPERTS)
        before = tl.cumsum(counts, axis=0) - counts                         # exclusive: earlier blocks of this step
        tl.store(block_starts_ptr + offsets, running[None, :] + before, mask=ok)
        running += tl.sum(counts, axis=0)
    tl.store(expert_counts_ptr + experts, running, mask=expert_ok)


@triton.jit
def offsets_kernel(
    expert_counts_ptr,   # (n_experts,) int32
    expert_offsets_ptr,  # (n_experts + 1,) int32, out: first row of every expert, then the total
    tile_experts_ptr,    # (n_tiles,) int32, out: expert of every tile, -1 past the end
    n_experts, n_tiles,
    BLOCK_M: tl.constexpr,        # GEMM tile height: every segment is padded to a multiple of it
    BLOCK_EXPERTS: tl.constexpr,  # n_experts rounded up to a power of two (one program sees all)
    BLOCK_TILES: tl.constexpr,    # tiles labelled per step
):
    experts = tl.arange(0, BLOCK_EXPERTS)
    expert_ok = experts < n_experts
    counts = tl.load(expert_counts_ptr + experts, mask=expert_ok, other=0)
    padded = tl.cdiv(counts, BLOCK_M) * BLOCK_M                             # (BLOCK_EXPERTS,) rows per segment
    ends = tl.cumsum(padded, axis=0)                                        # one past each segment's last row
    tl.store(expert_offsets_ptr + experts, ends - padded, mask=expert_ok)
    tl.store(expert_offsets_ptr + n_experts, tl.sum(padded, axis=0))

    # A tile starting at row r belongs to the expert whose segment contains r: the number of
    # segments that end at or before r (empty segments end where they start, so they are
    # skipped). When all n_experts segments end before r the tile is unused: -1.
    for first in range(0, n_tiles, BLOCK_TILES):
        tiles = first + tl.arange(0, BLOCK_TILES)                           # (BLOCK_TILES,)
        tile_rows = tiles * BLOCK_M
        ended = (ends[None, :] <= tile_rows[:, None]) & expert_ok[None, :]  # (BLOCK_TILES, BLOCK_EXPERTS)
        expert = tl.sum(ended.to(tl.int32), axis=1)
        expert = tl.where(expert < n_experts, expert, -1)
        tl.store(tile_experts_ptr + tiles, expert, mask=tiles < n_tiles)


@triton.jit
def scatter_kernel(
    expert_ids_ptr,      # (n_pairs,) int32/64 flat expert ids, -1 = dropped
    block_starts_ptr,    # (n_blocks, n_experts) int32: where this block's pairs start in each segment
    expert_offsets_ptr,  # (n_experts + 1,) int32
    sorted_pairs_ptr,    # (n_rows,) int32, out (pre-filled with -1 = padding)
    pair_rows_ptr,       # (n_pairs,) int32, out
    n_pairs, pairs_per_block, n_experts,
    BLOCK_PAIRS: tl.constexpr,
    BLOCK_EXPERTS: tl.constexpr,
):
    block = tl.program_id(0)
    local = tl.arange(0, BLOCK_PAIRS)
    pairs = block * pairs_per_block + local                               # (BLOCK_PAIRS,)
    pair_ok = (local < pairs_per_block) & (pairs < n_pairs)
    ids = tl.load(expert_ids_ptr + pairs, mask=pair_ok, other=-1).to(tl.int32)
    kept = ids >= 0

    # Rank of each pair among the earlier pairs of the same expert in this block:
    # an exclusive running count down the one-hot columns, read at the pair's own column.
    experts = tl.arange(0, BLOCK_EXPERTS)
    one_hot = (ids[:, None] == experts[None, :]).to(tl.int32)            # (BLOCK_PAIRS, BLOCK_EXPERTS)
    earlier = tl.cumsum(one_hot, axis=0) - one_hot
    rank = tl.sum(earlier * one_hot, axis=1)                              # (BLOCK_PAIRS,)

    safe_ids = tl.where(kept, ids, 0)
    segment = tl.load(expert_offsets_ptr + safe_ids, mask=kept, other=0)
    block_start = tl.load(block_starts_ptr + block * n_experts + safe_ids, mask=kept, other=0)
    rows = tl.where(kept, segment + block_start + rank, -1)
    tl.store(sorted_pairs_ptr + rows, pairs, mask=kept)
    tl.store(pair_rows_ptr + pairs, rows, mask=pair_ok)


@dataclass
class Alignment:
    """The expert-sorted, tile-padded layout of one batch (see the module docstring).

    sorted_pairs   (n_rows,) int32          pair held by each permuted row, -1 = padding
    pair_rows      (n_tokens * top_k,) int32  row of each pair, -1 = dropped
    expert_offsets (n_experts + 1,) int32   segment starts, then the rows in use
    expert_counts  (n_experts,) int32       pairs per expert (the expert load)
    tile_experts   (n_tiles,) int32         expert of each tile, -1 = unused
    block_counts, block_starts (n_blocks, n_experts) int32: the per-block tables in between
    """

    sorted_pairs: torch.Tensor
    pair_rows: torch.Tensor
    expert_offsets: torch.Tensor
    expert_counts: torch.Tensor
    tile_experts: torch.Tensor
    block_counts: torch.Tensor
    block_starts: torch.Tensor
    block_m: int
    top_k: int
    n_experts: int

    @property
    def n_tokens(self) -> int:
        return self.pair_rows.numel() // self.top_k

    @property
    def n_rows(self) -> int:
        """Rows allocated (the worst case), not the rows in use: that is expert_offsets[-1]."""
        return self.sorted_pairs.numel()

    @property
    def n_tiles(self) -> int:
        return self.tile_experts.numel()


def max_rows(n_pairs: int, n_experts: int, block_m: int) -> int:
    """Rows the permuted buffers need in the worst case, rounded up to whole tiles."""
    non_empty = min(n_experts, n_pairs)                     # an expert with no pair has no padding
    return triton.cdiv(n_pairs + non_empty * (block_m - 1), block_m) * block_m


def align(expert_ids: torch.Tensor, n_experts: int, block_m: int, *, block_counts: torch.Tensor | None = None,
          block_tokens: int | None = None) -> Alignment:
    """Sort the (token, slot) pairs by expert into BLOCK_M-padded segments (see the module docstring).

    expert_ids    (n_tokens, top_k) integer, -1 for a dropped pair (capacity-limited routing)
    block_counts  the router's per-block counts, if it made them (with its block_tokens)
    """
    if expert_ids.dim() != 2:
        raise ValueError(f"expert_ids has shape {tuple(expert_ids.shape)}: expected (n_tokens, top_k)")
    if block_m < 16 or block_m & (block_m - 1):
        raise ValueError(f"block_m={block_m}: the GEMM tile height must be a power of two >= 16 (tl.dot needs 16)")
    n_tokens, top_k = expert_ids.shape
    n_pairs = n_tokens * top_k
    if n_pairs + n_experts * block_m >= 2**31:
        raise ValueError(f"n_tokens * top_k = {n_pairs}: row indices are int32; split the batch")
    device = expert_ids.device
    flat_ids = expert_ids.contiguous().view(-1)                             # (n_pairs,) pair = token * top_k + slot
    block_tokens = block_tokens or default_block_tokens(n_tokens, n_experts, top_k)
    pairs_per_block = block_tokens * top_k
    n_blocks = triton.cdiv(n_tokens, block_tokens)
    block_pairs = triton.next_power_of_2(pairs_per_block)
    block_experts = triton.next_power_of_2(n_experts)

    if block_counts is None:
        block_counts = torch.empty(n_blocks, n_experts, dtype=torch.int32, device=device)
        if n_blocks:
            count_kernel[(n_blocks,)](flat_ids, block_counts, n_pairs, pairs_per_block, n_experts,
                                      BLOCK_PAIRS=block_pairs, BLOCK_EXPERTS=block_experts)
    elif tuple(block_counts.shape) != (n_blocks, n_experts):
        raise ValueError(f"block_counts has shape {tuple(block_counts.shape)}: expected ({n_blocks}, {n_experts}) "
                         f"for {n_tokens} tokens in blocks of {block_tokens}; pass the router's block_tokens too")

    block_starts = torch.empty(n_blocks, n_experts, dtype=torch.int32, device=device)
    expert_counts = torch.empty(n_experts, dtype=torch.int32, device=device)
    scan_experts = min(block_experts, 32)
    scan_kernel[(triton.cdiv(n_experts, scan_experts),)](
        block_counts, block_starts, expert_counts, n_blocks, n_experts,
        BLOCK_BLOCKS=min(64, triton.next_power_of_2(max(n_blocks, 1))), BLOCK_EXPERTS=scan_experts)

    n_rows = max_rows(n_pairs, n_experts, block_m)
    n_tiles = n_rows // block_m
    expert_offsets = torch.empty(n_experts + 1, dtype=torch.int32, device=device)
    tile_experts = torch.empty(n_tiles, dtype=torch.int32, device=device)
    offsets_kernel[(1,)](expert_counts, expert_offsets, tile_experts, n_experts, n_tiles,
                         BLOCK_M=block_m, BLOCK_EXPERTS=block_experts,
                         BLOCK_TILES=min(256, triton.next_power_of_2(max(n_tiles, 1))))

    sorted_pairs = torch.full((n_rows,), -1, dtype=torch.int32, device=device)
    pair_rows = torch.empty(n_pairs, dtype=torch.int32, device=device)
    if n_blocks:
        scatter_kernel[(n_blocks,)](flat_ids, block_starts, expert_offsets, sorted_pairs, pair_rows,
                                    n_pairs, pairs_per_block, n_experts,
                                    BLOCK_PAIRS=block_pairs, BLOCK_EXPERTS=block_experts)
    return Alignment(sorted_pairs, pair_rows, expert_offsets, expert_counts, tile_experts,
                     block_counts, block_starts, block_m, top_k, n_experts)
