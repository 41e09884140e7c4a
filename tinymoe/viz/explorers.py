"""One explorer per topic, each a few lines on top of the Explorer base class.

AttentionExplorer  seq_len, d_model, d_k, d_v, n_heads, causal (and RoPE on/off):
                   q, k, v as sheets, the attention weights as a heatmap, the shapes table
RopeExplorer       position, base, head_dim: the precomputed cos table, the rotation at one
                   position, and q_m . k_n against m - n for two queries (the curves coincide:
                   only the relative position matters)
GQAExplorer        n_heads, n_kv_heads, seq_len: W_k / W_v (the parameters that shrink), the key
                   cache as a heatmap, parameter count and KV-cache bytes against plain MHA
"""
from __future__ import annotations

import numpy as np
import torch

from ..attention import attention_weights
from ..config import ModelConfig
from ..rope import RotaryEmbedding, rope_frequencies
from ..sizes import attention_parameters, kv_cache_bytes
from ..trace import Trace
from .explorer import EXPLORER_CELLS, EXPLORER_COLUMNS, Explorer, View, checkbox, dropdown, log_slider, slider
from .forward import traced_forward
from .html import escape
from .sheet import sheet, show
from .style import figures_table, plural, shape_text, text
from .table import ShapesTable

__all__ = ["AttentionExplorer", "RopeExplorer", "GQAExplorer"]


def _parameters_note(config: ModelConfig) -> str:
    counts = attention_parameters(config)
    terms = " + ".join(f"{name} {n:,}" for name, n in counts.items() if name != "total")
    return text(f"Attention parameters: {terms} = <b>{counts['total']:,}</b>", width=None)


def _divisors(n: int) -> list:
    return [d for d in range(1, n + 1) if n % d == 0]


