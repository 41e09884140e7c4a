"""Position: RoPE (both pairings) and absolute sinusoidal encodings, checked by their properties."""
from __future__ import annotations

import pytest
import torch

from tinymoe import ConfigError, ModelConfig, MultiHeadAttention, RotaryEmbedding, apply_rope, sinusoidal_positions
from tinymoe.rope import rope_frequencies, rotate_half

PAIRINGS = ["rotate_half", "interleaved"]
HEAD_DIM, MAX_LEN = 8, 64


def _gen(seed=0):
    return torch.Generator().manual_seed(seed)


def _rotate_at(rope: RotaryEmbedding, x: torch.Tensor, position: int) -> torch.Tensor:
    """x (head_dim,) rotated as if it stood at `position`."""
    q, _ = rope(x[None, None, None, :], x[None, None, None, :], positions=torch.tensor([position]))
    return q[0, 0, 0]


@pytest.mark.parametrize("pairing", PAIRINGS)
def test_rope_preserves_norms(pairing):
    rope = RotaryEmbedding(HEAD_DIM, MAX_LEN, pairing=pairing).double()
    x = torch.randn(3, 2, MAX_LEN, HEAD_DIM, generator=_gen(), dtype=torch.float64)
    q, k = rope(x, x)
    # The cos/sin tables are float32, so cos^2 + sin^2 = 1 holds to float32 rounding (~1e-7).
    err = ((q.norm(dim=-1) - x.norm(dim=-1)) / x.norm(dim=-1)).abs().max().item()
    assert err < 1e-6, f"{pairing}: a rotation must keep every vector's length; norms changed by up to {err:.3g} (relative)"


@pytest.mark.parametrize("pairing", PAIRINGS)
def test_rope_dot_product_depends_only_on_relative_position(pairing):
    rope = RotaryEmbedding(HEAD_DIM, MAX_LEN, pairing=pairing).double()
    q = torch.randn(HEAD_DIM, generator=_gen(1), dtype=torch.float64)
    k = torch.randn(HEAD_DIM, generator=_gen(2), dtype=torch.float64)
    for offset in (-5, 0, 3, 17):
        dots = []
        for m in range(max(0, offset), min(MAX_LEN, MAX_LEN + offset), 7):
            n = m - offset
            dots.append((_rotate_at(rope, q, m) @ _rotate_at(rope, k, n)).item())
        spread = max(dots) - min(dots)
        assert spread < 1e-6, (f"{pairing}: q_m . k_n should depend only on m - n = {offset}; over "
                                f"{len(dots)} pairs it varies by {spread:.3g}")
    # ... and it does depend on m - n (otherwise the test above proves nothing).
    near = _rotate_at(rope, q, 5) @ _rotate_at(rope, k, 5)
    far = _rotate_at(rope, q, 5) @ _rotate_at(rope, k, 0)
    assert abs(near - far) > 1e-3, f"{pairing}: the dot product did not change with the relative position"


def test_position_zero_is_the_identity():
    rope = RotaryEmbedding(HEAD_DIM, MAX_LEN)
    x = torch.randn(1, 1, 1, HEAD_DIM, generator=_gen())
    q, _ = rope(x, x)
    assert torch.equal(q, x), "at position 0 every angle is 0: RoPE must leave the vector unchanged"


def test_pairings_differ_by_a_fixed_permutation_of_dims():
    """interleaved pairs (2i, 2i+1), rotate_half pairs (i, i + d/2): sending dim 2i to i and dim 2i+1 to
    i + d/2 turns one convention into the other, at every position."""
    half = RotaryEmbedding(HEAD_DIM, MAX_LEN, pairing="rotate_half")
    inter = RotaryEmbedding(HEAD_DIM, MAX_LEN, pairing="interleaved")
    perm = torch.cat((torch.arange(0, HEAD_DIM, 2), torch.arange(1, HEAD_DIM, 2)))   # [0, 2, 4, 6, 1, 3, 5, 7]
    x = torch.randn(2, 3, 20, HEAD_DIM, generator=_gen())
    q_inter, _ = inter(x, x)
    q_half, _ = half(x[..., perm], x[..., perm])
    err = (q_inter[..., perm] - q_half).abs().max().item()
    assert err < 1e-6, f"rotate_half(x[perm]) should equal interleaved(x)[perm]; they differ by {err:.3g}"
    unpermuted = (q_inter - half(x, x)[0]).abs().max().item()
    assert unpermuted > 1e-2, "without the permutation the two pairings must differ (mixing them up is the bug)"


