"""Screenshots of notebooks as a reader sees them: real JupyterLab in headless Chromium.

    python scripts/screenshot_notebook.py notebooks/01_attention_by_hand.ipynb [--run] [--out DIR]

Starts JupyterLab on a free loopback port (temporary settings, cell windowing off), opens each
notebook, optionally runs all cells (needed for widgets to appear), then scrolls the notebook
and saves one PNG per screenful in --out (default test-artifacts/screens/). Needs the system
Chromium (`apt-get install -y chromium`); never downloads a browser.
"""
from __future__ import annotations

import argparse
import json
import os
import secrets
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CHROMIUM_ARGS = ["--no-sandbox", "--headless", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--no-first-run", "--disable-sync"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_lab(root: Path, tmp: Path):
    port, token = free_port(), secrets.token_hex(16)
    settings = tmp / "settings" / "@jupyterlab" / "notebook-extension"
    settings.mkdir(parents=True)
    (settings / "tracker.jupyterlab-settings").write_text(json.dumps({"windowingMode": "none"}))
    news = tmp / "settings" / "@jupyterlab" / "apputils-extension"
    news.mkdir(parents=True)
    (news / "notification.jupyterlab-settings").write_text(json.dumps({"fetchNews": "false"}))
    env = dict(os.environ, JUPYTER_CONFIG_DIR=str(tmp / "config"), JUPYTER_RUNTIME_DIR=str(tmp / "runtime"),
               TRITON_INTERPRET=os.environ.get("TRITON_INTERPRET", "1"))
    cmd = [sys.executable, "-m", "jupyter", "lab", "--no-browser", f"--port={port}", "--ServerApp.ip=127.0.0.1", "--allow-root",
           f"--IdentityProvider.token={token}", f"--ServerApp.root_dir={root}",
           f"--LabApp.user_settings_dir={tmp / 'settings'}", f"--LabApp.workspaces_dir={tmp / 'ws'}"]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    for _ in range(120):
        try:
            urllib.request.urlopen(f"{url}/api/status?token={token}", timeout=1)
            return proc, url, token
        except Exception:
            time.sleep(0.5)
    proc.terminate()
    raise RuntimeError("JupyterLab did not start in 60 s")


def shoot(page, url, token, rel: str, out: Path, run: bool, width: int) -> list[Path]:
    page.goto(f"{url}/lab/tree/{rel}?token={token}")
    page.wait_for_selector(".jp-Notebook", timeout=60000)
    page.wait_for_timeout(3000)
    if page.locator(".jp-SideBar .lm-TabBar-tab.lm-mod-current").count():
        page.keyboard.press("Control+b")          # hide the file browser: more room for the sheets
        page.wait_for_timeout(500)
    if run:
        page.click(".lm-MenuBar-item:has-text('Run')", timeout=10000)
        page.click('li[data-command="runmenu:run-all"]', timeout=10000)
        # wait until the kernel is idle again
        page.wait_for_timeout(2000)
        page.wait_for_function("() => !document.querySelector('.jp-Notebook .jp-InputPrompt') || "
                               "![...document.querySelectorAll('.jp-InputPrompt')].some(e => e.textContent.includes('*'))",
                               timeout=180000)
        page.wait_for_timeout(2000)
    scroller = page.locator(".jp-NotebookPanel:visible .jp-WindowedPanel-outer").first
    height = scroller.evaluate("e => e.scrollHeight")
    view = scroller.evaluate("e => e.clientHeight")
    shots, y, i = [], 0, 0
    stem = Path(rel).stem
    while True:
        scroller.evaluate(f"e => e.scrollTo(0, {y})")
        page.wait_for_timeout(300)
        path = out / f"{stem}_{i:02d}.png"
        page.screenshot(path=str(path))
        shots.append(path)
        y += view - 40
        i += 1
        if y >= height or i >= 40:
            break
    return shots


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("notebooks", nargs="+")
    ap.add_argument("--run", action="store_true", help="run all cells first (widgets need a live kernel)")
    ap.add_argument("--out", default=str(ROOT / "test-artifacts" / "screens"))
    ap.add_argument("--width", type=int, default=1280)
    ap.add_argument("--height", type=int, default=900)
    args = ap.parse_args()
    chromium = shutil.which("chromium") or "/usr/bin/chromium"
    if not Path(chromium).exists():
        print("no Chromium: apt-get install -y chromium", file=sys.stderr)
        return 2
    from playwright.sync_api import sync_playwright
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        proc, url, token = start_lab(ROOT, Path(tmp))
        try:
            with sync_playwright() as p:
                browser = p.chromium.launch(executable_path=chromium, args=CHROMIUM_ARGS)
                page = browser.new_page(viewport={"width": args.width, "height": args.height})
                for nb in args.notebooks:
                    rel = str(Path(nb).resolve().relative_to(ROOT))
                    for s in shoot(page, url, token, rel, out, args.run, args.width):
                        print(s)
                browser.close()
        finally:
            proc.terminate()
            proc.wait(10)
    return 0


if __name__ == "__main__":
    sys.exit(main())
