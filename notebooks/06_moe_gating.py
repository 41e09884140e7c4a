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
# # 06 · Mixture of Experts: from copying the MLP to routers, capacity and balance
#
# A transformer block ends with a feed-forward network (the MLP): the same small network applied
# to every token. A Mixture-of-Experts (MoE) layer keeps several copies of it, the *experts*, and
# a *router* that sends each token to only a few of them. The model gets the parameters of many
# MLPs while each token pays for the compute of one or two.
#
# **After this notebook you can:**
# - build an MoE layer by hand: copy the MLP into experts, add them, then weight them per token
#   with a router's softmax gates, then keep only the top-k gates (with and without
#   renormalising, as Mixtral and Qwen2-MoE do);
# - compute an expert's capacity, `ceil(capacity_factor * tokens / n_experts)`, and say what
#   happens to a token that does not fit (Switch Transformer);
# - compute the load-balancing loss and the router z-loss, and say why the router runs in float32;
# - say what noisy top-k, expert choice, soft MoE and shared experts change, and why expert choice
#   and soft MoE do not fit a decoder that generates one token at a time;
# - count an MoE's parameters: all of them, and the ones a single token uses.
#
# **Where we are.** One decoder block at spreadsheet size: ten tokens, `d_model = 5`, one head,
# and a SwiGLU feed-forward with `d_ff = 4` (notebook 04 put it after the second norm). That
# feed-forward (`ffn.*` below, 60 parameters) is what this notebook turns into experts.

# %%
import copy
import math

import torch, tinymoe as tm
from tinymoe import viz
from tinymoe.moe import MoE

torch.manual_seed(0)
torch.set_printoptions(precision=2, sci_mode=False)

dense = tm.ModelConfig(vocab_size=16, d_model=5, n_heads=1, d_ff=4, position="none")
viz.shapes_table(dense, module="block")

# %% [markdown]
# ## The MLP we start from
#
# Our feed-forward is a SwiGLU (Llama, Mixtral, Qwen): `out = W_down (silu(W_gate x) * W_up x)`.
# `W_gate` and `W_up` lift each token from 5 numbers to `d_ff = 4`, `silu` bends the gate, the two
# are multiplied cell by cell, and `W_down` brings the result back to 5. We load weights of −1, 0
# and 1 and feed it ten tokens of small whole numbers (gold: the input).

# %%
x = torch.randint(-2, 3, (1, 10, 5)).float()                             # (batch, seq_len, d_model)
tokens = [f"t{i}" for i in range(10)]


def integer_weights(module):
    """Overwrite every parameter with -1, 0 or 1, so the sheets stay readable."""
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randint(-1, 2, p.shape))
    return module


mlp = integer_weights(tm.SwiGLU(5, 4, name="ffn"))
trace_mlp = tm.Trace()
mlp(x, trace_mlp)
viz.row(viz.sheet(x, "x", role="input", row_labels=tokens), viz.show(trace_mlp, "ffn.W_gate"),
        viz.show(trace_mlp, "ffn.W_up"), viz.show(trace_mlp, "ffn.W_down"),
        viz.show(trace_mlp, "ffn.out", row_labels=tokens))

# %% [markdown]
# ## Copy the MLP into two experts, then three
#
# An expert is nothing new: it is the same MLP, copied, with weights of its own. We copy the block
# twice and give each copy different weights (in training they would start random and drift apart
# as each copy learns from the tokens it gets). Every expert maps the same ten tokens to its own
# `(10, 5)` output.

# %%
experts = [mlp] + [integer_weights(copy.deepcopy(mlp)) for _ in range(2)]   # expert 0 is the original
with torch.no_grad():
    expert_out = torch.stack([expert(x[0])[0] for expert in experts])       # (n_experts, seq_len, d_model)
# Experts 1 and 2's own weights (expert 0's are above), so every output below can be checked by hand.
viz.column(*(viz.row(*(viz.sheet(getattr(experts[e], w).weight, f"expert {e}: {name}", role="weight")
                       for w, name in (("w_gate", "W_gate"), ("w_up", "W_up"), ("w_down", "W_down"))))
               for e in (1, 2)),
           viz.row(*(viz.sheet(expert_out[e], f"expert {e}: y{e}", row_labels=tokens) for e in range(3))))

# %% [markdown]
# ## Add them with equal weight
#
# The simplest way to combine three experts is to average them: `out = (y0 + y1 + y2) / 3`. This
# is an ensemble, not yet a mixture: every token runs every expert, so the layer costs three MLPs
# and treats all tokens alike. What we want is for each token to choose.

# %%
equal = expert_out.mean(dim=0)                                           # (seq_len, d_model)
viz.sheet(equal, "(y0 + y1 + y2) / 3", row_labels=tokens)

