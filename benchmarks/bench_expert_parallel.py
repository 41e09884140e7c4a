"""The expert-parallel MoE layer on 2 and 4 CPU processes against the one-process layer, with the bytes moved.

    python benchmarks/bench_expert_parallel.py            d_model 256, d_ff 512 (SwiGLU), 8 experts, top-2,
                                                          2048 tokens in all, float32, forward + backward
    python benchmarks/bench_expert_parallel.py --quick    a small size (the tests use it)

Every configuration runs in freshly launched processes (`tinymoe.distributed.launch`, gloo over
loopback, one thread each), the baseline too: one process running `tinymoe.moe.MoE` on the whole
batch. With W ranks each holds n_experts / W experts and 1 / W of the batch. A step is timed from
a barrier to the end of its backward pass on every rank; the step time is the slowest rank's, the
figure is the best of the rounds (the one least disturbed by other work), the median beside it.
The ratio is step time / the one-process step time, on this machine: on a CPU with fewer cores than
ranks the processes take turns, so the ratio shows the exchange's overhead rather than a speed-up.
The bytes are those each rank's buffers carried to other ranks (tokens out, results back, the count
table), measured in a traced step, against `exchange_bytes` (from the counts) and the even-routing
formula `expected_bytes_per_rank`.
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))   # run from a clone without installing

import torch  # noqa: E402
import torch.distributed as dist  # noqa: E402

from tinymoe import ModelConfig, MoEConfig, Trace  # noqa: E402
from tinymoe.distributed import (ExpertParallelMoE, exchange_bytes, expected_bytes_per_rank,  # noqa: E402
                                 launch)
from tinymoe.moe import MoE  # noqa: E402

SIZES = {
    "full": dict(d_model=256, d_ff=512, n_experts=8, top_k=2, tokens=2048),
    "quick": dict(d_model=32, d_ff=64, n_experts=8, top_k=2, tokens=256),
}


def time_rank(group, config: ModelConfig, tokens: int, repeats: int, seed: int = 0) -> dict:
    """On each rank: `repeats` timed forward + backward steps (after one warm-up), then a traced step.
    world_size 1 runs the one-process MoE on the whole batch (the baseline)."""
    torch.manual_seed(seed)
    reference = MoE(config)
    W, rank = group.world_size, group.rank
    per_rank = tokens // W
    x = torch.randn(1, tokens, config.d_model, generator=torch.Generator().manual_seed(seed + 1))
    mine = x[:, rank * per_rank:(rank + 1) * per_rank]                      # (1, tokens / W, d_model)
    layer = reference if W == 1 else ExpertParallelMoE(config, group, name="moe").load_from(reference)

    def step(trace=None):
        out, losses = layer(mine, trace)
        (out.square().mean() + sum(losses.values())).backward()

    step()
    seconds = []
    for _ in range(repeats):
        dist.barrier()
        start = time.perf_counter()
        step()
        seconds.append(time.perf_counter() - start)
    trace = Trace()
    step(trace)
    result = {"seconds": seconds}
    if W > 1:
        result.update({name: trace[f"moe.{name}"].tolist() for name in ("send_counts", "recv_counts", "bytes_moved")})
    return result


def run(quick: bool = False, world_sizes=(2, 4), repeats: int | None = None) -> dict:
    """{"sizes", "single" (seconds), "best": {W: s}, "median": {W: s}, "ratio": {W: best / single best},
    "bytes": {W: [per rank measured]}, "counted": {W: [...]}, "expected": {W: bytes}}."""
    size = SIZES["quick" if quick else "full"]
    repeats = repeats if repeats is not None else (3 if quick else 10)
    config = ModelConfig(d_model=size["d_model"], n_heads=1, d_ff=size["d_ff"],
                         moe=MoEConfig(n_experts=size["n_experts"], top_k=size["top_k"]))
    report = {"size": "quick" if quick else "full", "sizes": size, "repeats": repeats,
              "best": {}, "median": {}, "ratio": {}, "bytes": {}, "counted": {}, "expected": {}}
    single = launch(time_rank, 1, args=(config, size["tokens"], repeats), timeout=600)[0]["seconds"]
    report["single"] = {"best": min(single), "median": statistics.median(single)}
    for W in world_sizes:
        ranks = launch(time_rank, W, args=(config, size["tokens"], repeats), timeout=600, collective_timeout=120)
        steps = [max(r["seconds"][i] for r in ranks) for i in range(repeats)]   # the slowest rank sets the pace
        report["best"][W], report["median"][W] = min(steps), statistics.median(steps)
        report["ratio"][W] = min(steps) / min(single)
        report["bytes"][W] = [r["bytes_moved"] for r in ranks]
        report["counted"][W] = [exchange_bytes(r["send_counts"], r["recv_counts"], rank, size["d_model"], 4,
                                               size["top_k"], size["n_experts"])["total"] for rank, r in enumerate(ranks)]
        report["expected"][W] = expected_bytes_per_rank(size["tokens"] // W, size["top_k"], size["d_model"], W, 4,
                                                        n_experts=size["n_experts"])
    return report


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="a small size that runs in seconds")
    parser.add_argument("--repeats", type=int, default=None, help="timed steps per configuration")
    parser.add_argument("--world-sizes", type=int, nargs="+", default=[2, 4])
    args = parser.parse_args()
    report = run(args.quick, tuple(args.world_sizes), args.repeats)
    s = report["sizes"]
    print(f"expert-parallel MoE, {report['size']} size: d_model {s['d_model']}, d_ff {s['d_ff']}, {s['n_experts']} experts, "
          f"top-{s['top_k']}, {s['tokens']} tokens in all, float32, forward + backward, "
          f"best of {report['repeats']} steps, gloo on this CPU")
    print(f"{'layer':<14}{'best ms':>10}{'median ms':>11}{'ratio':>8}   bytes moved per rank (measured / counted / even-routing formula)")
    print(f"{'one process':<14}{report['single']['best'] * 1e3:>10.2f}{report['single']['median'] * 1e3:>11.2f}{1.0:>8.2f}")
    for W in report["best"]:
        measured, counted = report["bytes"][W], report["counted"][W]
        print(f"{f'{W} processes':<14}{report['best'][W] * 1e3:>10.2f}{report['median'][W] * 1e3:>11.2f}"
              f"{report['ratio'][W]:>8.2f}   {measured} / {counted} / {report['expected'][W]:,.0f}")
    agree = all(report["bytes"][W] == report["counted"][W] for W in report["bytes"])
    print(f"measured bytes equal the counted bytes: {agree}")
    return 0 if agree else 1


if __name__ == "__main__":
    sys.exit(main())
