"""Stage 1, the router: logits -> float32 scores -> top-k -> expert ids, gate weights, counts.

For every token the router turns one row of logits (one number per expert) into the k experts
it goes to and the weight each of their outputs gets:

    scores  = softmax(logits)            (Mixtral, Qwen: the scores of one token sum to 1)
           or sigmoid(logits)            (DeepSeek-V3: each expert scored on its own)
    chosen  = top_k(scores + bias)       (bias: DeepSeek-V3's load-balancing bias, selection only)
    weights = scores[chosen]             (/ their sum when renormalize: the k weights sum to 1)

Everything is computed in float32 whatever the logits' dtype (a float16 softmax over many
experts loses the small probabilities; notebook 06 shows it fail).

Top-k is k rounds of "take the largest, then hide it": `tl.argmax` picks the column of the
largest score (the lowest expert index on a tie, so the result is deterministic), the chosen
column is set to -inf, and the next round finds the runner-up. k is small (1 to 8), so the
k rounds are unrolled at compile time with `tl.static_range`.

Launch grid and block sizes (as in the Triton tutorials):
    grid = (cdiv(n_tokens, BLOCK_TOKENS),)  one program per block of BLOCK_TOKENS tokens
    each program holds a (BLOCK_TOKENS, BLOCK_EXPERTS) tile of scores in registers;
    BLOCK_EXPERTS is n_experts rounded up to a power of two (tl.arange needs one), the extra
    columns are masked to -inf so they are never chosen.
While it has the tile, each program also counts how many of its (token, slot) pairs went to
every expert: `block_counts[block, expert]`. Stage 2 (align.py) turns those per-block counts
into where every pair goes in the expert-sorted order, without counting again.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import triton
import triton.language as tl

__all__ = ["RouterOutput", "router_kernel", "triton_route", "default_block_tokens"]


@triton.jit
def router_kernel(
    logits_ptr,          # (n_tokens, n_experts) float16/32: the router's output, one row per token
    bias_ptr,            # (n_experts,) float32 selection bias (read only when HAS_BIAS)
    expert_ids_ptr,      # (n_tokens, TOP_K) int32, out: the chosen experts, best first
    weights_ptr,         # (n_tokens, TOP_K) float32, out: their gate weights
    block_counts_ptr,    # (n_blocks, n_experts) int32, out: (token, slot) pairs per expert per block
    n_tokens, n_experts, stride_logits_token,
    TOP_K: tl.constexpr,          # experts per token
    USE_SIGMOID: tl.constexpr,    # False: softmax scores; True: sigmoid scores
    HAS_BIAS: tl.constexpr,
    RENORMALIZE: tl.constexpr,    # divide the k weights by their sum
    BLOCK_TOKENS: tl.constexpr,   # tokens per program (a power of two)
    BLOCK_EXPERTS: tl.constexpr,  # n_experts rounded up to a power of two
    K_PAD: tl.constexpr,          # TOP_K rounded up to a power of two (the width of the result tile)
):
    block = tl.program_id(0)
    tokens = block * BLOCK_TOKENS + tl.arange(0, BLOCK_TOKENS)            # (BLOCK_TOKENS,)
    experts = tl.arange(0, BLOCK_EXPERTS)                                  # (BLOCK_EXPERTS,)
    token_ok = tokens < n_tokens
    expert_ok = experts < n_experts

    # One tile of logits, in float32. Padding columns become -inf: softmax gives them 0.
    offsets = tokens[:, None].to(tl.int64) * stride_logits_token + experts[None, :]
    logits = tl.load(logits_ptr + offsets, mask=token_ok[:, None] & expert_ok[None, :], other=0.0)
    logits = tl.where(expert_ok[None, :], logits.to(tl.float32), float("-inf"))  # (BLOCK_TOKENS, BLOCK_EXPERTS)

    if USE_SIGMOID:
        scores = tl.sigmoid(logits)
    else:
        shifted = logits - tl.max(logits, axis=1)[:, None]                 # safe softmax: largest is 0
        numerators = tl.exp(shifted)
        scores = numerators / tl.sum(numerators, axis=1)[:, None]          # (BLOCK_TOKENS, BLOCK_EXPERTS)

    # What top-k ranks: the scores, plus the selection bias when there is one.
    choice = scores
    if HAS_BIAS:
        choice = scores + tl.load(bias_ptr + experts, mask=expert_ok, other=0.0)[None, :]
    choice = tl.where(expert_ok[None, :], choice, float("-inf"))

    # k rounds of argmax. The result tile is (BLOCK_TOKENS, K_PAD); column `slot` is filled in round `slot`.
    slot_cols = tl.arange(0, K_PAD)                                        # (K_PAD,)
    top_ids = tl.zeros((BLOCK_TOKENS, K_PAD), dtype=tl.int32)
    top_weights = tl.zeros((BLOCK_TOKENS, K_PAD), dtype=tl.float32)
    counts = tl.zeros((BLOCK_EXPERTS,), dtype=tl.int32)
    for slot in tl.static_range(TOP_K):
        best = tl.argmax(choice, axis=1, tie_break_left=True)             # (BLOCK_TOKENS,)
        picked = experts[None, :] == best[:, None]                        # (BLOCK_TOKENS, BLOCK_EXPERTS) one-hot
        weight = tl.sum(tl.where(picked, scores, 0.0), axis=1)            # (BLOCK_TOKENS,) the chosen score
        choice = tl.where(picked, float("-inf"), choice)                  # hide it for the next round
        this_slot = slot_cols[None, :] == slot
        top_ids = tl.where(this_slot, best[:, None].to(tl.int32), top_ids)
        top_weights = tl.where(this_slot, weight[:, None], top_weights)
        counts += tl.sum((picked & token_ok[:, None]).to(tl.int32), axis=0)

    if RENORMALIZE:
        top_weights = top_weights / tl.sum(top_weights, axis=1)[:, None]  # padding columns hold 0

    out = tokens[:, None] * TOP_K + slot_cols[None, :]                    # (BLOCK_TOKENS, K_PAD)
    out_ok = token_ok[:, None] & (slot_cols[None, :] < TOP_K)
    tl.store(expert_ids_ptr + out, top_ids, mask=out_ok)
    tl.store(weights_ptr + out, top_weights, mask=out_ok)
    tl.store(block_counts_ptr + block * n_experts + experts, counts, mask=expert_ok)


@dataclass
class RouterOutput:
    """What the router kernel produced for a batch of tokens.

    expert_ids    (n_tokens, top_k) int32   the chosen experts, best first
    weights       (n_tokens, top_k) float32 their gate weights
    block_counts  (n_blocks, n_experts) int32  pairs per expert in each block of `block_tokens` tokens
    block_tokens  tokens per block (align.py reads block_counts with the same blocks)
    """

    expert_ids: torch.Tensor
    weights: torch.Tensor
    block_counts: torch.Tensor
    block_tokens: int

    @property
    def expert_counts(self) -> torch.Tensor:
        """(n_experts,) (token, slot) pairs per expert over the whole batch: the expert load."""
        return self.block_counts.sum(0)


def default_block_tokens(n_tokens: int, n_experts: int, top_k: int) -> int:
    """Tokens per block for the router and the alignment: a power of two.

    A block's one-hot tile in align.py is (block_tokens * top_k) x n_experts; about 16k cells
    keeps it in registers on a GPU (DeepSeek-V3: 8 tokens x top-8 x 256 experts). Never more
    than the batch needs, never fewer than 2 (a one-element arange is a corner we avoid).
    """
    cells = 16384 // (triton.next_power_of_2(n_experts) * triton.next_power_of_2(top_k))
    block = min(256, max(2, cells), triton.next_power_of_2(max(n_tokens, 1)))
    return max(2, 1 << (block.bit_length() - 1))    # round down to a power of two


def triton_route(logits: torch.Tensor, top_k: int, *, score: str = "softmax", renormalize: bool = True,
                 bias: torch.Tensor | None = None, block_tokens: int | None = None) -> RouterOutput:
    """Route every token: (n_tokens, n_experts) logits -> RouterOutput (ids, weights, block counts).

    score        "softmax" (Mixtral, Qwen) or "sigmoid" (DeepSeek-V3)
    renormalize  make each token's k weights sum to 1
    bias         (n_experts,) added to the scores for choosing only (DeepSeek-V3's balancing bias)
    """
    if logits.dim() != 2:
        raise ValueError(f"logits has shape {tuple(logits.shape)}: expected (n_tokens, n_experts); "
                         f"flatten the batch and sequence dimensions first")
    n_tokens, n_experts = logits.shape
    if not 1 <= top_k <= n_experts:
        raise ValueError(f"top_k={top_k}: must be between 1 and n_experts={n_experts}")
    if score not in ("softmax", "sigmoid"):
        raise ValueError(f"score={score!r}: must be 'softmax' or 'sigmoid'")
    if logits.stride(1) != 1:
        logits = logits.contiguous()
    block_tokens = block_tokens or default_block_tokens(n_tokens, n_experts, top_k)
    n_blocks = triton.cdiv(n_tokens, block_tokens)
    device = logits.device
    expert_ids = torch.empty(n_tokens, top_k, dtype=torch.int32, device=device)
    weights = torch.empty(n_tokens, top_k, dtype=torch.float32, device=device)
    block_counts = torch.empty(n_blocks, n_experts, dtype=torch.int32, device=device)
    if bias is not None:
        bias = bias.to(device=device, dtype=torch.float32).contiguous()

    grid = (n_blocks,)
    if n_tokens > 0:
        router_kernel[grid](
            logits, bias if bias is not None else weights, expert_ids, weights, block_counts,
            n_tokens, n_experts, logits.stride(0),
            TOP_K=top_k, USE_SIGMOID=score == "sigmoid", HAS_BIAS=bias is not None, RENORMALIZE=renormalize,
            BLOCK_TOKENS=block_tokens, BLOCK_EXPERTS=triton.next_power_of_2(n_experts),
            K_PAD=triton.next_power_of_2(top_k),
        )
    return RouterOutput(expert_ids, weights, block_counts, block_tokens)
