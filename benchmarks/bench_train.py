"""Training speed: tokens/s of an MoE language model against its dense baseline, per dispatch backend.

    python benchmarks/bench_train.py                 notebook 08's model (d_model 64, 2 blocks, 4 experts
                                                     top-2) on 32 x 64-token batches, CPU float32
    python benchmarks/bench_train.py --size small    `python -m tinymoe.train --config small` (for a GPU)
    python benchmarks/bench_train.py --device cuda   on a GPU (adds the Triton backend)
    python benchmarks/bench_train.py --quick         a tiny size that runs in seconds (the tests use it)

Every path is a real `tinymoe.train.train` run (forward, loss, backward, AdamW step) on the
pydoc corpus: the dense baseline (`dense_baseline(config)`: the MoE's active parameters in one
SwiGLU per block) and the same MoE with each dispatch backend. Paths run in interleaved rounds of
a few steps, so a burst of load from another process hits them alike; a path's figure is the
median tokens/s over its steps (a round's first step, which warms up, is left out). The ratio
MoE / dense is what routing costs in training throughput at this size: above 1 the MoE is faster.
"""
from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))   # run from a clone without installing

import torch  # noqa: E402

from tinymoe import ModelConfig, MoEConfig, TinyLM  # noqa: E402
from tinymoe.train import TokenData, TrainConfig, dense_baseline, pydoc_text, train  # noqa: E402

SIZES = {
    "notebook": dict(model=dict(d_model=64, n_layers=2, n_heads=4, n_kv_heads=2,
                                moe=dict(n_experts=4, top_k=2, d_ff_expert=64)), batch_size=32, seq_len=64),
    "small": dict(model=dict(d_model=256, n_layers=4, n_heads=8, n_kv_heads=4,
                             moe=dict(n_experts=8, top_k=2, d_ff_expert=512)), batch_size=16, seq_len=256),
    "quick": dict(model=dict(d_model=16, n_layers=1, n_heads=2, moe=dict(n_experts=4, top_k=2, d_ff_expert=16)),
                  batch_size=4, seq_len=16),
}


def run(size: str = "notebook", rounds: int = 3, steps: int = 6, device: str = "cpu", seed: int = 0) -> dict:
    """{"tokens_per_s": {path: median}, "ratio": {path: MoE / dense}, "params": {...}, ...}."""
    spec = SIZES[size]
    data = TokenData.from_text(pydoc_text()[:100_000], "char")
    fields = dict(spec["model"])
    moe = MoEConfig(**fields.pop("moe"))
    config = ModelConfig(vocab_size=data.vocab_size, max_seq_len=spec["seq_len"], moe=moe, **fields)
    backends = ["loop", "dense", "grouped"] + (["triton"] if torch.device(device).type == "cuda" else [])
    torch.manual_seed(seed)
    models = {"dense_model": TinyLM(dense_baseline(config))}
    for backend in backends:
        torch.manual_seed(seed)
        models[f"moe_{backend}"] = TinyLM(config.replace(moe=config.moe.__class__(**{**vars(moe), "dispatch": backend})))
    run_config = TrainConfig(steps=steps, batch_size=spec["batch_size"], seq_len=spec["seq_len"], warmup_steps=0,
                             eval_every=0, eval_batches=1, device=device, progress=False)
    rates = {path: [] for path in models}
    for _ in range(rounds):
        for path, model in models.items():
            history = train(model, data, run_config)
            rates[path] += history["tokens_per_s"][1:]
    median = {path: statistics.median(r) for path, r in rates.items()}
    params = {path: sum(p.numel() for p in model.parameters()) for path, model in models.items()}
    return {"size": size, "device": device, "threads": torch.get_num_threads(), "rounds": rounds, "steps": steps,
            "tokens_per_step": run_config.tokens_per_step, "tokens_per_s": median,
            "ratio": {path: rate / median["dense_model"] for path, rate in median.items()},
            "params": {"moe_total": params[f"moe_{backends[0]}"], "dense": params["dense_model"]}}


def report(result: dict) -> str:
    lines = [f"training throughput, {result['size']} size on {result['device']} ({result['threads']} thread{'s' if result['threads'] != 1 else ''}), "
             f"{result['rounds']} interleaved rounds of {result['steps']} steps, {result['tokens_per_step']:,} tokens a step",
             f"parameters: MoE {result['params']['moe_total']:,} total; dense baseline {result['params']['dense']:,}",
             f"{'path':<14}{'tokens/s':>12}{'/ dense':>10}"]
    for path, rate in result["tokens_per_s"].items():
        lines.append(f"{path:<14}{rate:>12,.0f}{result['ratio'][path]:>10.2f}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", choices=[s for s in SIZES if s != "quick"], default="notebook", help="model size")
    parser.add_argument("--quick", action="store_true", help="a tiny model, one round of 3 steps (for the tests)")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds")
    parser.add_argument("--steps", type=int, default=6, help="training steps per path per round")
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    parser.add_argument("--threads", type=int, default=None, help="CPU threads for torch (default: torch's choice)")
    args = parser.parse_args(argv)
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    if args.quick:
        result = run("quick", rounds=1, steps=3, device=args.device)
    else:
        result = run(args.size, args.rounds, args.steps, args.device)
    print(report(result))
    return result


if __name__ == "__main__":
    main()
