"""Exercise 11, one KV-cache decode step: the new token's keys and values join the cache, and its
query attends over every cached key.

    decode_step(x, W_q, W_k, W_v, W_o, k_cache, v_cache, cos, sin)
        x (batch, 1, d_model)              the new token, at position t = k_cache.shape[2]
        k_cache (batch, n_kv_heads, t, head_dim)   keys of positions 0 .. t-1, already rotated
        v_cache (batch, n_kv_heads, t, v_dim)      their values
        cos, sin (max_len, head_dim)        RoPE tables (rotate-half pairing)
        -> (out (batch, 1, d_model), k_cache with t + 1 positions, v_cache with t + 1 positions)

Reference: tinymoe.multihead.MultiHeadAttention with a tinymoe.kv_cache.LayerKVCache: the prompt
is prefilled, then the next token decoded at its true position. The wrong answers that matter:
rotating the new token as if it sat at position 0, forgetting its own key (attending only over
the old cache), and storing the keys before RoPE.
"""
from __future__ import annotations

import math

import torch

from ..config import ModelConfig
from ..kv_cache import LayerKVCache
from ..multihead import MultiHeadAttention
from ..rope import apply_rope
from .checks import Case, Exercise, Misconception, Property, Question

NOTEBOOK = "notebooks/10_llama_1_to_4.ipynb"
SECTION = "Running it: the KV cache of a Llama 4"


def _finite(case, got, call):
    parts = got if isinstance(got, (tuple, list)) else (got,)
    for part in parts:
        if isinstance(part, torch.Tensor) and part.is_floating_point() and not torch.isfinite(part).all():
            return "it has NaN or inf entries"


def _old_cache_kept(case, got, call):
    k_cache, v_cache = case.args[5], case.args[6]
    if isinstance(got, (tuple, list)) and len(got) == 3:
        k_new, v_new = got[1], got[2]
        t = k_cache.shape[2]
        if isinstance(k_new, torch.Tensor) and k_new.shape[2:3] == (t + 1,):
            if not torch.allclose(k_new[:, :, :t].double(), k_cache.double(), atol=1e-5):
                return "the cached keys of earlier positions changed: a cache only appends"
            if not torch.allclose(v_new[:, :, :t].double(), v_cache.double(), atol=1e-5):
                return "the cached values of earlier positions changed: a cache only appends"


def decode_cases(d):
    specs = [("batch 1, 4 query heads sharing 2 kv heads, 5 cached tokens", 1, 8, 4, 2, 2, 5),
             ("batch 2, 2 heads, 3 cached tokens", 2, 6, 2, 2, 2, 3),
             ("multi-query attention: 4 query heads, 1 kv head, 7 cached tokens", 1, 8, 4, 1, 2, 7),
             ("the first decoded token after a one-token prompt", 1, 8, 2, 1, 4, 1),
             ("a longer cache", 1, 8, 4, 2, 2, d.randint(9, 14))]
    cases = []
    for label, batch, d_model, n_heads, n_kv_heads, head_dim, t in specs:
        config = ModelConfig(d_model=d_model, n_heads=n_heads, n_kv_heads=n_kv_heads, head_dim=head_dim,
                             max_seq_len=16)
        with d.torch_seed():
            attn = MultiHeadAttention(config).eval()
        x = d.randn(batch, t + 1, d_model)                                   # prompt (t tokens) + the new one
        cache = LayerKVCache(batch, n_kv_heads, head_dim, head_dim, capacity=16, ring=False)
        with torch.no_grad():
            attn(x[:, :t], cache=cache, positions=torch.arange(t))          # prefill
            k_cache, v_cache = cache.k[:, :, :t].clone(), cache.v[:, :, :t].clone()
            out = attn(x[:, t:], cache=cache, positions=torch.tensor([t]))   # decode at the true position
        weights = tuple(getattr(attn, w).weight.detach().clone() for w in ("W_q", "W_k", "W_v", "W_o"))
        cases.append(Case(label, (x[:, t:], *weights, k_cache, v_cache, attn.rope.cos.clone(), attn.rope.sin.clone()),
                          expected=(out, cache.k[:, :, :t + 1].clone(), cache.v[:, :, :t + 1].clone())))
    return cases


