"""Exercise 06, MoE gating: top-k gates, expert capacity, and a Switch layer that drops tokens.

    top_k_gating(logits, top_k, renormalize)   (expert_ids, gates): the k largest softmax
                                               probabilities per token, best first, rescaled to
                                               sum to 1 when renormalize
    expert_capacity(tokens, n_experts, capacity_factor)   ceil(capacity_factor * tokens / n_experts)
    switch_moe(x, logits, experts, capacity_factor)       top-1 routing, at most `capacity` tokens
                                               per expert (earliest first), gate * expert(x); a
                                               dropped token's output is zero

Reference: tinymoe.moe (select_top_k, capacity, and the loop dispatch with capacity, i.e. the
Switch router). The catalogued wrong answers: gates not renormalised when they should be (and
renormalised when they should not), capacity rounded down (or to nearest), a dropped token given
a nonzero output (passed through, or processed anyway), the latest tokens kept instead of the
earliest, and Switch's single gate renormalised to 1.
"""
from __future__ import annotations

import math

import torch
from torch.nn import functional as F

from ..moe import capacity, dispatch_loop, expert_mlp, select_top_k
from .checks import Case, Exercise, Misconception, Property, Question
from .policy import allow_code
from .wire import provided

NOTEBOOK = "notebooks/06_moe_gating.ipynb"


# ---- top_k_gating ------------------------------------------------------------------------------
def _core_top_k(logits, top_k, renormalize):
    routing = select_top_k(logits, F.softmax(logits.float(), dim=-1), top_k, renormalize, capacity_factor=None)
    return routing.expert_ids, routing.gates


def gating_cases(d):
    specs = [("6 tokens, 4 experts, top-2, renormalised", 6, 4, 2, True),
             ("5 tokens, 8 experts, top-2, not renormalised", 5, 8, 2, False),
             ("4 tokens, 4 experts, top-1, renormalised", 4, 4, 1, True),
             ("10 tokens, 3 experts, top-3 (every expert), renormalised", 10, 3, 3, True),
             ("7 tokens, 6 experts, top-3, not renormalised", 7, 6, 3, False)]
    cases = []
    for label, n_tokens, n_experts, top_k, renormalize in specs:
        logits = d.randn(n_tokens, n_experts, scale=2.0)
        cases.append(Case(label, (logits, top_k, renormalize), expected=_core_top_k(logits, top_k, renormalize),
                          info={"renormalize": renormalize}))
    return cases


def _gates_shares(case, got, call):
    ids, gates = got
    logits, top_k, renormalize = case.args
    if (gates < 0).any() or (gates > 1 + 1e-6).any():
        return "some gates fall outside [0, 1]; a gate is a share of the router's probability"
    if renormalize and not torch.allclose(gates.double().sum(-1), torch.ones(gates.shape[0], dtype=torch.float64), atol=1e-5):
        return "with renormalize=True each token's k gates must sum to 1"
    if ids.numel() and ((ids < 0) | (ids >= logits.shape[-1])).any():
        return "some expert ids are not between 0 and n_experts - 1"
    if any(len(set(row.tolist())) != top_k for row in ids):
        return "a token picked the same expert twice; its k experts must be different"


def _wrong_gating(renorm: str = "as_asked", gates_from: str = "probs", dim: int = -1):
    def wrong(logits, top_k, renormalize):
        probs = F.softmax(logits.float(), dim=dim)
        ids = torch.topk(logits, top_k, dim=-1).indices
        gates = (logits.float() if gates_from == "logits" else probs).gather(-1, ids)
        if renorm == "always" or (renorm == "as_asked" and renormalize):
            gates = gates / gates.sum(-1, keepdim=True)
        return ids, gates
    return wrong


TOP_K_GATING = Question(
    "top_k_gating", "softmax top-k gates, renormalised on request", gating_cases,
    section=f"{NOTEBOOK}, section: Keep only the top-k gates: the layer becomes sparse",
    properties=[Property("gates are shares", _gates_shares)],
    misconceptions=[
        Misconception("topk_not_renormalised",
                      "top-k gates not renormalised: with renormalize=True, divide the k kept gates by their sum "
                      "so they add up to 1 (Mixtral)",
                      _wrong_gating(renorm="never")),
        Misconception("topk_renormalised_when_not_asked",
                      "with renormalize=False keep each gate's share of the full softmax (Qwen2-MoE's default): do "
                      "not rescale the k gates",
                      _wrong_gating(renorm="always")),
        Misconception("gates_are_logits",
                      "the gates are softmax probabilities over all experts, read at the chosen experts, not the "
                      "raw logits",
                      _wrong_gating(gates_from="logits")),
        Misconception("softmax_over_tokens",
                      "the router's softmax runs over the experts (dim=-1) for each token, not over the tokens",
                      _wrong_gating(dim=0)),
    ],
    error_hints=[],
    hints=["probs = softmax(logits over the experts); torch.topk(probs, top_k, dim=-1) gives values and indices, "
           "largest first.",
           "renormalize=True: gates / gates.sum(dim=-1, keepdim=True). Return (expert_ids as int64, gates as float32)."],
)


