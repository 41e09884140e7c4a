"""What each launched rank does in tests/test_expert_parallel.py (spawned processes import it by name).

Processes are slow to start on a small machine, so one launch runs many checks: every routing
case against the single-process layer, then the failure modes, the one that breaks the group last.
Each check returns numbers (differences, seconds, messages); the test process asserts on them.
"""
from __future__ import annotations

import os
import time
from datetime import timedelta

import torch
import torch.distributed as dist

import tinymoe as tm
from tinymoe.distributed import ExpertParallelError, ExpertParallelGroup, ExpertParallelMoE
from tinymoe.moe import MoE

D_MODEL, D_FF = 6, 8
FAILURE_TIMEOUT = 3.0            # seconds: the collective timeout of the failure checks

# name -> (routing, capacity_factor, router, dispatch, top_k). routing: "random" (spread by the router),
# "skewed" (every token to the last rank's experts), "empty" (experts 1 and 2 get nothing, last rank no tokens)
CASES = {
    "random/dropless": ("random", None, "softmax_topk", "grouped", 2),
    "random/capacity": ("random", 1.0, "softmax_topk", "grouped", 2),
    "skewed/dropless": ("skewed", None, "softmax_topk", "loop", 2),
    "skewed/capacity": ("skewed", 1.25, "softmax_topk", "grouped", 2),
    "empty/dropless": ("empty", None, "softmax_topk", "dense", 2),
    "empty/capacity": ("empty", 1.0, "softmax_topk", "grouped", 2),
    "switch/capacity": ("random", 1.0, "switch", "grouped", 1),
    "sigmoid_bias/capacity": ("random", 1.0, "sigmoid_bias", "grouped", 2),
}


def tokens_per_rank(routing: str, world_size: int) -> list[int]:
    """Uneven on purpose; in "empty" the last rank has no tokens at all."""
    counts = [5 + (r % 3) for r in range(world_size)]
    if routing == "empty":
        counts[-1] = 0
    return counts


def build_case(case: str, world_size: int, seed: int = 0):
    """(config, single-process layer, all ranks' tokens (1, sum N_r, d_model), per-rank counts)."""
    routing, capacity_factor, router, dispatch, top_k = CASES[case]
    n_experts = 2 * world_size
    config = tm.ModelConfig(d_model=D_MODEL, n_heads=1, d_ff=D_FF, moe=tm.MoEConfig(
        n_experts=n_experts, top_k=top_k, router=router, capacity_factor=capacity_factor, dispatch=dispatch,
        renormalize=router != "switch", n_shared_experts=1 if routing == "random" and top_k == 2 else 0))
    torch.manual_seed(seed)
    reference = MoE(config)
    counts = tokens_per_rank(routing, world_size)
    x = torch.randn(1, sum(counts), D_MODEL)                                # (1, sum N_r, d_model)
    with torch.no_grad():
        if routing != "random":
            x[..., 0] = 3.0                                                 # a feature every token has
            weight = reference.router.weight                                # (n_experts, d_model)
            if routing == "skewed":                                         # the last rank's experts win
                weight[:, 0] = torch.where(torch.arange(n_experts) >= n_experts - 2, 4.0, -4.0)
            else:                                                           # experts 1 and 2 never win
                weight[1:3, 0] = -10.0
    return config, reference, x, counts


def _grad(p: torch.Tensor) -> torch.Tensor:
    return torch.zeros_like(p) if p.grad is None else p.grad


