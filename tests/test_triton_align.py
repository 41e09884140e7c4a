"""The alignment kernels (tinymoe/kernels/align.py): the expert-sorted, tile-padded layout.

Checked against what it must equal, computed with plain PyTorch: a stable argsort of the flat
expert ids (the order `dispatch_grouped` uses), per-expert counts from bincount, and the padded
prefix sum. Runs in Triton's interpreter on the CPU (TRITON_INTERPRET=1, set here if unset).
"""
import os

os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest  # noqa: E402
import torch  # noqa: E402

from tinymoe.kernels import align, interpreted, triton_route  # noqa: E402
from tinymoe.kernels.align import max_rows  # noqa: E402

pytestmark = pytest.mark.triton
DEVICE = "cpu" if interpreted() else "cuda"
N_EXPERTS = 5


def _random_ids(n_tokens, top_k, n_experts=N_EXPERTS, seed=0):
    """Each token picks top_k distinct experts."""
    g = torch.Generator().manual_seed(seed)
    return torch.stack([torch.randperm(n_experts, generator=g)[:top_k] for _ in range(n_tokens)]).to(DEVICE)


def _cases():
    g = torch.Generator().manual_seed(1)
    dropped = _random_ids(13, 2, seed=2)
    dropped[torch.rand(13, 2, generator=g).to(DEVICE) < 0.3] = -1            # capacity-limited: some slots empty
    return {
        "random, 13 tokens top-2": _random_ids(13, 2),
        "dropped slots (-1)": dropped,
        "empty experts (only 0 and 3 used)": torch.tensor([[0, 3], [3, 0], [0, 3], [3, 0], [0, 3]], device=DEVICE),
        "all tokens on one expert": torch.full((21, 1), 2, device=DEVICE),
        "top_k = n_experts": _random_ids(7, N_EXPERTS),
        "one token": _random_ids(1, 2),
        "every slot dropped": torch.full((4, 2), -1, device=DEVICE),
        "1100 tokens top-4 (several blocks, >256 tiles)": _random_ids(1100, 4, seed=3),
    }


CASES = _cases()


def _expected_layout(ids, n_experts, block_m):
    """The same layout from plain PyTorch: stable sort, bincount, padded prefix sum."""
    flat = ids.reshape(-1).long()
    kept = flat >= 0
    counts = torch.bincount(flat[kept], minlength=n_experts)                            # (E,)
    padded = (counts + block_m - 1) // block_m * block_m
    offsets = torch.cat([torch.zeros(1, dtype=torch.long, device=ids.device), padded.cumsum(0)])   # (E+1,)
    order = torch.argsort(torch.where(kept, flat, n_experts), stable=True)[:int(kept.sum())]     # pairs by expert
    return counts, offsets, order


@pytest.mark.parametrize("name", list(CASES))
@pytest.mark.parametrize("block_m", [16, 32])
def test_segments_hold_each_experts_pairs_in_token_order(name, block_m):
    ids = CASES[name]
    alignment = align(ids, N_EXPERTS, block_m)
    counts, offsets, order = _expected_layout(ids, N_EXPERTS, block_m)
    assert torch.equal(alignment.expert_counts.long(), counts), (
        f"{name}: expert_counts {alignment.expert_counts.tolist()}, bincount gives {counts.tolist()}")
    assert torch.equal(alignment.expert_offsets.long(), offsets), (
        f"{name}: expert_offsets {alignment.expert_offsets.tolist()}, padded prefix sum gives {offsets.tolist()}")
    rows = alignment.sorted_pairs.long()
    real = rows[rows >= 0]
    assert torch.equal(real, order), (
        f"{name}: the permuted pairs (padding removed) are not the stable sort by expert\n"
        f"kernel: {real.tolist()}\nstable argsort: {order.tolist()}")
    for e in range(N_EXPERTS):
        start, count, end = int(offsets[e]), int(counts[e]), int(offsets[e + 1])
        segment = rows[start:start + count]
        assert torch.all(ids.reshape(-1)[segment] == e), f"{name}: expert {e}'s segment holds pairs of other experts"
        assert torch.all(rows[start + count:end] == -1), f"{name}: expert {e}'s padding rows are not -1"
    assert torch.all(rows[int(offsets[-1]):] == -1), f"{name}: rows past the last segment are not padding"


