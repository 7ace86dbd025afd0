// @ts-check
/**
 * Web Worker hosting Pyodide and the engine (module worker: new Worker(url, {type: "module"})).
 *
 *   load     -> runtime (pyodide.mjs) -> numpy (loadPackage, checked by pyodide-lock.json's sha256)
 *            -> engine (our wheels, each checked against build-manifest.json's sha256, then unpacked)
 *            -> weights (Cache API hit, verified; or download with progress, verify, store) -> ready
 *               The file's bytes go chunk by chunk into one engine.bridge.ModelBuffer in WASM
 *               memory, hashed (sha256) as they land: no whole-file copy on the JS side, ever.
 *   generate -> engine.bridge.start_generation(); one step() per token, yielding to the event loop
 *               between steps so an `abort` message is handled within one token
 *   abort    -> the loop stops after the current token; the model stays loaded
 *
 * Model cache rules (static/model-cache.js, shared with static/parallel.js): only a complete
 * download whose length and sha256 match GET /models is stored; a cached copy is verified again on
 * every read, and a bad one is deleted and downloaded again. The cache key is the sha256.
 * Everything is resolved against this script's own URL, so it also works as an imported module of
 * a worker created by a page on another origin (the server must then send CORS headers).
 */
import { Req, Ev, isMessage, relayGeneration } from "./protocol.js";
import { cachedModel, dropModel, fetchModel, storeModel } from "./model-cache.js";
import { bootPython } from "./boot.js";

const BASE = new URL(".", import.meta.url);            // .../static/
/** @type {any} */ let pyodide = null;                  // the Pyodide instance, once booted
/** @type {any} */ let bridge = null;                   // the engine.bridge module (PyProxy)
/** @type {Promise<any>|null} */ let booting = null;
/** @type {string|null} */ let loadedSha = null;        // sha256 of the model in memory
let abortRequested = false;
let generating = false;
let loadingModel = false;                             // one model load at a time (see store)
/** @type {Object<string, number>} */ const timings = {};

/** @param {import("./protocol.js").WorkerEvent} ev @param {Transferable[]} [transfer] */
function post(ev, transfer) { self.postMessage(ev, transfer || []); }

/** @param {string} stage @param {Object} [extra] */
function progress(stage, extra) {
  post(/** @type {any} */ ({ type: Ev.PROGRESS, stage, ...(extra || {}) }));
}

/** WASM linear memory (grows, never shrinks: its size is the peak) and, in Chromium, the JS heap. */
function memory() {
  const perf = /** @type {any} */ (performance);
  return { wasm_bytes: pyodide?._module?.HEAP8?.buffer?.byteLength ?? null,
           js_heap_bytes: perf.memory ? perf.memory.usedJSHeapSize : null };
}

/** Let queued messages (abort) run: a macrotask turn of the worker's event loop. */
const yieldToEventLoop = () => new Promise((resolve) => setTimeout(resolve, 0));

// ---- boot: runtime, numpy, engine (static/boot.js) ---------------------------------------------

async function boot() {
  const { py, mod } = await bootPython(BASE, "engine.bridge", (stage, phase, seconds) => {
    if (phase === "done") timings[stage] = /** @type {number} */ (seconds);
    progress(stage, phase === "done" ? { phase, seconds } : { phase });
  });
  pyodide = py;
  bridge = mod;
  return mod.runtime_info();
}

// ---- weights: Cache API first, else download with progress --------------------------------------

/**
 * Copy a response body into a new ModelBuffer chunk by chunk, posting `phase` progress.
 * Returns the buffer (a PyProxy; the caller destroys it) once every byte is in, or throws.
 * @param {ReadableStream<Uint8Array>} body @param {import("./protocol.js").ModelRef} model
 * @param {string} phase @param {string} what  names the source in error messages
 */
