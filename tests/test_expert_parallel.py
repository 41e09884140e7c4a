"""Expert parallelism with real processes: 2 and 4 gloo ranks on loopback against the one-process layer.

Each group of processes is launched once per module (start-up is the slow part) and runs every
check in tests/expert_parallel_workers.py; the tests below read what each rank returned.
`launch` kills every process it started before it returns, whatever happened.
"""
import pytest
import torch

import tinymoe as tm
from tinymoe.config import ConfigError
from tinymoe.distributed import (ExpertParallelGroup, ExpertParallelMoE, RankFailure, config_hash, drop_overflow,
                                 exchange_bytes, exchange_plan, expected_bytes_per_rank, launch, slot_counts)
from tinymoe.moe import Routing, apply_capacity, capacity

import expert_parallel_workers as workers

TOLERANCE = 1e-5          # float32 sums of a few dozen products, reordered by the split across ranks
LAUNCH_TIMEOUT = 240      # seconds for a whole group, start-up included (2 busy cores)


@pytest.fixture(scope="module")
def two_ranks():
    return launch(workers.two_rank_checks, 2, timeout=LAUNCH_TIMEOUT, collective_timeout=60)


@pytest.fixture(scope="module")
def four_ranks():
    return launch(workers.four_rank_checks, 4, timeout=LAUNCH_TIMEOUT, collective_timeout=60, check=False)


def _assert_matches(ranks, case):
    for rank, result in enumerate(ranks):
        assert not isinstance(result, RankFailure), f"rank {rank} failed before the checks: {result}"
        for name, diff in result["cases"][case]["diffs"].items():
            assert diff < TOLERANCE, f"{case}, rank {rank}: {name} differs from the one-process layer by {diff:.2e}"


def _assert_case_is_what_it_says(ranks, case):
    """The routing really was balanced / skewed / empty, with / without drops."""
    results = [r["cases"][case] for r in ranks]
    W = len(ranks)
    dropped = sum(r["dropped"] for r in results)
    if workers.CASES[case][1] is None:
        assert dropped == 0, f"{case}: a dropless run dropped {dropped} slots"
    else:
        assert dropped > 0, f"{case}: the capacity case dropped nothing, so it tests nothing"
    if case.startswith("skewed"):
        assert all(r["send_counts"][:-1] == [0] * (W - 1) for r in results), \
            f"{case}: tokens went to other ranks than the last: {[r['send_counts'] for r in results]}"
    if case.startswith("empty"):
        loads = [load for r in results for load in r["local_load"]]         # all experts, in order
        assert loads[1] == loads[2] == 0, f"{case}: experts 1 and 2 should be empty, loads {loads}"
        assert results[-1]["send_counts"] == [0] * W, "the last rank has no tokens and must send none"
    if case.startswith("random"):
        assert sum(1 for r in results if sum(r["local_load"]) > 0) > 1, f"{case}: only one rank got tokens"


@pytest.mark.slow
@pytest.mark.parametrize("case", list(workers.CASES))
def test_two_ranks_equal_the_single_process_layer(two_ranks, case):
    _assert_matches(two_ranks, case)
    _assert_case_is_what_it_says(two_ranks, case)


@pytest.mark.slow
@pytest.mark.parametrize("case", list(workers.CASES))
def test_four_ranks_equal_the_single_process_layer(four_ranks, case):
    survivors = [r for rank, r in enumerate(four_ranks) if rank != 2]       # rank 2 dies in the last check
    _assert_matches(survivors, case)


@pytest.mark.slow
def test_n_experts_not_divisible_by_world_size_fails_at_once(two_ranks):
    for rank, result in enumerate(two_ranks):
        error = result["not_divisible"]
        assert error["type"] == "ConfigError", f"rank {rank}: {error}"
        assert "n_experts=5" in error["message"] and "world_size=2" in error["message"], error["message"]
        assert error["seconds"] < 1.0, f"rank {rank} took {error['seconds']:.1f} s to refuse"


@pytest.mark.slow
def test_ranks_with_different_configs_are_told_which_field_differs(two_ranks):
    for rank, result in enumerate(two_ranks):
        error = result["config_mismatch"]
        assert error["type"] == "ConfigError", f"rank {rank}: {error}"
        assert "rank 0 has moe.top_k=2, rank 1 has moe.top_k=1" in error["message"], error["message"]
        assert error["seconds"] < workers.FAILURE_TIMEOUT, f"rank {rank} took {error['seconds']:.1f} s"


@pytest.mark.slow
def test_a_skipped_step_is_named_on_every_rank(two_ranks):
    for rank, result in enumerate(two_ranks):
        error = result["skipped_step"]
        assert error["type"] == "ExpertParallelError", f"rank {rank}: {error}"
        assert "rank 1 skipped step 1" in error["message"], error["message"]
        assert error["seconds"] < workers.FAILURE_TIMEOUT, f"rank {rank} took {error['seconds']:.1f} s"


@pytest.mark.slow
def test_a_rank_that_stops_calling_the_layer_is_named_after_the_timeout(two_ranks):
    error = two_ranks[0]["hang"]
    assert error["type"] == "ExpertParallelError", error
    assert "step 1" in error["message"] and "rank 1 (last seen at step 0)" in error["message"], error["message"]
    assert workers.FAILURE_TIMEOUT - 0.5 < error["seconds"] < workers.FAILURE_TIMEOUT + 2.0, \
        f"took {error['seconds']:.1f} s: a hung peer is noticed at the {workers.FAILURE_TIMEOUT} s timeout"