class AttentionExplorer(Explorer):
    """Scaled dot-product attention with every dimension on a slider.

    Shapes to watch: q and k share d_k (their dot product needs it); v has its own d_v and the
    output of each head has d_v; the weights are (seq_len x seq_len) per head whatever d_k and d_v
    are; W_o maps n_heads * d_v back to d_model. Switch position to "rope" and an odd d_k becomes
    impossible (RoPE rotates dimensions in pairs): the message says so and the picture stays.

    start_from=module, start_inputs=x: start from a by-hand section's weights and tokens (used
    while the sliders' sizes match them), so the first picture equals the sheets above it.

    Tick "d_k = d_v = d_model / n_heads" (split_d_model) and the head sizes follow from d_model and
    n_heads, as in most models: then n_heads must divide d_model, and the message says so when it
    does not. (The sliders read head_dim and v_head_dim, the config's names; d_k and d_v are the
    paper's.)
    """

    title = "Attention: every dimension on a slider"

    def __init__(self, seq_len: int = 10, d_model: int = 5, d_k: int = 3, d_v: int = 3, n_heads: int = 1,
                 causal: bool = True, position: str = "none", seed: int = 0, orientation: str = "pytorch",
                 sheets=("attn.q", "attn.k", "attn.v"), max_cells: int = EXPLORER_CELLS,
                 split_d_model: bool = False, start_from=None, start_inputs=None):
        self.orientation, self.sheet_names, self.max_cells = orientation, tuple(sheets), max_cells
        # A by-hand section's module and input: while the sizes match them, the explorer draws
        # exactly those numbers, so its first picture equals the sheets above it.
        self.start_state = None if start_from is None else {k: v.detach().clone() for k, v in start_from.state_dict().items()}
        self.start_inputs = None if start_inputs is None else start_inputs.detach().reshape(1, -1, start_inputs.shape[-1])
        controls = {"seq_len": slider(seq_len, 1, 16), "d_model": slider(d_model, 1, 12),
                    "d_k": slider(d_k, 1, 8, description="head_dim (d_k)"),
                    "d_v": slider(d_v, 1, 8, description="v_head_dim (d_v)"),
                    "n_heads": slider(n_heads, 1, 4),
                    "split_d_model": checkbox(split_d_model, description="d_k = d_v = d_model / n_heads", width="230px"),
                    "causal": checkbox(causal), "position": dropdown(position, ("none", "rope", "sinusoidal"))}
        self.max_seq_len = controls["seq_len"].max
        super().__init__(controls, seed=seed)

    field_controls = {"head_dim": "d_k", "v_head_dim": "d_v"}

    def limits(self, values: dict) -> dict:
        """With split_d_model the head sizes come from d_model / n_heads: their sliders rest."""
        split = bool(values["split_d_model"])
        return {"d_k": {"disabled": split}, "d_v": {"disabled": split}}

    def config(self, values: dict) -> ModelConfig:
        split = values["split_d_model"]
        return ModelConfig(d_model=values["d_model"], n_heads=values["n_heads"],
                           head_dim=None if split else values["d_k"], v_head_dim=None if split else values["d_v"],
                           causal=values["causal"], position=values["position"],
                           max_seq_len=self.max_seq_len).validate()

    def _inputs(self, config: ModelConfig, seq_len: int):
        """The seeded inputs, with the by-hand section's tokens in front when their width fits."""
        if self.start_inputs is None or self.start_inputs.shape[-1] != config.d_model:
            return None
        g = torch.Generator().manual_seed(self.seed + 1)
        x = torch.randn(1, self.max_seq_len, config.d_model, generator=g)         # (1, max_seq_len, d_model)
        n = min(self.start_inputs.shape[1], self.max_seq_len)
        x[:, :n] = self.start_inputs[:, :n]
        return x[:, :seq_len]

    def build(self, values: dict) -> View:
        config = self.config(values)
        run = traced_forward(config, "attention", values["seq_len"], seed=self.seed,
                             inputs=self._inputs(config, values["seq_len"]), state=self.start_state)
        trace = run.trace
        names = ("attn.x", "attn.q", "attn.k", "attn.v", "attn.weights", "attn.concat", "attn.out")
        label = " → ".join([
            f"x {shape_text(trace['attn.x'].shape)}",
            " · ".join(f"{n} {shape_text(trace['attn.' + n].shape)}" for n in ("q", "k", "v")),
            f"weights {shape_text(trace['attn.weights'].shape)}",
            f"concat {shape_text(trace['attn.concat'].shape)}",
            f"out {shape_text(trace['attn.out'].shape)}"])
        return View(
            shapes={n: tuple(trace[n].shape) for n in names},
            shape_label=label,
            sheets=[show(trace, n, orientation=self.orientation, max_cells=self.max_cells,
                         max_columns=EXPLORER_COLUMNS) for n in self.sheet_names],
            heatmap=trace["attn.weights"],
            heatmap_title=f"attn.weights {shape_text(trace['attn.weights'].shape)}: one panel per head",
            table=ShapesTable.from_run(run),
            notes=_parameters_note(config))


