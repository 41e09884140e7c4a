"""Expert parallelism: the MoE layer with its experts spread over ranks (GShard, Switch Transformer).

An expert is a whole feed-forward that only some tokens visit, so experts are the natural unit
to spread: rank r holds experts r * E_local .. (r + 1) * E_local - 1 (E_local = n_experts /
world_size), and every token travels to wherever its expert lives. The router (small) and the
shared experts are copied on every rank. One forward on each rank:

    1. route      its own N tokens with the same router as `tinymoe.moe.MoE`     (N, k) ids, gates
    2. counts     all_gather the per-slot, per-expert counts (world_size, k, n_experts) and the step
    3. capacity   every rank works out the same seats from the counts (`capacity.py`)
    4. send       sort the kept (token, slot) pairs by expert, hence by owning rank, and
                  all_to_all them (uneven splits: send[d] rows to rank d)
    5. experts    run the local experts on what arrived, with any dispatch backend
    6. return     all_to_all the outputs back the same way, splits swapped
    7. combine    weight each returned row by its gate, put it in its (token, slot) cell and sum
                  the k slots in slot order: a fixed order, so the result does not depend on the
                  world size beyond float rounding.

Gradients flow back through both all-to-alls (`exchange.py`). Expert weights get their full
gradient on their owner; the router's gradient on each rank comes from its own tokens, to be
summed over ranks as data parallelism does for every replicated weight. The returned losses are
this rank's share: summed over the ranks they are the single-process layer's losses.

Token-choice routers only (softmax_topk, switch, noisy_topk, sigmoid_bias): expert choice and
soft MoE pick over the whole batch at once, which does not split by rank. (noisy_topk draws its
training noise from each rank's own generator, so only its eval mode matches one process exactly.)

Every rank must call the layer once per step, even with no tokens, with the same requires_grad:
backward runs the exchanges again and every rank has to take part. A rank that skips a step, dies
or hangs becomes an `ExpertParallelError` on the others naming it and the step (the step number
travels with the counts, and each rank leaves a mark in the store as it arrives).

Trace names (under the layer's name), besides the single-process ones (x, router_logits,
router_probs, chosen_ids, expert_ids, gates, dropped, expert_load, capacity, out):
    rank ()                    this rank
    routing_counts (W, E)      kept pairs each rank sends to each expert (the same table on every rank)
    send_counts (W,)           pairs this rank sends to each rank (its own entry stays home)
    recv_counts (W,)           pairs it receives from each rank
    send_token_ids (M,)        which local token each row of the send buffer is
    send_expert_ids (M,)       and to which expert it goes
    sent (M, d_model)          the send buffer, grouped by destination rank
    received (M_in, d_model)   what arrived, grouped by source rank
    recv_src_ranks (M_in,), recv_expert_ids (M_in,)   where each received row came from, for which expert
    expert_out (M_in, d_model) the local experts' outputs (before gating), sent back
    local_expert_load (E_local,)  rows each local expert processed
    bytes_sent (W,), bytes_received (W,)   token + result bytes to / from each rank, measured on the
                               buffers handed to the all-to-alls (own entry 0: that chunk stays home)
    bytes_moved ()             everything this rank sent to others, count table included
"""
from __future__ import annotations

import dataclasses

import torch
import torch.distributed as dist
from torch import nn

from ..config import ConfigError, ModelConfig
from ..moe import Experts, SharedExperts, get_dispatch, make_router
from ..trace import Trace, record, scoped
from .capacity import drop_overflow, exchange_plan, experts_per_rank, slot_counts
from .exchange import all_to_all
from .group import ExpertParallelError, ExpertParallelGroup, agree_on_config

__all__ = ["ExpertParallelMoE", "TOKEN_CHOICE_ROUTERS"]

TOKEN_CHOICE_ROUTERS = ("softmax_topk", "switch", "noisy_topk", "sigmoid_bias")


def _dropless(config: ModelConfig) -> ModelConfig:
    """The same router without capacity (capacity is applied across ranks, `capacity.py`).
    Switch is softmax top-1 without renormalising, so it becomes exactly that."""
    moe = config.moe
    if moe.router == "switch":
        moe = dataclasses.replace(moe, router="softmax_topk", top_k=1, renormalize=False, capacity_factor=None)
    else:
        moe = dataclasses.replace(moe, capacity_factor=None)
    return dataclasses.replace(config, moe=moe)


