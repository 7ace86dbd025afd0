// @ts-check
/**
 * What both kinds of worker share, static/worker.js (one worker) and static/parallel-worker.js
 * (each shard): booting Python, reading its memory, and relaying a generation to the page.
 *
 *   const { py, mod } = await bootPython(BASE, "engine.bridge", (stage, phase, seconds) => ...);
 *   // stages in order: runtime, numpy, engine (the wheels, unpacked before numpy, then importing `module`);
 *   // from a saved snapshot: runtime (Python's memory), numpy (its modules loaded back), engine (~0)
 *   await relayGeneration({ id, gen, post, aborted: () => abortRequested });
 *
 * Booting: Pyodide -> our wheels -> numpy -> import, everything named and checked by build-manifest.json.
 * numpy comes through Pyodide's loadPackage with checkIntegrity (pyodide-lock.json's sha256); each
 * of our wheels (engine, jinja2, markupsafe) is fetched, its sha256 compared with the manifest's,
 * and only then unpacked; so is bytecode.zip, the checked-hash .pyc files of numpy and the engine
 * (Python uses one only while its source's hash matches: ~0.3 s less compiling per start). Every
 * URL is resolved against `base` (this script's folder), so a worker imported cross-origin from a
 * blob: wrapper (docs/EMBED.md) boots from the Mote server.
 */
import { Ev, RUNTIME_DIR, moduleWorker } from "./protocol.js";
import { checksumParts, parseSnapshot, reattach, recordLibraries, takeSnapshotParts } from "./snapshot.js";

/** @param {BufferSource} data @returns {Promise<string>} hex sha256 */
export async function sha256Hex(data) {
  const digest = await crypto.subtle.digest("SHA-256", data);
  return Array.from(new Uint8Array(digest), (b) => b.toString(16).padStart(2, "0")).join("");
}

/**
 * @param {URL} base  the folder holding build-manifest.json
 * @param {string} module  the Python module to import once the wheels are in (e.g. "engine.bridge")
 * @param {(stage: string, phase: "start"|"done", seconds?: number) => void} [onStage]
 * @param {(py: any) => void} [beforeNumpy]  called once Python runs and our wheels are unpacked, before
 *   numpy loads: the standard-library parts of the engine (engine.buffer) can be used from then on. On a
 *   start that saves a snapshot, only once it is taken (after the import); on a restored one, at once.
 * @returns {Promise<{py: any, mod: any, snapshot: "restored"|"stored"|"build"|null, snapshotRead: number|null}>} the
 *   Pyodide instance, the imported module (PyProxy), whether Python started from a saved snapshot
 *   ("restored"), from the build's (a first visit, "build": kept for the next start where it can be), or
 *   saved one for the next start ("stored"; null: neither, e.g. no private file system), and the
 *   seconds of the runtime stage spent reading a snapshot (null: none was used)
 * @param {{saveSnapshot?: boolean, snapshotLater?: boolean}} [options]  saveSnapshot: false starts normally
 *   without saving one when none is saved (another worker booting beside this one saves it);
 *   snapshotLater: the instance can be snapshotted again later (`takeLater`, e.g. with a model loaded)
 * @returns {Promise<{py: any, mod: any, snapshot: "restored"|"stored"|"build"|null, snapshotRead: number|null,
 *   takeLater: (() => [Uint8Array, Uint8Array])|null}>}  takeLater: static/snapshot.js takeSnapshotParts
 *   of the instance now, where snapshotLater was asked for and the origin has a private file system
 */
