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
# # 05 · Grouped-query attention: MHA → GQA → MQA
#
# When a model generates text it keeps every past token's keys and values (the *KV cache*) so it
# does not recompute them for each new token. With one key/value head per query head that cache
# grows huge. Grouped-query attention lets several query heads share one key/value head.
#
# **After this notebook you can:**
# - build multi-head (MHA), grouped-query (GQA) and multi-query (MQA) attention from the one
#   `MultiHeadAttention` module by setting `n_kv_heads` to `n_heads`, something in between, or 1;
# - say which query head reads which key/value head (repeat-interleave, not tile);
# - compute what sharing saves: parameters in `W_k` and `W_v`, and KV-cache memory;
# - give the real figures for a 70B-class Llama, from the same functions.
#
# **Where we are.** Ten tokens, `d_model = 5`, and now four query heads of `head_dim = 2` so there
# is something to group. We start from plain multi-head attention: four key/value heads.

# %%
import torch, tinymoe as tm
from tinymoe import viz

torch.manual_seed(0)
torch.set_printoptions(precision=2, sci_mode=False)

mha = tm.ModelConfig(vocab_size=16, d_model=5, n_heads=4, n_kv_heads=4, head_dim=2, d_ff=8, max_seq_len=16)
viz.shapes_table(mha, module="attention")

# %% [markdown]
# ## Multi-head attention: one key/value head per query head
#
# Four query heads of size 2 need `W_q` with `4 × 2 = 8` output rows; with four key/value heads,
# `W_k` and `W_v` have 8 rows too. We load small integer weights so the sheets read easily.
# The keys come out as `attn.k`, shaped `(batch, n_kv_heads, tokens, head_dim)`.

# %%
x = torch.randint(-2, 3, (1, 10, 5)).float()                             # (batch, tokens, d_model)


def integer_weights(module):
    """Overwrite every parameter with small integers (-2 .. 2), so the sheets stay readable."""
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randint(-2, 3, p.shape))
    return module


attn_mha = integer_weights(tm.MultiHeadAttention(mha))
trace_mha = tm.Trace()
attn_mha(x, trace_mha)
viz.row(viz.show(trace_mha, "attn.W_q"), viz.show(trace_mha, "attn.W_k"), viz.show(trace_mha, "attn.W_v"))

# %%
viz.show(trace_mha, "attn.k")

# %% [markdown]
# ## Grouped-query attention: two query heads per key/value head
#
# Set `n_kv_heads = 2`. `W_q` keeps its 8 rows (four query heads), but `W_k` and `W_v` shrink to
# 4 rows (two key/value heads), and `attn.k` now has two heads. Query heads 0 and 1 form group 0
# and read key/value head 0; query heads 2 and 3 read head 1: query head `h` reads kv head
# `h // group_size`.

# %%
gqa = mha.replace(n_kv_heads=2)
attn_gqa = integer_weights(tm.MultiHeadAttention(gqa))
trace_gqa = tm.Trace()
attn_gqa(x, trace_gqa)
print("group_size =", gqa.group_size, "query heads per kv head")
reads = torch.arange(gqa.n_heads) // gqa.group_size                      # (n_heads,): kv head of each query head
viz.row(viz.show(trace_gqa, "attn.W_k"), viz.show(trace_gqa, "attn.k"),
        viz.sheet(reads, "kv head read by each query head", col_labels=[f"q{h}" for h in range(gqa.n_heads)]))

# %% [markdown]
# Inside the module, each key/value head is repeated `group_size` times *in place* with
# `repeat_interleave`, giving kv heads `0, 0, 1, 1` for query heads `0, 1, 2, 3`. A plain `repeat`
# would tile them as `0, 1, 0, 1`: every shape still fits, nothing crashes, and query head 1 reads
# the wrong keys. The cell computes every head's scores by hand from `q_rot` and the kv head of its
# group, and checks them against the core's `attn.scores`. The sheet shows heads 0 and 1: they read
# the same keys, yet their scores differ, because their queries do.

