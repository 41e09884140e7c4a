"""ExpertParallelExplorer: the all-to-all of an expert-parallel MoE layer on sliders.

world_size, n_experts, top_k, tokens_per_rank, d_model and capacity_factor set up the layer's
routing in this one process (the same router every rank holds, on seeded tokens split into
world_size batches) and draw what the ranks would exchange, computed by the core functions the
layer itself uses (`tinymoe.distributed`: slot_counts, exchange_plan, exchange_bytes):

  sheets   the all-to-all grid (pairs rank s sends to rank d) and the routing counts (pairs
           from each rank to each expert), a picture when too big
  heatmap  the routing counts, ranks as rows, experts as columns
  curves   bytes the busiest rank sends to the others (tokens out, results back, count table)
           for every world size that divides n_experts, against the even-routing formula
  notes    experts per rank, capacity and dropped pairs, expert flops per rank, flops per byte

No processes are started: a real run is in notebook 14 and the tests (the layer's own trace
records the same counts and bytes). n_experts that world_size does not divide shows the rule
and keeps the last picture.
"""
from __future__ import annotations

import torch

from ..config import ModelConfig, MoEConfig
from ..distributed import exchange_bytes, exchange_plan, expected_bytes_per_rank, expert_flops_per_rank, slot_counts
from ..moe import make_router
from .explorer import Explorer, View, dropdown, slider
from .html import escape
from .moe_explorer import CAPACITY_FACTORS
from .sheet import sheet

__all__ = ["ExpertParallelExplorer"]


class ExpertParallelExplorer(Explorer):
    """Expert parallelism: move the ranks, experts, top_k, tokens and capacity; the exchange follows."""

    title = "Expert parallelism: who sends what to whom"
    heatmap_size = (420, 260)

    def __init__(self, world_size: int = 2, n_experts: int = 4, top_k: int = 2, tokens_per_rank: int = 8,
                 d_model: int = 64, capacity_factor: float | None = None, seed: int = 0):
        factor = 0.0 if capacity_factor is None else float(capacity_factor)
        controls = {"world_size": slider(world_size, 1, 8),
                    "n_experts": slider(n_experts, 1, 64),
                    "top_k": slider(top_k, 1, 4),
                    "tokens_per_rank": slider(tokens_per_rank, 1, 512),
                    "d_model": slider(d_model, 4, 1024, step=4),
                    "capacity_factor": dropdown(factor, list(CAPACITY_FACTORS))}
        super().__init__(controls, seed=seed)

    def _plan(self, router, x: torch.Tensor, W: int, E: int, N: int, factor):
        """The exchange plan of W ranks with N of the seeded tokens each, and each rank's bytes sent."""
        chosen = router(x[:W * N]).chosen_ids                                       # (W*N, k) before capacity
        counts = torch.stack([slot_counts(c, E) for c in chosen.split(N)])         # (W, k, E)
        plan = exchange_plan(counts, torch.full((W,), N), factor, W)                # ConfigError if W does not divide E
        k, d_model = counts.shape[1], x.shape[1]
        sent = [exchange_bytes(plan["pairs"][r], plan["pairs"][:, r], r, d_model, 4, k, E)["total"] for r in range(W)]
        return counts, plan, sent

    @torch.no_grad()
    def build(self, values: dict) -> View:
        W, E, k, N, d_model = (values[n] for n in ("world_size", "n_experts", "top_k", "tokens_per_rank", "d_model"))
        factor = values["capacity_factor"] or None                                  # 0.0 -> dropless
        config = ModelConfig(d_model=d_model, n_heads=1, position="none",
                             moe=MoEConfig(n_experts=E, top_k=k, capacity_factor=factor)).validate()
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(self.seed)
            router = make_router(config)
        max_ranks = self.controls["world_size"].max
        x = torch.randn(max_ranks * N, d_model, generator=torch.Generator().manual_seed(self.seed + 1))  # (8N, d_model)
        counts, plan, sent = self._plan(router, x, W, E, N, factor)
        pairs, routing_counts = plan["pairs"], plan["routing_counts"]              # (W, W), (W, E)
        expected = expected_bytes_per_rank(N, k, d_model, W, 4, n_experts=E)
        flops = expert_flops_per_rank(N, k, d_model, config.ff_dim)
        dropped = int(counts.sum() - plan["kept"].sum())
        # the same routing on every world size that divides n_experts: the busiest rank's bytes
        sizes = [w for w in range(1, max_ranks + 1) if E % w == 0]
        busiest = [max(self._plan(router, x, w, E, N, factor)[2]) for w in sizes]
        ranks = [f"rank {r}" for r in range(W)]
        sheets = [sheet(pairs, "all-to-all grid", decimals=0, row_labels=[f"from {r}" for r in ranks],
                        col_labels=[f"to {r}" for r in ranks], note="pairs from rank s to rank d", max_cells=64),
                  sheet(routing_counts, "routing counts", decimals=0, row_labels=ranks,
                        col_labels=[f"e{e}" for e in range(E)], note="pairs from each rank to each expert",
                        max_cells=96)]
        capacity = "dropless" if plan["capacity"] is None else f"capacity {plan['capacity']} pairs per expert"
        ratio = f"{flops / max(sent):,.0f} flops per byte sent" if max(sent) else "nothing leaves its rank"
        notes = (f"<div>{E // W} experts per rank &middot; {escape(capacity)} &middot; {dropped} of {int(counts.sum())} "
                 f"pairs dropped</div><div>bytes sent per rank: {', '.join(f'{b:,}' for b in sent)} "
                 f"(even-routing formula {expected:,.0f})</div>"
                 f"<div>expert flops per rank {flops:,.0f}: {escape(ratio)}</div>")
        return View(shapes={"grid": (W, W), "routing_counts": (W, E)},
                    shape_label=f"grid ({W}, {W}) · routing counts ({W}, {E}) · {E // W} experts per rank · "
                                f"most bytes sent by a rank {max(sent):,}",
                    sheets=sheets, heatmap=routing_counts.float(), heatmap_title="pairs: ranks (rows) × experts (columns)",
                    notes=notes,
                    curves={"busiest rank, this routing": (sizes, busiest),
                            "even-routing formula": (sizes, [expected_bytes_per_rank(N, k, d_model, w, 4, n_experts=E)
                                                             for w in sizes])},
                    curve_axes=("world_size (ranks)", "bytes sent per rank per step"))
