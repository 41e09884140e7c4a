"""The MoE layer as the rest of tinymoe sees it: built from a ModelConfig, traced under its
name, the same output whichever dispatch backend runs it, sized by moe_parameter_counts."""
import pytest
import torch

from tinymoe import ConfigError, DecoderBlock, ModelConfig, MoEConfig, Trace
from tinymoe.moe import MoE, moe_parameter_counts

ROUTERS = {
    "softmax_topk": dict(top_k=2),
    "softmax_topk_capacity": dict(top_k=2, capacity_factor=0.75),
    "switch": dict(router="switch", top_k=1, capacity_factor=1.0),
    "noisy_topk": dict(router="noisy_topk", top_k=2),
    "expert_choice": dict(router="expert_choice", capacity_factor=1.0),
    "soft": dict(router="soft", slots_per_expert=2),
    "sigmoid_bias": dict(router="sigmoid_bias", top_k=2),
    "shared_gated": dict(top_k=2, n_shared_experts=1, shared_expert_gate=True),
}


def build(ffn="swiglu", **moe):
    return ModelConfig(d_model=8, d_ff=12, ffn=ffn, moe=MoEConfig(n_experts=4, **moe))


@pytest.mark.parametrize("ffn", ["swiglu", "relu"])
@pytest.mark.parametrize("router", list(ROUTERS))
def test_layer_output_is_the_same_for_every_dispatch_backend(router, ffn):
    torch.manual_seed(0)
    moe = MoE(build(ffn, **ROUTERS[router])).eval()
    x = torch.randn(2, 7, 8)
    outputs = {}
    for backend in ("loop", "dense", "grouped"):
        moe.dispatch = backend
        outputs[backend], _ = moe(x)
    for backend in ("dense", "grouped"):
        err = (outputs[backend] - outputs["loop"]).abs().max().item()
        assert err < 1e-5, f"{router}/{ffn}: {backend} differs from loop by {err:.2e}"


def test_trace_records_routing_losses_and_weights_under_the_layer_name():
    torch.manual_seed(0)
    moe = MoE(build(top_k=2, capacity_factor=1.0, n_shared_experts=1), name="moe")
    trace = Trace().scope("layers.0")
    moe(torch.randn(2, 5, 8), trace)
    shapes = trace.shapes()
    expected = {
        "router_logits": (10, 4), "router_probs": (10, 4), "chosen_ids": (10, 2), "expert_ids": (10, 2), "gates": (10, 2),
        "dropped": (10, 2), "dropped_tokens": (10,), "expert_load": (4,), "capacity": (),
        "load_balancing_loss": (), "z_loss": (), "W_router": (4, 8), "W_gate": (4, 12, 8), "W_up": (4, 12, 8),
        "W_down": (4, 8, 12), "out": (2, 5, 8), "shared.out": (2, 5, 8),
    }
    for name, shape in expected.items():
        key = f"layers.0.moe.{name}"
        assert key in shapes, f"{key} was not recorded; recorded: {', '.join(shapes)}"
        assert shapes[key] == shape, f"{key} has shape {shapes[key]}, expected {shape}"
    for name in ("W_router", "W_gate", "W_up", "W_down"):
        assert trace.role(f"layers.0.moe.{name}") == "weight", f"{name} should be recorded as a weight"
    assert int(trace["layers.0.moe.expert_load"].sum()) == 10 * 2 - int(trace["layers.0.moe.dropped"].sum()), \
        "expert_load should count every slot that was not dropped"


def test_no_trace_records_nothing_and_the_layer_still_runs():
    moe = MoE(build(top_k=2))
    out, losses = moe(torch.randn(1, 3, 8))
    assert out.shape == (1, 3, 8) and set(losses) == {"load_balancing", "z_loss"}


