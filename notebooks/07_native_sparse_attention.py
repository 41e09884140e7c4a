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
# # 07 · Native sparse attention
#
# Dense causal attention scores every query against every earlier key: at 64k tokens that is two
# billion products per head and layer. Native Sparse Attention (NSA, Yuan et al. 2025,
# [arXiv 2502.11089](https://arxiv.org/abs/2502.11089)) gives each query three small sets of keys
# instead, and mixes what it reads from each with learned gates:
#
# - **cmp**, compressed: each block of `l` keys becomes one key, made by a learned projection;
# - **sel**, selected: the `n` most useful blocks of `l'` keys, read at full resolution;
# - **win**, sliding window: the `w` most recent keys.
#
# **After this notebook you can:**
# - cut keys into blocks, flatten a block and project it to one compressed key by hand, and say
#   why one projection serves every block (it is a convolution);
# - say which compressed keys a query may see (only blocks wholly in its past);
# - rank blocks from the compressed attention, apply the top-n rule (first and local blocks
#   always kept) and explain why the query heads of a GQA group choose together;
# - compare the sliding window with a convolution of stride 3, and say where the analogy breaks;
# - compute the gates and the mix of the three branches;
# - count the query-key products of NSA and dense attention, and say where NSA costs **more**.
#
# **Where we are.** One attention layer with grouped-query attention (notebook 05): `d_model = 5`,
# two query heads of `head_dim = 3` sharing one key/value head, ten tokens. No positions here
# (RoPE needs an even `head_dim`; with `position="rope"` the core rotates the keys before
# compressing them). Dense attention: each of the two heads scores 1 + 2 + … + 10 = 55 query-key pairs.

# %%
import math

import matplotlib.pyplot as plt
import torch, tinymoe as tm
import torch.nn.functional as F
from tinymoe import viz
from tinymoe.nsa import BRANCHES, BlockCompressor, NativeSparseAttention, nsa_reference, qk_products

torch.manual_seed(0)
torch.set_printoptions(precision=2, sci_mode=False)

dense = tm.ModelConfig(vocab_size=16, d_model=5, n_heads=2, n_kv_heads=1, head_dim=3, position="none")
viz.shapes_table(dense, module="attention")

# %% [markdown]
# ## The sparse settings at sheet size
#
# Compressed blocks of `l = 3` tokens, one every `d = 3` tokens (no overlap); selection blocks of
# `l' = 3`; each query keeps `n = 3` selection blocks, of which the first block of the sequence and
# its own block are always kept (`n_initial_blocks = 1`, `n_local_blocks = 1`), so one place is
# left to win; a window of `w = 3`. The paper's settings are `l = 32, d = 16, l' = 64, n = 16,
# w = 512` (1 initial + 2 local blocks). We load weights rounded to one decimal so the sheets read
# easily, and run the core module once with a trace: every sheet below comes from that trace.

# %%
sparse = tm.SparseAttentionConfig(block_size=3, stride=3, select_block_size=3, top_n=3, window=3,
                                  n_initial_blocks=1, n_local_blocks=1)
config = dense.replace(attention="native_sparse", nsa=sparse)

x = torch.randint(-1, 3, (1, 10, 5)).float()                             # (batch, seq_len, d_model)
attn = NativeSparseAttention(config)
with torch.no_grad():
    for p in attn.parameters():
        p.copy_((torch.randn(p.shape) * 0.5).round(decimals=1))          # readable weights

trace = tm.Trace()
out = attn(x, trace=trace)                                               # (1, 10, 5)
for name, p in attn.named_parameters():
    print(f"{name:<18} {str(tuple(p.shape)):<8} {p.numel():>3} parameters")
print(f"{'total':<27} {sum(p.numel() for p in attn.parameters()):>3}")
viz.sheet(x, "X", role="input", orientation="by_hand")

# %% [markdown]
# ## Each branch has its own keys and values
#
# The queries are shared: `W_q` makes one query per head per token, as in dense attention. But
# each branch projects the input with its own `W_k` and `W_v`. The paper's reason: if the three
# branches shared keys, the sliding window, which learns local patterns fastest, would shape the
# keys the other two must use ("shortcut learning"). Here are the three key tables of our one
# key/value head, tokens as columns.

# %%
viz.row(*(viz.show(trace, f"attn.{b}.k", orientation="by_hand") for b in BRANCHES))

