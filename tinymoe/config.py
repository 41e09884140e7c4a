"""Every dimension of a tinymoe model, in one dataclass, checked before any tensor is made.

The same `ModelConfig` builds a model at spreadsheet size (10 tokens, d_model 5) and at real
size (d_model 4096). `validate()` turns an impossible combination into one `ConfigError` whose
message names the field, the value and the rule, so a reader (or a widget) never sees a torch
shape error from deep inside a matmul.

A config is checked when it is made (`__post_init__` runs `validate()`, and `replace()` makes a
checked copy), so the modules built from it trust it and never check it again. A model keeps its
own copy, so changing a config afterwards cannot break a model already built from it.
"""
from __future__ import annotations

import dataclasses
import math
import numbers
from dataclasses import dataclass, field

__all__ = ["ConfigError", "ModelConfig", "MoEConfig", "SparseAttentionConfig", "MoDConfig", "whole_number",
           "real_number", "MAX_SIZE", "MAX_LAYERS"]

# The largest size any dimension may have: 2**31 - 1, what a 32-bit index (a GPU kernel's, a
# cuBLAS dimension) can reach. Real models stay far below it (Llama 3's vocabulary: 128256).
MAX_SIZE = 2**31 - 1
# The deepest published decoders have a few hundred blocks; building 10**9 would take days.
MAX_LAYERS = 1024


class ConfigError(ValueError):
    """An impossible configuration: `field`, `value` and the `rule` it breaks."""

    def __init__(self, field: str, value, rule: str):
        self.field, self.value, self.rule = field, value, rule
        # "n_heads=6 is not a multiple of ..." reads as a sentence; other rules follow a colon.
        joiner = " " if rule.startswith(("is ", "must ", "cannot ", "needs ")) else ": "
        super().__init__(f"{field}={_short_repr(value)}{joiner}{rule}")


def _short_repr(value) -> str:
    """repr(value), cut short when it is huge (an int of 400 digits, a long list)."""
    text = repr(value)
    if len(text) <= 80:
        return text
    if isinstance(value, int):
        return f"{text[:12]}...({len(text)} digits)"
    return text[:60] + "..."


NORMS = ("rmsnorm", "layernorm")
FFNS = ("swiglu", "relu")
POSITIONS = ("rope", "sinusoidal", "none")
ROPE_PAIRINGS = ("rotate_half", "interleaved")
ATTENTIONS = ("dense", "sliding_window", "native_sparse")
ROUTERS = ("softmax_topk", "switch", "noisy_topk", "expert_choice", "soft", "sigmoid_bias", "llama4")
DISPATCHES = ("loop", "dense", "grouped", "triton")
MOD_KINDS = ("mod", "integrated")
MOD_WEIGHTS = ("sigmoid", "logit", "one")
ATTENTION_BACKENDS = ("eager", "flash", "flash_triton")


def whole_number(name: str, value, low: int = 1, high: int = MAX_SIZE, why: str = "") -> int:
    """The one check for "a whole number in a range": an int (not a bool, not 4.0, not "4") with
    low <= value <= high, else a ConfigError naming `name`. Every size in tinymoe goes through it."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise ConfigError(name, value, "must be a whole number" + (" (an int)" if isinstance(value, float) else ""))
    if value < low:
        raise ConfigError(name, value, "must be a positive whole number" if low == 1 else f"must be a whole number >= {low}")
    if value > high:
        reason = why or ("sizes beyond 2**31 - 1 do not fit a 32-bit index" if high == MAX_SIZE else "")
        raise ConfigError(name, value, f"must be at most {high}" + (f": {reason}" if reason else ""))
    return int(value)


def real_number(name: str, value, rule: str, ok=lambda v: True) -> float:
    """A real, finite number (not a bool, a string, NaN, inf, or an int too large for a float)
    for which ok(value) holds, else a ConfigError naming `name` with `rule`."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise ConfigError(name, value, rule)
    try:
        number = float(value)
    except OverflowError:                              # an int beyond 1.8e308
        raise ConfigError(name, value, rule) from None
    if not math.isfinite(number) or not ok(number):
        raise ConfigError(name, value, rule)
    return number


