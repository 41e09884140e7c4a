"""Tokenizers: text -> token ids -> text, the two simplest that work on any text.

    CharTokenizer   one token per distinct character of a text (notebook 08): a small vocabulary
                    (about a hundred for English prose), ids meaningless outside that text
    ByteTokenizer   one token per UTF-8 byte: always 256 tokens, any text at all, but a
                    character outside ASCII costs two to four tokens

Subword tokenizers (BPE) sit between the two: a vocabulary of tens of thousands, learned from
text. Only the model's embedding and LM head see the vocabulary size.
"""
from __future__ import annotations

from typing import Iterable

import torch

__all__ = ["CharTokenizer", "ByteTokenizer", "make_tokenizer", "TOKENIZERS"]

TOKENIZERS = ("char", "byte")


class CharTokenizer:
    """A character's id is its position in the sorted set of characters `chars`."""

    kind = "char"

    def __init__(self, chars: Iterable[str]):
        self.chars = sorted(set(chars))
        if not self.chars or any(len(c) != 1 for c in self.chars):
            raise ValueError("chars must be a non-empty collection of single characters")
        self.stoi = {c: i for i, c in enumerate(self.chars)}

    @classmethod
    def from_text(cls, text: str) -> "CharTokenizer":
        """The vocabulary of exactly the characters that occur in `text`."""
        if not text:
            raise ValueError("text is empty: a character vocabulary needs at least one character")
        return cls(set(text))

    @property
    def vocab_size(self) -> int:
        return len(self.chars)

    def encode(self, text: str) -> torch.Tensor:
        """str -> (len(text),) int64 ids; a character outside the vocabulary is an error."""
        try:
            return torch.tensor([self.stoi[c] for c in text], dtype=torch.long)
        except KeyError as err:
            at = text.index(err.args[0])
            raise ValueError(f"character {err.args[0]!r} (position {at}) is not in this tokenizer's "
                             f"{self.vocab_size}-character vocabulary; use ByteTokenizer for arbitrary text") from None

    def decode(self, ids) -> str:
        return "".join(self.chars[int(i)] for i in ids)

    def __repr__(self) -> str:
        return f"CharTokenizer(vocab_size={self.vocab_size})"


class ByteTokenizer:
    """A token is one byte of the text's UTF-8 encoding: vocab_size 256, nothing unknown."""

    kind = "byte"
    vocab_size = 256

    def encode(self, text: str) -> torch.Tensor:
        """str -> (n_bytes,) int64 ids in 0..255."""
        return torch.tensor(list(text.encode("utf-8")), dtype=torch.long)

    def decode(self, ids) -> str:
        """Bytes that do not form valid UTF-8 (a sample cut mid-character) decode as U+FFFD."""
        return bytes(int(i) for i in ids).decode("utf-8", errors="replace")

    def __repr__(self) -> str:
        return "ByteTokenizer(vocab_size=256)"


def make_tokenizer(kind: str, text: str | None = None):
    """'char' (built from `text`) or 'byte'."""
    if kind == "char":
        if text is None:
            raise ValueError("tokenizer='char' needs the text to take its characters from")
        return CharTokenizer.from_text(text)
    if kind == "byte":
        return ByteTokenizer()
    raise ValueError(f"tokenizer={kind!r}: must be one of {', '.join(map(repr, TOKENIZERS))}")
