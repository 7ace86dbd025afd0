"""static/model-source.js's storeModel in Node, against a fake Cache API: a store that stalls ends
with an error that says so (it never holds a load), while a slow source does not count as a stall.

The browser tests cover the download side of stalls (tests/test_browser.py, a server that stops
sending); the Cache API cannot be made to stall there, so this drives storeModel directly.
"""

from __future__ import annotations

import json
import shutil
import subprocess

import pytest

from tests.paths import ROOT

MODULE = ROOT / "static" / "model-source.js"

# globals the module reads, a fake cache, and a source stream that records whether it was cancelled;
# `put` and `source` come from each test (JavaScript text)
HARNESS = """
globalThis.self = { location: { origin: "http://127.0.0.1:8000", href: "http://127.0.0.1:8000/" } };
const stored = [];
const fakeCache = { put: PUT };
globalThis.caches = { open: async () => fakeCache };
const { storeModel } = await import(MODULE);
let cancelled = null;
const chunks = [new Uint8Array([1, 2, 3]), new Uint8Array([4, 5])];
const body = new ReadableStream({
  async pull(c) { SOURCE },
  cancel(reason) { cancelled = String(reason?.message ?? reason); },
}, { highWaterMark: 0 });
const t0 = performance.now();
let out;
try {
  out = { result: await storeModel({ sha256: "ab".repeat(32), size: 5, stall_s: 1 }, body) };
} catch (e) {
  out = { error: String(e.message) };
}
console.log(JSON.stringify({ ...out, seconds: (performance.now() - t0) / 1000, cancelled, stored }));
process.exit(0);
"""

READS_ALL = "async (key, r) => { stored.push(...new Uint8Array(await r.arrayBuffer())); }"
QUICK = "const next = chunks.shift(); if (next) c.enqueue(next); else c.close();"


def store(put: str, source: str) -> dict:
    node = shutil.which("node")
    if node is None:
        pytest.fail("node is not installed (scripts/setup.sh expects Node 20)")
    script = (HARNESS.replace("MODULE", json.dumps(MODULE.as_uri())).replace("PUT", put)
              .replace("SOURCE", source))
    out = subprocess.run([node, "--input-type=module", "-e", script], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)


def test_a_store_stores_every_byte():
    out = store(READS_ALL, QUICK)
    assert out["result"] is True and out["stored"] == [1, 2, 3, 4, 5] and out["cancelled"] is None, out


def test_a_cache_that_never_reads_ends_the_store_with_an_error():
    out = store("() => new Promise(() => {})", QUICK)
    assert out["error"] == "the Cache API took no bytes for 1 s", out
    assert 1 <= out["seconds"] < 5, out
    assert out["cancelled"] == out["error"]          # the source is told, so a download tee stops queueing


def test_a_cache_that_stops_reading_halfway_ends_the_store():
    put = ("async (key, r) => { const reader = r.body.getReader(); "
           "const { value } = await reader.read(); stored.push(...value); await new Promise(() => {}); }")
    out = store(put, QUICK)
    assert out["error"] == "the Cache API took no bytes for 1 s" and out["stored"] == [1, 2, 3], out


def test_a_slow_source_is_not_a_stalled_cache():
    """Each chunk takes 1.5 s to come (longer than stall_s): the cache is waiting, not stuck."""
    slow = "await new Promise((r) => setTimeout(r, 1500)); " + QUICK
    out = store(READS_ALL, slow)
    assert out["result"] is True and out["stored"] == [1, 2, 3, 4, 5], out
    assert out["seconds"] >= 4, out
