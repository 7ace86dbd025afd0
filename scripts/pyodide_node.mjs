// Pyodide under Node, as the page boots it: the same Pyodide 0.27.7, numpy and engine wheel
// (static/, built by build_wasm.py), with MODEL set to the given GGUF (mounted read-only at /model).
// Used by the measurement scripts beside it; no browser is needed.
import fs from "node:fs";
import path from "node:path";
import { fileURLToPath } from "node:url";

/** Exit with `usage` unless `model` names a file; then boot Pyodide with it as MODEL. */
export async function bootWithModel(model, usage) {
  if (!model || !fs.existsSync(model)) {
    console.error(`usage: ${usage}`);
    process.exit(2);
  }
  const staticDir = path.join(path.dirname(fileURLToPath(import.meta.url)), "..", "static");
  const { loadPyodide } = await import(path.join(staticDir, "pyodide", "pyodide.mjs"));
  const manifest = JSON.parse(fs.readFileSync(path.join(staticDir, "build-manifest.json"), "utf8"));
  const indexURL = path.join(staticDir, "pyodide") + "/";
  const py = await loadPyodide({ indexURL, stdout: () => {}, stderr: (s) => console.error(s) });
  for (const whl of manifest.wheels) {
    const data = new Uint8Array(fs.readFileSync(path.join(staticDir, whl.file)));
    if (whl.extract_dir) py.unpackArchive(data, "zip", { extractDir: whl.extract_dir });
    else py.unpackArchive(data, "wheel");
  }
  const numpy = manifest.runtime.files.find((f) => f.file.endsWith(".whl")).file.split("/").pop();
  await py.loadPackage(indexURL + numpy, { messageCallback: () => {} });
  py.FS.mkdirTree("/model");
  py.FS.mount(py.FS.filesystems.NODEFS, { root: path.dirname(path.resolve(model)) }, "/model");
  py.globals.set("MODEL", "/model/" + path.basename(model));
  return py;
}

/** The WASM heap's size now, in bytes (what static/boot.js memory() reports as wasm_bytes). */
export const heapBytes = (py) => py._module.HEAP8.buffer.byteLength;

/** The most of the heap the load has used so far: where malloc's space starts (the program's data and
 *  stack below it) plus dlmalloc's largest footprint. A heap of this size would not have grown. */
export function peakBytes(py) {
  const m = py._module;
  return m._sbrk(0) - m._malloc_footprint() + m._malloc_max_footprint();
}

/** Bytes as MiB, one decimal. */
export const mib = (n) => (n / 2 ** 20).toFixed(1);

/**
 * The size the heap is grown to before a load: the worker's heap_bytes (estimate + margin), or with
 * --margin=MB among `args`, the estimate + MB (negative: below it), to find what a load really needs
 * (the smallest heap that does not grow again). Grows it as static/boot.js growHeap does (not
 * imported here: that module starts a MessageChannel Node would wait on).
 */
export function growForLoad(py, worker, args) {
  const margin = args.find((a) => a.startsWith("--margin="));
  const target = margin ? worker.total_bytes + Number(margin.split("=")[1]) * 2 ** 20 : worker.heap_bytes;
  if (target > heapBytes(py)) py._module.growMemory(target);
}

/** One line per step: what was done, the heap after it. */
export function printSteps(rows) {
  for (const [what, n, peak] of rows) console.log(`${what.padEnd(24)} WASM ${mib(n)} MiB` + (peak ? `  peak ${mib(peak)} MiB` : ""));
}
