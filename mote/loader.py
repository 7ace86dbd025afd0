"""From a model argument to everything generation needs (glue over the pipeline's first stages).

    path or name -> pull.resolve_model -> gguf.open_gguf -> model.load_model + Tokenizer + ChatTemplate

The CLI, the benchmarks and the tests use `load`; everything is assembled by engine.session.Session,
as the browser bridge and the leader shard assemble it.
"""

from __future__ import annotations

import time
from pathlib import Path

from engine.gguf import GGUFFile, open_gguf
from engine.model import LoadPolicy
from engine.session import Session

from .progress import Progress
from .pull import resolve_model


Loaded = Session  # what load() returns: gguf, model, tokenizer, template, path, load_seconds


def load_buffer(buffer, n_ctx: int | None = None, policy: LoadPolicy | None = None, path: Path | None = None,
                progress=None) -> Loaded:
    """Parse a GGUF held in memory (bytes, memoryview, mmap) and prepare model and tokenizer.

    progress: None, a `(done, total)` callable, or "auto" (a bar on stderr for files over 32 MB).
    """
    gguf = buffer if isinstance(buffer, GGUFFile) else GGUFFile(buffer)
    bar = None
    if progress == "auto":
        progress = bar = Progress(gguf.nbytes, f"load {path.name if path else 'model'}") if gguf.nbytes > 32 << 20 else None
    session = Session.load(gguf, n_ctx=n_ctx, policy=policy or LoadPolicy(), progress=progress, path=path)
    if bar is not None:
        bar.close()
    return session


def load(model: str | Path, n_ctx: int | None = None, policy: LoadPolicy | None = None, progress=None) -> Loaded:
    """Open a GGUF path or a pulled model name (e.g. 'gemma-3-270m')."""
    path = resolve_model(model)
    t0 = time.perf_counter()
    loaded = load_buffer(open_gguf(path), n_ctx=n_ctx, policy=policy, path=path, progress=progress)
    loaded.load_seconds = time.perf_counter() - t0
    return loaded
