"""The explorers, tested without a browser: everything they show is readable from Python."""
from __future__ import annotations

import random

import numpy as np
import pytest

import tinymoe
from tinymoe import viz
from tinymoe.viz import View

pytest.importorskip("ipywidgets")
pytest.importorskip("plotly")

EXPLORERS = {"attention": lambda: viz.AttentionExplorer(n_heads=2),
             "rope": lambda: viz.RopeExplorer(),
             "gqa": lambda: viz.GQAExplorer()}


@pytest.fixture(scope="module")
def explorers():
    return {name: make() for name, make in EXPLORERS.items()}


def heads_side_by_side(n_panels: int, rows: int, cols: int) -> tuple[int, int]:
    return rows, n_panels * cols + (n_panels - 1)


# ---- a slider move changes what is shown -----------------------------------------------------------

def test_seq_len_move_changes_shape_label_and_heatmap():
    e = viz.AttentionExplorer(seq_len=10, d_model=5, d_k=3, d_v=3, n_heads=2)
    assert "x (1, 10, 5)" in e.shape_label and e.heatmap_data.shape == heads_side_by_side(2, 10, 10)
    e.set(seq_len=12)
    assert "x (1, 12, 5)" in e.shape_label, f"shape line after seq_len=12: {e.shape_label!r}"
    assert "weights (1, 2, 12, 12)" in e.shape_label
    assert e.heatmap_data.shape == heads_side_by_side(2, 12, 12), f"heatmap is {e.heatmap_data.shape}"
    assert e.shapes["attn.weights"] == (1, 2, 12, 12) and e.error is None


def test_n_heads_move_adds_a_heatmap_panel_and_a_sheet_grid():
    e = viz.AttentionExplorer(n_heads=2)
    e.set(n_heads=3)
    assert e.heatmap_data.shape == heads_side_by_side(3, 10, 10)
    assert "q (1, 3, 10, 3)" in e.shape_label and "concat (1, 10, 9)" in e.shape_label
    assert e.sheets_html.count("head 2") == 3, "the q, k and v sheets should each show a third head"
    assert "v (1, 3, 10, 3)" in e.shape_label, "v is split by head like q and k: (1, n_heads, seq, d_v)"


def test_d_k_and_d_v_move_different_tensors():
    e = viz.AttentionExplorer(d_k=3, d_v=3)
    e.set(d_v=5)
    assert e.shapes["attn.q"] == (1, 1, 10, 3) and e.shapes["attn.v"] == (1, 1, 10, 5), "d_v must not touch q"
    e.set(d_k=4)
    assert e.shapes["attn.k"] == (1, 1, 10, 4) and e.shapes["attn.weights"] == (1, 1, 10, 10), \
        "the weights are seq_len x seq_len whatever d_k is"


def test_causal_checkbox_changes_the_weights():
    e = viz.AttentionExplorer(causal=True)
    assert np.allclose(np.triu(e.heatmap_data, 1), 0), "causal weights above the diagonal must be 0"
    e.set(causal=False)
    assert (np.triu(e.heatmap_data, 1) > 0).any(), "without the mask every key gets some weight"


def test_gqa_shows_parameters_and_cache_from_the_sizes_module():
    e = viz.GQAExplorer(n_heads=4, n_kv_heads=2, seq_len=8, d_model=8, head_dim=2)
    e.set(n_kv_heads=1)
    config = tinymoe.ModelConfig(d_model=8, n_heads=4, n_kv_heads=1, head_dim=2)
    cache = tinymoe.kv_cache_bytes(config, 8, batch=1, bytes_per_value=2)
    assert e.shape_label.startswith("MQA") and f"KV cache {cache:,} bytes" in e.shape_label, e.shape_label
    assert f"{tinymoe.attention_parameters(config)['total']:,}" in e.view.notes
    assert e.heatmap_data.shape == heads_side_by_side(1, 8, 2), "the key cache should have one kv-head panel"
    e.set(n_kv_heads=4)
    assert e.shape_label.startswith("MHA") and e.heatmap_data.shape == heads_side_by_side(4, 8, 2)


