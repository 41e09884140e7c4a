"""Our MoE against Hugging Face transformers' modules, built offline from tiny random configs.

Every weight of theirs is overwritten with ours (their unused ones start uninitialised), and a
test checks that no parameter was left out. The max abs errors are printed (pytest -s) and
named in the assertion messages.
"""
import pytest
import torch
from transformers.models.mixtral.configuration_mixtral import MixtralConfig
from transformers.models.mixtral.modeling_mixtral import MixtralSparseMoeBlock
from transformers.models.qwen2_moe.configuration_qwen2_moe import Qwen2MoeConfig
from transformers.models.qwen2_moe.modeling_qwen2_moe import Qwen2MoeSparseMoeBlock
from transformers.models.switch_transformers.modeling_switch_transformers import (load_balancing_loss_func,
                                                                                   router_z_loss_func)

from tinymoe import ModelConfig, MoEConfig, Trace
from tinymoe.moe import MoE, load_balancing_loss, router_z_loss

pytestmark = pytest.mark.oracle

D_MODEL, D_FF, N_EXPERTS = 16, 24, 6


def copy_all(theirs: torch.nn.Module, weights: dict[str, torch.Tensor]) -> None:
    """Set every parameter of `theirs` from `weights` (name -> tensor); fail if one is missed."""
    params = dict(theirs.named_parameters())
    missing = sorted(set(params) - set(weights))
    assert not missing, f"these Hugging Face parameters would stay uninitialised: {missing}"
    with torch.no_grad():
        for name, value in weights.items():
            assert params[name].shape == value.shape, f"{name}: theirs {tuple(params[name].shape)}, ours {tuple(value.shape)}"
            params[name].copy_(value)


def eager(config):
    """Their reference forward (a loop over the experts hit), not a fused kernel."""
    config._experts_implementation = "eager"
    return config


def max_error(a, b) -> float:
    return (a.double() - b.double()).abs().max().item()


@pytest.mark.parametrize("backend", ["loop", "dense", "grouped"])
def test_matches_mixtral_sparse_moe_block_top2(backend):
    torch.manual_seed(0)
    ours = MoE(ModelConfig(d_model=D_MODEL, d_ff=D_FF,
                           moe=MoEConfig(n_experts=N_EXPERTS, top_k=2, renormalize=True, dispatch=backend))).eval()
    theirs = MixtralSparseMoeBlock(eager(MixtralConfig(hidden_size=D_MODEL, intermediate_size=D_FF,
                                                       num_local_experts=N_EXPERTS, num_experts_per_tok=2,
                                                       router_jitter_noise=0.0, hidden_act="silu"))).eval()
    copy_all(theirs, {
        "gate.weight": ours.router.weight,
        "experts.gate_up_proj": torch.cat([ours.w_gate, ours.w_up], dim=1),   # (E, 2 d_ff, d_model): gate rows first
        "experts.down_proj": ours.w_down,
    })
    x = torch.randn(3, 7, D_MODEL)
    trace = Trace()
    with torch.no_grad():
        out, _ = ours(x, trace)
        expected = theirs(x)
        their_logits, _, their_ids = theirs.gate(x.reshape(-1, D_MODEL))
    assert torch.equal(trace["moe.expert_ids"], their_ids), "a token chose different experts than Mixtral's router"
    err = max_error(out, expected)
    logit_err = max_error(trace["moe.router_logits"], their_logits)
    print(f"\nMixtral top-2 [{backend}]: max abs error output {err:.2e}, router logits {logit_err:.2e}")
    assert err < 1e-5, f"Mixtral top-2 [{backend}]: outputs differ by up to {err:.2e}"