# %% [markdown]
# ## A router: one score per expert
#
# The router is one more linear map, from a token's 5 numbers to one score per expert:
# `logits = W_router · X`, with `W_router` of shape `(n_experts, d_model) = (3, 5)`: 15 trainable
# parameters, the only new ones besides the experts. Laid out by hand: the weight on the left,
# the tokens on top, one score per expert and token where they meet. Token `t0` scores
# 1, 2 and 0: it leans to expert 1.

# %%
W_router = torch.tensor([[0., 1, 0, 1, 1],                               # (n_experts, d_model) = (3, 5)
                         [0, 1, -1, -1, -1],
                         [1, 0, -1, 0, -1]])
logits = x[0] @ W_router.T                                               # (seq_len, n_experts) = (10, 3)
viz.matmul_sheet(W_router, x[0], result=logits, names=("W_router", "X", "logits"))

# %% [markdown]
# ## Softmax the scores into gates
#
# A softmax over the experts (along each token's row) turns the scores into gates: positive, and
# summing to 1 per token. `t0`'s scores 1, 2, 0 become 0.24, 0.67, 0.09: two thirds of its weight
# goes to expert 1. `t2` (scores 2, −3, −1) is surer: 0.95 for expert 0.

# %%
probs = torch.softmax(logits, dim=-1)                                    # (seq_len, n_experts), rows sum to 1
print("row sums:", probs.sum(dim=-1))
viz.sheet(probs, "gates = softmax(logits)", row_labels=tokens, col_labels=["e0", "e1", "e2"])

# %% [markdown]
# ## Weight each expert's output by its gate, token by token
#
# Now each token mixes the experts in its own proportions:
# `out[t] = gate[t, 0] · y0[t] + gate[t, 1] · y1[t] + gate[t, 2] · y2[t]`. Unlike the equal
# average, every row now leans to the experts its token trusts. The core's `MoE` layer does the same
# with `top_k = 3` (every expert kept); we copy our weights into it, stacked expert by expert, and
# check that it agrees.

# %%
mixed = torch.einsum("te,etd->td", probs, expert_out)                    # (seq_len, d_model)


def load_weights(layer):
    """Copy W_router and the three experts' weights into a core MoE layer."""
    with torch.no_grad():
        layer.router.weight.copy_(W_router)
        layer.experts.w_gate.copy_(torch.stack([e.w_gate.weight for e in experts]))   # (3, d_ff, d_model)
        layer.experts.w_up.copy_(torch.stack([e.w_up.weight for e in experts]))       # (3, d_ff, d_model)
        layer.experts.w_down.copy_(torch.stack([e.w_down.weight for e in experts]))   # (3, d_model, d_ff)
    return layer


all3 = dense.replace(moe=tm.MoEConfig(n_experts=3, top_k=3))
trace_all3 = tm.Trace()
load_weights(MoE(all3))(x, trace_all3)
torch.testing.assert_close(trace_all3["moe.router_logits"], logits)
torch.testing.assert_close(trace_all3["moe.out"][0], mixed)
print("by hand == the core's MoE with top_k = 3: moe.router_logits, moe.out")
viz.row(viz.sheet(mixed, "Σ gate · y, by hand", row_labels=tokens),
        viz.show(trace_all3, "moe.out", row_labels=tokens))

# %% [markdown]
# ## Keep only the top-k gates: the layer becomes sparse
#
# So far every token still runs all three experts. Keep only each token's `k = 2` largest gates
# and set the others to zero: the zeroed expert never needs to run for that token. There are two
# ways to treat the two kept gates. **Mixtral** renormalises them to sum to 1 again; **Qwen2-MoE**
# (by default, `norm_topk_prob=False`) keeps them as they were, so a token the router is unsure
# about gets a smaller update.

# %%
top2 = probs.topk(2, dim=-1)                                             # values and indices, (seq_len, 2)
kept = torch.zeros_like(probs).scatter(1, top2.indices, top2.values)     # (seq_len, n_experts), one zero per row
renormalised = kept / kept.sum(dim=-1, keepdim=True)                     # Mixtral: rows sum to 1
viz.row(viz.sheet(kept, "top-2 kept (Qwen2-MoE)", row_labels=tokens, col_labels=["e0", "e1", "e2"]),
        viz.sheet(renormalised, "top-2 renormalised (Mixtral)", row_labels=tokens, col_labels=["e0", "e1", "e2"]))

# %% [markdown]
# The outputs follow from those gates exactly as before. The core's `MoE` with `top_k = 2` and
# `renormalize=True` or `False` must give the same two results. It does not store the `(10, 3)`
# matrix with its zeros: it keeps, per token, the `k` chosen experts (`moe.expert_ids`) and their
# gates (`moe.gates`), both `(10, 2)`. The check also runs all three dispatch backends (a loop over
# experts, every expert on every token, and tokens sorted by expert), which must agree.

