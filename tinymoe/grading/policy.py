"""Shortcuts are a policy: what each question forbids, found by reading the code and by watching it run.

A question declares the names its function may not use (its `forbidden` list): a dotted name
(`torch.softmax`, `torch.nn.functional.scaled_dot_product_attention`), a whole package
(`tinymoe`: the library's own reference, forbidden in every question unless `allowed`), or a
method on anything (`.softmax`, i.e. `x.softmax(-1)`). Using one scores 0 for that question with
the reason "used the reference implementation".

Two independent detectors, both run by the grader and by the self-check in the notebook:
  * `scan_source`: the notebook's code as text (never run): the question's function and every
    notebook function it calls, imports and aliases resolved (`import torch.nn.functional as F`,
    `from tinymoe.attention import safe_softmax as s`).
  * `Tripwire`: a profiler hook active only while the learner's function runs, which sees the
    calls actually made (`getattr(torch, "soft" + "max")` too).
"""
from __future__ import annotations

import ast
import importlib
import sys
import threading
from pathlib import Path

__all__ = ["REFERENCE", "forbidden_names", "scan_source", "scan_cells", "Tripwire", "shortcut_message"]

REFERENCE = "tinymoe"                       # the library's own implementation: forbidden by default
_TINYMOE_DIR = str(Path(__file__).resolve().parents[1])
_PROVIDED_CODE: set = set()                 # code objects of inputs a case hands the learner (allowed)


def forbidden_names(forbidden, allowed=()) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """(forbidden, allowed) with the library's own reference added unless it is allowed outright."""
    names = tuple(dict.fromkeys([*([REFERENCE] if REFERENCE not in allowed else []), *forbidden]))
    return names, tuple(allowed)


def shortcut_message(used) -> str:
    return ("used the reference implementation (" + ", ".join(sorted(used)[:4]) + "): this question asks you to "
            "write it yourself, so it scores 0")


def allow_code(cls):
    """Mark a class whose methods a case hands the learner (an expert to call), or the grader's own
    plumbing that runs inside the learner's frames (a print sink): calling it is no shortcut."""
    for value in vars(cls).values():
        code = getattr(value, "__code__", None)
        if code is not None:
            _PROVIDED_CODE.add(code)
    return cls


allow_code.add = lambda fn: _PROVIDED_CODE.add(fn.__code__)


# ---- reading the code ---------------------------------------------------------------------------
def _matches(dotted: str, forbidden, allowed) -> str | None:
    """The forbidden entry `dotted` falls under (itself or a package above it), unless allowed."""
    for name in allowed:
        if dotted == name or dotted.startswith(name + "."):
            return None
    for name in forbidden:
        if name.startswith("."):
            if dotted.rsplit(".", 1)[-1] == name[1:] and "." in dotted:
                return name
        elif dotted == name or dotted.startswith(name + "."):
            return name
    return None


def _python(source: str) -> str:
    """A cell's source as plain Python (IPython magics and shell escapes removed)."""
    try:
        from IPython.core.inputtransformer2 import TransformerManager
        return TransformerManager().transform_cell(source)
    except Exception:                               # noqa: BLE001 - without IPython: drop magic lines
        return "\n".join("" if line.lstrip().startswith(("%", "!")) else line for line in source.splitlines())


def _dotted(node) -> list[str] | None:
    parts = []
    while isinstance(node, ast.Attribute):
        parts.append(node.attr)
        node = node.value
    if isinstance(node, ast.Name):
        return [node.id, *reversed(parts)]
    return None


