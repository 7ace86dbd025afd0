"""Bridge: the functions static/worker.js calls inside Pyodide (last stage before the browser).

    GGUF bytes, chunk by chunk -> ModelBuffer (in WASM memory, sha256 as it fills)
        -> load_model() -> Session -> start_generation() -> Generation.step() -> one message dict per token

This module and engine/buffer.py (ModelBuffer, standard library only, so the worker can fill one
before numpy is loaded) are the only ones that touch Pyodide's `js`/`pyodide` modules, and only behind
`sys.platform == "emscripten"`; in CPython every function takes and returns plain Python values,
which is how tests/test_bridge*.py drive it. The worker owns the loop: it calls `step()` once per
token and awaits its event loop between calls, so an `abort` message lands within one token and
the loaded model (the Session) survives it.

Worker usage (JavaScript, see static/worker.js):

    const bridge = pyodide.pyimport("engine.bridge");
    const buf = bridge.ModelBuffer(size);                // the file's bytes live only here
    for (const chunk of response) buf.write(chunk);      // each Uint8Array chunk copied in, hashed
    if (buf.sha256() !== expected) ...                   // verified before anything uses it
    const info = bridge.load_model(buf);                 // parses in place: no second copy
    const gen = bridge.start_generation(request);        // request: {messages | prompt, params}
    for (let ev; (ev = gen.step()) !== undefined; ) { post(ev); await yieldToEventLoop(); }
"""

from __future__ import annotations

import dataclasses
import gc
import hashlib
import sys
import time
from typing import Any

from .buffer import IN_PYODIDE, ModelBuffer
from .model import LoadPolicy
from .session import PARAM_TYPES, Generation, Session  # noqa: F401  (PARAM_TYPES: the page's sampling keys)

if IN_PYODIDE:  # pragma: no cover - only inside the browser
    import js  # type: ignore[import-not-found]
    from pyodide.ffi import JsProxy, to_js  # type: ignore[import-not-found]

# Weights as a worker loads them: the file's own blocks, planarized in place (engine/packed.py), so
# a model costs its file size in WASM memory (which never shrinks) and nothing of the weights' size
# on top; in Pyodide these products are as fast as the int8 blocks' (docs/kernels.md). The KV cache
# is float16 (half of float32's memory; the read's cast costs ~5 % of a Gemma step at 1,500 tokens). Used in
# CPython too, so the tests that drive this module compute what the page computes.
WORKER_POLICY = LoadPolicy(dense_layers_mb=0.0, own_buffer=True, packed=True, int8_types=("Q5_0",),
                           kv_dtype="float16")


def _py(value: Any) -> Any:
    """A JS value (JsProxy) as Python (dicts, lists, str...); Python values pass through."""
    if IN_PYODIDE and isinstance(value, JsProxy):  # pragma: no cover
        return value.to_py()
    return value


def _js(value: dict | list | None) -> Any:
    """A result dict (or list of them) as plain JS objects in the browser (None -> undefined);
    unchanged in CPython."""
    if IN_PYODIDE and value is not None:  # pragma: no cover
        return to_js(value, dict_converter=js.Object.fromEntries)
    return value


def _buffer(data: Any) -> bytes | bytearray | memoryview:
    """The GGUF bytes as a Python buffer: a ModelBuffer as is; a JS Uint8Array copied once into WASM."""
    if isinstance(data, ModelBuffer):
        if not data.complete:
            raise ValueError(f"model buffer holds {data.filled} of {data.size} bytes")
        return data.data
    if IN_PYODIDE and isinstance(data, JsProxy):  # pragma: no cover
        buf = bytearray(data.byteLength)  # (n_bytes,) in the WASM heap
        data.assign_to(buf)               # one memcpy from the JS ArrayBuffer
        return buf
    return data


def runtime_info() -> dict:
    """Versions and one small computation, for the page's status line and the browser smoke test.

    `check` is a fixed 3x4 @ 4x2 float64 product the test recomputes in CPython: it proves numpy's
    compiled core works in this runtime, not just that it imports. (Jinja2 is not imported here:
    that waits for the first chat, or for chat_check on request.)
    """
    import platform

    import numpy as np

    import engine

    a = np.arange(12, dtype=np.float64).reshape(3, 4) / 7.0  # (3, 4)
    b = np.cos(np.arange(8, dtype=np.float64)).reshape(4, 2)  # (4, 2)
    return _js({
        "python": platform.python_version(),
        "platform": sys.platform,
        "numpy": np.__version__,
        "engine": engine.__version__,
        "check": (a @ b).ravel().tolist(),  # (6,)
    })


