"""The decoder block and TinyLM: sizes against hand counts (up to Llama-2-70B), causality, training,
generation, and clear errors for bad inputs."""
from __future__ import annotations

import pytest
import torch

from tinymoe import (ConfigError, DecoderBlock, ModelConfig, RMSNorm, RotaryEmbedding, SwiGLU, TinyLM,
                     attention_parameters, kv_cache_bytes, parameter_counts)

SMALL = ModelConfig(vocab_size=11, d_model=8, n_layers=2, n_heads=4, n_kv_heads=2, d_ff=12, max_seq_len=16)

# Llama-2-70B: d_model 8192, 64 query heads, 8 kv heads, head_dim 128, 80 layers, SwiGLU d_ff 28672,
# vocab 32000, untied embeddings.
LLAMA_70B = ModelConfig(vocab_size=32000, d_model=8192, n_layers=80, n_heads=64, n_kv_heads=8, d_ff=28672,
                        max_seq_len=4096)


def _model(config=SMALL, seed=0):
    torch.manual_seed(seed)
    return TinyLM(config)


def _tokens(B=2, T=7, vocab=11, seed=1):
    return torch.randint(0, vocab, (B, T), generator=torch.Generator().manual_seed(seed))


# ---- sizes ----------------------------------------------------------------------------------

def _hand_count_small(tied: bool) -> dict[str, int]:
    d, V, L, d_ff = 8, 11, 2, 12
    head_dim, kv = 2, 2
    attn = d * d + 2 * d * (kv * head_dim) + d * d         # W_q, W_k, W_v, W_o
    ffn = 3 * d * d_ff                                       # W_gate, W_up, W_down
    norms = 2 * d                                            # two RMSNorm gains
    return {"embed": V * d, "layers": L * (attn + ffn + norms), "norm": d, "lm_head": 0 if tied else V * d}


@pytest.mark.parametrize("tied", [False, True])
def test_parameter_counts_match_a_hand_count(tied):
    model = _model(SMALL.replace(tie_embeddings=tied))
    counts = parameter_counts(model)
    expected = _hand_count_small(tied)
    for name, n in expected.items():
        assert counts[name]["trainable"] == n, f"{name}: counted {counts[name]['trainable']} trainable, by hand {n}"
    total = sum(expected.values())
    assert counts["total"]["trainable"] == total, f"total {counts['total']['trainable']}, by hand {total}"
    assert total == sum(p.numel() for p in model.parameters()), "disagrees with torch's own (deduplicated) count"


def test_tied_embeddings_are_counted_once():
    untied = parameter_counts(_model(SMALL))["total"]["trainable"]
    tied_model = _model(SMALL.replace(tie_embeddings=True))
    tied = parameter_counts(tied_model)["total"]["trainable"]
    assert untied - tied == 11 * 8, f"tying should save exactly vocab_size * d_model = 88 parameters, saved {untied - tied}"
    assert tied_model.lm_head.weight is tied_model.embed.weight, "tie_embeddings=True must share one tensor"


def test_rope_tables_are_buffers_not_parameters():
    model = _model(SMALL)
    counts = parameter_counts(model)
    head_dim, T = SMALL.qk_dim, SMALL.max_seq_len
    expected = SMALL.n_layers * 2 * T * head_dim             # cos and sin, in every layer's attention
    assert counts["layers"]["buffers"] == expected, f"layers hold {counts['layers']['buffers']} buffer values, expected {expected}"
    assert counts["total"]["buffers"] == expected, f"{counts['total']['buffers']} buffer values, expected {expected}"
    assert counts["total"]["frozen"] == 0, "no parameter is frozen by default"
    leaked = [n for n, _ in model.named_parameters() if "cos" in n or "sin" in n]
    assert not leaked, f"RoPE tables registered as parameters: {leaked}"


def test_sinusoidal_table_is_the_models_own_buffer():
    config = SMALL.replace(position="sinusoidal")
    counts = parameter_counts(_model(config))
    assert counts["(own)"] == {"trainable": 0, "frozen": 0, "buffers": 16 * 8}, counts.get("(own)")
    assert counts["total"]["buffers"] == 16 * 8, "sinusoidal positions need no RoPE tables"


def test_parameter_counts_of_a_module_without_children():
    rope = RotaryEmbedding(8, 16)
    counts = parameter_counts(rope)
    assert counts["self"]["buffers"] == 2 * 16 * 8 and counts["total"]["buffers"] == 2 * 16 * 8, \
        f"a leaf module's buffers must be counted once, got {counts}"
    assert parameter_counts(RMSNorm(8))["total"]["trainable"] == 8


def test_frozen_parameters_are_counted_apart():
    model = _model(SMALL)
    model.embed.weight.requires_grad_(False)
    counts = parameter_counts(model)
    assert counts["embed"] == {"trainable": 0, "frozen": 88, "buffers": 0}