def test_rope_curves_show_only_relative_position_matters():
    e = viz.RopeExplorer(position=3, head_dim=8, n_positions=32, shift=8)
    (x1, y1), (x2, y2) = e.curve_data["query at m"], e.curve_data["query at m + shift"]
    common = np.intersect1d(x1, x2)
    assert common.size > 10
    np.testing.assert_allclose(y1[np.isin(x1, common)], y2[np.isin(x2, common)], atol=1e-4,
                               err_msg="q_m . k_n should depend only on m - n")
    assert e.heatmap_data.shape == (32, 8)
    e.set(head_dim=6)
    assert e.heatmap_data.shape == (32, 6) and "head_dim=6" in e.shape_label


# ---- impossible combinations -------------------------------------------------------------------------

def test_impossible_combination_shows_every_rule_and_keeps_the_last_picture_marked_stale():
    e = viz.AttentionExplorer(d_model=6, d_k=3, n_heads=2)
    label, data, shapes = e.shape_label, e.heatmap_data.copy(), e.shapes
    e.set(split_d_model=True, n_heads=4, position="rope")          # 6 / 4 is not whole; nor is an odd d_k rotated
    assert e.error is not None and "n_heads=4" in e.error, f"error should name the rule: {e.error!r}"
    assert len(e.errors) == 2 and e.stale, e.errors                # and head_dim 6 // 4 = 1 is odd for RoPE
    assert "even" in e.errors[1], e.errors
    assert "n_heads=4" in e.status and "stale" in e.status, f"the message and the stale mark should be on screen: {e.status!r}"
    assert "n_heads=2" in e.status, f"the status should say which settings the picture still shows: {e.status!r}"
    assert "tinymoe-stale" in e._picture._dom_classes
    assert e.values["n_heads"] == 4, "the slider stays where the reader put it"
    assert e.shape_label == label and e.shapes == shapes, "the last good shapes should stay up"
    np.testing.assert_array_equal(e.heatmap_data, data, err_msg="the last good heatmap should stay up")
    e.set(n_heads=3)                                                   # 6 / 3 = 2: whole and even
    assert e.error is None and e.status == "" and not e.stale, "a possible value should clear the message"
    assert "tinymoe-stale" not in e._picture._dom_classes
    assert e.shapes["attn.q"] == (1, 3, 10, 2), "d_k follows d_model / n_heads"


def test_every_broken_rule_is_listed_not_only_the_first():
    e = viz.AttentionExplorer(d_model=6, d_k=2, n_heads=2)
    e.set(split_d_model=True, d_model=5, position="rope")           # 5 / 2 is not whole
    assert any("not divisible by n_heads" in m for m in e.errors), e.errors
    e.set(split_d_model=False, d_k=3, d_v=3)                         # RoPE with an odd head_dim
    assert len(e.errors) == 1 and "even" in e.errors[0], e.errors
    moe = viz.MoEExplorer()
    # the config itself, with two rules broken at once: each is found by asking the config
    rules = moe.broken_rules({**moe.values, "router": "switch", "top_k": 2, "capacity_factor": 0.0})
    assert [r.field for r in rules] == ["moe.top_k", "moe.capacity_factor"], [str(r) for r in rules]


def test_gqa_offers_only_the_divisors_of_n_heads():
    e = viz.GQAExplorer(n_heads=4, n_kv_heads=2)
    assert control_options(e, "n_kv_heads") == [1, 2, 4]
    with pytest.raises(ValueError, match="n_kv_heads=3 is not one of the options .* must divide n_heads"):
        e.set(n_kv_heads=3)
    e.set(n_heads=6)
    assert control_options(e, "n_kv_heads") == [1, 2, 3, 6] and e.values["n_kv_heads"] == 2 and e.error is None
    e.set(n_heads=5)                                                   # 2 does not divide 5: the nearest divisor
    assert e.values["n_kv_heads"] == 1 and e.error is None, (e.values, e.error)
    e.set(n_heads=8, n_kv_heads=4)                                     # checked against the new n_heads' divisors
    assert e.values == {"n_heads": 8, "n_kv_heads": 4, "seq_len": 8}


def control_options(e, name):
    return [o[1] if isinstance(o, tuple) else o for o in e.controls[name].options]


