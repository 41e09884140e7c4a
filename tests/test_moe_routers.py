"""Routers: top-k with and without renormalisation, Switch capacity and dropped tokens, noisy
top-k, expert choice, soft MoE, sigmoid scores with a selection bias, the float32 rule."""
import pytest
import torch

from tinymoe import ConfigError, ModelConfig, MoEConfig, Trace
from tinymoe.moe import (MoE, NoisyTopKRouter, SigmoidBiasRouter, TopKRouter, apply_capacity, capacity)


def moe_config(d_model=8, d_ff=12, **moe):
    return ModelConfig(d_model=d_model, d_ff=d_ff, moe=MoEConfig(**moe))


# ---- capacity ---------------------------------------------------------------------------
@pytest.mark.parametrize("tokens, n_experts, factor, expected", [
    (8, 4, 1.0, 2),        # exact
    (10, 4, 1.0, 3),       # 2.5 rounds up
    (9, 4, 1.25, 3),       # 2.8125 rounds up
    (20, 2, 1.1, 11),      # 11.000000000000002 in floats; exactly 11
    (10, 1, 3.0, 10),      # never more seats than tokens: a huge factor is dropless
    (3, 8, 1.0, 1),        # fewer tokens than experts: still one seat
    (0, 4, 1.0, 0),
])
def test_capacity_rounds_up(tokens, n_experts, factor, expected):
    got = capacity(tokens, n_experts, factor)
    assert got == expected, f"capacity({tokens}, {n_experts}, {factor}) = {got}, expected ceil(...) = {expected}"


def test_first_choices_are_seated_before_second_choices():
    # token 0 wants (e0, e1), token 1 wants (e1, e0); one seat each: both first choices win
    expert_ids = torch.tensor([[0, 1], [1, 0]])
    ids, gates, dropped = apply_capacity(expert_ids, torch.ones(2, 2), n_experts=2, expert_capacity=1)
    assert dropped.tolist() == [[False, True], [False, True]], f"dropped {dropped.tolist()}"
    assert ids.tolist() == [[0, -1], [1, -1]] and gates.tolist() == [[1.0, 0.0], [1.0, 0.0]]


def test_switch_drops_overflow_in_token_order_and_gives_zero_output():
    config = moe_config(n_experts=2, top_k=1, router="switch", capacity_factor=1.0)
    moe = MoE(config)
    with torch.no_grad():
        moe.router.weight.zero_()
        moe.router.weight[0, 0] = 10.0                                      # feature 0 votes for expert 0
    x = torch.randn(1, 6, 8)
    x[..., 0] = torch.tensor([1.0, 2.0, 0.5, 3.0, -1.0, 1.5])             # tokens 0,1,2,3,5 want expert 0
    trace_ = Trace()
    out, _ = moe(x, trace_)
    assert int(trace_["moe.capacity"]) == 3, f"capacity {int(trace_['moe.capacity'])}, expected ceil(1.0*6/2) = 3"
    assert trace_["moe.dropped"][:, 0].tolist() == [False, False, False, True, False, True], \
        f"dropped {trace_['moe.dropped'][:, 0].tolist()}: tokens 3 and 5 arrive after expert 0 is full"
    assert trace_["moe.expert_load"].tolist() == [3, 1]
    dropped_out = out[0, [3, 5]].abs().max().item()
    assert dropped_out == 0.0, f"dropped tokens' MoE output is {dropped_out:.3e}, not 0"
    assert out[0, [0, 1, 2, 4]].abs().min(dim=-1).values.gt(0).all(), "kept tokens should have an output"


# ---- softmax top-k ----------------------------------------------------------------------
def test_renormalised_gates_sum_to_one_and_raw_gates_are_the_softmax():
    torch.manual_seed(0)
    x = torch.randn(20, 8)
    renorm = TopKRouter(8, 5, top_k=2, renormalize=True)
    raw = TopKRouter(8, 5, top_k=2, renormalize=False)
    raw.load_state_dict(renorm.state_dict())
    a, b = renorm(x), raw(x)
    assert torch.equal(a.expert_ids, b.expert_ids), "renormalising must not change which experts are chosen"
    err = (a.gates.sum(-1) - 1).abs().max().item()
    assert err < 1e-6, f"renormalised gates sum to 1 within {err:.1e}"
    err = (b.gates - b.probs.gather(-1, b.expert_ids)).abs().max().item()
    assert err == 0, f"raw gates differ from the softmax probabilities by {err:.1e}"
    assert (b.gates.sum(-1) < 1).all(), "raw top-2 of 5 gates should sum to less than 1"
    top = a.probs.topk(2, dim=-1).indices
    assert torch.equal(a.expert_ids, top), "expert_ids should be the top-2 of the probabilities"


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_router_computes_in_float32_whatever_the_input_dtype(dtype):
    moe = MoE(moe_config(n_experts=4, top_k=2)).to(dtype)
    trace_ = Trace()
    out, losses = moe(torch.randn(2, 5, 8).to(dtype), trace_)
    for name in ("router_logits", "router_probs", "gates"):
        assert trace_[f"moe.{name}"].dtype == torch.float32, f"moe.{name} is {trace_[f'moe.{name}'].dtype}"
    assert out.dtype == dtype, f"the layer output should keep the input dtype {dtype}, got {out.dtype}"
    assert all(v.dtype == torch.float32 for v in losses.values())


