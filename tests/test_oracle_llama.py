"""Oracle tests against Hugging Face transformers' Llama modules (which we did not write), built from a
tiny random LlamaConfig, float32 on the CPU, offline, with our weights copied into theirs:
LlamaRotaryEmbedding + apply_rotary_pos_emb, LlamaRMSNorm, LlamaAttention (GQA, eager, explicit causal
mask), LlamaMLP, LlamaDecoderLayer and the whole LlamaForCausalLM. Every check prints and asserts its
max abs error (`pytest -m oracle -s` shows the table)."""
from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")          # nothing here needs the network; make sure of it

import pytest  # noqa: E402
import torch  # noqa: E402
from transformers import LlamaConfig, LlamaForCausalLM  # noqa: E402
from transformers.models.llama.modeling_llama import (LlamaAttention, LlamaDecoderLayer, LlamaMLP,  # noqa: E402
                                                      LlamaRMSNorm, LlamaRotaryEmbedding, apply_rotary_pos_emb)

from tinymoe import DecoderBlock, ModelConfig, MultiHeadAttention, RMSNorm, SwiGLU, TinyLM, Trace  # noqa: E402

import oracle_check  # noqa: E402  (tests/oracle_check.py)

pytestmark = pytest.mark.oracle

TOL = 1e-5
B, T = 2, 9
VOCAB, D_MODEL, N_HEADS, N_KV_HEADS, HEAD_DIM, D_FF, MAX_LEN, THETA, EPS = 37, 16, 4, 2, 6, 24, 32, 500.0, 1e-5


def check(name: str, ours: torch.Tensor, theirs: torch.Tensor, tol: float = TOL) -> float:
    return oracle_check.check(name, ours, theirs, tol, against='transformers')


def _gen(seed):
    return torch.Generator().manual_seed(seed)


def _configs(n_kv_heads=N_KV_HEADS, n_layers=1):
    """The same tiny model described twice. head_dim (6) is set apart from d_model / n_heads (4)."""
    hf = LlamaConfig(vocab_size=VOCAB, hidden_size=D_MODEL, intermediate_size=D_FF, num_hidden_layers=n_layers,
                     num_attention_heads=N_HEADS, num_key_value_heads=n_kv_heads, head_dim=HEAD_DIM,
                     max_position_embeddings=MAX_LEN, rope_theta=THETA, rms_norm_eps=EPS, hidden_act="silu",
                     attention_bias=False, mlp_bias=False, tie_word_embeddings=False, attention_dropout=0.0,
                     attn_implementation="eager")
    ours = ModelConfig(vocab_size=VOCAB, d_model=D_MODEL, n_layers=n_layers, n_heads=N_HEADS, n_kv_heads=n_kv_heads,
                       head_dim=HEAD_DIM, d_ff=D_FF, max_seq_len=MAX_LEN, rope_base=THETA, rope_pairing="rotate_half",
                       norm="rmsnorm", norm_eps=EPS, ffn="swiglu", position="rope")
    return hf, ours


def _copy_attention(ours: MultiHeadAttention, theirs: LlamaAttention) -> None:
    with torch.no_grad():
        theirs.q_proj.weight.copy_(ours.W_q.weight)
        theirs.k_proj.weight.copy_(ours.W_k.weight)
        theirs.v_proj.weight.copy_(ours.W_v.weight)
        theirs.o_proj.weight.copy_(ours.W_o.weight)


def _copy_mlp(ours: SwiGLU, theirs: LlamaMLP) -> None:
    with torch.no_grad():
        theirs.gate_proj.weight.copy_(ours.w_gate.weight)
        theirs.up_proj.weight.copy_(ours.w_up.weight)
        theirs.down_proj.weight.copy_(ours.w_down.weight)


def _copy_block(ours: DecoderBlock, theirs: LlamaDecoderLayer) -> None:
    _copy_attention(ours.attn, theirs.self_attn)
    _copy_mlp(ours.ffn, theirs.mlp)
    with torch.no_grad():
        theirs.input_layernorm.weight.copy_(ours.norm_1.weight)
        theirs.post_attention_layernorm.weight.copy_(ours.norm_2.weight)


def _additive_causal_mask(key_is_real: torch.Tensor | None = None) -> torch.Tensor:
    """The (B, 1, T, T) float mask the eager Llama attention adds to its scores: 0 = attend, min = hide."""
    allowed = torch.ones(T, T, dtype=torch.bool).tril()[None, None].expand(B, 1, T, T)
    if key_is_real is not None:
        allowed = allowed & key_is_real[:, None, None, :]
    return torch.zeros(B, 1, T, T).masked_fill(~allowed, torch.finfo(torch.float32).min)


def _rope_inputs(hf_config, positions=None):
    x = torch.randn(B, T, D_MODEL, generator=_gen(1))
    position_ids = torch.arange(T).expand(B, T) if positions is None else positions
    cos, sin = LlamaRotaryEmbedding(hf_config)(x, position_ids)          # (B, T, head_dim) each
    return x, position_ids, (cos, sin)


# ---- RoPE ---------------------------------------------------------------------------------

def test_rope_tables_match_llama_rotary_embedding():
    hf, ours = _configs()
    attn = MultiHeadAttention(ours)
    _, _, (cos, sin) = _rope_inputs(hf)
    check("RoPE cos table vs LlamaRotaryEmbedding", attn.rope.cos[:T].expand(B, T, HEAD_DIM), cos)
    check("RoPE sin table vs LlamaRotaryEmbedding", attn.rope.sin[:T].expand(B, T, HEAD_DIM), sin)


