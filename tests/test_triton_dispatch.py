"""`triton_moe_dispatch` against the PyTorch dispatch paths (loop and grouped), forward and backward.

The same (x, expert_ids, gates, weights) go to `dispatch_loop` (the reference), `dispatch_grouped`
and the Triton backend; outputs and gradients must agree, at awkward shapes (d_model 12 and
d_ff 20, not powers of two; 13 tokens, not a multiple of the 16-row tile; empty experts; every
token on one expert; top_k = n_experts; one token; dropped slots). Then the determinism the
fixed-order combine promises, and the MoE layer trained with dispatch="triton".

float16 and float32 only: Triton's interpreter computes tl.dot with numpy, which has no
bfloat16, so bfloat16 products come back as garbage there (they work on a GPU).
Runs in the interpreter on the CPU (TRITON_INTERPRET=1, set here if unset).
"""
import os

os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest  # noqa: E402
import torch  # noqa: E402

from tinymoe.config import ModelConfig, MoEConfig  # noqa: E402
from tinymoe.kernels import TileConfig, interpreted, triton_moe_dispatch  # noqa: E402
from tinymoe.moe import MoE  # noqa: E402
from tinymoe.moe.dispatch import dispatch_grouped, dispatch_loop  # noqa: E402

import triton_check  # noqa: E402  (tests/triton_check.py)

pytestmark = pytest.mark.triton
DEVICE = "cpu" if interpreted() else "cuda"
D_MODEL, D_FF, N_EXPERTS = 12, 20, 5
SMALL_TILES = TileConfig(block_m=16, block_n=16, block_k=16, num_warps=1, num_stages=1)
TOLERANCE = {torch.float32: 2e-5, torch.float16: 1e-2}   # of the largest expected value


def assert_close(actual, expected, what, dtype):
    triton_check.assert_close(actual, expected, what, dtype, TOLERANCE)


def _ids(kind, g):
    """(n_tokens, top_k) int64 expert ids for one routing situation."""
    def distinct(n_tokens, top_k):
        return torch.stack([torch.randperm(N_EXPERTS, generator=g)[:top_k] for _ in range(n_tokens)])
    if kind == "random":
        return distinct(13, 2)
    if kind == "dropped slots":
        ids = distinct(13, 2)
        ids[torch.rand(13, 2, generator=g) < 0.3] = -1
        return ids
    if kind == "empty experts":
        return distinct(13, 2) % 2 * 3                                      # only experts 0 and 3 (pairs may repeat)
    if kind == "one expert":
        return torch.full((21, 1), 2)
    if kind == "top_k = n_experts":
        return distinct(7, N_EXPERTS)
    if kind == "one token":
        return distinct(1, 2)
    if kind == "many tokens":
        return distinct(70, 2)                                              # several tiles per expert
    raise ValueError(kind)


KINDS = ["random", "dropped slots", "empty experts", "one expert", "top_k = n_experts", "one token", "many tokens"]


def _problem(kind, dtype, d_model=D_MODEL, gated=True, seed=0):
    g = torch.Generator().manual_seed(seed)
    ids = _ids(kind, g).to(DEVICE)
    n_tokens, top_k = ids.shape
    x = torch.randn(n_tokens, d_model, generator=g).to(DEVICE, dtype)
    w_gate = (torch.randn(N_EXPERTS, D_FF, d_model, generator=g) * 0.3).to(DEVICE, dtype) if gated else None
    w_up = (torch.randn(N_EXPERTS, D_FF, d_model, generator=g) * 0.3).to(DEVICE, dtype)
    w_down = (torch.randn(N_EXPERTS, d_model, D_FF, generator=g) * 0.3).to(DEVICE, dtype)
    gates = (torch.rand(n_tokens, top_k, generator=g).to(DEVICE) * (ids >= 0)).float()
    return x, ids, gates, w_gate, w_up, w_down


# ---- forward -------------------------------------------------------------------------------

@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
@pytest.mark.parametrize("kind", KINDS)
def test_forward_matches_loop_and_grouped_paths(kind, dtype):
    x, ids, gates, w_gate, w_up, w_down = _problem(kind, dtype)
    ours = triton_moe_dispatch(x, ids, gates, w_gate, w_up, w_down)
    assert ours.dtype == dtype and ours.shape == x.shape, f"got {ours.dtype} {tuple(ours.shape)}, expected x's"
    # reference: float32 arithmetic on the same (rounded) inputs
    f32 = [t.float() if t is not None and t.is_floating_point() else t for t in (x, ids, gates, w_gate, w_up, w_down)]
    assert_close(ours, dispatch_loop(*f32), f"{kind}: triton vs dispatch_loop", dtype)
    assert_close(ours, dispatch_grouped(*f32), f"{kind}: triton vs dispatch_grouped", dtype)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
