"""Attention over a per-query list of keys: what the selected and window branches run.

Dense attention scores every query against all T keys and masks most of them away. A sparse
branch instead gives each query t a list of S key positions index[t] (S = top_n * l' for the
selected blocks, w for the window), gathers those keys and values, and scores only them:

    weights[t] = softmax over s of  q_t . k_{index[t, s]} / sqrt(d_k)   (invalid s masked out)
    out[t]     = sum_s weights[t, s] v_{index[t, s]}

That is T*S products instead of T*T. The softmax is tinymoe.attention's safe softmax, so a
query with no valid key gets a zero output. Query heads of a GQA group read the same kv head.
"""
from __future__ import annotations

import torch

from ..attention import attention_weights

__all__ = ["gathered_attention", "to_key_positions"]


def gathered_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                       index: torch.Tensor, valid: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """q (B, n_heads, T, head_dim), k (B, n_kv_heads, T_k, head_dim), v (B, n_kv_heads, T_k, v_dim);
    index, valid: (B or 1, n_kv_heads or 1, T, S) key positions and whether each may be attended.
    Returns out (B, n_heads, T, v_dim) and weights (B, n_heads, T, S) over the listed keys."""
    B, H, T, D = q.shape
    H_kv, S = k.shape[1], index.shape[-1]
    G = H // H_kv                                                          # query heads per kv head
    index = index.expand(B, H_kv, T, S)                                    # (B, n_kv_heads, T, S)
    valid = valid.expand(B, H_kv, T, S)                                    # (B, n_kv_heads, T, S)
    b = torch.arange(B, device=q.device)[:, None, None, None]              # (B, 1, 1, 1)
    h = torch.arange(H_kv, device=q.device)[None, :, None, None]           # (1, n_kv_heads, 1, 1)
    k_listed = k[b, h, index]                                              # (B, n_kv_heads, T, S, head_dim)
    v_listed = v[b, h, index]                                              # (B, n_kv_heads, T, S, v_dim)
    q_grouped = q.reshape(B, H_kv, G, T, 1, D)                             # (B, n_kv_heads, G, T, 1, head_dim)
    weights = attention_weights(q_grouped, k_listed.unsqueeze(2),
                                mask=valid[:, :, None, :, None, :])        # (B, n_kv_heads, G, T, 1, S)
    out = weights @ v_listed.unsqueeze(2)                                  # (B, n_kv_heads, G, T, 1, v_dim)
    return out.reshape(B, H, T, v.shape[-1]), weights.reshape(B, H, T, S)


def to_key_positions(values: torch.Tensor, index: torch.Tensor, seq_len: int) -> torch.Tensor:
    """Spread per-listed-key values (B, n_heads, T, S) back over all key positions: (B, n_heads, T, seq_len).
    index is (B or 1, n_kv_heads or 1, T, S); each kv head's list serves its group of query heads.
    Entries listed twice add up, so pass zeros (or False) for invalid entries."""
    B, H, T, S = values.shape
    index = index.expand(B, -1, T, S)
    index = index.repeat_interleave(H // index.shape[1], dim=1)            # (B, n_heads, T, S)
    dtype = torch.int32 if values.dtype == torch.bool else values.dtype
    full = torch.zeros(B, H, T, seq_len, dtype=dtype, device=values.device)
    full.scatter_add_(-1, index, values.to(dtype))                         # (B, n_heads, T, seq_len)
    return full > 0 if values.dtype == torch.bool else full
