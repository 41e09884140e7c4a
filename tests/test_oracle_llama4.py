"""Oracle tests against Hugging Face transformers' Llama 4 text modules and DeepSeek-V3's MoE (which we
did not write), built from tiny random configs, float32 on the CPU, offline, our weights copied in:

- Llama4TextAttention on both layer kinds: a chunked RoPE layer with QK-norm, a global NoPE layer with
  attention temperature tuning (floor_scale shrunk so the tuning acts inside 11 tokens);
- Llama4TextMoe (sigmoid top-1 router scaling the expert input + shared expert);
- Llama4TextDecoderLayer for both kinds (MoE after the chunked layer, dense MLP after the NoPE layer);
- DeepseekV3TopkRouter with n_group, topk_group, routed_scaling_factor and a selection bias, and the whole
  DeepseekV3MoE.
Every check prints and asserts its max abs error.
"""
from __future__ import annotations

import pytest
import torch
from transformers import DeepseekV3Config, Llama4TextConfig
from transformers.models.deepseek_v3.modeling_deepseek_v3 import DeepseekV3MoE, DeepseekV3TopkRouter
from transformers.models.llama4.modeling_llama4 import (Llama4TextAttention, Llama4TextDecoderLayer, Llama4TextMoe,
                                                        Llama4TextRotaryEmbedding)

from tinymoe import DecoderBlock, ModelConfig, MoEConfig, MultiHeadAttention
from tinymoe.moe import MoE

import oracle_check  # noqa: E402  (tests/oracle_check.py)

pytestmark = pytest.mark.oracle

TOL = 1e-5
B, T = 2, 11
D_MODEL, N_HEADS, N_KV_HEADS, HEAD_DIM, D_FF, D_FF_MLP, N_EXPERTS = 16, 4, 2, 6, 12, 20, 4
CHUNK, INTERVAL, THETA, EPS, FLOOR, ATTN_SCALE, MAX_LEN = 4, 2, 500.0, 1e-5, 3, 0.5, 32


def check(name: str, ours: torch.Tensor, theirs: torch.Tensor, tol: float = TOL) -> float:
    return oracle_check.check(name, ours, theirs, tol, against="transformers")


def _gen(seed):
    return torch.Generator().manual_seed(seed)


def _configs():
    """One tiny Llama 4 described twice: layer 0 chunked + RoPE + QK-norm + dense MLP, layer 1 NoPE + MoE
(MoE in every second layer, as Llama 4 Maverick)."""
    hf = Llama4TextConfig(vocab_size=29, hidden_size=D_MODEL, intermediate_size=D_FF, intermediate_size_mlp=D_FF_MLP,
                          num_hidden_layers=2, num_attention_heads=N_HEADS, num_key_value_heads=N_KV_HEADS,
                          head_dim=HEAD_DIM, max_position_embeddings=MAX_LEN, rms_norm_eps=EPS,
                          rope_parameters={"rope_type": "default", "rope_theta": THETA},
                          num_local_experts=N_EXPERTS, num_experts_per_tok=1, interleave_moe_layer_step=2,
                          no_rope_layer_interval=INTERVAL, attention_chunk_size=CHUNK,
                          use_qk_norm=True, attn_temperature_tuning=True, floor_scale=FLOOR, attn_scale=ATTN_SCALE,
                          attention_bias=False, attn_implementation="eager")
    ours = ModelConfig(vocab_size=29, d_model=D_MODEL, n_layers=2, n_heads=N_HEADS, n_kv_heads=N_KV_HEADS,
                       head_dim=HEAD_DIM, d_ff=D_FF_MLP, max_seq_len=MAX_LEN, rope_base=THETA,
                       rope_pairing="interleaved", norm_eps=EPS, attention_chunk_size=CHUNK,
                       no_rope_layer_interval=INTERVAL, qk_norm=True, attn_temperature_tuning=True,
                       floor_scale=float(FLOOR), attn_scale=ATTN_SCALE,
                       moe=MoEConfig(n_experts=N_EXPERTS, top_k=1, router="llama4", n_shared_experts=1,
                                     d_ff_expert=D_FF, every_n_layers=2))
    return hf, ours


def _copy_attention(ours: MultiHeadAttention, theirs: Llama4TextAttention) -> None:
    with torch.no_grad():
        for mine, hf_name in (("W_q", "q_proj"), ("W_k", "k_proj"), ("W_v", "v_proj"), ("W_o", "o_proj")):
            getattr(theirs, hf_name).weight.copy_(getattr(ours, mine).weight)