# %%
traces = {}
for renormalize, gates in ((True, renormalised), (False, kept)):
    config = dense.replace(moe=tm.MoEConfig(n_experts=3, top_k=2, renormalize=renormalize))
    layer = load_weights(MoE(config))
    for dispatch in ("loop", "dense", "grouped"):
        layer.dispatch = dispatch
        trace = tm.Trace()
        layer(x, trace)
        torch.testing.assert_close(trace["moe.out"][0], torch.einsum("te,etd->td", gates, expert_out))
    traces[renormalize] = trace
torch.testing.assert_close(renormalised.gather(1, top2.indices), torch.softmax(top2.values.log(), dim=-1))
print("by hand == core, renormalize True and False, dispatch loop / dense / grouped")
print("Mixtral's renormalised gates == a softmax over the two kept logits only")
viz.row(viz.show(traces[True], "moe.expert_ids", row_labels=tokens, col_labels=["1st", "2nd"]),
        viz.show(traces[True], "moe.gates", row_labels=tokens, col_labels=["1st", "2nd"]),
        viz.show(traces[False], "moe.gates", row_labels=tokens, col_labels=["1st", "2nd"]),
        viz.show(traces[True], "moe.out", row_labels=tokens))

# %% [markdown]
# The third sheet is Qwen2-MoE's gates (not renormalised), the other three Mixtral's. Each token
# now runs 2 of the 3 experts: 2/3 of the ensemble's work. With 8 experts and top-2 (Mixtral) it
# is 1/4, and the model still holds all 8 experts' parameters.
#
# ## Switch: top-1, and a capacity per expert
#
# Switch Transformer sends each token to exactly **one** expert (`top_k = 1`, gate = the softmax
# probability). On a GPU every expert gets a buffer of fixed size, its *capacity*:
# `capacity = ceil(capacity_factor · tokens / n_experts)`. With 10 tokens, 3 experts and a
# capacity factor of 1.0 that is `ceil(10 / 3) = 4` seats per expert. Tokens take seats in order;
# a token whose expert is already full is *dropped*.

# %%
capacity_factor = 1.0
capacity = math.ceil(capacity_factor * 10 / 3)                          # seats per expert
choice = logits.argmax(dim=-1)                                           # (seq_len,) each token's one expert
seat = torch.stack([(choice[: t + 1] == choice[t]).sum() for t in range(10)])   # 1-based seat in its expert's queue
keep = seat <= capacity                                                  # (seq_len,) False: dropped
gate = probs.gather(1, choice[:, None])[:, 0] * keep                     # Switch's gate: the probability itself
print("capacity =", capacity, "| tm.moe.capacity(10, 3, 1.0) =", tm.moe.capacity(10, 3, 1.0))
print("load before capacity:", torch.bincount(choice, minlength=3).tolist())
viz.row(viz.sheet(torch.stack([choice, seat, keep.long()], dim=1), "Switch routing, by hand", row_labels=tokens,
                  col_labels=["expert", "seat", "kept"]),
        viz.sheet(gate[:, None], "gate", row_labels=tokens, col_labels=["gate"]))

# %% [markdown]
# Expert 0 is the favourite: six tokens want it, only four fit, so `t5` and `t7` (the fifth and
# sixth in its queue) are dropped. The core's `router="switch"` does the same; its trace marks the
# dropped slots with expert id −1 and lists the tokens in `moe.dropped_tokens`. A dropped token's
# MoE output is a row of zeros. In the block, the MoE output is *added* to the residual stream, so
# a dropped token passes through the layer unchanged: the residual carries it.

# %%
switch = dense.replace(moe=tm.MoEConfig(n_experts=3, top_k=1, router="switch", capacity_factor=1.0))
switch_layer = load_weights(MoE(switch))
trace_sw = tm.Trace()
switch_layer(x, trace_sw)
assert int(trace_sw["moe.capacity"]) == capacity
torch.testing.assert_close(trace_sw["moe.expert_ids"][:, 0], torch.where(keep, choice, -1))
torch.testing.assert_close(trace_sw["moe.gates"][:, 0], gate)
assert trace_sw["moe.dropped_tokens"].tolist() == (~keep).tolist()
print("core == by hand: capacity, expert_ids (-1 = dropped), gates, dropped_tokens")
marked = [f"{t} dropped" if d else t for t, d in zip(tokens, trace_sw["moe.dropped_tokens"])]
residual = x[0] + trace_sw["moe.out"][0]                                 # the block adds the MoE output to x
torch.testing.assert_close(residual[~keep], x[0][~keep])                 # dropped tokens: unchanged
viz.row(viz.show(trace_sw, "moe.expert_ids", row_labels=marked),
        viz.show(trace_sw, "moe.out", row_labels=marked),
        viz.sheet(residual, "x + moe.out", row_labels=marked))

