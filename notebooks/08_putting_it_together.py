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
# # 08 · Putting it together: train a tiny Llama-style MoE language model
#
# Every piece is now in place: RMSNorm (notebook 04), RoPE (03), grouped-query attention (05) and
# SwiGLU experts behind a top-2 router with its two auxiliary losses (06). This notebook stacks them
# into a language model, trains it for a few hundred steps on real English text, and watches what
# the router learns while it does.
#
# **After this notebook you can:**
# - turn a text into character tokens and cut it into `(batch, seq_len)` training windows whose
#   targets are the same windows shifted by one;
# - read a whole MoE model's config as a shapes table, and count its total parameters against the
#   ones a single token uses;
# - write the training loop yourself: forward, `loss = cross-entropy + load-balancing + z-loss`,
#   backward, AdamW step;
# - watch the experts' load during training, and see which characters each expert ends up with;
# - sample from the model greedily and at a temperature, before and after training;
# - run the same loop as a library (`tinymoe.train`), against a dense model with the same active
#   parameters and against the MoE without its load-balancing loss.
#
# **Where we are.** Notebook 06 ended with one MoE layer at spreadsheet size: `d_model = 5`, three
# experts, top-2. Here the same core code runs at a size that can learn something: two decoder
# blocks, `d_model = 64`, four query heads sharing two key/value heads, and four SwiGLU experts
# per block, two of them used by each token.

# %%
import torch, tinymoe as tm
from tinymoe import viz
import plotly.graph_objects as go

torch.manual_seed(0)
torch.set_printoptions(precision=2, sci_mode=False)
torch.set_num_threads(1)                  # one thread: the training run is bitwise the same every time

# %% [markdown]
# ## The text: Python's own documentation
#
# Every CPython installation ships the text of its `help()` topics in `pydoc_data.topics`: a dict
# from a topic name (`"assert"`, `"for"`, `"formatstrings"`, …) to a page of English. Joined
# together it is about 465 thousand characters: enough for a small model, and there offline on
# any machine with Python. We keep the last 10% of it aside to measure the model on text it never
# trained on.

# %%
from pydoc_data.topics import topics

text = "\n".join(topics[name] for name in sorted(topics))
split = int(0.9 * len(text))
print(f"{len(topics)} topics, {len(text):,} characters ({split:,} to train on, {len(text) - split:,} held out)")
print(topics["assert"][:400])

# %% [markdown]
# ## Character tokens
#
# The simplest tokenizer: one token per distinct character. The vocabulary is the sorted set of
# characters in the text (letters, digits, punctuation, space, newline and a few typographic
# quotes), and a token id is a character's position in it. `encode` and `decode` go back and forth.
# A real model uses tens of thousands of subword tokens; only the embedding and the LM head would
# grow (notebook 00).

# %%
chars = sorted(set(text))
stoi = {c: i for i, c in enumerate(chars)}


def encode(s: str) -> torch.Tensor:
    return torch.tensor([stoi[c] for c in s])


def decode(ids) -> str:
    return "".join(chars[int(i)] for i in ids)


def show_char(c: str) -> str:
    """A character as a column label: space and newline made visible."""
    return {" ": "␣", "\n": "⏎"}.get(c, c)


data = encode(text)                                                      # (465_048,) token ids
train_data, val_data = data[:split], data[split:]
print(f"vocab_size = {len(chars)}:", "".join(show_char(c) for c in chars))
sample = "The assert statement"
viz.sheet(encode(sample)[None], "token ids", role="input", col_labels=[show_char(c) for c in sample],
          row_labels=["ids"], note="one token per character")

# %% [markdown]
# ## Training windows
#
# A training example is a window of `seq_len` characters, and its targets are the same window moved
# one character to the right: at every position the model predicts the next character. A batch is
# `batch` windows starting at random places (from a seeded generator, so the run repeats). Below:
# the first four windows of a batch of 32, twelve characters of each.

# %%
batch_size, seq_len = 32, 64
g = torch.Generator().manual_seed(0)