def _one_of(name: str, value, choices) -> None:
    if not isinstance(value, str) or value not in choices:
        raise ConfigError(name, value, f"must be one of {', '.join(map(repr, choices))}")


def _flag(name: str, value) -> None:
    if not isinstance(value, bool):
        raise ConfigError(name, value, "must be True or False")


# Loss coefficients beyond this would let one auxiliary loss swamp the language-model loss (and
# overflow float32 when multiplied); the papers use 1e-3 .. 1e-1.
MAX_LOSS_COEF = 1000.0


@dataclass
class MoEConfig:
    """The Mixture-of-Experts feed-forward: how many experts, how tokens are routed to them.

    n_experts        routed experts (each a copy of the feed-forward with its own weights)
    top_k            experts per token (switch forces 1; expert_choice and soft ignore it)
    router           softmax_topk | switch | noisy_topk | expert_choice | soft | sigmoid_bias
    renormalize      rescale the k kept gates to sum to 1 (Mixtral: yes; Qwen2-MoE default: no)
    capacity_factor  expert capacity = ceil(capacity_factor * tokens / n_experts); None = dropless
    n_shared_experts experts every token uses, beside the routed ones (DeepSeek, Qwen2-MoE)
    shared_expert_gate  scale the shared experts' output by sigmoid(w . x) per token (Qwen2-MoE)
    slots_per_expert slots each expert processes in soft MoE (router='soft')
    d_ff_expert      hidden size of one expert (None: the model's d_ff)
    aux_loss_coef    alpha of the Switch load-balancing loss
    z_loss_coef      coefficient of the router z-loss
    every_n_layers   MoE in every n-th block (1 = every block); the others keep the dense MLP
    dispatch         loop (reference) | dense (teaching) | grouped (sorted) | triton (GPU kernel)
    router_fp32      compute the router in float32 whatever the input dtype (turn off to watch it fail)
    bias_update_rate gamma: step of the sigmoid_bias router's selection bias at each update_bias call
    n_group          DeepSeek-V3 group-limited routing (sigmoid_bias): experts split into n_group groups
    topk_group       ... and each token chooses only among the experts of its topk_group best groups
    routed_scaling_factor  multiplies the routed experts' gates (DeepSeek-V3: 2.5)
    """

    n_experts: int = 4
    top_k: int = 2
    router: str = "softmax_topk"
    renormalize: bool = True
    capacity_factor: float | None = None
    n_shared_experts: int = 0
    d_ff_expert: int | None = None
    aux_loss_coef: float = 0.01
    z_loss_coef: float = 0.001
    every_n_layers: int = 1
    dispatch: str = "grouped"
    router_fp32: bool = True
    bias_update_rate: float = 0.001
    shared_expert_gate: bool = False
    slots_per_expert: int = 1
    n_group: int = 1
    topk_group: int = 1
    routed_scaling_factor: float = 1.0

    def validate(self, prefix: str = "moe.") -> "MoEConfig":
        whole_number(prefix + "n_experts", self.n_experts)
        whole_number(prefix + "top_k", self.top_k)
        _one_of(prefix + "router", self.router, ROUTERS)
        _one_of(prefix + "dispatch", self.dispatch, DISPATCHES)
        if self.top_k > self.n_experts:
            raise ConfigError(prefix + "top_k", self.top_k,
                              f"cannot exceed n_experts={self.n_experts}: a token cannot pick more experts than exist")
        if self.router == "switch" and self.top_k != 1:
            raise ConfigError(prefix + "top_k", self.top_k, "the switch router sends each token to exactly one expert (top_k=1)")
        if self.capacity_factor is not None:
            real_number(prefix + "capacity_factor", self.capacity_factor,
                        "must be a positive number, or None for dropless routing", lambda v: v > 0)
        if self.router in ("switch", "expert_choice") and self.capacity_factor is None:
            raise ConfigError(prefix + "capacity_factor", None,
                              f"the {self.router} router needs a capacity_factor (expert capacity = ceil(cf * tokens / n_experts))")
        whole_number(prefix + "n_shared_experts", self.n_shared_experts, low=0)
        if self.d_ff_expert is not None:
            whole_number(prefix + "d_ff_expert", self.d_ff_expert)
        for name in ("renormalize", "router_fp32", "shared_expert_gate"):
            _flag(prefix + name, getattr(self, name))
        if self.shared_expert_gate and self.n_shared_experts == 0:
            raise ConfigError(prefix + "shared_expert_gate", True,
                              "gates the shared experts' output, so it needs n_shared_experts >= 1")
        whole_number(prefix + "every_n_layers", self.every_n_layers, high=MAX_LAYERS,
                     why=f"a model has at most {MAX_LAYERS} layers")
        whole_number(prefix + "slots_per_expert", self.slots_per_expert)
        for name in ("aux_loss_coef", "z_loss_coef"):
            real_number(prefix + name, getattr(self, name),
                        f"must be a finite number from 0 to {MAX_LOSS_COEF:g} (the papers use 1e-3 .. 1e-1)",
                        lambda v: 0 <= v <= MAX_LOSS_COEF)
        real_number(prefix + "bias_update_rate", self.bias_update_rate, "must be a finite number >= 0", lambda v: v >= 0)
        self._validate_groups(prefix)
        return self

    def _validate_groups(self, prefix: str) -> None:
        """DeepSeek-V3's group-limited routing and Llama 4's router."""
        whole_number(prefix + "n_group", self.n_group)
        whole_number(prefix + "topk_group", self.topk_group)
        real_number(prefix + "routed_scaling_factor", self.routed_scaling_factor,
                "must be a finite number > 0 (DeepSeek-V3 uses 2.5)", lambda v: v > 0)
        if self.n_experts % self.n_group != 0:
            raise ConfigError(prefix + "n_group", self.n_group,
                              f"must divide n_experts={self.n_experts}: the experts are split into equal groups")
        if self.topk_group > self.n_group:
            raise ConfigError(prefix + "topk_group", self.topk_group,
                              f"cannot exceed n_group={self.n_group}: a token cannot keep more groups than exist")
        if self.n_group > 1:
            if self.router != "sigmoid_bias":
                raise ConfigError(prefix + "n_group", self.n_group,
                                  "group-limited routing is DeepSeek-V3's: it needs router='sigmoid_bias'")
            if self.n_experts // self.n_group < 2:
                raise ConfigError(prefix + "n_group", self.n_group,
                                  f"leaves fewer than 2 experts per group (n_experts={self.n_experts}): "
                                  f"a group is scored by the sum of its best two experts")
            if self.top_k > self.topk_group * (self.n_experts // self.n_group):
                raise ConfigError(prefix + "top_k", self.top_k,
                                  f"cannot exceed the {self.topk_group * (self.n_experts // self.n_group)} experts "
                                  f"in the topk_group={self.topk_group} kept groups")
        if self.router == "llama4" and self.capacity_factor is not None:
            raise ConfigError(prefix + "capacity_factor", self.capacity_factor,
                              "the llama4 router is dropless: use capacity_factor=None")

    def __post_init__(self):
        self.validate()


@dataclass
class SparseAttentionConfig:
    """Native Sparse Attention (arXiv 2502.11089): three branches mixed by gates.

    block_size        l: tokens per compressed block
    stride            d: step between compressed blocks (d <= l; d < l overlaps)
    select_block_size l': tokens per selection block (a multiple of stride)
    top_n             n: selection blocks each query attends at full resolution
    window            w: sliding-window length, counting the query's own position
    n_initial_blocks  selection blocks at the start of the sequence every query always keeps
    n_local_blocks    selection blocks ending at the query's own block that it always keeps
                      (the paper: 1 initial + 2 local, counted inside top_n)
    """

    block_size: int = 32
    stride: int = 16
    select_block_size: int = 64
    top_n: int = 16
    window: int = 512
    n_initial_blocks: int = 1
    n_local_blocks: int = 2

    def validate(self, prefix: str = "nsa.") -> "SparseAttentionConfig":
        for name in ("block_size", "stride", "select_block_size", "top_n", "window"):
            whole_number(prefix + name, getattr(self, name))
        for name in ("n_initial_blocks", "n_local_blocks"):
            whole_number(prefix + name, getattr(self, name), low=0)
        if self.n_initial_blocks + self.n_local_blocks > self.top_n:
            raise ConfigError(prefix + "top_n", self.top_n,
                              f"must leave room for the n_initial_blocks={self.n_initial_blocks} + "
                              f"n_local_blocks={self.n_local_blocks} blocks every query always keeps; "
                              f"raise top_n or keep fewer blocks always")
        if self.stride > self.block_size:
            raise ConfigError(prefix + "stride", self.stride,
                              f"cannot exceed block_size={self.block_size}: blocks would skip tokens")
        if self.select_block_size % self.stride != 0:
            raise ConfigError(prefix + "select_block_size", self.select_block_size,
                              f"must be a multiple of stride={self.stride} so compressed scores map onto selection blocks")
        return self

    def __post_init__(self):
        self.validate()


@dataclass
class MoDConfig:
    """Mixture-of-Depths (Raposo et al. 2024): a router picks which tokens a block computes.

    kind             mod: per routed block, only the top `capacity` share of each sequence's tokens
                     runs the block, the rest ride the residual stream (with config.moe set as well:
                     staged MoDE) | integrated: no token routing; n_noop_experts "do nothing"
                     experts join every MoE layer's experts (integrated MoDE; needs config.moe)
    capacity         share of the sequence a routed block computes, 0 < capacity <= 1 (paper: 0.125)
    every_n_layers   route every n-th block, layers n-1, 2n-1, ... (paper: every other block, 2)
    layers           the routed blocks by index, e.g. (1, 3); overrides every_n_layers
    router_weight    what multiplies the block's update: sigmoid(logit) | logit (the paper's r) |
                     one (r = 1: the top-k choice only, for checking against the plain block)
    aux_loss_coef    causal fix 1: BCE of the router's logits against "in the top-k" (0: off)
    predictor        causal fix 2: a small MLP on a stop-gradient copy of the input, trained with
                     BCE to predict "in the top-k"
    predictor_hidden hidden width of that MLP
    n_noop_experts   integrated MoDE's no-op experts
    """

    kind: str = "mod"
    capacity: float = 0.125
    every_n_layers: int = 2
    layers: tuple[int, ...] | None = None
    router_weight: str = "sigmoid"
    aux_loss_coef: float = 0.01
    predictor: bool = True
    predictor_hidden: int = 8
    n_noop_experts: int = 0

    def validate(self, prefix: str = "mod.") -> "MoDConfig":
        _one_of(prefix + "kind", self.kind, MOD_KINDS)
        _one_of(prefix + "router_weight", self.router_weight, MOD_WEIGHTS)
        real_number(prefix + "capacity", self.capacity,
                "must be a share of the sequence, 0 < capacity <= 1 (0.125 routes one token in eight)",
                lambda v: 0 < v <= 1)
        whole_number(prefix + "every_n_layers", self.every_n_layers)
        if self.layers is not None:
            if isinstance(self.layers, (str, bytes)) or not isinstance(self.layers, (tuple, list)):
                raise ConfigError(prefix + "layers", self.layers, "must be a tuple of block indices, e.g. (1, 3)")
            for i, layer in enumerate(self.layers):
                if isinstance(layer, bool) or not isinstance(layer, int) or layer < 0:
                    raise ConfigError(f"{prefix}layers[{i}]", layer, "must be a block index, a whole number >= 0")
            if len(set(self.layers)) != len(self.layers):
                raise ConfigError(prefix + "layers", tuple(self.layers), "names a block twice")
        real_number(prefix + "aux_loss_coef", self.aux_loss_coef, "must be a finite number >= 0", lambda v: v >= 0)
        _flag(prefix + "predictor", self.predictor)
        whole_number(prefix + "predictor_hidden", self.predictor_hidden)
        if isinstance(self.n_noop_experts, bool) or not isinstance(self.n_noop_experts, int) or self.n_noop_experts < 0:
            raise ConfigError(prefix + "n_noop_experts", self.n_noop_experts, "must be a whole number >= 0")
        if self.kind == "integrated" and self.n_noop_experts < 1:
            raise ConfigError(prefix + "n_noop_experts", self.n_noop_experts,
                              "must be >= 1 with kind='integrated': the no-op experts are how a token skips")
        if self.kind == "mod" and self.n_noop_experts:
            raise ConfigError(prefix + "n_noop_experts", self.n_noop_experts,
                              "only applies to kind='integrated' (no-op experts inside the MoE layers); "
                              "set kind='integrated' or n_noop_experts=0")
        return self

    def routes(self, layer: int) -> bool:
        """Does block `layer` route its tokens (kind='mod')?"""
        if self.kind != "mod":
            return False
        if self.layers is not None:
            return layer in self.layers
        return (layer + 1) % self.every_n_layers == 0


@dataclass
class ModelConfig:
    """Every dimension of a decoder-only transformer (with optional MoE and sparse attention).

    vocab_size   tokens in the vocabulary (touches only the embedding and the LM head)
    d_model      width of the residual stream
    n_layers     decoder blocks
    n_heads      query heads
    n_kv_heads   key/value heads (None = n_heads: MHA; 1: MQA; in between: GQA)
    head_dim     q/k size per head (None = d_model // n_heads)
    v_head_dim   value size per head (None = head_dim); need not equal head_dim
    v_head_dims  value size of each head when they differ, e.g. (5, 3, 3); needs n_kv_heads == n_heads
    d_ff         feed-forward hidden size (None = 4 * d_model)
    ffn          swiglu (Llama) | relu (the original transformer)
    max_seq_len  longest sequence (sizes the RoPE / sinusoidal tables)
    position     rope | sinusoidal (added once at the bottom) | none
    rope_base    theta of RoPE's frequencies
    rope_pairing rotate_half (Llama, Hugging Face) | interleaved (the RoFormer paper, Meta's original)
    norm         rmsnorm | layernorm
    attention    dense | sliding_window | native_sparse
    window       sliding-window length (sliding_window attention), counting the query itself
    attention_chunk_size    Llama 4's chunked local attention: a token sees only the earlier tokens of
                 its own chunk (positions c*size .. c*size + size - 1), on the RoPE layers
    no_rope_layer_interval  Llama 4's NoPE layers: every n-th layer (layer + 1 divisible by n) has no
                 RoPE, no chunking and no QK-norm (global attention); None = none
    qk_norm      L2-normalise q and k (RMS, no weight) after RoPE on the RoPE layers (Llama 4)
    attn_temperature_tuning  on NoPE layers scale q by 1 + attn_scale * log1p(floor((pos + 1) / floor_scale))
    floor_scale, attn_scale  the temperature tuning's constants (Llama 4: 8192, 0.1)
    mod          Mixture-of-Depths settings (MoDConfig), or None for a model without token routing
    attention_backend  eager (weights materialised, traced) | flash (tiled PyTorch, tinymoe.flash) |
                 flash_triton (the Triton kernel, tinymoe.kernels.flash_attention); same numbers
    """

    vocab_size: int = 32
    d_model: int = 8                  # even, so the default RoPE head (head_dim = d_model) validates
    n_layers: int = 1
    n_heads: int = 1
    n_kv_heads: int | None = None
    head_dim: int | None = None
    v_head_dim: int | None = None
    v_head_dims: tuple[int, ...] | None = None
    d_ff: int | None = None
    ffn: str = "swiglu"
    max_seq_len: int = 128
    position: str = "rope"
    rope_base: float = 10000.0
    rope_pairing: str = "rotate_half"
    norm: str = "rmsnorm"
    norm_eps: float = 1e-5
    attention: str = "dense"
    window: int | None = None
    causal: bool = True
    bias: bool = False
    tie_embeddings: bool = False
    moe: MoEConfig | None = None
    nsa: SparseAttentionConfig | None = None
    attention_chunk_size: int | None = None
    no_rope_layer_interval: int | None = None
    qk_norm: bool = False
    attn_temperature_tuning: bool = False
    floor_scale: float = 8192.0
    attn_scale: float = 0.1
    mod: MoDConfig | None = None
    attention_backend: str = "eager"

    # ---- derived sizes (read these, not the raw fields) -------------------------------
    @property
    def kv_heads(self) -> int:
        return self.n_heads if self.n_kv_heads is None else self.n_kv_heads

    @property
    def qk_dim(self) -> int:
        return self.d_model // self.n_heads if self.head_dim is None else self.head_dim

    @property
    def v_dims(self) -> tuple[int, ...]:
        """The value size of every query head."""
        if self.v_head_dims is not None:
            return tuple(self.v_head_dims)
        v = self.qk_dim if self.v_head_dim is None else self.v_head_dim
        return (v,) * self.n_heads

    @property
    def ff_dim(self) -> int:
        return 4 * self.d_model if self.d_ff is None else self.d_ff

    @property
    def group_size(self) -> int:
        """Query heads per key/value head."""
        return self.n_heads // self.kv_heads

    def replace(self, **changes) -> "ModelConfig":
        """A copy with some fields changed (checked, like every config, when it is made)."""
        return dataclasses.replace(self, **changes)

    def layer_uses_rope(self, layer: int) -> bool:
        """RoPE in this layer? (Llama 4: not in every no_rope_layer_interval-th layer, the NoPE layers.)"""
        nope = self.no_rope_layer_interval is not None and (layer + 1) % self.no_rope_layer_interval == 0
        return self.position == "rope" and not nope

    def layer_chunk_size(self, layer: int) -> int | None:
        """The chunk of chunked local attention in this layer: Llama 4 chunks its RoPE layers only."""
        nope = self.no_rope_layer_interval is not None and (layer + 1) % self.no_rope_layer_interval == 0
        return None if nope else self.attention_chunk_size

    def moe_in_layer(self, layer: int) -> bool:
        return self.moe is not None and (layer + 1) % self.moe.every_n_layers == 0

    def mod_in_layer(self, layer: int) -> bool:
        """Is block `layer` a Mixture-of-Depths block (its tokens routed around it)?"""
        return self.mod is not None and self.mod.routes(layer)

    # ---- the rules ---------------------------------------------------------------------
    def validate(self) -> "ModelConfig":
        """Raise ConfigError naming the field, the value and the rule; return self if sound."""
        for name in ("vocab_size", "d_model", "n_heads", "max_seq_len"):
            whole_number(name, getattr(self, name))
        whole_number("n_layers", self.n_layers, high=MAX_LAYERS,
                     why="the deepest published decoders have a few hundred blocks; this many would take hours to build")
        for name in ("n_kv_heads", "head_dim", "v_head_dim", "d_ff", "window"):
            if getattr(self, name) is not None:
                whole_number(name, getattr(self, name))
        _one_of("ffn", self.ffn, FFNS)
        _one_of("position", self.position, POSITIONS)
        _one_of("rope_pairing", self.rope_pairing, ROPE_PAIRINGS)
        _one_of("norm", self.norm, NORMS)
        _one_of("attention", self.attention, ATTENTIONS)
        if self.head_dim is None and self.d_model % self.n_heads != 0:
            raise ConfigError("d_model", self.d_model,
                              f"is not divisible by n_heads={self.n_heads}: with head_dim unset each head gets "
                              f"d_model // n_heads dims; set head_dim explicitly or pick a divisor")
        if self.kv_heads > self.n_heads:
            raise ConfigError("n_kv_heads", self.kv_heads,
                              f"cannot exceed n_heads={self.n_heads}: each key/value head serves at least one query head")
        if self.n_heads % self.kv_heads != 0:
            raise ConfigError("n_heads", self.n_heads,
                              f"is not a multiple of n_kv_heads={self.kv_heads}: each key/value head must serve "
                              f"a whole group of query heads")
        if self.v_head_dims is not None:
            if isinstance(self.v_head_dims, (str, bytes)) or not isinstance(self.v_head_dims, (tuple, list)):
                raise ConfigError("v_head_dims", self.v_head_dims,
                                  "must be a tuple with one value size per head, e.g. (5, 3, 3)")
            dims = tuple(self.v_head_dims)
            if len(dims) != self.n_heads:
                raise ConfigError("v_head_dims", dims, f"needs one value size per head (n_heads={self.n_heads})")
            for i, d in enumerate(dims):
                whole_number(f"v_head_dims[{i}]", d)
            if self.kv_heads != self.n_heads:
                raise ConfigError("v_head_dims", dims,
                                  "unequal value sizes need one key/value head per query head (n_kv_heads == n_heads)")
        if self.position == "rope" and self.qk_dim % 2 != 0:
            implied = "" if self.head_dim is not None else f" (implied: d_model={self.d_model} // n_heads={self.n_heads})"
            raise ConfigError("head_dim", self.qk_dim,
                              f"must be even with position='rope'{implied}: RoPE rotates the q/k dimensions in pairs; "
                              f"set an even head_dim or use position='sinusoidal' or 'none'")
        if self.position == "sinusoidal" and self.d_model % 2 != 0:
            raise ConfigError("d_model", self.d_model,
                              "must be even with position='sinusoidal': sine and cosine fill the dimensions in pairs")
        real_number("rope_base", self.rope_base, "must be a finite number > 1 (Llama uses 10000 or 500000)", lambda v: v > 1)
        real_number("norm_eps", self.norm_eps, "must be a small positive finite number, e.g. 1e-5", lambda v: v > 0)
        for name in ("causal", "bias", "tie_embeddings"):
            _flag(name, getattr(self, name))
        self._validate_llama4()
        if self.attention == "sliding_window" and self.window is None:
            raise ConfigError("window", None, "attention='sliding_window' needs a window length")
        if self.attention == "native_sparse":
            if self.nsa is None:
                raise ConfigError("nsa", None, "attention='native_sparse' needs an nsa=SparseAttentionConfig(...)")
            if not self.causal:
                raise ConfigError("causal", self.causal, "native sparse attention is defined for causal decoders only")
            if len(set(self.v_dims)) > 1:
                raise ConfigError("v_head_dims", self.v_head_dims,
                                  "native sparse attention mixes its branches head by head with one value size; "
                                  "give every head the same value size (v_head_dim)")
        if self.nsa is not None:
            if not isinstance(self.nsa, SparseAttentionConfig):
                raise ConfigError("nsa", self.nsa, "must be a SparseAttentionConfig(...) or None")
            self.nsa.validate()
        if self.moe is not None:
            if not isinstance(self.moe, MoEConfig):
                raise ConfigError("moe", self.moe, "must be a MoEConfig(...) or None")
            self.moe.validate()
        if self.mod is not None:
            if not isinstance(self.mod, MoDConfig):
                raise ConfigError("mod", self.mod, "must be a MoDConfig(...) or None")
            self.mod.validate()
            if self.mod.layers is not None and any(layer >= self.n_layers for layer in self.mod.layers):
                raise ConfigError("mod.layers", tuple(self.mod.layers),
                                  f"names a block past the last one (n_layers={self.n_layers}: blocks 0..{self.n_layers - 1})")
            if self.mod.kind == "integrated" and self.moe is None:
                raise ConfigError("mod.kind", "integrated",
                                  "puts no-op experts among an MoE layer's experts, so it needs config.moe = MoEConfig(...)")
            if self.mod.kind == "integrated" and self.moe.router in ("expert_choice", "soft"):
                raise ConfigError("mod.kind", "integrated",
                                  f"needs a token-choice router (a token picks the no-op expert); "
                                  f"moe.router={self.moe.router!r} is not one")
        _one_of("attention_backend", self.attention_backend, ATTENTION_BACKENDS)
        if self.attention_backend != "eager":
            if self.attention == "native_sparse":
                raise ConfigError("attention_backend", self.attention_backend,
                                  "is for dense and sliding-window attention; native sparse attention has its own branches")
            if len(set(self.v_dims)) > 1:
                raise ConfigError("attention_backend", self.attention_backend,
                                  f"needs one value size for every head (v_head_dims={self.v_head_dims}): the flash "
                                  f"kernels process all heads alike; use 'eager' for unequal value sizes")
        self._validate_lengths()
        return self

    def _validate_llama4(self) -> None:
        """Llama 4's attention fields: chunked local attention, NoPE layers, QK-norm, temperature tuning."""
        for name in ("attention_chunk_size", "no_rope_layer_interval"):
            if getattr(self, name) is not None:
                whole_number(name, getattr(self, name))
        for name in ("qk_norm", "attn_temperature_tuning"):
            _flag(name, getattr(self, name))
        real_number("floor_scale", self.floor_scale, "must be a finite number > 0 (Llama 4 uses 8192)", lambda v: v > 0)
        real_number("attn_scale", self.attn_scale, "must be a finite number >= 0 (Llama 4 uses 0.1)", lambda v: v >= 0)
        if self.attention_chunk_size is not None and self.attention != "dense":
            raise ConfigError("attention_chunk_size", self.attention_chunk_size,
                              f"chunked local attention replaces dense attention; it cannot combine with "
                              f"attention={self.attention!r}")
        if self.no_rope_layer_interval is not None and self.position != "rope":
            raise ConfigError("no_rope_layer_interval", self.no_rope_layer_interval,
                              f"NoPE layers are the layers without RoPE in a RoPE model; position={self.position!r}")

    def _validate_lengths(self) -> None:
        """A sliding window or a block longer than the longest sequence never fills: almost surely a
        typo. (Native sparse attention's window may exceed it: that branch then covers every key.)"""
        longest = f"max_seq_len={self.max_seq_len}: no sequence is that long; raise max_seq_len or shorten it"
        if self.attention == "sliding_window" and self.window > self.max_seq_len:
            raise ConfigError("window", self.window, "cannot exceed " + longest)
        if self.attention == "native_sparse":
            for name in ("block_size", "select_block_size"):
                if getattr(self.nsa, name) > self.max_seq_len:
                    raise ConfigError("nsa." + name, getattr(self.nsa, name), "cannot exceed " + longest)

    def __post_init__(self):
        # A list is accepted for convenience; anything else odd is for validate() to name.
        if isinstance(self.v_head_dims, list):
            self.v_head_dims = tuple(self.v_head_dims)
        if self.mod is not None and isinstance(getattr(self.mod, "layers", None), list):
            self.mod.layers = tuple(self.mod.layers)
        self.validate()