def test_float16_router_overflows_where_float32_does_not():
    logits = {}
    for fp32 in (True, False):
        moe = MoE(moe_config(n_experts=4, top_k=2, router_fp32=fp32)).half()
        with torch.no_grad():
            moe.router.weight.fill_(100.0)
        trace_ = Trace()
        moe(torch.full((1, 3, 8), 100.0, dtype=torch.float16), trace_)     # logits 8 * 100 * 100 = 80000 > 65504
        logits[fp32] = trace_["moe.router_logits"]
    assert logits[False].dtype == torch.float16 and torch.isinf(logits[False]).all(), \
        "with router_fp32=False the float16 logits should overflow to inf"
    assert torch.isfinite(logits[True]).all() and logits[True].max().item() == 80000.0, \
        f"float32 logits should be exactly 80000, got {logits[True].max().item()}"


def test_token_choice_output_of_a_token_ignores_later_tokens():
    torch.manual_seed(0)
    moe = MoE(moe_config(n_experts=4, top_k=2))
    x = torch.randn(1, 6, 8)
    y = x.clone()
    y[0, -1] = 5 * torch.randn(8)
    diff = (moe(x)[0][0, :-1] - moe(y)[0][0, :-1]).abs().max().item()
    # Not bit-exact: an expert's matmul over a different number of rows may round differently.
    assert diff < 1e-6, f"changing the last token changed earlier outputs by {diff:.2e}"


# ---- noisy top-k ------------------------------------------------------------------------
def test_noisy_top_k_adds_noise_in_training_only():
    torch.manual_seed(0)
    noisy = NoisyTopKRouter(8, 4, top_k=2)
    plain = TopKRouter(8, 4, top_k=2)
    plain.weight.data.copy_(noisy.weight.data)
    x = torch.randn(50, 8)
    noisy.eval()
    a, b = noisy(x), plain(x)
    assert torch.equal(a.expert_ids, b.expert_ids) and torch.equal(a.gates, b.gates), \
        "in eval mode noisy top-k must equal plain top-k"
    noisy.train()
    c = noisy(x)
    moved = (c.logits - b.logits).abs().mean().item()
    assert moved > 0.1, f"training logits moved by only {moved:.3f} on average"
    assert torch.allclose(c.extra["noise_std"], torch.nn.functional.softplus(torch.zeros(())).expand(50, 4)), \
        "with W_noise = 0 the noise std is softplus(0) = 0.693 everywhere"
    c.gates.sum().backward()
    assert noisy.noise_weight.grad is not None and noisy.noise_weight.grad.abs().sum() > 0, \
        "the noise scale W_noise must be learned (it got no gradient)"


# ---- expert choice ----------------------------------------------------------------------
def test_expert_choice_gives_every_expert_exactly_its_capacity():
    torch.manual_seed(0)
    moe = MoE(moe_config(n_experts=4, router="expert_choice", capacity_factor=1.5))
    trace_ = Trace()
    moe(torch.randn(2, 5, 8), trace_)
    c = int(trace_["moe.capacity"])
    assert c == 4, f"capacity {c}, expected ceil(1.5 * 10 / 4) = 4"
    assert trace_["moe.expert_load"].tolist() == [4, 4, 4, 4]
    ids = trace_["moe.expert_ids"]
    assert ids.shape == (10, 4) and ((ids == torch.arange(4)) | (ids == -1)).all(), \
        "slot e holds expert e or -1"


def test_expert_choice_peeks_at_later_tokens():
    # Two experts read feature 0 with opposite signs; c = 2 tokens each from T = 4.
    moe = MoE(moe_config(n_experts=2, router="expert_choice", capacity_factor=1.0))
    with torch.no_grad():
        moe.router.weight.zero_()
        moe.router.weight[0, 0], moe.router.weight[1, 0] = 1.0, -1.0
    x = torch.randn(1, 4, 8)
    x[0, :, 0] = torch.tensor([0.5, 1.0, 1.5, -2.5])
    y = x.clone()
    y[0, 3, 0] = 5.0                                                        # only the LAST token changes
    trace_x, trace_y = Trace(), Trace()
    out_x, _ = moe(x, trace_x)
    out_y, _ = moe(y, trace_y)
    assert trace_x["moe.expert_ids"][1].tolist() == [0, -1] and trace_y["moe.expert_ids"][1].tolist() == [-1, 1], \
        "token 1 should lose expert 0 to the new last token and be taken by expert 1"
    earlier = (out_x[0, :3] - out_y[0, :3]).abs().max().item()
    assert earlier > 1e-3, f"changing a later token should change an earlier output; it changed by {earlier:.1e}"


