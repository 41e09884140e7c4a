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
# # 10 · Llama 1 to 4: one config, changed step by step
#
# The Llama models are the original 2017 transformer with a handful of changes, each one a field of
# the config. We start from the original decoder and change one thing at a time, the way the
# hand-built sheets do: RoPE, RMSNorm, SwiGLU (that is Llama 1), grouped-query attention (Llama 2
# 70B, Llama 3), a growing vocabulary, then Llama 4's interleaved chunked-local / global-NoPE
# attention and its Mixture of Experts.
#
# **After this notebook you can:**
# - say what each Llama generation changed, and which tensors and parameters each change touches;
# - draw Llama 4's masks: chunked local attention on three layers of four, global attention on the fourth;
# - explain why a chunked layer's KV cache stays one chunk long, and check it on a running cache;
# - give the parameter counts of Llama-1/2/3/4 (total and active) from the same functions.
#
# **Where we are.** Ten tokens, `d_model = 8`, four layers of four heads, a vocabulary of 32.

# %%
import torch, tinymoe as tm
from tinymoe import viz
from tinymoe.kv_cache import KVCache, layer_cache_capacity
from tinymoe.llama_line import LLAMA_LINE

torch.manual_seed(0)
torch.set_printoptions(precision=2, sci_mode=False)

original = tm.ModelConfig(vocab_size=32, d_model=8, n_layers=4, n_heads=4, d_ff=32, max_seq_len=16,
                          position="sinusoidal", norm="layernorm", ffn="relu")
tokens = torch.randint(0, 32, (1, 10))                                    # (batch, seq_len)
print(original)
print(f"parameters: {tm.model_parameters(original)['total']:,}")

# %% [markdown]
# ## The starting point: the 2017 decoder
#
# Sinusoidal positions added once at the bottom, LayerNorm, a ReLU feed-forward of `4 * d_model`,
# multi-head attention. The table lists every tensor of one block with its shape and every module's
# parameters. The next steps show only what they change (old → new, new rows green, removed rows
# struck out); each run of rows that did not move is folded into one grey line that says how many.

# %%
viz.shapes_table(original, module="block")

# %% [markdown]
# ## Step 1 · RoPE instead of added positions
#
# Llama rotates q and k in every head of every layer by an angle that grows with the position (notebook
# 03). The position table added to the embeddings disappears; each attention gets a cos/sin table,
# a buffer, not a parameter. Meta's code pairs neighbouring dimensions (`interleaved`), as Llama 4 in
# Hugging Face still does. The parameter count does not move.

# %%
step_rope = original.replace(position="rope", rope_pairing="interleaved")
assert tm.model_parameters(step_rope)["total"] == tm.model_parameters(original)["total"]
viz.shapes_table(step_rope, previous=original, module="block", fold_unchanged=True)

# %% [markdown]
# ## Step 2 · RMSNorm instead of LayerNorm
#
# RMSNorm divides by the root-mean-square and keeps only a gain: each norm loses its `beta`
# (notebook 04). The table shows the `mean`, `var` and `beta` rows gone and the `rms` rows new.

# %%
step_rms = step_rope.replace(norm="rmsnorm")
print("parameters saved:", tm.model_parameters(step_rope)["norms"] - tm.model_parameters(step_rms)["norms"])
viz.shapes_table(step_rms, previous=step_rope, module="block", fold_unchanged=True)

# %% [markdown]
# ## Step 3 · SwiGLU instead of ReLU: Llama 1
#
# SwiGLU has three matrices instead of two, so Llama shrinks the hidden size to about two thirds of
# `4 * d_model` to keep the feed-forward's parameters near the original (Llama-1 7B: 11008 for
# `d_model = 4096`). Here two thirds of `4 * d_model`, rounded to a multiple of 8.

# %%
d_ff_swiglu = 8 * round(2 * original.ff_dim / 3 / 8)                       # 2/3 of 4 * d_model, a multiple of 8
llama1 = step_rms.replace(ffn="swiglu", d_ff=d_ff_swiglu)
before, after = tm.model_parameters(step_rms)["feed_forward"], tm.model_parameters(llama1)["feed_forward"]
print(f"d_ff {original.ff_dim} -> {llama1.ff_dim}; feed-forward parameters {before:,} -> {after:,}")
viz.shapes_table(llama1, previous=step_rms, module="block", fold_unchanged=True)

# %% [markdown]
# ## Step 4 · Grouped-query attention: Llama 2 70B, then every Llama 3
#
# Two key/value heads serve the four query heads (notebook 05): `W_k`, `W_v`, the keys and values
# shrink by the group size, and so does the KV cache, the memory a running model keeps per token.

# %%
llama2 = llama1.replace(n_kv_heads=2)
print(f"KV cache for 10 tokens (bf16): {tm.kv_cache_bytes(llama1, 10):,} -> {tm.kv_cache_bytes(llama2, 10):,} bytes")
viz.shapes_table(llama2, previous=llama1, module="block", fold_unchanged=True)