def get_batch(source: torch.Tensor, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    starts = torch.randint(0, len(source) - seq_len - 1, (batch_size,), generator=generator)
    x = torch.stack([source[s: s + seq_len] for s in starts])            # (batch, seq_len)
    y = torch.stack([source[s + 1: s + seq_len + 1] for s in starts])    # (batch, seq_len), x shifted by one
    return x, y


x, y = get_batch(train_data, torch.Generator().manual_seed(1))
print("x:", tuple(x.shape), " y:", tuple(y.shape))
viz.row(*(viz.sheet(t[:4, :12], name, role=role, row_labels=[f"window {b}" for b in range(4)],
                    col_labels=[show_char(chars[i]) for i in x[0, :12]] if name == "x" else
                               [show_char(chars[i]) for i in y[0, :12]],
                    note="column labels: window 0's characters")
          for t, name, role in ((x, "x", "input"), (y, "y (targets)", "output"))))

# %% [markdown]
# ## The model: a Llama block with MoE feed-forwards
#
# One `ModelConfig` says it all. RMSNorm before attention and before the feed-forward, RoPE on the
# queries and keys, 4 query heads sharing 2 key/value heads (GQA), and in place of the MLP an MoE
# of 4 SwiGLU experts with a softmax top-2 router that renormalises the two kept gates (Mixtral).
# The load-balancing loss (`aux_loss_coef = 0.01`) and the router z-loss (`z_loss_coef = 0.001`)
# are on. The shapes table traces one forward of ten tokens through the core model.

# %%
config = tm.ModelConfig(vocab_size=len(chars), d_model=64, n_layers=2, n_heads=4, n_kv_heads=2,
                        max_seq_len=seq_len, position="rope", norm="rmsnorm", ffn="swiglu",
                        moe=tm.MoEConfig(n_experts=4, top_k=2, d_ff_expert=64, renormalize=True,
                                         aux_loss_coef=0.01, z_loss_coef=0.001))
viz.shapes_table(config)

# %% [markdown]
# ## Total against active parameters
#
# Each MoE layer holds four experts but a token runs only two of them: the router's 256 weights
# and two experts' 24,576 are the *active* parameters of the layer, out of 49,408. Over the whole
# model (embedding, attention, norms and LM head are used by every token) that is 64% of the
# weights per token; Mixtral 8×7B, with 8 experts and top-2, uses about 13B of its 47B.

# %%
model = tm.TinyLM(config)
counts = tm.moe.moe_parameter_counts(config)
total = sum(p.numel() for p in model.parameters())
inactive = config.n_layers * (counts["total"] - counts["active"])        # experts a token skips, all layers
print("one MoE layer:", {k: counts[k] for k in ("router", "expert", "experts", "total", "active")})
print(f"whole model:  total {total:,}  |  active per token {total - inactive:,} ({(total - inactive) / total:.0%})")
assert tm.parameter_counts(model)["total"]["trainable"] == total

# %% [markdown]
# ## Before training
#
# An untrained model spreads its bets over all 103 characters: its cross-entropy is a little
# above `ln 103 ≈ 4.63`, the loss of a uniform guess. Its samples are noise. We sample greedily
# (temperature 0: always the likeliest next character) and at temperature 0.8 from a seeded
# generator, starting from the same prompt each time. The held-out loss is averaged over ten
# fixed batches.

# %%
prompt = encode("The ")[None]                                            # (1, 4)


def samples(n: int = 120) -> None:
    model.eval()
    print("── greedy ──")
    print(decode(model.generate(prompt, n)[0]))
    gen = torch.Generator().manual_seed(0)
    print("── temperature 0.8 ──")
    print(decode(model.generate(prompt, n, temperature=0.8, generator=gen)[0]))
    model.train()


@torch.no_grad()
def held_out_loss(m: torch.nn.Module) -> float:
    m.eval()
    gen = torch.Generator().manual_seed(123)
    loss = sum(m(*get_batch(val_data, gen)).ce_loss for _ in range(10)) / 10
    m.train()
    return round(float(loss), 3)


before_loss = held_out_loss(model)
print(f"held-out cross-entropy before training: {before_loss:.3f}   (ln {len(chars)} = "
      f"{torch.log(torch.tensor(float(len(chars)))):.3f})")
samples()

# %% [markdown]
# ## The training loop, written out
#
# Nothing hidden: draw a batch, run the model with the targets, and it returns the cross-entropy
# (`ce_loss`), the auxiliary losses summed over the MoE layers (`aux_losses`), and their sum
# (`loss`), which is what we differentiate. AdamW takes the step. Every 25 steps we also run a
# traced forward on one fixed batch and keep each layer's `moe.expert_load` (how many of its
# `2 × 32 × 64 = 4096` top-2 slots each expert received) to watch the router learn.

# %% tags=["nbval-ignore-output"]
torch.manual_seed(0)
model = tm.TinyLM(config)                                                # fresh weights, seed 0
optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=0.01)
steps, record_every = 200, 25
batches = torch.Generator().manual_seed(0)
probe_x, _ = get_batch(val_data, torch.Generator().manual_seed(7))       # the fixed batch we trace
history = {"ce": [], "load_balancing": [], "z_loss": []}
load_steps, loads = [], []                                               # loads: one (n_layers, n_experts) per record


