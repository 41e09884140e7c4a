"""No input, dtype or careless call ends in a bare traceback or a NaN.

Three parts: half precision (float16 / bfloat16 where the numbers overflow or round to zero),
float64 that stays float64 (exact against a float64 reference, and torch.autograd.gradcheck of
attention, RoPE, RMSNorm and the MoE layer), and one test per careless call, each asserting the
error type and that the message names the argument.
"""
from __future__ import annotations

import numpy as np
import pytest
import torch

from tinymoe import (ConfigError, DecoderBlock, LayerNorm, ModelConfig, MoEConfig, MultiHeadAttention, RMSNorm,
                     RotaryEmbedding, SparseAttentionConfig, TinyLM, attention_weights, safe_softmax,
                     scaled_dot_product_attention)
from tinymoe.moe import MoE, dispatch_dense, dispatch_grouped, dispatch_loop, expert_mlp, load_balancing_loss
from tinymoe.moe.sigmoid_bias import SigmoidBiasRouter
from tinymoe.nsa import NativeSparseAttention

HALF = [torch.float16, torch.bfloat16]


# ---- half precision ------------------------------------------------------------------------

@pytest.mark.parametrize("dtype", HALF)
def test_half_precision_attention_survives_scores_up_to_6e4(dtype):
    # q . k = 4 * 250 * 120 = 120000 overflows float16 (65504) before the 1/sqrt(4) brings it to 6e4.
    q = torch.tensor([[250.0] * 4, [-250.0] * 4])
    k = torch.tensor([[120.0] * 4, [119.0] * 4, [-120.0] * 4])
    v = torch.randn(3, 2, generator=torch.Generator().manual_seed(0))
    out, weights = scaled_dot_product_attention(q.to(dtype), k.to(dtype), v.to(dtype))
    ref_out, ref_weights = scaled_dot_product_attention(q.double(), k.double(), v.double())
    assert weights.dtype == dtype and out.dtype == dtype
    assert torch.isfinite(weights).all() and torch.isfinite(out).all(), f"{dtype} attention gave {weights}"
    err = (weights.double() - ref_weights).abs().max()
    assert err < 1e-2, f"{dtype} weights differ from float64 by {err:.3g}"


def test_safe_softmax_of_a_row_holding_inf_shares_the_weight_among_the_infs():
    x = torch.tensor([[float("inf"), 1.0, float("inf"), -3.0], [0.0, 1.0, 2.0, 3.0]])
    p = safe_softmax(x)
    assert not p.isnan().any(), f"NaN from a row holding +inf: {p}"
    torch.testing.assert_close(p[0], torch.tensor([0.5, 0.0, 0.5, 0.0]))
    torch.testing.assert_close(p[1], torch.softmax(x[1], -1))
    assert safe_softmax(torch.full((2, 3), float("inf")), dim=-1).eq(1 / 3).all(), "all +inf: equal shares"


def test_safe_softmax_over_an_empty_axis_is_empty_not_an_index_error():
    assert safe_softmax(torch.empty(3, 0)).shape == (3, 0)


@pytest.mark.parametrize("dtype", HALF)
@pytest.mark.parametrize("norm_cls", [RMSNorm, LayerNorm])
def test_half_precision_norms_compute_their_statistics_in_float32(norm_cls, dtype):
    x = torch.tensor([[300.0, 310.0, 290.0, 305.0], [1e-3, -2e-3, 3e-3, 0.0]])
    norm = norm_cls(4)
    expected = norm(x.to(dtype).float())                                     # float32, on the same rounded input
    got = norm.to(dtype)(x.to(dtype))
    assert got.dtype == dtype
    err = (got.float() - expected).abs().max()
    assert err < 2e-2 * expected.abs().max(), f"{norm_cls.__name__} in {dtype} is off by {err:.3g}: {got}"
    if norm_cls is RMSNorm:                                                  # the example: not zeros
        torch.testing.assert_close(RMSNorm(4).half()(torch.full((1, 4), 300.0).half()).float(), torch.ones(1, 4),
                                   atol=1e-3, rtol=1e-3)


