"""ExpertParallelExplorer: sliders -> the core's exchange plan -> grid, counts, bytes; bad combinations keep the picture."""
import numpy as np

from tinymoe.distributed import expected_bytes_per_rank
from tinymoe.viz.expert_parallel_explorer import ExpertParallelExplorer


def test_moving_the_ranks_reshapes_the_grid_and_the_bytes_follow():
    explorer = ExpertParallelExplorer(world_size=2, n_experts=4, tokens_per_rank=16)
    assert explorer.shapes == {"grid": (2, 2), "routing_counts": (2, 4)}
    explorer.set(world_size=4)
    assert explorer.error is None, explorer.error
    assert explorer.shapes == {"grid": (4, 4), "routing_counts": (4, 4)}
    assert "grid (4, 4)" in explorer.shape_label
    curves = explorer.curve_data
    sizes, busiest = curves["busiest rank, this routing"]
    assert list(sizes) == [1, 2, 4], f"world sizes that divide 4 experts: {sizes}"
    assert busiest[0] == 0 and (busiest[1:] > 0).all(), f"one rank sends nothing, more ranks do: {busiest}"
    formula = [expected_bytes_per_rank(16, 2, 64, w, 4, n_experts=4) for w in (1, 2, 4)]
    assert np.allclose(curves["even-routing formula"][1], formula)
    # every pair is counted once: the grid sums to all ranks' tokens times top_k (dropless)
    assert int(explorer.heatmap_data.sum()) == 4 * 16 * 2


def test_experts_that_do_not_split_evenly_show_the_rule_and_keep_the_last_picture():
    explorer = ExpertParallelExplorer(world_size=2, n_experts=4)
    before = explorer.heatmap_data.copy()
    explorer.set(world_size=3)
    assert "n_experts=4 is not divisible by world_size=3" in explorer.status, explorer.status
    assert explorer.shapes["grid"] == (2, 2)
    assert np.array_equal(explorer.heatmap_data, before)


def test_a_capacity_drops_pairs_of_a_skewed_routing():
    explorer = ExpertParallelExplorer(world_size=2, n_experts=8, tokens_per_rank=64, capacity_factor=0.5)
    total = int(explorer.heatmap_data.sum())
    assert total < 2 * 64 * 2, f"capacity 0.5 must drop pairs, kept {total} of {2 * 64 * 2}"
    assert "dropped" in explorer.view.notes
