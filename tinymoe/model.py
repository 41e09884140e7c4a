"""A decoder-only language model built entirely from a ModelConfig.

    tokens -> embedding (+ sinusoidal positions) -> n_layers x DecoderBlock -> final norm
           -> LM head -> logits over the vocabulary -> cross-entropy against the next token

Growing the vocabulary touches only the embedding and the LM head; everything between sees
d_model-wide vectors. `generate` samples greedily (temperature 0) or at a temperature, with a
KV cache (tinymoe/kv_cache.py) where the config allows one: prefill the prompt once, then one
token per step.

The model is the edge where a user's config and data come in, so it is where they are checked:
it keeps its own copy of the config (changing the original afterwards cannot break it), refuses
a config whose parameters would not fit in this machine's memory before allocating any, and
turns careless inputs (a list of ids, float targets, an empty batch) into an error that names
the argument and the rule.
"""
from __future__ import annotations

import copy
import math
import os
from dataclasses import dataclass, field

import warnings

import torch
from torch import nn
from torch.nn import functional as F

from .attention import _describe
from .block import make_block
from .config import ConfigError, ModelConfig
from .kv_cache import KVCache, kv_cache_unsupported
from .norm import make_norm
from .rope import sinusoidal_positions
from .trace import Trace, record, scoped

__all__ = ["TinyLM", "LMOutput", "estimated_model_bytes"]

IGNORE_INDEX = -100                               # a target of -100 is left out of the loss (padding)


@dataclass
class LMOutput:
    logits: torch.Tensor                          # (B, T, vocab_size)
    loss: torch.Tensor | None = None              # cross-entropy + auxiliary losses
    ce_loss: torch.Tensor | None = None           # cross-entropy alone
    aux_losses: dict = field(default_factory=dict)  # per-name sums over the MoE layers


def estimated_model_bytes(config: ModelConfig) -> dict[str, int]:
    """What building the model would allocate, from the config alone (nothing is built):
    {"parameters": count, "buffers": count, "bytes": their total in the default dtype}. Parameters
    are sizes.model_parameters' (native sparse attention counted as dense: it adds a little)."""
    from .sizes import model_parameters
    countable = config if config.attention != "native_sparse" else config.replace(attention="dense", nsa=None)
    parameters = model_parameters(countable)["total"]
    rope = 2 * config.max_seq_len * config.qk_dim if config.position == "rope" else 0
    buffers = config.n_layers * rope + (config.max_seq_len * config.d_model if config.position == "sinusoidal" else 0)
    if config.moe is not None and config.moe.router == "sigmoid_bias":
        n_moe = sum(config.moe_in_layer(i) for i in range(config.n_layers))
        buffers += n_moe * config.moe.n_experts                      # each layer's selection bias
    item = torch.empty((), dtype=torch.get_default_dtype()).element_size()
    return {"parameters": parameters, "buffers": buffers, "bytes": (parameters + buffers) * item}


def _device_memory_bytes() -> int | None:
    """Memory of the device a model is built on: the GPU's, or this machine's physical memory;
    None on the meta device (nothing is allocated) or where the OS does not say."""
    device = torch.get_default_device()
    if device.type == "meta":
        return None
    if device.type == "cuda":
        return torch.cuda.get_device_properties(device).total_memory
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return None


def _check_fits_in_memory(config: ModelConfig) -> None:
    estimate = estimated_model_bytes(config)
    memory = _device_memory_bytes()
    if memory is not None and estimate["bytes"] > memory:
        # Blame the field that contributes most: the blocks, or the embeddings.
        layers_share = estimate["parameters"] - config.vocab_size * config.d_model * (1 if config.tie_embeddings else 2)
        field_name = "n_layers" if layers_share * 2 > estimate["parameters"] else "vocab_size"
        raise ConfigError(field_name, getattr(config, field_name),
                          f"this model would need an estimated {estimate['bytes'] / 2**30:,.1f} GiB "
                          f"({estimate['parameters']:,} parameters, {estimate['buffers']:,} buffer values), "
                          f"more than this machine's {memory / 2**30:,.1f} GiB of memory; make it smaller")


