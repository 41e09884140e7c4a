"""The sandbox a submission runs in: bubblewrap, seeing nothing but the Python it needs and its own copy.

    bwrap --unshare-all --die-with-parent --new-session     no network, own PID/IPC/UTS namespaces
          --ro-bind /usr ... <python> <venv> <tinymoe/>     read-only: the interpreter, the installed
                                                            packages, the tinymoe package alone
          --proc /proc --dev /dev --tmpfs /tmp              a /proc of its own namespace, a private /tmp
          --bind <scratch> /home/student                    its own notebook copy, writable
          --clearenv --setenv ...                           no variable of the grader's (no solutions switch)

What it cannot see: the repository (so neither `exercises/source` nor any solution), the other
submissions, the output folder, the grader's files, /proc of the grader (its own PID namespace;
when its first process exits, the kernel kills every process left in it, so nothing it starts
outlives it), the network (an empty network namespace). CPU time and address space are capped
with rlimits before bwrap starts (inherited, and bwrap drops the capabilities that could raise
them); the wall clock is watched by the grader.

Where bwrap is missing or cannot run (no user namespaces in a container, macOS), `require()`
raises `SandboxUnavailable` with the install line; the grader refuses unless the instructor
passes `--unsafe-no-sandbox`, which the gradebook then records.
"""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

__all__ = ["SandboxUnavailable", "bwrap_path", "require", "command", "limited", "HOME"]

HOME = "/home/student"
INSTALL = ("bubblewrap (bwrap) is needed to grade in a sandbox: on Debian/Ubuntu `sudo apt-get install "
           "bubblewrap`, on Fedora `sudo dnf install bubblewrap` (it also needs unprivileged user namespaces, "
           "or root). To grade anyway, without a sandbox, pass --unsafe-no-sandbox: student code then runs with "
           "your permissions, and the gradebook says so")


class SandboxUnavailable(RuntimeError):
    """bubblewrap is not installed or cannot start a sandbox here."""


def bwrap_path() -> str | None:
    return shutil.which("bwrap") or ("/usr/bin/bwrap" if os.access("/usr/bin/bwrap", os.X_OK) else None)


def _python() -> tuple[str, list[str]]:
    """The interpreter to run inside (by its real path) and the folders it needs, read-only."""
    prefix = Path(sys.prefix).resolve()
    executable = prefix / "bin" / Path(sys.executable).name
    if not executable.exists():
        executable = Path(sys.executable).resolve()
    folders = {str(Path(p).resolve()) for p in (sys.prefix, sys.base_prefix, sys.exec_prefix)}
    return str(executable), sorted(folders)


def package_dir() -> Path:
    """The tinymoe package folder (only it, never the repository around it)."""
    return Path(__file__).resolve().parents[1]


def command(workdir: str | Path, argv: list[str], env: dict | None = None, tmp_size_mb: int = 256) -> list[str]:
    """The bwrap command line that runs `argv` (after the interpreter) in a sandbox with `workdir` as home."""
    bwrap = bwrap_path()
    if bwrap is None:
        raise SandboxUnavailable(INSTALL)
    python, folders = _python()
    package = package_dir()
    # The private /tmp comes first: the folders bound after it stay visible even when the
    # environment itself lives under /tmp (a clone in /tmp/...), and nothing else of /tmp does.
    cmd = [bwrap, "--unshare-all", "--die-with-parent", "--new-session", "--hostname", "sandbox",
           "--size", str(tmp_size_mb * 1024 * 1024), "--tmpfs", "/tmp",
           "--ro-bind", "/usr", "/usr"]
    for top in ("/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32"):
        if os.path.islink(top):
            cmd += ["--symlink", os.readlink(top), top]
        elif os.path.isdir(top):
            cmd += ["--ro-bind", top, top]
    for etc in ("/etc/ld.so.cache", "/etc/ld.so.conf", "/etc/ld.so.conf.d", "/etc/alternatives", "/etc/localtime"):
        if os.path.exists(etc):
            cmd += ["--ro-bind", etc, etc]
    for folder in folders:
        if not folder.startswith("/usr/"):
            cmd += ["--ro-bind", folder, folder]
    cmd += ["--ro-bind", str(package), str(package),
            "--proc", "/proc", "--dev", "/dev",
            "--bind", str(workdir), HOME, "--chdir", HOME, "--clearenv"]
    variables = {"HOME": HOME, "PATH": "/usr/bin:/bin", "PYTHONPATH": str(package.parent), "LANG": "C.UTF-8",
                 "TMPDIR": "/tmp", **(env or {})}
    for key, value in variables.items():
        cmd += ["--setenv", key, value]
    return cmd + ["--", python, *argv]


_LIMIT = ("import os, resource, sys\n"
          "cpu, memory = int(sys.argv[1]), int(sys.argv[2])\n"
          "resource.setrlimit(resource.RLIMIT_CPU, (cpu, cpu + 5))\n"
          "if memory:\n"
          "    resource.setrlimit(resource.RLIMIT_AS, (memory, memory))\n"
          "resource.setrlimit(resource.RLIMIT_CORE, (0, 0))\n"
          "os.execv(sys.argv[3], sys.argv[3:])\n")


def limited(cmd: list[str], cpu_seconds: float, memory_mb: int) -> list[str]:
    """`cmd` with CPU seconds and address space capped (rlimits, inherited by the sandbox and all in it).
    Set by a tiny exec wrapper rather than a preexec_fn, which is unsafe while the grader runs threads."""
    return [sys.executable, "-S", "-E", "-c", _LIMIT, str(max(1, int(cpu_seconds))),
            str(int(memory_mb) * 1024 * 1024 if memory_mb else 0), *cmd]


_CHECKED: dict = {}


def require() -> str:
    """The bwrap path, once it has been seen to start a sandbox here; else SandboxUnavailable."""
    if "ok" in _CHECKED:
        return _CHECKED["ok"]
    bwrap = bwrap_path()
    if bwrap is None:
        raise SandboxUnavailable(INSTALL)
    import tempfile
    with tempfile.TemporaryDirectory(prefix="tinymoe-sandbox-probe-") as workdir:
        cmd = command(workdir, ["-c", "print('ok')"])
        try:
            done = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
        except (OSError, subprocess.TimeoutExpired) as error:
            raise SandboxUnavailable(f"bwrap could not start a sandbox ({error}). {INSTALL}") from None
    if done.returncode != 0 or done.stdout.strip() != "ok":
        raise SandboxUnavailable(f"bwrap could not start a sandbox here ({done.stderr.strip()[:200]}). {INSTALL}")
    _CHECKED["ok"] = bwrap
    return bwrap
