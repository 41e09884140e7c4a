"""Flash attention as an attention backend: what MultiHeadAttention calls when
`ModelConfig.attention_backend` is "flash" (the PyTorch reference) or "flash_triton" (the kernel).

The eager path (attention.py) builds the (T, T) weight matrix, which the notebooks draw; a
flash backend computes the same output without it, so a traced run records q, k, v, the
concatenated heads and the output, but no `attn.scores` or `attn.weights`.
"""
from __future__ import annotations

import torch

from .reference import flash_attention

__all__ = ["flash_backend"]


def flash_backend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, backend: str, *, causal: bool,
                  window: int | None = None, chunk_size: int | None = None,
                  key_padding_mask: torch.Tensor | None = None) -> torch.Tensor:
    """q (B, n_heads, T, head_dim), k (B, n_kv_heads, S, head_dim), v (B, n_kv_heads, S, v_dim)
    -> (B, n_heads, T, v_dim), by the backend's tiled attention (GQA handled inside: no repeat of k, v).
    S >= T: with a KV cache the queries are the last T of the S positions (bottom-right alignment)."""
    if key_padding_mask is not None:
        raise ValueError(f"key_padding_mask is not supported by attention_backend={backend!r} (the tiles know "
                         f"causal, window and chunk masks only); use attention_backend='eager' for padded batches")
    if backend == "flash":
        return flash_attention(q, k, v, causal=causal, window=window, chunk_size=chunk_size)
    if backend == "flash_triton":
        from ..kernels.flash_attention import triton_flash_attention
        return triton_flash_attention(q, k, v, causal=causal, window=window, chunk_size=chunk_size)
    raise ValueError(f"attention_backend={backend!r}: flash_backend takes 'flash' or 'flash_triton'")
