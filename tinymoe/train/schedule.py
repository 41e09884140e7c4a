"""The learning-rate schedule: linear warm-up, then a cosine down to a floor.

    lr(s) = lr * (s + 1) / warmup_steps                                  s < warmup_steps
    lr(s) = lr * (r + (1 - r) * (1 + cos(pi * p)) / 2),  p = (s - w) / (steps - w)   after

with r = min_lr_ratio. Warm-up keeps the first, large and noisy Adam updates small while its
second-moment estimates settle (Goyal et al. 2017; every GPT/Llama recipe); the cosine lets the
model settle into a minimum at the end (Loshchilov & Hutter 2017, SGDR). min_lr_ratio = 1 and
warmup_steps = 0 give a constant learning rate.
"""
from __future__ import annotations

import math

import torch

__all__ = ["lr_factor", "make_scheduler"]


def lr_factor(step: int, steps: int, warmup_steps: int, min_lr_ratio: float) -> float:
    """The multiple of the base learning rate used for optimizer step `step` (0-based)."""
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    progress = min(1.0, (step - warmup_steps) / max(1, steps - warmup_steps))   # 0 -> 1 over the decay
    return min_lr_ratio + (1 - min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress))


class _Factor:
    """lr_factor with its settings bound (a picklable object, so the scheduler's state saves)."""

    def __init__(self, steps: int, warmup_steps: int, min_lr_ratio: float):
        self.steps, self.warmup_steps, self.min_lr_ratio = steps, warmup_steps, min_lr_ratio

    def __call__(self, step: int) -> float:
        return lr_factor(step, self.steps, self.warmup_steps, self.min_lr_ratio)


def make_scheduler(optimizer: torch.optim.Optimizer, steps: int, warmup_steps: int,
                   min_lr_ratio: float) -> torch.optim.lr_scheduler.LambdaLR:
    """A LambdaLR that sets lr * lr_factor(step) before every optimizer step."""
    return torch.optim.lr_scheduler.LambdaLR(optimizer, _Factor(steps, warmup_steps, min_lr_ratio))
