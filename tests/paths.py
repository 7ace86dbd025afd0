"""Where the tests find the real model and the inputs written by others.

SHARED: Atome LM's checkpoints and the reference outputs, vendored in tests/data/shared (its
README says where each file comes from); MOTE_SHARED points at another copy. They are part of
the repository, so a missing one is a failure, never a skip (`shared_file`).
MOTE_GEMMA_PATH points at the Gemma 3 270M GGUF (`scripts/test.sh` pulls it and sets this). Without
it the Gemma tests skip, except when MOTE_REQUIRE_GEMMA=1 (CI), where a missing model is a failure:
CI must never pass by skipping the tests that matter.
"""

import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SHARED = Path(os.environ.get("MOTE_SHARED", ROOT / "tests" / "data" / "shared"))
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


def shared_file(relative: str) -> Path:
    """A vendored input (e.g. "atome/atome_944k.bin"): it must be there."""
    path = SHARED / relative
    if not path.exists():
        pytest.fail(f"{path} is missing: tests/data/shared is part of the repository (or set MOTE_SHARED)")
    return path


def pulled_model(name: str) -> Path:
    """A model `mote pull` fetched into the default cache (scripts/test.sh pulls the ones tests use);
    missing: a skip, or a failure under MOTE_REQUIRE_GEMMA=1 (CI), like the Gemma file."""
    from mote.pull import KNOWN_MODELS, default_cache_dir

    return require(default_cache_dir() / KNOWN_MODELS[name].filename, f"{name} (run `mote pull {name}`)")