@pytest.mark.parametrize("d_model", [12, 36])
def test_forward_with_small_tiles_runs_every_loop_tail(d_model, dtype):
    x, ids, gates, w_gate, w_up, w_down = _problem("dropped slots", dtype, d_model=d_model)
    ours = triton_moe_dispatch(x, ids, gates, w_gate, w_up, w_down, tiles=SMALL_TILES)
    f32 = [t.float() if t.is_floating_point() else t for t in (x, ids, gates, w_gate, w_up, w_down)]
    assert_close(ours, dispatch_loop(*f32), f"16x16x16 tiles, d_model={d_model}", dtype)


def test_relu_experts_match_the_loop_path():
    x, ids, gates, _, w_up, w_down = _problem("dropped slots", torch.float32, gated=False)
    ours = triton_moe_dispatch(x, ids, gates, None, w_up, w_down)
    assert_close(ours, dispatch_loop(x, ids, gates, None, w_up, w_down), "ReLU experts (w_gate None)", torch.float32)


# ---- determinism ---------------------------------------------------------------------------

@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_same_input_twice_gives_bitwise_equal_outputs_and_gradients(dtype):
    x, ids, gates, w_gate, w_up, w_down = _problem("many tokens", dtype)
    leaves = [t.clone().requires_grad_() for t in (x, gates, w_gate, w_up, w_down)]
    runs = []
    for _ in range(2):
        out = triton_moe_dispatch(leaves[0], ids, *leaves[1:])
        grads = torch.autograd.grad(out, leaves, torch.ones_like(out))
        runs.append((out, *grads))
    names = ["out", "d x", "d gates", "d w_gate", "d w_up", "d w_down"]
    for name, first, second in zip(names, *runs):
        assert torch.equal(first, second), (
            f"{name} differs between two identical runs: max {(first - second).abs().max():.3g}")


def _outputs_of_a_batch_and_its_permutation(dtype):
    x, ids, gates, w_gate, w_up, w_down = _problem("many tokens", dtype)
    perm = torch.randperm(x.shape[0], generator=torch.Generator().manual_seed(3)).to(DEVICE)
    out = triton_moe_dispatch(x, ids, gates, w_gate, w_up, w_down)
    out_perm = triton_moe_dispatch(x[perm], ids[perm], gates[perm], w_gate, w_up, w_down)
    return out_perm, out[perm]


# What is promised where. The GPU kernel computes each row of a tile with the same instructions in
# the same order wherever the row sits, so permuting the batch permutes the outputs bit for bit.
# In the interpreter tl.dot is numpy's BLAS, which may pick another summation order for a row by
# its place in the tile (it varies with the CPU: OPENBLAS_CORETYPE=Haswell differs by 7e-7), so
# there the promise is equality within the float32 rounding of one tile's dot products.
@pytest.mark.skipif(interpreted(), reason="bitwise batch invariance is a property of the compiled GPU kernel; "
                                          "the interpreter's numpy BLAS rounds by tile position (see the next test)")
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_permuting_the_batch_permutes_the_outputs_exactly_on_a_gpu(dtype):
    out_perm, expected = _outputs_of_a_batch_and_its_permutation(dtype)
    assert torch.equal(out_perm, expected), (
        f"out(x[perm]) != out(x)[perm]: max difference {(out_perm - expected).abs().max():.3g}; "
        f"each token's result must not depend on where it sits in the batch")


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_permuting_the_batch_permutes_the_outputs_within_rounding(dtype):
    out_perm, expected = _outputs_of_a_batch_and_its_permutation(dtype)
    assert_close(out_perm, expected, "out(x[perm]) vs out(x)[perm] (each token's result must not depend "
                 "on where it sits in the batch beyond float32 rounding)", dtype)


# ---- backward ------------------------------------------------------------------------------