# %% [markdown]
# ## Compression, step 1: cut the keys into blocks and flatten each
#
# Block `i` covers tokens `3i, 3i+1, 3i+2`: tokens 0–2, 3–5 and 6–8. Token 9 starts a block that
# is not finished yet, so ten tokens give ⌊(10 − 3) / 3⌋ + 1 = 3 blocks. A block is 3 tokens × 3
# dimensions; we add the intra-block position term `P` (3 × 3, trainable: the same offset for
# "first token of a block" wherever the block is) and flatten it into one row of 9 numbers:
# token 0's three dimensions, then token 1's, then token 2's.

# %%
k = trace["attn.cmp.k"][0, 0]                                            # (10, 3): the cmp branch's keys
P = attn.compress_k.pos.detach()                                         # (3, 3): position inside a block
l, d = sparse.block_size, sparse.stride
n_blocks = (10 - l) // d + 1                                             # 3 whole blocks
flat = torch.stack([(k[i * d: i * d + l] + P).flatten() for i in range(n_blocks)])  # (3, 9)
torch.testing.assert_close(flat, trace["attn.cmp.compress_k.blocks"][0, 0])
print("the flattened blocks match the core's attn.cmp.compress_k.blocks")
slots = [f"s{s}.d{c}" for s in range(l) for c in range(3)]               # slot s of the block, dimension c
viz.row(viz.sheet(P, "P (intra-block position)", role="weight", row_labels=["s0", "s1", "s2"],
                  col_labels=["d0", "d1", "d2"]),
        viz.sheet(flat, "blocks + P, flattened", row_labels=["block 0: t0-t2", "block 1: t3-t5", "block 2: t6-t8"],
                  col_labels=slots, note="rows: blocks of 3 keys"))

# %% [markdown]
# ## Compression, step 2: one projection, 9 → 3, shared by every block
#
# One weight `W_φ` of shape `(3, 9)` maps each flattened block to one compressed key of size 3.
# Laid out by hand: `W_φ` on the left, the flattened blocks on top as columns (column `t0` is
# block 0, `t1` block 1, `t2` block 2), the compressed keys where they meet. The same 27 weights
# serve every block, so a longer sequence makes more compressed keys but no more parameters.
# Then we build the core's `BlockCompressor` on its own with the same weights and check it agrees.

# %%
W_phi = attn.compress_k.W.weight.detach()                                # (3, 9)
k_cmp = flat @ W_phi.T                                                   # (n_blocks, 3)

compressor = BlockCompressor(block_size=3, stride=3, dim=3)
compressor.load_state_dict(attn.compress_k.state_dict())
torch.testing.assert_close(compressor(k), k_cmp)
torch.testing.assert_close(trace["attn.cmp.k_compressed"][0, 0], k_cmp)
print("by hand == BlockCompressor == the module's attn.cmp.k_compressed")
viz.matmul_sheet(W_phi, flat, result=k_cmp, names=("W_phi", "flattened blocks", "k_cmp"))

# %% [markdown]
# The values are compressed the same way by a second compressor with its own `W_φ` and `P`
# (`attn.compress_v`). Each compressor costs 27 + 9 = 36 parameters whatever the sequence length.

# %%
viz.row(*(viz.show(trace, f"attn.cmp.{kv}_compressed", row_labels=["c0", "c1", "c2"],
                   note="rows: compressed blocks") for kv in "kv"))

# %% [markdown]
# ## Attention over the compressed keys: only blocks wholly in the past
#
# Query `t` may read compressed block `i` only if the block's last token is at or before it:
# `3i + 2 ≤ t`. A block still being written (or one reaching past `t`) would leak the future into a
# summary. So queries 0 and 1 see nothing (a fully masked row: the safe softmax of notebook 01 gives
# zero weights and a zero output), queries 2–4 see block 0, and query 9 sees all three blocks but
# not its own token through this branch (the window will cover it). Then it is ordinary attention:
# scores `q · k_cmp / √3`, a masked softmax per query, a weighted sum of the compressed values.

