"""MoEfication: a trained dense MLP is already a sum of experts; split it and route.

A SwiGLU MLP computes out = W_down (silu(W_gate x) * W_up x) = sum_j W_down[:, j] h_j over its
d_ff hidden neurons j. Cut the neurons into E groups and each group is an expert -- a smaller
SwiGLU with its own rows of W_gate / W_up and columns of W_down -- and the MLP's output is
exactly the sum of the E experts' outputs (Zhang et al. 2022, "MoEfication: Transformer
Feed-forward Layers are Mixtures of Experts"; LLaMA-MoE, Zhu et al. 2024). Nothing is trained
for that step: it is notebook 06's "copy the MLP into experts", done to a real model.

Sparsity is the second step: compute only k of the E experts per token and add their outputs.
Which k? Two routers here:
  oracle   the k experts whose outputs are largest (needs every expert: an upper bound, not a saving)
  learned  a linear router logits = W_r x, trained to predict the oracle's choice (a binary
           cross-entropy per expert, returned as an auxiliary loss so `tinymoe.train` can fit it)
How the neurons are grouped matters: contiguous groups ignore what the neurons do; clustering
neurons that fire together (co-activation, a balanced k-means) packs what a token needs into
fewer experts.
"""
from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from .feedforward import SwiGLU, swiglu_hidden
from .trace import Trace, record

__all__ = ["contiguous_groups", "coactivation_groups", "MoEfiedSwiGLU", "moefy", "ROUTERS"]

ROUTERS = ("all", "oracle", "learned")


def _check_split(d_ff: int, n_experts: int) -> None:
    if isinstance(n_experts, bool) or not isinstance(n_experts, int) or n_experts < 1:
        raise ValueError(f"n_experts={n_experts!r} must be a whole number >= 1")
    if d_ff % n_experts:
        raise ValueError(f"n_experts={n_experts} must divide d_ff={d_ff}: every expert gets d_ff / n_experts neurons")


