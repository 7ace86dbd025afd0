// What a memory snapshot taken after the model's load would cost and save (issue 16, the warm start):
// Pyodide under Node, the runtime booted as static/boot.js boots it on a first visit (`_makeSnapshot`,
// numpy's libraries recorded by static/snapshot.js), then the model loaded as static/worker.js loads
// it, then static/snapshot.js's takeSnapshot, checksum, parseSnapshot and reattach. Prints each
// step's seconds, the snapshot's size, and the greedy tokens of one prompt before and after a restore
// (they must be equal); the heap is grown to the budget's size first, as the worker does. Not a product path: nothing here is used by the page.
//
//   node scripts/model_snapshot.mjs MODEL.gguf
import fs from "node:fs";
import path from "node:path";
import { fileURLToPath } from "node:url";
import { growForLoad } from "./pyodide_node.mjs";
import { checksum, parseSnapshot, reattach, recordLibraries, takeSnapshot } from "../static/snapshot.js";

const model = process.argv[2];
if (!model || !fs.existsSync(model)) {
  console.error("usage: node scripts/model_snapshot.mjs MODEL.gguf");
  process.exit(2);
}
const staticDir = path.join(path.dirname(fileURLToPath(import.meta.url)), "..", "static");
const { loadPyodide } = await import(path.join(staticDir, "pyodide", "pyodide.mjs"));
const manifest = JSON.parse(fs.readFileSync(path.join(staticDir, "build-manifest.json"), "utf8"));
const indexURL = path.join(staticDir, "pyodide") + "/";
const quiet = { stdout: () => {}, stderr: (/** @type {string} */ s) => console.error(s) };
const seconds = (t0) => ((performance.now() - t0) / 1000).toFixed(2);

let t0 = performance.now();
const py = await loadPyodide({ indexURL, _makeSnapshot: true, ...quiet });
for (const whl of manifest.wheels) {
  const data = new Uint8Array(fs.readFileSync(path.join(staticDir, whl.file)));
  if (whl.extract_dir) py.unpackArchive(data, "zip", { extractDir: whl.extract_dir });
  else py.unpackArchive(data, "wheel");
}
const recorder = recordLibraries(py);
const numpy = manifest.runtime.files.find((f) => f.file.endsWith(".whl")).file.split("/").pop();
await py.loadPackage(indexURL + numpy, { messageCallback: () => {} });
recorder.stop();
py.runPython("import engine.bridge, engine.shard");
console.log(`booted (numpy, engine imported): ${seconds(t0)} s`);

/** Restore `bytes` into a fresh Pyodide, as a later visit would: [instance, seconds to start, seconds to reattach]. */
async function restore(bytes) {
  const t = performance.now();
  const parsed = parseSnapshot(bytes);
  const started = await loadPyodide({ indexURL, _loadSnapshot: parsed.memory, ...quiet });
  const t1 = performance.now();
  await reattach(started, parsed);
  return [started, (t1 - t) / 1000, (performance.now() - t1) / 1000];
}

t0 = performance.now();
const runtime = takeSnapshot(py, recorder);
console.log(`runtime snapshot (today's): ${(runtime.length / 2 ** 20).toFixed(1)} MiB, taken in ${seconds(t0)} s`);
for (let i = 0; i < 2; i++) {
  const [, start, attach] = await restore(runtime);
  console.log(`  restored: start ${start.toFixed(2)} s, numpy reattached ${attach.toFixed(2)} s`);
}

const size = fs.statSync(model).size;
py.globals.set("SIZE", size);
const buf = py.runPython("from engine import bridge; BUF = bridge.ModelBuffer(SIZE, False); BUF");
const fd = fs.openSync(model, "r");
const chunk = new Uint8Array(1 << 20);
for (let at = 0; at < size; ) {
  const n = fs.readSync(fd, chunk, 0, Math.min(chunk.length, size - at), at);
  buf.write(chunk.subarray(0, n));
  at += n;
}
buf.destroy();
t0 = performance.now();
const verdict = py.runPython("VERDICT = bridge.header_budget(BUF, SIZE); VERDICT");
growForLoad(py, verdict.budget.workers[0], []);  // the heap as the worker grows it before the load
py.runPython("bridge.load_model(BUF, None, VERDICT.layout); del BUF, VERDICT");
console.log(`model loaded (header budget, parse, weights prepared): ${seconds(t0)} s`);

t0 = performance.now();
const snap = takeSnapshot(py, recorder);
console.log(`model snapshot: ${(snap.length / 2 ** 20).toFixed(1)} MiB, taken in ${seconds(t0)} s`);
t0 = performance.now();
checksum(snap);
console.log(`  its checksum (static/snapshot.js): ${seconds(t0)} s`);

const GREEDY = `
from engine import bridge
g = bridge.start_generation({"prompt": "Once upon a time, in a small village, there lived an old clockmaker who",
                             "params": {"temperature": 0, "max_tokens": 8}})
ids = []
while (ev := g.gen.step())["type"] != "done":
    if ev["type"] == "token": ids.append(ev["token_id"])
str(ids)`;
t0 = performance.now();
const before = py.runPython(GREEDY);
console.log(`greedy tokens, loaded: ${before} (${seconds(t0)} s)`);
for (let i = 0; i < 2; i++) {
  const [again, start, attach] = await restore(snap);
  t0 = performance.now();
  const after = again.runPython(GREEDY);
  console.log(`  restored: start ${start.toFixed(2)} s, numpy reattached ${attach.toFixed(2)} s; greedy ${after} `
    + `(${seconds(t0)} s) ${after === before ? "same" : "DIFFERENT"}`);
}
