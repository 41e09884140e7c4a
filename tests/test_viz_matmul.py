"""The by-hand product: weight left, input on top, result where they meet, shapes on the edges."""
from __future__ import annotations

import re

import numpy as np
import pytest
import torch

import tinymoe
from tinymoe import viz


def blocks(html: str) -> list[str]:
    """The captions' names in the order they appear: top-right first, then left, then the result."""
    return re.findall(r"<b style=\"font-family:[^\"]*;font-size:13px\">([^<]*)</b>", html)


def operands():
    g = torch.Generator().manual_seed(0)
    W = torch.randint(-1, 2, (3, 5), generator=g).float()
    X = torch.randint(0, 4, (1, 6, 5), generator=g).float()
    return W, X


def test_by_hand_layout_puts_input_on_top_then_weight_left_then_result():
    W, X = operands()
    m = viz.matmul_sheet(W, X, names=("W_q", "X", "Q"))
    assert blocks(m.html) == ["X", "W_q", "Q"], f"expected X on top, W_q left, Q where they meet; got {blocks(m.html)}"
    assert "Q = W_q &middot; X" in m.html and "(3&times;5) &middot; (5&times;6) = (3&times;6)" in m.html


def test_result_is_x_times_w_transposed_and_drawn_transposed_by_hand():
    W, X = operands()
    m = viz.matmul_sheet(W, X)
    expected = (X[0] @ W.T).numpy()
    np.testing.assert_allclose(m.result, expected, err_msg="the product shown is not x @ W.T")
    labelled = re.findall(r"<tr><td[^>]*>(y\d)</td>((?:<td[^>]*>[^<]*</td>)+)</tr>", m.html)
    q_rows = labelled[3:]                                                 # W's rows come first, then Y's
    assert len(q_rows) == 3, f"by hand the result has one row per output feature (3), found {len(q_rows)}"
    first_row = re.findall(r">([^<]*)</td>", q_rows[0][1])
    assert first_row == [str(int(v)) for v in expected[:, 0]], \
        f"by hand, result row 0 is output feature 0 across tokens: {first_row} vs {expected[:, 0]}"


def test_pytorch_layout_has_tokens_as_rows_and_the_weight_transposed_on_top():
    W, X = operands()
    m = viz.matmul_sheet(W, X, names=("W_q", "X", "Q"), orientation="pytorch")
    assert blocks(m.html) == ["W_q.T", "X", "Q"]
    assert "tokens as rows" in m.html and "(5, 3)" in m.html, "W_q.T should be captioned with its (in, out) shape"
    assert m.orientation == "pytorch"


def test_a_given_result_is_drawn_as_given():
    W, X = operands()
    traced = torch.full((1, 6, 3), 0.25)                                  # not W X: the given numbers win
    m = viz.matmul_sheet(W, X, result=traced)
    np.testing.assert_allclose(m.result, traced[0].numpy())
    assert "0.25" in m.html


def test_result_from_the_model_matches_the_layout():
    config = tinymoe.ModelConfig(d_model=5, n_heads=1, head_dim=3, position="none")
    attn = tinymoe.MultiHeadAttention(config)
    trace = tinymoe.Trace()
    x = torch.randn(1, 6, 5)
    attn(x, trace)
    q = trace["attn.q"][0, 0]                                             # (T, head_dim) of the one head
    m = viz.matmul_sheet(trace["attn.W_q"], trace["attn.x"], result=q)
    np.testing.assert_allclose(m.result, (x[0] @ attn.W_q.weight.T).detach().numpy(), atol=1e-6)


def test_mismatched_sizes_say_which_dimension_is_wrong():
    with pytest.raises(ValueError, match="in-size must equal the input's last dimension"):
        viz.matmul_sheet(torch.zeros(3, 5), torch.zeros(6, 4))
    with pytest.raises(ValueError, match="gives"):
        viz.matmul_sheet(torch.zeros(3, 5), torch.zeros(6, 5), result=torch.zeros(6, 4))
    with pytest.raises(ValueError, match="one sequence"):
        viz.matmul_sheet(torch.zeros(3, 5), torch.zeros(2, 6, 5))


def test_big_products_are_summarised_not_tabulated():
    m = viz.matmul_sheet(torch.randn(64, 64), torch.randn(1, 32, 64))
    assert m.degraded and "<td style=\"border:1px" not in m.html and m.html.count("data:image/png") == 3


