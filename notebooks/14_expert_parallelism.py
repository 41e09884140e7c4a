# ---
# jupyter:
#   jupytext:
#     formats: ipynb,py:percent
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# # 14 · Beyond one machine: expert parallelism over torch.distributed
#
# An MoE layer has many experts but each token visits only `top_k` of them. When the experts no
# longer fit on one device, we put a few on each device ("rank") and send every token to wherever
# its expert lives: **expert parallelism** (GShard, Lepikhin et al. 2020; Switch Transformer,
# Fedus et al. 2021). In this notebook two real processes on this CPU run the same MoE layer of
# notebook 06 with its experts split between them, and we draw every message they exchange.
#
# **After this notebook you can:**
# - say why experts, and not layers or heads, are the unit to spread, from parameter and byte counts;
# - follow one step of an expert-parallel layer: route, exchange the counts, send the tokens with
#   an all-to-all of uneven sizes, run the local experts, send the results back, combine;
# - say why the gradient of an all-to-all is the same all-to-all with its splits swapped;
# - keep the single-process capacity and dropped tokens when the batch is split over ranks;
# - compute the bytes a rank moves per step, and why their ratio to the experts' compute does not
#   shrink with more tokens or more experts;
# - start the same layer on several GPUs or machines with `torchrun`.
#
# **Where we are.** Notebook 06 built the MoE layer (`tinymoe.moe.MoE`): a router, experts and a
# dispatch. Here it runs as `tinymoe.distributed.ExpertParallelMoE`, the same router and experts
# with the experts divided over ranks.

# %%
import dataclasses

import matplotlib.pyplot as plt
import numpy as np
import torch

import tinymoe as tm
from tinymoe import viz
from tinymoe.distributed import (exchange_bytes, exchange_plan, expected_bytes_per_rank, expert_flops_per_rank,
                                 experts_per_rank, launch, seats_kept, slot_counts)
from tinymoe.distributed.demo import run_steps
from tinymoe.moe import capacity, moe_parameter_counts

torch.manual_seed(0)
torch.set_printoptions(precision=2, sci_mode=False)

# %% [markdown]
# ## Why experts are the unit to spread
#
# Take one MoE layer at Mixtral 8x7B's size: `d_model = 4096`, experts with `d_ff = 14336`, 8 experts,
# top-2. Its expert weights are most of the layer; a token uses two experts' worth. Each step the
# weights stay where they are and only the tokens (`d_model` numbers each) would need to travel,
# so moving the tokens to the experts is far cheaper than moving the experts to the tokens.

# %%
mixtral = tm.ModelConfig(d_model=4096, n_heads=32, n_kv_heads=8, d_ff=14336,
                         moe=tm.MoEConfig(n_experts=8, top_k=2))
counts = moe_parameter_counts(mixtral)
bf16 = 2                                                                     # bytes per number
tokens_per_step = 8192
print(f"one MoE layer: {counts['total'] / 1e6:,.0f} M parameters, {counts['total'] * bf16 / 2**30:.2f} GiB in bfloat16; "
      f"one expert {counts['expert'] / 1e6:,.0f} M")
print(f"active per token: {counts['active'] / 1e6:,.0f} M ({counts['active'] / counts['total']:.0%} of the layer)")
token_bytes = tokens_per_step * mixtral.moe.top_k * mixtral.d_model * bf16
print(f"{tokens_per_step} tokens x top-{mixtral.moe.top_k} slots, {mixtral.d_model} numbers each: "
      f"{token_bytes / 2**20:.0f} MiB, {counts['experts'] * bf16 / token_bytes:.0f}x less than the experts' weights")

# %% [markdown]
# ## Who holds which expert
#
# With `world_size` ranks, rank `r` holds `n_experts / world_size` consecutive experts. At sheet size:
# 4 experts on 2 ranks, so rank 0 holds experts 0 and 1, rank 1 holds 2 and 3. The router, which is
# small, is copied on every rank; so are the shared experts, if any. (`n_experts` must divide evenly:
# otherwise the layer refuses to start, with a `ConfigError` that says so.)

# %%
world_size = 2
small = tm.ModelConfig(d_model=4, n_heads=1, d_ff=6, moe=tm.MoEConfig(n_experts=4, top_k=2))
E_local = experts_per_rank(small.moe.n_experts, world_size)                # a ConfigError if it does not divide
owner = torch.arange(small.moe.n_experts) // E_local                        # (n_experts,)
viz.sheet(owner[None], "rank holding each expert", decimals=0, row_labels=["rank"],
          col_labels=[f"e{e}" for e in range(small.moe.n_experts)], note="experts as columns")

