"""The grouped GEMM and combine kernels, one at a time, against plain PyTorch row by row.

Each permuted row r holds pair p = sorted_pairs[r] (token p // k, expert e): the expected value
of every row is written out directly from the equations in grouped_gemm.py and combine.py.
Tiles of 16 x 16 x 16 make the loops over K and the column tiles run more than once at these
tiny sizes (d_model 12 and 36, d_ff 20), with ragged tails.

float16 and float32 only: Triton's interpreter computes tl.dot with numpy, which has no
bfloat16, so bfloat16 products come back as garbage there (they work on a GPU).
Runs in the interpreter on the CPU (TRITON_INTERPRET=1, set here if unset).
"""
import os

os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest  # noqa: E402
import torch  # noqa: E402
from torch.nn import functional as F  # noqa: E402

from tinymoe.kernels import (TileConfig, align, combine, gate_up, grouped_matmul, interpreted,  # noqa: E402
                             tile_config, weight_grad)

import triton_check  # noqa: E402  (tests/triton_check.py)

pytestmark = pytest.mark.triton
DEVICE = "cpu" if interpreted() else "cuda"
N_EXPERTS, D_FF = 5, 20
SMALL_TILES = TileConfig(block_m=16, block_n=16, block_k=16, num_warps=1, num_stages=1)
TOLERANCE = {torch.float32: 1e-5, torch.float16: 1e-2}   # of the largest expected value


def assert_close(actual, expected, what, dtype):
    triton_check.assert_close(actual, expected, what, dtype, TOLERANCE)


def _setup(dtype, n_tokens=13, d_model=12, top_k=2, drop=False, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n_tokens, d_model, generator=g).to(DEVICE, dtype)
    w_gate = (torch.randn(N_EXPERTS, D_FF, d_model, generator=g) * 0.3).to(DEVICE, dtype)
    w_up = (torch.randn(N_EXPERTS, D_FF, d_model, generator=g) * 0.3).to(DEVICE, dtype)
    w_down = (torch.randn(N_EXPERTS, d_model, D_FF, generator=g) * 0.3).to(DEVICE, dtype)
    ids = torch.stack([torch.randperm(N_EXPERTS, generator=g)[:top_k] for _ in range(n_tokens)]).to(DEVICE)
    if drop:
        ids[torch.rand(n_tokens, top_k, generator=g).to(DEVICE) < 0.3] = -1
    gates = torch.rand(n_tokens, top_k, generator=g).to(DEVICE) * (ids >= 0)
    return x, w_gate, w_up, w_down, ids, gates


def _rows(alignment):
    """(row, pair, token, expert) of every real (non-padding) row."""
    rows = torch.nonzero(alignment.sorted_pairs >= 0).flatten()
    pairs = alignment.sorted_pairs[rows].long()
    return rows, pairs, pairs // alignment.top_k


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
@pytest.mark.parametrize("tiles", [SMALL_TILES, None], ids=["16x16x16", "table"])
@pytest.mark.parametrize("d_model", [12, 36])
def test_gate_up_fuses_swiglu_over_gathered_rows(dtype, tiles, d_model):
    x, w_gate, w_up, w_down, ids, gates = _setup(dtype, d_model=d_model, drop=True)
    config = tiles or tile_config(13 * 2 / N_EXPERTS, D_FF, d_model, dtype)
    alignment = align(ids, N_EXPERTS, config.block_m)
    hidden, gate, up = gate_up(x, w_gate, w_up, alignment, config, save_preactivations=True)
    rows, pairs, tokens = _rows(alignment)
    experts = ids.reshape(-1)[pairs]
    x32 = x[tokens].float()                                                 # (rows, d_model)
    gate_ref = torch.einsum("rd,rfd->rf", x32, w_gate[experts].float())
    up_ref = torch.einsum("rd,rfd->rf", x32, w_up[experts].float())
    assert_close(gate[rows], gate_ref, "gate pre-activation x W_gate[e]^T", dtype)
    assert_close(up[rows], up_ref, "up pre-activation x W_up[e]^T", dtype)
    assert_close(hidden[rows], F.silu(gate_ref) * up_ref, "hidden = silu(gate) * up", dtype)
    used = int(alignment.expert_offsets[-1])
    padding = (alignment.sorted_pairs[:used] < 0)
    assert torch.all(hidden[:used][padding] == 0), "padding rows inside a segment must come out zero"


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_gate_up_without_w_gate_is_a_relu_expert(dtype):
    x, _, w_up, _, ids, _ = _setup(dtype)
    alignment = align(ids, N_EXPERTS, 16)
    hidden, gate, _ = gate_up(x, None, w_up, alignment, SMALL_TILES)
    rows, pairs, tokens = _rows(alignment)
    expected = F.relu(torch.einsum("rd,rfd->rf", x[tokens].float(), w_up[ids.reshape(-1)[pairs]].float()))
    assert gate is None, "a ReLU expert has no gate pre-activation"
    assert_close(hidden[rows], expected, "relu(x W_up[e]^T)", dtype)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
