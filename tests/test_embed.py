"""The embeddable script (static/mote-embed.js) on a page from another origin, in headless Chromium.

Two servers on loopback: the Mote dev server (runtime, wheels, tiny model; CORS open to the host
origin only) and a host site on another port whose page has its own hostile CSS, its own globals
and a strict CSP (the one docs/EMBED.md tells hosts to use). Checked:

* the widget renders in a shadow root, loads, answers a prompt, and Stop ends a long answer;
* the host's styles and scripts are untouched, and the host's CSS cannot reach the widget;
* the JS API streams the same greedy tokens as the CPython engine (mote.loader + engine.generate);
* chat.completions.create streams chunks with OpenAI's field names, and its non-stream form
  returns a chat.completion with usage that agrees with the streamed one;
* with workers: 2 (API) or data-workers="2" (widget) the model is split over two workers, whose shard
  workers the host page can only start through blob: wrappers, and the tokens are the same; the
  default keeps a small file on one worker; a model engine/shard.py cannot split (atome), asked for
  on two workers, is refused by the shard workers and loaded on one;
* without the server's CORS permission for the host origin, loading fails with a clear error.
"""

from __future__ import annotations

import hashlib

import pytest

from tests.browser_util import chromium, ensure_static_built, serve_in_thread

pytestmark = pytest.mark.browser

PROMPT = "Once upon a time"
N = 16

HOST_CSS = """
* { color: rgb(255, 0, 0) !important; }
button { background: rgb(0, 128, 0); padding: 17px; }
.mote, .msg, .log, textarea, form, progress { display: none !important; }
#chat { height: 420px; }
"""
HOST_JS = """
var hostGlobal = 42;
function hostFunction() { return "host " + hostGlobal; }
var __keysBefore = Object.keys(window);  // hoisted: itself included
"""


def host_app(state: dict):
    """The embedding site: a page with hostile CSS, globals, a strict CSP, and the script tag."""
    from starlette.applications import Starlette
    from starlette.responses import HTMLResponse, Response
    from starlette.routing import Route

    def page(request):
        mote = state["mote"]
        attrs = state.get("attrs", "")
        html = f"""<!doctype html><html><head><meta charset="utf-8"><title>Host</title>
<link rel="stylesheet" href="/host.css"><script src="/host.js"></script></head>
<body><h1 id="title">Host page</h1><button id="host-btn">Host button</button>
<div id="chat"></div>
<script src="{mote}/static/mote-embed.js" data-model="{mote}/models/tiny-llama.gguf" data-target="#chat"
        data-title="Ask me" {attrs}></script>
</body></html>"""
        return HTMLResponse(html, headers={"Content-Security-Policy": state["csp"]})

    def api_page(request):  # no data-target: nothing visible, API only
        mote = state["mote"]
        html = f"""<!doctype html><html><head><meta charset="utf-8"><script src="/host.js"></script></head>
<body><p id="p">API only</p><script src="{mote}/static/mote-embed.js" {state.get("api_attrs", "")}></script></body></html>"""
        return HTMLResponse(html, headers={"Content-Security-Policy": state["csp"]})

    async def slow_model(request):  # the host's own copy of a model, whose HEAD takes a second
        import asyncio

        from starlette.responses import FileResponse

        path = state["slow_model"]
        if request.method == "HEAD":
            await asyncio.sleep(1.0)
            data = path.read_bytes()
            return Response(headers={"ETag": f'"{hashlib.sha256(data).hexdigest()}"', "Content-Length": str(len(data))})
        return FileResponse(path)

    return Starlette(routes=[
        Route("/", page), Route("/api", api_page),
        Route("/slow-model.gguf", slow_model, methods=["GET", "HEAD"]),
        Route("/host.css", lambda r: Response(HOST_CSS, media_type="text/css")),
        Route("/host.js", lambda r: Response(HOST_JS, media_type="text/javascript")),
    ])


def strict_csp(mote_origin: str) -> str:
    """What docs/EMBED.md tells a host to add for the widget (nothing broader)."""
    return (f"default-src 'none'; script-src 'self' {mote_origin} 'wasm-unsafe-eval'; "
            f"worker-src blob: {mote_origin}; connect-src {mote_origin}; style-src 'self'")