def test_a_reader_moving_a_control_never_gets_a_traceback():
    """The browser path: the frontend sets the widget's value; the explorer must catch everything."""
    e = viz.RopeExplorer(head_dim=8)
    e.controls["head_dim"].value = 7                                   # as the frontend would
    assert e.error is not None and "even" in e.error and e.shapes["rope_cos"] == (32, 8)
    e.controls["head_dim"].value = 4
    assert e.error is None and e.shapes["rope_cos"] == (32, 4)


def test_rope_with_odd_d_k_is_impossible_in_the_attention_explorer():
    e = viz.AttentionExplorer(d_k=3)
    e.set(position="rope")
    assert e.error and "head_dim=3" in e.error and "pairs" in e.error
    e.set(d_k=4)
    assert e.error is None and "attn.q_rot" in e.table.shapes


def test_set_refuses_values_a_control_cannot_hold():
    e = viz.AttentionExplorer()
    with pytest.raises(ValueError, match="no control 'n_experts'"):
        e.set(n_experts=4)
    with pytest.raises(ValueError, match="outside this slider's range"):
        e.set(seq_len=10_000)
    with pytest.raises(ValueError, match="not one of the options"):
        e.set(position="alibi")
    assert e.values["seq_len"] == 10, "a refused set must not move anything"


@pytest.mark.parametrize("make, values, words", [
    (lambda: viz.AttentionExplorer(), dict(seq_len=4, causal="yes"), ["causal='yes'", "True or False"]),
    (lambda: viz.AttentionExplorer(), dict(seq_len=4.5), ["seq_len=4.5", "whole number"]),
    (lambda: viz.AttentionExplorer(), dict(d_model=10 ** 30), ["d_model=", "range"]),
    (lambda: viz.AttentionExplorer(), dict(position=None), ["position=None", "options"]),
    (lambda: viz.GQAExplorer(), dict(n_kv_heads="2"), ["n_kv_heads='2'", "options"]),
    (lambda: viz.RopeExplorer(), dict(base=float("nan")), ["base=nan", "number"]),
    (lambda: viz.MoEExplorer(), dict(n_experts=2, top_k=3), ["top_k=3", "n_experts"]),
    (lambda: viz.NSAExplorer(), dict(block_size=2, stride=3), ["stride=3", "block_size"]),
])
def test_set_checks_every_value_before_moving_any(make, values, words):
    e = make()
    before, picture = e.values, e.shape_label
    with pytest.raises(ValueError) as info:
        e.set(**values)
    for word in words:
        assert word in str(info.value), f"the message {str(info.value)!r} should say {word!r}"
    assert e.values == before, f"a refused set moved the controls: {before} -> {e.values}"
    assert e.shape_label == picture and e.error is None, "a refused set must not redraw"


def test_a_failure_that_is_not_a_config_rule_reads_as_a_sentence():
    class Broken(viz.AttentionExplorer):
        def build(self, values):
            if values["seq_len"] == 3:
                raise OverflowError("int too big to convert")
            return super().build(values)
    e = Broken()
    e.set(seq_len=3)
    assert e.error.startswith("these settings could not be drawn (seq_len=3"), e.error
    assert "OverflowError" in e.status and e.stale


def test_impossible_starting_values_raise_at_construction():
    with pytest.raises(tinymoe.ConfigError, match="n_kv_heads"):
        viz.GQAExplorer(n_heads=4, n_kv_heads=3)


# ---- every explorer over its whole grid ------------------------------------------------------------

@pytest.mark.parametrize("name", list(EXPLORERS))
def test_walk_every_control_over_its_range_without_an_escaping_exception(name, explorers):
    e = explorers[name]
    start = e.values
    errors = 0
    for control, value in list(e.grid()):
        e.set(**{control: value})                                      # raising here fails the test
        if e.error:
            errors += 1
            assert e.status, f"{control}={value!r}: an error must be shown, not only stored"
        else:
            assert e.shapes and e.shape_label and e.heatmap_data.size, f"{control}={value!r}: nothing shown"
        e.set(**start)
        assert e.error is None, f"back at the start values {start} there should be no error: {e.error}"
    # rope on an odd d_k and an odd head_dim are lessons in an impossible value; GQA's n_kv_heads
    # list holds only divisors of n_heads, so it has none left
    if name != "gqa":
        assert errors > 0, f"{name}: the walk met no impossible value, so the error path went untested"


