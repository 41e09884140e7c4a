"""The MoE layer's forward at real sizes: Triton kernels against the PyTorch paths, stage by stage.

    .venv/bin/python benchmarks/bench_triton.py            # all shapes, tokens 1 .. 32768 (a GPU)
    .venv/bin/python benchmarks/bench_triton.py --quick    # a few points per shape

Shapes (d_model, d_ff per expert, n_experts, top_k), as the models ship:
    Mixtral-8x7B     4096  14336    8  2
    Qwen3-30B-A3B    2048    768  128  8
    DeepSeek-V3      7168   2048  256  8      (routed experts only; the shared expert is a dense MLP)
Routing: random (softmax of random logits), balanced (every expert gets the same count),
skewed (expert popularity ~ 1 / rank, the hot-expert case).

Side by side, in one run, the layer's routed part out = sum_k g_k expert_k(x):
    loop        tinymoe.moe.dispatch_loop: one PyTorch pass per expert (Hugging Face's Mixtral)
    grouped_mm  sort by expert in PyTorch, torch._grouped_mm for the three projections (if this
                torch build has it for this device and dtype)
    dense       one plain GEMM over tokens * top_k rows with the same FLOPs, no routing at all:
                the in-run ceiling a grouped GEMM can hope to reach
    triton      tinymoe.kernels: route + align + gate_up + down + combine, each also timed alone

Figures: time (ms, median), TFLOP/s with the layer's 6 * tokens * top_k * d_model * d_ff,
GB/s of the bytes a stage must move at least, % of the in-run dense GEMM, and % of the roofline
max(flops / peak, bytes / bandwidth) for the detected GPU (its spec-sheet dense numbers).
Writes benchmarks/results/bench_triton_<device>.csv and .png (the folder is git-ignored).

Without a GPU it says so and runs one tiny shape in Triton's interpreter (numpy on the CPU),
in float32 (the interpreter has no bfloat16 matrix products), so the script cannot rot: those
timings measure the interpreter, not the kernels.
"""
from __future__ import annotations

import argparse
import csv
import math
import os
import statistics
import sys
import time
from pathlib import Path

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from tinymoe.kernels import align, combine, gate_up, grouped_matmul, interpreted, tile_config, triton_route  # noqa: E402
from tinymoe.kernels import triton_moe_dispatch  # noqa: E402
from tinymoe.moe.dispatch import dispatch_loop  # noqa: E402

SHAPES = {   # name: (d_model, d_ff, n_experts, top_k)
    "Mixtral-8x7B": (4096, 14336, 8, 2),
    "Qwen3-30B-A3B": (2048, 768, 128, 8),
    "DeepSeek-V3": (7168, 2048, 256, 8),
}
TINY = {"tiny (interpreter)": (32, 48, 8, 2)}
TOKENS = [1, 16, 128, 1024, 4096, 8192, 32768]
ROUTINGS = ("random", "balanced", "skewed")

# Spec-sheet dense peaks: (16-bit tensor-core TFLOP/s, float32 TFLOP/s, memory GB/s). First match wins.
GPUS = [
    ("H100 PCIe", (756.0, 51.0, 2000.0)),
    ("H100 NVL", (835.0, 60.0, 3900.0)),
    ("H100", (989.4, 66.9, 3350.0)),
    ("H200", (989.4, 66.9, 4800.0)),
    ("B200", (2250.0, 80.0, 8000.0)),
    ("A100", (312.0, 19.5, 2039.0)),
    ("L40S", (362.0, 91.6, 864.0)),
    ("L4", (121.0, 30.3, 300.0)),
    ("A10", (125.0, 31.2, 600.0)),
    ("4090", (165.2, 82.6, 1008.0)),
]


def gpu_peaks(name: str):
    for key, peaks in GPUS:
        if key in name:
            return peaks
    return None


# ---- timing --------------------------------------------------------------------------------

