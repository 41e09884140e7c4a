"""The data of tinymoe.train: tokenizers that round-trip, a split that never moves, and a batch
stream whose saved position replays exactly the batches that followed it."""
from __future__ import annotations

import math

import pytest
import torch

from tinymoe.train import Batches, ByteTokenizer, CharTokenizer, TokenData, load_corpus, pydoc_text, unigram_entropy


def test_char_and_byte_tokenizers_round_trip_the_corpus():
    text = pydoc_text()[:20_000]
    char = CharTokenizer.from_text(text)
    assert char.decode(char.encode(text)) == text and char.vocab_size == len(set(text))
    byte = ByteTokenizer()
    mixed = text[:500] + " naïve “quotes” — ∑"
    ids = byte.encode(mixed)
    assert int(ids.max()) < 256 and len(ids) == len(mixed.encode()) and byte.decode(ids) == mixed


def test_char_tokenizer_names_an_unknown_character():
    with pytest.raises(ValueError, match=r"character 'z' \(position 2\) is not in"):
        CharTokenizer("abc").encode("abz")


def test_split_is_deterministic_and_holds_out_the_last_tenth():
    first, second = load_corpus("pydoc", "char"), load_corpus("pydoc", "char")
    assert torch.equal(first.train, second.train) and torch.equal(first.val, second.val)
    n = len(first.train) + len(first.val)
    assert len(first.train) == int(0.9 * n)
    text = pydoc_text()
    assert first.tokenizer.decode(first.val[:200]) == text[int(0.9 * len(text)):][:200]
    assert load_corpus("pydoc", "byte").vocab_size == 256


def test_restored_batch_position_replays_the_same_batches():
    data = TokenData.from_text(pydoc_text()[:5_000])
    stream = Batches(data.train, batch_size=3, seq_len=8, seed=4)
    for _ in range(5):
        stream.next()
    position = stream.state_dict()
    expected = [stream.next() for _ in range(3)]
    replay = Batches(data.train, batch_size=3, seq_len=8, seed=0)    # another seed: the state must override it
    replay.load_state_dict(position)
    for (x, y), (rx, ry) in zip(expected, (replay.next() for _ in range(3))):
        assert torch.equal(x, rx) and torch.equal(y, ry)
    assert replay.drawn == 8
    x, y = expected[0]
    assert x.shape == (3, 8) and torch.equal(x[:, 1:], y[:, :-1]), "targets must be the windows shifted by one"


def test_unigram_entropy_is_the_entropy_of_the_token_frequencies():
    tokens = torch.tensor([0, 0, 1, 2])                            # p = 1/2, 1/4, 1/4
    assert unigram_entropy(tokens) == pytest.approx(-(0.5 * math.log(0.5) + 2 * 0.25 * math.log(0.25)))