@pytest.mark.slow
def test_a_dead_rank_is_named_by_the_others_within_the_timeout(four_ranks):
    assert isinstance(four_ranks[2], RankFailure) and four_ranks[2].exitcode == 3, f"rank 2 should have died: {four_ranks[2]}"
    for rank in (0, 1, 3):
        error = four_ranks[rank]["dead_rank"]
        assert error["type"] == "ExpertParallelError", f"rank {rank}: {error}"
        assert "step 1" in error["message"] and "rank 2 (last seen at step 0)" in error["message"], error["message"]
        assert error["seconds"] < workers.FAILURE_TIMEOUT + 2.0, f"rank {rank} took {error['seconds']:.1f} s"


# ---- without processes: the pieces every rank computes on its own -----------------------------
@pytest.mark.parametrize("world_size,top_k,capacity_factor", [(2, 2, 1.0), (4, 2, 0.5), (3, 1, 1.25), (4, 3, 2.0)])
def test_capacity_across_ranks_equals_one_process(world_size, top_k, capacity_factor):
    """Split one batch over ranks, seat each rank's slots from the shared counts: the same drops."""
    g = torch.Generator().manual_seed(world_size * 10 + top_k)
    n_experts = 12
    sizes = [int(n) for n in torch.randint(0, 9, (world_size,), generator=g)]
    skew = torch.tensor([4.0, 1, 1, 0.5, 0.5, 0.1] * 2)                    # uneven load, so seats run out
    chosen = torch.stack([torch.multinomial(skew, top_k, generator=g) for _ in range(sum(sizes))]).reshape(-1, top_k)
    gates = torch.rand(chosen.shape, generator=g)
    cap = capacity(sum(sizes) * top_k, n_experts, capacity_factor)
    want_ids, want_gates, want_dropped = apply_capacity(chosen, gates, n_experts, cap)
    parts = list(zip(chosen.split(sizes), gates.split(sizes)))
    counts = torch.stack([slot_counts(ids, n_experts) for ids, _ in parts])   # (W, k, E)
    plan = exchange_plan(counts, torch.tensor(sizes), capacity_factor, world_size)
    assert plan["capacity"] == cap
    kept = plan["kept"]
    assert torch.equal(plan["routing_counts"], torch.stack([Routing.count_load(g[0], n_experts) for g in
                                                            (drop_overflow(i, t, kept[r]) for r, (i, t) in enumerate(parts))]))
    got = [drop_overflow(ids, gts, kept[r]) for r, (ids, gts) in enumerate(parts)]
    assert torch.equal(torch.cat([g[0] for g in got]), want_ids), "kept expert ids differ from the one-process layer"
    assert torch.equal(torch.cat([g[1] for g in got]), want_gates)
    assert torch.equal(torch.cat([g[2] for g in got]), want_dropped)
    assert int(want_dropped.sum()) > 0 or capacity_factor >= 2.0, "the case drops nothing: make it tighter"


def test_config_hash_is_equal_for_equal_configs_and_differs_with_any_field():
    config = tm.ModelConfig(d_model=6, n_heads=1, moe=tm.MoEConfig(n_experts=4))
    same = tm.ModelConfig(d_model=6, n_heads=1, moe=tm.MoEConfig(n_experts=4))
    assert config_hash(config) == config_hash(same)
    for changed in (config.replace(d_model=8), config.replace(moe=tm.MoEConfig(n_experts=4, top_k=1)),
                    config.replace(moe=tm.MoEConfig(n_experts=4, capacity_factor=1.0))):
        assert config_hash(changed) != config_hash(config), f"hash ignores a change: {changed}"


def test_plan_refuses_experts_that_do_not_split_evenly():
    with pytest.raises(ConfigError, match="n_experts=6 is not divisible by world_size=4"):
        exchange_plan(torch.zeros(4, 1, 6, dtype=torch.int64), torch.zeros(4), None, 4)


def test_exchange_bytes_of_an_even_routing_equal_the_expected_formula():
    """N tokens per rank, top_k, spread evenly over W ranks: the count-based and the formula agree."""
    W, N, k, d_model, E = 4, 32, 2, 16, 8
    send = [N * k // W] * W                                                 # what each rank gets from me
    got = exchange_bytes(send, send, rank=1, d_model=d_model, element_size=4, top_k=k, n_experts=E)
    assert got["total"] == expected_bytes_per_rank(N, k, d_model, W, 4, n_experts=E)
    assert got["tokens"] == got["results"] == N * k * (W - 1) // W * d_model * 4


@pytest.mark.parametrize("router", ["expert_choice", "soft"])
def test_routers_that_pick_over_the_whole_batch_are_refused(router):
    config = tm.ModelConfig(d_model=6, n_heads=1, moe=tm.MoEConfig(n_experts=4, router=router, capacity_factor=1.0))
    group = ExpertParallelGroup(rank=0, world_size=2, store=None)           # refused before any communication
    with pytest.raises(ConfigError, match="token-choice router"):
        ExpertParallelMoE(config, group)
