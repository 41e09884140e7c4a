"""Scaled dot-product attention, written out: safe softmax, masks, fully masked rows, d_v != d_k."""
from __future__ import annotations

import math

import pytest
import torch

from tinymoe import (attention_weights, causal_mask, naive_softmax, padding_mask, safe_softmax,
                     scaled_dot_product_attention, sliding_window_mask)


def _gen(seed=0):
    return torch.Generator().manual_seed(seed)


def _max_err(a, b) -> float:
    return (a.double() - b.double()).abs().max().item()


# ---- safe softmax -------------------------------------------------------------------------

def test_safe_softmax_equals_torch_softmax():
    x = torch.randn(4, 7, 9, generator=_gen()) * 5
    for dim in (-1, 0, 1):
        err = _max_err(safe_softmax(x, dim=dim), torch.softmax(x, dim=dim))
        assert err < 1e-6, f"safe_softmax(dim={dim}) differs from torch.softmax by {err:.3g}"


def test_naive_softmax_equals_safe_softmax_for_small_inputs():
    x = torch.randn(5, 6, generator=_gen())
    err = _max_err(naive_softmax(x), safe_softmax(x))
    assert err < 1e-6, f"for small inputs both formulas agree; they differ by {err:.3g}"


def test_safe_softmax_survives_float16_inputs_where_naive_overflows():
    # exp(x) overflows float16 (max 65504) once x > log(65504) ~ 11.09.
    assert abs(math.log(torch.finfo(torch.float16).max) - 11.09) < 0.01
    x = torch.tensor([[12.0, 11.5, 3.0, -2.0], [20.0, 20.0, 19.0, 0.0]], dtype=torch.float16)
    naive = naive_softmax(x)
    assert not torch.isfinite(naive).all(), "the naive softmax was expected to overflow in float16 here"
    safe = safe_softmax(x)
    assert safe.dtype == torch.float16 and torch.isfinite(safe).all(), f"safe softmax gave {safe}"
    reference = torch.softmax(x.float(), dim=-1)
    err = _max_err(safe, reference)
    assert err < 2e-3, f"float16 safe softmax differs from the float32 softmax by {err:.3g}"


def test_safe_softmax_rows_sum_to_one_even_for_huge_inputs():
    x = torch.tensor([[1000.0, 999.0, -1000.0]])
    out = safe_softmax(x)
    assert torch.isfinite(out).all() and abs(out.sum().item() - 1) < 1e-6, f"got {out}"
    assert torch.isnan(naive_softmax(x)).any(), "float32 overflows past ~88.7: the naive formula gives NaN"


def test_masked_positions_get_zero_weight():
    x = torch.randn(3, 5, generator=_gen())
    mask = torch.tensor([[1, 1, 0, 0, 1], [0, 1, 1, 1, 1], [1, 0, 0, 0, 0]], dtype=torch.bool)
    out = safe_softmax(x, mask=mask)
    assert torch.all(out[~mask] == 0), f"masked positions got weight {out[~mask]}"
    reference = torch.softmax(x.masked_fill(~mask, float("-inf")), dim=-1)
    err = _max_err(out, reference)
    assert err < 1e-6, f"masked safe_softmax differs from torch.softmax over the kept positions by {err:.3g}"


def test_fully_masked_row_gives_zeros():
    x = torch.randn(3, 4, generator=_gen())
    mask = torch.tensor([[1, 1, 0, 0], [0, 0, 0, 0], [1, 1, 1, 1]], dtype=torch.bool)
    out = safe_softmax(x, mask=mask)
    assert not torch.isnan(out).any(), f"a fully masked row produced NaN: {out}"
    assert torch.all(out[1] == 0), f"the fully masked row should be all zeros, got {out[1]}"
    assert torch.allclose(out[[0, 2]].sum(-1), torch.ones(2)), "the other rows must still sum to 1"


def test_fully_masked_row_gives_zero_output_and_finite_gradients():
    q = torch.randn(1, 3, 4, generator=_gen(), requires_grad=True)
    k = torch.randn(1, 3, 4, generator=_gen(1), requires_grad=True)
    v = torch.randn(1, 3, 2, generator=_gen(2), requires_grad=True)
    mask = torch.tensor([[1, 0, 0], [0, 0, 0], [1, 1, 1]], dtype=torch.bool)   # query 1 may see nothing
    out, weights = scaled_dot_product_attention(q, k, v, mask=mask)
    assert torch.all(out[0, 1] == 0) and torch.all(weights[0, 1] == 0), \
        f"the fully masked query should output zeros, got out={out[0, 1]}, weights={weights[0, 1]}"
    out.sum().backward()
    for name, t in (("q", q), ("k", k), ("v", v)):
        assert torch.isfinite(t.grad).all(), f"gradient of {name} is not finite: {t.grad}"


# ---- masks --------------------------------------------------------------------------------

def test_causal_mask_is_lower_triangular():
    m = causal_mask(4)
    assert m.dtype == torch.bool
    for i in range(4):
        for j in range(4):
            assert m[i, j] == (j <= i), f"causal_mask[{i}, {j}] = {bool(m[i, j])}, expected {j <= i}"


@pytest.mark.parametrize("window", [1, 2, 3, 10])
def test_sliding_window_mask_sees_the_window_most_recent_positions(window):
    T = 6
    m = sliding_window_mask(T, window)
    for i in range(T):
        seen = [j for j in range(T) if m[i, j]]
        expected = list(range(max(0, i - window + 1), i + 1))
        assert seen == expected, f"window={window}: query {i} sees {seen}, expected {expected}"