export async function bootPython(base, module, onStage = () => {}, beforeNumpy = () => {}, { saveSnapshot = true, snapshotLater = false } = {}) {
  const { manifest, runtimeBase, key } = await build(base);
  const timed = stageTimer(onStage);
  /** @type {"restored"|"stored"|"build"|null} */ let snapshot = null;
  const runtime0 = performance.now();
  const runtimeDone = () => onStage("runtime", "done", (performance.now() - runtime0) / 1000);
  onStage("runtime", "start");
  // A later visit starts from the snapshot the first one saved in OPFS (static/snapshot.js: Python,
  // numpy and the engine as that visit left them); a first visit from the snapshot the build took
  // (build_wasm.py), kept in OPFS for the next visit (read there in ~0.03 s, where the HTTP cache took
  // 0.22-0.28 s for its 52 MB). The read and its checksum run while Pyodide's script loads.
  const entry = manifest.snapshot;
  const shipped = () => (entry ? fetchSnapshot(new URL(entry.file, base), entry) : Promise.resolve(null));
  const firstSource = async () => {
    const hit = await findSnapshot(key, RUNTIME_DIR);
    const read = hit && await readSnapshot(/** @type {string} */ (key), hit, RUNTIME_DIR);
    return read ? { read, kind: /** @type {const} */ ("restored") } : { read: await shipped(), kind: /** @type {const} */ ("build") };
  };
  /** @type {ReturnType<typeof firstSource>|null} */ let first = null;
  const { loadPyodide } = await import(runtimeBase + "pyodide.mjs");
  const later = snapshotLater && key !== null;
  const then = (/** @type {any} */ py) => {
    beforeNumpy(py);
    return timed("engine", async () => py.pyimport(module));
  };
  /** @param {{read: Awaited<ReturnType<typeof readSnapshot>>, kind: "restored"|"build"}} source */
  const started = async (source) => {
    if (source.kind === "build" && key !== null && saveSnapshot && source.read && entry) {
      storeSnapshot(key, [source.read.bytes], RUNTIME_DIR, null, entry.checksum).then(() => dropOtherBuildsModelSnapshots(base));
    }
    return { snapshot: source.kind, snapshotRead: /** @type {any} */ (source.read).seconds };
  };
  const restored = await restore(loadPyodide, runtimeBase, () => (first = firstSource()).then((f) => f.read), later,
                                 onStage, runtimeDone, then);
  const source = await /** @type {ReturnType<typeof firstSource>} */ (first);
  if (restored) return { ...restored, ...(await started(source)) };
  if (source.kind === "restored") {                    // damaged, or not this runtime's: the build's next
    await dropSnapshot(/** @type {string} */ (key), RUNTIME_DIR);
    const build = { read: await shipped(), kind: /** @type {const} */ ("build") };
    const again = build.read && await restore(loadPyodide, runtimeBase, async () => build.read, later, onStage, runtimeDone, then);
    if (again) return { ...again, ...(await started(build)) };
  }
  // Our wheels' bytes are fetched and checked against the manifest while the runtime starts. (numpy
  // stays on loadPackage: unpacking its wheel like ours, so that only the 3 extension modules
  // `import numpy` needs are compiled, was tried and was no faster in Chromium.)
  const bytes = new Map(manifest.wheels.map((/** @type {any} */ e) => {
    const got = verifiedBytes(new URL(e.file, base), e);
    got.catch(() => {});                                 // awaited (and reported) below
    return [e.file, got];
  }));
  const save = key !== null && saveSnapshot;
  const py = await loadPyodide({ indexURL: runtimeBase, _makeSnapshot: save || later });
  py.runPython(`import ${SNAPSHOT_IMPORTS}`);
  runtimeDone();
  // Our wheels (and the .pyc files) go in first, their time counted as the engine stage's, so that
  // the caller can use engine.buffer while numpy loads.
  const unpack0 = performance.now();
  for (const whl of manifest.wheels) {
    const data = await bytes.get(whl.file);
    // bytecode.zip (build_wasm.py): .pyc files for numpy and the engine, by absolute path
    if (whl.extract_dir) py.unpackArchive(data, "zip", { extractDir: whl.extract_dir });
    else py.unpackArchive(data, "wheel");
  }
  py.runPython("import importlib; importlib.invalidate_caches()");
  const unpackSeconds = (performance.now() - unpack0) / 1000;
  // A snapshot is taken once the engine is imported, so nothing may be read into memory before then.
  if (!save) beforeNumpy(py);
  const recorder = save || later ? recordLibraries(py) : null;
  try {
    await timed("numpy", () => py.loadPackage(manifest.packages, { checkIntegrity: true, messageCallback: () => {} }));
  } finally { recorder?.stop(); }
  onStage("engine", "start");
  const import0 = performance.now();
  py.runPython("import importlib; importlib.invalidate_caches()");
  const mod = py.pyimport(module);
  if (save && recorder) {
    py.runPython(`import ${SNAPSHOT_LATE_IMPORTS}`);
    try {
      storeSnapshot(/** @type {string} */ (key), takeSnapshotParts(py, recorder), RUNTIME_DIR)   // stored in the background
        .then(() => dropOtherBuildsModelSnapshots(base));  // a new build's first start: the old build's model snapshot goes
      snapshot = "stored";
    } catch (e) { console.warn("runtime snapshot not taken:", e); }
    beforeNumpy(py);
  }
  onStage("engine", "done", unpackSeconds + (performance.now() - import0) / 1000);
  return { py, mod, snapshot, snapshotRead: null,
           takeLater: later && recorder ? snapshotter(py, recorder.libs, recorder.tableBefore) : null };
}

