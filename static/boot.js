// @ts-check
/**
 * Booting Python in a worker, shared by static/worker.js (one worker) and static/parallel-worker.js
 * (each shard): Pyodide -> numpy -> our wheels, everything named and checked by build-manifest.json.
 *
 *   const { py, mod } = await bootPython(BASE, "engine.bridge", (stage, phase, seconds) => ...);
 *   // stages in order: runtime, numpy, engine (the wheels, then importing `module`)
 *
 * numpy comes through Pyodide's loadPackage with checkIntegrity (pyodide-lock.json's sha256); each
 * of our wheels (engine, jinja2, markupsafe) is fetched, its sha256 compared with the manifest's,
 * and only then unpacked. Every URL is resolved against `base` (this script's folder), so a worker
 * imported cross-origin from a blob: wrapper (docs/EMBED.md) boots from the Mote server.
 */

/** @param {BufferSource} data @returns {Promise<string>} hex sha256 */
export async function sha256Hex(data) {
  const digest = await crypto.subtle.digest("SHA-256", data);
  return Array.from(new Uint8Array(digest), (b) => b.toString(16).padStart(2, "0")).join("");
}

/**
 * @param {URL} base  the folder holding build-manifest.json
 * @param {string} module  the Python module to import once the wheels are in (e.g. "engine.bridge")
 * @param {(stage: string, phase: "start"|"done", seconds?: number) => void} [onStage]
 * @returns {Promise<{py: any, mod: any}>} the Pyodide instance and the imported module (PyProxy)
 */
export async function bootPython(base, module, onStage = () => {}) {
  const r = await fetch(new URL("build-manifest.json", base));
  if (!r.ok) throw new Error(`build-manifest.json: HTTP ${r.status} (run python build_wasm.py to build the browser assets)`);
  const manifest = await r.json();
  const runtimeBase = new URL(manifest.runtime.base_url, base).href;
  /** @template T @param {string} stage @param {() => Promise<T>} work @returns {Promise<T>} */
  const timed = async (stage, work) => {
    onStage(stage, "start");
    const t0 = performance.now();
    const out = await work();
    onStage(stage, "done", (performance.now() - t0) / 1000);
    return out;
  };
  const py = await timed("runtime", async () => {
    const { loadPyodide } = await import(runtimeBase + "pyodide.mjs");
    return loadPyodide({ indexURL: runtimeBase });
  });
  await timed("numpy", () => py.loadPackage(manifest.packages, { checkIntegrity: true, messageCallback: () => {} }));
  const mod = await timed("engine", async () => {
    for (const whl of manifest.wheels) {
      const w = await fetch(new URL(whl.file, base));
      if (!w.ok) throw new Error(`${whl.file}: HTTP ${w.status}`);
      const bytes = new Uint8Array(await w.arrayBuffer());
      const got = await sha256Hex(bytes);
      if (got !== whl.sha256) throw new Error(`${whl.file}: sha256 ${got} does not match build-manifest.json (${whl.sha256})`);
      py.unpackArchive(bytes, "wheel");
    }
    py.runPython("import importlib; importlib.invalidate_caches()");
    return py.pyimport(module);
  });
  return { py, mod };
}