def probe_load(m: torch.nn.Module) -> torch.Tensor:
    """Each layer's moe.expert_load on the fixed probe batch: (n_layers, n_experts)."""
    trace = tm.Trace()
    with torch.no_grad():
        m(probe_x, trace=trace)
    return torch.stack([trace[f"layers.{i}.moe.expert_load"] for i in range(m.config.n_layers)])


def record_load(step: int) -> None:
    loads.append(probe_load(model))
    load_steps.append(step)


for step in range(steps):
    if step % record_every == 0:
        record_load(step)
    x, y = get_batch(train_data, batches)
    out = model(x, y)                                                    # LMOutput
    optimizer.zero_grad()
    out.loss.backward()                                                  # ce + load_balancing + z_loss
    optimizer.step()
    history["ce"].append(out.ce_loss.item())
    for name in ("load_balancing", "z_loss"):
        history[name].append(out.aux_losses[name].item())
    if step % 50 == 0 or step == steps - 1:
        print(f"step {step:>3}  ce {out.ce_loss.item():.3f}  load_balancing {out.aux_losses['load_balancing'].item():.3f}"
              f"  z_loss {out.aux_losses['z_loss'].item():.3f}  total {out.loss.item():.3f}")
record_load(steps)
# Training for hundreds of steps amplifies last-bit rounding differences between CPU types, so nbval
# checks that this and the cells after it run, not their digits; these asserts check the result.
assert history["ce"][-1] < history["ce"][0] - 2, "cross-entropy did not fall by 2 nats in training"

# %% [markdown]
# ## The loss curve
#
# The cross-entropy falls fast over the first few dozen steps (the model learns which characters
# are common, then which pairs follow each other) and then slowly. The load-balancing loss stays near
# its floor, `aux_loss_coef × n_layers = 0.02` (each layer's `N · Σ fᵢ Pᵢ` is 1 at perfect
# balance): the router never lets one expert take everything. The z-loss stays small.

# %% tags=["nbval-ignore-output"]
fig = go.Figure()
fig.add_trace(go.Scatter(y=history["ce"], name="cross-entropy", line=dict(width=1.5)))
fig.add_trace(go.Scatter(y=[100 * v for v in history["load_balancing"]], name="load balancing × 100",
                         line=dict(width=1.5)))
fig.add_trace(go.Scatter(y=[100 * v for v in history["z_loss"]], name="z-loss × 100", line=dict(width=1.5)))
fig.update_layout(width=760, height=360, margin=dict(l=50, r=10, t=40, b=40), plot_bgcolor="white",
                  title=dict(text="training losses (one batch per step)", font=dict(size=13), x=0.02),
                  xaxis=dict(title="step", gridcolor="#eee"), yaxis=dict(title="loss", gridcolor="#eee"))
fig

# %% [markdown]
# On the held-out tenth of the text the loss fell by more than half. Training and held-out loss
# are close: the run saw each character of the training text only a time or two, far too little
# to memorise it.

# %% tags=["nbval-ignore-output"]
after_loss = held_out_loss(model)
assert after_loss < before_loss / 2, f"held-out loss {before_loss} -> {after_loss}: training did not take"
print(f"held-out cross-entropy: {before_loss:.3f} before training -> {after_loss:.3f} after {steps} steps")
print(f"characters trained on: {steps * batch_size * seq_len:,} = {steps * batch_size * seq_len / len(train_data):.1f}"
      f" x the training text")

