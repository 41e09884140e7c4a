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
# # 02 · Multi-head attention
#
# One head gives each token one blend of the others. Several heads, side by side, let a token look
# for several things at once: each head has its own queries, keys and values, attends on its own,
# and the heads' outputs are laid next to each other and projected back to the model's width. This
# notebook adds heads one at a time and watches what every shape does.
#
# **After this notebook you can:**
# - say which shapes and parameter counts change when a head is added, and which do not;
# - concatenate heads whose value sizes differ (5, 3, 3 → 11) and project back to `d_model`;
# - say when the output projection `W_o` could be skipped, and why it usually cannot;
# - show that growing the vocabulary touches only the embedding and the last layer;
# - count the red-bordered (trainable) cells of a model and get its parameter count.
#
# **Where we are.** The attention layer of notebook 01 with one head: `d_model = 5`, `d_k = 3`,
# ten tokens, no positions yet (notebook 03).

# %%
import torch, tinymoe as tm
from tinymoe import viz

torch.manual_seed(0)
torch.set_printoptions(precision=2, sci_mode=False)

one_head = tm.ModelConfig(vocab_size=16, d_model=5, n_heads=1, head_dim=3, position="none")
viz.shapes_table(one_head, module="attention")

# %% [markdown]
# ## Add a head, and watch every shape
#
# A second head needs its own queries, keys and values, so `W_q`, `W_k` and `W_v` each gain
# `head_dim = 3` rows (15 more parameters each), and q, k, v gain a head axis of 2. Each head scores
# its own `(10, 10)` table. The heads' outputs are concatenated, so the concatenation is twice as
# wide and `W_o`, which reads it, gains 3 columns. The input and the output keep their shape: the
# rest of the model never sees how many heads there are. Highlighted rows changed (old struck out).

# %%
two_heads = one_head.replace(n_heads=2)
viz.shapes_table(two_heads, previous=one_head, module="attention")

# %% [markdown]
# A third head moves the same rows by the same steps: every head costs `4 · d_model · head_dim = 60`
# parameters here (its rows of `W_q`, `W_k`, `W_v` and its columns of `W_o`).

# %%
three_heads = one_head.replace(n_heads=3)
viz.shapes_table(three_heads, previous=two_heads, module="attention")

# %% [markdown]
# ## Three heads, every number
#
# We build the three-head layer from the core and give it small integer weights so the sheets stay
# readable. `W_q` is one `(9, 5)` matrix: rows 0-2 are head 0's queries, rows 3-5 head 1's, rows 6-8
# head 2's. The core computes all nine query dimensions in one product and then splits them into
# heads; the cell does head 1 by hand from its three rows and checks it against `attn.q`.

# %%
def integer_weights(module):
    """Overwrite every parameter with small integers (-1 .. 1), so the sheets stay readable."""
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randint(-1, 2, p.shape))
    return module


x = torch.randint(-1, 2, (1, 10, 5)).float()                             # (batch, seq_len, d_model)
attn = integer_weights(tm.MultiHeadAttention(three_heads))
trace = tm.Trace()
attn(x, trace)

q_head1 = x[0] @ attn.W_q.weight[3:6].T                                  # (10, 3): head 1's rows only
torch.testing.assert_close(q_head1, trace["attn.q"][0, 1])               # attn.q is (batch, head, seq, head_dim)
print("head 1 by hand == attn.q[:, 1]")
viz.row(viz.sheet(x, "x", role="input", orientation="by_hand"),
        viz.show(trace, "attn.W_q", row_labels=[f"h{h}·q{i}" for h in range(3) for i in range(3)]),
        viz.show(trace, "attn.q", orientation="by_hand"))

# %% [markdown]
# Each head then runs the attention of notebook 01 on its own: its own scores, its own causal
# softmax, its own weights. `attn.weights` is `(1, 3, 10, 10)`: three `(10, 10)` tables, one per
# head, each row a query's weights over the keys it may see. The heads look at different tokens.

# %%
queries, keys = [f"q{i}" for i in range(10)], [f"k{j}" for j in range(10)]
viz.show(trace, "attn.weights", row_labels=queries, col_labels=keys)

# %% [markdown]
# ## Concatenate the heads, then project back
#
# Each head's output is its weights times its own values: `(10, 3)` per head here. The heads are
# laid side by side, `concat = [head0 | head1 | head2]`, a `(10, 9)` tensor. `W_o` (5 × 9) maps each
# token's 9 numbers back to `d_model = 5`, so the layer's output can be added to its input. Every
# output number reads from every head: this is where the heads' findings are mixed.

# %%
heads = [trace[f"attn.head{h}"] for h in range(3)]                       # 3 x (1, 10, 3)
torch.testing.assert_close(torch.cat(heads, dim=-1), trace["attn.concat"])
viz.matmul_sheet(attn.W_o.weight, trace["attn.concat"], result=trace["attn.out"],
                 names=("W_o", "concat", "attn.out"))

