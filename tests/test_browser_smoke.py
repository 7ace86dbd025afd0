"""Smoke test in headless Chromium: the page boots Pyodide + numpy + the engine in its worker.

Checks the page's stage reporting (runtime, numpy, engine), that the versions are the pinned ones,
and that numpy's compiled core computes in WASM what CPython's numpy computes for the same
product (engine.bridge.runtime_info's `check`). Prints the boot timings; saves a screenshot to
/tmp/mote-smoke.png (phone-sized viewport). Models in the page (the golden greedy answer, Stop,
the caches, offline, failed downloads, Gemma) are tests/test_browser.py's.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

from tests.browser_util import chromium, ensure_static_built, serve_in_thread

pytestmark = pytest.mark.browser


@pytest.fixture(scope="module")
def base_url(tmp_path_factory):
    pytest.importorskip("fastapi")
    from web.app import Settings, create_app

    static = ensure_static_built()
    models = tmp_path_factory.mktemp("models")  # no model needed to boot the runtime
    with serve_in_thread(create_app(Settings(models_dir=models, static_dir=static))) as url:
        yield url


def test_page_boots_runtime_numpy_engine(base_url):
    with chromium() as browser:
        page = browser.new_page(viewport={"width": 390, "height": 844})  # a phone
        logs: list[str] = []
        page.on("console", lambda m: logs.append(f"{m.type}: {m.text}"))
        page.on("pageerror", lambda e: logs.append(f"pageerror: {e}"))
        page.goto(base_url + "/?selfcheck")
        try:
            page.wait_for_function("() => window.moteApp && (window.moteApp.state.runtime || window.moteApp.state.lastError)",
                                   timeout=120_000)
        finally:
            page.screenshot(path="/tmp/mote-smoke.png", full_page=True)
        state = page.evaluate("() => JSON.parse(JSON.stringify(window.moteApp.state))")
        assert state["lastError"] is None, (state["lastError"], logs)
        info = state["runtime"]
        assert info["platform"] == "emscripten"
        assert info["python"].startswith("3.12.")
        assert info["numpy"] == "2.0.2"
        import engine

        assert info["engine"] == engine.__version__
        a = np.arange(12, dtype=np.float64).reshape(3, 4) / 7.0
        b = np.cos(np.arange(8, dtype=np.float64)).reshape(4, 2)
        np.testing.assert_allclose(info["check"], (a @ b).ravel(), rtol=1e-12)
        # Jinja2 + the pure-Python MarkupSafe wheel import in Pyodide and render the same prompt
        from engine.chat import ChatTemplate

        assert info["jinja2"] == "3.1.6"
        expected = ChatTemplate.create(None, "gemma3", bos_token="<bos>").render(
            [{"role": "user", "content": "Hi <b>&</b>"}], engine="jinja")
        assert info["chat_check"] == expected
        # every numpy and engine module imported came from build_wasm.py's bytecode.zip, not compiled
        # at import (a pyc misplaced, stale or of another Python would not count)
        assert info["bytecode"]["modules"] > 60, info["bytecode"]
        assert info["bytecode"]["with_bytecode"] == info["bytecode"]["modules"], info["bytecode"]
        # the chat-template bounds hold in Pyodide too: each hostile template ends in a clear error
        size, steps, depth = info["template_guard"]
        assert "builds a repeated string or list of 2000000000 items" in size
        assert "runs too long" in steps and "nests macro calls deeper than" in depth
        assert [state["stages"].get(s) for s in ("runtime", "numpy", "engine")] == ["done"] * 3
        assert page.locator("#status").inner_text().startswith("1 worker: Python 3.12")  # no model: one worker
        print("\nbrowser boot:", json.dumps({"boot_s": round(state["bootMs"] / 1000, 2),
                                             **{k: round(v, 2) for k, v in state["timings"].items()}}))
