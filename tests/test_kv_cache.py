"""The KV cache: prefill + one-token decode gives the logits of a full re-run, greedy generation is
unchanged token for token, the cache holds n_kv_heads heads and exactly kv_cache_bytes bytes, bounded
layers keep a ring buffer, RoPE at decode uses the true position, and what cannot be cached says so."""
from __future__ import annotations

import warnings

import pytest
import torch

import tinymoe as tm
from tinymoe import ConfigError, KVCache, ModelConfig, MoEConfig, SparseAttentionConfig, TinyLM, Trace
from tinymoe.attention import causal_mask, sliding_window_mask
from tinymoe.kv_cache import kv_cache_unsupported, mask_from_positions

BASE = ModelConfig(vocab_size=23, d_model=16, n_layers=3, n_heads=4, n_kv_heads=2, d_ff=24, max_seq_len=32)
CONFIGS = {
    "gqa": BASE,
    "mqa_interleaved_rope": BASE.replace(n_kv_heads=1, rope_pairing="interleaved"),
    "sliding_window": BASE.replace(attention="sliding_window", window=4),
    "llama4_chunked_nope": BASE.replace(attention_chunk_size=4, no_rope_layer_interval=2, qk_norm=True,
                                        attn_temperature_tuning=True, floor_scale=3.0, attn_scale=0.5),
    "sinusoidal": BASE.replace(position="sinusoidal"),
    "moe_topk": BASE.replace(moe=MoEConfig(n_experts=4, top_k=2)),
    "llama4_moe": BASE.replace(moe=MoEConfig(n_experts=4, top_k=1, router="llama4", n_shared_experts=1)),
}
TOL = 1e-5


def _model(config: ModelConfig, seed: int = 0) -> TinyLM:
    torch.manual_seed(seed)
    return TinyLM(config).eval()


