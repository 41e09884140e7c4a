"""ModelConfig / MoEConfig / SparseAttentionConfig: every impossible configuration is refused with
one ConfigError that names the field and the value, when the config is made, before any tensor
(or torch error) exists. Modules trust a config; a model keeps its own copy."""
from __future__ import annotations

import math

import pytest
import torch

from tinymoe import ConfigError, ModelConfig, MoEConfig, MultiHeadAttention, SparseAttentionConfig, TinyLM

NAN, INF = float("nan"), float("inf")

# (id, config fields, field the error must name, value the error must show)
# Each row is a valid config except for exactly one thing.
BAD_MODEL_CONFIGS = [
    # d_model not divisible by n_heads when head_dim is implied
    ("d_model_not_divisible", dict(d_model=7, n_heads=2, position="none"), "d_model", 7),
    ("d_model_not_divisible_rope", dict(d_model=10, n_heads=3), "d_model", 10),
    # n_heads not a multiple of n_kv_heads
    ("n_heads_not_multiple_of_kv", dict(d_model=12, n_heads=6, n_kv_heads=4), "n_heads", 6),
    ("n_heads_not_multiple_of_kv_3", dict(d_model=8, n_heads=4, n_kv_heads=3), "n_heads", 4),
    ("more_kv_heads_than_heads", dict(d_model=8, n_heads=2, n_kv_heads=4), "n_kv_heads", 4),
    # odd head_dim with RoPE, explicit and implied
    ("odd_head_dim_rope_explicit", dict(d_model=8, n_heads=2, head_dim=3), "head_dim", 3),
    ("odd_head_dim_rope_implied", dict(d_model=6, n_heads=2), "head_dim", 3),
    ("odd_d_model_sinusoidal", dict(d_model=5, position="sinusoidal"), "d_model", 5),
    # non-positive sizes
    ("vocab_size_zero", dict(vocab_size=0), "vocab_size", 0),
    ("d_model_negative", dict(d_model=-4), "d_model", -4),
    ("d_model_zero", dict(d_model=0), "d_model", 0),
    ("n_layers_zero", dict(n_layers=0), "n_layers", 0),
    ("n_heads_zero", dict(n_heads=0), "n_heads", 0),
    ("n_heads_negative", dict(n_heads=-2), "n_heads", -2),
    ("n_kv_heads_zero", dict(d_model=8, n_heads=2, n_kv_heads=0), "n_kv_heads", 0),
    ("head_dim_zero", dict(head_dim=0), "head_dim", 0),
    ("v_head_dim_negative", dict(v_head_dim=-1), "v_head_dim", -1),
    ("d_ff_zero", dict(d_ff=0), "d_ff", 0),
    ("max_seq_len_zero", dict(max_seq_len=0), "max_seq_len", 0),
    ("window_zero", dict(attention="sliding_window", window=0), "window", 0),
    ("v_head_dims_has_zero", dict(d_model=6, n_heads=3, head_dim=2, v_head_dims=(2, 0, 2)), "v_head_dims[1]", 0),
    # non-integer sizes
    ("d_model_float", dict(d_model=8.0), "d_model", 8.0),
    ("n_heads_str", dict(n_heads="2"), "n_heads", "2"),
    ("n_layers_fraction", dict(n_layers=1.5), "n_layers", 1.5),
    ("vocab_size_bool", dict(vocab_size=True), "vocab_size", True),
    ("head_dim_float", dict(head_dim=4.0), "head_dim", 4.0),
    ("d_ff_float", dict(d_ff=20.0), "d_ff", 20.0),
    ("v_head_dims_float", dict(d_model=6, n_heads=3, head_dim=2, v_head_dims=(2, 3.0, 2)), "v_head_dims[1]", 3.0),
    ("v_head_dims_not_sequence", dict(v_head_dims=5), "v_head_dims", 5),
    # unknown kinds
    ("unknown_ffn", dict(ffn="gelu"), "ffn", "gelu"),
    ("unknown_position", dict(position="alibi"), "position", "alibi"),
    ("unknown_rope_pairing", dict(rope_pairing="neox"), "rope_pairing", "neox"),
    ("unknown_norm", dict(norm="batchnorm"), "norm", "batchnorm"),
    ("unknown_attention", dict(attention="flash"), "attention", "flash"),
    ("norm_kind_wrong_case", dict(norm="RMSNorm"), "norm", "RMSNorm"),
    # bad numbers and flags
    ("rope_base_one", dict(rope_base=1.0), "rope_base", 1.0),
    ("rope_base_nan", dict(rope_base=NAN), "rope_base", NAN),
    ("rope_base_inf", dict(rope_base=INF), "rope_base", INF),
    ("norm_eps_zero", dict(norm_eps=0.0), "norm_eps", 0.0),
    ("norm_eps_negative", dict(norm_eps=-1e-5), "norm_eps", -1e-5),
    ("norm_eps_nan", dict(norm_eps=NAN), "norm_eps", NAN),
    ("causal_not_bool", dict(causal="yes"), "causal", "yes"),
    ("bias_not_bool", dict(bias=1), "bias", 1),
    ("tie_embeddings_not_bool", dict(tie_embeddings="no"), "tie_embeddings", "no"),
    # combinations
    ("sliding_window_without_window", dict(attention="sliding_window"), "window", None),
    ("v_head_dims_wrong_length", dict(d_model=6, n_heads=3, head_dim=2, v_head_dims=(2, 2)), "v_head_dims", (2, 2)),
    ("v_head_dims_with_gqa", dict(d_model=8, n_heads=2, n_kv_heads=1, v_head_dims=(4, 2)), "v_head_dims", (4, 2)),
    ("native_sparse_without_nsa", dict(attention="native_sparse"), "nsa", None),
    ("native_sparse_not_causal", dict(attention="native_sparse", causal=False, nsa=SparseAttentionConfig()),
     "causal", False),
    ("moe_not_a_moe_config", dict(moe={"n_experts": 4}), "moe", {"n_experts": 4}),
    ("nsa_not_a_nsa_config", dict(nsa="yes"), "nsa", "yes"),
]

