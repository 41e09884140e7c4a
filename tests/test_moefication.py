"""MoEfication: a dense SwiGLU split into experts is exactly the dense MLP with every expert on;
routing to k of them, regrouping and the learned router behave as documented."""
from __future__ import annotations

import pytest
import torch

from tinymoe import ModelConfig, TinyLM
from tinymoe.feedforward import SwiGLU
from tinymoe import moefication as mf


@pytest.fixture
def ffn():
    torch.manual_seed(0)
    return SwiGLU(12, 24)


def test_every_expert_on_equals_the_dense_mlp(ffn):
    x = torch.randn(2, 5, 12)
    moe = mf.MoEfiedSwiGLU(ffn, mf.contiguous_groups(24, 4))
    out, aux = moe(x)
    torch.testing.assert_close(out, ffn(x)[0], atol=1e-6, rtol=1e-6)
    assert aux == {}, f"no auxiliary loss outside training, got {aux}"


def test_regrouping_keeps_the_layer_exact_and_the_groups_a_partition(ffn):
    x = torch.randn(3, 12)
    hidden = torch.randn(64, 24)
    groups = mf.coactivation_groups(hidden, 4)
    assert groups.shape == (4, 6)
    assert torch.equal(groups.flatten().sort().values, torch.arange(24)), "every neuron in exactly one expert"
    moe = mf.MoEfiedSwiGLU(ffn, mf.contiguous_groups(24, 4)).regroup(groups)
    torch.testing.assert_close(moe(x)[0], ffn(x)[0], atol=1e-6, rtol=1e-6)
    assert torch.equal(moe.groups, groups)


def test_coactivation_puts_neurons_that_fire_together_in_one_expert():
    # neurons 0-5 fire on the first half of the tokens, 6-11 on the second half
    hidden = torch.zeros(40, 12)
    hidden[:20, :6] = torch.rand(20, 6) + 1
    hidden[20:, 6:] = torch.rand(20, 6) + 1
    groups = mf.coactivation_groups(hidden, 2)
    assert sorted(map(sorted, groups.tolist())) == [list(range(6)), list(range(6, 12))], groups


def test_oracle_router_keeps_the_experts_with_the_largest_outputs(ffn):
    x = torch.randn(7, 12)
    moe = mf.MoEfiedSwiGLU(ffn, mf.contiguous_groups(24, 4), top_k=2, router="oracle")
    outputs = moe.expert_outputs(x)                                  # (7, 4, 12)
    keep = outputs.norm(dim=-1).topk(2, dim=-1).indices
    expected = torch.stack([outputs[i, keep[i]].sum(0) for i in range(7)])
    torch.testing.assert_close(moe(x)[0], expected)


def test_learned_router_gets_a_bce_loss_while_training_and_picks_top_k_by_its_logits(ffn):
    x = torch.randn(6, 12)
    moe = mf.MoEfiedSwiGLU(ffn, mf.contiguous_groups(24, 4), top_k=1, router="learned").train()
    _, aux = moe(x)
    assert set(aux) == {"router_bce"} and aux["router_bce"].requires_grad
    aux["router_bce"].backward()
    assert moe.router.weight.grad is not None and moe.router.weight.grad.abs().sum() > 0
    with torch.no_grad():
        moe.router.weight.normal_()
        out, aux = moe.eval()(x)
        pick = moe.router(x).argmax(-1)                               # top-1 by the router's own logits
        expected = moe.expert_outputs(x)[torch.arange(6), pick]
    torch.testing.assert_close(out, expected)
    assert aux == {}, "no auxiliary loss in eval mode"


def test_moefy_replaces_every_blocks_mlp_and_keeps_the_logits():
    torch.manual_seed(0)
    model = TinyLM(ModelConfig(vocab_size=20, d_model=8, n_layers=2, n_heads=2, d_ff=16)).eval()
    tokens = torch.randint(0, 20, (2, 6))
    before = model(tokens).logits
    experts = mf.moefy(model, n_experts=4)
    assert len(experts) == 2 and all(isinstance(b.ffn, mf.MoEfiedSwiGLU) for b in model.layers)
    torch.testing.assert_close(model(tokens).logits, before, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("call, match", [
    (lambda f: mf.contiguous_groups(24, 5), "n_experts"),
    (lambda f: mf.MoEfiedSwiGLU(f, torch.zeros(4, 6, dtype=torch.long)), "groups"),
    (lambda f: mf.MoEfiedSwiGLU(f, mf.contiguous_groups(24, 4), top_k=5), "top_k"),
    (lambda f: mf.MoEfiedSwiGLU(f, mf.contiguous_groups(24, 4), router="random"), "router"),
    (lambda f: mf.MoEfiedSwiGLU(torch.nn.Linear(2, 2), mf.contiguous_groups(24, 4)), "ffn"),
])
def test_careless_calls_name_the_argument(ffn, call, match):
    with pytest.raises((ValueError, TypeError), match=match):
        call(ffn)
