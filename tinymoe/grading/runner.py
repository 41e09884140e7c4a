"""The student's side of grading: runs inside the sandbox, runs the notebook's cells, calls its functions.

    python -m tinymoe.grading.runner        (started by grade.py, inside bubblewrap)

It speaks JSON lines with the grader over its original stdin/stdout, which it keeps for itself:
the notebook's own prints, and anything it writes to file descriptors 0-2, go nowhere. It never
sees a case's expected value, a seed or a score; it only answers

    {"op": "cell", "source": ..., "timeout": s}   -> {"done": true, "error": [name, text], "printed": n}
    {"op": "call", "name": f, "args": ..., "kwargs": ..., "timeout": s, "forbidden": [...], "allowed": [...]}
                                                  -> {"out": <wire data>, "changed": bool, "used": [...]}
                                                   | {"raised": {"type", "summary", "not_implemented"}}
                                                   | {"missing": true} | {"not_callable": type name}

Everything here can be tampered with by the notebook (it runs in the same process), and that is
fine: the grader trusts none of it but the outputs for the inputs it sent, which it compares itself.
A cell or a call that runs past its time is interrupted (SIGALRM); one that swallows the
interrupt is killed from outside by the grader.
"""
from __future__ import annotations

import json
import os
import signal
import sys

from .policy import allow_code


class TimeUp(KeyboardInterrupt):
    """The cell or call ran past its time limit."""


def _on_alarm(signum, frame):
    raise TimeUp("it did not finish in time and was interrupted")


@allow_code
class _Count:
    """A stdout/stderr that only counts what the notebook prints."""

    def __init__(self):
        self.n = 0

    def write(self, text):
        self.n += len(text) if isinstance(text, str) else 0
        return len(text) if isinstance(text, str) else 0

    def flush(self):
        pass

    def isatty(self):
        return False

    def fileno(self):
        raise OSError("no file descriptor")


allow_code.add(_on_alarm)           # the grader's own code, run inside the learner's frames


def main() -> None:
    read = os.fdopen(os.dup(0), "rb", buffering=0)
    write = os.fdopen(os.dup(1), "wb", buffering=0)
    null = os.open(os.devnull, os.O_RDWR)
    for fd in (0, 1, 2):
        os.dup2(null, fd)
    printed = _Count()
    sys.stdout = sys.stderr = printed
    signal.signal(signal.SIGALRM, _on_alarm)

    def send(message):
        write.write((json.dumps(message, allow_nan=True) + "\n").encode())

    import torch  # noqa: F401 - imported before the notebook runs, outside its time limits
    from IPython.core.interactiveshell import InteractiveShell

    from . import checks, wire
    from .policy import Tripwire

    shell = InteractiveShell.instance(colors="NoColor")
    shell.showtraceback = lambda *a, **k: None                   # tracebacks would only be discarded
    send({"ready": True})
    buffer = b""
    while True:
        while b"\n" not in buffer:
            chunk = read.read(1 << 16)
            if not chunk:
                return
            buffer += chunk
        line, buffer = buffer.split(b"\n", 1)
        message = json.loads(line)
        op = message.get("op")
        if op == "cell":
            send(_run_cell(shell, message, printed))
        elif op == "has":
            fn = shell.user_ns.get(message.get("name"))
            send({"missing": True} if fn is None else {"not_callable": checks._kind(fn)} if not callable(fn) else {})
        elif op == "call":
            send(_call(shell, message, checks, wire, Tripwire))
        elif op == "bye":
            return


def _arm(seconds) -> None:
    signal.setitimer(signal.ITIMER_REAL, max(0.01, float(seconds)))


def _disarm() -> None:
    signal.setitimer(signal.ITIMER_REAL, 0)


def _run_cell(shell, message, printed) -> dict:
    before = printed.n
    error = None
    try:
        _arm(message.get("timeout", 30))
        result = shell.run_cell(message["source"], store_history=True)
        _disarm()
        exc = result.error_in_exec or result.error_before_exec
        if exc is not None:
            error = ["CellTimeoutError" if isinstance(exc, TimeUp) else type(exc).__name__, _text(exc)]
    except BaseException as exc:                                  # noqa: BLE001 - e.g. the alarm between cells
        _disarm()
        error = ["CellTimeoutError" if isinstance(exc, TimeUp) else type(exc).__name__, _text(exc)]
    return {"done": True, "error": error, "printed": printed.n - before}


def _text(exc) -> str:
    try:
        return str(exc)[:300]
    except BaseException:                                         # noqa: BLE001
        return ""


def _call(shell, message, checks, wire, Tripwire) -> dict:
    name = message["name"]
    fn = shell.user_ns.get(name)
    if fn is None:
        return {"missing": True}
    if not callable(fn):
        return {"not_callable": checks._kind(fn)}
    try:
        args, kwargs = wire.decode(message["args"]), wire.decode(message["kwargs"])
        keep_args, keep_kwargs = checks._clone(args), checks._clone(kwargs)
        tripwire = Tripwire(message.get("forbidden", ()), message.get("allowed", ()))
    except BaseException as exc:                                  # noqa: BLE001
        return {"raised": {"type": "RuntimeError", "summary": f"the grader's inputs could not be read ({exc})",
                           "not_implemented": False}}
    try:
        _arm(message.get("timeout", 30))
        out = checks.call_learner(fn, args, kwargs, tripwire=tripwire)
        _disarm()
    except checks.LearnerFailed as failed:
        _disarm()
        kind = "KeyboardInterrupt" if isinstance(failed.error, KeyboardInterrupt) else type(failed.error).__name__
        return {"raised": {"type": kind, "summary": failed.summary,
                           "not_implemented": isinstance(failed.error, NotImplementedError)},
                "used": sorted(tripwire.used)}
    except BaseException as exc:                                  # noqa: BLE001 - the alarm after the call
        _disarm()
        return {"raised": {"type": type(exc).__name__, "summary": checks._summary(exc), "not_implemented": False}}
    changed = not (checks._same(args, keep_args) and checks._same(kwargs, keep_kwargs))
    return {"out": wire.encode(out), "changed": changed, "used": sorted(tripwire.used)}


if __name__ == "__main__":
    main()
