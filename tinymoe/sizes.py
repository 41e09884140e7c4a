"""What a model costs: parameters per component (trainable vs buffers) and KV-cache memory.

These functions read sizes from a config or a built module; the notebooks' shape tables and the
GQA slider use them, and they work at 70B scale without building anything.
"""
from __future__ import annotations

from torch import nn

from .config import ConfigError, ModelConfig, whole_number
from .kv_cache import layer_cache_capacity

__all__ = ["parameter_counts", "attention_parameters", "kv_cache_bytes", "model_parameters"]


def parameter_counts(module: nn.Module) -> dict[str, dict[str, int]]:
    """{child name: {"trainable": n, "frozen": n, "buffers": n}} plus a "total" row.

    A module without children gets one row, "self". A module with children gets one row per
    child, plus "(own)" for any parameters or buffers it holds directly (e.g. the model's
    sinusoidal position table). A tied weight (or a shared buffer) is counted once, under the
    first row that holds it."""
    seen: set[int] = set()

    def count(params, buffers) -> dict[str, int]:
        row = {"trainable": 0, "frozen": 0, "buffers": 0}
        for p in params:
            if id(p) not in seen:
                seen.add(id(p))
                row["trainable" if p.requires_grad else "frozen"] += p.numel()
        for b in buffers:
            if id(b) not in seen:
                seen.add(id(b))
                row["buffers"] += b.numel()
        return row

    rows: dict[str, dict[str, int]] = {}
    children = list(module.named_children())
    if not children:
        rows["self"] = count(module.parameters(), module.buffers())
    else:
        for name, child in children:
            rows[name] = count(child.parameters(), child.buffers())
        own = count(module.parameters(recurse=False), module.buffers(recurse=False))
        if any(own.values()):
            rows["(own)"] = own
    rows["total"] = {k: sum(r[k] for r in rows.values()) for k in ("trainable", "frozen", "buffers")}
    return rows


def attention_parameters(config: ModelConfig) -> dict[str, int]:
    """Parameters of one attention layer, by matrix, from the config alone."""
    config.validate()
    d, bias = config.d_model, int(config.bias)
    q_out = config.n_heads * config.qk_dim
    k_out = config.kv_heads * config.qk_dim
    v_out = sum(config.v_dims[:: config.group_size])
    o_in = sum(config.v_dims)
    counts = {"W_q": (d + bias) * q_out, "W_k": (d + bias) * k_out,
              "W_v": (d + bias) * v_out, "W_o": o_in * d + bias * d}
    counts["total"] = sum(counts.values())
    return counts


def kv_cache_bytes(config: ModelConfig, seq_len: int, batch: int = 1, bytes_per_value: int = 2) -> int:
    """Bytes to cache every layer's keys and values for `seq_len` tokens:
    sum over layers of batch * tokens_kept * n_kv_heads * (head_dim + v_dim) * bytes_per_value,
    where a full layer keeps seq_len tokens and a sliding-window or chunked layer (Llama 4) only
    min(seq_len, window or chunk): its cache is a bounded ring buffer (tinymoe/kv_cache.py)."""
    config.validate()
    for name, value in (("seq_len", seq_len), ("batch", batch), ("bytes_per_value", bytes_per_value)):
        whole_number(name, value, high=2**62)
    per_token = config.kv_heads * config.qk_dim + sum(config.v_dims[:: config.group_size])
    tokens = sum(layer_cache_capacity(config, layer, seq_len) for layer in range(config.n_layers))
    return batch * tokens * per_token * bytes_per_value


def model_parameters(config: ModelConfig) -> dict[str, int]:
    """Trainable parameters of a whole TinyLM from the config alone (nothing is built, so 400B is fine):
    {"embedding", "attention", "feed_forward", "norms", "lm_head", "total", "active"}.

    "active" is what one token uses: every routed expert it does not visit is left out
    (n_experts - top_k experts per MoE layer). Without MoE, active == total."""
    config.validate()
    if config.attention == "native_sparse":
        raise ConfigError("attention", config.attention,
                          "model_parameters counts dense/grouped-query attention; native sparse attention adds "
                          "compression and gate weights: count a built model with parameter_counts")
    from .moe.sizes import moe_parameter_counts               # the MoE's own count (its own concept)
    d, bias = config.d_model, int(config.bias)
    matrices = 3 if config.ffn == "swiglu" else 2
    dense = matrices * d * config.ff_dim + bias * ((matrices - 1) * config.ff_dim + d)   # weights + biases
    feed_forward = active_feed_forward = 0
    for layer in range(config.n_layers):
        if config.moe_in_layer(layer):
            moe = moe_parameter_counts(config)
            feed_forward += moe["total"]
            active_feed_forward += moe["active"]
        else:
            feed_forward += dense
            active_feed_forward += dense
    norm = d if config.norm == "rmsnorm" else 2 * d
    counts = {"embedding": config.vocab_size * d,
              "attention": config.n_layers * attention_parameters(config)["total"],
              "feed_forward": feed_forward,
              "norms": (2 * config.n_layers + 1) * norm,
              "lm_head": 0 if config.tie_embeddings else config.vocab_size * d}
    counts["total"] = sum(counts.values())
    counts["active"] = counts["total"] - feed_forward + active_feed_forward
    return counts
