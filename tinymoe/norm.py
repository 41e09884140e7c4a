"""Normalisation: LayerNorm, and the RMSNorm that Llama uses instead.

LayerNorm (Ba et al. 2016):  y = (x - mean(x)) / sqrt(var(x) + eps) * gamma + beta
RMSNorm (Zhang & Sennrich 2019): y = x / sqrt(mean(x^2) + eps) * gamma

RMSNorm drops the mean subtraction and the bias: cheaper, and in practice just as stable.
Both normalise each token's d_model vector on its own (the last axis), never across tokens.
The statistics are computed in float32 even for float16/bfloat16 input (float64 stays float64):
a token of 300s has a mean square of 90000, past float16's 65504 (as Hugging Face's Llama does).
"""
from __future__ import annotations

import torch
from torch import nn

from .config import ModelConfig, real_number, whole_number
from .precision import compute_dtype
from .trace import Trace, record, scoped

__all__ = ["LayerNorm", "RMSNorm", "make_norm"]


def _check(d_model, eps) -> None:
    whole_number("d_model", d_model)
    real_number("eps", eps, "must be a small positive finite number, e.g. 1e-5", lambda v: v > 0)


class LayerNorm(nn.Module):
    """Subtract each token's mean, divide by its standard deviation, scale and shift."""

    def __init__(self, d_model: int, eps: float = 1e-5, name: str = "norm"):
        super().__init__()
        _check(d_model, eps)
        self.eps, self.name = eps, name
        self.weight = nn.Parameter(torch.ones(d_model))    # gamma
        self.bias = nn.Parameter(torch.zeros(d_model))     # beta

    def forward(self, x: torch.Tensor, trace: Trace | None = None) -> torch.Tensor:
        trace = scoped(trace, self.name)
        out_dtype = torch.promote_types(x.dtype, self.weight.dtype)
        x = x.to(compute_dtype(x.dtype))                                # statistics in >= float32
        mean = x.mean(dim=-1, keepdim=True)                             # (..., 1)
        var = x.var(dim=-1, keepdim=True, unbiased=False)               # (..., 1)
        x_hat = (x - mean) / torch.sqrt(var + self.eps)                 # (..., d_model)
        out = (x_hat * self.weight + self.bias).to(out_dtype)
        record(trace, "mean", mean)
        record(trace, "var", var)
        record(trace, "x_hat", x_hat)
        record(trace, "gamma", self.weight, "weight")
        record(trace, "beta", self.bias, "bias")
        record(trace, "out", out)
        return out


class RMSNorm(nn.Module):
    """Divide each token by its root-mean-square, then scale: no mean, no bias."""

    def __init__(self, d_model: int, eps: float = 1e-5, name: str = "norm"):
        super().__init__()
        _check(d_model, eps)
        self.eps, self.name = eps, name
        self.weight = nn.Parameter(torch.ones(d_model))    # gamma

    def forward(self, x: torch.Tensor, trace: Trace | None = None) -> torch.Tensor:
        trace = scoped(trace, self.name)
        out_dtype = torch.promote_types(x.dtype, self.weight.dtype)
        x = x.to(compute_dtype(x.dtype))                                    # statistics in >= float32
        rms = torch.sqrt(x.pow(2).mean(dim=-1, keepdim=True) + self.eps)   # (..., 1)
        x_hat = x / rms                                                     # (..., d_model)
        out = (x_hat * self.weight).to(out_dtype)
        record(trace, "rms", rms)
        record(trace, "x_hat", x_hat)
        record(trace, "gamma", self.weight, "weight")
        record(trace, "out", out)
        return out


def make_norm(config: ModelConfig, name: str = "norm") -> nn.Module:
    """The norm the config asks for."""
    cls = RMSNorm if config.norm == "rmsnorm" else LayerNorm
    return cls(config.d_model, eps=config.norm_eps, name=name)
