"""The trace: with one, every module records its named intermediates (public names, right shapes
and roles); with none, nothing is recorded, nothing is copied and the output is the same."""
from __future__ import annotations

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

import tinymoe.trace as trace_module
from tinymoe import (DecoderBlock, LayerNorm, ModelConfig, MultiHeadAttention, RMSNorm, SwiGLU, TinyLM,
                     Trace, record, scaled_dot_product_attention)
from tinymoe.trace import ROLES

B, T, VOCAB = 2, 6, 11
CONFIG = ModelConfig(vocab_size=VOCAB, d_model=8, n_layers=2, n_heads=4, n_kv_heads=2, d_ff=12, max_seq_len=16)


def _model_and_tokens(config=CONFIG):
    torch.manual_seed(0)
    model = TinyLM(config)
    tokens = torch.randint(0, config.vocab_size, (B, T), generator=torch.Generator().manual_seed(1))
    return model, tokens


class CountOps(TorchDispatchMode):
    """Counts every aten op run inside the `with` block (an observer: it runs each op unchanged)."""

    def __init__(self):
        super().__init__()
        self.counts: dict[str, int] = {}

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        name = func.overloadpacket.__name__
        self.counts[name] = self.counts.get(name, 0) + 1
        return func(*args, **(kwargs or {}))


def test_record_without_trace_does_nothing():
    x = torch.randn(3, 4, requires_grad=True)
    with CountOps() as ops:
        result = record(None, "attn.q", x)
    assert result is None
    assert ops.counts == {}, f"record(None, ...) ran tensor ops {ops.counts}; it must return at once"


def test_forward_without_trace_creates_no_trace_and_records_nothing(monkeypatch):
    model, tokens = _model_and_tokens()
    calls = {"Trace.__init__": 0, "Trace.add": 0}
    real_init, real_add = trace_module.Trace.__init__, trace_module.Trace.add

    def counting_init(self, *args, **kwargs):
        calls["Trace.__init__"] += 1
        real_init(self, *args, **kwargs)

    def counting_add(self, *args, **kwargs):
        calls["Trace.add"] += 1
        real_add(self, *args, **kwargs)

    monkeypatch.setattr(trace_module.Trace, "__init__", counting_init)
    monkeypatch.setattr(trace_module.Trace, "add", counting_add)
    model(tokens)
    assert calls == {"Trace.__init__": 0, "Trace.add": 0}, \
        f"a forward pass with trace=None touched the trace machinery: {calls}"
    # The spy itself works: a traced pass does go through it.
    model(tokens, trace=Trace())
    assert calls["Trace.__init__"] >= 1 and calls["Trace.add"] > 0


def test_forward_without_trace_copies_nothing():
    """Every recorded tensor costs exactly one clone; without a trace those clones vanish."""
    model, tokens = _model_and_tokens()
    with torch.no_grad():
        with CountOps() as plain:
            model(tokens)
        trace = Trace()
        with CountOps() as traced:
            model(tokens, trace=trace)
    clones_plain, clones_traced = plain.counts.get("clone", 0), traced.counts.get("clone", 0)
    assert clones_traced - clones_plain == len(trace), \
        (f"traced pass made {clones_traced} clones, untraced {clones_plain}: the difference should be exactly "
         f"the {len(trace)} records")
    untraced_ops = {k: v for k, v in plain.counts.items() if k not in ("clone", "detach")}
    traced_ops = {k: v for k, v in traced.counts.items() if k not in ("clone", "detach")}
    assert untraced_ops == traced_ops, "tracing changed the computation itself (ops other than clone/detach)"


def test_trace_does_not_change_the_output():
    model, tokens = _model_and_tokens()
    plain = model(tokens).logits
    traced = model(tokens, trace=Trace()).logits
    assert torch.equal(plain, traced), f"logits differ by up to {(plain - traced).abs().max():.3g} with a trace"


def test_recorded_tensors_are_detached_copies():
    x = torch.randn(2, 3, requires_grad=True)
    y = x * 2
    trace = Trace()
    record(trace, "y", y)
    saved = trace["y"]
    assert not saved.requires_grad, "a recorded tensor must be detached from the graph"
    assert saved.data_ptr() != y.data_ptr(), "a recorded tensor must be a copy, not a view of the live tensor"
    before = saved.clone()
    with torch.no_grad():
        y.add_(100.0)
    assert torch.equal(trace["y"], before), "an in-place change after recording altered the record"


