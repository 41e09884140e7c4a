"""The training loop: the one from notebook 08, with what a longer run needs around it.

For every optimizer step:

    for each of `accumulation` micro-batches:
        logits, aux = model(x)                           under autocast (bf16/fp16) if asked
        loss = cross_entropy(logits, y) + sum(aux)       aux: the MoE load-balancing and z-loss
        (loss / accumulation).backward()                 gradients add up over the micro-batches
    clip the gradient norm to grad_clip                  (Pascanu et al. 2013)
    AdamW step at lr * lr_factor(step)                   warm-up then cosine (schedule.py)

Every `eval_every` steps (and at the last) the cross-entropy on `eval_batches` fixed validation
batches is recorded. The model may be any nn.Module whose forward(tokens) returns logits
(B, T, vocab_size): a tensor, a (logits, aux_losses) pair, or an object with `.logits` and,
optionally, `.aux_losses` (tinymoe's LMOutput).

Half precision: `precision="bfloat16"` or `"float16"` runs the forward under torch.autocast;
the MoE routers keep computing in float32 (`MoEConfig.router_fp32`), the loss is taken in
float32, and float16 scales the loss so small gradients do not underflow (GradScaler).
"""
from __future__ import annotations

import dataclasses
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable

import torch
from torch import nn
from torch.nn import functional as F

from ..config import ConfigError
from ..moe.sigmoid_bias import SigmoidBiasRouter
from .checkpoint import load_checkpoint, save_checkpoint
from .data import Batches, get_batch
from .metrics import History, RoutingMeter
from .progress import ProgressBar
from .schedule import make_scheduler

__all__ = ["TrainConfig", "train", "evaluate", "split_output", "PRECISIONS"]

PRECISIONS = ("float32", "bfloat16", "float16")


@dataclass
class TrainConfig:
    """How to train: every knob of the loop, each with the flag of the same name on the command line.

    steps            optimizer steps in the whole run (the schedule is laid out over them)
    batch_size       windows per micro-batch
    seq_len          tokens per window
    accumulation     micro-batches whose gradients are added before each optimizer step
    lr               peak learning rate (AdamW)
    warmup_steps     steps of linear warm-up from lr / warmup_steps to lr
    min_lr_ratio     the cosine ends at lr * min_lr_ratio (1.0 with warmup_steps 0: constant lr)
    weight_decay     AdamW's decoupled weight decay, on every parameter
    beta1, beta2     AdamW's moment decay rates
    grad_clip        clip the global gradient norm to this (None: no clipping)
    precision        float32 | bfloat16 | float16: the autocast dtype of the forward pass
    eval_every       evaluate every this many steps, and at the last (0: only at the last)
    eval_batches     validation batches per evaluation (the same batches every time)
    eval_seed        seed of the generator that draws the validation batches
    seed             seed of the weights' random numbers during training and of the batch order
    device           cpu | cuda | cuda:1 | mps ...
    checkpoint_path  file for checkpoints (None: none are written)
    checkpoint_every write a checkpoint every this many steps (0: only at the end or on interrupt)
    progress         show a progress bar (tqdm: terminal or JupyterLab)
    """

    steps: int = 400
    batch_size: int = 32
    seq_len: int = 64
    accumulation: int = 1
    lr: float = 3e-3
    warmup_steps: int = 20
    min_lr_ratio: float = 0.1
    weight_decay: float = 0.01
    beta1: float = 0.9
    beta2: float = 0.95
    grad_clip: float | None = 1.0
    precision: str = "float32"
    eval_every: int = 50
    eval_batches: int = 10
    eval_seed: int = 123
    seed: int = 0
    device: str = "cpu"
    checkpoint_path: str | None = None
    checkpoint_every: int = 0
    progress: bool = True

    # the fields that decide a run's numbers: a checkpoint is resumed only if they agree
    RESUME_FIELDS = ("steps", "batch_size", "seq_len", "accumulation", "lr", "warmup_steps", "min_lr_ratio",
                     "weight_decay", "beta1", "beta2", "grad_clip", "precision", "eval_batches", "eval_seed", "seed")

    @property
    def tokens_per_step(self) -> int:
        return self.batch_size * self.seq_len * self.accumulation

    def validate(self) -> "TrainConfig":
        """Raise ConfigError naming the field, the value and the rule; return self if sound."""
        def whole(name, minimum):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
                raise ConfigError(name, value, f"must be a whole number >= {minimum}")

        def number(name, rule, ok):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or not ok(value):
                raise ConfigError(name, value, rule)

        for name in ("steps", "batch_size", "seq_len", "accumulation", "eval_batches"):
            whole(name, 1)
        for name in ("warmup_steps", "eval_every", "checkpoint_every", "eval_seed", "seed"):
            whole(name, 0)
        number("lr", "must be a positive finite number, e.g. 3e-3", lambda v: v > 0)
        number("min_lr_ratio", "must lie in [0, 1]: the floor of the cosine as a share of lr", lambda v: 0 <= v <= 1)
        number("weight_decay", "must be a finite number >= 0", lambda v: v >= 0)
        for name in ("beta1", "beta2"):
            number(name, "must lie in [0, 1): a decay rate of Adam's running averages", lambda v: 0 <= v < 1)
        if self.grad_clip is not None:
            number("grad_clip", "must be a positive number, or None for no clipping", lambda v: v > 0)
        if self.precision not in PRECISIONS:
            raise ConfigError("precision", self.precision, f"must be one of {', '.join(map(repr, PRECISIONS))}")
        try:
            torch.device(self.device)
        except (RuntimeError, TypeError):
            raise ConfigError("device", self.device, "is not a torch device: use 'cpu', 'cuda', 'cuda:0', ...") from None
        if not isinstance(self.progress, bool):
            raise ConfigError("progress", self.progress, "must be True or False")
        return self

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def replace(self, **changes) -> "TrainConfig":
        """A copy with some fields changed (validated)."""
        return dataclasses.replace(self, **changes).validate()