def test_llama_70b_attention_and_kv_cache_by_hand():
    attn = attention_parameters(LLAMA_70B)
    d, q_out, kv_out = 8192, 64 * 128, 8 * 128
    assert attn["W_q"] == d * q_out == 67_108_864
    assert attn["W_k"] == attn["W_v"] == d * kv_out == 8_388_608
    assert attn["W_o"] == q_out * d
    assert attn["total"] == 150_994_944, f"one 70B attention layer has {attn['total']} parameters, by hand 150,994,944"
    # KV cache: 2 (k and v) * 80 layers * 8 kv heads * 128 dims * 2 bytes = 327,680 bytes (320 KiB) per token.
    per_token = kv_cache_bytes(LLAMA_70B, seq_len=1)
    assert per_token == 2 * 80 * 8 * 128 * 2 == 327_680, f"70B KV cache per token: {per_token} bytes"
    full = kv_cache_bytes(LLAMA_70B, seq_len=4096, batch=8)
    assert full == 8 * 4096 * 327_680, f"{full} bytes for batch 8 x 4096 tokens"
    # Without GQA (64 kv heads) the cache would be 8 times larger.
    assert kv_cache_bytes(LLAMA_70B.replace(n_kv_heads=64), seq_len=1) == 8 * per_token
    assert kv_cache_bytes(LLAMA_70B, seq_len=1, bytes_per_value=4) == 2 * per_token


def test_llama_70b_total_parameters_built_on_the_meta_device():
    """Build the 70B model without allocating memory and count it: the published 68,976,648,192."""
    with torch.device("meta"):
        model = TinyLM(LLAMA_70B)
    d, V, L, d_ff = 8192, 32000, 80, 28672
    per_layer = 150_994_944 + 3 * d * d_ff + 2 * d
    by_hand = 2 * V * d + L * per_layer + d
    assert by_hand == 68_976_648_192     # the Llama-2-70B figure
    counts = parameter_counts(model)
    assert counts["total"]["trainable"] == by_hand, f"counted {counts['total']['trainable']:,}, by hand {by_hand:,}"
    assert counts["layers"]["trainable"] == L * per_layer


def test_kv_cache_with_unequal_value_heads_and_mqa():
    sheet = ModelConfig(d_model=5, n_heads=3, head_dim=2, v_head_dims=(5, 3, 3), n_layers=2)
    assert kv_cache_bytes(sheet, seq_len=10, bytes_per_value=4) == 2 * 10 * (3 * 2 + 11) * 4
    mqa = ModelConfig(d_model=16, n_heads=4, n_kv_heads=1, n_layers=3)
    assert kv_cache_bytes(mqa, seq_len=5) == 3 * 5 * (4 + 4) * 2


@pytest.mark.parametrize("kwargs,field", [(dict(seq_len=0), "seq_len"), (dict(seq_len=4, batch=-1), "batch"),
                                          (dict(seq_len=4, bytes_per_value=1.5), "bytes_per_value")])
def test_kv_cache_refuses_bad_sizes(kwargs, field):
    with pytest.raises(ConfigError, match=f"{field}="):
        kv_cache_bytes(SMALL, **kwargs)


def test_growing_the_vocabulary_changes_only_embedding_and_lm_head():
    small = parameter_counts(_model(SMALL))
    big = parameter_counts(_model(SMALL.replace(vocab_size=50)))
    changed = {name for name in ("embed", "layers", "norm", "lm_head") if small[name] != big[name]}
    assert changed == {"embed", "lm_head"}, f"a bigger vocabulary changed {sorted(changed)}"


# ---- behaviour ------------------------------------------------------------------------------

@pytest.mark.parametrize("fields", [dict(), dict(position="sinusoidal", norm="layernorm", ffn="relu"),
                                    dict(attention="sliding_window", window=3)],
                         ids=["llama", "classic", "sliding_window"])
def test_changing_a_future_token_never_changes_an_earlier_logit(fields):
    model = _model(SMALL.replace(**fields))
    tokens = _tokens()
    logits = model(tokens).logits
    T = tokens.shape[1]
    for t in range(T - 1):
        changed = tokens.clone()
        changed[:, t + 1] = (changed[:, t + 1] + 1 + t) % 11
        new = model(changed).logits
        err = (new[:, : t + 1] - logits[:, : t + 1]).abs().max().item()
        assert err == 0, f"changing token {t + 1} changed the logits at positions <= {t} by {err:.3g}"


def test_loss_decreases_on_a_tiny_repeated_sequence():
    model = _model(SMALL)
    pattern = torch.tensor([3, 1, 4, 1, 5, 9, 2, 6])
    tokens = pattern.repeat(2)[None, :15]
    targets = pattern.repeat(2)[None, 1:16]
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-2)
    losses = []
    for _ in range(30):
        out = model(tokens, targets)
        optimizer.zero_grad()
        out.loss.backward()
        optimizer.step()
        losses.append(out.loss.item())
    assert losses[-1] < 0.5 * losses[0], f"loss went from {losses[0]:.3f} to {losses[-1]:.3f} in 30 steps; expected it to halve"
    assert torch.allclose(out.loss, out.ce_loss), "a dense model has no auxiliary losses"