def test_padding_mask_hides_keys_past_each_length():
    m = padding_mask(torch.tensor([3, 5, 0]), seq_len=5)
    assert m.shape == (3, 1, 1, 5)
    assert m[0, 0, 0].tolist() == [True, True, True, False, False]
    assert m[1, 0, 0].all() and not m[2].any(), f"length 5 should keep every key, length 0 none: {m[1:, 0, 0].tolist()}"


def test_causal_flag_equals_an_explicit_causal_mask():
    q, k, v = (torch.randn(2, 3, 5, 4, generator=_gen(s)) for s in range(3))
    out_flag, w_flag = scaled_dot_product_attention(q, k, v, causal=True)
    out_mask, w_mask = scaled_dot_product_attention(q, k, v, mask=causal_mask(5))
    assert torch.equal(w_flag, w_mask) and torch.equal(out_flag, out_mask), \
        f"causal=True and mask=causal_mask(5) differ by {_max_err(w_flag, w_mask):.3g} in the weights"
    assert torch.all(w_flag.triu(diagonal=1) == 0), "a query put weight on a later key"


def test_causal_with_fewer_queries_than_keys_aligns_queries_to_the_end():
    """Decoding: 2 new queries against 5 cached keys sit at positions 3 and 4."""
    q_all, k, v = (torch.randn(1, 5, 4, generator=_gen(s)) for s in range(3))
    _, w_all = scaled_dot_product_attention(q_all, k, v, causal=True)
    _, w_last = scaled_dot_product_attention(q_all[:, 3:], k, v, causal=True)
    assert w_last.shape == (1, 2, 5)
    err = _max_err(w_last, w_all[:, 3:])
    assert err < 1e-6, f"the last two queries' weights change by {err:.3g} when earlier queries are dropped"


def test_causal_with_more_queries_than_keys_gives_zero_rows_for_queries_before_any_key():
    q = torch.randn(1, 4, 3, generator=_gen())
    k, v = torch.randn(1, 2, 3, generator=_gen(1)), torch.randn(1, 2, 3, generator=_gen(2))
    out, w = scaled_dot_product_attention(q, k, v, causal=True)
    assert w.shape == (1, 4, 2), f"weights shape {tuple(w.shape)}, expected (1, 4, 2)"
    # Keys are the last 2 of 4 positions: queries 0, 1 see none, query 2 sees key 0, query 3 both.
    assert torch.all(w[0, :2] == 0) and torch.all(out[0, :2] == 0), \
        f"queries before every key should get zero weights and output; weights {w[0, :2].tolist()}"
    assert w[0, 2].tolist() == [1.0, 0.0]
    assert abs(w[0, 3].sum().item() - 1) < 1e-6, f"the last query's weights sum to {w[0, 3].sum().item()}"


def test_attention_changes_only_with_keys_a_query_may_see():
    T = 6
    q, k, v = (torch.randn(1, T, 4, generator=_gen(s)) for s in range(3))
    out, _ = scaled_dot_product_attention(q, k, v, causal=True)
    for t in range(T - 1):
        k2, v2 = k.clone(), v.clone()
        k2[:, t + 1:] += 3.0
        v2[:, t + 1:] -= 5.0
        out2, _ = scaled_dot_product_attention(q, k2, v2, causal=True)
        err = _max_err(out2[:, : t + 1], out[:, : t + 1])
        assert err == 0, f"changing keys/values after position {t} changed outputs up to {t} by {err:.3g}"


def test_float_mask_is_refused_with_a_clear_error():
    q = torch.randn(3, 4)
    additive = torch.zeros(3, 3).masked_fill(~causal_mask(3), float("-inf"))
    with pytest.raises(TypeError, match="boolean mask"):
        attention_weights(q, q, mask=additive)


# ---- shapes -------------------------------------------------------------------------------

def test_value_dim_may_differ_from_key_dim():
    q, k = torch.randn(2, 5, 4, generator=_gen()), torch.randn(2, 7, 4, generator=_gen(1))
    v = torch.randn(2, 7, 3, generator=_gen(2))
    out, weights = scaled_dot_product_attention(q, k, v)
    assert out.shape == (2, 5, 3), f"out shape {tuple(out.shape)}, expected (batch, T_q, d_v) = (2, 5, 3)"
    assert weights.shape == (2, 5, 7), f"weights shape {tuple(weights.shape)}, expected (2, 5, 7)"
    err = _max_err(out, weights @ v)
    assert err < 1e-6, f"out is not weights @ v (off by {err:.3g})"


def test_query_and_key_must_share_their_dimension():
    with pytest.raises(ValueError, match="d_k=4 but k has d_k=3"):
        scaled_dot_product_attention(torch.randn(5, 4), torch.randn(5, 3), torch.randn(5, 3))


def test_every_key_needs_a_value():
    with pytest.raises(ValueError, match="5 positions but v has 4"):
        scaled_dot_product_attention(torch.randn(5, 4), torch.randn(5, 4), torch.randn(4, 4))


def test_scores_are_scaled_by_one_over_sqrt_d_k():
    q, k = torch.randn(3, 16, generator=_gen()), torch.randn(4, 16, generator=_gen(1))
    weights = attention_weights(q, k)
    expected = torch.softmax(q @ k.T / 4.0, dim=-1)
    err = _max_err(weights, expected)
    assert err < 1e-6, f"weights differ from softmax(q k^T / sqrt(16)) by {err:.3g}"
    custom = attention_weights(q, k, scale=1.0)
    err = _max_err(custom, torch.softmax(q @ k.T, dim=-1))
    assert err < 1e-6, f"scale=1.0 was not applied (off by {err:.3g})"