/**
 * Start from the saved snapshot that `read()` gives: Pyodide from its memory, then numpy's modules
 * reattached (the "numpy" stage), then `then` (the instance's module). loadPyodide is called first: it
 * asks for its own script at once and waits for the snapshot only before it starts the WASM module, so
 * the read and the checksum run while that script loads. A snapshot that is missing (`read()` gives
 * null) or fails the check fails loadPyodide. null when anything fails: start afresh.
 * @param {any} loadPyodide @param {string} runtimeBase
 * @param {() => Promise<Awaited<ReturnType<typeof readSnapshot>>>} read
 * @param {boolean} later  snapshottable again (`takeLater`)
 * @param {(stage: string, phase: "start"|"done", seconds?: number) => void} onStage @param {() => void} runtimeDone
 * @param {(py: any) => Promise<any>} then
 */
async function restore(loadPyodide, runtimeBase, read, later, onStage, runtimeDone, then) {
  /** @type {(memory: Promise<Uint8Array>) => void} */ let give = () => {};
  const memory = new Promise((resolve) => { give = resolve; });
  memory.catch(() => {});                                // a failed check is loadPyodide's failure below
  const starting = loadPyodide({ indexURL: runtimeBase, _loadSnapshot: memory, _makeSnapshot: later });
  starting.catch(() => {});                              // awaited below
  // only now: the read's synchronous parts and the checksum would otherwise hold this thread before
  // loadPyodide has even asked for its script
  const checked = read().then((got) => {
    if (!got) throw new Error("snapshot: none");
    return got.checked;
  });
  checked.catch(() => {});                               // loadPyodide's failure below
  give(checked.then((parsed) => parsed.memory));
  /** @type {any} */ let started = null;
  try {
    started = await starting;
  } catch { return null; }                               // none, damaged, another build's or not ours
  runtimeDone();
  const saved = await checked;
  const placed = await stageTimer(onStage)("numpy", () => reattach(started, saved).catch(() => null));
  if (!placed) return null;
  const mod = await then(started);
  return { py: started, mod, takeLater: later ? snapshotter(started, placed.libs, placed.tableBefore) : null };
}

/** takeSnapshotParts of `py` whenever asked: the libraries placed so far and any loaded from now on.
 *  @param {any} py @param {{name: string, handle: number, global: boolean}[]} libs @param {number} tableBefore */
function snapshotter(py, libs, tableBefore) {
  const more = recordLibraries(py);
  return () => takeSnapshotParts(py, { libs: [...libs, ...more.libs], tableBefore });
}

/** @param {(stage: string, phase: "start"|"done", seconds?: number) => void} onStage */
function stageTimer(onStage) {
  /** @template T @param {string} stage @param {() => Promise<T>} work @returns {Promise<T>} */
  return async (stage, work) => {
    onStage(stage, "start");
    const t0 = performance.now();
    const out = await work();
    onStage(stage, "done", (performance.now() - t0) / 1000);
    return out;
  };
}

/** The build's manifest, where the runtime is, and the runtime snapshot's key (null: no private file
 *  system), fetched once per worker. @param {URL} base */
function build(base) {
  const at = base.href;
  if (!builds.has(at)) {
    const got = (async () => {
      const r = await fetch(new URL("build-manifest.json", base));
      if (!r.ok) throw new Error(`build-manifest.json: HTTP ${r.status} (run python build_wasm.py to build the browser assets)`);
      const manifest = await r.json();
      const runtimeBase = new URL(manifest.runtime.base_url, base).href;
      return { manifest, runtimeBase, key: await snapshotKey(manifest, runtimeBase) };
    })();
    got.catch(() => builds.delete(at));                  // a retry fetches again
    builds.set(at, got);
  }
  return /** @type {Promise<{manifest: any, runtimeBase: string, key: string|null}>} */ (builds.get(at));
}
/** @type {Map<string, Promise<any>>} */ const builds = new Map();

// ---- a snapshot taken with the model loaded -------------------------------------------------------
//
// Python's memory right after a model's load (static/worker.js, one worker): its weights prepared,
// tokenizer built, KV cache made. A later load of the same model, with the same context length and
// layout, on the same build, starts from it instead of reading the cached file, checking its chunks,
// parsing and preparing it. Kept in OPFS folder MODEL_SNAPSHOT_DIR, one at a time (saving one removes
// the others), named and checked like the runtime snapshot. Anything wrong with it only means a
// normal load.

/** OPFS folder of the model snapshot. */
export const MODEL_SNAPSHOT_DIR = "mote-model";

/** Largest heap static/worker.js snapshots with its model: the snapshot holds a copy of it in JS memory
 *  for a moment when it is taken and when it is read back. */
export const MODEL_SNAPSHOT_MAX_HEAP = 640 << 20;

/** The largest file each snapshot folder can hold (the heap, plus the files and the table: a runtime
 *  snapshot is ~52 MB); a larger one is not ours and is deleted unread. */
const SNAPSHOT_MAX_BYTES = { [RUNTIME_DIR]: 512 << 20, [MODEL_SNAPSHOT_DIR]: MODEL_SNAPSHOT_MAX_HEAP + (128 << 20) };

