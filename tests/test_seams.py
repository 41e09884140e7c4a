"""The seams between modules: one shape for every router, one home for every formula.

Every router is built from the config and returns the same `Routing`, with its own auxiliary
losses; a dense feed-forward returns what an MoE returns; the gate matrix, the causal mask and
"scope the trace if there is one" each live in one function.
"""
from __future__ import annotations

import pytest
import torch

from tinymoe import ModelConfig, MoEConfig, SwiGLU, MLP, Trace, causal_mask, make_feedforward, scoped
from tinymoe.attention import attention_weights
from tinymoe.moe import MoE, Routing, dispatch_dense, dispatch_loop, make_router, scatter_gates
from tinymoe.moe.layer import ROUTER_CLASSES

ROUTER_SETTINGS = {
    "softmax_topk": dict(top_k=2, capacity_factor=1.0),
    "switch": dict(top_k=1, capacity_factor=1.0),
    "noisy_topk": dict(top_k=2),
    "expert_choice": dict(capacity_factor=1.0),
    "soft": dict(slots_per_expert=2),
    "sigmoid_bias": dict(top_k=2),
    "llama4": dict(top_k=1),
}


@pytest.mark.parametrize("router", ROUTER_SETTINGS)
def test_every_router_is_built_from_the_config_and_returns_one_routing(router):
    config = ModelConfig(d_model=6, d_ff=4, moe=MoEConfig(n_experts=3, router=router, **ROUTER_SETTINGS[router]))
    torch.manual_seed(0)
    built = make_router(config)
    assert type(built) is ROUTER_CLASSES[router] and built.weight.shape[-1] == 6
    x = torch.randn(2, 5, 6)
    routing = built(x)
    assert isinstance(routing, Routing), f"{router} returned {type(routing).__name__}"
    assert set(routing.losses) == {"load_balancing", "z_loss"}, routing.losses.keys()
    assert all(torch.isfinite(v) and v.dim() == 0 for v in routing.losses.values())
    inputs, expert_ids, gates = routing.expert_inputs(x)                      # tokens, slots or scaled copies
    assert inputs.shape == (expert_ids.shape[0], 6) and gates.shape == expert_ids.shape
    assert int(routing.expert_load.sum()) == int((routing.expert_ids >= 0).sum())
    assert routing.combine(torch.zeros_like(inputs), x).shape == x.shape


@pytest.mark.parametrize("router", ROUTER_SETTINGS)
def test_the_layer_returns_each_routers_own_losses_times_their_coefficients(router):
    config = ModelConfig(d_model=6, d_ff=4, moe=MoEConfig(n_experts=3, router=router, aux_loss_coef=0.5,
                                                          z_loss_coef=0.25, **ROUTER_SETTINGS[router]))
    torch.manual_seed(0)
    moe = MoE(config).eval()
    x = torch.randn(2, 5, 6)
    trace = Trace()
    with torch.no_grad():
        _, losses = moe(x, trace)
        routing = moe.router(x)
    torch.testing.assert_close(losses["load_balancing"], 0.5 * routing.losses["load_balancing"])
    torch.testing.assert_close(losses["z_loss"], 0.25 * routing.losses["z_loss"])
    torch.testing.assert_close(trace["moe.z_loss"], routing.losses["z_loss"])


@pytest.mark.parametrize("ffn,d_model", [(SwiGLU(5, 4), 5), (MLP(5, 4), 5),
                                         (make_feedforward(ModelConfig(d_model=6, d_ff=3)), 6)])
def test_a_dense_feed_forward_returns_its_output_and_no_losses_as_the_moe_does(ffn, d_model):
    x = torch.randn(2, 3, d_model)
    out, losses = ffn(x)
    assert out.shape == x.shape and losses == {}


def test_scatter_gates_puts_each_gate_in_its_experts_column():
    ids = torch.tensor([[2, 0], [1, -1], [-1, -1]])
    gates = torch.tensor([[0.7, 0.3], [1.0, 0.0], [0.0, 0.0]])
    expected = torch.tensor([[0.3, 0.0, 0.7], [0.0, 1.0, 0.0], [0.0, 0.0, 0.0]])
    assert torch.equal(scatter_gates(ids, gates, 3), expected)


def test_the_dense_dispatch_built_on_scatter_gates_matches_the_loop():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(7, 4, generator=g)
    ids = torch.randint(-1, 3, (7, 2), generator=g)
    gates = torch.rand(7, 2, generator=g) * (ids >= 0)
    w_gate, w_up = torch.randn(3, 5, 4, generator=g), torch.randn(3, 5, 4, generator=g)
    w_down = torch.randn(3, 4, 5, generator=g)
    for gate in (w_gate, None):                                              # SwiGLU and ReLU experts
        torch.testing.assert_close(dispatch_dense(x, ids, gates, gate, w_up, w_down),
                                   dispatch_loop(x, ids, gates, gate, w_up, w_down))


def test_one_causal_mask_for_full_and_decoding_queries():
    assert torch.equal(causal_mask(4), torch.ones(4, 4, dtype=torch.bool).tril())
    # 2 queries that are the last 2 of 5 positions see keys up to 3 and 4.
    assert causal_mask(2, n_keys=5).tolist() == [[True, True, True, True, False], [True] * 5]
    q, k = torch.randn(2, 3), torch.randn(5, 3)
    weights = attention_weights(q, k, causal=True)
    assert torch.equal(weights > 0, causal_mask(2, n_keys=5)), "attention_weights(causal=True) uses causal_mask"


def test_scoped_records_under_the_name_and_is_none_without_a_trace():
    assert scoped(None, "attn") is None
    trace = Trace()
    inner = scoped(trace, "layers.0")
    inner.add("x", torch.zeros(1))
    assert list(trace.keys()) == ["layers.0.x"]
