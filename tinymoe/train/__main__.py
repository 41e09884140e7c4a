"""The command line: train a tinymoe model on the offline corpus, on a CPU or a GPU.

    python -m tinymoe.train --config tiny --steps 400
    python -m tinymoe.train --config small --steps 5000 --device cuda --precision bfloat16 \\
        --checkpoint runs/small.pt --checkpoint-every 500
    python -m tinymoe.train --config small ... --resume          # continue runs/small.pt exactly
    python -m tinymoe.train --config my_model.json --dense       # the dense baseline of a config

Every TrainConfig field is a flag of the same name (underscores as dashes); the model comes from
a preset name or a JSON file of ModelConfig fields ("moe": {...} for the MoE settings). The
vocabulary size is taken from the tokenizer and max_seq_len raised to --seq-len if needed.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from pathlib import Path

import torch

from ..config import ConfigError, ModelConfig, MoEConfig, DISPATCHES
from ..model import TinyLM
from .baseline import dense_baseline
from .checkpoint import CheckpointMismatch
from .data import CORPORA, load_corpus, unigram_entropy
from .loop import PRECISIONS, TrainConfig, train
from .tokenizers import TOKENIZERS

# notebook 08's model, and a bigger one for a GPU
PRESETS = {
    "tiny": dict(d_model=64, n_layers=2, n_heads=4, n_kv_heads=2, max_seq_len=64,
                 moe=dict(n_experts=4, top_k=2, d_ff_expert=64)),
    "small": dict(d_model=256, n_layers=4, n_heads=8, n_kv_heads=4, max_seq_len=256,
                  moe=dict(n_experts=8, top_k=2, d_ff_expert=512)),
}

# the help text of each TrainConfig field's flag
TRAIN_HELP = {
    "steps": "optimizer steps in the whole run (the schedule is laid out over them)",
    "batch_size": "windows per micro-batch",
    "seq_len": "tokens per window",
    "accumulation": "micro-batches whose gradients are added before each optimizer step",
    "lr": "peak learning rate (AdamW)",
    "warmup_steps": "steps of linear warm-up to the peak learning rate",
    "min_lr_ratio": "the cosine schedule ends at lr * min_lr_ratio",
    "weight_decay": "AdamW's decoupled weight decay",
    "beta1": "AdamW's first-moment decay rate",
    "beta2": "AdamW's second-moment decay rate",
    "grad_clip": "clip the gradient norm to this; 0 turns clipping off",
    "precision": "autocast dtype of the forward pass (the MoE router stays float32)",
    "eval_every": "evaluate on the validation batches every this many steps (0: only at the end)",
    "eval_batches": "validation batches per evaluation",
    "eval_seed": "seed of the validation batches",
    "seed": "seed of the weights and of the batch order",
    "device": "torch device: cpu, cuda, cuda:1, ...",
    "checkpoint_path": "checkpoint file (written atomically; none without this flag)",
    "checkpoint_every": "write the checkpoint every this many steps (0: only at the end or on Ctrl-C)",
    "progress": "show the progress bar (--no-progress to hide it)",
}


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m tinymoe.train",
        description="Train a tinymoe language model on Python's own documentation (offline), "
                    "with the loop of tinymoe.train. Ctrl-C leaves the last checkpoint readable.")
    model = parser.add_argument_group("model")
    model.add_argument("--config", default="tiny",
                       help=f"a preset ({', '.join(PRESETS)}) or a JSON file of ModelConfig fields (default: %(default)s)")
    model.add_argument("--dense", action="store_true",
                       help="train the dense baseline of the config (same active parameters per token)")
    model.add_argument("--dispatch", choices=DISPATCHES, default=None,
                       help="MoE dispatch backend (default: the config's)")
    data = parser.add_argument_group("data")
    data.add_argument("--corpus", choices=CORPORA, default="pydoc", help="the text to train on (default: %(default)s)")
    data.add_argument("--tokenizer", choices=TOKENIZERS, default="char", help="character- or byte-level tokens (default: %(default)s)")
    data.add_argument("--val-fraction", type=float, default=0.1, help="share of the text held out for validation (default: %(default)s)")
    run = parser.add_argument_group("training (the TrainConfig fields)")
    defaults = TrainConfig()
    for field in dataclasses.fields(TrainConfig):
        name, default = field.name, getattr(defaults, field.name)
        TRAIN_HELP[name] = TRAIN_HELP[name] + (" (default: %(default)s)" if name != "progress" else "")
        if name == "progress":
            run.add_argument("--progress", action=argparse.BooleanOptionalAction, default=True, help=TRAIN_HELP[name])
        elif name == "checkpoint_path":
            run.add_argument("--checkpoint", dest=name, default=None, help=TRAIN_HELP[name])
        elif name == "precision":
            run.add_argument(_flag(name), choices=PRECISIONS, default=default, help=TRAIN_HELP[name])
        elif name == "grad_clip":
            run.add_argument(_flag(name), type=float, default=default, help=TRAIN_HELP[name])
        else:
            run.add_argument(_flag(name), type=type(default), default=default, help=TRAIN_HELP[name])
    out = parser.add_argument_group("output")
    out.add_argument("--resume", action="store_true", help="continue from --checkpoint if it exists")
    out.add_argument("--history", default=None, help="write the per-step metrics to this JSON file")
    out.add_argument("--sample", type=int, default=200, help="tokens to sample greedily after training (0: none; default: %(default)s)")
    return parser


def model_config(name: str, vocab_size: int, seq_len: int, dense: bool, dispatch: str | None) -> ModelConfig:
    """A preset or a JSON file -> ModelConfig, sized for the tokenizer and the window length."""
    if name in PRESETS:
        fields = json.loads(json.dumps(PRESETS[name]))
    elif Path(name).is_file():
        fields = json.loads(Path(name).read_text())
    else:
        raise ConfigError("config", name, f"is neither a preset ({', '.join(PRESETS)}) nor a JSON file")
    moe = fields.pop("moe", None)
    if dispatch is not None and moe is not None:
        moe["dispatch"] = dispatch
    fields.update(vocab_size=vocab_size, max_seq_len=max(seq_len, fields.get("max_seq_len", seq_len)))
    config = ModelConfig(**fields, moe=MoEConfig(**moe) if moe is not None else None).validate()
    return dense_baseline(config) if dense else config


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    train_fields = {f.name: getattr(args, f.name) for f in dataclasses.fields(TrainConfig)}
    if train_fields["grad_clip"] == 0:
        train_fields["grad_clip"] = None
    try:
        config = TrainConfig(**train_fields).validate()
        data = load_corpus(args.corpus, args.tokenizer, args.val_fraction)
        model_cfg = model_config(args.config, data.vocab_size, config.seq_len, args.dense, args.dispatch)
    except (ConfigError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    torch.manual_seed(config.seed)
    model = TinyLM(model_cfg)
    n_params = sum(p.numel() for p in model.parameters())
    print(f"{data}; unigram entropy {unigram_entropy(data.train, data.vocab_size):.3f} nats")
    print(f"model: {'dense' if model_cfg.moe is None else 'MoE'} {n_params:,} parameters on {config.device}, "
          f"{config.precision}; {config.steps} steps of {config.tokens_per_step:,} tokens")
    started = time.perf_counter()
    try:
        history = train(model, data, config, resume=args.resume)
    except (ConfigError, CheckpointMismatch) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        where = f"; the last checkpoint is in {config.checkpoint_path}" if config.checkpoint_path else ""
        print(f"\ninterrupted{where}", file=sys.stderr)
        return 130
    rates = history["tokens_per_s"]
    print(f"done in {time.perf_counter() - started:.1f} s: loss {history['loss'][-1]:.3f}, "
          f"val_loss {history.final_val_loss:.3f}, median {sorted(rates)[len(rates) // 2]:,.0f} tokens/s")
    if args.history:
        Path(args.history).write_text(json.dumps({"model_config": dataclasses.asdict(model_cfg),
                                                  "train_config": config.to_dict(), **history.to_dict()}))
    if args.sample:
        prompt = data.tokenizer.encode("The ")[None].to(config.device)
        print(data.tokenizer.decode(model.eval().generate(prompt, args.sample)[0]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
