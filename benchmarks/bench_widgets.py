"""Time from a slider move to the updated picture, for each explorer at two sizes.

    python benchmarks/bench_widgets.py            default (sheet-size) dims and medium dims
    python benchmarks/bench_widgets.py --quick    fewer rounds

What is timed: `explorer.set(seq_len=...)` (the same code path as a reader's slider move) until the
shape line, sheets, table and heatmap data are updated, including the JSON encoding of the widget
messages a kernel would send to the browser (a comm that encodes every message is installed, since
outside a kernel ipywidgets would skip that work). Not timed: the browser redrawing.

Baseline, measured in the same run at the same dims: the bare core forward (build the attention
module with a seed and run it, no trace) and the traced forward the explorer runs. The ratios say
what drawing costs on top of the model itself.

Targets (issue 3): under 100 ms at the default dims, under 300 ms at medium (seq 128, d_model 256).
Each case is timed in rounds, moving the slider back and forth between two values; the figure is the
median, with the best and the 90th percentile beside it.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))   # run from a clone without installing

import comm  # noqa: E402
import torch  # noqa: E402
from comm.base_comm import BaseComm  # noqa: E402

from tinymoe import ModelConfig, MultiHeadAttention  # noqa: E402
from tinymoe.viz import AttentionExplorer, GQAExplorer, RopeExplorer  # noqa: E402
from tinymoe.viz.forward import traced_forward  # noqa: E402

TARGET_MS = {"default": 100.0, "medium": 300.0}


class EncodingComm(BaseComm):
    """A comm that JSON-encodes every message, as a kernel's session would, and counts the bytes."""
    sent_bytes = 0

    def publish_msg(self, msg_type, data=None, metadata=None, buffers=None, **keys):
        EncodingComm.sent_bytes += len(json.dumps(data, default=str)) + sum(len(memoryview(b)) for b in buffers or ())


CASES = {
    # name: (size, make explorer, slider, two values, attention dims for the baseline or None)
    "attention default": ("default", lambda: AttentionExplorer(n_heads=2), "seq_len", (10, 11),
                          dict(d_model=5, n_heads=2, head_dim=3, v_head_dim=3, position="none")),
    "gqa default": ("default", lambda: GQAExplorer(), "seq_len", (8, 9),
                    dict(d_model=8, n_heads=4, n_kv_heads=2, head_dim=2)),
    "rope default": ("default", lambda: RopeExplorer(), "position", (3, 4), None),
    "attention medium": ("medium", lambda: AttentionExplorer(seq_len=128, d_model=256, d_k=32, d_v=32, n_heads=8),
                         "seq_len", (128, 127), dict(d_model=256, n_heads=8, head_dim=32, v_head_dim=32,
                                                     position="none")),
    "gqa medium": ("medium", lambda: GQAExplorer(n_heads=8, n_kv_heads=2, seq_len=128, d_model=256, head_dim=32),
                   "seq_len", (128, 127), dict(d_model=256, n_heads=8, n_kv_heads=2, head_dim=32)),
}


def interleaved(functions: dict, rounds: int) -> dict[str, tuple[list[float], list[float]]]:
    """(wall seconds, CPU seconds of this process) per call of each function, timed in rounds
    (a, b, c, a, b, c, ...) so a burst of load from another process hits every one alike. On a
    shared machine the wall time includes waiting for other processes; the CPU time is the work
    this process did (all its threads)."""
    for fn in functions.values():
        fn()                                                           # warm-up
    times = {name: ([], []) for name in functions}
    for _ in range(rounds):
        for name, fn in functions.items():
            start, start_cpu = time.perf_counter(), time.process_time()
            fn()
            times[name][0].append(time.perf_counter() - start)
            times[name][1].append(time.process_time() - start_cpu)
    return times


def bare_forward(dims: dict, seq_len: int):
    """The core alone: build the attention module with a seed and run it (no trace, no drawing)."""
    config = ModelConfig(max_seq_len=max(128, seq_len), **dims)

    @torch.no_grad()
    def run():
        torch.manual_seed(0)
        MultiHeadAttention(config)(torch.randn(1, seq_len, config.d_model))
    return run


