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
# # 11 · Flash attention and the KV cache
#
# Notebook 01 computed attention as three tables: the scores `S = Q Kᵀ / √d`, the weights
# `P = softmax(S)` and the output `O = P V`. At 10 tokens the tables are tiny; at 32k tokens one
# head's `S` holds a billion numbers, and a GPU spends its time writing `S` and `P` to memory and
# reading them back. Flash attention (Dao et al. 2022, [arXiv 2205.14135](https://arxiv.org/abs/2205.14135);
# FlashAttention-2, Dao 2023, [arXiv 2307.08691](https://arxiv.org/abs/2307.08691)) computes the same
# output, exactly, without ever holding `S` or `P`: it reads the keys a tile at a time and keeps three
# running numbers per query.
#
# **After this notebook you can:**
# - run the online softmax by hand over tiles of keys, keeping the running max `m`, the running sum `l`
#   and the unnormalised output `o`, and say why the result is exact;
# - merge two partial states (how split-K decoding combines its programs) and finish one into the
#   output and the log-sum-exp, the one number per row the backward pass keeps;
# - count the bytes naive and tiled attention move, and say what the tile size buys;
# - say which tiles a causal, sliding-window or chunked mask lets the kernel skip, and where the queries
#   sit when there are fewer queries than keys (bottom-right alignment);
# - check the tiled PyTorch reference and the Triton kernel against plain attention, values and gradients;
# - watch a KV cache fill token by token while the model decodes, with flash attention reading it.
#
# **Where we are.** One attention head at sheet size: ten tokens, `head_dim = 3`, queries, keys and values
# rounded to one decimal so the sheets read easily. Tiles of 4 keys.

# %%
import math

import matplotlib.pyplot as plt
import torch

import tinymoe as tm
from tinymoe import viz
from tinymoe.flash import MaskRule, attention_bytes, empty_state, finish, flash_attention, merge, tile_map, update
from tinymoe.kernels.flash_attention import triton_flash_attention   # first: sets TRITON_INTERPRET=1 without a GPU

import torch.nn.functional as F                                      # noqa: E402 (torch.nn.attention imports Triton)
from torch.nn.attention.bias import causal_lower_right               # noqa: E402

torch.manual_seed(0)
torch.set_printoptions(precision=2, sci_mode=False)


def same(what: str, ours: torch.Tensor, reference: torch.Tensor, tol: float = 1e-5) -> None:
    """Assert and say that two tensors agree within tol (the exact difference depends on the CPU's rounding)."""
    err = (ours.detach() - reference.detach()).abs().max().item()
    assert err < tol, f"{what}: max difference {err:.1e}"
    print(f"{what}: equal within {tol:.0e}")


T, head_dim, block = 10, 3, 4
q, k, v = ((torch.randn(T, head_dim) * 1.2).round(decimals=1) for _ in range(3))   # (10, 3) each
viz.row(viz.sheet(q, "q", role="input"), viz.sheet(k, "k", role="input"), viz.sheet(v, "v", role="input"))

# %% [markdown]
# ## Plain attention, the picture we must reproduce
#
# The core's `scaled_dot_product_attention` (notebook 01) makes the whole `(10, 10)` table of weights,
# then multiplies by `v`. No mask for now: every query sees every key. This is the output flash
# attention must give, to the last digit the floats allow.

# %%
scale = 1 / math.sqrt(head_dim)
scores = q @ k.T * scale                                                 # (10, 10): every query vs every key
plain_out, weights = tm.scaled_dot_product_attention(q, k, v)            # (10, 3), (10, 10)
viz.row(viz.sheet(weights, "weights = softmax(scores)", note="rows: queries, columns: keys"),
        viz.sheet(plain_out, "out = weights v", role="output"))

# %% [markdown]
# ## The online softmax, one tile of keys at a time
#
# Softmax needs every score of a row before it can divide, so reading keys tile by tile looks impossible.
# The trick is to keep, for each query, the largest score so far `m`, the sum so far `l` of
# `exp(score - m)`, and the unnormalised output so far `o`, the sum of `exp(score - m) v`. Before any key:
# `m = -inf`, `l = 0`, `o = 0`. Here is the first tile, keys 0–3, by hand: its scores, then the new max.

