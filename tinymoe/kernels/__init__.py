"""The Triton MoE backend: the MoE layer's dispatch as four GPU kernels, readable first.

    router.py        logits -> float32 softmax/sigmoid -> top-k -> expert ids, weights, block counts
    align.py         per-expert offsets padded to the tile height, the stable expert-sorted
                     permutation of the (token, slot) pairs, the expert of every tile
    grouped_gemm.py  gate/up projection with SwiGLU fused (rows gathered on load), down
                     projection with the gate weight in the epilogue; the backward's GEMMs
    combine.py       each token's k outputs summed in a fixed order (no atomics)
    autograd.py      all of it as a torch.autograd.Function (the layer trains with it)
    flash_attention.py  flash attention forward and backward (tinymoe.flash's reference on the GPU)
    api.py           `triton_moe_dispatch` (same signature as tinymoe.moe.dispatch's paths), `triton_route`

Without a GPU the kernels run in Triton's interpreter (numpy on the CPU, slowly): when CUDA is
not available and TRITON_INTERPRET is unset, importing this package sets TRITON_INTERPRET=1
before any kernel is defined (Triton reads it when `@triton.jit` runs). The interpreter does
not do bfloat16 matrix products (numpy has no bfloat16): use float16 or float32 there.
"""
from __future__ import annotations

import os

import torch

if not torch.cuda.is_available() and "TRITON_INTERPRET" not in os.environ:
    os.environ["TRITON_INTERPRET"] = "1"

from .align import Alignment, align                                          # noqa: E402
from .api import interpreted, triton_moe_dispatch, triton_route              # noqa: E402
from .autograd import TritonMoEDispatch                                      # noqa: E402
from .combine import combine                                                 # noqa: E402
from .flash_attention import triton_flash_attention                           # noqa: E402
from .grouped_gemm import TileConfig, gate_up, grouped_matmul, tile_config, weight_grad   # noqa: E402
from .router import RouterOutput                                             # noqa: E402

__all__ = ["triton_moe_dispatch", "triton_route", "RouterOutput", "Alignment", "align", "combine",
           "gate_up", "grouped_matmul", "weight_grad", "tile_config", "TileConfig",
           "TritonMoEDispatch", "interpreted", "triton_flash_attention"]