# %% [markdown]
# ## A real run: two processes on this CPU
#
# `launch` starts two fresh Python processes, joined by torch.distributed's gloo backend over the
# loopback network, the way `torchrun` does on a cluster. Each builds the same seeded one-process
# `MoE`, keeps its slice of the experts in an `ExpertParallelMoE`, runs its own 5 tokens forward and
# backward with a trace, and compares its output with the one-process layer's on all 10 tokens.
# Three runs share the launch: this small layer, the same with a capacity, and a larger one.

# %%
capped = small.replace(moe=dataclasses.replace(small.moe, capacity_factor=1.0))
large = tm.ModelConfig(d_model=64, n_heads=1, d_ff=128, moe=tm.MoEConfig(n_experts=8, top_k=2))
runs = [(small, 5), (capped, 5), (large, 256)]
results = launch(run_steps, world_size, args=(runs,), timeout=240)           # results[rank][run]
traces = [results[rank][0]["trace"] for rank in range(world_size)]          # the small run, one trace per rank
agree = all(results[rank][i]["max_abs_diff"] < 1e-5 for rank in range(world_size) for i in range(len(runs)))
print("every rank's output equals the one-process layer's (within 1e-5):", agree)
assert agree

# %% [markdown]
# ## Step 1: each rank routes its own tokens
#
# Each rank has its own tokens (gold: the input) and the same router, so it picks the top-2 experts
# of each token exactly as the one-process layer would: `moe.expert_ids` and `moe.gates`, one row per
# token. Nothing has moved yet: some chosen experts live here, some on the other rank.

# %%
tokens = [[f"r{rank}:t{i}" for i in range(5)] for rank in range(world_size)]
viz.row(*(viz.column(viz.show(traces[rank], "moe.x", row_labels=tokens[rank]),
                     viz.row(viz.show(traces[rank], "moe.expert_ids", row_labels=tokens[rank], col_labels=["1st", "2nd"]),
                             viz.show(traces[rank], "moe.gates", row_labels=tokens[rank], col_labels=["1st", "2nd"])))
          for rank in range(world_size)))

# %% [markdown]
# ## Step 2: exchange the counts first
#
# Before any token moves, the ranks tell each other how many of their (token, slot) pairs chose each
# expert, and the step number (to catch a rank that skipped one). With that table every rank knows
# how many rows to send and to expect from each peer. It is the same table on both ranks; summing its
# columns by owner gives the all-to-all's grid: row `s`, column `d` = pairs rank `s` sends to rank `d`.

# %%
choice_counts_small = torch.stack([slot_counts(traces[rank]["moe.chosen_ids"], 4) for rank in range(world_size)])  # (W, k, E)
plan = exchange_plan(choice_counts_small, torch.tensor([5, 5]), None, world_size)   # what every rank derives
for rank in range(world_size):
    assert torch.equal(plan["routing_counts"], traces[rank]["moe.routing_counts"]), "every rank has the same table"
grid = plan["pairs"]                                                        # (W src, W dst)
viz.row(viz.show(traces[0], "moe.routing_counts", decimals=0, row_labels=["rank 0", "rank 1"],
                 col_labels=[f"e{e}" for e in range(4)], note="pairs from each rank to each expert"),
        viz.sheet(grid, "all-to-all grid", decimals=0, row_labels=["from rank 0", "from rank 1"],
                  col_labels=["to rank 0", "to rank 1"], note="pairs from rank s to rank d"))

# %% [markdown]
# ## Step 3: the tokens travel (an all-to-all with uneven splits)
#
# Each rank sorts its kept pairs by expert, which groups them by the rank that owns the expert, and
# hands the buffer to `all_to_all_single`: the first chunk stays home, the second goes to the other
# rank. The chunks have whatever sizes the router made (`moe.send_counts`). Each rank receives the
# chunks meant for it in rank order. Rows are labelled `token → expert`.

# %%
def send_chunks(trace, rank):
    """rank's send buffer and its row labels, cut into one chunk per destination rank."""
    labels = [f"r{rank}:t{t}→e{e}" for t, e in zip(trace["moe.send_token_ids"].tolist(), trace["moe.send_expert_ids"].tolist())]
    sizes = trace["moe.send_counts"].tolist()
    cuts = np.cumsum([0] + sizes)
    return trace["moe.sent"].split(sizes), [labels[cuts[d]:cuts[d + 1]] for d in range(world_size)]


