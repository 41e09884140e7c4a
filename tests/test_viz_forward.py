"""traced_forward: the seeded run behind every picture and explorer."""
import torch

import tinymoe as tm
from tinymoe.viz import traced_forward


def test_adding_a_token_keeps_the_earlier_tokens_numbers():
    config = tm.ModelConfig(d_model=5, n_heads=1, head_dim=4, max_seq_len=64)
    short = traced_forward(config, module="attention", seq_len=10)
    long = traced_forward(config, module="attention", seq_len=11)
    diff = (long.inputs[:, :10] - short.inputs).abs().max().item()
    assert diff == 0, f"the first 10 input tokens changed by up to {diff} when an 11th was added"
    q_diff = (long.trace["attn.q"][..., :10, :] - short.trace["attn.q"]).abs().max().item()
    assert q_diff < 1e-6, f"the first 10 queries changed by up to {q_diff} when an 11th token was added"


def test_adding_a_head_keeps_the_input():
    one = traced_forward(tm.ModelConfig(d_model=6, n_heads=1, head_dim=2), module="attention")
    three = traced_forward(tm.ModelConfig(d_model=6, n_heads=3, head_dim=2), module="attention")
    assert torch.equal(one.inputs, three.inputs), "drawing more weights for more heads changed the input x"


def test_same_config_and_seed_give_the_same_numbers_and_leave_global_rng_alone():
    config = tm.ModelConfig(d_model=5, n_heads=1, head_dim=4)
    torch.manual_seed(123)
    before = torch.random.get_rng_state()
    a = traced_forward(config, module="attention")
    b = traced_forward(config, module="attention")
    assert torch.equal(torch.random.get_rng_state(), before), "traced_forward changed the global random state"
    assert torch.equal(a.trace["attn.out"], b.trace["attn.out"]), "two runs with the same seed differ"
