"""torch's flex_attention as an outside oracle for the sliding-window and selected-block patterns.

flex_attention runs eagerly on the CPU (unfused: it materialises the scores, fine at this size);
the block mask is built on the CPU with create_block_mask(device="cpu"). The mask_mod functions
here state each pattern in flex's own terms, from the documented conventions.
"""
import warnings

import pytest
import torch

from tinymoe import ModelConfig, SparseAttentionConfig, Trace
from tinymoe.nsa import NativeSparseAttention

flex = pytest.importorskip("torch.nn.attention.flex_attention")

pytestmark = pytest.mark.oracle

T = 37                                        # not a multiple of anything: partial blocks everywhere


def build(**nsa) -> NativeSparseAttention:
    config = ModelConfig(d_model=8, n_heads=4, n_kv_heads=2, head_dim=4, max_seq_len=64,
                         attention="native_sparse", nsa=SparseAttentionConfig(**nsa))
    torch.manual_seed(0)
    return NativeSparseAttention(config)


def run_flex(q, k, v, mask_mod, B, H):
    block_mask = flex.create_block_mask(mask_mod, B, H, T, T, device="cpu")
    with warnings.catch_warnings():           # "called without torch.compile": eager is the point here
        warnings.simplefilter("ignore", UserWarning)
        return flex.flex_attention(q, k, v, block_mask=block_mask, enable_gqa=True)


@pytest.mark.parametrize("window", [1, 4, 16])
def test_window_branch_equals_flex_attention_sliding_window(window):
    attn = build(block_size=4, stride=2, select_block_size=4, top_n=3, window=window)
    trace = Trace()
    attn(torch.randn(2, T, 8), trace)

    def sliding_window(b, h, q_idx, kv_idx):  # the w most recent keys, the query's own included
        return (kv_idx <= q_idx) & (q_idx - kv_idx < window)

    expected = run_flex(trace["attn.q_rot"], trace["attn.win.k_rot"], trace["attn.win.v"], sliding_window, None, None)
    err = (trace["attn.win.out"] - expected).abs().max().item()
    assert err < 1e-5, f"window={window}: win.out differs from flex_attention by {err:.3e}"


@pytest.mark.parametrize("nsa", [
    dict(block_size=4, stride=2, select_block_size=4, top_n=3, window=2),
    dict(block_size=4, stride=4, select_block_size=8, top_n=2, window=2, n_initial_blocks=0, n_local_blocks=1),
    dict(block_size=2, stride=2, select_block_size=6, top_n=3, window=2, n_initial_blocks=0, n_local_blocks=0),
], ids=["l4_d2_sel4", "l4_d4_sel8", "sel6_nothing_forced"])
def test_selected_branch_equals_flex_attention_over_chosen_blocks(nsa):
    attn = build(**nsa)
    trace = Trace()
    attn(torch.randn(2, T, 8), trace)
    chosen = trace["attn.sel.block_mask"]     # (B, n_kv_heads, T, n_sel): the module's choice
    group, l_sel = attn.group_size, nsa["select_block_size"]

    def selected_blocks(b, h, q_idx, kv_idx):  # a key of a chosen block, not after the query
        return chosen[b, h // group, q_idx, kv_idx // l_sel] & (kv_idx <= q_idx)

    expected = run_flex(trace["attn.q_rot"], trace["attn.sel.k_rot"], trace["attn.sel.v"], selected_blocks, 2, 4)
    err = (trace["attn.sel.out"] - expected).abs().max().item()
    assert err < 1e-5, f"sel.out differs from flex_attention over the chosen blocks by {err:.3e}"
    per_query = chosen.sum(-1)
    n_sel = chosen.shape[-1]
    begun = torch.arange(T) // l_sel + 1
    expected_count = torch.clamp(begun, max=min(nsa["top_n"], n_sel))
    assert torch.equal(per_query, expected_count.expand_as(per_query)), \
        "each query should choose min(top_n, blocks begun) blocks"
