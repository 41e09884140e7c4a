"""Exercise 10, Llama 4's chunked local attention.

    chunked_mask(seq_len, chunk_size)            (seq_len, seq_len) bool, True = may attend
    chunked_attention(q, k, v, chunk_size)       causal attention inside each chunk

Reference: tinymoe.llama4.chunked_mask and tinymoe.attention.scaled_dot_product_attention. The
wrong answers that matter: a sliding window of chunk_size tokens (the window moves with the query;
a chunk does not), the chunks without the causal rule (a token would see later tokens of its
chunk), and chunks counted from 1 instead of 0.
"""
from __future__ import annotations

import math

import torch

from ..attention import scaled_dot_product_attention, sliding_window_mask
from ..llama4 import chunked_mask
from .checks import Case, Exercise, Misconception, Property, Question

NOTEBOOK = "notebooks/10_llama_1_to_4.ipynb"
SECTION = "Step 6 · Llama 4's attention: chunked local layers and global NoPE layers"


def _finite(case, got, call):
    if isinstance(got, torch.Tensor) and got.is_floating_point() and not torch.isfinite(got).all():
        return "it has NaN or inf entries"


# ---- chunked_mask ---------------------------------------------------------------------------
def mask_cases(d):
    specs = [("7 tokens in chunks of 3 (the last chunk is short)", 7, 3),
             ("10 tokens in chunks of 4", 10, 4),
             ("one chunk as long as the sequence", 5, 5),
             ("chunks of one token", 6, 1),
             ("a chunk longer than the sequence", 6, 16),
             ("a longer sequence in chunks of 2 to 4 tokens", d.randint(9, 14), d.randint(2, 4))]
    return [Case(label, (seq_len, chunk), expected=chunked_mask(seq_len, chunk)) for label, seq_len, chunk in specs]


def _causal(case, got, call):
    if isinstance(got, torch.Tensor) and got.dim() == 2 and got.shape[0] == got.shape[1]:
        if got.bool().triu(1).any():
            return "some token sees a later token"


def _mask_sliding_window(seq_len, chunk):
    return sliding_window_mask(seq_len, chunk)


def _mask_not_causal(seq_len, chunk):
    i, j = torch.arange(seq_len)[:, None], torch.arange(seq_len)[None, :]
    return i // chunk == j // chunk


def _mask_chunks_from_one(seq_len, chunk):
    i, j = torch.arange(seq_len)[:, None] + 1, torch.arange(seq_len)[None, :] + 1
    return (j <= i) & (i // chunk == j // chunk)


WINDOW_HINT = ("a chunk is fixed, not a window that slides with the query: token i sees the earlier tokens of "
               "ITS chunk, positions chunk_size * (i // chunk_size) .. i, so the first token of a chunk sees only itself")
NOT_CAUSAL_HINT = "chunked attention is still causal: inside its chunk a token sees only itself and earlier tokens"
FROM_ONE_HINT = "positions start at 0: the first chunk holds positions 0 .. chunk_size - 1 (compare i // chunk_size)"

CHUNKED_MASK = Question(
    "chunked_mask", "the chunked-causal mask of Llama 4's local layers", mask_cases,
    section=f"{NOTEBOOK}, section: {SECTION}",
    properties=[Property("causal", _causal)],
    misconceptions=[Misconception("chunk_is_a_sliding_window", WINDOW_HINT, _mask_sliding_window),
                    Misconception("chunk_not_causal", NOT_CAUSAL_HINT, _mask_not_causal),
                    Misconception("chunks_counted_from_one", FROM_ONE_HINT, _mask_chunks_from_one)],
    hints=["Compare query i and key j by the chunk each lies in: i // chunk_size and j // chunk_size.",
           "Two conditions, both needed: the same chunk, and j <= i."],
)


# ---- chunked_attention ----------------------------------------------------------------------
def attention_cases(d):
    specs = [("batch 1, 2 heads, 8 tokens, chunks of 3", (1, 2, 8, 4), 3),
             ("batch 2, 1 head, 9 tokens, chunks of 4", (2, 1, 9, 2), 4),
             ("chunks of one token: each token attends to itself", (1, 2, 5, 3), 1),
             ("one chunk: plain causal attention", (1, 3, 6, 2), 6)]
    cases = []
    for label, (B, H, T, D), chunk in specs:
        q, k, v = d.randn(B, H, T, D), d.randn(B, H, T, D), d.randn(B, H, T, D + 1)
        out, _ = scaled_dot_product_attention(q, k, v, mask=chunked_mask(T, chunk))
        cases.append(Case(label, (q, k, v, chunk), expected=out))
    return cases


def _attention_with(mask_fn, scale=True):
    def wrong(q, k, v, chunk):
        T = q.shape[-2]
        out, _ = scaled_dot_product_attention(q, k, v, mask=mask_fn(T, chunk),
                                              scale=None if scale else 1.0)
        return out
    return wrong


CHUNKED_ATTENTION = Question(
    "chunked_attention", "scaled dot-product attention under the chunked mask", attention_cases,
    forbidden=("torch.nn.functional.scaled_dot_product_attention", "torch.nn.MultiheadAttention",
               "torch.nn.functional.multi_head_attention_forward"),
    section=f"{NOTEBOOK}, section: {SECTION}",
    properties=[Property("finite", _finite)],
    misconceptions=[Misconception("chunk_is_a_sliding_window", WINDOW_HINT, _attention_with(_mask_sliding_window)),
                    Misconception("chunk_not_causal", NOT_CAUSAL_HINT, _attention_with(_mask_not_causal)),
                    Misconception("no_scale", "scale the scores by 1/sqrt(head_dim) before the softmax",
                                  _attention_with(chunked_mask, scale=False))],
    hints=["Build the mask with your chunked_mask, then attend as in notebook 01: scores, mask, softmax, values.",
           "Hidden keys get -inf before the softmax (never 0 after it: the rest would not sum to 1)."],
)

EXERCISE = Exercise("10_chunked_mask", "Chunked local attention", NOTEBOOK, [CHUNKED_MASK, CHUNKED_ATTENTION])
