"""Peak memory of attention, forward + backward: the tiled flash reference against naive attention.

    python benchmarks/bench_flash.py            seq_len 512 .. 4096, batch 1, 4 heads, head_dim 64, causal
    python benchmarks/bench_flash.py --quick    seq_len 256 only (the tests use it)

Naive is the core's eager attention (tinymoe.scaled_dot_product_attention): it makes the
(batch, heads, T, T) scores and weights and autograd keeps the weights for the backward. Flash is
tinymoe.flash.flash_attention (tiles of 64): it keeps the output and one log-sum-exp per row.
Each measurement runs in a fresh process (so one run's freed memory cannot hide the next one's):
on the CPU the figure is the process's peak resident memory during the call minus its resident
memory just before (Linux: the VmHWM mark is reset through /proc/self/clear_refs first); on a
GPU, torch.cuda.max_memory_allocated above the memory held before. Printed: both figures and
naive / flash. The naive figure grows as T^2, the flash one as T.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))                                   # run from a clone without installing

SIZES = {"full": [512, 1024, 2048, 4096], "quick": [256]}
BATCH, HEADS, HEAD_DIM, TILE = 1, 4, 64, 64


def _status_kb(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise KeyError(field)


def worker(kind: str, seq_len: int) -> dict:
    """One measurement in this (fresh) process: extra peak bytes of one forward + backward."""
    import resource

    import torch

    from tinymoe import scaled_dot_product_attention
    from tinymoe.flash import flash_attention

    device = "cuda" if torch.cuda.is_available() else "cpu"
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(BATCH, HEADS, seq_len, HEAD_DIM, generator=g).to(device).requires_grad_()
               for _ in range(3))
    dout = torch.randn(BATCH, HEADS, seq_len, HEAD_DIM, generator=g).to(device)

    def run(q, k, v, dout):
        if kind == "naive":
            out, _ = scaled_dot_product_attention(q, k, v, causal=True)
        else:
            out = flash_attention(q, k, v, causal=True, block_q=TILE, block_k=TILE)
        out.backward(dout)
        return out.detach()

    # Warm up at a small size first: the one-off costs (autograd's worker, BLAS buffers) are not attention's.
    small = [t[:, :, :TILE].detach().clone().requires_grad_() for t in (q, k, v)]
    run(*small, dout[:, :, :TILE])

    if device == "cuda":
        torch.cuda.synchronize()
        before = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
        out = run(q, k, v, dout)
        torch.cuda.synchronize()
        extra = torch.cuda.max_memory_allocated() - before
    else:
        try:
            Path("/proc/self/clear_refs").write_text("5")        # reset the peak-RSS mark (Linux)
            before, peak = _status_kb("VmRSS"), None
        except OSError:
            before, peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, None
        out = run(q, k, v, dout)
        try:
            peak = _status_kb("VmHWM")
        except (OSError, KeyError):
            peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        extra = max(0, peak - before) * 1024
    return {"kind": kind, "seq_len": seq_len, "bytes": extra, "device": device,
            "checksum": float(out.double().sum()), "grad_checksum": float(q.grad.double().sum())}


def measure(kind: str, seq_len: int) -> dict:
    done = subprocess.run([sys.executable, __file__, "--worker", kind, str(seq_len)], capture_output=True, text=True,
                          timeout=600, cwd=ROOT)
    if done.returncode != 0:
        raise RuntimeError(f"the {kind} measurement at seq_len={seq_len} failed:\n{done.stderr[-2000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="one small size (seconds)")
    parser.add_argument("--worker", nargs=2, metavar=("KIND", "SEQ_LEN"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        print(json.dumps(worker(args.worker[0], int(args.worker[1]))))
        return 0

    lengths = SIZES["quick" if args.quick else "full"]
    print(f"peak extra memory of one causal forward + backward: batch {BATCH}, {HEADS} heads, head_dim {HEAD_DIM}, "
          f"float32, flash tiles of {TILE}")
    print(f"{'seq_len':>8} {'naive MB':>10} {'flash MB':>10} {'naive / flash':>14}")
    worst = 0.0
    for seq_len in lengths:
        naive, flash = measure("naive", seq_len), measure("flash", seq_len)
        worst = max(worst, abs(naive["checksum"] - flash["checksum"]) / max(1.0, abs(naive["checksum"])),
                    abs(naive["grad_checksum"] - flash["grad_checksum"]) / max(1.0, abs(naive["grad_checksum"])))
        ratio = naive["bytes"] / max(flash["bytes"], 1)
        print(f"{seq_len:>8,} {naive['bytes'] / 2**20:>10.1f} {flash['bytes'] / 2**20:>10.1f} {ratio:>14.2f}")
    print(f"measured on {naive['device']}; naive and flash agree to {worst:.1e} (relative, output and dq sums)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
