"""Where the tests find the real model and shared/ (read-only inputs written by others).

MOTE_GEMMA_PATH points at the Gemma 3 270M GGUF (`.ci/run` pulls it and sets this). Without it the
Gemma tests skip, except when MOTE_REQUIRE_GEMMA=1 (CI), where a missing model is a failure: CI
must never pass by skipping the tests that matter.
"""

import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SHARED = Path(os.environ.get("MOTE_SHARED", ROOT.parent / "shared"))
REFERENCE = SHARED / "reference"
GEMMA_PATH = Path(os.environ.get("MOTE_GEMMA_PATH", "/tmp/gemma/gemma-3-270m-q4_k_m.gguf"))


def require(path: Path, what: str) -> Path:
    if path.exists():
        return path
    message = f"{what} not found at {path}"
    if os.environ.get("MOTE_REQUIRE_GEMMA") == "1":
        pytest.fail(message + " (MOTE_REQUIRE_GEMMA=1)")
    pytest.skip(message)


def gemma_path() -> Path:
    return require(GEMMA_PATH, "Gemma 3 270M GGUF (set MOTE_GEMMA_PATH or run `mote pull gemma-3-270m`)")
