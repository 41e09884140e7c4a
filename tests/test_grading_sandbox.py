"""The sandbox, really exercised: the network, other files, the grader's /proc and a process that
tries to outlive its sandbox are each shown to be out of reach, with a control run outside the
sandbox that shows the same probe would have succeeded there (so none of these can pass vacuously).

Each probe is a short Python program run through `sandbox.command` exactly as the grader runs a
submission (bubblewrap, the same mounts and environment), without importing torch, so the whole
file takes a few seconds.
"""
import json
import os
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from tinymoe.grading import sandbox
from tinymoe.grading.grade import grade_folder

pytestmark = [pytest.mark.exercises,
              pytest.mark.skipif(sandbox.bwrap_path() is None, reason="bubblewrap (bwrap) is not installed; "
                                 "`apt-get install bubblewrap` (.ci/run does)")]

ROOT = Path(__file__).resolve().parents[1]


def _run(code: str, workdir: Path, inside: bool = True, memory_mb: int = 0, cpu_seconds: float = 30, timeout=60):
    """Run `code` (Python) in the sandbox (or, as a control, outside it); its stdout as JSON."""
    code = textwrap.dedent(code)
    if inside:
        cmd = sandbox.command(workdir, ["-c", code])
    else:
        cmd = [sys.executable, "-c", code]
    done = subprocess.run(sandbox.limited(cmd, cpu_seconds, memory_mb), capture_output=True, text=True,
                          timeout=timeout, cwd=workdir)
    assert done.stdout.strip(), f"the probe printed nothing (rc {done.returncode}): {done.stderr[-500:]}"
    return json.loads(done.stdout.strip().splitlines()[-1])


@pytest.fixture
def workdir(tmp_path):
    home = tmp_path / "home"
    home.mkdir()
    (home / "submission.ipynb").write_text("{}", encoding="utf-8")
    return home


def test_the_network_is_unreachable(workdir):
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(1)
    port = server.getsockname()[1]
    probe = f"""
        import json, socket
        try:
            socket.create_connection(("127.0.0.1", {port}), timeout=3).close()
            print(json.dumps("connected"))
        except OSError as error:
            print(json.dumps(type(error).__name__))
    """
    try:
        assert _run(probe, workdir, inside=False) == "connected", "control: the probe should connect from outside"
        assert _run(probe, workdir) != "connected", "the sandbox reached the grader's machine over the network"
    finally:
        server.close()
    interfaces = _run("import json, socket; print(json.dumps([n for _, n in socket.if_nameindex()]))", workdir)
    assert interfaces == ["lo"], f"the sandbox has network interfaces {interfaces}"


def test_other_files_are_invisible_and_its_own_copy_is_there(workdir, tmp_path):
    other = tmp_path / "other_student.ipynb"
    other.write_text('{"secret": "answers"}', encoding="utf-8")
    targets = [str(other), str(ROOT / "exercises" / "source" / "01_attention_by_hand.py"),
               str(ROOT / "exercises" / "source"), str(ROOT / "README.md"), "/etc/shadow", "/etc/passwd"]
    probe = f"""
        import json, os
        seen = {{}}
        for path in {targets!r}:
            seen[path] = os.path.exists(path)
        seen["own copy"] = os.path.exists("submission.ipynb")
        try:
            open("/usr/evil", "w")
            seen["writes outside home"] = True
        except OSError:
            seen["writes outside home"] = False
        print(json.dumps(seen))
    """
    outside = _run(probe, workdir, inside=False)
    assert outside[str(other)] and outside[targets[1]], "control: the files exist outside the sandbox"
    inside = _run(probe, workdir)
    visible = [path for path in targets if inside[path]]
    assert not visible, f"the sandbox can see {visible}"
    assert inside["own copy"] and not inside["writes outside home"]


def test_proc_shows_only_the_sandbox_own_processes(workdir):
    me = os.getpid()
    probe = f"""
        import json, os
        pids = [int(p) for p in os.listdir("/proc") if p.isdigit()]
        cmdlines = []
        for p in pids:
            try:
                cmdlines.append(open(f"/proc/{{p}}/cmdline", "rb").read().decode(errors="replace"))
            except OSError:
                pass
        try:
            os.listdir("/proc/{me}/cwd")
            grader_cwd = True
        except OSError:
            grader_cwd = False
        print(json.dumps({{"pids": pids, "cmdlines": cmdlines, "grader_cwd": grader_cwd}}))
    """
    outside = _run(probe, workdir, inside=False)
    assert me in outside["pids"] and outside["grader_cwd"], "control: outside, the grader's process is visible"
    inside = _run(probe, workdir)
    assert me not in inside["pids"] or not inside["grader_cwd"]
    assert not inside["grader_cwd"], "the sandbox could list the grader's working folder through /proc"
    assert max(inside["pids"]) < 10, f"the sandbox sees pids {inside['pids']}: not its own PID namespace"
    strangers = [c[:80] for c in inside["cmdlines"] if not c.startswith(("bwrap", "/"))
                 or ("bwrap" not in c.split("\0")[0] and "python" not in c.split("\0")[0])]
    assert not strangers, f"the sandbox sees processes that are not its own: {strangers}"


def _running(marker: str) -> list[str]:
    found = []
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit():
            try:
                if marker.encode() in (proc / "cmdline").read_bytes():
                    found.append(proc.name)
            except OSError:
                pass
    return found


def test_nothing_started_inside_outlives_the_sandbox(workdir):
    marker = f"tinymoe-outlive-{os.getpid()}-{time.time_ns()}"
    probe = f"""
        import json, os, subprocess, sys
        child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)", "{marker}"],
                                 start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        if os.fork() == 0:                       # a double fork as well: an orphan re-parented to init
            os.setsid()
            os.execv(sys.executable, [sys.executable, "-c", "import time; time.sleep(120)", "{marker}"])
        print(json.dumps(child.pid))
    """
    _run(probe, workdir)
    deadline = time.monotonic() + 5
    while _running(marker) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not _running(marker), "a process started in the sandbox is still running after it ended"


def test_memory_and_cpu_are_capped(workdir):
    eat = "import json\ntry:\n    b = bytearray(3 * 1024**3)\n    print(json.dumps('allocated'))\nexcept MemoryError:\n" \
          "    print(json.dumps('MemoryError'))"
    assert _run(eat, workdir, memory_mb=1024) == "MemoryError"
    spin = sandbox.command(workdir, ["-c", "while True:\n    pass"])
    start = time.monotonic()
    done = subprocess.run(sandbox.limited(spin, 1, 0), capture_output=True, timeout=60)
    assert done.returncode != 0 and time.monotonic() - start < 30, "a busy loop was not stopped by the CPU limit"


def test_without_bubblewrap_the_grader_refuses_unless_told_to_run_unsafely(tmp_path, monkeypatch):
    folder = tmp_path / "in"
    folder.mkdir()
    (folder / "alice.ipynb").write_text("not json", encoding="utf-8")
    monkeypatch.setattr(sandbox, "bwrap_path", lambda: None)
    monkeypatch.setattr(sandbox, "_CHECKED", {})
    with pytest.raises(sandbox.SandboxUnavailable, match="apt-get install bubblewrap"):
        grade_folder("01", folder, tmp_path / "out")
    graded = grade_folder("01_attention_by_hand", folder, tmp_path / "out", sandboxed=False)
    assert graded[0].sandbox.startswith("none")
    assert "graded without a sandbox" in (tmp_path / "out" / "gradebook.csv").read_text(encoding="utf-8")
    assert json.loads((tmp_path / "out" / "run.json").read_text())["sandbox"].startswith("none")