@pytest.mark.parametrize("name", list(EXPLORERS))
def test_random_combinations_never_raise_and_always_show_a_consistent_picture(name, explorers):
    e = explorers[name]
    rng = random.Random(0)
    choices = {c: viz.control_values(w) for c, w in e.controls.items()}
    seen_error = seen_ok = 0
    refused = 0
    for _ in range(40):
        before = e.values
        try:
            e.set(**{c: rng.choice(v) for c, v in choices.items()})
        except ValueError as error:                                    # a value the others' limits rule out
            assert "the other settings allow" in str(error), str(error)
            assert e.values == before, "a refused set must not move anything"
            refused += 1
            continue
        if e.error:
            seen_error += 1
            continue
        seen_ok += 1
        if name == "attention":
            T, H = e.values["seq_len"], e.values["n_heads"]
            assert e.shapes["attn.weights"] == (1, H, T, T)
            assert e.heatmap_data.shape == heads_side_by_side(H, T, T)
        elif name == "gqa":
            assert e.shapes["attn.k"][1] == e.values["n_kv_heads"]
        else:
            assert e.heatmap_data.shape == (e.n_positions, e.values["head_dim"])
    assert seen_ok > 0 and (seen_error > 0 or refused > 0), \
        f"{name}: {seen_ok} good, {seen_error} impossible and {refused} refused combinations seen"


# ---- drawn in place, reproducible -----------------------------------------------------------------------

def test_updates_happen_in_place_without_new_widgets():
    e = viz.AttentionExplorer(n_heads=2)
    children, figure, trace = e.widget.children, e._heatmap, e._heatmap.data[0]
    e.set(seq_len=5, n_heads=3)
    assert e.widget.children == children, "the layout should not be rebuilt on a move"
    assert e._heatmap is figure and e._heatmap.data[0] is trace, "the heatmap should be updated, not replaced"


def test_same_seed_gives_the_same_picture_after_moving_back():
    e = viz.AttentionExplorer(n_heads=2)
    first = e.heatmap_data.copy()
    e.set(seq_len=13)
    e.set(seq_len=10)
    np.testing.assert_array_equal(e.heatmap_data, first)


def test_table_marks_what_changed_since_the_last_picture():
    e = viz.AttentionExplorer(n_heads=2)
    assert not e.table.changed_rows, "the first picture has nothing to compare with"
    e.set(n_heads=3)
    changed = {r.name for r in e.table.changed_rows}
    assert {"attn.q", "attn.W_q", "attn.head2"} <= changed and "attn.x" not in changed, sorted(changed)
    assert "n_heads 2 &rarr; 3" in e.table_html and "<s " in e.table_html
    e.set(n_heads=1, seq_len=4)
    assert e.table.changes == {"n_heads": (3, 1), "seq_len": (10, 4)}, "compared with the previous picture only"


def test_an_error_does_not_become_the_previous_table():
    e = viz.AttentionExplorer(d_k=2)
    e.set(position="rope", d_k=3)                                      # impossible: no new table
    e.set(d_k=4)
    assert e.table.changes == {"position": ("none", "rope"), "head_dim": (2, 4)}, \
        f"should compare with the last good picture: {e.table.changes}"


def test_medium_sizes_summarise_sheets_instead_of_tabulating():
    e = viz.AttentionExplorer(seq_len=128, d_model=256, d_k=32, d_v=32, n_heads=8)
    rows, cols = e.heatmap_data.shape
    assert rows <= e.heatmap_max[0] and cols <= e.heatmap_max[1], \
        f"a live heatmap should send at most {e.heatmap_max} values, sent {e.heatmap_data.shape}"
    assert "mean over" in e._heatmap.layout.title.text, "a block-averaged heatmap must say so in its title"
    assert "data:image/png" in e.sheets_html and "<td style=\"border:1px" not in e.sheets_html
    e.set(seq_len=100)
    assert e.shapes["attn.q"] == (1, 8, 100, 32)


def test_the_widget_is_a_container_a_notebook_can_display():
    import ipywidgets
    e = viz.AttentionExplorer()
    assert isinstance(e.widget, ipywidgets.VBox) and callable(e._ipython_display_)
    assert "tinymoe-shape-label" in e._shape_label._dom_classes and "tinymoe-explorer" in e.widget._dom_classes