class _Module:
    """The notebook's code as one module: imports (alias -> dotted name) and top-level definitions."""

    def __init__(self, sources):
        self.aliases: dict[str, str] = {}
        self.definitions: dict[str, list[ast.AST]] = {}
        self.trees = []
        for source in sources:
            try:
                tree = ast.parse(_python(source))
            except SyntaxError:
                continue
            self.trees.append(tree)
            for node in ast.walk(tree):
                if isinstance(node, ast.Import):
                    for a in node.names:
                        if a.asname:
                            self.aliases[a.asname] = a.name
                        else:
                            top = a.name.split(".")[0]
                            self.aliases[top] = top
                elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
                    for a in node.names:
                        self.aliases[a.asname or a.name] = f"{node.module}.{a.name}"
            for node in tree.body:
                for name, value in _defines(node):
                    self.definitions[name] = [value]        # the last definition is the one that runs

    def resolve(self, parts: list[str]) -> str:
        head = self.aliases.get(parts[0], parts[0])
        return ".".join([head, *parts[1:]])


def _defines(node):
    if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
        yield node.name, node
    elif isinstance(node, ast.Assign):
        for target in node.targets:
            if isinstance(target, ast.Name):
                yield target.id, node.value
    elif isinstance(node, (ast.AnnAssign, ast.AugAssign)) and isinstance(node.target, ast.Name) and node.value:
        yield node.target.id, node.value


def scan_cells(sources, function: str, forbidden, allowed=()) -> list[str]:
    """The forbidden names used by `function` and by the notebook definitions it reaches."""
    module = _Module(sources)
    used, seen, todo = set(), set(), [function]
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        seen.add(name)
        for definition in module.definitions.get(name, []):
            local = _local_names(definition)
            for node in ast.walk(definition):
                hit = None
                if isinstance(node, ast.Name) and node.id in local:
                    continue
                if isinstance(node, ast.Attribute):
                    parts = _dotted(node)
                    dotted = module.resolve(parts) if parts else f"?.{node.attr}"
                    hit = _matches(dotted, forbidden, allowed)
                    if hit is None and parts is None:
                        hit = _matches(f"?.{node.attr}", [f for f in forbidden if f.startswith(".")], allowed)
                elif isinstance(node, ast.Name):
                    if node.id in module.aliases:
                        hit = _matches(module.aliases[node.id], forbidden, allowed)
                    if node.id in module.definitions:
                        todo.append(node.id)
                elif (isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "getattr"
                      and len(node.args) >= 2 and isinstance(node.args[1], ast.Constant)
                      and isinstance(node.args[1].value, str) and _dotted(node.args[0])):
                    dotted = f"{module.resolve(_dotted(node.args[0]))}.{node.args[1].value}"   # getattr(torch, "softmax")
                    hit = _matches(dotted, forbidden, allowed)
                elif isinstance(node, ast.Constant) and isinstance(node.value, str) and "." in node.value:
                    hit = _matches(node.value.strip(), [f for f in forbidden if not f.startswith(".")], allowed)
                if hit:
                    used.add(hit)
    return sorted(used)


