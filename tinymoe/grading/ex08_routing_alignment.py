"""Exercise 08, the alignment step of the Triton MoE kernel: where each routed token goes.

    padded_offsets(expert_counts, block_m)      (n_experts + 1,) int64: the first row of every
                                                expert's segment, each segment padded up to a
                                                multiple of block_m, then the rows in use
    pair_rows(expert_ids, n_experts, block_m)   (n_tokens * top_k,) int64: the row each
                                                (token, slot) pair lands in (pair = token * top_k
                                                + slot), pairs of one expert in pair order; -1
                                                for a dropped pair

Reference: tinymoe.kernels.align, the Triton kernels themselves (in Triton's interpreter on a
CPU), so this exercise needs Triton installed. The wrong answers: segments not padded, padding
rounded down, a whole tile for an expert with no pairs, an extra tile for an exact multiple,
segment ends instead of starts; for the rows, the pairs numbered slot-major, a dropped pair
given a row, and rows from unpadded segments.
"""
from __future__ import annotations

import torch

from .checks import Case, Exercise, Misconception, Property, Question

NOTEBOOK = "notebooks/09_gpu_scale.ipynb"


def _align(expert_ids: torch.Tensor, n_experts: int, block_m: int):
    """The core's alignment (Triton), on the GPU when there is one, else in the interpreter."""
    try:
        from ..kernels import align, interpreted
    except ImportError as error:                     # e.g. no Triton on this platform
        raise RuntimeError("exercise 08's reference is the Triton alignment kernel: install triton "
                           "(Linux) to check it") from error
    device = "cpu" if interpreted() else "cuda"
    return align(expert_ids.to(device), n_experts, block_m)


def _ids_from_counts(d, counts: list[int]) -> torch.Tensor:
    ids = torch.repeat_interleave(torch.arange(len(counts)), torch.tensor(counts))
    return ids[torch.randperm(len(ids), generator=d.generator)][:, None]          # (n_tokens, 1)


# ---- padded_offsets ------------------------------------------------------------------------------
def offsets_cases(d):
    specs = [("4 experts with 5, 0, 17 and 3 pairs, block_m 16", [5, 0, 17, 3], 16),
             ("3 experts with 16, 32 and 1 pairs (exact multiples), block_m 16", [16, 32, 1], 16),
             ("every pair on one expert of 5, block_m 32", [0, 0, 40, 0, 0], 32),
             ("one expert, block_m 64", [d.randint(1, 200)], 64),
             ("8 experts with random loads, block_m 16", [d.randint(0, 40) for _ in range(8)], 16)]
    cases = []
    for label, counts, block_m in specs:
        if sum(counts) == 0:
            counts[0] = 1
        layout = _align(_ids_from_counts(d, counts), len(counts), block_m)
        cases.append(Case(label, (torch.tensor(counts), block_m), expected=layout.expert_offsets.cpu().long()))
    return cases


def _segments_fit(case, got, call):
    counts, block_m = case.args
    if got.numel() != counts.numel() + 1:
        return None
    if int(got[0]) != 0:
        return "the first segment must start at row 0"
    sizes = got[1:] - got[:-1]
    if (sizes < counts).any():
        return "some expert's segment is shorter than its number of pairs"
    if (got % block_m != 0).any():
        return "some segment does not start on a multiple of block_m; every tile of block_m rows must belong to one expert"


