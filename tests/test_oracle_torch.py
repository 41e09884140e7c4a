"""Oracle tests against torch's own implementations (which we did not write), float32 on the CPU:
torch.nn.functional.scaled_dot_product_attention (causal, boolean masks, enable_gqa),
torch.nn.RMSNorm, torch.nn.LayerNorm, torch.softmax. Every check prints and asserts its max abs error
(`pytest -m oracle -s` shows the table)."""
from __future__ import annotations

import pytest
import torch

import oracle_check
from torch import nn
from torch.nn import functional as F

from tinymoe import (MLP, LayerNorm, ModelConfig, MultiHeadAttention, RMSNorm, Trace, causal_mask, padding_mask,
                     safe_softmax, scaled_dot_product_attention, sliding_window_mask)

pytestmark = pytest.mark.oracle

TOL = 1e-5


def _gen(seed):
    return torch.Generator().manual_seed(seed)


def check(name: str, ours: torch.Tensor, theirs: torch.Tensor, tol: float = TOL) -> float:
    return oracle_check.check(name, ours, theirs, tol, against='the reference')


def _qkv(B=2, H=3, T_q=6, T_k=6, d_k=4, d_v=4, seed=0):
    g = _gen(seed)
    return (torch.randn(B, H, T_q, d_k, generator=g), torch.randn(B, H, T_k, d_k, generator=g),
            torch.randn(B, H, T_k, d_v, generator=g))


def _weights_via_sdpa(q, k, **kwargs):
    """torch's attention weights: attend over the identity, so the output IS the weight matrix."""
    T_k = k.shape[-2]
    eye = torch.eye(T_k).expand(*k.shape[:-2], T_k, T_k)
    return F.scaled_dot_product_attention(q, k, eye, **kwargs)


# ---- scaled dot-product attention --------------------------------------------------------------

def test_sdpa_unmasked_matches_torch():
    q, k, v = _qkv(T_q=5, T_k=7)
    out, weights = scaled_dot_product_attention(q, k, v)
    check("sdpa: no mask, out", out, F.scaled_dot_product_attention(q, k, v))
    check("sdpa: no mask, weights", weights, _weights_via_sdpa(q, k))


def test_sdpa_causal_matches_torch():
    q, k, v = _qkv()
    out, weights = scaled_dot_product_attention(q, k, v, causal=True)
    check("sdpa: causal, out", out, F.scaled_dot_product_attention(q, k, v, is_causal=True))
    check("sdpa: causal, weights", weights, _weights_via_sdpa(q, k, is_causal=True))


def test_sdpa_random_boolean_mask_matches_torch():
    q, k, v = _qkv(T_q=6, T_k=8)
    mask = torch.rand(2, 3, 6, 8, generator=_gen(5)) < 0.5
    mask[..., 0] = True                      # every query keeps at least one key (torch gives NaN otherwise)
    out, weights = scaled_dot_product_attention(q, k, v, mask=mask)
    check("sdpa: random bool mask, out", out, F.scaled_dot_product_attention(q, k, v, attn_mask=mask))
    check("sdpa: random bool mask, weights", weights, _weights_via_sdpa(q, k, attn_mask=mask))


def test_sdpa_padding_and_causal_mask_matches_torch():
    q, k, v = _qkv(T_q=6, T_k=6)
    mask = padding_mask(torch.tensor([4, 6]), 6) & causal_mask(6)      # (B, 1, T, T) broadcast over heads
    out, _ = scaled_dot_product_attention(q, k, v, mask=mask)
    check("sdpa: padding & causal mask, out", out, F.scaled_dot_product_attention(q, k, v, attn_mask=mask))


def test_sdpa_sliding_window_mask_matches_torch():
    q, k, v = _qkv(T_q=9, T_k=9)
    mask = sliding_window_mask(9, window=3)
    out, _ = scaled_dot_product_attention(q, k, v, mask=mask)
    check("sdpa: sliding window 3, out", out, F.scaled_dot_product_attention(q, k, v, attn_mask=mask))


def test_sdpa_value_dim_differs_from_key_dim_matches_torch():
    q, k, v = _qkv(d_k=4, d_v=3)
    out, _ = scaled_dot_product_attention(q, k, v, causal=True)
    check("sdpa: d_v=3 != d_k=4, out", out, F.scaled_dot_product_attention(q, k, v, is_causal=True))