/** What a loaded model's memory depends on besides the build (the start of a model snapshot key's
 *  parts): the file, the context length, the layout and the reported device memory (GB or null).
 *  @param {{sha256: string, size: number}} model @param {number|null|undefined} nCtx
 *  @param {string|null|undefined} layout @param {number|null} deviceGb */
export const modelSnapshotParts = (model, nCtx, layout, deviceGb) =>
  [model.sha256, String(model.size), String(nCtx ?? ""), String(layout ?? ""), String(deviceGb ?? "")];

/** Whether `py`'s heap may be snapshotted with its model, `workers` such heaps being read back at once:
 *  each at most MODEL_SNAPSHOT_MAX_HEAP, all of them at most a quarter of the reported device memory
 *  (each is copied into JS memory for a moment when taken and when read back).
 *  @param {any} py @param {number} workers @param {number|null} deviceGb */
export function modelSnapshotFits(py, workers, deviceGb) {
  const heap = memory(py).wasm_bytes ?? Infinity;
  return heap <= MODEL_SNAPSHOT_MAX_HEAP && (deviceGb === null || 4 * heap * workers <= deviceGb * 2 ** 30);
}

/** The model snapshot's name for this build and `parts` (what the load depends on), or null where the
 *  origin has no private file system: "model-<build>-<build and parts>", so that a saved one can be
 *  told to be this build's before its model is named (findAnyModelSnapshot).
 *  @param {URL} base @param {string[]} parts */
export async function modelSnapshotKey(base, parts) {
  const prefix = await modelSnapshotPrefix(base);
  if (prefix === null) return null;
  return `${prefix}${(await sha256Hex(new TextEncoder().encode([prefix, ...parts].join("|")))).slice(0, 24)}`;
}

/** "model-<16 hex digits naming this build>-", or null without a private file system. @param {URL} base */
async function modelSnapshotPrefix(base) {
  const { key } = await build(base);
  return key === null ? null : `model-${(await sha256Hex(new TextEncoder().encode(key))).slice(0, 16)}-`;
}

/** The model snapshot saved under `key`, if there is one (for restoreModelSnapshot).
 *  @param {string} key @returns {Promise<{file: any, checksum: string}|null>} */
export function findModelSnapshot(key) {
  return findSnapshot(key, MODEL_SNAPSHOT_DIR);
}

/** This build's saved model snapshot of one worker (not a shard's), whichever model it holds: {key, hit} or null.
 *  @param {URL} base @returns {Promise<{key: string, hit: {file: any, checksum: string}}|null>} */
export async function findAnyModelSnapshot(base) {
  const prefix = await modelSnapshotPrefix(base);
  return prefix === null ? null : findSnapshotWhere(MODEL_SNAPSHOT_DIR, (key) => key.startsWith(prefix) && !SHARD_KEY.test(key));
}

/** The model snapshot key of shard `index` of a load whose key (modelSnapshotKey) is `group`: the
 *  shards of one load are kept together, and only together do they make a model.
 *  @param {string} group @param {number} index */
export const shardSnapshotKey = (group, index) => `${group}-s${index}`;
const SHARD_KEY = /-s\d+$/;

/**
 * Python started from the model snapshot `hit` (findModelSnapshot) saved under `key`, with `module`
 * imported: {py, mod, takeLater, snapshotRead}, or null (it did not restore: then it is deleted).
 * Stages: "runtime" (the read, the checksum, Pyodide started from it), "numpy", "engine".
 * @param {URL} base @param {string} key @param {{file: any, checksum: string}} hit @param {string} module
 * @param {(stage: string, phase: "start"|"done", seconds?: number) => void} onStage
 */
export async function restoreModelSnapshot(base, key, hit, module, onStage) {
  const { runtimeBase } = await build(base);
  const runtime0 = performance.now();
  onStage("runtime", "start");
  const { loadPyodide } = await import(runtimeBase + "pyodide.mjs");
  /** @type {ReturnType<typeof readSnapshot>|null} */ let reading = null;
  const restored = await restore(loadPyodide, runtimeBase, () => (reading = readSnapshot(key, hit, MODEL_SNAPSHOT_DIR)), true,
    onStage, () => onStage("runtime", "done", (performance.now() - runtime0) / 1000),
    (py) => stageTimer(onStage)("engine", async () => py.pyimport(module)));
  const read = await reading;
  if (!restored || !read) {
    await dropSnapshot(key, MODEL_SNAPSHOT_DIR);
    return null;
  }
  return { ...restored, snapshotRead: /** @type {any} */ (read).seconds };
}

/** Delete the model snapshot of any other build (it could never be used again, and it is as large
 *  as a worker's heap). @param {URL} base */