# %%
t = torch.arange(10)[:, None]                                            # (10, 1) query positions
i = torch.arange(n_blocks)[None, :]                                      # (1, 3) compressed blocks
visible = i * d + l - 1 <= t                                             # (10, 3): block wholly in the past
q = trace["attn.q"][0]                                                   # (2 heads, 10, 3)
scores = q @ k_cmp.T / math.sqrt(3)                                      # (2, 10, 3)
p_cmp = tm.safe_softmax(scores, mask=visible)                            # (2, 10, 3)
torch.testing.assert_close(trace["attn.cmp.mask"][0], visible.expand(2, 10, 3))
torch.testing.assert_close(scores, trace["attn.cmp.scores"][0])
torch.testing.assert_close(p_cmp, trace["attn.cmp.weights"][0])
print("mask, scores and weights by hand == the core's attn.cmp.mask / scores / weights")
queries, blocks = [f"q{t}" for t in range(10)], ["c0", "c1", "c2"]
viz.row(viz.sheet(visible, "visible", row_labels=queries, col_labels=blocks),
        viz.show(trace, "attn.cmp.scores", row_labels=queries, col_labels=blocks),
        viz.show(trace, "attn.cmp.weights", row_labels=queries, col_labels=blocks))

# %% [markdown]
# ## Selecting blocks, step 1: block scores from the compressed attention
#
# Which blocks deserve a full-resolution look? The compressed branch has already said how much
# each query attends to each block: `p_cmp`. NSA reuses it, so ranking costs no extra products.
# Compressed block `i` gives selection block `j` the fraction of its tokens that lie in `j`
# (`attn.sel.overlap`; with `l = l' = d` that is the identity). Then the two query heads of our GQA
# group **add** their scores, so the group picks one set of blocks and the key/value head loads it
# from memory once. Selection block 3 (token 9) has no compressed block yet: its score is 0.

# %%
overlap = trace["attn.sel.overlap"]                                      # (3 compressed, 4 selection) blocks
block_scores = (p_cmp @ overlap).sum(0)                                  # (10, 4): both heads of the group added
torch.testing.assert_close(block_scores, trace["attn.sel.block_scores"][0, 0])
print("block scores by hand == the core's attn.sel.block_scores")
sel_blocks = ["b0", "b1", "b2", "b3"]
viz.row(viz.show(trace, "attn.sel.overlap", row_labels=blocks, col_labels=sel_blocks,
                 note="rows: compressed blocks"),
        viz.sheet(block_scores, "block_scores (head 0 + head 1)", row_labels=queries, col_labels=sel_blocks))

# %% [markdown]
# ## Selecting blocks, step 2: top-n, with the first and the local block always kept
#
# A query may only choose blocks that have begun (`3j ≤ t`). The first block of the sequence
# (`n_initial_blocks = 1`: the start of a text often matters, e.g. instructions) and the query's own
# block (`n_local_blocks = 1`: the nearest context) are always kept; the remaining
# `n − 2 = 1` place goes to the highest score, ties to the lower index. Queries 0–8 have at most
# three blocks to choose from, so they keep them all; query 9 is the first that must drop one.

# %%
chosen = torch.zeros(10, 4, dtype=torch.bool)
for t in range(10):
    own = t // 3
    begun = [j for j in range(4) if 3 * j <= t]
    always = [j for j in begun if j < sparse.n_initial_blocks or own - sparse.n_local_blocks < j <= own]
    others = sorted((j for j in begun if j not in always), key=lambda j: -block_scores[t, j])
    for j in always + others[: sparse.top_n - len(always)]:
        chosen[t, j] = True
torch.testing.assert_close(chosen, trace["attn.sel.block_mask"][0, 0])
print("top-n by hand == the core's attn.sel.block_mask")
for h in range(2):
    alone = p_cmp[h, 9] @ overlap                                        # (4,) one head's own scores
    pick = max((1, 2), key=lambda j: alone[j])
    print(f"query 9, head {h} alone: block 1 {alone[1]:.2f}, block 2 {alone[2]:.2f} -> would keep block {pick}")
print(f"query 9, the group (sum): block 1 {block_scores[9, 1]:.2f}, block 2 {block_scores[9, 2]:.2f} "
      f"-> keeps blocks {chosen[9].nonzero().flatten().tolist()}")
viz.sheet(chosen, "attn.sel.block_mask", row_labels=queries, col_labels=sel_blocks)

# %% [markdown]
# Head 1 on its own would have kept block 1; head 0 cares much more about block 2, and the group's
# sum decides for both. That is the price of sharing: a head can lose a block it wanted. The gain:
# one key/value head loads one set of blocks for the whole group.
#
# The selected branch then attends at full resolution to every key of the chosen blocks, causally
# (key ≤ query, so a query reads only the part of its own block already written). Both heads see
# the same keys (`attn.sel.mask`); their weights differ because their queries do.

