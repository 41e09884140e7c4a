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
# # 03 · Position: sinusoidal encodings and RoPE
#
# Attention compares every query with every key, but nothing in `q · k` says *where* the two
# tokens sit. This notebook gives the model positions twice: the original way (a table of sines and
# cosines added to the embeddings once, at the bottom) and the Llama way (RoPE: rotate q and k in
# every head of every layer).
#
# **After this notebook you can:**
# - say why attention without position cannot tell the same word at two places apart;
# - build the sinusoidal table and see where it enters the model (once);
# - rotate q and k by hand with RoPE and check the core agrees;
# - show that RoPE's cos/sin tables are buffers, not parameters (nothing to train);
# - show numerically that a RoPE score `q_m · k_n` depends only on the distance `m - n`;
# - tell the two pairing conventions (rotate-half and interleaved) apart and convert one into the other.
#
# **Where we are.** The multi-head attention of notebook 02, with no position at all: 10 tokens,
# `d_model = 6` and two heads of `head_dim = 4`. (One more column than our usual 5: sines and
# cosines come in pairs, so the sinusoidal table needs an even `d_model`, and RoPE needs an even
# `head_dim`.) The table lists every tensor one attention layer makes and its parameters.

# %%
import torch, tinymoe as tm
from tinymoe import viz

torch.manual_seed(0)
torch.set_printoptions(precision=2, sci_mode=False)

config = tm.ModelConfig(vocab_size=16, d_model=6, n_heads=2, head_dim=4, max_seq_len=16, position="rope")
viz.shapes_table(config.replace(position="none"), module="attention")

# %% [markdown]
# The config checks the pairing rule before any tensor exists. With `d_model = 5` the sinusoidal
# table cannot be built, and the error says which field, which value and which rule:

# %%
try:
    tm.ModelConfig(d_model=5, n_heads=1, position="sinusoidal").validate()
except tm.ConfigError as error:
    print("ConfigError:", error)

# %% [markdown]
# ## Without position, the same word looks the same everywhere
#
# Our ten tokens are `3 1 4 1 5 9 2 6 5 3`: token 5 appears at positions 4 and 8, token 1 at 1 and 3.
# We give the module small integer weights so every number in the sheets is easy to check. With
# `position="none"` the query of token 5 is computed from token 5's embedding alone, so its two rows
# in `attn.q` are identical: attention cannot tell "the 5 at position 4" from "the 5 at position 8".

# %%
tokens = torch.tensor([[3, 1, 4, 1, 5, 9, 2, 6, 5, 3]])                  # (1, 10)
labels = [f"{t}@{m}" for m, t in enumerate(tokens[0].tolist())]          # token@position
W_E = torch.randint(-2, 3, (config.vocab_size, config.d_model)).float()  # a small integer embedding
x = W_E[tokens]                                                          # (1, 10, 6)


def integer_weights(module):
    """Overwrite every parameter with small integers (-2 .. 2), so the sheets stay readable."""
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randint(-2, 3, p.shape))
    return module


attn_none = integer_weights(tm.MultiHeadAttention(config.replace(position="none")))
trace_none = tm.Trace()
attn_none(x, trace_none)
print("rows 4 and 8 of attn.q (head 0) equal:", torch.equal(trace_none["attn.q"][0, 0, 4], trace_none["attn.q"][0, 0, 8]))
viz.row(viz.sheet(x, "x", role="input", row_labels=labels),
        viz.sheet(trace_none["attn.q"][0, 0], "attn.q, head 0", row_labels=labels))

# %% [markdown]
# ## Absolute position: a table added once, at the bottom
#
# The original transformer adds a fixed table to the token embeddings before the first layer:
# `PE[m, 2i] = sin(m / 10000^(2i/d_model))` and `PE[m, 2i+1] = cos(m / 10000^(2i/d_model))`.
# Column pair 0 turns fast (one radian per position), the last pair barely moves. The table is
# computed, not learned: it is drawn green, the colour of a buffer.

