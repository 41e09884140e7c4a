"""NativeSparseAttention equals its naive reference (explicit masks + dense attention)."""
import pytest
import torch

from tinymoe import ModelConfig, SparseAttentionConfig, Trace
from tinymoe.nsa import BRANCHES, NativeSparseAttention, nsa_reference

# Small settings that exercise overlap (stride < block), l' != l, GQA, RoPE and short windows.
CASES = {
    "mha_aligned_blocks": dict(n_heads=2, n_kv_heads=2, position="rope",
                               nsa=dict(block_size=4, stride=4, select_block_size=4, top_n=3, window=3)),
    "gqa_overlapping_blocks": dict(n_heads=4, n_kv_heads=2, position="rope",
                                   nsa=dict(block_size=4, stride=2, select_block_size=6, top_n=3, window=5,
                                            n_initial_blocks=1, n_local_blocks=1)),
    "mqa_no_rope_value_dim": dict(n_heads=4, n_kv_heads=1, position="none", v_head_dim=3,
                                  nsa=dict(block_size=3, stride=1, select_block_size=3, top_n=4, window=2,
                                           n_initial_blocks=0, n_local_blocks=0)),
    "paper_ratios_small": dict(n_heads=4, n_kv_heads=2, position="rope",
                               nsa=dict(block_size=4, stride=2, select_block_size=8, top_n=4, window=8,
                                        n_initial_blocks=1, n_local_blocks=2)),
}


def build(case: str, seed: int = 0) -> NativeSparseAttention:
    spec = dict(CASES[case])
    nsa = SparseAttentionConfig(**spec.pop("nsa"))
    config = ModelConfig(d_model=8, head_dim=4, max_seq_len=64, attention="native_sparse", nsa=nsa, **spec)
    torch.manual_seed(seed)
    attn = NativeSparseAttention(config).double()
    with torch.no_grad():                      # large random weights: every branch and gate matters
        for p in attn.parameters():
            p.normal_(0.0, 0.5)
    return attn


