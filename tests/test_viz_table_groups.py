"""The shapes table's header: a nested config switched on or off reads as one change."""
import tinymoe as tm
from tinymoe import viz


def test_switching_on_moe_reads_as_one_change_not_one_per_field():
    dense = tm.ModelConfig(d_model=8, n_heads=2)
    table = viz.shapes_table(dense.replace(moe=tm.MoEConfig(n_experts=4, top_k=2)), previous=dense, module="block")
    assert list(table.changes) == ["moe"], f"expected one 'moe' change, got {list(table.changes)}"
    old, new = table.changes["moe"]
    assert old is None and "n_experts=4" in new, f"moe change reads {old!r} -> {new!r}"


def test_switching_off_moe_and_changing_a_field_are_both_listed():
    moe = tm.ModelConfig(d_model=8, n_heads=2, moe=tm.MoEConfig(n_experts=4, top_k=2))
    table = viz.shapes_table(moe.replace(moe=None, n_heads=4), previous=moe, module="block")
    assert set(table.changes) == {"moe", "n_heads"}, f"got {sorted(table.changes)}"
    assert table.changes["moe"][1] is None and table.changes["n_heads"] == (2, 4)


def test_changing_one_moe_field_lists_just_that_field():
    a = tm.ModelConfig(d_model=8, n_heads=2, moe=tm.MoEConfig(n_experts=4, top_k=2))
    table = viz.shapes_table(a.replace(moe=tm.MoEConfig(n_experts=6, top_k=2)), previous=a, module="block")
    assert table.changes == {"moe.n_experts": (4, 6)}, f"got {table.changes}"


def test_identical_layers_are_drawn_once_with_their_count():
    import re
    from tinymoe.viz.table import collapse_layers
    config = tm.ModelConfig(d_model=8, n_heads=2, n_layers=4, vocab_size=30)
    table = viz.shapes_table(config)
    text = re.sub(r"<[^>]+>", " ", table.html)
    assert "layers.0-3.attn.W_q (×4)" in text and "layers.1.attn.W_q" not in text, text[:600]
    drawn = collapse_layers(table.rows)
    assert len(drawn) < len(table.rows) / 2, "four identical layers should take about a quarter of the rows"
    w_q = next(r for r in drawn if r.name == "layers.0-3.attn.W_q (×4)")
    assert w_q.parameters == 4 * 8 * 8, "the collapsed row counts the parameters of all four layers"
    assert sum(r.parameters or 0 for r in drawn if r.kind == "tensor") == \
        sum(r.parameters or 0 for r in table.rows if r.kind == "tensor"), "collapsing must not change the total"
    assert len(table.rows) > len(drawn), "the table's data keeps every layer's row"


def test_a_layer_that_differs_keeps_its_own_rows():
    import re
    moe_every_2 = tm.ModelConfig(d_model=8, n_heads=2, n_layers=4, vocab_size=30, d_ff=8,
                                      moe=tm.MoEConfig(n_experts=2, top_k=1, every_n_layers=2))
    text = re.sub(r"<[^>]+>", " ", viz.shapes_table(moe_every_2).html)
    assert "layers.0-3.attn.W_q (×4)" in text, "the attention is the same in every layer"
    assert "moe.W_router" in text and "ffn.W_up" in text and "layers.0-3.ffn" not in text, \
        "dense and MoE layers alternate: their feed-forward rows must not be merged"