# MoEConfig rows: (id, MoEConfig fields, field, value); the field is reported as "moe.<name>".
BAD_MOE_CONFIGS = [
    ("n_experts_zero", dict(n_experts=0), "n_experts", 0),
    ("n_experts_float", dict(n_experts=4.0), "n_experts", 4.0),
    ("top_k_zero", dict(top_k=0), "top_k", 0),
    ("top_k_above_n_experts", dict(n_experts=4, top_k=5), "top_k", 5),
    ("unknown_router", dict(router="hash"), "router", "hash"),
    ("unknown_dispatch", dict(dispatch="magic"), "dispatch", "magic"),
    ("switch_with_top_k_2", dict(router="switch", top_k=2, capacity_factor=1.25), "top_k", 2),
    ("switch_without_capacity", dict(router="switch", top_k=1), "capacity_factor", None),
    ("expert_choice_without_capacity", dict(router="expert_choice"), "capacity_factor", None),
    ("capacity_factor_zero", dict(capacity_factor=0.0), "capacity_factor", 0.0),
    ("capacity_factor_negative", dict(capacity_factor=-1.0), "capacity_factor", -1.0),
    ("capacity_factor_nan", dict(capacity_factor=NAN), "capacity_factor", NAN),
    ("capacity_factor_str", dict(capacity_factor="big"), "capacity_factor", "big"),
    ("n_shared_experts_negative", dict(n_shared_experts=-1), "n_shared_experts", -1),
    ("n_shared_experts_fraction", dict(n_shared_experts=1.5), "n_shared_experts", 1.5),
    ("d_ff_expert_zero", dict(d_ff_expert=0), "d_ff_expert", 0),
    ("every_n_layers_zero", dict(every_n_layers=0), "every_n_layers", 0),
    ("aux_loss_coef_negative", dict(aux_loss_coef=-0.1), "aux_loss_coef", -0.1),
    ("aux_loss_coef_nan", dict(aux_loss_coef=NAN), "aux_loss_coef", NAN),
    ("z_loss_coef_str", dict(z_loss_coef="0.001"), "z_loss_coef", "0.001"),
    ("bias_update_rate_negative", dict(bias_update_rate=-1.0), "bias_update_rate", -1.0),
    ("renormalize_not_bool", dict(renormalize="yes"), "renormalize", "yes"),
    ("router_fp32_not_bool", dict(router_fp32=1), "router_fp32", 1),
]

