"""The shapes-and-parameters table: shapes from a real traced forward, what changed highlighted."""
from __future__ import annotations

import re

import pytest
import torch

import tinymoe
from tinymoe import viz
from tinymoe.viz.forward import traced_forward


def attention(n_heads=2, **kw):
    return tinymoe.ModelConfig(d_model=5, n_heads=n_heads, head_dim=3, position="none", **kw)


def test_every_traced_tensor_is_a_row_with_its_shape():
    config = tinymoe.ModelConfig(d_model=4, n_heads=2)
    table = viz.shapes_table(config, seq_len=7)
    run = traced_forward(config, "model", seq_len=7)
    assert table.shapes == run.trace.shapes(), "the table's shapes should be exactly the traced forward's"
    assert table.shapes["layers.0.attn.weights"] == (1, 2, 7, 7)
    assert list(table.shapes) == list(run.trace.keys()), "rows should keep the order of the forward pass"


def test_parameter_counts_match_the_module():
    config = tinymoe.ModelConfig(d_model=4, n_heads=2, vocab_size=16)
    table = viz.shapes_table(config)
    model = tinymoe.TinyLM(config)
    assert table.parameters["total"] == sum(p.numel() for p in model.parameters())
    assert table.parameters["layers.0.attn"] == sum(p.numel() for p in model.layers[0].attn.parameters())
    assert table.parameters["embed"] == 16 * 4
    weights = [r for r in table.rows if r.kind == "tensor" and r.role == "weight"]
    assert all(r.parameters == torch.Size(r.shape).numel() for r in weights), "a weight row counts its cells"
    assert all(r.parameters is None for r in table.rows if r.kind == "tensor" and r.role == "activation")


def test_adding_a_head_marks_exactly_the_rows_that_moved():
    table = viz.shapes_table(attention(3), previous=attention(2), seq_len=6, module="attention")
    rows = {r.name: r for r in table.rows}
    assert rows["attn.q"].status == "changed" and rows["attn.q"].old_shape == (1, 2, 6, 3) \
        and rows["attn.q"].shape == (1, 3, 6, 3)
    assert rows["attn.W_q"].old_parameters == 30 and rows["attn.W_q"].parameters == 45
    assert rows["attn.head2"].status == "new", "a third head's output did not exist before"
    assert rows["attn.x"].status == "same" and rows["attn.out"].status == "same", \
        "the input and the output keep d_model: they must not be highlighted"
    assert table.changes == {"n_heads": (2, 3)}


def test_removing_a_head_keeps_its_row_struck_out():
    table = viz.shapes_table(attention(2), previous=attention(3), seq_len=6, module="attention")
    removed = [r for r in table.rows if r.status == "removed"]
    assert [r.name for r in removed] == ["attn.head2"], f"expected head2 removed, got {[r.name for r in removed]}"
    names = [r.name for r in table.rows]
    assert names.index("attn.head2") == names.index("attn.head1") + 1, "a removed row stays where it was"
    assert "attn.head2" not in table.shapes, ".shapes lists only what exists now"
    assert "<s" in table.html and "removed" in table.html


def test_changed_rows_are_highlighted_old_struck_new_shown():
    html = viz.shapes_table(attention(3), previous=attention(2), seq_len=6, module="attention").html
    assert '<s style="color:#999">(1, 2, 6, 3)</s> (1, 3, 6, 3)' in html
    assert '<s style="color:#999">30</s> 45' in html
    assert "n_heads 2 &rarr; 3" in html
    assert "<script" not in html


def test_a_previous_table_works_like_a_previous_config():
    before = viz.shapes_table(attention(2), seq_len=6, module="attention")
    by_table = viz.shapes_table(attention(3), previous=before, seq_len=6, module="attention")
    by_config = viz.shapes_table(attention(3), previous=attention(2), seq_len=6, module="attention")
    assert [(r.name, r.status) for r in by_table.rows] == [(r.name, r.status) for r in by_config.rows]


def test_seq_len_change_is_named_in_the_heading():
    before = viz.shapes_table(attention(), seq_len=6, module="attention")
    after = viz.shapes_table(attention(), previous=before, seq_len=7, module="attention")
    assert after.changes == {"seq_len": (6, 7)}
    assert all(r.status != "changed" for r in after.rows if r.kind != "tensor"), "parameters do not depend on seq_len"


def test_growing_the_vocabulary_touches_only_embedding_and_lm_head():
    small = tinymoe.ModelConfig(d_model=4, n_heads=2, vocab_size=16)
    table = viz.shapes_table(small.replace(vocab_size=32), previous=small)
    moved = {r.name for r in table.changed_rows}
    assert moved == {"embed.W_E", "lm_head.W_U", "logits", "embed", "lm_head", "total"}, f"moved: {sorted(moved)}"