async function fill(body, model, phase, what) {
  let buf;
  try {
    buf = bridge.ModelBuffer(model.size);             // (size,) bytes in WASM memory
  } catch (e) {                                       // e.g. MemoryError: not the source's fault
    throw Object.assign(new Error(`cannot hold ${model.size} bytes in WASM memory: ${/** @type {any} */ (e)?.message || e}`),
                        { fatal: true });
  }
  // A BYOB reader fills one reused 1 MB scratch buffer, so reading leaves no garbage chunks
  // behind (a default reader allocates every chunk: ~200 MB of ArrayBuffers awaiting GC).
  let reader, scratch = null;
  try {
    reader = body.getReader({ mode: "byob" });
    scratch = new ArrayBuffer(1 << 20);
  } catch {
    reader = body.getReader();                        // not a byte stream: default chunks
  }
  let loaded = 0, lastPost = 0;
  try {
    for (;;) {
      const { done, value } = scratch
        ? await /** @type {ReadableStreamBYOBReader} */ (reader).read(new Uint8Array(scratch))
        : await /** @type {ReadableStreamDefaultReader<Uint8Array>} */ (reader).read();
      if (done || !value) break;
      if (scratch) scratch = value.buffer;            // the scratch buffer comes back, transferred
      if (loaded + value.length > model.size) {
        await reader.cancel();
        throw new Error(`${what}: more than the expected ${model.size} bytes`);
      }
      loaded = buf.write(value);                      // copied into WASM memory and hashed
      const now = performance.now();
      if (now - lastPost > 100) { progress("weights", { phase, loaded, total: model.size }); lastPost = now; }
    }
    progress("weights", { phase, loaded, total: model.size });
    if (loaded !== model.size) throw new Error(`${what}: download truncated at ${loaded} of ${model.size} bytes`);
    return buf;
  } catch (e) {
    buf.destroy();                                    // frees the WASM copy now, not at the next GC
    throw e;
  }
}

/**
 * A verified copy from the Cache API as a ModelBuffer, or null (absent, unreadable, or bad -> deleted).
 * @param {import("./protocol.js").ModelRef} model
 */
async function readCached(model) {
  const cached = await cachedModel(model);
  if (!cached) return null;
  progress("weights", { phase: "cache", loaded: 0, total: model.size });
  let buf = null;
  try {
    buf = await fill(cached, model, "cache", "cached model");
  } catch (e) {
    if (/** @type {any} */ (e)?.fatal) throw e;      // out of memory: keep the cached copy
    /* wrong length: treated like a bad hash below */
  }
  progress("weights", { phase: "verify", loaded: model.size, total: model.size });
  if (buf && buf.sha256() === model.sha256) return buf;
  if (buf) buf.destroy();
  await dropModel(model);                       // truncated or corrupted: drop it and download again
  progress("weights", { phase: "cache-corrupt", loaded: 0, total: model.size });
  return null;
}

/** @param {import("./protocol.js").ModelRef} model */
async function download(model) {
  const body = await fetchModel(model);                // status and Content-Length checked
  let buf;
  try {
    buf = await fill(body, model, "download", model.url);
  } catch (e) {                                        // a cut connection surfaces as a TypeError here
    const msg = String(/** @type {any} */ (e)?.message || e);
    if (/** @type {any} */ (e)?.fatal || msg.startsWith(model.url)) throw e;
    throw new Error(`${model.url}: download failed after a partial response (${msg})`);
  }
  progress("weights", { phase: "verify", loaded: model.size, total: model.size });
  const got = buf.sha256();                            // hashed while the chunks arrived
  if (got !== model.sha256) {
    buf.destroy();
    throw new Error(`${model.url}: sha256 ${got} does not match the expected ${model.sha256}`);
  }
  return buf;
}

/**
 * Store a verified copy, streamed straight out of WASM memory: each chunk is a view of the
 * ModelBuffer's bytes, not a copy, so storing allocates nothing the size of the file. No Python
 * runs while this awaits (generate is refused during a load), so WASM memory cannot grow and
 * detach the views; if it did, the stream errors and nothing is stored.
 * A full quota only costs the offline copy, not the session.
 * @param {import("./protocol.js").ModelRef} model @param {any} buf  a complete, verified ModelBuffer
 */
async function store(model, buf) {
  if (typeof caches === "undefined") return false;
  progress("weights", { phase: "store", loaded: 0, total: model.size });
  const STORE_CHUNK = 1 << 20;
  const bytes = buf.data;                              // the bytearray (PyProxy)
  const view = bytes.getBuffer("u8");                  // view.data: Uint8Array over WASM memory
  let offset = 0;
  const body = new ReadableStream({
    pull(controller) {
      if (view.data.byteLength !== model.size) {       // detached by a memory.grow: give up
        controller.error(new Error("WASM memory was resized while storing the model"));
        return;
      }
      if (offset >= model.size) { controller.close(); return; }
      const end = Math.min(offset + STORE_CHUNK, model.size);
      controller.enqueue(view.data.subarray(offset, end));   // (end - offset,) view, no copy
      offset = end;
    },
  }, { highWaterMark: 1 });
  try {
    return await storeModel(model, body);
  } catch (e) {
    progress("weights", { phase: "store-failed", message: String(e) });
    return false;
  } finally {
    view.release();
    bytes.destroy();
  }
}

