"""tinymoe.train: notebook 08's training loop, once, as a small library (and a command line).

    from tinymoe import ModelConfig, MoEConfig, TinyLM
    from tinymoe.train import TrainConfig, load_corpus, train

    data = load_corpus("pydoc", tokenizer="char")              # Python's help() text, split 90/10
    model = TinyLM(ModelConfig(vocab_size=data.vocab_size, d_model=64, n_layers=2, n_heads=4,
                               max_seq_len=64, moe=MoEConfig(n_experts=4, top_k=2)))
    history = train(model, data, TrainConfig(steps=400, checkpoint_path="run.pt"))
    history["loss"], history.val, history["expert_load"]       # per-step metrics

    train(model, data, TrainConfig(steps=400, checkpoint_path="run.pt"), resume=True)
    # after a Ctrl-C: continues run.pt exactly (a checkpoint made with other settings is refused)

`train(model, data, config, callbacks=(), resume=False) -> History` works for any nn.Module
whose forward(tokens) returns logits, a (logits, aux_losses) pair or an object with .logits
(and .aux_losses, which are added to the loss). On the command line:

    python -m tinymoe.train --config tiny --steps 400 [--device cuda --precision bfloat16]
    python -m tinymoe.train --help                              # every flag, one per TrainConfig field

Modules, read in this order:
    tokenizers.py   character- and byte-level tokenizers
    data.py         the offline corpus, its deterministic split, random windows with a saved position
    schedule.py     linear warm-up, then cosine
    metrics.py      History (one row of metrics per step) and the routing meter (expert load, drops)
    checkpoint.py   one-file, atomic checkpoints; refusal of a mismatched one
    progress.py     the tqdm progress bar
    loop.py         TrainConfig, train(), evaluate()
    baseline.py     the dense model with the MoE's active parameters
    __main__.py     the command line
"""
from .baseline import dense_baseline
from .checkpoint import CheckpointMismatch, config_differences, load_checkpoint, save_checkpoint
from .data import Batches, TokenData, get_batch, load_corpus, pydoc_text, unigram_entropy
from .loop import PRECISIONS, TrainConfig, evaluate, split_output, train
from .metrics import History, RoutingMeter
from .progress import ProgressBar
from .schedule import lr_factor, make_scheduler
from .tokenizers import ByteTokenizer, CharTokenizer, make_tokenizer

__all__ = [
    "train", "TrainConfig", "History", "evaluate", "split_output", "PRECISIONS",
    "load_corpus", "TokenData", "pydoc_text", "get_batch", "Batches", "unigram_entropy",
    "CharTokenizer", "ByteTokenizer", "make_tokenizer",
    "save_checkpoint", "load_checkpoint", "CheckpointMismatch", "config_differences",
    "lr_factor", "make_scheduler", "RoutingMeter", "ProgressBar", "dense_baseline",
]