def bench(fn, reps: int) -> float:
    """Median milliseconds of fn() (triton.testing.do_bench on a GPU, a plain clock in the interpreter)."""
    if torch.cuda.is_available() and not interpreted():
        import triton.testing
        return triton.testing.do_bench(fn, warmup=10, rep=max(reps * 10, 50), return_mode="median")
    fn()                                                                     # warm-up (and first-call compile)
    times = []
    for _ in range(reps):
        start = time.perf_counter()
        fn()
        times.append((time.perf_counter() - start) * 1e3)
    return statistics.median(times)


# ---- routing situations --------------------------------------------------------------------

def make_logits(routing: str, n_tokens: int, n_experts: int, top_k: int, device, generator) -> torch.Tensor:
    """Router logits whose top-k gives the named situation (all dropless)."""
    if routing == "random":
        return torch.randn(n_tokens, n_experts, generator=generator, device=device)
    if routing == "balanced":
        # token t prefers experts t*k, t*k+1, ... (mod E): every expert gets the same count
        ranks = (torch.arange(n_experts, device=device)[None, :] - torch.arange(n_tokens, device=device)[:, None] * top_k)
        return -(ranks % n_experts).float()
    if routing == "skewed":
        # Gumbel top-k sampling with popularity ~ 1/rank: experts 0, 1, ... are hot
        popularity = 1.0 / torch.arange(1, n_experts + 1, device=device).float()
        gumbel = -torch.log(-torch.log(torch.rand(n_tokens, n_experts, generator=generator, device=device)))
        return popularity.log()[None, :] + gumbel
    raise ValueError(routing)


# ---- the backends --------------------------------------------------------------------------

