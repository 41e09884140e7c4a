"""Exercise 03, rotary position embedding (RoPE) with the rotate-half pairing.

    rotate_half(x)          (x1, x2) -> (-x2, x1) on the two halves of the last axis
    rope(x, base)           x * cos + rotate_half(x) * sin, the angle of pair i at position m
                            being m * base^(-2i / head_dim), positions 0 .. seq_len - 1

Reference: tinymoe.rope (rotate_half, RotaryEmbedding's precomputed tables, apply_rope). The
wrong answers: the interleaved pairing of the RoFormer paper instead of rotate-half (or the two
mixed: a table for one pairing with the rotation of the other), the rotation's sign, halves
swapped without the minus, frequencies missing the factor 2, positions counted from 1.
"""
from __future__ import annotations

import torch

from ..rope import RotaryEmbedding, _rotate_interleaved, apply_rope, rotate_half as core_rotate_half
from .checks import Case, Exercise, Misconception, Property, Question

NOTEBOOK = "notebooks/03_position_rope.ipynb"
PAIRING_HINT = ("RoPE pairing mixed up: with rotate-half, dimension i is paired with i + head_dim/2 (Llama in "
                "Hugging Face), not with its neighbour i+1 (the interleaved pairing of the RoFormer paper)")


def _finite(case, got, call):
    if not torch.isfinite(got).all():
        return "it returned NaN or inf for finite inputs"


def _norm_kept(case, got, call):
    x = case.args[0]
    if not torch.allclose(got.double().norm(dim=-1), x.double().norm(dim=-1), rtol=1e-4, atol=1e-4):
        return "it changed the length of some vectors; a rotation keeps every vector's length"


# ---- rotate_half --------------------------------------------------------------------------------
def rotate_cases(d):
    shapes = [("a vector of 6", (6,)), ("a (batch 2, seq_len 5, head_dim 8) tensor", (2, 5, 8)),
              ("head_dim 2 (a single pair)", (1, 1, 2)), ("a (2, 3, 4, 16) tensor of heads", (2, 3, 4, 16))]
    return [Case(label, (x,), expected=core_rotate_half(x)) for label, shape in shapes for x in [d.randn(*shape)]]


def _two_quarter_turns(case, got, call):
    x = case.args[0]
    twice = call(got.detach().clone())
    if not torch.allclose(twice.double(), -x.double(), rtol=1e-5, atol=1e-6):
        return "applying it twice does not give -x; two quarter turns of every pair make a half turn"


ROTATE_HALF = Question(
    "rotate_half", "the quarter turn (x1, x2) -> (-x2, x1) on the halves of the last axis", rotate_cases,
    section=f"{NOTEBOOK}, section: Which dimensions form a pair: rotate-half or interleaved",
    properties=[Property("finite", _finite), Property("keeps lengths", _norm_kept),
                Property("two quarter turns", _two_quarter_turns)],
    misconceptions=[
        Misconception("rope_pairing_interleaved", PAIRING_HINT + ": split the last axis into its two halves",
                      _rotate_interleaved),
        Misconception("rotation_sign",
                      "the minus goes on the second half, which moves to the front: (x1, x2) -> (-x2, x1), "
                      "not (x2, -x1)",
                      lambda x: -core_rotate_half(x)),
        Misconception("halves_swapped_without_minus",
                      "swapping the halves is a reflection, not a rotation: negate the second half as it moves to "
                      "the front, (x1, x2) -> (-x2, x1)",
                      lambda x: torch.cat(x.chunk(2, dim=-1)[::-1], dim=-1)),
    ],
    hints=["x1, x2 = x.chunk(2, dim=-1) splits the last axis into halves; torch.cat(..., dim=-1) joins them.",
           "A quarter turn of the pair (a, b) is (-b, a)."],
)


# ---- rope ---------------------------------------------------------------------------------------
def _tables(head_dim, seq_len, base, pairing="rotate_half", offset=0):
    rotary = RotaryEmbedding(head_dim, seq_len + offset, base, pairing)
    return rotary.cos[offset:], rotary.sin[offset:]