def _copy_moe(ours: MoE, theirs: Llama4TextMoe) -> None:
    """Their experts keep gate and up side by side, transposed: gate_up_proj (E, d_model, 2 * d_ff)."""
    with torch.no_grad():
        theirs.router.weight.copy_(ours.router.weight)
        theirs.experts.gate_up_proj.copy_(torch.cat([ours.w_gate, ours.w_up], dim=1).transpose(1, 2))
        theirs.experts.down_proj.copy_(ours.w_down.transpose(1, 2))
        shared = ours.shared.ffn
        theirs.shared_expert.gate_proj.weight.copy_(shared.w_gate.weight)
        theirs.shared_expert.up_proj.weight.copy_(shared.w_up.weight)
        theirs.shared_expert.down_proj.weight.copy_(shared.w_down.weight)


def _additive_mask(layer: int) -> torch.Tensor:
    """(B, 1, T, T) float mask: chunked-causal on the RoPE layer, causal on the NoPE layer."""
    i, j = torch.arange(T)[:, None], torch.arange(T)[None, :]
    allowed = j <= i
    if layer % INTERVAL != INTERVAL - 1:
        allowed = allowed & (i // CHUNK == j // CHUNK)
    return torch.zeros(B, 1, T, T).masked_fill(~allowed, torch.finfo(torch.float32).min)


def _rope(hf):
    x = torch.randn(B, T, D_MODEL, generator=_gen(1))
    position_ids = torch.arange(T).expand(B, T)
    return x, position_ids, Llama4TextRotaryEmbedding(hf)(x, position_ids)


def test_the_config_describes_the_same_layer_kinds_as_transformers():
    hf, ours = _configs()
    uses_rope = [int(ours.layer_uses_rope(i)) for i in range(ours.n_layers)]
    kinds = ["chunked_attention" if ours.layer_chunk_size(i) else "full_attention" for i in range(ours.n_layers)]
    moe_layers = [i for i in range(ours.n_layers) if ours.moe_in_layer(i)]
    assert uses_rope == list(hf.no_rope_layers), f"RoPE layers {uses_rope} vs their no_rope_layers {hf.no_rope_layers}"
    assert kinds == list(hf.layer_types), f"layer kinds {kinds} vs their layer_types {hf.layer_types}"
    assert moe_layers == list(hf.moe_layers), f"MoE layers {moe_layers} vs their moe_layers {hf.moe_layers}"


@pytest.mark.parametrize("layer", [0, 1], ids=["chunked_rope_qknorm", "global_nope_temperature"])
def test_attention_matches_llama4_text_attention(layer):
    hf, ours_config = _configs()
    ours, theirs = MultiHeadAttention(ours_config, layer=layer), Llama4TextAttention(hf, layer_idx=layer).eval()
    assert ours.use_rope == bool(theirs.use_rope), f"layer {layer}: our RoPE {ours.use_rope} vs theirs {theirs.use_rope}"
    oracle_check.randomize(ours, seed=10 + layer)
    _copy_attention(ours, theirs)
    x, _, freqs = _rope(hf)
    with torch.no_grad():
        out = ours(x)
        out_theirs, weights_theirs = theirs(x, freqs, _additive_mask(layer))
    check(f"Llama 4 attention layer {layer} vs Llama4TextAttention, out", out, out_theirs)


def test_llama4_moe_matches_llama4_text_moe():
    hf, ours_config = _configs()
    ours = MoE(ours_config.replace(moe=MoEConfig(n_experts=N_EXPERTS, top_k=1, router="llama4", n_shared_experts=1,
                                                 d_ff_expert=D_FF, dispatch="loop")))
    theirs = Llama4TextMoe(hf).eval()
    oracle_check.randomize(ours, seed=20)
    _copy_moe(ours, theirs)
    x = torch.randn(B, T, D_MODEL, generator=_gen(2))
    with torch.no_grad():
        out, _ = ours(x)
        out_theirs, logits_theirs = theirs(x)
    check("Llama4 MoE vs Llama4TextMoe, out", out.reshape(B * T, D_MODEL), out_theirs)
    check("Llama4 MoE vs Llama4TextMoe, router logits", ours.router.logits(x.reshape(B * T, D_MODEL)), logits_theirs)


@pytest.mark.parametrize("layer", [0, 1], ids=["chunked_rope_dense", "global_nope_moe"])
def test_decoder_block_matches_llama4_text_decoder_layer(layer):
    hf, ours_config = _configs()
    ours, theirs = DecoderBlock(ours_config, layer=layer), Llama4TextDecoderLayer(hf, layer_idx=layer).eval()
    assert theirs.is_moe_layer == ours_config.moe_in_layer(layer) == (layer == 1)
    oracle_check.randomize(ours, seed=30 + layer)
    _copy_attention(ours.attn, theirs.self_attn)
    with torch.no_grad():
        theirs.input_layernorm.weight.copy_(ours.norm_1.weight)
        theirs.post_attention_layernorm.weight.copy_(ours.norm_2.weight)
        if layer == 1:
            _copy_moe(ours.ffn, theirs.feed_forward)
        else:
            theirs.feed_forward.gate_proj.weight.copy_(ours.ffn.w_gate.weight)
            theirs.feed_forward.up_proj.weight.copy_(ours.ffn.w_up.weight)
            theirs.feed_forward.down_proj.weight.copy_(ours.ffn.w_down.weight)
    x, position_ids, freqs = _rope(hf)
    with torch.no_grad():
        out, _ = ours(x)
        out_theirs = theirs(x, attention_mask=_additive_mask(layer), position_ids=position_ids,
                            position_embeddings=freqs)
    check(f"Llama 4 decoder block layer {layer} vs Llama4TextDecoderLayer", out, out_theirs)


# ---- DeepSeek-V3: group-limited routing and the routed scaling factor ---------------------------

DS_EXPERTS, DS_GROUPS, DS_TOPK_GROUP, DS_TOP_K, DS_SCALE, DS_D_FF = 16, 4, 2, 3, 2.5, 8


def _deepseek_configs():
    hf = DeepseekV3Config(hidden_size=D_MODEL, moe_intermediate_size=DS_D_FF, n_routed_experts=DS_EXPERTS,
                          num_experts_per_tok=DS_TOP_K, n_group=DS_GROUPS, topk_group=DS_TOPK_GROUP,
                          routed_scaling_factor=DS_SCALE, norm_topk_prob=True, n_shared_experts=1,
                          num_hidden_layers=1, num_attention_heads=2, num_key_value_heads=2)
    ours = ModelConfig(d_model=D_MODEL, n_heads=2, d_ff=24,
                       moe=MoEConfig(n_experts=DS_EXPERTS, top_k=DS_TOP_K, router="sigmoid_bias", renormalize=True,
                                     n_group=DS_GROUPS, topk_group=DS_TOPK_GROUP, routed_scaling_factor=DS_SCALE,
                                     n_shared_experts=1, d_ff_expert=DS_D_FF, dispatch="loop"))
    return hf, ours


def _deepseek_pair(seed: int):
    hf, ours_config = _deepseek_configs()
    ours, theirs = MoE(ours_config), DeepseekV3MoE(hf).eval()
    oracle_check.randomize(ours, seed)
    with torch.no_grad():
        ours.router.selection_bias.copy_(torch.randn(DS_EXPERTS, generator=_gen(seed + 1)) * 0.3)
        theirs.gate.weight.copy_(ours.router.weight)
        theirs.gate.e_score_correction_bias.copy_(ours.router.selection_bias)
        theirs.experts.gate_up_proj.copy_(torch.cat([ours.w_gate, ours.w_up], dim=1))   # (E, 2 d_ff, d_model)
        theirs.experts.down_proj.copy_(ours.w_down)
        theirs.shared_experts.gate_proj.weight.copy_(ours.shared.ffn.w_gate.weight)
        theirs.shared_experts.up_proj.weight.copy_(ours.shared.ffn.w_up.weight)
        theirs.shared_experts.down_proj.weight.copy_(ours.shared.ffn.w_down.weight)
    return ours, theirs


def test_group_limited_routing_matches_deepseek_v3_gate():
    ours, theirs = _deepseek_pair(seed=40)
    x = torch.randn(B * T, D_MODEL, generator=_gen(3))
    with torch.no_grad():
        routing = ours.router(x)
        _, weights_theirs, ids_theirs = theirs.gate(x)
    # Both choose the same set of experts per token; order the k slots by expert id to compare.
    ours_ids, ours_order = routing.expert_ids.sort(dim=-1)
    theirs_ids, theirs_order = ids_theirs.sort(dim=-1)
    assert torch.equal(ours_ids, theirs_ids), f"chosen experts differ in {(ours_ids != theirs_ids).any(-1).sum()} tokens"
    check("DeepSeek-V3 gates (groups, scaling) vs DeepseekV3TopkRouter",
          routing.gates.gather(-1, ours_order), weights_theirs.gather(-1, theirs_order))
    groups_used = (routing.expert_ids // (DS_EXPERTS // DS_GROUPS)).unique(dim=None)
    per_token = [(row // (DS_EXPERTS // DS_GROUPS)).unique().numel() for row in routing.expert_ids]
    assert max(per_token) <= DS_TOPK_GROUP, f"a token used {max(per_token)} groups, more than topk_group={DS_TOPK_GROUP}"
    assert groups_used.numel() > 1


def test_group_limits_change_the_choice_somewhere():
    """Without the group limit some token would pick an expert outside its two best groups."""
    ours, _ = _deepseek_pair(seed=40)
    x = torch.randn(B * T, D_MODEL, generator=_gen(3))
    free = ours.router.__class__(D_MODEL, DS_EXPERTS, DS_TOP_K, True, None)
    with torch.no_grad():
        free.weight.copy_(ours.router.weight)
        free.selection_bias.copy_(ours.router.selection_bias)
        limited, unlimited = ours.router(x).expert_ids.sort(-1).values, free(x).expert_ids.sort(-1).values
    assert (limited != unlimited).any(), "the group limit changed no token's experts: the test input is too easy"


def test_deepseek_v3_moe_matches_transformers():
    ours, theirs = _deepseek_pair(seed=50)
    x = torch.randn(B, T, D_MODEL, generator=_gen(4))
    with torch.no_grad():
        out, _ = ours(x)
        out_theirs = theirs(x)
    check("DeepSeek-V3 MoE (groups, scaling, shared) vs DeepseekV3MoE", out, out_theirs)


# ---- the whole model, and decoding with a KV cache on both sides -----------------------------

def _model_pair(seed: int = 60):
    from transformers.models.llama4.modeling_llama4 import Llama4ForCausalLM
    from tinymoe import TinyLM
    hf, ours_config = _configs()
    ours = TinyLM(ours_config).eval()
    oracle_check.randomize(ours, seed)
    theirs = Llama4ForCausalLM(hf).eval()
    with torch.no_grad():
        theirs.model.embed_tokens.weight.copy_(ours.embed.weight)
        theirs.model.norm.weight.copy_(ours.norm.weight)
        theirs.lm_head.weight.copy_(ours.lm_head.weight)
        for i, (block, layer) in enumerate(zip(ours.layers, theirs.model.layers)):
            _copy_attention(block.attn, layer.self_attn)
            layer.input_layernorm.weight.copy_(block.norm_1.weight)
            layer.post_attention_layernorm.weight.copy_(block.norm_2.weight)
            if ours_config.moe_in_layer(i):
                _copy_moe(block.ffn, layer.feed_forward)
            else:
                for name in ("gate", "up", "down"):
                    getattr(layer.feed_forward, f"{name}_proj").weight.copy_(getattr(block.ffn, f"w_{name}").weight)
    return ours, theirs


def test_tinylm_matches_llama4_for_causal_lm():
    ours, theirs = _model_pair()
    tokens = torch.randint(0, 29, (B, T), generator=_gen(6))
    with torch.no_grad():
        logits, logits_theirs = ours(tokens).logits, theirs(input_ids=tokens).logits
    check("TinyLM (chunked + NoPE + MoE) vs Llama4ForCausalLM, logits", logits, logits_theirs, tol=1e-4)


def test_cached_decoding_matches_llama4_with_its_own_cache():
    """Prefill 5 tokens, then decode 10 one by one (past two chunk boundaries), on both sides with a cache."""
    from transformers import DynamicCache
    from tinymoe import KVCache
    ours, theirs = _model_pair(seed=61)
    tokens = torch.randint(0, 29, (1, 15), generator=_gen(7))
    cache, their_cache = KVCache(ours.config, batch=1), DynamicCache(config=theirs.config)
    with torch.no_grad():
        steps = [(tokens[:, :5], torch.arange(5))] + [(tokens[:, t:t + 1], torch.tensor([t])) for t in range(5, 15)]
        worst = 0.0
        for chunk, positions in steps:
            mine = ours(chunk, cache=cache).logits
            theirs_out = theirs(input_ids=chunk, position_ids=positions[None], cache=their_cache, use_cache=True)
            worst = max(worst, check(f"cached decode at positions {positions[0].item()}..{positions[-1].item()}",
                                     mine, theirs_out.logits, tol=1e-4))
    print(f"ORACLE worst cached-decode logit error vs Llama4ForCausalLM + DynamicCache: {worst:.3e}")
