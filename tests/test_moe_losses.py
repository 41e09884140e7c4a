"""The load-balancing loss (n_experts * sum_i f_i P_i) and the router z-loss
(mean logsumexp(logits)^2), as plain functions and as the MoE layer returns them."""
import math

import pytest
import torch

from tinymoe import ModelConfig, MoEConfig, TinyLM, Trace
from tinymoe.moe import MoE, load_balancing_loss, router_z_loss


def by_counting(probs, expert_ids, n_experts):
    """The loss computed the slow way: count assignments, average probabilities, multiply."""
    N, k = expert_ids.shape
    total = 0.0
    for i in range(n_experts):
        f_i = sum(int(expert_ids[n, j]) == i for n in range(N) for j in range(k)) / (N * k)
        P_i = sum(float(probs[n, i]) for n in range(N)) / N
        total += f_i * P_i
    return n_experts * total


def test_load_balancing_loss_is_one_at_perfect_balance():
    for n_experts, k in ((4, 1), (4, 2), (8, 2)):
        N = 4 * n_experts
        probs = torch.full((N, n_experts), 1.0 / n_experts)
        expert_ids = torch.stack([(torch.arange(N) + j) % n_experts for j in range(k)], dim=1)  # (N, k) balanced
        loss = load_balancing_loss(probs, expert_ids, n_experts).item()
        assert abs(loss - 1.0) < 1e-6, f"balanced loss is {loss}, expected 1 (n_experts={n_experts}, top_k={k})"


def test_load_balancing_loss_is_n_experts_when_everything_goes_to_one_expert():
    probs = torch.zeros(10, 4)
    probs[:, 2] = 1.0
    loss = load_balancing_loss(probs, torch.full((10, 1), 2), 4).item()
    assert abs(loss - 4.0) < 1e-6, f"collapsed loss is {loss}, expected n_experts = 4"


@pytest.mark.parametrize("k", [1, 2, 3])
def test_load_balancing_loss_matches_counting_by_hand(k):
    torch.manual_seed(k)
    probs = torch.softmax(torch.randn(17, 5), dim=-1)
    expert_ids = probs.topk(k, dim=-1).indices
    expert_ids[4, 0] = -1                                                   # an empty slot counts for nobody
    got = load_balancing_loss(probs, expert_ids, 5).item()
    expected = by_counting(probs, expert_ids, 5)
    assert abs(got - expected) < 1e-6, f"loss {got} vs counted {expected} (diff {abs(got - expected):.1e})"


def test_load_balancing_loss_with_groups_averages_each_group():
    torch.manual_seed(0)
    probs = torch.softmax(torch.randn(3, 7, 4), dim=-1)                     # 3 groups of 7 tokens
    expert_ids = probs.topk(2, dim=-1).indices
    got = load_balancing_loss(probs, expert_ids, 4).item()
    expected = sum(by_counting(probs[g], expert_ids[g], 4) for g in range(3)) / 3
    assert abs(got - expected) < 1e-6, f"grouped loss {got} vs per-group mean {expected}"


def test_load_balancing_gradient_flows_through_probs_only():
    logits = torch.randn(12, 4, requires_grad=True)
    probs = torch.softmax(logits, dim=-1)
    load_balancing_loss(probs, probs.topk(2, dim=-1).indices, 4).backward()
    assert logits.grad is not None and logits.grad.abs().sum() > 0, "the router logits got no gradient"


def test_router_z_loss_is_mean_squared_logsumexp():
    torch.manual_seed(0)
    logits = torch.randn(9, 6) * 3
    expected = sum(math.log(sum(math.exp(float(v)) for v in row)) ** 2 for row in logits) / 9
    got = router_z_loss(logits).item()
    assert abs(got - expected) < 1e-4 * expected, f"z-loss {got} vs by hand {expected}"
    bigger = router_z_loss(logits * 10).item()
    assert bigger > got, f"z-loss should grow with the logits' scale ({bigger} <= {got})"


def test_layer_returns_its_losses_times_their_coefficients():
    torch.manual_seed(0)
    config = ModelConfig(d_model=8, d_ff=12, moe=MoEConfig(n_experts=4, top_k=2, aux_loss_coef=0.5, z_loss_coef=0.25))
    moe = MoE(config)
    trace = Trace()
    _, losses = moe(torch.randn(2, 5, 8), trace)
    assert set(losses) == {"load_balancing", "z_loss"}, f"loss keys {sorted(losses)}"
    expected_lb = 0.5 * load_balancing_loss(trace["moe.router_probs"], trace["moe.expert_ids"], 4)
    expected_z = 0.25 * router_z_loss(trace["moe.router_logits"])
    assert abs(losses["load_balancing"].item() - expected_lb.item()) < 1e-6, \
        f"load_balancing {losses['load_balancing'].item()} vs 0.5 * loss {expected_lb.item()}"
    assert abs(losses["z_loss"].item() - expected_z.item()) < 1e-6, \
        f"z_loss {losses['z_loss'].item()} vs 0.25 * loss {expected_z.item()}"
    assert abs(trace["moe.load_balancing_loss"].item() * 0.5 - losses["load_balancing"].item()) < 1e-7, \
        "the trace records the loss before its coefficient"


def test_losses_are_returned_not_kept_between_calls():
    torch.manual_seed(0)
    moe = MoE(ModelConfig(d_model=8, d_ff=12, moe=MoEConfig(n_experts=4, top_k=2)))
    x1, x2 = torch.randn(1, 5, 8), torch.randn(1, 5, 8)
    first = moe(x1)[1]
    moe(x2)
    again = moe(x1)[1]
    for name in first:
        assert torch.equal(first[name], again[name]), f"{name} changed after another forward pass: kept state?"
    assert not any(isinstance(v, torch.Tensor) and v.dim() == 0 and v.requires_grad for v in vars(moe).values()), \
        "the layer should not hold a loss tensor between calls"


def test_model_adds_the_moe_losses_of_every_moe_layer_to_its_loss():
    torch.manual_seed(0)
    config = ModelConfig(vocab_size=16, d_model=8, n_heads=2, n_layers=4,
                         moe=MoEConfig(n_experts=4, top_k=2, every_n_layers=2))
    model = TinyLM(config)
    kinds = [type(block.ffn).__name__ for block in model.layers]
    assert kinds == ["SwiGLU", "MoE", "SwiGLU", "MoE"], f"every_n_layers=2 built {kinds}"
    tokens = torch.randint(0, 16, (2, 6))
    out = model(tokens, targets=tokens)
    expected = out.ce_loss + out.aux_losses["load_balancing"] + out.aux_losses["z_loss"]
    assert torch.allclose(out.loss, expected), f"loss {out.loss.item()} vs ce + aux {expected.item()}"
    out.loss.backward()
    router_grad = model.layers[1].ffn.router.weight.grad
    assert router_grad is not None and router_grad.abs().sum() > 0, "the router got no gradient from the loss"