def _bytes_per_rank(buffer: torch.Tensor, counts: list[int], rank: int) -> torch.Tensor:
    """(W,) bytes of each rank's chunk of an all-to-all buffer, 0 for this rank's own chunk."""
    return torch.tensor([0 if d == rank else chunk.nelement() * chunk.element_size()
                         for d, chunk in enumerate(buffer.split(counts))])


class ExpertParallelMoE(nn.Module):
    """The MoE layer with n_experts / world_size experts on this rank; call it on every rank."""

    def __init__(self, config: ModelConfig, group: ExpertParallelGroup, name: str = "moe"):
        super().__init__()
        config.validate()
        moe = config.moe
        if moe is None:
            raise ConfigError("moe", None, "an MoE layer needs config.moe = MoEConfig(...)")
        if moe.router not in TOKEN_CHOICE_ROUTERS:
            raise ConfigError("moe.router", moe.router,
                              f"picks tokens across the whole batch, which does not split by rank: expert "
                              f"parallelism needs a token-choice router ({', '.join(TOKEN_CHOICE_ROUTERS)})")
        n_local = experts_per_rank(moe.n_experts, group.world_size)          # E_local, or a ConfigError
        self.device = torch.device("cuda", torch.cuda.current_device()) if group.backend == "nccl" else torch.device("cpu")
        agree_on_config(config, group, self.device)                          # every rank: the same layer
        self.config, self.group, self.name = config, group, name
        self.n_experts, self.top_k, self.dispatch = moe.n_experts, moe.top_k, moe.dispatch
        self.n_local = n_local
        self.first_expert = group.rank * self.n_local                        # global id of local expert 0
        self.d_ff = config.ff_dim if moe.d_ff_expert is None else moe.d_ff_expert
        self.router = make_router(_dropless(config))
        self.experts = Experts(self.n_local, config.d_model, self.d_ff, config.ffn)
        self.shared = (SharedExperts(config.d_model, self.d_ff, moe.n_shared_experts, config.ffn,
                                     gated=moe.shared_expert_gate) if moe.n_shared_experts else None)
        self.step = 0                                                        # forwards so far, checked across ranks
        self.last_expert_load: torch.Tensor | None = None                    # (n_experts,) global, latest forward

    def load_from(self, moe: nn.Module) -> "ExpertParallelMoE":
        """Copy a single-process `tinymoe.moe.MoE`'s weights: the router and shared experts whole,
        the experts this rank owns as a slice."""
        local = slice(self.first_expert, self.first_expert + self.n_local)
        with torch.no_grad():
            self.router.load_state_dict(moe.router.state_dict())
            for mine, full in zip(self.experts.weights(), moe.experts.weights()):
                if mine is not None:
                    mine.copy_(full[local])
            if self.shared is not None:
                self.shared.load_state_dict(moe.shared.state_dict())
        return self

    # ---- failures: name the step and the rank ------------------------------------------------
    def _fail(self, step: int, phase: str, error: Exception):
        marks = self.group.last_seen(self.name)
        behind = {r: m for r, m in marks.items() if r != self.group.rank and (m is None or int(m) < step)}
        where = f"layer {self.name!r}, step {step}, {phase}"
        cause = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        cause = cause.split(". This is typically")[0]                       # gloo's advice, not the cause
        if behind:
            who = ", ".join(f"rank {r} ({'never seen' if m is None else f'last seen at step {m}'})"
                            for r, m in behind.items())
            message = (f"rank {self.group.rank}: {where}: {who} never reached this step: it died, hangs or "
                       f"skipped the layer (collective timeout {self.group.timeout:g} s) [{cause}]")
        else:
            message = (f"rank {self.group.rank}: {where}: the exchange failed although every rank reached this "
                       f"step (one died or hangs inside it) [{cause}]")
        raise ExpertParallelError(message) from error

    def _gather_counts(self, header: torch.Tensor, step: int) -> torch.Tensor:
        """all_gather one int64 row per rank: (world_size, len(header))."""
        rows = [torch.empty_like(header) for _ in range(self.group.world_size)]
        try:
            dist.all_gather(rows, header, group=self.group.process_group)
        except RuntimeError as error:
            self._fail(step, "count exchange", error)
        table = torch.stack(rows).cpu()                                      # (W, 2 + k*E)
        steps = table[:, 0].tolist()
        if len(set(steps)) > 1:
            # the ranks that moved on are the ones that skipped: they are past the lowest step
            lowest = min(steps)
            skipped = [r for r, s in enumerate(steps) if s > lowest]
            raise ExpertParallelError(
                f"rank {self.group.rank}: layer {self.name!r}: the ranks are at different steps "
                f"({', '.join(f'rank {r}: step {s}' for r, s in enumerate(steps))}): "
                f"{', '.join(f'rank {r}' for r in skipped)} skipped step {lowest} "
                f"(every rank must call the layer once per step, even with no tokens)")
        return table

    def _nothing_arrived(self, received: torch.Tensor) -> torch.Tensor:
        """The expert output of a rank that received no rows: empty, yet part of the autograd graph
        of the received rows and the expert weights. Backward runs an all-to-all per exchange, and
        every rank must join each one, even a rank with nothing to send back."""
        anchor = sum(w.sum() for w in self.experts.weights() if w is not None) * 0    # () zero, with grad
        return received * 0 + anchor.to(received.dtype)                     # (0, d_model)

    # ---- the forward pass -------------------------------------------------------------------
    def forward(self, x: torch.Tensor, trace: Trace | None = None):
        trace = scoped(trace, self.name)
        if x.dim() != 3 or x.shape[-1] != self.config.d_model:
            raise ValueError(f"x has shape {tuple(x.shape)}: expected (batch, seq_len, d_model={self.config.d_model})")
        B, T, d_model = x.shape
        W, rank, E, k, E_local = self.group.world_size, self.group.rank, self.n_experts, self.top_k, self.n_local
        step = self.step
        self.step += 1
        self.group.seen(self.name, str(step))
        group = self.group.process_group
        record(trace, "rank", torch.tensor(rank))
        record(trace, "x", x, "input")

        # 1. route this rank's tokens (no capacity yet: it depends on every rank's choices)
        tokens = x.reshape(B * T, d_model)                                   # (N, d_model)
        N = tokens.shape[0]
        routing = self.router(tokens)
        chosen, gates = routing.chosen_ids, routing.gates                    # (N, k), (N, k)

        # 2. exchange the counts (and the step, to catch a rank that skipped one)
        local_counts = slot_counts(chosen, E)                                # (k, E) slot-j choices of expert e
        header = torch.cat([torch.tensor([step, N]), local_counts.reshape(k * E).cpu()]).to(self.device)
        table = self._gather_counts(header, step)                            # (W, 2 + k*E)
        n_tokens = table[:, 1]                                               # (W,)
        counts = table[:, 2:].reshape(W, k, E)                               # (W, k, E)

        # 3. capacity: the same seats as one process holding all W batches
        moe = self.config.moe
        plan = exchange_plan(counts, n_tokens, moe.capacity_factor, W)
        expert_capacity, routing_counts = plan["capacity"], plan["routing_counts"]   # (W, E) pairs src rank -> expert
        if expert_capacity is None:
            expert_ids, dropped = chosen, torch.zeros_like(chosen, dtype=torch.bool)
        else:
            expert_ids, gates, dropped = drop_overflow(chosen, gates, plan["kept"][rank].to(chosen.device))
        send_counts, recv_counts = plan["pairs"][rank].tolist(), plan["pairs"][:, rank].tolist()

        # 4. send: kept (token, slot) pairs sorted by expert = grouped by the rank that owns it
        flat_ids = expert_ids.reshape(N * k)                                 # (N*k,) pair p = token p // k, slot p % k
        order = torch.argsort(flat_ids, stable=True)                         # (N*k,) empty slots (-1) first
        order = order[int((flat_ids < 0).sum()):]                            # (M,) kept pairs by expert
        sent = tokens[order // k]                                            # (M, d_model)

        def on_error(phase, error, step=step):
            self._fail(step, f"{phase} all_to_all", error)

        received = all_to_all(sent, send_counts, recv_counts, group, on_error)    # (M_in, d_model)

        # 5. the local experts; rows from each source arrive sorted by expert
        recv_load = routing_counts[:, self.first_expert:self.first_expert + E_local]  # (W, E_local)
        recv_local_ids = torch.arange(E_local).repeat(W).repeat_interleave(recv_load.reshape(W * E_local))  # (M_in,)
        recv_local_ids = recv_local_ids.to(x.device)
        ones = torch.ones(received.shape[0], 1, dtype=torch.float32, device=x.device)  # (M_in, 1) gates come later
        if received.shape[0]:
            expert_out = get_dispatch(self.dispatch)(received, recv_local_ids[:, None], ones,
                                                     *self.experts.weights())   # (M_in, d_model)
        else:
            expert_out = self._nothing_arrived(received)                     # (0, d_model)

        # 6. results back, splits swapped: row i of `returned` answers row i of `sent`
        returned = all_to_all(expert_out, recv_counts, send_counts, group, on_error)  # (M, d_model)

        # 7. combine in a fixed order: each weighted row to its (token, slot) cell, then sum the slots
        weighted = returned.float() * gates.reshape(N * k)[order, None].float()  # (M, d_model)
        cells = torch.zeros(N * k, d_model, dtype=torch.float32, device=x.device).index_copy(0, order, weighted)
        routed = cells.reshape(N, k, d_model).sum(dim=1).to(x.dtype).reshape(B, T, d_model)  # (B, T, d_model)
        out = routed if self.shared is None else routed + self.shared(x, trace)

        # this rank's share of the losses: summed over ranks they are the one-process losses
        total = max(int(n_tokens.sum()), 1)
        f = counts.sum(dim=(0, 1)).float().to(x.device) / (total * k)        # (E,) global f_i, before capacity
        P_share = routing.probs.float().sum(dim=0) / total                   # (E,) this rank's part of P_i
        load_balancing = E * (f * P_share).sum()
        z_loss = (torch.logsumexp(routing.logits.float(), dim=-1) ** 2).sum() / total
        self.last_expert_load = routing_counts.sum(dim=0)                    # (E,) global load

        if trace is not None:
            # bytes measured on the buffers handed to the all-to-alls; a rank's own chunk stays home
            sent_bytes = _bytes_per_rank(sent, send_counts, rank) + _bytes_per_rank(expert_out, recv_counts, rank)
            received_bytes = _bytes_per_rank(received, recv_counts, rank) + _bytes_per_rank(returned, send_counts, rank)
            count_bytes = (W - 1) * header.nelement() * header.element_size()
            for name, value in (("router_logits", routing.logits), ("router_probs", routing.probs),
                                ("chosen_ids", chosen), ("expert_ids", expert_ids), ("gates", gates),
                                ("dropped", dropped), ("expert_load", self.last_expert_load),
                                ("routing_counts", routing_counts), ("send_counts", torch.tensor(send_counts)),
                                ("recv_counts", torch.tensor(recv_counts)), ("send_token_ids", order // k),
                                ("send_expert_ids", flat_ids[order]), ("sent", sent), ("received", received),
                                ("recv_src_ranks", torch.arange(W).repeat_interleave(torch.tensor(recv_counts))),
                                ("recv_expert_ids", recv_local_ids + self.first_expert), ("expert_out", expert_out),
                                ("local_expert_load", recv_load.sum(dim=0)),
                                ("bytes_sent", sent_bytes), ("bytes_received", received_bytes)):
                record(trace, name, value)
            if expert_capacity is not None:
                record(trace, "capacity", torch.tensor(expert_capacity))
            record(trace, "bytes_moved", torch.tensor(int(sent_bytes.sum()) + count_bytes))
            record(trace, "routed_out", routed)
            record(trace, "out", out, "output")
            record(trace, "load_balancing_loss", load_balancing)
            record(trace, "z_loss", z_loss)
        return out, {"load_balancing": moe.aux_loss_coef * load_balancing, "z_loss": moe.z_loss_coef * z_loss}

    def update_bias(self, expert_load: torch.Tensor | None = None) -> torch.Tensor:
        """sigmoid_bias router: the aux-loss-free step, from the global load every rank knows."""
        if not hasattr(self.router, "update_bias"):
            raise ConfigError("moe.router", self.config.moe.router,
                              "has no selection bias: update_bias is for router='sigmoid_bias'")
        load = self.last_expert_load if expert_load is None else expert_load
        if load is None:
            raise ValueError("update_bias() without an expert_load needs a forward pass first")
        return self.router.update_bias(load)

    def extra_repr(self) -> str:
        return (f"name={self.name!r}, rank={self.group.rank}, world_size={self.group.world_size}, "
                f"experts={self.first_expert}..{self.first_expert + self.n_local - 1}, dispatch={self.dispatch!r}")
