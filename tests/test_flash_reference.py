"""tinymoe.flash against torch's scaled_dot_product_attention (values and gradients) for every mask
kind, and the online softmax's own promises (exact over any tiling, states merge, nothing T_q x T_k
is saved for the backward). The masks handed to torch are built here from the definitions, not by
tinymoe.flash.MaskRule; the bottom-right convention is checked against torch's causal_lower_right."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch.nn.attention.bias import causal_lower_right

import oracle_check
from tinymoe.flash import (FULL, PARTIAL, SKIP, MaskRule, empty_state, finish, flash_attention, merge, tile_map,
                           update)

# kind: (n_heads, n_kv_heads, T_q, T_k, causal, window, chunk_size)
CASES = {
    "dense": (2, 2, 11, 11, False, None, None),
    "causal": (2, 2, 11, 11, True, None, None),
    "causal GQA (4 query heads, 2 kv heads)": (4, 2, 11, 11, True, None, None),
    "causal, 5 queries after 13 keys (bottom-right)": (2, 1, 5, 13, True, None, None),
    "sliding window 4": (2, 1, 13, 13, True, 4, None),
    "chunked, chunks of 4 (Llama 4 local layers)": (2, 2, 13, 13, True, None, 4),
    "chunked, 3 queries after 14 keys": (2, 2, 3, 14, True, None, 4),
    "dense, 1 query after 9 keys (decoding)": (3, 1, 1, 9, False, None, None),
}


def allowed_by_definition(t_q, t_k, causal, window, chunk):
    """(T_q, T_k) bool, cell by cell from the definitions: query i sits at position i + T_k - T_q."""
    mask = torch.ones(t_q, t_k, dtype=torch.bool)
    for i in range(t_q):
        p = i + t_k - t_q
        for j in range(t_k):
            if causal and j > p:
                mask[i, j] = False
            if window is not None and j <= p - window:
                mask[i, j] = False
            if chunk is not None and j // chunk != p // chunk:
                mask[i, j] = False
    return mask


def _inputs(n_heads, n_kv_heads, t_q, t_k, dtype, seed=0, head_dim=5, v_dim=3):
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(2, n_heads, t_q, head_dim, generator=g, dtype=torch.float64).to(dtype).requires_grad_()
    k = torch.randn(2, n_kv_heads, t_k, head_dim, generator=g, dtype=torch.float64).to(dtype).requires_grad_()
    v = torch.randn(2, n_kv_heads, t_k, v_dim, generator=g, dtype=torch.float64).to(dtype).requires_grad_()
    dout = torch.randn(2, n_heads, t_q, v_dim, generator=g, dtype=torch.float64).to(dtype)
    return q, k, v, dout


def _values_and_grads(fn, q, k, v, dout):
    out = fn(q, k, v)
    return (out, *torch.autograd.grad(out, (q, k, v), dout))


@pytest.mark.oracle
@pytest.mark.parametrize("dtype, tol", [(torch.float64, 1e-12), (torch.float32, 2e-6)], ids=["float64", "float32"])
@pytest.mark.parametrize("kind", list(CASES))
def test_reference_equals_sdpa_in_values_and_gradients(kind, dtype, tol):
    n_heads, n_kv_heads, t_q, t_k, causal, window, chunk = CASES[kind]
    q, k, v, dout = _inputs(n_heads, n_kv_heads, t_q, t_k, dtype)
    mask = allowed_by_definition(t_q, t_k, causal, window, chunk)
    ours = _values_and_grads(lambda q, k, v: flash_attention(q, k, v, causal=causal, window=window, chunk_size=chunk,
                                                             block_q=4, block_k=3), q, k, v, dout)
    theirs = _values_and_grads(lambda q, k, v: F.scaled_dot_product_attention(q, k, v, attn_mask=mask, enable_gqa=True),
                               q, k, v, dout)
    for name, a, b in zip(("out", "dq", "dk", "dv"), ours, theirs):
        oracle_check.check(f"flash reference {name} ({kind}, {str(dtype)[6:]})", a, b, tol, against="torch SDPA")


@pytest.mark.oracle
def test_bottom_right_alignment_is_torchs_causal_lower_right():
    q, k, v, dout = _inputs(2, 2, 4, 10, torch.float64)
    ours = _values_and_grads(lambda q, k, v: flash_attention(q, k, v, causal=True, block_q=2, block_k=4), q, k, v, dout)
    theirs = _values_and_grads(lambda q, k, v: F.scaled_dot_product_attention(q, k, v, attn_mask=causal_lower_right(4, 10)),
                               q, k, v, dout)
    for name, a, b in zip(("out", "dq", "dk", "dv"), ours, theirs):
        oracle_check.check(f"flash reference {name} vs causal_lower_right", a, b, 1e-12, against="causal_lower_right")
    top_left = F.scaled_dot_product_attention(q, k, v, is_causal=True)      # SDPA's is_causal aligns top-left
    assert (ours[0] - top_left).abs().max() > 0.1, "bottom-right and top-left alignment should differ with T_q < T_k"


def test_result_does_not_depend_on_the_tile_sizes():
    q, k, v, dout = _inputs(2, 1, 9, 9, torch.float64)
    runs = [_values_and_grads(lambda q, k, v: flash_attention(q, k, v, causal=True, window=5, block_q=bq, block_k=bk),
                              q, k, v, dout) for bq, bk in ((1, 1), (2, 3), (4, 4), (9, 9), (64, 64))]
    for bq_bk, run in zip(((2, 3), (4, 4), (9, 9), (64, 64)), runs[1:]):
        for name, a, b in zip(("out", "dq", "dk", "dv"), run, runs[0]):
            err = (a - b).abs().max().item()
            assert err < 1e-12, f"{name} with tiles {bq_bk} differs from tiles (1, 1) by {err:.2e}"


def test_a_query_that_sees_no_key_gets_zeros_and_zero_gradients():
    q, k, v, dout = _inputs(1, 1, 6, 4, torch.float64)       # 6 queries, 4 keys, causal: rows 0 and 1 see nothing
    out, dq, dk, dv = _values_and_grads(lambda q, k, v: flash_attention(q, k, v, causal=True, block_q=4, block_k=2),
                                        q, k, v, dout)
    assert torch.isfinite(out).all() and torch.isfinite(dq).all() and torch.isfinite(dk).all()
    assert out[:, :, :2].abs().max() == 0, "queries before the first key should output zeros"
    assert dq[:, :, :2].abs().max() == 0, "queries before the first key should get zero gradients"
    torch.testing.assert_close(out[:, :, 2:], F.scaled_dot_product_attention(q[:, :, 2:], k, v, is_causal=True),
                               msg="the rows that see keys should be ordinary causal attention")


def test_backward_saves_only_inputs_output_and_lse():
    """FlashAttention-2's memory promise: nothing of size T_q x T_k is kept for the backward."""
    q, k, v, _ = _inputs(2, 2, 32, 32, torch.float32)
    saved = []
    with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(tuple(t.shape)) or t, lambda t: t):
        flash_attention(q, k, v, causal=True, block_q=8, block_k=8)
    assert sorted(saved) == sorted([(2, 2, 32, 5), (2, 2, 32, 5), (2, 2, 32, 3), (2, 2, 32, 3), (2, 2, 32)]), (
        f"saved for backward: {saved}; expected q, k, v, the output and the per-row lse only")


