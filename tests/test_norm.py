"""LayerNorm and RMSNorm by their defining properties (the oracle comparisons are in test_oracle_*.py)."""
from __future__ import annotations

import pytest
import torch

from tinymoe import ConfigError, LayerNorm, ModelConfig, RMSNorm, make_norm


def _x(*shape, seed=0, scale=3.0):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed)) * scale + 1.5


def test_rmsnorm_output_has_unit_root_mean_square():
    out = RMSNorm(16, eps=1e-8)(_x(4, 5, 16))
    rms = out.pow(2).mean(-1).sqrt()
    err = (rms - 1).abs().max().item()
    assert err < 1e-5, f"with gamma = 1 every token should have RMS 1; off by up to {err:.3g}"


def test_rmsnorm_does_not_centre():
    x = _x(3, 16)
    out = RMSNorm(16, eps=1e-8)(x)
    assert out.mean(-1).abs().min() > 0.05, "RMSNorm keeps the mean (it only rescales); this output looks centred"
    err = (out - x / x.pow(2).mean(-1, keepdim=True).sqrt()).abs().max().item()
    assert err < 1e-5, f"RMSNorm(x) should be x / rms(x) with gamma = 1; off by {err:.3g}"


def test_layernorm_output_has_zero_mean_and_unit_variance():
    out = LayerNorm(16, eps=1e-8)(_x(4, 5, 16))
    mean_err = out.mean(-1).abs().max().item()
    var_err = (out.var(-1, unbiased=False) - 1).abs().max().item()
    assert mean_err < 1e-5 and var_err < 1e-4, \
        f"with gamma = 1, beta = 0 each token should have mean 0 (off {mean_err:.3g}) and variance 1 (off {var_err:.3g})"


@pytest.mark.parametrize("cls", [RMSNorm, LayerNorm])
def test_norm_is_per_token(cls):
    norm = cls(8)
    x = _x(2, 6, 8)
    out = norm(x)
    x2 = x.clone()
    x2[:, 3] *= -7.0
    changed = (norm(x2) - out).abs().amax(dim=-1)            # (B, T)
    others = torch.cat([changed[:, :3], changed[:, 4:]], dim=1)
    assert others.max() == 0, f"changing token 3 changed other tokens by {others.max():.3g}: a norm never mixes tokens"


@pytest.mark.parametrize("cls", [RMSNorm, LayerNorm])
def test_norm_ignores_the_scale_of_its_input(cls):
    norm = cls(8, eps=1e-12)
    x = _x(3, 8)
    err = (norm(x * 50.0) - norm(x)).abs().max().item()
    assert err < 1e-5, f"{cls.__name__}(50 x) should equal {cls.__name__}(x); off by {err:.3g}"


def test_layernorm_ignores_a_shift_of_its_input():
    norm = LayerNorm(8, eps=1e-12)
    x = _x(3, 8)
    err = (norm(x + 10.0) - norm(x)).abs().max().item()
    assert err < 1e-4, f"LayerNorm subtracts the mean, so adding 10 to every dim should change nothing; off by {err:.3g}"


def test_gamma_and_beta_scale_and_shift():
    norm = LayerNorm(4, eps=1e-8)
    with torch.no_grad():
        norm.weight.copy_(torch.tensor([1.0, 2.0, 0.0, -1.0]))
        norm.bias.copy_(torch.tensor([0.0, 0.0, 5.0, 0.0]))
    x = _x(3, 4)
    out = norm(x)
    base = LayerNorm(4, eps=1e-8)(x)
    expected = base * norm.weight + norm.bias
    assert torch.allclose(out, expected, atol=1e-6), f"gamma/beta not applied: off by {(out - expected).abs().max():.3g}"
    assert torch.all(out[:, 2] == 5.0), "a zero gamma with beta = 5 must give 5"


def test_parameters_are_gamma_and_beta():
    assert [n for n, _ in RMSNorm(8).named_parameters()] == ["weight"], "RMSNorm has a gain and no bias"
    assert [n for n, _ in LayerNorm(8).named_parameters()] == ["weight", "bias"]


def test_make_norm_follows_the_config():
    rms = make_norm(ModelConfig(norm="rmsnorm", norm_eps=1e-6))
    ln = make_norm(ModelConfig(norm="layernorm", norm_eps=1e-3, d_model=6), name="final_norm")
    assert isinstance(rms, RMSNorm) and rms.eps == 1e-6 and rms.weight.shape == (8,)
    assert isinstance(ln, LayerNorm) and ln.eps == 1e-3 and ln.weight.shape == (6,) and ln.name == "final_norm"


@pytest.mark.parametrize("cls", [RMSNorm, LayerNorm])
@pytest.mark.parametrize("args,field", [((0,), "d_model"), ((-3,), "d_model"), ((8.0,), "d_model"),
                                        ((8, 0.0), "eps"), ((8, -1e-5), "eps"), ((8, float("nan")), "eps")])
def test_bad_norm_arguments_are_config_errors(cls, args, field):
    with pytest.raises(ConfigError, match=f"{field}="):
        cls(*args)