# %% [markdown]
# More capacity, fewer drops, but more padding: every expert's buffer has `capacity` seats whether
# or not they are used, so the work done is `n_experts × capacity` token-slots. Switch Transformer
# trains with factors around 1.0 to 1.25. With 2.0 here nothing is dropped, and 21 seats are
# paid for 10 tokens.

# %%
print(f"{'capacity_factor':>15} {'capacity':>9} {'seats paid':>11} {'dropped tokens':>15}")
for cf in (0.5, 1.0, 1.25, 1.5, 2.0):
    t = tm.Trace()
    config = dense.replace(moe=tm.MoEConfig(n_experts=3, top_k=1, router="switch", capacity_factor=cf))
    load_weights(MoE(config))(x, t)
    seats, dropped = int(t["moe.capacity"]), int(t["moe.dropped_tokens"].sum())
    print(f"{cf:>15} {seats:>9} {3 * seats:>11} {dropped:>15}")

# %% [markdown]
# ## Load imbalance and the load-balancing loss
#
# Nothing stops a router from sending most tokens to one expert: that expert overflows, the others
# idle. Switch Transformer adds an auxiliary loss `α · N · Σᵢ fᵢ Pᵢ`, where `fᵢ` is the fraction of
# tokens routed to expert `i` (a count, no gradient) and `Pᵢ` the router's mean probability for
# it (with gradient). Its gradient lowers the probability of the experts that are already busy. At
# perfect balance `fᵢ = Pᵢ = 1/N` and `N · Σ fᵢ Pᵢ = 1`, its minimum. We compute it for the Switch
# layer above (`f` counts the choices before capacity dropped any).

# %%
f = torch.bincount(choice, minlength=3).float() / 10                    # (n_experts,) share of tokens
P = probs.mean(dim=0)                                                    # (n_experts,) mean probability
balance = 3 * (f * P).sum()                                              # N * sum_i f_i P_i
torch.testing.assert_close(balance, trace_sw["moe.load_balancing_loss"])
_, losses = switch_layer(x)
torch.testing.assert_close(losses["load_balancing"], switch.moe.aux_loss_coef * balance)
print("f =", f, " P =", P)
print(f"N * sum f_i P_i = {balance:.3f} (1 at perfect balance); the layer returns alpha = "
      f"{switch.moe.aux_loss_coef} times it: {losses['load_balancing']:.4f}")

# %% [markdown]
# The same function on three made-up routings of 12 tokens over 3 experts: perfectly balanced,
# ours, and collapsed (every token sure of expert 0). The loss runs from 1 up to `N = 3`.

# %%
uniform = torch.full((12, 3), 1 / 3)
collapsed = torch.tensor([[1.0, 0.0, 0.0]]).repeat(12, 1)
for name, p, ids in (("balanced", uniform, torch.arange(12)[:, None] % 3),
                     ("ours (Switch above)", probs, choice[:, None]),
                     ("collapsed", collapsed, torch.zeros(12, 1, dtype=torch.long))):
    print(f"{name:<20} {tm.moe.load_balancing_loss(p, ids, 3):.3f}")

# %% [markdown]
# ## The router z-loss
#
# A second auxiliary loss (ST-MoE) keeps the router's logits small: `z_loss = mean over tokens of
# logsumexp(logits)²`. Large logits make the softmax all-or-nothing and, in low precision, overflow
# (next section). Multiply the router weights by 10 or 100 and the z-loss grows by about the square.

# %%
z = (torch.logsumexp(logits, dim=-1) ** 2).mean()
torch.testing.assert_close(z, trace_sw["moe.z_loss"])
print(f"z-loss by hand {z:.2f} == moe.z_loss {float(trace_sw['moe.z_loss']):.2f}")
for scale in (1, 10, 100):
    print(f"router weights x{scale:<4} z-loss {tm.moe.router_z_loss(x[0] @ (scale * W_router).T):>10.1f}")

# %% [markdown]
# ## Why the router runs in float32
#
# Training often runs in 16-bit floats. float16 stops at 65504: a sum of products past that is
# `inf`, even when every factor fits. A softmax over a row holding `inf` gives `NaN`, the token's
# gates are `NaN`, and so is its output, and after one step so is everything downstream. To show it
# we blow the router weights up by 30000 (a router whose logits drifted far, which the z-loss
# is there to prevent) and run the whole layer in float16, first with `router_fp32=False`, then
# with the default `router_fp32=True`, which computes the logits and the softmax in float32.