@pytest.fixture(scope="module")
def sites(tmp_path_factory):
    pytest.importorskip("fastapi")
    pytest.importorskip("gguf")
    from tests.tiny_models import write_tiny
    from web.app import Settings, create_app

    static = ensure_static_built()
    models = tmp_path_factory.mktemp("embed-models")
    path = write_tiny(models / "tiny-llama.gguf", "llama", seed=5, ctx=4096)
    state: dict = {}
    with serve_in_thread(host_app(state)) as host_url:
        settings = Settings(models_dir=models, static_dir=static, cors_origins=(host_url,))
        with serve_in_thread(create_app(settings)) as mote_url:
            state.update(mote=mote_url, csp=strict_csp(mote_url))
            yield {"host": host_url, "mote": mote_url, "path": path, "state": state}


@pytest.fixture(scope="module")
def browser():
    with chromium() as b:
        yield b


def cpython_greedy(path, prompt: str | None, max_tokens: int, messages=None) -> list[int]:
    """The CPython engine's greedy tokens for a raw prompt (or a chat through the template)."""
    from engine.chat import chat_tokens
    from engine.generate import SamplingParams, generate
    from mote.loader import load

    loaded = load(path)
    ids = (chat_tokens(loaded.tokenizer, loaded.template, messages) if messages is not None
           else loaded.tokenizer.encode(prompt))
    params = SamplingParams(temperature=0, max_tokens=max_tokens, stop=loaded.template.stop if messages else ())
    return [ev.token_id for ev in generate(loaded.model, loaded.tokenizer, ids, params) if ev.kind == "token"]


# navigator.hardwareConcurrency as a 4-core machine reports it (before any page script)
CORES_4 = "Object.defineProperty(Navigator.prototype, 'hardwareConcurrency', { get: () => 4, configurable: true });"


def new_page(browser, logs):
    page = browser.new_page()
    page.on("console", lambda m: logs.append(f"{m.type}: {m.text}"))
    page.on("pageerror", lambda e: logs.append(f"pageerror: {e}"))
    return page


def test_widget_cross_origin_isolated_from_host(sites, browser):
    sites["state"]["attrs"] = 'data-temperature="0" data-max-tokens="12"'
    logs: list[str] = []
    page = new_page(browser, logs)
    page.goto(sites["host"] + "/")
    before = page.evaluate("""() => ({
        title: getComputedStyle(document.getElementById('title')).color,
        btn: [getComputedStyle(document.getElementById('host-btn')).backgroundColor,
              getComputedStyle(document.getElementById('host-btn')).padding]})""")
    page.wait_for_function("() => window.Mote && Mote.widgets[0] && Mote.widgets[0].state !== 'loading'",
                           timeout=120_000)
    w = page.evaluate("() => ({state: Mote.widgets[0].state, error: Mote.widgets[0].error})")
    assert w == {"state": "ready", "error": None}, (w, logs)

    # the widget lives in an open shadow root on #chat; the host's light DOM gained nothing
    assert page.evaluate("() => document.getElementById('chat').shadowRoot !== null")
    assert page.evaluate("() => document.getElementById('chat').children.length") == 0
    assert page.locator("#chat .title").inner_text() == "Ask me"

    # answer a prompt through the widget (greedy: the CPython engine's tokens for the same chat)
    page.locator("#chat textarea").fill("hello")
    page.locator("#chat button.send").click()
    page.wait_for_function("() => Mote.widgets[0].last && Mote.widgets[0].state === 'ready'", timeout=60_000)
    last = page.evaluate("() => Mote.widgets[0].last")
    assert last["reason"] in ("length", "eos", "stop")
    want = cpython_greedy(sites["path"], None, 12, messages=[{"role": "user", "content": "hello"}])
    assert last["token_ids"] == want
    answer = page.locator("#chat .msg.assistant").last.inner_text()
    assert len(answer) > 0

    # host CSS cannot reach inside: widget text is not red, hidden-by-host classes still show
    inner = page.evaluate("""() => {
        const root = document.getElementById('chat').shadowRoot;
        const msg = root.querySelector('.msg.assistant'), box = root.querySelector('.mote');
        return {msg: getComputedStyle(msg).color, msgDisplay: getComputedStyle(msg).display,
                box: getComputedStyle(box).display, send: getComputedStyle(root.querySelector('button.send')).padding};
    }""")
    assert inner["msg"] != "rgb(255, 0, 0)" and inner["msgDisplay"] != "none" and inner["box"] != "none"
    assert inner["send"] != "17px"
    # ... and the widget changed nothing outside: host styles, globals and functions as they were
    after = page.evaluate("""() => ({
        title: getComputedStyle(document.getElementById('title')).color,
        btn: [getComputedStyle(document.getElementById('host-btn')).backgroundColor,
              getComputedStyle(document.getElementById('host-btn')).padding]})""")
    assert after == before == {"title": "rgb(255, 0, 0)", "btn": ["rgb(0, 128, 0)", "17px"]}
    assert page.evaluate("() => [hostGlobal, hostFunction()]") == [42, "host 42"]
    added = page.evaluate("() => Object.keys(window).filter(k => !window.__keysBefore.includes(k))")
    assert added == ["Mote"]
    assert page.evaluate("() => document.styleSheets.length") == 1  # only host.css; the widget adopts its own

    # Stop: a long answer is cut short and the widget answers again afterwards
    page.evaluate("() => Mote.mount(document.body.appendChild(document.createElement('div')), "
                  "{model: Mote.widgets[0].mote.ref.url, temperature: 0, max_tokens: 3000})")
    page.wait_for_function("() => Mote.widgets[1].state === 'ready'", timeout=60_000)
    page.locator("div:not(#chat) > .mote textarea").first.fill("tell me a story")  # the second widget
    page.evaluate("() => Mote.widgets[1].root.querySelector('form').requestSubmit()")
    page.wait_for_function("() => (Mote.widgets[1].root.querySelector('.msg.assistant').textContent.length > 20)",
                           timeout=30_000)
    page.evaluate("() => Mote.widgets[1].root.querySelector('button.stop').click()")
    page.wait_for_function("() => Mote.widgets[1].state === 'ready'", timeout=10_000)
    stopped = page.evaluate("() => Mote.widgets[1].mote.last")
    assert stopped["reason"] == "abort" and stopped["n_generated"] < 3000
    assert "Stopped" in page.evaluate("() => Mote.widgets[1].root.querySelector('.status').textContent")
    assert not [m for m in logs if "Content Security Policy" in m or m.startswith("pageerror")], logs
    page.close()


