"""No branch of native sparse attention lets a query see a later token."""
import pytest
import torch

from tinymoe import ModelConfig, SparseAttentionConfig, Trace
from tinymoe.nsa import BRANCHES, NativeSparseAttention


def build(n_local_blocks: int) -> NativeSparseAttention:
    nsa = SparseAttentionConfig(block_size=4, stride=2, select_block_size=4, top_n=3, window=5,
                                n_initial_blocks=1, n_local_blocks=n_local_blocks)
    config = ModelConfig(d_model=8, n_heads=4, n_kv_heads=2, head_dim=4, max_seq_len=32,
                         attention="native_sparse", nsa=nsa)
    torch.manual_seed(0)
    attn = NativeSparseAttention(config).double()
    with torch.no_grad():
        for p in attn.parameters():
            p.normal_(0.0, 0.5)
    return attn


@pytest.mark.parametrize("n_local_blocks", [0, 2])
@pytest.mark.parametrize("changed_from", [1, 6, 13, 22])
def test_changing_a_future_token_never_changes_an_earlier_output(changed_from, n_local_blocks):
    attn = build(n_local_blocks)
    T = 24
    gen = torch.Generator().manual_seed(changed_from)
    x = torch.randn(2, T, 8, dtype=torch.float64, generator=gen)
    x_changed = x.clone()
    x_changed[:, changed_from:] = torch.randn(2, T - changed_from, 8, dtype=torch.float64, generator=gen)
    before, after = Trace(), Trace()
    attn(x, before)
    attn(x_changed, after)
    past = slice(0, changed_from)
    for name in [f"attn.{b}.out" for b in BRANCHES] + ["attn.sel.blocks", "attn.gates"]:
        diff = (before[name][:, :, past].double() - after[name][:, :, past].double()).abs().max().item()
        assert diff == 0, f"{name}: changing tokens from {changed_from} on moved earlier queries by {diff:.3e}"
    diff = (before["attn.out"][:, past] - after["attn.out"][:, past]).abs().max().item()
    assert diff == 0, f"out: changing tokens from {changed_from} on moved earlier queries by {diff:.3e}"
    later = (before["attn.out"][:, changed_from:] - after["attn.out"][:, changed_from:]).abs().max().item()
    assert later > 0, "the change should reach the changed positions (else the test tests nothing)"


def test_no_branch_mask_reaches_a_later_key():
    attn = build(2)
    trace = Trace()
    T = 19
    attn(torch.randn(1, T, 8, dtype=torch.float64), trace)
    future = ~torch.ones(T, T, dtype=torch.bool).tril()
    for branch in ("sel", "win"):
        leaks = (trace[f"attn.{branch}.mask"] & future).sum().item()
        assert leaks == 0, f"{branch}.mask lets queries see {leaks} later keys"
    last_key = torch.arange(trace["attn.cmp.mask"].shape[-1]) * 2 + 4 - 1   # i*d + l - 1
    seen_last = torch.where(trace["attn.cmp.mask"][0, 0], last_key, -1).amax(-1)  # (T,)
    assert (seen_last <= torch.arange(T)).all(), "a compressed block ending after its query was visible"