def _wrong_offsets(how):
    def wrong(counts, block_m):
        ceil = (counts + block_m - 1) // block_m * block_m
        padded = {"unpadded": counts, "floor": counts // block_m * block_m,
                  "empty_gets_a_tile": torch.clamp(ceil, min=block_m),
                  "extra_tile": (counts // block_m + 1) * block_m, "ends": ceil}[how]
        ends = padded.cumsum(0)
        return ends if how == "ends" else torch.cat([torch.zeros(1, dtype=ends.dtype), ends])
    return wrong


PADDED_OFFSETS = Question(
    "padded_offsets", "each expert's first row, segments padded to multiples of block_m", offsets_cases,
    section=f"{NOTEBOOK}, section: Stage 2, alignment: give each expert a contiguous stretch of rows",
    properties=[Property("segments fit", _segments_fit)],
    misconceptions=[
        Misconception("segments_not_padded",
                      "pad every expert's segment up to a multiple of block_m: a tile of the grouped GEMM must hold "
                      "rows of one expert only",
                      _wrong_offsets("unpadded")),
        Misconception("padding_rounded_down",
                      "round each count UP to a multiple of block_m (ceil), or the segment is too short for its pairs",
                      _wrong_offsets("floor")),
        Misconception("empty_expert_gets_a_tile",
                      "an expert with no pairs takes no rows: ceil(0 / block_m) * block_m = 0",
                      _wrong_offsets("empty_gets_a_tile")),
        Misconception("exact_multiple_gets_extra_tile",
                      "a count that is already a multiple of block_m needs no padding: (count + block_m - 1) // "
                      "block_m * block_m, not (count // block_m + 1) * block_m",
                      _wrong_offsets("extra_tile")),
        Misconception("ends_not_starts",
                      "n_experts + 1 entries: an exclusive prefix sum, starting with 0 (expert 0 starts at row 0) "
                      "and ending with the rows in use",
                      _wrong_offsets("ends")),
    ],
    hints=["padded = ceil(count / block_m) * block_m per expert, in integers: (count + block_m - 1) // block_m * block_m.",
           "The offsets are 0 followed by the running sum of the padded counts (torch.cumsum)."],
)


# ---- pair_rows ---------------------------------------------------------------------------------
def rows_cases(d):
    def distinct(n_tokens, top_k, n_experts):
        return torch.stack([torch.randperm(n_experts, generator=d.generator)[:top_k] for _ in range(n_tokens)])

    dropped = distinct(13, 2, 5)
    dropped[torch.rand(13, 2, generator=d.generator) < 0.3] = -1
    specs = [("13 tokens, top-2 of 5 experts, block_m 16", distinct(13, 2, 5), 5, 16),
             ("some pairs dropped (-1), block_m 16", dropped, 5, 16),
             ("only experts 0 and 3 used, block_m 16", torch.tensor([[0, 3], [3, 0], [0, 3], [3, 0], [0, 3]]), 4, 16),
             ("40 tokens, top-1 of 3 experts, block_m 16", distinct(40, 1, 3), 3, 16),
             ("7 tokens, top-4 of 4 experts, block_m 32", distinct(7, 4, 4), 4, 32),
             ("one token", distinct(1, 2, 6), 6, 16)]
    cases = []
    for label, ids, n_experts, block_m in specs:
        layout = _align(ids, n_experts, block_m)
        cases.append(Case(label, (ids, n_experts, block_m), expected=layout.pair_rows.cpu().long()))
    return cases


def _rows_rules(case, got, call):
    ids, n_experts, block_m = case.args
    flat = ids.reshape(-1)
    if ((flat < 0) != (got < 0)).any():
        return "a dropped pair (id -1) must get row -1, and every kept pair a row >= 0"
    kept = got[flat >= 0]
    if kept.unique().numel() != kept.numel():
        return "two pairs landed in the same row"


def _wrong_rows(order="token_major", dropped_row=False, padded=True):
    def wrong(ids, n_experts, block_m):
        flat = (ids.t() if order == "slot_major" else ids).reshape(-1)
        counts = torch.bincount(flat[flat >= 0], minlength=n_experts)
        sizes = (counts + block_m - 1) // block_m * block_m if padded else counts
        starts = torch.cat([torch.zeros(1, dtype=torch.long), sizes.cumsum(0)])[:-1]
        rows = torch.full_like(flat, -1)
        for e in range(n_experts):
            where = torch.where(flat == e)[0]
            rows[where] = starts[e] + torch.arange(len(where))
        if dropped_row:
            rows[flat < 0] = starts[-1] + sizes[-1] + torch.arange(int((flat < 0).sum()))
        return rows if order != "slot_major" else rows.reshape(ids.shape[1], ids.shape[0]).t().reshape(-1)
    return wrong


PAIR_ROWS = Question(
    "pair_rows", "the row each (token, slot) pair lands in", rows_cases,
    section=f"{NOTEBOOK}, section: Stage 2, alignment: give each expert a contiguous stretch of rows",
    properties=[Property("rows are a layout", _rows_rules)],
    misconceptions=[
        Misconception("pairs_slot_major",
                      "inside an expert's segment the pairs keep their flat order, pair = token * top_k + slot "
                      "(token by token), not all first slots before all second slots",
                      _wrong_rows(order="slot_major")),
        Misconception("dropped_pair_given_a_row",
                      "a dropped pair (id -1) takes no row: its row is -1",
                      _wrong_rows(dropped_row=True)),
        Misconception("rows_from_unpadded_segments",
                      "the segments are padded to multiples of block_m: an expert's rows start at its padded offset",
                      _wrong_rows(padded=False)),
    ],
    hints=["Flatten expert_ids row by row: pair p = token * top_k + slot.",
           "Row of pair p = padded_offsets[e] + (how many earlier pairs chose the same expert e)."],
)

EXERCISE = Exercise("08_routing_alignment", "Routing alignment for the grouped GEMM", NOTEBOOK,
                    [PADDED_OFFSETS, PAIR_ROWS])
