"""Llama 4's attention pieces and the new MoE fields: chunked masks, per-layer kinds, QK-norm,
temperature tuning, and the config errors that name the field and the rule."""
from __future__ import annotations

import math

import pytest
import torch

from tinymoe import ConfigError, ModelConfig, MoEConfig, attention_temperature, chunked_mask, qk_norm


def test_chunked_mask_sees_only_earlier_tokens_of_its_own_chunk():
    mask = chunked_mask(7, 3)
    for i in range(7):
        seen = mask[i].nonzero().flatten().tolist()
        assert seen == list(range(3 * (i // 3), i + 1)), f"query {i} sees {seen}"


def test_a_chunk_as_long_as_the_sequence_is_the_causal_mask():
    assert torch.equal(chunked_mask(5, 5), torch.ones(5, 5, dtype=torch.bool).tril())


@pytest.mark.parametrize("bad", [0, -2, 2.5, True])
def test_chunked_mask_refuses_a_bad_chunk(bad):
    with pytest.raises(ValueError, match="chunk_size"):
        chunked_mask(4, bad)


def test_every_interval_th_layer_is_nope_and_global():
    config = ModelConfig(n_layers=8, d_model=8, attention_chunk_size=16, no_rope_layer_interval=4)
    assert [config.layer_uses_rope(i) for i in range(8)] == [True, True, True, False] * 2
    assert [config.layer_chunk_size(i) for i in range(8)] == [16, 16, 16, None] * 2


def test_qk_norm_gives_unit_rms_per_head():
    x = torch.randn(2, 3, 5, 8) * 7
    rms = qk_norm(x, eps=0.0).pow(2).mean(-1).sqrt()
    assert torch.allclose(rms, torch.ones_like(rms), atol=1e-5), f"rms after qk_norm: {rms.flatten()[:4]}"


def test_temperature_is_one_before_floor_scale_then_grows_like_a_log():
    t = attention_temperature(torch.tensor([0, 6, 7, 15, 8191]), attn_scale=0.1, floor_scale=8.0)
    expected = [1.0, 1.0, 1 + 0.1 * math.log(2), 1 + 0.1 * math.log(3), 1 + 0.1 * math.log1p(1024)]
    assert torch.allclose(t, torch.tensor(expected), atol=1e-6), f"{t.tolist()} vs {expected}"


@pytest.mark.parametrize("fields, field", [
    ({"attention_chunk_size": 0}, "attention_chunk_size"),
    ({"attention_chunk_size": 4, "attention": "sliding_window", "window": 3}, "attention_chunk_size"),
    ({"no_rope_layer_interval": 2, "position": "none"}, "no_rope_layer_interval"),
    ({"qk_norm": 1}, "qk_norm"),
    ({"floor_scale": 0}, "floor_scale"),
    ({"attn_scale": float("nan")}, "attn_scale"),
])
def test_llama4_fields_are_checked_with_a_named_error(fields, field):
    with pytest.raises(ConfigError) as err:
        ModelConfig(d_model=8, **fields).validate()
    assert err.value.field == field, f"error names {err.value.field!r}: {err.value}"


@pytest.mark.parametrize("fields, field", [
    ({"n_experts": 6, "n_group": 4, "router": "sigmoid_bias"}, "moe.n_group"),
    ({"n_experts": 8, "n_group": 2, "topk_group": 3, "router": "sigmoid_bias"}, "moe.topk_group"),
    ({"n_experts": 8, "n_group": 2}, "moe.n_group"),                       # groups need the DeepSeek router
    ({"n_experts": 8, "n_group": 4, "topk_group": 1, "top_k": 3, "router": "sigmoid_bias"}, "moe.top_k"),
    ({"routed_scaling_factor": 0}, "moe.routed_scaling_factor"),
    ({"router": "llama4", "top_k": 1, "capacity_factor": 1.0}, "moe.capacity_factor"),
])
def test_moe_group_fields_are_checked_with_a_named_error(fields, field):
    with pytest.raises(ConfigError) as err:
        MoEConfig(**fields).validate()
    assert err.value.field == field, f"error names {err.value.field!r}: {err.value}"