# %%
sel_mask = trace["attn.sel.mask"][0]                                     # (2, 10, 10)
torch.testing.assert_close(sel_mask[0], sel_mask[1])
keys = [f"k{s}" for s in range(10)]
viz.row(viz.show(trace, "attn.sel.mask", row_labels=queries, col_labels=keys),
        viz.show(trace, "attn.sel.weights", row_labels=queries, col_labels=keys))

# %% [markdown]
# ## The sliding window
#
# Query `t` sees keys `t − 2, t − 1, t` (`w = 3`, its own position included: the core's convention,
# the same as `tm.sliding_window_mask`; some implementations count `w` keys before the query plus
# the query itself, one more). The window is the branch that keeps the nearest tokens sharp, and
# the one the other two must not lean on: hence their separate keys.

# %%
window_mask = tm.sliding_window_mask(10, sparse.window)                  # (10, 10)
torch.testing.assert_close(trace["attn.win.mask"][0, 0], window_mask)
print("sliding_window_mask(10, 3) == the core's attn.win.mask")
viz.row(viz.show(trace, "attn.win.mask", row_labels=queries, col_labels=keys),
        viz.show(trace, "attn.win.weights", row_labels=queries, col_labels=keys))

# %% [markdown]
# ## The window next to a convolution of stride 3
#
# **The analogy.** Our compressor *is* a 1-D convolution: a kernel 3 tokens wide, the 3 key
# dimensions as channels, `W_φ` as the filter and `W_φ · flatten(P)` as its bias, moved with
# stride 3 so the windows do not overlap (checked below against `F.conv1d`). The sliding window
# also looks at 3 neighbouring tokens at a time. **The differences.** (1) The window moves by 1,
# not 3: there is one window per query, consecutive windows overlap by 2, and ten tokens give ten
# outputs, not three. (2) Its weights are not a fixed learned filter: they are attention weights,
# recomputed for every query from `q_t · k_s`, positive and summing to 1. (3) It ends at the
# query (a causal window), while a compressed block is read only once it is complete.
# The footprints show it: each token feeds exactly one compressed block (token 9 none yet), but
# each key is read by up to three windows.

# %%
conv_weight = W_phi.view(3, l, 3).permute(0, 2, 1)                      # (out, channels = key dims, kernel = l)
conv = F.conv1d(k.T[None], conv_weight, bias=W_phi @ P.flatten(), stride=d)  # (1, 3, n_blocks)
torch.testing.assert_close(conv[0].T, k_cmp)
print("F.conv1d(kernel 3, stride 3) == the compressed keys")
s = torch.arange(10)[None, :]
member = (s >= i.T * d) & (s < i.T * d + l)                              # (3 blocks, 10 tokens)
print("compressed blocks each token feeds:", member.sum(0).tolist())
print("windows that read each key:        ", window_mask.sum(0).tolist())
viz.row(viz.sheet(member, "token in block (conv, stride 3)", row_labels=blocks, col_labels=keys,
                  note="rows: compressed blocks"),
        viz.sheet(window_mask, "key in window (stride 1)", row_labels=queries, col_labels=keys))

# %% [markdown]
# ## The gates mix the three branches
#
# Each branch gives every head a 3-number output per token. A gate per branch per head decides
# how much of each to keep: `g = sigmoid(W_gate x + b_gate)`, six numbers per token (2 heads × 3
# branches), read from the token's input. It is not a softmax: each gate is in (0, 1) on its own,
# so a head may open all three branches or close them all. The mix `g_cmp·o_cmp + g_sel·o_sel +
# g_win·o_win` goes, heads side by side, through `W_o` as in dense attention.

# %%
W_gate, b_gate = attn.W_gate.weight.detach(), attn.W_gate.bias.detach()  # (6, 5), (6,)
gates = torch.sigmoid(x[0] @ W_gate.T + b_gate).view(10, 2, 3).transpose(0, 1)  # (2 heads, 10, 3 branches)
torch.testing.assert_close(gates, trace["attn.gates"][0])
mixed = sum(gates[..., c, None] * trace[f"attn.{b}.out"][0] for c, b in enumerate(BRANCHES))  # (2, 10, 3)
torch.testing.assert_close(mixed, trace["attn.mixed"][0])
print("gates and mix by hand == the core's attn.gates / attn.mixed")
print(f"gates of one head and token sum to between {gates.sum(-1).min():.2f} and {gates.sum(-1).max():.2f}, not to 1")
gate_rows, dims = [f"h{h}.{b}" for h in range(2) for b in BRANCHES], [f"d{c}" for c in range(5)]
viz.row(viz.show(trace, "attn.W_gate", row_labels=gate_rows, col_labels=dims),
        viz.show(trace, "attn.b_gate", col_labels=gate_rows),
        viz.show(trace, "attn.gates", row_labels=queries, col_labels=list(BRANCHES)))