chunks = [send_chunks(traces[rank], rank) for rank in range(world_size)]
sent_labels = [sum(labels, []) for _, labels in chunks]                       # per rank, the whole buffer
# rank d receives chunk d of every rank, in rank order: the all-to-all is a transpose of the chunks
received_labels = [sum((chunks[s][1][d] for s in range(world_size)), []) for d in range(world_size)]
for d in range(world_size):
    by_hand = torch.cat([chunks[s][0][d] for s in range(world_size)])         # (sum of chunk d, d_model)
    assert torch.equal(by_hand, traces[d]["moe.received"]), "all-to-all = transpose of the chunks"
    print(f"rank {d}: sends {traces[d]['moe.send_counts'].tolist()} rows to ranks 0, 1; "
          f"receives {traces[d]['moe.recv_counts'].tolist()} from ranks 0, 1")
viz.row(*(viz.show(traces[rank], "moe.sent", row_labels=sent_labels[rank], note=f"rank {rank}'s send buffer, by expert")
          for rank in range(world_size)),
        *(viz.show(traces[rank], "moe.received", row_labels=received_labels[rank], note=f"arrived at rank {rank}")
          for rank in range(world_size)))

# %% [markdown]
# ## Step 4: the local experts, and the way back
#
# Each rank runs only its own experts, on the rows that arrived (with any dispatch backend: loop,
# grouped, Triton). The outputs, `moe.expert_out`, go back by the same all-to-all with the send and
# receive counts swapped, so every row returns to the rank and position it came from.

# %%
viz.row(*(viz.show(traces[rank], "moe.expert_out", row_labels=received_labels[rank],
                   note=f"rank {rank}'s experts, before the gates") for rank in range(world_size)))

# %% [markdown]
# ## Step 5: combine in a fixed order
#
# Back home, each returned row is multiplied by its gate and written to its (token, slot) cell; the
# `top_k` cells of a token are then summed in slot order. That order does not depend on which rank
# computed what, so the output is the one-process layer's up to float rounding (checked above), for
# any number of ranks.

# %%
viz.row(*(viz.show(traces[rank], "moe.out", row_labels=tokens[rank]) for rank in range(world_size)))

# %% [markdown]
# ## The backward pass: the same all-to-all, transposed
#
# The gradient of a received row belongs to the rank that sent it. So in the backward pass each
# all-to-all runs again with its splits swapped: what rank `s` sent to rank `d` in the forward pass,
# `d` sends back to `s` as gradients. The grid of the backward exchange is the transpose of the
# forward one. (Every rank must take part, even one that received nothing: the layer keeps an empty
# output in the autograd graph for that.) The tests check the gradients of every weight and input
# against the one-process layer.

# %%
print("forward grid (from s, to d):\n", grid)
print("backward grid of the token exchange (from d, to s):\n", grid.T)
for rank in range(world_size):
    sent_back = grid[:, rank].tolist()
    print(f"rank {rank}: in backward sends {sent_back} gradient rows to ranks 0, 1 (it received {traces[rank]['moe.recv_counts'].tolist()})")

# %% [markdown]
# ## Capacity across ranks
#
# With a capacity, an expert holds `ceil(capacity_factor * N * top_k / n_experts)` pairs, seated
# first choices first, then in token order (notebook 06). Split over ranks, the batch is rank 0's
# tokens then rank 1's, and the seats rank `r` may take follow from the count table alone
# (`seats_kept`). So both ranks work out the same seats with no further exchange, drop before sending,
# and drop exactly what the one-process layer drops.

# %%
capped_traces = [results[rank][1]["trace"] for rank in range(world_size)]
chosen = [capped_traces[rank]["moe.chosen_ids"] for rank in range(world_size)]      # (N, k) per rank
choice_counts = torch.stack([slot_counts(c, capped.moe.n_experts) for c in chosen])   # (W, k, E)
n_all, cf, k, E = world_size * 5, capped.moe.capacity_factor, capped.moe.top_k, capped.moe.n_experts
expert_capacity = capacity(n_all * k, E, cf)                               # the one-process formula, all tokens
assert expert_capacity == int(capped_traces[0]["moe.capacity"])
kept = seats_kept(choice_counts, expert_capacity)                          # (W, k, E)
print(f"capacity = ceil({cf} * {n_all} tokens * {k} / {E}) = {expert_capacity} pairs per expert")
print("chosen pairs per expert:", choice_counts.sum(dim=(0, 1)).tolist(), "-> kept:", kept.sum(dim=(0, 1)).tolist())
assert torch.equal(kept.sum(dim=1), capped_traces[0]["moe.routing_counts"]), "the seats the layer used"
viz.row(*(viz.show(capped_traces[rank], "moe.expert_ids", row_labels=tokens[rank], col_labels=["1st", "2nd"],
                   note="-1: dropped") for rank in range(world_size)))

