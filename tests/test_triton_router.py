"""The router kernel (tinymoe/kernels/router.py) against the PyTorch routers of tinymoe.moe.

Runs in Triton's interpreter on the CPU (TRITON_INTERPRET=1, set here if unset, before Triton is
imported); `TRITON_INTERPRET=0 pytest -m triton` on a GPU machine runs the same tests compiled.
Shapes are tiny on purpose: the interpreter executes every program in numpy.
"""
import os

os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest  # noqa: E402
import torch  # noqa: E402

from tinymoe.kernels import interpreted, triton_route  # noqa: E402
from tinymoe.moe.sigmoid_bias import SigmoidBiasRouter  # noqa: E402
from tinymoe.moe.topk import TopKRouter  # noqa: E402

pytestmark = pytest.mark.triton
DEVICE = "cpu" if interpreted() else "cuda"
D_MODEL, N_EXPERTS = 12, 5


def _router_case(router_cls, n_tokens, top_k, renormalize, seed=0, bias=None):
    torch.manual_seed(seed)
    router = router_cls(D_MODEL, N_EXPERTS, top_k, renormalize).to(DEVICE)
    torch.nn.init.normal_(router.weight)
    if bias is not None:
        router.selection_bias.copy_(bias)
    x = torch.randn(n_tokens, D_MODEL, device=DEVICE)
    with torch.no_grad():
        return router, router(x), router.logits(x)


def _assert_same_routing(ours, theirs, what):
    assert torch.equal(ours.expert_ids.long(), theirs.expert_ids), (
        f"{what}: the kernel chose different experts than PyTorch's top-k\n"
        f"kernel:\n{ours.expert_ids}\npytorch:\n{theirs.expert_ids}")
    err = (ours.weights - theirs.gates).abs().max().item()
    assert err < 1e-6, f"{what}: gate weights differ from PyTorch's by up to {err:.2e} (float32 should agree to 1e-6)"


@pytest.mark.parametrize("n_tokens,top_k,renormalize", [(13, 2, True), (13, 2, False), (1, 2, True),
                                                        (37, 1, False), (6, N_EXPERTS, True)])
def test_softmax_router_matches_topk_router(n_tokens, top_k, renormalize):
    _, theirs, logits = _router_case(TopKRouter, n_tokens, top_k, renormalize)
    ours = triton_route(logits, top_k, renormalize=renormalize)
    _assert_same_routing(ours, theirs, f"softmax top-{top_k}, {n_tokens} tokens, renormalize={renormalize}")


def test_sigmoid_router_with_selection_bias_matches_deepseek_router():
    bias = torch.linspace(-0.3, 0.4, N_EXPERTS)                            # large enough to change choices
    router, theirs, logits = _router_case(SigmoidBiasRouter, 13, 2, True, bias=bias)
    unbiased = torch.sigmoid(logits).topk(2).indices
    assert not torch.equal(unbiased, theirs.expert_ids), "test set-up: the bias should change some choice"
    ours = triton_route(logits, 2, score="sigmoid", renormalize=True, bias=router.selection_bias)
    _assert_same_routing(ours, theirs, "sigmoid + selection bias (DeepSeek-V3)")


def test_float16_logits_are_routed_in_float32():
    _, theirs, logits = _router_case(TopKRouter, 13, 2, True)
    half = logits.half()
    ours = triton_route(half, 2)
    expected = torch.softmax(half.float(), dim=-1).topk(2)                 # float32 softmax of the float16 values
    assert torch.equal(ours.expert_ids.long(), expected.indices), "float16 logits: choices differ from float32 top-k"
    assert ours.weights.dtype == torch.float32, f"weights came back {ours.weights.dtype}: the router works in float32"


def test_block_counts_add_up_to_the_expert_load():
    _, theirs, logits = _router_case(TopKRouter, 37, 2, True)
    ours = triton_route(logits, 2, block_tokens=8)                          # 5 blocks, the last one partial
    assert ours.block_counts.shape == (5, N_EXPERTS), f"block_counts shape {tuple(ours.block_counts.shape)}"
    for block in range(5):
        ids = ours.expert_ids[block * 8:(block + 1) * 8].long().flatten()
        expected = torch.bincount(ids, minlength=N_EXPERTS).to(torch.int32)
        assert torch.equal(ours.block_counts[block], expected), (
            f"block {block}: counted {ours.block_counts[block].tolist()}, its ids give {expected.tolist()}")
    assert torch.equal(ours.expert_counts.long(), theirs.expert_load), "total counts differ from the router's expert_load"


def test_ties_go_to_the_lower_expert_index():
    logits = torch.zeros(3, N_EXPERTS, device=DEVICE)                       # every expert equally likely
    ours = triton_route(logits, 2)
    assert ours.expert_ids.tolist() == [[0, 1]] * 3, f"ties broke as {ours.expert_ids.tolist()}, expected lowest index first"
    assert torch.allclose(ours.weights, torch.full_like(ours.weights, 0.5)), "equal scores should give equal weights"


def test_router_rejects_top_k_above_n_experts():
    with pytest.raises(ValueError, match="top_k=6"):
        triton_route(torch.zeros(2, N_EXPERTS), 6)
