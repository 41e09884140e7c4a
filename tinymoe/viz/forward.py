"""Build a core module from a config with a fixed seed and run one traced forward pass.

Every picture in the viz layer (a shapes table, an explorer after a slider move) comes from here:
the same seed gives the same weights and the same input for the same config, so moving a slider
and moving it back redraws the same numbers, and two configs are compared on equal terms.
The global random state is left as it was (the work happens inside torch.random.fork_rng), so
drawing a picture never changes what the reader's next cell computes.

    run = traced_forward(config, module="attention", seq_len=10)
    run.trace["attn.weights"]       # (1, n_heads, 10, 10)

Every explorer draws through this one entry point: "model", "block", "attention", "moe" (the
Mixture-of-Experts layer alone) and "norm" (the config's LayerNorm / RMSNorm alone). An explorer
that needs inputs of its own (tokens of different sizes for a norm) passes `inputs=`; one that
needs training-mode behaviour (a noisy router's noise) passes `train=True`.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from ..block import DecoderBlock, make_attention
from ..config import ModelConfig
from ..model import TinyLM
from ..trace import Trace, record

__all__ = ["Run", "traced_forward", "MODULES"]

MODULES = ("model", "block", "attention", "moe", "norm")


@dataclass
class Run:
    """One traced forward: what was built, what went in, what was recorded."""
    config: ModelConfig
    module_kind: str
    module: nn.Module
    inputs: torch.Tensor
    trace: Trace
    seq_len: int
    batch: int
    seed: int


def build(config: ModelConfig, module: str = "model") -> nn.Module:
    """The core module of that kind, built from the config (no seeding here)."""
    if module == "model":
        return TinyLM(config)
    if module == "block":
        return DecoderBlock(config)
    if module == "attention":
        return make_attention(config)                                   # dense, sliding window or native sparse
    if module == "moe":
        from ..moe import MoE
        if config.moe is None:
            raise ValueError("module='moe' needs a config with moe=MoEConfig(...)")
        return MoE(config)
    if module == "norm":
        from ..norm import make_norm
        return make_norm(config, name="norm")
    raise ValueError(f"module={module!r}: must be one of {', '.join(map(repr, MODULES))}")


@torch.no_grad()
def traced_forward(config: ModelConfig, module: str = "model", seq_len: int = 10, batch: int = 1,
                   seed: int = 0, inputs: torch.Tensor | None = None, train: bool = False,
                   state: dict | None = None) -> Run:
    """Validate the config, build `module` (one of MODULES) with `seed`, feed it `batch` x
    `seq_len` seeded inputs (token ids for the model, N(0, 1) vectors otherwise; or `inputs`,
    recorded as "<module>.x" when the module does not record its own input) and record
    everything in a Trace. `train=True` runs the module in training mode (a noisy router's noise,
    seeded). `state` (a state_dict, e.g. of the module a notebook just built by hand) replaces the
    seeded weights when every one of its tensors has the shape this config gives; otherwise the
    seeded weights stay (a slider moved away from the hand-built sizes). Raises the config's
    ConfigError for an impossible config."""
    config.validate()
    if inputs is not None:
        batch, seq_len = int(inputs.shape[0]), int(inputs.shape[1])
    for name, value in (("seq_len", seq_len), ("batch", batch)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{name}={value!r}: must be a positive whole number")
    if seq_len > config.max_seq_len:
        raise ValueError(f"seq_len={seq_len} exceeds max_seq_len={config.max_seq_len}: raise max_seq_len in the config")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        net = build(config, module).train(train)
    if state is not None and _fits(net, state):
        net.load_state_dict(state)
    # The inputs come from their own generator, drawn for the longest sequence and cut to seq_len:
    # adding a token (or a head, which draws more weights) leaves the earlier tokens' numbers alone.
    g = torch.Generator().manual_seed(seed + 1)
    if inputs is not None:
        pass
    elif module == "model":
        inputs = torch.randint(0, config.vocab_size, (batch, config.max_seq_len), generator=g)[:, :seq_len]  # (B, T)
    else:
        inputs = torch.randn(batch, config.max_seq_len, config.d_model, generator=g)[:, :seq_len]  # (B, T, d_model)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        trace = Trace()
        if module == "norm":
            record(trace, "norm.x", inputs, "input")               # a norm records its statistics, not its input
        net(inputs, trace=trace)
    return Run(config, module, net, inputs, trace, seq_len, batch, seed)


def _fits(net: nn.Module, state: dict) -> bool:
    """True when `state` holds exactly net's tensors, each of the same shape."""
    own = net.state_dict()
    return set(own) == set(state) and all(tuple(own[k].shape) == tuple(state[k].shape) for k in own)