# %% [markdown]
# ## Bytes moved, measured and counted
#
# Each rank's trace records the bytes its buffers carried to the other rank: the count table, the
# tokens it sent, the results it returned (its own chunk never leaves it). `exchange_bytes` counts the
# same from the send and receive counts and the row size (`d_model` float32 numbers).

# %%
for rank in range(world_size):
    trace = traces[rank]
    counted = exchange_bytes(trace["moe.send_counts"], trace["moe.recv_counts"], rank, small.d_model, 4,
                             small.moe.top_k, small.moe.n_experts)
    measured = int(trace["moe.bytes_moved"])
    print(f"rank {rank}: measured {measured} bytes, counted {counted['total']} "
          f"(counts {counted['counts']} + tokens {counted['tokens']} + results {counted['results']})")
    assert measured == counted["total"]

# %% [markdown]
# ## Your turn: the explorer
#
# The explorer routes seeded tokens with the same router every rank holds, splits them into
# `world_size` batches and draws what the ranks would exchange, with the same core functions the
# layer uses (`slot_counts`, `exchange_plan`, `exchange_bytes`); it starts no processes. Add ranks and
# watch the grid grow and each rank's bytes approach the even-routing formula; add experts and see
# that the bytes hardly move; lower the capacity factor and watch pairs being dropped before they
# are sent. Try 3 ranks with 4 experts.

# %%
from tinymoe.viz.expert_parallel_explorer import ExpertParallelExplorer

ExpertParallelExplorer(world_size=2, n_experts=4, top_k=2, tokens_per_rank=8, d_model=64)

# %% [markdown]
# ## The same at a larger size
#
# The third run had 256 tokens per rank, `d_model = 64`, 8 experts, top-2. A router that spreads tokens
# evenly sends a pair to the other rank with probability `(world_size - 1) / world_size`, so a rank
# should send about `2 * N * top_k * (W - 1) / W * d_model * 4` bytes (tokens out, results back) plus
# the count table. The measured bytes come close; a freshly initialised router is not perfectly even.

# %%
for rank in range(world_size):
    trace = results[rank][2]["trace"]
    measured = int(trace["moe.bytes_moved"])
    expected = expected_bytes_per_rank(256, 2, 64, world_size, 4, n_experts=8)
    print(f"rank {rank}: measured {measured:,} bytes, even-routing formula {expected:,.0f} "
          f"({measured / expected - 1:+.1%}); local expert load {trace['moe.local_expert_load'].tolist()}")
viz.show(results[0][2]["trace"], "moe.routing_counts", decimals=0, row_labels=["rank 0", "rank 1"],
         col_labels=[f"e{e}" for e in range(8)], note="pairs from each rank to each expert")

# %% [markdown]
# ## Communication against compute as tokens, experts and ranks grow
#
# Per rank and step the link carries about `2 * N * top_k * (W - 1) / W * d_model * bytes` while the
# local experts do about `N * top_k * 2 * 3 * d_model * d_ff` flops. Both grow with the tokens; their
# ratio, `3 * d_ff / (bytes * (W - 1) / W)` flops per byte, does not depend on the number of tokens or
# experts. More experts only add to the count table (and to the weights each rank holds); more ranks
# push `(W - 1) / W` towards 1. The dots are the bytes measured in the run above.

# %%
d_model, d_ff, top_k = large.d_model, large.d_ff, large.moe.top_k
fig, axes = plt.subplots(1, 3, figsize=(13, 3.6))
N = np.array([16, 64, 256, 1024, 4096])
axes[0].plot(N, expected_bytes_per_rank(N, top_k, d_model, 2, 4, n_experts=8), "o-", label="bytes sent (W = 2)")
axes[0].plot(N, expected_bytes_per_rank(N, top_k, d_model, 8, 4, n_experts=8), "s--", label="bytes sent (W = 8)")
axes[0].plot(N, expert_flops_per_rank(N, top_k, d_model, d_ff), "^-", color="#444", label="expert flops")
axes[0].plot([256] * world_size, [int(results[r][2]["trace"]["moe.bytes_moved"]) for r in range(world_size)],
             "o", color="#de5440", label="measured (W = 2)")
