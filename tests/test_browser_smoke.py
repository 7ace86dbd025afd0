"""Smoke test in headless Chromium: the page boots Pyodide + numpy + the engine in its worker.

Checks the page's stage reporting (runtime, numpy, engine), that the versions are the pinned ones,
and that numpy's compiled core computes in WASM what CPython's numpy computes for the same
product (engine.bridge.runtime_info's `check`). Prints the boot timings; saves a screenshot to
/tmp/mote-smoke.png (phone-sized viewport).
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
        page.goto(base_url + "/")
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
        assert [state["stages"].get(s) for s in ("runtime", "numpy", "engine")] == ["done"] * 3
        assert page.locator("#status").inner_text().startswith("Python 3.12")
        print("\nbrowser boot:", json.dumps({"boot_s": round(state["bootMs"] / 1000, 2),
                                             **{k: round(v, 2) for k, v in state["timings"].items()}}))


# ---- a tiny model through the whole page: load, greedy chat, Stop, Cache API ------------------

@pytest.fixture(scope="module")
def tiny_site(tmp_path_factory):
    pytest.importorskip("gguf")
    from tests.tiny_models import write_tiny
    from web.app import Settings, create_app

    static = ensure_static_built()
    models = tmp_path_factory.mktemp("tiny-models")
    write_tiny(models / "tiny-llama.gguf", "llama", seed=3, ctx=4096)  # room for a long answer to stop
    with serve_in_thread(create_app(Settings(models_dir=models, static_dir=static))) as url:
        yield url, (models / "tiny-llama.gguf").read_bytes()


def cpython_tokens(data: bytes, messages: list[dict], max_tokens: int) -> list[int]:
    """The same request through engine.bridge in CPython (the reference for the browser)."""
    from engine import bridge

    bridge.load_model(data)
    gen = bridge.start_generation({"messages": messages, "params": {"temperature": 0, "max_tokens": max_tokens}})
    out = []
    while (ev := gen.step()) is not None:
        out += [ev["token_id"]] if ev["type"] == "token" else []
    return out


def chat(page, text: str, max_tokens: int, wait: bool = True):
    page.evaluate("() => { document.getElementById('settings').open = true; }")
    page.fill("#temperature", "0")
    page.fill("#max_tokens", str(max_tokens))
    page.evaluate("() => { window.__before = window.moteApp.state.lastDone; }")
    page.fill("#prompt", text)
    page.click("#send-btn")
    if wait:
        page.wait_for_function("() => window.moteApp.state.lastDone !== window.__before", timeout=60_000)
        return page.evaluate("() => window.moteApp.state.lastDone")


def load_first_model(page, base_url):
    page.goto(base_url + "/")
    page.wait_for_function("() => window.moteApp && window.moteApp.state.runtime && window.moteApp.state.selected",
                           timeout=120_000)
    page.click("#load-btn")
    page.wait_for_function("() => window.moteApp.state.model || window.moteApp.state.lastError", timeout=60_000)
    assert page.evaluate("() => window.moteApp.state.lastError") is None
    return page.evaluate("() => window.moteApp.state.cached")


def test_tiny_model_chat_stop_and_cache(tiny_site):
    base_url, data = tiny_site
    with chromium() as browser:
        context = browser.new_context()
        page = context.new_page()
        assert load_first_model(page, base_url) is False  # first visit: downloaded

        # greedy answer: token-for-token what CPython's engine gives for the same conversation
        done = chat(page, "hello", 12)
        assert done["reason"] != "abort"
        assert done["token_ids"] == cpython_tokens(data, [{"role": "user", "content": "hello"}], 12)

        # Stop during generation, then the next request still answers
        page.click("#clear-btn")
        chat(page, "tell me a long story", 3000, wait=False)  # ~10 s at the tiny model's speed
        page.wait_for_function("() => /^[3-9]\\d* tokens|^\\d{2,} tokens/.test(document.querySelector('#speed').textContent)",
                               timeout=60_000)
        page.click("#stop-btn")
        page.wait_for_function("() => window.moteApp.state.lastDone && window.moteApp.state.lastDone.reason === 'abort'",
                               timeout=10_000)
        stopped_at = page.evaluate("() => window.moteApp.state.lastDone.n_generated")
        assert stopped_at < 3000
        page.click("#clear-btn")
        again = chat(page, "hello", 12)
        assert again["token_ids"] == done["token_ids"]

        # a reload reads the verified copy from the Cache API
        assert load_first_model(page, base_url) is True

        # a corrupted cached copy is detected, deleted and downloaded again
        page.evaluate("""async () => {
            const cache = await caches.open('mote-models-v1');
            const [key] = await cache.keys();
            const bytes = new Uint8Array(await (await cache.match(key)).arrayBuffer());
            bytes[bytes.length - 1] ^= 0xff;
            await cache.put(key, new Response(bytes));
        }""")
        assert load_first_model(page, base_url) is False
        assert chat(page, "hello", 12)["token_ids"] == done["token_ids"]
        assert load_first_model(page, base_url) is True  # the fresh copy was stored

        # offline: the service worker serves the shell + runtime, the worker's cache the model
        page.evaluate("async () => { await navigator.serviceWorker.ready; }")
        page.wait_for_function("() => navigator.serviceWorker.controller !== null", timeout=10_000)
        context.set_offline(True)
        assert load_first_model(page, base_url) is True
        assert chat(page, "hello", 12)["token_ids"] == done["token_ids"]
        context.close()
