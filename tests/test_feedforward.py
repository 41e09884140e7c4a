"""The position-wise feed-forward: ReLU MLP and SwiGLU (the oracle comparisons are in test_oracle_*.py)."""
from __future__ import annotations

import pytest
import torch

from tinymoe import MLP, ConfigError, ModelConfig, SwiGLU, make_feedforward


def _x(*shape, seed=0):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("cls", [MLP, SwiGLU])
def test_feedforward_treats_every_token_alone(cls):
    torch.manual_seed(0)
    ffn = cls(8, 12)
    x = _x(2, 5, 8)
    out, _ = ffn(x)
    assert out.shape == x.shape
    for t in range(5):
        alone, _ = ffn(x[:, t:t + 1])
        err = (alone - out[:, t:t + 1]).abs().max().item()
        assert err < 1e-6, f"token {t} computed alone differs from token {t} in the sequence by {err:.3g}"


def test_relu_mlp_is_two_matrices_with_a_relu_between():
    torch.manual_seed(0)
    ffn = MLP(4, 6)
    x = _x(3, 4)
    hidden = (x @ ffn.w_1.weight.T).clamp(min=0)
    err = (ffn(x)[0] - hidden @ ffn.w_2.weight.T).abs().max().item()
    assert err < 1e-6, f"MLP(x) != W_2 relu(W_1 x); off by {err:.3g}"


def test_swiglu_gate_closes_when_the_gate_input_is_very_negative():
    """silu(g) -> 0 as g -> -inf: a token whose gate is shut gets (almost) zero output."""
    torch.manual_seed(0)
    ffn = SwiGLU(4, 6)
    with torch.no_grad():
        ffn.w_gate.weight.fill_(-10.0)
    x = torch.ones(1, 4)                     # gate pre-activation = -40 in every hidden unit
    assert ffn(x)[0].abs().max() < 1e-12, "with the gate at -40 silu(gate) ~ -1.7e-16, so the output must vanish"


def test_swiglu_has_three_matrices_mlp_two():
    assert sum(p.numel() for p in SwiGLU(8, 12).parameters()) == 3 * 8 * 12
    assert sum(p.numel() for p in MLP(8, 12).parameters()) == 2 * 8 * 12
    assert sum(p.numel() for p in MLP(8, 12, bias=True).parameters()) == 2 * 8 * 12 + 12 + 8


def test_make_feedforward_follows_the_config():
    swiglu = make_feedforward(ModelConfig(d_model=8, d_ff=20))
    relu = make_feedforward(ModelConfig(d_model=8, ffn="relu"))
    assert isinstance(swiglu, SwiGLU) and swiglu.w_up.weight.shape == (20, 8)
    assert isinstance(relu, MLP) and relu.w_1.weight.shape == (32, 8), "d_ff=None means 4 * d_model"
    expert = make_feedforward(ModelConfig(d_model=8), d_ff=3, name="expert")
    assert expert.w_gate.weight.shape == (3, 8) and expert.name == "expert"


@pytest.mark.parametrize("cls", [MLP, SwiGLU])
@pytest.mark.parametrize("args,field", [((0, 4), "d_model"), ((4, -1), "d_ff"), ((4, 2.5), "d_ff"), ((True, 4), "d_model")])
def test_bad_sizes_are_config_errors(cls, args, field):
    with pytest.raises(ConfigError, match=f"{field}="):
        cls(*args)