def chat_check() -> Any:
    """Jinja2's version and a fixed conversation rendered through the Gemma chat template (by Jinja2
    when importable, else by the pure-Python twin), compared with CPython's text by the browser smoke
    test. On request only (the page's ?selfcheck): importing Jinja2 costs ~0.3 s in Pyodide."""
    from engine.chat import ChatTemplate, jinja_available

    return _js({
        "jinja2": _version("jinja2") if jinja_available() else None,
        "chat_check": ChatTemplate.create(None, "gemma3", bos_token="<bos>").render(
            [{"role": "user", "content": "Hi <b>&</b>"}]),
        "bytecode": _bytecode_check(),
    })


def _bytecode_check() -> dict:
    """Of the numpy and engine modules imported, how many have a .pyc beside their source that
    Python accepts: a checked-hash pyc of this interpreter whose hash is the source's (in the
    browser, build_wasm.py's bytecode.zip; natively, whatever __pycache__ holds)."""
    import importlib.util

    modules = accepted = 0
    for m in list(sys.modules.values()):
        src, cached = getattr(m, "__file__", None), getattr(m, "__cached__", None)
        if getattr(m, "__name__", "").split(".")[0] not in ("numpy", "engine") or not (src or "").endswith(".py"):
            continue
        modules += 1
        try:
            with open(cached, "rb") as f:
                head = f.read(16)
            with open(src, "rb") as f:
                source = f.read()
        except (OSError, TypeError):
            continue
        if (head[:4] == importlib.util.MAGIC_NUMBER and int.from_bytes(head[4:8], "little") == 0b11
                and head[8:16] == importlib.util.source_hash(source)):
            accepted += 1
    return {"modules": modules, "with_bytecode": accepted}


def template_guard() -> Any:
    """What the chat-template bounds (engine/chat.py) say to three hostile templates in this runtime:
    a 2 GB string, a 2,000,000-long loop, endless recursion, each stopped at once (the loop by the
    line tracer, so it also shows sys.settrace works here). Run on request only (the page's
    ?selfcheck, for the browser smoke test): the loop costs its 2**18 traced steps."""
    from engine.chat import ChatTemplate, ChatTemplateError, jinja_available

    def guard(source: str) -> str | None:
        try:
            ChatTemplate.create(source, "llama").render([{"role": "user", "content": "hi"}])
        except ChatTemplateError as e:
            return str(e)
        return None

    if not jinja_available():
        return None
    return _js({"results": [guard(t) for t in (
        "{{ ('a' * 2000000000)|length }}",
        "{% for i in range(2000000) %}{% endfor %}",
        "{% macro f(n) %}{{ f(n + 1) }}{% endmacro %}{{ f(0) }}")]})


def _version(dist: str) -> str | None:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(dist)
    except PackageNotFoundError:
        return None


# ---- the worker's entry points (module-level, one model per worker) ----------------------------
_session: Session | None = None
_header: tuple | None = None  # (sha256 of the header bytes, ShardFile) of the last header_budget, for load_model


LAYOUTS = ("packed", "compact", "int8")  # how a worker holds block weights (LoadRequest.layout)


def policy_for(layout: str | None) -> LoadPolicy:
    """The load policy of a layout:
    "packed" (the default): the file's blocks, except Q5_0 kept as int8 values in the packed
        kernels' order (packed.PackedLinear values=True; the packed product is ~1.5x slower in
        Chromium, docs/kernels.md) when the budget allows (`choose_layout`);
    "compact": every block type packed and Q8_0's scales read from the planes (LoadPolicy
        float_scales off), memory about the file's size;
    "int8": int8 values + float32 scales, about 2.2x a 4-bit file (for comparison benchmarks)."""
    layout = layout or "packed"
    if layout not in LAYOUTS:
        raise ValueError(f"unknown layout {layout!r} (expected one of {', '.join(LAYOUTS)})")
    if layout == "packed":
        return WORKER_POLICY
    return dataclasses.replace(WORKER_POLICY, int8_types=(), float_scales=False) if layout == "compact" else \
        dataclasses.replace(WORKER_POLICY, packed=False)