# %% [markdown]
# ## The whole module against the reference
#
# `nsa_reference` computes the same layer the slow way: an explicit boolean mask per branch, built
# one entry at a time from the rules above, and dense attention over all keys with that mask. The
# module instead lists only the keys each query needs. Same output, same masks.

# %%
ref_out, ref_masks = nsa_reference(attn, x)
print(f"largest difference module vs reference: {(out - ref_out).abs().max():.1e}")
for b in BRANCHES:
    assert torch.equal(trace[f"attn.{b}.mask"], ref_masks[b]), b
print("the masks of all three branches agree")
viz.show(trace, "attn.out")

# %% [markdown]
# ## Which keys each query sees
#
# The three masks of head 0 side by side, at token resolution. For cmp, a key is shaded when it
# lies inside a compressed block the query may read (the query sees those keys only as one
# compressed key per block). Dense causal attention would fill the whole lower triangle.

# %%
cmp_tokens = (trace["attn.cmp.mask"][0, 0].float() @ member.float()) > 0  # (10, 10): keys behind visible blocks
footprint = torch.stack([cmp_tokens, trace["attn.sel.mask"][0, 0], trace["attn.win.mask"][0, 0]]).float()
viz.heatmap(footprint, title="keys each query sees, head 0 (rows = queries, columns = keys)", width=760, height=280,
            panel_names=BRANCHES)

# %% [markdown]
# ## Counting query-key products
#
# Each `True` in a branch's mask is one query-key product. `qk_products` counts them with a
# formula per query; at our size it agrees with the masks. And at ten tokens NSA does **more** work
# than dense attention: with blocks this large relative to the sequence, the branches overlap
# (the window and the local block read the same keys) and every branch costs something.

# %%
counts = qk_products(10, sparse)
from_masks = {b: int(trace[f"attn.{b}.mask"][0, 0].sum()) for b in BRANCHES}
assert from_masks == {b: counts[b] for b in BRANCHES}, (from_masks, counts)
print("per head, 10 tokens:", {b: counts[b] for b in BRANCHES}, f"-> NSA {counts['nsa']} vs dense {counts['dense']}")

# %% [markdown]
# ## The paper's settings: where NSA pays off, and where it does not
#
# With `l = 32, d = 16, l' = 64, n = 16, w = 512`, each query reads at most `n·l' = 1024` selected
# keys and 512 window keys, plus about `t / 16` compressed keys. At 1k tokens that is *more* than
# dense attention: 16 blocks of 64 already cover the whole sequence, and the window and the
# compressed keys come on top. NSA breaks even near 2.7k tokens. Beyond that dense grows as `T²/2`
# and the selected and window branches only linearly; but the compressed branch is still quadratic
# (`T²/2d`), so the saving tends to `d = 16`× at most, and products are not wall-clock time (the
# paper's speed also comes from its kernel's memory access).

# %%
paper = tm.SparseAttentionConfig(block_size=32, stride=16, select_block_size=64, top_n=16, window=512,
                                 n_initial_blocks=1, n_local_blocks=2)
print(f"{'seq_len':>8} {'cmp':>13} {'sel':>13} {'win':>13} {'NSA':>14} {'dense':>15} {'dense / NSA':>12}")
for T in (1024, 2048, 4096, 8192, 16384, 32768, 65536):
    c = qk_products(T, paper)
    print(f"{T:>8,} {c['cmp']:>13,} {c['sel']:>13,} {c['win']:>13,} {c['nsa']:>14,} {c['dense']:>15,} {c['dense'] / c['nsa']:>12.2f}")
even = next(T for T in range(512, 8192, 16) if qk_products(T, paper)["saved"] > 0)
print(f"NSA first computes fewer products than dense at seq_len = {even:,} (searched in steps of 16)")

# %%
lengths = [2 ** e for e in range(7, 17)] + [even]
lengths.sort()
rows = [qk_products(T, paper) for T in lengths]
fig, ax = plt.subplots(figsize=(7, 4))
ax.plot(lengths, [r["dense"] for r in rows], "o-", color="#444", label="dense causal")
ax.plot(lengths, [r["nsa"] for r in rows], "o-", color="#4285c4", label="NSA (cmp + sel + win)")
for b, style in zip(BRANCHES, (":", "--", "-.")):
    ax.plot(lengths, [r[b] for r in rows], style, color="#4285c4", alpha=0.6, label=b)
