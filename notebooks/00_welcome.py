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
# # 00 · Welcome to tinymoe
#
# This course builds a modern decoder-only transformer, up to a Mixture-of-Experts layer, one step
# at a time and at spreadsheet size: ten tokens, five numbers per token, every number visible in a
# cell. Each step is a short text, a code cell that calls the small PyTorch library `tinymoe`, and
# the tensor it made drawn as a sheet. The same library runs unchanged at real sizes, so every
# notebook ends by scaling up.
#
# **After this notebook you can:**
# - read a sheet: what its colours mean, which way the tokens run, where its shape is;
# - read a matrix product laid out by hand, and the same product as PyTorch stores it;
# - use a trace to see any named step of the model, and a shapes table to see what a change moves;
# - drive an explorer widget with the mouse and from code;
# - find your way around the course and its exercises.
#
# **Where we are.** Nowhere yet: this is the attention layer notebook 01 starts from, as the
# shapes table the course uses everywhere (every named tensor, every weight's parameter count).

# %%
import torch, tinymoe as tm
from tinymoe import viz

torch.manual_seed(0)
torch.set_printoptions(precision=2, sci_mode=False)

first = tm.ModelConfig(vocab_size=16, d_model=5, n_heads=1, head_dim=3, position="none")
viz.shapes_table(first, module="attention")

# %% [markdown]
# ## A sheet
#
# A sheet draws a tensor as a grid with one cell per number (two decimals), its name in bold and
# its shape (as PyTorch stores it) in the grey box. Computed values are coloured on a diverging
# scale: white at 0, blue for positive, orange for negative, deepest at the largest absolute value in
# the tensor. Rows and columns are labelled: `t` for tokens, `d` for features.

# %%
scores = torch.tensor([[2.0, -1.0, 0.5, 0.0],
                       [-0.25, 1.5, -2.0, 1.0],
                       [0.0, 0.75, 3.0, -0.5]])
viz.sheet(scores, "a tensor")

# %% [markdown]
# ## Colour roles
#
# Two questions, two channels. A cell's **border** says what kind of number it holds, as in the
# hand-built attention spreadsheets: **trainable weights have a red border** (so the parameter count
# of a model is exactly the number of red-bordered cells), **biases grey**, **inputs gold**,
# **outputs purple**, activations (computed on the way) a thin light grey; a few tables computed once
# and never trained (RoPE's, in notebook 03) green. A cell's **fill** says its value, whatever the
# tensor: blue for positive, orange for negative, white at zero. Ids (which expert, which block) are
# labels, not amounts: each id gets its own colour. Here are the roles in one small layer,
# `y = x Wᵀ + b`, from `torch.nn.Linear` with small whole-number weights:

# %%
layer = torch.nn.Linear(3, 2)                                            # W: (2, 3), b: (2,)
with torch.no_grad():
    layer.weight.copy_(torch.tensor([[1.0, -1.0, 2.0], [0.0, 1.0, -2.0]]))
    layer.bias.copy_(torch.tensor([0.5, -1.0]))
x = torch.tensor([[1.0, 0.0, 2.0], [-1.0, 1.0, 0.0], [2.0, 2.0, 1.0], [0.0, -1.0, 1.0]])   # (4 tokens, 3)
xw = x @ layer.weight.T                                                  # (4, 2): an activation
y = layer(x)                                                             # (4, 2) = xw + b
torch.testing.assert_close(y, xw + layer.bias)
viz.column(viz.legend(),
           viz.row(viz.sheet(x, "x", role="input"), viz.sheet(layer.weight, "W", role="weight"),
                   viz.sheet(xw, "x Wᵀ"), viz.sheet(layer.bias, "b", role="bias"),
                   viz.sheet(y, "y", role="output")))

# %% [markdown]
# Count the red- and grey-bordered cells: 6 + 2 = 8, and that is what PyTorch counts as the layer's
# parameters.
# Every notebook relies on this; notebook 02 checks it on a whole language model.

# %%
bordered = viz.sheet(layer.weight, role="weight").cells + viz.sheet(layer.bias, role="bias").cells
parameters = sum(p.numel() for p in layer.parameters())
assert bordered == parameters
print("red- and grey-bordered cells:", bordered, "| parameters:", parameters)