def header_budget(prefix: Any, size: int, n_ctx: int | None = None, layout: str | None = None,
                  device_memory_gb: float | None = None) -> Any:
    """Before the download: what this worker will need for the model (engine/budget.py).

    prefix: the file's first bytes (a JS Uint8Array or bytes), or a ModelBuffer (a worker that
    read the file while the engine was loading asks once it is up; nothing is copied). Returns None
    while they do not hold the whole header, else {"budget": {...} or None (an architecture without
    an estimate), "refusal": a sentence or None}. device_memory_gb: navigator.deviceMemory where reported.
    """
    from . import budget
    from .config import ConfigError
    from .shard import ShardFile

    from .gguf import GGUFError

    global _header
    if isinstance(prefix, ModelBuffer):
        data = memoryview(prefix.data)[: prefix.filled]  # (filled,) view of the file
    else:
        data = prefix.to_bytes() if IN_PYODIDE and isinstance(prefix, JsProxy) else bytes(prefix)
    try:
        head = ShardFile(data, size)  # parsed once (header_length parsed it, then ShardFile again)
    except GGUFError:  # too short to tell (None), or a damaged header: no estimate; the load names it
        if len(data) < size:
            return None
        return _js({"budget": None, "refusal": None, "layout": layout})
    # load_model reuses the parse if the file starts with the same bytes; their digest is kept, not a
    # copy (a 151,936-token vocabulary makes a 5.7 MiB header, more than the budget allows for)
    _header = (hashlib.sha256(data[: head.data_offset]).digest(), head)
    device = int(device_memory_gb * 2**30) if device_memory_gb else None
    try:
        return _js(choose_layout(head, n_ctx, 1, layout, device))
    except ConfigError:  # e.g. Atome: no estimate; the load itself will say what is wrong
        return _js({"budget": None, "refusal": None, "layout": layout})


def choose_layout(head, n_ctx: int | None, n_workers: int, layout: str | None, device_bytes: int | None,
                  split_attention: bool = True) -> dict:
    """The budget of `layout`; for the default ("packed", whose Q5_0 is int8 for speed), the all-packed
    "compact" layout instead when that is what fits. {"budget", "refusal", "layout"}."""
    from . import budget

    policy_for(layout)  # an unknown layout is an error
    est = budget.estimate(head, n_ctx, n_workers, layout or "packed", split_attention)
    why = est.refusal(device_bytes)
    if why and (layout or "packed") == "packed":
        compact = budget.estimate(head, n_ctx, n_workers, "compact", split_attention)
        if compact.refusal(device_bytes) is None:
            est, why, layout = compact, None, "compact"
    return {"budget": est.as_dict(), "refusal": why, "layout": layout or "packed"}


def load_model(data: Any, n_ctx: int | None = None, layout: str | None = None) -> Any:
    """Parse and load GGUF bytes (a ModelBuffer, or a JS Uint8Array / bytes); returns info."""
    global _session
    policy = policy_for(layout)
    _forget_warm_up()
    _session = None  # drop the previous model before building the next one (peak memory)
    global _header
    buffer = _buffer(data)
    cached, _header = _header, None
    if cached is not None and len(buffer) == cached[1].file_size and \
            hashlib.sha256(memoryview(buffer)[: cached[1].data_offset]).digest() == cached[0]:  # same parse
        from .gguf import GGUFFile

        buffer = GGUFFile.with_header(buffer, cached[1])
    _session = Session.load(buffer, n_ctx=n_ctx, policy=policy)
    _session.buffer = buffer  # kept alive: weights are views into it
    _session.layout = layout or "packed"
    return loaded_model()


def drop_model() -> None:
    """Free the model in memory (a worker started from a snapshot of another model than the one it
    is then asked for frees it before that load reads anything)."""
    global _session
    _forget_warm_up()
    _session = None
    gc.collect()


def loaded_model() -> Any:
    """What load_model returned for the model in memory (a worker started from a snapshot taken with
    the model loaded asks this instead of loading); None without one."""
    if _session is None:
        return None
    return _js({**_session.info(), "layout": _session.layout})



def chat_prompt(messages: Any) -> str:
    """The prompt text the chat template makes of `messages` (for display and tests)."""
    if _session is None:
        raise RuntimeError("no model loaded (call load_model first)")
    return _session.template.render(_py(messages))


def reset() -> None:
    """Forget the conversation the KV cache holds ("New chat"), also during a generation."""
    if _session is not None:
        _session.forget()