# %%
half = load_weights(MoE(dense.replace(moe=tm.MoEConfig(n_experts=3, top_k=2)))).half()
with torch.no_grad():
    half.router.weight.mul_(30000)                                       # weights up to 30000: they fit
sheets = []
for fp32 in (False, True):
    half.router.router_fp32 = fp32
    trace_half = tm.Trace()
    out_half, _ = half(x.half(), trace_half)
    print(f"router_fp32={fp32}: logits in {trace_half['moe.router_logits'].dtype}, "
          f"tokens with NaN outputs: {[t for t, bad in zip(tokens, out_half[0].isnan().any(-1)) if bad]}")
    sheets += [viz.sheet(trace_half[f"moe.router_{name}"], f"router_{name} ({fp32=})", row_labels=tokens,
                         col_labels=["e0", "e1", "e2"]) for name in ("logits", "probs")]
viz.row(*sheets)

# %% [markdown]
# ## Noisy top-k
#
# An untrained router that happens to prefer one expert keeps feeding it, and an expert that
# gets no tokens never learns to be useful. Noisy top-k (Shazeer et al. 2017) adds Gaussian noise
# to the logits before choosing, with a learned scale per token and expert,
# `noise_std = softplus(x · W_noiseᵀ)` (0.69 while `W_noise` is still zero). Close calls then go
# either way. The noise is on in training only; in evaluation the choice is deterministic again.

# %%
noisy = load_weights(MoE(dense.replace(moe=tm.MoEConfig(n_experts=3, top_k=1, router="noisy_topk"))))
runs = {}
for mode in ("train", "eval"):
    getattr(noisy, mode)()
    runs[mode] = []
    for run in range(4):
        trace_noisy = tm.Trace()
        noisy(x, trace_noisy)
        runs[mode].append(trace_noisy["moe.expert_ids"][:, 0])
    runs[mode] = torch.stack(runs[mode])                                 # (4 runs, seq_len)
viz.row(viz.sheet(runs["train"], "expert chosen, 4 runs in training", row_labels=["run 0", "run 1", "run 2", "run 3"],
                  col_labels=tokens, note="rows: runs, columns: tokens", categorical=True),
        viz.sheet(runs["eval"], "4 runs in evaluation", row_labels=["run 0", "run 1", "run 2", "run 3"],
                  col_labels=tokens, note="rows: runs, columns: tokens", categorical=True))

# %% [markdown]
# ## Expert choice: the experts pick their tokens
#
# Turn the choice around (Zhou et al. 2022): each expert takes the `c = ceil(capacity_factor ·
# tokens / n_experts)` tokens it scores highest. Every expert gets exactly `c` tokens, balanced by
# construction with no auxiliary loss; a token may be picked by several experts, or by none (its
# MoE output is then zero and the residual carries it). `moe.expert_ids` has one slot per expert:
# the expert's number if it picked the token, −1 if not.

# %%
choice_cfg = dense.replace(moe=tm.MoEConfig(n_experts=3, top_k=1, router="expert_choice", capacity_factor=1.0))
chooser = load_weights(MoE(choice_cfg))
trace_ec = tm.Trace()
out_ec, _ = chooser(x, trace_ec)
print("tokens per expert (moe.expert_load):", trace_ec["moe.expert_load"].tolist(),
      "| picked by no expert:", [t for t, d in zip(tokens, trace_ec["moe.dropped_tokens"]) if d])
viz.row(viz.show(trace_ec, "moe.expert_ids", row_labels=tokens, col_labels=["e0", "e1", "e2"]),
        viz.show(trace_ec, "moe.gates", row_labels=tokens, col_labels=["e0", "e1", "e2"]))

# %% [markdown]
# **Why it peeks at the future.** Whether expert 0 takes `t3` depends on how `t3` ranks among all
# ten tokens, including `t4 … t9`. Change only the last token and earlier tokens' outputs change:
# a causal language model must never let that happen, and when generating one token at a time the
# later tokens do not even exist yet. Token choice (top-k) has no such problem: each token's route
# depends on itself alone.

# %%
x_changed = x.clone()
x_changed[0, 9] = 2.0                                                   # change only the last token
with torch.no_grad():
    moved_ec = (chooser(x_changed)[0] - out_ec)[0, :9].abs().amax(-1)    # (9,) change of t0..t8
    top2_layer = load_weights(MoE(dense.replace(moe=tm.MoEConfig(n_experts=3, top_k=2))))
    moved_topk = (top2_layer(x_changed)[0] - top2_layer(x)[0])[0, :9].abs().amax(-1)
assert moved_ec.max() > 0 and moved_topk.max() == 0
print("largest change of t0..t8 when only t9 changes")
print("  expert choice:", moved_ec)
print("  top-2:        ", moved_topk)

