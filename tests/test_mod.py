"""Mixture-of-Depths: the batched block against a per-token reference, gradients through r,
true positions, causality of the fixes, MoDE, FLOPs against torch's own FLOP counter."""
import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

import tinymoe as tm
from tinymoe.mod import (IntegratedMoDE, MoDBlock, decision_agreement, forward_flops, flops_saving,
                         gather_tokens, in_top_k, mod_block_reference, routed_tokens, scatter_tokens,
                         select_tokens, set_decision)
from tinymoe.moe import expert_mlp


def mod_config(capacity=0.4, router_weight="sigmoid", n_layers=1, layers=(0,), **changes):
    base = dict(vocab_size=24, d_model=8, n_layers=n_layers, n_heads=2, max_seq_len=32)
    base.update(changes)
    return tm.ModelConfig(**base, mod=tm.MoDConfig(capacity=capacity, router_weight=router_weight,
                                                   layers=layers)).validate()


def make_block(config, seed=0):
    torch.manual_seed(seed)
    return MoDBlock(config, layer=0).eval()


@pytest.mark.parametrize("capacity", [0.25, 0.4, 1.0])
@pytest.mark.parametrize("router_weight", ["sigmoid", "logit"])
@pytest.mark.parametrize("attention", ["dense", "sliding_window"])
def test_batched_block_equals_per_token_reference(capacity, router_weight, attention):
    config = mod_config(capacity, router_weight, attention=attention, window=3 if attention == "sliding_window" else None)
    block = make_block(config)
    x = torch.randn(2, 10, 8, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        got, _ = block(x)
    expected = mod_block_reference(block, x)
    diff = (got - expected).abs().max().item()
    assert diff < 1e-5, f"batched MoD block differs from the per-token reference by {diff:.2e}"


def test_skipped_rows_are_copied_unchanged_and_routed_rows_scaled_by_r():
    block = make_block(mod_config(0.4))
    x = torch.randn(2, 10, 8)
    trace = tm.Trace()
    with torch.no_grad():
        out, _ = block(x, trace)
    routed = trace["mod.routed"]
    assert int(routed.sum()) == 2 * 4, f"capacity 0.4 of 10 tokens should route 4 per sequence, got {routed.sum(-1).tolist()}"
    assert torch.equal(out[~routed], x[~routed]), "a skipped token's row changed"
    idx, r = trace["mod.idx"], trace["mod.router_weights"]
    expected = gather_tokens(x, idx) + r[..., None] * (trace["mod.y_routed"] - gather_tokens(x, idx))
    assert torch.allclose(gather_tokens(out, idx), expected, atol=1e-6), "routed rows are not x + r * (block(x) - x)"


def test_gradients_reach_the_router_through_r():
    block = make_block(tm.ModelConfig(vocab_size=24, d_model=8, n_heads=2, max_seq_len=32,
                                      mod=tm.MoDConfig(capacity=0.5, layers=(0,), aux_loss_coef=0.0, predictor=False)))
    block.train()
    x = torch.randn(2, 10, 8)
    out, aux = block(x)
    assert aux == {}, f"with the fixes off there should be no auxiliary loss, got {list(aux)}"
    out.pow(2).sum().backward()
    grad = block.router.weight.grad
    assert grad is not None and grad.abs().sum() > 0, "the router got no gradient from the block's output"


def test_r_fixed_to_one_blocks_the_router_gradient():
    block = make_block(tm.ModelConfig(vocab_size=24, d_model=8, n_heads=2, max_seq_len=32,
                                      mod=tm.MoDConfig(capacity=0.5, layers=(0,), router_weight="one",
                                                       aux_loss_coef=0.0, predictor=False)))
    out, _ = block(torch.randn(2, 10, 8))
    out.pow(2).sum().backward()
    assert block.router.weight.grad is None or block.router.weight.grad.abs().sum() == 0, \
        "with r = 1, top-k alone has no gradient: the router should receive none"


def test_full_capacity_with_r_one_equals_the_plain_block():
    block = make_block(mod_config(1.0, "one"))
    x = torch.randn(2, 10, 8)
    with torch.no_grad():
        got, _ = block(x)
        plain, _ = block.block(x)
    diff = (got - plain).abs().max().item()
    # x + 1 * (y - x) equals y up to one rounding of the add and subtract
    assert diff < 1e-6, f"capacity 1 with r = 1 differs from the plain block by {diff:.2e}"


def test_routed_tokens_keep_their_true_positions():
    block = make_block(mod_config(0.5))
    x = torch.randn(1, 10, 8)
    trace = tm.Trace()
    with torch.no_grad():
        out, _ = block(x, trace)
        idx = trace["mod.idx"]
        renumbered, _ = block.block(gather_tokens(x, idx))                  # positions 0..k-1: the bug
    assert not torch.equal(idx, torch.arange(idx.shape[1])[None]), "this seed routed the first k tokens; pick another"
    assert torch.allclose(trace["mod.y_routed"], trace["block.out"])
    diff = (trace["mod.y_routed"] - renumbered).abs().max().item()
    assert diff > 1e-3, f"RoPE at renumbered positions gave the same output (diff {diff:.1e}): positions are not used"


def test_a_routed_tokens_output_ignores_skipped_tokens_values():
    block = make_block(mod_config(0.4))
    x = torch.randn(2, 10, 8)
    trace = tm.Trace()
    with torch.no_grad():
        out, _ = block(x, trace)
    routed = trace["mod.routed"]
    w = block.router.weight[0].detach()
    delta = torch.randn(2, 10, 8) * 3
    delta = delta - (delta @ w)[..., None] * w / w.dot(w)                 # leaves every router logit as it was
    x2 = torch.where(routed[..., None], x, x + delta)                      # change only the skipped tokens
    trace2 = tm.Trace()
    with torch.no_grad():
        out2, _ = block(x2, trace2)
    assert torch.equal(trace2["mod.routed"], routed), "the change moved the routing; the test is void"
    diff = (out2[routed] - out[routed]).abs().max().item()
    assert diff < 1e-6, f"routed tokens' outputs moved by {diff:.2e} when only skipped tokens changed"


def test_padding_tokens_are_never_routed():
    block = make_block(mod_config(0.5))
    x = torch.randn(2, 10, 8)
    real = torch.ones(2, 10, dtype=torch.bool)
    real[1, 6:] = False
    trace = tm.Trace()
    with torch.no_grad():
        block(x, trace, key_padding_mask=real)
    assert not (trace["mod.routed"] & ~real).any(), "a padding token was routed through the block"


def test_select_tokens_sorts_indices_not_ranks():
    logits = torch.tensor([[0.1, 5.0, -1.0, 3.0, 0.0, 4.0]])
    idx = select_tokens(logits, 3)
    assert idx.tolist() == [[1, 3, 5]], f"top 3 in sequence order should be tokens 1, 3, 5, got {idx.tolist()}"
    assert in_top_k(logits, 3).nonzero()[:, 1].tolist() == [1, 3, 5]
    assert routed_tokens(10, 0.4) == 4 and routed_tokens(10, 0.3) == 3 and routed_tokens(7, 0.01) == 1
    x = torch.arange(12.0).reshape(1, 6, 2)
    y = scatter_tokens(x, idx, gather_tokens(x, idx) * 0)
    assert y[0, [1, 3, 5]].abs().sum() == 0 and torch.equal(y[0, [0, 2, 4]], x[0, [0, 2, 4]])


def _lm(decide_seed=0, n_layers=4, **mod):
    config = tm.ModelConfig(vocab_size=24, d_model=8, n_layers=n_layers, n_heads=2, max_seq_len=32,
                            mod=tm.MoDConfig(capacity=0.25, **mod))
    torch.manual_seed(decide_seed)
    return tm.TinyLM(config).eval()


def _decisions(model, tokens):
    trace = tm.Trace()
    with torch.no_grad():
        model(tokens, trace=trace)
    return {name: trace[name] for name in trace.keys() if name.endswith("mod.routed")}


def test_top_k_decision_of_an_earlier_token_can_change_with_a_future_token():
    block = make_block(mod_config(0.25))
    w = block.router.weight[0].detach()
    x = torch.randn(1, 8, 8, generator=torch.Generator().manual_seed(3))
    trace = tm.Trace()
    with torch.no_grad():
        x[0, -1] = -50 * w / w.norm()                                        # the last token: a very low logit
        block(x, trace)
        before = trace["mod.routed"][0].clone()
        x[0, -1] = 50 * w / w.norm()                                         # now a very high one
        block(x, trace)
    after = trace["mod.routed"][0]
    assert int(before[:-1].sum()) == 2 and int(after[:-1].sum()) == 1
    assert not torch.equal(before[:-1], after[:-1]), "top-k over the sequence should let a future token change the past"


@pytest.mark.parametrize("decide", ["router", "predictor"])
def test_causal_decisions_never_change_when_a_future_token_changes(decide):
    model = set_decision(_lm(), decide)
    tokens = torch.randint(0, 24, (3, 16), generator=torch.Generator().manual_seed(0))
    before = _decisions(model, tokens)
    for t in (12, 4):
        changed = tokens.clone()
        changed[:, t:] = (changed[:, t:] + 7) % 24                          # change every token from t on
        after = _decisions(model, changed)
        for name in before:
            assert torch.equal(before[name][:, :t], after[name][:, :t]), (
                f"{name} with decide={decide!r}: a decision before token {t} changed with the tokens after it")
    # and the logits of the tokens before t do not move either: the whole model is causal
    with torch.no_grad():
        a, b = model(tokens).logits, model(changed).logits
    assert torch.allclose(a[:, :4], b[:, :4], atol=1e-6)


def test_aux_loss_training_makes_the_router_agree_with_top_k():
    model = _lm(n_layers=2, aux_loss_coef=1.0)
    model.train()
    g = torch.Generator().manual_seed(0)
    data = torch.randint(0, 24, (64, 16), generator=g)
    held_out = torch.randint(0, 24, (16, 16), generator=g)
    before = decision_agreement(model, held_out)["all"]
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-2)
    for step in range(40):
        batch = data[(step * 16) % 64:(step * 16) % 64 + 16]
        out = model(batch, targets=batch)
        optimizer.zero_grad()
        sum(out.aux_losses.values()).backward()                             # the fixes' losses alone
        optimizer.step()
    after = decision_agreement(model, held_out)["all"]
    for fix in ("router", "predictor"):
        assert after[fix] > 0.9, f"after training the {fix} agrees with top-k on only {after[fix]:.1%} of held-out tokens"
        assert after[fix] > after["always_skip"], f"the {fix} ({after[fix]:.1%}) does no better than always skipping"
    assert before["router"] < after["router"], f"the router's agreement did not improve ({before['router']:.1%})"