def test_trace_scope_prefixes_names_and_shares_the_store():
    trace = Trace()
    inner = trace.scope("layers").scope("0")
    record(inner, "attn.q", torch.zeros(1))
    assert list(trace) == ["layers.0.attn.q"], f"recorded names: {list(trace)}"
    assert "layers.0.attn.q" in trace and len(trace) == 1


def test_missing_name_lists_what_was_recorded():
    trace = Trace()
    record(trace, "attn.q", torch.zeros(1))
    with pytest.raises(KeyError, match="attn.q"):
        trace["attn.scores"]


def test_unknown_role_is_refused():
    with pytest.raises(ValueError, match="role"):
        record(Trace(), "x", torch.zeros(1), role="parameter")


def test_attention_module_records_documented_names_shapes_and_roles():
    config = ModelConfig(d_model=8, n_heads=4, n_kv_heads=2, max_seq_len=16)
    H, H_kv, D = 4, 2, 2
    attn = MultiHeadAttention(config)
    x = torch.randn(B, T, 8)
    trace = Trace()
    attn(x, trace=trace)
    expected = {
        "attn.x": ((B, T, 8), "input"),
        "attn.W_q": ((H * D, 8), "weight"),
        "attn.W_k": ((H_kv * D, 8), "weight"),
        "attn.W_v": ((H_kv * D, 8), "weight"),
        "attn.W_o": ((8, H * D), "weight"),
        "attn.q": ((B, H, T, D), "activation"),
        "attn.k": ((B, H_kv, T, D), "activation"),      # before the kv heads are shared out
        "attn.v": ((B, H_kv, T, D), "activation"),      # split by head like k
        "attn.rope_cos": ((T, D), "buffer"),
        "attn.rope_sin": ((T, D), "buffer"),
        "attn.q_rot": ((B, H, T, D), "activation"),
        "attn.k_rot": ((B, H_kv, T, D), "activation"),
        "attn.scores": ((B, H, T, T), "activation"),
        "attn.weights": ((B, H, T, T), "activation"),
        **{f"attn.head{h}": ((B, T, D), "activation") for h in range(H)},
        "attn.concat": ((B, T, H * D), "activation"),
        "attn.out": ((B, T, 8), "output"),
    }
    _assert_records(trace, expected)
    # Order follows the forward pass.
    names = list(trace)
    order = ["attn.q", "attn.scores", "attn.weights", "attn.head0", "attn.concat", "attn.out"]
    assert [names.index(n) for n in order] == sorted(names.index(n) for n in order), \
        f"records are not in forward order: {names}"


def test_recorded_values_are_the_ones_used():
    """The sheet must show the numbers the model used: weights rows sum to 1, the output is W_o(concat)."""
    config = ModelConfig(d_model=8, n_heads=2, max_seq_len=16)
    attn = MultiHeadAttention(config)
    x = torch.randn(B, T, 8)
    trace = Trace()
    out = attn(x, trace=trace)
    assert torch.equal(trace["attn.out"], out.detach()), "attn.out differs from what forward returned"
    row_sums = trace["attn.weights"].sum(-1)
    assert torch.allclose(row_sums, torch.ones_like(row_sums), atol=1e-6), \
        f"attention weights rows sum to {row_sums.min():.6f}..{row_sums.max():.6f}, expected 1"
    concat = torch.cat([trace["attn.head0"], trace["attn.head1"]], dim=-1)
    assert torch.equal(trace["attn.concat"], concat), "attn.concat is not the heads side by side"
    assert torch.equal(trace["attn.W_q"], attn.W_q.weight.detach()), "attn.W_q differs from the module's weight"


def test_norms_record_their_parts():
    x = torch.randn(B, T, 8)
    trace = Trace()
    RMSNorm(8, name="norm")(x, trace)
    LayerNorm(8, name="ln")(x, trace)
    _assert_records(trace, {
        "norm.rms": ((B, T, 1), "activation"), "norm.x_hat": ((B, T, 8), "activation"),
        "norm.gamma": ((8,), "weight"), "norm.out": ((B, T, 8), "activation"),
        "ln.mean": ((B, T, 1), "activation"), "ln.var": ((B, T, 1), "activation"),
        "ln.x_hat": ((B, T, 8), "activation"), "ln.gamma": ((8,), "weight"), "ln.beta": ((8,), "bias"),
        "ln.out": ((B, T, 8), "activation"),
    })