# %%
tiles = [(start, min(start + block, T)) for start in range(0, T, block)]
print("key tiles:", tiles)
state = empty_state((T,), head_dim)                                      # m (10,), l (10,), o (10, 3)
s0 = scores[:, 0:4]                                                      # (10, 4): this tile's scores
m1 = torch.maximum(state.m, s0.amax(dim=-1))                             # (10,)
viz.row(viz.sheet(s0, "scores, keys 0-3", col_labels=["k0", "k1", "k2", "k3"], note="rows: queries"),
        viz.sheet(m1[:, None], "m after tile 1", col_labels=["m"]))

# %% [markdown]
# Then the tile's terms `p = exp(s - m)` (every exponent is at most 0: the safe softmax of notebook 01),
# their row sums, and `p v`. The old `l` and `o` are multiplied by `exp(m_old - m_new)` first; on the first
# tile `m_old = -inf`, so that factor is 0 and nothing old is kept. The core's `update` does exactly these
# lines: we check it.

# %%
p = torch.exp(s0 - m1[:, None])                                          # (10, 4)
rescale = torch.exp(state.m - m1)                                        # (10,): exp(-inf) = 0 here
l1 = rescale * state.l + p.sum(dim=-1)                                   # (10,)
o1 = rescale[:, None] * state.o + p @ v[0:4]                             # (10, 3)
state = update(state, s0, v[0:4])
for name, mine, core in (("m", m1, state.m), ("l", l1, state.l), ("o", o1, state.o)):
    torch.testing.assert_close(mine, core)
print("by hand == tinymoe.flash.update for m, l and o")
viz.row(viz.sheet(p, "p = exp(s - m)", col_labels=["k0", "k1", "k2", "k3"], note="rows: queries"),
        viz.sheet(state.l[:, None], "l after tile 1", col_labels=["l"]),
        viz.sheet(state.o, "o after tile 1 (unnormalised)", role="output"))

# %% [markdown]
# ## The next tiles: the max moves, and the old sums are re-based
#
# Keys 4–7. Where a query finds a larger score than before, its `m` grows and everything summed so far
# was relative to the old max: multiplying by `exp(m_old - m_new)` (below 1) re-bases it. Where the max
# did not move the factor is exactly 1. The `rescale` column shows which queries had to re-base.

# %%
m_old = state.m
state = update(state, scores[:, 4:8], v[4:8])
viz.row(viz.sheet(scores[:, 4:8], "scores, keys 4-7", col_labels=["k4", "k5", "k6", "k7"], note="rows: queries"),
        viz.sheet(torch.stack([m_old, state.m, torch.exp(m_old - state.m)], dim=1), "m_old, m_new, rescale",
                  col_labels=["m_old", "m_new", "rescale"]),
        viz.sheet(state.l[:, None], "l after tile 2", col_labels=["l"]),
        viz.sheet(state.o, "o after tile 2", role="output"))
print("queries whose max moved on tile 2:", (state.m > m_old).nonzero().flatten().tolist())

# %% [markdown]
# The last tile holds only keys 8 and 9 (ten is not a multiple of four): a short tile is no different.

# %%
m_old = state.m
state = update(state, scores[:, 8:10], v[8:10])
viz.row(viz.sheet(scores[:, 8:10], "scores, keys 8-9", col_labels=["k8", "k9"], note="rows: queries"),
        viz.sheet(torch.stack([m_old, state.m, torch.exp(m_old - state.m)], dim=1), "m_old, m_new, rescale",
                  col_labels=["m_old", "m_new", "rescale"]),
        viz.sheet(state.l[:, None], "l after tile 3", col_labels=["l"]),
        viz.sheet(state.o, "o after tile 3", role="output"))

