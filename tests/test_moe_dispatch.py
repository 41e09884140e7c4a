"""The dispatch backends compute the same sum: loop (reference), dense, grouped.

    out_n = sum_j gates[n, j] * expert_{expert_ids[n, j]}(x_n)       (-1 / gate 0 = empty slot)
"""
import sys

import pytest
import torch

from tinymoe import ConfigError
from tinymoe.moe import Experts, dispatch_dense, dispatch_grouped, dispatch_loop, get_dispatch

BACKENDS = {"dense": dispatch_dense, "grouped": dispatch_grouped}
N, D_MODEL, D_FF, N_EXPERTS, TOP_K = 13, 6, 10, 4, 2


def make_weights(ffn="swiglu", dtype=torch.float32, seed=0):
    torch.manual_seed(seed)
    return Experts(N_EXPERTS, D_MODEL, D_FF, ffn).to(dtype)


def random_routing(seed=0, n=N, k=TOP_K, n_experts=N_EXPERTS):
    g = torch.Generator().manual_seed(seed)
    expert_ids = torch.stack([torch.randperm(n_experts, generator=g)[:k] for _ in range(n)])  # (n, k) distinct
    gates = torch.rand(n, k, generator=g)
    return expert_ids, gates


def by_the_equation(x, expert_ids, gates, experts):
    """The sum written out token by token, slot by slot: the plainest possible reference."""
    w_gate, w_up, w_down = experts.weights()
    out = torch.zeros(x.shape, dtype=torch.float64)
    for n in range(x.shape[0]):
        for j in range(expert_ids.shape[1]):
            e = int(expert_ids[n, j])
            if e < 0:
                continue
            xn = x[n].double()
            if w_gate is None:
                hidden = torch.relu(w_up[e].double() @ xn)
            else:
                hidden = torch.nn.functional.silu(w_gate[e].double() @ xn) * (w_up[e].double() @ xn)
            out[n] += float(gates[n, j]) * (w_down[e].double() @ hidden)
    return out


def assert_close(actual, expected, what, atol=1e-5):
    err = (actual.double() - expected.double()).abs().max().item()
    assert err <= atol, f"{what}: max abs difference {err:.3e} exceeds {atol:.0e}"


CASES = {}


def _case(name):
    def register(fn):
        CASES[name] = fn
        return fn
    return register


@_case("random top-2")
def _random():
    return random_routing(0)


@_case("some slots dropped")
def _dropped():
    expert_ids, gates = random_routing(1)
    drop = torch.zeros(N, TOP_K, dtype=torch.bool)
    drop[0, :] = drop[11, :] = True                                        # whole tokens
    drop[3, 1] = drop[7, 0] = True                                         # one slot of a token
    return expert_ids.masked_fill(drop, -1), gates.masked_fill(drop, 0.0)


@_case("every slot dropped")
def _all_dropped():
    return torch.full((N, TOP_K), -1), torch.zeros(N, TOP_K)


@_case("empty experts")
def _empty_experts():
    expert_ids, gates = random_routing(3, n_experts=2)                    # experts 2 and 3 get nothing
    return expert_ids, gates


@_case("every token on one expert, top-1")
def _one_expert_top1():
    return torch.full((N, 1), 3), torch.rand(N, 1, generator=torch.Generator().manual_seed(4))


@_case("every token on one expert, second slot empty")
def _one_expert_second_empty():
    expert_ids = torch.stack([torch.full((N,), 2), torch.full((N,), -1)], dim=1)
    gates = torch.stack([torch.rand(N, generator=torch.Generator().manual_seed(5)), torch.zeros(N)], dim=1)
    return expert_ids, gates


@_case("expert choice: n_experts slots, most empty")
def _expert_choice_shape():
    picked = torch.rand(N, N_EXPERTS, generator=torch.Generator().manual_seed(6)) < 0.3
    expert_ids = torch.where(picked, torch.arange(N_EXPERTS).expand(N, N_EXPERTS), -1)
    return expert_ids, torch.where(picked, torch.rand(N, N_EXPERTS), 0.0)


