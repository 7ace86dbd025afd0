"""static/snapshot.js in Node with the real Pyodide and numpy: a snapshot taken after numpy and the
engine are imported, restored in another process, answers the tiny golden conversation with the
golden tokens and computes with numpy's modules as the process that took it does (the modules the
snapshot loads back, and one it does not: numpy.fft, imported afresh after the restore). A snapshot
whose function table does not match the runtime is refused.

The browser side (the Cache API, the fallbacks, the early read) is in tests/test_browser.py.
"""

from __future__ import annotations

import json
import shutil
import subprocess

import pytest

from tests import tiny_golden as tg
from tests.browser_util import ensure_static_built
from tests.paths import ROOT

SCRIPT = ROOT / "tests" / "snapshot_roundtrip.mjs"


def run(mode: str, static, snapshot, model_dir) -> dict:
    node = shutil.which("node")
    if node is None:
        pytest.fail("node is not installed (scripts/setup.sh expects Node 20)")
    out = subprocess.run([node, str(SCRIPT), mode, str(static), str(snapshot), str(model_dir)],
                         capture_output=True, text=True, timeout=180)
    assert out.returncode == 0, out.stderr[-3000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def taken(tmp_path_factory):
    static = ensure_static_built()
    folder = tmp_path_factory.mktemp("snapshot")
    golden = tg.load_golden()
    tg.write_model(folder / "tiny-golden.gguf", golden)
    (folder / "golden.json").write_text(json.dumps(golden), encoding="utf-8")
    snapshot = folder / "snapshot.bin"
    return static, snapshot, folder, golden, run("take", static, snapshot, folder)


def test_a_restored_snapshot_answers_as_the_process_that_took_it(taken):
    static, snapshot, folder, golden, took = taken
    assert took["answer"]["tokens"] == golden["tokens"]
    # numpy's core and linalg modules are reloaded in place; the test modules Pyodide also loads are not
    libs = [name.rsplit("/", 1)[-1].split(".")[0] for name in took["libs"]]
    assert "_multiarray_umath" in libs and "_umath_linalg" in libs and "_generator" in libs, libs
    assert "_rational_tests" not in libs and len(libs) < took["recorded"], libs
    assert took["slots"] > 0 and took["files"] > 100
    restored = run("restore", static, snapshot, folder)
    assert restored["imported"] is True
    assert restored["answer"] == took["answer"]


def test_the_builds_snapshot_answers_as_a_snapshot_taken_here(taken):
    """build_wasm.py's runtime snapshot (scripts/build_snapshot.mjs), with which a first visit starts:
    the manifest names its size and checksum, and restored (numpy's modules placed where the build
    recorded them) it answers the golden conversation as the snapshot taken by this test does."""
    static, _, folder, golden, took = taken
    entry = json.loads((static / "build-manifest.json").read_text())["snapshot"]
    shipped = static / entry["file"]
    assert shipped.stat().st_size == entry["size"]
    got = subprocess.run([shutil.which("node"), "--input-type=module", "-e",
                          "import fs from 'node:fs'; const { checksum } = await import(process.argv[1]);"
                          "console.log(checksum(new Uint8Array(fs.readFileSync(process.argv[2]))));",
                          str(ROOT / "static" / "snapshot.js"), str(shipped)], capture_output=True, text=True, timeout=60)
    assert got.returncode == 0 and got.stdout.strip() == entry["checksum"], got.stderr[-2000:]
    restored = run("restore", static, shipped, folder)
    assert restored["imported"] is True
    assert restored["answer"]["tokens"] == golden["tokens"]
    assert restored["answer"] == took["answer"]


def test_a_snapshot_taken_with_the_model_loaded_answers_without_loading_it(taken):
    """What static/worker.js does for a later load of the same model: an instance started from the
    runtime snapshot (and snapshottable again) loads the model, a snapshot of it is taken in two parts
    (their checksum is the whole file's), and another process started from that snapshot holds the
    model and answers the golden conversation with the golden tokens, without loading anything."""
    static, snapshot, folder, golden, took = taken
    made = run("model", static, snapshot, folder)
    assert made["placed"] == len(took["libs"])           # numpy's modules, placed again where recorded
    assert made["sizes"][0] % 16 == 0 and made["sizes"][1] > 0
    assert made["checksum_parts"] == made["checksum_joined"]
    loaded = run("loaded", static, snapshot, folder)
    assert loaded["loaded"] is True
    assert loaded["answer"]["tokens"] == golden["tokens"]
    assert loaded["answer"] == took["answer"]


def test_a_snapshot_of_another_function_table_is_refused(taken):
    static, snapshot, folder, _, _ = taken
    got = run("mismatch", static, snapshot, folder)
    assert got["error"] and "function table" in got["error"], got


CHECKSUM = """
const { checksum } = await import(process.argv[1]);
const rnd = (n, seed) => { const b = new Uint8Array(n); let x = seed; for (let i = 0; i < n; i++) { x = (Math.imul(x, 1103515245) + 12345) | 0; b[i] = x >>> 16; } return b; };
const base = rnd(4099, 7);                         // 1024 words, 3 tail bytes
const out = { hex: checksum(base), same: checksum(base.slice()) };
out.flips = [0, 1, 5, 2047, 4095, 4096, 4098].map((i) => { const b = base.slice(); b[i] ^= 1; return checksum(b); });
out.cut = [checksum(base.subarray(0, 4098)), checksum(base.subarray(0, 4096)), checksum(new Uint8Array(0))];
out.zeros = [checksum(new Uint8Array(16)), checksum(new Uint8Array(20))];
const padded = new Uint8Array(4100); padded.set(base, 1);
out.unaligned = checksum(padded.subarray(1));    // a view whose offset is not a multiple of 4
console.log(JSON.stringify(out));
"""


def run_with_snapshot_js(script: str):
    """Run `script` (an ES module importing process.argv[1]) under Node with static/snapshot.js; its
    printed JSON."""
    node = shutil.which("node")
    if node is None:
        pytest.fail("node is not installed (scripts/setup.sh expects Node 20)")
    out = subprocess.run([node, "--input-type=module", "-e", script, str(ROOT / "static" / "snapshot.js")],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr[-2000:]
    return json.loads(out.stdout)


def test_the_snapshot_checksum_sees_any_changed_byte_and_the_length():
    """static/snapshot.js checksum, which names a saved snapshot: every single-bit change (in a lane's
    words, the last words, the tail bytes) and every cut gives another value; an unaligned view of
    the same bytes gives the same one."""
    got = run_with_snapshot_js(CHECKSUM)
    assert len(got["hex"]) == 32 and int(got["hex"], 16) >= 0
    assert got["same"] == got["hex"] and got["unaligned"] == got["hex"]
    values = [got["hex"], *got["flips"], *got["cut"], *got["zeros"]]
    assert len(set(values)) == len(values), values


PIECES = """
const { checksum, Checksum } = await import(process.argv[1]);
const rnd = (n, seed) => { const b = new Uint8Array(n); let x = seed; for (let i = 0; i < n; i++) { x = (Math.imul(x, 1103515245) + 12345) | 0; b[i] = x >>> 16; } return b; };
const out = [];
for (const [n, seed] of [[0, 1], [3, 2], [15, 3], [16, 4], [17, 5], [4099, 6], [100003, 7]]) {
  const bytes = rnd(n, seed);
  const cuts = [];                                   // pieces of 0-40 bytes, some of them unaligned views
  const sum = new Checksum();
  for (let at = 0, k = seed; at < n;) {
    k = (Math.imul(k, 7) + 3) % 41;
    const m = Math.min(n - at, k);
    const padded = new Uint8Array(m + 1); padded.set(bytes.subarray(at, at + m), 1);
    sum.update(k % 2 ? padded.subarray(1) : bytes.subarray(at, at + m));
    cuts.push(m); at += m;
  }
  out.push({ n, whole: checksum(bytes), pieces: sum.hex(), again: sum.hex(), count: cuts.length });
}
console.log(JSON.stringify(out));
"""


def test_the_checksum_of_pieces_is_the_checksum_of_the_whole():
    """static/snapshot.js Checksum (a cached model's bytes are checked with it as they stream, in
    pieces of any length, some of them views at odd offsets) gives what checksum gives for the same
    bytes in one piece; reading the value does not change it."""
    got = run_with_snapshot_js(PIECES)
    assert [g["n"] for g in got] == [0, 3, 15, 16, 17, 4099, 100003]
    for g in got:
        assert g["pieces"] == g["whole"] == g["again"], g
    assert got[-1]["count"] > 4000                   # really many pieces
    assert len({g["whole"] for g in got}) == len(got)
