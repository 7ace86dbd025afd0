"""The chat page in headless Chromium, end to end (issue 3's Must show).

One server and one browser per module; the happy path runs in one tab, test after test:
  cold load (stage names, licence notice, phone-sized layout) -> the golden greedy answer, token for
  token (tests/data/tiny_golden.json, the same golden tests/test_tiny_golden.py asserts in CPython)
  with the token count shown live -> Stop mid-answer, then the next request still answers -> reload reads
  the Cache API copy -> a corrupted cached copy is detected (sha256) and downloaded again -> reload
  with the browser context offline still chats.
The Workers setting: its default follows navigator.hardwareConcurrency (at most 4) unless a value was
saved, and a small model still decodes on one worker. A second tab, on "2 cores", runs the same
path on two workers (static/parallel.js): the golden answer, the model stored in the same Cache API
entry worker.js uses, read back on reload, a corrupted copy downloaded again, an offline reload,
and one worker reading the copy two stored.
A second context (service workers blocked, so Playwright can rewrite GET /models), on one worker
and on two, gets a 404, a chunked download cut short, a connection cut before Content-Length, and a
file with the wrong bytes: each shows an error in the page and leaves the model cache empty.
The slow tier loads Gemma 3 270M in the page and compares 16 greedy tokens with the CPython engine,
measuring load times, decode speed and the tab's peak memory (budget 900 MB).

Numbers are printed as `browser-metrics: {...}` lines (run with -s to see them).
"""

from __future__ import annotations

import hashlib
import json
import re
import threading
import time

import pytest

from engine.budget import RESERVE_MARGIN

from tests import tiny_golden as tg
from tests.browser_util import WorkerHeap, chromium, ensure_static_built, renderer_peak_rss, serve_in_thread

pytestmark = pytest.mark.browser

PHONE = {"width": 390, "height": 844}
RANGE_STARTS: list[tuple[int, int]] = []   # (percent, first byte asked for) of the /flaky/ route's Range requests
STALL_STARTS: list[int] = []               # first byte asked for by the /stall/ route's Range requests
STALL_RESUMED = threading.Event()          # a Range request came: the stalled response may end
SCREENSHOT = "/tmp/mote-phone.png"

# Before any page script: record every worker event (type, stage, phase) and every text #speed shows.
# Events come from static/worker.js, or from a ParallelWorker (an EventTarget that dispatches the
# same protocol events; its shard workers' own messages are not the protocol and are left out).
RECORDER = """
window.__mote = { events: [], speed: [] };
const record = (d) => {
  d = d || {};
  window.__mote.events.push({ type: d.type, stage: d.stage, phase: d.phase, model: !!d.model,
                              cached: d.cached, message: d.message, budget: d.budget, timings: d.timings,
                              early: d.early, loaded: d.loaded, snapshot: d.info ? d.info.runtime_snapshot : undefined,
                              t: performance.now() });
};
const NativeWorker = window.Worker;
window.Worker = class extends NativeWorker {
  constructor(url, options) {
    super(url, options);
    if (String(url).endsWith("/worker.js")) this.addEventListener("message", (e) => record(e.data));
  }
};
const nativeDispatch = EventTarget.prototype.dispatchEvent;
EventTarget.prototype.dispatchEvent = function (event) {
  if (event instanceof MessageEvent && event.type === "message") record(event.data);
  return nativeDispatch.call(this, event);
};
document.addEventListener("DOMContentLoaded", () => {
  const el = document.getElementById("speed");
  new MutationObserver(() => window.__mote.speed.push(el.textContent))
    .observe(el, { childList: true, characterData: true, subtree: true });
});
"""


def metrics(**values) -> None:
    print("\nbrowser-metrics:", json.dumps(values, sort_keys=True))


def worker_memory(page, ready: dict, label: str) -> list[dict]:
    """Each worker's memory after a load and an answer beside its budget (engine/budget.py, estimated
    from the header before the download), checked: the most the worker ever used (peak_bytes,
    static/boot.js memory) is within RESERVE_MARGIN of the estimate (above it: the margin covers it;
    below it by more than twice the margin: the estimate asks for memory it does not use), and its
    heap, grown once to estimate + margin, never grew again (a growth adds at least 20 %; one 64 KiB
    page of rounding). Prints the figures."""
    if page.evaluate("() => typeof window.moteApp.worker.stats === 'function'"):  # several workers
        got = [s["memory"] for s in page.evaluate("async () => await window.moteApp.worker.stats()")]
    else:
        got = [page.evaluate("() => window.moteApp.state.memory")]  # the worker's own report at done
    plans = ready["budget"]["workers"]
    assert len(got) == len(plans), (got, plans)
    rows = [{"wasm": m["wasm_bytes"], "peak": m["peak_bytes"], "estimate": w["total_bytes"], "heap": w["heap_bytes"]}
            for m, w in zip(got, plans)]
    metrics(**{f"{label}_memory_mib": [{k: round(v / 2**20, 1) for k, v in r.items()} for r in rows]})
    for r in rows:
        assert r["estimate"] - 2 * RESERVE_MARGIN <= r["peak"] <= r["estimate"] + RESERVE_MARGIN, rows
        assert r["wasm"] <= r["heap"] + (64 << 10), rows
    return rows


# ---- page driving --------------------------------------------------------------------------------

def open_page(page, base_url: str, query: str = "") -> float:
    """Go to the chat page and wait for the runtime and the model list; returns the boot seconds."""
    page.goto(base_url + "/" + query)
    page.wait_for_function("() => window.moteApp && (window.moteApp.state.runtime || window.moteApp.state.lastError)"
                           " && window.moteApp.state.models.length > 0", timeout=120_000)
    assert page.evaluate("() => window.moteApp.state.lastError") is None
    return page.evaluate("() => window.moteApp.state.bootMs") / 1000


def select_model(page, file: str) -> None:
    i = page.evaluate("(f) => window.moteApp.state.models.findIndex((m) => m.file === f)", file)
    assert i >= 0, f"{file} not in the page's model list"
    page.select_option("#model-select", str(i))


def load_model(page, file: str, heap: WorkerHeap | None = None, timeout_s: float = 60) -> dict:
    """Pick `file`, press Load, wait for ready or error; returns that event plus the seconds taken."""
    select_model(page, file)
    n = page.evaluate("() => window.__mote.events.length")
    page.evaluate("() => { window.__mote.loadStart = performance.now(); }")
    page.click("#load-btn")
    cond = f"() => window.__mote.events.slice({n}).some((e) => (e.type === 'ready' && e.model) || e.type === 'error')"
    try:
        if heap is not None:
            heap.wait_for(cond, timeout_s)
        else:
            page.wait_for_function(cond, timeout=timeout_s * 1000)
    except Exception as e:   # name where the load stopped: the last events the page received
        seen = page.evaluate(f"() => window.__mote.events.slice({n}).slice(-12).map((e) => JSON.stringify("
                             "{...e, info: undefined, model: undefined}).slice(0, 300))")
        raise AssertionError(f"{file}: no ready or error within {timeout_s} s; last events: {seen}") from e
    return page.evaluate(f"""() => {{
        const e = window.__mote.events.slice({n}).find((e) => (e.type === 'ready' && e.model) || e.type === 'error');
        return {{ ...e, seconds: (e.t - window.__mote.loadStart) / 1000,
                 phases: window.__mote.events.slice({n}).filter((e) => e.type === 'progress').map((e) => e.phase) }};
    }}""")


def chat(page, text: str, max_tokens: int, wait: bool = True, heap: WorkerHeap | None = None,
         timeout_s: float = 60) -> dict | None:
    """Send `text` greedily (temperature 0) and, unless wait=False, return the page's lastDone."""
    page.evaluate("() => { document.getElementById('settings').open = true; }")
    page.fill("#temperature", "0")
    page.fill("#max_tokens", str(max_tokens))
    page.evaluate("() => { window.__before = window.moteApp.state.lastDone; window.__mote.speed = []; }")
    page.fill("#prompt", text)
    page.click("#send-btn")
    if not wait:
        return None
    cond = "() => window.moteApp.state.lastDone !== window.__before || window.moteApp.state.lastError"
    if heap is not None:
        heap.wait_for(cond, timeout_s)
    else:
        page.wait_for_function(cond, timeout=timeout_s * 1000)
    assert page.evaluate("() => window.moteApp.state.lastError") is None
    return page.evaluate("() => window.moteApp.state.lastDone")


def opening_length(data: bytes) -> int:
    """Tokens of a new chat the worker may have prefilled while idle (engine.chat.opening_tokens)."""
    from engine.chat import ChatTemplate, opening_tokens
    from engine.gguf import GGUFFile
    from engine.tokenizer import Tokenizer
    head = GGUFFile(data)
    return len(opening_tokens(Tokenizer.from_metadata(head.metadata), ChatTemplate.from_metadata(head.metadata)))


def rendered_text(page, markdown: str) -> str:
    """The text static/markdown.js shows for `markdown` (what an answer's body must read)."""
    return page.evaluate("""async (t) => {
        const { renderMarkdown } = await import('/static/markdown.js');
        const box = document.createElement('div');
        box.append(renderMarkdown(t));
        return box.textContent;
    }""", markdown)


CHECKSUM_SUFFIX = ".checksum"  # static/model-source.js: a cached copy's checksum is kept at its key + this


def model_cache_keys(page) -> list[str]:
    """The model cache's copies (their checksums, kept beside them, left out)."""
    return [k for k in page.evaluate("async () => (await (await caches.open('mote-models-v1')).keys()).map((r) => r.url)")
            if not k.endswith(CHECKSUM_SUFFIX)]


