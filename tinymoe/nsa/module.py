"""NativeSparseAttention: three branches of causal attention, mixed per head by learned gates.

    o_t = g_t^cmp * Attn(q_t, K~cmp, V~cmp) + g_t^sel * Attn(q_t, K~sel, V~sel)
        + g_t^win * Attn(q_t, K~win, V~win)

    cmp  compressed: one key per block of l tokens (stride d), blocks wholly in the past
    sel  selected:   the top-n blocks of l' tokens, ranked by the cmp branch's probabilities
    win  window:     the w most recent tokens, the query's own included

Gates: g_t = sigmoid(W_gate x_t + b_gate), one number in (0, 1) per branch per query head,
computed from the token's input (the paper: "derived from input features via an MLP and sigmoid").
The gates are not a softmax: a head may open all three branches, or none.

Each branch has its own key and value projections (W_k_cmp, W_v_cmp, W_k_sel, ...), as in the
paper (its sliding-window section): shared keys would let the window branch, which learns fastest, shape the
keys the other two must use ("shortcut learning"). The queries and W_o are shared.

Grouped-query attention: n_heads query heads share n_kv_heads key/value heads in each branch;
the heads of a group choose their selected blocks together. RoPE rotates q and every branch's
keys as in MultiHeadAttention, before compression: a compressed key is made from keys already
rotated to their positions.

Trace names (under the module's name, e.g. `attn.`): per branch `cmp.mask` / `sel.mask` /
`win.mask` (which keys each query saw), `cmp.k_compressed`, `cmp.v_compressed`, `cmp.weights`
(= p^cmp), `sel.block_scores`, `sel.blocks`, `sel.block_mask`, `*.out`; then `gates`, `mixed`,
`concat`, `out`. cmp's keys are compressed blocks: `cmp.mask` is (B, n_heads, T, n_blocks);
`sel.mask` and `win.mask` are over token positions, (B, n_heads, T, T).
"""
from __future__ import annotations

import torch
from torch import nn

from ..attention import attention_weights, check_attention_input
from ..config import ConfigError, ModelConfig
from ..rope import RotaryEmbedding
from ..trace import Trace, record, scoped
from .compress import BlockCompressor, compressed_visibility
from .gather import gathered_attention, to_key_positions
from .select import block_importance, choose_blocks, selected_key_indices, selection_overlap
from .window import window_key_indices

__all__ = ["NativeSparseAttention", "BRANCHES"]

BRANCHES = ("cmp", "sel", "win")                                           # the order of the gates