@pytest.mark.parametrize("n_shared_experts", [1, 2])
def test_matches_qwen2_moe_sparse_moe_block_with_gated_shared_expert(n_shared_experts):
    torch.manual_seed(1)
    ours = MoE(ModelConfig(d_model=D_MODEL, d_ff=D_FF, moe=MoEConfig(
        n_experts=N_EXPERTS, top_k=2, renormalize=False, n_shared_experts=n_shared_experts,
        shared_expert_gate=True))).eval()
    theirs = Qwen2MoeSparseMoeBlock(eager(Qwen2MoeConfig(
        hidden_size=D_MODEL, moe_intermediate_size=D_FF, shared_expert_intermediate_size=n_shared_experts * D_FF,
        num_experts=N_EXPERTS, num_experts_per_tok=2, norm_topk_prob=False, hidden_act="silu"))).eval()
    shared = ours.shared.ffn
    copy_all(theirs, {
        "gate.weight": ours.router.weight,
        "experts.gate_up_proj": torch.cat([ours.w_gate, ours.w_up], dim=1),
        "experts.down_proj": ours.w_down,
        "shared_expert.gate_proj.weight": shared.w_gate.weight,
        "shared_expert.up_proj.weight": shared.w_up.weight,
        "shared_expert.down_proj.weight": shared.w_down.weight,
        "shared_expert_gate.weight": ours.shared.gate.weight,
    })
    x = torch.randn(2, 9, D_MODEL)
    with torch.no_grad():
        out, _ = ours(x)
        expected = theirs(x)
    err = max_error(out, expected)
    print(f"\nQwen2-MoE (shared experts {n_shared_experts}, sigmoid gate, no renormalisation): "
          f"max abs error {err:.2e}")
    assert err < 1e-5, f"Qwen2-MoE with {n_shared_experts} shared: outputs differ by up to {err:.2e}"


@pytest.mark.parametrize("top_k", [1, 2])
def test_load_balancing_loss_matches_switch_transformers(top_k):
    torch.manual_seed(2)
    groups, tokens = 3, 11
    probs = torch.softmax(torch.randn(groups, tokens, N_EXPERTS) * 2, dim=-1)   # (groups, tokens, E)
    expert_ids = probs.topk(top_k, dim=-1).indices                              # (groups, tokens, k)
    theirs = load_balancing_loss_func(probs, expert_ids if top_k > 1 else expert_ids[..., 0])
    ours = load_balancing_loss(probs, expert_ids, N_EXPERTS)
    # Theirs counts a token once per expert it chose and divides by the tokens; ours divides by
    # the token-slots (so balance gives 1 for every k): theirs = top_k * ours.
    err = max_error(top_k * ours, theirs)
    print(f"\nload-balancing loss, top-{top_k}: ours * top_k {top_k * ours.item():.6f}, "
          f"Switch {theirs.item():.6f}, max abs error {err:.2e}")
    assert err < 1e-6, f"top-{top_k}: top_k * ours = {top_k * ours.item()} vs Switch {theirs.item()} ({err:.2e})"


def test_router_z_loss_matches_switch_transformers():
    torch.manual_seed(3)
    logits = torch.randn(4, 13, N_EXPERTS) * 5                                   # (groups, tokens, E)
    theirs = router_z_loss_func(logits)
    ours = router_z_loss(logits)
    err = max_error(ours, theirs)
    print(f"\nrouter z-loss: ours {ours.item():.6f}, Switch {theirs.item():.6f}, max abs error {err:.2e}")
    assert err < 1e-5 * theirs.abs().item(), f"z-loss {ours.item()} vs Switch {theirs.item()} ({err:.2e})"


def test_layer_losses_match_switch_transformers_on_a_switch_router():
    torch.manual_seed(4)
    moe = MoE(ModelConfig(d_model=D_MODEL, d_ff=D_FF, moe=MoEConfig(
        n_experts=N_EXPERTS, top_k=1, router="switch", capacity_factor=1.0, aux_loss_coef=1.0, z_loss_coef=1.0)))
    trace = Trace()
    with torch.no_grad():
        _, losses = moe(torch.randn(1, 20, D_MODEL), trace)
    probs, logits = trace["moe.router_probs"][None], trace["moe.router_logits"][None]   # one group of 20
    chosen = probs.argmax(dim=-1)                                                     # before capacity
    lb_err = max_error(losses["load_balancing"], load_balancing_loss_func(probs, chosen))
    z_err = max_error(losses["z_loss"], router_z_loss_func(logits))
    print(f"\nSwitch layer losses: load-balancing error {lb_err:.2e}, z-loss error {z_err:.2e}")
    assert lb_err < 1e-6 and z_err < 1e-5, f"layer losses vs Switch: {lb_err:.2e}, {z_err:.2e}"