def test_config_errors_name_the_field():
    cases = [(dict(capacity=0.0), "mod.capacity"), (dict(capacity=1.5), "mod.capacity"),
             (dict(every_n_layers=0), "mod.every_n_layers"), (dict(layers=(0, 5)), "mod.layers"),
             (dict(layers=(1, 1)), "mod.layers"), (dict(kind="skip"), "mod.kind"),
             (dict(router_weight="relu"), "mod.router_weight"), (dict(kind="integrated", n_noop_experts=1), "mod.kind"),
             (dict(kind="integrated"), "mod.n_noop_experts"), (dict(n_noop_experts=2), "mod.n_noop_experts"),
             (dict(aux_loss_coef=-1.0), "mod.aux_loss_coef")]
    for changes, field in cases:
        with pytest.raises(tm.ConfigError) as error:
            tm.ModelConfig(n_layers=4, mod=tm.MoDConfig(**changes)).validate()
        assert error.value.field == field, f"{changes} named {error.value.field!r}, expected {field!r}"


def test_routed_pattern_every_other_block_by_default():
    config = tm.ModelConfig(n_layers=6, mod=tm.MoDConfig())
    assert [config.mod_in_layer(i) for i in range(6)] == [False, True] * 3
    assert [type(b).__name__ for b in tm.TinyLM(config).layers] == ["DecoderBlock", "MoDBlock"] * 3