def test_feedforward_records_its_parts():
    trace = Trace()
    SwiGLU(8, 12)(torch.randn(B, T, 8), trace)
    _assert_records(trace, {
        "ffn.W_gate": ((12, 8), "weight"), "ffn.W_up": ((12, 8), "weight"), "ffn.hidden": ((B, T, 12), "activation"),
        "ffn.W_down": ((8, 12), "weight"), "ffn.out": ((B, T, 8), "activation"),
    })


def test_block_records_norms_and_residuals():
    config = ModelConfig(d_model=8, n_heads=2, d_ff=12, max_seq_len=16)
    block = DecoderBlock(config)
    x = torch.randn(B, T, 8)
    trace = Trace()
    out, _ = block(x, trace)
    _assert_records(trace, {
        "x": ((B, T, 8), "input"), "norm_1.out": ((B, T, 8), "activation"), "attn.out": ((B, T, 8), "output"),
        "resid_attn": ((B, T, 8), "activation"), "norm_2.out": ((B, T, 8), "activation"),
        "ffn.out": ((B, T, 8), "activation"), "out": ((B, T, 8), "output"),
    })
    # The residuals really are sums of the stream and the side roads.
    assert torch.allclose(trace["resid_attn"], x + trace["attn.out"], atol=1e-6), "resid_attn != x + attn.out"
    assert torch.allclose(trace["out"], trace["resid_attn"] + trace["ffn.out"], atol=1e-6), \
        "out != resid_attn + ffn.out"
    assert torch.equal(trace["out"], out.detach()), "the block's recorded out differs from what it returned"


def test_model_scopes_every_layer():
    model, tokens = _model_and_tokens()
    trace = Trace()
    model(tokens, trace=trace)
    expected = {"tokens": ((B, T), "input"), "embed.W_E": ((VOCAB, 8), "weight"), "embed.out": ((B, T, 8), "activation"),
                "final_norm.out": ((B, T, 8), "activation"), "lm_head.W_U": ((VOCAB, 8), "weight"),
                "logits": ((B, T, VOCAB), "output")}
    for layer in range(CONFIG.n_layers):
        for name in ("attn.q", "attn.scores", "attn.weights", "attn.concat", "attn.out", "norm_1.out",
                     "norm_2.out", "resid_attn", "out"):
            assert f"layers.{layer}.{name}" in trace, f"layers.{layer}.{name} missing; recorded: {list(trace)}"
    _assert_records(trace, expected)
    bad_roles = {rec.name: rec.role for rec in trace.records() if rec.role not in ROLES}
    assert not bad_roles, f"records with unknown roles: {bad_roles}"
    assert trace.shapes()["logits"] == (B, T, VOCAB)


def test_sinusoidal_positions_are_recorded_as_a_buffer():
    config = CONFIG.replace(position="sinusoidal")
    model, tokens = _model_and_tokens(config)
    trace = Trace()
    model(tokens, trace=trace)
    _assert_records(trace, {"embed.pos": ((T, 8), "buffer"), "embed.with_pos": ((B, T, 8), "activation")})


def test_functional_attention_records_scores_weights_and_out():
    q, k, v = torch.randn(B, T, 4), torch.randn(B, T, 4), torch.randn(B, T, 3)
    trace = Trace()
    scaled_dot_product_attention(q, k, v, causal=True, trace=trace)
    _assert_records(trace, {"scores": ((B, T, T), "activation"), "mask": ((B, T, T), "activation"),
                            "weights": ((B, T, T), "activation"), "out": ((B, T, 3), "activation")})


def _assert_records(trace: Trace, expected: dict) -> None:
    for name, (shape, role) in expected.items():
        assert name in trace, f"{name!r} was not recorded; recorded: {list(trace)}"
        assert trace.shapes()[name] == shape, f"{name} has shape {trace.shapes()[name]}, expected {shape}"
        assert trace.role(name) == role, f"{name} has role {trace.role(name)!r}, expected {role!r}"
