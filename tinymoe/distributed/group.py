"""The ranks that share a layer's experts: a process group, a key-value store and a timeout.

Expert parallelism runs one process per device ("rank" 0 .. world_size - 1). torch.distributed
connects them: a small key-value store (`TCPStore`) where they meet, then a process group whose
collectives (all_gather, all_to_all) move tensors, over gloo between CPU processes or NCCL
between GPUs. `torchrun` starts the processes and hosts the store; `tinymoe.distributed.launch`
does the same for a notebook or a test on one machine.

`ExpertParallelGroup` keeps the store beside the process group for one reason: when a
collective fails or times out, the store still answers, so the error can name the rank that
never arrived and the step it was last seen at, instead of leaving every rank hanging.

Every collective has a timeout (`timeout` seconds, set when the group is made): a rank that dies
or skips a layer turns into an `ExpertParallelError` on the others, never an endless wait.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from dataclasses import dataclass
from datetime import timedelta

import torch
import torch.distributed as dist

from ..config import ConfigError, ModelConfig

__all__ = ["ExpertParallelGroup", "ExpertParallelError", "init_group", "config_hash", "agree_on_config"]


class ExpertParallelError(RuntimeError):
    """A distributed step that cannot go on: which step, which rank(s), what went wrong."""


@dataclass
class ExpertParallelGroup:
    """rank, world_size, the process group, its store and its collective timeout (seconds)."""

    rank: int
    world_size: int
    store: dist.Store
    process_group: dist.ProcessGroup | None = None      # None: torch.distributed's default group
    timeout: float = 30.0
    backend: str = "gloo"

    def seen(self, key: str, value: str) -> None:
        """Leave a mark in the store ("rank r reached step s of layer L"), for error messages."""
        self.store.set(f"seen/{key}/rank{self.rank}", value)

    def last_seen(self, key: str) -> dict[int, str | None]:
        """rank -> the mark it last left under key (None if it never left one)."""
        marks = {}
        for rank in range(self.world_size):
            name = f"seen/{key}/rank{rank}"
            try:
                marks[rank] = self.store.get(name).decode() if self.store.check([name]) else None
            except RuntimeError:                                   # the store itself is gone
                marks[rank] = None
        return marks


def init_group(rank: int | None = None, world_size: int | None = None, host: str | None = None,
               port: int | None = None, backend: str | None = None, timeout: float = 30.0,
               host_store: bool | None = None) -> ExpertParallelGroup:
    """Join the ranks: connect to the store at host:port, then start torch.distributed on it.

    Missing arguments come from the environment torchrun sets (RANK, WORLD_SIZE, MASTER_ADDR,
    MASTER_PORT). Under torchrun its agent already hosts the store; otherwise rank 0 hosts it
    (host_store=False: someone else, e.g. `launch`, does). backend defaults to NCCL when CUDA is
    available, else gloo."""
    env = os.environ
    rank = int(env["RANK"]) if rank is None else rank
    world_size = int(env["WORLD_SIZE"]) if world_size is None else world_size
    host = env.get("MASTER_ADDR", "127.0.0.1") if host is None else host
    port = int(env["MASTER_PORT"]) if port is None else port
    if not 0 <= rank < world_size:
        raise ValueError(f"rank={rank}: must be in 0..world_size-1 = 0..{world_size - 1}")
    if host_store is None:
        host_store = rank == 0 and env.get("TORCHELASTIC_USE_AGENT_STORE") != "True"
    backend = backend or ("nccl" if torch.cuda.is_available() else "gloo")
    wait = timedelta(seconds=timeout)
    store = dist.PrefixStore("tinymoe", dist.TCPStore(host, port, world_size, is_master=host_store, timeout=wait,
                                                      wait_for_workers=False))
    if backend == "nccl":
        torch.cuda.set_device(int(env.get("LOCAL_RANK", rank % torch.cuda.device_count())))
    dist.init_process_group(backend, store=dist.PrefixStore("process_group", store), rank=rank,
                            world_size=world_size, timeout=wait)
    return ExpertParallelGroup(rank, world_size, store, None, timeout, backend)


def _flat_fields(config) -> dict[str, object]:
    """{"d_model": 5, "moe.top_k": 2, ...}: every field of a config, nested ones dotted."""
    def walk(obj, prefix):
        for f in dataclasses.fields(obj):
            value = getattr(obj, f.name)
            if dataclasses.is_dataclass(value):
                yield from walk(value, f"{prefix}{f.name}.")
            else:
                yield f"{prefix}{f.name}", value
    return dict(walk(config, ""))


def config_hash(config: ModelConfig) -> int:
    """A 63-bit fingerprint of every field of the config (equal configs, equal hashes)."""
    text = json.dumps({k: repr(v) for k, v in _flat_fields(config).items()}, sort_keys=True)
    return int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "little") >> 1


def agree_on_config(config: ModelConfig, group: ExpertParallelGroup, device=None) -> None:
    """Every rank must build the layer from the same config: compare hashes (one all_gather of
    one number), and when they differ, name the first field that does."""
    mine = torch.tensor([config_hash(config)], dtype=torch.int64, device=device)
    hashes = [torch.zeros_like(mine) for _ in range(group.world_size)]
    try:
        dist.all_gather(hashes, mine, group=group.process_group)
    except RuntimeError as error:
        raise ExpertParallelError(f"rank {group.rank}: comparing config hashes failed within {group.timeout:g} s "
                                  f"(a rank never built the layer): {error}") from error
    hashes = [int(h) for h in hashes]
    if len(set(hashes)) == 1:
        return
    fields = [None] * group.world_size
    dist.all_gather_object(fields, _flat_fields(config), group=group.process_group)
    other = next(r for r, h in enumerate(hashes) if h != hashes[0])
    differ = [name for name in fields[0] if repr(fields[0].get(name)) != repr(fields[other].get(name))]
    name = differ[0] if differ else "?"
    raise ConfigError(name, fields[group.rank].get(name),
                      f"ranks disagree on the config: rank 0 has {name}={fields[0].get(name)!r}, rank {other} has "
                      f"{name}={fields[other].get(name)!r} (config hashes {hashes}); every rank must build the "
                      f"expert-parallel layer from the same ModelConfig")