# %% [markdown]
# ## Heads of unequal value size: 5, 3, 3 → 11
#
# Nothing in attention needs the heads to be alike. The scores only need each head's q and k to
# match (`head_dim = 3` here); each head's values can have a size of their own. Give head 0 values
# of size 5 and heads 1 and 2 values of size 3: `W_v` has 5 + 3 + 3 = 11 rows, the concatenation is
# 11 wide, and `W_o` is `(5, 11)`. `ModelConfig(v_head_dims=(5, 3, 3))` says exactly that.

# %%
unequal = three_heads.replace(v_head_dims=(5, 3, 3))
viz.shapes_table(unequal, previous=three_heads, module="attention")

# %% [markdown]
# Now with numbers. Heads of different widths cannot share one `(batch, heads, seq, d_v)` tensor the
# way equal heads do, so the trace keeps each head's values on its own: `attn.v0` `(1, 10, 5)`,
# `attn.v1` and `attn.v2` `(1, 10, 3)`, made by `W_v`'s rows 0-4, 5-7 and 8-10. Each head's output is
# its weights times its own values; the cell does that by hand, concatenates, and checks both
# against the core.

# %%
attn_u = integer_weights(tm.MultiHeadAttention(unequal))
trace_u = tm.Trace()
attn_u(x, trace_u)

v_heads = [trace_u[f"attn.v{h}"][0] for h in range(3)]                    # (10, 5), (10, 3), (10, 3)
torch.testing.assert_close(torch.cat(v_heads, dim=-1), x[0] @ attn_u.W_v.weight.T)   # W_v's rows, split
by_hand = [trace_u["attn.weights"][0, h] @ v_heads[h] for h in range(3)]
for h in range(3):
    torch.testing.assert_close(by_hand[h], trace_u[f"attn.head{h}"][0])
torch.testing.assert_close(torch.cat(by_hand, dim=-1), trace_u["attn.concat"][0])
print("head widths:", [tuple(t.shape) for t in by_hand], "-> concat", tuple(trace_u["attn.concat"].shape))
viz.row(*(viz.show(trace_u, f"attn.head{h}", orientation="by_hand") for h in range(3)),
        viz.show(trace_u, "attn.concat", orientation="by_hand",
                 row_labels=[f"h{h}·v{i}" for h, n in enumerate((5, 3, 3)) for i in range(n)]))

# %% [markdown]
# The output projection takes the 11-wide concatenation back to `d_model = 5`. By hand: `W_o` on the
# left, the concatenation on top (one token per column), the output where they meet.

# %%
viz.matmul_sheet(attn_u.W_o.weight, trace_u["attn.concat"], result=trace_u["attn.out"],
                 names=("W_o", "concat", "attn.out"), decimals=1)

# %% [markdown]
# ## When could the output projection be skipped?
#
# Only when it has nothing to do: a **single head whose value size is `d_model`**. Then the head's
# output is already `d_model` wide (no width to fix) and there are no other heads to mix with. What
# is left of `W_o` is a linear map applied after another linear map, `W_v`, with only the
# weights-times-values sum (which acts on tokens, not on features) in between, so the two fold into
# one matrix: `W_o · W_v`. The cell builds a second layer whose `W_v` is that product and whose
# `W_o` is the identity, and gets the same output: `W_o` was 25 redundant parameters.

# %%
single = one_head.replace(v_head_dim=5)                                  # one head, d_v = d_model = 5
attn_a = tm.MultiHeadAttention(single)
attn_b = tm.MultiHeadAttention(single)
with torch.no_grad():
    attn_b.W_q.weight.copy_(attn_a.W_q.weight)
    attn_b.W_k.weight.copy_(attn_a.W_k.weight)
    attn_b.W_v.weight.copy_(attn_a.W_o.weight @ attn_a.W_v.weight)       # fold W_o into W_v
    attn_b.W_o.weight.copy_(torch.eye(5))                                # nothing left to do
torch.testing.assert_close(attn_b(x), attn_a(x))
print("single head, d_v = d_model: W_o folded into W_v gives the same output")

# %% [markdown]
# With a narrower value (`d_v < d_model`) `W_o` is needed to bring the width back, and with several
# heads it is what lets every output dimension read from every head. (You could still fold each
# head's slice of `W_o` into that head's `W_v`, but then every head's values would be `d_model`
# wide: `n_heads` times more values to compute, and to cache while generating text.)
#
# ## Growing the vocabulary touches only the first and the last layer
#
# Put the attention layer in a whole language model (`TinyLM`: embedding, one block with attention
# and a feed-forward, final norm, LM head). The vocabulary is the set of token ids. Only two
# matrices know how many there are: the embedding (one row of `d_model` numbers per token id) and
# the LM head (one score per token id). Everything in between sees `d_model`-wide vectors. Double
# the vocabulary from 16 to 32 and compare the parameter counts, part by part:

