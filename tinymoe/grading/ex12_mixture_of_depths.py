"""Exercise 12, Mixture-of-Depths: the gather/scatter step, and a draft with three bugs to find.

    route_and_gather(x, logits, k)          (idx, x_routed): each sequence's top-k tokens in
                                            sequence order, and their rows of x
    scatter_update(x, idx, r, y_routed)     x with the routed rows replaced by x + r * (y - x);
                                            the skipped rows unchanged
    mod_block_step(x, logits, k, block)     the whole step, fixed from the draft in the notebook:
                                            gather, run the block at the tokens' true positions,
                                            scale the block's update by r = sigmoid(logit), scatter

Reference: tinymoe.mod (select_tokens, gather_tokens, scatter_tokens, and MoDBlock's forward).
The catalogued wrong answers are the classic mistakes: argsort of the top-k indices instead of
sorting them (the ranks 0..k-1 gather the first k tokens), the top-k indices left in score order,
the routed tokens run at positions renumbered 0..k-1, r applied to the whole residual
(r * block(x)) instead of the block's update, and the skipped rows zeroed instead of copied.
"""
from __future__ import annotations

import torch

from ..block import DecoderBlock
from ..config import ModelConfig
from ..mod import gather_tokens, scatter_tokens, select_tokens
from .checks import Case, Exercise, Misconception, Property, Question
from .policy import allow_code
from .wire import provided

NOTEBOOK = "notebooks/12_mixture_of_depths.ipynb"

SHAPES = [("one sequence of 10 tokens, k = 4", 1, 10, 5, 4), ("2 sequences of 8 tokens, k = 2", 2, 8, 6, 2),
          ("3 sequences of 12 tokens, k = 6", 3, 12, 4, 6), ("2 sequences of 16 tokens, k = 3", 2, 16, 8, 3)]


def _logits(d, B, T):
    """Router logits whose top k are never simply the first k tokens (else argsort would pass)."""
    logits = d.randn(B, T, scale=2.0)
    logits[:, 0] = logits.min() - 1.0                                       # token 0 is never chosen
    return logits


# ---- route_and_gather --------------------------------------------------------------------------
def _core_gather(x, logits, k):
    idx = select_tokens(logits, k)
    return idx, gather_tokens(x, idx)


def gather_cases(d):
    cases = []
    for label, B, T, d_model, k in SHAPES:
        x, logits = d.randn(B, T, d_model), _logits(d, B, T)
        cases.append(Case(label, (x, logits, k), expected=_core_gather(x, logits, k)))
    return cases


def _argsort_not_sort(x, logits, k):
    idx = torch.topk(logits, k, dim=-1).indices.argsort(dim=-1)             # ranks, not positions
    return idx, gather_tokens(x, idx)


def _score_order(x, logits, k):
    idx = torch.topk(logits, k, dim=-1).indices                             # best first
    return idx, gather_tokens(x, idx)


def _rows_match_idx(case, got, call):
    x = case.args[0]
    idx, x_routed = got
    if idx.dtype != torch.int64 or (idx < 0).any() or (idx >= x.shape[1]).any():
        return None                                                         # the value step says what is off
    if not torch.allclose(x_routed.double(), gather_tokens(x, idx).double()):
        return "the rows of x_routed are not the rows of x that idx names (row j of sequence b is x[b, idx[b, j]])"


ROUTE_AND_GATHER = Question(
    "route_and_gather", "each sequence's top-k tokens, in sequence order, and their rows", gather_cases,
    section=f"{NOTEBOOK}, section: Which tokens go through: gather",
    properties=[Property("rows follow idx", _rows_match_idx)],
    misconceptions=[
        Misconception("argsort_not_sort",
                      "argsort of the top-k indices gives their ranks 0..k-1, so you gathered the first k tokens "
                      "of the sequence; sort the indices themselves (their values) to put the chosen tokens in order",
                      _argsort_not_sort),
        Misconception("score_order",
                      "topk returns the chosen tokens best first; put them back in sequence order (sort the indices) "
                      "so that causal attention among them still reads left to right",
                      _score_order),
    ],
    hints=["torch.topk(logits, k, dim=-1).indices names the chosen tokens; which order are they in?",
           "Sort those indices (.sort(dim=-1).values), then x.gather(1, idx[..., None].expand(-1, -1, d_model))."],
)


# ---- scatter_update ----------------------------------------------------------------------------
def scatter_cases(d):
    cases = []
    for label, B, T, d_model, k in SHAPES:
        x, logits = d.randn(B, T, d_model), _logits(d, B, T)
        idx = select_tokens(logits, k)
        r = torch.sigmoid(logits.gather(1, idx))                            # (B, k)
        y_routed = gather_tokens(x, idx) + d.randn(B, k, d_model)
        x_routed = gather_tokens(x, idx)
        cases.append(Case(label, (x, idx, r, y_routed),
                          expected=scatter_tokens(x, idx, x_routed + r[..., None] * (y_routed - x_routed))))
    return cases


def _whole_residual(x, idx, r, y_routed):
    return scatter_tokens(x, idx, r[..., None] * y_routed)


def _skipped_zeroed(x, idx, r, y_routed):
    x_routed = gather_tokens(x, idx)
    return scatter_tokens(torch.zeros_like(x), idx, x_routed + r[..., None] * (y_routed - x_routed))


def _skipped_unchanged(case, got, call):
    x, idx = case.args[:2]
    skipped = torch.ones(x.shape[:2], dtype=torch.bool).scatter(1, idx, False)
    if not torch.equal(got[skipped], x[skipped]):
        return "a skipped token's row changed; tokens outside the top k ride the residual stream unchanged"


