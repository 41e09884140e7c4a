"""The sliding-window branch: each query attends to the w most recent keys.

Convention (the same as tinymoe.attention.sliding_window_mask): query t sees keys
t - w + 1 .. t, the query's own position included, so window=1 means a token sees only itself.
Implementations differ by one here: some count w keys before the query plus the query itself.

Rather than a (T, T) mask with T - w False entries per row, the branch lists the keys each
query sees: a (T, w) table of key positions, so it computes T*w query-key products, not T*T.
"""
from __future__ import annotations

import torch

__all__ = ["window_key_indices"]


def window_key_indices(seq_len: int, window: int, device=None) -> tuple[torch.Tensor, torch.Tensor]:
    """(index, valid), each (seq_len, min(window, seq_len)): row t lists keys t-w+1 .. t.
    Positions before the sequence start (negative) are clamped to 0 and marked invalid."""
    w = min(window, seq_len)
    t = torch.arange(seq_len, device=device)[:, None]                      # (T, 1)
    index = t - w + 1 + torch.arange(w, device=device)[None, :]            # (T, w): oldest first
    valid = index >= 0                                                     # (T, w)
    return index.clamp(min=0), valid
