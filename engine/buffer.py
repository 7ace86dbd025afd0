"""ModelBuffer: a model file's bytes in WASM memory, written chunk by chunk (static/worker.js's sink).

Standard library only, so a worker can start filling one as soon as Python runs, while numpy and
the engine (engine.bridge) are still loading; engine.bridge re-exports it.
"""

from __future__ import annotations

import hashlib
import sys
from typing import Any

IN_PYODIDE = sys.platform == "emscripten"
if IN_PYODIDE:  # pragma: no cover - only inside the browser
    from pyodide.ffi import JsProxy  # type: ignore[import-not-found]


class ModelBuffer:
    """The GGUF file's bytes in WASM memory, filled chunk by chunk as they arrive, hashed on the way.

    Why: a model fetched into a JS ArrayBuffer and then copied into WASM memory costs the file's
    size twice at the peak (253 MB extra for Gemma 3 270M). Here the worker allocates the one
    buffer up front and copies each network (or Cache API) chunk straight into it; sha256 runs
    over the bytes as they land, so verification needs no second pass. The worker stores the
    verified file in the Cache API through views of `data` (PyProxy.getBuffer), not copies.

    With hash=False the worker checks the bytes itself (a chunk list, at the browser's native speed:
    static/model-source.js), and sha256() is refused.

    >>> b = ModelBuffer(5)
    >>> b.write(b"abc"), b.write(b"de"), b.complete, b.sha256()[:8]
    (3, 5, True, '36bbe50e')
    """

    def __init__(self, size: int, hash: bool = True):
        if not isinstance(size, int) or size <= 0:
            raise ValueError(f"model size {size!r} must be a positive number of bytes")
        self.size = size
        self.data = bytearray(size)  # (size,) uint8, the only copy of the file
        self.filled = 0              # bytes written so far
        self._sha = hashlib.sha256() if hash else None

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
        if self._sha is not None:
            self._sha.update(view)
        self.filled += n
        return self.filled

    @property
    def complete(self) -> bool:
        return self.filled == self.size

    def sha256(self) -> str:
        """Hex sha256 of the bytes written so far (the whole file once complete)."""
        if self._sha is None:
            raise RuntimeError("this buffer was made with hash=False: its bytes are checked by the worker")
        return self._sha.hexdigest()