def test_api_streams_cpython_greedy_tokens(sites, browser):
    logs: list[str] = []
    page = new_page(browser, logs)
    page.add_init_script(CORES_4)
    page.goto(sites["host"] + "/api")
    assert page.evaluate("() => getComputedStyle(document.getElementById('p')).color") == "rgb(0, 0, 0)"
    got = page.evaluate("""async ([url, prompt, n]) => {
        const stages = [];
        const mote = await Mote.load(url, {onProgress: (p) => stages.push(p.stage)});
        const pieces = [];
        for await (const piece of mote.generate(prompt, {temperature: 0, max_tokens: n})) pieces.push(piece);
        // a second run, aborted through an AbortSignal after 3 pieces, ends with an AbortError
        const ctl = new AbortController();
        let k = 0, error = null;
        try {
          for await (const piece of mote.generate(prompt, {temperature: 0, max_tokens: 4000, signal: ctl.signal})) {
            if (++k === 3) ctl.abort();
          }
        } catch (e) { error = e.name; }
        const aborted = mote.last;
        // and the model still answers afterwards, the same tokens
        let again = "";
        for await (const piece of mote.generate(prompt, {temperature: 0, max_tokens: n})) again += piece;
        return {pieces, last: mote.last, stages: [...new Set(stages)], error, abortedN: aborted.n_generated,
                abortedReason: aborted.reason, again, visible: document.body.children.length, workers: mote.workers,
                timings: mote.timings, fetched: performance.getEntriesByType('resource').map((e) => e.name),
                head: performance.getEntriesByName(url)[0].toJSON(),
                chunks: performance.getEntriesByName(url + '/chunks')[0].toJSON()};
    }""", [sites["mote"] + "/models/tiny-llama.gguf", PROMPT, N])
    # the Mote server's modules came from its current version's immutable URLs (static/shell.json)
    version = page.evaluate("(u) => fetch(u).then((r) => r.json())", sites["mote"] + "/static/shell.json")["version"]
    assert sites["mote"] + f"/static/v/{version}/protocol.js" in got["fetched"], got["fetched"]
    # the chunk list (at <model>/chunks on the Mote server) was asked for beside the model's HEAD,
    # not one round trip after it
    head, listed = got["head"], got["chunks"]
    assert listed["startTime"] <= head["startTime"] < head["responseEnd"], got
    assert got["workers"] == 1  # 4 cores, but the default keeps a file under 50 MB on one worker
    # the download went into the Cache API while the runtime booted (static/prefetch-worker.js, a
    # nested worker started from this cross-origin page): weights progress comes before numpy's
    assert set(got["stages"]) == {"runtime", "numpy", "engine", "weights"}
    assert got["stages"].index("weights") < got["stages"].index("numpy"), got["stages"]
    # (its chunks hashed there; the stored copy then read back checked by the checksum kept beside it)
    assert got["timings"]["prefetch"] > 0 and "hash_wait" not in got["timings"], got["timings"]
    assert got["last"]["token_ids"] == cpython_greedy(sites["path"], PROMPT, N)
    assert len(got["pieces"]) >= 1 and "".join(got["pieces"]) == got["again"]
    assert got["error"] == "AbortError" and got["abortedReason"] == "abort" and got["abortedN"] < 4000
    assert got["visible"] == 2  # <p> and the script: no widget without data-target
    assert not [m for m in logs if m.startswith("pageerror")], logs
    page.close()


