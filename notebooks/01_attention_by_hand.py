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
# # 01 · Attention by hand
#
# One attention head, ten tokens, five numbers per token: small enough that every number is a cell
# you can check with a finger on each operand. We build queries, keys and values, score every query
# against every key, turn the scores into weights with a softmax, and mix the values, then check
# each step against the core library, which runs the same code at any size.
#
# **After this notebook you can:**
# - compute Q, K and V from the input as matrix products, laid out by hand;
# - say why q and k must have the same length and v need not;
# - explain why the scores are divided by √d_k;
# - compute a softmax per query, and say why the safe softmax subtracts the row's maximum
#   (float16 overflows past exp(11.09) ≈ 65504);
# - apply a causal mask, and say what a query whose every key is masked should get.
#
# **Where we are.** Inside one attention layer with a single head: `d_model = 5`, queries and
# keys of size `d_k = 3`, values of size `d_v = 4`, ten tokens. Positions come in notebook 03
# (`position="none"` here), more heads in 02. The table lists every named tensor of the layer
# and what each weight costs.

# %%
import math

import torch, tinymoe as tm
from tinymoe import viz

torch.manual_seed(0)
torch.set_printoptions(precision=2, sci_mode=False)

config = tm.ModelConfig(vocab_size=16, d_model=5, n_heads=1, head_dim=3, v_head_dim=4, position="none")
viz.shapes_table(config, module="attention")

# %% [markdown]
# ## The input: ten tokens, five numbers each
#
# Attention starts from one vector per token (notebook 02 shows where they come from: an embedding
# table). PyTorch stores them as `(batch, seq_len, d_model) = (1, 10, 5)`, one token per **row**.
# The hand-built sheets turn this around and put one token per **column**, so that a product reads
# `Q = W_q · X`; we do the same here. The input has a gold border; entries of −1, 0 and 1 keep the arithmetic
# readable.

# %%
x = torch.randint(-1, 2, (1, 10, 5)).float()                             # (batch, seq_len, d_model)
viz.row(viz.sheet(x, "X", role="input", orientation="by_hand"),
        viz.sheet(x, "x as PyTorch stores it", role="input"))

# %% [markdown]
# ## Queries: Q = W_q · X
#
# A query says what a token is looking for. It is a linear map of the token's vector: the weight
# `W_q` has one row per query dimension (`d_k = 3`) and one column per input dimension
# (`d_model = 5`). Laid out by hand, `W_q` sits on the left, `X` on top, and each cell of `Q` is
# where a row of `W_q` meets a column of `X`: their dot product. `W_q` has a red border because it is
# trainable: these 15 cells are 15 of the layer's parameters. (A trained model learns them; we type in
# small whole numbers so every product can be checked by eye.)

# %%
d_model, d_k, d_v = 5, 3, 4
W_q = torch.tensor([[0., 1, 1, 0, 1],                                    # (d_k, d_model) = (3, 5):
                    [1, 1, 0, 1, 1],                                     # nn.Linear's (out, in)
                    [0, 0, -1, -1, 0]])
W_k = torch.tensor([[1., 0, 0, 1, 0],                                    # (d_k, d_model) = (3, 5)
                    [1, 1, -1, 0, -1],
                    [1, -1, 0, 0, 1]])
W_v = torch.tensor([[1., 1, 1, 0, -1],                                   # (d_v, d_model) = (4, 5):
                    [1, 0, 0, 0, 1],                                     # values have their own size
                    [0, -1, 0, 1, 0],
                    [1, 0, 0, 1, 0]])

q = x[0] @ W_q.T                                                         # (seq_len, d_k) = (10, 3)
viz.matmul_sheet(W_q, x, result=q, names=("W_q", "X", "Q"))

# %% [markdown]
# ## Keys and values
#
# A key says what a token offers to be found by; a value is what it hands over once found. Both
# are linear maps of the same input, with their own weights. The key has the query's size `d_k = 3`
# (next cell: it must). The value has its own size, here `d_v = 4`: nothing forces it to match.

# %%
k = x[0] @ W_k.T                                                         # (seq_len, d_k) = (10, 3)
v = x[0] @ W_v.T                                                         # (seq_len, d_v) = (10, 4)
viz.row(viz.matmul_sheet(W_k, x, result=k, names=("W_k", "X", "K")),
        viz.matmul_sheet(W_v, x, result=v, names=("W_v", "X", "V")))

