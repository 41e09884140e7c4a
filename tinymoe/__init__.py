"""tinymoe: a transformer and Mixture-of-Experts core small enough to read in a notebook cell.

One concept per module; every module takes an optional `trace` and records its named
intermediates there. The viz layer (`tinymoe.viz`) draws from traces; the core never imports it.
"""
from .attention import (attention_weights, causal_mask, naive_softmax, padding_mask, safe_softmax,
                        scaled_dot_product_attention, sliding_window_mask)
from .block import DecoderBlock
from .config import ConfigError, ModelConfig, MoDConfig, MoEConfig, SparseAttentionConfig
from .kv_cache import KVCache, LayerKVCache, kv_cache_unsupported, mask_from_positions
from .llama4 import attention_temperature, chunked_mask, qk_norm
from .feedforward import MLP, SwiGLU, make_feedforward
from .model import LMOutput, TinyLM
from .multihead import MultiHeadAttention
from .norm import LayerNorm, RMSNorm, make_norm
from .rope import RotaryEmbedding, apply_rope, rotate_half, sinusoidal_positions
from .sizes import attention_parameters, kv_cache_bytes, model_parameters, parameter_counts
from .trace import Record, Trace, record, scoped

__version__ = "0.1.0"