// ---- requests ------------------------------------------------------------------------------------

/** @param {import("./protocol.js").LoadRequest} msg */
async function handleLoad(msg) {
  booting = booting || boot();
  let runtimeInfo;
  try {
    runtimeInfo = await booting;
  } catch (e) {
    booting = null;                                  // allow a retry after e.g. a network error
    throw Object.assign(new Error(String(/** @type {any} */ (e)?.message || e)), { stage: "runtime" });
  }
  const info = runtimeInfo.toJs ? runtimeInfo.toJs({ dict_converter: Object.fromEntries }) : runtimeInfo;
  if (!msg.model) {
    post({ type: Ev.READY, info, timings: { ...timings } });
    return;
  }
  const model = msg.model;
  if (loadedSha === model.sha256) {                 // already in memory
    post({ type: Ev.READY, info, model: { sha256: model.sha256, reused: true }, timings: { ...timings }, cached: true });
    return;
  }
  if (loadingModel) throw new Error("a model is already loading: wait for its ready or error event");
  loadingModel = true;
  try {
    await loadWeights(msg, model, info);
  } finally {
    loadingModel = false;
  }
}

/**
 * Weights of `model` into the engine: Cache API or download, store, parse; posts ready.
 * @param {import("./protocol.js").LoadRequest} msg @param {import("./protocol.js").ModelRef} model
 * @param {Object} info  the runtime info for the ready event
 */
async function loadWeights(msg, model, info) {
  loadedSha = null;                                 // from here on generate is refused (see store)
  const t0 = performance.now();
  let buf = null, cached = false;
  try {
    buf = await readCached(model);
    cached = buf !== null;
    if (!buf) {
      buf = await download(model);
      await store(model, buf);
    }
  } catch (e) {
    throw Object.assign(new Error(String(/** @type {any} */ (e)?.message || e)), { stage: "weights" });
  }
  timings.weights = (performance.now() - t0) / 1000;
  progress("weights", { phase: "parse", loaded: model.size, total: model.size });
  const t1 = performance.now();
  loadedSha = null;
  let modelInfo;
  try {
    modelInfo = bridge.load_model(buf, msg.n_ctx ?? undefined);   // parses the buffer in place
  } catch (e) {                                      // e.g. GGUFError: a verified file we cannot run
    throw Object.assign(new Error(String(/** @type {any} */ (e)?.message || e)), { stage: "weights" });
  } finally {
    buf.destroy();                                   // the Session keeps the bytes; drop our handle
  }
  timings.model = (performance.now() - t1) / 1000;
  loadedSha = model.sha256;
  post({ type: Ev.READY, info, model: modelInfo, cached, timings: { ...timings }, memory: memory() });
}

/** @param {import("./protocol.js").GenerateRequest} msg */
async function handleGenerate(msg) {
  if (!bridge || !loadedSha) throw new Error("no model loaded: send a load request first");
  if (generating) throw new Error("already generating: send abort first");
  generating = true;
  abortRequested = false;
  const request = pyodide.toPy({ messages: msg.messages ?? null, prompt: msg.prompt ?? null, params: msg.params ?? {} });
  let gen;
  try {
    gen = bridge.start_generation(request);
  } finally {
    request.destroy();
  }
  try {
    await relayGeneration({ id: msg.id, step: () => gen.step(), post, aborted: () => abortRequested,
                            yieldTurn: yieldToEventLoop, doneExtra: () => ({ memory: memory() }) });
  } finally {
    gen.close();
    gen.destroy();
    generating = false;
  }
}

self.addEventListener("message", async (event) => {
  const msg = event.data;
  if (!isMessage(msg, [Req.LOAD, Req.GENERATE, Req.ABORT])) return;
  if (msg.type === Req.ABORT) { abortRequested = true; return; }
  try {
    if (msg.type === Req.LOAD) await handleLoad(/** @type {any} */ (msg));
    else await handleGenerate(/** @type {any} */ (msg));
  } catch (e) {
    const err = /** @type {any} */ (e);
    post({ type: Ev.ERROR, id: /** @type {any} */ (msg).id, stage: err?.stage, message: String(err?.message || err) });
  }
});
