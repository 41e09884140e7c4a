"""What crosses between the grader and a student's sandbox: plain data, never objects.

The grader sends a case's inputs and receives the learner's outputs as JSON: numbers, shapes and
dtype names. A value that is not plain data (a tensor subclass with its own comparisons, an
object whose `__eq__` says yes to everything, a numpy array) cannot cross: the grader rebuilds
every tensor itself with `torch.tensor(numbers, dtype)` from the numbers it was sent, so what it
compares is a plain `torch.Tensor` it made, whatever the sandbox held.

    {"t": "float32", "s": [2, 3], "d": [...]}    a tensor: dtype, shape, values in C order
    {"i": 3} {"f": 0.5} {"b": true} null         int, float, bool, None
    {"tuple": [...]} {"list": [...]} {"dict": {...}}
    {"str": "..."}                               a short string
    {"obj": "expert_mlp", "data": ...}           a callable the case provides (rebuilt by name)
    {"other": "numpy.ndarray"}                   anything else: only its type's name crosses

`decode` checks the structure and caps the size, so a flood of data cannot wedge the grader.
"""
from __future__ import annotations

import math
import numbers

import torch

__all__ = ["encode", "decode", "Opaque", "WireError", "provided", "MAX_ELEMENTS", "DTYPES"]

DTYPES = {str(d).replace("torch.", ""): d for d in (
    torch.float16, torch.bfloat16, torch.float32, torch.float64, torch.int8, torch.int16, torch.int32,
    torch.int64, torch.uint8, torch.bool)}
MAX_ELEMENTS = 5_000_000          # numbers one message may carry
MAX_DEPTH = 20
MAX_STR = 2_000

# kind -> class with `to_wire(self) -> plain data` and `from_wire(data) -> instance`
_PROVIDED: dict[str, type] = {}


def provided(kind: str):
    """Register a class of input a case hands the learner (an expert to call, ...), by name."""
    def register(cls):
        cls.wire_kind = kind
        _PROVIDED[kind] = cls
        return cls
    return register


class WireError(ValueError):
    """The data is not what the protocol allows (a wrong type, a shape that does not match, too big)."""


class Opaque:
    """Something the sandbox returned that is not plain data; only its type's name crossed."""

    def __init__(self, kind: str):
        self.kind = str(kind)[:100]

    def __repr__(self) -> str:
        return f"<{self.kind}>"


def _type_name(value) -> str:
    cls = type(value)
    module = (getattr(cls, "__module__", "") or "").split(".")[0]
    name = getattr(cls, "__name__", "object")
    return name if module == "builtins" else f"{module}.{name}"


def encode(value, _depth: int = 0):
    """Plain JSON-ready data for `value` (tensors by their numbers; anything else by type name)."""
    if _depth > MAX_DEPTH:
        return {"other": "too deeply nested"}
    if value is None:
        return None
    if isinstance(value, torch.Tensor):
        with torch._C.DisableTorchFunctionSubclass():      # a subclass's own hooks do not run here
            t = torch.Tensor.detach(value).cpu()
            dtype = str(t.dtype).replace("torch.", "")
            if dtype not in DTYPES:
                return {"other": f"torch.Tensor of dtype {dtype}"}
            flat = t.reshape(-1)
            if dtype == "bfloat16":
                flat = flat.float()
            return {"t": dtype, "s": list(t.shape), "d": flat.tolist()}
    if isinstance(value, bool):
        return {"b": bool(value)}
    if isinstance(value, numbers.Integral) and type(value) is int:
        return {"i": int(value)}
    if isinstance(value, float) and type(value) is float:
        return {"f": float(value)}
    if type(value) is str:
        return {"str": value[:MAX_STR]}
    if type(value) is tuple:
        return {"tuple": [encode(v, _depth + 1) for v in value]}
    if type(value) is list:
        return {"list": [encode(v, _depth + 1) for v in value]}
    if type(value) is dict and all(type(k) is str for k in value):
        return {"dict": {k: encode(v, _depth + 1) for k, v in value.items()}}
    kind = getattr(type(value), "wire_kind", None)
    if kind in _PROVIDED and type(value) is _PROVIDED[kind]:
        return {"obj": kind, "data": encode(value.to_wire(), _depth + 1)}
    return {"other": _type_name(value)}


def decode(data, _budget: list | None = None, _depth: int = 0):
    """The value `data` describes, built here from plain numbers; WireError if it is malformed."""
    budget = _budget if _budget is not None else [MAX_ELEMENTS]
    if _depth > MAX_DEPTH:
        raise WireError("nested too deeply")
    if data is None:
        return None
    if not isinstance(data, dict) or len(data) not in (1, 2, 3):
        raise WireError(f"unexpected {type(data).__name__}")
    if "t" in data:
        return _decode_tensor(data, budget)
    if len(data) == 1:
        (key, v), = data.items()
        if key == "i" and type(v) is int:
            return v
        if key == "f" and type(v) in (float, int):
            return float(v)
        if key == "b" and type(v) is bool:
            return v
        if key == "str" and type(v) is str:
            return v[:MAX_STR]
        if key in ("tuple", "list") and type(v) is list:
            budget[0] -= len(v)
            if budget[0] < 0:
                raise WireError("too much data")
            items = [decode(x, budget, _depth + 1) for x in v]
            return tuple(items) if key == "tuple" else items
        if key == "dict" and type(v) is dict:
            return {str(k): decode(x, budget, _depth + 1) for k, x in v.items()}
        if key == "other" and type(v) is str:
            return Opaque(v)
    if set(data) == {"obj", "data"} and data["obj"] in _PROVIDED:
        return _PROVIDED[data["obj"]].from_wire(decode(data["data"], budget, _depth + 1))
    raise WireError(f"unexpected fields {sorted(data)[:5]}")


def _decode_tensor(data: dict, budget: list) -> torch.Tensor:
    if set(data) != {"t", "s", "d"}:
        raise WireError("a tensor has exactly the fields t, s, d")
    dtype, shape, values = data["t"], data["s"], data["d"]
    if dtype not in DTYPES or type(shape) is not list or type(values) is not list:
        raise WireError("a tensor needs a known dtype, a shape list and a value list")
    if not all(type(n) is int and 0 <= n for n in shape) or len(shape) > 12:
        raise WireError("a tensor's shape is a short list of whole numbers >= 0")
    numel = math.prod(shape)
    budget[0] -= numel
    if budget[0] < 0 or numel != len(values):
        raise WireError("the values do not match the shape, or there are too many")
    if not all(type(v) in (int, float, bool) for v in values):
        raise WireError("a tensor's values are numbers")
    made = torch.tensor(values, dtype=torch.float64 if DTYPES[dtype].is_floating_point else None)
    return made.to(DTYPES[dtype]).reshape(shape) if numel else torch.zeros(shape, dtype=DTYPES[dtype])
