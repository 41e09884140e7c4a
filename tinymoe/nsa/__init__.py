"""Native Sparse Attention (Yuan et al. 2025, "Native Sparse Attention: Hardware-Aligned and
Natively Trainable Sparse Attention", arXiv 2502.11089).

Each query attends through three branches, each over its own small set of keys, and mixes them
with a gate per branch per head:

    o_t = g_t^cmp * Attn(q_t, compressed keys) + g_t^sel * Attn(q_t, selected blocks)
        + g_t^win * Attn(q_t, sliding window)

  compress.py  cmp: blocks of l keys (stride d) -> one key each, by a learned projection
  select.py    sel: the top-n blocks of l' keys, ranked by the cmp branch's attention
  window.py    win: the w most recent keys, the query's own included
  gather.py    attention over a per-query list of keys (what sel and win both run)
  module.py    NativeSparseAttention: the three branches and the gates
  reference.py the same output from an explicit boolean mask per branch and dense attention
  counting.py  query-key products per branch vs dense attention as the sequence grows
"""
from .compress import BlockCompressor, compressed_visibility, n_compressed_blocks
from .counting import qk_products
from .gather import gathered_attention, to_key_positions
from .module import BRANCHES, NativeSparseAttention
from .reference import nsa_reference
from .select import block_importance, choose_blocks, selected_key_indices, selection_overlap
from .window import window_key_indices

__all__ = ["NativeSparseAttention", "BRANCHES", "nsa_reference", "qk_products",
           "BlockCompressor", "compressed_visibility", "n_compressed_blocks",
           "selection_overlap", "block_importance", "choose_blocks", "selected_key_indices",
           "window_key_indices", "gathered_attention", "to_key_positions"]