class TinyLM(nn.Module):
    def __init__(self, config: ModelConfig):
        super().__init__()
        if not isinstance(config, ModelConfig):
            raise ConfigError("config", config, "must be a ModelConfig(...): TinyLM builds every layer from it")
        # Our own copy, checked once more (a config can be edited after it was made): the layers
        # below trust it.
        config = copy.deepcopy(config).validate()
        _check_fits_in_memory(config)
        self.config = config
        self.embed = nn.Embedding(config.vocab_size, config.d_model)
        if config.position == "sinusoidal":
            table = sinusoidal_positions(config.max_seq_len, config.d_model, dtype=torch.get_default_dtype())
            self.register_buffer("pos", table, persistent=False)           # (max_seq_len, d_model)
        else:
            self.pos = None
        self.layers = nn.ModuleList(make_block(config, layer=i) for i in range(config.n_layers))
        self.norm = make_norm(config, name="final_norm")
        self.lm_head = nn.Linear(config.d_model, config.vocab_size, bias=False)
        if config.tie_embeddings:
            self.lm_head.weight = self.embed.weight

    def _apply(self, fn, *args, **kwargs):
        """.to() / .double() / .half(): recompute the sinusoidal table at its new dtype from float64
        (a cast would carry float32's rounding into a float64 model)."""
        super()._apply(fn, *args, **kwargs)
        if self.pos is not None and self.pos.is_floating_point() and self.pos.device.type != "meta":
            self.pos = sinusoidal_positions(self.config.max_seq_len, self.config.d_model,
                                            dtype=self.pos.dtype).to(self.pos.device)
        return self

    def _check_ids(self, name: str, ids, allow_ignore: bool = False) -> None:
        """Token ids (or targets): an integer tensor (batch, seq_len) with values in 0..vocab_size-1
        (targets may also hold -100, left out of the loss)."""
        vocab = self.config.vocab_size
        if not isinstance(ids, torch.Tensor):
            raise TypeError(f"{name} must be a torch.Tensor of token ids (batch, seq_len); got {_describe(ids)} "
                            f"(wrap it: torch.tensor({name}) for a nested list, torch.from_numpy for an array)")
        if ids.dtype not in (torch.int64, torch.int32):
            raise TypeError(f"{name} has dtype {ids.dtype}: token ids must be integers (torch.long); "
                            f"did you pass embeddings, logits or a float tensor?")
        if ids.dim() != 2:
            raise ValueError(f"{name} has shape {tuple(ids.shape)}: expected (batch, seq_len) token ids")
        if ids.numel():
            low, high = int(ids.min()), int(ids.max())
            ok = ids >= 0
            if allow_ignore:
                ok = ok | (ids == IGNORE_INDEX)
            if not bool(ok.all()) or high >= vocab:
                extra = f" (or {IGNORE_INDEX} to leave a position out of the loss)" if allow_ignore else ""
                raise ValueError(f"{name}: token ids must lie in 0..{vocab - 1} (vocab_size){extra}; got {low}..{high}")

    def forward(self, tokens: torch.Tensor, targets: torch.Tensor | None = None,
                trace: Trace | None = None, key_padding_mask: torch.Tensor | None = None,
                cache: KVCache | None = None) -> LMOutput:
        """tokens: (B, T) int64 -> LMOutput with logits (B, T, vocab_size).

        cache: a KVCache; the tokens then sit at positions cache.length .. cache.length + T - 1,
        their keys and values are appended, and cache.length advances by T."""
        self._check_ids("tokens", tokens)
        B, T = tokens.shape
        if B == 0 or T == 0:
            raise ValueError(f"tokens has shape {(B, T)}: batch and seq_len must be at least 1")
        if cache is not None and (cache.batch != B or cache.config != self.config):
            raise ValueError(f"this KVCache was made for batch={cache.batch} and another config; "
                             f"make KVCache(model.config, batch={B})")
        positions = cache.next_positions(T) if cache is not None else None    # (T,) true positions
        if T > self.config.max_seq_len:
            raise ValueError(f"seq_len={T} exceeds max_seq_len={self.config.max_seq_len}: raise max_seq_len in the config")
        if targets is not None:
            self._check_ids("targets", targets, allow_ignore=True)
            if tuple(targets.shape) != (B, T):
                raise ValueError(f"targets has shape {tuple(targets.shape)}: expected the tokens' shape {(B, T)} "
                                 f"(targets[b, t] is the token that should follow tokens[b, t])")
        record(trace, "tokens", tokens, "input")
        record(trace, "embed.W_E", self.embed.weight, "weight")
        x = self.embed(tokens)                                      # (B, T, d_model)
        record(trace, "embed.out", x)
        if self.pos is not None:
            pos = self.pos[:T] if positions is None else self.pos[positions]   # (T, d_model)
            pos = pos.to(x.dtype)
            x = x + pos                                             # (B, T, d_model)
            record(trace, "embed.pos", pos, "buffer")
            record(trace, "embed.with_pos", x)
        aux_losses: dict[str, torch.Tensor] = {}
        for i, block in enumerate(self.layers):
            cached = {} if cache is None else {"cache": cache.layers[i], "positions": positions}
            x, aux = block(x, scoped(trace, f"layers.{i}"), key_padding_mask, **cached)
            for name, value in aux.items():
                aux_losses[name] = aux_losses.get(name, 0) + value
        if cache is not None:
            cache.advance(T)
        x = self.norm(x, trace)
        logits = self.lm_head(x)                                    # (B, T, vocab_size)
        record(trace, "lm_head.W_U", self.lm_head.weight, "weight")
        record(trace, "logits", logits, "output")
        out = LMOutput(logits=logits, aux_losses=aux_losses)
        if targets is not None:
            out.ce_loss = F.cross_entropy(logits.reshape(B * T, -1), targets.reshape(B * T), ignore_index=IGNORE_INDEX)
            out.loss = out.ce_loss + sum(aux_losses.values())
        return out

    @torch.no_grad()
    def generate(self, tokens: torch.Tensor, max_new_tokens: int, temperature: float = 0.0,
                 generator: torch.Generator | None = None, use_cache: bool = True,
                 top_k: int | None = None) -> torch.Tensor:
        """Append max_new_tokens tokens: greedy at temperature 0, else sample softmax(logits / t)
        (from the top_k most likely tokens only, when top_k is given). Returns (B, T + new).

        use_cache: prefill a KVCache with the prompt, then feed one token per step. A config that
        cannot use one (kv_cache_unsupported) warns and recomputes the whole context every step,
        as does every step once the sequence reaches max_seq_len (the context then slides)."""
        new = list(self.stream(tokens, max_new_tokens, temperature, generator, use_cache, top_k))
        return torch.cat([tokens, *new], dim=1) if new else tokens

    @torch.no_grad()
    def stream(self, tokens: torch.Tensor, max_new_tokens: int, temperature: float = 0.0,
               generator: torch.Generator | None = None, use_cache: bool = True, top_k: int | None = None,
               stop_token_ids: tuple[int, ...] = ()):
        """Yield each new token, shaped (B, 1), as soon as it is chosen (for printing as it comes).
        Stops early once every sequence has produced one of stop_token_ids (it is yielded too)."""
        _check_sampling(tokens, max_new_tokens, temperature, top_k, self.config.vocab_size)
        cache = None
        if use_cache and max_new_tokens > 0:
            reason = kv_cache_unsupported(self.config)
            if reason is not None:
                warnings.warn(f"generate: no KV cache ({reason}); recomputing the whole context for every token",
                              stacklevel=3)
            elif tokens.shape[1] < self.config.max_seq_len:
                weight = self.embed.weight
                max_len = min(self.config.max_seq_len, tokens.shape[1] + max_new_tokens)   # no bigger than needed
                cache = KVCache(self.config, batch=tokens.shape[0], max_len=max_len, dtype=weight.dtype,
                                device=weight.device)
        new_tokens = tokens                                                # what the next forward reads
        done = torch.zeros(tokens.shape[0], dtype=torch.bool, device=tokens.device)
        for _ in range(max_new_tokens):
            if cache is not None and cache.length < cache.max_len:
                logits = self(new_tokens, cache=cache).logits[:, -1]      # (B, vocab_size)
            else:
                context = tokens[:, -self.config.max_seq_len:]             # (B, <= max_seq_len)
                logits = self(context).logits[:, -1]                      # (B, vocab_size)
            next_token = sample_next_token(logits, temperature, top_k, generator)   # (B, 1)
            tokens = torch.cat([tokens, next_token], dim=1)
            new_tokens = next_token                                        # (B, 1): only it is new to the cache
            yield next_token
            if stop_token_ids:
                done |= torch.isin(next_token[:, 0], torch.tensor(stop_token_ids, device=tokens.device))
                if bool(done.all()):
                    return