# %% [markdown]
# ## q and k must share a length, v need not
#
# A score is the dot product of one query with one key, so the two vectors must have the same
# length. Give the keys four dimensions instead of three and the core refuses with a message that
# says which sizes clash and why; the value size, by contrast, only decides how wide the output is.

# %%
k_too_long = x[0] @ torch.randint(-1, 2, (4, d_model)).float().T         # (10, 4): d_k = 4 != 3
try:
    tm.attention_weights(q, k_too_long)
except ValueError as error:
    print("ValueError:", error)

out_v4, _ = tm.scaled_dot_product_attention(q, k, v)                     # d_v = 4
out_v2, _ = tm.scaled_dot_product_attention(q, k, v[:, :2])              # d_v = 2: fine too
print("d_k = 3, d_v = 4 -> out", tuple(out_v4.shape), "| d_k = 3, d_v = 2 -> out", tuple(out_v2.shape))

# %% [markdown]
# ## Scores: every query against every key
#
# `Q Kᵀ` holds the dot product of query `i` (row) with key `j` (column): a `(10, 10)` table of how
# well each token's question matches each token's offer. Laid out by hand it is again "left times
# top": `Q` (one query per row) on the left, `Kᵀ` (one key per column) on top, each product where a
# query's row meets a key's column. Both operands are computed, not trained, so neither has a red border.
# Then every score is divided by `√d_k = √3` (the sheet beside it, or below on a narrow screen). We compute it by hand and check the core's
# `attn.scores` agrees.

# %%
raw = q @ k.T                                                            # (10, 10): query i . key j
scores = raw / math.sqrt(d_k)                                            # (10, 10)

trace = tm.Trace().scope("attn")                                         # record as attn.scores, attn.weights ...
tm.scaled_dot_product_attention(q, k, v, trace=trace)
torch.testing.assert_close(scores, trace["attn.scores"])
print("scores by hand == the core's attn.scores")
queries, keys = [f"q{i}" for i in range(10)], [f"k{j}" for j in range(10)]
computed = ("activation", "activation", "activation")                    # no operand here is a weight
viz.row(viz.matmul_sheet(k, q, result=raw, names=("K", "Q", "raw"), orientation="pytorch", roles=computed,
                         labels=(keys, ["d0", "d1", "d2"], queries)),
        viz.show(trace, "attn.scores", row_labels=queries, col_labels=keys))

# %% [markdown]
# ## Why divide by √d_k
#
# A dot product adds `d_k` products. If the entries of q and k are random with spread 1, each
# product has spread about 1 and the sum of `d_k` of them has spread about `√d_k`: a head with
# `d_k = 100` produces scores ten times wider than one with `d_k = 1`. A softmax over scores that
# wide puts nearly all the weight on one key and its gradient vanishes. Dividing by `√d_k` brings
# the spread back to about 1 whatever `d_k` is. The table measures it on 2000 random query-key
# pairs, and the average largest weight a softmax over 10 keys gives.

# %%
g = torch.Generator().manual_seed(0)
print(" d_k   spread of q·k   spread of q·k/√d_k   largest weight (raw)   largest weight (scaled)")
for dk in (1, 4, 16, 64, 256, 1024):
    qs, ks = torch.randn(2000, 10, dk, generator=g), torch.randn(2000, 1, dk, generator=g)
    dots = (qs * ks).sum(-1)                                             # (2000, 10): 10 keys per query
    top_raw = tm.safe_softmax(dots).amax(-1).mean()
    top_scaled = tm.safe_softmax(dots / math.sqrt(dk)).amax(-1).mean()
    print(f"{dk:>4} {dots.std():>15.2f} {(dots / math.sqrt(dk)).std():>20.2f} {top_raw:>22.2f} {top_scaled:>25.2f}")

# %% [markdown]
# The raw spread grows like `√d_k` (1, 2, 4, 8, 16, 32) and the softmax drifts towards a one-hot
# choice; the scaled spread stays near 1 and the weights stay spread out.
#
# ## Softmax, one query at a time
#
# Each query turns its row of scores into weights: `exp(score)` makes every entry positive, and
# dividing by the row's sum makes the row add up to 1. So the softmax runs along the **keys**
# (the last axis), separately for every query. We compute it by hand and compare with the core.

# %%
e = torch.exp(scores)                                                    # (10, 10), all positive
weights = e / e.sum(dim=-1, keepdim=True)                                # each row sums to 1
torch.testing.assert_close(weights, trace["attn.weights"])
print("row sums:", weights.sum(dim=-1))
viz.show(trace, "attn.weights", row_labels=[f"q{i}" for i in range(10)], col_labels=[f"k{j}" for j in range(10)])

