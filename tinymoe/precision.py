"""Which dtype to compute in: the wider of float32 and the input's.

float16 stops at 65504 and keeps 11 significant bits; bfloat16 keeps 8. Products and sums of
half-precision numbers (attention scores, a norm's mean square, an expert's weighted sum) are
therefore accumulated in float32 and rounded back once at the end, as fused GPU kernels do.
float64 input is the opposite case: it is computed in float64, never narrowed to float32, so a
float64 model really is float64 (torch.autograd.gradcheck relies on it).
"""
from __future__ import annotations

import torch

__all__ = ["compute_dtype"]


def compute_dtype(dtype: torch.dtype) -> torch.dtype:
    """float16 / bfloat16 / float32 -> float32; float64 -> float64 (integers -> float32)."""
    return torch.promote_types(dtype, torch.float32)