# %% [markdown]
# ## Why it is exact
#
# After the last tile, `m` is the row's true max and `l` and `o` are the sums of `exp(s - m)` and
# `exp(s - m) v` over all keys: every term added with some older max was multiplied, exactly once per
# change, by `exp(m_old - m_new)`, and those factors multiply out to `exp(m_then - m_final)`. Nothing was
# approximated, so `o / l` is the softmax attention output. The only difference from the plain table is the
# order of the floating-point additions.

# %%
flash_out, lse = finish(state)                                           # o / l and m + log l
same("online softmax vs plain attention", flash_out, plain_out)
torch.testing.assert_close(lse, torch.logsumexp(scores, dim=-1))
backwards = empty_state((T,), head_dim)
for start, end in reversed(tiles):                                       # the tiles in the other order
    backwards = update(backwards, scores[:, start:end], v[start:end])
torch.testing.assert_close(finish(backwards)[0], plain_out)
print("equal to plain attention, whichever order the tiles come in")
viz.row(viz.sheet(flash_out, "o / l (online)", role="output"), viz.sheet(plain_out, "out (plain)", role="output"))

# %% [markdown]
# ## Two partial states merge
#
# The same re-basing merges two states computed over different keys: `m = max(m_a, m_b)`, and each part's
# `l` and `o` are multiplied by `exp(m_part - m)` before adding. When one query has a long cache of keys,
# split-K decoding ("flash-decoding") gives slices of the keys to different programs and merges their states
# at the end. Exercise 11 asks you to write this merge, and to mind a query that has seen no key
# (`m = -inf` on both sides: `exp(-inf - (-inf))` is NaN).

# %%
state_a = update(empty_state((T,), head_dim), scores[:, :6], v[:6])     # keys 0-5
state_b = update(empty_state((T,), head_dim), scores[:, 6:], v[6:])     # keys 6-9
merged = merge(state_a, state_b)
for name, a, b in zip(("m", "l", "o"), merged, state):
    torch.testing.assert_close(a, b)
print("merge(keys 0-5, keys 6-9) == the state after all three tiles")
viz.row(viz.sheet(torch.stack([state_a.m, state_b.m, merged.m], 1), "m: part a, part b, merged",
                  col_labels=["m_a", "m_b", "m"]),
        viz.sheet(torch.stack([state_a.l, state_b.l, merged.l], 1), "l: part a, part b, merged",
                  col_labels=["l_a", "l_b", "l"]))

# %% [markdown]
# ## Finishing: the output and the log-sum-exp
#
# `finish` returns `out = o / l` and one more number per query, `lse = m + log l`, the log of the softmax's
# denominator. It is all the backward pass needs to rebuild any weight: `P = exp(S - lse)`. So the forward
# keeps only the output and `lse` (10 numbers here, not the 100 of the weights), and the backward recomputes
# each tile of `P` when it needs it. We rebuild the whole table from `lse` to see it.

# %%
rebuilt = torch.exp(scores - lse[:, None])                               # (10, 10)
same("exp(scores - lse) vs softmax(scores)", rebuilt, weights)
viz.sheet(lse[:, None], "lse = m + log l", col_labels=["lse"])

# %% [markdown]
# ## Memory traffic: naive vs tiled
#
# Naive attention runs three steps with the full tables in the GPU's main memory: write `S`, read it and
# write `P`, read `P` to multiply by `V`: four passes over a `T × T` table. The tiled kernel reads `Q` and
# writes `O` once, but reads every key tile's `K` and `V` once per query tile: `2 T² d / block_q` values.
# So the saving is about `2 block_q / d`: tiles must be large next to the head dimension, and they are limited
# by on-chip memory (a tile of `Q`, of `K`, of `V` and of `S` must fit). Small tiles move *more* bytes than
# naive attention. `attention_bytes` counts both for one head (float16 values, `head_dim = 128`).

# %%
print(f"{'seq_len':>8} {'tile':>5} {'naive MB':>10} {'tiled MB':>10} {'naive / tiled':>14} {'2 tile / d':>11}")
for seq_len in (1024, 16384):
    for tile in (16, 64, 128, 256):
        c = attention_bytes(seq_len, seq_len, 128, tile, tile)
        print(f"{seq_len:>8,} {tile:>5} {c['naive_bytes'] / 1e6:>10.1f} {c['tiled_bytes'] / 1e6:>10.1f} "
              f"{c['naive_bytes'] / c['tiled_bytes']:>14.2f} {2 * tile / 128:>11.2f}")

