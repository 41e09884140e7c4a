"""The selected branch: attend at full resolution to the top-n blocks of l' keys.

Selection blocks have select_block_size = l' tokens; block j covers keys j*l' .. j*l' + l' - 1
(the last one may be cut short by the sequence end). Which blocks matter to query t is read off
the compressed branch, at no extra query-key cost:

1. Importance. p_t^cmp, the compressed branch's attention probabilities over its blocks, is mapped
   onto the selection blocks by their spatial relationship: compressed block i gives selection
   block j the fraction of its l tokens that lie inside j,

       p_t^slc[j] = sum_i p_t^cmp[i] * |block_i  intersect  sel_block_j| / l

   When l = l' = d the blocks coincide and p^slc = p^cmp, as in the paper. (The paper writes
   the general case as a double sum over offsets; the overlap fraction states the same idea,
   "how much of this compressed block lies in that selection block", without index arithmetic.)

2. Sharing within a GQA group. The query heads that read one kv head sum their importances,
       p_t^slc'[j] = sum_{h in group} p_t^slc,(h)[j],
   so the whole group loads the same blocks (one memory read serves every head of the group).

3. Top-n. Only blocks that have begun by the query (j*l' <= t) can be chosen. The first
   n_initial_blocks blocks and the n_local_blocks blocks ending at the query's own block are
   always kept (the paper: 1 initial + 2 local); the rest of the top_n places go to the highest
   importance. Ties (e.g. early queries, whose compressed branch sees nothing and scores every
   block 0) go to the lower block index, so the choice is deterministic.

The chosen blocks are attended like dense attention, each key causal (key <= query). Choosing is
a top-n, so no gradient flows through which blocks were chosen; gradient flows through the keys.
"""
from __future__ import annotations

import torch

__all__ = ["selection_overlap", "block_importance", "choose_blocks", "selected_key_indices"]


def selection_overlap(n_compressed: int, n_selection: int, block_size: int, stride: int,
                      select_block_size: int, device=None, dtype=torch.float32) -> torch.Tensor:
    """(n_compressed, n_selection): the fraction of compressed block i's l tokens inside selection block j."""
    cmp_start = torch.arange(n_compressed, device=device)[:, None] * stride            # (n_cmp, 1)
    sel_start = torch.arange(n_selection, device=device)[None, :] * select_block_size  # (1, n_sel)
    overlap = (torch.minimum(cmp_start + block_size, sel_start + select_block_size)
               - torch.maximum(cmp_start, sel_start)).clamp(min=0)                      # (n_cmp, n_sel) tokens
    return overlap.to(dtype) / block_size


def block_importance(p_cmp: torch.Tensor, overlap: torch.Tensor, n_kv_heads: int) -> torch.Tensor:
    """p_cmp (B, n_heads, T, n_cmp) -> importance of each selection block for each kv head's group:
    (B, n_kv_heads, T, n_sel)."""
    B, H, T, _ = p_cmp.shape
    p_slc = p_cmp @ overlap                                                # (B, n_heads, T, n_sel)
    p_slc = p_slc.reshape(B, n_kv_heads, H // n_kv_heads, T, -1)           # (B, n_kv_heads, G, T, n_sel)
    return p_slc.sum(dim=2)                                                # (B, n_kv_heads, T, n_sel)


def choose_blocks(importance: torch.Tensor, select_block_size: int, top_n: int,
                  n_initial_blocks: int = 1, n_local_blocks: int = 2) -> tuple[torch.Tensor, torch.Tensor]:
    """importance (..., T, n_sel) -> (blocks, valid), each (..., T, min(top_n, n_sel)):
    the chosen block indices, best first, and whether each slot holds a block (a query near the
    start has fewer than top_n blocks to choose from)."""
    T, n_sel = importance.shape[-2:]
    t = torch.arange(T, device=importance.device)[:, None]                 # (T, 1)
    j = torch.arange(n_sel, device=importance.device)[None, :]             # (1, n_sel)
    begun = j * select_block_size <= t                                     # (T, n_sel): block j has started
    own = t // select_block_size                                           # (T, 1): the query's own block
    always = (j < n_initial_blocks) | ((j <= own) & (j > own - n_local_blocks))  # (T, n_sel)
    ranked = importance.detach().masked_fill(always, float("inf"))
    ranked = ranked.masked_fill(~begun, float("-inf"))                     # (..., T, n_sel)
    order = torch.sort(ranked, dim=-1, descending=True, stable=True).indices  # ties: lower index first
    blocks = order[..., : min(top_n, n_sel)]                               # (..., T, k)
    valid = begun.expand_as(ranked).gather(-1, blocks)                     # (..., T, k)
    return blocks, valid


def selected_key_indices(blocks: torch.Tensor, valid: torch.Tensor, select_block_size: int,
                         seq_len: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The key positions in the chosen blocks: (index, valid), each (..., T, k * l').
    A key is valid when its block was chosen and it is not after the query (key <= t)."""
    l_sel = select_block_size
    offsets = torch.arange(l_sel, device=blocks.device)                    # (l',)
    index = (blocks[..., None] * l_sel + offsets).flatten(-2)             # (..., T, k*l')
    t = torch.arange(seq_len, device=blocks.device)[:, None]               # (T, 1)
    ok = valid.repeat_interleave(l_sel, dim=-1) & (index <= t)             # (..., T, k*l'); <= t implies < T
    return index.clamp(max=seq_len - 1), ok