# ---- the toolkit: a new explorer is a few lines ---------------------------------------------------------

class FeedForwardExplorer(viz.Explorer):
    """What a later topic writes: controls in, View out; the base class does the rest."""
    title = "Feed-forward"

    def __init__(self, d_ff=8, seq_len=4):
        super().__init__({"d_ff": viz.slider(d_ff, 1, 16), "seq_len": viz.slider(seq_len, 1, 8),
                          "ffn": viz.dropdown("swiglu", ("swiglu", "relu"))})

    def build(self, values):
        config = tinymoe.ModelConfig(d_model=4, n_heads=2, d_ff=values["d_ff"], ffn=values["ffn"])
        if values["d_ff"] == 13:
            raise tinymoe.ConfigError("d_ff", 13, "is unlucky (a rule made up for this test)")
        run = viz.traced_forward(config, "block", values["seq_len"], seed=self.seed)
        hidden = run.trace["ffn.hidden"]
        return View(shapes={"ffn.hidden": tuple(hidden.shape)}, shape_label=f"hidden {tuple(hidden.shape)}",
                    sheets=[viz.show(run.trace, "ffn.hidden")], heatmap=hidden,
                    table=viz.ShapesTable.from_run(run))


def test_a_subclass_gets_controls_errors_and_in_place_updates_for_free():
    e = FeedForwardExplorer()
    assert e.values == {"d_ff": 8, "seq_len": 4, "ffn": "swiglu"} and e.heatmap_data.shape == (4, 8)
    e.set(d_ff=12)
    assert e.shape_label == "hidden (1, 4, 12)" and e.heatmap_data.shape == (4, 12)
    e.set(d_ff=13)
    expected = str(tinymoe.ConfigError("d_ff", 13, "is unlucky (a rule made up for this test)"))
    assert e.error == expected and e.heatmap_data.shape == (4, 12), f"shown {e.error!r}, expected {expected!r}"
    e.set(ffn="relu", d_ff=5)
    assert e.error is None and "ffn.W_1" in e.table.shapes
    assert e.controls["d_ff"].description == "d_ff", "a control's label defaults to its name"


def test_a_subclass_without_build_says_what_to_write():
    class Empty(viz.Explorer):
        pass
    with pytest.raises(NotImplementedError, match="build"):
        Empty({"n": viz.slider(1, 1, 2)})


def test_every_explorer_is_exported_from_viz():
    from tinymoe.viz.norm_explorer import NormExplorer
    assert viz.NormExplorer is NormExplorer and "NormExplorer" in viz.__all__, "notebook 04 uses viz.NormExplorer()"
    for name in ("AttentionExplorer", "RopeExplorer", "GQAExplorer", "NormExplorer", "NSAExplorer", "MoEExplorer"):
        assert name in viz.__all__ and name in viz.__doc__, f"{name} should be exported and listed in the docstring"


def test_an_explorer_started_from_a_by_hand_module_first_draws_its_numbers():
    import torch
    config = tinymoe.ModelConfig(d_model=5, n_heads=1, head_dim=3, v_head_dim=4, position="none", max_seq_len=10)
    g = torch.Generator().manual_seed(3)
    attn = tinymoe.MultiHeadAttention(config)
    with torch.no_grad():
        for p in attn.parameters():
            p.copy_(torch.randint(-1, 2, p.shape, generator=g).float())
    x = torch.randint(-1, 2, (1, 10, 5), generator=g).float()
    trace = tinymoe.Trace()
    attn(x, trace)
    e = viz.AttentionExplorer(seq_len=10, d_model=5, d_k=3, d_v=4, start_from=attn, start_inputs=x)
    np.testing.assert_allclose(e.heatmap_data, trace["attn.weights"][0, 0].numpy(), atol=1e-3)
    assert "attn.q" in e.shapes
    e.set(seq_len=12)                                                  # more tokens: the first ten stay the sheet's
    np.testing.assert_allclose(e.heatmap_data[:10, :10], trace["attn.weights"][0, 0].numpy(), atol=1e-3)
    e.set(d_k=4)                                                       # other sizes: seeded weights, no error
    assert e.error is None and e.shapes["attn.q"] == (1, 1, 12, 4)
