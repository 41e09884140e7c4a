"""Exercise 02, multi-head attention: heads side by side, then the output projection.

    combine_heads(heads, W_o)                          concat(head_0, ..., head_{H-1}) W_o^T
    multi_head_attention(x, W_q, W_k, W_v, W_o, n_heads)   causal multi-head attention, no bias

Reference: tinymoe.multihead.MultiHeadAttention, run with a trace; the per-head outputs it
records (`attn.head0`, ...) are the learner's inputs and `attn.out` the expected output. Heads
may have unequal value sizes (5, 3, 3), as in the hand-built sheet. The wrong answers: heads
stacked and flattened (their features interleave), heads in reverse order, head columns split
strided instead of contiguous, no or wrong scaling, no causal mask, no output projection.
"""
from __future__ import annotations

import math

import torch

from ..attention import scaled_dot_product_attention
from ..config import ModelConfig
from ..multihead import MultiHeadAttention
from ..trace import Trace
from .checks import Case, ErrorHint, Exercise, Misconception, Property, Question

NOTEBOOK = "notebooks/02_multi_head_attention.ipynb"


def _core_attention(d, config: ModelConfig, batch: int, seq_len: int):
    """A seeded core MultiHeadAttention, an input, and the trace of its forward pass."""
    with d.torch_seed():
        module = MultiHeadAttention(config)
    x = d.randn(batch, seq_len, config.d_model)
    trace = Trace()
    with torch.no_grad():
        module(x, trace)
    weights = [module.W_q.weight, module.W_k.weight, module.W_v.weight, module.W_o.weight]
    return module, x, trace, [w.detach().clone() for w in weights]


def _finite(case, got, call):
    if not torch.isfinite(got).all():
        return "it returned NaN or inf for finite inputs"


# ---- combine_heads -----------------------------------------------------------------------------
def combine_cases(d):
    specs = [("four heads of equal value size 2", 2, 3, (2, 2, 2, 2), 8),
             ("the sheet's three heads, value sizes (5, 3, 3), into d_model 5", 1, 4, (5, 3, 3), 5),
             ("two heads of value sizes (1, 4) and a batch of 3", 3, 3, (1, 4), 6),
             ("a single head", 2, 5, (3,), 4)]
    cases = []
    for label, batch, seq_len, v_dims, d_model in specs:
        config = ModelConfig(d_model=d_model, n_heads=len(v_dims), head_dim=2, v_head_dims=v_dims, position="none")
        _, _, trace, (_, _, _, W_o) = _core_attention(d, config, batch, seq_len)
        heads = [trace[f"attn.head{h}"] for h in range(len(v_dims))]
        cases.append(Case(label, (heads, W_o), expected=trace["attn.out"]))
    return cases


COMBINE_HEADS = Question(
    "combine_heads", "concatenate per-head outputs, then project with W_o", combine_cases,
    forbidden=("torch.nn.functional.scaled_dot_product_attention", "torch.nn.MultiheadAttention",
               "torch.nn.functional.multi_head_attention_forward"),
    section=f"{NOTEBOOK}, sections: Concatenate the heads, then project back; Heads of unequal value size",
    properties=[Property("finite", _finite)],
    misconceptions=[
        Misconception("heads_interleaved",
                      "stacking the heads on a new last axis and flattening interleaves their features; put them "
                      "side by side instead: torch.cat(heads, dim=-1)",
                      lambda heads, W_o: torch.stack(heads, dim=-1).flatten(-2) @ W_o.T),
        Misconception("heads_reversed",
                      "the heads go into the concatenation in order, head 0 first: its columns of W_o come first",
                      lambda heads, W_o: torch.cat(heads[::-1], dim=-1) @ W_o.T),
    ],
    error_hints=[
        ErrorHint(r"stack expects each tensor to be equal size",
                  "the heads have different value sizes, so torch.stack cannot line them up; put them side by "
                  "side with torch.cat(heads, dim=-1)"),
        ErrorHint(r"Sizes of tensors must match except in dimension",
                  "concatenate along the last axis (dim=-1), the features; batch and position stay as they are"),
        ErrorHint(r"cannot be multiplied|size mismatch",
                  "W_o is stored like nn.Linear's weight, (d_model, sum of value sizes): multiply by W_o.T "
                  "(or use torch.nn.functional.linear(concat, W_o))"),
    ],
    hints=[
        "Each head's output is (batch, seq_len, its value size). Put them side by side: the concatenation is "
        "(batch, seq_len, sum of value sizes).",
        "W_o has the shape of nn.Linear's weight, (out_features, in_features) = (d_model, sum of value sizes).",
    ],
)


# ---- multi_head_attention ---------------------------------------------------------------------
def mha_cases(d):
    specs = [("one sequence, d_model 6, 2 heads of size 3", 1, 4, 6, 2, 3, 3),
             ("a batch of 2, d_model 8, 4 heads of size 2 with value size 3", 2, 5, 8, 4, 2, 3),
             ("a single head", 1, 3, 4, 1, 4, 4),
             ("a single position, 3 heads", 2, 1, 6, 3, 2, 2),
             ("d_model 5, 3 heads of size 2 with value size 4", 1, 6, 5, 3, 2, 4)]
    cases = []
    for label, batch, seq_len, d_model, n_heads, head_dim, v_dim in specs:
        config = ModelConfig(d_model=d_model, n_heads=n_heads, head_dim=head_dim, v_head_dim=v_dim, position="none")
        _, x, trace, weights = _core_attention(d, config, batch, seq_len)
        cases.append(Case(label, (x, *weights, n_heads), expected=trace["attn.out"]))
    return cases