# %% [markdown]
# The same counts as the sequence grows. Both grow as `T²`; the tile size sets the gap between them, and a
# causal mask halves the tiled count (the tiles above the diagonal are never loaded) while naive attention
# still writes the whole table.

# %%
lengths = [2 ** e for e in range(8, 15)]
fig, ax = plt.subplots(figsize=(7, 4))
ax.plot(lengths, [attention_bytes(n, n, 128, 64, 64)["naive_bytes"] for n in lengths], "o-", color="#444",
        label="naive (any tile)")
for tile, style in ((16, ":"), (64, "--"), (256, "-")):
    ax.plot(lengths, [attention_bytes(n, n, 128, tile, tile)["tiled_bytes"] for n in lengths], style, marker="o",
            color="#4285c4", label=f"tiled, tiles of {tile}")
ax.plot(lengths, [attention_bytes(n, n, 128, 256, 256, MaskRule(causal=True))["tiled_bytes"] for n in lengths],
        "-", marker="s", color="#de5440", label="tiled causal, tiles of 256 (skips tiles)")
ax.set(xscale="log", yscale="log", xlabel="sequence length", ylabel="bytes read + written per head",
       title="attention's memory traffic, head_dim 128, float16")
ax.legend(fontsize=8)
plt.show()

# %% [markdown]
# ## The tiled reference, forward and backward
#
# `tinymoe.flash.flash_attention` is the whole algorithm in PyTorch (FlashAttention-2's forward and
# backward, as an autograd Function): tiles of queries, tiles of keys, the online softmax, and a backward
# that rebuilds each tile of `P` from the saved `lse`. It takes the layout `(batch, heads, seq_len, dim)`.
# We compare it with torch's `scaled_dot_product_attention`, values and gradients, on our ten tokens with
# the causal mask, and list what it saves for the backward: no `(10, 10)` table.

# %%
q4, k4, v4 = (t[None, None].clone().requires_grad_() for t in (q, k, v))   # (1, 1, 10, 3)
saved = []
with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(tuple(t.shape)) or t, lambda t: t):
    ours = flash_attention(q4, k4, v4, causal=True, block_q=4, block_k=4)
print("saved for the backward:", saved, "(q, k, v, the output, the lse)")
theirs = F.scaled_dot_product_attention(q4, k4, v4, is_causal=True)
dout = torch.randn_like(ours)
grads_ours = torch.autograd.grad(ours, (q4, k4, v4), dout)
grads_theirs = torch.autograd.grad(theirs, (q4, k4, v4), dout)
same("out, flash vs torch SDPA", ours, theirs)
for name, a, b in zip(("dq", "dk", "dv"), grads_ours, grads_theirs):
    same(f"{name}, flash vs torch SDPA", a, b)
viz.row(viz.sheet(ours[0, 0], "flash_attention, causal", role="output"), viz.sheet(grads_ours[1][0, 0], "dk"))

# %% [markdown]
# ## Masks decide which tiles are computed
#
# A mask hides query-key pairs; a tiled kernel can go further and not load a tile in which every pair is
# hidden. `tile_map` sorts the `(query tile, key tile)` blocks: 2 = every pair allowed (no mask needed),
# 1 = some pairs masked, 0 = skipped. Four rules: none; causal; a sliding window of 3 keys; and Llama 4's
# chunked local attention (chunks of 4: a token sees only the earlier keys of its own chunk). Below, each
# pair of the ten tokens: 1 kept, 0.35 loaded but masked, 0 in a skipped tile.

# %%
from tinymoe.viz.flash_explorer import pair_picture

rules = {"dense": MaskRule(), "causal": MaskRule(causal=True), "window 3": MaskRule(causal=True, window=3),
         "chunks of 4": MaskRule(causal=True, chunk_size=4)}