# %%
k_rot = trace_gqa["attn.k_rot"]                                          # (1, n_kv_heads, 10, head_dim)
print("repeat_interleave:", torch.arange(2).repeat_interleave(2).tolist(), "  repeat:", torch.arange(2).repeat(2).tolist())
for h in range(gqa.n_heads):
    q_h = trace_gqa["attn.q_rot"][0, h]                                  # (10, head_dim)
    k_h = k_rot[0, h // gqa.group_size]                                  # (10, head_dim): the group's keys
    torch.testing.assert_close(q_h @ k_h.T / gqa.qk_dim ** 0.5, trace_gqa["attn.scores"][0, h])
print("scores by hand with each group's kv head == attn.scores, for all 4 heads")
tiled = k_rot.repeat(1, gqa.group_size, 1, 1)                            # kv heads 0, 1, 0, 1: the bug
wrong = trace_gqa["attn.q_rot"][0, 1] @ tiled[0, 1].T / gqa.qk_dim ** 0.5
print("tiled keys give query head 1 different scores:", not torch.allclose(wrong, trace_gqa["attn.scores"][0, 1]))
viz.sheet(trace_gqa["attn.scores"][:, :2], "attn.scores[:, :2]", decimals=1, col_labels=[f"t{j}" for j in range(10)])

# %% [markdown]
# ## Multi-query attention: one key/value head for all
#
# At `n_kv_heads = 1` every query head reads the same keys and values: `W_k` and `W_v` are each a
# single head of 2 rows. The queries still differ per head, so the four attention patterns still
# differ; what they share is what they look *at*.

# %%
mqa = mha.replace(n_kv_heads=1)
attn_mqa = integer_weights(tm.MultiHeadAttention(mqa))
trace_mqa = tm.Trace()
attn_mqa(x, trace_mqa)
viz.row(viz.show(trace_mqa, "attn.W_k"), viz.show(trace_mqa, "attn.W_v"), viz.show(trace_mqa, "attn.k"))

# %% [markdown]
# `n_kv_heads` must divide `n_heads`: every key/value head serves a whole group. The config says so
# before any tensor is built:

# %%
try:
    mha.replace(n_kv_heads=3)
except tm.ConfigError as error:
    print("ConfigError:", error)

# %% [markdown]
# ## What sharing saves: parameters and the KV cache
#
# `tm.attention_parameters(config)` counts one attention layer's weights from the config alone, and
# `tm.kv_cache_bytes(config, seq_len)` the bytes needed to keep every layer's keys and values for
# `seq_len` tokens (2 bytes per number: bfloat16). Only `W_k`, `W_v` and the cache shrink; `W_q` and
# `W_o` belong to the query heads and stay. The cell also checks the count against the modules we
# built.

# %%
variants = {"MHA": (mha, attn_mha), "GQA": (gqa, attn_gqa), "MQA": (mqa, attn_mqa)}
print(f"{'':<4} {'n_kv_heads':>10} {'W_q':>5} {'W_k':>5} {'W_v':>5} {'W_o':>5} {'total':>6}"
      f" {'KV bytes/token':>15} {'KV bytes, 10 tokens':>20}")
for name, (cfg, module) in variants.items():
    counts = tm.attention_parameters(cfg)
    assert counts["total"] == tm.parameter_counts(module)["total"]["trainable"]
    print(f"{name:<4} {cfg.kv_heads:>10} {counts['W_q']:>5} {counts['W_k']:>5} {counts['W_v']:>5} {counts['W_o']:>5}"
          f" {counts['total']:>6} {tm.kv_cache_bytes(cfg, seq_len=1):>15} {tm.kv_cache_bytes(cfg, seq_len=10):>20}")

# %% [markdown]
# ## Try it: the GQA explorer
#
# Move `n_heads` and `n_kv_heads` (and the sequence length). The explorer rebuilds the attention from
# the config and redraws the shape line (with the group size), `W_k` and `W_v`, the key cache as a
# heatmap with one panel per kv head, the parameter count and the KV-cache bytes next to plain MHA's,
# and the shapes table with what changed. An impossible pair (say 6 query heads, 4 kv heads) shows
# the config's error instead. (Run the notebook to get live sliders.)

# %% tags=["nbval-ignore-output"]
viz.GQAExplorer()

# %% [markdown]
# ## At scale: a 70B-class Llama
#
# The same config describes a Llama-3-70B-sized model: `d_model = 8192`, 80 layers, 64 query heads
# of 128, 8 key/value heads, a SwiGLU of 28672 and a vocabulary of 128256. Built on PyTorch's `meta`
# device the modules have shapes but no memory, so `parameter_counts` can count all of it here: it
# gives 70.55 billion, the published figure.

# %%
llama70 = tm.ModelConfig(vocab_size=128256, d_model=8192, n_layers=80, n_heads=64, n_kv_heads=8, head_dim=128,
                         d_ff=28672, max_seq_len=8192, rope_base=500000.0)
with torch.device("meta"):
    big = tm.TinyLM(llama70)                                             # shapes only, no memory
total = tm.parameter_counts(big)["total"]["trainable"]
per_layer = tm.parameter_counts(big.layers[0])
print(f"whole model: {total:,} parameters ({total / 1e9:.2f} B), {2 * total / 2 ** 30:.0f} GiB in bfloat16")
for name in ("attn", "ffn"):
    print(f"  one layer's {name}: {per_layer[name]['trainable']:,}")

# %% [markdown]
# Now the three variants at that size, by the same two functions. The KV cache is for *one*
# sequence (batch 1) in bfloat16; for scale, the weights alone take 131 GiB in bfloat16, and an
# H100 holds 80 GB.

# %%
GiB = 2 ** 30
print(f"{'':<4} {'n_kv_heads':>10} {'attn params/layer':>18} {'attn params, 80 layers':>23}"
      f" {'KV cache 4k':>12} {'32k':>9} {'128k tokens':>12}")
for name, kv in (("MHA", 64), ("GQA", 8), ("MQA", 1)):
    cfg = llama70.replace(n_kv_heads=kv)
    per = tm.attention_parameters(cfg)["total"]
    cache = [tm.kv_cache_bytes(cfg, seq_len=n, bytes_per_value=2) / GiB for n in (4096, 32768, 131072)]
    print(f"{name:<4} {kv:>10} {per / 1e6:>16.1f} M {per * cfg.n_layers / 1e9:>21.2f} B"
          f" {cache[0]:>8.2f} GiB {cache[1]:>5.1f} GiB {cache[2]:>8.1f} GiB")

# %% [markdown]
# With full multi-head attention a single 128k-token conversation would need 320 GiB of cache,
# more than twice the weights. Eight KV heads cut that by the group size, 8, to 40 GiB, and save
# about 9.4 billion attention parameters, which Llama spends on a wider feed-forward instead. MQA
# cuts further, but one shared key/value head costs quality; GQA is the compromise most large
# models use.
#
# ## At a larger size: what the cache holds
#
# A mid-size layer: `d_model = 64`, 8 query heads of 8, 32 tokens. The pictures are each variant's
# `attn.k`, exactly what the cache would store for this layer: 8 heads for MHA, 2 for GQA, 1 for MQA.

# %%
mid = tm.ModelConfig(vocab_size=64, d_model=64, n_heads=8, head_dim=8, d_ff=128)
x_mid = 3 * torch.randn(1, 32, 64, generator=torch.Generator().manual_seed(1))   # rms 3: sharper patterns
traces = {}
for kv in (8, 2, 1):
    traces[kv] = tm.Trace()
    tm.MultiHeadAttention(mid.replace(n_kv_heads=kv))(x_mid, traces[kv])
viz.column(*(viz.sheet(traces[kv]["attn.k"], f"attn.k with n_kv_heads={kv}", max_cells=0) for kv in (8, 2, 1)))

# %% [markdown]
# And the attention weights of the GQA layer, all eight query heads side by side. Heads 0-3 read kv
# head 0 and heads 4-7 read kv head 1, yet each head's pattern is its own: its queries differ.

# %%
viz.heatmap(traces[2]["attn.weights"], title="GQA attn.weights: 8 query heads, 2 kv heads", width=900, height=220)

# %% [markdown]
# ## What changed
#
# Going from MHA to GQA changes only the key/value side: `W_k`, `W_v`, `attn.k`, `attn.v` (and
# `attn.k_rot`) shrink by the group size, while the queries, the scores and the output keep their
# shapes. That is the whole point: the same attention, a smaller cache.

# %%
viz.shapes_table(gqa, previous=mha, module="attention")