def test_layer_serves_as_the_decoder_block_feed_forward():
    torch.manual_seed(0)
    config = ModelConfig(d_model=8, n_heads=2, d_ff=12, moe=MoEConfig(n_experts=4, top_k=2))
    block = DecoderBlock(config, layer=0)
    assert isinstance(block.ffn, MoE), f"block.ffn is {type(block.ffn).__name__}"
    trace = Trace()
    out, aux = block(torch.randn(2, 5, 8), trace)
    assert out.shape == (2, 5, 8) and set(aux) == {"load_balancing", "z_loss"}
    assert "moe.router_probs" in trace, "the block's trace should hold the MoE records"


def test_stacked_weights_have_nn_linear_layout():
    moe = MoE(build(top_k=2))
    assert moe.w_gate.shape == (4, 12, 8) and moe.w_up.shape == (4, 12, 8) and moe.w_down.shape == (4, 8, 12)
    assert moe.router.weight.shape == (4, 8)
    assert moe.w_gate is moe.experts.w_gate, "moe.w_gate should be the parameter itself"


@pytest.mark.parametrize("moe_kwargs, field", [
    (dict(n_experts=4, top_k=5), "moe.top_k"),
    (dict(n_experts=0), "moe.n_experts"),
    (dict(router="switch", top_k=2, capacity_factor=1.0), "moe.top_k"),
    (dict(router="switch", top_k=1), "moe.capacity_factor"),
    (dict(router="expert_choice"), "moe.capacity_factor"),
    (dict(capacity_factor=0.0), "moe.capacity_factor"),
    (dict(router="magic"), "moe.router"),
    (dict(dispatch="fastest"), "moe.dispatch"),
    (dict(shared_expert_gate=True), "moe.shared_expert_gate"),
    (dict(slots_per_expert=0, router="soft"), "moe.slots_per_expert"),
    (dict(renormalize="yes"), "moe.renormalize"),
    (dict(aux_loss_coef=-1.0), "moe.aux_loss_coef"),
])
def test_bad_moe_config_raises_config_error_naming_the_field(moe_kwargs, field):
    with pytest.raises(ConfigError) as error:
        MoE(ModelConfig(d_model=8, moe=MoEConfig(**moe_kwargs)))
    assert error.value.field == field, f"{moe_kwargs}: error names {error.value.field!r}, expected {field!r}"
    assert field in str(error.value), f"message {str(error.value)!r} should name {field}"


def test_moe_layer_without_moe_config_is_a_config_error():
    with pytest.raises(ConfigError) as error:
        MoE(ModelConfig(d_model=8))
    assert error.value.field == "moe"


def test_unknown_backend_set_on_the_layer_fails_at_forward_naming_the_field():
    moe = MoE(build(top_k=2))
    moe.dispatch = "fastest"
    with pytest.raises(ConfigError, match="moe.dispatch"):
        moe(torch.randn(1, 3, 8))


@pytest.mark.parametrize("ffn", ["swiglu", "relu"])
@pytest.mark.parametrize("router", list(ROUTERS))
def test_parameter_counts_match_the_built_layer(router, ffn):
    config = build(ffn, **ROUTERS[router])
    counts = moe_parameter_counts(config)
    built = sum(p.numel() for p in MoE(config).parameters())
    assert counts["total"] == built, f"{router}/{ffn}: counted {counts['total']}, the layer has {built}"


def test_active_parameters_are_top_k_experts_plus_router_and_shared():
    config = ModelConfig(d_model=4096, d_ff=14336, moe=MoEConfig(n_experts=8, top_k=2))   # Mixtral 8x7B layer
    counts = moe_parameter_counts(config)
    expert = 3 * 4096 * 14336
    assert counts["expert"] == expert and counts["total"] == 8 * expert + 8 * 4096
    assert counts["active"] == 2 * expert + 8 * 4096, f"active {counts['active']:,}"
    shared = moe_parameter_counts(config.replace(moe=MoEConfig(n_experts=8, top_k=2, n_shared_experts=1)))
    assert shared["active"] - counts["active"] == expert, "a shared expert is active for every token"