for name, rule in rules.items():
    print(f"{name:<12} tile map {tile_map(rule, T, T, block, block).tolist()}")
keys = [f"k{j}" for j in range(T)]
viz.row(*(viz.sheet(pair_picture(rule, T, block), name, decimals=2, col_labels=keys,
                    row_labels=[f"q{i}" for i in range(T)], note="rows: queries, columns: keys")
          for name, rule in list(rules.items())[1:]))

# %% [markdown]
# ## Fewer queries than keys: bottom-right alignment
#
# At decode time a few new queries attend over a long cache of keys. Which keys may query 0 see? Here the
# queries are the **last** `T_q` positions: query `i` sits at position `i + T_k - T_q` (bottom-right
# alignment, as in FlashAttention-2 and the core's `attention_weights(causal=True)`). torch's
# `scaled_dot_product_attention(is_causal=True)` aligns top-left instead (query `i` sees keys `0..i`);
# `torch.nn.attention.bias.causal_lower_right` is the bottom-right one, and our reference agrees with it.

# %%
q3 = q4[:, :, -3:].detach()                                               # the last 3 queries, all 10 keys
bottom_right = flash_attention(q3, k4.detach(), v4.detach(), causal=True, block_q=4, block_k=4)
torch.testing.assert_close(bottom_right, F.scaled_dot_product_attention(q3, k4.detach(), v4.detach(),
                                                                        attn_mask=causal_lower_right(3, 10)))
top_left = F.scaled_dot_product_attention(q3, k4.detach(), v4.detach(), is_causal=True)
print(f"bottom-right == causal_lower_right; top-left differs by up to {(top_left - bottom_right).abs().max():.2f}")
labels = dict(col_labels=keys, note="rows: the 3 queries, columns: the 10 keys")
viz.row(viz.sheet(MaskRule(causal=True).dense(3, 10).float(), "bottom-right (ours)", decimals=0,
                  row_labels=["q at 7", "q at 8", "q at 9"], **labels),
        viz.sheet(torch.ones(3, 10).tril().float(), "top-left (SDPA is_causal)", decimals=0,
                  row_labels=["q at 0", "q at 1", "q at 2"], **labels))

# %% [markdown]
# ## The Triton kernel on the same inputs
#
# `tinymoe.kernels.flash_attention` is the same algorithm as three GPU kernels: the forward (one program per
# tile of queries), the `dK, dV` kernel (one program per tile of keys, looping over the queries that see
# them) and the `dQ` kernel. `tl.dot` multiplies tiles of at least 16 × 16, so at sheet size the 3 columns
# of `head_dim` are padded with zeros to 16 and the tiles hold 16 queries and 16 keys (most of them empty).
# Without a GPU it runs in Triton's interpreter: the same kernel code, on numpy.

# %%
q_t, k_t, v_t = (t.detach().clone().requires_grad_() for t in (q4, k4, v4))
kernel_out = triton_flash_attention(q_t, k_t, v_t, causal=True, block_m=16, block_n=16)
kernel_grads = torch.autograd.grad(kernel_out, (q_t, k_t, v_t), dout)
same("out, triton vs reference", kernel_out, ours)
for name, a, b in zip(("dq", "dk", "dv"), kernel_grads, grads_ours):
    same(f"{name}, triton vs reference", a, b)
viz.sheet(kernel_out[0, 0], "triton_flash_attention, causal", role="output")

# %% [markdown]
# A trap worth knowing: the backward of the widely copied Triton fused-attention tutorial ignores its
# `causal` flag and always computes the causal gradients (it masks the diagonal tiles and walks one side of
# the diagonal; triton-lang/triton issues 4541 and 5660). Without the causal mask its forward is right and
# its gradients silently wrong. Ours take loop bounds and masks from the same rule in both passes, so the
# non-causal gradients match torch's (tests/test_flash_triton.py checks it at a size where it matters).