def test_sdpa_custom_scale_matches_torch():
    q, k, v = _qkv()
    out, _ = scaled_dot_product_attention(q, k, v, scale=0.3)
    check("sdpa: scale=0.3, out", out, F.scaled_dot_product_attention(q, k, v, scale=0.3))


@pytest.mark.parametrize("n_kv_heads", [1, 2, 6])
def test_multihead_gqa_matches_torch_enable_gqa(n_kv_heads):
    """Our module's attention core against torch's enable_gqa, on the module's own (rotated) q, k, v."""
    config = ModelConfig(d_model=24, n_heads=6, n_kv_heads=n_kv_heads, max_seq_len=16)
    torch.manual_seed(0)
    attn = MultiHeadAttention(config)
    x = torch.randn(2, 7, 24, generator=_gen(1))
    trace = Trace()
    out = attn(x, trace=trace)
    B, T, D = 2, 7, config.qk_dim
    q, k = trace["attn.q_rot"], trace["attn.k_rot"]                       # (B, 6, T, D), (B, n_kv, T, D)
    v = trace["attn.v"]                                                   # (B, n_kv, T, D)
    theirs = F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=True)   # (B, 6, T, D)
    concat = theirs.transpose(1, 2).reshape(B, T, 6 * D)
    check(f"MultiHeadAttention n_kv_heads={n_kv_heads} vs sdpa enable_gqa, concat", trace["attn.concat"], concat)
    check(f"MultiHeadAttention n_kv_heads={n_kv_heads} vs sdpa enable_gqa, out", out, attn.W_o(concat))
    check(f"MultiHeadAttention n_kv_heads={n_kv_heads} vs sdpa enable_gqa, weights", trace["attn.weights"],
          _weights_via_sdpa(q, k, is_causal=True, enable_gqa=True))


# ---- softmax, norms, feed-forward --------------------------------------------------------------

def test_safe_softmax_matches_torch_softmax_on_large_inputs():
    x = torch.randn(8, 33, generator=_gen(0)) * 3 + 500    # exp(500) is far past float32's range (~88.7)
    check("safe_softmax vs torch.softmax (x ~ 500 +- 3)", safe_softmax(x), torch.softmax(x, dim=-1), tol=1e-6)


@pytest.mark.parametrize("eps", [1e-5, 1e-6, 0.1])
def test_rmsnorm_matches_torch(eps):
    ours = RMSNorm(16, eps=eps)
    theirs = nn.RMSNorm(16, eps=eps)                       # eps passed explicitly: torch's default differs
    with torch.no_grad():
        ours.weight.copy_(torch.randn(16, generator=_gen(1)))
        theirs.weight.copy_(ours.weight)
    x = torch.randn(3, 5, 16, generator=_gen(2)) * 0.5
    check(f"RMSNorm eps={eps} vs torch.nn.RMSNorm", ours(x), theirs(x))


@pytest.mark.parametrize("eps", [1e-5, 0.1])
def test_layernorm_matches_torch(eps):
    ours = LayerNorm(16, eps=eps)
    theirs = nn.LayerNorm(16, eps=eps)
    with torch.no_grad():
        ours.weight.copy_(torch.randn(16, generator=_gen(1)))
        ours.bias.copy_(torch.randn(16, generator=_gen(2)))
        theirs.weight.copy_(ours.weight)
        theirs.bias.copy_(ours.bias)
    x = torch.randn(3, 5, 16, generator=_gen(3)) * 2 + 1
    check(f"LayerNorm eps={eps} vs torch.nn.LayerNorm", ours(x), theirs(x))


def test_relu_mlp_matches_torch_sequential():
    torch.manual_seed(0)
    ours = MLP(8, 20, bias=True)
    theirs = nn.Sequential(nn.Linear(8, 20), nn.ReLU(), nn.Linear(20, 8))
    with torch.no_grad():
        theirs[0].weight.copy_(ours.w_1.weight)
        theirs[0].bias.copy_(ours.w_1.bias)
        theirs[2].weight.copy_(ours.w_2.weight)
        theirs[2].bias.copy_(ours.w_2.bias)
    x = torch.randn(2, 5, 8, generator=_gen(1))
    check("ReLU MLP vs nn.Sequential(Linear, ReLU, Linear)", ours(x)[0], theirs(x))