async function dropOtherBuildsModelSnapshots(base) {
  const prefix = await modelSnapshotPrefix(base).catch(() => null);
  if (prefix === null) return;
  try {
    const dir = await snapshotDir(MODEL_SNAPSHOT_DIR);
    for (const name of await Array.fromAsync(dir.keys())) if (!name.startsWith(prefix)) await dir.removeEntry(name).catch(() => {});
  } catch { /* no usable storage */ }
}

/** Save a model snapshot's parts under `key` (in the background; failure is harmless), replacing
 *  every other model snapshot except those whose key starts with `keep` (a shard's: its siblings).
 *  @param {string} key @param {Uint8Array[]} parts @param {string|null} [keep] */
export function storeModelSnapshot(key, parts, keep = null) {
  return storeSnapshot(key, parts, MODEL_SNAPSHOT_DIR, keep);
}

/**
 * The bytes at `url`, once their sha256 is the manifest entry's; throws naming the file otherwise.
 * @param {URL} url @param {{file: string, sha256: string}} entry @returns {Promise<Uint8Array>}
 */
async function verifiedBytes(url, entry) {
  const r = await fetch(url);
  if (!r.ok) throw new Error(`${entry.file}: HTTP ${r.status}`);
  const data = new Uint8Array(await r.arrayBuffer());
  const got = await sha256Hex(data);
  if (got !== entry.sha256) throw new Error(`${entry.file}: sha256 ${got} does not match build-manifest.json (${entry.sha256})`);
  return data;
}

// ---- the runtime's memory snapshot ------------------------------------------------------------------
//
// A first visit saves Python's memory (in OPFS, below) once numpy and the engine are imported
// (static/snapshot.js: the memory, where numpy's extension modules were placed, and the files);
// later visits start from it instead of starting Python, loading numpy and importing: the modules
// Python had imported are loaded again at their recorded places and nothing is imported again.
// Nothing is read into memory before the snapshot is taken (the early read of a cached model waits
// for it on the visit that saves one). Pyodide checks the snapshot's build id on restore; the key
// also names the runtime files', numpy's and our wheels' sha256 and the imports below,
// and the bytes are checked against the checksum in the file's name (static/snapshot.js checksum).
// Anything wrong with a saved snapshot (missing, damaged, another build, no private file system, a
// module that does not load back) only means a normal start.
// A restored runtime starts with the same state every time, including Python's str hash seed and
// numpy's global random state: nothing here depends on them (the sampler seeds its own generator
// from the OS, or from the request's seed, when a generation starts).

/** Standard-library modules that numpy and the engine import: imported before numpy loads. */
export const SNAPSHOT_IMPORTS = "ast, bisect, codecs, collections, collections.abc, contextvars, copy, ctypes, dataclasses, "
  + "datetime, dis, enum, functools, hashlib, heapq, inspect, json, linecache, math, numbers, operator, os, pickle, "
  + "platform, re, struct, sys, textwrap, threading, time, token, tokenize, typing, unicodedata, weakref";

/** Imported after `module`, before the snapshot is taken: what a generation imports on first use, and
 *  both kinds of worker's modules, so that static/worker.js and each shard start from one snapshot;
 *  engine.atome, which an Atome model's load imported (6-8 ms under Node; 15-38 ms, profiled, in a
 *  Chromium worker's first load; no memory to speak of). */
export const SNAPSHOT_LATE_IMPORTS = "engine.bridge, engine.shard, engine.atome";

/** The snapshot's name for this build and Mote server, or null where the origin has no private file
 *  system (e.g. an insecure origin). @param {any} manifest @param {string} runtimeBase @returns {Promise<string|null>} */
async function snapshotKey(manifest, runtimeBase) {
  if (!globalThis.navigator?.storage?.getDirectory) return null;
  const files = [...manifest.runtime.files, ...manifest.wheels].map((/** @type {any} */ f) => `${f.file}:${f.sha256}`);
  const id = [runtimeBase, files.join(","), SNAPSHOT_IMPORTS, SNAPSHOT_LATE_IMPORTS].join("|");
  return `snapshot-${(await sha256Hex(new TextEncoder().encode(id))).slice(0, 24)}`;
}

// Where snapshots are kept: the origin private file system (OPFS), folder RUNTIME_DIR, one file per
// key named "<key>.<checksum of its bytes>". Read there with a read-only sync access handle: in Chromium
// 0.03-0.05 s for 52 MB, where the Cache API took 0.13-0.16 s (the A/B in docs/bench/startup-opfs-2026-12-05/).
// A file is written under a temporary name and moved to its own when complete, so a reader never
// sees half of one.

/** @param {string} name @returns {Promise<any>} a snapshots' folder */
const snapshotDir = async (name) => (await navigator.storage.getDirectory()).getDirectoryHandle(name, { create: true });

/** The saved snapshot's file and the checksum its name gives, if there is one.
 *  @param {string|null} key @param {string} dirName @returns {Promise<{file: any, checksum: string}|null>} */
