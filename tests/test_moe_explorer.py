"""MoEExplorer (notebook 06): every control moves the routing heatmap, the load bars, the dropped
count and the parameter label the way the rules say; the controls that depend on others are
clamped (top_k <= n_experts, switch takes top_k 1, switch and expert choice need a capacity), so
no control position (alone or combined) is impossible or lets an exception escape."""
import itertools
import math

import numpy as np
import pytest

pytest.importorskip("ipywidgets")
pytest.importorskip("plotly")

from tinymoe import ConfigError  # noqa: E402
from tinymoe.moe import capacity, moe_parameter_counts  # noqa: E402
from tinymoe.viz import MoEExplorer  # noqa: E402

START = dict(n_experts=3, top_k=2, capacity_factor=1.0, router="softmax_topk", seq_len=10)


@pytest.fixture
def explorer():
    return MoEExplorer(**START)


def count(n) -> str:
    return f"{int(n):,}" if float(n).is_integer() else f"{n:,.1f}"


def assert_picture_is_consistent(e: MoEExplorer) -> None:
    """The picture on screen agrees with the controls and with the core's own rules."""
    values = e.values
    T, E, router, k = values["seq_len"], values["n_experts"], values["router"], values["top_k"]
    factor = values["capacity_factor"] or None
    assert e.error is None, e.error
    assert e.heatmap_data.shape == (T, 2 * E + 1), e.heatmap_data.shape      # two panels, one gap
    routing = e.view.routing
    assert routing.shape == (T, E)
    np.testing.assert_allclose(e.heatmap_data[:, E + 1:], routing, atol=1e-3)   # the right panel draws it
    load = e.view.expert_load
    assert len(load) == E and all(n >= 0 for n in load)

    counts = moe_parameter_counts(e.config(values))
    assert e.view.parameters == counts
    assert f"parameters {count(counts['total'])}, active per token {count(counts['active'])}" in e.shape_label, \
        e.shape_label
    assert f"{E} experts" in e.shape_label and f"x (1, {T}, 5)" in e.shape_label

    if router in ("soft", "expert_choice"):
        assert e.view.turned_away == [0] * E                                          # nobody is turned away
    if router == "soft":
        assert load == [1] * E and e.view.capacity is None
        assert e.view.dropped == {"assignments": 0, "tokens": 0}
        np.testing.assert_allclose(e.heatmap_data[:, :E].sum(axis=0), 1.0, atol=2e-3)   # dispatch: over tokens
        np.testing.assert_allclose(routing.sum(axis=1), 1.0, atol=1e-5)                   # combine: over experts
        assert counts["active"] == counts["total"]
    elif router == "expert_choice":
        c = min(capacity(T, E, factor), T)
        assert e.view.capacity == c and load == [c] * E, (e.view.capacity, load)
        assert e.view.dropped["tokens"] == int((routing == 0).all(axis=1).sum())
        assert f"{e.view.dropped['tokens']} token" in e.shape_label
    else:
        assert e.view.dropped["assignments"] + sum(load) == T * k, (e.view.dropped, load)
        assert e.view.dropped["assignments"] == int((routing == -1).sum()) == sum(e.view.turned_away)
        assert e.view.turned_away == [int((routing[:, j] == -1).sum()) for j in range(E)]     # the red part of each bar
        assert sum(load) == int((routing > 0).sum())
        assert e.view.dropped["tokens"] == int((routing <= 0).all(axis=1).sum())
        expected = None if factor is None else capacity(T * k, E, factor)
        assert e.view.capacity == expected
        if expected is None:
            assert e.view.dropped["assignments"] == 0 and "no capacity" in e.shape_label
        else:
            assert max(load) <= expected and f"capacity {expected}" in e.shape_label
        assert f"dropped {e.view.dropped['assignments']} assignment" in e.shape_label


def test_starting_picture_is_the_notebooks_sheet_size(explorer):
    assert explorer.error is None and explorer.status == ""
    assert_picture_is_consistent(explorer)
    assert explorer.shapes["moe.router_logits"] == (10, 3)
    assert explorer.shapes["moe.expert_ids"] == (10, 2) and explorer.shapes["moe.W_gate"] == (3, 4, 5)
    assert explorer.view.capacity == 7                                                # ceil(1.0 * 20 / 3)
    assert explorer.view.parameters["total"] == 3 * 5 + 3 * 60 and explorer.view.parameters["active"] == 15 + 2 * 60
    assert "parameters 195, active per token 135" in explorer.shape_label