# %% [markdown]
# ## Soft MoE: slots instead of routes
#
# Soft MoE (Puigcerver et al. 2023) routes nothing. Each expert owns a *slot*, and a slot is a
# weighted mix of **all** the tokens: `dispatch_weights` is a softmax over the tokens (each column
# sums to 1), `slots = dispatch_weightsᵀ · x`. Each expert runs on its slot, and each token takes
# back a mix of the slot outputs with `combine_weights`, a softmax over the slots (each row sums
# to 1). No top-k, no drops, perfect balance; and the same flaw as expert choice, worse.

# %%
soft_cfg = dense.replace(moe=tm.MoEConfig(n_experts=3, top_k=1, router="soft"))
soft = integer_weights(MoE(soft_cfg))
trace_soft = tm.Trace()
out_soft, _ = soft(x, trace_soft)
torch.testing.assert_close(trace_soft["moe.slots"][0], trace_soft["moe.dispatch_weights"][0].T @ x[0])
viz.row(viz.show(trace_soft, "moe.dispatch_weights", row_labels=tokens, col_labels=["s0", "s1", "s2"]),
        viz.show(trace_soft, "moe.combine_weights", row_labels=tokens, col_labels=["s0", "s1", "s2"]),
        viz.show(trace_soft, "moe.slots", row_labels=["s0", "s1", "s2"]))

# %% [markdown]
# Every slot mixes every token, so every token's output depends on every other token, later ones
# included: change `t9` and all ten outputs move. Soft MoE was made for encoders (vision
# transformers), where each token sees the whole input anyway. A decoder-only language model must
# not see the future, and generating one token at a time, a "mix" of one token is just that token.

# %%
with torch.no_grad():
    moved_soft = (soft(x_changed)[0] - out_soft)[0].abs().amax(-1)       # (10,)
assert (moved_soft[:9] > 0).all()
print("soft MoE, change of t0..t9 when only t9 changes:", moved_soft)

# %% [markdown]
# ## Shared experts
#
# DeepSeekMoE and Qwen2-MoE keep one or more experts out of the routing: a *shared* expert runs
# on every token, beside the routed ones, so knowledge every token needs lives there once instead
# of being copied into every routed expert. The output is `routed_out + shared.out`; Qwen2-MoE also
# scales the shared part per token by a learned `sigmoid(w · x)` gate (`shared_expert_gate=True`).
# The shared expert adds its parameters to every token's active count.

# %%
shared_cfg = dense.replace(moe=tm.MoEConfig(n_experts=3, top_k=2, n_shared_experts=1, shared_expert_gate=True))
shared = load_weights(MoE(shared_cfg))                                   # the shared expert keeps its random start
trace_sh = tm.Trace()
shared(x, trace_sh)
torch.testing.assert_close(trace_sh["moe.out"], trace_sh["moe.routed_out"] + trace_sh["moe.shared.out"])
torch.testing.assert_close(trace_sh["moe.routed_out"], traces[True]["moe.routed_out"])   # the routed part is unchanged
print("moe.out == moe.routed_out + moe.shared.out; routed part == the top-2 layer's")
for name, cfg in (("top-2, no shared", dense.replace(moe=tm.MoEConfig(n_experts=3, top_k=2))),
                  ("top-2 + 1 shared (gated)", shared_cfg)):
    counts = tm.moe.moe_parameter_counts(cfg)
    print(f"{name:<26} total {counts['total']:>4}   active per token {counts['active']:>4}   shared {counts['shared']:>3}")
viz.row(viz.show(trace_sh, "moe.shared.gate", row_labels=tokens),
        viz.show(trace_sh, "moe.shared.out", row_labels=tokens), viz.show(trace_sh, "moe.out", row_labels=tokens))

# %% [markdown]
# ## Expert load across a batch
#
# One sequence says little about balance. Run the top-2 layer on a batch of 32 sequences of ten
# tokens and count, per sequence, how many of its 20 assignments each expert received
# (`moe.expert_ids`, flattened over the batch). Over the whole batch the three experts are close
# to even, but single sequences are not: one expert gets 10 of a sequence's 20 assignments
# (every token) while another gets 2.

# %%
batch = torch.randint(-2, 3, (32, 10, 5)).float()                        # (batch, seq_len, d_model)
trace_batch = tm.Trace()
top2_layer(batch, trace_batch)
ids = trace_batch["moe.expert_ids"].reshape(32, 10 * 2)                  # (batch, seq_len * top_k)
load = torch.nn.functional.one_hot(ids, 3).sum(dim=1)                    # (batch, n_experts)
assert load.sum(dim=0).tolist() == trace_batch["moe.expert_load"].tolist()
print("whole batch, moe.expert_load:", trace_batch["moe.expert_load"].tolist(), "of", 32 * 10 * 2, "assignments")
viz.heatmap(load.T, title="assignments per expert (rows) in each sequence (columns), of 20", width=820, height=200)

