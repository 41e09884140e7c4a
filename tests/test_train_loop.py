"""tinymoe.train's loop: it learns (beats the unigram entropy of the text), it is the loop notebook
08 writes by hand, it trains any module that returns logits, and it records the MoE's numbers."""
from __future__ import annotations

import math
import re

import pytest
import torch
from torch import nn

import tinymoe as tm
from tinymoe.config import ConfigError
from tinymoe.moe.routing import Router
from tinymoe.train import (TrainConfig, dense_baseline, get_batch, load_corpus, lr_factor, train,
                           unigram_entropy)
from train_setup import one_thread, small_data, small_model, small_train_config

single_thread = pytest.fixture(scope="module", autouse=True)(one_thread)


@pytest.fixture(scope="module")
def data():
    return small_data()


def test_short_run_beats_the_unigram_entropy_of_the_text():
    data = load_corpus("pydoc", "char")
    floor = unigram_entropy(data.val, data.vocab_size)           # the best context-free guess, on the held-out text
    model = small_model(data.vocab_size)
    history = train(model, data, TrainConfig(steps=150, batch_size=16, seq_len=16, lr=1e-2, warmup_steps=10,
                                             eval_every=0, eval_batches=8, progress=False))
    assert history.final_val_loss < floor - 0.1, \
        f"validation loss {history.final_val_loss:.3f} does not beat the unigram entropy {floor:.3f} by 0.1 nats"


def test_with_constant_lr_and_no_clipping_it_is_the_hand_written_loop(data):
    config = small_train_config(steps=6, warmup_steps=0, min_lr_ratio=1.0, grad_clip=None, beta2=0.999, eval_every=0)
    history = train(small_model(data.vocab_size), data, config)

    model = small_model(data.vocab_size)                         # notebook 08's loop, written out
    torch.manual_seed(config.seed)
    optimizer = torch.optim.AdamW(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    batches = torch.Generator().manual_seed(config.seed)
    by_hand = []
    for _ in range(config.steps):
        out = model(*get_batch(data.train, config.batch_size, config.seq_len, batches))
        optimizer.zero_grad()
        out.loss.backward()
        optimizer.step()
        by_hand.append(out.ce_loss.item())
    assert history["loss"] == pytest.approx(by_hand, rel=1e-5, abs=1e-6), \
        f"train() losses {history['loss']} differ from the hand-written loop's {by_hand}"


def test_accumulating_two_micro_batches_takes_the_mean_gradient(data):
    """Two micro-batches of 4 windows give the update of one batch of the same 8 windows."""
    config = small_train_config(steps=1, batch_size=4, accumulation=2, warmup_steps=0, grad_clip=None, eval_every=0)
    accumulated = small_model(data.vocab_size)
    train(accumulated, data, config)

    model = small_model(data.vocab_size)
    generator = torch.Generator().manual_seed(config.seed)
    halves = [get_batch(data.train, 4, config.seq_len, generator) for _ in range(2)]
    x, y = (torch.cat(parts) for parts in zip(*halves))           # (8, seq_len) the same windows at once
    optimizer = torch.optim.AdamW(model.parameters(), lr=config.lr, betas=(config.beta1, config.beta2),
                                  weight_decay=config.weight_decay)
    out = model(x, y)
    # the aux losses are per micro-batch statistics, so add their mean over the two halves, not the full batch's
    aux = sum(sum(model(hx, hy).aux_losses.values()) for hx, hy in halves) / 2
    (out.ce_loss + aux).backward()
    optimizer.step()
    for name, weight in model.state_dict().items():
        diff = (weight - accumulated.state_dict()[name]).abs().max().item()
        assert diff < 1e-5, f"{name} after one accumulated step differs from the full-batch step by {diff:.2e}"


def test_any_module_returning_logits_trains(data):
    class Bigram(nn.Module):                                     # no aux losses, no config, returns a tensor
        def __init__(self, vocab_size):
            super().__init__()
            self.table = nn.Embedding(vocab_size, vocab_size)

        def forward(self, tokens):
            return self.table(tokens)                            # (B, T, vocab_size)

    torch.manual_seed(0)
    history = train(Bigram(data.vocab_size), data, small_train_config(steps=40, lr=0.1))
    assert history["loss"][-1] < history["loss"][0] - 1, f"a bigram table did not learn: {history['loss'][::10]}"
    assert history["expert_load"][-1] == [] and "load_balancing" not in history.rows[-1]


def test_a_module_returning_something_else_is_named_in_the_error(data):
    class Wrong(nn.Module):
        def __init__(self):
            super().__init__()
            self.w = nn.Parameter(torch.zeros(1))

        def forward(self, tokens):
            return {"logits": tokens}

    with pytest.raises(TypeError, match="returned dict: train\\(\\) needs logits"):
        train(Wrong(), data, small_train_config(steps=1))


def test_rows_record_each_aux_loss_the_expert_load_and_dropped_tokens(data):
    config = small_train_config(steps=3, eval_every=2)
    model = small_model(data.vocab_size, capacity_factor=0.5)    # room for half the slots: many drops
    history = train(model, data, config)
    row = history.rows[-1]
    assert {"load_balancing", "z_loss", "total_loss", "grad_norm", "lr", "tokens_per_s"} <= set(row)
    assert row["total_loss"] == pytest.approx(row["loss"] + row["load_balancing"] + row["z_loss"])
    slots = config.batch_size * config.seq_len * 2                # top-2 slots per micro-batch
    (load,) = row["expert_load"]                                  # one MoE layer
    assert len(load) == 4 and sum(load) + row["dropped_slots"] == slots, \
        f"kept {sum(load)} + dropped {row['dropped_slots']} slots should be all {slots}"
    assert max(load) <= math.ceil(0.5 * slots / 4), f"an expert kept {max(load)} slots, over its capacity"
    assert row["dropped_tokens"] > 0 and row["dropped_slots"] >= row["dropped_tokens"]
    assert history.val[0] == [1, 2], f"evaluated at steps {history.val[0]}, expected every 2nd and the last"


def test_warmup_then_cosine_schedule():
    factors = [lr_factor(s, steps=10, warmup_steps=4, min_lr_ratio=0.1) for s in range(10)]
    assert factors[:4] == pytest.approx([0.25, 0.5, 0.75, 1.0])
    assert factors[4] == pytest.approx(1.0) and factors[-1] == pytest.approx(0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * 5 / 6)))
    assert all(a >= b for a, b in zip(factors[3:], factors[4:])), f"the cosine part should never rise: {factors}"
    history = train(small_model(96), small_data(), small_train_config(steps=10, warmup_steps=4, min_lr_ratio=0.1, lr=1e-2))
    assert history["lr"] == pytest.approx([1e-2 * f for f in factors]), "the optimizer did not use the schedule"


