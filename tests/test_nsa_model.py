"""TinyLM with attention='native_sparse' trains: forward, loss, backward into every branch."""
import torch

from tinymoe import ModelConfig, SparseAttentionConfig, TinyLM, Trace


def config() -> ModelConfig:
    nsa = SparseAttentionConfig(block_size=4, stride=2, select_block_size=4, top_n=3, window=4)
    return ModelConfig(vocab_size=20, d_model=16, n_layers=2, n_heads=4, n_kv_heads=2, max_seq_len=32,
                       attention="native_sparse", nsa=nsa)


def test_tinylm_with_native_sparse_attention_runs_forward_and_backward():
    torch.manual_seed(0)
    model = TinyLM(config())
    tokens = torch.randint(0, 20, (2, 24))
    out = model(tokens[:, :-1], targets=tokens[:, 1:])
    assert out.logits.shape == (2, 23, 20), f"logits shape {tuple(out.logits.shape)}"
    assert torch.isfinite(out.loss), f"loss is {out.loss}"
    out.loss.backward()
    for name, p in model.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), f"{name} has no finite gradient"
    attn = model.layers[0].attn
    for name in ("W_k_cmp", "W_v_cmp", "W_k_sel", "W_v_sel", "W_k_win", "W_v_win", "W_gate", "W_q", "W_o"):
        g = getattr(attn, name).weight.grad.abs().max().item()
        assert g > 0, f"layers.0.attn.{name} got no gradient: its branch is cut off from the loss"
    for part in ("compress_k", "compress_v"):
        for p_name in ("W.weight", "pos"):
            g = attn.get_parameter(f"{part}.{p_name}").grad.abs().max().item()
            assert g > 0, f"layers.0.attn.{part}.{p_name} got no gradient"


def test_tinylm_trace_scopes_the_branches_under_each_layer():
    model = TinyLM(config())
    trace = Trace()
    real = torch.ones(1, 12, dtype=torch.bool)
    real[0, 10:] = False
    model(torch.randint(0, 20, (1, 12)), trace=trace, key_padding_mask=real)
    for layer in (0, 1):
        for name in ("cmp.mask", "sel.mask", "win.mask", "gates", "sel.blocks"):
            assert f"layers.{layer}.attn.{name}" in trace, f"layers.{layer}.attn.{name} was not recorded"