def reference_decode(x, W_q, W_k, W_v, W_o, k_cache, v_cache, cos, sin, position=None, own_key=True,
                     rotate_keys=True):
    """The decode step written out, with switches for the catalogued mistakes."""
    B, _, _ = x.shape
    n_kv_heads, t, head_dim = k_cache.shape[1], k_cache.shape[2], k_cache.shape[3]
    n_heads = W_q.shape[0] // head_dim
    v_dim = v_cache.shape[3]
    pos = t if position is None else position
    q = (x @ W_q.T).view(B, 1, n_heads, head_dim).transpose(1, 2)           # (B, n_heads, 1, head_dim)
    k = (x @ W_k.T).view(B, 1, n_kv_heads, head_dim).transpose(1, 2)        # (B, n_kv_heads, 1, head_dim)
    v = (x @ W_v.T).view(B, 1, n_kv_heads, v_dim).transpose(1, 2)           # (B, n_kv_heads, 1, v_dim)
    q = apply_rope(q, cos[pos:pos + 1], sin[pos:pos + 1])
    if rotate_keys:
        k = apply_rope(k, cos[pos:pos + 1], sin[pos:pos + 1])
    k_all, v_all = torch.cat([k_cache, k], dim=2), torch.cat([v_cache, v], dim=2)  # (B, n_kv_heads, t+1, .)
    keys, values = (k_all, v_all) if own_key else (k_cache, v_cache)
    group = n_heads // n_kv_heads
    keys, values = keys.repeat_interleave(group, dim=1), values.repeat_interleave(group, dim=1)
    weights = torch.softmax(q @ keys.transpose(-2, -1) / math.sqrt(head_dim), dim=-1)  # (B, n_heads, 1, S)
    out = (weights @ values).transpose(1, 2).reshape(B, 1, n_heads * v_dim) @ W_o.T
    return out, k_all, v_all


DECODE_STEP = Question(
    "decode_step", "one decoded token: append its key and value, attend over the whole cache", decode_cases,
    forbidden=("torch.nn.functional.scaled_dot_product_attention", "torch.nn.MultiheadAttention",
               "torch.nn.functional.multi_head_attention_forward"),
    allowed=("tinymoe.rope.apply_rope",),                       # RoPE itself is exercise 03's; it is handed out here
    section=f"{NOTEBOOK}, section: {SECTION}",
    properties=[Property("finite", _finite), Property("earlier cache entries unchanged", _old_cache_kept)],
    misconceptions=[
        Misconception("rope_at_position_zero",
                      "the new token sits at position t = k_cache.shape[2], not 0: rotate its q and k by the "
                      "angles of row t of cos and sin",
                      lambda *a: reference_decode(*a, position=0)),
        Misconception("own_key_missing",
                      "the new token attends to itself too: append its key and value to the cache first, then "
                      "attend over all t + 1 positions",
                      lambda *a: reference_decode(*a, own_key=False)),
        Misconception("keys_cached_before_rope",
                      "the cache holds keys AFTER RoPE (each rotated once, by its own position): rotate the new "
                      "key before appending it",
                      lambda *a: reference_decode(*a, rotate_keys=False)),
    ],
    hints=["head_dim = k_cache.shape[-1]; n_heads = W_q.shape[0] // head_dim; the new token's position is "
           "t = k_cache.shape[2].",
           "Project x to q, k, v; rotate q and k with tinymoe.rope.apply_rope(x, cos[t:t+1], sin[t:t+1]); "
           "append k and v along the sequence axis; repeat the kv heads for their query groups; no mask is "
           "needed (every cached key is earlier)."],
)

EXERCISE = Exercise("11_kv_cache_decode", "One KV-cache decode step", NOTEBOOK, [DECODE_STEP])
