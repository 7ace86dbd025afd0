// Drives static/snapshot.js in Node (tests/test_snapshot.py runs it, two processes):
//
//   node tests/snapshot_roundtrip.mjs take    STATIC SNAPSHOT MODEL_DIR   start Python, load numpy and the
//        engine as static/boot.js does, save the snapshot to SNAPSHOT, then answer with the model
//   node tests/snapshot_roundtrip.mjs restore STATIC SNAPSHOT MODEL_DIR   start from SNAPSHOT, answer
//   node tests/snapshot_roundtrip.mjs model   STATIC SNAPSHOT MODEL_DIR   start from SNAPSHOT as static/worker.js
//        does (snapshottable again), load the model, save a snapshot of that to SNAPSHOT.model in two
//        parts (takeSnapshotParts), without generating
//   node tests/snapshot_roundtrip.mjs loaded  STATIC SNAPSHOT MODEL_DIR   start from SNAPSHOT.model, answer
//        with the model it holds (no load)
//
// Each prints one JSON line: what the snapshot holds and the answer (CHECK below).
import fs from "node:fs";
import { checksum, checksumParts, recordLibraries, takeSnapshot, takeSnapshotParts, parseSnapshot, reattach } from "../static/snapshot.js";

const [mode, staticDir, snapshotPath, modelDir] = process.argv.slice(2);
const { loadPyodide } = await import(`${staticDir}/pyodide/pyodide.mjs`);
const manifest = JSON.parse(fs.readFileSync(`${staticDir}/build-manifest.json`, "utf8"));
const indexURL = `${staticDir}/pyodide/`;
const quiet = { stdout: () => {}, stderr: () => {} };

// The golden conversation through engine.bridge (as tests/tiny_golden.py engine_greedy does), and
// numpy's parts the engine does not load at import (fft) or that keep state (random, linalg).
const CHECK = `
import json, numpy as np
from engine import bridge
data = open("/model/tiny-golden.gguf", "rb").read()
golden = json.load(open("/model/golden.json"))
buf = bridge.ModelBuffer(len(data))
buf.write(data)
bridge.load_model(buf)
gen = bridge._session.start({"messages": golden["messages"], "params": {"temperature": 0, "max_tokens": golden["max_tokens"]}})
tokens = []
while (ev := gen.step()) is not None:
    if ev["type"] == "token":
        tokens.append(ev["token_id"])
rng = np.random.Generator(np.random.PCG64(7))
json.dumps({"tokens": tokens, "random": rng.random(3).tolist(),
            "solve": np.linalg.solve(np.eye(3) * 2, np.arange(3.0)).tolist(),
            "fft": np.fft.rfft(np.arange(8.0)).real.tolist(),
            "sum": float(np.einsum("ij,j->", np.arange(12, dtype=np.float32).reshape(3, 4), np.ones(4, np.float32)))})
`;

/** @param {any} py @param {string} [check] */
function answer(py, check = CHECK) {
  py.FS.mkdirTree("/model");
  py.FS.mount(py.FS.filesystems.NODEFS, { root: modelDir }, "/model");
  return JSON.parse(py.runPython(check));
}

// The load alone, as static/worker.js does it (the snapshot is taken before any generation)...
const LOAD = `
from engine import bridge
data = open("/model/tiny-golden.gguf", "rb").read()
buf = bridge.ModelBuffer(len(data))
buf.write(data)
bridge.load_model(buf)
del buf, data
`;
// ...and CHECK with the model already in memory.
const CHECK_LOADED = CHECK.replace(/data = open[^\n]*\n/, "").replace(/buf = bridge[^\n]*\n/, "")
  .replace(/buf.write[^\n]*\n/, "").replace(/bridge.load_model[^\n]*\n/, "");
if (/load_model|ModelBuffer|open\(/.test(CHECK_LOADED.split("golden = ")[0])) throw new Error("CHECK_LOADED still loads the model");

if (mode === "take") {
  const py = await loadPyodide({ indexURL, _makeSnapshot: true, ...quiet });
  for (const whl of manifest.wheels) {
    const data = new Uint8Array(fs.readFileSync(`${staticDir}/${whl.file}`));
    if (whl.extract_dir) py.unpackArchive(data, "zip", { extractDir: whl.extract_dir });
    else py.unpackArchive(data, "wheel");
  }
  const recorder = recordLibraries(py);
  await py.loadPackage(`${indexURL}${manifest.runtime.files.find((f) => f.file.endsWith(".whl")).file.split("/").pop()}`, { messageCallback: () => {} });
  recorder.stop();
  py.runPython("import importlib; importlib.invalidate_caches()");
  py.runPython("import engine.bridge, numpy.random, engine.shard");   // static/boot.js SNAPSHOT_LATE_IMPORTS
  const bytes = takeSnapshot(py, recorder);
  fs.writeFileSync(snapshotPath, bytes);
  const { meta } = parseSnapshot(bytes);
  console.log(JSON.stringify({ libs: meta.libs.map((l) => l.name), recorded: recorder.libs.length, slots: meta.slots.length,
                               files: meta.files.length, answer: answer(py) }));
} else if (mode === "restore") {
  const parsed = parseSnapshot(new Uint8Array(fs.readFileSync(snapshotPath)));
  const py = await loadPyodide({ indexURL, _loadSnapshot: parsed.memory, ...quiet });
  await reattach(py, parsed);
  const loaded = py.runPython("import sys; 'engine.bridge' in sys.modules and 'numpy' in sys.modules");
  console.log(JSON.stringify({ imported: loaded, answer: answer(py) }));
} else if (mode === "model") {
  const parsed = parseSnapshot(new Uint8Array(fs.readFileSync(snapshotPath)));
  const py = await loadPyodide({ indexURL, _loadSnapshot: parsed.memory, _makeSnapshot: true, ...quiet });
  const placed = await reattach(py, parsed);
  const more = recordLibraries(py);
  py.FS.mkdirTree("/model");
  py.FS.mount(py.FS.filesystems.NODEFS, { root: modelDir }, "/model");
  py.runPython(LOAD);
  py.FS.unmount("/model");
  const parts = takeSnapshotParts(py, { libs: [...placed.libs, ...more.libs], tableBefore: placed.tableBefore });
  const joined = new Uint8Array(parts[0].length + parts[1].length);
  joined.set(parts[0], 0);
  joined.set(parts[1], parts[0].length);
  fs.writeFileSync(`${snapshotPath}.model`, joined);
  console.log(JSON.stringify({ placed: placed.libs.length, sizes: parts.map((p) => p.length),
                               checksum_parts: checksumParts(parts), checksum_joined: checksum(joined) }));
} else if (mode === "loaded") {
  const parsed = parseSnapshot(new Uint8Array(fs.readFileSync(`${snapshotPath}.model`)));
  const py = await loadPyodide({ indexURL, _loadSnapshot: parsed.memory, ...quiet });
  await reattach(py, parsed);
  const loaded = py.runPython("from engine import bridge; bridge.loaded_model() is not None");
  console.log(JSON.stringify({ loaded, answer: answer(py, CHECK_LOADED) }));
} else if (mode === "mismatch") {
  // A snapshot whose function table does not match this runtime's: reattach refuses it.
  const parsed = parseSnapshot(new Uint8Array(fs.readFileSync(snapshotPath)));
  const py = await loadPyodide({ indexURL, _loadSnapshot: parsed.memory, ...quiet });
  parsed.meta.tableBefore -= 1;
  let error = null;
  try { await reattach(py, parsed); } catch (e) { error = String(e); }
  console.log(JSON.stringify({ error }));
} else throw new Error(`mode ${mode}?`);
