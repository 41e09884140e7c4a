"""`make lab`, the README's first command, really serves JupyterLab on the notebooks.

Runs the Makefile target itself (the environment is already built by `make test`, so the
target's install step is a no-op), waits for the server to answer, checks that it serves the
notebooks folder, and stops it, whatever happened.
"""
import json
import os
import signal
import socket
import subprocess
import time
import urllib.request
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.slow


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_make_lab_serves_jupyterlab_on_the_notebooks(tmp_path):
    port = _free_port()
    env = dict(os.environ, JUPYTER_CONFIG_DIR=str(tmp_path / "config"), JUPYTER_RUNTIME_DIR=str(tmp_path / "runtime"),
               JUPYTER_TOKEN="tinymoe-test", BROWSER="true")
    proc = subprocess.Popen(["make", "lab", f"PORT={port}"], cwd=ROOT, env=env, start_new_session=True,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        deadline, listing = time.monotonic() + 120, None
        while time.monotonic() < deadline and proc.poll() is None:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/contents?token=tinymoe-test", timeout=2) as r:
                    listing = json.loads(r.read())
                break
            except OSError:
                time.sleep(0.5)
        if listing is None:
            output = proc.stdout.read().decode(errors="replace") if proc.poll() is not None else "(still running)"
            pytest.fail(f"`make lab` did not serve JupyterLab on port {port} within 120 s; its output:\n{output[-3000:]}")
        names = {item["name"] for item in listing["content"]}
        assert any(n.endswith(".ipynb") and n[:2].isdigit() for n in names), (
            f"`make lab` serves a folder without the course notebooks: {sorted(names)[:10]}")
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/lab?token=tinymoe-test", timeout=10) as r:
            assert r.status == 200 and b"JupyterLab" in r.read(), "the /lab page is not JupyterLab"
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
