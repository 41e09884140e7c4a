"""How many bytes expert parallelism moves, against how much compute it saves a rank.

One forward of the layer on rank r moves, to and from the other ranks:

    counts   (world_size - 1) * (2 + top_k * n_experts) * 8 bytes     the count table (int64)
    tokens   sum_{d != r} send[d] * d_model * element_size             each kept (token, slot) pair
                                                                       whose expert lives on rank d
    results  the same again                                            expert outputs sent back

(a rank's own tokens never leave it). With a router that spreads N tokens per rank evenly over
the experts, a pair lands on another rank with probability (world_size - 1) / world_size:

    expected bytes sent per rank = 2 * N * top_k * (world_size - 1) / world_size * d_model * element_size

while the experts' compute per rank stays N * top_k * 2 * 3 * d_model * d_ff flops (a SwiGLU
expert is three d_model x d_ff products). Their ratio, 3 * d_ff / (element_size * (W - 1) / W)
flops per byte, does not depend on the number of tokens or experts at all: the link must carry
a fixed fraction of what the experts compute, which is why expert parallelism wants fast links
(NVLink inside a machine, InfiniBand between machines). The backward pass moves the same again.
"""
from __future__ import annotations

__all__ = ["exchange_bytes", "expected_bytes_per_rank", "expert_flops_per_rank", "COUNT_BYTES"]

COUNT_BYTES = 8                                                              # int64 counts


def exchange_bytes(send_counts, recv_counts, rank: int, d_model: int, element_size: int,
                   top_k: int, n_experts: int) -> dict[str, int]:
    """Bytes rank `rank` sends to the other ranks in one forward, from its routing counts.

    send_counts[d] pairs it sends to rank d, recv_counts[s] pairs it receives from rank s (and
    sends back as results). Returns {"counts", "tokens", "results", "total"}."""
    world_size = len(send_counts)
    row = d_model * element_size
    tokens = sum(int(c) for d, c in enumerate(send_counts) if d != rank) * row
    results = sum(int(c) for s, c in enumerate(recv_counts) if s != rank) * row
    counts = (world_size - 1) * (2 + top_k * n_experts) * COUNT_BYTES
    return {"counts": counts, "tokens": tokens, "results": results, "total": counts + tokens + results}


def expected_bytes_per_rank(tokens_per_rank, top_k: int, d_model: int, world_size, element_size: int = 4,
                            n_experts: int | None = None):
    """Bytes a rank sends in one forward when the router spreads tokens evenly (tokens + results,
    plus the count table when n_experts is given). Works on numbers or arrays."""
    pairs_away = tokens_per_rank * top_k * (world_size - 1) / world_size
    total = 2 * pairs_away * d_model * element_size
    if n_experts is not None:
        total = total + (world_size - 1) * (2 + top_k * n_experts) * COUNT_BYTES
    return total


def expert_flops_per_rank(tokens_per_rank, top_k: int, d_model: int, d_ff: int, gated: bool = True):
    """Multiply-adds x 2 the experts do for a rank's tokens: 3 (SwiGLU) or 2 (ReLU) products."""
    products = 3 if gated else 2
    return tokens_per_rank * top_k * 2 * products * d_model * d_ff