ax.axvline(even, color="#de5440", lw=1)
ax.text(even * 1.1, rows[0]["dense"], f"break-even ≈ {even:,}", color="#de5440")
ax.set(xscale="log", yscale="log", xlabel="sequence length", ylabel="query-key products per head",
       title="l=32, d=16, l'=64, n=16, w=512 (the paper's settings)")
ax.legend(fontsize=8)
plt.show()

# %% [markdown]
# ## Your turn: the explorer
#
# Move `seq_len`, `block_size` (l), `stride` (d), `select_block_size` (l'), `top_n` (n) and
# `window` (w). The heatmap shows which keys head 0 sees in each branch, the sheets which compressed
# blocks and which selection blocks each query uses, the table the products counted on the trace's
# masks and by `qk_products`, and the chart the products as the sequence grows. Things to try: raise
# `seq_len` to 64 and watch NSA fall below dense; set `stride` to 2 (the blocks now overlap by one
# token and `select_block_size = 3` is no longer a multiple of the stride: the message says so and
# the last picture stays) then `select_block_size` to 4.

# %% tags=["nbval-ignore-output"]
explorer = viz.NSAExplorer(seq_len=10, block_size=3, stride=3, select_block_size=3, top_n=3, window=3)
explorer

# %% [markdown]
# The explorer can be driven from code too, exactly as the sliders do it: `.set(...)` moves
# controls, `.shape_label` is the line on screen, `.counts` the products and `.error` the message
# of an impossible combination.

# %%
explorer.set(stride=2)
print("error:", explorer.error)
explorer.set(select_block_size=4)
print(explorer.shape_label)
explorer.set(seq_len=64, block_size=4, stride=4, select_block_size=4, top_n=4, window=4)
print(explorer.shape_label)
print("masks:", {b: tuple(m.shape) for b, m in explorer.view.masks.items()}, "| counts:", explorer.view.counts)

# %% [markdown]
# ## The same code at a larger size
#
# 256 tokens, `d_model = 32`, four query heads sharing two key/value heads (`head_dim = 8`, RoPE
# on), `l = 16, d = 8, l' = 16, n = 4` (the paper's 1 initial + 2 local blocks, one place left to
# win), `w = 16`. Nothing in the module changed: the same
# `NativeSparseAttention`, the same trace names. The selected blocks of the two key/value groups
# differ, while the two heads inside a group share theirs.

# %%
big_sparse = tm.SparseAttentionConfig(block_size=16, stride=8, select_block_size=16, top_n=4, window=16)
big = tm.ModelConfig(d_model=32, n_heads=4, n_kv_heads=2, head_dim=8, max_seq_len=256,
                     attention="native_sparse", nsa=big_sparse)
big_attn = NativeSparseAttention(big)
big_x = torch.randn(1, 256, 32)
big_trace = tm.Trace()
big_out = big_attn(big_x, trace=big_trace)
big_sel = big_trace["attn.sel.mask"][0]                                  # (4 heads, 256, 256)
print("heads 0 and 1 (one group) see the same keys:", torch.equal(big_sel[0], big_sel[1]))
print("heads 0 and 2 (two groups) see the same keys:", torch.equal(big_sel[0], big_sel[2]))
c = qk_products(256, big_sparse)
print(f"products per head: cmp {c['cmp']:,} + sel {c['sel']:,} + win {c['win']:,} = {c['nsa']:,} vs dense {c['dense']:,}")
viz.heatmap(big_sel[::2], title="attn.sel.mask, 256 queries (rows) × 256 keys (columns)", width=820, height=440,
            panel_names=["kv group 0 (head 0)", "kv group 1 (head 2)"])

# %% [markdown]
# ## What changed
#
# Against the dense GQA layer we started from: `W_q` and `W_o` keep their shapes; the one `W_k`,
# `W_v` pair becomes three (one per branch); two compressors (`W_φ` and `P` for keys and values)
# and the gate (`W_gate`, `b_gate`) are new. The dense `(10, 10)` score table per head is replaced
# by a `(10, 3)` table over compressed keys and two masks that list far fewer keys once the
# sequence is long. Parameters: 90 → 258 at this size, none of them depending on the sequence length.

# %%
viz.shapes_table(config, previous=dense, module="attention")
