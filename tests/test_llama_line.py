"""The Llama line's parameter counts: our config-only count (sizes.model_parameters) equals a TinyLM built on
the meta device and transformers' own model built on the meta device from the same shapes (LlamaForCausalLM
for Llama 1-3, Llama4ForCausalLM for Llama 4 Scout and Maverick), and Llama 4's active count is the total
less the experts a token skips."""
from __future__ import annotations

import pytest
import torch
from transformers import Llama4TextConfig, LlamaConfig
from transformers.models.llama import LlamaForCausalLM
from transformers.models.llama4.modeling_llama4 import Llama4ForCausalLM

from tinymoe import ModelConfig, TinyLM, model_parameters, parameter_counts
from tinymoe.llama_line import LLAMA_LINE, llama_config
from tinymoe.moe.sizes import moe_parameter_counts

pytestmark = pytest.mark.oracle


def transformers_model_on_meta(config: ModelConfig) -> torch.nn.Module:
    """Their model with our config's shapes, built without allocating a single weight."""
    common = dict(vocab_size=config.vocab_size, hidden_size=config.d_model, num_hidden_layers=config.n_layers,
                  num_attention_heads=config.n_heads, num_key_value_heads=config.kv_heads, head_dim=config.qk_dim,
                  max_position_embeddings=config.max_seq_len, rms_norm_eps=config.norm_eps,
                  tie_word_embeddings=config.tie_embeddings)
    with torch.device("meta"):
        if config.moe is None:
            return LlamaForCausalLM(LlamaConfig(intermediate_size=config.ff_dim, **common))
        moe = config.moe
        hf = Llama4TextConfig(intermediate_size=moe.d_ff_expert, intermediate_size_mlp=config.ff_dim,
                              num_local_experts=moe.n_experts, num_experts_per_tok=moe.top_k,
                              interleave_moe_layer_step=moe.every_n_layers,
                              no_rope_layer_interval=config.no_rope_layer_interval,
                              attention_chunk_size=config.attention_chunk_size, use_qk_norm=config.qk_norm, **common)
        return Llama4ForCausalLM(hf)


@pytest.mark.parametrize("name", list(LLAMA_LINE))
def test_parameter_counts_equal_transformers_model_on_the_meta_device(name):
    config = llama_config(name)
    ours = model_parameters(config)
    theirs = sum(p.numel() for p in transformers_model_on_meta(config).parameters())
    with torch.device("meta"):
        built = parameter_counts(TinyLM(config))["total"]["trainable"]
    print(f"PARAMS {name:<18} ours {ours['total']:>16,}  transformers {theirs:>16,}  active {ours['active']:>15,}")
    assert ours["total"] == theirs, f"{name}: our count {ours['total']:,} vs transformers {theirs:,}"
    assert built == ours["total"], f"{name}: a built TinyLM has {built:,}, model_parameters says {ours['total']:,}"


@pytest.mark.parametrize("name", ["Llama-4 Scout", "Llama-4 Maverick"])
def test_llama4_active_parameters_leave_out_the_skipped_experts(name):
    config = llama_config(name)
    counts, moe = model_parameters(config), moe_parameter_counts(config)
    n_moe_layers = sum(config.moe_in_layer(i) for i in range(config.n_layers))
    skipped = n_moe_layers * (config.moe.n_experts - config.moe.top_k) * moe["expert"]
    assert counts["total"] - counts["active"] == skipped, f"{name}: {counts['total'] - counts['active']:,} vs {skipped:,}"
    assert 16e9 < counts["active"] < 18e9, f"{name}: {counts['active']:,} active, published: 17B"


@pytest.mark.parametrize("config", [
    ModelConfig(vocab_size=13, d_model=6, n_heads=3, n_layers=2, bias=True, norm="layernorm", ffn="relu"),
    ModelConfig(vocab_size=13, d_model=8, n_heads=2, n_layers=3, tie_embeddings=True),
])
def test_model_parameters_equal_a_built_small_model(config):
    built = parameter_counts(TinyLM(config))["total"]["trainable"]
    assert model_parameters(config)["total"] == built, f"{model_parameters(config)} vs built {built}"
