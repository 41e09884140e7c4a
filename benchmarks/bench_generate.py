"""Generation speed with and without the KV cache, at two model sizes, as a ratio.

    python benchmarks/bench_generate.py            small (d_model 64, 2 layers) and medium
                                                   (d_model 256, 4 layers), a 32-token prompt,
                                                   96 new tokens, greedy, float32, on the CPU
    python benchmarks/bench_generate.py --quick    tiny sizes that run in a few seconds (the tests use it)

Without the cache every step re-runs the whole context (O(T^2) work over a generation); with it,
a step runs one token against the stored keys and values. Both runs use the same model and prompt
and must produce the same tokens (checked). Each path is timed in interleaved rounds on this
machine and the best round is the figure; the ratio is cached tokens/s over uncached tokens/s,
measured in the same run. Target: the cache is faster at both sizes, more so at the longer context.
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))   # run from a clone without installing

import torch  # noqa: E402

from tinymoe import ModelConfig, TinyLM, kv_cache_bytes  # noqa: E402

SIZES = {
    "full": {"small": dict(d_model=64, n_layers=2, n_heads=4, n_kv_heads=2, vocab_size=256),
             "medium": dict(d_model=256, n_layers=4, n_heads=8, n_kv_heads=2, vocab_size=1024)},
    "quick": {"small": dict(d_model=32, n_layers=2, n_heads=2, n_kv_heads=1, vocab_size=64),
              "medium": dict(d_model=64, n_layers=2, n_heads=4, n_kv_heads=2, vocab_size=128)},
}
LENGTHS = {"full": (32, 96), "quick": (8, 16)}                  # (prompt, new tokens)


@torch.no_grad()                  # inside only: a test calling run() keeps autograd on afterwards
def run(quick: bool = False, repeats: int | None = None, seed: int = 0) -> dict:
    """{size: {"cached_tokens_per_s", "uncached_tokens_per_s", "ratio", "same_tokens", "cache_bytes"}}."""
    key = "quick" if quick else "full"
    prompt_len, new_tokens = LENGTHS[key]
    repeats = repeats if repeats is not None else 2
    results = {}
    for name, dims in SIZES[key].items():
        config = ModelConfig(max_seq_len=prompt_len + new_tokens, **dims)
        torch.manual_seed(seed)
        model = TinyLM(config).eval()
        prompt = torch.randint(0, config.vocab_size, (1, prompt_len), generator=torch.Generator().manual_seed(seed))
        outputs, times = {}, {True: [], False: []}
        for _ in range(repeats):
            for use_cache in (True, False):                               # interleaved rounds
                start = time.perf_counter()
                outputs[use_cache] = model.generate(prompt, new_tokens, use_cache=use_cache)
                times[use_cache].append(time.perf_counter() - start)
        cached, uncached = new_tokens / min(times[True]), new_tokens / min(times[False])
        results[name] = {"cached_tokens_per_s": cached, "uncached_tokens_per_s": uncached,
                         "ratio": cached / uncached, "same_tokens": bool(torch.equal(outputs[True], outputs[False])),
                         "median_ratio": statistics.median(times[False]) / statistics.median(times[True]),
                         "cache_bytes": kv_cache_bytes(config, config.max_seq_len, bytes_per_value=4),
                         "dims": dims}
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--repeats", type=int, default=None)
    args = parser.parse_args()
    torch.set_num_threads(max(1, torch.get_num_threads()))
    prompt_len, new_tokens = LENGTHS["quick" if args.quick else "full"]
    print(f"greedy generation, prompt {prompt_len} tokens, {new_tokens} new tokens, float32, "
          f"{torch.get_num_threads()} threads")
    results = run(args.quick, args.repeats)
    print(f"{'size':<8} {'dims':<58} {'no cache tok/s':>15} {'cache tok/s':>12} {'ratio':>7} {'same tokens':>12}")
    for name, r in results.items():
        dims = ", ".join(f"{k}={v}" for k, v in r["dims"].items())
        print(f"{name:<8} {dims:<58} {r['uncached_tokens_per_s']:>15.1f} {r['cached_tokens_per_s']:>12.1f} "
              f"{r['ratio']:>6.2f}x {str(r['same_tokens']):>12}")
    if not all(r["same_tokens"] for r in results.values()):
        raise SystemExit("the cached and uncached generations differ")


if __name__ == "__main__":
    main()
