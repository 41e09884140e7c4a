"""attention_backend="flash" / "flash_triton": the model's attention by the tiled paths gives the eager
path's outputs and gradients, for dense, GQA and sliding-window configs; misuse is refused by name."""
from __future__ import annotations

import pytest
import torch

from tinymoe import ConfigError, ModelConfig, MultiHeadAttention, Trace, TinyLM

CONFIGS = {
    "MHA causal": dict(d_model=8, n_heads=2),
    "GQA causal (4 query heads, 2 kv heads)": dict(d_model=8, n_heads=4, n_kv_heads=2, head_dim=4),
    "sliding window 3, MQA": dict(d_model=8, n_heads=2, n_kv_heads=1, attention="sliding_window", window=3),
    "not causal, v_head_dim 3": dict(d_model=6, n_heads=2, v_head_dim=3, causal=False, position="none"),
}


def _pair(backend, **fields):
    eager = MultiHeadAttention(ModelConfig(**fields))
    tiled = MultiHeadAttention(ModelConfig(**fields, attention_backend=backend))
    tiled.load_state_dict(eager.state_dict())
    return eager, tiled


def _out_and_grads(module, x):
    x = x.clone().requires_grad_()
    out = module(x)
    out.backward(torch.linspace(-1, 1, out.numel()).view_as(out))
    return [out, x.grad] + [p.grad for p in module.parameters()]


@pytest.mark.parametrize("name", list(CONFIGS))
def test_flash_backend_equals_eager_attention(name):
    torch.manual_seed(0)
    eager, tiled = _pair("flash", **CONFIGS[name])
    x = torch.randn(2, 11, eager.config.d_model)
    for i, (a, b) in enumerate(zip(_out_and_grads(tiled, x), _out_and_grads(eager, x))):
        err = (a - b).abs().max().item()
        assert err < 1e-5, f"{name}: tensor {i} (out, dx, then parameter grads) differs from eager by {err:.2e}"


@pytest.mark.triton
def test_flash_triton_backend_equals_eager_attention():
    torch.manual_seed(1)
    eager, tiled = _pair("flash_triton", **CONFIGS["GQA causal (4 query heads, 2 kv heads)"])
    x = torch.randn(1, 9, 8)
    for i, (a, b) in enumerate(zip(_out_and_grads(tiled, x), _out_and_grads(eager, x))):
        err = (a - b).abs().max().item()
        assert err < 1e-5, f"tensor {i} (out, dx, then parameter grads) differs from eager by {err:.2e}"


def test_a_model_with_the_flash_backend_gives_the_same_logits():
    torch.manual_seed(2)
    config = ModelConfig(vocab_size=16, d_model=8, n_layers=2, n_heads=2)
    eager, tiled = TinyLM(config), TinyLM(config.replace(attention_backend="flash"))
    tiled.load_state_dict(eager.state_dict())
    tokens = torch.randint(0, 16, (2, 12))
    err = (tiled(tokens).logits - eager(tokens).logits).abs().max().item()
    assert err < 1e-5, f"logits differ by {err:.2e}"


def test_a_traced_flash_run_records_no_weights():
    trace = Trace()
    _, tiled = _pair("flash", d_model=8, n_heads=2)
    tiled(torch.randn(1, 5, 8), trace=trace)
    assert "attn.concat" in trace and "attn.out" in trace
    assert "attn.weights" not in trace, "the flash backend never makes the (T, T) weights, so none are traced"


@pytest.mark.parametrize("fields, words", [
    (dict(attention_backend="fast"), "attention_backend='fast' must be one of"),
    (dict(n_heads=2, v_head_dims=(3, 5), attention_backend="flash"), "one value size"),
])
def test_impossible_backend_settings_name_the_field(fields, words):
    with pytest.raises(ConfigError, match=words):
        ModelConfig(**fields).validate()


def test_padding_mask_with_a_flash_backend_says_to_use_eager():
    _, tiled = _pair("flash", d_model=8, n_heads=2)
    with pytest.raises(ValueError, match="attention_backend='eager'"):
        tiled(torch.randn(1, 5, 8), key_padding_mask=torch.ones(1, 5, dtype=torch.bool))


LLAMA4_LIKE = dict(vocab_size=16, d_model=8, n_layers=2, n_heads=2, n_kv_heads=1, head_dim=4, max_seq_len=32,
                   attention_chunk_size=4, no_rope_layer_interval=2, qk_norm=True, attn_temperature_tuning=True,
                   floor_scale=4.0)


@pytest.mark.parametrize("fields", [dict(vocab_size=16, d_model=8, n_layers=2, n_heads=2, n_kv_heads=1, max_seq_len=32),
                                    LLAMA4_LIKE], ids=["full attention", "Llama 4 chunked + NoPE layers"])
def test_flash_backend_with_a_kv_cache_gives_the_eager_logits(fields):
    """Prefill then decode one token at a time: on full-attention layers the cached keys sit at positions
    0..S-1 and the new queries are the last ones (bottom-right), so the tiled path reads the cache as is;
    a chunked layer's ring buffer falls back to eager. Either way, the eager path's logits."""
    from tinymoe.kv_cache import KVCache
    torch.manual_seed(3)
    config = ModelConfig(**fields)
    eager, tiled = TinyLM(config), TinyLM(config.replace(attention_backend="flash"))
    tiled.load_state_dict(eager.state_dict())
    tokens = torch.randint(0, 16, (1, 11))
    full = eager(tokens).logits                                      # (1, 11, vocab) without any cache
    err = (tiled(tokens).logits - full).abs().max().item()
    assert err < 1e-5, f"no cache: flash logits differ from eager by {err:.2e}"
    cache = KVCache(tiled.config, batch=1, max_len=16)
    steps = [tiled(tokens[:, :6], cache=cache).logits]               # prefill 6 tokens
    for t in range(6, 11):
        steps.append(tiled(tokens[:, t:t + 1], cache=cache).logits)  # decode one token
    err = (torch.cat(steps, dim=1) - full).abs().max().item()
    assert err < 1e-5, f"flash backend with a KV cache: logits differ from eager without one by {err:.2e}"