SCATTER_UPDATE = Question(
    "scatter_update", "write x + r * (y - x) into the routed rows, copy the others", scatter_cases,
    section=f"{NOTEBOOK}, section: The routed rows' update, scaled by r: scatter",
    properties=[Property("skipped rows unchanged", _skipped_unchanged)],
    misconceptions=[
        Misconception("weight_on_whole_residual",
                      "r scales the block's update y - x, not the block's whole output: a token with r = 0 must come "
                      "out as it went in, not as zeros",
                      _whole_residual),
        Misconception("skipped_rows_zeroed",
                      "start from a copy of x, not from zeros: a skipped token keeps its row",
                      _skipped_zeroed),
    ],
    hints=["The block returns y = x + its update; the MoD output of a routed token is x + r * (y - x).",
           "x.scatter(1, idx[..., None].expand(-1, -1, d_model), new_rows) copies x and writes the new rows."],
)


# ---- mod_block_step (the draft, fixed) ----------------------------------------------------------
_BLOCK_CONFIG = dict(d_model=8, n_heads=2, max_seq_len=32)


@allow_code
@provided("rope_decoder_block")
class _Block:
    """The decoder block a case hands the learner: block(x, positions=None) -> (y, aux_losses), a
    two-head RoPE DecoderBlock. Handed over, so calling it is no shortcut; it crosses into a sandbox
    as its seed and weights (wire.py)."""

    def __init__(self, seed, *weights):
        self.seed = int(seed)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(self.seed)
            self.module = DecoderBlock(ModelConfig(**_BLOCK_CONFIG)).eval()
        if weights:
            self.module.load_state_dict(dict(zip(self.module.state_dict(), weights)))
        for p in self.module.parameters():
            p.requires_grad_(False)

    def __call__(self, x, positions=None):
        with torch.no_grad():
            return self.module(x, positions=positions)

    def __repr__(self):
        return "<decoder block: block(x (B, k, 8), positions=None) -> (y (B, k, 8), aux_losses)>"

    def to_wire(self):
        return (self.seed, *self.module.state_dict().values())

    @classmethod
    def from_wire(cls, data):
        return cls(*data)


def _core_step(x, logits, k, block):
    idx = select_tokens(logits, k)
    x_routed = gather_tokens(x, idx)
    y, _ = block(x_routed, positions=idx)
    r = torch.sigmoid(logits.gather(1, idx))[..., None]
    return scatter_tokens(x, idx, x_routed + r * (y - x_routed))


def step_cases(d):
    specs = [("one sequence of 10 tokens, k = 4", 1, 10, 4), ("2 sequences of 12 tokens, k = 3", 2, 12, 3),
             ("2 sequences of 16 tokens, k = 8", 2, 16, 8)]
    block = _Block(d.seed)
    cases = []
    for label, B, T, k in specs:
        x, logits = d.randn(B, T, 8), _logits(d, B, T)
        cases.append(Case(f"{label} (a 2-head RoPE decoder block)", (x, logits, k, block),
                          expected=_core_step(x, logits, k, block)))
    return cases


def _step(argsort=False, renumber=False, whole=False):
    """The step with some of the draft's bugs left in."""
    def step(x, logits, k, block):
        top = torch.topk(logits, k, dim=-1).indices
        idx = top.argsort(dim=-1) if argsort else top.sort(dim=-1).values
        x_routed = gather_tokens(x, idx)
        y, _ = block(x_routed) if renumber else block(x_routed, positions=idx)
        r = torch.sigmoid(logits.gather(1, idx))[..., None]
        rows = r * y if whole else x_routed + r * (y - x_routed)
        return scatter_tokens(x, idx, rows)
    return step


STEP_HINTS = {
    "argsort_not_sort": "one bug is left: the tokens gathered are the first k of the sequence, not the chosen ones "
                        "(argsort of the indices gives ranks; sort the indices)",
    "positions_renumbered": "one bug is left: the routed tokens run at positions 0..k-1; pass their true positions "
                            "(positions=idx) so RoPE rotates each by where it sits in the sequence",
    "weight_on_whole_residual": "one bug is left: r multiplies the block's whole output; it should scale only the "
                                "update y - x_routed",
}

MOD_BLOCK_STEP = Question(
    "mod_block_step", "the draft MoD step with its three bugs fixed", step_cases,
    section=(f"{NOTEBOOK}, sections: Which tokens go through: gather; The block runs among the routed tokens, "
             f"at their true positions; The routed rows' update, scaled by r: scatter"),
    misconceptions=[
        Misconception("draft_unchanged", "this is still the draft: all three bugs are in it (which tokens are gathered, "
                      "at which positions they run, and what r multiplies)", _step(True, True, True)),
        Misconception("argsort_not_sort", STEP_HINTS["argsort_not_sort"], _step(argsort=True)),
        Misconception("positions_renumbered", STEP_HINTS["positions_renumbered"], _step(renumber=True)),
        Misconception("weight_on_whole_residual", STEP_HINTS["weight_on_whole_residual"], _step(whole=True)),
    ],
    hints=["Read the draft line by line against the notebook's three steps: gather, block at true positions, scatter.",
           "Look at: .argsort(), block(x_routed) without positions=, and r * y."],
)

EXERCISE = Exercise("12_mixture_of_depths", "Mixture-of-Depths: routing tokens around a block", NOTEBOOK,
                    [ROUTE_AND_GATHER, SCATTER_UPDATE, MOD_BLOCK_STEP])
