"""Exercise 04, RMSNorm: divide each token by its root-mean-square, then scale.

    rms_norm(x, weight, eps)    x / sqrt(mean(x^2, last axis) + eps) * weight

Reference: tinymoe.norm.RMSNorm (and LayerNorm for the classic confusion). The wrong answers:
subtracting the mean (that is LayerNorm), dividing by the standard deviation, eps outside the
square root, the mean over the wrong axis, a sum instead of a mean, the weight forgotten.
"""
from __future__ import annotations

import torch

from ..norm import LayerNorm, RMSNorm
from .checks import Case, Exercise, Misconception, Property, Question

NOTEBOOK = "notebooks/04_normalisation.ipynb"


def _core_norm(cls, weight: torch.Tensor, eps: float) -> torch.nn.Module:
    norm = cls(weight.shape[0], eps=eps).to(weight.dtype)
    with torch.no_grad():
        norm.weight.copy_(weight)
    return norm


def _rms_norm(x, weight, eps=1e-5):
    with torch.no_grad():
        return _core_norm(RMSNorm, weight, eps)(x)


def rmsnorm_cases(d):
    cases = []

    def add(label, x, eps=1e-5, moderate=True, dtype=torch.float32):
        x = x.to(dtype)
        weight = d.randn(x.shape[-1], scale=0.2, shift=1.0, dtype=dtype)
        cases.append(Case(label, (x, weight), {"eps": eps}, expected=_rms_norm(x, weight, eps),
                          info={"moderate": moderate}))

    t = d.randint(3, 6)
    add(f"{t} tokens of d_model 5", d.randn(t, 5))
    add("a (batch 2, seq_len 3, d_model 8) tensor", d.randn(2, 3, 8, scale=2.0, shift=0.5))
    add("tokens with values in the thousands", d.randn(4, 6, scale=1000.0))
    add("tiny values (mean of squares below eps)", d.randn(3, 6, scale=1e-3), moderate=False)
    zero_row = d.randn(3, 6)
    zero_row[1] = 0.0
    add("a token whose vector is all zeros", zero_row, moderate=False)
    add("d_model 1", d.randn(4, 1, shift=1.0), moderate=False)
    add("float64 tokens with eps 1e-6", d.randn(2, 4, 6), eps=1e-6, dtype=torch.float64)
    # Past float32's largest number (3.4e38): computing in float32 and casting back overflows here
    # whatever the seed, so it never passes by luck on the case above.
    add("float64 tokens beyond float32's range (about 1e39)", d.randn(3, 6, scale=1e39, dtype=torch.float64),
        dtype=torch.float64)
    return cases


def _finite(case, got, call):
    if not torch.isfinite(got).all():
        return "it returned NaN or inf; an all-zero token must come out as zeros (that is what eps is for)"


def _unit_rms(case, got, call):
    if not case.info["moderate"]:
        return None
    x, weight = case.args
    out = call(x, torch.ones_like(weight), **case.kwargs).double()
    rms = out.pow(2).mean(-1).sqrt()
    if not torch.allclose(rms, torch.ones_like(rms), atol=1e-3):
        return "with weight all ones, the output tokens do not have root-mean-square 1"


def _scale_invariant(case, got, call):
    if not case.info["moderate"]:
        return None
    x, weight = case.args
    out = call(x * 7.0, weight, **case.kwargs)
    if not torch.allclose(out.double(), got.double(), rtol=1e-3, atol=1e-3):
        return "multiplying a token by 7 changed its output; dividing by the root-mean-square cancels any scale"


def _wrong(subtract_mean=False, variance=False, eps_inside=True, dim=-1, mean=True, use_weight=True,
           float32=False):
    def wrong(x, weight, eps=1e-5):
        if float32:
            return _wrong()(x.float(), weight.float(), eps).to(x.dtype)
        if subtract_mean:
            return _core_norm(LayerNorm, weight, eps)(x).detach()
        square = x.var(dim=dim, keepdim=True, unbiased=False) if variance else x.pow(2)
        square = square.mean(dim=dim, keepdim=True) if mean else square.sum(dim=dim, keepdim=True)
        rms = torch.sqrt(square + eps) if eps_inside else torch.sqrt(square) + eps
        return x / rms * (weight if use_weight else 1.0)
    return wrong


RMS_NORM = Question(
    "rms_norm", "RMSNorm over the last axis, with a learned weight", rmsnorm_cases,
    forbidden=("torch.nn.functional.rms_norm", "torch.rms_norm", "torch.nn.RMSNorm",
               "torch.nn.functional.layer_norm", "torch.nn.LayerNorm"),
    section=f"{NOTEBOOK}, section: RMSNorm: no mean, no bias",
    properties=[Property("finite", _finite), Property("unit root-mean-square", _unit_rms),
                Property("scale invariant", _scale_invariant)],
    misconceptions=[
        Misconception("rmsnorm_subtracts_mean",
                      "RMSNorm does not subtract the mean: that is LayerNorm. Divide x itself by "
                      "sqrt(mean(x^2) + eps), with no centring and no bias",
                      _wrong(subtract_mean=True)),
        Misconception("rmsnorm_uses_variance",
                      "use the mean of the squares, mean(x^2), not the variance: the variance subtracts the mean "
                      "first",
                      _wrong(variance=True)),
        Misconception("eps_outside_sqrt",
                      "eps goes inside the square root: x / sqrt(mean(x^2) + eps)",
                      _wrong(eps_inside=False)),
        Misconception("rmsnorm_wrong_axis",
                      "normalise each token on its own: the mean runs over the last axis (d_model, dim=-1), never "
                      "across tokens",
                      _wrong(dim=-2)),
        Misconception("sum_not_mean",
                      "root-MEAN-square: average the squares over d_model (mean), do not add them up (sum)",
                      _wrong(mean=False)),
        Misconception("computed_in_float32",
                      "compute in the input's own dtype: casting float64 tokens to float32 and back loses digits, "
                      "and past 3.4e38 their squares overflow to inf",
                      _wrong(float32=True)),
        Misconception("weight_forgotten",
                      "finish by multiplying with the learned weight (gamma), one scale per feature",
                      _wrong(use_weight=False)),
    ],
    hints=["rms = sqrt(mean of x^2 over the last axis + eps), with keepdim=True so it broadcasts back.",
           "Then x / rms * weight. No mean is subtracted and there is no bias."],
)

EXERCISE = Exercise("04_rmsnorm", "RMSNorm", NOTEBOOK, [RMS_NORM])
