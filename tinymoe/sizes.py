"""What a model costs: parameters per component (trainable vs buffers) and KV-cache memory.

These functions read sizes from a config or a built module; the notebooks' shape tables and the
GQA slider use them, and they work at 70B scale without building anything.
"""
from __future__ import annotations

from torch import nn

from .config import ModelConfig

__all__ = ["parameter_counts", "attention_parameters", "kv_cache_bytes"]


def parameter_counts(module: nn.Module) -> dict[str, dict[str, int]]:
    """{child name: {"trainable": n, "frozen": n, "buffers": n}} plus a "total" row.
    A tied weight is counted once, under the first child that holds it."""
    seen: set[int] = set()
    rows: dict[str, dict[str, int]] = {}
    children = list(module.named_children()) or [("self", module)]
    for name, child in children:
        row = {"trainable": 0, "frozen": 0, "buffers": 0}
        for p in child.parameters():
            if id(p) in seen:
                continue
            seen.add(id(p))
            row["trainable" if p.requires_grad else "frozen"] += p.numel()
        row["buffers"] = sum(b.numel() for b in child.buffers())
        rows[name] = row
    own_buffers = sum(b.numel() for n, b in module.named_buffers(recurse=False))
    if own_buffers:
        rows["(own buffers)"] = {"trainable": 0, "frozen": 0, "buffers": own_buffers}
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
    n_layers * batch * seq_len * n_kv_heads * (head_dim + v_dim) * bytes_per_value."""
    config.validate()
    per_token = config.kv_heads * config.qk_dim + sum(config.v_dims[:: config.group_size])
    return config.n_layers * batch * seq_len * per_token * bytes_per_value