@pytest.mark.parametrize("gather_rows", [False, True])
def test_grouped_matmul_applies_each_rows_gate_in_the_epilogue(dtype, gather_rows):
    x, w_gate, w_up, w_down, ids, gates = _setup(dtype, drop=True)
    alignment = align(ids, N_EXPERTS, 16)
    rows, pairs, tokens = _rows(alignment)
    experts = ids.reshape(-1)[pairs]
    if gather_rows:                                                         # a = x (n_tokens, d_model), b = W_gate
        a, b, a_rows = x, w_gate, x[tokens]
    else:                                                                   # a = permuted rows, b = W_down
        a = torch.randn(alignment.n_rows, D_FF).to(DEVICE, dtype)
        b, a_rows = w_down, a[rows]
    out = grouped_matmul(a, b, alignment, SMALL_TILES, gather_rows=gather_rows,
                         row_scales=gates.reshape(-1).float().contiguous())
    expected = torch.einsum("rk,rnk->rn", a_rows.float(), b[experts].float()) * gates.reshape(-1)[pairs, None]
    assert_close(out[rows], expected, f"gate * (a @ b[e]^T), gather_rows={gather_rows}", dtype)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_grouped_matmul_reads_transposed_weights_through_strides(dtype):
    x, _, _, w_down, ids, _ = _setup(dtype)
    alignment = align(ids, N_EXPERTS, 16)
    rows, pairs, tokens = _rows(alignment)
    view = w_down.transpose(1, 2)                                           # (E, d_ff, d_model) view, not a copy
    assert not view.is_contiguous()
    out = grouped_matmul(x, view, alignment, SMALL_TILES, gather_rows=True)   # x[t] @ W_down[e]
    expected = torch.einsum("rd,rdf->rf", x[tokens].float(), w_down[ids.reshape(-1)[pairs]].float())
    assert_close(out[rows], expected, "x @ W_down[e] through a transposed view", dtype)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
@pytest.mark.parametrize("ids_kind", ["random", "empty experts", "one expert"])
def test_weight_grad_sums_each_experts_rows(dtype, ids_kind):
    x, _, _, _, ids, gates = _setup(dtype, n_tokens=21, drop=True)
    if ids_kind == "empty experts":
        ids = torch.where(ids >= 0, ids % 2 * 3, ids)                       # experts 0 and 3 only
    elif ids_kind == "one expert":
        ids = torch.where(ids[:, :1] >= 0, 4, -1)                           # (21, 1), all on expert 4
        gates = gates[:, :1]
    alignment = align(ids, N_EXPERTS, 16)
    g = torch.randn(alignment.n_rows, D_FF).to(DEVICE, dtype)               # per-row gradient
    dw = weight_grad(g, x, alignment, SMALL_TILES, gather_g=False, gather_a=True,
                     row_scales=gates.reshape(-1).float().contiguous())
    rows, pairs, tokens = _rows(alignment)
    experts = ids.reshape(-1)[pairs]
    scaled = g[rows].float() * gates.reshape(-1)[pairs, None]
    expected = torch.zeros(N_EXPERTS, D_FF, x.shape[1], device=DEVICE)
    expected.index_add_(0, experts, torch.einsum("rn,rk->rnk", scaled, x[tokens].float()))
    assert_close(dw, expected, f"dW[e] = sum of gate * g[r]^T x[t] ({ids_kind})", dtype)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
@pytest.mark.parametrize("top_k", [1, 2, N_EXPERTS])
def test_combine_sums_each_tokens_slots(dtype, top_k):
    _, _, _, _, ids, _ = _setup(dtype, top_k=top_k, drop=True)
    alignment = align(ids, N_EXPERTS, 16)
    per_row = torch.randn(alignment.n_rows, 12).to(DEVICE, dtype)
    out = combine(per_row, alignment)
    pair_rows = alignment.pair_rows.long()
    kept = (pair_rows >= 0)[:, None]
    expected = (per_row[pair_rows.clamp(min=0)].float() * kept).reshape(13, top_k, 12).sum(1)
    assert out.dtype == dtype, f"combine returned {out.dtype}, expected the rows' dtype {dtype}"
    assert_close(out, expected, f"sum of each token's {top_k} rows (dropped slots add nothing)", dtype)