def test_chat_completions_openai_shapes(sites, browser):
    page = browser.new_page()
    page.goto(sites["host"] + "/api")
    got = page.evaluate("""async (url) => {
        const mote = await Mote.load(url);
        const messages = [{role: "system", content: "Be brief."}, {role: "user", content: "hi"}];
        const stream = await mote.chat.completions.create({messages, stream: true, temperature: 0, max_tokens: 10,
                                                           stream_options: {include_usage: true}});
        const chunks = [];
        for await (const c of stream) chunks.push(c);
        const full = await mote.chat.completions.create({messages, temperature: 0, max_tokens: 10});
        const ids = mote.last.token_ids;
        const next = await mote.chat.completions.create({temperature: 0, max_tokens: 4, messages: [...messages,
            full.choices[0].message, {role: "user", content: "and then?"}]});
        return {chunks, full, ids, next};
    }""", sites["mote"] + "/models/tiny-llama.gguf")
    chunks, full = got["chunks"], got["full"]
    *body, usage_chunk = chunks
    assert len({c["id"] for c in chunks}) == 1 and chunks[0]["id"].startswith("chatcmpl-")
    for c in body:
        assert set(c) == {"id", "object", "created", "model", "choices"}
        assert c["object"] == "chat.completion.chunk" and isinstance(c["created"], int)
        (choice,) = c["choices"]
        assert choice["index"] == 0 and set(choice) == {"index", "delta", "logprobs", "finish_reason"}
    assert body[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    assert all(set(c["choices"][0]["delta"]) == {"content"} for c in body[1:-1])
    assert body[-1]["choices"][0] == {"index": 0, "delta": {}, "logprobs": None, "finish_reason": "length"}
    assert all(c["choices"][0]["finish_reason"] is None for c in body[:-1])
    assert usage_chunk["choices"] == [] and usage_chunk["usage"]["completion_tokens"] == 10
    streamed = "".join(c["choices"][0]["delta"].get("content", "") for c in body)

    assert full["object"] == "chat.completion" and full["id"].startswith("chatcmpl-")
    assert full["choices"] == [{"index": 0, "message": {"role": "assistant", "content": streamed},
                                "logprobs": None, "finish_reason": "length"}]
    u, first = full["usage"], usage_chunk["usage"]
    assert u["total_tokens"] == u["prompt_tokens"] + u["completion_tokens"]
    # the same messages again: all but the last prompt token come from the KV cache
    assert first["prompt_tokens_details"] == {"cached_tokens": 0}
    assert u["prompt_tokens_details"] == {"cached_tokens": u["prompt_tokens"] - 1}
    same = {"prompt_tokens_details": None, "completion_tokens_details": None}  # drafting may differ
    assert {**u, **same} == {**first, **same}
    for usage in (u, first):  # prompt lookup's drafted tokens: kept + refused, never negative
        details = usage["completion_tokens_details"]
        assert set(details) == {"accepted_prediction_tokens", "rejected_prediction_tokens"}
        assert min(details.values()) >= 0
    # the next turn (messages extending the last call's) computes only what is new
    assert got["next"]["usage"]["prompt_tokens_details"]["cached_tokens"] >= u["prompt_tokens"]
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "hi"}]
    assert got["ids"] == cpython_greedy(sites["path"], None, 10, messages=messages)
    page.close()