def test_sigmoid_router_gates_survive_scores_that_all_round_to_zero():
    router = SigmoidBiasRouter(d_model=4, n_experts=3, top_k=2)
    with torch.no_grad():
        router.weight.copy_(torch.tensor([[-1.0] * 4, [-1.1] * 4, [-1.2] * 4]) * 50)  # logits below -200
    x = torch.ones(5, 4)
    routing = router(x)
    assert (torch.sigmoid(router.logits(x)) == 0).all(), "test set-up: every score should underflow to 0"
    assert torch.isfinite(routing.gates).all() and torch.isfinite(routing.probs).all(), routing
    torch.testing.assert_close(routing.gates.sum(-1), torch.ones(5))
    torch.testing.assert_close(routing.probs.sum(-1), torch.ones(5))
    assert routing.expert_ids[0].tolist() == [0, 1], "the least negative logits must still win"


def test_half_precision_model_forward_is_finite():
    torch.manual_seed(0)
    config = ModelConfig(d_model=8, n_heads=2, n_layers=2, moe=MoEConfig(n_experts=3, top_k=2))
    model = TinyLM(config).half()
    out = model(torch.randint(0, 32, (2, 6)), targets=torch.randint(0, 32, (2, 6)))
    assert out.logits.dtype == torch.float16 and torch.isfinite(out.logits).all() and torch.isfinite(out.loss)


# ---- float64 means float64 -----------------------------------------------------------------

def _dispatch_problem(dtype):
    g = torch.Generator().manual_seed(0)
    N, k, E, d, f = 9, 2, 4, 6, 5
    ids = torch.stack([torch.randperm(E, generator=g)[:k] for _ in range(N)])
    ids[2, 1] = -1                                                           # an empty slot
    gates = torch.rand(N, k, generator=g, dtype=torch.float64).to(dtype) * (ids >= 0)
    x, w_gate, w_up = (torch.randn(*shape, generator=g, dtype=torch.float64).to(dtype)
                       for shape in ((N, d), (E, f, d), (E, f, d)))
    w_down = torch.randn(E, d, f, generator=g, dtype=torch.float64).to(dtype)
    return x, ids, gates, w_gate, w_up, w_down


@pytest.mark.parametrize("dispatch", [dispatch_loop, dispatch_dense, dispatch_grouped])
def test_float64_dispatch_is_exact_to_float64_rounding(dispatch):
    x, ids, gates, w_gate, w_up, w_down = _dispatch_problem(torch.float64)
    out = dispatch(x, ids, gates, w_gate, w_up, w_down)
    expected = torch.zeros_like(x)
    for n in range(x.shape[0]):
        for j in range(ids.shape[1]):
            e = int(ids[n, j])
            if e >= 0:
                expected[n] += gates[n, j] * expert_mlp(x[n:n + 1], w_gate[e], w_up[e], w_down[e])[0]
    assert out.dtype == torch.float64
    err = (out - expected).abs().max()
    assert err < 1e-12, f"{dispatch.__name__} in float64 is off by {err:.3g} (float32 accumulation gives ~3e-7)"


def test_a_float64_rope_has_float64_tables_not_cast_float32_ones():
    rope = RotaryEmbedding(head_dim=4, max_seq_len=64).double()
    assert rope.cos.dtype == torch.float64
    assert rope.cos[63, 0].item() == np.cos(63.0), "the table must be computed in float64, not cast from float32"
    q = torch.ones(1, 1, 64, 4, dtype=torch.float64)
    q_rot, _ = rope(q, q)
    angle = 63 * 1.0                                                         # position 63, fastest pair (theta_0 = 1)
    expected = np.cos(angle) - np.sin(angle)                                # rotate_half: x1 cos - x2 sin
    assert abs(float(q_rot[0, 0, 63, 0]) - expected) < 1e-14


def test_float64_model_runs_every_layer_in_float64():
    config = ModelConfig(d_model=8, n_heads=2, moe=MoEConfig(n_experts=3, top_k=2), position="sinusoidal")
    from tinymoe import Trace
    trace = Trace()
    model = TinyLM(config).double()
    out = model(torch.randint(0, 32, (1, 5)), trace=trace)
    assert out.logits.dtype == torch.float64
    assert model.pos[7, 0].item() == np.sin(7.0), "the sinusoidal table must be float64, not cast from float32"
    for name in ("layers.0.moe.router_logits", "layers.0.moe.gates", "layers.0.attn.weights", "embed.with_pos"):
        assert trace[name].dtype == torch.float64, f"{name} is {trace[name].dtype} in a float64 model"


