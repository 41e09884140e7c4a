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
# # 04 · Normalisation: from LayerNorm to RMSNorm, and the residual stream
#
# Every block reads its input through a normalisation: each token's `d_model` numbers are rescaled
# to a standard size before attention or the feed-forward sees them. The original transformer used
# LayerNorm; Llama, Mistral and most models since use RMSNorm, which does less.
#
# **After this notebook you can:**
# - compute LayerNorm and RMSNorm by hand on a 10 × 5 sheet and check the core agrees;
# - say what RMSNorm drops (the mean subtraction and the bias) and what that changes;
# - count a norm's parameters (LayerNorm `2 · d_model`, RMSNorm `d_model`);
# - follow one pre-norm block, `x -> norm_1 -> attn -> resid_attn -> norm_2 -> ffn -> out`, and see
#   that the residual stream itself is never normalised.
#
# **Where we are.** The decoder of notebook 03 at spreadsheet size: 10 tokens, `d_model = 5`, two
# heads of `head_dim = 4` (RoPE wants it even) and, for now, the original transformer's LayerNorm.

# %%
import torch, tinymoe as tm
from tinymoe import viz

torch.manual_seed(0)
torch.set_printoptions(precision=2, sci_mode=False)

config_ln = tm.ModelConfig(vocab_size=16, d_model=5, n_heads=2, head_dim=4, d_ff=8, max_seq_len=16,
                           norm="layernorm")
config = config_ln.replace(norm="rmsnorm")                               # where this notebook ends
viz.shapes_table(config_ln, module="block")

# %% [markdown]
# ## The sheet: ten tokens of five numbers
#
# A norm works on one token at a time: one row of this sheet, never a column. Two rows are planted
# to show what each norm ignores: token 8 is token 2 times 3 (same direction, larger), and token 5
# is token 1 plus 2 in every cell (shifted).

# %%
x = torch.randint(-2, 3, (10, 5)).float()                                # (tokens, d_model)
x[8] = 3 * x[2]                                                          # scaled copy of token 2
x[5] = x[1] + 2                                                          # shifted copy of token 1
viz.sheet(x, "x", role="input")

# %% [markdown]
# ## LayerNorm by hand
#
# For each token: subtract its mean, divide by its standard deviation (plus a small `eps` inside the
# square root), then scale by `gamma` and shift by `beta`, one of each per feature:
# `y = (x − mean) / sqrt(var + eps) · gamma + beta`. We set `gamma` and `beta` to round numbers so
# their effect is visible (a fresh LayerNorm starts at `gamma = 1`, `beta = 0`).

# %%
layer_norm = tm.LayerNorm(5)
with torch.no_grad():
    layer_norm.weight.copy_(torch.tensor([1.0, 2.0, 1.0, 0.5, 1.0]))     # gamma
    layer_norm.bias.copy_(torch.tensor([0.0, 0.5, 0.0, -0.5, 0.0]))      # beta

mean = x.mean(dim=-1, keepdim=True)                                      # (10, 1)
var = ((x - mean) ** 2).mean(dim=-1, keepdim=True)                       # (10, 1): divide by d_model, not d_model - 1
x_hat = (x - mean) / torch.sqrt(var + 1e-5)                              # (10, 5)
ln_by_hand = x_hat * layer_norm.weight + layer_norm.bias                 # (10, 5)

trace_ln = tm.Trace()
ln_out = layer_norm(x, trace_ln)
torch.testing.assert_close(ln_by_hand, ln_out)
torch.testing.assert_close(ln_out, torch.nn.functional.layer_norm(x, (5,), layer_norm.weight, layer_norm.bias))
print("by hand == tm.LayerNorm == torch.nn.functional.layer_norm")
viz.row(viz.show(trace_ln, "norm.mean"), viz.show(trace_ln, "norm.var"), viz.show(trace_ln, "norm.x_hat"))

# %% [markdown]
# Every row of `x_hat` now has mean 0 and variance 1. Then `gamma` (a trainable weight, red) and
# `beta` (a trainable bias, grey) give each feature back a scale and an offset of its own.
# Rows 2 and 8 came out identical (the scale was divided away) and so did rows 1 and 5 (the shift
# was subtracted away).

