"""Degenerate settings of native sparse attention equal dense causal attention."""
import pytest
import torch
from torch.nn import functional as F

from tinymoe import ModelConfig, MultiHeadAttention, SparseAttentionConfig, Trace
from tinymoe.nsa import BRANCHES, NativeSparseAttention

T = 20


def build(**nsa) -> NativeSparseAttention:
    config = ModelConfig(d_model=8, n_heads=4, n_kv_heads=2, head_dim=4, max_seq_len=32,
                         attention="native_sparse", nsa=SparseAttentionConfig(**nsa))
    torch.manual_seed(0)
    attn = NativeSparseAttention(config).double()
    with torch.no_grad():
        for p in attn.parameters():
            p.normal_(0.0, 0.5)
    return attn


def open_only(attn: NativeSparseAttention, branch: str) -> None:
    """Gate `branch` fully open (sigmoid(+1e4) = 1) and the others closed (sigmoid(-1e4) = 0)."""
    with torch.no_grad():
        attn.W_gate.weight.zero_()
        bias = attn.W_gate.bias.view(attn.n_heads, len(BRANCHES))
        bias.fill_(-1e4)
        bias[:, BRANCHES.index(branch)] = 1e4


def dense_twin(attn: NativeSparseAttention, branch: str) -> MultiHeadAttention:
    """Dense causal MultiHeadAttention with the NSA's W_q, W_o and `branch`'s W_k, W_v."""
    mha = MultiHeadAttention(attn.config.replace(attention="dense", nsa=None)).double()
    with torch.no_grad():
        mha.W_q.weight.copy_(attn.W_q.weight)
        mha.W_k.weight.copy_(getattr(attn, f"W_k_{branch}").weight)
        mha.W_v.weight.copy_(getattr(attn, f"W_v_{branch}").weight)
        mha.W_o.weight.copy_(attn.W_o.weight)
    return mha


@pytest.mark.parametrize("branch, nsa", [
    ("win", dict(block_size=4, stride=2, select_block_size=4, top_n=3, window=T)),
    ("win", dict(block_size=4, stride=2, select_block_size=4, top_n=3, window=10 * T)),
    ("sel", dict(block_size=4, stride=2, select_block_size=4, top_n=-(-T // 4), window=2)),
    ("sel", dict(block_size=4, stride=4, select_block_size=8, top_n=16, window=2)),
], ids=["window_equals_seq_len", "window_beyond_seq_len", "top_n_every_block", "top_n_more_than_blocks"])
def test_branch_covering_every_past_key_with_other_gates_closed_equals_dense_causal(branch, nsa):
    attn = build(**nsa)
    open_only(attn, branch)
    x = torch.randn(2, T, 8, dtype=torch.float64, generator=torch.Generator().manual_seed(4))
    trace = Trace()
    out = attn(x, trace)
    expected = dense_twin(attn, branch)(x)
    err = (out - expected).abs().max().item()
    assert err < 1e-12, f"{branch} alone covering every key differs from dense causal MHA by {err:.3e}"
    seen = trace[f"attn.{branch}.mask"][0, 0]
    causal = torch.ones(T, T, dtype=torch.bool).tril()
    assert torch.equal(seen, causal), f"{branch}.mask is not the causal mask in {(seen != causal).sum()} entries"


@pytest.mark.oracle
@pytest.mark.parametrize("branch, nsa", [
    ("win", dict(block_size=4, stride=2, select_block_size=4, top_n=3, window=T)),
    ("sel", dict(block_size=4, stride=2, select_block_size=4, top_n=-(-T // 4), window=2)),
], ids=["window", "selected"])
def test_branch_output_equals_torch_causal_sdpa(branch, nsa):
    attn = build(**nsa)
    x = torch.randn(2, T, 8, dtype=torch.float64, generator=torch.Generator().manual_seed(5))
    trace = Trace()
    attn(x, trace)
    q, k, v = trace["attn.q_rot"], trace[f"attn.{branch}.k_rot"], trace[f"attn.{branch}.v"]
    expected = F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=True)
    err = (trace[f"attn.{branch}.out"] - expected).abs().max().item()
    assert err < 1e-12, f"{branch}.out differs from torch's causal SDPA by {err:.3e}"