# %% [markdown]
# ## Try it: the MoE explorer
#
# Move `n_experts`, `top_k`, the `capacity_factor`, the `router` and `seq_len`. The heatmap shows
# each token's router probabilities (left) and the gates it actually uses (right; red: an
# assignment a full expert turned away), the bars each expert's load against its capacity (dashed),
# and the notes count the dropped tokens and the parameters: all of them, and those one token uses.
# Things to try: raise `n_experts` to 8 and watch the total grow while the active count barely moves
# (only the router grows); pick the `switch` router (it needs `top_k = 1`: the message says so and
# the last picture stays); drop the capacity factor to 0.5. (Run the notebook to get live controls.)

# %% tags=["nbval-ignore-output"]
explorer = viz.MoEExplorer(n_experts=3, top_k=2, capacity_factor=1.0, router="softmax_topk", seq_len=10)
explorer

# %% [markdown]
# The explorer can be driven from code, exactly as the controls do it: `.set(...)` moves controls,
# `.shape_label` is the line on screen, `.expert_load`, `.dropped` and `.parameters` the numbers
# drawn, and `.error` the message of an impossible combination.

# %%
explorer.set(router="switch")
print("error:", explorer.error)
explorer.set(top_k=1)
print(explorer.shape_label)
print("load:", explorer.view.expert_load, "| capacity:", explorer.view.capacity, "| dropped:", explorer.view.dropped)
explorer.set(n_experts=8, top_k=2, router="softmax_topk", capacity_factor=1.25, seq_len=32)
print(explorer.shape_label)
print("load:", explorer.view.expert_load, "| dropped:", explorer.view.dropped)

# %% [markdown]
# ## The same code at a larger size
#
# `d_model = 64`, eight SwiGLU experts of `d_ff = 128`, top-2 with a capacity factor of 1.25, and a
# batch of 8 sequences of 128 tokens. Real text is not uniform: a few tokens are very frequent. So
# the inputs are rows of a 256-entry embedding table drawn with Zipf-like frequencies, and the
# frequent tokens drag the load onto their experts. The heatmap shows the gates each token used for
# the first 64 tokens of sequence 0, and the load of each expert in each sequence.

# %%
g = torch.Generator().manual_seed(1)
large = tm.ModelConfig(vocab_size=256, d_model=64, n_heads=4, d_ff=128, max_seq_len=128,
                       moe=tm.MoEConfig(n_experts=8, top_k=2, capacity_factor=1.25))
embedding = torch.randn(256, 64, generator=g)                            # one vector per token id
frequency = 1.0 / torch.arange(1, 257).float()                           # Zipf: id r is 1/r as frequent as id 0
token_ids = torch.multinomial(frequency, 8 * 128, replacement=True, generator=g).reshape(8, 128)
x_large = embedding[token_ids]                                           # (8, 128, 64)
big = MoE(large)
trace_big = tm.Trace()
with torch.no_grad():
    out_big, losses_big = big(x_large, trace_big)
ids_big = trace_big["moe.expert_ids"]                                    # (8 * 128, 2), -1 = dropped
gates_used = tm.moe.scatter_gates(ids_big, trace_big["moe.gates"], 8)   # (8 * 128, 8): each token's gate per expert
per_sequence = torch.nn.functional.one_hot(ids_big.clamp(min=0), 8).mul((ids_big >= 0)[..., None])
per_sequence = per_sequence.reshape(8, 128 * 2, 8).sum(dim=1)            # (sequence, expert)
print(f"capacity {int(trace_big['moe.capacity'])} per expert; load {trace_big['moe.expert_load'].tolist()}")
print(f"dropped: {int(trace_big['moe.dropped'].sum())} of {8 * 128 * 2} assignments, "
      f"{int(trace_big['moe.dropped_tokens'].sum())} tokens with no expert at all")
print(f"N * sum f_i P_i = {float(trace_big['moe.load_balancing_loss']):.3f} (1 = balanced), "
      f"z-loss {float(trace_big['moe.z_loss']):.2f}")
most = token_ids.reshape(-1) == 0                                        # the most frequent token id
kept_ids = ids_big[most]
print(f"token id 0 is {int(most.sum())} of the 1024 tokens; its copies use experts "
      f"{kept_ids[kept_ids >= 0].unique().tolist()} and {int((kept_ids < 0).sum())} of its assignments were dropped")