@pytest.mark.parametrize("case", list(CASES))
@pytest.mark.parametrize("ffn", ["swiglu", "relu"])
def test_every_dispatch_path_matches_the_loop_and_the_equation(case, ffn):
    experts = make_weights(ffn)
    x = torch.randn(N, D_MODEL, generator=torch.Generator().manual_seed(7))
    expert_ids, gates = CASES[case]()
    reference = dispatch_loop(x, expert_ids, gates, *experts.weights())
    assert_close(reference, by_the_equation(x, expert_ids, gates, experts), f"loop vs equation [{case}, {ffn}]")
    for name, dispatch in BACKENDS.items():
        out = dispatch(x, expert_ids, gates, *experts.weights())
        assert out.shape == x.shape and out.dtype == x.dtype, f"{name}: got {tuple(out.shape)} {out.dtype}"
        assert_close(out, reference, f"{name} vs loop [{case}, {ffn}]")


@pytest.mark.parametrize("name", list(BACKENDS))
def test_dispatch_paths_give_the_same_gradients(name):
    experts = make_weights()
    x = torch.randn(N, D_MODEL, requires_grad=True)
    expert_ids, gates = _dropped()
    gates = gates.clone().requires_grad_(True)
    grads = {}
    for label, dispatch in (("loop", dispatch_loop), (name, BACKENDS[name])):
        for t in (x, gates, *experts.parameters()):
            t.grad = None
        (dispatch(x, expert_ids, gates, *experts.weights()) ** 2).sum().backward()
        grads[label] = [x.grad.clone(), gates.grad.clone()] + [
            torch.zeros_like(p) if p.grad is None else p.grad.clone() for p in experts.parameters()]
    for what, a, b in zip(["x", "gates", "w_gate", "w_up", "w_down"], grads[name], grads["loop"]):
        assert_close(a, b, f"gradient of {what}, {name} vs loop", atol=1e-4)


def test_dropped_slots_contribute_nothing():
    experts = make_weights()
    x = torch.randn(N, D_MODEL)
    expert_ids, gates = _dropped()
    fully_dropped = (expert_ids < 0).all(dim=1)
    assert fully_dropped.any(), "the case should drop at least one token entirely"
    for name, dispatch in {"loop": dispatch_loop, **BACKENDS}.items():
        out = dispatch(x, expert_ids, gates, *experts.weights())
        biggest = out[fully_dropped].abs().max().item()
        assert biggest == 0.0, f"{name}: a token with every slot dropped has output up to {biggest:.3e}, not 0"


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_dispatch_returns_the_input_dtype(dtype):
    experts = make_weights(dtype=dtype)
    x = torch.randn(N, D_MODEL).to(dtype)
    expert_ids, gates = _random()
    reference = dispatch_loop(x, expert_ids, gates, *experts.weights())
    for name, dispatch in BACKENDS.items():
        out = dispatch(x, expert_ids, gates, *experts.weights())
        assert out.dtype == dtype, f"{name} returned {out.dtype} for {dtype} input"
        assert_close(out, reference, f"{name} vs loop in {dtype}", atol=2e-2)


def test_dispatch_rejects_an_expert_id_out_of_range():
    experts = make_weights()
    expert_ids = torch.full((N, 1), N_EXPERTS)
    with pytest.raises(ValueError, match="n_experts=4"):
        dispatch_grouped(torch.randn(N, D_MODEL), expert_ids, torch.ones(N, 1), *experts.weights())


def test_triton_backend_without_kernels_is_a_clear_config_error(monkeypatch):
    monkeypatch.setitem(sys.modules, "tinymoe.kernels", None)               # as if tinymoe.kernels were absent
    with pytest.raises(ConfigError, match="tinymoe.kernels") as error:
        get_dispatch("triton")
    assert error.value.field == "moe.dispatch", f"error names field {error.value.field!r}"


def test_unknown_backend_names_the_choices():
    with pytest.raises(ConfigError, match="'grouped'"):
        get_dispatch("fastest")
