"""Bridge: the functions static/worker.js calls inside Pyodide (last stage before the browser).

    GGUF bytes, chunk by chunk -> ModelBuffer (in WASM memory, sha256 as it fills)
        -> load_model() -> Session -> start_generation() -> Generation.step() -> one message dict per token

This is the only module that touches Pyodide's `js`/`pyodide` modules, and only behind
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

import hashlib
import sys
import time
from dataclasses import fields
from typing import Any

IN_PYODIDE = sys.platform == "emscripten"
if IN_PYODIDE:  # pragma: no cover - only inside the browser
    import js  # type: ignore[import-not-found]
    from pyodide.ffi import JsProxy, to_js  # type: ignore[import-not-found]

# Weights as the worker loads them: no float32 copies of the layer matrices (engine.model.LoadPolicy).
# In Pyodide (no BLAS) the int8-block kernels decode Gemma 3 270M as fast as float32 does
# (3.36 vs 3.40 tok/s, prefill 12.3 vs 13.5 tok/s, node + Pyodide 0.27.7) while the float32 copies
# cost ~105 MB of WASM memory (780 vs 885 MB), which never shrinks. Used in CPython too, so the
# tests that drive this module compute what the page computes.
DENSE_LAYERS_MB = 0.0

# Sampling settings the page may send, with their types; anything else is refused by name.
PARAM_TYPES = {"temperature": float, "top_k": int, "top_p": float, "min_p": float,
               "repeat_penalty": float, "repeat_last_n": int, "seed": int, "max_tokens": int}


def _py(value: Any) -> Any:
    """A JS value (JsProxy) as Python (dicts, lists, str...); Python values pass through."""
    if IN_PYODIDE and isinstance(value, JsProxy):  # pragma: no cover
        return value.to_py()
    return value


def _js(value: dict | None) -> Any:
    """A result dict as a plain JS object in the browser (None -> undefined); unchanged in CPython."""
    if IN_PYODIDE and value is not None:  # pragma: no cover
        return to_js(value, dict_converter=js.Object.fromEntries)
    return value


class ModelBuffer:
    """The GGUF file's bytes in WASM memory, filled chunk by chunk as they arrive, hashed on the way.

    Why: a model fetched into a JS ArrayBuffer and then copied into WASM memory costs the file's
    size twice at the peak (253 MB extra for Gemma 3 270M). Here the worker allocates the one
    buffer up front and copies each network (or Cache API) chunk straight into it; sha256 runs
    over the bytes as they land, so verification needs no second pass. The worker stores the
    verified file in the Cache API through views of `data` (PyProxy.getBuffer), not copies.

    >>> b = ModelBuffer(5)
    >>> b.write(b"abc"), b.write(b"de"), b.complete, b.sha256()[:8]
    (3, 5, True, '36bbe50e')
    """

    def __init__(self, size: int):
        if not isinstance(size, int) or size <= 0:
            raise ValueError(f"model size {size!r} must be a positive number of bytes")
        self.size = size
        self.data = bytearray(size)  # (size,) uint8, the only copy of the file
        self.filled = 0              # bytes written so far
        self._sha = hashlib.sha256()

    def write(self, chunk: Any) -> int:
        """Append one chunk (a JS Uint8Array in the browser, bytes-like in CPython); returns bytes filled."""
        is_js = IN_PYODIDE and isinstance(chunk, JsProxy)
        n = int(chunk.byteLength) if is_js else len(chunk)
        if self.filled + n > self.size:
            raise ValueError(f"received {self.filled + n} bytes, more than the expected {self.size}")
        view = memoryview(self.data)[self.filled : self.filled + n]  # (n,) where this chunk goes
        if is_js:  # pragma: no cover - browser only
            chunk.assign_to(view)  # one memcpy from the JS chunk into WASM memory
        else:
            view[:] = chunk
        self._sha.update(view)
        self.filled += n
        return self.filled

    @property
    def complete(self) -> bool:
        return self.filled == self.size

    def sha256(self) -> str:
        """Hex sha256 of the bytes written so far (the whole file once complete)."""
        return self._sha.hexdigest()


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
    """Versions and two small computations, for the page's status line and the browser smoke test.

    `check` is a fixed 3x4 @ 4x2 float64 product the test recomputes in CPython: it proves numpy's
    compiled core works in this runtime, not just that it imports. `chat_check` renders a fixed
    conversation through the chat template (Jinja2 when importable), compared with CPython's text.
    """
    import platform

    import numpy as np

    import engine

    from engine.chat import ChatTemplate, jinja_available

    a = np.arange(12, dtype=np.float64).reshape(3, 4) / 7.0  # (3, 4)
    b = np.cos(np.arange(8, dtype=np.float64)).reshape(4, 2)  # (4, 2)
    return _js({
        "python": platform.python_version(),
        "platform": sys.platform,
        "numpy": np.__version__,
        "engine": engine.__version__,
        "check": (a @ b).ravel().tolist(),  # (6,)
        "jinja2": _version("jinja2") if jinja_available() else None,
        # the Gemma chat format rendered by Jinja2 when it is importable, else by the pure-Python twin
        "chat_check": ChatTemplate.create(None, "gemma3", bos_token="<bos>").render(
            [{"role": "user", "content": "Hi <b>&</b>"}]),
    })


def _version(dist: str) -> str | None:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(dist)
    except PackageNotFoundError:
        return None


class Generation:
    """One answer being generated; the worker calls step() until it returns None."""

    def __init__(self, session: "Session", prompt_tokens: list[int], reuse: int, params):
        from engine.generate import generate

        self.session = session
        self.prompt_tokens = prompt_tokens
        self.generated: list[int] = []
        self.reused = reuse                # prompt tokens taken from the KV cache, not recomputed
        self.started = time.perf_counter()
        # reuse > 0: the KV cache already holds prompt_tokens[:reuse]; feed only the rest.
        self._events = generate(session.model, session.tokenizer, prompt_tokens[reuse:], params,
                                reset=reuse == 0)
        self.finished = False

    def step(self) -> Any:
        """Advance by one event: a message dict for the worker to post, or None when finished.

        {"type": "token", "text", "token_id", "n"}   one sampled token (text may be "")
        {"type": "prefill", "n_prompt", "prefill_tok_s"}
        {"type": "done", "reason", "n_prompt", "n_generated", "prefill_tok_s", "decode_tok_s", "text"}
        """
        if self.finished:
            return None
        ev = next(self._events, None)
        if ev is None:  # the generator ended without a 'done' event (should not happen)
            self.finished = True
            return None
        if ev.kind == "token":
            self.generated.append(int(ev.token_id))
            return _js({"type": "token", "text": ev.text, "token_id": int(ev.token_id),
                        "n": len(self.generated)})
        if ev.kind == "prefill":
            return _js({"type": "prefill", "n_prompt": ev.n_prompt, "prefill_tok_s": ev.prefill_tok_s})
        self.finished = True
        self.session.remember(self.prompt_tokens + self.generated)
        return _js({"type": "done", "reason": ev.reason, "text": ev.text, "n_prompt": ev.n_prompt,
                    "n_generated": ev.n_generated, "prefill_tok_s": ev.prefill_tok_s,
                    "decode_tok_s": ev.decode_tok_s, "token_ids": list(self.generated)})

    def close(self) -> None:
        """Stop early (abort): the model stays loaded; its KV cache is not reused next turn."""
        if not self.finished:
            self.finished = True
            self._events.close()
            self.session.remember([])


class Session:
    """A loaded model with its tokenizer and chat template."""

    def __init__(self, data: Any, n_ctx: int | None = None):
        from engine.chat import ChatTemplate
        from engine.gguf import GGUFFile
        from engine.model import LoadPolicy, load_model
        from engine.tokenizer import Tokenizer

        t0 = time.perf_counter()
        self.buffer = _buffer(data)  # kept alive: weights may be views into it
        self.gguf = GGUFFile(self.buffer)
        self.model = load_model(self.gguf, n_ctx=n_ctx, policy=LoadPolicy(dense_layers_mb=DENSE_LAYERS_MB, own_buffer=True))
        self.tokenizer = Tokenizer.from_metadata(self.gguf.metadata)
        self.template = ChatTemplate.from_metadata(self.gguf.metadata)
        self.load_seconds = time.perf_counter() - t0
        self._cached: list[int] = []  # token ids whose keys/values sit in the model's KV cache

    def info(self) -> dict:
        md = self.gguf.metadata
        return {
            "name": md.get("general.name"),
            "architecture": md.get("general.architecture"),
            "n_ctx": getattr(self.model, "n_ctx", None),
            "vocab_size": self.tokenizer.vocab_size,
            "chat_template": self.template.note,
            "load_seconds": self.load_seconds,
            "n_bytes": len(self.buffer),
        }

    def remember(self, tokens: list[int]) -> None:
        """Record what the KV cache holds after a generation (model.pos tokens of `tokens`)."""
        self._cached = list(tokens[: self.model.pos]) if tokens else []

    def prompt_tokens(self, request: dict) -> list[int]:
        return request_tokens(self.tokenizer, self.template, request)

    def start(self, request: dict) -> Generation:
        from engine.generate import SamplingParams

        params = sampling_params(request.get("params") or {}, SamplingParams, self.template.stop)
        tokens = self.prompt_tokens(request)
        return Generation(self, tokens, reusable_prefix(self._cached, tokens, self.model.pos), params)


def request_tokens(tokenizer, template, request: dict) -> list[int]:
    """Token ids of a request: a chat (`messages`, through the chat template) or a raw `prompt`."""
    from engine.chat import chat_tokens

    if request.get("messages") is not None:
        return chat_tokens(tokenizer, template, request["messages"])
    prompt = request.get("prompt")
    if not isinstance(prompt, str):
        raise ValueError(f"generate request needs 'messages' or a 'prompt' string, got {sorted(request)}")
    return list(tokenizer.encode(prompt, add_bos=None))


def reusable_prefix(cached: list[int], tokens: list[int], pos: int) -> int:
    """How many leading tokens the KV cache already holds (a chat's next turn), or 0."""
    n = len(cached)
    return n if 0 < n < len(tokens) and tokens[:n] == cached and pos == n else 0


def sampling_params(raw: dict, cls, stop: tuple[str, ...] = ()):
    """SamplingParams from the page's settings dict; unknown or mistyped keys are errors."""
    known = {f.name for f in fields(cls)}
    out: dict[str, Any] = {"stop": tuple(stop)}
    for key, value in raw.items():
        if key not in PARAM_TYPES or key not in known:
            raise ValueError(f"unknown sampling setting {key!r} (expected one of {sorted(PARAM_TYPES)})")
        if value is None:
            continue
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ValueError(f"sampling setting {key}={value!r} must be a number")
        if PARAM_TYPES[key] is int and value != int(value):
            raise ValueError(f"sampling setting {key}={value!r} must be an integer")
        out[key] = PARAM_TYPES[key](value)
    return cls(**out)


# ---- the worker's entry points (module-level, one model per worker) ----------------------------
_session: Session | None = None


def load_model(data: Any, n_ctx: int | None = None) -> Any:
    """Parse and load GGUF bytes (a JS Uint8Array in the browser, bytes in CPython); returns info."""
    global _session
    _session = None  # drop the previous model before building the next one (peak memory)
    _session = Session(data, n_ctx)
    return _js(_session.info())


def chat_prompt(messages: Any) -> str:
    """The prompt text the chat template makes of `messages` (for display and tests)."""
    if _session is None:
        raise RuntimeError("no model loaded (call load_model first)")
    return _session.template.render(_py(messages))


def start_generation(request: Any) -> Generation:
    """Begin answering `request` = {"messages": [...]} or {"prompt": str}, plus "params"."""
    if _session is None:
        raise RuntimeError("no model loaded (call load_model first)")
    return _session.start(_py(request))