# %% [markdown]
# ## The safe softmax: subtract the row's maximum first
#
# `exp` grows fast. The largest float16 number is 65504 and `exp(11.09) ≈ 65504`, so in float16 any
# score above about 11.09 turns into `inf`, and `inf / inf` is `NaN`. The two float16 numbers on
# either side of 11.09 show the edge.

# %%
print("float16 max:", torch.finfo(torch.float16).max)
edge = torch.tensor([11.0859375, 11.09375], dtype=torch.float16)         # neighbouring float16 values
print("exp of", edge.tolist(), "in float16:", torch.exp(edge).tolist())

# %% [markdown]
# A row of float16 scores that reaches 12 is enough to break the textbook formula
# (`tm.naive_softmax`): the largest score's weight becomes `NaN` and every other weight becomes 0.
# Since `softmax(s) = softmax(s − c)` for any constant `c`, `tm.safe_softmax` subtracts the row's
# maximum first: every exponent is then ≤ 0, every `exp` is ≤ 1, and nothing can overflow. Same
# answer as float32, no `NaN`.

# %%
row16 = torch.tensor([[2.0, 9.0, 11.0, 12.0]], dtype=torch.float16)
naive16 = tm.naive_softmax(row16)
safe16 = tm.safe_softmax(row16)
exact = torch.softmax(row16.float(), dim=-1)                             # float32 reference
torch.testing.assert_close(safe16.float(), exact, atol=1e-3, rtol=1e-3)
print("exp(row) in float16:", torch.exp(row16))
print("naive_softmax:      ", naive16)
print("row - max:          ", row16 - row16.amax(dim=-1, keepdim=True))
print("safe_softmax:       ", safe16)
print("float32 softmax:    ", exact)

# %% [markdown]
# ## Weighted sum of the values
#
# Each query's output is its weights times the values: a blend of the value vectors, mostly of the
# tokens it attends to most. `weights (10, 10) @ V (10, 4)` gives one `d_v = 4` vector per token:
# the output takes the **value** size, not `d_k`. Laid out the same way: the weights on the left
# (one query per row), `V` on top (one key per row), each output where they meet.

# %%
out = weights @ v                                                        # (10, d_v) = (10, 4)
torch.testing.assert_close(out, trace["attn.out"])
viz.matmul_sheet(v.T, weights, result=out, names=("Vᵀ", "weights", "out"), orientation="pytorch", roles=computed,
                 labels=([f"d{c}" for c in range(d_v)], keys, queries))

# %% [markdown]
# ## The causal mask: no peeking ahead
#
# A language model predicts the next token, so token `i` may only attend to tokens `0 .. i`. The
# mask is a lower triangle of True ("may attend"). Masked scores are set to `−inf` before the
# softmax, so their weight is exactly 0 and each row still sums to 1 over the keys it may see.
# Query 0 can only see itself: its weight on key 0 is 1.

# %%
mask = tm.causal_mask(10)                                                # (10, 10) bool, True = may attend
causal_weights = torch.softmax(scores.masked_fill(~mask, float("-inf")), dim=-1)  # by hand
trace = tm.Trace().scope("attn")
tm.scaled_dot_product_attention(q, k, v, causal=True, trace=trace)
torch.testing.assert_close(causal_weights, trace["attn.weights"])
print("row sums:", trace["attn.weights"].sum(dim=-1))
viz.row(viz.show(trace, "attn.mask"), viz.show(trace, "attn.weights"))

# %% [markdown]
# ## A query with nothing to see
#
# Batches of different-length sentences are padded, and padding keys are masked too. With
# left-padding, the first queries may have **no** key left: say tokens 0 and 1 are padding, so
# queries 0 and 1 see nothing (causal mask and padding mask together). The textbook route gives
# `exp(−inf) / sum(exp(−inf)) = 0 / 0 = NaN`, and one NaN row spreads to every later layer. The
# core gives such a row all-zero weights and a zero output instead.

# %%
real_keys = torch.tensor([False, False] + [True] * 8)                    # keys 0 and 1 are padding
both = tm.causal_mask(10) & real_keys                                    # (10, 10): rows 0 and 1 all False
textbook = torch.softmax(scores.masked_fill(~both, float("-inf")), dim=-1)
print("textbook softmax, rows 0-2:\n", textbook[:3])
trace = tm.Trace().scope("attn")
out_padded, w_padded = tm.scaled_dot_product_attention(q, k, v, mask=both, trace=trace)
assert not torch.isnan(w_padded).any() and (w_padded[:2] == 0).all() and (out_padded[:2] == 0).all()
print("core: rows 0 and 1 are all zeros, no NaN anywhere")
viz.row(viz.show(trace, "attn.mask"), viz.show(trace, "attn.weights"))

