"""Start world_size processes on this machine, joined by gloo over loopback: torchrun in miniature.

    results = launch(worker, world_size=2, args=(config,), timeout=120)

runs `worker(group, *args)` in world_size fresh Python processes (spawned, so nothing is shared
but what is passed) and returns what each returned, in rank order. This process hosts the
store they meet at (on a free port the system picks), so it outlives any rank that dies. Every
process is killed when `launch` returns, fails or times out: nothing is left running.

The worker must be importable by name (a function in a module, not one typed into a notebook
cell): each new process imports it afresh. Results travel back through `torch.save` files.
On several GPUs or machines use `torchrun` instead (see `tinymoe.distributed.demo`).
"""
from __future__ import annotations

import multiprocessing
import os
import shutil
import tempfile
import time
import traceback
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Callable

import torch
import torch.distributed as dist

from .group import init_group

__all__ = ["launch", "RankFailure", "LaunchError"]


class LaunchError(RuntimeError):
    """A launched rank raised, died or ran out of time."""


@dataclass
class RankFailure:
    """What stands in a rank's result when it raised (error set) or died / timed out (exitcode)."""

    rank: int
    error: str | None
    exitcode: int | None


def _run_rank(worker, rank, world_size, port, collective_timeout, folder, args):
    torch.set_num_threads(1)                           # world_size processes share this machine's cores
    path = Path(folder) / f"rank{rank}.pt"
    try:
        group = init_group(rank, world_size, "127.0.0.1", port, "gloo", collective_timeout, host_store=False)
        torch.save({"result": worker(group, *args)}, path)
    except BaseException as error:                     # noqa: BLE001 - reported to the parent
        torch.save({"error": f"{type(error).__name__}: {error}", "traceback": traceback.format_exc()}, path)
    finally:
        os._exit(0)                                    # skip teardown: a peer may be gone


def launch(worker: Callable, world_size: int, args: tuple = (), timeout: float = 120.0,
           collective_timeout: float = 10.0, check: bool = True) -> list:
    """worker(group, *args) on ranks 0..world_size-1; their results in rank order.

    timeout bounds the whole run (start-up included); collective_timeout bounds each collective.
    check=True raises LaunchError if any rank failed; check=False puts a RankFailure in its place."""
    if isinstance(world_size, bool) or not isinstance(world_size, int) or world_size < 1:
        raise ValueError(f"world_size={world_size!r}: must be a whole number >= 1")
    store = dist.TCPStore("127.0.0.1", 0, None, is_master=True, timeout=timedelta(seconds=collective_timeout),
                          wait_for_workers=False)
    context = multiprocessing.get_context("spawn")
    folder = tempfile.mkdtemp(prefix="tinymoe-launch-")
    processes = [context.Process(target=_run_rank, daemon=True, name=f"tinymoe-rank{rank}",
                                 args=(worker, rank, world_size, store.port, collective_timeout, folder, args))
                 for rank in range(world_size)]
    try:
        for process in processes:
            process.start()
        deadline = time.monotonic() + timeout
        for process in processes:
            process.join(max(0.0, deadline - time.monotonic()))
        results = []
        for rank, process in enumerate(processes):
            path = Path(folder) / f"rank{rank}.pt"
            saved = torch.load(path, weights_only=False) if path.exists() else None
            if saved is not None and "result" in saved:
                results.append(saved["result"])
            elif saved is not None:
                results.append(RankFailure(rank, saved["error"] + "\n" + saved["traceback"], process.exitcode))
            else:
                results.append(RankFailure(rank, None if process.exitcode is not None else
                                           f"still running after the {timeout:g} s timeout", process.exitcode))
    finally:
        for process in processes:
            if process.is_alive():
                process.kill()
            process.join(5)
        shutil.rmtree(folder, ignore_errors=True)
        del store
    failures = [r for r in results if isinstance(r, RankFailure)]
    if check and failures:
        raise LaunchError("; ".join(f"rank {f.rank} " + (f"raised {f.error}" if f.error else f"died (exit code {f.exitcode})")
                                    for f in failures))
    return results