# %%
pe = tm.sinusoidal_positions(config.max_seq_len, config.d_model)         # (max_seq_len, d_model)
pe_cols = [f"{f}θ{i}" for i in range(config.d_model // 2) for f in ("sin ", "cos ")]
viz.sheet(pe[:10], "sinusoidal_positions(16, 6)[:10]", role="buffer",
          row_labels=[f"m={m}" for m in range(10)], col_labels=pe_cols)

# %% [markdown]
# `TinyLM(position="sinusoidal")` adds this table to the embeddings and records both in its trace:
# `embed.out` (the token embeddings), `embed.pos` (the table) and `embed.with_pos` (their sum).
# The two 5s now enter the first layer as different vectors. That sum is the *only* place position
# enters this model; every layer above has to carry it along in the residual stream.

# %%
model_sin = tm.TinyLM(config.replace(position="sinusoidal", n_layers=2))
trace_sin = tm.Trace()
model_sin(tokens, trace=trace_sin)
viz.row(*(viz.show(trace_sin, name, row_labels=labels) for name in ("embed.out", "embed.pos", "embed.with_pos")))

# %% [markdown]
# ## RoPE: rotate q and k, pair by pair
#
# RoPE leaves the embeddings alone. Inside every head it splits q (and k) into pairs of
# dimensions and turns pair `i` of the token at position `m` by the angle `m · θ_i`, with
# `θ_i = base^(-2i/head_dim)`. At `head_dim = 4` there are two pairs: `θ_0 = 1` radian per
# position and `θ_1 = 10000^(-1/2) = 0.01`. The angle table is the whole of RoPE's "knowledge":

# %%
rope = tm.RotaryEmbedding(head_dim=config.qk_dim, max_seq_len=config.max_seq_len)
theta = tm.rope.rope_frequencies(config.qk_dim)                          # (head_dim/2,) = (2,)
angles = torch.arange(10)[:, None] * theta[None, :]                      # (10, 2): m * theta_i
print("theta:", theta.float())
positions = [f"m={m}" for m in range(10)]
viz.column(viz.sheet(angles, "angles m·θ_i", row_labels=positions, col_labels=["θ0", "θ1"]),
           viz.row(viz.sheet(rope.cos[:10], "rope.cos[:10]", role="buffer", row_labels=positions,
                             col_labels=["θ0", "θ1", "θ0", "θ1"]),
                   viz.sheet(rope.sin[:10], "rope.sin[:10]", role="buffer", row_labels=positions,
                             col_labels=["θ0", "θ1", "θ0", "θ1"])))

# %% [markdown]
# ## Precomputed and not trainable
#
# `cos` and `sin` are computed once, when the module is built, and registered as *buffers*: they
# move to the GPU with the model but have no gradient and are not in `parameters()`, so an
# optimizer never touches them. `parameter_counts` lists them in their own column. They are not
# even saved in the checkpoint (`persistent=False`): any model can rebuild them from `rope_base`.

# %%
print("RotaryEmbedding:", tm.parameter_counts(rope)["total"])
for name, buffer in rope.named_buffers():
    print(f"  buffer {name}: shape {tuple(buffer.shape)}, requires_grad={buffer.requires_grad}")
print("  parameters:", list(rope.named_parameters()))
print("  in the state dict:", list(rope.state_dict()))
attn_rope = tm.MultiHeadAttention(config)
for name, row in tm.parameter_counts(attn_rope).items():
    print(f"attn.{name:<6} {row}")

# %% [markdown]
# Because RoPE adds no parameter, the RoPE attention loads the very same weights as the
# position-free one. Now we rotate head 0's queries by hand: for `rotate_half`, pair `i` is the
# dimensions `(i, i + head_dim/2)` and the turn is
# `(a, b) -> (a cos - b sin, b cos + a sin)`. The cell checks the core's `attn.q_rot` against it.

# %%
attn_rope.load_state_dict(attn_none.state_dict())
trace_rope = tm.Trace()
attn_rope(x, trace_rope)

q = trace_rope["attn.q"][0, 0]                                           # (10, head_dim): head 0
cos, sin = rope.cos[:10], rope.sin[:10]                                  # (10, head_dim)
half = config.qk_dim // 2
a, b = q[:, :half], q[:, half:]                                          # first / second member of each pair
q_rot_by_hand = torch.cat([a * cos[:, :half] - b * sin[:, :half],
                           b * cos[:, half:] + a * sin[:, half:]], dim=-1)
torch.testing.assert_close(q_rot_by_hand, trace_rope["attn.q_rot"][0, 0])
torch.testing.assert_close(q.norm(dim=-1), q_rot_by_hand.norm(dim=-1))   # a rotation keeps lengths
print("by hand == attn.q_rot; every row kept its length")
viz.row(viz.sheet(q, "attn.q, head 0", row_labels=labels),
        viz.show(trace_rope, "attn.rope_cos", row_labels=labels),
        viz.sheet(trace_rope["attn.q_rot"][0, 0], "attn.q_rot, head 0", row_labels=labels))

# %% [markdown]
# Position 0 is not rotated at all (cos 0 = 1, sin 0 = 0): row `3@0` is the same in `attn.q` and
# `attn.q_rot`. The two 5s, identical in `attn.q`, now differ in `attn.q_rot`: position has entered,
# inside the head, without changing a single weight.
#
# ## The score depends only on the distance m − n
#
# Rotating q by `m·θ` and k by `n·θ` and taking their dot product gives the same as rotating k alone
# by `(n − m)·θ`: only the difference of the angles survives. So put the *same* query vector at
# position `m` and the *same* key vector at position `n`, and the score `q_m · k_n` should depend on
# `m − n` only. The table checks it for several `(m, n)` with equal distances, next to the same
# experiment with the sinusoidal table (add `PE[m]` and `PE[n]` to the embeddings, then project).

# %%
q_vec = trace_rope["attn.q"][0, 0, 4]                                    # token 5's query (head 0)
k_vec = trace_rope["attn.k"][0, 0, 1]                                    # token 1's key (head 0)
W_q0, W_k0 = attn_rope.W_q.weight[:4], attn_rope.W_k.weight[:4]          # head 0's rows
pairs = [(2, 0), (5, 3), (9, 7), (15, 13), (4, 4), (11, 11), (1, 4), (9, 12)]
rows = []
for m, n in pairs:
    rope_score = tm.apply_rope(q_vec, rope.cos[m], rope.sin[m]) @ tm.apply_rope(k_vec, rope.cos[n], rope.sin[n])
    sin_score = (W_q0 @ (W_E[5] + pe[m])) @ (W_k0 @ (W_E[1] + pe[n]))
    rows.append([m - n, rope_score.item(), sin_score.item()])
table = torch.tensor(rows)
for distance in (2, 0, -3):
    same = table[table[:, 0] == distance]
    torch.testing.assert_close(same[:, 1], same[:1, 1].expand(len(same)))    # RoPE: one value per distance
assert table[:4, 2].unique().numel() > 1                                 # sinusoidal: m - n = 2, four values
print("RoPE: equal distances give equal scores; sinusoidal: they do not")
pair_labels = [f"m={m}, n={n}: m−n={m - n:+d}" for m, n in pairs]
viz.sheet(table[:, 1:], "q_m · k_n", row_labels=pair_labels, col_labels=["RoPE", "sinusoidal"],
          note="rows: (query position m, key position n)")

# %% [markdown]
# With the sinusoidal table the score mixes content and absolute position (`(x + PE[m]) W_q` against
# `(y + PE[n]) W_k` has cross terms in `m` and `n` separately), so a model has to *learn* to extract
# distances. RoPE builds the relative property into the arithmetic.
#
# ## Every head, in every layer
#
# The sinusoidal model has one position record, at the bottom. In a RoPE model every attention
# layer rotates q and k in every one of its heads, so a two-layer model has a cos/sin table in each
# layer (the same numbers; each layer holds its own small buffer). Both models have exactly the same
# trainable parameters.

# %%
model_rope = tm.TinyLM(config.replace(n_layers=2))
trace_model = tm.Trace()
model_rope(tokens, trace=trace_model)
print("sinusoidal model:", [n for n in trace_sin if "pos" in n or "rope" in n])
print("RoPE model:      ", [n for n in trace_model if "pos" in n or "rope" in n])
for name, model in (("sinusoidal", model_sin), ("RoPE", model_rope)):
    print(f"{name:<10} {tm.parameter_counts(model)['total']}")

# %% [markdown]
# ## Which dimensions form a pair: rotate-half or interleaved
#
# The RoFormer paper (and Meta's original Llama code) pairs neighbours, `(0, 1), (2, 3), ...`
# ("interleaved"). Hugging Face's Llama and GPT-NeoX pair each dimension with the one half a head
# away, `(0, 4), (1, 5), ...` ("rotate-half"). At `head_dim = 8` the cos tables show it: the columns
# that share an angle are the ones that form a pair.

# %%
rope_half = tm.RotaryEmbedding(head_dim=8, max_seq_len=16, pairing="rotate_half")
rope_inter = tm.RotaryEmbedding(head_dim=8, max_seq_len=16, pairing="interleaved")
print("rotate_half pairs:", [(i, i + 4) for i in range(4)])
print("interleaved pairs:", [(2 * i, 2 * i + 1) for i in range(4)])
viz.row(viz.sheet(rope_half.cos[:10], "rotate_half cos", role="buffer", row_labels=positions,
                  col_labels=[f"θ{i % 4}" for i in range(8)]),
        viz.sheet(rope_inter.cos[:10], "interleaved cos", role="buffer", row_labels=positions,
                  col_labels=[f"θ{i // 2}" for i in range(8)]))

# %% [markdown]
# Both conventions have the relative property: the same query and key at several `(m, n)` give one
# score per distance, whichever pairing rotates them. (The two columns differ from each other: the
# same eight numbers are paired up differently, so they are turned differently.)

# %%
q8, k8 = torch.randint(-2, 3, (8,)).float(), torch.randint(-2, 3, (8,)).float()
pairing_table = torch.tensor([[m - n] + [(tm.apply_rope(q8, r.cos[m], r.sin[m], r.pairing)
                                          @ tm.apply_rope(k8, r.cos[n], r.sin[n], r.pairing)).item()
                                         for r in (rope_half, rope_inter)] for m, n in pairs])
for distance in (2, 0, -3):
    same = pairing_table[pairing_table[:, 0] == distance]
    torch.testing.assert_close(same[:, 1:], same[:1, 1:].expand(len(same), 2))
viz.sheet(pairing_table[:, 1:], "q_m · k_n, head_dim 8", row_labels=pair_labels, col_labels=["rotate_half", "interleaved"],
          note="rows: (query position m, key position n)")

# %% [markdown]
# They are the same rotation with the dimensions listed in a different order. Take a head in
# rotate-half order and reorder its dimensions as `perm = [0, 4, 1, 5, 2, 6, 3, 7]` (each pair side
# by side): rotating the reordered vector the interleaved way gives the rotate-half result,
# reordered. So a model trained with one convention runs with the other once the rows of `W_q` and
# `W_k` are permuted, head by head; that is what the scripts converting Meta's Llama checkpoints to
# Hugging Face do. The cell checks both statements, the second on a whole attention module.

# %%
perm = torch.tensor([0, 4, 1, 5, 2, 6, 3, 7])
x8 = torch.randn(10, 8)
torch.testing.assert_close(tm.apply_rope(x8[:, perm], rope_inter.cos[:10], rope_inter.sin[:10], "interleaved"),
                           tm.apply_rope(x8, rope_half.cos[:10], rope_half.sin[:10], "rotate_half")[:, perm])

cfg8 = tm.ModelConfig(vocab_size=16, d_model=6, n_heads=2, head_dim=8, max_seq_len=16)
attn_half = tm.MultiHeadAttention(cfg8)
attn_inter = tm.MultiHeadAttention(cfg8.replace(rope_pairing="interleaved"))
state = attn_half.state_dict()
head_perm = torch.cat([h * 8 + perm for h in range(cfg8.n_heads)])       # permute inside every head
state = {**state, "W_q.weight": state["W_q.weight"][head_perm], "W_k.weight": state["W_k.weight"][head_perm]}
attn_inter.load_state_dict(state)
torch.testing.assert_close(attn_inter(x), attn_half(x))
print("interleaved with permuted W_q, W_k rows == rotate_half: same attention output")

# %% [markdown]
# Load a checkpoint with the wrong convention and nothing crashes: every shape fits, the model just
# attends to the wrong places. That is why the pairing is a named field in `ModelConfig`.
#
# ## Try it: the RoPE explorer
#
# Move the position `m`, the `base` and `head_dim`. The explorer rebuilds a `RotaryEmbedding` with
# the same core code and redraws its cos table (rows: positions), the rotation of one query at
# position `m`, and a curve of `q_m · k_n` against `m − n` for that query at `m` and at `m + 8`: the
# two curves lie on top of each other. Try an odd `head_dim` to see the config refuse it.
# (Run the notebook to get live sliders.)

# %% tags=["nbval-ignore-output"]
viz.RopeExplorer()

# %% [markdown]
# ## At a larger size: head_dim 64
#
# A Llama-size head has 32 pairs. Over 128 positions the fast pairs (left) turn many times, while
# the slow pairs (right) move a fraction of a turn: they are what still tells far-apart positions
# apart.

# %%
rope64 = tm.RotaryEmbedding(head_dim=64, max_seq_len=128)
viz.heatmap(rope64.cos[:, :32], title="cos(m·θ_i): positions m = 0..127 (rows) × pairs i = 0..31 (columns)")

# %% [markdown]
# The relative property at scale: put one random query at every position and one random key at
# every position and take every score. With RoPE the 128 × 128 table is constant along every
# diagonal (each diagonal is one distance `m − n`). With a sinusoidal table added to the input and
# random projections, it is not.

# %%
g = torch.Generator().manual_seed(1)
q64, k64 = torch.randn(64, generator=g), torch.randn(64, generator=g)
q_all = tm.apply_rope(q64.expand(128, 64), rope64.cos, rope64.sin)        # (128, 64): q at every position
k_all = tm.apply_rope(k64.expand(128, 64), rope64.cos, rope64.sin)        # (128, 64): k at every position
rope_scores = q_all @ k_all.T                                            # (128, 128)
torch.testing.assert_close(rope_scores[1:, 1:], rope_scores[:-1, :-1], atol=1e-4, rtol=1e-4)  # shift both: same

pe64 = tm.sinusoidal_positions(128, 64)
W_q64, W_k64 = torch.randn(64, 64, generator=g) / 8, torch.randn(64, 64, generator=g) / 8
sin_scores = ((q64 + pe64) @ W_q64.T) @ ((k64 + pe64) @ W_k64.T).T       # (128, 128)
print("largest change along a diagonal: RoPE", f"{(rope_scores[1:, 1:] - rope_scores[:-1, :-1]).abs().max():.4f}",
      "| sinusoidal", f"{(sin_scores[1:, 1:] - sin_scores[:-1, :-1]).abs().max():.2f}")
viz.heatmap(rope_scores, title="RoPE: q_m · k_n, query position m (rows) × key position n (columns)",
            width=520, height=460)

# %%
viz.heatmap(sin_scores, title="sinusoidal: q_m · k_n, query position m (rows) × key position n (columns)",
            width=520, height=460)

# %% [markdown]
# ## What changed
#
# Going from a sinusoidal table to RoPE changes no shape a layer passes on and no trainable
# parameter. What moved is *where* position enters: the `(max_seq_len, d_model)` table added once
# at the bottom becomes a `(max_seq_len, head_dim)` cos/sin pair inside every attention layer, and
# two new intermediates, `attn.q_rot` and `attn.k_rot`, sit between the projections and the scores.

# %%
viz.shapes_table(config, previous=config.replace(position="sinusoidal"))