def split_output(out) -> tuple[torch.Tensor, dict]:
    """A model's output as (logits (B, T, vocab_size), {aux loss name: scalar tensor})."""
    if isinstance(out, torch.Tensor):
        return out, {}
    if isinstance(out, tuple) and len(out) == 2 and isinstance(out[0], torch.Tensor) and isinstance(out[1], dict):
        return out
    if isinstance(getattr(out, "logits", None), torch.Tensor):
        return out.logits, dict(getattr(out, "aux_losses", None) or {})
    raise TypeError(f"the model returned {type(out).__name__}: train() needs logits (B, T, vocab_size), "
                    f"a (logits, aux_losses) pair, or an object with .logits (and .aux_losses)")


def _autocast(device: torch.device, precision: str):
    dtype = {"bfloat16": torch.bfloat16, "float16": torch.float16}.get(precision)
    return torch.autocast(device_type=device.type, dtype=dtype, enabled=dtype is not None)


def _cross_entropy(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    if logits.dim() != 3 or logits.shape[:2] != y.shape:
        raise ValueError(f"the model returned logits of shape {tuple(logits.shape)}: expected (batch, seq_len, "
                         f"vocab_size) = ({y.shape[0]}, {y.shape[1]}, vocab_size)")
    return F.cross_entropy(logits.float().reshape(-1, logits.shape[-1]), y.reshape(-1))   # in float32


@torch.no_grad()
def evaluate(model: nn.Module, tokens: torch.Tensor, batch_size: int = 32, seq_len: int = 64,
             n_batches: int = 10, seed: int = 123, precision: str = "float32") -> float:
    """Mean cross-entropy over n_batches validation batches drawn with a fixed seed (eval mode)."""
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    generator = torch.Generator().manual_seed(seed)
    total = 0.0
    for _ in range(n_batches):
        x, y = get_batch(tokens, batch_size, seq_len, generator)
        x, y = x.to(device), y.to(device)
        with _autocast(device, precision):
            logits, _ = split_output(model(x))
        total += float(_cross_entropy(logits, y))
    model.train(was_training)
    return total / n_batches


def _rng_state(device: torch.device) -> dict:
    state = {"cpu": torch.get_rng_state()}
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def _set_rng_state(state: dict, device: torch.device) -> None:
    torch.set_rng_state(state["cpu"])
    if device.type == "cuda" and "cuda" in state:
        torch.cuda.set_rng_state(state["cuda"], device)


def _model_config(model: nn.Module):
    config = getattr(model, "config", None)
    return config if dataclasses.is_dataclass(config) else None


def train(model: nn.Module, data, config: TrainConfig | None = None,
          callbacks: Iterable[Callable[[dict, nn.Module], None]] = (), resume: bool = False) -> History:
    """Train `model` on `data` (anything with .train and .val token tensors, e.g. TokenData).

    callbacks: functions called as fn(row, model) after every optimizer step (row: that step's
    metrics, see metrics.History). resume: continue from config.checkpoint_path if the file
    exists (refused with the differing fields named if it was made for another config).
    Returns the History; the model is trained in place."""
    config = (config or TrainConfig()).validate()
    device = torch.device(config.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError("device", config.device, "needs a CUDA GPU, and torch sees none here: use device='cpu'")
    if resume and config.checkpoint_path is None:
        raise ConfigError("checkpoint_path", None, "resume=True needs a checkpoint_path to resume from")
    for name in ("train", "val"):
        tokens = getattr(data, name, None)
        if not isinstance(tokens, torch.Tensor) or tokens.dim() != 1:
            raise TypeError(f"data.{name} must be a 1-D tensor of token ids (e.g. tinymoe.train.load_corpus())")
    torch.manual_seed(config.seed)
    model.to(device).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=config.lr, betas=(config.beta1, config.beta2),
                                  weight_decay=config.weight_decay)
    scheduler = make_scheduler(optimizer, config.steps, config.warmup_steps, config.min_lr_ratio)
    scaler = torch.amp.GradScaler(device.type, enabled=config.precision == "float16")
    batches = Batches(data.train, config.batch_size, config.seq_len, config.seed)
    history, start = History(), 0
    if resume and Path(config.checkpoint_path).exists():
        state = load_checkpoint(config.checkpoint_path, model, _model_config(model), config.to_dict(),
                                TrainConfig.RESUME_FIELDS)
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        scaler.load_state_dict(state["scaler"])
        batches.load_state_dict(state["data"])
        _set_rng_state(state["rng"], device)
        history, start = History.from_dict(state["history"]), state["step"]

    def checkpoint(point: dict) -> None:
        """Save the run as it stood after `point['step']` completed steps."""
        model_config = _model_config(model)
        save_checkpoint(config.checkpoint_path, {
            "step": point["step"], "data": point["data"], "rng": point["rng"],
            "model": model.state_dict(), "optimizer": optimizer.state_dict(),
            "scheduler": scheduler.state_dict(), "scaler": scaler.state_dict(),
            "model_config": dataclasses.asdict(model_config) if model_config is not None else None,
            "train_config": config.to_dict(), "history": history.to_dict()})

    meter = RoutingMeter(model)
    sigmoid_bias_layers = [(meter.routers.index(m.router), m) for m in model.modules()
                           if isinstance(getattr(m, "router", None), SigmoidBiasRouter) and hasattr(m, "update_bias")]
    bar = ProgressBar(config.steps, start, config.progress)
    # where a resumed run would continue: steps done, data position and random state at that moment
    point = {"step": start, "data": batches.state_dict(), "rng": _rng_state(device)}
    updating = False
    try:
        for step in range(start, config.steps):
            began = time.perf_counter()
            meter.reset()
            meter.active = True
            ce_sum, aux_sums = 0.0, {}
            for _ in range(config.accumulation):
                x, y = batches.next()                                            # (batch, seq_len) each
                x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
                with _autocast(device, config.precision):
                    logits, aux = split_output(model(x))                         # (batch, seq_len, vocab)
                ce = _cross_entropy(logits, y)
                loss = ce + sum(aux.values())
                scaler.scale(loss / config.accumulation).backward()
                ce_sum += ce.detach()
                for name, value in aux.items():
                    aux_sums[name] = aux_sums.get(name, 0.0) + torch.as_tensor(value).detach().float()
            meter.active = False
            grad_norm = None
            if config.grad_clip is not None:
                scaler.unscale_(optimizer)
                grad_norm = float(nn.utils.clip_grad_norm_(model.parameters(), config.grad_clip))
            lr = scheduler.get_last_lr()[0]
            updating = True                                                      # an interrupt now would split the step
            scaler.step(optimizer)
            scaler.update()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            expert_load, dropped, dropped_slots = meter.read()
            for index, layer in sigmoid_bias_layers:                             # aux-loss-free balancing (DeepSeek-V3)
                layer.update_bias(meter.load[index])
            updating = False
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            seconds = time.perf_counter() - began
            row = {"step": step, "lr": lr, "loss": float(ce_sum) / config.accumulation}
            for name, value in aux_sums.items():
                row[name] = float(value) / config.accumulation
            row["total_loss"] = row["loss"] + sum(row[name] for name in aux_sums)
            row.update(grad_norm=grad_norm, expert_load=expert_load, dropped_tokens=dropped, dropped_slots=dropped_slots,
                       tokens_per_s=config.tokens_per_step / seconds, val_loss=None)
            last = step == config.steps - 1
            if last or (config.eval_every and (step + 1) % config.eval_every == 0):
                row["val_loss"] = evaluate(model, data.val, config.batch_size, config.seq_len, config.eval_batches,
                                           config.eval_seed, config.precision)
            history.append(row)
            point = {"step": step + 1, "data": batches.state_dict(), "rng": _rng_state(device)}
            bar.update(row)
            for callback in callbacks:
                callback(row, model)
            if config.checkpoint_path and (last or (config.checkpoint_every and (step + 1) % config.checkpoint_every == 0)):
                checkpoint(point)
    except KeyboardInterrupt:
        if config.checkpoint_path and not updating:
            checkpoint(point)
        raise
    finally:
        meter.close()
        bar.close()
    return history