def test_gradcheck_attention_in_float64():
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(2, 4, 3, generator=g, dtype=torch.float64, requires_grad=True) for _ in range(3))
    assert torch.autograd.gradcheck(lambda q, k, v: scaled_dot_product_attention(q, k, v, causal=True)[0], (q, k, v))


def test_gradcheck_rope_in_float64():
    rope = RotaryEmbedding(head_dim=4, max_seq_len=8, pairing="interleaved")
    g = torch.Generator().manual_seed(1)
    q = torch.randn(1, 2, 5, 4, generator=g, dtype=torch.float64, requires_grad=True)
    k = torch.randn(1, 1, 5, 4, generator=g, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda q, k: rope(q, k), (q, k))


def test_gradcheck_rmsnorm_in_float64():
    norm = RMSNorm(5).double()
    with torch.no_grad():
        norm.weight.uniform_(0.5, 1.5, generator=torch.Generator().manual_seed(2))
    x = torch.randn(3, 5, generator=torch.Generator().manual_seed(3), dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda x, w: torch.nn.functional.linear(norm(x), torch.eye(5, dtype=w.dtype)) * w,
                                    (x, norm.weight))


@pytest.mark.parametrize("dispatch", ["loop", "dense", "grouped"])
@pytest.mark.parametrize("router", ["softmax_topk", "sigmoid_bias", "expert_choice", "soft"])
def test_gradcheck_moe_layer_in_float64(router, dispatch):
    torch.manual_seed(0)
    extra = dict(capacity_factor=1.0) if router == "expert_choice" else {}
    moe = MoE(ModelConfig(d_model=6, d_ff=5, moe=MoEConfig(n_experts=3, top_k=2, router=router, dispatch=dispatch,
                                                           n_shared_experts=1, **extra))).double()
    x = torch.randn(1, 4, 6, dtype=torch.float64, requires_grad=True)

    def layer(x):
        out, losses = moe(x)
        return (out, *losses.values())

    assert torch.autograd.gradcheck(layer, (x,))


# ---- careless calls: each a clear error naming the argument --------------------------------

@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return TinyLM(ModelConfig(vocab_size=11, d_model=8, n_heads=2, max_seq_len=16))


TOKENS = torch.tensor([[1, 2, 3], [4, 5, 6]])

CARELESS_MODEL_CALLS = {
    "tokens as a list": (lambda m: m([[1, 2, 3]]), TypeError, "tokens must be a torch.Tensor"),
    "tokens as a numpy array": (lambda m: m(np.array([[1, 2, 3]])), TypeError, "tokens must be a torch.Tensor"),
    "tokens as floats": (lambda m: m(TOKENS.float()), TypeError, "tokens has dtype torch.float32"),
    "tokens of one dimension": (lambda m: m(TOKENS[0]), ValueError, r"tokens has shape \(3,\)"),
    "seq_len 0": (lambda m: m(torch.zeros(2, 0, dtype=torch.long)), ValueError, r"tokens has shape \(2, 0\)"),
    "batch 0": (lambda m: m(torch.zeros(0, 3, dtype=torch.long)), ValueError, r"tokens has shape \(0, 3\)"),
    "targets as floats": (lambda m: m(TOKENS, targets=TOKENS.float()), TypeError, "targets has dtype"),
    "targets out of range": (lambda m: m(TOKENS, targets=TOKENS + 10), ValueError, r"targets: token ids must lie in 0\.\.10"),
    "negative targets": (lambda m: m(TOKENS, targets=-TOKENS), ValueError, r"targets: .*or -100"),
    "targets as a list": (lambda m: m(TOKENS, targets=[[1, 2, 3]]), TypeError, "targets must be a torch.Tensor"),
    "targets of the wrong shape": (lambda m: m(TOKENS, targets=TOKENS[:, :2]), ValueError, r"targets has shape \(2, 2\)"),
    "padding mask of floats": (lambda m: m(TOKENS, key_padding_mask=torch.ones(2, 3)), TypeError,
                               "key_padding_mask must be a bool"),
    "padding mask as a list": (lambda m: m(TOKENS, key_padding_mask=[[True] * 3] * 2), TypeError,
                               "key_padding_mask must be a bool"),
    "padding mask of the wrong shape": (lambda m: m(TOKENS, key_padding_mask=torch.ones(2, 4, dtype=torch.bool)),
                                        ValueError, r"key_padding_mask has shape \(2, 4\)"),
    "generate with an empty prompt": (lambda m: m.generate(torch.zeros(1, 0, dtype=torch.long), 2), ValueError,
                                      r"tokens must be .* seq_len >= 1"),
    "generate with a NaN temperature": (lambda m: m.generate(TOKENS, 2, temperature=float("nan")), ValueError,
                                        "temperature=nan"),
    "generate with a string temperature": (lambda m: m.generate(TOKENS, 2, temperature="hot"), ValueError,
                                           "temperature='hot'"),
    "generate with an infinite temperature": (lambda m: m.generate(TOKENS, 2, temperature=float("inf")), ValueError,
                                              "temperature=inf"),
    "generate with a float max_new_tokens": (lambda m: m.generate(TOKENS, 2.0), ValueError, "max_new_tokens=2.0"),
    "generate with a tiny temperature": (lambda m: m.generate(TOKENS, 2, temperature=1e-30), ValueError,
                                         "temperature=1e-30"),
    "generate from a list": (lambda m: m.generate([[1, 2]], 2), ValueError, "tokens must be a"),
}


