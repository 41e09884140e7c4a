"""Shared set-up of the tinymoe.train tests: a small corpus and a model small enough to train in a second."""
from __future__ import annotations

import torch

import tinymoe as tm
from tinymoe.train import TokenData, TrainConfig, pydoc_text


def small_data(n_chars: int = 60_000) -> TokenData:
    """The first n_chars of the pydoc corpus, character tokens, 90/10 split."""
    return TokenData.from_text(pydoc_text()[:n_chars], "char", 0.1)


def small_model(vocab_size: int, seed: int = 0, **moe) -> tm.TinyLM:
    """One block, d_model 16, two heads, four experts top-2 (override with moe=... fields)."""
    torch.manual_seed(seed)
    settings = dict(n_experts=4, top_k=2, d_ff_expert=16) | moe
    return tm.TinyLM(tm.ModelConfig(vocab_size=vocab_size, d_model=16, n_layers=1, n_heads=2, max_seq_len=16,
                                    moe=tm.MoEConfig(**settings)))


def small_train_config(**changes) -> TrainConfig:
    settings = dict(steps=12, batch_size=8, seq_len=16, lr=1e-2, warmup_steps=3, eval_every=4, eval_batches=2,
                    progress=False)
    return TrainConfig(**(settings | changes))


def same_rows(a: list[dict], b: list[dict]) -> list[str]:
    """Where two histories differ (tokens/s aside, which is a timing)."""
    problems = []
    if len(a) != len(b):
        problems.append(f"{len(a)} rows vs {len(b)} rows")
    for row_a, row_b in zip(a, b):
        for key in row_a:
            if key != "tokens_per_s" and row_a[key] != row_b.get(key):
                problems.append(f"step {row_a['step']} {key}: {row_a[key]!r} vs {row_b.get(key)!r}")
    return problems


def one_thread():
    """A fixture body: run on one CPU thread (tiny models gain nothing from more, and on a busy
    machine torch's threads wait for each other), then restore the previous count."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
