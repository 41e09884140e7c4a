"""Impossible native-sparse-attention settings raise ConfigError naming the field."""
import pytest

from tinymoe import ConfigError, ModelConfig, SparseAttentionConfig
from tinymoe.nsa import NativeSparseAttention


@pytest.mark.parametrize("changes, field", [
    (dict(block_size=0), "nsa.block_size"),
    (dict(window=0), "nsa.window"),
    (dict(stride=40, block_size=32), "nsa.stride"),
    (dict(select_block_size=40), "nsa.select_block_size"),
    (dict(top_n=2), "nsa.top_n"),                               # 1 initial + 2 local blocks do not fit
    (dict(n_local_blocks=-1), "nsa.n_local_blocks"),
    (dict(n_initial_blocks=1.5), "nsa.n_initial_blocks"),
    (dict(top_n=True), "nsa.top_n"),
])
def test_bad_sparse_attention_config_names_the_field(changes, field):
    with pytest.raises(ConfigError) as err:                    # checked when the config is made
        ModelConfig(d_model=8, n_heads=2, attention="native_sparse", nsa=SparseAttentionConfig(**changes))
    assert err.value.field == field, f"error names {err.value.field!r}, expected {field!r}: {err.value}"
    assert field in str(err.value) and str(changes[field.split(".")[1]]) in str(err.value), \
        f"message should show the field and its value: {err.value}"


@pytest.mark.parametrize("changes, field", [
    (dict(nsa=None), "nsa"),
    (dict(causal=False), "causal"),
    (dict(v_head_dims=(4, 2)), "v_head_dims"),
])
def test_bad_model_config_for_native_sparse_names_the_field(changes, field):
    settings = dict(d_model=8, n_heads=2, attention="native_sparse", nsa=SparseAttentionConfig())
    settings.update(changes)
    with pytest.raises(ConfigError) as err:
        NativeSparseAttention(ModelConfig(**settings))
    assert err.value.field == field, f"error names {err.value.field!r}, expected {field!r}: {err.value}"


def test_paper_settings_are_valid():
    SparseAttentionConfig(block_size=32, stride=16, select_block_size=64, top_n=16, window=512).validate()
