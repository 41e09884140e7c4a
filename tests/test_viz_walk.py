"""The walk: a whole trace as sheets, one line per step of the forward pass."""
from __future__ import annotations

import re

import pytest

import tinymoe
from tinymoe import viz
from tinymoe.viz.forward import traced_forward
from tinymoe.viz.walk import step_of


def captions(html: str) -> list[str]:
    return re.findall(r"<b style=\"font-family:[^\"]*;font-size:13px\">([^<]*)</b>", html)


def steps(html: str) -> list[str]:
    return re.findall(r"\d+\. ([^<]+)(?:<span|</div>)", html)


def test_every_record_appears_once_in_forward_order_with_w_o_beside_its_output():
    run = traced_forward(tinymoe.ModelConfig(d_model=4, n_heads=2, position="none"), "attention", seq_len=3)
    shown = captions(viz.walk(run.trace).html)
    recorded = list(run.trace.keys())
    assert sorted(shown) == sorted(recorded), f"missing {set(recorded) - set(shown)}, extra {set(shown) - set(recorded)}"
    assert shown.index("attn.W_o") == shown.index("attn.out") - 1, "W_o should be drawn just before attn.out"
    rest = [n for n in shown if n != "attn.W_o"]
    assert rest == [n for n in recorded if n != "attn.W_o"], "apart from W_o the recording order is kept"


def test_steps_follow_the_attention_story():
    run = traced_forward(tinymoe.ModelConfig(d_model=4, n_heads=2), "block", seq_len=3)
    order = steps(viz.walk(run.trace).html)
    story = ["input", "norm", "q / k / v", "RoPE", "scores", "weights", "heads", "concat", "output projection",
             "residual", "feed-forward"]
    positions = [order.index(s) for s in story]
    assert positions == sorted(positions), f"steps out of order: {order}"


def test_step_names_come_from_the_trace_vocabulary():
    assert step_of("layers.1.attn.scores") == ("layers.1.attn", "scores")
    assert step_of("layers.0.attn.head2") == ("layers.0.attn", "heads")
    assert step_of("layers.0.norm_2.x_hat") == ("layers.0.norm_2", "norm")
    assert step_of("layers.0.attn.out") == ("layers.0.attn", "output projection")
    assert step_of("layers.0.out") == ("layers.0", "residual")
    assert step_of("layers.0.moe.router_probs") == ("layers.0.moe", "mixture of experts")


def test_names_and_prefix_choose_what_is_walked():
    run = traced_forward(tinymoe.ModelConfig(d_model=4, n_heads=2), "model", seq_len=3)
    chosen = ["layers.0.attn.q", "layers.0.attn.weights"]
    assert captions(viz.walk(run.trace, names=chosen).html) == chosen
    shown = captions(viz.walk(run.trace, prefix="layers.0.ffn").html)
    assert shown and all(n.startswith("layers.0.ffn") for n in shown)
    with pytest.raises(KeyError, match="attn.nope"):
        viz.walk(run.trace, names=["attn.nope"])


def test_sheet_options_pass_through():
    run = traced_forward(tinymoe.ModelConfig(d_model=4, n_heads=2), "attention", seq_len=3)
    html = viz.walk(run.trace, names=["attn.x"], orientation="by_hand").html
    assert "tokens as columns" in html and "<script" not in html