# %% [markdown]
# ## Expert load over training
#
# Each row is one recorded step, each column an expert; the colour is the expert's share of the
# layer's top-2 slots minus the fair share `1/4` (blue: more than its share, orange: less), four columns per layer for
# experts 0 to 3. In the first steps, while the rest of the model changes fast, the shares swing;
# the load-balancing loss keeps pulling them back toward 25%. Where they settle is not exact
# balance: an expert that is better at some characters keeps more of them.

# %% tags=["nbval-ignore-output"]
load = torch.stack(loads).float()                                        # (records, n_layers, n_experts)
share = load / load.sum(-1, keepdim=True) - 1 / config.moe.n_experts     # above (+) or below (-) the fair share
print("expert_load at the last step:", {f"layer {i}": loads[-1][i].tolist() for i in range(config.n_layers)})
viz.heatmap(share.permute(1, 0, 2), title="share of top-2 slots − 1/4, per layer", width=620, height=420,
            x_title="expert", y_title=f"record (every {record_every} steps)",
            panel_names=[f"layer {i}" for i in range(config.n_layers)])

# %% [markdown]
# ## Which characters go to which expert
#
# A traced forward of one sentence, and each character's first choice (`moe.expert_ids[:, 0]`,
# the expert with the larger gate) in each layer. Nobody told the experts what to specialise in;
# the router, trained only through the language-modelling loss, sorts the characters anyway.
# Follow the spaces (`␣`): in layer 0 every one of them goes to the same expert.

# %% tags=["nbval-ignore-output"]
sentence = "The value is an integer."
trace = tm.Trace()
with torch.no_grad():
    model(encode(sentence)[None], trace=trace)
top1 = torch.stack([trace[f"layers.{i}.moe.expert_ids"][:, 0] for i in range(config.n_layers)])   # (n_layers, len)
viz.sheet(top1, "top-1 expert per character", row_labels=[f"layer {i}" for i in range(config.n_layers)],
          col_labels=[show_char(c) for c in sentence], decimals=0, note="columns: the sentence's characters")

# %% [markdown]
# The same count over 2,048 held-out characters (the fixed batch we traced during training):
# for every expert, the characters most often routed to it first, with the share of that
# expert's first choices they take. In both layers one expert's tokens are about two thirds
# spaces; the others share out the letters, and each layer splits the alphabet its own way.

# %% tags=["nbval-ignore-output"]
trace = tm.Trace()
with torch.no_grad():
    model(probe_x, trace=trace)
flat = probe_x.reshape(-1)                                              # the token each routing row belongs to
for i in range(config.n_layers):
    first = trace[f"layers.{i}.moe.expert_ids"][:, 0]                    # (batch * seq_len,)
    print(f"layer {i}")
    for e in range(config.moe.n_experts):
        ids, n = flat[first == e].unique(return_counts=True)
        order = sorted(zip(n.tolist(), ids.tolist()), key=lambda t: (-t[0], t[1]))[:8]
        top = "  ".join(f"{show_char(chars[c])} {k / n.sum():.0%}" for k, c in order)
        print(f"  expert {e} ({int(n.sum()):>4} chars): {top}")

# %% [markdown]
# ## After training
#
# The same prompt, the same generator seed. Greedy decoding finds the likeliest continuation and
# soon loops on it; sampling at temperature 0.8 wanders, and makes English-looking words, some of
# them real, with spaces and punctuation in about the right places. A character model this small,
# trained for seconds, can do no better; the same loop with more steps, more layers and subword
# tokens is how the big ones are trained.

# %% tags=["nbval-ignore-output"]
samples()

# %% [markdown]
# ## The same loop, as a library: `tinymoe.train`
#
# The loop above is all a model needs to learn. A longer run needs more around it: a learning rate
# that warms up and then decays, gradient clipping and accumulation, half precision on a GPU, a
# validation loss every few steps, checkpoints it can resume, a progress bar. `tinymoe.train` is
# this loop once, in the core, with those added. First, that it is the same thing: its corpus,
# split, batches and held-out loss are the ones above, and the `TrainConfig` below (constant
# learning rate, no clipping, Adam's default `beta2`) makes `train()` this loop step for step
# (`tests/test_train_loop.py` checks that).