def cached_model(page) -> dict | None:
    """The model cache's (first) copy: key, headers, the sha256 of its bytes, and whether the checksum
    kept beside it is theirs (static/snapshot.js checksum; None: none kept); None if empty."""
    return page.evaluate("""async (suffix) => {
        const { checksum } = await import('/static/snapshot.js');
        const cache = await caches.open('mote-models-v1');
        const key = (await cache.keys()).find((k) => !k.url.endsWith(suffix));
        if (!key) return null;
        const r = await cache.match(key);
        const bytes = new Uint8Array(await r.arrayBuffer());
        const digest = await crypto.subtle.digest('SHA-256', bytes);
        const kept = await cache.match(key.url + suffix);
        return { key: key.url, type: r.headers.get('Content-Type'), sha256: r.headers.get('X-Mote-Sha256'),
                 size: r.headers.get('X-Mote-Size'),
                 bytes_sha256: Array.from(new Uint8Array(digest), (b) => b.toString(16).padStart(2, '0')).join(''),
                 checksum: kept ? (await kept.text()) === checksum(bytes) : null };
    }""", CHECKSUM_SUFFIX)


def corrupt_cached_model(page) -> None:
    """Flip one byte in the middle of the cached model (same length: only its check can tell)."""
    page.evaluate("""async (suffix) => {
        const cache = await caches.open('mote-models-v1');
        const key = (await cache.keys()).find((k) => !k.url.endsWith(suffix));
        const bytes = new Uint8Array(await (await cache.match(key)).arrayBuffer());
        bytes[bytes.length >> 1] ^= 0xff;
        await cache.put(key, new Response(bytes));
    }""", CHECKSUM_SUFFIX)


def set_kept_checksum(page, text: str | None) -> None:
    """Replace the checksum kept beside the cached model with `text` (None: delete it, as for a copy
    stored before checksums were kept)."""
    page.evaluate("""async ([suffix, text]) => {
        const cache = await caches.open('mote-models-v1');
        const key = (await cache.keys()).find((k) => !k.url.endsWith(suffix));
        if (text === null) await cache.delete(key.url + suffix);
        else await cache.put(key.url + suffix, new Response(text));
    }""", [CHECKSUM_SUFFIX, text])


def stored_entry(base_url: str, data: bytes) -> dict:
    """What cached_model() must read after a verified store, by worker.js or a ParallelWorker alike."""
    sha = hashlib.sha256(data).hexdigest()
    return {"key": f"{base_url}/__mote_models__/{sha}", "type": "application/octet-stream", "sha256": sha,
            "size": str(len(data)), "bytes_sha256": sha, "checksum": True}


def cores(n: int, memory_gb: float | None = None) -> str:
    """An init script under which navigator.hardwareConcurrency is `n` (before any page script), and
    navigator.deviceMemory `memory_gb` (None: as the browser reports it)."""
    script = f"Object.defineProperty(Navigator.prototype, 'hardwareConcurrency', {{ get: () => {n}, configurable: true }});"
    if memory_gb is not None:
        script += f"Object.defineProperty(Navigator.prototype, 'deviceMemory', {{ get: () => {memory_gb}, configurable: true }});"
    return script


# ---- fixtures ------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def golden() -> dict:
    return tg.load_golden()