def traced(dims: dict, seq_len: int):
    config = ModelConfig(max_seq_len=max(128, seq_len), **dims)
    return lambda: traced_forward(config, "attention", seq_len)


def ms(times: tuple[list[float], list[float]]) -> dict:
    wall, cpu = sorted(times[0]), times[1]
    return {"median": 1e3 * statistics.median(wall), "best": 1e3 * wall[0],
            "p90": 1e3 * wall[int(0.9 * (len(wall) - 1))], "cpu_median": 1e3 * statistics.median(cpu)}


def run(rounds: int = 20) -> dict:
    """Time every case; the encoding comm is installed for the run and the previous one restored."""
    previous, comm.create_comm = comm.create_comm, EncodingComm        # widgets now pay for their messages
    try:
        return _run(rounds)
    finally:
        comm.create_comm = previous


def _run(rounds: int) -> dict:
    results = {}
    for name, (size, make, control, (a, b), dims) in CASES.items():
        explorer = make()
        flip = {"next": b}

        def move():
            explorer.set(**{control: flip["next"]})
            flip["next"] = a if flip["next"] == b else b
            assert explorer.error is None, explorer.error

        functions = {"update": move}
        if dims is not None:
            seq_len = explorer.values.get("seq_len", a)
            functions["bare_forward"] = bare_forward(dims, seq_len)
            functions["traced_forward"] = traced(dims, seq_len)
        EncodingComm.sent_bytes = 0
        times = interleaved(functions, rounds)
        row = {"size": size, "target_ms": TARGET_MS[size], "bytes_per_update": EncodingComm.sent_bytes / (rounds + 1)}
        row.update({fn: ms(t) for fn, t in times.items()})
        if dims is not None:
            for base in ("bare", "traced"):
                row[f"ratio_to_{base}"] = row["update"]["median"] / row[f"{base}_forward"]["median"]
                row[f"cpu_ratio_to_{base}"] = row["update"]["cpu_median"] / max(row[f"{base}_forward"]["cpu_median"], 1e-3)
        row["meets_target"] = row["update"]["median"] < TARGET_MS[size]
        results[name] = row
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="5 rounds instead of 20")
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args()
    results = run(rounds=5 if args.quick else 20)
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(f"slider move -> updated picture (torch {torch.__version__}, {torch.get_num_threads()} threads, "
          f"{os.cpu_count()} cores, load average {load:.1f})")
    print("wall = elapsed (median, best, 90th percentile); cpu = this process's CPU time (median);")
    print("baselines at the same dims: bare = core forward alone, traced = core forward with a trace\n")
    print(f"{'case':<18} {'wall':>8} {'best':>7} {'p90':>7} {'cpu':>7} {'target':>6}  {'bare':>7} {'traced':>7}"
          f"  {'x bare':>6} {'x traced':>8}  {'msg KB':>6}  ok        (ratios: wall medians; cpu medians)")
    for name, r in results.items():
        u = r["update"]
        base = (f"{r['bare_forward']['median']:5.1f}ms {r['traced_forward']['median']:5.1f}ms"
                f"  {r['ratio_to_bare']:6.1f} {r['ratio_to_traced']:8.1f}" if "bare_forward" in r
                else f"{'-':>7} {'-':>7}  {'-':>6} {'-':>8}")
        print(f"{name:<18} {u['median']:6.1f}ms {u['best']:5.1f}ms {u['p90']:5.1f}ms {u['cpu_median']:5.1f}ms "
              f"{r['target_ms']:4.0f}ms  {base}  {r['bytes_per_update'] / 1024:6.1f}  "
              f"{'yes' if r['meets_target'] else 'NO'}"
              + (f"   cpu: x{r['cpu_ratio_to_bare']:.1f} bare, x{r['cpu_ratio_to_traced']:.1f} traced"
                 if "bare_forward" in r else ""))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