def test_online_softmax_over_tiles_equals_softmax_attention():
    g = torch.Generator().manual_seed(1)
    scores, v = torch.randn(3, 10, generator=g, dtype=torch.float64) * 4, torch.randn(10, 2, generator=g, dtype=torch.float64)
    state = empty_state((3,), 2, dtype=torch.float64)
    for start in range(0, 10, 3):
        state = update(state, scores[:, start:start + 3], v[start:start + 3])
    out, lse = finish(state)
    torch.testing.assert_close(out, torch.softmax(scores, -1) @ v, rtol=0, atol=1e-12)
    torch.testing.assert_close(lse, torch.logsumexp(scores, -1), rtol=0, atol=1e-12)
    left = update(empty_state((3,), 2, dtype=torch.float64), scores[:, :4], v[:4])
    right = update(empty_state((3,), 2, dtype=torch.float64), scores[:, 4:], v[4:])
    for merged in (merge(left, right), merge(right, left), merge(merge(left, empty_state((3,), 2, torch.float64)), right)):
        for a, b in zip(merged, state):
            torch.testing.assert_close(a, b, rtol=0, atol=1e-12)


def test_tile_map_skips_exactly_the_tiles_with_no_allowed_pair():
    for rule in (MaskRule(), MaskRule(causal=True), MaskRule(causal=True, window=5), MaskRule(causal=True, chunk_size=6),
                 MaskRule(chunk_size=4)):
        for t_q, t_k, bq, bk in ((13, 13, 4, 4), (5, 17, 2, 3), (16, 16, 8, 4)):
            tiles = tile_map(rule, t_q, t_k, bq, bk)
            allowed = allowed_by_definition(t_q, t_k, rule.causal, rule.window, rule.chunk_size)
            for i in range(tiles.shape[0]):
                for j in range(tiles.shape[1]):
                    block = allowed[i * bq:(i + 1) * bq, j * bk:(j + 1) * bk]
                    want = FULL if block.all() else PARTIAL if block.any() else SKIP
                    assert tiles[i, j] == want, f"{rule.kind}, T=({t_q},{t_k}), tiles ({bq},{bk}): tile {(i, j)} " \
                                                f"is {int(tiles[i, j])}, expected {want}"
    causal = tile_map(MaskRule(causal=True), 64, 64, 16, 16)
    assert int((causal == SKIP).sum()) == 6 and int((causal == PARTIAL).sum()) == 4, "4x4 causal tiles: 6 skipped, 4 diagonal"


@pytest.mark.parametrize("call, words", [
    (lambda q, k, v: flash_attention(q[0], k, v), "4 dimensions"),
    (lambda q, k, v: flash_attention(q, k[..., :2], v), "head_dim"),
    (lambda q, k, v: flash_attention(q, k, v, window=3), "causal=True"),
    (lambda q, k, v: flash_attention(q, k, v, causal=True, chunk_size=0), "chunk_size"),
    (lambda q, k, v: flash_attention(q, k, v, block_q=0), "block_q"),
    (lambda q, k, v: flash_attention(q, torch.cat([k, k, k], 1), torch.cat([v, v, v], 1)), "whole group"),
])
def test_bad_input_names_the_argument(call, words):
    q, k, v, _ = _inputs(2, 2, 4, 4, torch.float32)
    with pytest.raises(ValueError, match=words):
        call(q, k, v)