def test_operand_columns_line_up_with_the_result():
    """In the by-hand layout X's columns and Q's columns are the same tokens, so they share one width."""
    W, X = operands()
    html = viz.matmul_sheet(W, torch.randn(1, 6, 5)).html
    widths = set(re.findall(r"text-align:center;width:([0-9.]+)em", html))
    assert len(widths) == 1, f"all three grids should use one cell width so they line up, got {widths}"


def fills(html: str) -> list[str]:
    """The background of every numbered cell, in document order (top operand, left, result)."""
    return re.findall(r'<td style="border:1px solid [^"]*?background:(#[0-9a-f]{6})">', html)


def borders(html: str) -> list[str]:
    """The border colour of every numbered cell, in document order (top operand, left, result)."""
    return re.findall(r'<td style="border:\dpx solid (#[0-9a-f]{6});padding', html)


def test_default_roles_mark_the_weight_and_the_input():
    from tinymoe.viz.palette import ROLE_EDGE
    W, X = operands()
    edges = borders(viz.matmul_sheet(W, X).html)
    top, left = edges[:5 * 6], edges[5 * 6:5 * 6 + 3 * 5]
    assert set(top) == {ROLE_EDGE["input"]} and set(left) == {ROLE_EDGE["weight"]}, \
        f"by default X is bordered as the input and W as trainable; got {set(top)} and {set(left)}"
    explicit = viz.matmul_sheet(W, X, roles=("weight", "input", "activation")).html
    assert explicit == viz.matmul_sheet(W, X).html, "the default roles should draw exactly today's sheet"


def test_a_product_of_two_activations_shades_nothing_as_trainable():
    """Q Kᵀ laid out by hand in the PyTorch layout: Q left, Kᵀ on top, the scores where they meet."""
    from tinymoe.viz.palette import ROLE_EDGE
    g = torch.Generator().manual_seed(1)
    q, k = torch.randn(4, 3, generator=g), torch.randn(5, 3, generator=g)
    scores = q @ k.T                                                     # (4 queries, 5 keys)
    m = viz.matmul_sheet(k, q, result=scores, names=("K", "Q", "scores"), orientation="pytorch",
                         roles=("activation", "activation", "activation"),
                         labels=([f"k{j}" for j in range(5)], ["d0", "d1", "d2"], [f"q{i}" for i in range(4)]))
    np.testing.assert_allclose(m.result, scores.numpy())
    assert blocks(m.html) == ["K.T", "Q", "scores"], f"Kᵀ on top, Q left, scores between; got {blocks(m.html)}"
    assert "trainable" not in m.html, "no operand of Q Kᵀ is a trainable parameter"
    assert ROLE_EDGE["weight"] not in borders(m.html) and ROLE_EDGE["input"] not in borders(m.html), \
        "activations have the activation's border, not the weight's or the input's"
    assert "Q left, K.T on top" in m.html and "input left, weight" not in m.html, \
        "the layout line should name the operands, not call them input and weight"
    assert ">q3<" in m.html and ">k4<" in m.html, "the given labels should name the queries and the keys"


def test_roles_and_labels_that_do_not_fit_are_refused():
    W, X = operands()
    with pytest.raises(ValueError, match="three roles"):
        viz.matmul_sheet(W, X, roles=("weight", "input"))
    with pytest.raises(ValueError, match="'parameter'"):
        viz.matmul_sheet(W, X, roles=("parameter", "input", "activation"))
    with pytest.raises(ValueError, match="seq_len=6"):
        viz.matmul_sheet(W, X, labels=(["a", "b", "c"], list("vwxyz"), ["t0"]))


def test_a_transposed_operand_on_top_is_named_without_a_double_transpose():
    """weights · V in the PyTorch layout: pass Vᵀ as the (out, in) operand and V is drawn, and named, on top."""
    g = torch.Generator().manual_seed(2)
    weights, v = torch.softmax(torch.randn(4, 4, generator=g), dim=-1), torch.randn(4, 2, generator=g)
    m = viz.matmul_sheet(v.T, weights, result=weights @ v, names=("Vᵀ", "weights", "out"), orientation="pytorch",
                         roles=("activation", "activation", "activation"))
    assert blocks(m.html) == ["V", "weights", "out"], f"(Vᵀ)ᵀ is V; got {blocks(m.html)}"
    assert "out = weights &middot; V</b>" in m.html and "(4&times;4) &middot; (4&times;2) = (4&times;2)" in m.html
    assert blocks(viz.matmul_sheet(torch.zeros(3, 5), torch.zeros(6, 5), orientation="pytorch").html)[0] == "W.T"