def compare_case(group: ExpertParallelGroup, case: str) -> dict[str, float]:
    """Largest |difference| between this rank's expert-parallel run and the single-process layer."""
    W, rank = group.world_size, group.rank
    config, reference, x, counts = build_case(case, W)
    x = x.requires_grad_()
    target = torch.randn(x.shape, generator=torch.Generator().manual_seed(1))  # (1, sum N_r, d_model)
    out, losses = reference(x)
    (((out - target) ** 2).sum() + sum(losses.values())).backward()

    layer = ExpertParallelMoE(config, group, name=f"moe[{case}]").load_from(reference)
    start = sum(counts[:rank])
    mine = slice(start, start + counts[rank])
    x_r = x.detach()[:, mine].clone().requires_grad_()                      # (1, N_r, d_model)
    trace = tm.Trace()
    out_r, losses_r = layer(x_r, trace)
    (((out_r - target[:, mine]) ** 2).sum() + sum(losses_r.values())).backward()

    local = slice(layer.first_expert, layer.first_expert + layer.n_local)
    router_grad = _grad(layer.router.weight).clone()
    dist.all_reduce(router_grad, group=group.process_group)                 # data parallel sums it
    loss_sum = torch.stack([losses_r["load_balancing"], losses_r["z_loss"]]).detach()
    dist.all_reduce(loss_sum, group=group.process_group)
    diffs = {
        "out": (out_r - out[:, mine]).abs().max().item() if counts[rank] else 0.0,
        "x.grad": (x_r.grad - x.grad[:, mine]).abs().max().item() if counts[rank] else 0.0,
        "router.grad": (router_grad - reference.router.weight.grad).abs().max().item(),
        "losses": (loss_sum - torch.stack([losses["load_balancing"], losses["z_loss"]])).abs().max().item(),
    }
    for name, mine_w, full_w in zip(("w_gate", "w_up", "w_down"), layer.experts.weights(), reference.experts.weights()):
        diffs[f"{name}.grad"] = (_grad(mine_w) - _grad(full_w)[local]).abs().max().item()
    if layer.shared is not None:
        shared = torch.cat([_grad(p).reshape(-1) for p in layer.shared.parameters()])
        dist.all_reduce(shared, group=group.process_group)
        diffs["shared.grad"] = (shared - torch.cat([p.grad.reshape(-1) for p in reference.shared.parameters()])).abs().max().item()
    if config.moe.router == "sigmoid_bias":                                 # aux-loss-free step from the global load
        diffs["selection_bias"] = (layer.update_bias() - reference.update_bias()).abs().max().item()
    kept = int((trace[f"moe[{case}].expert_ids"] >= 0).sum())
    return {"diffs": diffs, "dropped": int(trace[f"moe[{case}].dropped"].sum()), "kept": kept,
            "local_load": trace[f"moe[{case}].local_expert_load"].tolist(),
            "send_counts": trace[f"moe[{case}].send_counts"].tolist()}


def _short_group(group: ExpertParallelGroup) -> ExpertParallelGroup:
    """The same ranks with a short collective timeout, so a failure shows quickly."""
    process_group = dist.new_group(timeout=timedelta(seconds=FAILURE_TIMEOUT))
    return ExpertParallelGroup(group.rank, group.world_size, group.store, process_group, FAILURE_TIMEOUT)


def _timed_error(fn) -> dict:
    start = time.monotonic()
    try:
        fn()
    except Exception as error:                                              # noqa: BLE001 - what the test inspects
        return {"type": type(error).__name__, "message": str(error), "seconds": time.monotonic() - start}
    return {"type": None, "message": "no error", "seconds": time.monotonic() - start}


def _config(**moe) -> tm.ModelConfig:
    return tm.ModelConfig(d_model=D_MODEL, n_heads=1, d_ff=D_FF, moe=tm.MoEConfig(**moe))


def _step(layer) -> None:
    layer(torch.randn(1, 3, D_MODEL))


def two_rank_checks(group: ExpertParallelGroup) -> dict:
    """Every routing case, then: n_experts not divisible, configs that differ, a skipped step, a hang."""
    results = {"cases": {case: compare_case(group, case) for case in CASES}}
    short = _short_group(group)
    W = group.world_size
    results["not_divisible"] = _timed_error(lambda: ExpertParallelMoE(_config(n_experts=2 * W + 1), short))
    top_k = 2 if group.rank == 0 else 1                                     # rank 1 was given another config
    results["config_mismatch"] = _timed_error(lambda: ExpertParallelMoE(_config(n_experts=2 * W, top_k=top_k), short))

    skip = ExpertParallelMoE(_config(n_experts=2 * W), short, name="skip")
    _step(skip)                                                             # step 0 together
    if group.rank == 1:
        skip.step += 1                                                      # rank 1 skips step 1 ...
    results["skipped_step"] = _timed_error(lambda: _step(skip))             # ... and calls step 2

    hang = ExpertParallelMoE(_config(n_experts=2 * W), short, name="hang")
    _step(hang)
    if group.rank == 1:                                                     # rank 1 stops calling the layer
        time.sleep(FAILURE_TIMEOUT + 1)
        results["hang"] = None
    else:
        results["hang"] = _timed_error(lambda: _step(hang))
    return results


def four_rank_checks(group: ExpertParallelGroup) -> dict:
    """Every routing case, then rank 2 dies before its second step."""
    results = {"cases": {case: compare_case(group, case) for case in CASES}}
    short = _short_group(group)
    layer = ExpertParallelMoE(_config(n_experts=2 * group.world_size), short, name="dies")
    _step(layer)
    if group.rank == 2:
        os._exit(3)                                                         # the process is gone
    results["dead_rank"] = _timed_error(lambda: _step(layer))
    return results