# SparseAttentionConfig rows: the field is reported as "nsa.<name>".
BAD_NSA_CONFIGS = [
    ("block_size_zero", dict(block_size=0), "block_size", 0),
    ("stride_negative", dict(stride=-16), "stride", -16),
    ("select_block_size_float", dict(select_block_size=64.0), "select_block_size", 64.0),
    ("top_n_zero", dict(top_n=0), "top_n", 0),
    ("window_fraction", dict(window=2.5), "window", 2.5),
    ("stride_above_block_size", dict(block_size=16, stride=32, select_block_size=64), "stride", 32),
    ("select_block_not_multiple_of_stride", dict(block_size=32, stride=16, select_block_size=40),
     "select_block_size", 40),
]


def _same_value(a, b) -> bool:
    if isinstance(a, float) and isinstance(b, float) and math.isnan(a) and math.isnan(b):
        return True
    return type(a) is type(b) and a == b


def _assert_names_field_and_value(err: ConfigError, field: str, value) -> None:
    message = str(err)
    assert err.field == field, f"the error blames field {err.field!r}, expected {field!r}; message: {message}"
    assert _same_value(err.value, value), f"the error reports value {err.value!r}, expected {value!r}; message: {message}"
    assert f"{field}=" in message and repr(value) in message, \
        f"the message should name the field and the value ({field}={value!r}); got: {message}"
    assert len(err.rule) > 10, f"the message should state the rule that was broken; got: {message}"


def test_config_error_is_a_value_error():
    assert issubclass(ConfigError, ValueError)


def test_default_configs_are_valid():
    ModelConfig().validate()
    MoEConfig().validate()
    SparseAttentionConfig().validate()


@pytest.mark.parametrize("fields,field,value", [row[1:] for row in BAD_MODEL_CONFIGS],
                         ids=[row[0] for row in BAD_MODEL_CONFIGS])
def test_bad_model_config_names_field_and_value(fields, field, value):
    with pytest.raises(ConfigError) as info:
        ModelConfig(**fields)                # checked when it is made
    _assert_names_field_and_value(info.value, field, value)


@pytest.mark.parametrize("fields,field,value", [row[1:] for row in BAD_MOE_CONFIGS],
                         ids=[row[0] for row in BAD_MOE_CONFIGS])
def test_bad_moe_config_names_field_and_value(fields, field, value):
    with pytest.raises(ConfigError) as info:
        MoEConfig(**fields)
    _assert_names_field_and_value(info.value, "moe." + field, value)
    # The same rule fires when a MoEConfig edited after it was made sits inside a ModelConfig.
    moe = MoEConfig()
    for name, changed in fields.items():
        setattr(moe, name, changed)
    with pytest.raises(ConfigError) as info:
        ModelConfig(d_model=8, n_heads=2, moe=moe)
    _assert_names_field_and_value(info.value, "moe." + field, value)


@pytest.mark.parametrize("fields,field,value", [row[1:] for row in BAD_NSA_CONFIGS],
                         ids=[row[0] for row in BAD_NSA_CONFIGS])
def test_bad_sparse_attention_config_names_field_and_value(fields, field, value):
    with pytest.raises(ConfigError) as info:
        SparseAttentionConfig(**fields)
    _assert_names_field_and_value(info.value, "nsa." + field, value)
    nsa = SparseAttentionConfig()
    for name, changed in fields.items():
        setattr(nsa, name, changed)
    with pytest.raises(ConfigError) as info:
        ModelConfig(d_model=8, n_heads=2, attention="native_sparse", nsa=nsa, max_seq_len=1024)
    _assert_names_field_and_value(info.value, "nsa." + field, value)


# A config is checked once, when it is made; the modules trust it. A model copies its config and
# checks the copy, so a config edited into an impossible one after it was made is still caught at
# the model, and editing it after the model was built changes nothing.
def _edited_into(fields):
    config = ModelConfig()                                              # each row is the defaults but one thing
    for name, value in fields.items():
        setattr(config, name, value)
    return config


@pytest.mark.parametrize("fields,field,value", [row[1:] for row in BAD_MODEL_CONFIGS],
                         ids=[row[0] for row in BAD_MODEL_CONFIGS])
def test_a_model_checks_a_config_edited_after_it_was_made(fields, field, value):
    config = _edited_into(fields)
    try:
        TinyLM(config)
    except ConfigError as err:
        _assert_names_field_and_value(err, field, value)
    except Exception as err:   # noqa: BLE001 - the point is to report which other error leaked
        pytest.fail(f"TinyLM(config edited to {fields}) raised {type(err).__name__}: {err} instead of a ConfigError")
    else:
        pytest.fail(f"TinyLM built a model from a config edited to {fields}")