async function findSnapshot(key, dirName) {
  return key === null ? null : (await findSnapshotWhere(dirName, (k) => k === key))?.hit ?? null;
}

/** The first saved snapshot in `dirName` whose key passes `test`: {key, hit: {file, checksum}} or null.
 *  @param {string} dirName @param {(key: string) => boolean} test */
async function findSnapshotWhere(dirName, test) {
  try {
    for await (const [name, handle] of (await snapshotDir(dirName)).entries()) {
      const m = name.match(/^(.+)\.([0-9a-f]{32})$/);
      if (m && test(m[1]) && handle.kind === "file") return { key: m[1], hit: { file: handle, checksum: m[2] } };
    }
  } catch { /* no usable storage: start afresh */ }
  return null;
}

/** The file's bytes, and (`checked`) the same split (static/snapshot.js parseSnapshot) once their checksum
 *  is the one its name gives; `checked` rejects otherwise, after deleting the file (the fresh start
 *  saves a new one). null when the file cannot be read. `seconds`: the read.
 *  @param {string} key @param {{file: any, checksum: string}} hit @param {string} dirName
 *  @returns {Promise<{seconds: number, checked: Promise<ReturnType<typeof parseSnapshot>>}|null>} */
async function readSnapshot(key, hit, dirName) {
  const t0 = performance.now();
  let bytes;
  try { bytes = await readFile(hit.file, SNAPSHOT_MAX_BYTES[dirName]); } catch { await dropSnapshot(key, dirName); return null; }
  const seconds = (performance.now() - t0) / 1000;
  const checked = Promise.resolve().then(() => {
    if (checksumParts([bytes]) !== hit.checksum) throw new Error("snapshot: checksum mismatch");
    return parseSnapshot(bytes);
  }).catch(async (e) => { await dropSnapshot(key, dirName); throw e; });
  return { seconds, checked };
}

/** A file's bytes: through a read-only sync access handle (workers; several may read at once), else
 *  through getFile(). Throws, reading nothing, when it is over `maxBytes` (it cannot be one of ours).
 *  @param {any} file @param {number} maxBytes @returns {Promise<Uint8Array>} */
async function readFile(file, maxBytes) {
  const within = (/** @type {number} */ size) => {
    if (size > maxBytes) throw new Error(`snapshot: ${size} bytes, more than ${maxBytes}`);
    return size;
  };
  if (file.createSyncAccessHandle) {
    let handle = null;
    try { handle = await file.createSyncAccessHandle({ mode: "read-only" }); } catch { /* another reader's lock, or no such mode */ }
    if (handle) {
      try {
        const bytes = new Uint8Array(within(handle.getSize()));
        if (handle.read(bytes, { at: 0 }) !== bytes.length) throw new Error("snapshot: short read");
        return bytes;
      } finally { handle.close(); }
    }
  }
  const blob = await file.getFile();
  within(blob.size);
  return new Uint8Array(await blob.arrayBuffer());
}

/** The build's snapshot (build_wasm.py: taken under Node by scripts/build_snapshot.mjs), fetched: as
 *  readSnapshot's result, its bytes checked against the manifest's size and checksum (the manifest
 *  comes from the same server, so a cryptographic hash would add no trust; this finds a damaged or
 *  cut-short copy). null when it cannot be fetched or is not the manifest's size, or the manifest names
 *  a size no snapshot of ours can have (the buffer is made before the body is read): a normal start.
 *  @param {URL} url @param {{size: number, checksum: string}} entry */
async function fetchSnapshot(url, entry) {
  if (!(Number.isSafeInteger(entry.size) && entry.size > 0 && entry.size <= SNAPSHOT_MAX_BYTES[RUNTIME_DIR])) return null;
  const t0 = performance.now();
  let bytes;
  try { bytes = await fetchExactly(url, entry.size); } catch { return null; }
  const seconds = (performance.now() - t0) / 1000;
  const checked = Promise.resolve().then(() => {
    if (checksumParts([bytes]) !== entry.checksum) throw new Error("snapshot: checksum mismatch");
    return parseSnapshot(bytes);
  });
  return { seconds, checked, bytes };
}

/** The body at `url`, which must be `size` bytes: read into one buffer of that size, and refused as
 *  soon as it runs longer or ends shorter. @param {URL} url @param {number} size @returns {Promise<Uint8Array>} */
async function fetchExactly(url, size) {
  const r = await fetch(url);
  if (!r.ok || !r.body) throw new Error(`${url}: HTTP ${r.status}`);
  const out = new Uint8Array(size);
  const reader = r.body.getReader();
  let at = 0;
  for (;;) {
    const { done, value } = await reader.read();
    if (done) break;
    if (at + value.length > size) { reader.cancel(); throw new Error(`${url}: longer than ${size} bytes`); }
    out.set(value, at);
    at += value.length;
  }
  if (at !== size) throw new Error(`${url}: ${at} of ${size} bytes`);
  return out;
}

