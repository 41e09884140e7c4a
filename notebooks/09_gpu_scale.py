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
# # 09 · GPU scale: the Triton routing kernel
#
# Notebook 06 built the MoE layer with three PyTorch dispatch paths: a loop over experts, a dense
# teaching version, and a grouped one that sorts tokens by expert. Here is the fourth, `triton`:
# the same computation as four GPU kernels, the way production MoE layers run. We first watch
# every kernel's output at spreadsheet size (ten tokens, four experts), then run the layer at the
# sizes of Mixtral, Qwen3 and DeepSeek-V3.
#
# **After this notebook you can:**
# - say what each stage does: router, alignment, grouped GEMMs, combine;
# - read the alignment tables: counts, padded offsets, the permutation, the expert of every tile;
# - explain why the buffers are sized for the worst case, and why the combine has no atomics;
# - switch the layer to `dispatch="triton"` and check it against the PyTorch paths.
#
# This notebook has no explorer of its own: what it shows are kernel stages at fixed launch sizes,
# not a config to move. To move the same routing (experts, top-k, capacity, router), use notebook
# 06's `MoEExplorer`; the kernels here compute exactly its picture (this notebook checks them
# against the PyTorch paths).
#
# **Without a GPU** every kernel here runs in Triton's *interpreter*, which executes the same
# kernel code with numpy on the CPU: same numbers, far slower. The interpreter cannot multiply
# bfloat16 matrices (numpy has no bfloat16), so on the CPU we use float32 (float16 works too).

# %%
import sys
from pathlib import Path

import torch, tinymoe as tm
from tinymoe import viz
from tinymoe import kernels as K                      # sets TRITON_INTERPRET=1 first when there is no GPU
from tinymoe.moe.dispatch import dispatch_grouped, dispatch_loop
from tinymoe.moe.capacity import apply_capacity, capacity
from tinymoe.moe.topk import TopKRouter

torch.manual_seed(0)
torch.set_printoptions(precision=2, sci_mode=False)
d_model, d_ff, n_experts, top_k, n_tokens = 5, 6, 4, 2, 10

# %% tags=["nbval-ignore-output"]
ON_GPU = torch.cuda.is_available() and not K.interpreted()
print(f"GPU: {torch.cuda.get_device_name()}" if ON_GPU else
      "No GPU: the kernels run in Triton's interpreter (numpy on the CPU).")

# %% [markdown]
# ## Stage 1, the router: which token goes to which expert
#
# The router scores every token against every expert with one linear map, `logits = x W_router^T`.
# The router kernel takes those logits, and per token computes a float32 softmax, keeps the top
# k = 2 experts (k rounds of "take the largest, then hide it"), and renormalises their two weights
# to sum to 1. Each kernel program handles a *block* of tokens; here blocks of 4, so 3 programs.

# %%
router = TopKRouter(d_model, n_experts, top_k)
x = torch.randn(n_tokens, d_model)                                       # (n_tokens, d_model)
with torch.no_grad():
    logits = router.logits(x)                                            # (n_tokens, n_experts)
routing = K.triton_route(logits, top_k, block_tokens=4)
slots = [f"slot {j}" for j in range(top_k)]
viz.row(viz.sheet(x, "x", role="input"), viz.sheet(router.weight, "W_router", role="weight"),
        viz.sheet(logits, "router logits"),
        viz.sheet(routing.expert_ids, "expert_ids", col_labels=slots, categorical=True),
        viz.sheet(routing.weights, "gate weights", col_labels=slots))

# %% [markdown]
# Every token went to two experts, best first, and its two weights sum to 1. The PyTorch router
# of notebook 06 makes exactly the same choice from the same logits:

# %%
with torch.no_grad():
    reference = router(x)
print("same experts as PyTorch's top-k:", torch.equal(routing.expert_ids.long(), reference.expert_ids))
print("same gates (to 1e-6):           ", torch.allclose(routing.weights, reference.gates, atol=1e-6))

# %% [markdown]
# While a program holds its block it also counts how many of its (token, slot) pairs went to each
# expert: `block_counts[block, expert]`. Summed down the blocks, that is the expert load. The next
# stage needs these counts, so the router hands them over instead of counting again.

# %%
blocks = [f"block {b} (t{4 * b}-t{min(4 * b + 3, n_tokens - 1)})" for b in range(routing.block_counts.shape[0])]
experts = [f"e{e}" for e in range(n_experts)]
viz.row(viz.sheet(routing.block_counts, "block_counts", row_labels=blocks, col_labels=experts,
                  note="rows: blocks of tokens"),
        viz.sheet(routing.expert_counts, "expert load", col_labels=experts))

