"""One expert-parallel step, checked against the one-process layer: for the notebook and torchrun.

From Python (the notebook), on this machine:

    from tinymoe.distributed import launch
    from tinymoe.distributed.demo import run_step
    traces = launch(run_step, world_size=2, args=(config, tokens_per_rank))

From a shell, on several GPUs or machines (NCCL when there are GPUs, gloo otherwise):

    torchrun --nproc-per-node=8 -m tinymoe.distributed.demo --tokens 4096 --d-model 1024 --experts 64

Each rank builds the same one-process `MoE` from the same seed, keeps its slice of the experts,
runs its own share of the tokens forward and backward, and reports its trace and how far its
output is from the one-process layer's on the same tokens.
"""
from __future__ import annotations

import argparse
import sys
import time

import torch
import torch.distributed as dist

from ..config import ModelConfig, MoEConfig
from ..moe import MoE
from ..trace import Trace
from .group import ExpertParallelGroup, init_group
from .layer import ExpertParallelMoE

__all__ = ["run_step", "run_steps", "main"]


def run_step(group: ExpertParallelGroup, config: ModelConfig, tokens_per_rank: int, seed: int = 0,
             check: bool = True, device: str | torch.device = "cpu") -> dict:
    """Rank `group.rank`'s forward and backward of one step. Returns {"trace", "max_abs_diff",
    "seconds"}; the diff is against the one-process layer on all ranks' tokens (check=False skips it)."""
    torch.manual_seed(seed)
    reference = MoE(config).to(device)                                     # the same weights on every rank
    W, rank = group.world_size, group.rank
    x = torch.randn(W, tokens_per_rank, config.d_model, generator=torch.Generator().manual_seed(seed + 1)).to(device)
    layer = ExpertParallelMoE(config, group).to(device).load_from(reference)
    trace = Trace()
    start = time.perf_counter()
    out, losses = layer(x[rank:rank + 1], trace)                            # (1, tokens_per_rank, d_model)
    (out.square().sum() + sum(losses.values())).backward()
    seconds = time.perf_counter() - start
    max_abs_diff = None
    if check:
        with torch.no_grad():
            expected, _ = reference(x.reshape(1, W * tokens_per_rank, config.d_model))  # (1, W*N, d_model)
        mine = expected[:, rank * tokens_per_rank:(rank + 1) * tokens_per_rank]
        max_abs_diff = float((out.detach() - mine).abs().max()) if tokens_per_rank else 0.0
    return {"trace": trace, "max_abs_diff": max_abs_diff, "seconds": seconds}


def run_steps(group: ExpertParallelGroup, runs: list[tuple[ModelConfig, int]], seed: int = 0) -> list[dict]:
    """Several `run_step`s in one launch (starting processes is the slow part): [(config, tokens_per_rank), ...]."""
    return [run_step(group, config, tokens, seed) for config, tokens in runs]


def main(argv: list[str] | None = None) -> None:
    """Entry point under torchrun: every rank runs one step and prints its traffic."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tokens", type=int, default=64, help="tokens per rank")
    parser.add_argument("--d-model", type=int, default=64)
    parser.add_argument("--d-ff", type=int, default=128, help="hidden size of one expert")
    parser.add_argument("--experts", type=int, default=8)
    parser.add_argument("--top-k", type=int, default=2)
    parser.add_argument("--capacity-factor", type=float, default=None)
    parser.add_argument("--timeout", type=float, default=60.0, help="seconds before a collective gives up")
    parser.add_argument("--no-check", action="store_true", help="skip the one-process comparison (large sizes)")
    args = parser.parse_args(argv)
    group = init_group(timeout=args.timeout)
    device = torch.device("cuda", torch.cuda.current_device()) if group.backend == "nccl" else torch.device("cpu")
    config = ModelConfig(d_model=args.d_model, n_heads=1, d_ff=args.d_ff, moe=MoEConfig(
        n_experts=args.experts, top_k=args.top_k, capacity_factor=args.capacity_factor))
    result = run_step(group, config, args.tokens, check=not args.no_check, device=device)
    trace = result["trace"]
    diff = "" if result["max_abs_diff"] is None else f", |out - one process| <= {result['max_abs_diff']:.1e}"
    first = group.rank * args.experts // group.world_size
    line = (f"rank {group.rank}/{group.world_size} ({group.backend}): experts {first}..{first + args.experts // group.world_size - 1}, "
            f"sent {trace['moe.send_counts'].tolist()} pairs, received {trace['moe.recv_counts'].tolist()}, "
            f"{int(trace['moe.bytes_moved'])} bytes moved, step {result['seconds'] * 1e3:.1f} ms{diff}\n")
    sys.stdout.write(line)                     # one write: the ranks share the terminal, lines must not interleave
    sys.stdout.flush()
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
