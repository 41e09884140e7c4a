"""The Triton flash-attention kernels (in the interpreter without a GPU) against the PyTorch reference
tinymoe.flash.flash_attention, values and gradients, for every mask kind; plus the known trap of the
widely copied Triton tutorial (its backward assumes the causal mask)."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from tinymoe.flash import flash_attention
from tinymoe.kernels.flash_attention import triton_flash_attention
from triton_check import assert_close

pytestmark = pytest.mark.triton

TOLERANCE = {torch.float32: 1e-5, torch.float16: 2e-2}

# kind: (n_heads, n_kv_heads, T_q, T_k, causal, window, chunk_size). Lengths not multiples of 16 (the
# tile), head_dim 5 and v_dim 3 (padded to 16 inside the kernels).
CASES = {
    "dense": (2, 2, 37, 37, False, None, None),
    "causal": (2, 2, 37, 37, True, None, None),
    "causal GQA (4 query heads, 2 kv heads)": (4, 2, 21, 21, True, None, None),
    "causal, 7 queries after 40 keys (bottom-right)": (2, 1, 7, 40, True, None, None),
    "sliding window 6": (2, 1, 45, 45, True, 6, None),
    "chunked, chunks of 8": (2, 2, 37, 37, True, None, 8),
    "chunked, 5 queries after 40 keys": (2, 2, 5, 40, True, None, 16),
    "dense GQA, 1 query after 33 keys (decoding)": (4, 1, 1, 33, False, None, None),
    "bidirectional chunks of 8, 20 queries over 12 keys": (1, 1, 20, 12, False, None, 8),
}


def _inputs(n_heads, n_kv_heads, t_q, t_k, dtype, seed=0, head_dim=5, v_dim=3):
    g = torch.Generator().manual_seed(seed)
    make = lambda *shape: torch.randn(*shape, generator=g).to(dtype).requires_grad_()   # noqa: E731
    q, k, v = make(2, n_heads, t_q, head_dim), make(2, n_kv_heads, t_k, head_dim), make(2, n_kv_heads, t_k, v_dim)
    return q, k, v, torch.randn(2, n_heads, t_q, v_dim, generator=g).to(dtype)


def _values_and_grads(fn, q, k, v, dout):
    out = fn(q, k, v)
    return (out, *torch.autograd.grad(out, (q, k, v), dout))


# Every mask kind in float32; float16 on two of them (the interpreter is slow).
RUNS = [(kind, torch.float32) for kind in CASES] + [("causal", torch.float16), ("chunked, chunks of 8", torch.float16)]


@pytest.mark.parametrize("kind, dtype", RUNS, ids=[f"{k}-{str(d)[6:]}" for k, d in RUNS])
def test_triton_kernel_equals_the_reference_in_values_and_gradients(kind, dtype):
    n_heads, n_kv_heads, t_q, t_k, causal, window, chunk = CASES[kind]
    q, k, v, dout = _inputs(n_heads, n_kv_heads, t_q, t_k, dtype)
    masks = dict(causal=causal, window=window, chunk_size=chunk)
    ours = _values_and_grads(lambda q, k, v: triton_flash_attention(q, k, v, block_m=16, block_n=16, **masks),
                             q, k, v, dout)
    # The reference in float32 from the same (rounded) inputs.
    q32, k32, v32 = (t.detach().float().requires_grad_() for t in (q, k, v))
    reference = _values_and_grads(lambda q, k, v: flash_attention(q, k, v, block_q=8, block_k=8, **masks),
                                  q32, k32, v32, dout.float())
    for name, a, b in zip(("out", "dq", "dk", "dv"), ours, reference):
        assert a.dtype == dtype, f"{name} came back as {a.dtype}, expected {dtype}"
        assert_close(a, b, f"triton {name} ({kind})", dtype, TOLERANCE)


def test_non_causal_backward_sees_keys_on_both_sides_of_the_diagonal():
    """The tutorial's trap: its backward ignores `causal` and always gives the causal gradients
    (triton-lang/triton issues 4541, 5660). Compared here with torch's non-causal SDPA, and the
    causal gradients shown to be far from those (so the test would catch that bug)."""
    q, k, v, dout = _inputs(2, 2, 40, 40, torch.float32, seed=3)
    ours = _values_and_grads(lambda q, k, v: triton_flash_attention(q, k, v, block_m=16, block_n=16), q, k, v, dout)
    sdpa = _values_and_grads(lambda q, k, v: F.scaled_dot_product_attention(q, k, v), q, k, v, dout)
    causal = _values_and_grads(lambda q, k, v: F.scaled_dot_product_attention(q, k, v, is_causal=True), q, k, v, dout)
    for name, a, b, c in zip(("out", "dq", "dk", "dv"), ours, sdpa, causal):
        assert_close(a, b, f"non-causal triton {name} vs SDPA", torch.float32, TOLERANCE)
        gap = (b - c).abs().max().item()
        assert gap > 0.1, f"{name}: causal and non-causal differ by only {gap:.3g}; the test could not catch the trap"


@pytest.mark.parametrize("kwargs, words", [
    (dict(block_m=8), "power of two >= 16"),
    (dict(block_n=24), "power of two >= 16"),
    (dict(window=4), "causal=True"),
])
def test_bad_settings_are_refused_with_the_rule(kwargs, words):
    q, k, v, _ = _inputs(1, 1, 4, 4, torch.float32)
    with pytest.raises(ValueError, match=words):
        triton_flash_attention(q, k, v, **kwargs)


def test_float64_is_refused_with_the_reference_named():
    q, k, v, _ = _inputs(1, 1, 4, 4, torch.float64)
    with pytest.raises(ValueError, match="tinymoe.flash.flash_attention"):
        triton_flash_attention(q, k, v)