def test_same_seed_same_table_and_the_global_random_state_is_untouched():
    torch.manual_seed(123)
    expected_next = torch.rand(3)
    torch.manual_seed(123)
    a = traced_forward(attention(), "attention", seed=7)
    b = traced_forward(attention(), "attention", seed=7)
    assert torch.equal(a.trace["attn.out"], b.trace["attn.out"]), "the same seed must give the same numbers"
    assert torch.equal(torch.rand(3), expected_next), "drawing a table must not move the reader's random state"


def test_block_and_attention_modules_can_be_tabled():
    config = tinymoe.ModelConfig(d_model=4, n_heads=2)
    block = viz.shapes_table(config, module="block")
    assert "attn.q" in block.shapes and set(block.parameters) == {"norm_1", "attn", "norm_2", "ffn", "total"}
    with pytest.raises(ValueError, match="module="):
        viz.shapes_table(config, module="everything")


def test_an_impossible_config_raises_the_config_error():
    with pytest.raises(tinymoe.ConfigError, match="n_kv_heads"):
        viz.shapes_table(tinymoe.ModelConfig(d_model=8, n_heads=4, n_kv_heads=3))


def _visible_text(html: str) -> str:
    return re.sub(r"\s+", " ", re.sub(r"<[^>]+>", " ", html.replace("&hellip;", "…").replace("&#8942;", "⋮")))


def test_fold_unchanged_draws_only_the_changed_rows_and_counts_the_rest():
    """RMSNorm for LayerNorm in a block: the rms rows are new, mean/var/beta gone; the fifty-odd
    rows that did not move are folded into lines that say how many and which, and the table's
    data (.rows, .shapes) is untouched."""
    ln = tinymoe.ModelConfig(d_model=8, n_heads=2, norm="layernorm", position="none")
    rms = ln.replace(norm="rmsnorm")
    full = viz.shapes_table(rms, previous=ln, module="block")
    folded = viz.shapes_table(rms, previous=ln, module="block", fold_unchanged=True)
    assert folded.shapes == full.shapes and folded.rows == full.rows, "folding is only how the table is drawn"
    text = _visible_text(folded.html)
    for name in ("norm_1.rms", "norm_2.rms", "norm_1.mean", "norm_1.beta"):
        assert name in text, f"{name} changed (new or removed) and must stay on screen"
    same = [r.name for r in full.rows if r.kind == "tensor" and r.status == "same"]
    folds = [int(n) for n in re.findall(r"⋮ (\d+) rows unchanged", text)]
    drawn_alone = [n for n in same if f" {n} (" in text]          # an unchanged row still drawn as a row
    assert folds, "a block's table with one change should fold its long unchanged runs"
    assert sum(folds) + len(drawn_alone) == len(same), \
        f"every unchanged row is drawn or counted in a fold: {sum(folds)} folded + {len(drawn_alone)} drawn != {len(same)}"
    assert "attn.scores (" not in text, "attn.scores sits in the middle of an unchanged run: it should be folded"
    assert folded.html.count("<tr") <= full.html.count("<tr") / 2, "folding should at least halve a block's table"
    assert "rows unchanged" not in full.html, "without fold_unchanged every row is drawn"


def test_fold_unchanged_without_a_previous_table_draws_everything():
    table = viz.shapes_table(attention(2), module="attention", fold_unchanged=True)
    assert "rows unchanged" not in table.html, "with nothing to compare against, no row is 'unchanged'"
    with pytest.raises(TypeError, match="fold_unchanged"):
        viz.shapes_table(attention(2), module="attention", fold_unchanged="yes")


def test_many_alike_heads_are_drawn_as_one_row_and_three_stay_apart():
    nine = viz.shapes_table(tinymoe.ModelConfig(d_model=18, n_heads=9), module="attention")
    text = _visible_text(nine.html)
    assert "attn.head0-8 (1, 10, 2)" in text, "nine heads of one shape should read as one row attn.head0-8"
    assert "attn.head3 " not in text
    assert len([n for n in nine.shapes if ".head" in n]) == 9, "the table's data keeps every head"
    three = _visible_text(viz.shapes_table(attention(3), module="attention").html)
    assert all(f"attn.head{h} (1, 10, 3)" in three for h in range(3)), "the lessons' three heads stay one row each"
    unequal = _visible_text(viz.shapes_table(tinymoe.ModelConfig(d_model=8, n_heads=4, head_dim=2,
                                                                 v_head_dims=(4, 2, 2, 2)), module="attention").html)
    assert "attn.head0 (1, 10, 4)" in unequal and "attn.head1 (1, 10, 2)" in unequal, \
        "heads of different value sizes must stay apart"