# %% [markdown]
# ## Orientation: tokens as rows, or as columns
#
# PyTorch stores a sequence as `(tokens, features)`: one token per **row**. The hand-built sheets
# draw the same numbers the other way round, one token per **column**, so that a product reads
# `Y = W · X` with the weight on the left. Both are the same tensor; the caption says which way a
# sheet is drawn (`tokens as rows (PyTorch)` or `tokens as columns (by hand)`), and the shape in
# the grey box is always the stored one.

# %%
viz.row(viz.sheet(x, "x", role="input"), viz.sheet(x, "x", role="input", orientation="by_hand"))

# %% [markdown]
# ## A product laid out by hand
#
# A matrix product is drawn the way you would do it on paper: the weight on the left, the input
# on top, and each result cell where a row of the weight meets a column of the input (their dot
# product). Check one: `W` row 0 is `(1, −1, 2)` and token `t2` is `(2, 2, 1)`, so `y0` of `t2` is
# `2 − 2 + 2 = 2`. The second layout is the same product as the code writes it, `x Wᵀ`.

# %%
viz.row(viz.matmul_sheet(layer.weight, x, names=("W", "X", "Y")),
        viz.matmul_sheet(layer.weight, x, names=("W", "x", "y"), orientation="pytorch"))

# %% [markdown]
# ## Big tensors become pictures
#
# A sheet stops drawing cells past 600 numbers: it shows a small heatmap picture in the same
# colours, with the shape and the colour range, instead of a table nobody can read. Here is a
# `(40, 64)` tensor with some structure (slow waves along both axes, plus a little noise). For a
# closer look, `viz.heatmap` draws an interactive plot: hover over it to read a value.

# %%
rows, cols = torch.arange(40.0)[:, None], torch.arange(64.0)[None, :]
wide = torch.sin(rows / 6) * torch.cos(cols / 10) + 0.1 * torch.randn(40, 64)   # (40, 64)
viz.sheet(wide, "wide")

# %%
viz.heatmap(wide, title="wide (40, 64): rows × columns", width=600, height=320)

# %% [markdown]
# ## A trace: every named step of a forward pass
#
# The library's modules take an optional `trace`. Pass one and each module records its named
# intermediates into it (`attn.q`, `attn.scores`, `attn.weights`, ...) with their role; pass none
# and nothing is recorded. Every sheet in the course is drawn from a trace, so a sheet always
# shows what the model computed, never a second copy of the arithmetic. The names are the same in
# the notebooks, the exercises and the tests.

# %%
attn = tm.MultiHeadAttention(first)
trace = tm.Trace()
attn(torch.randn(1, 10, 5), trace)
print(trace)
viz.show(trace, "attn.weights")

# %% [markdown]
# ## The shapes table, before and after
#
# "What else changes if I add a head?" The shapes table answers it: pass the new config and the
# old one, and the rows that changed are highlighted with the old value struck out. It runs the
# real module for both configs, so it cannot disagree with the model.

# %%
viz.shapes_table(first.replace(n_heads=2), previous=first, module="attention")

# %% [markdown]
# ## Explorers: sliders bound to a config
#
# Each topic has an explorer widget: sliders and switches for the config's dimensions. Move one and
# the explorer rebuilds the module with the same seed, runs it with a trace, and updates the shape
# line, the sheets, the heatmap and the shapes table in place (changed rows highlighted). A
# combination the config forbids shows the rule it breaks in a red line and keeps the last good
# picture, greyed out and marked stale. Run the notebook (Run ▸ Run All Cells) to get live sliders;
# a notebook opened without running (or saved and reopened, or exported to HTML) shows a static
# snapshot of the explorer's last picture instead.

# %% tags=["nbval-ignore-output"]
explorer = viz.AttentionExplorer(seq_len=10, d_model=5, d_k=3, d_v=3, n_heads=1)
explorer

# %% [markdown]
# Everything an explorer shows can also be read and moved from code, which is how the course's
# tests drive them (and how you can script a comparison): `.set(...)` moves controls exactly as the
# mouse would, `.shape_label` is the line on screen, `.shapes` the shapes, `.heatmap_data` the
# heatmap's numbers and `.error` the message of an impossible combination (here: switching on RoPE, which rotates
# dimensions in pairs, with an odd `d_k = 3`). Moving a control from code also moves it in the
# widget above.