# %%
print("row means of x_hat:    ", x_hat.mean(dim=-1).round(decimals=2) + 0.0)      # + 0.0: no "-0.00"
print("row variances of x_hat:", x_hat.var(dim=-1, unbiased=False))
print("rows 2 and 8 equal:", torch.allclose(ln_out[2], ln_out[8], atol=1e-4),
      "| rows 1 and 5 equal:", torch.allclose(ln_out[1], ln_out[5], atol=1e-4))
viz.row(viz.show(trace_ln, "norm.gamma"), viz.show(trace_ln, "norm.beta"), viz.show(trace_ln, "norm.out"))

# %% [markdown]
# ## RMSNorm: no mean, no bias
#
# RMSNorm (Zhang & Sennrich, 2019) keeps only the rescaling: divide each token by its root mean
# square and multiply by `gamma`: `y = x / sqrt(mean(x²) + eps) · gamma`. No mean is subtracted and
# there is no `beta`. The bet, confirmed by Llama and most models since, is that the rescaling is
# what keeps training stable; the centring was costing a pass over the data for little.

# %%
rms_norm = tm.RMSNorm(5)
with torch.no_grad():
    rms_norm.weight.copy_(layer_norm.weight)                             # the same gamma as above

rms = torch.sqrt((x ** 2).mean(dim=-1, keepdim=True) + 1e-5)             # (10, 1)
rms_by_hand = x / rms * rms_norm.weight                                  # (10, 5)

trace_rms = tm.Trace()
rms_out = rms_norm(x, trace_rms)
torch.testing.assert_close(rms_by_hand, rms_out)
torch.testing.assert_close(rms_out, torch.nn.functional.rms_norm(x, (5,), rms_norm.weight, eps=1e-5))
print("by hand == tm.RMSNorm == torch.nn.functional.rms_norm")
viz.column(viz.show(trace_rms, "norm.gamma"),
           viz.row(viz.show(trace_rms, "norm.rms"), viz.show(trace_rms, "norm.x_hat"), viz.show(trace_rms, "norm.out")))

# %% [markdown]
# Every row of RMSNorm's `x_hat` has root mean square 1, but its mean is whatever the token's
# direction gives. The scaled copy (rows 2 and 8) still normalises to the same row; the shifted copy
# (rows 1 and 5) no longer does, because nothing is subtracted.

# %%
print("row rms of x_hat:  ", trace_rms["norm.x_hat"].pow(2).mean(dim=-1).sqrt())
print("row means of x_hat:", trace_rms["norm.x_hat"].mean(dim=-1).round(decimals=2) + 0.0)
print("rows 2 and 8 equal:", torch.allclose(rms_out[2], rms_out[8], atol=1e-4),
      "| rows 1 and 5 equal:", torch.allclose(rms_out[1], rms_out[5], atol=1e-4))

# %% [markdown]
# RMSNorm is LayerNorm without the first step. Centre the tokens yourself and the two agree
# exactly (with LayerNorm's `beta` at zero): for a row of mean 0, the variance *is* the mean square.

# %%
x_centred = x - x.mean(dim=-1, keepdim=True)
layer_norm_no_beta = tm.LayerNorm(5)
with torch.no_grad():
    layer_norm_no_beta.weight.copy_(layer_norm.weight)
torch.testing.assert_close(rms_norm(x_centred), layer_norm_no_beta(x))
print("RMSNorm(x - mean) == LayerNorm(x) with beta = 0")

# %% [markdown]
# ## Parameters: the bordered cells
#
# LayerNorm trains a `gamma` and a `beta` per feature (`2 · d_model`); RMSNorm trains only `gamma`
# (`d_model`). These are the red- and grey-bordered cells in the sheets above.

# %%
for name, module in (("LayerNorm", layer_norm), ("RMSNorm", rms_norm)):
    print(f"{name:<10}", tm.parameter_counts(module)["total"], "  parameters:",
          [f"{n} {tuple(p.shape)}" for n, p in module.named_parameters()])

# %% [markdown]
# ## Pre-norm and the residual stream
#
# A block does not normalise its input and pass it on. It keeps the input `x` as a *residual
# stream* and sends normalised copies down two side roads:
# `resid_attn = x + attn(norm_1(x))`, then `out = resid_attn + ffn(norm_2(resid_attn))`. The trace
# records each stop; the cell checks the two additions.