def attention_from_parts(x, W_q, W_k, W_v, W_o, n_heads, n_kv_heads=None, *, split="contiguous",
                         kv_order="repeat_interleave", scale=None, causal=True, project=True):
    """Multi-head (or grouped-query) attention assembled from core attention, with knobs that turn
    one thing wrong at a time; the catalogued wrong answers of exercises 02 and 05 are built here.
    With the defaults it equals the core's MultiHeadAttention (a test holds it to that)."""
    B, T, _ = x.shape                                                # (batch, seq_len, d_model)
    H, H_kv = n_heads, n_kv_heads or n_heads
    D, D_v = W_q.shape[0] // H, W_v.shape[0] // H_kv

    def heads(t, n, size):
        if split == "contiguous":                                    # head h owns columns h*size .. (h+1)*size-1
            return t.view(B, T, n, size).transpose(1, 2)             # (B, n, T, size)
        return t.view(B, T, size, n).permute(0, 3, 1, 2)             # wrong: head h owns columns h, h+n, ...

    q, k, v = heads(x @ W_q.T, H, D), heads(x @ W_k.T, H_kv, D), heads(x @ W_v.T, H_kv, D_v)
    kv_of = (torch.arange(H) // (H // H_kv)) if kv_order == "repeat_interleave" else torch.arange(H) % H_kv
    out, _ = scaled_dot_product_attention(q, k[:, kv_of], v[:, kv_of], causal=causal, scale=scale)
    concat = out.transpose(1, 2).reshape(B, T, H * D_v)              # (B, T, n_heads * value size)
    return concat @ W_o.T if project else concat


def _causal_in_x(case, got, call):
    x, *rest = case.args
    if x.shape[1] < 2:
        return None
    x2 = x.clone()
    x2[:, -1] += 2.0
    other = call(x2, *rest)
    if not torch.allclose(other[:, :-1].double(), got[:, :-1].double(), rtol=1e-4, atol=1e-4):
        return ("changing the last token changed the outputs at earlier positions; the attention must be causal "
                "(a query sees only keys at or before it)")


MULTI_HEAD_ATTENTION = Question(
    "multi_head_attention", "causal multi-head attention from W_q, W_k, W_v, W_o", mha_cases,
    forbidden=("torch.nn.functional.scaled_dot_product_attention", "torch.nn.MultiheadAttention",
               "torch.nn.functional.multi_head_attention_forward"),
    section=f"{NOTEBOOK}, section: Three heads, every number",
    properties=[Property("finite", _finite), Property("causal", _causal_in_x)],
    misconceptions=[
        Misconception("heads_split_strided",
                      "head h owns a contiguous block of the projection: columns h*head_dim .. (h+1)*head_dim - 1. "
                      "Reshape to (batch, seq_len, n_heads, head_dim), not (batch, seq_len, head_dim, n_heads)",
                      lambda *a: attention_from_parts(*a, split="strided")),
        Misconception("no_scale",
                      "scale each head's scores by 1/sqrt(head_dim) before the softmax",
                      lambda *a: attention_from_parts(*a, scale=1.0)),
        Misconception("scale_by_d_model",
                      "scale by 1/sqrt(head_dim), the size of one head's q and k, not by d_model",
                      lambda x, *a: attention_from_parts(x, *a, scale=1.0 / math.sqrt(x.shape[-1]))),
        Misconception("causal_mask_missing",
                      "a decoder's attention is causal: hide the keys after each query before the softmax",
                      lambda *a: attention_from_parts(*a, causal=False)),
        Misconception("no_output_projection",
                      "finish with the output projection: concatenation @ W_o.T maps the heads back to d_model",
                      lambda *a: attention_from_parts(*a, project=False)),
    ],
    error_hints=[
        ErrorHint(r"cannot be multiplied|size mismatch",
                  "the weights are stored like nn.Linear's: W_q is (n_heads * head_dim, d_model), so x @ W_q.T "
                  "projects x; W_o is (d_model, n_heads * value size)"),
        ErrorHint(r"view size is not compatible",
                  "after a transpose the tensor is not contiguous: use .reshape (or .contiguous().view)"),
    ],
    hints=[
        "Project once: x @ W_q.T is (batch, seq_len, n_heads * head_dim); head_dim = W_q.shape[0] // n_heads. "
        "The same for k (with head_dim) and v (value size = W_v.shape[0] // n_heads).",
        "Split into heads with .view(batch, seq_len, n_heads, size).transpose(1, 2): (batch, n_heads, seq_len, size).",
        "Attend per head with your causal attention, move the heads back next to each other "
        "(transpose, then reshape to (batch, seq_len, n_heads * value size)) and apply W_o.",
    ],
)

EXERCISE = Exercise("02_multi_head", "Multi-head attention", NOTEBOOK, [COMBINE_HEADS, MULTI_HEAD_ATTENTION])
