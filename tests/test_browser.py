"""A real browser: JupyterLab in headless Chromium, driven by Playwright, over every notebook of
the course that has an explorer.

One JupyterLab (a session fixture: started once, on a free loopback port, with a random token and
private config/runtime/data/settings directories, so nothing from the user's own Jupyter set-up
leaks in) serves copies of the notebooks. For each notebook the test:

  1. runs every cell (Run All) and fails on a traceback in any output and on any entry in
     JupyterLab's log console (where errors raised while handling widget messages go);
  2. checks that no output is wider than its cell (scrollWidth > clientWidth: a sheet, a colour
     bar or a dropdown cut off at the right edge);
  3. moves every control of every explorer once, then to both ends of its range, and after each
     move checks: the picture changed or the status line names a rule; a stale picture (the
     controls hold an impossible combination) carries its stale mark; still no log entry, no
     overflow; moving a seq_len slider changes the shape line;
  4. saves the notebook, shuts its kernel down and opens it again: each explorer's static
     snapshot must be visible, and no "Error displaying widget" line.

Screenshots of each notebook's first explorer before and after, and after the reload, land in
test-artifacts/browser/. The server is stopped in the fixture's teardown, whatever happened.

Needs a system Chromium (Playwright's own browser download is never used):
    apt-get install -y chromium
TINYMOE_BROWSER_NOTEBOOKS=01,06 limits the run to the notebooks whose names start with those prefixes.
"""
from __future__ import annotations