def test_cross_origin_refused_without_cors(sites, browser):
    """A Mote server that does not allow the host origin: a clear error naming --cors-origin, no hang."""
    from web.app import Settings, create_app

    settings = Settings(models_dir=sites["path"].parent, static_dir=ensure_static_built())  # CORS closed
    state = sites["state"]
    saved = dict(state)
    with serve_in_thread(create_app(settings)) as closed_url:
        state.update(mote=closed_url, csp=strict_csp(closed_url))
        try:
            page = browser.new_page()
            page.goto(sites["host"] + "/api")  # the classic script itself loads (no CORS needed for it)
            err = page.evaluate("""async (url) => {
                try { await Mote.load(url); return null; } catch (e) { return String(e.message || e); }
            }""", closed_url + "/models/tiny-llama.gguf")
            page.close()
        finally:
            state.update(saved)
    assert err is not None and f"--cors-origin {sites['host']}" in err, err


# Before any page script: every message the page posts to a worker, with when it was posted.
POSTED = """
window.__posted = [];
const post = Worker.prototype.postMessage;
Worker.prototype.postMessage = function (msg, ...rest) {
  window.__posted.push({ type: msg && msg.type, model: !!(msg && msg.model), t: performance.now() });
  return post.call(this, msg, ...rest);
};
"""


def test_one_worker_boots_while_the_model_is_resolved(sites, browser):
    """Mote.load(url, {workers: 1}): the worker is asked to boot before the model's HEAD has answered
    (a host whose HEAD takes a second), and the model follows once resolved: ready, the CPython
    tokens. With the worker count left to the default (4 cores here), the count depends on the file
    size, so nothing starts before the HEAD."""
    state = sites["state"]
    saved = dict(state)
    state.update(slow_model=sites["path"], csp=saved["csp"].replace("connect-src ", "connect-src 'self' "))
    try:
        got = {}
        for case, opts in (("one", "{workers: 1}"), ("default", "{}")):
            logs: list[str] = []
            page = new_page(browser, logs)
            page.add_init_script(CORES_4)
            page.add_init_script(POSTED)
            page.goto(sites["host"] + "/api")
            got[case] = page.evaluate(f"""async ([url, prompt, n]) => {{
                const mote = await Mote.load(url, {opts});
                let text = "";
                for await (const piece of mote.generate(prompt, {{temperature: 0, max_tokens: n}})) text += piece;
                const head = performance.getEntriesByName(url).find((e) => e.initiatorType === "fetch");
                return {{posted: window.__posted.filter((m) => m.type === "load"), headAnswered: head.responseStart,
                         ids: mote.last.token_ids, workers: mote.workers}};
            }}""", [sites["host"] + "/slow-model.gguf", PROMPT, N])
            assert not [m for m in logs if m.startswith("pageerror")], logs
            page.close()
    finally:
        state.clear()
        state.update(saved)
    want = cpython_greedy(sites["path"], PROMPT, N)
    one, default = got["one"], got["default"]
    assert one["ids"] == want and default["ids"] == want and one["workers"] == default["workers"] == 1, got
    boot, load = one["posted"]
    # (responseStart: the HEAD's headers arrived, which is when fetch() resolves; responseEnd can be
    # stamped a fraction of a millisecond after the page already acted on them)
    assert not boot["model"] and boot["t"] < one["headAnswered"] - 500, one    # the boot asked for at once
    assert load["model"] and load["t"] >= one["headAnswered"], one             # the model once resolved
    [load] = default["posted"]
    assert load["model"] and load["t"] >= default["headAnswered"], default


# Counts the page's Worker constructions and terminations.
WORKERS = """
window.__created = 0; window.__terminated = 0;
const Base = window.Worker;
window.Worker = new Proxy(Base, { construct(target, args) { window.__created++; return Reflect.construct(target, args); } });
const terminate = Base.prototype.terminate;
Base.prototype.terminate = function () { window.__terminated++; return terminate.call(this); };
"""