/** Write `bytes` as the whole of `file`, in static/file-writer.js (a worker of its own) where one can
 *  start, else through a writable stream. The store runs beside a cold start's first answer, so it must
 *  neither hold this thread nor cost much CPU (measured on Atome, docs/bench/startup-opfs-2026-12-05/):
 *  through a writable stream (Chromium writes a swap file and copies it on close) decode was 0.86x
 *  (0.71-0.86) paired; through a sync access handle on this thread in one call, decode was 0.99x but
 *  the call stalled the tokens' trip to the page (70-73 % of the engine's rate in 3 of 10 cold runs);
 *  in 2 MB calls with a turn of the event loop between them, a test of downloads resumed after a cut
 *  lost its timing in 3 of 4 runs. `parts` (written one after the other) are transferred (unusable
 *  here afterwards). @param {any} file @param {Uint8Array[]} parts */
async function writeFile(file, parts) {
  const written = await new Promise((resolve) => {
    /** @type {Worker|null} */ let writer = null;
    try {
      writer = moduleWorker(new URL("./file-writer.js", import.meta.url), "mote-file-writer");
    } catch {
      resolve(false);
      return;
    }
    const done = (/** @type {boolean} */ ok) => { writer?.terminate(); resolve(ok); };
    writer.addEventListener("message", (e) => {
      if (e.data?.ready !== true) { done(e.data?.ok === true); return; }
      // the writer runs: the bytes go over now (not before, so that a writer that cannot start leaves them here)
      const whole = parts.map((p) => (p.byteOffset === 0 && p.byteLength === p.buffer.byteLength ? p : p.slice()));
      writer?.postMessage({ file, parts: whole }, whole.map((p) => p.buffer));
    });
    writer.addEventListener("error", () => done(false));
  });
  if (written) return;
  if (parts.some((p) => p.byteLength === 0)) throw new Error("snapshot: its bytes went to a writer that failed");
  const out = await file.createWritable();
  for (const p of parts) await out.write(p);
  await out.close();
}

/** Save `parts` (one file's bytes, end to end) under `key` in folder `dirName`, replacing any other
 *  snapshot there (another build's, or another model's) but those whose name starts with `keep`.
 *  Failure is harmless (the next start is a normal one), so nothing waits for it.
 *  @param {string} key @param {Uint8Array[]} parts @param {string} dirName @param {string|null} [keep]
 *  @param {string|null} [sum]  the parts' checksum where it is already known */
async function storeSnapshot(key, parts, dirName, keep = null, sum = null) {
  try {
    const name = `${key}.${sum ?? checksumParts(parts)}`;
    const dir = await snapshotDir(dirName);
    const partial = await dir.getFileHandle(`${name}.partial-${Math.random().toString(16).slice(2)}`, { create: true });
    await writeFile(partial, parts);
    await partial.move(name);
    // Everything else goes: other builds' snapshots and partial files a closed tab left behind (one that
    // another tab is writing now fails to move, which only means that tab saved none).
    const kept = (/** @type {string} */ old) => old === name || (keep !== null && old.startsWith(keep) && !old.startsWith(`${key}.`));
    for await (const old of dir.keys()) if (!kept(old)) await dir.removeEntry(old).catch(() => {});
    await globalThis.caches?.delete(OLD_RUNTIME_CACHE);   // where earlier versions kept theirs
  } catch { /* quota, private mode: the next visit starts normally */ }
}

/** @param {string|null} key @param {string} dirName */
async function dropSnapshot(key, dirName) {
  if (key === null) return;
  try {
    const dir = await snapshotDir(dirName);
    for await (const name of dir.keys()) if (name.startsWith(`${key}.`) && !name.includes(".partial-")) await dir.removeEntry(name);
  } catch { /* nothing to drop */ }
}

/** The Cache API cache in which Mote kept its runtime snapshot before it moved to OPFS (deleted). */
const OLD_RUNTIME_CACHE = "mote-runtime-v1";

/**
 * WASM linear memory (grows, never shrinks: its size is the peak), the most of it ever in use, and,
 * in Chromium, the JS heap. peak_bytes: where malloc's space starts (the program's data and stack
 * below it) plus dlmalloc's largest footprint, i.e. the smallest heap that would never have grown;
 * what engine/budget.py estimates, so tests compare the two.
 * @param {any} py  the Pyodide instance (null before boot) @returns {import("./protocol.js").MemoryStats}
 */