@pytest.fixture(scope="module")
def site(tmp_path_factory, golden):
    """The dev server with the tiny golden model, a tiny gemma3 (licence notice) and broken routes."""
    pytest.importorskip("fastapi")
    pytest.importorskip("gguf")
    from fastapi import Header
    from fastapi.responses import Response, StreamingResponse

    from tests.tiny_models import write_tiny
    from web.app import Settings, create_app

    static = ensure_static_built()
    models = tmp_path_factory.mktemp("models")
    data = tg.write_model(models / tg.FILE_NAME, golden).read_bytes()
    assert hashlib.sha256(data).hexdigest() == golden["model"]["sha256"]
    write_tiny(models / "tiny-gemma3.gguf", "gemma3", seed=1)
    # 64 KiB chunks (the smallest the page accepts): the golden model is 5 chunks, the last one short
    app = create_app(Settings(models_dir=models, static_dir=static, chunk_bytes=1 << 16))
    octet = "application/octet-stream"

    # Test-only routes serving bad copies of the golden model (GET /models is rewritten to list them).
    @app.get("/broken/chunked-short.gguf")
    def chunked_short():   # no Content-Length, ends cleanly after half the bytes
        return StreamingResponse(iter([data[: len(data) // 2]]), media_type=octet)

    @app.get("/broken/connection-cut.gguf")
    def connection_cut():  # promises every byte, closes the connection after half of them
        return StreamingResponse(iter([data[: len(data) // 2]]), media_type=octet,
                                 headers={"Content-Length": str(len(data))})

    @app.get("/flaky/{percent}/model.gguf")
    def flaky(percent: int, range: str | None = Header(None), if_range: str | None = Header(None)):
        """A whole-file GET breaks off after `percent` % of the bytes; a Range request gets the rest."""
        etag = f'"{hashlib.sha256(data).hexdigest()}"'
        wanted = range
        if wanted:
            if (if_range or etag) != etag:
                return Response(data, media_type=octet, headers={"ETag": etag})
            start = int(wanted.removeprefix("bytes=").split("-")[0])
            RANGE_STARTS.append((percent, start))
            return Response(data[start:], status_code=206, media_type=octet, headers={
                "ETag": etag, "Content-Range": f"bytes {start}-{len(data) - 1}/{len(data)}"})
        cut = len(data) * percent // 100

        def body():
            yield data[:cut]
            time.sleep(0.5)                         # (those bytes reach the page first, however busy it is)
            raise ConnectionResetError("cut")       # the connection drops mid-body
        return StreamingResponse(body(), media_type=octet, headers={"Content-Length": str(len(data)), "ETag": etag})

    @app.get("/stall/model.gguf")
    def stall(range: str | None = Header(None)):
        """A whole-file GET sends half the bytes, then nothing while the connection stays open; a
        Range request gets the rest (and ends the stalled response)."""
        if range:
            start = int(range.removeprefix("bytes=").split("-")[0])
            STALL_STARTS.append(start)
            STALL_RESUMED.set()
            return Response(data[start:], status_code=206, media_type=octet,
                            headers={"Content-Range": f"bytes {start}-{len(data) - 1}/{len(data)}"})
        STALL_RESUMED.clear()

        def body():
            yield data[: len(data) // 2]
            STALL_RESUMED.wait(60)
            raise ConnectionResetError("the stalled response ends")
        return StreamingResponse(body(), media_type=octet, headers={"Content-Length": str(len(data))})

    @app.get("/silent/model.gguf")
    def silent():          # accepts the request and answers only after 20 s
        time.sleep(20)
        return Response(data, media_type=octet)

    @app.get("/broken/wrong-bytes.gguf")
    def wrong_bytes():     # full length, one byte changed: only the sha256 can tell
        bad = bytearray(data)
        bad[len(bad) // 2] ^= 0x5A
        return Response(bytes(bad), media_type=octet)

    with serve_in_thread(app) as url:
        yield url, data


@pytest.fixture(scope="module")
def browser():
    with chromium() as b:
        yield b


def phone_tab(browser, *init_scripts: str):
    """A phone-sized tab in a context of its own, with the event recorder and a console log:
    (page, context, logs). The caller closes the context."""
    context = browser.new_context(viewport=PHONE)
    for script in (*init_scripts, RECORDER):
        context.add_init_script(script)
    page = context.new_page()
    logs: list[str] = []
    page.on("console", lambda m: logs.append(f"{m.type}: {m.text}"))
    page.on("pageerror", lambda e: logs.append(f"pageerror: {e}"))
    return page, context, logs


@pytest.fixture(scope="module")
def tab(browser, site):
    """One phone-sized tab for the happy path; its tests run in file order and build on each other."""
    page, context, logs = phone_tab(browser)
    yield page, context, logs
    context.close()


# ---- the happy path, one tab ---------------------------------------------------------------------

def test_cold_load_shows_stages_and_licence(tab, site):
    page, _, _ = tab
    base_url, data = site
    boot_s = open_page(page, base_url)
    assert page.locator("#stages li").all_inner_texts() == ["runtime", "numpy", "engine", "weights"]

    # licence notice: Gemma's terms for a gemma model, the file's own licence for the tiny model
    select_model(page, "tiny-gemma3.gguf")
    assert page.locator("#licence").is_visible()
    assert "Gemma Terms of Use" in page.locator("#licence").inner_text()
    assert page.locator("#licence a").get_attribute("href") == "https://ai.google.dev/gemma/terms"
    select_model(page, tg.FILE_NAME)
    assert page.locator("#licence").inner_text() == "Licence: apache-2.0"

    ready = load_model(page, tg.FILE_NAME)
    assert ready["type"] == "ready" and ready["cached"] is False, ready
    # every stage was reported by name, in order, and the page marks each one done
    stages = page.evaluate("() => [...new Set(window.__mote.events.filter((e) => e.type === 'progress').map((e) => e.stage))]")
    assert stages == ["runtime", "numpy", "engine", "weights"]
    assert {"download", "verify", "store", "parse"} <= set(ready["phases"])
    assert ready["snapshot"] == "build", ready              # started from the build's snapshot, kept for the next visit
    assert page.evaluate("() => [...document.querySelectorAll('#stages li')].map((li) => li.className)") == ["done"] * 4
    detail = page.locator("#load-detail").inner_text()
    assert "loaded from the network" in detail
    assert cached_model(page) == stored_entry(base_url, data)
    metrics(tiny_cold_boot_s=round(boot_s, 2), tiny_cold_model_s=round(ready["seconds"], 3), model_bytes=len(data))


def test_golden_greedy_tokens_in_page(tab, golden):
    """The page's greedy answer is token for token tests/data/tiny_golden.json (CPython's answer)."""
    page, _, logs = tab
    page.wait_for_timeout(1200)   # idle past the worker's warm-up (static/worker.js warmUpWhenIdle)
    done = chat(page, golden["messages"][0]["content"], golden["max_tokens"])
    assert done["reason"] == golden["reason"], logs
    assert done["warm_s"] > 0.3, done["warm_s"]   # it ran, and the answer after it is still the golden one
    assert done["n_prompt"] == len(golden["prompt_tokens"])
    # the chat template's opening was prefilled once idle (bridge.prefill_opening): reused, same tokens
    assert done["n_reused"] >= 2, done
    assert done["token_ids"] == golden["tokens"]
    assert done["full_text"] == golden["text"]
    assert page.locator(".msg.assistant .body").last.text_content() == rendered_text(page, golden["text"])

    # the token count shown live while streaming, then the engine's speeds (its done event)
    speeds = page.evaluate("() => window.__mote.speed")
    live = [s for s in speeds if re.fullmatch(r"\d+ tokens", s)]
    assert len(live) >= golden["max_tokens"] // 2, speeds[:5]
    assert page.locator("#speed").inner_text().startswith(f"{golden['max_tokens']} tokens · prefill ")

    # phone-sized screen: nothing wider than the viewport, the composer and Stop in view
    assert page.evaluate("() => document.documentElement.scrollWidth") <= PHONE["width"]
    for sel in ("#prompt", "#send-btn", "#stop-btn", "#model-select", "#load-btn"):
        box = page.locator(sel).bounding_box()
        assert box and box["x"] >= 0 and box["x"] + box["width"] <= PHONE["width"], (sel, box)
    page.screenshot(path=SCREENSHOT, full_page=True)
    metrics(tiny_decode_tok_s=round(done["decode_tok_s"], 1), tiny_prefill_tok_s=round(done["prefill_tok_s"], 1))


def stop_then_answer(page, golden: dict) -> None:
    """Stop a long generation after a few tokens (done with reason "abort", the buttons flip back),
    then a new request gives the golden greedy answer."""
    page.click("#clear-btn")
    # Stop is clicked from inside the page as the third token shows: the tiny model answers 1900
    # tokens in seconds, less than a click from here may take to land on a loaded machine.
    page.evaluate("""() => {
        const speed = document.getElementById('speed'), stop = document.getElementById('stop-btn');
        const seen = new MutationObserver(() => {
            if (!/^([3-9]|\\d{2,}) tokens$/.test(speed.textContent)) return;
            seen.disconnect();
            window.__stopWasEnabled = !stop.disabled;
            stop.click();
        });
        seen.observe(speed, { childList: true, characterData: true, subtree: true });
    }""")
    chat(page, "Tell me a very long story about a cat.", 1900, wait=False)
    page.wait_for_function("() => window.moteApp.state.lastDone && window.moteApp.state.lastDone.reason === 'abort'",
                           timeout=30_000)
    assert page.evaluate("() => window.__stopWasEnabled") is True
    stopped = page.evaluate("() => window.moteApp.state.lastDone.n_generated")
    assert 3 <= stopped < 1900
    assert page.locator("#speed").inner_text() == f"stopped after {stopped} tokens"
    assert page.locator("#send-btn").is_enabled() and not page.locator("#stop-btn").is_enabled()
    page.click("#clear-btn")
    again = chat(page, golden["messages"][0]["content"], golden["max_tokens"])
    assert again["token_ids"] == golden["tokens"]


def test_stop_during_generation_then_next_request_answers(tab, golden):
    stop_then_answer(tab[0], golden)


def turns(page) -> list[dict]:
    return page.evaluate("() => window.moteApp.state.turns")


def test_conversation_reuses_the_cache_and_edit_regenerate_new_chat(tab, site, golden):
    """Turn 2 prefills only what turn 1 did not; Regenerate recomputes only the last prompt token
    and gives the same greedy answer; Edit cuts the conversation at a user turn and recomputes
    from where the text changed; New chat forgets the conversation (the same prompt is computed
    whole, but for the chat template's opening, which the worker may have prefilled again)."""
    page, _, logs = tab
    opening = opening_length(site[1])       # a new chat may reuse this much: prefilled while idle
    page.click("#clear-btn")
    one = chat(page, "Hello there", 6)
    two = chat(page, "And then?", 6)
    assert one["n_reused"] <= opening and two["n_reused"] >= one["n_prompt"], (one, two)
    assert [t["n_reused"] for t in turns(page)] == [one["n_reused"], two["n_reused"]]
    assert all(t["ttft_ms"] > 0 for t in turns(page))
    assert page.locator("#log .msg").count() == 4

    page.locator("#log .msg.assistant .action").last.click()          # Regenerate the last answer
    page.wait_for_function("() => window.moteApp.state.turns.length === 3 && !window.moteApp.state.generating")
    again = page.evaluate("() => window.moteApp.state.lastDone")
    assert again["n_reused"] == two["n_prompt"] - 1 and again["token_ids"] == two["token_ids"]
    assert page.locator("#log .msg").count() == 4 and len(page.evaluate("() => window.moteApp.state.history")) == 4

    page.locator("#log .msg.user .action").first.click()               # Edit the first question
    assert page.input_value("#prompt") == "Hello there" and page.locator("#log .msg").count() == 0
    edited = chat(page, "Hello there, friend", 6)
    assert 0 < edited["n_reused"] < edited["n_prompt"] - 1, edited

    page.click("#clear-btn")                    # New chat: nothing of the conversation reused
    fresh = chat(page, "Hello there, friend", 6)
    assert fresh["n_reused"] <= opening and fresh["token_ids"] == edited["token_ids"], logs
    page.click("#clear-btn")


HOSTILE_MARKDOWN = [
    "<script>window.__pwned = 1</script>",
    '<img src=x onerror="window.__pwned = 2">',
    "[click](javascript:window.__pwned=3)",
    '```html\n</code></pre><img src=x onerror="window.__pwned=4">\n```',
    '`<svg onload="window.__pwned=5">`',
    "**<iframe src=\"javascript:window.__pwned=6\"></iframe>**",
    '[ok](https://example.org/" onmouseover="window.__pwned=7)',
    "- <details open ontoggle=\"window.__pwned=8\">",
]


def test_hostile_markdown_renders_as_text(tab):
    """Model text reaches the DOM only as text nodes: tags, handlers and javascript: links stay
    literal, and nothing runs."""
    page, _, _ = tab
    shown = page.evaluate("""async (cases) => {
        const { renderMarkdown } = await import('/static/markdown.js');
        const box = document.createElement('div');
        box.className = 'msg assistant';
        document.getElementById('log').append(box);
        for (const text of cases) box.append(renderMarkdown(text));
        await new Promise((r) => setTimeout(r, 300));       // let any handler fire
        const tags = [...new Set([...box.querySelectorAll('*')].map((e) => e.tagName.toLowerCase()))].sort();
        const links = [...box.querySelectorAll('a')].map((a) => a.getAttribute('href'));
        const attrs = [...box.querySelectorAll('*')].flatMap((e) => [...e.attributes].map((a) => a.name));
        const text = box.textContent;
        box.remove();
        return { pwned: window.__pwned ?? null, tags, links, attrs: [...new Set(attrs)].sort(), text };
    }""", HOSTILE_MARKDOWN)
    assert shown["pwned"] is None
    assert set(shown["tags"]) <= {"p", "code", "pre", "div", "span", "button", "strong", "ul", "li", "a"}, shown["tags"]
    assert all(h.startswith("https://") for h in shown["links"]), shown["links"]
    assert set(shown["attrs"]) <= {"class", "type", "href", "target", "rel"}, shown["attrs"]
    for needle in ("<script>", "onerror=", "javascript:window.__pwned=3", "<svg onload=", "<iframe"):
        assert needle in shown["text"]


def test_a_worker_that_fails_is_replaced_and_the_page_goes_on(tab, site, golden):
    """An uncaught error inside the worker: the page says the worker stopped, starts a fresh one
    (the old one is not trusted), and Load and chat work again."""
    page, _, _ = tab
    before = page.evaluate("() => window.moteApp.state.stoppedCount")
    (worker,) = [w for w in page.workers if w.url.endswith("/worker.js")]
    worker.evaluate("setTimeout(() => { throw new Error('simulated crash'); })")
    page.wait_for_function(f"() => window.moteApp.state.stoppedCount === {before + 1} && window.moteApp.state.runtime",
                           timeout=60_000)
    shown = page.locator(".msg.error").last.inner_text()
    assert "The worker stopped" in shown and "simulated crash" in shown and "press Load" in shown, shown
    assert page.evaluate("() => window.moteApp.state.model") is None
    ready = load_model(page, tg.FILE_NAME)
    assert ready["type"] == "ready", ready
    assert chat(page, golden["messages"][0]["content"], golden["max_tokens"])["token_ids"] == golden["tokens"]
    page.click("#clear-btn")


def test_a_worker_terminated_silently_is_found_and_replaced(tab, site, golden):
    """A worker that ends without any error event (as when the browser terminates it): the next
    request's PING goes unanswered, the page says so within 10 s, starts a fresh worker, and Load
    and chat work again."""
    page, _, _ = tab
    before = page.evaluate("() => window.moteApp.state.stoppedCount")
    page.evaluate("() => window.moteApp.worker.terminate()")      # no event reaches the page
    chat(page, "hello", 4, wait=False)
    page.wait_for_function(f"() => window.moteApp.state.stoppedCount === {before + 1} && window.moteApp.state.runtime",
                           timeout=60_000)
    shown = page.locator(".msg.error").last.inner_text()
    assert "did not answer" in shown and "press Load" in shown, shown
    ready = load_model(page, tg.FILE_NAME)
    assert ready["type"] == "ready", ready
    assert chat(page, golden["messages"][0]["content"], golden["max_tokens"])["token_ids"] == golden["tokens"]
    page.click("#clear-btn")


def test_reload_reads_the_cached_model(tab, site, golden):
    page, _, _ = tab
    boot_s = open_page(page, site[0])
    ready = load_model(page, tg.FILE_NAME)
    assert ready["type"] == "ready" and ready["cached"] is True, ready
    assert "download" not in ready["phases"] and "cache" in ready["phases"]
    assert ready["snapshot"] == "restored", ready           # Python started from the first visit's snapshot
    assert "loaded from the offline cache" in page.locator("#load-detail").inner_text()
    assert chat(page, golden["messages"][0]["content"], golden["max_tokens"])["token_ids"] == golden["tokens"]
    metrics(tiny_cached_boot_s=round(boot_s, 2), tiny_cached_model_s=round(ready["seconds"], 3))


def load_during_boot(page, file: str, golden: dict, extra: dict | None = None, boot_first: bool = False) -> dict:
    """A fresh worker asked for `file` at once (as the embed API and the benchmark page ask), then for
    the golden chat: the ready event, its progress phases and which of them were early, the tokens.
    `extra`: more fields of the load request (golden None: no chat). With model_snapshot, the worker is kept until the
    snapshot it saves in the background is in OPFS (at most 30 s). boot_first: a load request
    without the model (with `extra`) comes first, as Mote.load sends one before it knows the model."""
    return page.evaluate("""async ([file, golden, extra, bootFirst]) => {
        const m = window.moteApp.state.models.find((x) => x.file === file);
        const model = { url: m.url, sha256: m.sha256, size: m.size, name: m.name, ...(m.chunks ? { chunks: m.chunks } : {}) };
        const main = document.querySelector('script[src$="/main.js"]').src;   // the page's own (versioned) folder
        const w = new Worker(new URL('worker.js', main), { type: 'module' });
        const began = Date.now();
        const events = [];
        const next = (want) => new Promise((resolve, reject) => {
            w.onmessage = (e) => {
                const d = e.data;
                events.push({ type: d.type, stage: d.stage, phase: d.phase, early: !!d.early });
                if (d.type === 'error') reject(new Error(d.message));
                else if (d.type === want && (want !== 'ready' || d.model)) resolve(d);
            };
        });
        try {
            let got = next('ready');
            if (bootFirst) w.postMessage({ type: 'load', ...extra });
            w.postMessage({ type: 'load', model, ...extra });
            const ready = await got;
            let done = { token_ids: null };
            if (golden) {
                got = next('done');
                w.postMessage({ type: 'generate', id: 1, messages: golden.messages,
                                params: { temperature: 0, max_tokens: golden.max_tokens } });
                done = await got;
            }
            const weights = events.filter((e) => e.type === 'progress' && e.stage === 'weights');
            if (extra.model_snapshot && weights.length > 0) {   // loaded from the file: a snapshot is being saved
                const dir = await (await navigator.storage.getDirectory()).getDirectoryHandle('mote-model', { create: true });
                const saved = async () => {
                    for await (const [n, h] of dir.entries()) {
                        if (!/\\.[0-9a-f]{32}$/.test(n)) continue;
                        // a file listed may be gone by now: saving a snapshot removes the older ones
                        const file = await h.getFile().catch(() => null);
                        if (file && file.lastModified >= began) return true;
                    }
                    return false;
                };
                for (const t0 = performance.now(); !(await saved()) && performance.now() - t0 < 30000; )
                    await new Promise((r) => setTimeout(r, 100));
            }
            return { cached: ready.cached, timings: ready.timings, budget: ready.budget, tokens: done.token_ids,
                     snapshot: ready.info.runtime_snapshot, model: ready.model,
                     phases: weights.map((e) => e.phase), early: weights.filter((e) => e.early).map((e) => e.phase) };
        } finally {
            w.terminate();
        }
    }""", [file, golden, extra or {}, boot_first])


def test_a_load_sent_during_the_boot_reads_the_cached_copy_meanwhile(tab, site, golden):
    """A load that arrives while the worker boots reads the cached copy into WASM memory while numpy
    and the engine load (static/worker.js readWhileBooting), checks its memory budget once the engine
    is up, and answers the golden tokens; a damaged cached copy found then is dropped, and the load
    downloads the model after the boot as before."""
    page, _, _ = tab
    open_page(page, site[0])
    got = load_during_boot(page, tg.FILE_NAME, golden)
    assert got["tokens"] == golden["tokens"]
    assert got["cached"] is True and "weights_early" in got["timings"], got
    assert "cache" in got["early"] and "download" not in got["phases"], got
    assert got["budget"] and got["budget"]["total_bytes"] > 0, got
    corrupt_cached_model(page)
    got = load_during_boot(page, tg.FILE_NAME, golden)
    assert got["tokens"] == golden["tokens"]
    assert got["cached"] is False and "weights_early" not in got["timings"], got
    assert "cache-corrupt" in got["early"], got                        # found during the boot, dropped
    assert "download" in got["phases"] and "download" not in got["early"], got   # downloaded after it
    assert cached_model(page) == stored_entry(*site)                    # the good copy stored again


def runtime_snapshots(page, folder: str = "mote-runtime") -> list[dict]:
    """The runtime snapshot folder's files (static/boot.js, OPFS; `folder` "mote-model": the model
    snapshot's): name, the key and checksum the name gives ("<key>.<checksum>"; none for any other
    name), and the checksum of the bytes (static/snapshot.js checksum)."""
    return page.evaluate("""async (folder) => {
        const { checksum } = await import('/static/snapshot.js');
        const dir = await (await navigator.storage.getDirectory()).getDirectoryHandle(folder, { create: true });
        const out = [];
        for await (const [name, handle] of dir.entries()) {
            const m = name.match(/^(.+)\\.([0-9a-f]{32})$/);
            const bytes = new Uint8Array(await (await handle.getFile()).arrayBuffer());
            out.push({ name, key: m ? m[1] : null, checksum: m ? m[2] : null, bytes_checksum: checksum(bytes) });
        }
        return out;
    }""", folder)


def damage_runtime_snapshot(page, how: str, folder: str = "mote-runtime") -> None:
    """'flip': one byte changed, the name's checksum kept (the check must catch it); 'rehash': the bytes
    of another snapshot format (Pyodide's restore must refuse them) under a name with their checksum."""
    page.evaluate("""async ([how, folder]) => {
        const { checksum } = await import('/static/snapshot.js');
        const dir = await (await navigator.storage.getDirectory()).getDirectoryHandle(folder);
        const [[name, handle]] = await Array.fromAsync(dir.entries());
        const bytes = new Uint8Array(await (await handle.getFile()).arrayBuffer());
        let target = name;
        if (how === 'flip') bytes[bytes.length >> 1] ^= 0xff;
        else {
            bytes.fill(0x5a, 0, 64);                      // magic number and build id gone
            target = name.replace(/[0-9a-f]{32}$/, checksum(bytes));
            await dir.removeEntry(name);
        }
        const out = await (await dir.getFileHandle(target, { create: true })).createWritable();
        await out.write(bytes);
        await out.close();
    }""", [how, folder])


@pytest.mark.parametrize("how", ["flip", "rehash"])
def test_a_damaged_runtime_snapshot_means_a_normal_start(tab, site, golden, how):
    """A damaged saved snapshot is never restored: Python starts from the build's instead, answers the
    golden tokens, and a good copy replaces the bad one."""
    page, _, _ = tab
    [saved] = runtime_snapshots(page)
    assert saved["checksum"] == saved["bytes_checksum"]
    damage_runtime_snapshot(page, how)
    stale = "model-0123456789abcdef-" + "0" * 24 + "." + "0" * 32   # another build's model snapshot
    page.evaluate("""async (name) => {
        const dir = await (await navigator.storage.getDirectory()).getDirectoryHandle('mote-model', { create: true });
        await dir.getFileHandle(name, { create: true });
    }""", stale)
    open_page(page, site[0])
    ready = load_model(page, tg.FILE_NAME)
    assert ready["type"] == "ready" and ready["snapshot"] == "build", ready    # the build's, kept again
    assert chat(page, golden["messages"][0]["content"], golden["max_tokens"])["token_ids"] == golden["tokens"]
    deadline = time.monotonic() + 20                        # saved in the background: wait for it
    good = lambda files: len(files) == 1 and files[0]["checksum"] == files[0]["bytes_checksum"]
    while not good(now := runtime_snapshots(page)) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert len(now) == 1 and now[0]["key"] == saved["key"] and now[0]["checksum"] == now[0]["bytes_checksum"], now
    # a new runtime snapshot is a new build's first start: another build's model snapshot is deleted
    while stale in (names := [f["name"] for f in runtime_snapshots(page, "mote-model")]) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert stale not in names, names


@pytest.mark.parametrize("how", ["flip", "short", "missing", "huge"])
def test_a_bad_build_snapshot_means_a_normal_start(browser, site, golden, how):
    """The build's runtime snapshot damaged on the way (a byte changed, cut short, not found) or a
    manifest that names an impossible size for it (1 TiB: no buffer is made): a first visit never
    starts from it. Python starts normally, saves a snapshot of its own for the next visit and answers
    the golden tokens."""
    context = browser.new_context(viewport=PHONE, service_workers="block")
    context.add_init_script(RECORDER)

    def damaged(route):
        if how == "missing":
            route.fulfill(status=404, body="not found")
            return
        body = bytearray(route.fetch().body())
        if how == "flip":
            body[len(body) // 3] ^= 0x01
        else:
            del body[-4096:]
        route.fulfill(status=200, body=bytes(body), headers={"content-type": "application/octet-stream"})

    def manifest(route):
        response = route.fetch()
        body = response.json()
        body["snapshot"]["size"] = 1 << 40
        route.fulfill(response=response, json=body)

    if how == "huge":
        context.route("**/build-manifest.json", manifest)
    else:
        context.route("**/runtime.snapshot", damaged)
    page = context.new_page()
    try:
        open_page(page, site[0])
        ready = load_model(page, tg.FILE_NAME)
        assert ready["type"] == "ready" and ready["snapshot"] == "stored", ready
        assert chat(page, golden["messages"][0]["content"], golden["max_tokens"])["token_ids"] == golden["tokens"]
    finally:
        context.close()


@pytest.mark.parametrize("how", ["flip", "rehash"])
def test_a_model_snapshot_is_a_later_load_without_reading_the_model(tab, site, golden, how):
    """Asked for (LoadRequest.model_snapshot), a load saves a snapshot of Python's memory with the model
    loaded, and the next worker asked for that model starts from it: ready without reading a byte of
    the model (no weights stage), cached, the same model info, the golden tokens. A load that does not
    ask ignores it. A damaged one is never restored: that load reads the cached model as usual, answers
    the golden tokens and saves a good snapshot again under the same key."""
    page, _, _ = tab
    open_page(page, site[0])
    page.evaluate("async () => (await navigator.storage.getDirectory()).removeEntry('mote-model', { recursive: true })"
                  ".catch(() => {})")   # none saved yet (the other parametrization saved one)
    asked = {"model_snapshot": True}
    first = load_during_boot(page, tg.FILE_NAME, golden, asked)
    assert first["tokens"] == golden["tokens"] and first["snapshot"] != "model", first
    [saved] = runtime_snapshots(page, "mote-model")
    assert saved["key"].startswith("model-") and saved["checksum"] == saved["bytes_checksum"], saved
    again = load_during_boot(page, tg.FILE_NAME, golden, asked)
    assert again["snapshot"] == "model" and again["cached"] is True, again
    assert again["phases"] == [] and "weights" not in again["timings"] and "model" not in again["timings"], again
    assert again["model"] == first["model"]
    assert again["tokens"] == golden["tokens"]
    plain = load_during_boot(page, tg.FILE_NAME, golden)
    assert plain["snapshot"] != "model" and "cache" in plain["phases"], plain
    assert plain["tokens"] == golden["tokens"]

    damage_runtime_snapshot(page, how, "mote-model")
    after = load_during_boot(page, tg.FILE_NAME, golden, asked)
    assert after["snapshot"] != "model" and "cache" in after["phases"], after
    assert after["tokens"] == golden["tokens"]
    [good] = runtime_snapshots(page, "mote-model")
    assert good["key"] == saved["key"] and good["checksum"] == good["bytes_checksum"], good


def load_on_two_workers(page, file: str, golden: dict, extra: dict) -> dict:
    """load_during_boot's figures for a fresh ParallelWorker of 2 shards (static/parallel.js), asked for
    `file` at once and then for the golden chat. With model_snapshot, it is kept until both shards'
    snapshots, saved in the background, are in OPFS (at most 30 s)."""
    return page.evaluate("""async ([file, golden, extra]) => {
        const m = window.moteApp.state.models.find((x) => x.file === file);
        const model = { url: m.url, sha256: m.sha256, size: m.size, name: m.name, ...(m.chunks ? { chunks: m.chunks } : {}) };
        const main = document.querySelector('script[src$="/main.js"]').src;
        const { ParallelWorker } = await import(new URL('parallel.js', main));
        const w = new ParallelWorker({ workers: 2 });
        const began = Date.now();
        const events = [];
        const next = (want) => new Promise((resolve, reject) => {
            w.onmessage = (e) => {
                const d = e.data;
                events.push({ type: d.type, stage: d.stage, phase: d.phase });
                if (d.type === 'error') reject(new Error(d.message));
                else if (d.type === want && (want !== 'ready' || d.model)) resolve(d);
            };
        });
        try {
            let got = next('ready');
            w.postMessage({ type: 'load', model, ...extra });
            const ready = await got;
            got = next('done');
            w.postMessage({ type: 'generate', id: 1, messages: golden.messages,
                            params: { temperature: 0, max_tokens: golden.max_tokens } });
            const done = await got;
            const weights = events.filter((e) => e.type === 'progress' && e.stage === 'weights');
            if (extra.model_snapshot && weights.length > 0) {   // loaded from the file: both shards save theirs
                const dir = await (await navigator.storage.getDirectory()).getDirectoryHandle('mote-model', { create: true });
                const saved = async () => {
                    let n = 0;
                    for await (const [name, h] of dir.entries()) {
                        if (!/-s[01]\\.[0-9a-f]{32}$/.test(name)) continue;
                        const file = await h.getFile().catch(() => null);   // gone: saving one removes older ones
                        if (file && file.lastModified >= began) n++;
                    }
                    return n === 2;
                };
                for (const t0 = performance.now(); !(await saved()) && performance.now() - t0 < 30000; )
                    await new Promise((r) => setTimeout(r, 100));
            }
            return { cached: ready.cached, timings: ready.timings, tokens: done.token_ids, snapshot: ready.info.runtime_snapshot,
                     shards: ready.model.shards.map(({ held_bytes, ...rest }) => rest), phases: weights.map((e) => e.phase) };
        } finally {
            w.terminate();
        }
    }""", [file, golden, extra])


def test_two_workers_start_from_their_shards_model_snapshots(tab, site, golden):
    """LoadRequest.model_snapshot on 2 workers: after the load each shard saves a snapshot of its memory
    (one file per shard, under one load's key), and the next ParallelWorker asked for that model starts
    both shards from them: ready without reading the model, the same shards, the golden tokens. With
    one shard's file gone, the other's is not used: the load reads the cached model, answers the golden
    tokens and saves both again. A one-worker load never starts from a shard's file."""
    page, _, _ = tab
    open_page(page, site[0])
    page.evaluate("async () => (await navigator.storage.getDirectory()).removeEntry('mote-model', { recursive: true })"
                  ".catch(() => {})")
    asked = {"model_snapshot": True}
    first = load_on_two_workers(page, tg.FILE_NAME, golden, asked)
    assert first["tokens"] == golden["tokens"] and first["snapshot"] != "model" and "cache" in first["phases"], first
    saved = sorted(runtime_snapshots(page, "mote-model"), key=lambda f: f["key"])
    assert [f["key"][-3:] for f in saved] == ["-s0", "-s1"] and saved[0]["key"][:-3] == saved[1]["key"][:-3], saved
    assert all(f["checksum"] == f["bytes_checksum"] for f in saved), saved
    again = load_on_two_workers(page, tg.FILE_NAME, golden, asked)
    assert again["snapshot"] == "model" and again["cached"] is True and again["phases"] == [], again
    assert "weights" not in again["timings"] and "model" not in again["timings"], again
    assert again["shards"] == first["shards"] and again["tokens"] == golden["tokens"]

    page.evaluate("""async (name) => (await (await navigator.storage.getDirectory()).getDirectoryHandle('mote-model'))
                     .removeEntry(name)""", saved[1]["name"])
    partial = load_on_two_workers(page, tg.FILE_NAME, golden, asked)
    assert "cache" in partial["phases"] and "model" in partial["timings"], partial   # shard 0's model was freed
    assert partial["tokens"] == golden["tokens"]
    now = sorted(runtime_snapshots(page, "mote-model"), key=lambda f: f["key"])
    assert [f["key"] for f in now] == [f["key"] for f in saved], now
    assert all(f["checksum"] == f["bytes_checksum"] for f in now), now

    one = load_during_boot(page, tg.FILE_NAME, golden, asked, boot_first=True)
    assert one["snapshot"] != "model" and "cache" in one["phases"], one      # the shards' files are not one worker's
    assert one["tokens"] == golden["tokens"]
    page.evaluate("async () => (await navigator.storage.getDirectory()).removeEntry('mote-model', { recursive: true })")


def test_a_worker_booted_before_its_model_is_named_starts_from_the_model_snapshot(tab, site, golden):
    """Mote.load with modelSnapshot boots its worker before it knows the model: the worker starts from
    the saved model snapshot at once, and the load that then names that model is ready with no weights
    stage and answers the golden tokens. A load that names another model frees the snapshot's and
    loads its own as usual; the snapshot kept is then that model's."""
    page, _, _ = tab
    open_page(page, site[0])
    asked = {"model_snapshot": True}
    load_during_boot(page, tg.FILE_NAME, golden, asked)              # saved (or already there)
    [saved] = runtime_snapshots(page, "mote-model")
    same = load_during_boot(page, tg.FILE_NAME, golden, asked, boot_first=True)
    assert same["snapshot"] == "model" and same["phases"] == [], same
    assert same["tokens"] == golden["tokens"]
    other = load_during_boot(page, "tiny-gemma3.gguf", None, asked, boot_first=True)
    assert other["snapshot"] == "model" and other["model"]["architecture"] == "gemma3", other
    assert "cache" in other["phases"] or "download" in other["phases"], other
    # (the new file is moved into place before the old one is deleted: wait for that too)
    deadline = time.monotonic() + 20
    while len(files := runtime_snapshots(page, "mote-model")) != 1 and time.monotonic() < deadline:
        time.sleep(0.2)
    [now] = files
    assert now["key"] != saved["key"] and now["checksum"] == now["bytes_checksum"], now
    page.evaluate("""async (keep) => {                  // the tests after this one know one cached model
        const cache = await caches.open('mote-models-v1');
        for (const req of await cache.keys()) if (!req.url.includes(keep)) await cache.delete(req);   // (its checksum too)
        await (await navigator.storage.getDirectory()).removeEntry('mote-model', { recursive: true });
    }""", golden["model"]["sha256"])


def test_corrupted_cached_model_is_downloaded_again(tab, site, golden):
    page, _, _ = tab
    assert cached_model(page)["checksum"] is True             # checked by the checksum kept beside it
    corrupt_cached_model(page)
    assert cached_model(page)["bytes_sha256"] != golden["model"]["sha256"]
    open_page(page, site[0])
    ready = load_model(page, tg.FILE_NAME)
    assert ready["type"] == "ready" and ready["cached"] is False, ready
    assert "cache-corrupt" in ready["phases"] and "download" in ready["phases"]
    assert chat(page, golden["messages"][0]["content"], golden["max_tokens"])["token_ids"] == golden["tokens"]
    assert cached_model(page) == stored_entry(*site)          # the good copy replaced the bad one


def test_cached_model_kept_checksum(tab, site, golden):
    """A cached copy is checked by the checksum kept beside it once its chunks passed their sha256. A
    copy with none (stored before checksums were kept) is checked against its chunk list and gets one;
    a kept checksum that is not the copy's counts as a damaged copy: downloaded again, and the right
    checksum kept."""
    page, _, _ = tab
    open_page(page, site[0])
    assert load_model(page, tg.FILE_NAME)["type"] == "ready"       # cached now, if it was not yet
    assert cached_model(page) == stored_entry(*site)
    set_kept_checksum(page, None)
    assert cached_model(page)["checksum"] is None
    open_page(page, site[0])
    ready = load_model(page, tg.FILE_NAME)
    assert ready["type"] == "ready" and ready["cached"] is True and "download" not in ready["phases"], ready
    assert "hash_wait" in ready["timings"], ready["timings"]       # the chunks were hashed
    assert cached_model(page) == stored_entry(*site)                 # and the checksum kept
    open_page(page, site[0])
    ready = load_model(page, tg.FILE_NAME)
    assert ready["type"] == "ready" and ready["cached"] is True, ready
    assert "hash_wait" not in ready["timings"], ready["timings"]   # checked by the checksum alone
    assert chat(page, golden["messages"][0]["content"], golden["max_tokens"])["token_ids"] == golden["tokens"]
    set_kept_checksum(page, "0" * (1 << 20))                        # not one we wrote: never read whole
    open_page(page, site[0])
    ready = load_model(page, tg.FILE_NAME)
    assert ready["type"] == "ready" and ready["cached"] is True and "hash_wait" in ready["timings"], ready
    assert cached_model(page) == stored_entry(*site)                 # hashed, and the checksum kept again
    set_kept_checksum(page, "0" * 32)
    open_page(page, site[0])
    ready = load_model(page, tg.FILE_NAME)
    assert ready["type"] == "ready" and ready["cached"] is False, ready
    assert "cache-corrupt" in ready["phases"] and "download" in ready["phases"], ready["phases"]
    assert chat(page, golden["messages"][0]["content"], golden["max_tokens"])["token_ids"] == golden["tokens"]
    assert cached_model(page) == stored_entry(*site)


def offline_reload_chats(page, context, base_url: str, golden: dict, query: str = "", workers: int = 1) -> float:
    """Go offline once the service worker controls the page, reload, load the cached model on
    `workers` workers and chat: the golden tokens. Returns the page's boot seconds."""
    page.evaluate("async () => { await navigator.serviceWorker.ready; }")
    page.wait_for_function("() => navigator.serviceWorker.controller !== null", timeout=10_000)
    context.set_offline(True)
    try:
        assert page.evaluate("() => fetch('/models/' + 'tiny-golden.gguf', {cache: 'no-store'}).then(() => 'online', () => 'offline')") == "offline"
        boot_s = open_page(page, base_url, query)
        ready = load_model(page, tg.FILE_NAME)
        assert ready["type"] == "ready" and ready["cached"] is True, ready
        if workers > 1:
            assert page.evaluate("() => window.moteApp.worker.n") == workers
        done = chat(page, golden["messages"][0]["content"], golden["max_tokens"])
        assert done["token_ids"] == golden["tokens"]
    finally:
        context.set_offline(False)
    return boot_s


def test_offline_reload_still_chats(tab, site, golden):
    page, context, _ = tab
    boot_s = offline_reload_chats(page, context, site[0], golden)
    metrics(tiny_offline_boot_s=round(boot_s, 2))


# ---- the Workers setting -------------------------------------------------------------------------

WORKERS_READY = "() => window.moteApp && window.moteApp.state.runtime && window.moteApp.state.models.length > 0"


def test_default_workers_follow_the_cores(browser, site, golden):
    """The setting's default is navigator.hardwareConcurrency, at most 4; a saved value wins; a model
    under 50 MB (no ?minParallelBytes) still decodes on one worker, and the status line says so."""
    base_url, _ = site
    defaults = {}
    for n, gb in ((1, 8), (3, 8), (16, 8), (8, 4), (8, 2), (8, 0.5)):
        context = browser.new_context()
        context.add_init_script(cores(n, gb))
        page = context.new_page()
        page.goto(base_url + "/")
        page.wait_for_function("() => window.moteApp !== undefined", timeout=30_000)
        defaults[(n, gb)] = page.input_value("#workers")
        context.close()
    # cores, at most 4, at most one per 2 GB of device memory
    assert defaults == {(1, 8): "1", (3, 8): "3", (16, 8): "4", (8, 4): "2", (8, 2): "1", (8, 0.5): "1"}

    context = browser.new_context(viewport=PHONE)
    context.add_init_script(cores(3))
    context.add_init_script(RECORDER)
    page = context.new_page()
    try:
        open_page(page, base_url)
        assert page.input_value("#workers") == "3"
        assert page.evaluate("() => window.moteApp.workersFor({architecture: 'gemma3', size: 60e6})") == 3
        assert page.evaluate("() => window.moteApp.workersFor({architecture: 'atome', size: 1e9})") == 1
        ready = load_model(page, tg.FILE_NAME)               # 23 kB: one worker whatever the setting
        assert ready["type"] == "ready", ready
        assert page.evaluate("() => window.moteApp.state.workers") == 1
        assert page.evaluate("() => window.moteApp.worker instanceof Worker")   # worker.js, not a ParallelWorker
        assert page.locator("#status").inner_text().startswith("1 worker: Python ")
        assert chat(page, golden["messages"][0]["content"], 4)["token_ids"] == golden["tokens"][:4]

        # a saved choice wins over the cores
        page.evaluate("() => localStorage.setItem('mote.workers', '2')")
        page.reload()
        page.wait_for_function("() => window.moteApp !== undefined", timeout=30_000)
        assert page.input_value("#workers") == "2"
    finally:
        context.close()


@pytest.fixture(scope="module")
def two_tab(browser, site):
    """A tab on a "2-core machine" (default: 2 workers) with its own storage; its tests run in file
    order. ?minParallelBytes=0 lifts the 50 MB floor so the tiny golden model is split."""
    page, context, logs = phone_tab(browser, cores(2))
    yield page, context, logs
    context.close()


def test_two_workers_give_the_golden_answer_and_store_the_model(two_tab, site, golden):
    """Two workers (static/parallel.js) give the golden greedy tokens, and the verified download is
    stored as worker.js stores it: same cache, key and headers."""
    page, _, logs = two_tab
    base_url, data = site
    open_page(page, base_url, "?minParallelBytes=0")
    assert page.input_value("#workers") == "2"               # from the cores: nothing saved
    assert page.evaluate("() => window.moteApp.state.workers") == 2
    assert page.locator("#status").inner_text().startswith("2 workers ")
    assert page.evaluate("() => window.moteApp.workersFor({architecture: 'atome', size: 1e9})") == 1
    assert page.evaluate("() => window.moteApp.workersFor({architecture: 'qwen2', size: 1e9})") == 2
    assert model_cache_keys(page) == []

    ready = load_model(page, tg.FILE_NAME)
    assert ready["type"] == "ready" and ready["cached"] is False, (ready, logs)
    phases = ready["phases"]
    assert "cache" not in phases
    assert phases.index("download") < phases.index("verify") < phases.index("store") < phases.index("parse")
    assert page.evaluate("() => window.moteApp.state.model.workers") == 2
    assert page.evaluate("() => window.moteApp.worker.n") == 2       # a ParallelWorker, not worker.js
    assert "loaded from the network" in page.locator("#load-detail").inner_text()
    assert cached_model(page) == stored_entry(base_url, data)

    done = chat(page, golden["messages"][0]["content"], golden["max_tokens"])
    assert done["reason"] == golden["reason"]
    assert done["n_prompt"] == len(golden["prompt_tokens"])
    assert done["token_ids"] == golden["tokens"]
    assert done["full_text"] == golden["text"]
    assert page.locator(".msg.assistant .body").last.text_content() == rendered_text(page, golden["text"])
    metrics(tiny_2workers_decode_tok_s=round(done["decode_tok_s"], 1))


def test_two_workers_stop_then_next_request_answers(two_tab, golden):
    """Abort reaches the leader shard between tokens; the followers finish their step and idle."""
    page = two_tab[0]
    assert page.evaluate("() => window.moteApp.worker.n") == 2
    stop_then_answer(page, golden)


def test_two_workers_reload_reads_the_cached_model(two_tab, site, golden):
    page, _, _ = two_tab
    open_page(page, site[0], "?minParallelBytes=0")
    ready = load_model(page, tg.FILE_NAME)
    assert ready["type"] == "ready" and ready["cached"] is True, ready
    assert "cache" in ready["phases"] and "download" not in ready["phases"] and "store" not in ready["phases"]
    assert ready["snapshot"] == "restored", ready           # both workers started from the saved snapshot
    assert page.evaluate("() => window.moteApp.worker.n") == 2
    assert "loaded from the offline cache" in page.locator("#load-detail").inner_text()
    assert chat(page, golden["messages"][0]["content"], golden["max_tokens"])["token_ids"] == golden["tokens"]


def test_two_workers_corrupted_cached_model_is_downloaded_again(two_tab, site, golden):
    page, _, _ = two_tab
    corrupt_cached_model(page)
    assert cached_model(page)["bytes_sha256"] != golden["model"]["sha256"]
    open_page(page, site[0], "?minParallelBytes=0")
    ready = load_model(page, tg.FILE_NAME)
    assert ready["type"] == "ready" and ready["cached"] is False, ready
    phases = ready["phases"]
    assert phases.index("cache-corrupt") < phases.index("download") < phases.index("store")
    assert page.evaluate("() => window.moteApp.worker.n") == 2
    assert chat(page, golden["messages"][0]["content"], golden["max_tokens"])["token_ids"] == golden["tokens"]
    assert cached_model(page) == stored_entry(*site)          # the good copy replaced the bad one


def test_two_workers_offline_reload_still_chats(two_tab, site, golden):
    page, context, _ = two_tab
    offline_reload_chats(page, context, site[0], golden, "?minParallelBytes=0", workers=2)


def test_one_worker_reads_the_copy_two_workers_stored(two_tab, site, golden):
    """One cache for both kinds of worker: Workers=1 loads what the ParallelWorker stored."""
    page, _, _ = two_tab
    open_page(page, site[0], "?minParallelBytes=0")
    page.evaluate("() => { document.getElementById('settings').open = true; }")
    page.fill("#workers", "1")
    page.dispatch_event("#workers", "change")
    assert page.evaluate("() => localStorage.getItem('mote.workers')") == "1"
    page.wait_for_function(WORKERS_READY, timeout=120_000)
    assert page.evaluate("() => window.moteApp.worker instanceof Worker")
    ready = load_model(page, tg.FILE_NAME)
    assert ready["type"] == "ready" and ready["cached"] is True, ready
    assert "download" not in ready["phases"]
    assert chat(page, golden["messages"][0]["content"], golden["max_tokens"])["token_ids"] == golden["tokens"]


# ---- failed downloads: an error in the page, nothing cached --------------------------------------

def test_storage_quota_full_runs_the_model_and_says_it_is_not_offline(browser, site, golden):
    """The origin's storage quota (CDP) smaller than the model: the store fails, the model still
    answers for this visit, and the page says it is not kept for offline use."""
    base_url, _ = site
    page, context, logs = phone_tab(browser, cores(1))
    try:
        cdp = context.new_cdp_session(page)
        cdp.send("Storage.overrideQuotaForOrigin", {"origin": base_url, "quotaSize": 4096})
        open_page(page, base_url)
        ready = load_model(page, tg.FILE_NAME)
        assert ready["type"] == "ready" and ready["cached"] is False, (ready, logs)
        assert "store-failed" in ready["phases"]
        assert "not stored for offline use" in page.locator("#load-detail").inner_text()
        assert model_cache_keys(page) == []
        assert chat(page, golden["messages"][0]["content"], golden["max_tokens"])["token_ids"] == golden["tokens"]
    finally:
        context.close()


def test_two_tabs_loading_the_same_model_at_once_share_one_copy(browser, site, golden):
    """Two tabs of one browser profile press Load together: both answer, and the Cache API holds one
    verified copy (the key is the sha256), readable by a third load."""
    base_url, data = site
    context = browser.new_context(viewport=PHONE)
    for script in (cores(1), RECORDER):
        context.add_init_script(script)
    try:
        pages = [context.new_page() for _ in range(2)]
        for page in pages:
            open_page(page, base_url)
            select_model(page, tg.FILE_NAME)
        for page in pages:                                 # both loads in flight at once
            page.click("#load-btn")
        for page in pages:
            page.wait_for_function("() => window.moteApp.state.model || window.moteApp.state.lastError",
                                   timeout=60_000)
            assert page.evaluate("() => window.moteApp.state.lastError") is None
            assert chat(page, golden["messages"][0]["content"], golden["max_tokens"])["token_ids"] == golden["tokens"]
        assert model_cache_keys(pages[0]) == [stored_entry(base_url, data)["key"]]
        assert cached_model(pages[0]) == stored_entry(base_url, data)
        third = context.new_page()
        open_page(third, base_url)
        assert load_model(third, tg.FILE_NAME)["cached"] is True
    finally:
        context.close()


def tab_listing(browser, workers: int, extra):
    """A phone-sized tab on `workers` cores whose GET /models also lists extra(golden entry) -> entries
    (service workers blocked, so page.route sees /models): (page, context); the caller closes it."""
    context = browser.new_context(viewport=PHONE, service_workers="block")
    context.add_init_script(cores(workers))
    context.add_init_script(RECORDER)
    page = context.new_page()

    def listing(route):
        response = route.fetch()
        models = response.json()
        models += extra(next(m for m in models if m["file"] == tg.FILE_NAME))
        route.fulfill(response=response, json=models)

    page.route("**/models", listing)
    return page, context


@pytest.mark.parametrize("workers", [1, 2])
def test_downloads_cut_short_resume_with_range(browser, site, golden, workers):
    """The connection drops at 10 %, 50 % and 99 % of the download: the load goes on with an HTTP
    Range request from the bytes received, the whole file is verified, stored once, and answers."""
    base_url, data = site
    page, context = tab_listing(browser, workers, lambda good: [
        {**good, "name": f"flaky-{p}", "file": f"flaky-{p}.gguf", "url": f"/flaky/{p}/model.gguf"} for p in (10, 50, 99)])
    try:
        RANGE_STARTS.clear()
        for percent in (10, 50, 99):
            open_page(page, base_url, "?minParallelBytes=0")       # fresh workers: nothing in memory
            page.evaluate("() => caches.delete('mote-models-v1')")
            ready = load_model(page, f"flaky-{percent}.gguf")
            assert ready["type"] == "ready" and ready["cached"] is False, (percent, ready.get("message"), ready)
            phases = ready["phases"]
            # (the bytes before the cut may or may not reach the page before the error: "download"
            # progress can come before or only after the resume)
            assert "download" in phases and phases.index("resume") < phases.index("verify"), phases
            assert page.evaluate("() => window.moteApp.state.model.workers ?? 1") == workers
            assert chat(page, golden["messages"][0]["content"], 4)["token_ids"] == golden["tokens"][:4]
            assert cached_model(page) == stored_entry(base_url, data)
        # each cut was resumed by a Range request; where bytes before the cut reached the page, from there
        assert {p for p, _ in RANGE_STARTS} == {10, 50, 99}
        assert all(0 <= start <= len(data) * p // 100 for p, start in RANGE_STARTS)
        assert any(start > 0 for _, start in RANGE_STARTS), RANGE_STARTS
    finally:
        context.close()


@pytest.mark.parametrize("workers", [1, 2])
def test_a_stalled_download_resumes_and_a_silent_server_is_an_error(browser, site, golden, workers):
    """A server that stops sending without closing, or never answers: after the model's stall_s
    (here 2 s) the first resumes with Range from the bytes received, the second is an error that
    says so; neither load waits for ever."""
    base_url, data = site
    page, context = tab_listing(browser, workers, lambda good: [
        {**good, "name": "stalled", "file": "stalled.gguf", "url": "/stall/model.gguf"},
        {**good, "name": "silent", "file": "silent.gguf", "url": "/silent/model.gguf"}])
    try:
        open_page(page, base_url, "?minParallelBytes=0&stallSeconds=2")
        page.evaluate("() => caches.delete('mote-models-v1')")
        error = load_model(page, "silent.gguf", timeout_s=30)
        assert error["type"] == "error" and "/silent/model.gguf: no response for 2 s" in error["message"], error
        assert cached_model(page) is None

        STALL_STARTS.clear()
        open_page(page, base_url, "?minParallelBytes=0&stallSeconds=2")   # fresh workers after the error
        ready = load_model(page, "stalled.gguf", timeout_s=30)
        assert ready["type"] == "ready" and ready["cached"] is False, ready
        assert "resume" in ready["phases"], ready["phases"]
        assert STALL_STARTS == [len(data) // 2]          # every byte sent before the stall was kept
        assert page.evaluate("() => window.moteApp.state.model.workers ?? 1") == workers
        assert chat(page, golden["messages"][0]["content"], 4)["token_ids"] == golden["tokens"][:4]
        assert cached_model(page) == stored_entry(base_url, data)
    finally:
        context.close()


@pytest.mark.parametrize("workers", [1, 2])
def test_failed_downloads_show_error_and_cache_nothing(browser, site, golden, workers):
    """On one worker (static/worker.js) and on two (static/parallel.js, which streams the file into
    the shard workers and verifies it there): each broken download is an error, nothing cached."""
    base_url, data = site
    page, context = tab_listing(browser, workers, lambda good: [
        {**good, "name": name, "file": name + ".gguf", "url": url, "sha256": sha}
        for name, url, sha in (("missing", "/models/missing.gguf", hashlib.sha256(b"missing").hexdigest()),
                               ("chunked-short", "/broken/chunked-short.gguf", good["sha256"]),
                               ("connection-cut", "/broken/connection-cut.gguf", good["sha256"]),
                               ("wrong-bytes", "/broken/wrong-bytes.gguf", good["sha256"]))] + [
        # no chunk list: the whole file's sha256 is what finds the changed byte
        {k: v for k, v in good.items() if k != "chunks"} | {"name": "wrong-bytes-whole", "file": "wrong-bytes-whole.gguf",
                                                             "url": "/broken/wrong-bytes.gguf"}])
    try:
        open_page(page, base_url, "?minParallelBytes=0")
        assert page.evaluate("() => window.moteApp.state.workers") == workers
        # (the broken routes do not answer Range: the resume is refused, and the first failure is named;
        # the changed byte is in the middle of the file: the third of its five 64 KiB chunks)
        expected = {"missing.gguf": "HTTP 404", "chunked-short.gguf": f"truncated at {len(data) // 2} of {len(data)}",
                    "connection-cut.gguf": "download failed after a partial response",
                    "wrong-bytes.gguf": "(chunk 3 of 5) do not match their sha256 in the model's chunk list",
                    "wrong-bytes-whole.gguf": f"does not match the expected {good_sha(data)}"}
        for i, (file, words) in enumerate(expected.items()):
            ev = load_model(page, file)
            assert ev["type"] == "error" and ev["stage"] == "weights", ev
            assert words in ev["message"], ev
            shown = page.locator(".msg.error").all_inner_texts()
            assert len(shown) == i + 1 and shown[-1].startswith("Error (weights): "), shown
            assert words in shown[-1]
            assert page.locator('#stages li[data-stage="weights"]').get_attribute("class") == "failed"
            assert model_cache_keys(page) == [], f"{file}: something was cached"
            assert page.evaluate("() => window.moteApp.state.model") is None
        # the worker is still usable: the good model loads and answers
        ready = load_model(page, tg.FILE_NAME)
        assert ready["type"] == "ready", ready
        assert page.evaluate("() => window.moteApp.state.model.workers ?? 1") == workers
        assert chat(page, golden["messages"][0]["content"], 4)["token_ids"] == golden["tokens"][:4]
        assert len(model_cache_keys(page)) == 1
    finally:
        context.close()


def good_sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@pytest.mark.parametrize("workers", [1, 2])
def test_a_model_without_a_usable_chunk_list_is_hashed_whole(browser, site, golden, workers):
    """The chunk list (checked at the browser's native speed) is used only when it is well formed;
    without one, or with one the page refuses (a chunk size it would not allocate, a count that does
    not cover the file, a digest that is not hex), the whole file is hashed in the worker instead,
    and the model loads, is stored and answers the same."""
    base_url, data = site

    def variants(good):
        plain = {k: v for k, v in good.items() if k != "chunks"}
        n = good["chunks"]["sha256"]
        return [{**plain, "name": name, "file": name + ".gguf", **extra} for name, extra in (
            ("unchunked", {}),
            ("huge-chunks", {"chunks": {"size": 1 << 40, "sha256": n[:1]}}),
            ("short-list", {"chunks": {"size": 1 << 16, "sha256": n[:-1]}}),
            ("not-hex", {"chunks": {"size": 1 << 16, "sha256": n[:-1] + ["x" * 64]}}))]
    page, context = tab_listing(browser, workers, variants)
    try:
        open_page(page, base_url, "?minParallelBytes=0")
        for file in (tg.FILE_NAME, "unchunked.gguf", "huge-chunks.gguf", "short-list.gguf", "not-hex.gguf"):
            open_page(page, base_url, "?minParallelBytes=0")       # fresh workers: nothing in memory
            page.evaluate("() => caches.delete('mote-models-v1')")
            ready = load_model(page, file)
            assert ready["type"] == "ready" and ready["cached"] is False, (file, ready)
            chunked = file == tg.FILE_NAME
            assert ("hash_wait" in ready["timings"]) == chunked, (file, ready["timings"])
            if workers == 2:   # the leader hashes only without a chunk list
                assert ("hash" in ready["timings"]) != chunked, (file, ready["timings"])
            assert cached_model(page) == stored_entry(base_url, data)
            assert chat(page, golden["messages"][0]["content"], 4)["token_ids"] == golden["tokens"][:4]
    finally:
        context.close()


# ---- slow: Gemma 3 270M in the page --------------------------------------------------------------

GEMMA_MESSAGES = [{"role": "user", "content": "What is the capital of France? Answer in one sentence."}]
GEMMA_TOKENS = 16
MEMORY_BUDGET = 900e6


@pytest.fixture(scope="module")
def gemma_site(tmp_path_factory):
    """(the Gemma GGUF path, the dev server's base URL serving it, CPython's greedy answer)."""
    pytest.importorskip("fastapi")
    from tests.paths import gemma_path
    from web.app import Settings, create_app

    gemma = gemma_path()
    models = tmp_path_factory.mktemp("gemma-models")
    (models / gemma.name).symlink_to(gemma.resolve())
    reference = tg.engine_greedy(gemma.read_bytes(), {"messages": GEMMA_MESSAGES, "max_tokens": GEMMA_TOKENS})
    from engine import bridge

    bridge._session = None   # free the CPython copy before the browser starts
    app = create_app(Settings(models_dir=models, static_dir=ensure_static_built(), follow_symlinks=True))
    with serve_in_thread(app) as base_url:
        yield gemma, base_url, reference


@pytest.mark.slow
def test_gemma_greedy_tokens_match_cpython(browser, gemma_site):
    gemma, base_url, reference = gemma_site
    context = browser.new_context(viewport=PHONE)
    context.add_init_script(cores(1))    # one worker, static/worker.js: the one WorkerHeap measures
    context.add_init_script(RECORDER)
    page = context.new_page()
    cold_boot = open_page(page, base_url)
    select_model(page, gemma.name)
    assert "Gemma Terms of Use" in page.locator("#licence").inner_text()
    heap = WorkerHeap(browser, page)
    heap.sample()
    cold = load_model(page, gemma.name, heap=heap, timeout_s=240)
    assert cold["type"] == "ready" and cold["cached"] is False, cold
    main_heap = page.evaluate("() => performance.memory ? performance.memory.usedJSHeapSize : 0")
    done = chat(page, GEMMA_MESSAGES[0]["content"], GEMMA_TOKENS, heap=heap, timeout_s=240)
    assert done["token_ids"] == reference["tokens"]
    assert done["full_text"] == reference["text"]
    assert done["n_prompt"] == len(reference["prompt_tokens"])
    page.screenshot(path="/tmp/mote-phone-gemma.png", full_page=True)
    load_peak = dict(heap.peak)
    rss = renderer_peak_rss()
    wasm = page.evaluate("() => window.moteApp.state.memory")   # the worker's own report at done
    worker_memory(page, cold, "gemma_one_worker")

    cached_boot = open_page(page, base_url)   # reload: runtime from the HTTP/SW cache, model from the Cache API
    heap = WorkerHeap(browser, page)
    cached = load_model(page, gemma.name, heap=heap, timeout_s=240)
    assert cached["type"] == "ready" and cached["cached"] is True, cached
    context.close()

    metrics(gemma_cold_boot_s=round(cold_boot, 2), gemma_cold_model_s=round(cold["seconds"], 2),
            gemma_cached_boot_s=round(cached_boot, 2), gemma_cached_model_s=round(cached["seconds"], 2),
            gemma_decode_tok_s=round(done["decode_tok_s"], 2), gemma_prefill_tok_s=round(done["prefill_tok_s"], 2),
            worker_peak_mb={k: round(v / 1e6) for k, v in load_peak.items()},
            worker_peak_cached_load_mb={k: round(v / 1e6) for k, v in heap.peak.items()},
            page_js_heap_mb=round(main_heap / 1e6, 1), renderer_peak_rss_mb=rss and round(rss / 1e6),
            worker_report_mb={k: v and round(v / 1e6) for k, v in (wasm or {}).items()})
    # WASM memory only grows, so its size at the end is its peak; the worker's JS heap and
    # ArrayBuffers (CDP) are sampled peaks; the page's own heap is a few MB.
    wasm_peak = wasm["wasm_bytes"]
    assert wasm_peak is not None
    # the budget (engine/budget.py) the worker estimated from the header, its heap grown once to it
    # (+ a margin) before the download, covered the load and the answer: WASM memory did not grow
    # again (a growth adds at least 20 %), and it is no larger than that (one 64 KiB page of rounding)
    budget = cold["budget"]["total_bytes"]
    metrics(gemma_budget_mb=round(budget / 1e6), gemma_wasm_mb=round(wasm_peak / 1e6))
    assert wasm_peak <= budget + RESERVE_MARGIN + (64 << 10), (wasm_peak, cold["budget"])
    assert wasm_peak + max(load_peak["total"], heap.peak["total"]) + main_heap <= MEMORY_BUDGET



@pytest.mark.slow
def test_gemma_two_workers_by_default_match_cpython(browser, gemma_site):
    """On a 2-core machine the page splits Gemma (over 50 MB) over 2 workers by default: CPython's
    greedy answer, and a reload reads the copy the two workers stored while streaming."""
    gemma, base_url, reference = gemma_site
    page, context, _ = phone_tab(browser, cores(2))
    try:
        open_page(page, base_url)
        assert page.input_value("#workers") == "2"
        ready = load_model(page, gemma.name, timeout_s=240)
        assert ready["type"] == "ready" and ready["cached"] is False, ready
        assert page.evaluate("() => window.moteApp.worker.n") == 2
        assert page.locator("#status").inner_text().startswith("2 workers ")
        done = chat(page, GEMMA_MESSAGES[0]["content"], GEMMA_TOKENS, timeout_s=240)
        assert done["token_ids"] == reference["tokens"]
        assert done["full_text"] == reference["text"]
        worker_memory(page, ready, "gemma_two_workers")
        open_page(page, base_url)
        cached = load_model(page, gemma.name, timeout_s=240)
        assert cached["type"] == "ready" and cached["cached"] is True, cached
    finally:
        context.close()
    metrics(gemma_two_workers_decode_tok_s=round(done["decode_tok_s"], 2),
            gemma_two_workers_cold_model_s=round(ready["seconds"], 2),
            gemma_two_workers_cached_model_s=round(cached["seconds"], 2))