def test_more_experts_grow_the_total_but_not_the_active_parameters(explorer):
    before = dict(explorer.view.parameters)
    explorer.set(n_experts=8)
    assert_picture_is_consistent(explorer)
    assert explorer.heatmap_data.shape == (10, 17) and len(explorer.view.expert_load) == 8
    assert explorer.shapes["moe.W_router"] == (8, 5) and explorer.shapes["moe.W_up"] == (8, 4, 5)
    assert explorer.view.parameters["total"] == 8 * 5 + 8 * 60 > before["total"]
    assert explorer.view.parameters["active"] - explorer.view.parameters["router"] == before["active"] - before["router"]
    assert "parameters 520, active per token 160" in explorer.shape_label
    changed = {r.name for r in explorer.table.changed_rows}
    assert {"moe.W_router", "moe.router_logits", "moe.expert_load"} <= changed, changed


def test_top_k_sets_the_slots_per_token_and_the_active_parameters(explorer):
    explorer.set(top_k=1)
    assert_picture_is_consistent(explorer)
    assert explorer.shapes["moe.expert_ids"] == (10, 1) and explorer.shapes["moe.gates"] == (10, 1)
    assert explorer.view.parameters["active"] == 15 + 60
    explorer.set(top_k=3)
    assert_picture_is_consistent(explorer)
    assert explorer.view.parameters["active"] == explorer.view.parameters["total"]          # every expert, every token


def test_capacity_factor_sets_the_capacity_and_the_drops(explorer):
    explorer.set(capacity_factor=0.0)                                            # "none": dropless
    assert_picture_is_consistent(explorer)
    assert explorer.view.capacity is None and explorer.view.dropped["assignments"] == 0
    assert sum(explorer.view.expert_load) == 20
    explorer.set(capacity_factor=0.5)                                            # ceil(0.5 * 20 / 3) = 4 seats
    assert_picture_is_consistent(explorer)
    assert explorer.view.capacity == 4
    assert explorer.view.dropped["assignments"] >= 20 - 3 * 4 > 0                    # 12 seats for 20 assignments
    assert "turned away by a full expert" in explorer.view.notes
    full = [j for j, n in enumerate(explorer.view.turned_away) if n]
    assert full and all(explorer.view.expert_load[j] == 4 for j in full)            # only a full expert turns away
    assert f"{explorer.view.expert_load[full[0]]} (+{explorer.view.turned_away[full[0]]} turned away)" in explorer.view.notes
    explorer.set(capacity_factor=2.0)
    assert_picture_is_consistent(explorer)
    assert explorer.view.capacity == 14


@pytest.mark.parametrize("router", ["softmax_topk", "noisy_topk", "sigmoid_bias", "expert_choice", "soft"])
def test_every_router_draws_its_routing(explorer, router):
    explorer.set(router=router)
    assert_picture_is_consistent(explorer)
    assert explorer.shape_label.startswith(f"{router}, 3 experts")


def test_switch_sends_each_token_to_one_expert(explorer):
    explorer.set(top_k=1, router="switch", capacity_factor=1.0)
    assert_picture_is_consistent(explorer)
    assert explorer.view.capacity == 4                                                # ceil(1.0 * 10 / 3)
    assert explorer.view.dropped["assignments"] == explorer.view.dropped["tokens"]          # one slot each: same count
    assert ((explorer.view.routing != 0).sum(axis=1) == 1).all()
    assert explorer.view.parameters["active"] == 15 + 60


def test_noisy_router_is_seeded_so_the_picture_repeats(explorer):
    explorer.set(router="noisy_topk")
    first = explorer.heatmap_data.copy()
    explorer.set(router="softmax_topk")
    explorer.set(router="noisy_topk")
    np.testing.assert_array_equal(explorer.heatmap_data, first)
    assert "W_noise" not in explorer.shape_label and explorer.view.parameters["router"] == 2 * 15


def test_seq_len_moves_every_token_axis(explorer):
    explorer.set(seq_len=24)
    assert_picture_is_consistent(explorer)
    assert explorer.shapes["moe.x"] == (1, 24, 5) and explorer.shapes["moe.router_probs"] == (24, 3)
    assert explorer.view.capacity == math.ceil(1.0 * 48 / 3)
    explorer.set(seq_len=1)
    assert_picture_is_consistent(explorer)
    assert explorer.heatmap_data.shape == (1, 7)


@pytest.mark.parametrize("move, words", [
    (dict(top_k=4), "top_k <= n_experts"),                                   # more experts per token than exist
    (dict(router="switch", top_k=2), "the switch router takes top_k=1"),
    (dict(router="switch", capacity_factor=0.0), "the switch router needs a capacity factor"),
    (dict(router="expert_choice", capacity_factor=0.0), "the expert_choice router needs a capacity factor"),
])
def test_the_impossible_moves_cannot_be_made(explorer, move, words):
    heatmap, label = explorer.heatmap_data.copy(), explorer.shape_label
    with pytest.raises(ValueError, match=words):
        explorer.set(**move)
    assert explorer.values == START and explorer.error is None and explorer.shape_label == label
    np.testing.assert_array_equal(explorer.heatmap_data, heatmap)