# %%
print(explorer.shape_label)
explorer.set(n_heads=2)                                                  # as if you moved the n_heads slider
print(explorer.shape_label)
print("heatmap data:", explorer.heatmap_data.shape, "| error:", explorer.error)
explorer.set(position="rope")                                            # RoPE needs an even d_k; ours is 3
print("error:", explorer.error)
print("still showing:", explorer.shapes["attn.q"])
explorer.set(position="none")
print("back to:", explorer.shape_label)

# %% [markdown]
# ## The map of the course
#
# | notebook | what you build | status |
# | --- | --- | --- |
# | [00 Welcome](00_welcome.ipynb) | reading sheets, traces, shape tables and explorers | here |
# | [01 Attention by hand](01_attention_by_hand.ipynb) | Q, K, V; scaled dot product and √d_k; safe softmax and float16 overflow; causal and fully masked rows | ready |
# | [02 Multi-head attention](02_multi_head_attention.ipynb) | heads, concatenation (also of unequal value sizes), the output projection, what the vocabulary touches | ready |
# | [03 Position and RoPE](03_position_rope.ipynb) | absolute positions vs RoPE, relative position shown numerically | ready |
# | [04 Normalisation](04_normalisation.ipynb) | LayerNorm → RMSNorm, pre-norm and the residual stream | ready |
# | [05 Grouped-query attention](05_grouped_query_attention.ipynb) | MHA → GQA → MQA, parameters and KV-cache memory | ready |
# | [06 MoE gating](06_moe_gating.ipynb) | experts, routers, top-k, capacity and dropped tokens, load balancing, float32 routers | ready |
# | [07 Native sparse attention](07_native_sparse_attention.ipynb) | compressed, selected and sliding-window branches | ready |
# | [08 Putting it together](08_putting_it_together.ipynb) | a tiny MoE language model trained on Python's own documentation with `tinymoe.train`: loss, expert load, who goes where, against a dense baseline | ready |
# | [09 GPU scale](09_gpu_scale.ipynb) | the Triton routing kernel, full-size figures | ready |
# | [10 Llama 1 to 4](10_llama_1_to_4.ipynb) | one config changed step by step: RoPE, RMSNorm, SwiGLU, GQA, vocabulary, Llama 4's chunked / NoPE layers and MoE; real parameter counts | ready |
# | [11 Flash attention and the KV cache](11_flash_attention_kv_cache.ipynb) | the online softmax by hand, tiles and bytes moved, the Triton kernel, the cache filling token by token | ready |
# | [12 Mixture-of-Depths](12_mixture_of_depths.ipynb) | a router that picks which tokens a block computes; causal sampling and its fixes; MoDE | ready |
# | [13 A real model](13_real_model.ipynb) | SmolLM2-135M on the same `TinyLM`: real heads, the logit lens, its MLPs split into experts | ready |
# | [14 Beyond one machine](14_expert_parallelism.ipynb) | expert parallelism with all-to-all dispatch over `torch.distributed` | ready |
#
# **A reading order for a course:** 00-07 build the pieces at spreadsheet size; 10 puts them
# together as the Llama line; 11 shows how attention really runs; 08 trains a model; 12 routes
# tokens through depth; 13 runs a real model on the same code; 09 and 14 scale to one GPU and to many.
#
# Each notebook opens with what you will be able to do and where we are in the model, works at
# spreadsheet size with every tensor on a sheet, hands you the explorer, scales up with a heatmap,
# and ends with **What changed**: the shapes table before and after its idea.
#
# ## Exercises
#
# `exercises/release/` has one notebook per topic (01-08, then 10-12; 08 is the Triton kernel's alignment step): small functions to write (the attention
# weights, a safe softmax, a RoPE rotation, ...), each a stub followed by a one-line check. A check
# runs hidden cases against the library and ends in one of three states: *not attempted* (the stub
# still raises `NotImplementedError`), *incorrect* (it says which step failed, e.g. the output shape
# or the values, and for a known mistake, such as forgetting `1/√d_k` or taking the softmax over the
# wrong axis, a hint aimed at the misconception), or *correct*. It never prints the expected answer.
# Do the matching exercise after each notebook; instructors, see the README's "Teaching with
# tinymoe".
#
# ## What changed
#
# Nothing in a model yet: that starts in notebook 01. The one thing to take along is the
# before-and-after shapes table (`viz.shapes_table(new, previous=old)`, from "The shapes table, before
# and after"): every notebook closes with one, showing exactly which shapes and parameter counts its
# idea moved.
