"""The compressed branch: a block of l keys (or values) becomes one key (or value).

The sequence is cut into blocks of block_size = l tokens taken every stride = d tokens
(d < l: neighbouring blocks overlap by l - d tokens). Block i covers positions i*d .. i*d + l - 1,
so a sequence of T tokens has floor((T - l) / d) + 1 whole blocks (none when T < l).

The paper's phi maps a block to one token with a learned MLP and an intra-block
position encoding. Here phi is the smallest learned map that does this, so every number fits
on the sheet:

    k~_i = W_phi . flatten(k_{i*d : i*d+l} + P)       P: (l, dim), W_phi: (dim, l*dim)

At sheet size: 3 tokens x 3 dims flattened to 9 numbers, projected 9 -> 3. One W_phi (and one P)
serves every block and every key/value head, as one convolution filter serves every position.

Visibility: compressed block i is visible to query t only when it lies wholly in the query's
past, its last key at or before t:  i*d + l - 1 <= t. Early queries (t < l - 1) see no
compressed block at all; their compressed output is zero.
"""
from __future__ import annotations

import torch
from torch import nn

from ..trace import Trace, record

__all__ = ["BlockCompressor", "n_compressed_blocks", "compressed_visibility", "block_members"]


def n_compressed_blocks(seq_len: int, block_size: int, stride: int) -> int:
    """Whole blocks of block_size tokens, one every stride tokens: floor((T - l) / d) + 1, or 0."""
    return 0 if seq_len < block_size else (seq_len - block_size) // stride + 1


def compressed_visibility(seq_len: int, block_size: int, stride: int, device=None) -> torch.Tensor:
    """(seq_len, n_blocks) bool: query t sees compressed block i iff i*d + l - 1 <= t."""
    n_blocks = n_compressed_blocks(seq_len, block_size, stride)
    t = torch.arange(seq_len, device=device)[:, None]                      # (T, 1)
    last_key = torch.arange(n_blocks, device=device)[None, :] * stride + block_size - 1  # (1, n_blocks)
    return last_key <= t                                                   # (T, n_blocks)


def block_members(seq_len: int, block_size: int, stride: int, device=None) -> torch.Tensor:
    """(n_blocks, seq_len) bool: compressed block i is made from tokens i*d .. i*d + l - 1."""
    n_blocks = n_compressed_blocks(seq_len, block_size, stride)
    start = torch.arange(n_blocks, device=device)[:, None] * stride       # (n_blocks, 1)
    s = torch.arange(seq_len, device=device)[None, :]                      # (1, T)
    return (s >= start) & (s < start + block_size)                         # (n_blocks, T)


class BlockCompressor(nn.Module):
    """phi: every block of l tokens of size dim -> one token of size dim (shared weights)."""

    def __init__(self, block_size: int, stride: int, dim: int, bias: bool = False):
        super().__init__()
        self.block_size, self.stride, self.dim = block_size, stride, dim
        self.pos = nn.Parameter(torch.randn(block_size, dim) * 0.02)      # P: intra-block position term
        self.W = nn.Linear(block_size * dim, dim, bias=bias)               # W_phi: l*dim -> dim

    def forward(self, x: torch.Tensor, trace: Trace | None = None) -> torch.Tensor:
        """x (..., T, dim) -> (..., n_blocks, dim)."""
        l, d = self.block_size, self.stride
        n_blocks = n_compressed_blocks(x.shape[-2], l, d)
        record(trace, "W", self.W.weight, "weight")
        record(trace, "pos", self.pos, "weight")
        if n_blocks == 0:
            blocks = x.new_zeros(*x.shape[:-2], 0, l, self.dim)            # (..., 0, l, dim)
        else:
            blocks = x.unfold(-2, l, d)                                    # (..., n_blocks, dim, l)
            blocks = blocks.transpose(-1, -2)                              # (..., n_blocks, l, dim)
        blocks = blocks + self.pos                                         # (..., n_blocks, l, dim)
        flat = blocks.flatten(-2)                                          # (..., n_blocks, l*dim)
        record(trace, "blocks", flat)
        out = self.W(flat)                                                 # (..., n_blocks, dim)
        record(trace, "out", out)
        return out