def test_moving_one_control_clamps_the_ones_that_depend_on_it(explorer):
    explorer.set(n_experts=8, top_k=4)
    explorer.controls["n_experts"].value = 2                      # as the browser would: top_k follows it down
    assert explorer.values["top_k"] == 2 and explorer.controls["top_k"].max == 2 and explorer.error is None
    explorer.controls["router"].value = "switch"                  # switch: top_k 1
    assert explorer.values["top_k"] == 1 and explorer.error is None
    explorer.set(router="softmax_topk", capacity_factor=0.0)      # dropless is fine here ...
    explorer.controls["router"].value = "expert_choice"           # ... not for expert choice: the nearest factor
    assert explorer.values["capacity_factor"] == 0.5 and explorer.error is None
    assert_picture_is_consistent(explorer)


def test_broken_rules_lists_every_rule_the_config_breaks(explorer):
    values = {**START, "router": "switch", "top_k": 2, "capacity_factor": 0.0}
    rules = explorer.broken_rules(values)
    assert [r.field for r in rules] == ["moe.top_k", "moe.capacity_factor"], [str(r) for r in rules]
    assert explorer.broken_rules(START) == []


def test_the_parameter_formula_matches_the_module_built():
    """moe_parameter_counts, which the picture prints, counts what the layer really holds."""
    import torch
    from tinymoe.viz import traced_forward
    e = MoEExplorer(**START)
    for values in ({}, dict(n_experts=8, top_k=3), dict(router="soft"), dict(router="expert_choice"),
                   dict(router="sigmoid_bias", n_experts=5)):
        e.set(**values)
        run = traced_forward(e.config(e.values), "moe", e.values["seq_len"])
        built = sum(p.numel() for p in run.module.parameters() if p.requires_grad)
        assert e.view.parameters["total"] == built, (values, e.view.parameters, built)
        assert isinstance(run.module, torch.nn.Module)


def possible(e: MoEExplorer) -> str | None:
    """The config's own verdict on the controls: None, or its message."""
    try:
        e.config(e.values)
    except ConfigError as error:
        return str(error)
    return None


def test_walking_every_control_never_lets_an_exception_escape(explorer):
    last = None
    for name, value in explorer.grid():                                         # one control at a time
        if name != last:
            explorer.set(**START)
            last = name
        try:
            explorer.set(**{name: value})
        except ValueError as error:                                              # ruled out by a limit
            assert "the other settings allow" in str(error), str(error)
            continue
        verdict = possible(explorer)
        assert explorer.error == verdict, (name, value, explorer.error)
        assert verdict is None, f"{name}={value!r}: the limits should leave no impossible position: {verdict}"
        assert_picture_is_consistent(explorer)


def test_combined_moves_are_refused_or_drawn_never_left_impossible():
    e = MoEExplorer(**START)
    e.set(seq_len=6)
    seen = {"drawn": 0, "refused": 0}
    routers = [value for value in e.controls["router"].options]
    factors = [0.0, 0.5, 1.25]
    for router, n_experts, top_k, factor in itertools.product(routers, (1, 2, 4), (1, 2, 3), factors):
        try:
            e.set(router=router, n_experts=n_experts, top_k=top_k, capacity_factor=factor)
        except ValueError as error:
            assert "the other settings allow" in str(error), str(error)
            seen["refused"] += 1
            continue
        assert possible(e) is None and e.error is None, (router, n_experts, top_k, factor, e.error)
        assert_picture_is_consistent(e)
        seen["drawn"] += 1
    assert seen["drawn"] and seen["refused"], seen


def test_a_capacity_factor_off_the_list_gets_its_own_option():
    e = MoEExplorer(capacity_factor=3.0)
    assert e.values["capacity_factor"] == 3.0 and e.view.capacity == math.ceil(3.0 * 20 / 3)
    e = MoEExplorer(capacity_factor=None)
    assert e.values["capacity_factor"] == 0.0 and e.view.capacity is None


def test_a_longer_sequence_keeps_the_earlier_tokens_routes(explorer):
    explorer.set(capacity_factor=0.0)                                          # dropless: routes depend on the token only
    before = explorer.view.routing
    explorer.set(seq_len=20)
    assert_picture_is_consistent(explorer)
    np.testing.assert_array_equal(explorer.view.routing[:10], before)
