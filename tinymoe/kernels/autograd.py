"""The four stages as one differentiable operation: a torch.autograd.Function.

Forward (per pair p = token * top_k + slot, routed to expert e, landing in permuted row r):

    gate[r]   = x[t] W_gate[e]^T          up[r] = x[t] W_up[e]^T           (grouped GEMM, gathered rows)
    hidden[r] = silu(gate[r]) * up[r]                                      (fused into the same kernel)
    y[r]      = g[p] * hidden[r] W_down[e]^T                               (grouped GEMM, gate g in the epilogue)
    out[t]    = sum over the token's slots of y[row of (t, slot)]          (combine, fixed order)

Backward, given dout = dL/dout (the same kernels, with transposed weight views):

    dh0[r]      = dout[t] W_down[e]                       grouped_matmul, rows gathered from dout
    dg[p]       = <dh0[r], hidden[r]>                     the gate's gradient: <dout, expert output>
    dhidden[r]  = g[p] * dh0[r]
    dgate[r]    = dhidden * up * silu'(gate),  silu'(z) = sigmoid(z) (1 + z (1 - sigmoid(z)))
    dup[r]      = dhidden * silu(gate)
    dx[t]       = sum over slots of dgate[r] W_gate[e] + dup[r] W_up[e]    grouped_matmul + combine
    dW_gate[e]  = sum over e's rows of dgate[r]^T x[t]                    weight_grad_kernel
    dW_up[e]    = sum over e's rows of dup[r]^T x[t]
    dW_down[e]  = sum over e's rows of (g[p] dout[t])^T hidden[r]

Every matrix product of the backward runs in the Triton kernels of grouped_gemm.py; the
elementwise SwiGLU derivative and the per-row dot product for dg are plain PyTorch on the
permuted (n_rows, d_ff) buffers (no host synchronisation: their size is the worst case).
The router's own weights get their gradient through dg: the layer computed the gates from
the router logits with PyTorch ops, so autograd carries dg the rest of the way.

A ReLU expert (ffn="relu": w_gate None, hidden = relu(up)) has dup = dhidden * (up > 0) and
no W_gate gradient.

The forward keeps gate and up (the pre-activations) when a gradient will be needed, trading
2 * n_rows * d_ff elements of memory for not recomputing two GEMMs.
"""
from __future__ import annotations

import torch

from .align import align
from .combine import combine
from .grouped_gemm import gate_up, grouped_matmul, tile_config, weight_grad

__all__ = ["TritonMoEDispatch"]


class TritonMoEDispatch(torch.autograd.Function):
    """out = sum_k gates[:, k] * expert_{ids[:, k]}(x), with Triton kernels both ways."""

    @staticmethod
    def forward(ctx, x, gates, w_gate, w_up, w_down, expert_ids, tiles=None):
        n_tokens, d_model = x.shape
        n_experts, d_ff, _ = w_up.shape
        top_k = expert_ids.shape[1]
        rows_per_expert = n_tokens * top_k / n_experts
        config_up = tiles or tile_config(rows_per_expert, d_ff, d_model, x.dtype)      # N = d_ff, K = d_model
        config_down = tiles or tile_config(rows_per_expert, d_model, d_ff, x.dtype)    # N = d_model, K = d_ff
        alignment = align(expert_ids, n_experts, config_up.block_m)
        gates_flat = gates.detach().reshape(-1).float().contiguous()           # (n_pairs,) float32

        needs_grad = any(ctx.needs_input_grad[:5])
        hidden, gate, up = gate_up(x, w_gate, w_up, alignment, config_up, save_preactivations=needs_grad)
        rows = grouped_matmul(hidden, w_down, alignment, config_down, gather_rows=False, row_scales=gates_flat)
        out = combine(rows, alignment, out_dtype=x.dtype)                       # (n_tokens, d_model)

        if needs_grad:
            ctx.save_for_backward(x, gates_flat, w_gate, w_up, w_down, hidden, gate, up)
            ctx.alignment = alignment
            ctx.configs = (config_up, config_down)
            ctx.gates_dtype = gates.dtype
        return out

    @staticmethod
    def backward(ctx, grad_out):
        x, gates_flat, w_gate, w_up, w_down, hidden, gate, up = ctx.saved_tensors
        alignment = ctx.alignment
        config_up, config_down = ctx.configs           # (N, K) = (d_ff, d_model) and (d_model, d_ff)
        need_x, need_gates, need_w_gate, need_w_up, need_w_down = ctx.needs_input_grad[:5]
        dout = grad_out.to(x.dtype).contiguous()                                # (n_tokens, d_model)
        pairs = alignment.sorted_pairs.long()                                   # (n_rows,)
        row_gates = torch.where(pairs >= 0, gates_flat[pairs.clamp(min=0)], 0.0)   # (n_rows,) g of each row

        # dh0[r] = dout[t] W_down[e]: weights (E, d_ff, d_model) = W_down transposed (a view).
        dh0 = grouped_matmul(dout, w_down.transpose(1, 2), alignment, config_up, gather_rows=True,
                             out_dtype=torch.float32)                           # (n_rows, d_ff)
        grad_gates = None
        if need_gates:
            row_grads = (dh0 * hidden.float()).sum(1)                          # (n_rows,)
            pair_rows = alignment.pair_rows.long()
            grad_gates = torch.where(pair_rows >= 0, row_grads[pair_rows.clamp(min=0)], 0.0)
            grad_gates = grad_gates.view(alignment.n_tokens, alignment.top_k).to(ctx.gates_dtype)

        dhidden = dh0 * row_gates[:, None]                                      # (n_rows, d_ff) float32
        if gate is None:                                                        # ReLU expert
            dgate, dup = None, (dhidden * (up > 0)).to(x.dtype)
        else:
            gate32 = gate.float()
            sigmoid = torch.sigmoid(gate32)
            dgate = (dhidden * up.float() * sigmoid * (1 + gate32 * (1 - sigmoid))).to(x.dtype)
            dup = (dhidden * gate32 * sigmoid).to(x.dtype)

        grad_x = grad_w_gate = grad_w_up = grad_w_down = None
        if need_x:
            # W_up[e] and W_gate[e] as (E, N=d_model, K=d_ff): transposed views again, no copy.
            dx_rows = grouped_matmul(dup, w_up.transpose(1, 2), alignment, config_down, gather_rows=False,
                                     out_dtype=torch.float32)                  # (n_rows, d_model)
            if dgate is not None:
                dx_rows += grouped_matmul(dgate, w_gate.transpose(1, 2), alignment, config_down, gather_rows=False,
                                          out_dtype=torch.float32)
            grad_x = combine(dx_rows, alignment, out_dtype=x.dtype)            # (n_tokens, d_model)
        if need_w_gate and dgate is not None:
            grad_w_gate = weight_grad(dgate, x, alignment, config_up, gather_g=False, gather_a=True,
                                      out_dtype=w_gate.dtype)                  # (E, d_ff, d_model)
        if need_w_up:
            grad_w_up = weight_grad(dup, x, alignment, config_up, gather_g=False, gather_a=True,
                                    out_dtype=w_up.dtype)
        if need_w_down:
            grad_w_down = weight_grad(dout, hidden, alignment, config_down, gather_g=True, gather_a=False,
                                      row_scales=gates_flat, out_dtype=w_down.dtype)   # (E, d_model, d_ff)
        return grad_x, grad_gates, grad_w_gate, grad_w_up, grad_w_down, None, None