def rope_cases(d):
    specs = [("4 positions, head_dim 4", (4, 4), 10000.0),
             ("a (batch 2, heads 3, seq_len 6, head_dim 8) tensor", (2, 3, 6, 8), 10000.0),
             ("a single position", (1, 2), 10000.0),
             ("16 positions, head_dim 16, base 500", (2, 16, 16), 500.0),
             ("64 positions, head_dim 32", (1, 2, 64, 32), 10000.0)]
    cases = []
    for label, shape, base in specs:
        x = d.randn(*shape)
        cos, sin = _tables(shape[-1], shape[-2], base)
        cases.append(Case(label, (x,), {"base": base}, expected=apply_rope(x, cos, sin)))
    return cases


def _first_position_unchanged(case, got, call):
    x = case.args[0]
    if not torch.allclose(got[..., 0, :].double(), x[..., 0, :].double(), rtol=1e-5, atol=1e-6):
        return "the first position changed; position 0 is rotated by angle 0, so it stays as it is"


def _relative(case, got, call):
    x = case.args[0]
    if x.shape[-2] < 3:
        return None
    same = x[..., :1, :].expand_as(x).clone()               # one vector at every position
    r = call(same, **case.kwargs).double()
    dots = (r[..., 1:, :] * r[..., :-1, :]).sum(-1)           # position m with m - 1
    if not torch.allclose(dots, dots[..., :1].expand_as(dots), rtol=1e-3, atol=1e-3):
        return ("the same vector at positions m and m-1 gives a dot product that depends on m; with RoPE it "
                "depends only on the distance between the positions")


def _rope_wrong(table_pairing="rotate_half", rotation="rotate_half", base_power=1.0, offset=0, sign=1.0):
    def wrong(x, base=10000.0):
        cos, sin = _tables(x.shape[-1], x.shape[-2], base ** base_power, table_pairing, offset)
        return apply_rope(x, cos, sign * sin, rotation)
    return wrong


ROPE = Question(
    "rope", "rotate every position's vector by its RoPE angles (rotate-half pairing)", rope_cases,
    section=f"{NOTEBOOK}, section: RoPE: rotate q and k, pair by pair",
    properties=[Property("finite", _finite), Property("keeps lengths", _norm_kept),
                Property("position 0 unchanged", _first_position_unchanged),
                Property("relative position", _relative)],
    misconceptions=[
        Misconception("rope_pairing_interleaved", PAIRING_HINT,
                      _rope_wrong("interleaved", "interleaved")),
        Misconception("rope_pairing_mixed_table",
                      PAIRING_HINT + ". Your angle table repeats each angle for neighbours (repeat_interleave) but "
                      "your rotation pairs the halves: build it as torch.cat((angles, angles), dim=-1)",
                      _rope_wrong("interleaved", "rotate_half")),
        Misconception("rope_pairing_mixed_rotation",
                      PAIRING_HINT + ". Your table pairs the halves but your rotation pairs neighbours: use "
                      "rotate_half",
                      _rope_wrong("rotate_half", "interleaved")),
        Misconception("frequencies_missing_two",
                      "the frequency of pair i is base^(-2i / head_dim), i = 0 .. head_dim/2 - 1: the exponent "
                      "steps by 2 over head_dim",
                      _rope_wrong(base_power=0.5)),
        Misconception("positions_from_one",
                      "positions start at 0: the first token is not rotated",
                      _rope_wrong(offset=1)),
        Misconception("rotation_sign",
                      "the rotation goes the wrong way: x * cos + rotate_half(x) * sin, with a plus",
                      _rope_wrong(sign=-1.0)),
    ],
    hints=[
        "theta_i = base ** (-2i / head_dim) for i = 0 .. head_dim/2 - 1 (torch.arange(0, head_dim, 2) / head_dim); "
        "angle[m, i] = m * theta_i for positions m = 0 .. seq_len - 1.",
        "With rotate-half, dimensions i and i + head_dim/2 share an angle: the (seq_len, head_dim) table is "
        "torch.cat((angles, angles), dim=-1).",
        "Then x * cos + rotate_half(x) * sin, with cos and sin broadcast over the leading axes; keep x's dtype.",
    ],
)

EXERCISE = Exercise("03_rope", "Rotary position embedding", NOTEBOOK, [ROTATE_HALF, ROPE])