@pytest.mark.parametrize("offset", [0, 13])
def test_rope_matches_llama_apply_rotary_pos_emb(offset):
    hf, ours = _configs()
    attn = MultiHeadAttention(ours)
    positions = (torch.arange(T) + offset).expand(B, T)
    _, _, (cos, sin) = _rope_inputs(hf, positions)
    q = torch.randn(B, N_HEADS, T, HEAD_DIM, generator=_gen(2))
    k = torch.randn(B, N_KV_HEADS, T, HEAD_DIM, generator=_gen(3))
    q_theirs, k_theirs = apply_rotary_pos_emb(q, k, cos, sin)
    q_ours, k_ours = attn.rope(q, k, positions=None if offset == 0 else positions)
    check(f"RoPE q (positions from {offset}) vs apply_rotary_pos_emb", q_ours, q_theirs)
    check(f"RoPE k (positions from {offset}) vs apply_rotary_pos_emb", k_ours, k_theirs)


# ---- RMSNorm, MLP -----------------------------------------------------------------------------

@pytest.mark.parametrize("eps", [EPS, 1e-6, 0.1])
def test_rmsnorm_matches_llama_rmsnorm(eps):
    ours, theirs = RMSNorm(D_MODEL, eps=eps), LlamaRMSNorm(D_MODEL, eps=eps)
    oracle_check.randomize(ours, 0)
    theirs.load_state_dict(ours.state_dict())
    x = torch.randn(B, T, D_MODEL, generator=_gen(1)) * 0.5
    check(f"RMSNorm eps={eps} vs LlamaRMSNorm", ours(x), theirs(x))


def test_swiglu_matches_llama_mlp():
    hf, _ = _configs()
    ours, theirs = SwiGLU(D_MODEL, D_FF), LlamaMLP(hf)
    oracle_check.randomize(ours, 0)
    _copy_mlp(ours, theirs)
    x = torch.randn(B, T, D_MODEL, generator=_gen(1))
    check("SwiGLU vs LlamaMLP", ours(x)[0], theirs(x))


# ---- attention ------------------------------------------------------------------------------

@pytest.mark.parametrize("n_kv_heads", [1, 2, 4], ids=["mqa", "gqa", "mha"])
def test_attention_matches_llama_attention(n_kv_heads):
    hf, ours_config = _configs(n_kv_heads=n_kv_heads)
    ours, theirs = MultiHeadAttention(ours_config), LlamaAttention(hf, layer_idx=0).eval()
    oracle_check.randomize(ours, 0)
    _copy_attention(ours, theirs)
    x, _, position_embeddings = _rope_inputs(hf)
    trace = Trace()
    out = ours(x, trace=trace)
    out_theirs, weights_theirs = theirs(x, position_embeddings=position_embeddings,
                                        attention_mask=_additive_causal_mask())
    check(f"MultiHeadAttention n_kv_heads={n_kv_heads} vs LlamaAttention, out", out, out_theirs)
    check(f"MultiHeadAttention n_kv_heads={n_kv_heads} vs LlamaAttention, weights", trace["attn.weights"],
          weights_theirs)


def test_attention_with_padding_matches_llama_attention():
    hf, ours_config = _configs()
    ours, theirs = MultiHeadAttention(ours_config), LlamaAttention(hf, layer_idx=0).eval()
    oracle_check.randomize(ours, 0)
    _copy_attention(ours, theirs)
    x, _, position_embeddings = _rope_inputs(hf)
    real = torch.ones(B, T, dtype=torch.bool)
    real[0, 6:] = False                                       # right padding: no query is left without a key
    out = ours(x, key_padding_mask=real)
    out_theirs, _ = theirs(x, position_embeddings=position_embeddings, attention_mask=_additive_causal_mask(real))
    check("MultiHeadAttention + padding vs LlamaAttention, out", out, out_theirs)


# ---- block and whole model ------------------------------------------------------------------------

def test_decoder_block_matches_llama_decoder_layer():
    hf, ours_config = _configs()
    ours, theirs = DecoderBlock(ours_config), LlamaDecoderLayer(hf, layer_idx=0).eval()
    oracle_check.randomize(ours, 0)
    _copy_block(ours, theirs)
    x, position_ids, position_embeddings = _rope_inputs(hf)
    out, _ = ours(x)
    out_theirs = theirs(x, attention_mask=_additive_causal_mask(), position_ids=position_ids,
                        position_embeddings=position_embeddings)
    if isinstance(out_theirs, tuple):
        out_theirs = out_theirs[0]
    check("DecoderBlock vs LlamaDecoderLayer", out, out_theirs)


def test_tinylm_matches_llama_for_causal_lm():
    hf, ours_config = _configs(n_layers=2)
    ours = TinyLM(ours_config)
    oracle_check.randomize(ours, 0)
    theirs = LlamaForCausalLM(hf).eval()
    with torch.no_grad():
        theirs.model.embed_tokens.weight.copy_(ours.embed.weight)
        theirs.model.norm.weight.copy_(ours.norm.weight)
        theirs.lm_head.weight.copy_(ours.lm_head.weight)
    for block, layer in zip(ours.layers, theirs.model.layers):
        _copy_block(block, layer)
    tokens = torch.randint(0, VOCAB, (B, T), generator=_gen(5))
    # Hugging Face shifts the labels itself; we pass the next tokens, with -100 at the last position.
    targets = torch.cat([tokens[:, 1:], torch.full((B, 1), -100)], dim=1)
    out = ours(tokens, targets)
    with torch.no_grad():
        out_theirs = theirs(input_ids=tokens, labels=tokens)
    check("TinyLM vs LlamaForCausalLM, logits", out.logits, out_theirs.logits, tol=1e-4)
    check("TinyLM vs LlamaForCausalLM, loss", out.loss, out_theirs.loss, tol=1e-5)