# %%
q_n, k_n, v_n = (t.detach().clone().requires_grad_() for t in (q4, k4, v4))
grads_kernel = torch.autograd.grad(triton_flash_attention(q_n, k_n, v_n, block_m=16, block_n=16), (q_n, k_n, v_n), dout)
grads_sdpa = torch.autograd.grad(F.scaled_dot_product_attention(q_n, k_n, v_n), (q_n, k_n, v_n), dout)
for name, a, b in zip(("dq", "dk", "dv"), grads_kernel, grads_sdpa):
    same(f"non-causal {name}, triton vs SDPA", a, b)

# %% [markdown]
# ## Flash attention as the model's attention
#
# A backend is a setting, not a fork: `ModelConfig(attention_backend="flash")` (or `"flash_triton"`) makes
# `MultiHeadAttention` call the tiled path instead of building the weights, with grouped-query heads handled
# inside (no copies of `k` and `v` per query head). The same weights give the same logits.

# %%
config = tm.ModelConfig(vocab_size=32, d_model=8, n_layers=2, n_heads=4, n_kv_heads=2, head_dim=4)
eager_model = tm.TinyLM(config)
flash_model = tm.TinyLM(config.replace(attention_backend="flash"))
flash_model.load_state_dict(eager_model.state_dict())
tokens = torch.randint(0, 32, (2, 12))
same("logits, flash backend vs eager", flash_model(tokens).logits, eager_model(tokens).logits)

# %% [markdown]
# ## Your turn: the explorer
#
# Move the sequence length, the tile size and the mask. The heatmap shows each query-key pair as the kernel
# sees it (kept, loaded but masked, or in a skipped tile), the sheet the tile map, the notes the bytes moved
# and the tiled reference's largest difference from plain attention at these settings, and the chart the
# bytes as the sequence grows. Things to try: causal with tile size 1 (nothing is masked, half the tiles are
# skipped) and 16; a window of 3 at `seq_len = 64` (a band); chunks of 8 with tiles of 8, then of 6.

# %% tags=["nbval-ignore-output"]
explorer = viz.FlashExplorer(seq_len=10, block=4, mask="causal", window=3, chunk_size=4)
explorer

# %% [markdown]
# Driven from code, as the controls do it: `.set(...)`, the shape line and `.counts`.

# %%
for settings in (dict(mask="sliding window", seq_len=64, block=8), dict(mask="chunked", chunk_size=8),
                 dict(block=6), dict(mask="dense", block=16)):
    explorer.set(**settings)
    print(explorer.shape_label)

# %% [markdown]
# ## The same code at a larger size
#
# 512 tokens, 8 query heads sharing 2 key/value heads of `head_dim = 64`, causal with tiles of 64. The same
# `flash_attention`, compared with the core's plain attention (which builds the `(8, 512, 512)` weights),
# and the tile map of Llama 4's chunked attention with chunks of 128 at this length.

# %%
torch.manual_seed(1)
big_q = torch.randn(1, 8, 512, 64)
big_k, big_v = torch.randn(1, 2, 512, 64), torch.randn(1, 2, 512, 64)
big_flash = flash_attention(big_q, big_k, big_v, causal=True, block_q=64, block_k=64)
big_plain, _ = tm.scaled_dot_product_attention(big_q, big_k.repeat_interleave(4, 1), big_v.repeat_interleave(4, 1),
                                               causal=True)
same("(1, 8, 512, 64): flash vs plain", big_flash, big_plain)
for name, rule in (("causal", MaskRule(causal=True)), ("chunks of 128", MaskRule(causal=True, chunk_size=128)),
                   ("window 128", MaskRule(causal=True, window=128))):
    c = attention_bytes(512, 512, 64, 64, 64, rule)
    print(f"{name:<14} tiles computed {c['tiles_computed']:>2} of {c['tiles']}, "
          f"bytes naive / tiled = {c['naive_bytes'] / c['tiled_bytes']:.1f}")