# ---- warming up: a small model's first answer at full speed --------------------------------------
#
# Chromium compiles WebAssembly lazily, first with its baseline compiler, and optimises a function
# only once it has run a while (in the background). A load runs little of what a decode step runs, so
# a small model's first answer after a load came at about half the speed of its second (Atome 944K:
# 400-800 tok/s, then 1,000-1,400; with every function optimised up front, Chromium's
# --no-liftoff --no-wasm-lazy-compilation, the first answer was as fast as the rest). The worker,
# once idle after ready, decodes throwaway tokens for a few hundred milliseconds in short slices
# (static/worker.js warmUpWhenIdle); any request stops it within a slice, and the session is left as a load
# leaves it. Only for models whose step is short (a step is the most a request waits): larger models'
# steps are long enough to be optimised within their first token.
WARM_MAX_WEIGHTS = 16_000_000  # ~10 ms a decode step in Pyodide (0.7-0.9 ns per weight)
WARM_PROMPT = "Once upon a time"
WARM_TOKENS = 48  # per throwaway answer: greedy and sampled answers take turns

_warm: Generation | None = None
_warm_turn = 0


def warm_up(budget_ms: float) -> bool:
    """Decode throwaway tokens for about `budget_ms` (at least one step); False when there is
    nothing to warm (no model, a conversation in the cache, a model too large to be worth it)."""
    global _warm, _warm_turn
    session = _session
    if session is None:
        return False
    if _warm_turn == 0 and (session._cached or
                            sum(t.n_elements for t in session.gguf.tensors.values()) > WARM_MAX_WEIGHTS):
        return False
    deadline = time.perf_counter() + budget_ms / 1000
    while True:
        if _warm is None:
            params = {"max_tokens": WARM_TOKENS, **({"temperature": 0.0} if _warm_turn % 2 == 0 else {})}
            _warm = session.start({"prompt": WARM_PROMPT, "params": params})
            _warm_turn += 1
        if _warm.step() is None:  # that answer is done (and recorded): forget it, start another
            _warm = None
            session.forget()
        if time.perf_counter() >= deadline:
            return True


def _forget_warm_up() -> None:
    """A throwaway answer belongs to the session it was started on: a new or dropped model ends it."""
    global _warm, _warm_turn
    _warm, _warm_turn = None, 0


def end_warm_up() -> None:
    """Drop the throwaway answer: the next request computes everything as after a load."""
    global _warm, _warm_turn
    if _warm is not None:
        _warm.close()
        _warm = None
    if _warm_turn and _session is not None:
        _session.forget()
    _warm_turn = 0


OPENING_CHUNK = 8  # tokens of the chat template's opening prefilled per idle slice (prefill_opening)


def prefill_opening() -> bool:
    """Once idle after ready (static/worker.js, after the warm-up): the next OPENING_CHUNK tokens of
    the chat template's opening into the KV cache (Session.prefill_opening), so that a new chat's
    first answer prefills only what the user wrote (24 of the 37 tokens of a short question to
    Qwen2.5-Coder). True while more is to come; False with nothing to do (no model, a conversation
    in the cache, a warm-up's answer still open, no opening)."""
    if _session is None or _warm is not None:
        return False
    return _session.prefill_opening(OPENING_CHUNK)


def start_generation(request: Any) -> "JsGeneration":
    """Begin answering `request` = {"messages": [...]} or {"prompt": str}, plus "params"."""
    if _session is None:
        raise RuntimeError("no model loaded (call load_model first)")
    return JsGeneration(_session.start(_py(request)))


class JsGeneration:
    """A Generation as the worker drives it: step() gives each event as a plain JS object, steps()
    a batch of them (static/boot.js relayGeneration); after gen.abort() the next event is done,
    reason "abort"."""

    def __init__(self, gen: Generation):
        self.gen = gen

    def step(self) -> Any:
        return _js(self.gen.step())

    def steps(self, budget_ms: float) -> Any:
        """Several events at once: step() until done or `budget_ms` have passed (at least one step).
        One crossing into JS per batch instead of one per token; [] when finished."""
        out: list[dict] = []
        deadline = time.perf_counter() + budget_ms / 1000
        while (ev := self.gen.step()) is not None:
            out.append(ev)
            if ev["type"] == "done" or time.perf_counter() >= deadline:
                break
        return _js(out)

    def __getattr__(self, name: str) -> Any:  # need, provide, abort, close, reused, ...: the Generation's own
        return getattr(self.gen, name)
