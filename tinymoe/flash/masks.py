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

    def key_range(self, query_pos: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(first, last): under every rule here a query sees one contiguous run of keys,
        first <= j <= last (empty when first > last). The single home of the rule:
            causal  last  = p
            window  first = p - window + 1
            chunk   first = start of p's chunk, last = end of p's chunk"""
        first = torch.zeros_like(query_pos)
        last = torch.full_like(query_pos, torch.iinfo(query_pos.dtype).max)
        if self.causal:
            last = torch.minimum(last, query_pos)
        if self.window is not None:
            first = torch.maximum(first, query_pos - self.window + 1)
        if self.chunk_size is not None:
            chunk_start = torch.div(query_pos, self.chunk_size, rounding_mode="floor") * self.chunk_size
            first = torch.maximum(first, chunk_start)
            last = torch.minimum(last, chunk_start + self.chunk_size - 1)
        return first, last

    def allowed(self, query_pos: torch.Tensor, key_pos: torch.Tensor) -> torch.Tensor:
        """Broadcast query positions against key positions: True where the query may see the key."""
        first, last = self.key_range(query_pos)
        return (key_pos >= first) & (key_pos <= last)

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
    every pair is, PARTIAL (1) otherwise. The last tiles may be short (T not a multiple of the block).

    Works from each query's run of keys (key_range), never making the (T_q, T_k) mask: a tile is
    FULL when every query's run covers the tile's keys, and computed when the union of its
    queries' runs meets them. Under these rules consecutive queries' runs overlap or touch (the
    window and the chunk move one key at a time), so that union is the one run
    [smallest first, largest last]; tests/test_flash_reference.py checks it pair by pair."""
    if block_q <= 0 or block_k <= 0:
        raise ValueError(f"block_q={block_q}, block_k={block_k}: tile sizes must be positive")
    n_q, n_k = -(-t_q // block_q), -(-t_k // block_k)
    query_pos = torch.arange(n_q * block_q) + (t_k - t_q)                     # padding rows past T_q too
    first, last = rule.key_range(query_pos)
    last = torch.clamp(last, max=t_k - 1)
    real = torch.arange(n_q * block_q) < t_q
    first, last, real = (x.view(n_q, block_q) for x in (first, last, real))  # (n_q_tiles, block_q)
    sees = real & (first <= last)                                            # a query with at least one key
    tile_first = torch.arange(n_k)[None, :] * block_k                        # (1, n_k_tiles)
    tile_last = torch.clamp(tile_first + block_k, max=t_k) - 1
    union_first = torch.where(sees, first, t_k).amin(dim=1, keepdim=True)    # (n_q_tiles, 1)
    union_last = torch.where(sees, last, -1).amax(dim=1, keepdim=True)
    some = (union_first <= tile_last) & (union_last >= tile_first)           # (n_q_tiles, n_k_tiles)
    latest_first = torch.where(real, first, -1).amax(dim=1, keepdim=True)
    earliest_last = torch.where(real, last, t_k).amin(dim=1, keepdim=True)
    every = (latest_first <= tile_first) & (earliest_last >= tile_last)
    return torch.where(some & every, FULL, torch.where(some, PARTIAL, SKIP))
