"""All-to-all with uneven splits, and its gradient: the same all-to-all with the splits swapped.

Each rank has a buffer of rows cut into world_size consecutive chunks, chunk d for rank d
(send_counts[d] rows). After the all-to-all, each rank holds the chunks the others cut for it,
in rank order (recv_counts[s] rows from rank s):

    rank 0 sends [a0 | a1]        rank 0 receives [a0 | b0]
    rank 1 sends [b0 | b1]        rank 1 receives [a1 | b1]

It is a transpose of the (sender, receiver) grid of chunks. Chunks may be empty and of any
size, which is what MoE traffic looks like: a rank sends each other rank as many tokens as
chose that rank's experts (`torch.distributed.all_to_all_single` with split sizes).

Backward: the gradient of a received row belongs to the rank that sent the row, so the
gradients travel back by the transposed grid: an all-to-all with send and receive counts
swapped. (`torch.distributed.nn.functional.all_to_all_single` does the same; it is written out
here because this is the step the notebook teaches.)
"""
from __future__ import annotations

from typing import Callable

import torch
import torch.distributed as dist

__all__ = ["all_to_all"]


def _exchange(x: torch.Tensor, send_counts: list[int], recv_counts: list[int], group) -> torch.Tensor:
    out = x.new_empty((sum(recv_counts), *x.shape[1:]))                  # (sum recv, ...)
    dist.all_to_all_single(out, x.contiguous(), output_split_sizes=recv_counts, input_split_sizes=send_counts,
                           group=group)
    return out


class _AllToAll(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, send_counts, recv_counts, group, on_error):
        ctx.send_counts, ctx.recv_counts, ctx.group, ctx.on_error = send_counts, recv_counts, group, on_error
        try:
            return _exchange(x, send_counts, recv_counts, group)
        except RuntimeError as error:
            on_error("forward", error)
            raise

    @staticmethod
    def backward(ctx, grad_out):
        try:                                                             # the transposed grid
            grad_x = _exchange(grad_out, ctx.recv_counts, ctx.send_counts, ctx.group)
        except RuntimeError as error:
            ctx.on_error("backward", error)
            raise
        return grad_x, None, None, None, None


def _reraise(phase: str, error: Exception) -> None:
    """Default: let the error through unchanged."""


def all_to_all(x: torch.Tensor, send_counts: list[int], recv_counts: list[int], group=None,
               on_error: Callable[[str, Exception], None] = _reraise) -> torch.Tensor:
    """x (sum(send_counts), ...) -> (sum(recv_counts), ...): chunk d of x goes to rank d.

    Differentiable. on_error(phase, error) may raise a clearer error when the exchange fails
    ("forward" or "backward")."""
    if x.shape[0] != sum(send_counts):
        raise ValueError(f"x has {x.shape[0]} rows but send_counts {send_counts} add up to {sum(send_counts)}")
    return _AllToAll.apply(x, list(send_counts), list(recv_counts), group, on_error)