axes[0].set(xscale="log", yscale="log", xlabel="tokens per rank", title="grow the tokens")
E = np.array([2, 4, 8, 16, 32, 64, 128])
axes[1].plot(E, expected_bytes_per_rank(256, top_k, d_model, 2, 4, n_experts=E), "o-", label="bytes sent per rank")
axes[1].plot(E, expert_flops_per_rank(256, top_k, d_model, d_ff) + 0 * E, "^-", color="#444", label="expert flops")
weights = [moe_parameter_counts(large.replace(moe=dataclasses.replace(large.moe, n_experts=int(e))))["experts"] for e in E]
axes[1].plot(E, np.array(weights) / 2 * 4, "d:", color="#999", label="expert weight bytes per rank")
axes[1].set(xscale="log", yscale="log", xlabel="n_experts (W = 2, 256 tokens)", title="grow the experts")
W = np.array([1, 2, 4, 8, 16, 32, 64])
axes[2].plot(W, expected_bytes_per_rank(256, top_k, d_model, W, 4), "o-", label="token + result bytes per rank")
far = 10 ** 12                                                              # W -> infinity: (W - 1) / W -> 1
axes[2].plot(W, expected_bytes_per_rank(256, top_k, d_model, far, 4) + 0 * W, "--", color="#444", label="W -> infinity")
axes[2].set(xscale="log", xlabel="ranks (256 tokens per rank)", title="grow the ranks")
for ax in axes:
    ax.legend(fontsize=7)
    ax.grid(alpha=0.3)
plt.tight_layout()
plt.show()
intensity = {w: expert_flops_per_rank(1, top_k, d_model, d_ff) / expected_bytes_per_rank(1, top_k, d_model, w, 4)
             for w in (2, far)}
print(f"flops per byte sent at W = 2: {intensity[2]:.0f}; as W grows: {intensity[far]:.0f} (= 3 d_ff / 4 bytes per float32)")

# %% [markdown]
# ## On several GPUs and machines: torchrun
#
# The same layer runs on GPUs unchanged: `init_group()` picks NCCL when CUDA is there and reads the
# rank, world size and meeting point from the environment `torchrun` sets. `tinymoe.distributed.demo`
# is a ready script (one step, forward and backward, each rank printing its traffic). On one machine
# with 8 GPUs:
#
# ```bash
# torchrun --standalone --nproc-per-node=8 -m tinymoe.distributed.demo --tokens 4096 --d-model 1024 --d-ff 2816 --experts 64 --no-check
# ```
#
# On two machines with 8 GPUs each (16 ranks), the same command on both, pointing at one host:
#
# ```bash
# # on every machine (node-rank 0 on the first, 1 on the second)
# torchrun --nnodes=2 --node-rank=0 --nproc-per-node=8 \
#          --rdzv-backend=c10d --rdzv-endpoint=node0.example:29500 --rdzv-id=moe-ep \
#          -m tinymoe.distributed.demo --tokens 4096 --d-model 1024 --d-ff 2816 --experts 64 --no-check
# ```
#
# And on this CPU, as gloo processes (what `launch` did above):
#
# ```bash
# torchrun --standalone --nproc-per-node=2 -m tinymoe.distributed.demo
# ```
#
# If a rank dies, hangs or skips the layer, the others stop within the timeout (`--timeout`, 60 s by
# default) with an `ExpertParallelError` naming the rank and the step; ranks that were given different
# configs are told which field differs.

# %% [markdown]
# ## What we saw
#
# - Experts are most of an MoE's weights and each token needs only `top_k` of them: keep the experts
#   still and move the tokens.
# - One step is: route locally, exchange the counts, all-to-all the tokens (uneven splits), run the
#   local experts, all-to-all the results back, combine in a fixed order. The output equals the
#   one-process layer's; the backward pass runs each all-to-all again, transposed.
# - Capacity follows from the exchanged counts, so the dropped tokens do not depend on the split.
# - Bytes per step grow with tokens like compute does; their ratio is set by `d_ff` and the number
#   format, which is why expert parallelism wants fast links (NVLink, InfiniBand).
