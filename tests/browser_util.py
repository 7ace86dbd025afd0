"""Helpers for tests that need a live server or headless Chromium (Debian's /usr/bin/chromium).

    with serve_in_thread(create_app(settings)) as base_url: ...        # uvicorn on a free port
    with chromium() as browser: page = browser.new_page(); ...           # Playwright, fresh profile
    heap = WorkerHeap(browser, page); heap.sample()                      # the worker's memory (CDP)
    renderer_peak_rss()                                                  # the tab's peak RSS (/proc)

serve_in_thread, CHROMIUM_ARGS and the renderer /proc readings come from mote/bench/browser.py (the
benchmark needs the same), re-exported here.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

# One server thread, one set of Chromium flags and one /proc reading for the tests and `mote bench`.
from mote.bench.browser import CHROMIUM_ARGS, renderer_peak_rss, renderer_pids, serve_in_thread  # noqa: F401

CHROMIUM = os.environ.get("MOTE_CHROMIUM", "/usr/bin/chromium")
ROOT = Path(__file__).resolve().parent.parent
_built = False  # static/ rebuilt once per test session


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
                       if t["type"] == "worker" and t["url"].endswith("/worker.js")]   # /static/[v/<version>/]worker.js
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
