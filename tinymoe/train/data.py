"""The training text as token ids, a deterministic train/validation split, and random windows.

The corpus is Python's own documentation: every CPython ships the text of its `help()` topics
in `pydoc_data.topics`, so it is there offline on any machine. The topics are joined in sorted
order and the last `val_fraction` of the tokens is held out, so the split is the same every time
(for one Python version: the text changes a little between versions).

A training example is a window of seq_len tokens and its targets the same window moved one token
to the right. A batch is batch_size windows at random starts, drawn from a seeded generator:

    x = tokens[s : s + seq_len]          y = tokens[s + 1 : s + seq_len + 1]

`Batches` remembers how many batches it has drawn and its generator's state: that pair is the
data position a checkpoint stores, so a resumed run sees exactly the batches it would have seen.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from .tokenizers import make_tokenizer

__all__ = ["pydoc_text", "TokenData", "load_corpus", "get_batch", "Batches", "unigram_entropy", "CORPORA"]

CORPORA = ("pydoc",)


def pydoc_text() -> str:
    """Every `help()` topic of this Python, in sorted order, joined by newlines."""
    from pydoc_data.topics import topics
    return "\n".join(topics[name] for name in sorted(topics))


@dataclass
class TokenData:
    """train (n_train,) and val (n_val,) int64 token ids, and the tokenizer that made them."""

    train: torch.Tensor
    val: torch.Tensor
    tokenizer: object

    @property
    def vocab_size(self) -> int:
        return self.tokenizer.vocab_size

    @classmethod
    def from_text(cls, text: str, tokenizer: str = "char", val_fraction: float = 0.1) -> "TokenData":
        """Tokenize `text`; the last val_fraction of the tokens is the validation set."""
        if isinstance(val_fraction, bool) or not isinstance(val_fraction, (int, float)) or not 0 < val_fraction < 1:
            raise ValueError(f"val_fraction={val_fraction!r}: must be a number strictly between 0 and 1")
        tok = make_tokenizer(tokenizer, text)
        ids = tok.encode(text)                                              # (n_tokens,)
        split = int((1 - val_fraction) * len(ids))
        return cls(train=ids[:split], val=ids[split:], tokenizer=tok)

    def __repr__(self) -> str:
        return f"TokenData(train={len(self.train):,} tokens, val={len(self.val):,} tokens, {self.tokenizer})"


def load_corpus(name: str = "pydoc", tokenizer: str = "char", val_fraction: float = 0.1) -> TokenData:
    """The named offline corpus ('pydoc': Python's help() topics), tokenized and split."""
    if name != "pydoc":
        raise ValueError(f"corpus={name!r}: must be one of {', '.join(map(repr, CORPORA))}")
    return TokenData.from_text(pydoc_text(), tokenizer, val_fraction)


def get_batch(tokens: torch.Tensor, batch_size: int, seq_len: int,
              generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """batch_size random windows of tokens and their next-token targets: two (batch_size, seq_len)."""
    if len(tokens) < seq_len + 2:
        raise ValueError(f"the token stream has {len(tokens)} tokens: too short for windows of seq_len={seq_len} "
                         f"(needs at least seq_len + 2)")
    starts = torch.randint(0, len(tokens) - seq_len - 1, (batch_size,), generator=generator)
    x = torch.stack([tokens[s: s + seq_len] for s in starts])              # (batch, seq_len)
    y = torch.stack([tokens[s + 1: s + seq_len + 1] for s in starts])      # (batch, seq_len), x shifted by one
    return x, y


class Batches:
    """An endless, seeded stream of training batches whose position can be saved and restored."""

    def __init__(self, tokens: torch.Tensor, batch_size: int, seq_len: int, seed: int = 0):
        self.tokens, self.batch_size, self.seq_len = tokens, batch_size, seq_len
        self.generator = torch.Generator().manual_seed(seed)               # on the CPU: same batches on any device
        self.drawn = 0

    def next(self) -> tuple[torch.Tensor, torch.Tensor]:
        self.drawn += 1
        return get_batch(self.tokens, self.batch_size, self.seq_len, self.generator)

    def state_dict(self) -> dict:
        """The data position: batches drawn so far and the generator state that draws the next one."""
        return {"drawn": self.drawn, "generator": self.generator.get_state()}

    def load_state_dict(self, state: dict) -> None:
        self.drawn = int(state["drawn"])
        self.generator.set_state(state["generator"])


def unigram_entropy(tokens: torch.Tensor, vocab_size: int | None = None) -> float:
    """H = -sum_i p_i ln p_i (nats) of the token frequencies: the cross-entropy of the best model
    that ignores context. A language model that has learned anything from context beats it."""
    counts = torch.bincount(tokens.reshape(-1), minlength=vocab_size or 0).double()
    p = counts[counts > 0] / counts.sum()
    return float(-(p * p.log()).sum()) if len(p) else math.nan