# %% [markdown]
# ## Stage 2, alignment: give each expert a contiguous stretch of rows
#
# A matrix product wants each expert's tokens next to each other. Number the (token, slot) pairs
# `pair = token * top_k + slot`. Alignment computes where every pair goes in an expert-sorted list
# of rows, in which every expert's segment is padded to a multiple of the GEMM tile height
# `BLOCK_M`, so that every tile of rows belongs to one expert. `BLOCK_M` is 16 at least, because
# `tl.dot` multiplies blocks of 16 or more.
#
# The padded counts, added up (a prefix sum), give each expert's first row: `expert_offsets`.
# A running sum down each column of `block_counts` gives where each block's pairs start inside
# an expert's segment: `block_starts`.

# %%
alignment = K.align(routing.expert_ids, n_experts, block_m=16,
                    block_counts=routing.block_counts, block_tokens=routing.block_tokens)
viz.row(viz.sheet(alignment.expert_counts, "expert_counts", col_labels=experts),
        viz.sheet(alignment.expert_offsets, "expert_offsets", col_labels=experts + ["end"]),
        viz.sheet(alignment.block_starts, "block_starts", row_labels=blocks, col_labels=experts,
                  note="rows: blocks of tokens"))

# %% [markdown]
# Now every pair's row is `expert_offsets[e] + block_starts[block, e] + (earlier pairs of e in
# its block)`. The result is a permutation: `sorted_pairs` lists, row by row, which pair each row
# holds (-1 for padding). Drawn one tile per line, each line is one expert's stretch. Inside a
# segment the pairs stay in token order, so the layout is deterministic. `pair_rows` is the
# inverse: the row where each (token, slot) landed.

# %%
tiles = alignment.sorted_pairs.view(alignment.n_tiles, alignment.block_m)           # (n_tiles, BLOCK_M)
tile_labels = [f"tile {t} → e{int(e)}" if e >= 0 else f"tile {t} unused" for t, e in enumerate(alignment.tile_experts)]
pairs = torch.arange(n_tokens * top_k).view(n_tokens, top_k)
viz.column(viz.sheet(tiles, "sorted_pairs, one tile per line", row_labels=tile_labels,
                     col_labels=[f"+{i}" for i in range(alignment.block_m)], note="rows: tiles"),
           viz.row(viz.sheet(pairs, "pair = token * top_k + slot", col_labels=slots),
                   viz.sheet(alignment.pair_rows.view(n_tokens, top_k), "pair_rows", col_labels=slots),
                   viz.sheet(alignment.tile_experts, "tile_experts")))

# %% [markdown]
# How many rows is that? The kernels cannot ask: reading a count back from the GPU would stall
# the pipeline. So every buffer is sized for the worst case, `tokens * top_k + n_experts *
# (BLOCK_M - 1)` rows rounded up to whole tiles (each expert wastes at most `BLOCK_M - 1` rows on
# padding), and tiles past the last segment are marked -1 in `tile_experts`, so the GEMM programs
# launched for them return at once.

# %%
print(f"pairs: {n_tokens * top_k}, rows allocated: {alignment.n_rows} (worst case), "
      f"rows in use: {int(alignment.expert_offsets[-1])}, tiles: {alignment.n_tiles}")

# %% [markdown]
# ## Stage 3, grouped GEMMs: every expert on its own rows, in one launch
#
# Each GEMM program takes one tile of rows, looks up its expert in `tile_experts`, and multiplies
# by that expert's slice of the stacked weights. The first kernel gathers the token rows of `x`
# straight from memory (no copy), computes `x W_gate^T` and `x W_up^T` together and applies
# SwiGLU before writing anything: `hidden = silu(gate) * up`. Padding rows read zeros and stay
# zero, so the sheet below leaves them out; each row is labelled with its row, pair and expert.

# %%
experts_ffn = tm.moe.Experts(n_experts, d_model, d_ff)
w_gate, w_up, w_down = (w.detach() for w in experts_ffn.weights())
config = K.tile_config(n_tokens * top_k / n_experts, d_ff, d_model, x.dtype)
hidden, _, _ = K.gate_up(x, w_gate, w_up, alignment, config)                         # (n_rows, d_ff)
real = torch.nonzero(alignment.sorted_pairs >= 0).flatten()                          # rows holding a pair
used = int(alignment.expert_offsets[-1])
pair_of, expert_of_tile = alignment.sorted_pairs.tolist(), alignment.tile_experts.tolist()
row_labels = [f"r{r} p{pair_of[r]} e{expert_of_tile[r // alignment.block_m]}" for r in real.tolist()]
print("padding rows are zero:", bool((hidden[:used][alignment.sorted_pairs[:used] < 0] == 0).all()))
viz.sheet(hidden[real], "hidden = silu(x W_gate[e]^T) * (x W_up[e]^T)", row_labels=row_labels,
          note="rows: (token, slot) pairs by expert")