# ---- soft MoE ---------------------------------------------------------------------------
def test_soft_moe_slots_are_mixes_of_tokens_and_peek_at_later_tokens():
    torch.manual_seed(0)
    moe = MoE(moe_config(n_experts=3, router="soft", slots_per_expert=2))
    trace_ = Trace()
    x = torch.randn(2, 5, 8)
    out, losses = moe(x, trace_)
    dispatch, combine = trace_["moe.dispatch_weights"], trace_["moe.combine_weights"]
    assert dispatch.shape == combine.shape == (2, 5, 6), f"weights {tuple(dispatch.shape)}, expected (B, T, S=3*2)"
    err_d = (dispatch.sum(dim=1) - 1).abs().max().item()
    err_c = (combine.sum(dim=-1) - 1).abs().max().item()
    assert err_d < 1e-6 and err_c < 1e-6, f"dispatch columns / combine rows sum to 1 within {err_d:.1e} / {err_c:.1e}"
    slots = torch.einsum("bts,btd->bsd", dispatch, x)
    err = (trace_["moe.slots"] - slots).abs().max().item()
    assert err < 1e-5, f"slots differ from D^T x by {err:.1e}"
    assert all(v.item() == 0 for v in losses.values()), "soft MoE has no routing loss"
    y = x.clone()
    y[:, -1] += 1.0
    earlier = (moe(y)[0][:, :-1] - out[:, :-1]).abs().max().item()
    assert earlier > 1e-4, f"changing the last token should change earlier outputs; changed by {earlier:.1e}"


# ---- sigmoid scores with a selection bias -----------------------------------------------
def test_selection_bias_changes_the_choice_but_not_the_gates():
    torch.manual_seed(0)
    router = SigmoidBiasRouter(8, 4, top_k=2)
    x = torch.randn(30, 8)
    router.selection_bias[3] = 10.0                                         # expert 3 wins every selection
    routing = router(x)
    assert (routing.expert_ids == 3).any(dim=-1).all(), "every token should pick expert 3"
    scores = torch.sigmoid(routing.logits)
    expected = scores.gather(-1, routing.expert_ids)
    expected = expected / expected.sum(-1, keepdim=True)
    err = (routing.gates - expected).abs().max().item()
    assert err < 1e-6, f"gates must come from the unbiased sigmoid scores; off by {err:.1e}"


def test_update_bias_moves_against_the_load():
    moe = MoE(moe_config(n_experts=4, router="sigmoid_bias", bias_update_rate=0.5))
    bias = moe.update_bias(torch.tensor([10, 0, 5, 5]))
    assert bias.tolist() == [-0.5, 0.5, 0.0, 0.0], f"bias {bias.tolist()}: busy expert down, idle up, average unchanged"
    assert "router.selection_bias" in dict(moe.named_buffers()), "the bias should be a buffer"
    assert "router.selection_bias" not in dict(moe.named_parameters()), "the bias must not be trained"
    moe(torch.randn(1, 6, 8))
    load = moe.last_expert_load.clone()
    before = moe.router.selection_bias.clone()
    moe.update_bias()
    expected = before + 0.5 * torch.sign(load.float().mean() - load.float())
    assert torch.equal(moe.router.selection_bias, expected), "update_bias() should use the latest forward's load"


def test_update_bias_on_another_router_is_a_config_error():
    moe = MoE(moe_config(n_experts=4))
    with pytest.raises(ConfigError, match="sigmoid_bias") as error:
        moe.update_bias(torch.zeros(4))
    assert error.value.field == "moe.router", f"error names field {error.value.field!r}"


# ---- shared experts ---------------------------------------------------------------------
@pytest.mark.parametrize("gated", [False, True])
def test_shared_experts_add_to_the_routed_output_for_every_token(gated):
    torch.manual_seed(0)
    moe = MoE(moe_config(n_experts=4, top_k=1, router="switch", capacity_factor=0.25,
                         n_shared_experts=2, shared_expert_gate=gated))
    trace_ = Trace()
    x = torch.randn(2, 6, 8)
    out, _ = moe(x, trace_)
    assert moe.shared.ffn.w_up.weight.shape == (2 * 12, 8), "two shared experts = one FFN of hidden size 2 * d_ff"
    shared, _ = moe.shared.ffn(x)
    if gated:
        shared = torch.sigmoid(moe.shared.gate(x)) * shared
    err = (out - trace_["moe.routed_out"] - shared).abs().max().item()
    assert err < 1e-6, f"out - routed differs from the shared experts' output by {err:.1e}"
    dropped = trace_["moe.dropped_tokens"].reshape(2, 6)
    assert dropped.any(), "capacity 0.25 should drop tokens"
    err = (out[dropped] - shared[dropped]).abs().max().item()
    assert err < 1e-6, f"a dropped token still gets the shared experts (off by {err:.1e})"