@pytest.mark.parametrize("call,error,message", CARELESS_MODEL_CALLS.values(), ids=CARELESS_MODEL_CALLS.keys())
def test_a_careless_call_to_the_model_names_the_argument(model, call, error, message):
    with pytest.raises(error, match=message):
        call(model)


def test_targets_of_minus_100_are_left_out_of_the_loss(model):
    targets = TOKENS.clone()
    targets[:, -1] = -100
    assert torch.isfinite(model(TOKENS, targets=targets).loss)


def test_a_non_config_given_to_a_model_is_a_config_error():
    with pytest.raises(ConfigError, match=r"^config='tiny' must be a ModelConfig"):
        TinyLM("tiny")


CONFIG = ModelConfig(d_model=8, n_heads=2, max_seq_len=16)
CARELESS_MODULE_CALLS = {
    "block fed the wrong width": (lambda: DecoderBlock(CONFIG)(torch.randn(1, 3, 6)), ValueError,
                                  r"x has shape \(1, 3, 6\): expected \(batch, seq_len, d_model=8\)"),
    "block fed token ids": (lambda: DecoderBlock(CONFIG)(TOKENS), TypeError, "x must be a floating-point"),
    "attention over zero tokens": (lambda: MultiHeadAttention(CONFIG)(torch.randn(1, 0, 8)), ValueError,
                                   r"x has shape \(1, 0, 8\): batch and seq_len must be at least 1"),
    "attention over zero sequences": (lambda: MultiHeadAttention(CONFIG)(torch.randn(0, 3, 8)), ValueError,
                                      r"x has shape \(0, 3, 8\)"),
    "native sparse attention over zero tokens": (
        lambda: NativeSparseAttention(CONFIG.replace(attention="native_sparse", nsa=SparseAttentionConfig(
            block_size=2, stride=2, select_block_size=2, top_n=3, window=2)))(torch.randn(1, 0, 8)),
        ValueError, r"x has shape \(1, 0, 8\)"),
    "MoE over zero tokens": (lambda: MoE(CONFIG.replace(moe=MoEConfig()))(torch.randn(1, 0, 8)), ValueError,
                             r"x has shape \(1, 0, 8\)"),
    "a mask given as a list": (lambda: attention_weights(torch.randn(3, 4), torch.randn(3, 4), mask=[[True] * 3] * 3),
                               TypeError, "mask must be a boolean torch.Tensor"),
    "a mask of the wrong shape": (lambda: attention_weights(torch.randn(3, 4), torch.randn(5, 4),
                                                            mask=torch.ones(3, 3, dtype=torch.bool)),
                                  ValueError, r"mask has shape \(3, 3\): it must broadcast to the scores"),
    "q given as a list": (lambda: attention_weights([[1.0, 2.0]], torch.randn(3, 2)), TypeError, "q must be a floating-point"),
    "the load-balancing loss of zero tokens": (lambda: load_balancing_loss(torch.empty(0, 3), torch.empty(0, 2,
                                               dtype=torch.long), 3), ValueError, r"expert_ids has shape \(0, 2\)"),
}


@pytest.mark.parametrize("call,error,message", CARELESS_MODULE_CALLS.values(), ids=CARELESS_MODULE_CALLS.keys())
def test_a_careless_call_to_a_module_names_the_argument(call, error, message):
    with pytest.raises(error, match=message):
        call()