# %%
block = tm.DecoderBlock(config)
trace = tm.Trace()
out, _ = block(x[None], trace)                                           # (1, 10, 5)
torch.testing.assert_close(trace["resid_attn"], trace["x"] + trace["attn.out"])
torch.testing.assert_close(trace["out"], trace["resid_attn"] + trace["ffn.out"])
print("resid_attn == x + attn.out;  out == resid_attn + ffn.out")
stops = ["x", "norm_1.out", "attn.out", "resid_attn", "norm_2.out", "ffn.out", "out"]
viz.walk(trace, names=stops)

# %% [markdown]
# Measure every stop by its per-token root mean square. The side roads' inputs (`norm_1.out`,
# `norm_2.out`) are at 1 (a fresh RMSNorm has `gamma = 1`); the stream (`x`, `resid_attn`, `out`)
# is at whatever size the tokens and the additions made it. Nothing divides the stream itself:
# each layer can only *add* to it, and what an early layer wrote is still there, unscaled, for
# every later layer to read. (The original transformer normalised after each addition, "post-norm",
# which rescales the stream at every step and trains less stably when deep.)

# %%
rms_table = torch.stack([trace[name][0].pow(2).mean(dim=-1).sqrt() for name in stops], dim=-1)   # (10, 7)
viz.sheet(rms_table, "per-token rms at each stop", col_labels=stops)

# %% [markdown]
# ## Try it: the norm explorer
#
# Pick a norm, a `d_model` and a number of tokens. The explorer builds that norm with the core's
# `make_norm`, runs it on random tokens scaled from 0.5 (the first) to 3 (the last), all shifted off zero,
# and redraws the shape line, the per-token statistics, `gamma` (and `beta`), a heatmap of `x` beside
# the output, and the shapes table. Watch the parameter count double when you switch to LayerNorm,
# and try `d_model = 1`: LayerNorm of a single number is always `beta`. (Run the notebook to get
# live controls.)

# %% tags=["nbval-ignore-output"]
viz.NormExplorer()

# %% [markdown]
# ## At a larger size: 64 tokens of 512
#
# Real residual streams are not tidy: some tokens are much larger than others, and a few features
# carry large values for every token. Here tokens 16-31 are 10 times larger and feature 100 is an
# outlier. After RMSNorm every token has rms 1 (the loud tokens are tamed), but the outlier feature
# still stands out within each token: a norm rescales rows, it never evens out columns.

# %%
g = torch.Generator().manual_seed(1)
x_big = torch.randn(64, 512, generator=g)                                # (tokens, d_model)
x_big[16:32] *= 10                                                       # loud tokens
x_big[:, 100] += 8                                                       # an outlier feature
y_big = tm.RMSNorm(512)(x_big)
print("per-token rms before:", f"{x_big.pow(2).mean(-1).sqrt().min():.2f} .. {x_big.pow(2).mean(-1).sqrt().max():.2f}",
      "| after:", f"{y_big.pow(2).mean(-1).sqrt().min():.2f} .. {y_big.pow(2).mean(-1).sqrt().max():.2f}")
viz.heatmap(x_big, title="x: 64 tokens (rows) × 512 features", width=900, height=360)

# %%
viz.heatmap(y_big, title="RMSNorm(x): every row rescaled to rms 1; feature 100 still stands out", width=900, height=360)

# %% [markdown]
# ## What changed
#
# Swapping LayerNorm for RMSNorm changes no shape: every tensor a block passes on is `(1, 10, 5)` as
# before. It removes one `beta` of `d_model` numbers from every norm: two per block and one final
# norm before the LM head. At spreadsheet size that is 15 of a few hundred parameters; in a
# 70B-class model (80 blocks, `d_model = 8192`) it is 161 × 8192 ≈ 1.3 million of 70 billion.
# RMSNorm's gain is speed and simplicity, not size.

# %%
model_ln, model_rms = tm.TinyLM(config_ln), tm.TinyLM(config)
for name, model in (("LayerNorm model", model_ln), ("RMSNorm model", model_rms)):
    print(f"{name:<16}", tm.parameter_counts(model)["total"])
viz.shapes_table(config, previous=config_ln, module="block")
