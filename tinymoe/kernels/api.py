"""The Triton backend's two entry points, with the checks that turn misuse into plain errors.

`triton_moe_dispatch(x, expert_ids, gates, w_gate, w_up, w_down)` has the signature of the
PyTorch paths in `tinymoe.moe.dispatch` (loop, dense, grouped): the MoE layer picks it when
`MoEConfig.dispatch == "triton"`, and the tests hold all of them to the same results.

`triton_route(logits, top_k, ...)` is the router kernel (router.py): the layer computes its
gates with PyTorch (so that auxiliary losses see the full probabilities); the router kernel is
the GPU-speed replacement, tested against the same softmax/top-k and used by the benchmark.
"""
from __future__ import annotations

import torch

from .autograd import TritonMoEDispatch
from .grouped_gemm import TileConfig
from .router import RouterOutput, triton_route

__all__ = ["triton_moe_dispatch", "triton_route", "RouterOutput", "interpreted"]


def interpreted() -> bool:
    """True when the kernels run in Triton's CPU interpreter (TRITON_INTERPRET=1 at import)."""
    from .router import router_kernel
    return type(router_kernel).__name__ == "InterpretedFunction"


def _check(x, expert_ids, gates, w_gate, w_up, w_down) -> None:
    if x.dim() != 2:
        raise ValueError(f"x has shape {tuple(x.shape)}: expected (n_tokens, d_model); flatten batch and sequence first")
    n_tokens, d_model = x.shape
    if w_up.dim() != 3 or (w_gate is not None and w_up.shape != w_gate.shape):
        raise ValueError(f"w_gate {None if w_gate is None else tuple(w_gate.shape)} and w_up {tuple(w_up.shape)} "
                         f"must both be (n_experts, d_ff, d_model): stacked nn.Linear weights (w_gate None: ReLU)")
    n_experts, d_ff, d_in = w_up.shape
    if d_in != d_model:
        raise ValueError(f"w_up is (n_experts, d_ff, {d_in}) but x has d_model={d_model}")
    if tuple(w_down.shape) != (n_experts, d_model, d_ff):
        raise ValueError(f"w_down has shape {tuple(w_down.shape)}: expected (n_experts, d_model, d_ff) = "
                         f"({n_experts}, {d_model}, {d_ff})")
    if expert_ids.dim() != 2 or expert_ids.shape[0] != n_tokens or tuple(gates.shape) != tuple(expert_ids.shape):
        raise ValueError(f"expert_ids {tuple(expert_ids.shape)} and gates {tuple(gates.shape)} must both be "
                         f"(n_tokens, top_k) with n_tokens={n_tokens}")
    if expert_ids.dtype not in (torch.int32, torch.int64):
        raise ValueError(f"expert_ids has dtype {expert_ids.dtype}: expected int32 or int64 (-1 = dropped)")
    for name, w in (("w_gate", w_gate), ("w_up", w_up), ("w_down", w_down)):
        if w is not None and w.dtype != x.dtype:
            raise ValueError(f"{name} is {w.dtype} but x is {x.dtype}: the grouped GEMMs multiply tiles of one "
                             f"dtype; cast the weights (or x) first")
    if x.dtype == torch.bfloat16 and interpreted():
        raise ValueError("bfloat16 under TRITON_INTERPRET=1: the interpreter computes dots with numpy, which has no "
                         "bfloat16, and returns garbage; use float16 or float32 on the CPU")
    on_cpu = x.device.type == "cpu"
    if on_cpu and not interpreted():
        raise ValueError("x is on the CPU but the Triton kernels were compiled for a GPU: move the layer to CUDA, "
                         "or set TRITON_INTERPRET=1 before importing tinymoe.kernels to run them on the CPU")


def triton_moe_dispatch(x: torch.Tensor, expert_ids: torch.Tensor, gates: torch.Tensor,
                        w_gate: torch.Tensor | None, w_up: torch.Tensor, w_down: torch.Tensor, *,
                        tiles: TileConfig | None = None) -> torch.Tensor:
    """out (n_tokens, d_model) = sum over slots of gates[t, slot] * SwiGLU_{expert_ids[t, slot]}(x[t]).

    x           (n_tokens, d_model)
    expert_ids  (n_tokens, top_k) int, -1 for a dropped slot (capacity-limited routing)
    gates       (n_tokens, top_k) float32, 0 for a dropped slot
    w_gate, w_up (n_experts, d_ff, d_model); w_down (n_experts, d_model, d_ff)
                w_gate None: ReLU experts, out = W_down relu(W_up x) (ffn="relu")
    tiles       force one TileConfig for every GEMM (tests use 16x16x16 to exercise loop tails);
                None: `tile_config`'s table picks by shape
    Differentiable in x, gates and the three weights. Returns x's dtype.
    """
    _check(x, expert_ids, gates, w_gate, w_up, w_down)
    if x.stride(-1) != 1:
        x = x.contiguous()
    return TritonMoEDispatch.apply(x, gates, w_gate, w_up, w_down, expert_ids, tiles)
