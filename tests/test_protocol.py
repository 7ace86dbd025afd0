"""The browser boundary declared once: static/protocol.js against what Python does and what static/ ships.

* engine.bridge, driven as static/worker.js drives it (tiny model, CPython), emits prefill, token and
  done events with exactly the fields protocol.js ENGINE_FIELDS declares, an aborted generation
  included (its own done event, reason "abort");
* protocol.js SAMPLING_KEYS are exactly the settings engine.bridge accepts (PARAM_TYPES);
* static/worker-count.js SHARDABLE are the architectures the transformer (and so engine/shard.py) runs;
* the service worker's app shell (static/sw.js SHELL) lists every file static/ ships for the page.
"""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PROTOCOL = (ROOT / "static" / "protocol.js").read_text()


def js_literal(name: str, source: str = PROTOCOL):
    """The JSON literal assigned to `export const NAME = Object.freeze(...)` in `source` (protocol.js)."""
    m = re.search(rf"export const {name} = Object\.freeze\((.*?)\);\n", source, re.S)
    assert m, f"no {name} = Object.freeze(...)"
    return json.loads(m[1])


@pytest.fixture(scope="module")
def bridge(tmp_path_factory):
    pytest.importorskip("gguf")
    from engine import bridge
    from tests.tiny_models import write_tiny

    path = write_tiny(tmp_path_factory.mktemp("m") / "tiny.gguf", "llama", seed=3)
    bridge.load_model(path.read_bytes())
    return bridge


def events(gen, abort_after: int | None = None) -> list[dict]:
    """step() until None, as static/boot.js relayGeneration does (abort() after `abort_after` tokens)."""
    out = []
    while (ev := gen.step()) is not None:
        out.append(ev)
        if abort_after is not None and sum(e["type"] == "token" for e in out) == abort_after:
            gen.abort()
    gen.close()
    return out


def test_engine_events_have_the_declared_fields(bridge):
    fields = js_literal("ENGINE_FIELDS")
    assert set(fields) == {"prefill", "token", "done"}
    whole = events(bridge.start_generation({"prompt": "The cat", "params": {"temperature": 0, "max_tokens": 6}}))
    aborted = events(bridge.start_generation({"prompt": "The cat", "params": {"temperature": 0, "max_tokens": 50}}),
                     abort_after=2)
    assert whole[-1]["reason"] != "abort" and aborted[-1]["reason"] == "abort"
    assert aborted[-1]["n_generated"] == 2 and aborted[-1]["full_text"] == "".join(e["text"] for e in aborted[:-1]
                                                                                  if e["type"] == "token") + aborted[-1]["text"]
    for ev in whole + aborted:
        assert sorted(ev) == sorted(fields[ev["type"]]), (ev["type"], sorted(ev), fields[ev["type"]])
    assert {ev["type"] for ev in whole} == set(fields)


def test_sampling_keys_are_the_bridge_params(bridge):
    assert sorted(js_literal("SAMPLING_KEYS")) == sorted(bridge.PARAM_TYPES)


def test_shardable_architectures_are_the_engines():
    from engine.config import SUPPORTED_ARCHITECTURES

    worker_count = (ROOT / "static" / "worker-count.js").read_text()
    assert sorted(js_literal("SHARDABLE", worker_count)) == sorted(SUPPORTED_ARCHITECTURES)


def test_service_worker_shell_lists_the_shipped_static_files():
    """SHELL names every tracked file of static/ except the service worker itself and the embed
    script (which other sites load, not the page); the manifest and what it lists come on top."""
    sw = (ROOT / "static" / "sw.js").read_text()
    shell = ["/static/" + f for f in json.loads(re.search(r"const SHELL = (\[.*?\]);", sw, re.S)[1])]
    try:
        tracked = subprocess.run(["git", "ls-files", "static"], cwd=ROOT, capture_output=True, text=True,
                                 check=True).stdout.split()
    except (OSError, subprocess.CalledProcessError):
        pytest.skip("not a git checkout")
    shipped = {f"/{p}" for p in tracked} - {"/static/sw.js", "/static/mote-embed.js"}
    assert set(shell) | {"/static/build-manifest.json"} == shipped | {"/static/build-manifest.json"}
    assert len(shell) == len(set(shell))
