"""qk_products: query-key products per branch vs dense, checked against a count of the masks."""
import pytest
import torch

from tinymoe import ModelConfig, SparseAttentionConfig, Trace
from tinymoe.nsa import BRANCHES, NativeSparseAttention, qk_products

SETTINGS = [
    dict(block_size=4, stride=2, select_block_size=4, top_n=3, window=5),
    dict(block_size=3, stride=3, select_block_size=3, top_n=2, window=4, n_initial_blocks=1, n_local_blocks=1),
    dict(block_size=4, stride=2, select_block_size=8, top_n=4, window=8, n_initial_blocks=1, n_local_blocks=2),
    dict(block_size=5, stride=1, select_block_size=2, top_n=7, window=1, n_initial_blocks=0, n_local_blocks=1),
]


def masks_counted(nsa: SparseAttentionConfig, seq_len: int) -> dict[str, int]:
    """Run the module on random tokens and count, per branch, the keys head 0 of sequence 0 saw."""
    config = ModelConfig(d_model=8, n_heads=2, n_kv_heads=1, head_dim=4, max_seq_len=64,
                         attention="native_sparse", nsa=nsa)
    torch.manual_seed(seq_len)
    trace = Trace()
    NativeSparseAttention(config)(torch.randn(1, seq_len, 8), trace)
    return {b: int(trace[f"attn.{b}.mask"][0, 0].sum()) for b in BRANCHES}


@pytest.mark.parametrize("seq_len", [1, 3, 10, 17, 40])
@pytest.mark.parametrize("setting", range(len(SETTINGS)))
def test_qk_products_equal_a_count_of_the_branch_masks(setting, seq_len):
    nsa = SparseAttentionConfig(**SETTINGS[setting])
    counted = masks_counted(nsa, seq_len)
    counts = qk_products(seq_len, nsa)
    for branch in BRANCHES:
        assert counts[branch] == counted[branch], \
            f"T={seq_len}: qk_products says {counts[branch]} {branch} products, the mask holds {counted[branch]}"
    assert counts["nsa"] == sum(counted.values())
    assert counts["dense"] == seq_len * (seq_len + 1) // 2, "dense causal: 1 + 2 + ... + T products"
    assert counts["saved"] == counts["dense"] - counts["nsa"]


def test_qk_products_by_hand_at_sheet_size():
    # 10 tokens, blocks of 3 (stride 3), selection blocks of 3, top 2, window 4.
    nsa = SparseAttentionConfig(block_size=3, stride=3, select_block_size=3, top_n=2, window=4,
                                n_initial_blocks=1, n_local_blocks=1)
    # cmp: queries 0-1 see 0 blocks, 2-4 see 1, 5-7 see 2, 8-9 see 3
    cmp = 0 * 2 + 1 * 3 + 2 * 3 + 3 * 2
    # sel: block 0 alone for queries 0-2 (1, 2, 3 keys); later: 3 keys of block 0 + own block cut at t
    sel = (1 + 2 + 3) + 3 * 7 + (1 + 2 + 3) * 2 + 1
    # win: min(4, t + 1)
    win = 1 + 2 + 3 + 4 * 7
    counts = qk_products(10, nsa)
    assert (counts["cmp"], counts["sel"], counts["win"]) == (cmp, sel, win), \
        f"got cmp/sel/win {counts['cmp']}/{counts['sel']}/{counts['win']}, by hand {cmp}/{sel}/{win}"
    assert counts["dense"] == 55


def test_qk_products_without_local_blocks_bound_the_data_dependent_count():
    nsa = SparseAttentionConfig(block_size=2, stride=2, select_block_size=4, top_n=2, window=2,
                                n_initial_blocks=0, n_local_blocks=0)
    for seq_len in (5, 16, 23):
        counted = masks_counted(nsa, seq_len)
        bound = qk_products(seq_len, nsa)["sel"]
        assert counted["sel"] <= bound, f"T={seq_len}: {counted['sel']} selected products exceed the bound {bound}"


def test_nsa_share_of_dense_falls_as_the_sequence_grows_at_paper_settings():
    paper = SparseAttentionConfig(block_size=32, stride=16, select_block_size=64, top_n=16, window=512)
    shares = [qk_products(t, paper)["nsa"] / qk_products(t, paper)["dense"] for t in (1024, 8192, 65536)]
    assert shares[0] > shares[1] > shares[2], f"NSA/dense at 1k, 8k, 64k: {shares}"
    assert shares[2] < 0.2, f"at 64k NSA should compute far fewer products than dense; share {shares[2]:.3f}"
