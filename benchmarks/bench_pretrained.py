"""SmolLM2-135M on TinyLM against transformers' LlamaForCausalLM on the same file: prefill and
generation tokens/s, same prompt, same thread count, measured in one run, as ratios.

    python benchmarks/bench_pretrained.py              a 64-token prompt, 32 greedy new tokens
    python benchmarks/bench_pretrained.py --quick      a 16-token prompt, 8 new tokens (the tests use it)

Both models are float32 on the CPU with the same `torch.set_num_threads`. Prefill is one forward
pass over the prompt; generation is greedy decoding with each library's KV cache (ours:
tinymoe/kv_cache.py, theirs: DynamicCache), timed in interleaved rounds, best round kept. The
generated tokens are checked to be identical. Target: TinyLM no slower than transformers (ratio >= 1).
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))   # run from a clone without installing

import torch  # noqa: E402

from tinymoe.pretrained import GGUFTokenizer, load_gguf_model, read_gguf, smollm2_path  # noqa: E402

TEXT = ("Python's documentation describes the language and its standard library. Each topic explains "
        "a statement, an expression or a data model hook, with examples that run as written. ") * 4


def _best(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


@torch.no_grad()                  # inside only: a test calling run() keeps autograd on afterwards
def run(quick: bool = False, repeats: int = 2, threads: int | None = None, models=None) -> dict:
    """models: an already loaded (TinyLM, LlamaForCausalLM, GGUFTokenizer) triple (the tests pass theirs)."""
    import transformers
    if threads:
        torch.set_num_threads(threads)
    prompt_len, new_tokens = (16, 8) if quick else (64, 32)
    if models is None:
        gguf = read_gguf()
        path = smollm2_path()
        models = (load_gguf_model(gguf, max_seq_len=prompt_len + new_tokens + 8),
                  transformers.LlamaForCausalLM.from_pretrained(path.parent, gguf_file=path.name,
                                                                dtype=torch.float32).eval(),
                  GGUFTokenizer(gguf))
    ours, theirs, tokenizer = models
    ids = torch.tensor([tokenizer.encode(TEXT)[:prompt_len]])
    tokens = {}

    def ours_generate():
        tokens["ours"] = ours.generate(ids, new_tokens)

    def theirs_generate():
        tokens["theirs"] = theirs.generate(ids, max_new_tokens=new_tokens, do_sample=False, eos_token_id=None,
                                           pad_token_id=0)

    times = {"ours_prefill": [], "theirs_prefill": [], "ours_generate": [], "theirs_generate": []}
    for _ in range(repeats):                                            # interleaved rounds
        times["ours_prefill"].append(_best(lambda: ours(ids), 1))
        times["theirs_prefill"].append(_best(lambda: theirs(ids), 1))
        times["ours_generate"].append(_best(ours_generate, 1))
        times["theirs_generate"].append(_best(theirs_generate, 1))
    best = {k: min(v) for k, v in times.items()}
    result = {
        "threads": torch.get_num_threads(), "prompt_tokens": prompt_len, "new_tokens": new_tokens,
        "ours_prefill_tokens_per_s": prompt_len / best["ours_prefill"],
        "theirs_prefill_tokens_per_s": prompt_len / best["theirs_prefill"],
        "ours_generate_tokens_per_s": new_tokens / best["ours_generate"],
        "theirs_generate_tokens_per_s": new_tokens / best["theirs_generate"],
        "same_tokens": bool(torch.equal(tokens["ours"], tokens["theirs"])),
    }
    result["prefill_ratio"] = result["ours_prefill_tokens_per_s"] / result["theirs_prefill_tokens_per_s"]
    result["generate_ratio"] = result["ours_generate_tokens_per_s"] / result["theirs_generate_tokens_per_s"]
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="a short prompt and 8 new tokens")
    parser.add_argument("--repeats", type=int, default=2, help="interleaved rounds; the best is kept")
    parser.add_argument("--threads", type=int, default=None, help="torch threads for both (default: torch's)")
    args = parser.parse_args()
    r = run(quick=args.quick, repeats=args.repeats, threads=args.threads)
    print(f"SmolLM2-135M, float32, CPU, {r['threads']} threads, prompt {r['prompt_tokens']} tokens, "
          f"{r['new_tokens']} new tokens (greedy, KV cache)")
    print(f"{'':10s} {'TinyLM':>12s} {'transformers':>14s} {'ratio':>7s}")
    for what in ("prefill", "generate"):
        print(f"{what:10s} {r[f'ours_{what}_tokens_per_s']:9.1f} t/s {r[f'theirs_{what}_tokens_per_s']:11.1f} t/s "
              f"{r[f'{what}_ratio']:6.2f}x  {'(target >= 1: met)' if r[f'{what}_ratio'] >= 1 else '(target >= 1: NOT met)'}")
    print("same greedy tokens:", r["same_tokens"])


if __name__ == "__main__":
    main()