def test_a_model_keeps_its_own_copy_of_the_config():
    config = ModelConfig(d_model=8, n_heads=2, max_seq_len=16)
    model = TinyLM(config)
    config.n_heads = 3                                                  # impossible now, and too late
    assert model.config.n_heads == 2 and model.config is not config
    logits = model(torch.zeros(1, 4, dtype=torch.long)).logits
    assert logits.shape == (1, 4, 32)


def test_a_non_config_given_to_a_model_names_the_argument():
    with pytest.raises(ConfigError, match=r"config=\{'d_model': 8\} must be a ModelConfig"):
        TinyLM({"d_model": 8})


def test_multihead_attention_refuses_a_bad_config():
    # The example from DESIGN.md, spelled out.
    with pytest.raises(ConfigError, match=r"n_heads=6 .*not a multiple of n_kv_heads=4"):
        MultiHeadAttention(ModelConfig(d_model=12, n_heads=6, n_kv_heads=4))


GOOD_CONFIGS = {
    "mha": dict(d_model=8, n_heads=2),
    "gqa": dict(d_model=16, n_heads=4, n_kv_heads=2),
    "mqa": dict(d_model=16, n_heads=4, n_kv_heads=1),
    "explicit_head_dim": dict(d_model=5, n_heads=3, head_dim=2),
    "unequal_value_heads": dict(d_model=5, n_heads=3, head_dim=2, v_head_dims=[5, 3, 3]),
    "d_v_differs": dict(d_model=8, n_heads=2, v_head_dim=3),
    "sliding_window": dict(d_model=8, n_heads=2, attention="sliding_window", window=3),
    "sinusoidal_layernorm_relu": dict(d_model=6, n_heads=3, position="sinusoidal", norm="layernorm", ffn="relu"),
    "no_position_odd_head_dim": dict(d_model=6, n_heads=2, position="none"),
    "interleaved_rope": dict(d_model=8, n_heads=2, rope_pairing="interleaved"),
    "tied": dict(d_model=8, n_heads=2, tie_embeddings=True, bias=True),
}


@pytest.mark.parametrize("fields", GOOD_CONFIGS.values(), ids=GOOD_CONFIGS.keys())
def test_valid_configs_build_and_run(fields):
    config = ModelConfig(vocab_size=13, n_layers=2, max_seq_len=16, **fields)
    model = TinyLM(config)
    tokens = torch.randint(0, 13, (2, 7), generator=torch.Generator().manual_seed(0))
    logits = model(tokens).logits
    assert logits.shape == (2, 7, 13), f"logits shape {tuple(logits.shape)}, expected (2, 7, 13)"
    assert torch.isfinite(logits).all(), "a valid config produced non-finite logits"


def test_list_of_value_sizes_is_stored_as_a_tuple():
    config = ModelConfig(d_model=5, n_heads=3, head_dim=2, v_head_dims=[5, 3, 3])
    assert config.v_head_dims == (5, 3, 3) and config.v_dims == (5, 3, 3)


def test_derived_sizes():
    config = ModelConfig(d_model=12, n_heads=6, n_kv_heads=2)
    assert (config.kv_heads, config.qk_dim, config.group_size, config.ff_dim) == (2, 2, 3, 48)
    assert config.v_dims == (2,) * 6
    assert ModelConfig(d_model=12, n_heads=6).kv_heads == 6, "n_kv_heads=None must mean MHA (kv_heads == n_heads)"
    assert ModelConfig(d_model=12, n_heads=6, head_dim=4, v_head_dim=3).v_dims == (3,) * 6


def test_replace_checks_the_copy():
    config = ModelConfig(d_model=8, n_heads=2)
    assert config.replace(n_heads=4).n_heads == 4
    assert config.n_heads == 2, "replace() must not change the original"
    with pytest.raises(ConfigError, match="n_heads"):
        config.replace(n_heads=3)


def test_moe_in_layer_follows_every_n_layers():
    config = ModelConfig(n_layers=4, moe=MoEConfig(every_n_layers=2))
    assert [config.moe_in_layer(i) for i in range(4)] == [False, True, False, True]
    assert not ModelConfig(n_layers=2).moe_in_layer(0), "no MoEConfig means no MoE layer"
