"""Expert parallelism over torch.distributed: the MoE layer's experts spread over processes.

Read in this order:
    group.py      the ranks: process group, store, timeout, config hash
    exchange.py   all-to-all with uneven splits, and its gradient (the same, splits swapped)
    capacity.py   who holds which expert; capacity and the send plan, from the exchanged counts
    layer.py      ExpertParallelMoE: route, exchange counts, send tokens, run local experts,
                  send results back, combine in a fixed order
    traffic.py    bytes moved vs compute, as formulas
    launch.py     start world_size local processes (gloo, loopback) from a test or a notebook
    demo.py       a worker for the notebook, and `torchrun ... -m tinymoe.distributed.demo`
"""
from .capacity import drop_overflow, exchange_plan, experts_per_rank, seats_kept, slot_counts
from .exchange import all_to_all
from .group import ExpertParallelError, ExpertParallelGroup, agree_on_config, config_hash, init_group
from .launch import LaunchError, RankFailure, launch
from .layer import TOKEN_CHOICE_ROUTERS, ExpertParallelMoE
from .traffic import exchange_bytes, expected_bytes_per_rank, expert_flops_per_rank

__all__ = ["ExpertParallelMoE", "ExpertParallelGroup", "ExpertParallelError", "init_group", "config_hash",
           "agree_on_config", "all_to_all", "seats_kept", "drop_overflow", "exchange_plan", "experts_per_rank", "slot_counts", "launch", "LaunchError", "RankFailure",
           "exchange_bytes", "expected_bytes_per_rank", "expert_flops_per_rank", "TOKEN_CHOICE_ROUTERS"]
