"""Helpers for tests that need a live server or headless Chromium (Debian's /usr/bin/chromium).

    with serve_in_thread(create_app(settings)) as base_url: ...        # uvicorn on a free port
    with chromium() as browser: page = browser.new_page(); ...           # Playwright, fresh profile

Chromium flags: the machine's network is closed, so background networking, sync, component
updates and QUIC are switched off (otherwise Chromium retries refused connections at every start).
"""

from __future__ import annotations

import contextlib
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