# %%
import dataclasses
from tinymoe.train import TrainConfig, dense_baseline, evaluate, load_corpus, train, unigram_entropy

data = load_corpus("pydoc", tokenizer="char")                            # the text, split 90/10 as above
assert torch.equal(data.train, train_data) and torch.equal(data.val, val_data)
library_batch = tm.train.get_batch(train_data, batch_size, seq_len, torch.Generator().manual_seed(1))
assert all(torch.equal(a, b) for a, b in zip(library_batch, get_batch(train_data, torch.Generator().manual_seed(1))))
assert abs(evaluate(model, val_data, batch_size, seq_len, n_batches=10, seed=123) - held_out_loss(model)) < 1e-3
as_above = TrainConfig(steps=steps, batch_size=batch_size, seq_len=seq_len, lr=3e-3, weight_decay=0.01,
                       warmup_steps=0, min_lr_ratio=1.0, grad_clip=None, beta2=0.999, eval_every=100, progress=False)
print(data)
print(as_above)

# %% [markdown]
# ## A dense baseline with the same active parameters
#
# Is the MoE any better than a plain model? The fair opponent does the same work per token: each
# MoE layer runs two experts of hidden size 64 per token, which is the work of one SwiGLU of hidden
# size 128. `dense_baseline(config)` is the same model with that feed-forward in every block. It has
# the MoE's active parameters, less its routers, and it trains on the same batches with the same
# settings from the same seed. What the MoE has on top is the experts each token does not use.

# %%
dense_config = dense_baseline(config)
dense = tm.TinyLM(dense_config)
n_dense = sum(p.numel() for p in dense.parameters())
routers = config.n_layers * config.moe.n_experts * config.d_model
assert n_dense == total - inactive - routers                             # active parameters, less the routers
print(f"MoE:   total {total:,}  active per token {total - inactive:,}  (of which routers {routers:,})")
print(f"dense: total {n_dense:,}  every parameter active")
viz.shapes_table(dense_config, previous=config, fold_unchanged=True)

# %% [markdown]
# The dense run, with the library's progress bar (step, training loss, validation loss, tokens per
# second; in a terminal it is a text bar). The MoE curve is the run above, from the same batches.

# %% tags=["nbval-ignore-output"]
torch.manual_seed(0)
dense = tm.TinyLM(dense_config)                                          # fresh weights, seed 0
dense_history = train(dense, data, as_above.replace(progress=True))
print(dense_history)

# %% [markdown]
# ## Without the load-balancing loss
#
# The third run is the MoE again with `aux_loss_coef = 0`: nothing tells the router to spread the
# tokens. A callback (a function `train()` calls after every step) records the expert load on the
# same probe batch every 25 steps, as the loop above did.

# %% tags=["nbval-ignore-output"]
no_lb_config = config.replace(moe=dataclasses.replace(config.moe, aux_loss_coef=0.0))
torch.manual_seed(0)
no_lb = tm.TinyLM(no_lb_config)
no_lb_loads = [probe_load(no_lb)]                                        # before training, then every 25 steps


def record_no_lb_load(row: dict, m: torch.nn.Module) -> None:
    if (row["step"] + 1) % record_every == 0:
        no_lb_loads.append(probe_load(m))


no_lb_history = train(no_lb, data, as_above, callbacks=[record_no_lb_load])
print(no_lb_history)

# %% [markdown]
# ## Three runs, one plot
#
# Training cross-entropy per step (a running mean over 20 steps, so the lines are readable), and
# the held-out loss of each model at the end, measured the same way as before. Below them: the
# unigram entropy of the text, the loss of the best guess that ignores the context; all three runs
# must beat it. Which run wins, and by how much, is whatever the print says: at this size and this
# few steps the three are close, and a different seed or CPU can reorder the middle.

# %% tags=["nbval-ignore-output"]
import matplotlib.pyplot as plt


