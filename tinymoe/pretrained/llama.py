"""A Llama-architecture GGUF file loaded into tinymoe's own `TinyLM`.

The file's metadata says everything a `ModelConfig` needs (layers, widths, heads, RoPE base,
norm epsilon, context length); its tensors map one to one onto TinyLM's parameters:

    token_embd            -> embed.weight                       (vocab_size, d_model)
    blk.i.attn_norm       -> layers.i.norm_1.weight             RMSNorm before attention
    blk.i.attn_q / k / v  -> layers.i.attn.W_q / W_k / W_v      (n_heads*head_dim, d_model) ...
    blk.i.attn_output     -> layers.i.attn.W_o
    blk.i.ffn_norm        -> layers.i.norm_2.weight             RMSNorm before the MLP
    blk.i.ffn_gate/up/down-> layers.i.ffn.w_gate / w_up / w_down  SwiGLU
    output_norm           -> norm.weight
    output (if present)   -> lm_head.weight                     absent: tied to the embedding

One trap: llama.cpp's converter reorders the rows of W_q and W_k inside every head so that its
RoPE can rotate neighbouring dimensions (2i, 2i+1) -- the *interleaved* pairing of the RoFormer
paper -- while Hugging Face's Llama rotates dimension i with i + head_dim/2 (*rotate_half*).
Both are the same rotation applied to a permuted head; q . k is unchanged by permuting q and k
alike. So there are two correct ways to load the file:

    rope_pairing="rotate_half"  undo the permutation (the weights then equal Hugging Face's)
    rope_pairing="interleaved"  keep the file's rows and rotate neighbouring pairs

and they give the same logits (notebook 13 shows it; a test checks it).
"""
from __future__ import annotations

from pathlib import Path

import torch

from ..config import ConfigError, ModelConfig
from ..model import TinyLM
from .gguf_file import GGUFFile, read_gguf

__all__ = ["config_from_gguf", "load_gguf_model", "unpermute_rope_rows"]


def _meta(gguf: GGUFFile, key: str):
    arch = gguf.metadata.get("general.architecture")
    if arch != "llama":
        raise ConfigError("general.architecture", arch, "tinymoe loads Llama-architecture GGUF files only")
    full = f"llama.{key}"
    if full not in gguf.metadata:
        raise KeyError(f"{gguf.path.name} has no {full!r} in its metadata")
    return gguf.metadata[full]


def config_from_gguf(gguf: GGUFFile, rope_pairing: str = "rotate_half",
                     max_seq_len: int | None = None) -> ModelConfig:
    """The ModelConfig a Llama GGUF file describes (sizes, eps, RoPE base, tied embeddings)."""
    d_model = int(_meta(gguf, "embedding_length"))
    n_heads = int(_meta(gguf, "attention.head_count"))
    head_dim = int(gguf.metadata.get("llama.rope.dimension_count", d_model // n_heads))
    vocab = gguf.metadata.get("llama.vocab_size", len(gguf.metadata.get("tokenizer.ggml.tokens", [])))
    return ModelConfig(
        vocab_size=int(vocab),
        d_model=d_model,
        n_layers=int(_meta(gguf, "block_count")),
        n_heads=n_heads,
        n_kv_heads=int(_meta(gguf, "attention.head_count_kv")),
        head_dim=head_dim,
        d_ff=int(_meta(gguf, "feed_forward_length")),
        ffn="swiglu",
        max_seq_len=int(max_seq_len if max_seq_len is not None else _meta(gguf, "context_length")),
        position="rope",
        rope_base=float(_meta(gguf, "rope.freq_base")),
        rope_pairing=rope_pairing,
        norm="rmsnorm",
        norm_eps=float(_meta(gguf, "attention.layer_norm_rms_epsilon")),
        tie_embeddings="output.weight" not in gguf.tensor_names,
    ).validate()


def unpermute_rope_rows(w: torch.Tensor, n_heads: int) -> torch.Tensor:
    """Undo llama.cpp's row order of W_q / W_k: per head, rows (2i, 2i+1) -> (i, i + head_dim/2).

    The converter wrote row 2i + j of a head from Hugging Face's row j * head_dim/2 + i."""
    out_features, in_features = w.shape
    head_dim = out_features // n_heads
    return (w.reshape(n_heads, head_dim // 2, 2, in_features)      # (heads, pair i, member j, in)
             .transpose(1, 2)                                     # (heads, member j, pair i, in)
             .reshape(out_features, in_features))


def load_gguf_model(path: str | Path | GGUFFile | None = None, rope_pairing: str = "rotate_half",
                    dtype: torch.dtype = torch.float32, max_seq_len: int | None = None) -> TinyLM:
    """A TinyLM holding the weights of a Llama GGUF file (default: SmolLM2-135M-Instruct).

    rope_pairing: "rotate_half" undoes llama.cpp's q/k row permutation; "interleaved" keeps it.
    max_seq_len: the RoPE table's length (default: the file's context length)."""
    gguf = path if isinstance(path, GGUFFile) else read_gguf(path)
    config = config_from_gguf(gguf, rope_pairing=rope_pairing, max_seq_len=max_seq_len)
    with torch.device("meta"):
        model = TinyLM(config)                              # shapes only; weights come from the file
    H, H_kv = config.n_heads, config.kv_heads

    def rows(name: str, n: int) -> torch.Tensor:
        w = gguf.tensor(name)
        return unpermute_rope_rows(w, n) if rope_pairing == "rotate_half" else w

    state = {"embed.weight": gguf.tensor("token_embd.weight"),
             "norm.weight": gguf.tensor("output_norm.weight")}
    if not config.tie_embeddings:
        state["lm_head.weight"] = gguf.tensor("output.weight")
    for i in range(config.n_layers):
        b, p = f"blk.{i}.", f"layers.{i}."
        state.update({
            p + "norm_1.weight": gguf.tensor(b + "attn_norm.weight"),
            p + "attn.W_q.weight": rows(b + "attn_q.weight", H),
            p + "attn.W_k.weight": rows(b + "attn_k.weight", H_kv),
            p + "attn.W_v.weight": gguf.tensor(b + "attn_v.weight"),
            p + "attn.W_o.weight": gguf.tensor(b + "attn_output.weight"),
            p + "norm_2.weight": gguf.tensor(b + "ffn_norm.weight"),
            p + "ffn.w_gate.weight": gguf.tensor(b + "ffn_gate.weight"),
            p + "ffn.w_up.weight": gguf.tensor(b + "ffn_up.weight"),
            p + "ffn.w_down.weight": gguf.tensor(b + "ffn_down.weight"),
        })
    model.to_empty(device="cpu")                            # real storage, then the file's values
    missing, unexpected = model.load_state_dict(state, strict=False)
    missing = [m for m in missing if not (config.tie_embeddings and m == "lm_head.weight")]
    if missing or unexpected:
        raise RuntimeError(f"GGUF -> TinyLM mapping is incomplete: missing {missing[:5]}, unexpected {unexpected[:5]}")
    if config.tie_embeddings:
        model.lm_head.weight = model.embed.weight
    _rebuild_buffers(model)
    return model.to(dtype).eval()


def _rebuild_buffers(model: TinyLM) -> None:
    """Non-persistent buffers (RoPE cos/sin) were made on the meta device: compute them for real."""
    from ..rope import RotaryEmbedding
    for module in model.modules():
        if isinstance(module, RotaryEmbedding):
            fresh = RotaryEmbedding(module.head_dim, module.max_seq_len, module.base, module.pairing)
            for name, buf in fresh.named_buffers(recurse=False):
                setattr(module, name, buf)
