"""A real browser: JupyterLab in headless Chromium, driven by Playwright.

The test starts its own JupyterLab on a free loopback port with a random token and private
config/runtime/data/settings directories (nothing from the user's own Jupyter set-up leaks in),
opens a copy of a notebook, runs every cell, moves the first explorer's seq_len slider with the
keyboard (or, failing that, by typing into its readout), and checks that the shape line and the
heatmap's data changed. Screenshots before and
after the move land in test-artifacts/. The server is stopped in the fixture's teardown, whatever
happened.

Needs a system Chromium (Playwright's own browser download is never used):
    apt-get install -y chromium
The default notebook is the course's 01_attention_by_hand (its AttentionExplorer has a seq_len slider);
TINYMOE_BROWSER_NOTEBOOK=path/to/notebook.ipynb points the test at another notebook with an explorer.
"""
from __future__ import annotations

import json
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

pytestmark = [pytest.mark.browser, pytest.mark.slow]

ROOT = Path(__file__).resolve().parent.parent
ARTIFACTS = ROOT / "test-artifacts"
NOTEBOOK = Path(os.environ.get("TINYMOE_BROWSER_NOTEBOOK", ROOT / "notebooks" / "01_attention_by_hand.ipynb"))
CHROMIUM_ARGS = ["--no-sandbox", "--headless", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--no-first-run", "--disable-sync"]
SERVER_START_S = 120       # JupyterLab's first start builds nothing, but a busy 2-core box is slow
RUN_ALL_S = 240            # importing torch + plotly in a fresh kernel, then three explorers
UPDATE_S = 60              # one slider move: a comm round trip and a redraw


def find_chromium() -> str | None:
    for candidate in (os.environ.get("CHROMIUM"), shutil.which("chromium"), shutil.which("chromium-browser"),
                      "/usr/bin/chromium"):
        if candidate and Path(candidate).is_file() and os.access(candidate, os.X_OK):
            return candidate
    return None


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def get_json(url: str):
    with urllib.request.urlopen(url, timeout=5) as response:
        return json.loads(response.read().decode())


@pytest.fixture(scope="module")
def chromium() -> str:
    path = find_chromium()
    if path is None:
        pytest.skip("no Chromium found for the real-browser test: install one with `apt-get install -y chromium` "
                    "(Playwright's own browser download is not used)")
    pytest.importorskip("playwright.sync_api", reason="the playwright Python package is needed: pip install playwright")
    return path


@pytest.fixture(scope="module")
def lab(tmp_path_factory, chromium):
    """A private JupyterLab serving a copy of NOTEBOOK: yields (base url, token, notebook name)."""
    home = tmp_path_factory.mktemp("lab")
    root = home / "root"
    root.mkdir()
    shutil.copy(NOTEBOOK, root / NOTEBOOK.name)
    env = dict(os.environ)
    for var, sub in (("JUPYTER_CONFIG_DIR", "config"), ("JUPYTER_RUNTIME_DIR", "runtime"),
                     ("JUPYTER_DATA_DIR", "data"), ("JUPYTERLAB_SETTINGS_DIR", "settings"),
                     ("JUPYTERLAB_WORKSPACES_DIR", "workspaces"), ("IPYTHONDIR", "ipython")):
        (home / sub).mkdir()
        env[var] = str(home / sub)
    env.pop("JUPYTER_PATH", None)
    env.pop("JUPYTER_TOKEN", None)
    # No news / update pop-ups over the screenshots.
    notification = home / "settings" / "@jupyterlab" / "apputils-extension"
    notification.mkdir(parents=True)
    (notification / "notification.jupyterlab-settings").write_text(
        json.dumps({"fetchNews": "false", "checkForUpdates": False}))
    port, token = free_port(), secrets.token_hex(16)
    log = open(home / "server.log", "w")
    server = subprocess.Popen(
        [sys.executable, "-m", "jupyterlab", "--no-browser", f"--port={port}", "--ServerApp.port_retries=0",
         "--ServerApp.ip=127.0.0.1", f"--IdentityProvider.token={token}", f"--ServerApp.root_dir={root}",
         "--LabApp.expose_app_in_browser=True", "--ServerApp.open_browser=False"]
        + (["--allow-root"] if os.geteuid() == 0 else []),              # CI runs as root
        cwd=root, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + SERVER_START_S
        while True:
            if server.poll() is not None:
                pytest.fail(f"JupyterLab exited with {server.returncode} before answering; its log:\n"
                            + (home / "server.log").read_text()[-4000:])
            try:
                get_json(f"{base}/api/status?token={token}")
                break
            except OSError:
                if time.monotonic() > deadline:
                    pytest.fail(f"JupyterLab did not answer on {base} within {SERVER_START_S} s; its log:\n"
                                + (home / "server.log").read_text()[-4000:])
                time.sleep(0.5)
        yield base, token, NOTEBOOK.name
    finally:
        stop(server)
        log.close()
        ARTIFACTS.mkdir(exist_ok=True)
        shutil.copy(home / "server.log", ARTIFACTS / "jupyterlab-server.log")


def stop(server: subprocess.Popen) -> None:
    """Stop the server we started and its kernels (its own process group), politely then firmly."""
    if server.poll() is not None:
        return
    try:
        os.killpg(server.pid, signal.SIGTERM)
        server.wait(timeout=20)
    except (subprocess.TimeoutExpired, ProcessLookupError):
        try:
            os.killpg(server.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        server.wait(timeout=10)


# ---- helpers that read the page ------------------------------------------------------------------

KERNEL_STATUS = "() => window.jupyterapp?.shell?.currentWidget?.sessionContext?.session?.kernel?.status ?? null"
BUSY_PROMPTS = """() => Array.from(document.querySelectorAll('.jp-Notebook .jp-InputPrompt'))
                        .filter(e => e.textContent.includes('*')).length"""
HEATMAP_SHAPE = """(index) => {
    const plots = document.querySelectorAll('.tinymoe-heatmap .js-plotly-plot');
    const gd = plots[index];
    if (!gd || !gd.data || !gd.data[0] || !gd.data[0].z) return null;
    const z = gd.data[0].z;
    return [z.length, z[0].length];
}"""


def wait_until(page, predicate, timeout_s: float, what: str, poll_s: float = 0.5):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        page.wait_for_timeout(poll_s * 1000)
    pytest.fail(f"timed out after {timeout_s:.0f} s waiting for {what}")


def kernel_idle_and_cells_done(page) -> bool:
    return page.evaluate(KERNEL_STATUS) == "idle" and page.evaluate(BUSY_PROMPTS) == 0


def test_slider_move_changes_shape_label_and_heatmap_in_jupyterlab(lab, chromium):
    from playwright.sync_api import sync_playwright

    base, token, name = lab
    ARTIFACTS.mkdir(exist_ok=True)
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1500, "height": 2400})
            page.goto(f"{base}/lab/tree/{name}?token={token}", timeout=120_000)
            page.wait_for_selector(".jp-Notebook", timeout=120_000)
            wait_until(page, lambda: page.evaluate(KERNEL_STATUS) == "idle", 120, "the notebook's kernel to start")

            page.evaluate("() => window.jupyterapp.commands.execute('notebook:run-all-cells')")
            page.locator(".tinymoe-shape-label").first.wait_for(timeout=RUN_ALL_S * 1000)
            wait_until(page, lambda: kernel_idle_and_cells_done(page), RUN_ALL_S, "every cell to finish running")
            errors = page.locator(".jp-OutputArea-output[data-mime-type='application/vnd.jupyter.stderr']")
            tracebacks = [t for t in errors.all_inner_texts() if "Traceback" in t or "Error" in t]
            assert not tracebacks, f"a cell of {name} raised:\n" + "\n".join(tracebacks)[:3000]

            for i in range(min(3, page.locator(".jp-CodeCell").count())):   # the static sheets, for a person
                output = page.locator(".jp-CodeCell").nth(i).locator(".jp-OutputArea-output").first
                if output.count() and not output.locator(".tinymoe-explorer").count():
                    output.scroll_into_view_if_needed()
                    output.screenshot(path=str(ARTIFACTS / f"static-output-{i}.png"))

            # The first explorer with a seq_len slider (the demo's first one is an AttentionExplorer).
            explorers = page.locator(".tinymoe-explorer")
            index = next((i for i in range(explorers.count())
                          if explorers.nth(i).locator(".widget-slider", has_text="seq_len").count()), None)
            assert index is not None, f"{name} has no explorer with a seq_len slider"
            explorer = explorers.nth(index)
            label = explorer.locator(".tinymoe-shape-label")
            heatmap_index = page.evaluate(
                "(el) => Array.from(document.querySelectorAll('.tinymoe-heatmap .js-plotly-plot'))"
                ".findIndex(p => el.contains(p))", explorer.element_handle())
            wait_until(page, lambda: page.evaluate(HEATMAP_SHAPE, heatmap_index), UPDATE_S, "the heatmap to draw")
            explorer.scroll_into_view_if_needed()
            page.wait_for_timeout(500)
            before_label = label.inner_text().strip()
            before_shape = page.evaluate(HEATMAP_SHAPE, heatmap_index)
            explorer.screenshot(path=str(ARTIFACTS / "explorer-before.png"))

            # Move the first slider (seq_len) one step right with the keyboard, as a reader would.
            slider = explorer.locator(".widget-slider", has_text="seq_len").first
            before_value = int(slider.locator(".widget-readout").inner_text())
            handle = slider.locator(".noUi-handle").first
            handle.focus()
            handle.press("ArrowRight")
            moved = lambda: label.inner_text().strip() != before_label  # noqa: E731
            deadline = time.monotonic() + UPDATE_S / 2
            while not moved() and time.monotonic() < deadline:
                page.wait_for_timeout(300)
            if not moved():                       # keyboard did not take: type into the readout instead
                print("the slider's keyboard handling did not move it; typing into its readout")
                readout = slider.locator(".widget-readout")
                readout.click()
                page.keyboard.press("Control+A")
                page.keyboard.type(str(before_value + 1))
                page.keyboard.press("Enter")
            wait_until(page, moved, UPDATE_S, "the shape line to change after the slider move")
            wait_until(page, lambda: page.evaluate(HEATMAP_SHAPE, heatmap_index) != before_shape, UPDATE_S,
                       "the heatmap's data to change after the slider move")
            wait_until(page, lambda: kernel_idle_and_cells_done(page), UPDATE_S, "the kernel to settle")
            page.wait_for_timeout(800)            # let plotly finish painting before the picture
            after_label = label.inner_text().strip()
            after_shape = page.evaluate(HEATMAP_SHAPE, heatmap_index)
            explorer.screenshot(path=str(ARTIFACTS / "explorer-after.png"))
            for i in range(explorers.count()):                                # the others, for a person to look at
                if i == index:
                    continue
                other = explorers.nth(i)
                other.scroll_into_view_if_needed()
                page.wait_for_timeout(500)
                other.screenshot(path=str(ARTIFACTS / f"explorer-{i}.png"))

            after_value = int(slider.locator(".widget-readout").inner_text())
            status = explorer.locator(".tinymoe-status").inner_text().strip()
            assert after_value == before_value + 1, f"seq_len slider went {before_value} -> {after_value}, expected +1"
            assert after_label != before_label, f"the shape line did not change: {after_label!r}"
            assert after_shape != before_shape, f"the heatmap data kept its shape {before_shape}"
            if after_label.startswith("x ("):                                  # an AttentionExplorer: exact shapes
                expected = f"x (1, {after_value}, "
                assert expected in after_label, f"shape line should start {expected!r}, got {after_label!r}"
                assert re.search(rf"weights \(1, \d+, {after_value}, {after_value}\)", after_label), \
                    f"attention weights should be {after_value} x {after_value} per head: {after_label!r}"
                assert after_shape[0] == before_shape[0] + 1, \
                    f"heatmap rows should grow by one with seq_len (was {before_shape}, now {after_shape})"
            assert status == "", f"the explorer shows an error after a valid move: {status!r}"
        finally:
            browser.close()