# %% [markdown]
# ## Step 5 · A bigger vocabulary: 32k → 128k → 202k
#
# Llama 1 and 2 have 32,000 tokens, Llama 3 128,256, Llama 4 202,048. At sheet size we grow 32 →
# 128 → 202. Only the embedding and the LM head change (notebook 02): every block in between still
# sees `d_model`-wide vectors. The table is the whole model with one layer, to keep it short.

# %%
llama3 = llama2.replace(vocab_size=128, rope_base=500000.0)
llama4_vocab = llama3.replace(vocab_size=202)
one_layer = dict(n_layers=1)
viz.row(viz.shapes_table(llama3.replace(**one_layer), previous=llama2.replace(**one_layer), fold_unchanged=True),
        viz.shapes_table(llama4_vocab.replace(**one_layer), previous=llama3.replace(**one_layer), fold_unchanged=True))

# %% [markdown]
# At real size the vocabulary is no longer a rounding error: the share of all parameters in the
# embedding and the LM head, from the published shapes.

# %%
for name in ("Llama-2 7B", "Llama-3 8B", "Llama-4 Scout"):
    counts = tm.model_parameters(LLAMA_LINE[name])
    share = (counts["embedding"] + counts["lm_head"]) / counts["total"]
    print(f"{name:<14} vocabulary {LLAMA_LINE[name].vocab_size:>7,}: embedding + LM head "
          f"{(counts['embedding'] + counts['lm_head']) / 1e9:5.2f} B of {counts['total'] / 1e9:6.2f} B ({share:.1%})")

# %% [markdown]
# ## Step 6 · Llama 4's attention: chunked local layers and global NoPE layers
#
# Llama 4 makes three layers of every four *local*: the sequence is cut into chunks of
# `attention_chunk_size` tokens (8192 in the real model, 4 here) and a token sees only the earlier
# tokens of its own chunk. These layers keep RoPE, and normalise q and k after it (QK-norm, no weight).
# Every fourth layer (`no_rope_layer_interval = 4`) is *global*: full causal attention with no
# position encoding at all (NoPE), where q is scaled up by `1 + attn_scale * log1p(floor((pos + 1) /
# floor_scale))` so attention stays sharp at long range. Real `floor_scale` is 8192; 4 here so the
# scale moves inside ten tokens.

# %%
llama4_attn = llama4_vocab.replace(attention_chunk_size=4, no_rope_layer_interval=4, qk_norm=True,
                                   attn_temperature_tuning=True, floor_scale=4.0)
model = tm.TinyLM(llama4_attn).eval()
trace = tm.Trace()
with torch.no_grad():
    model(tokens, trace=trace)
for i in range(llama4_attn.n_layers):
    kind = "RoPE + QK-norm, chunk" if llama4_attn.layer_uses_rope(i) else "NoPE, global"
    print(f"layer {i}: {kind} {llama4_attn.layer_chunk_size(i) or ''}")

# %% [markdown]
# The masks the core recorded: layer 0 (chunked) and layer 3 (global), 1 = may attend. Query 5 sits in
# the second chunk (positions 4-7) and sees keys 4 and 5 only in layer 0, keys 0-5 in layer 3.

# %%
mask_local, mask_global = trace["layers.0.attn.mask"][0, 0], trace["layers.3.attn.mask"][0, 0]   # (T, T) each
assert mask_local[5].nonzero().flatten().tolist() == [4, 5] and mask_global[5].sum() == 6
assert torch.equal(mask_local, tm.chunked_mask(10, 4))
viz.row(viz.sheet(mask_local.int(), "layers.0.attn.mask (chunked)", decimals=0),
        viz.sheet(mask_global.int(), "layers.3.attn.mask (global)", decimals=0))

# %% [markdown]
# QK-norm on the RoPE layers: each head's rotated query has root-mean-square 1 after it. On the
# NoPE layer the queries are instead scaled by the temperature, one factor per position.

# %%
q_norm = trace["layers.0.attn.q_norm"]                                   # (B, n_heads, T, head_dim)
print("rms of layer 0's normalised queries:", q_norm.pow(2).mean(-1).sqrt().min().item().__round__(4),
      "..", q_norm.pow(2).mean(-1).sqrt().max().item().__round__(4))
viz.row(viz.show(trace, "layers.0.attn.q_norm"), viz.show(trace, "layers.3.attn.q_temperature"))

# %% [markdown]
# What changed in a chunked block (the table shows layer 0): `q_norm` and `k_norm` are new, and the mask
# is chunked. No parameter is added anywhere; the NoPE layer even drops its RoPE tables (buffers).

# %%
assert tm.model_parameters(llama4_attn)["total"] == tm.model_parameters(llama4_vocab)["total"]
viz.shapes_table(llama4_attn, previous=llama4_vocab, module="block", fold_unchanged=True)

# %% [markdown]
# ## Step 7 · Llama 4's Mixture of Experts
#
# Maverick replaces the feed-forward of every second layer with an MoE layer: a router picks one
# expert per token (top-1) and its *sigmoid* score multiplies the token **before** the expert, and a
# shared expert that every token uses is added. The dense layers keep a wider feed-forward (`d_ff`);
# experts have their own `d_ff_expert`.