def test_preload_boots_one_worker_that_the_next_load_takes(sites, browser):
    """Mote.preload(): one worker is asked to boot at once, before any model is named; the next
    Mote.load on one worker takes it (no other worker starts) and answers the CPython tokens. A
    preloaded worker that a load on two workers cannot use is ended, and the load starts its shards."""
    logs: list[str] = []
    page = new_page(browser, logs)
    page.add_init_script(POSTED + WORKERS)
    page.goto(sites["host"] + "/api")
    got = page.evaluate("""async ([url, prompt, n]) => {
        await Mote.preload();
        await new Promise((r) => setTimeout(r, 300));
        const called = performance.now();
        const mote = await Mote.load(url, {workers: 1});
        let text = "";
        for await (const piece of mote.generate(prompt, {temperature: 0, max_tokens: n})) text += piece;
        const one = {posted: window.__posted.filter((m) => m.type === "load"), called, created: window.__created,
                     ids: mote.last.token_ids, workers: mote.workers};
        mote.terminate();
        await Mote.preload();
        const two = await Mote.load(url, {workers: 2});
        for await (const piece of two.generate(prompt, {temperature: 0, max_tokens: n})) {}
        return {one, two: {created: window.__created, terminated: window.__terminated, ids: two.last.token_ids,
                           workers: two.workers}};
    }""", [sites["mote"] + "/models/tiny-llama.gguf", PROMPT, N])
    want = cpython_greedy(sites["path"], PROMPT, N)
    one, two = got["one"], got["two"]
    boot, load = one["posted"]
    assert not boot["model"] and boot["t"] < one["called"] - 250, one   # asked to boot by preload, not by the load
    assert load["model"] and load["t"] >= one["called"], one
    assert one["created"] == 1 and one["workers"] == 1 and one["ids"] == want, one
    # the second preload's worker (1) ended (with the first model's: 2 terminated), then 2 shards
    assert two["workers"] == 2 and two["ids"] == want, two
    assert two["created"] == 1 + 1 + 2 and two["terminated"] >= 2, two
    assert not [m for m in logs if m.startswith("pageerror")], logs
    page.close()


def test_data_preload_boots_a_worker_as_the_page_loads(sites, browser):
    """data-preload on an API-only script tag: a worker is asked to boot as the page loads, and the
    first Mote.load takes it."""
    sites["state"]["api_attrs"] = "data-preload"
    logs: list[str] = []
    page = new_page(browser, logs)
    try:
        page.add_init_script(POSTED + WORKERS)
        page.goto(sites["host"] + "/api")
        page.wait_for_function("() => window.__posted.length > 0", timeout=10_000)
        got = page.evaluate("""async ([url, prompt, n]) => {
            const before = {created: window.__created, posted: window.__posted.map((m) => [m.type, m.model])};
            const mote = await Mote.load(url, {workers: 1});
            for await (const piece of mote.generate(prompt, {temperature: 0, max_tokens: n})) {}
            return {before, created: window.__created, ids: mote.last.token_ids};
        }""", [sites["mote"] + "/models/tiny-llama.gguf", PROMPT, N])
    finally:
        sites["state"].pop("api_attrs")
    assert got["before"] == {"created": 1, "posted": [["load", False]]}, got
    assert got["created"] == 1 and got["ids"] == cpython_greedy(sites["path"], PROMPT, N), got
    assert not [m for m in logs if m.startswith("pageerror")], logs
    page.close()


# ---- several workers ------------------------------------------------------------------------------

def test_api_two_workers_cross_origin(sites, browser):
    """Mote.load(url, {workers: 2}) on the strict-CSP host: two shard workers started through blob:
    wrappers (new Worker(<Mote URL>) throws on this origin), the CPython engine's greedy tokens, and
    the verified file stored in the host origin's cache, read back by a second load."""
    logs: list[str] = []
    page = new_page(browser, logs)
    page.goto(sites["host"] + "/api")
    got = page.evaluate("""async ([url, prompt, n]) => {
        const mote = await Mote.load(url, {workers: 2});
        let text = "";
        for await (const piece of mote.generate(prompt, {temperature: 0, max_tokens: n})) text += piece;
        const first = {workers: mote.workers, shards: mote.info.shards.length, ids: mote.last.token_ids,
                       text, cached: mote.cached};
        mote.terminate();
        const keys = (await (await caches.open('mote-models-v1')).keys()).map((r) => r.url);
        const again = await Mote.load(url, {workers: 2});
        for await (const piece of again.generate(prompt, {temperature: 0, max_tokens: n})) {}
        return {first, keys, again: {workers: again.workers, cached: again.cached, ids: again.last.token_ids}};
    }""", [sites["mote"] + "/models/tiny-llama.gguf", PROMPT, N])
    want = cpython_greedy(sites["path"], PROMPT, N)
    first = got["first"]
    assert first["workers"] == 2 and first["shards"] == 2, got
    assert first["ids"] == want and first["cached"] is False
    sha = hashlib.sha256(sites["path"].read_bytes()).hexdigest()
    key = f"{sites['host']}/__mote_models__/{sha}"
    assert got["keys"] == [key, key + ".checksum"]  # the host's origin, the file's sha256; its checksum beside it
    assert got["again"] == {"workers": 2, "cached": True, "ids": want}
    assert not [m for m in logs if "Content Security Policy" in m or m.startswith("pageerror")], logs
    page.close()