# ---- expert_capacity ---------------------------------------------------------------------------
def capacity_cases(d):
    # Labels say what kind of case it is, not its numbers: here the numbers are the whole input.
    n = d.randint(20, 200)
    specs = [("tokens that do not split evenly among the experts", 10, 4, 1.0),
             ("tokens that split evenly among the experts", 12, 4, 1.0),
             ("a capacity factor above 1 and an uneven split", 10, 3, 1.25),
             ("fewer tokens than experts", 7, 8, 1.0),
             ("a capacity factor of 2", 64, 8, 2.0),
             ("a capacity factor below 1", 5, 4, 0.5),
             ("a larger batch with a capacity factor above 1", n, 6, 1.5)]
    return [Case(label, (tokens, n_experts, cf), expected=capacity(tokens, n_experts, cf))
            for label, tokens, n_experts, cf in specs]


def _enough_for_balance(case, got, call):
    tokens, n_experts, cf = case.args
    if cf >= 1.0 and int(got) * n_experts < tokens:
        return ("with capacity factor >= 1 the experts together must have a seat for every token of a perfectly "
                "balanced batch (capacity * n_experts >= tokens)")


EXPERT_CAPACITY = Question(
    "expert_capacity", "slots per expert: ceil(capacity_factor * tokens / n_experts)", capacity_cases,
    section=f"{NOTEBOOK}, section: Switch: top-1, and a capacity per expert",
    properties=[Property("enough for a balanced batch", _enough_for_balance)],
    misconceptions=[
        Misconception("capacity_rounded_down",
                      "capacity rounded down instead of up: use math.ceil, so that capacity factor 1.0 leaves no "
                      "token of a perfectly balanced batch without a seat",
                      lambda tokens, n_experts, cf: math.floor(cf * tokens / n_experts)),
        Misconception("capacity_rounded_to_nearest",
                      "round the capacity up (math.ceil), not to the nearest whole number",
                      lambda tokens, n_experts, cf: round(cf * tokens / n_experts)),
        Misconception("capacity_without_factor",
                      "multiply by the capacity factor: it is the slack above a perfectly even split",
                      lambda tokens, n_experts, cf: math.ceil(tokens / n_experts)),
    ],
    hints=["A perfectly even split gives tokens / n_experts per expert; the capacity factor scales that.",
           "A fraction of a slot is no slot: round up, and return an int."],
)


# ---- switch_moe --------------------------------------------------------------------------------
@allow_code
@provided("mlp_expert")
class _Expert:
    """One expert the learner's function may call: (M, d_model) -> (M, d_model). A case hands it
    over, so calling it is no shortcut; it crosses into a sandbox as its weights (wire.py)."""

    def __init__(self, index, w_gate, w_up, w_down):
        self.index, self.weights = index, (w_gate, w_up, w_down)

    def __call__(self, x):
        return expert_mlp(x, *self.weights)

    def __repr__(self):
        return f"<expert {self.index}: (tokens, d_model) -> (tokens, d_model)>"

    def to_wire(self):
        return (self.index, *self.weights)

    @classmethod
    def from_wire(cls, data):
        return cls(*data)


def _core_switch(x, logits, weights, capacity_factor):
    probs = F.softmax(logits.float(), dim=-1)
    routing = select_top_k(logits, probs, 1, renormalize=False, capacity_factor=capacity_factor)  # Switch
    return dispatch_loop(x, routing.expert_ids, routing.gates, *weights)