fig, axes = plt.subplots(1, 3, figsize=(10, 3.4))
for ax, (name, rule) in zip(axes, (("causal", MaskRule(causal=True)), ("chunks of 128", MaskRule(causal=True, chunk_size=128)),
                                   ("window 128", MaskRule(causal=True, window=128)))):
    ax.imshow(pair_picture(rule, 512, 64).numpy(), cmap="Blues", vmin=0, vmax=1)
    ax.set(title=name, xlabel="keys", ylabel="queries")
fig.suptitle("512 tokens, tiles of 64: kept (dark), loaded but masked (light), skipped (white)", fontsize=10)
plt.tight_layout()
plt.show()

# %% [markdown]
# ## The cache filling token by token
#
# Generating text runs the model once per new token. Its keys and values at earlier positions never change
# (causal attention), so a model keeps them: the KV cache (`tinymoe.kv_cache`, notebook 10 shows a Llama 4's).
# The prompt is run once (prefill), then each step feeds one token, whose single query attends over every
# cached key: the bottom-right case above, with `T_q = 1`. A small model with `attention_backend="flash"`,
# one layer, two query heads sharing one key/value head, a cache of 8 slots; the sheets show the cached keys
# of the kv head after the prefill of 4 tokens and after each decoded token (empty slots hold zeros).

# %%
from tinymoe.kv_cache import KVCache

torch.manual_seed(2)
small = tm.ModelConfig(vocab_size=16, d_model=8, n_layers=1, n_heads=2, n_kv_heads=1, head_dim=4, max_seq_len=16,
                       attention_backend="flash")
lm = tm.TinyLM(small).eval()
prompt = torch.tensor([[3, 1, 4, 1]])
cache = KVCache(small, batch=1, max_len=8)
snapshots, tokens = [], prompt
with torch.no_grad():
    logits = lm(prompt, cache=cache).logits                              # prefill: positions 0..3
    snapshots.append(("after the prefill", cache.layers[0].k[0, 0].clone(), cache.layers[0].positions.clone()))
    for step in range(3):
        next_token = logits[:, -1].argmax(-1, keepdim=True)              # greedy, (1, 1)
        tokens = torch.cat([tokens, next_token], dim=1)
        logits = lm(next_token, cache=cache).logits                      # decode: one query, position cache.length
        snapshots.append((f"after decoding token {step + 1}", cache.layers[0].k[0, 0].clone(),
                          cache.layers[0].positions.clone()))
print("tokens:", tokens.tolist(), "| cache.length =", cache.length, "| cache bytes:", cache.nbytes())
viz.row(*(viz.sheet(k_cached, f"cached k, {when}", note="rows: cache slots",
                    row_labels=[f"pos {p}" if p >= 0 else "empty" for p in positions.tolist()])
          for when, k_cached, positions in snapshots))

# %% [markdown]
# The cache changes the work, not the result: greedy generation with the cache gives the same tokens as
# re-running the whole context at every step, and the flash backend's logits equal the eager backend's,
# cache or no cache.

# %%
with torch.no_grad():
    assert torch.equal(lm.generate(prompt, 6, use_cache=True), lm.generate(prompt, 6, use_cache=False))
    eager_lm = tm.TinyLM(small.replace(attention_backend="eager")).eval()
    eager_lm.load_state_dict(lm.state_dict())
    eager_cache = KVCache(eager_lm.config, batch=1, max_len=8)
    eager_logits = torch.cat([eager_lm(tokens[:, :4], cache=eager_cache).logits]
                             + [eager_lm(tokens[:, t:t + 1], cache=eager_cache).logits for t in range(4, 7)], dim=1)
    same("cached decoding, flash vs eager backend", eager_logits, lm(tokens).logits)
print("generate with the cache == generate without it, token for token")

# %% [markdown]
# ## What changed
#
# Nothing about what attention computes: the same output and the same gradients, checked against torch at
# every step. What changed is the order of work: keys in tiles, three running numbers per query
# (`m`, `l`, `o`), one number per query (`lse`) kept for the backward instead of the weights, and tiles a
# mask forbids never loaded. At decode time the same kernel reads the KV cache, one query against every
# cached key. Exercise 11 (`exercises/release/11_flash_merge_softmax.ipynb`) asks you to
# merge two states and finish one.