def running_mean(values: list[float], n: int = 20) -> torch.Tensor:
    v = torch.tensor(values)
    return torch.stack([v[max(0, i - n + 1): i + 1].mean() for i in range(len(v))])


floor = unigram_entropy(val_data, len(chars))
final = {"MoE": after_loss, "dense (same active parameters)": held_out_loss(dense),
         "MoE without load balancing": held_out_loss(no_lb)}
assert max(final.values()) < floor, f"a run does not beat the unigram entropy {floor:.3f}: {final}"
assert max(final.values()) - min(final.values()) < 0.2, f"the three runs are not close: {final}"
fig, ax = plt.subplots(figsize=(8, 3.6))
for (name, curve), colour in zip((("MoE", history["ce"]), ("dense (same active parameters)", dense_history["loss"]),
                                  ("MoE without load balancing", no_lb_history["loss"])),
                                 ("#1f5fa8", "#444444", "#d08a1a")):
    ax.plot(running_mean(curve), label=f"{name}: held-out {final[name]:.3f}", color=colour, lw=1.4)
ax.axhline(floor, color="#999", ls="--", lw=1, label=f"unigram entropy of the text {floor:.3f}")
ax.set(xlabel="step", ylabel="cross-entropy (nats)", ylim=(floor - 1.5, floor + 1.0),
       title="training loss, running mean of 20 steps; held-out loss at the end in the legend")
ax.legend(frameon=False, fontsize=9)
ax.grid(color="#eee")
plt.show()
for name, loss in sorted(final.items(), key=lambda t: t[1]):
    print(f"{loss:.3f}  {name}")

# %% [markdown]
# ## Expert load with and without the balancing loss
#
# Each expert's share of its layer's top-2 slots on the probe batch, minus the fair share of 25%,
# in percentage points: one row per record (every 25 steps), four columns per layer. On the left
# the run with the load-balancing loss, on the right without. Without it nothing pulls a favoured
# expert back, so the shares drift further from 25%. The printed spread is the largest gap between
# two experts of one layer at the end of each run.

# %% tags=["nbval-ignore-output"]
def share_sheet(layer_loads: list[torch.Tensor], name: str):
    load = torch.stack(layer_loads).float()                              # (records, n_layers, n_experts)
    share = 100 * (load / load.sum(-1, keepdim=True) - 1 / config.moe.n_experts)
    cols = [f"L{i} e{e}" for i in range(config.n_layers) for e in range(config.moe.n_experts)]
    rows = [f"step {record_every * r}" if r < len(layer_loads) - 1 else f"step {steps}" for r in range(len(layer_loads))]
    table = share.reshape(len(layer_loads), -1)                          # (records, n_layers * n_experts)
    return viz.sheet(table, name, decimals=0, row_labels=rows, col_labels=cols,
                     note="share of top-2 slots − 25%, in points"), load[-1]


with_sheet, with_last = share_sheet(loads, "with load balancing")
without_sheet, without_last = share_sheet(no_lb_loads, "without load balancing")
spread = {name: float((last.max(-1).values - last.min(-1).values).max() / last[0].sum())
          for name, last in (("with", with_last), ("without", without_last))}
print(f"largest gap between two experts of a layer at the end: {spread['with']:.0%} of the slots with the "
      f"balancing loss, {spread['without']:.0%} without")
assert spread["without"] > spread["with"], f"without the balancing loss the load is not less even: {spread}"
viz.row(with_sheet, without_sheet)

# %% [markdown]
# ## What changed
#
# Against notebook 06's spreadsheet MoE (one block, `d_model = 5`, three experts): the vocabulary
# grows from 16 to 103 characters (embedding and LM head only), the width from 5 to 64, one block
# becomes two, attention gets four query heads over two key/value heads with RoPE, and each block's
# MoE has four experts of hidden size 64. And the weights are no longer random: the held-out
# cross-entropy fell from a little above a uniform guess's to less than half of it.

# %%
before_config = tm.ModelConfig(vocab_size=16, d_model=5, n_heads=1, d_ff=4, position="none",
                               moe=tm.MoEConfig(n_experts=3, top_k=2))
viz.shapes_table(config, previous=before_config, fold_unchanged=True)