class GQAExplorer(Explorer):
    """Grouped-query attention: n_heads query heads share n_kv_heads key/value heads.

    n_kv_heads == n_heads is multi-head attention, 1 is multi-query attention, in between GQA.
    Watch W_k and W_v (red border: trainable) and the key cache shrink by the group size while the
    queries and the output keep their shapes. n_kv_heads must divide n_heads (every key/value head
    serves a whole group): its list holds the divisors of n_heads, and follows n_heads.
    """

    title = "Grouped-query attention: parameters and KV cache"

    def __init__(self, n_heads: int = 4, n_kv_heads: int = 2, seq_len: int = 8, d_model: int = 8,
                 head_dim: int = 2, bytes_per_value: int = 2, seed: int = 0, orientation: str = "pytorch",
                 max_cells: int = EXPLORER_CELLS):
        self.d_model, self.head_dim, self.bytes_per_value = d_model, head_dim, bytes_per_value
        self.orientation, self.max_cells = orientation, max_cells
        if n_heads % n_kv_heads:
            ModelConfig(d_model=d_model, n_heads=n_heads, n_kv_heads=n_kv_heads, head_dim=head_dim).validate()
        controls = {"n_heads": slider(n_heads, 1, 8), "n_kv_heads": dropdown(n_kv_heads, _divisors(n_heads), width="150px"),
                    "seq_len": slider(seq_len, 1, 32)}
        self.max_seq_len = controls["seq_len"].max
        super().__init__(controls, seed=seed)

    def limits(self, values: dict) -> dict:
        """n_kv_heads: the divisors of n_heads (each key/value head serves a whole group)."""
        return {"n_kv_heads": {"options": _divisors(values["n_heads"]), "why": "n_kv_heads must divide n_heads"}}

    def config(self, values: dict) -> ModelConfig:
        return ModelConfig(d_model=self.d_model, n_heads=values["n_heads"], n_kv_heads=values["n_kv_heads"],
                           head_dim=self.head_dim, position="rope", max_seq_len=self.max_seq_len).validate()

    def build(self, values: dict) -> View:
        config = self.config(values)
        seq_len = values["seq_len"]
        run = traced_forward(config, "attention", seq_len, seed=self.seed)
        trace = run.trace
        mha = ModelConfig(d_model=self.d_model, n_heads=config.n_heads, head_dim=self.head_dim,
                          position="rope", max_seq_len=self.max_seq_len)
        params, params_mha = attention_parameters(config)["total"], attention_parameters(mha)["total"]
        cache = kv_cache_bytes(config, seq_len, batch=1, bytes_per_value=self.bytes_per_value)
        cache_mha = kv_cache_bytes(mha, seq_len, batch=1, bytes_per_value=self.bytes_per_value)
        kind = "MHA" if config.kv_heads == config.n_heads else "MQA" if config.kv_heads == 1 else "GQA"
        label = (f"{kind}: {plural(config.n_heads, 'query head')} share{'s' if config.n_heads == 1 else ''} "
                 f"{plural(config.kv_heads, 'key/value head')} "
                 f"(groups of {config.group_size}) · q {shape_text(trace['attn.q'].shape)} · "
                 f"k {shape_text(trace['attn.k'].shape)} · v {shape_text(trace['attn.v'].shape)} · "
                 f"W_k {shape_text(trace['attn.W_k'].shape)} · KV cache {cache:,} bytes")
        notes = figures_table([
            ("attention parameters", f"{params:,}", escape(f"MHA: {params_mha:,}")),
            (f"KV cache, {plural(seq_len, 'token')}, {self.bytes_per_value} bytes/value", f"{cache:,} B",
             escape(f"MHA: {cache_mha:,} B, {cache_mha / cache:g}x more"))])
        names = ("attn.x", "attn.W_q", "attn.W_k", "attn.W_v", "attn.W_o", "attn.q", "attn.k", "attn.v",
                 "attn.weights", "attn.out")
        return View(
            shapes={n: tuple(trace[n].shape) for n in names},
            shape_label=label,
            sheets=[show(trace, n, orientation=self.orientation, max_cells=self.max_cells, max_columns=EXPLORER_COLUMNS)
                    for n in ("attn.W_k", "attn.W_v")],
            heatmap=trace["attn.k"],
            heatmap_panels=[f"kv head {j}" for j in range(config.kv_heads)],
            heatmap_title=f"attn.k {shape_text(trace['attn.k'].shape)}: the key cache, one panel per kv head",
            table=ShapesTable.from_run(run),
            notes=notes)