@pytest.mark.parametrize("case", CASES)
def test_module_equals_naive_reference(case):
    attn = build(case)
    x = torch.randn(2, 29, 8, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    out = attn(x)
    ref, _ = nsa_reference(attn, x)
    err = (out - ref).abs().max().item()
    assert err < 1e-12, f"{case}: module and naive reference differ by up to {err:.3e}"


@pytest.mark.parametrize("case", CASES)
def test_traced_masks_equal_reference_masks(case):
    attn = build(case)
    x = torch.randn(2, 29, 8, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    trace = Trace()
    attn(x, trace)
    _, masks = nsa_reference(attn, x)
    for branch in BRANCHES:
        seen = trace[f"attn.{branch}.mask"]
        assert seen.shape == masks[branch].shape, f"{branch}.mask has shape {tuple(seen.shape)}, reference {tuple(masks[branch].shape)}"
        wrong = (seen != masks[branch]).sum().item()
        assert wrong == 0, f"{branch}.mask differs from the reference in {wrong} query-key entries"


def test_module_equals_reference_with_key_padding():
    attn = build("gqa_overlapping_blocks")
    x = torch.randn(3, 21, 8, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
    real = torch.ones(3, 21, dtype=torch.bool)
    real[1, 15:] = False                      # right padding
    real[2, :5] = False                       # left padding: blocks holding it are hidden from cmp
    trace = Trace()
    out = attn(x, trace, key_padding_mask=real)
    ref, masks = nsa_reference(attn, x, key_padding_mask=real)
    err = (out - ref).abs().max().item()
    assert err < 1e-12, f"with padding, module and reference differ by up to {err:.3e}"
    for branch in ("sel", "win"):
        leaked = (trace[f"attn.{branch}.mask"] & ~real[:, None, None, :]).sum().item()
        assert leaked == 0, f"{branch} let {leaked} query-key pairs see a padding key"


def test_sequence_shorter_than_a_block_gives_zero_compressed_output_not_nan():
    attn = build("paper_ratios_small")               # block_size 4
    x = torch.randn(1, 3, 8, dtype=torch.float64)
    trace = Trace()
    out = attn(x, trace)
    assert torch.isfinite(out).all(), "output has NaN/inf when no compressed block exists yet"
    assert trace["attn.cmp.k_compressed"].shape[2] == 0, "3 tokens cannot fill a block of 4"
    assert trace["attn.cmp.out"].abs().max().item() == 0.0, "cmp output should be zero with no block"
    ref, _ = nsa_reference(attn, x)
    assert (out - ref).abs().max().item() < 1e-12


def test_early_queries_get_zero_compressed_output_not_nan():
    attn = build("paper_ratios_small")               # block_size 4: queries 0..2 see no block
    x = torch.randn(2, 12, 8, dtype=torch.float64)
    trace = Trace()
    out = attn(x, trace)
    assert torch.isfinite(out).all(), "output has NaN/inf"
    early = trace["attn.cmp.out"][:, :, :3]
    assert early.abs().max().item() == 0.0, f"queries 0..2 see no compressed block but got |out| up to {early.abs().max():.3e}"
    assert trace["attn.cmp.out"][:, :, 3].abs().max().item() > 0, "query 3 sees block 0 and should have an output"


def test_trace_records_every_branch_with_documented_shapes():
    attn = build("gqa_overlapping_blocks")           # n_heads 4, n_kv_heads 2, l 4, d 2, l' 6, top_n 3
    B, T = 2, 13
    trace = Trace()
    attn(torch.randn(B, T, 8, dtype=torch.float64), trace)
    n_blocks, n_sel = (T - 4) // 2 + 1, -(-T // 6)
    expected = {
        "attn.cmp.mask": (B, 4, T, n_blocks), "attn.cmp.k_compressed": (B, 2, n_blocks, 4),
        "attn.cmp.v_compressed": (B, 2, n_blocks, 4), "attn.cmp.weights": (B, 4, T, n_blocks),
        "attn.sel.block_scores": (B, 2, T, n_sel), "attn.sel.blocks": (B, 2, T, 3),
        "attn.sel.block_mask": (B, 2, T, n_sel), "attn.sel.mask": (B, 4, T, T),
        "attn.win.mask": (B, 4, T, T), "attn.gates": (B, 4, T, 3),
        "attn.cmp.out": (B, 4, T, 4), "attn.sel.out": (B, 4, T, 4), "attn.win.out": (B, 4, T, 4),
        "attn.out": (B, T, 8),
    }
    for name, shape in expected.items():
        assert name in trace, f"{name} was not recorded"
        assert tuple(trace[name].shape) == shape, f"{name} has shape {tuple(trace[name].shape)}, expected {shape}"
    for name in ("attn.W_q", "attn.W_k_cmp", "attn.W_v_sel", "attn.W_k_win", "attn.W_gate", "attn.W_o",
                 "attn.cmp.compress_k.W", "attn.cmp.compress_k.pos"):
        assert trace.role(name) == "weight", f"{name} has role {trace.role(name)!r}, expected 'weight'"


def test_group_shares_its_selected_blocks():
    attn = build("gqa_overlapping_blocks")           # groups of 2 query heads
    trace = Trace()
    attn(torch.randn(1, 25, 8, dtype=torch.float64), trace)
    mask = trace["attn.sel.mask"]                    # (1, 4, T, T)
    for g in range(2):
        differ = (mask[:, 2 * g] != mask[:, 2 * g + 1]).sum().item()
        assert differ == 0, f"query heads of group {g} saw different selected keys in {differ} entries"


def test_gates_are_sigmoids_between_zero_and_one():
    attn = build("mha_aligned_blocks")
    trace = Trace()
    x = torch.randn(2, 9, 8, dtype=torch.float64)
    attn(x, trace)
    g = trace["attn.gates"]
    expected = torch.sigmoid(x @ attn.W_gate.weight.T + attn.W_gate.bias).view(2, 9, 2, 3).transpose(1, 2)
    assert (g - expected).abs().max().item() < 1e-12, "gates are not sigmoid(W_gate x + b_gate) per head and branch"
    assert ((g > 0) & (g < 1)).all(), "a sigmoid gate left (0, 1)"
