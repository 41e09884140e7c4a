"""Checkpoints: everything a run needs to continue exactly, in one file, written atomically.

One file holds the model's and the optimizer's state, the scheduler's and the gradient scaler's,
both configs (the model's and the training's), the step reached, the data position (batches
drawn and the generator's state) and the random-number state, with the history so far.

Written atomically: the file is written under a temporary name in the same folder and then
renamed over the old one (`os.replace`, one filesystem operation), so a run stopped at any moment
(KeyboardInterrupt, a killed job) leaves either the old checkpoint or the new one, never half of one.
A Ctrl-C that arrives while the file is being written waits until it is whole, then stops the run.

A checkpoint is refused, with the differing fields named, when it was made with another model
config (its weights would not mean the same thing) or with other training settings that decide
the numbers (batch size, learning rate, schedule, seed, ...): resuming it could not give the run
it claims to continue.
"""
from __future__ import annotations

import contextlib
import dataclasses
import os
import signal
import tempfile
import threading
from pathlib import Path

import torch
from torch import nn

__all__ = ["save_checkpoint", "load_checkpoint", "CheckpointMismatch", "config_differences", "FORMAT"]

FORMAT = "tinymoe.train checkpoint 1"


class CheckpointMismatch(ValueError):
    """A checkpoint made for another model or other training settings; `fields` names them."""

    def __init__(self, path, differences: list[str]):
        self.fields = [d.split(":")[0] for d in differences]
        super().__init__(f"checkpoint {path} was made with a different configuration and cannot be resumed here:\n  "
                         + "\n  ".join(differences)
                         + "\nuse the same settings, or start a new run with another checkpoint path")


def _as_dict(config) -> dict | None:
    if config is None:
        return None
    if dataclasses.is_dataclass(config):
        return dataclasses.asdict(config)
    return dict(config)


def _flatten(d: dict, prefix: str = "") -> dict:
    flat = {}
    for key, value in d.items():
        if isinstance(value, dict):
            flat.update(_flatten(value, f"{prefix}{key}."))
        else:
            flat[prefix + key] = list(value) if isinstance(value, tuple) else value
    return flat


def config_differences(saved: dict | None, current: dict | None, prefix: str = "") -> list[str]:
    """'field: checkpoint has A, this run has B' for every field (nested: 'moe.n_experts') that differs."""
    saved_flat, current_flat = _flatten(saved or {}), _flatten(current or {})
    missing = object()
    out = []
    for key in sorted(set(saved_flat) | set(current_flat)):
        a, b = saved_flat.get(key, missing), current_flat.get(key, missing)
        if a != b:
            show = lambda v: "(absent)" if v is missing else repr(v)       # noqa: E731
            out.append(f"{prefix}{key}: checkpoint has {show(a)}, this run has {show(b)}")
    return out


def _shape_differences(saved: dict, model: nn.Module) -> list[str]:
    """For models without a config: parameters that are missing, extra or of another shape."""
    current = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    saved = {k: tuple(v.shape) for k, v in saved.items()}
    return [f"{key}: checkpoint has {saved.get(key, '(absent)')}, this run has {current.get(key, '(absent)')}"
            for key in sorted(set(saved) | set(current)) if saved.get(key) != current.get(key)]


@contextlib.contextmanager
def interrupts_deferred():
    """Hold a Ctrl-C (SIGINT) that arrives inside the block until the block is done, then deliver it.

    A KeyboardInterrupt raised in the middle of torch.save breaks its zip writer, whose clean-up
    then raises a RuntimeError ("unexpected pos ...") that hides the interrupt: the run would end
    with a traceback instead of stopping cleanly with its last checkpoint. Only the main thread
    receives signals; elsewhere (and under a handler Python did not install) nothing is deferred."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    received = []
    previous = signal.signal(signal.SIGINT, lambda signum, frame: received.append(signum))
    if previous is None:                                   # a handler not set from Python: leave it alone
        signal.signal(signal.SIGINT, signal.SIG_DFL)
        yield
        return
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)
    if received:
        if callable(previous):
            previous(signal.SIGINT, None)                  # Python's default handler raises KeyboardInterrupt
        elif previous == signal.SIG_DFL:
            raise KeyboardInterrupt


def save_checkpoint(path, state: dict) -> Path:
    """torch.save(state) to path atomically (temporary file in the same folder, then os.replace).
    A Ctrl-C during the write is delivered once the new file is in place."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with interrupts_deferred():
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        try:
            with os.fdopen(fd, "wb") as f:
                torch.save({"format": FORMAT, **state}, f)
                f.flush()
                os.fsync(f.fileno())
            umask = os.umask(0)
            os.umask(umask)
            os.chmod(tmp, 0o666 & ~umask)                  # mkstemp makes it private; give it a normal file's mode
            os.replace(tmp, path)                          # the one step at which the new file appears
        except BaseException:                              # a killed write too: leave no half file behind
            Path(tmp).unlink(missing_ok=True)
            raise
    return path


def load_checkpoint(path, model: nn.Module | None = None, model_config=None, train_config: dict | None = None,
                    compared_train_fields: tuple[str, ...] = ()) -> dict:
    """Read a checkpoint (to the CPU) and refuse it if it does not match this run.

    model_config: the model's config (dataclass or dict) to compare with the saved one; with
    None and a model given, parameter names and shapes are compared instead; with neither,
    the checkpoint is only read. train_config: this
    run's training settings as a dict; only `compared_train_fields` of it are compared."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"no checkpoint at {path}")
    state = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise ValueError(f"{path} is not a tinymoe.train checkpoint (expected format {FORMAT!r})")
    differences = []
    if model_config is not None:
        differences += config_differences(state.get("model_config"), _as_dict(model_config), "model.")
    elif model is not None:
        differences += _shape_differences(state["model"], model)
    if train_config is not None:
        saved = {k: state["train_config"].get(k) for k in compared_train_fields}
        current = {k: train_config.get(k) for k in compared_train_fields}
        differences += config_differences(saved, current, "train.")
    if differences:
        raise CheckpointMismatch(path, differences)
    return state
