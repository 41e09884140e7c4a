"""Multi-head attention: heads, concatenation, output projection; GQA/MQA from n_kv_heads;
heads of unequal value size; causality; clear errors for bad inputs."""
from __future__ import annotations

import pytest
import torch

from tinymoe import (ModelConfig, MultiHeadAttention, Trace, attention_parameters, parameter_counts,
                     scaled_dot_product_attention)

B, T = 2, 7


def _x(d_model, seed=0, T=T):
    return torch.randn(B, T, d_model, generator=torch.Generator().manual_seed(seed))


def _max_err(a, b) -> float:
    return (a.double() - b.double()).abs().max().item()


def _build(config, seed=0):
    torch.manual_seed(seed)
    return MultiHeadAttention(config)


@pytest.mark.parametrize("position", ["rope", "none"])
def test_gqa_with_as_many_kv_heads_as_heads_is_mha(position):
    mha = _build(ModelConfig(d_model=16, n_heads=4, position=position))
    gqa = MultiHeadAttention(ModelConfig(d_model=16, n_heads=4, n_kv_heads=4, position=position))
    gqa.load_state_dict(mha.state_dict())
    x = _x(16)
    err = _max_err(gqa(x), mha(x))
    assert err == 0, f"n_kv_heads == n_heads should be exactly MHA with the same weights; outputs differ by {err:.3g}"


@pytest.mark.parametrize("n_kv_heads", [1, 2])
@pytest.mark.parametrize("position", ["rope", "none"])
def test_gqa_equals_mha_whose_kv_heads_are_copied_across_each_group(n_kv_heads, position):
    """Sharing a kv head between g query heads is the same as g identical kv heads."""
    n_heads, head_dim, d_model = 4, 4, 16
    group = n_heads // n_kv_heads
    gqa = _build(ModelConfig(d_model=d_model, n_heads=n_heads, n_kv_heads=n_kv_heads, position=position))
    mha = MultiHeadAttention(ModelConfig(d_model=d_model, n_heads=n_heads, position=position))
    with torch.no_grad():
        mha.W_q.weight.copy_(gqa.W_q.weight)
        mha.W_o.weight.copy_(gqa.W_o.weight)
        for name in ("W_k", "W_v"):
            per_kv_head = getattr(gqa, name).weight.view(n_kv_heads, head_dim, d_model)
            getattr(mha, name).weight.copy_(per_kv_head.repeat_interleave(group, dim=0).reshape(-1, d_model))
    x = _x(d_model)
    err = _max_err(gqa(x), mha(x))
    assert err < 1e-6, (f"GQA with {n_kv_heads} kv heads differs from MHA with each kv head copied to its "
                        f"{group} query heads by {err:.3g}: query head h must read kv head h // {group}")


def test_gqa_has_fewer_key_value_parameters():
    mha = MultiHeadAttention(ModelConfig(d_model=16, n_heads=4))
    gqa = MultiHeadAttention(ModelConfig(d_model=16, n_heads=4, n_kv_heads=2))
    mqa = MultiHeadAttention(ModelConfig(d_model=16, n_heads=4, n_kv_heads=1))
    shapes = [tuple(m.W_k.weight.shape) for m in (mha, gqa, mqa)]
    assert shapes == [(16, 16), (8, 16), (4, 16)], f"W_k shapes for 4, 2, 1 kv heads: {shapes}"
    assert gqa.W_q.weight.shape == mha.W_q.weight.shape, "GQA keeps every query head"


def test_each_head_is_attention_over_its_own_slice():
    """Recompute every head from the module's weights with plain scaled-dot-product attention."""
    config = ModelConfig(d_model=12, n_heads=3, n_kv_heads=1, position="none")
    attn = _build(config)
    x = _x(12)
    trace = Trace()
    out = attn(x, trace=trace)
    D = config.qk_dim
    q = x @ attn.W_q.weight.T
    k = x @ attn.W_k.weight.T               # the single kv head
    v = x @ attn.W_v.weight.T
    heads = []
    for h in range(3):
        head, _ = scaled_dot_product_attention(q[..., h * D:(h + 1) * D], k, v, causal=True)
        err = _max_err(trace[f"attn.head{h}"], head)
        assert err < 1e-6, f"head {h} differs from attention over its own q slice by {err:.3g}"
        heads.append(head)
    expected = torch.cat(heads, dim=-1) @ attn.W_o.weight.T
    err = _max_err(out, expected)
    assert err < 1e-6, f"output differs from W_o(concat of heads) by {err:.3g}"