def grouped_mm_pipeline(x, ids, gates, w_gate, w_up, w_down):
    """Sort by expert in PyTorch, then torch._grouped_mm per projection (no host sync)."""
    n_tokens, top_k = ids.shape
    flat = ids.reshape(-1)
    order = torch.argsort(flat, stable=True)                                # (n_pairs,)
    ends = torch.bincount(flat, minlength=w_up.shape[0]).cumsum(0).to(torch.int32)   # (E,) segment ends
    x_sorted = x[order // top_k]                                             # (n_pairs, d_model)
    gate = torch._grouped_mm(x_sorted, w_gate.transpose(1, 2), offs=ends)   # (n_pairs, d_ff)
    up = torch._grouped_mm(x_sorted, w_up.transpose(1, 2), offs=ends)
    hidden = torch.nn.functional.silu(gate) * up
    y = torch._grouped_mm(hidden, w_down.transpose(1, 2), offs=ends)        # (n_pairs, d_model)
    y = y.float() * gates.reshape(-1)[order, None]
    cells = torch.zeros_like(y).index_copy_(0, order, y)
    return cells.view(n_tokens, top_k, -1).sum(1).to(x.dtype)


def grouped_mm_available(x, ids, gates, w_gate, w_up, w_down) -> str | None:
    """None if torch._grouped_mm runs here (and agrees with the loop), else the reason it does not."""
    if not hasattr(torch, "_grouped_mm"):
        return "this torch has no torch._grouped_mm"
    try:
        small = slice(0, min(64, x.shape[0]))
        out = grouped_mm_pipeline(x[small], ids[small], gates[small], w_gate, w_up, w_down)
        ref = dispatch_loop(x[small], ids[small].long(), gates[small], w_gate, w_up, w_down)
        if not torch.allclose(out.float(), ref.float(), rtol=5e-2, atol=5e-2 * ref.float().abs().max().item()):
            return "torch._grouped_mm disagrees with the loop path here"
    except Exception as error:                                             # unsupported device / dtype / layout
        return f"torch._grouped_mm unavailable: {str(error).splitlines()[0][:80]}"
    return None


# ---- one point -----------------------------------------------------------------------------

def make_weights(shape, dtype, device, generator):
    """Stacked expert weights (nn.Linear layout), made once per model: DeepSeek-V3's are 22 GB in bfloat16."""
    d_model, d_ff, n_experts, _ = shape

    def stacked(rows, cols):                                                # one expert at a time: no float32 copy of all
        w = torch.empty(n_experts, rows, cols, device=device, dtype=dtype)
        for e in range(n_experts):
            w[e] = torch.randn(rows, cols, generator=generator, device=device) / math.sqrt(cols)
        return w
    return stacked(d_ff, d_model), stacked(d_ff, d_model), stacked(d_model, d_ff)


def measure(model, shape, weights, routing, n_tokens, dtype, device, reps, generator):
    d_model, d_ff, n_experts, top_k = shape
    elt = torch.tensor([], dtype=dtype).element_size()
    scale = 1 / math.sqrt(d_model)
    w_gate, w_up, w_down = weights
    x = torch.randn(n_tokens, d_model, generator=generator, device=device).to(dtype)
    logits = make_logits(routing, n_tokens, n_experts, top_k, device, generator)
    routing_out = triton_route(logits, top_k)
    ids, gates = routing_out.expert_ids.long(), routing_out.weights

    n_pairs = n_tokens * top_k
    flops = 6 * n_pairs * d_model * d_ff
    active = int((routing_out.expert_counts > 0).sum())
    weight_bytes = 3 * active * d_model * d_ff * elt                        # each active expert's weights, once
    act_bytes = (2 * n_tokens * d_model + 2 * n_pairs * d_ff + 2 * n_pairs * d_model) * elt   # x, out; hidden; rows
    layer_bytes = weight_bytes + act_bytes

    rows_per_expert = n_pairs / n_experts
    config_up = tile_config(rows_per_expert, d_ff, d_model, dtype)
    config_down = tile_config(rows_per_expert, d_model, d_ff, dtype)
    alignment = align(routing_out.expert_ids, n_experts, config_up.block_m, block_counts=routing_out.block_counts,
                      block_tokens=routing_out.block_tokens)
    hidden, _, _ = gate_up(x, w_gate, w_up, alignment, config_up)
    rows = grouped_matmul(hidden, w_down, alignment, config_down, gather_rows=False, row_scales=gates.reshape(-1))

    stages = {   # name: (fn, flops, bytes)
        "route": (lambda: triton_route(logits, top_k), 0, n_tokens * n_experts * 4 + n_pairs * 8),
        "align": (lambda: align(routing_out.expert_ids, n_experts, config_up.block_m,
                                block_counts=routing_out.block_counts, block_tokens=routing_out.block_tokens),
                  0, n_pairs * 4 * 3 + alignment.n_rows * 4),
        "gate_up": (lambda: gate_up(x, w_gate, w_up, alignment, config_up), 4 * n_pairs * d_model * d_ff,
                    (2 * active * d_model * d_ff + n_pairs * d_model + n_pairs * d_ff) * elt),
        "down": (lambda: grouped_matmul(hidden, w_down, alignment, config_down, gather_rows=False,
                                        row_scales=gates.reshape(-1)), 2 * n_pairs * d_model * d_ff,
                 (active * d_model * d_ff + n_pairs * d_ff + n_pairs * d_model) * elt),
        "combine": (lambda: combine(rows, alignment, out_dtype=dtype), 0, (n_pairs + n_tokens) * d_model * elt),
    }

    # the dense ceiling: the same FLOPs as plain GEMMs over n_pairs rows
    a = torch.randn(n_pairs, d_model, generator=generator, device=device).to(dtype)
    w_gate_up_dense = torch.randn(d_model, 2 * d_ff, generator=generator, device=device).to(dtype) * scale
    w_down_dense = torch.randn(d_ff, d_model, generator=generator, device=device).to(dtype) / math.sqrt(d_ff)
    h = torch.empty(n_pairs, 2 * d_ff, device=device, dtype=dtype)

    def dense():
        torch.mm(a, w_gate_up_dense, out=h)
        return torch.mm(h[:, :d_ff], w_down_dense)

    backends = {
        "loop": (lambda: dispatch_loop(x, ids, gates, w_gate, w_up, w_down), layer_bytes),
        "grouped_mm": (lambda: grouped_mm_pipeline(x, ids, gates, w_gate, w_up, w_down), layer_bytes),
        "dense": (dense, (2 * d_model * d_ff + d_ff * d_model) * elt + act_bytes),
        "triton": (lambda: triton_moe_dispatch(x, ids, gates, w_gate, w_up, w_down), layer_bytes),
    }
    skip = {"grouped_mm": grouped_mm_available(x, ids, gates, w_gate, w_up, w_down)}

    peaks = gpu_peaks(torch.cuda.get_device_name()) if device.type == "cuda" else None
    peak_flops = None if peaks is None else (peaks[1] if dtype == torch.float32 else peaks[0]) * 1e12
    bandwidth = None if peaks is None else peaks[2] * 1e9

    def row(kind, name, ms, f, b, note=""):
        seconds = ms / 1e3
        roof = (max(f / peak_flops, b / bandwidth) if peak_flops else None)
        return {"model": model, "routing": routing, "tokens": n_tokens, "kind": kind, "name": name,
                "ms": ms, "tflops": f / seconds / 1e12 if f else None, "gbps": b / seconds / 1e9,
                "pct_dense": None, "pct_roofline": 100 * roof / seconds if roof else None,
                "pct_layer": None, "note": note}

    with torch.no_grad():
        results = []
        for name, (fn, b) in backends.items():
            if skip.get(name):
                results.append({**row("layer", name, float("nan"), flops, b), "ms": None, "tflops": None,
                                "gbps": None, "note": skip[name]})
                continue
            results.append(row("layer", name, bench(fn, reps), flops, b))
        for name, (fn, f, b) in stages.items():
            results.append(row("stage", f"triton.{name}", bench(fn, reps), f, b))
    dense_ms = next(r["ms"] for r in results if r["name"] == "dense")
    triton_ms = next(r["ms"] for r in results if r["name"] == "triton")
    for r in results:
        if r["kind"] == "layer" and r["ms"] is not None:
            r["pct_dense"] = 100 * dense_ms / r["ms"]                      # > 100: faster than the dense ceiling
        if r["kind"] == "stage":
            r["pct_layer"] = 100 * r["ms"] / triton_ms                     # share of the triton layer's time
    return results


def fmt(value, spec=".3g") -> str:
    return "-" if value is None else format(value, spec)


def print_table(results):
    """%dense: the dense GEMM's time over this one's; %roof: roofline time over this one's;
    %layer: a stage's share of the triton layer's time."""
    header = (f"{'model':<20}{'routing':<10}{'tokens':>7}  {'backend':<16}{'ms':>9}{'TFLOP/s':>9}{'GB/s':>9}"
              f"{'%dense':>8}{'%roof':>7}{'%layer':>8}  note")
    print(header)
    print("-" * len(header))
    for r in results:
        print(f"{r['model']:<20}{r['routing']:<10}{r['tokens']:>7}  {r['name']:<16}{fmt(r['ms']):>9}"
              f"{fmt(r['tflops']):>9}{fmt(r['gbps']):>9}{fmt(r['pct_dense'], '.0f'):>8}"
              f"{fmt(r['pct_roofline'], '.0f'):>7}{fmt(r['pct_layer'], '.0f'):>8}  {r['note']}")


def plot(results, path=None):
    """Per model (columns): time and TFLOP/s against tokens for each backend, random routing.
    Saves to `path` (and closes the figure) when given; returns the figure otherwise."""
    import matplotlib.pyplot as plt
    models = list(dict.fromkeys(r["model"] for r in results))
    fig, axes = plt.subplots(2, len(models), figsize=(5 * len(models), 7), squeeze=False)
    for column, model in enumerate(models):
        for name in ("loop", "grouped_mm", "dense", "triton"):
            points = [(r["tokens"], r["ms"], r["tflops"]) for r in results if r["model"] == model
                      and r["name"] == name and r["kind"] == "layer" and r["routing"] == "random"
                      and r["ms"] is not None]
            if points:
                tokens, ms, tflops = zip(*points)
                axes[0, column].plot(tokens, ms, marker="o", label=name)
                axes[1, column].plot(tokens, tflops, marker="o", label=name)
        axes[0, column].set(xscale="log", yscale="log", ylabel="ms (median)", title=f"{model}, random routing")
        axes[1, column].set(xscale="log", yscale="log", xlabel="tokens", ylabel="TFLOP/s (6 T k d d_ff / time)")
        for ax in axes[:, column]:
            ax.grid(True, which="both", alpha=0.3)
            ax.legend(fontsize=8)
    fig.tight_layout()
    if path is None:
        return fig
    fig.savefig(path, dpi=100)
    plt.close(fig)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="a few token counts, random routing only")
    parser.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float16", "float32"])
    parser.add_argument("--models", nargs="*", default=list(SHAPES), help="subset of " + ", ".join(SHAPES))
    parser.add_argument("--out", default=str(Path(__file__).resolve().parent / "results"))
    args = parser.parse_args(argv)
    import matplotlib
    matplotlib.use("Agg")                                                  # files only, no window

    gpu = torch.cuda.is_available() and not interpreted()
    generator_device = "cuda" if gpu else "cpu"
    if gpu:
        device, dtype = torch.device("cuda"), getattr(torch, args.dtype)
        shapes = {m: SHAPES[m] for m in args.models}
        tokens = [128, 4096] if args.quick else TOKENS
        routings = ("random",) if args.quick else ROUTINGS
        reps = 10
        device_name = torch.cuda.get_device_name()
        peaks = gpu_peaks(device_name)
        print(f"GPU: {device_name}; peaks {'unknown: no roofline column' if peaks is None else peaks} "
              f"(16-bit TFLOP/s, float32 TFLOP/s, GB/s); dtype {args.dtype}")
    else:
        device, dtype = torch.device("cpu"), torch.float32
        shapes = TINY
        tokens = [16] if args.quick else [16, 64]
        routings = ("random",) if args.quick else ROUTINGS
        reps = 2
        device_name = "cpu-interpreter"
        print("No CUDA GPU here: running one tiny shape (d_model 32, d_ff 48, 8 experts, top-2) in Triton's "
              "interpreter, in float32 (the interpreter has no bfloat16 matmuls). These times measure the "
              "interpreter, not the kernels; run this on a GPU for real figures.")
    torch.manual_seed(0)
    generator = torch.Generator(generator_device).manual_seed(0)

    results = []
    for model, shape in shapes.items():
        weights = make_weights(shape, dtype, device, generator)
        for routing in routings:
            for n_tokens in tokens:
                try:
                    results += measure(model, shape, weights, routing, n_tokens, dtype, device, reps, generator)
                except torch.cuda.OutOfMemoryError:
                    print(f"{model} {routing} {n_tokens} tokens: out of GPU memory, skipped")
                    torch.cuda.empty_cache()
        del weights
        if gpu:
            torch.cuda.empty_cache()
    print_table(results)

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    stem = out / f"bench_triton_{device_name.replace(' ', '_')}"
    with open(stem.with_suffix(".csv"), "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(results[0]))
        writer.writeheader()
        writer.writerows({k: ("" if v is None else v) for k, v in r.items()} for r in results)
    plot(results, stem.with_suffix(".png"))
    print(f"wrote {stem.with_suffix('.csv')} and {stem.with_suffix('.png')}")
    return results


if __name__ == "__main__":
    main()
