"""tinymoe.flash: flash attention, the exact attention that reads keys tile by tile.

    masks.py           MaskRule (causal with bottom-right alignment, sliding window, chunks) and
                       tile_map: which (query tile, key tile) blocks are skipped, masked or full
    online_softmax.py  the running (m, l, o) state: update with a tile, merge two states, finish
    reference.py       flash_attention: the tiled forward and backward in PyTorch (FlashAttention-2),
                       saving only the output and the per-row log-sum-exp
    traffic.py         bytes read and written by naive and tiled attention (the memory-traffic model)
    backend.py         what MultiHeadAttention calls when ModelConfig.attention_backend is "flash" or
                       "flash_triton"

The Triton kernel with the same signature is tinymoe.kernels.flash_attention.
"""
from .masks import FULL, PARTIAL, SKIP, MaskRule, tile_map
from .online_softmax import SoftmaxState, empty_state, finish, merge, update
from .reference import FlashAttention, check_flash_input, flash_attention
from .traffic import attention_bytes

__all__ = ["MaskRule", "tile_map", "SKIP", "PARTIAL", "FULL", "SoftmaxState", "empty_state", "update", "merge",
           "finish", "flash_attention", "FlashAttention", "check_flash_input", "attention_bytes"]