seats, load_big = int(trace_big["moe.capacity"]), trace_big["moe.expert_load"].tolist()
full = [e for e, n in enumerate(load_big) if n == seats]
share = float(most.float().mean())
# The text below quotes these figures: the asserts keep it true if the core changes.
assert (full, seats, int(trace_big["moe.dropped"].sum())) == ([4, 6], 320, 243), (full, seats)
assert round(100 * share) == 17 and round(float(trace_big["moe.load_balancing_loss"]), 2) == 1.05
viz.heatmap(torch.stack([gates_used[:64], trace_big["moe.router_probs"][:64]]),
            title="sequence 0, tokens 0-63 (rows) × 8 experts: gates used | router_probs",
            panel_names=["gates used", "router_probs"], width=520, height=420)

# %% [markdown]
# Two experts, 4 and 6, hit the capacity of 320 and turn away 243 assignments: they are the two
# that the most frequent token (17% of the batch) always picks. Yet `N · Σ fᵢ Pᵢ` is only 1.05:
# an untrained router's probabilities are nearly uniform (the right panel is pale), so `P` barely
# tells the experts apart. The gradient still points the right way, and as the router
# sharpens the loss grows with the imbalance.
#
# Capacity is shared by the whole batch, and seats go in a fixed order: every token's first choice
# is seated before any token's second choice (so a second opinion never pushes out a first), each in
# token order. The load per sequence, after capacity, shows it: the cell prints the sequence in
# which each full expert took its last seat; the sequences after it find that expert full.

# %%
filled = {e: int((per_sequence[:, e].cumsum(0) >= seats).nonzero()[0]) for e in full}
print("sequence in which each full expert took its last seat:", filled)
viz.heatmap(per_sequence.T, title="assignments per expert (rows) in each of the 8 sequences (columns)",
            width=520, height=260)

# %% [markdown]
# The three dispatch backends agree at this size too. And the count that makes MoE worth it, at the
# size of Mixtral 8x7B (`d_model = 4096`, 32 layers, 8 experts of `d_ff = 14336`, top-2), built on
# PyTorch's `meta` device (shapes, no memory): the cell prints its 46.7 billion parameters, of which
# a token uses 12.9 billion (and asserts those two figures, so this sentence stays true).

# %%
with torch.no_grad():
    for dispatch in ("loop", "dense"):
        big.dispatch = dispatch
        torch.testing.assert_close(big(x_large)[0], out_big, atol=1e-5, rtol=1e-4)
print("dispatch loop == dense == grouped at 1024 tokens, 8 experts")
mixtral = tm.ModelConfig(vocab_size=32000, d_model=4096, n_layers=32, n_heads=32, n_kv_heads=8, head_dim=128,
                         d_ff=14336, max_seq_len=4096, rope_base=1e6, moe=tm.MoEConfig(n_experts=8, top_k=2))
with torch.device("meta"):
    mixtral_model = tm.TinyLM(mixtral)                                   # shapes only
total = tm.parameter_counts(mixtral_model)["total"]["trainable"]
layer_counts = tm.moe.moe_parameter_counts(mixtral)                      # one MoE layer
active = total - mixtral.n_layers * (layer_counts["total"] - layer_counts["active"])
print(f"Mixtral-sized: {total / 1e9:.1f} B parameters, {active / 1e9:.1f} B active per token")
assert (round(total / 1e9, 1), round(active / 1e9, 1)) == (46.7, 12.9)
print(f"one MoE layer: router {layer_counts['router']:,} + 8 experts × {layer_counts['expert']:,}"
      f" = {layer_counts['total']:,}; active {layer_counts['active']:,}")

# %% [markdown]
# ## What changed
#
# Replacing the block's dense feed-forward with a 3-expert, top-2 MoE removes the `ffn.*` rows and
# adds the `moe.*` rows: `W_gate`, `W_up` and `W_down` gain an expert axis in front (`(4, 5)` becomes
# `(3, 4, 5)`), a router `W_router (3, 5)` appears, and so do the routing tensors (`router_logits`,
# `expert_ids`, `gates`, `expert_load`) and the two losses. The input and output of the layer keep
# their shape `(1, 10, 5)`: the rest of the block does not notice. The feed-forward's parameters
# go from 60 to 195 in total, while a token uses 135 of them (the router and two experts).

# %%
moe_block = dense.replace(moe=tm.MoEConfig(n_experts=3, top_k=2))
counts = tm.moe.moe_parameter_counts(moe_block)
dense_ffn = tm.moe.moe_parameter_counts(moe_block)["expert"]              # the dense MLP = one expert's size
print(f"dense ffn: {dense_ffn} parameters | MoE: {counts['total']} in total, {counts['active']} active per token")
assert (dense_ffn, counts["total"], counts["active"]) == (60, 195, 135)   # the figures the text quotes
viz.shapes_table(moe_block, previous=dense, module="block")