# %% [markdown]
# The second kernel multiplies by `W_down[e]^T` and, in its epilogue, scales each row by its
# pair's gate weight, in float32, before rounding to the output dtype.

# %%
config_down = K.tile_config(n_tokens * top_k / n_experts, d_model, d_ff, x.dtype)
rows = K.grouped_matmul(hidden, w_down, alignment, config_down, gather_rows=False,
                        row_scales=routing.weights.reshape(-1))                     # (n_rows, d_model)
viz.sheet(rows[real], "gate * hidden W_down[e]^T", row_labels=row_labels,
          note="rows: (token, slot) pairs by expert")

# %% [markdown]
# ## Stage 4, combine: each token's two rows added back, in a fixed order
#
# Token t's output is the sum of the rows of its pairs, `pair_rows[t, 0]` then `pair_rows[t, 1]`.
# A faster-looking design lets every GEMM program add its rows into the output with atomic adds,
# but then the order of the additions, and so the rounding, changes from run to run. Summing here
# in slot order makes the same input give bitwise the same output. It matches both PyTorch paths:

# %%
out = K.combine(rows, alignment)                                                     # (n_tokens, d_model)
ids, gates = routing.expert_ids.long(), routing.weights
viz.row(viz.sheet(out, "out (triton)", role="output"),
        viz.sheet(dispatch_loop(x, ids, gates, w_gate, w_up, w_down), "out (loop)", role="output"))

# %%
for name, path in (("loop", dispatch_loop), ("grouped", dispatch_grouped)):
    print(f"triton equals {name:<8} within 1e-6:", torch.allclose(out, path(x, ids, gates, w_gate, w_up, w_down), atol=1e-6))

# %% [markdown]
# ## Full experts and dropped tokens
#
# With a capacity (Switch Transformer, notebook 06), an expert takes at most
# `ceil(capacity_factor * pairs / n_experts)` pairs and the rest are dropped: id -1, gate 0.
# Alignment simply does not count them: they get no row (`pair_rows` -1), the segments shrink,
# and the combine adds nothing for them.

# %%
cap = capacity(n_tokens * top_k, n_experts, 1.0)
capped_ids, capped_gates, dropped = apply_capacity(ids, gates, n_experts, cap)
capped = K.align(capped_ids, n_experts, block_m=16)
viz.row(viz.sheet(capped_ids, f"expert_ids, capacity {cap}", col_labels=slots),
        viz.sheet(capped.pair_rows.view(n_tokens, top_k), "pair_rows", col_labels=slots),
        viz.sheet(capped.expert_counts, "expert_counts", col_labels=experts))

# %% [markdown]
# `triton_moe_dispatch` runs the last three stages in one call, with the signature of the PyTorch
# paths. It is deterministic: the same input twice gives bitwise-equal outputs, and permuting the
# tokens permutes the outputs exactly (no token's result depends on where it sits in the batch).

# %%
expert_weights = (w_gate, w_up, w_down)
capped_out = K.triton_moe_dispatch(x, capped_ids, capped_gates, *expert_weights)
again = K.triton_moe_dispatch(x, capped_ids, capped_gates, *expert_weights)
perm = torch.randperm(n_tokens)
permuted = K.triton_moe_dispatch(x[perm], capped_ids[perm], capped_gates[perm], *expert_weights)
looped = dispatch_loop(x, capped_ids, capped_gates, *expert_weights)
print("matches the loop with drops:", torch.allclose(capped_out, looped, atol=1e-6))
print("same input twice, bitwise:  ", torch.equal(capped_out, again))
print("permuted batch, bitwise:    ", torch.equal(capped_out[perm], permuted))

# %% [markdown]
# ## The layer trains with it
#
# The four stages are wrapped in a `torch.autograd.Function`. Its backward runs the same grouped
# kernels with the weights read transposed (a strided view, no copy), plus one more kernel that
# sums each expert's weight gradient over its rows. The gates' gradient flows on into the router,
# so `W_router` learns too. Switching the layer's backend is one field:

# %%
cfg = tm.ModelConfig(d_model=d_model, d_ff=d_ff, position="none",
                     moe=tm.MoEConfig(n_experts=n_experts, top_k=top_k, dispatch="grouped"))