def test_rotate_half_swaps_and_negates_the_halves():
    x = torch.arange(1.0, 7.0)
    assert rotate_half(x).tolist() == [-4.0, -5.0, -6.0, 1.0, 2.0, 3.0]


def test_frequencies_fall_from_one_to_nearly_one_over_base():
    theta = rope_frequencies(8, base=10000.0)
    assert theta.tolist() == pytest.approx([1.0, 0.1, 0.01, 0.001])


def test_cos_sin_are_buffers_not_parameters():
    rope = RotaryEmbedding(HEAD_DIM, MAX_LEN)
    assert list(rope.parameters()) == [], "RoPE has no trainable weight"
    buffers = dict(rope.named_buffers())
    assert set(buffers) == {"cos", "sin"}, f"RoPE buffers: {sorted(buffers)}"
    assert buffers["cos"].shape == (MAX_LEN, HEAD_DIM), f"cos table {tuple(buffers['cos'].shape)}"
    assert "cos" not in rope.state_dict(), "the tables are recomputed from the config, not saved"
    attn = MultiHeadAttention(ModelConfig(d_model=16, n_heads=2))
    names = [n for n, _ in attn.named_parameters()]
    assert not any("cos" in n or "sin" in n for n in names), f"RoPE tables leaked into parameters: {names}"


def test_explicit_positions_match_the_default_positions():
    rope = RotaryEmbedding(HEAD_DIM, MAX_LEN)
    q = torch.randn(2, 4, 6, HEAD_DIM, generator=_gen())
    k = torch.randn(2, 2, 6, HEAD_DIM, generator=_gen(1))
    q0, k0 = rope(q, k)
    q1, k1 = rope(q, k, positions=torch.arange(6))
    q2, k2 = rope(q, k, positions=torch.arange(6).expand(2, 6))         # per-sequence positions (B, T)
    assert torch.equal(q0, q1) and torch.equal(k0, k1), "positions=arange(T) must equal the default positions"
    assert torch.equal(q0, q2) and torch.equal(k0, k2), "(B, T) positions must broadcast over the heads"
    # Shifting every position by the same amount keeps the scores q.k (relative positions unchanged).
    qs, ks = rope(q[:, :2], k[:, :1], positions=torch.arange(10, 16))
    qd, kd = rope(q[:, :2], k[:, :1])
    err = (qs @ ks.transpose(-2, -1) - qd @ kd.transpose(-2, -1)).abs().max().item()
    assert err < 1e-4, f"shifting all positions by 10 changed the scores by {err:.3g}"


def test_rope_errors_are_clear():
    with pytest.raises(ConfigError, match="head_dim=5"):
        RotaryEmbedding(5, MAX_LEN)
    with pytest.raises(ConfigError, match="pairing='neox'"):
        RotaryEmbedding(HEAD_DIM, MAX_LEN, pairing="neox")
    with pytest.raises(ConfigError, match="pairing"):
        apply_rope(torch.zeros(2, 4), torch.ones(2, 4), torch.zeros(2, 4), pairing="halves")
    rope = RotaryEmbedding(HEAD_DIM, 4)
    x = torch.zeros(1, 1, 5, HEAD_DIM)
    with pytest.raises(ValueError, match="seq_len=5 exceeds max_seq_len=4"):
        rope(x, x)
    with pytest.raises(ValueError, match="positions must lie in 0..3"):
        rope(x[:, :, :2], x[:, :, :2], positions=torch.tensor([3, 4]))
    with pytest.raises(ValueError, match="head_dim=8"):
        rope(torch.zeros(1, 1, 2, 6), torch.zeros(1, 1, 2, 6))


# ---- absolute sinusoidal positions --------------------------------------------------------

def test_sinusoidal_positions_layout():
    pe = sinusoidal_positions(10, 6)
    assert pe.shape == (10, 6) and pe.dtype == torch.float32
    assert pe[0, 0::2].abs().max() == 0 and torch.all(pe[0, 1::2] == 1), "position 0 is sin(0)=0, cos(0)=1"
    assert pe[:, 0].tolist() == pytest.approx(torch.sin(torch.arange(10.0)).tolist(), abs=1e-6), \
        "dim 0 is the fastest sine: sin(m)"


def test_sinusoidal_dot_product_depends_only_on_relative_position():
    pe = sinusoidal_positions(40, 16).double()
    for offset in (0, 1, 5):
        dots = torch.stack([pe[m] @ pe[m - offset] for m in range(offset, 40)])
        spread = (dots.max() - dots.min()).item()
        assert spread < 1e-5, f"PE_m . PE_(m-{offset}) varies by {spread:.3g}; it should depend only on the offset"