def test_staged_mode_routes_tokens_around_an_moe_block():
    config = tm.ModelConfig(vocab_size=24, d_model=8, n_layers=2, n_heads=2, max_seq_len=32,
                            moe=tm.MoEConfig(n_experts=4, top_k=2), mod=tm.MoDConfig(capacity=0.5))
    torch.manual_seed(0)
    model = tm.TinyLM(config)
    tokens = torch.randint(0, 24, (2, 10))
    trace = tm.Trace()
    out = model(tokens, targets=tokens, trace=trace)
    assert {"load_balancing", "z_loss", "mod_router_bce", "mod_predictor_bce"} <= set(out.aux_losses)
    assert trace["layers.1.block.moe.x"].shape == (2, 5, 8), "the MoE inside the routed block should see only 5 tokens"
    out.loss.backward()


def test_integrated_mode_noop_slots_add_nothing():
    config = tm.ModelConfig(vocab_size=24, d_model=8, n_layers=1, n_heads=2, max_seq_len=32,
                            moe=tm.MoEConfig(n_experts=3, top_k=2, dispatch="loop"),
                            mod=tm.MoDConfig(kind="integrated", n_noop_experts=2))
    torch.manual_seed(0)
    layer = tm.TinyLM(config).layers[0].ffn
    assert isinstance(layer, IntegratedMoDE) and layer.router.weight.shape == (5, 8)
    x = torch.randn(1, 40, 8)
    trace = tm.Trace()
    with torch.no_grad():
        out, losses = layer(x, trace)
    noop = trace["moe.noop_slots"]
    assert noop.any() and (~noop).any(), "this seed should route some slots to no-op experts and some to real ones"
    ids, gates = trace["moe.expert_ids"], trace["moe.gates"]
    expected = torch.zeros(40, 8)
    tokens = x[0]
    for n in range(40):
        for j in range(2):
            if not noop[n, j]:
                e = int(ids[n, j])
                expected[n] += gates[n, j] * expert_mlp(tokens[n:n + 1], layer.w_gate[e], layer.w_up[e], layer.w_down[e])[0]
    assert torch.allclose(out[0], expected, atol=1e-6), "no-op slots should add nothing and real slots their gated expert"
    all_noop = noop.all(-1)
    assert torch.equal(out[0][all_noop], torch.zeros_like(out[0][all_noop])), "a token on no-op experts only must get zero"
    assert torch.isfinite(losses["load_balancing"])


@pytest.mark.parametrize("capacity", [0.125, 0.5, 1.0])
def test_forward_flops_match_torch_flop_counter(capacity):
    config = tm.ModelConfig(vocab_size=24, d_model=16, n_layers=4, n_heads=2, n_kv_heads=1, max_seq_len=64,
                            mod=tm.MoDConfig(capacity=capacity))
    model = tm.TinyLM(config).eval()
    tokens = torch.randint(0, 24, (1, 48))
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        model(tokens)
    counted = counter.get_total_flops()
    predicted = forward_flops(config, 48)["total"]
    assert predicted == counted, f"forward_flops says {predicted:,} FLOPs, torch counted {counted:,}"


def test_attention_flops_grow_with_the_square_of_routed_tokens():
    config = tm.ModelConfig(d_model=16, n_layers=2, n_heads=2, max_seq_len=1024, mod=tm.MoDConfig(capacity=0.5))
    from tinymoe.mod import block_flops
    full, half = block_flops(config, 512), block_flops(config, 256)
    assert half["attention"] * 4 == full["attention"] and half["ffn"] * 2 == full["ffn"]
    assert 0 < flops_saving(config, 512, 0.5) < flops_saving(config, 512, 0.125) < 0.5