def _tokens(B: int, T: int, vocab: int = 23, seed: int = 1) -> torch.Tensor:
    return torch.randint(0, vocab, (B, T), generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("name", CONFIGS)
def test_prefill_then_decode_gives_the_logits_of_a_full_forward(name):
    config = CONFIGS[name]
    model, seq = _model(config), _tokens(2, 19)
    with torch.no_grad():
        full = model(seq).logits                                              # (2, 19, vocab)
        cache = KVCache(config, batch=2)
        steps = [model(seq[:, :7], cache=cache).logits]                       # prefill 7
        steps += [model(seq[:, t:t + 1], cache=cache).logits for t in range(7, 19)]  # decode 12
    cached = torch.cat(steps, dim=1)
    err = (cached - full).abs().max().item()
    scale = max(1.0, full.abs().max().item())
    assert err <= TOL * scale, f"{name}: cached logits differ from a full forward by {err:.3e} (> {TOL * scale:.1e})"
    assert cache.length == 19, f"cache.length={cache.length} after 7 + 12 tokens"


@pytest.mark.parametrize("name", CONFIGS)
def test_greedy_generation_with_the_cache_equals_without_token_for_token(name):
    model, prompt = _model(CONFIGS[name]), _tokens(2, 5, seed=3)
    with_cache = model.generate(prompt, 20, use_cache=True)
    without = model.generate(prompt, 20, use_cache=False)
    differ = (with_cache != without).nonzero().tolist()
    assert not differ, f"{name}: tokens differ at (batch, position) {differ[:5]}"


def test_generation_past_max_seq_len_still_matches_recomputing():
    config = BASE.replace(max_seq_len=12)
    model, prompt = _model(config), _tokens(1, 4)
    a, b = model.generate(prompt, 15, use_cache=True), model.generate(prompt, 15, use_cache=False)
    assert torch.equal(a, b), f"with cache {a.tolist()} != without {b.tolist()}"


def test_cache_holds_n_kv_heads_not_n_heads():
    cache = KVCache(BASE, batch=3, max_len=10)
    layer = cache.layers[0]
    assert tuple(layer.k.shape) == (3, BASE.kv_heads, 10, BASE.qk_dim), f"k is {tuple(layer.k.shape)}"
    assert tuple(layer.v.shape) == (3, BASE.kv_heads, 10, BASE.v_dims[0]), f"v is {tuple(layer.v.shape)}"


@pytest.mark.parametrize("name", ["gqa", "sliding_window", "llama4_chunked_nope"])
@pytest.mark.parametrize("dtype, bytes_per_value", [(torch.float32, 4), (torch.bfloat16, 2)])
def test_measured_cache_bytes_equal_kv_cache_bytes(name, dtype, bytes_per_value):
    config = CONFIGS[name]
    cache = KVCache(config, batch=2, max_len=20, dtype=dtype)
    expected = tm.kv_cache_bytes(config, seq_len=20, batch=2, bytes_per_value=bytes_per_value)
    assert cache.nbytes() == expected, f"{name}: measured {cache.nbytes()} bytes, kv_cache_bytes says {expected}"


@pytest.mark.parametrize("name, bound", [("sliding_window", 4), ("llama4_chunked_nope", 4)])
def test_bounded_layers_keep_a_ring_buffer_that_does_not_grow(name, bound):
    config = CONFIGS[name]
    short, long = KVCache(config, max_len=8), KVCache(config, max_len=32)
    bounded = [i for i in range(config.n_layers)
               if config.attention == "sliding_window" or config.layer_chunk_size(i) is not None]
    assert bounded, "the config should have bounded layers"
    for i in bounded:
        assert long.layers[i].capacity == bound, f"layer {i} keeps {long.layers[i].capacity} slots, not {bound}"
        assert long.layers[i].nbytes() == short.layers[i].nbytes(), f"layer {i}'s cache grew with max_len"


def test_ring_buffer_slots_hold_the_latest_positions():
    config = CONFIGS["sliding_window"]
    model, seq = _model(config), _tokens(1, 11)
    cache = KVCache(config)
    with torch.no_grad():
        model(seq[:, :6], cache=cache)
        for t in range(6, 11):
            model(seq[:, t:t + 1], cache=cache)
    held = sorted(cache.layers[0].positions.tolist())
    assert held == [7, 8, 9, 10], f"a window-4 ring after 11 tokens holds positions {held}"


def test_decode_rotates_keys_by_their_true_position():
    config = CONFIGS["gqa"]
    model, seq = _model(config), _tokens(1, 9)
    trace, cache = Trace(), KVCache(config)
    with torch.no_grad():
        model(seq, trace=trace)                                               # keys at positions 0..8
        model(seq[:, :4], cache=cache)
        for t in range(4, 9):
            model(seq[:, t:t + 1], cache=cache)
    stored = cache.layers[1].k[:, :, :9]                                      # (1, n_kv_heads, 9, head_dim)
    full = trace["layers.1.attn.k_rot"]                                       # (1, n_kv_heads, 9, head_dim)
    err = (stored - full).abs().max().item()
    assert err <= 1e-5, f"cached keys differ from the full pass's rotated keys by {err:.3e}"


@pytest.mark.parametrize("T, window", [(7, 1), (7, 3), (7, 7)])
def test_position_masks_equal_the_square_masks(T, window):
    pos = torch.arange(T)
    assert torch.equal(mask_from_positions(pos, pos), causal_mask(T))
    assert torch.equal(mask_from_positions(pos, pos, window=window), sliding_window_mask(T, window))
    assert torch.equal(mask_from_positions(pos, pos, chunk_size=window), tm.chunked_mask(T, window))
    empty = torch.full((3,), -1)
    assert not mask_from_positions(pos, empty).any(), "an empty slot (position -1) was visible"


def _nsa_config():
    return ModelConfig(vocab_size=11, d_model=8, n_layers=1, n_heads=2, max_seq_len=16, attention="native_sparse",
                       nsa=SparseAttentionConfig(block_size=4, stride=2, select_block_size=4, top_n=3, window=4))


def test_native_sparse_attention_says_it_cannot_cache_and_recomputes():
    config = _nsa_config()
    model, prompt = _model(config), _tokens(1, 3, vocab=11)
    with pytest.warns(UserWarning, match="native sparse attention"):
        with_request = model.generate(prompt, 6, use_cache=True)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        without = model.generate(prompt, 6, use_cache=False)
    assert torch.equal(with_request, without), "recomputing must give the same tokens"
    with pytest.raises(ConfigError, match="cannot use a KV cache"):
        KVCache(config)


@pytest.mark.parametrize("moe", [MoEConfig(n_experts=4, top_k=1, router="switch", capacity_factor=1.0),
                                 MoEConfig(n_experts=4, router="expert_choice", capacity_factor=1.0)])
def test_batch_dependent_routing_is_not_cached(moe):
    reason = kv_cache_unsupported(BASE.replace(moe=moe))
    assert reason is not None and "routed" in reason, f"got {reason!r}"


def test_a_full_cache_is_a_clear_error():
    model, cache = _model(BASE), KVCache(BASE, max_len=5)
    with torch.no_grad():
        model(_tokens(1, 5), cache=cache)
        with pytest.raises(ValueError, match="exceed max_len=5"):
            model(_tokens(1, 1), cache=cache)


def test_a_cache_for_another_batch_is_a_clear_error():
    model = _model(BASE)
    with pytest.raises(ValueError, match="batch=2"):
        model(_tokens(3, 2), cache=KVCache(BASE, batch=2))