def test_loss_is_cross_entropy_of_the_logits():
    model = _model(SMALL)
    tokens, targets = _tokens(), _tokens(seed=2)
    targets[0, -1] = -100                       # ignored position
    out = model(tokens, targets)
    log_probs = out.logits.log_softmax(-1)
    keep = targets != -100
    by_hand = -log_probs[keep].gather(-1, targets[keep][:, None]).mean()
    assert abs(out.ce_loss.item() - by_hand.item()) < 1e-5, f"ce_loss {out.ce_loss.item():.6f}, by hand {by_hand.item():.6f}"


def test_greedy_generation_is_deterministic_and_picks_the_argmax():
    model = _model(SMALL)
    prompt = _tokens(B=2, T=3)
    first = model.generate(prompt, max_new_tokens=6)
    second = model.generate(prompt, max_new_tokens=6)
    assert first.shape == (2, 9), f"6 new tokens after 3 should give (2, 9), got {tuple(first.shape)}"
    assert torch.equal(first[:, :3], prompt), "generate must keep the prompt at the front"
    assert torch.equal(first, second), "greedy decoding must give the same tokens every time"
    for t in range(3, 9):
        expected = model(first[:, :t]).logits[:, -1].argmax(-1)
        assert torch.equal(first[:, t], expected), f"token {t} is not the argmax of the logits"


def test_sampling_with_a_seeded_generator_is_reproducible():
    model = _model(SMALL)
    prompt = _tokens(B=3, T=2)
    a = model.generate(prompt, 8, temperature=1.0, generator=torch.Generator().manual_seed(123))
    b = model.generate(prompt, 8, temperature=1.0, generator=torch.Generator().manual_seed(123))
    assert torch.equal(a, b), "the same seed must give the same samples"
    others = [model.generate(prompt, 8, temperature=1.0, generator=torch.Generator().manual_seed(s)) for s in range(5)]
    assert any(not torch.equal(a, o) for o in others), "five other seeds all gave the same sample: is it sampling?"


def test_generation_beyond_max_seq_len_keeps_the_last_window():
    model = _model(SMALL.replace(max_seq_len=6))
    out = model.generate(_tokens(B=1, T=4), max_new_tokens=5)
    assert out.shape == (1, 9), f"generating past max_seq_len=6 gave {tuple(out.shape)}, expected (1, 9)"


def test_left_padding_does_not_change_real_tokens():
    """Left padding: causality alone would not hide it, only the padding mask does. The first
    padded query has no real key to see (a fully masked row) and must not turn into NaN."""
    model = _model(SMALL)
    tokens = _tokens(B=2, T=7)
    real = torch.ones(2, 7, dtype=torch.bool)
    real[0, :2] = False                          # sequence 0: two padding tokens, then 5 real ones
    logits = model(tokens, key_padding_mask=real).logits
    assert torch.isfinite(logits).all(), "a fully masked padding row produced NaN/inf logits"
    changed = tokens.clone()
    changed[0, :2] = (changed[0, :2] + 3) % 11
    logits2 = model(changed, key_padding_mask=real).logits
    err = (logits2[0, 2:] - logits[0, 2:]).abs().max().item()
    assert err == 0, f"changing padding tokens changed real tokens' logits by {err:.3g}"
    unmasked = model(changed).logits
    assert (unmasked[0, 2:] - logits[0, 2:]).abs().max() > 0, "without the mask the padding should be seen"


def test_block_returns_no_aux_losses_when_dense():
    block = DecoderBlock(SMALL)
    out, aux = block(torch.randn(2, 5, 8))
    assert out.shape == (2, 5, 8), f"block output {tuple(out.shape)}"
    assert aux == {}, f"a dense block returned auxiliary losses {aux}"
    assert isinstance(block.ffn, SwiGLU), f"the default feed-forward is SwiGLU, got {type(block.ffn).__name__}"


# ---- bad inputs -----------------------------------------------------------------------------

def test_float_tokens_are_a_clear_error():
    with pytest.raises(TypeError, match="token ids must be integers"):
        _model()(torch.rand(2, 5))


@pytest.mark.parametrize("bad", [11, -1, 100])
def test_token_ids_outside_the_vocabulary_are_a_clear_error(bad):
    tokens = _tokens()
    tokens[1, 2] = bad
    with pytest.raises(ValueError, match=r"token ids must lie in 0\.\.10"):
        _model()(tokens)


def test_too_long_sequence_is_a_clear_error():
    with pytest.raises(ValueError, match="seq_len=17 exceeds max_seq_len=16"):
        _model()(_tokens(T=17))


def test_tokens_must_be_batch_by_seq():
    with pytest.raises(ValueError, match=r"expected \(batch, seq_len\)"):
        _model()(torch.tensor([1, 2, 3]))


def test_targets_must_match_tokens():
    with pytest.raises(ValueError, match="targets has shape"):
        _model()(_tokens(T=5), targets=_tokens(T=4))


def test_bad_generation_arguments_are_clear_errors():
    model = _model()
    with pytest.raises(ValueError, match="temperature"):
        model.generate(_tokens(), 2, temperature=-1.0)
    with pytest.raises(ValueError, match="max_new_tokens"):
        model.generate(_tokens(), -2)