torch.manual_seed(0)
grouped_layer = tm.moe.MoE(cfg)
triton_layer = tm.moe.MoE(cfg)
triton_layer.load_state_dict(grouped_layer.state_dict())
triton_layer.dispatch = "triton"
batch = torch.randn(2, 5, d_model)
for layer in (grouped_layer, triton_layer):
    layer_out, losses = layer(batch)
    (layer_out.square().mean() + sum(losses.values())).backward()
for (name, p), q in zip(grouped_layer.named_parameters(), triton_layer.parameters()):
    print(f"{name:<18} gradient equal within 1e-5: {torch.allclose(p.grad, q.grad, atol=1e-5)}")

# %% [markdown]
# ## Full scale
#
# The same kernels at the sizes the models ship with. The `parameters` cell picks the model and
# the batch sizes (papermill can override it). On a GPU the next cells run every backend at that
# size (the loop over experts, `torch._grouped_mm`, a dense GEMM with the same FLOPs as the
# ceiling, and ours) and plot the figures. On a CPU they say so, and run the same cells at a tiny
# size in the interpreter: the code path is the same, the timings measure numpy, not a GPU.

# %% tags=["parameters"]
model = "Qwen3-30B-A3B"        # or "Mixtral-8x7B", "DeepSeek-V3"
token_counts = [128, 1024, 4096, 32768]
routing_kind = "random"        # "balanced" or "skewed"
dtype_name = "bfloat16"

# %%
root = next(p for p in (Path.cwd(), *Path.cwd().parents) if (p / "benchmarks" / "bench_triton.py").exists())
sys.path.insert(0, str(root / "benchmarks"))
import bench_triton as bench                                                         # noqa: E402

if ON_GPU:
    device, dtype, shape = torch.device("cuda"), getattr(torch, dtype_name), bench.SHAPES[model]
else:
    model, token_counts, dtype = "tiny (interpreter)", [16, 64], torch.float32
    device, shape = torch.device("cpu"), bench.TINY[model]
    print("No GPU: running the full-scale cells at a tiny size in Triton's interpreter, in float32.")
print(f"{model}: d_model={shape[0]}, d_ff={shape[1]}, n_experts={shape[2]}, top_k={shape[3]}; tokens {token_counts}")

# %% [markdown]
# First the answer, then the speed: at this size the Triton layer must agree with the PyTorch
# grouped path.

# %%
generator = torch.Generator(device.type).manual_seed(0)
weights = bench.make_weights(shape, dtype, device, generator)
n = token_counts[0]
x_big = torch.randn(n, shape[0], generator=generator, device=device).to(dtype)
route_big = K.triton_route(bench.make_logits(routing_kind, n, shape[2], shape[3], device, generator), shape[3])
with torch.no_grad():
    ours = K.triton_moe_dispatch(x_big, route_big.expert_ids.long(), route_big.weights, *weights)
    theirs = dispatch_grouped(x_big, route_big.expert_ids.long(), route_big.weights, *weights)
error = ((ours.float() - theirs.float()).abs().max() / theirs.float().abs().max()).item()
print(f"{n} tokens: triton agrees with the grouped path to {'1e-2' if dtype != torch.float32 else '1e-5'}:",
      error < (1e-2 if dtype != torch.float32 else 1e-5))

# %% [markdown]
# Now every backend at every batch size, and each Triton stage alone. TFLOP/s counts the layer's
# `6 * tokens * top_k * d_model * d_ff`; `%dense` is the dense GEMM's time over this one's;
# `%roof` compares with the GPU's spec-sheet roofline; `%layer` is a stage's share of our layer.

# %% tags=["nbval-ignore-output"]
results = []
for n in token_counts:
    results += bench.measure(model, shape, weights, routing_kind, n, dtype, device, 10 if ON_GPU else 2, generator)
bench.print_table(results)

# %% tags=["nbval-ignore-output"]
bench.plot(results);

# %% [markdown]
# ## What to look for on a GPU
#
# In the interpreter the Triton layer is the slowest line by far: every kernel program runs as
# numpy, one after another. On a GPU the picture turns around. The loop over experts launches
# small GEMMs one expert at a time, so it falls behind as experts multiply (Qwen3 has 128,
# DeepSeek-V3 256). The dense GEMM is the ceiling: the same FLOPs with no routing at all. Targets
# for an H100 in bfloat16: at Qwen3's shape and 32k tokens the layer above 400 TFLOP/s; Mixtral at
# 8k tokens within 10% of the dense GEMM; routing and combine under 10% of the layer's time from 4k
# tokens. `benchmarks/bench_triton.py` runs every model, routing and batch size and writes a CSV
# and a plot.