# %%
model_config = unequal.replace(n_layers=1)
small_lm, big_lm = tm.TinyLM(model_config), tm.TinyLM(model_config.replace(vocab_size=32))
before, after = tm.parameter_counts(small_lm), tm.parameter_counts(big_lm)
print(f"{'part':<10}{'vocab 16':>10}{'vocab 32':>10}")
for part in before:
    mark = "   <- changed" if before[part] != after[part] else ""
    print(f"{part:<10}{before[part]['trainable']:>10}{after[part]['trainable']:>10}{mark}")
assert [p for p in before if before[p] != after[p]] == ["embed", "lm_head", "total"]

# %% [markdown]
# 16 more token ids cost 16 × 5 embedding numbers and 16 × 5 LM-head numbers: 160 parameters, and
# the attention, norms and feed-forward are untouched. The shapes table of the whole model says the
# same for the tensors: only `embed.W_E`, `lm_head.W_U` and the logits change shape.

# %%
viz.shapes_table(model_config.replace(vocab_size=32), previous=model_config)

# %% [markdown]
# ## Count the red-bordered cells
#
# In every sheet, trainable weights have a red border, and nothing else does. So the parameter count
# of a model is exactly the number of red-bordered cells a reader could count. Here are the four weights of the
# unequal-heads layer: 45 + 45 + 55 + 55 cells.

# %%
weight_sheets = [viz.show(trace_u, name) for name in ("attn.W_q", "attn.W_k", "attn.W_v", "attn.W_o")]
bordered = sum(s.cells for s in weight_sheets)
assert bordered == sum(p.numel() for p in attn_u.parameters()) == tm.attention_parameters(unequal)["total"]
print("red-bordered cells:", bordered, "= parameters of the layer:", tm.attention_parameters(unequal))
viz.row(*weight_sheets)

# %% [markdown]
# The same count over the whole language model: run it with a trace, draw every record recorded as
# a weight or bias (the embedding, the norms' scales, the attention, the feed-forward, the LM head)
# and count their cells. It must equal `parameter_counts`, which counts `model.parameters()`
# without looking at any sheet.

# %%
lm_trace = tm.Trace()
small_lm(torch.randint(0, 16, (1, 10)), trace=lm_trace)
bordered_names = [n for n in lm_trace if lm_trace.role(n) in ("weight", "bias")]
cells = {n: viz.show(lm_trace, n).cells for n in bordered_names}
for name, n in cells.items():
    print(f"{name:<26}{n:>5}")
print(f"{'bordered cells':<26}{sum(cells.values()):>5}")
print(f"{'parameter_counts total':<26}{before['total']['trainable']:>5}")
assert sum(cells.values()) == before["total"]["trainable"]

# %% [markdown]
# ## Try it: add heads with the explorer
#
# Move `n_heads` and watch the shapes table mark what changed, then try a `head_dim` and a `d_v`
# different from each other. The explorer rebuilds the core module at each move, with the same seed,
# so moving a slider back brings back the same numbers. (Run the notebook to get live sliders.)

# %% tags=["nbval-ignore-output"]
viz.AttentionExplorer(seq_len=10, d_model=5, d_k=3, d_v=3, n_heads=3)

# %% [markdown]
# ## At a larger size
#
# Eight heads at `d_model = 64`, `head_dim = 8`, 32 tokens: the same module, `(1, 8, 32, 32)`
# weights, drawn as a heatmap with the heads side by side. To give the heads something to find, the
# input is an 8-token sentence said four times, and heads 0-3 get `W_k = W_q` (their rows), so each
# of their queries matches the keys of the same token: stripes, one per earlier copy. Heads 4-7 keep
# their random weights and pick out other tokens. Same input, eight different patterns: that is what
# several heads buy.

# %%
big = tm.ModelConfig(vocab_size=256, d_model=64, n_heads=8, head_dim=8, position="none", max_seq_len=64)
big_attn = tm.MultiHeadAttention(big)
with torch.no_grad():
    big_attn.W_k.weight[:32] = big_attn.W_q.weight[:32]                  # heads 0-3: rows 0..31
big_x = (3 * torch.randn(8, 64)).repeat(4, 1)[None]                      # (1, 32, 64): a sentence 4 times
big_trace = tm.Trace()
big_attn(big_x, big_trace)
print({n: tuple(big_trace[n].shape) for n in ("attn.q", "attn.weights", "attn.concat", "attn.out")})
viz.heatmap(big_trace["attn.weights"], title="attn.weights (1, 8, 32, 32): heads side by side, queries × keys",
            width=1000, height=240)

# %% [markdown]
# ## What changed
#
# From notebook 01's single head to three heads with values of 5, 3 and 3: q, k and v gained a
# head axis, the scores and weights became one table per head, the concatenation is 11 wide, and
# `W_o` grew to `(5, 11)`. The input and output of the layer kept their shape.

# %%
viz.shapes_table(unequal, previous=one_head, module="attention")
