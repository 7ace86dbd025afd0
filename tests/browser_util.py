"""Helpers for tests that need a live server or headless Chromium (Debian's /usr/bin/chromium).

    with serve_in_thread(create_app(settings)) as base_url: ...        # uvicorn on a free port
    with chromium() as browser: page = browser.new_page(); ...           # Playwright, fresh profile
    heap = WorkerHeap(browser, page); heap.sample()                      # the worker's memory (CDP)
    renderer_peak_rss()                                                  # the tab's peak RSS (/proc)

Chromium flags: the machine's network is closed, so background networking, sync, component
updates and QUIC are switched off (otherwise Chromium retries refused connections at every start).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

CHROMIUM = os.environ.get("MOTE_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
]
ROOT = Path(__file__).resolve().parent.parent
_built = False  # static/ rebuilt once per test session


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def serve_in_thread(app, host: str = "127.0.0.1") -> Iterator[str]:
    """Run `app` under uvicorn in a daemon thread; yield its base URL; stop it afterwards."""
    import uvicorn

    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host=host, port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.time() + 10
    while not server.started:
        if time.time() > deadline or not thread.is_alive():
            raise RuntimeError("uvicorn did not start within 10 s")
        time.sleep(0.02)
    try:
        yield f"http://{host}:{port}"
    finally:
        server.should_exit = True
        thread.join(10)


@contextlib.contextmanager
def chromium(**launch_kwargs) -> Iterator[object]:
    """A headless Chromium through Playwright with a fresh temporary profile; skips if unavailable."""
    sync_api = pytest.importorskip("playwright.sync_api")
    if not (os.path.isfile(CHROMIUM) or shutil.which(CHROMIUM)):
        pytest.skip(f"Chromium not found at {CHROMIUM} (apt-get install -y chromium)")
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True,
                                    **launch_kwargs)
        try:
            yield browser
        finally:
            browser.close()


def ensure_static_built() -> Path:
    """static/ with the wasm assets and a fresh engine wheel; skip when they cannot be built offline.

    When every download is cached, rebuild (a few seconds) so the engine wheel holds the current
    engine/ sources; otherwise use an existing build, or skip.
    """
    import build_wasm as bw

    static = ROOT / "static"
    global _built
    if _built:
        return static
    cached = all((bw.CACHE_DIR / n).is_file() for n in (
        f"pyodide-{bw.PYODIDE_VERSION}.tgz", bw.NUMPY_CARRIER_FILE, bw.JINJA2_FILE, bw.MARKUPSAFE_SDIST))
    if cached:
        bw.build(static, bw.CACHE_DIR)
        _built = True
    elif not (static / "build-manifest.json").is_file():
        pytest.skip("browser assets not built and downloads not cached: run python build_wasm.py")
    return static


# ---- memory of the tab ------------------------------------------------------------------------

class WorkerHeap:
    """The dedicated worker's V8 heap and ArrayBuffer backing stores (the WASM memory is one), by CDP.

    `performance.memory` does not exist in workers and Playwright gives no CDP session for them, so
    this attaches to the worker target from a browser-level session (non-flattened: the worker's
    replies come back as Target.receivedMessageFromTarget events). sample() returns
    {"js_heap": usedSize, "buffers": backingStorageSize} in bytes and keeps the peak of their sum.
    """

    def __init__(self, browser, page):
        self.page = page
        self.cdp = browser.new_browser_cdp_session()
        self.replies: dict[int, dict] = {}
        self.cdp.on("Target.receivedMessageFromTarget", self._on_message)
        self.session: str | None = None
        self.next_id = 0
        self.peak = {"js_heap": 0, "buffers": 0, "total": 0}

    def _on_message(self, event) -> None:
        msg = json.loads(event["message"])
        if "id" in msg:
            self.replies[msg["id"]] = msg

    def _attach(self) -> bool:
        if self.session is None:
            workers = [t for t in self.cdp.send("Target.getTargets")["targetInfos"]
                       if t["type"] == "worker" and t["url"].endswith("/static/worker.js")]
            if not workers:
                return False
            self.session = self.cdp.send("Target.attachToTarget",
                                         {"targetId": workers[-1]["targetId"], "flatten": False})["sessionId"]
        return True

    def sample(self) -> dict | None:
        if not self._attach():
            return None
        self.next_id += 1
        self.cdp.send("Target.sendMessageToTarget", {"sessionId": self.session, "message": json.dumps(
            {"id": self.next_id, "method": "Runtime.getHeapUsage"})})
        for _ in range(100):
            if self.next_id in self.replies:
                break
            self.page.wait_for_timeout(10)
        reply = self.replies.pop(self.next_id, {}).get("result")
        if reply is None:
            return None
        now = {"js_heap": reply["usedSize"], "buffers": reply["backingStorageSize"]}
        now["total"] = now["js_heap"] + now["buffers"]
        for k in self.peak:
            self.peak[k] = max(self.peak[k], now[k])
        return now

    def wait_for(self, js_condition: str, timeout_s: float, every_ms: int = 100) -> None:
        """page.wait_for_function with heap samples in between (the peak is kept)."""
        deadline = time.time() + timeout_s
        while not self.page.evaluate(js_condition):
            if time.time() > deadline:
                raise TimeoutError(f"{js_condition} not true within {timeout_s} s")
            self.sample()
            self.page.wait_for_timeout(every_ms)
        self.sample()


def _children(pid: int) -> list[int]:
    out = []
    for task in Path(f"/proc/{pid}/task").glob("*"):
        try:
            out += [int(c) for c in (task / "children").read_text().split()]
        except OSError:
            pass
    return out


def renderer_pids() -> list[int]:
    """Chromium renderer processes started (directly or not) by this process."""
    seen, todo, out = set(), [os.getpid()], []
    while todo:
        pid = todo.pop()
        if pid in seen:
            continue
        seen.add(pid)
        todo += _children(pid)
        try:
            if b"--type=renderer" in Path(f"/proc/{pid}/cmdline").read_bytes():
                out.append(pid)
        except OSError:
            pass
    return out


def renderer_peak_rss() -> int | None:
    """Largest VmHWM (peak resident set, bytes) of the Chromium renderer processes this test started.

    The page and its worker live in one renderer process, so this is the tab's peak memory as the
    OS sees it (WASM memory, JS heaps, Chromium's own share). None where /proc is unavailable.
    """
    peak = None
    for pid in renderer_pids():
        try:
            for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                if line.startswith("VmHWM:"):
                    peak = max(peak or 0, int(line.split()[1]) * 1024)
        except OSError:
            pass
    return peak