def _local_names(definition) -> set:
    """Names a function binds itself (arguments, assignments): they are not the notebook's globals."""
    if not isinstance(definition, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
        return set()
    args = definition.args
    names = {a.arg for a in [*args.posonlyargs, *args.args, *args.kwonlyargs]}
    names |= {a.arg for a in (args.vararg, args.kwarg) if a is not None}
    for node in ast.walk(definition):
        if isinstance(node, ast.Name) and isinstance(node.ctx, (ast.Store, ast.Del)):
            names.add(node.id)
        elif isinstance(node, (ast.Global, ast.Nonlocal)):
            names -= set(node.names)
    return names - {definition.name} if hasattr(definition, "name") else names


def scan_source(sources, function: str, forbidden, allowed=()) -> list[str]:
    """Like scan_cells, with the library's own reference forbidden unless allowed."""
    names, allowed = forbidden_names(forbidden, allowed)
    return scan_cells(sources, function, names, allowed)


def notebook_sources(fn) -> list[str]:
    """The code a self-check can read: the cells run so far in IPython (`In`), else fn's module file."""
    try:
        ip = get_ipython()                          # noqa: F821 - defined inside IPython only
        history = ip.user_ns.get("In")
        if history:
            return [s for s in history if isinstance(s, str)]
    except NameError:
        pass
    try:                                            # a script: its own file (a library's source is not the learner's)
        import inspect
        module = inspect.getmodule(fn)
        return [inspect.getsource(module)] if module is not None and module.__name__ == "__main__" else []
    except Exception:                               # noqa: BLE001 - no source to read
        return []


# ---- watching it run ----------------------------------------------------------------------------
def _resolve(name: str):
    """The object a dotted name names (torch.nn.functional.softmax), or None."""
    parts = name.split(".")
    for cut in range(len(parts), 0, -1):
        try:
            obj = importlib.import_module(".".join(parts[:cut]))
        except Exception:                           # noqa: BLE001
            continue
        try:
            for attr in parts[cut:]:
                obj = getattr(obj, attr)
            return obj
        except AttributeError:
            return None
    return None


class Tripwire:
    """While active, records which forbidden functions the running code calls.

    C functions (torch.softmax) are seen by identity through the profiler's c_call events, methods
    (`.softmax`) by name on a tensor, Python functions and classes by their code objects, and the
    library's own package by file: any call from the learner's code into tinymoe (but the inputs
    the case provides) counts.
    """

    def __init__(self, forbidden, allowed=()):
        self.forbidden, self.allowed = forbidden_names(forbidden, allowed)
        self.used: set[str] = set()
        self.tampered = False
        self._objects, self._codes, self._methods = {}, {}, {}
        for name in self.forbidden:
            if name.startswith("."):
                self._methods[name[1:]] = name
            elif name != REFERENCE:
                obj = _resolve(name)
                if obj is None:
                    continue
                self._objects[id(obj)] = name
                for code in _codes_of(obj):
                    self._codes[code] = name
        self._allowed_codes = {c for n in self.allowed for c in _codes_of(_resolve(n))}
        self._watch_package = REFERENCE in self.forbidden
        self._previous = None

    def _hook(self, frame, event, arg):
        try:
            if event == "c_call":
                name = self._objects.get(id(arg))
                if name is None and getattr(arg, "__name__", None) in self._methods:
                    import torch
                    if isinstance(getattr(arg, "__self__", None), torch.Tensor):
                        name = self._methods[arg.__name__]
                if name:
                    self.used.add(name)
            elif event == "call":
                code = frame.f_code
                name = self._codes.get(code)
                if name:
                    self.used.add(name)
                elif (self._watch_package and code.co_filename.startswith(_TINYMOE_DIR)
                      and code not in _PROVIDED_CODE and code not in self._allowed_codes):
                    if _called_by_learner(frame.f_back):
                        self.used.add(f"{REFERENCE} ({Path(code.co_filename).stem}.{code.co_name})")
        except Exception:                           # noqa: BLE001 - a profiler must never raise
            pass

    def __enter__(self):
        self._previous = sys.getprofile()
        self._active = self._hook                   # one bound method, to recognise it afterwards
        sys.setprofile(self._active)
        threading.setprofile(self._active)
        return self

    def __exit__(self, *exc):
        if sys.getprofile() is not self._active:      # the learner's code switched the watcher off
            self.tampered = True
            self.used.add("sys.setprofile (switched off the shortcut check)")
        sys.setprofile(self._previous)
        threading.setprofile(None)
        return False


_LIBRARIES = tuple({str(p) for prefix in {sys.prefix, sys.base_prefix, sys.exec_prefix}
                    for p in (Path(prefix), Path(prefix).resolve())})


def _called_by_learner(frame) -> bool:
    """Whether the nearest caller that is not library code (torch, the standard library) is the
    learner's code rather than tinymoe itself (a module's forward reached through torch)."""
    while frame is not None:
        filename = frame.f_code.co_filename
        if filename.startswith(_TINYMOE_DIR):
            return False
        if not filename.startswith(_LIBRARIES) and not filename.startswith("<frozen"):
            return True
        frame = frame.f_back
    return False


def _codes_of(obj) -> list:
    if obj is None:
        return []
    code = getattr(obj, "__code__", None)
    if code is not None:
        return [code]
    if isinstance(obj, type):
        return [v.__code__ for v in vars(obj).values() if hasattr(v, "__code__")]
    return []