# %%
llama4 = llama4_attn.replace(moe=tm.MoEConfig(n_experts=4, top_k=1, router="llama4", n_shared_experts=1,
                                              d_ff_expert=16, every_n_layers=2))
model4 = tm.TinyLM(llama4).eval()
trace4 = tm.Trace()
with torch.no_grad():
    model4(tokens, trace=trace4)
counts = tm.model_parameters(llama4)
print(f"total {counts['total']:,} parameters, active per token {counts['active']:,}")
viz.row(viz.show(trace4, "layers.1.moe.expert_ids"), viz.show(trace4, "layers.1.moe.gates"))

# %%
viz.shapes_table(llama4.replace(n_layers=2), previous=llama4_attn.replace(n_layers=2), fold_unchanged=True)

# %% [markdown]
# ## Running it: the KV cache of a Llama 4
#
# To generate, the model keeps each layer's keys and values (`tinymoe.kv_cache`): a prefill of the
# prompt, then one token per step. A chunked layer needs only its current chunk, so its cache is a
# ring buffer of `attention_chunk_size` slots; the global layer keeps every token. The cache holds
# `n_kv_heads` heads, and generating with it gives the same tokens as recomputing everything.

# %%
prompt = tokens[:, :3]
with_cache = model4.generate(prompt, 12, use_cache=True)
assert torch.equal(with_cache, model4.generate(prompt, 12, use_cache=False))
cache = KVCache(llama4, batch=1)
with torch.no_grad():
    model4(with_cache[:, :10], cache=cache)                              # prefill 10 tokens
    model4(with_cache[:, 10:11], cache=cache)                            # decode the 11th, at position 10
assert cache.nbytes() == tm.kv_cache_bytes(llama4, llama4.max_seq_len, bytes_per_value=4)
for i, layer in enumerate(cache.layers):
    held = sorted(p for p in layer.positions.tolist() if p >= 0)
    print(f"layer {i}: {layer.capacity:>2} slots, k {tuple(layer.k.shape)}, positions held {held}")

# %% [markdown]
# The keys the global layer cached, and those of a chunked layer: its ring holds the current chunk
# (from position 8 on) in slots `position % 4`, plus the leftover of the last chunk, which the mask
# hides by its position.

# %%
assert sorted(cache.layers[0].positions.tolist()) == [7, 8, 9, 10]          # 7: last chunk's leftover
viz.row(viz.sheet(cache.layers[3].k[0, 0, :11], "layers.3 cached k (kv head 0)"),
        viz.sheet(cache.layers[0].k[0, 0], "layers.0 cached k (kv head 0, ring)", note="rows: ring slots",
                  row_labels=[f"slot {s}: pos {p}" for s, p in enumerate(cache.layers[0].positions.tolist())]))

# %% [markdown]
# ## Try it: the Llama 4 explorer
#
# Move the chunk size, the NoPE interval, the number of layers and the sequence length. The heatmap
# shows every layer's mask side by side (from the same core run), the shape line names each layer's
# kind and the KV-cache bytes next to an all-global model's. (Run the notebook for live sliders.)

# %% tags=["nbval-ignore-output"]
viz.Llama4Explorer()

# %% [markdown]
# ## At real size: the Llama line in numbers
#
# The published shapes (`tinymoe.llama_line`) through the same `model_parameters` and `kv_cache_bytes`.
# A test checks every total against Hugging Face's own model built on the meta device. The KV cache is
# per sequence in bfloat16 at 128k tokens: Llama 4's chunked layers keep 8192 tokens each.

# %%
GiB = 2 ** 30
print(f"{'model':<17} {'vocab':>8} {'layers':>6} {'kv heads':>8} {'total':>9} {'active':>9} {'KV cache 128k':>14}")
for name, cfg in LLAMA_LINE.items():
    c = tm.model_parameters(cfg)
    kv = tm.kv_cache_bytes(cfg.replace(max_seq_len=131072), 131072) / GiB
    print(f"{name:<17} {cfg.vocab_size:>8,} {cfg.n_layers:>6} {cfg.kv_heads:>8} {c['total'] / 1e9:>7.2f} B"
          f" {c['active'] / 1e9:>7.2f} B {kv:>10.1f} GiB")

# %% [markdown]
# Scout and Maverick have about the same active size (one routed expert + the shared one per token), but
# Maverick holds many more experts, in every second layer. And without chunking, Scout's cache at 128k
# tokens would be several times larger:

# %%
scout = LLAMA_LINE["Llama-4 Scout"].replace(max_seq_len=131072)
chunked, all_global = tm.kv_cache_bytes(scout, 131072), tm.kv_cache_bytes(scout.replace(attention_chunk_size=None), 131072)
print(f"Scout, 128k tokens: {chunked / GiB:.1f} GiB with chunked layers, {all_global / GiB:.1f} GiB all global "
      f"({all_global / chunked:.1f}x)")
