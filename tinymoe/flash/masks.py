"""Which keys a query may see, as one rule shared by the reference, the kernel and the widget.

Positions. There are T_q queries and T_k keys. The queries are the LAST T_q positions of the
sequence: query i sits at position  p(i) = i + (T_k - T_q)  (bottom-right alignment). With
T_q == T_k this is the usual lower triangle; with one query and a long cache (decoding) the
query is the newest token and sees every key. This is the convention of tinymoe's
`attention_weights(causal=True)`, of FlashAttention-2 (>= 2.1) and of torch's
`torch.nn.attention.bias.causal_lower_right`; `scaled_dot_product_attention(is_causal=True)`
aligns top-left instead (query i sees keys 0..i whatever T_k is).

The rule for query position p and key position j (all conditions that are switched on):

    causal           j <= p                             (no key from the future)
    window w         j >  p - w                         (the w most recent keys, p itself included)
    chunk_size c     j // c == p // c                   (Llama 4's chunked local attention: only
                                                         the keys of the query's own chunk)

A window needs causal=True (a window "behind" the query); a chunk without causal is
bidirectional inside the chunk. `tile_map` turns the rule into what a tiled kernel does with each
(query tile, key tile) block: skip it (no pair allowed), compute it without a mask (every pair
allowed), or compute it and mask some pairs.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

__all__ = ["MaskRule", "SKIP", "PARTIAL", "FULL", "tile_map"]

SKIP, PARTIAL, FULL = 0, 1, 2


@dataclass(frozen=True)
class MaskRule:
    """causal, window (keys per query, itself included) and chunk_size, each off when False/None."""

    causal: bool = False
    window: int | None = None
    chunk_size: int | None = None

    def __post_init__(self):
        if not isinstance(self.causal, bool):
            raise ValueError(f"causal={self.causal!r}: must be True or False")
        for name in ("window", "chunk_size"):
            value = getattr(self, name)
            if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value <= 0):
                raise ValueError(f"{name}={value!r}: must be a positive whole number or None")
        if self.window is not None and not self.causal:
            raise ValueError(f"window={self.window} needs causal=True: a sliding window holds the `window` most "
                             f"recent keys up to the query")

    @property
    def kind(self) -> str:
        """A short name: dense, causal, window w (causal by definition), causal chunks of c, chunks of c."""
        if self.window is not None:
            return f"window {self.window}" + (f", causal chunks of {self.chunk_size}" if self.chunk_size else "")
        if self.chunk_size is not None:
            return f"{'causal ' if self.causal else ''}chunks of {self.chunk_size}"
        return "causal" if self.causal else "dense"

    def allowed(self, query_pos: torch.Tensor, key_pos: torch.Tensor) -> torch.Tensor:
        """Broadcast query positions against key positions: True where the query may see the key."""
        ok = torch.ones(torch.broadcast_shapes(query_pos.shape, key_pos.shape), dtype=torch.bool,
                        device=query_pos.device)
        if self.causal:
            ok = ok & (key_pos <= query_pos)
        if self.window is not None:
            ok = ok & (key_pos > query_pos - self.window)
        if self.chunk_size is not None:
            ok = ok & (key_pos // self.chunk_size == query_pos // self.chunk_size)
        return ok

    def dense(self, t_q: int, t_k: int, device=None) -> torch.Tensor:
        """(T_q, T_k) bool, True = may attend; queries at positions T_k - T_q .. T_k - 1."""
        query_pos = torch.arange(t_q, device=device)[:, None] + (t_k - t_q)    # (T_q, 1)
        key_pos = torch.arange(t_k, device=device)[None, :]                      # (1, T_k)
        return self.allowed(query_pos, key_pos)

    def block(self, q_start: int, q_end: int, k_start: int, k_end: int, t_q: int, t_k: int,
              device=None) -> torch.Tensor:
        """The (q_end - q_start, k_end - k_start) piece of `dense(t_q, t_k)`, without making the rest."""
        query_pos = torch.arange(q_start, q_end, device=device)[:, None] + (t_k - t_q)
        key_pos = torch.arange(k_start, k_end, device=device)[None, :]
        return self.allowed(query_pos, key_pos)


def tile_map(rule: MaskRule, t_q: int, t_k: int, block_q: int, block_k: int) -> torch.Tensor:
    """(n_q_tiles, n_k_tiles) int: SKIP (0) where no pair of the tile is allowed, FULL (2) where
    every pair is, PARTIAL (1) otherwise. The last tiles may be short (T not a multiple of the block)."""
    if block_q <= 0 or block_k <= 0:
        raise ValueError(f"block_q={block_q}, block_k={block_k}: tile sizes must be positive")
    n_q, n_k = -(-t_q // block_q), -(-t_k // block_k)
    allowed = torch.zeros(n_q * block_q, n_k * block_k, dtype=torch.bool)
    valid = torch.zeros_like(allowed)
    allowed[:t_q, :t_k] = rule.dense(t_q, t_k)
    valid[:t_q, :t_k] = True
    allowed = allowed.view(n_q, block_q, n_k, block_k)        # (n_q_tiles, block_q, n_k_tiles, block_k)
    valid = valid.view(n_q, block_q, n_k, block_k)
    some = allowed.any(dim=3).any(dim=1)                       # (n_q_tiles, n_k_tiles)
    every = (allowed | ~valid).all(dim=3).all(dim=1)           # padding cells do not count against "every"
    return torch.where(some & every, FULL, torch.where(some, PARTIAL, SKIP))