import json
import os
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
ARTIFACTS = ROOT / "test-artifacts" / "browser"
CHROMIUM_ARGS = ["--no-sandbox", "--headless", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--no-first-run", "--disable-sync"]
SERVER_START_S = 120       # JupyterLab's first start builds nothing, but a busy 2-core box is slow
RUN_ALL_S = 240            # importing torch + plotly in a fresh kernel, then the notebook's cells
UPDATE_S = 60              # one control move: a comm round trip and a redraw
VIEWPORT = {"width": 1366, "height": 900}     # a laptop screen, file browser folded away


def _with_explorer(path: Path) -> bool:
    return "Explorer(" in path.with_suffix(".py").read_text() if path.with_suffix(".py").exists() else False


ALL_NOTEBOOKS = sorted(p for p in (ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb") if _with_explorer(p))
_only = [x for x in os.environ.get("TINYMOE_BROWSER_NOTEBOOKS", "").split(",") if x]
NOTEBOOKS = [p for p in ALL_NOTEBOOKS if not _only or any(p.name.startswith(x) for x in _only)]


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


def api(base: str, token: str, path: str, method: str = "GET"):
    request = urllib.request.Request(f"{base}{path}?token={token}", method=method)
    with urllib.request.urlopen(request, timeout=10) as response:
        body = response.read().decode()
        return json.loads(body) if body else None


@pytest.fixture(scope="session")
def chromium() -> str:
    path = find_chromium()
    if path is None:
        pytest.skip("no Chromium found for the real-browser test: install one with `apt-get install -y chromium` "
                    "(Playwright's own browser download is not used)")
    pytest.importorskip("playwright.sync_api", reason="the playwright Python package is needed: pip install playwright")
    return path


@pytest.fixture(scope="module")
def lab(tmp_path_factory, chromium):
    """One private JupyterLab serving copies of the notebooks: yields (base url, token, root folder)."""
    home = tmp_path_factory.mktemp("lab")
    root = home / "root"
    root.mkdir()
    for notebook in NOTEBOOKS:
        shutil.copy(notebook, root / notebook.name)
    env = dict(os.environ, TRITON_INTERPRET=os.environ.get("TRITON_INTERPRET", "1"))
    for var, sub in (("JUPYTER_CONFIG_DIR", "config"), ("JUPYTER_RUNTIME_DIR", "runtime"),
                     ("JUPYTER_DATA_DIR", "data"), ("JUPYTERLAB_SETTINGS_DIR", "settings"),
                     ("JUPYTERLAB_WORKSPACES_DIR", "workspaces"), ("IPYTHONDIR", "ipython")):
        (home / sub).mkdir()
        env[var] = str(home / sub)
    env.pop("JUPYTER_PATH", None)
    env.pop("JUPYTER_TOKEN", None)
    settings = home / "settings" / "@jupyterlab"
    for plugin, name, values in (("apputils-extension", "notification", {"fetchNews": "false", "checkForUpdates": False}),
                                 ("notebook-extension", "tracker", {"windowingMode": "none"})):
        (settings / plugin).mkdir(parents=True)
        (settings / plugin / f"{name}.jupyterlab-settings").write_text(json.dumps(values))
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
                api(base, token, "/api/status")
                break
            except OSError:
                if time.monotonic() > deadline:
                    pytest.fail(f"JupyterLab did not answer on {base} within {SERVER_START_S} s; its log:\n"
                                + (home / "server.log").read_text()[-4000:])
                time.sleep(0.5)
        yield base, token, root
    finally:
        stop(server)
        log.close()
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
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


@pytest.fixture(scope="module")
def browser(chromium, lab):
    from playwright.sync_api import sync_playwright
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=chromium, args=CHROMIUM_ARGS)
        try:
            yield b
        finally:
            b.close()


# ---- what the page shows ---------------------------------------------------------------------------

KERNEL_STATUS = "() => window.jupyterapp?.shell?.currentWidget?.sessionContext?.session?.kernel?.status ?? null"
BUSY_PROMPTS = """() => Array.from(document.querySelectorAll('.jp-Notebook .jp-InputPrompt'))
                        .filter(e => e.textContent.includes('*')).length"""
LOG_ENTRIES = """() => { const item = document.querySelector('.jp-LogConsoleStatusItem');
                         if (!item) return 0; const m = item.textContent.match(/\\d+/); return m ? +m[0] : 0; }"""
OVERFLOWING = """() => Array.from(document.querySelectorAll('.jp-OutputArea-output, .tinymoe-explorer .widget-html-content, .tinymoe-explorer .widget-dropdown select'))
    .filter(e => e.offsetParent !== null && e.scrollWidth > e.clientWidth + 1)
    .map(e => { const cell = e.closest('.jp-CodeCell');
                const cells = Array.from(document.querySelectorAll('.jp-Notebook .jp-Cell'));
                return `cell ${cells.indexOf(e.closest('.jp-Cell'))}: ${e.className.split(' ')[0] || e.tagName} `
                       + `${e.scrollWidth} px of content in ${e.clientWidth} px: `
                       + (e.innerText || e.value || '').slice(0, 60).replace(/\\s+/g, ' '); })"""
PICTURE = """(el) => { const plot = el.querySelector('.tinymoe-heatmap .js-plotly-plot');
    const z = plot && plot.data && plot.data[0] ? JSON.stringify(plot.data[0].z).length + ':' + JSON.stringify(plot.data[0].z).slice(0, 400) : '';
    const text = s => { const n = el.querySelector(s); return n ? n.innerHTML : ''; };
    return [text('.tinymoe-shape-label'), text('.tinymoe-sheets').length + text('.tinymoe-sheets').slice(-300),
            text('.tinymoe-notes'), z, text('.tinymoe-table').length]; }"""
VISIBLE_SNAPSHOTS = """() => Array.from(document.querySelectorAll('.tinymoe-snapshot')).filter(e => e.offsetParent !== null).length"""
WIDGET_ERRORS = """() => Array.from(document.querySelectorAll('.jp-OutputArea-output'))
    .filter(e => e.offsetParent !== null && /Error displaying widget/.test(e.textContent)).length"""


# How many replies the kernel has finished ('idle' on its iopub channel) since the page loaded. A
# control move sends one comm message; its 'idle' says the explorer's reply has been sent, so the
# test waits for that instead of a fixed pause.
IDLE_REPLIES = """() => { const kernel = window.jupyterapp?.shell?.currentWidget?.sessionContext?.session?.kernel;
    if (!kernel) return -1;
    if (window.__tinymoeKernel !== kernel) {
        window.__tinymoeKernel = kernel; window.__tinymoeIdle = 0;
        kernel.iopubMessage.connect((_, msg) => {
            if (msg.header.msg_type === 'status' && msg.content.execution_state === 'idle') window.__tinymoeIdle++; });
    }
    return window.__tinymoeIdle; }"""
PAINTED = "() => new Promise(done => requestAnimationFrame(() => requestAnimationFrame(() => done(true))))"


def wait_until(page, predicate, timeout_s: float, what: str, poll_s: float = 0.3):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        page.wait_for_timeout(poll_s * 1000)
    pytest.fail(f"timed out after {timeout_s:.0f} s waiting for {what}")


def settled(page) -> bool:
    return page.evaluate(KERNEL_STATUS) == "idle" and page.evaluate(BUSY_PROMPTS) == 0


def log_entries(page) -> str:
    """The log console's text (opened for the message), or '' when it holds nothing."""
    if not page.evaluate(LOG_ENTRIES):
        return ""
    page.evaluate("() => window.jupyterapp.commands.execute('logconsole:open')")
    page.wait_for_timeout(800)
    text = page.locator(".jp-LogConsole").first.inner_text()
    return text if len(text) < 6000 else text[:1500] + "\n[...]\n" + text[-4500:]


def assert_clean(page, name: str, when: str) -> None:
    entries = log_entries(page)
    assert not entries, f"{name}: JupyterLab's log console has entries {when}:\n{entries}"
    wide = page.evaluate(OVERFLOWING)
    assert not wide, f"{name}: output wider than its cell {when}:\n" + "\n".join(wide[:10])


def open_notebook(page, base: str, token: str, name: str, workspace: str | None = None) -> None:
    """Open `name` alone, in a workspace of its own (?reset: no tab of an earlier test comes back)."""
    workspace = workspace or Path(name).stem.replace("_", "-")
    page.goto(f"{base}/lab/workspaces/{workspace}/tree/{name}?reset&token={token}", timeout=120_000)
    page.wait_for_selector(".jp-Notebook", timeout=120_000)
    if page.locator(".jp-SideBar.jp-mod-left .lm-TabBar-tab.lm-mod-current").count():
        page.keyboard.press("Control+b")                            # fold the file browser away
    wait_until(page, lambda: page.evaluate(KERNEL_STATUS) == "idle", 120, f"{name}'s kernel to start")


# ---- moving the controls like a reader -------------------------------------------------------------

def moves(control) -> list[tuple[str, object]]:
    """(how, what) for one control: once, then to both ends of its range."""
    if control.locator(".widget-readout").count():                            # a slider
        return [("key", "ArrowRight"), ("key", "End"), ("key", "Home")]
    if control.locator("select").count():
        n = control.locator("select option").count()
        return [("option", 1 % n), ("option", n - 1), ("option", 0)]
    if control.locator("input[type=checkbox]").count():
        return [("click", None), ("click", None)]
    return []


def move(page, control, how: str, what) -> None:
    if how == "key":
        handle = control.locator(".noUi-handle").first
        handle.focus()
        handle.press(what)
    elif how == "option":
        control.locator("select").select_option(index=what)
    elif how == "click":
        control.locator("input[type=checkbox]").click()


def readout(control) -> str:
    """What the control shows now: a slider's readout, the selected option, the checkbox state."""
    if control.locator(".widget-readout").count():
        return control.locator(".widget-readout").inner_text().strip()
    if control.locator("select").count():
        return control.locator("select").evaluate("s => s.value")
    return str(control.locator("input[type=checkbox]").is_checked())


def drive(page, explorer, name: str, index: int) -> int:
    """Move every control of one explorer; returns how many moves were made."""
    controls = explorer.locator(".tinymoe-controls > .widget-inline-hbox, .tinymoe-controls > .widget-checkbox")
    made = changed = 0
    for c in range(controls.count()):
        control = controls.nth(c)
        label = (control.inner_text().strip().splitlines() or [f"#{c}"])[0].strip() or f"#{c}"
        if control.locator(":disabled").count():
            continue
        for how, what in moves(control):
            before = explorer.evaluate(PICTURE)
            before_status = explorer.locator(".tinymoe-status").inner_text().strip()
            before_value = readout(control)
            replies = page.evaluate(IDLE_REPLIES)
            move(page, control, how, what)
            where = f"{name}, explorer {index}, {label} ({how} {what})"
            value = readout(control)
            if value == before_value:
                continue                                               # already there: nothing to redraw
            if label == "seq_len":                                     # its shape line must change
                wait_until(page, lambda: explorer.evaluate(PICTURE)[0] != before[0] or
                           explorer.locator(".tinymoe-status").inner_text().strip() != before_status,
                           UPDATE_S, f"{where}: the shape line to change after seq_len {before_value} -> {value}")
            # The kernel has answered the move (one more 'idle'), is idle now, and the page has drawn it.
            wait_until(page, lambda: page.evaluate(IDLE_REPLIES) > replies and settled(page), UPDATE_S,
                       f"the kernel to answer moving {label}", poll_s=0.05)
            page.wait_for_timeout(150)                                 # plotly's redraw is asynchronous
            page.evaluate(PAINTED)
            after = explorer.evaluate(PICTURE)
            status = explorer.locator(".tinymoe-status").inner_text().strip()
            if status:
                assert explorer.locator(".tinymoe-picture.tinymoe-stale").count(), \
                    f"{where}: the status names a rule but the picture is not marked stale: {status[:200]!r}"
                assert "stale" in status, f"{where}: the status does not say which settings the picture shows"
            else:
                assert not explorer.locator(".tinymoe-stale").count(), f"{where}: a possible setting left a stale mark"
            assert_clean(page, name, f"after moving {label} ({how} {what})")
            made += 1
            changed += after != before or status != before_status
    assert changed > 0 or made == 0, f"{name}, explorer {index}: {made} moves and the picture never changed"
    return made


@pytest.mark.parametrize("notebook", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_runs_explorers_move_and_the_saved_copy_shows_snapshots(lab, browser, notebook):
    base, token, root = lab
    name = notebook.name
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    page = browser.new_page(viewport=VIEWPORT)
    try:
        open_notebook(page, base, token, name)
        started = time.monotonic()
        page.evaluate("() => window.jupyterapp.commands.execute('notebook:run-all-cells')")
        page.locator(".tinymoe-explorer").first.wait_for(timeout=RUN_ALL_S * 1000)
        wait_until(page, lambda: settled(page), RUN_ALL_S, f"every cell of {name} to finish running")
        print(f"{name}: Run All took {time.monotonic() - started:.1f} s in the browser")
        page.evaluate(PAINTED)
        page.wait_for_timeout(500)                                    # plotly finishes drawing
        errors = page.locator(".jp-OutputArea-output[data-mime-type='application/vnd.jupyter.stderr']")
        tracebacks = [t for t in errors.all_inner_texts() if "Traceback" in t or "Error" in t]
        assert not tracebacks, f"a cell of {name} raised:\n" + "\n".join(tracebacks)[:3000]
        assert_clean(page, name, "after Run All")
        assert page.evaluate(VISIBLE_SNAPSHOTS) == 0, f"{name}: a live explorer still shows its static snapshot too"

        explorers = page.locator(".tinymoe-explorer")
        count = explorers.count()
        assert count >= 1, f"{name} has no explorer on screen after Run All"
        for i in range(count):
            explorer = explorers.nth(i)
            explorer.scroll_into_view_if_needed()
            if i == 0:
                explorer.screenshot(path=str(ARTIFACTS / f"{notebook.stem}-explorer-before.png"))
            assert drive(page, explorer, name, i) > 0, f"{name}: explorer {i} has no control the test can move"
            if i == 0:
                page.wait_for_timeout(500)
                explorer.screenshot(path=str(ARTIFACTS / f"{notebook.stem}-explorer-after.png"))

        # The instructor's own copy: save, shut the kernel down, open it again.
        page.evaluate("() => window.jupyterapp.commands.execute('docmanager:save')")   # resolves once written
        for session in api(base, token, "/api/sessions"):
            if session.get("path", "").endswith(name):
                api(base, token, f"/api/sessions/{session['id']}", method="DELETE")
        def saved_snapshot() -> bool:
            saved = json.loads((root / name).read_text())
            return any("tinymoe-snapshot" in "".join(o.get("data", {}).get("text/html", ""))
                       for c in saved["cells"] for o in c.get("outputs", []))
        wait_until(page, saved_snapshot, 20, f"{name}: the saved copy to hold a snapshot")
        page.goto("about:blank")
        open_notebook(page, base, token, name, workspace=notebook.stem.replace("_", "-") + "-reopened")
        wait_until(page, lambda: page.evaluate(VISIBLE_SNAPSHOTS) >= count, UPDATE_S,
                   f"{name}: the saved copy to show a snapshot for each of its {count} explorer(s)")
        page.evaluate(PAINTED)
        page.wait_for_timeout(500)                                    # a dead widget's error would show by now
        assert page.evaluate(WIDGET_ERRORS) == 0, f"{name}: the reopened copy shows 'Error displaying widget'"
        assert page.evaluate(VISIBLE_SNAPSHOTS) >= count
        snapshot = page.locator(".tinymoe-snapshot").first
        snapshot.scroll_into_view_if_needed()
        snapshot.screenshot(path=str(ARTIFACTS / f"{notebook.stem}-reopened-snapshot.png"))
        assert_clean(page, name, "after reopening the saved copy")
    finally:
        page.close()


def test_the_log_console_check_sees_an_error_raised_by_a_widget_callback(lab, browser):
    """The check above must be able to fail: a slider whose callback raises puts an entry in the
    log console (not in any cell), and log_entries() reads it."""
    import nbformat
    from nbformat.v4 import new_code_cell, new_notebook
    base, token, root = lab
    nb = new_notebook(cells=[new_code_cell(
        "import ipywidgets as w\n"
        "s = w.IntSlider(description='boom')\n"
        "def fail(change):\n"
        "    raise ValueError('a callback error the log console must show')\n"
        "s.observe(fail, 'value')\n"
        "s")])
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nbformat.write(nb, root / "zz_log_check.ipynb")
    page = browser.new_page(viewport=VIEWPORT)
    try:
        open_notebook(page, base, token, "zz_log_check.ipynb")
        page.evaluate("() => window.jupyterapp.commands.execute('notebook:run-all-cells')")
        handle = page.locator(".noUi-handle").first
        handle.wait_for(timeout=RUN_ALL_S * 1000)
        assert log_entries(page) == "", "the log console should start empty"
        handle.focus()
        handle.press("ArrowRight")
        text = wait_until(page, lambda: log_entries(page), UPDATE_S, "the callback's error to reach the log console")
        assert "a callback error the log console must show" in text, text
    finally:
        page.close()
