"""The naive reference: native sparse attention as three masked dense attentions.

For each branch, an explicit boolean mask says which keys each query may see, written from the
rules one entry at a time (Python loops, no index tricks), and dense attention runs over ALL keys
with that mask. The module computes the same output while scoring only the keys it lists; the
tests check the two agree. Slow on purpose: use it at sheet size.

    cmp  mask[t, i] = block i wholly at or before t:  i*d + l - 1 <= t  (and no padding in it)
    sel  mask[t, s] = block s // l' chosen for t, and s <= t
    win  mask[t, s] = t - w < s <= t

It reuses the module's weights (the projections, phi, the gates, W_o) and RoPE, but none of its
masking, gathering, block-mapping or top-n code.
"""
from __future__ import annotations

import torch

from ..attention import attention_weights

__all__ = ["nsa_reference"]


def _compressed_keys(compressor, x: torch.Tensor) -> torch.Tensor:
    """phi applied block by block: x (B, n_kv_heads, T, dim) -> (B, n_kv_heads, n_blocks, dim)."""
    l, d, T = compressor.block_size, compressor.stride, x.shape[2]
    blocks = []
    i = 0
    while i * d + l <= T:                                                  # block i must lie wholly inside
        block = x[:, :, i * d: i * d + l, :] + compressor.pos             # (B, n_kv_heads, l, dim)
        blocks.append(compressor.W(block.flatten(-2)))                     # (B, n_kv_heads, dim)
        i += 1
    if not blocks:
        return x.new_zeros(x.shape[0], x.shape[1], 0, x.shape[3])
    return torch.stack(blocks, dim=2)                                      # (B, n_kv_heads, n_blocks, dim)


def _dense(q, k, v, mask, group_size):
    """Masked dense attention, each kv head repeated for its group: (B, n_heads, T, v_dim), weights."""
    k = k.repeat_interleave(group_size, dim=1)                             # (B, n_heads, T_k, head_dim)
    v = v.repeat_interleave(group_size, dim=1)                             # (B, n_heads, T_k, v_dim)
    if k.shape[2] == 0:                                                    # nothing to attend to at all
        return q.new_zeros(*q.shape[:3], v.shape[-1]), q.new_zeros(*q.shape[:3], 0)
    weights = attention_weights(q, k, mask=mask)                          # (B, n_heads, T, T_k)
    return weights @ v, weights


@torch.no_grad()
def nsa_reference(attn, x: torch.Tensor, key_padding_mask: torch.Tensor | None = None):
    """The output of NativeSparseAttention `attn` on x (B, T, d_model), from explicit masks.

    Returns (out (B, T, d_model), masks) with masks = {"cmp": (B, n_heads, T, n_blocks),
    "sel": (B, n_heads, T, T), "win": (B, n_heads, T, T)}, bool, True = that query saw that key.
    """
    nsa = attn.nsa
    l, d, l_sel, w = nsa.block_size, nsa.stride, nsa.select_block_size, nsa.window
    B, T, _ = x.shape
    H, H_kv, G = attn.n_heads, attn.n_kv_heads, attn.group_size
    real = torch.ones(B, T, dtype=torch.bool) if key_padding_mask is None else key_padding_mask.bool().cpu()
    q, keys, values = attn.project(x)

    # cmp -----------------------------------------------------------------------------------
    k_cmp = _compressed_keys(attn.compress_k, keys["cmp"])                # (B, n_kv_heads, n_blocks, head_dim)
    v_cmp = _compressed_keys(attn.compress_v, values["cmp"])              # (B, n_kv_heads, n_blocks, v_dim)
    n_blocks = k_cmp.shape[2]
    cmp_mask = torch.zeros(B, H, T, n_blocks, dtype=torch.bool)
    for b in range(B):
        for t in range(T):
            for i in range(n_blocks):
                first, last = i * d, i * d + l - 1
                cmp_mask[b, :, t, i] = last <= t and bool(real[b, first: last + 1].all())
    out_cmp, p_cmp = _dense(q, k_cmp, v_cmp, cmp_mask.to(x.device), G)    # p_cmp: (B, n_heads, T, n_blocks)

    # sel: importance by token overlap, summed over the group, then the top-n rule -----------
    n_sel = (T + l_sel - 1) // l_sel
    overlap = torch.zeros(n_blocks, n_sel, dtype=torch.float64)
    for i in range(n_blocks):
        for s in range(i * d, i * d + l):                                  # every token of compressed block i
            overlap[i, s // l_sel] += 1.0 / l
    p = p_cmp.double().cpu()
    sel_mask = torch.zeros(B, H, T, T, dtype=torch.bool)
    for b in range(B):
        for g in range(H_kv):
            heads = range(g * G, (g + 1) * G)
            for t in range(T):
                score = [sum(float(p[b, h, t, i]) * float(overlap[i, j]) for h in heads for i in range(n_blocks))
                         for j in range(n_sel)]
                own = t // l_sel
                begun = [j for j in range(n_sel) if j * l_sel <= t]
                always = [j for j in begun if j < nsa.n_initial_blocks or own - nsa.n_local_blocks < j <= own]
                others = sorted((j for j in begun if j not in always), key=lambda j: (-score[j], j))
                chosen = always + others[: max(nsa.top_n - len(always), 0)]
                for s in range(T):
                    sel_mask[b, g * G:(g + 1) * G, t, s] = (s // l_sel in chosen) and s <= t and bool(real[b, s])
    out_sel, _ = _dense(q, keys["sel"], values["sel"], sel_mask.to(x.device), G)

    # win -----------------------------------------------------------------------------------
    win_mask = torch.zeros(B, H, T, T, dtype=torch.bool)
    for b in range(B):
        for t in range(T):
            for s in range(T):
                win_mask[b, :, t, s] = t - w < s <= t and bool(real[b, s])
    out_win, _ = _dense(q, keys["win"], values["win"], win_mask.to(x.device), G)

    gates = attn.gates(x)                                                  # (B, n_heads, T, 3)
    out = attn.combine(gates, {"cmp": out_cmp, "sel": out_sel, "win": out_win})
    return out, {"cmp": cmp_mask, "sel": sel_mask, "win": win_mask}