def sample_next_token(logits: torch.Tensor, temperature: float = 0.0, top_k: int | None = None,
                      generator: torch.Generator | None = None) -> torch.Tensor:
    """(B, vocab_size) logits -> (B, 1) token ids: argmax at temperature 0, else a sample of
    softmax(logits / temperature) restricted to the top_k largest logits when top_k is given."""
    if temperature == 0:
        return logits.argmax(dim=-1, keepdim=True)                         # (B, 1)
    scaled = logits.float() / temperature                                  # float32: no fp16 overflow
    if top_k is not None and top_k < scaled.shape[-1]:
        kth = scaled.topk(top_k, dim=-1).values[:, -1:]                    # (B, 1): the k-th largest
        scaled = scaled.masked_fill(scaled < kth, float("-inf"))
    probs = F.softmax(scaled, dim=-1)
    return torch.multinomial(probs, 1, generator=generator)


def _check_sampling(tokens, max_new_tokens, temperature, top_k, vocab_size) -> None:
    """The arguments of generate/stream, each with the rule it breaks."""
    if not isinstance(tokens, torch.Tensor) or tokens.dim() != 2 or tokens.shape[1] == 0:
        raise ValueError("tokens must be a (batch, seq_len) tensor of token ids with seq_len >= 1 "
                         "(the prompt; start from a BOS token if you have no text)")
    if isinstance(max_new_tokens, bool) or not isinstance(max_new_tokens, int) or max_new_tokens < 0:
        raise ValueError(f"max_new_tokens={max_new_tokens!r}: must be a whole number >= 0")
    if isinstance(temperature, bool) or not isinstance(temperature, (int, float)) or not math.isfinite(temperature) \
            or temperature < 0 or 0 < temperature < 1e-4:
        raise ValueError(f"temperature={temperature!r}: must be 0 (greedy) or a finite number >= 1e-4 "
                         f"(smaller ones overflow logits / temperature)")
    if top_k is not None and (isinstance(top_k, bool) or not isinstance(top_k, int) or not 1 <= top_k <= vocab_size):
        raise ValueError(f"top_k={top_k!r}: must be None or a whole number in 1..vocab_size={vocab_size}")