def test_widget_data_workers(sites, browser):
    """data-workers="2" on the script tag: the widget answers on two workers, the CPython tokens."""
    state = sites["state"]
    saved = state.get("attrs", "")
    state["attrs"] = 'data-workers="2" data-temperature="0" data-max-tokens="8"'
    logs: list[str] = []
    page = new_page(browser, logs)
    try:
        page.goto(sites["host"] + "/")
        page.wait_for_function("() => window.Mote && Mote.widgets[0] && Mote.widgets[0].state !== 'loading'",
                               timeout=120_000)
        w = page.evaluate("() => ({state: Mote.widgets[0].state, error: Mote.widgets[0].error, "
                          "workers: Mote.widgets[0].mote && Mote.widgets[0].mote.workers})")
        assert w == {"state": "ready", "error": None, "workers": 2}, (w, logs)
        assert page.locator("#chat .status").inner_text().endswith(" · 2 workers")
        page.locator("#chat textarea").fill("hello")
        page.locator("#chat button.send").click()
        page.wait_for_function("() => Mote.widgets[0].last && Mote.widgets[0].state === 'ready'", timeout=60_000)
        last = page.evaluate("() => Mote.widgets[0].last")
        assert last["token_ids"] == cpython_greedy(sites["path"], None, 8, messages=[{"role": "user", "content": "hello"}])
        assert not [m for m in logs if "Content Security Policy" in m or m.startswith("pageerror")], logs
    finally:
        state["attrs"] = saved
        page.close()


def test_unsplittable_model_falls_back_to_one_worker(sites, browser):
    """Mote.load(url, {workers: 2}) on an atome model (engine/shard.py cannot split it; nothing tells
    the host page so): the shard workers refuse it at its header, and it is loaded and answers on one
    worker, the CPython engine's tokens. Also the workers rule of static/worker-count.js, as imported
    by the embed."""
    from mote.convert import convert_atome_blob
    from tests.paths import shared_file

    blob = shared_file("atome/atome_944k.bin")
    path = sites["path"].parent / "atome.gguf"
    convert_atome_blob(blob, path)
    logs: list[str] = []
    page = new_page(browser, logs)
    page.goto(sites["host"] + "/api")
    got = page.evaluate("""async ([url, prompt, n]) => {
        const mote = await Mote.load(url, {workers: 2});
        for await (const piece of mote.generate(prompt, {temperature: 0, max_tokens: n})) {}
        const wc = await import(Mote.base + 'worker-count.js');   // the module Mote.load uses
        return {workers: mote.workers, shards: mote.info.shards ?? null, ids: mote.last.token_ids,
                rule: [wc.workersForModel({architecture: 'atome', size: 1e9}, 2),
                       wc.workersForModel({architecture: 'llama', size: 1e9}, 2),
                       wc.workersForModel({architecture: 'llama', size: 1e6}, 2),
                       wc.workersForModel({architecture: 'llama', size: 1e6}, 2, 0),
                       wc.workersForModel({architecture: 'llama', size: 1e9}, 99),
                       wc.workersForModel({size: 1e9}, 2)]};
    }""", [sites["mote"] + "/models/atome.gguf", PROMPT, 8])
    page.close()
    assert got["workers"] == 1 and got["shards"] is None, got
    assert got["ids"] == cpython_greedy(path, PROMPT, 8)
    assert got["rule"] == [1, 2, 1, 2, 8, 2]   # architecture unknown: the shard workers decide
    assert not [m for m in logs if m.startswith("pageerror")], logs