def test_heads_of_unequal_value_size_concatenate_and_project_back():
    """The hand-built sheet: d_model=5, three heads with value sizes 5, 3, 3 -> concat 11 -> 5."""
    config = ModelConfig(d_model=5, n_heads=3, head_dim=2, v_head_dims=(5, 3, 3))
    attn = _build(config)
    assert attn.W_v.weight.shape == (11, 5), f"W_v is {tuple(attn.W_v.weight.shape)}, expected (11, 5)"
    assert attn.W_o.weight.shape == (5, 11), f"W_o is {tuple(attn.W_o.weight.shape)}, expected (5, 11)"
    x = _x(5)
    trace = Trace()
    out = attn(x, trace=trace)
    shapes = trace.shapes()
    assert [shapes[f"attn.head{h}"] for h in range(3)] == [(B, T, 5), (B, T, 3), (B, T, 3)], shapes
    assert shapes["attn.concat"] == (B, T, 11), f"concat of 5 + 3 + 3 has shape {shapes['attn.concat']}"
    assert out.shape == (B, T, 5), f"the output projection gave {tuple(out.shape)}, expected back to d_model=5"
    # Each head reads its own slice of the values: head 0 the first 5, heads 1 and 2 the next 3 each.
    # Unequal sizes cannot share one (B, n_kv_heads, T, v_dim) tensor: one record per kv head.
    assert "attn.v" not in trace, "with unequal value sizes the values are recorded per head (attn.v0, ...)"
    assert [shapes[f"attn.v{h}"] for h in range(3)] == [(B, T, 5), (B, T, 3), (B, T, 3)], shapes
    v_all = attn.W_v(x)                                                   # (B, T, 11)
    starts = [0, 5, 8]
    for h, (start, size) in enumerate(zip(starts, (5, 3, 3))):
        torch.testing.assert_close(trace[f"attn.v{h}"], v_all[..., start:start + size],
                                   msg=lambda m: f"attn.v{h} is not W_v's rows {start}..{start + size - 1}: {m}")
        expected = trace["attn.weights"][:, h] @ trace[f"attn.v{h}"]
        err = _max_err(trace[f"attn.head{h}"], expected)
        assert err < 1e-6, f"head {h} does not use its own values attn.v{h} (off by {err:.3g})"


def test_value_size_may_differ_from_key_size():
    config = ModelConfig(d_model=8, n_heads=2, head_dim=4, v_head_dim=3, n_kv_heads=1)
    attn = _build(config)
    trace = Trace()
    out = attn(_x(8), trace=trace)
    shapes = trace.shapes()
    assert (shapes["attn.head0"], shapes["attn.concat"], tuple(out.shape)) == ((B, T, 3), (B, T, 6), (B, T, 8)), shapes
    assert (tuple(attn.W_k.weight.shape), tuple(attn.W_v.weight.shape)) == ((4, 8), (3, 8)), \
        f"W_k {tuple(attn.W_k.weight.shape)}, W_v {tuple(attn.W_v.weight.shape)}: expected d_k=4, d_v=3 for one kv head"


@pytest.mark.parametrize("fields", [dict(n_kv_heads=2), dict(n_kv_heads=1, position="none"),
                                    dict(attention="sliding_window", window=3)],
                         ids=["gqa_rope", "mqa", "sliding_window"])
def test_changing_a_future_token_never_changes_an_earlier_output(fields):
    attn = _build(ModelConfig(d_model=16, n_heads=4, **fields))
    x = _x(16)
    out = attn(x)
    for t in range(T - 1):
        x2 = x.clone()
        x2[:, t + 1] = torch.randn(B, 16, generator=torch.Generator().manual_seed(100 + t)) * 10
        out2 = attn(x2)
        err = _max_err(out2[:, : t + 1], out[:, : t + 1])
        assert err == 0, f"changing token {t + 1} changed outputs at positions <= {t} by {err:.3g}"
        assert _max_err(out2[:, t + 1], out[:, t + 1]) > 0, "the changed token's own output should change"


def test_non_causal_attention_sees_the_future():
    attn = _build(ModelConfig(d_model=8, n_heads=2, causal=False))
    x = _x(8)
    x2 = x.clone()
    x2[:, -1] += 1.0
    assert _max_err(attn(x2)[:, 0], attn(x)[:, 0]) > 0, "with causal=False the first token should see the last"