@pytest.mark.parametrize("name", list(CASES))
def test_pair_rows_invert_the_permutation(name):
    ids = CASES[name]
    alignment = align(ids, N_EXPERTS, 16)
    pair_rows = alignment.pair_rows.long()
    kept = ids.reshape(-1) >= 0
    assert torch.all(pair_rows[~kept] == -1), f"{name}: dropped pairs must have row -1, got {pair_rows[~kept].tolist()}"
    pairs = torch.arange(ids.numel(), device=DEVICE)[kept]
    back = alignment.sorted_pairs.long()[pair_rows[kept]]
    assert torch.equal(back, pairs), f"{name}: sorted_pairs[pair_rows[p]] != p for some pair p"


@pytest.mark.parametrize("name", list(CASES))
def test_every_tile_knows_its_expert_and_unused_tiles_are_marked(name):
    ids = CASES[name]
    block_m = 16
    alignment = align(ids, N_EXPERTS, block_m)
    offsets = alignment.expert_offsets.long()
    used_tiles = int(offsets[-1]) // block_m
    tile_starts = torch.arange(alignment.n_tiles, device=DEVICE) * block_m
    # the expert whose segment [offsets[e], offsets[e+1]) contains the tile's first row
    expected = torch.searchsorted(offsets[1:], tile_starts, right=True)
    expected[used_tiles:] = -1
    assert torch.equal(alignment.tile_experts.long(), expected), (
        f"{name}: tile_experts {alignment.tile_experts.tolist()}, expected {expected.tolist()}")


@pytest.mark.parametrize("name", list(CASES))
def test_buffers_are_sized_for_the_worst_case_without_asking_the_gpu(name):
    ids = CASES[name]
    n_pairs = ids.numel()
    alignment = align(ids, N_EXPERTS, 16)
    bound = n_pairs + min(N_EXPERTS, n_pairs) * 15
    assert alignment.n_rows == max_rows(n_pairs, N_EXPERTS, 16) and alignment.n_rows >= bound, (
        f"{name}: {alignment.n_rows} rows allocated, the bound tokens*k + n_experts*(tile-1) is {bound}")
    assert int(alignment.expert_offsets[-1]) <= alignment.n_rows, f"{name}: the rows in use overflow the buffer"


def test_layout_does_not_depend_on_the_block_size():
    ids = CASES["1100 tokens top-4 (several blocks, >256 tiles)"][:150]
    small = align(ids, N_EXPERTS, 16, block_tokens=2)                       # 75 blocks: the scan loops twice
    large = align(ids, N_EXPERTS, 16, block_tokens=256)                     # 1 block
    assert torch.equal(small.sorted_pairs, large.sorted_pairs), "blocks of 2 and of 256 tokens gave different layouts"
    assert torch.equal(small.pair_rows, large.pair_rows), "blocks of 2 and of 256 tokens gave different pair_rows"


def test_router_block_counts_give_the_same_layout_as_counting_again():
    torch.manual_seed(0)
    logits = torch.randn(37, N_EXPERTS, device=DEVICE)
    routing = triton_route(logits, 2, block_tokens=8)
    reused = align(routing.expert_ids, N_EXPERTS, 16, block_counts=routing.block_counts,
                   block_tokens=routing.block_tokens)
    counted = align(routing.expert_ids, N_EXPERTS, 16, block_tokens=8)
    assert torch.equal(reused.block_counts, counted.block_counts), "the router's block counts differ from count_kernel's"
    assert torch.equal(reused.sorted_pairs, counted.sorted_pairs), "reusing the router's counts changed the layout"


def test_permuting_the_batch_moves_the_same_pairs_to_each_expert():
    ids = CASES["random, 13 tokens top-2"]
    perm = torch.randperm(13, generator=torch.Generator().manual_seed(5)).to(DEVICE)
    a, b = align(ids, N_EXPERTS, 16), align(ids[perm], N_EXPERTS, 16)
    # pair p of the permuted batch is pair (perm[p // k] * k + p % k) of the original
    k = ids.shape[1]
    pairs_b = torch.arange(ids.numel(), device=DEVICE)
    original = perm[pairs_b // k] * k + pairs_b % k
    assert torch.equal(a.expert_counts, b.expert_counts), "permuting tokens changed the expert counts"
    for e in range(N_EXPERTS):
        start, count = int(b.expert_offsets[e]), int(b.expert_counts[e])
        seg_b = original[b.sorted_pairs[start:start + count].long()]
        seg_a = a.sorted_pairs[start:start + count].long()
        assert torch.equal(seg_b.sort().values, seg_a.sort().values), f"expert {e} got different pairs after permuting"


def test_align_rejects_a_tile_height_tl_dot_cannot_use():
    with pytest.raises(ValueError, match="block_m=12"):
        align(CASES["one token"], N_EXPERTS, 12)
