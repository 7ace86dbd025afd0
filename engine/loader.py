"""From a model argument to everything generation needs (glue over the pipeline's first stages).

    path or name -> pull.resolve_model -> gguf.open_gguf -> model.load_model + Tokenizer + ChatTemplate

The CLI, the benchmark and the tests use `load`; the browser bridge builds the same objects from a
buffer with `load_buffer`.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

from .chat import ChatTemplate
from .gguf import GGUFFile, open_gguf
from .model import LoadPolicy, Model, load_model
from .progress import Progress
from .pull import resolve_model
from .tokenizer import Tokenizer


@dataclass
class Loaded:
    gguf: GGUFFile
    model: Model
    tokenizer: Tokenizer
    template: ChatTemplate
    path: Path | None
    load_seconds: float


def load_buffer(buffer, n_ctx: int | None = None, policy: LoadPolicy | None = None, path: Path | None = None,
                progress=None) -> Loaded:
    """Parse a GGUF held in memory (bytes, memoryview, mmap) and prepare model and tokenizer.

    progress: None, a `(done, total)` callable, or "auto" (a bar on stderr for files over 32 MB).
    """
    t0 = time.perf_counter()
    gguf = buffer if isinstance(buffer, GGUFFile) else GGUFFile(buffer)
    bar = None
    if progress == "auto":
        progress = bar = Progress(gguf.nbytes, f"load {path.name if path else 'model'}") if gguf.nbytes > 32 << 20 else None
    if gguf.metadata.get("general.architecture") == "atome":
        progress = None  # tiny, and not built layer by layer here
    model = load_model(gguf, n_ctx=n_ctx, policy=policy or LoadPolicy(), progress=progress)
    if bar is not None:
        bar.close()
    tokenizer = Tokenizer.from_metadata(gguf.metadata)
    template = ChatTemplate.from_metadata(gguf.metadata)
    return Loaded(gguf, model, tokenizer, template, path, time.perf_counter() - t0)


def load(model: str | Path, n_ctx: int | None = None, policy: LoadPolicy | None = None, progress=None) -> Loaded:
    """Open a GGUF path or a pulled model name (e.g. 'gemma-3-270m')."""
    path = resolve_model(model)
    t0 = time.perf_counter()
    loaded = load_buffer(open_gguf(path), n_ctx=n_ctx, policy=policy, path=path, progress=progress)
    loaded.load_seconds = time.perf_counter() - t0
    return loaded
