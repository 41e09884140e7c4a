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