class RopeExplorer(Explorer):
    """Rotary position embedding: position m, base and head_dim on sliders.

    Heatmap: the precomputed cos(m * theta_i) table (a buffer, not trainable), one row per
    position. Sheets: theta, and cos / sin at the chosen position m with a query before and after
    its rotation. Curve: q_m . k_n against m - n for a query at m and the same query at m + shift,
    with one key vector at every position n. The two curves lie on top of each other: after RoPE
    the dot product depends only on m - n. An odd head_dim is impossible (pairs).
    """

    title = "RoPE: rotation by position"
    heatmap_size = (440, 320)

    def __init__(self, position: int = 3, base: float = 10000.0, head_dim: int = 8, n_positions: int = 32,
                 shift: int = 8, seed: int = 0, pairing: str = "rotate_half"):
        self.n_positions, self.shift, self.pairing = n_positions, shift, pairing
        controls = {"position": slider(position, 0, n_positions - 1),
                    "base": log_slider(base, 1, 5, step=0.25),
                    "head_dim": slider(head_dim, 1, 16)}
        super().__init__(controls, seed=seed)

    def config(self, values: dict) -> ModelConfig:
        return ModelConfig(d_model=values["head_dim"], n_heads=1, head_dim=values["head_dim"], position="rope",
                           rope_base=values["base"], rope_pairing=self.pairing,
                           max_seq_len=self.n_positions).validate()

    @torch.no_grad()
    def _dot_products(self, rope: RotaryEmbedding, q: torch.Tensor, k: torch.Tensor, m: int) -> np.ndarray:
        """q rotated to position m against k rotated to every position n: the core's raw scores."""
        n_all = torch.arange(self.n_positions)
        q_m, _ = rope(q, q, positions=torch.tensor([m]))                          # (1, 1, 1, head_dim)
        keys = k.expand(1, 1, self.n_positions, -1)
        _, k_n = rope(keys, keys, positions=n_all)                                # (1, 1, N, head_dim)
        scores = Trace()
        attention_weights(q_m, k_n, scale=1.0, trace=scores)                      # scale 1: plain q . k
        return scores["scores"].reshape(-1).numpy()                               # (N,)

    @torch.no_grad()
    def build(self, values: dict) -> View:
        config = self.config(values)
        m, head_dim, N = values["position"], config.qk_dim, self.n_positions
        rope = RotaryEmbedding(head_dim, N, config.rope_base, config.rope_pairing)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(self.seed)
            q = torch.randn(1, 1, 1, head_dim)
            k = torch.randn(1, 1, 1, head_dim)
        table, at_m = Trace(), Trace()
        everywhere = q.expand(1, 1, N, -1)
        rope(everywhere, everywhere, positions=torch.arange(N), trace=table)     # the full cos/sin tables
        q_rot, _ = rope(q, q, positions=torch.tensor([m]), trace=at_m)            # rotation at position m
        theta = rope_frequencies(head_dim, config.rope_base).float()
        n = np.arange(N)
        m2 = m + self.shift                                      # the same query, moved along
        x1, y1 = m - n, self._dot_products(rope, q, k, m)
        x2, y2 = (m2 - n, self._dot_products(rope, q, k, m2)) if m2 < N else (np.array([]), np.array([]))
        curves = {"query at m": (x1, y1), "query at m + shift": (x2, y2)}
        check = f"(m + {self.shift} = {m2} is past the table: one curve only)"
        if m2 < N:
            common = np.intersect1d(x1, x2)
            gap = float(np.max(np.abs(y1[np.isin(x1, common)] - y2[np.isin(x2, common)])))
            check = (f"Queries at m={m} and m={m2} give the same q&middot;k at equal m&minus;n "
                     f"(largest difference {gap:.1e}): only the relative position counts.")
        notes = text(f"{head_dim // 2} frequencies &theta;<sub>i</sub> = {config.rope_base:g}<sup>&minus;2i/{head_dim}</sup>; "
                 f"pair i turns by m&middot;&theta;<sub>i</sub>. {check}", width=440)
        cos_m, sin_m = at_m["rope_cos"], at_m["rope_sin"]
        label = (f"head_dim={head_dim}: {head_dim // 2} rotating pairs · theta {shape_text(tuple(theta.shape))} · "
                 f"cos/sin tables {shape_text(tuple(table['rope_cos'].shape))} (buffers, not trainable) · "
                 f"q at position m={m} {shape_text((head_dim,))}")
        at = [f"m={m}"]
        return View(
            shapes={"theta": tuple(theta.shape), "rope_cos": tuple(table["rope_cos"].shape),
                    "rope_sin": tuple(table["rope_sin"].shape), "q": (head_dim,), "q_rot": (head_dim,),
                    "scores": (N,)},
            shape_label=label,
            sheets=[sheet(theta, "theta", role="buffer", decimals=3),
                    sheet(cos_m, "cos(m·θ)", role="buffer", row_labels=at),
                    sheet(sin_m, "sin(m·θ)", role="buffer", row_labels=at),
                    sheet(q.reshape(1, head_dim), "q", row_labels=["q"]),
                    sheet(q_rot.reshape(1, head_dim), "q rotated", row_labels=[f"m={m}"])],
            heatmap=table["rope_cos"],
            heatmap_title=f"rope_cos {shape_text(tuple(table['rope_cos'].shape))}: rows = position m, columns = dimension",
            notes=notes,
            curves=curves,
            curve_axes=("m − n (query position − key position)", "q_m · k_n"))