export function memory(py) {
  const perf = /** @type {any} */ (performance);
  const m = py?._module;
  const peak = typeof m?._malloc_max_footprint === "function"
    ? m._sbrk(0) - m._malloc_footprint() + m._malloc_max_footprint() : null;
  return { wasm_bytes: m?.HEAP8?.buffer?.byteLength ?? null, peak_bytes: peak,
           js_heap_bytes: perf.memory ? perf.memory.usedJSHeapSize : null };
}

/**
 * Grow WASM memory at once to `bytes` (a budget's heap_bytes, engine/budget.py), before the model
 * arrives, so that the load never grows it step by step: emscripten grows by at least 20 % at a
 * time, and a load that outgrows its heap by a byte would end ~20 % above what it holds. Pyodide's
 * module exports emscripten's growMemory, which grows to exactly that size (and updates its views);
 * the allocator then uses the new pages as they are needed. False where it could not.
 * @param {any} py @param {number} bytes
 */
export function growHeap(py, bytes) {
  if (!(bytes > memory(py).wasm_bytes)) return true;
  if (typeof py._module.growMemory !== "function") return false;
  return py._module.growMemory(bytes) === 1;
}

/** A macrotask turn of the worker's event loop, so queued messages (abort) run; a MessageChannel
 *  post, not setTimeout, whose nesting clamps each turn to 4 ms. */
const turn = new MessageChannel();
/** @type {(() => void)[]} */ const turnQueue = [];
turn.port1.onmessage = () => { const r = turnQueue.shift(); if (r) r(); };
export const yieldToEventLoop = () => new Promise((r) => { turnQueue.push(/** @type {() => void} */ (r)); turn.port2.postMessage(0); });

/** A generation event as a plain object: engine.bridge returns JS objects, engine.shard Python dicts. @param {any} ev */
function plain(ev) {
  if (!ev?.toJs) return ev ?? null;
  try { return ev.toJs({ dict_converter: Object.fromEntries }); } finally { ev.destroy(); }
}

/**
 * The worker side of one generate request: step the Python generation (one event per call for a
 * sharded leader, else a batch of up to BATCH_MS), post its token and done events one by one (with
 * the request's id), and yield to the event loop between calls so an abort request lands. Once aborted() turns true the generation is told
 * (gen.abort()) and stepped on to its own done event: reason "abort", the real counts.
 *   gen          a generation (PyProxy): step() -> event or None, abort()
 *   before()     awaited before each step, if given (the parallel leader computes the logits there)
 *   doneExtra()  fields added to the done event (memory, counters)
 * @param {{id: number, gen: any, post: (ev: import("./protocol.js").WorkerEvent) => void,
 *          aborted: () => boolean, before?: (() => Promise<void>)|null, doneExtra?: () => Object}} args
 */
export async function relayGeneration({ id, gen, post, aborted, before = null, doneExtra = () => ({}) }) {
  let stopping = false;
  for (;;) {
    if (!stopping && aborted()) { stopping = true; gen.abort(); }
    if (before) await before();
    // A generation that runs its own forward passes (not a sharded leader) steps for up to BATCH_MS
    // per call: one crossing into Python and back per batch, not per token (a small model's tokens
    // take ~2 ms, and the crossing cost it a sixth of its rate); every token is still posted alone.
    const events = !before && gen.steps ? gen.steps(BATCH_MS) : [gen.step()];
    for (const raw of events) {
      const ev = plain(raw);
      if (!ev) return;
      if (ev.type === Ev.TOKEN) post({ ...ev, id });
      else if (ev.type === Ev.DONE) { post({ ...ev, id, ...doneExtra() }); return; }
    }
    if (!events.length) return;
    await yieldToEventLoop();                            // abort lands here
  }
}

/**
 * Work a worker does while no request waits (static/worker.js's warm-up and the chat template's
 * opening, parallel-worker.js's opening): `start()` runs `body` once the worker has been idle for
 * `delayMs`, unless it waits or runs already; `stop()` cancels the wait, or tells the run to end
 * (`body`'s `stopped()` turns true) and resolves once it has; `busy` says either is the case.
 * @param {number} delayMs @param {(stopped: () => boolean) => Promise<void>} body
 */
export function idleWork(delayMs, body) {
  /** @type {ReturnType<typeof setTimeout>|null} */ let timer = null;
  /** @type {Promise<void>|null} */ let running = null;
  let stopping = false;
  return {
    start() {
      if (timer !== null || running) return;
      timer = setTimeout(() => {
        timer = null;
        stopping = false;
        running = body(() => stopping).finally(() => { running = null; });
      }, delayMs);
    },
    async stop() {
      if (timer !== null) { clearTimeout(timer); timer = null; }
      stopping = true;
      if (running) await running;
    },
    get busy() { return timer !== null || running !== null; },
  };
}

/** Longest run of generation steps in one call (Stop lands within this plus one token). */
const BATCH_MS = 8;