def switch_cases(d):
    specs = [("8 tokens, 4 experts, capacity factor 1.0, most tokens preferring expert 0", 8, 4, 1.0, 2.5),
             ("10 tokens, 4 experts, capacity factor 1.0", 10, 4, 1.0, 1.0),
             ("12 tokens, 3 experts, capacity factor 1.25", 12, 3, 1.25, 1.0),
             ("6 tokens, 2 experts, capacity factor 0.5 (many dropped)", 6, 2, 0.5, 0.0),
             ("9 tokens, 4 experts, capacity factor 4.0 (none dropped)", 9, 4, 4.0, 0.0)]
    cases = []
    for label, n_tokens, n_experts, cf, skew in specs:
        d_model, d_ff = 4, 6
        weights = (d.randn(n_experts, d_ff, d_model, scale=0.5), d.randn(n_experts, d_ff, d_model, scale=0.5),
                   d.randn(n_experts, d_model, d_ff, scale=0.5))
        x = d.randn(n_tokens, d_model)
        logits = d.randn(n_tokens, n_experts)
        logits[:, 0] += skew
        experts = [_Expert(e, *(w[e] for w in weights)) for e in range(n_experts)]
        cases.append(Case(label, (x, logits, experts, cf), expected=_core_switch(x, logits, weights, cf),
                          info={"weights": weights}))
    return cases


def _within_capacity(case, got, call):
    x, logits, experts, cf = case.args
    choice = logits.argmax(-1)
    seats = capacity(x.shape[0], len(experts), cf)
    for e in range(len(experts)):
        served = int((got[choice == e].abs().sum(-1) > 0).sum())
        if served > seats:
            return (f"{served} tokens came out of one expert whose capacity is {seats}; the tokens past its capacity "
                    f"are dropped and their output is zero")


def _wrong_switch(round_down=False, dropped="zero", keep="earliest", renormalize=False):
    def wrong(x, logits, experts, cf):
        n_tokens, n_experts = logits.shape
        probs = F.softmax(logits.float(), dim=-1)
        gate, choice = probs.max(-1)
        if renormalize:
            gate = torch.ones_like(gate)
        seats = math.floor(cf * n_tokens / n_experts) if round_down else capacity(n_tokens, n_experts, cf)
        out = torch.zeros_like(x)
        for e in range(n_experts):
            tokens = torch.where(choice == e)[0]
            kept = tokens[:seats] if keep == "earliest" else tokens[max(len(tokens) - seats, 0):]
            late = tokens[~torch.isin(tokens, kept)]
            if len(kept):
                out[kept] = gate[kept, None] * experts[e](x[kept])
            if dropped == "pass_through":
                out[late] = x[late]
            elif dropped == "processed" and len(late):
                out[late] = gate[late, None] * experts[e](x[late])
        return out
    return wrong


SWITCH_MOE = Question(
    "switch_moe", "a Switch (top-1) MoE layer with expert capacity and dropped tokens", switch_cases,
    section=f"{NOTEBOOK}, section: Switch: top-1, and a capacity per expert",
    properties=[Property("within capacity", _within_capacity)],
    misconceptions=[
        Misconception("capacity_rounded_down",
                      "capacity rounded down instead of up: ceil(capacity_factor * tokens / n_experts)",
                      _wrong_switch(round_down=True)),
        Misconception("dropped_tokens_pass_through",
                      "dropped tokens given nonzero output: the MoE output of a dropped token is zero. The residual "
                      "connection outside the layer carries it past unchanged, so the layer must not add x itself",
                      _wrong_switch(dropped="pass_through")),
        Misconception("dropped_tokens_processed",
                      "dropped tokens given nonzero output: a token past its expert's capacity is not processed at "
                      "all; its output is zero",
                      _wrong_switch(dropped="processed")),
        Misconception("latest_tokens_kept",
                      "when an expert is full, the earliest tokens keep their seats (token order); the later ones "
                      "are dropped",
                      _wrong_switch(keep="latest")),
        Misconception("switch_gate_renormalised",
                      "Switch keeps the router probability as the gate: renormalising a single gate makes it 1, and "
                      "the router would get no gradient",
                      _wrong_switch(renormalize=True)),
    ],
    hints=["Each token goes to argmax of its logits; its gate is its softmax probability there.",
           "capacity = your expert_capacity(n_tokens, n_experts, capacity_factor). For each expert, its tokens in "
           "token order: the first `capacity` are processed, the rest dropped.",
           "Start from torch.zeros_like(x): a dropped token's row stays zero; a kept token's row is "
           "gate * experts[e](x[tokens])."],
)

EXERCISE = Exercise("06_moe_gating", "MoE gating, capacity and dropped tokens", NOTEBOOK,
                    [TOP_K_GATING, EXPERT_CAPACITY, SWITCH_MOE])