def _gradients(dispatch, x, ids, gates, w_gate, w_up, w_down, grad_out, **kwargs):
    leaves = {"x": x, "gates": gates, "w_gate": w_gate, "w_up": w_up, "w_down": w_down}
    leaves = {name: t.detach().clone().requires_grad_() for name, t in leaves.items() if t is not None}
    out = dispatch(leaves["x"], ids, leaves["gates"], leaves.get("w_gate"), leaves["w_up"], leaves["w_down"], **kwargs)
    return dict(zip(leaves, torch.autograd.grad(out, list(leaves.values()), grad_out)))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
@pytest.mark.parametrize("kind", ["random", "dropped slots", "empty experts", "one expert", "top_k = n_experts",
                                  "one token"])
def test_gradients_match_the_loop_path(kind, dtype):
    problem = _problem(kind, dtype)
    grad_out = torch.randn(problem[0].shape, generator=torch.Generator().manual_seed(7)).to(DEVICE, dtype)
    ours = _gradients(triton_moe_dispatch, *problem, grad_out)
    f32 = [t.float() if t is not None and t.is_floating_point() else t for t in problem]
    theirs = _gradients(dispatch_loop, *f32, grad_out.float())
    for name in theirs:
        assert ours[name].dtype == problem[["x", "ids", "gates", "w_gate", "w_up", "w_down"].index(name)].dtype, (
            f"d {name} came back {ours[name].dtype}")
        assert_close(ours[name], theirs[name], f"{kind}: d loss / d {name}", dtype)


@pytest.mark.parametrize("gated", [True, False], ids=["swiglu", "relu"])
def test_gradients_with_small_tiles_and_relu_experts(gated):
    problem = _problem("dropped slots", torch.float32, d_model=36, gated=gated)
    grad_out = torch.randn(problem[0].shape, generator=torch.Generator().manual_seed(7))
    ours = _gradients(triton_moe_dispatch, *problem, grad_out, tiles=SMALL_TILES)
    theirs = _gradients(dispatch_loop, *problem, grad_out)
    for name in theirs:
        assert_close(ours[name], theirs[name], f"16x16x16 tiles, {'SwiGLU' if gated else 'ReLU'}: d {name}",
                     torch.float32)


# ---- the MoE layer with dispatch="triton" --------------------------------------------------

@pytest.mark.parametrize("router,capacity_factor", [("softmax_topk", None), ("softmax_topk", 1.0),
                                                    ("sigmoid_bias", None)])
def test_moe_layer_trains_the_same_with_triton_as_with_grouped(router, capacity_factor):
    config = ModelConfig(d_model=D_MODEL, d_ff=D_FF, moe=MoEConfig(n_experts=N_EXPERTS, top_k=2, router=router,
                                                                   capacity_factor=capacity_factor, dispatch="grouped"))
    torch.manual_seed(0)
    grouped = MoE(config).to(DEVICE)
    triton_layer = MoE(config).to(DEVICE)
    triton_layer.load_state_dict(grouped.state_dict())
    triton_layer.dispatch = "triton"
    x = torch.randn(2, 9, D_MODEL, device=DEVICE)
    outputs = {}
    for name, layer in (("grouped", grouped), ("triton", triton_layer)):
        out, losses = layer(x)
        (out.square().mean() + sum(losses.values())).backward()
        outputs[name] = out
    assert_close(outputs["triton"], outputs["grouped"], f"{router} cf={capacity_factor}: layer output", torch.float32)
    for (name, p_grouped), p_triton in zip(grouped.named_parameters(), triton_layer.parameters()):
        assert p_triton.grad is not None, f"{name} got no gradient through the triton backend"
        assert_close(p_triton.grad, p_grouped.grad, f"{router} cf={capacity_factor}: d loss / d {name}", torch.float32)


# ---- errors that speak ---------------------------------------------------------------------

def test_mismatched_weight_shapes_are_named():
    x, ids, gates, w_gate, w_up, w_down = _problem("random", torch.float32)
    with pytest.raises(ValueError, match="w_down has shape"):
        triton_moe_dispatch(x, ids, gates, w_gate, w_up, w_down.transpose(1, 2))


@pytest.mark.skipif(not interpreted(), reason="bfloat16 works on a GPU")
def test_bfloat16_is_refused_in_the_interpreter_with_the_reason():
    x, ids, gates, w_gate, w_up, w_down = _problem("random", torch.float32)
    with pytest.raises(ValueError, match="numpy"):
        triton_moe_dispatch(x.bfloat16(), ids, gates, w_gate.bfloat16(), w_up.bfloat16(), w_down.bfloat16())
