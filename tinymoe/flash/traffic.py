"""Bytes read and written by attention, naive vs tiled: why flash attention is faster.

A GPU computes far faster than it reads and writes its main memory (HBM), so attention's cost at
long sequences is set by the bytes it moves (FlashAttention, Dao et al. 2022, section 3.2).
Counted per (batch, head), in values of `bytes_per_value` bytes, for T_q queries, T_k keys,
head_dim d (and a value size d_v = d):

naive (three kernels, the T_q x T_k matrices in HBM; the FlashAttention paper's count):
    S = Q K^T      read Q, K          write S          T_q d + T_k d   +  T_q T_k
    P = softmax(S) read S             write P          2 T_q T_k          (a mask is applied in place)
    O = P V        read P, V          write O          T_q T_k + T_k d  +  T_q d

tiled (one kernel; S and P live in on-chip memory one tile at a time):
    read each query tile once and write its output once    2 T_q d   (+ the lse, 4 bytes a row)
    for every (query tile, key tile) the mask does not skip: read that key tile's K and V
                                                           2 d x (keys in the tile)
So the naive count grows with T_q T_k whatever the tile; the tiled count grows with
T_q T_k d / block_q (K and V are re-read once per query tile): bigger query tiles, fewer bytes.
Masks do not help naive attention (it writes the full matrices) but let the tiled kernel skip
tiles: causal attention reads about half the key tiles, a window or chunk a band.
"""
from __future__ import annotations

import torch

from .masks import SKIP, MaskRule, tile_map

__all__ = ["attention_bytes"]


def attention_bytes(t_q: int, t_k: int, head_dim: int, block_q: int, block_k: int,
                    rule: MaskRule = MaskRule(), bytes_per_value: int = 2) -> dict:
    """The counts above for one (batch, head): naive and tiled bytes, and the tiles computed/skipped."""
    tiles = tile_map(rule, t_q, t_k, block_q, block_k)                    # (n_q_tiles, n_k_tiles)
    tile_first = torch.arange(tiles.shape[1]) * block_k
    keys_per_tile = torch.clamp(t_k - tile_first, max=block_k)              # (n_k_tiles,): the last may be short
    computed = tiles != SKIP
    key_reads = int((computed.sum(dim=0) * keys_per_tile).sum())            # keys loaded, over all query tiles
    naive = (t_q * head_dim + t_k * head_dim + t_q * t_k            # S = Q K^T
             + 2 * t_q * t_k                                          # P = softmax(S)
             + t_q * t_k + t_k * head_dim + t_q * head_dim)           # O = P V
    tiled = 2 * t_q * head_dim + 2 * head_dim * key_reads
    return {"naive_bytes": naive * bytes_per_value,
            "tiled_bytes": tiled * bytes_per_value + 4 * t_q,          # + the float32 lse per row
            "tiles": int(tiles.numel()), "tiles_computed": int(computed.sum()),
            "tiles_skipped": int((~computed).sum()), "tiles_masked": int((tiles == 1).sum())}
