// The build's runtime snapshot (build_wasm.py step 4c): Python's memory once numpy and the engine are
// imported, taken by this Pyodide under Node with the same steps as a browser worker's first start
// (static/boot.js bootPython), so that a first visit starts from it instead of starting Python,
// loading numpy and importing (static/snapshot.js has the format).
//   node scripts/build_snapshot.mjs STAGED OUT   (STAGED: the staged static/ with build-manifest.json)
// Prints {"checksum": ...}: static/snapshot.js checksum of the bytes written to OUT.
import fs from "node:fs";
import path from "node:path";
import { SNAPSHOT_IMPORTS, SNAPSHOT_LATE_IMPORTS } from "../static/boot.js";
import { checksumParts, recordLibraries, takeSnapshotParts } from "../static/snapshot.js";

const TABLE_SLACK = 16;
const [staged, out] = process.argv.slice(2);
const manifest = JSON.parse(fs.readFileSync(path.join(staged, "build-manifest.json"), "utf8"));
const runtime = path.join(staged, manifest.runtime.base_url);
const { loadPyodide } = await import(path.join(runtime, "pyodide.mjs"));
const py = await loadPyodide({ indexURL: runtime, _makeSnapshot: true, stdout: () => {}, stderr: (s) => console.error(s) });
// Room in the function table for what a browser adds at start-up and Node does not (Chromium: the
// argument-counting function of Pyodide's call trampoline, which needs WebAssembly GC), so that numpy's
// modules, placed after it, find their recorded slots free there (static/snapshot.js reattach).
py._module.wasmTable.grow(TABLE_SLACK);
py.runPython(`import ${SNAPSHOT_IMPORTS}`);
for (const whl of manifest.wheels) {
  const data = new Uint8Array(fs.readFileSync(path.join(staged, whl.file)));
  if (whl.extract_dir) py.unpackArchive(data, "zip", { extractDir: whl.extract_dir });
  else py.unpackArchive(data, "wheel");
}
py.runPython("import importlib; importlib.invalidate_caches()");
const recorder = recordLibraries(py);
try {
  await py.loadPackage(manifest.packages, { checkIntegrity: true, messageCallback: () => {} });
} finally { recorder.stop(); }
py.runPython("import importlib; importlib.invalidate_caches()");
py.pyimport("engine.bridge");
py.runPython(`import ${SNAPSHOT_LATE_IMPORTS}`);
const [memory, rest] = takeSnapshotParts(py, recorder);
const fd = fs.openSync(out, "w");
fs.writeSync(fd, memory);
fs.writeSync(fd, rest);
fs.closeSync(fd);
console.log(JSON.stringify({ checksum: checksumParts([memory, rest]) }));
process.exit(0);   // a module imported above keeps the event loop alive