class NativeSparseAttention(nn.Module):
    """Causal native sparse attention with n_heads query and n_kv_heads key/value heads."""

    def __init__(self, config: ModelConfig, name: str = "attn"):
        super().__init__()
        config.validate()
        if config.nsa is None:
            raise ConfigError("nsa", None, "NativeSparseAttention needs an nsa=SparseAttentionConfig(...)")
        if not config.causal:
            raise ConfigError("causal", config.causal, "native sparse attention is defined for causal decoders only")
        if len(set(config.v_dims)) > 1:
            raise ConfigError("v_head_dims", config.v_head_dims,
                              "native sparse attention needs one value size for every head")
        self.config, self.nsa, self.name = config, config.nsa, name
        self.n_heads, self.n_kv_heads = config.n_heads, config.kv_heads
        self.head_dim, self.v_dim, self.group_size = config.qk_dim, config.v_dims[0], config.group_size
        d, H, H_kv, D, Dv = config.d_model, self.n_heads, self.n_kv_heads, self.head_dim, self.v_dim
        self.W_q = nn.Linear(d, H * D, bias=config.bias)
        for branch in BRANCHES:                                            # separate k/v per branch
            setattr(self, f"W_k_{branch}", nn.Linear(d, H_kv * D, bias=config.bias))
            setattr(self, f"W_v_{branch}", nn.Linear(d, H_kv * Dv, bias=config.bias))
        self.compress_k = BlockCompressor(self.nsa.block_size, self.nsa.stride, D)
        self.compress_v = BlockCompressor(self.nsa.block_size, self.nsa.stride, Dv)
        # The gate always has a bias: it sets how open each branch starts, whatever the token.
        self.W_gate = nn.Linear(d, H * len(BRANCHES), bias=True)
        self.W_o = nn.Linear(H * Dv, d, bias=config.bias)
        self.rope = (RotaryEmbedding(D, config.max_seq_len, config.rope_base, config.rope_pairing)
                     if config.position == "rope" else None)

    # ---- the three branches' keys and values ---------------------------------------------
    def project(self, x: torch.Tensor, trace: Trace | None = None):
        """q (B, n_heads, T, head_dim) and, per branch, k (B, n_kv_heads, T, head_dim) and
        v (B, n_kv_heads, T, v_dim), RoPE applied. Shared by the module and the reference."""
        B, T, _ = x.shape
        H, H_kv, D, Dv = self.n_heads, self.n_kv_heads, self.head_dim, self.v_dim
        q = self.W_q(x).view(B, T, H, D).transpose(1, 2)                   # (B, n_heads, T, head_dim)
        record(trace, "q", q)
        keys, values = {}, {}
        for branch in BRANCHES:
            scope = scoped(trace, branch)
            k = getattr(self, f"W_k_{branch}")(x).view(B, T, H_kv, D).transpose(1, 2)   # (B, n_kv_heads, T, head_dim)
            v = getattr(self, f"W_v_{branch}")(x).view(B, T, H_kv, Dv).transpose(1, 2)  # (B, n_kv_heads, T, v_dim)
            record(scope, "k", k)
            record(scope, "v", v)
            if self.rope is not None:
                q_rot, k = self.rope(q, k, trace=trace if branch == "cmp" else None)
                record(scope, "k_rot", k)
            keys[branch], values[branch] = k, v
        if self.rope is not None:
            q = q_rot
            record(trace, "q_rot", q)
        return q, keys, values

    def gates(self, x: torch.Tensor) -> torch.Tensor:
        """g = sigmoid(W_gate x + b_gate): (B, n_heads, T, 3), the last axis in BRANCHES order."""
        B, T, _ = x.shape
        g = torch.sigmoid(self.W_gate(x))                                  # (B, T, n_heads*3)
        return g.view(B, T, self.n_heads, len(BRANCHES)).transpose(1, 2)  # (B, n_heads, T, 3)

    def combine(self, gates: torch.Tensor, outs: dict, trace: Trace | None = None) -> torch.Tensor:
        """sum over branches of gate * branch output, heads side by side, then W_o: (B, T, d_model)."""
        mixed = sum(gates[..., c, None] * outs[branch] for c, branch in enumerate(BRANCHES))  # (B, n_heads, T, v_dim)
        record(trace, "mixed", mixed)
        B, H, T, Dv = mixed.shape
        concat = mixed.transpose(1, 2).reshape(B, T, H * Dv)              # (B, T, n_heads*v_dim)
        record(trace, "concat", concat)
        out = self.W_o(concat)                                             # (B, T, d_model)
        record(trace, "out", out, "output")
        return out

    # ---- forward -------------------------------------------------------------------------
    def forward(self, x: torch.Tensor, trace: Trace | None = None,
                key_padding_mask: torch.Tensor | None = None) -> torch.Tensor:
        """x: (batch, seq, d_model) -> (batch, seq, d_model).
        key_padding_mask: optional (batch, seq) bool, True for real tokens."""
        check_attention_input(x, self.config.d_model, key_padding_mask)
        B, T, _ = x.shape
        trace = scoped(trace, self.name)
        nsa, H, H_kv = self.nsa, self.n_heads, self.n_kv_heads
        real = None if key_padding_mask is None else key_padding_mask.bool()  # (B, T): True = real token
        record(trace, "x", x, "input")
        for w in ("W_q", *(f"W_{kv}_{b}" for b in BRANCHES for kv in "kv"), "W_gate", "W_o"):
            record(trace, w, getattr(self, w).weight, "weight")
        record(trace, "b_gate", self.W_gate.bias, "bias")

        q, keys, values = self.project(x, trace)
        cmp = scoped(trace, "cmp")
        sel = scoped(trace, "sel")
        win = scoped(trace, "win")
        outs = {}

        # -- cmp: attend to one compressed key per block wholly in the past ------------------
        k_cmp = self.compress_k(keys["cmp"], scoped(cmp, "compress_k"))    # (B, n_kv_heads, n_blocks, head_dim)
        v_cmp = self.compress_v(values["cmp"], scoped(cmp, "compress_v"))  # (B, n_kv_heads, n_blocks, v_dim)
        record(cmp, "k_compressed", k_cmp)
        record(cmp, "v_compressed", v_cmp)
        n_blocks = k_cmp.shape[2]
        mask = compressed_visibility(T, nsa.block_size, nsa.stride, device=x.device)       # (T, n_blocks)
        if real is not None and n_blocks:
            whole = real.unfold(1, nsa.block_size, nsa.stride).all(-1)                      # (B, n_blocks): no padding inside
            mask = mask & whole[:, None, None, :]                                           # (B, 1, T, n_blocks)
        if n_blocks:
            k_rep = k_cmp.repeat_interleave(self.group_size, dim=1)        # (B, n_heads, n_blocks, head_dim)
            v_rep = v_cmp.repeat_interleave(self.group_size, dim=1)        # (B, n_heads, n_blocks, v_dim)
            p_cmp = attention_weights(q, k_rep, mask=mask, trace=cmp)      # (B, n_heads, T, n_blocks)
            outs["cmp"] = p_cmp @ v_rep                                    # (B, n_heads, T, v_dim)
        else:                                                              # T < l: no block yet, zero output
            p_cmp = q.new_zeros(B, H, T, 0)                                # (B, n_heads, T, 0)
            outs["cmp"] = q.new_zeros(B, H, T, self.v_dim)                 # (B, n_heads, T, v_dim)
            record(cmp, "weights", p_cmp)
            record(cmp, "mask", torch.zeros(B, H, T, 0, dtype=torch.bool, device=x.device))
        record(cmp, "out", outs["cmp"])

        # -- sel: the top-n blocks by the cmp branch's probabilities, at full resolution ------
        n_sel = -(-T // nsa.select_block_size)                             # ceil(T / l')
        overlap = selection_overlap(n_blocks, n_sel, nsa.block_size, nsa.stride,
                                    nsa.select_block_size, device=x.device, dtype=p_cmp.dtype)  # (n_blocks, n_sel)
        importance = block_importance(p_cmp, overlap, H_kv)               # (B, n_kv_heads, T, n_sel)
        blocks, chosen = choose_blocks(importance, nsa.select_block_size, nsa.top_n,
                                       nsa.n_initial_blocks, nsa.n_local_blocks)  # (B, n_kv_heads, T, k)
        index, valid = selected_key_indices(blocks, chosen, nsa.select_block_size, T)  # (B, n_kv_heads, T, k*l')
        if real is not None:
            valid = valid & torch.gather(real[:, None, None, :].expand(B, H_kv, T, T), -1, index)
        outs["sel"], w_sel = gathered_attention(q, keys["sel"], values["sel"], index, valid)  # (B, n_heads, T, v_dim)
        if sel is not None:
            block_mask = torch.zeros_like(importance, dtype=torch.bool).scatter(-1, blocks, chosen)  # (B, n_kv_heads, T, n_sel)
            record(sel, "overlap", overlap, "buffer")
            record(sel, "block_scores", importance)
            record(sel, "blocks", blocks)
            record(sel, "block_mask", block_mask)
            record(sel, "mask", to_key_positions(valid.repeat_interleave(self.group_size, 1), index, T))
            record(sel, "weights", to_key_positions(w_sel, index, T))
        record(sel, "out", outs["sel"])

        # -- win: the w most recent keys -------------------------------------------------------
        index, valid = window_key_indices(T, nsa.window, device=x.device)  # (T, w)
        index, valid = index[None, None], valid[None, None]                # (1, 1, T, w)
        if real is not None:
            valid = valid & real[:, index[0, 0]][:, None]                  # (B, 1, T, w)
        outs["win"], w_win = gathered_attention(q, keys["win"], values["win"], index, valid)  # (B, n_heads, T, v_dim)
        if win is not None:
            record(win, "mask", to_key_positions(valid.expand(B, H, T, -1), index, T))
            record(win, "weights", to_key_positions(w_win, index, T))
        record(win, "out", outs["win"])

        # -- gates: mix the three branches per head ------------------------------------------
        gates = self.gates(x)                                              # (B, n_heads, T, 3)
        record(trace, "gates", gates)
        return self.combine(gates, outs, trace)