def contiguous_groups(d_ff: int, n_experts: int) -> torch.Tensor:
    """(n_experts, d_ff // n_experts) neuron ids: expert e owns neurons e*m .. (e+1)*m - 1."""
    _check_split(d_ff, n_experts)
    return torch.arange(d_ff).view(n_experts, d_ff // n_experts)


def coactivation_groups(hidden: torch.Tensor, n_experts: int, iters: int = 8, seed: int = 0) -> torch.Tensor:
    """(n_experts, d_ff // n_experts) neuron ids from a balanced k-means of the neurons' activations.

    hidden: (N tokens, d_ff) hidden activations of one MLP on sample text. Neuron j is described by
    its column |hidden[:, j]| (normalised), so neurons that are large on the same tokens are close;
    each cluster is then filled to exactly d_ff / n_experts neurons, most similar first."""
    N, d_ff = hidden.shape
    _check_split(d_ff, n_experts)
    size = d_ff // n_experts
    features = F.normalize(hidden.detach().abs().T.float(), dim=1)                   # (d_ff, N)
    g = torch.Generator().manual_seed(seed)
    centroids = features[torch.randperm(d_ff, generator=g)[:n_experts]]      # (E, N)
    for _ in range(iters):
        owner = _balanced_assignment(features @ centroids.T, size)              # (d_ff,) expert of each neuron
        centroids = F.normalize(features.new_zeros(n_experts, N).index_add_(0, owner, features), dim=1)  # mean direction
    return owner.argsort(stable=True).view(n_experts, size)                   # neuron ids, expert by expert


def _balanced_assignment(score: torch.Tensor, size: int) -> torch.Tensor:
    """Give each of the rows of score (d_ff, E) one column, every column exactly `size` rows.

    In rounds: every unplaced neuron asks for its best expert that still has room; an expert
    takes the applicants it scores highest, up to its room. At most E rounds."""
    d_ff, E = score.shape
    owner = torch.full((d_ff,), -1, dtype=torch.long)
    fill = torch.zeros(E, dtype=torch.long)
    while bool((owner < 0).any()):
        free = (owner < 0).nonzero().flatten()                                # neurons still unplaced
        open_score = score[free].masked_fill(fill >= size, float("-inf"))     # full experts are closed
        wish = open_score.argmax(dim=1)                                       # each neuron's best open expert
        for e in wish.unique().tolist():
            applicants = free[wish == e]
            best = score[applicants, e].argsort(descending=True)[: size - int(fill[e])]
            owner[applicants[best]] = e
            fill[e] += len(best)
    return owner


class MoEfiedSwiGLU(nn.Module):
    """A trained SwiGLU split into experts by `groups`; computes top_k of them per token.

    router "all" (every expert: equals the dense MLP), "oracle" or "learned". forward returns
    (out, aux_losses) like the MoE layer; aux_losses holds the learned router's "router_bce"
    (its fit to the oracle's choice) while a learned router trains, and is empty otherwise."""

    def __init__(self, ffn: SwiGLU, groups: torch.Tensor, top_k: int | None = None,
                 router: str = "all", name: str = "ffn"):
        super().__init__()
        if not isinstance(ffn, SwiGLU):
            raise TypeError(f"ffn must be a SwiGLU feed-forward, got {type(ffn).__name__}")
        d_ff, d_model = ffn.w_up.weight.shape
        groups = torch.as_tensor(groups, dtype=torch.long)
        if groups.dim() != 2 or groups.numel() != d_ff or not torch.equal(groups.flatten().sort().values, torch.arange(d_ff)):
            raise ValueError(f"groups must be an (n_experts, d_ff/n_experts) array using each of the d_ff={d_ff} "
                             f"neurons exactly once; got shape {tuple(groups.shape)}")
        if ffn.w_up.bias is not None:
            raise ValueError("MoEfication here splits bias-free SwiGLU MLPs (Llama's)")
        self.name, self.n_experts = name, groups.shape[0]
        self.register_buffer("groups", groups, persistent=False)
        with torch.no_grad():
            self.w_gate = nn.Parameter(ffn.w_gate.weight[groups].clone())                 # (E, m, d_model)
            self.w_up = nn.Parameter(ffn.w_up.weight[groups].clone())                     # (E, m, d_model)
            self.w_down = nn.Parameter(ffn.w_down.weight[:, groups].permute(1, 0, 2).clone())  # (E, d_model, m)
        self.router = nn.Linear(d_model, self.n_experts, bias=False)
        nn.init.zeros_(self.router.weight)
        self.set_routing(top_k, router)

    @torch.no_grad()
    def regroup(self, groups: torch.Tensor) -> "MoEfiedSwiGLU":
        """Re-split the same neurons into other groups (e.g. clustered instead of contiguous)."""
        groups = torch.as_tensor(groups, dtype=torch.long)
        if groups.shape != self.groups.shape or not torch.equal(groups.flatten().sort().values,
                                                                self.groups.flatten().sort().values):
            raise ValueError(f"groups must have shape {tuple(self.groups.shape)} and use every neuron once")
        E, m, d = self.w_up.shape
        neuron = self.groups.flatten()                                        # (d_ff,) neuron id of each row now
        dense = {}
        for name in ("w_gate", "w_up"):
            w = torch.empty(E * m, d, dtype=self.w_up.dtype)
            w[neuron] = getattr(self, name).flatten(0, 1)                     # back to the dense MLP's order
            getattr(self, name).copy_(w[groups])                              # (E, m, d_model) in the new groups
        down = torch.empty(d, E * m, dtype=self.w_up.dtype)
        down[:, neuron] = self.w_down.permute(1, 0, 2).flatten(1)             # (d_model, d_ff)
        self.w_down.copy_(down[:, groups].permute(1, 0, 2))
        self.groups = groups
        return self

    def set_routing(self, top_k: int | None = None, router: str = "all") -> "MoEfiedSwiGLU":
        """Choose how many experts each token uses and who picks them."""
        if router not in ROUTERS:
            raise ValueError(f"router={router!r} must be one of {ROUTERS}")
        top_k = self.n_experts if top_k is None else top_k
        if isinstance(top_k, bool) or not isinstance(top_k, int) or not 1 <= top_k <= self.n_experts:
            raise ValueError(f"top_k={top_k!r} must be a whole number in 1..n_experts={self.n_experts}")
        self.top_k, self.router_kind = top_k, router
        return self

    def expert_outputs(self, x: torch.Tensor) -> torch.Tensor:
        """(..., d_model) -> (..., n_experts, d_model): what each expert adds to the residual."""
        E, m, _ = self.w_up.shape
        hidden = swiglu_hidden(x, self.w_gate.flatten(0, 1), self.w_up.flatten(0, 1))  # (..., E*m): the dense MLP's neurons, regrouped
        hidden = hidden.unflatten(-1, (E, m))                                 # (..., E, m)
        return torch.einsum("...em,edm->...ed", hidden, self.w_down)          # (..., E, d_model)

    def oracle_choice(self, outputs: torch.Tensor) -> torch.Tensor:
        """(..., E, d_model) -> (..., E) bool: the top_k experts with the largest outputs."""
        ids = outputs.norm(dim=-1).topk(self.top_k, dim=-1).indices           # (..., k)
        return torch.zeros(outputs.shape[:-1], dtype=torch.bool, device=outputs.device).scatter(-1, ids, True)

    def forward(self, x: torch.Tensor, trace: Trace | None = None):
        trace = trace.scope(self.name) if trace is not None else None
        outputs = self.expert_outputs(x)                                      # (..., E, d_model)
        logits = self.router(x)                                               # (..., E)
        oracle = self.oracle_choice(outputs)                                  # (..., E) bool
        if self.router_kind == "all" or self.top_k == self.n_experts:
            chosen = torch.ones_like(oracle)
        elif self.router_kind == "oracle":
            chosen = oracle
        else:
            ids = logits.topk(self.top_k, dim=-1).indices
            chosen = torch.zeros_like(oracle).scatter(-1, ids, True)
        out = (outputs * chosen[..., None].to(outputs.dtype)).sum(dim=-2)   # (..., d_model)
        record(trace, "router_logits", logits)
        record(trace, "chosen", chosen)
        record(trace, "out", out, "output")
        aux = {}
        if self.training and self.router_kind == "learned" and self.router.weight.requires_grad:
            aux["router_bce"] = F.binary_cross_entropy_with_logits(logits.float(), oracle.float())
        return out, aux


def moefy(model: nn.Module, n_experts: int, groups: list[torch.Tensor] | None = None) -> list[MoEfiedSwiGLU]:
    """Replace every block's SwiGLU `ffn` of a TinyLM by its MoEfied split (contiguous groups
    unless `groups` gives one (n_experts, m) array per layer). Returns the new modules."""
    new = []
    for i, block in enumerate(model.layers):
        d_ff = block.ffn.w_up.weight.shape[0]
        g = contiguous_groups(d_ff, n_experts) if groups is None else groups[i]
        block.ffn = MoEfiedSwiGLU(block.ffn, g, name="ffn").to(block.ffn.w_up.weight.dtype)
        new.append(block.ffn)
    return new
