"""The tokenizer stored in a GGUF file, rebuilt with Hugging Face's `tokenizers` library.

SmolLM2 uses byte-level BPE (GPT-2's scheme): text is split into pre-tokens, every byte is
mapped to a printable character (a space becomes `Ġ`), and the file's merges join characters
into the 49,152 vocabulary entries, most frequent pair first. Two details come from the file's
`tokenizer.ggml.pre = "smollm"`: digits are split one by one before GPT-2's split, and no space
is added in front of the text. The 17 control tokens (`<|im_start|>`, `<|im_end|>`, ...) are
special: each is one id and is never split.

The chat template is the file's own Jinja template (`tokenizer.chat_template`), rendered in a
sandbox: a conversation becomes `<|im_start|>user\n...<|im_end|>\n` blocks, and
`add_generation_prompt=True` ends with `<|im_start|>assistant\n` for the model to continue.
"""
from __future__ import annotations

from .gguf_file import GGUFFile, read_gguf

__all__ = ["GGUFTokenizer"]

CONTROL = 3          # tokenizer.ggml.token_type of a control (special) token


class GGUFTokenizer:
    """encode / decode / apply_chat_template for the BPE tokenizer in a GGUF file."""

    def __init__(self, gguf: GGUFFile | None = None):
        from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers

        gguf = read_gguf() if gguf is None else gguf
        meta = gguf.metadata
        if meta.get("tokenizer.ggml.model") != "gpt2":
            raise ValueError(f"tokenizer.ggml.model={meta.get('tokenizer.ggml.model')!r}: only byte-level BPE "
                             f"('gpt2') tokenizers are supported")
        tokens = meta["tokenizer.ggml.tokens"]
        merges = [tuple(m.split(" ", 1)) for m in meta["tokenizer.ggml.merges"]]
        vocab = {token: i for i, token in enumerate(tokens)}
        bpe = Tokenizer(models.BPE(vocab=vocab, merges=merges, fuse_unk=False, byte_fallback=False))
        splits = [pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)]
        if meta.get("tokenizer.ggml.pre") == "smollm":
            splits.insert(0, pre_tokenizers.Digits(individual_digits=True))
        bpe.pre_tokenizer = pre_tokenizers.Sequence(splits)
        bpe.decoder = decoders.ByteLevel()
        types = meta.get("tokenizer.ggml.token_type", [])
        self.special_tokens = [t for t, kind in zip(tokens, types) if kind == CONTROL]
        bpe.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in self.special_tokens])
        self._tok = bpe
        self.vocab_size = len(tokens)
        self.eos_token_id = int(meta["tokenizer.ggml.eos_token_id"])
        self.bos_token_id = int(meta.get("tokenizer.ggml.bos_token_id", self.eos_token_id))
        self.chat_template = meta.get("tokenizer.chat_template")

    def encode(self, text: str) -> list[int]:
        """Token ids of `text` (special tokens written in the text become their single ids)."""
        if not isinstance(text, str):
            raise TypeError(f"text must be a str, got {type(text).__name__}")
        return self._tok.encode(text, add_special_tokens=False).ids

    def decode(self, ids, skip_special_tokens: bool = False) -> str:
        ids = [int(i) for i in (ids.tolist() if hasattr(ids, "tolist") else ids)]
        bad = [i for i in ids if not 0 <= i < self.vocab_size]
        if bad:
            raise ValueError(f"ids must lie in 0..{self.vocab_size - 1}; got {bad[:3]}")
        return self._tok.decode(ids, skip_special_tokens=skip_special_tokens)

    def token_strings(self, ids) -> list[str]:
        """Each id as readable text (for sheets): the bytes it stands for, spaces shown as '·'."""
        return [self.decode([i]).replace(" ", "·").replace("\n", "\\n") for i in
                (ids.tolist() if hasattr(ids, "tolist") else ids)]

    def apply_chat_template(self, messages: list[dict], add_generation_prompt: bool = True) -> str:
        """The conversation as the text the model was fine-tuned on (the file's Jinja template)."""
        if self.chat_template is None:
            raise ValueError("this GGUF file has no tokenizer.chat_template")
        if not isinstance(messages, list) or not all(isinstance(m, dict) and {"role", "content"} <= set(m)
                                                     for m in messages):
            raise TypeError("messages must be a list of {'role': ..., 'content': ...} dicts")
        from jinja2.sandbox import ImmutableSandboxedEnvironment
        env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)
        return env.from_string(self.chat_template).render(messages=messages,
                                                          add_generation_prompt=add_generation_prompt)

    def chat_ids(self, user_message: str) -> list[int]:
        """Token ids of a one-message chat, ready for the model to answer."""
        return self.encode(self.apply_chat_template([{"role": "user", "content": user_message}]))