# %% [markdown]
# ## The same thing, from the core's attention module
#
# `tm.MultiHeadAttention` is the layer the rest of the course uses. Built from our config it has
# the same four weights (plus `W_o`, which maps the `d_v = 4` output back to `d_model = 5`; notebook
# 02 is about it). Load our integer weights into it, run it with a trace, and every named
# intermediate matches what we computed by hand. `viz.walk` lays the whole trace out, in order.

# %%
attn = tm.MultiHeadAttention(config)                                     # causal by default
with torch.no_grad():
    attn.W_q.weight.copy_(W_q)
    attn.W_k.weight.copy_(W_k)
    attn.W_v.weight.copy_(W_v)
    attn.W_o.weight.copy_(torch.randint(-1, 2, (d_model, d_v)).float())
trace = tm.Trace()
attn(x, trace)
torch.testing.assert_close(trace["attn.q"][0, 0], q)                     # (batch, head, seq, d_k)
torch.testing.assert_close(trace["attn.weights"][0, 0], causal_weights)
torch.testing.assert_close(trace["attn.head0"][0], causal_weights @ v)
print("module == by hand:", ", ".join(n for n in trace if n.startswith("attn.") and not n.startswith("attn.W")))
viz.walk(trace, names=["attn.x", "attn.q", "attn.k", "attn.v", "attn.weights", "attn.head0", "attn.out"])

# %% [markdown]
# ## Try it: the attention explorer
#
# The explorer holds a config and re-runs the same core module whenever a slider moves: change
# `seq_len`, `d_model`, `d_k`, `d_v`, the number of heads or the causal switch, and the shape label,
# the sheets and the heatmap update. Try `d_v` first: only `attn.v` and the output change shape.
# It starts from the module and the tokens above (`start_from=attn, start_inputs=x`), so its first
# picture is the one you just checked by hand; a size that no longer fits them draws seeded random
# weights instead. (Run the notebook to get live sliders.)

# %% tags=["nbval-ignore-output"]
explorer = viz.AttentionExplorer(seq_len=10, d_model=5, d_k=3, d_v=4, n_heads=1, orientation="by_hand",
                                 start_from=attn, start_inputs=x)
torch.testing.assert_close(torch.as_tensor(explorer.heatmap_data, dtype=torch.float32), trace["attn.weights"][0, 0],
                           atol=1e-3, rtol=0)                            # its first picture: the one above
explorer

# %% [markdown]
# ## At a larger size
#
# The same module at 48 tokens, `d_model = 64` and one head with `d_k = 32`: a `(48, 48)` table of
# weights, too many cells to read, so we draw it as a heatmap. To give it something to find, we
# repeat a 12-token sentence four times and set `W_k = W_q`, so a query matches best the keys of
# the **same** token. Every query then spreads its weight evenly over the earlier copies of itself
# (1, then 1/2, 1/3, 1/4): stripes parallel to the diagonal, and nothing above it (causal).

# %%
big = tm.ModelConfig(vocab_size=256, d_model=64, n_heads=1, head_dim=32, position="none", max_seq_len=64)
big_attn = tm.MultiHeadAttention(big)
with torch.no_grad():
    big_attn.W_k.weight.copy_(big_attn.W_q.weight)                       # a query matches its own key best
sentence = 3 * torch.randn(12, 64)                                       # 12 token vectors
big_x = sentence.repeat(4, 1)[None]                                      # (1, 48, 64): the sentence 4 times
big_trace = tm.Trace()
big_attn(big_x, big_trace)
print("query 40's weights on its copies at 4, 16, 28, 40:", big_trace["attn.weights"][0, 0, 40, [4, 16, 28, 40]])
viz.heatmap(big_trace["attn.weights"][0, 0], title="attn.weights (48, 48): queries (rows) × keys (columns)",
            width=520, height=440)

# %% [markdown]
# ## What changed
#
# This layer's only departure from the textbook is `d_v = 4 ≠ d_k = 3`. Compared with values of the
# key's size, that touches `attn.v`, the head's output `attn.head0` (and so `attn.concat`), `W_v` and
# `W_o`, and nothing else: the queries, keys, scores and weights do not know how wide the values are.

# %%
viz.shapes_table(config, previous=config.replace(v_head_dim=None), module="attention")