def test_sliding_window_forgets_tokens_outside_the_window():
    attn = _build(ModelConfig(d_model=8, n_heads=2, attention="sliding_window", window=2))
    x = _x(8)
    x2 = x.clone()
    x2[:, 0] += 5.0                 # token 0 is outside the window of queries 2, 3, ...
    err = _max_err(attn(x2)[:, 2:], attn(x)[:, 2:])
    assert err == 0, f"token 0 leaked into queries >= 2 through a window of 2 (difference {err:.3g})"


def test_key_padding_mask_hides_padding_keys():
    attn = _build(ModelConfig(d_model=8, n_heads=2, causal=False, position="none"))
    x = _x(8)
    lengths = torch.tensor([4, T])
    real = torch.arange(T)[None, :] < lengths[:, None]          # (B, T)
    out = attn(x, key_padding_mask=real)
    x2 = x.clone()
    x2[0, 4:] = 99.0                                            # change only the padding of sequence 0
    out2 = attn(x2, key_padding_mask=real)
    err = _max_err(out2[0, :4], out[0, :4])
    assert err == 0, f"changing padding tokens changed real tokens' outputs by {err:.3g}"


def test_attention_parameter_counts_match_the_module():
    for fields in (dict(d_model=16, n_heads=4), dict(d_model=16, n_heads=4, n_kv_heads=1, bias=True),
                   dict(d_model=5, n_heads=3, head_dim=2, v_head_dims=(5, 3, 3))):
        config = ModelConfig(**fields)
        attn = MultiHeadAttention(config)
        counted = attention_parameters(config)
        for name in ("W_q", "W_k", "W_v", "W_o"):
            actual = sum(p.numel() for p in getattr(attn, name).parameters())
            assert counted[name] == actual, f"{fields}: attention_parameters says {name}={counted[name]}, module has {actual}"
        module_total = parameter_counts(attn)["total"]["trainable"]
        assert counted["total"] == module_total, f"{fields}: attention_parameters total {counted['total']}, module {module_total}"


def test_wrong_input_width_is_a_clear_error():
    attn = MultiHeadAttention(ModelConfig(d_model=8, n_heads=2))
    with pytest.raises(ValueError, match=r"expected \(batch, seq_len, d_model=8\)"):
        attn(torch.randn(2, 5, 6))
    with pytest.raises(ValueError, match="d_model=8"):
        attn(torch.randn(5, 8))


def test_too_long_sequence_is_a_clear_error():
    attn = MultiHeadAttention(ModelConfig(d_model=8, n_heads=2, max_seq_len=4))
    with pytest.raises(ValueError, match="seq_len=5 exceeds max_seq_len=4"):
        attn(torch.randn(1, 5, 8))


def test_wrong_padding_mask_shape_is_a_clear_error():
    attn = MultiHeadAttention(ModelConfig(d_model=8, n_heads=2))
    with pytest.raises(ValueError, match="key_padding_mask"):
        attn(torch.randn(2, 5, 8), key_padding_mask=torch.ones(2, 4, dtype=torch.bool))


def test_values_are_split_by_kv_head_like_the_keys():
    """attn.v is (batch, n_kv_heads, seq, v_dim), as attn.k is (batch, n_kv_heads, seq, head_dim):
    kv head j's values are W_v's rows j*v_dim .. (j+1)*v_dim - 1, and query head h reads kv head h // group."""
    config = ModelConfig(d_model=8, n_heads=4, n_kv_heads=2, head_dim=2, v_head_dim=3)
    attn = _build(config)
    x = _x(8)
    trace = Trace()
    attn(x, trace=trace)
    assert trace.shapes()["attn.v"] == (B, 2, T, 3), f"attn.v is {trace.shapes()['attn.v']}, expected (B, n_kv_heads=2, T, v_dim=3)"
    assert trace.shapes()["attn.k"][:3] == trace.shapes()["attn.v"][:3], "k and v must be split by head the same way"
    with torch.no_grad():
        v_all = attn.W_v(x)                                               # (B, T, 2 * 3)
    for j in range(2):
        torch.testing.assert_close(trace["attn.v"][:, j], v_all[..., 3 * j:3 * j + 3],
                                   msg=lambda m: f"attn.v[:, {j}] is not W_v's rows {3 * j}..{3 * j + 2}: {m}")
    for h in range(4):
        expected = trace["attn.weights"][:, h] @ trace["attn.v"][:, h // 2]
        err = _max_err(trace[f"attn.head{h}"], expected)
        assert err < 1e-6, f"query head {h} must read kv head {h // 2}'s values (off by {err:.3g})"
