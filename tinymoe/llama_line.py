"""Llama 1 to 4 as ModelConfigs: the published shapes, so every count comes from the same functions.

Each step of the Llama line changes a few fields of one config (Touvron et al. 2023a/b; Meta 2024,
2025; the Hugging Face configs of the released checkpoints):

    Llama 1 (2023)   RoPE, RMSNorm (pre-norm), SwiGLU, no biases; vocabulary 32,000
    Llama 2 (2023)   the same at 7B; grouped-query attention (8 kv heads) at 70B; 4k context
    Llama 3 (2024)   GQA at every size, vocabulary 128,256, RoPE base 500,000
    Llama 4 (2025)   vocabulary 202,048; chunked local attention (8192-token chunks) on three layers
                     of four, global NoPE attention on the fourth; QK-norm; temperature tuning;
                     MoE: sigmoid top-1 router + a shared expert (Scout: 16 experts in every
                     layer; Maverick: 128 experts in every second layer)

`LLAMA_LINE` maps a model's name to its config; `sizes.model_parameters(config)` counts it.
max_seq_len is kept at 4096 here: it sizes no parameter (RoPE's table is a buffer).
"""
from __future__ import annotations

from .config import ModelConfig, MoEConfig

__all__ = ["LLAMA_LINE", "llama_config"]

_LLAMA_1_7B = ModelConfig(vocab_size=32000, d_model=4096, n_layers=32, n_heads=32, d_ff=11008, max_seq_len=2048,
                          rope_base=10000.0, norm_eps=1e-6)
_LLAMA_2_70B = ModelConfig(vocab_size=32000, d_model=8192, n_layers=80, n_heads=64, n_kv_heads=8, d_ff=28672,
                           max_seq_len=4096, rope_base=10000.0)
_LLAMA_3_8B = ModelConfig(vocab_size=128256, d_model=4096, n_layers=32, n_heads=32, n_kv_heads=8, d_ff=14336,
                          max_seq_len=4096, rope_base=500000.0)
_LLAMA_3_70B = _LLAMA_3_8B.replace(d_model=8192, n_layers=80, n_heads=64, d_ff=28672)
_LLAMA_4_SCOUT = ModelConfig(vocab_size=202048, d_model=5120, n_layers=48, n_heads=40, n_kv_heads=8, head_dim=128,
                             d_ff=16384, max_seq_len=4096, rope_base=500000.0, rope_pairing="interleaved",
                             attention_chunk_size=8192, no_rope_layer_interval=4, qk_norm=True,
                             attn_temperature_tuning=True,
                             moe=MoEConfig(n_experts=16, top_k=1, router="llama4", n_shared_experts=1,
                                           d_ff_expert=8192, every_n_layers=1))
_LLAMA_4_MAVERICK = _LLAMA_4_SCOUT.replace(
    qk_norm=False, moe=MoEConfig(n_experts=128, top_k=1, router="llama4", n_shared_experts=1, d_ff_expert=8192,
                                 every_n_layers=2))

LLAMA_LINE: dict[str, ModelConfig] = {
    "Llama-1 7B": _LLAMA_1_7B,
    "Llama-2 7B": _LLAMA_1_7B.replace(max_seq_len=4096, norm_eps=1e-5),
    "Llama-2 70B": _LLAMA_2_70B,
    "Llama-3 8B": _LLAMA_3_8B,
    "Llama-3 70B": _LLAMA_3_70B,
    "Llama-4 Scout": _LLAMA_4_SCOUT,
    "Llama-4 Maverick": _LLAMA_4_MAVERICK,
}


def llama_config(name: str) -> ModelConfig:
    """The config of one model of the line, by name (see LLAMA_LINE)."""
    if name not in LLAMA_LINE:
        raise KeyError(f"{name!r} is not in the Llama line; known: {', '.join(LLAMA_LINE)}")
    return LLAMA_LINE[name]