def test_router_stays_float32_under_bfloat16_autocast(data):
    model = small_model(data.vocab_size)
    dtypes = []
    for router in (m for m in model.modules() if isinstance(m, Router)):
        router.register_forward_hook(lambda module, inputs, routing: dtypes.append(routing.logits.dtype))
    history = train(model, data, small_train_config(steps=2, precision="bfloat16"))
    assert dtypes and set(dtypes) == {torch.float32}, f"router logits under bf16 autocast: {set(dtypes)}"
    assert all(math.isfinite(v) for v in history["loss"])


def test_dense_baseline_has_the_active_parameters_of_the_moe():
    config = tm.ModelConfig(vocab_size=50, d_model=16, n_layers=2, n_heads=2,
                            moe=tm.MoEConfig(n_experts=4, top_k=2, d_ff_expert=24, n_shared_experts=1))
    dense = dense_baseline(config)
    assert dense.moe is None and dense.d_ff == 3 * 24
    moe_model, dense_model = tm.TinyLM(config), tm.TinyLM(dense)
    counts = tm.moe.moe_parameter_counts(config)
    active = sum(p.numel() for p in moe_model.parameters()) - config.n_layers * (counts["total"] - counts["active"])
    router = config.n_layers * 4 * 16
    assert sum(p.numel() for p in dense_model.parameters()) == active - router


@pytest.mark.parametrize("field, value, rule", [
    ("steps", 0, ">= 1"), ("lr", -1.0, "positive"), ("precision", "fp8", "one of"), ("beta2", 1.0, "[0, 1)"),
    ("grad_clip", 0.0, "positive"), ("device", "gpu7", "torch device"), ("min_lr_ratio", 2, "[0, 1]")])
def test_bad_training_settings_name_the_field(field, value, rule):
    with pytest.raises(ConfigError, match=rf"{field}=.*{re.escape(rule)}"):
        TrainConfig(**{field: value}).validate()


def test_terminal_progress_bar_shows_step_loss_validation_loss_and_tokens_per_second(data, capsys):
    train(small_model(data.vocab_size), data, small_train_config(steps=4, eval_every=2, progress=True))
    bar = capsys.readouterr().err.split("\r")[-1]                  # the bar's last redraw
    for text in ("4/4", "loss=", "val=", "tok/s="):
        assert text in bar, f"{text!r} missing from the progress bar: {bar!r}"
