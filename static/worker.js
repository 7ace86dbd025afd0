// @ts-check
/**
 * Web Worker hosting Pyodide and the engine (module worker: new Worker(url, {type: "module"})).
 *
 *   load     -> runtime (pyodide.mjs) -> numpy (loadPackage, checked by pyodide-lock.json's sha256)
 *            -> engine (our wheels, each checked against build-manifest.json's sha256, then unpacked)
 *            -> weights (static/model-source.js: the Cache API copy or a download, verified, stored;
 *               with a chunk list the download goes into the Cache API while the runtime boots,
 *               by static/prefetch-worker.js; a cached copy of a model up to EARLY_MAX_BYTES is read
 *               into WASM memory while numpy and the engine load, its budget checked after)
 *               -> ready. The file's bytes go chunk by chunk into one engine.bridge.ModelBuffer in
 *               WASM memory: no whole-file copy on the JS side, ever. They are checked as they pass,
 *               against the model's chunk list (native SHA-256), else hashed in the buffer.
 *   generate -> engine.bridge.start_generation(), relayed step by step (static/boot.js relayGeneration)
 *   abort    -> the generation stops at the next token with its done event; the model stays loaded
 *
 * Everything is resolved against this script's own URL, so it also works as an imported module of
 * a worker created by a page on another origin (the server must then send CORS headers).
 */
import { Req, Ev, isMessage, moduleWorker } from "./protocol.js";
import { chunkList, loadVerified, storeModel } from "./model-source.js";
import { bootPython, findAnyModelSnapshot, findModelSnapshot, growHeap, memory, modelSnapshotFits, modelSnapshotKey, modelSnapshotParts,
         idleWork, relayGeneration, restoreModelSnapshot, storeModelSnapshot, yieldToEventLoop } from "./boot.js";

const BASE = new URL(".", import.meta.url);            // .../static/
/** @type {any} */ let pyodide = null;                  // the Pyodide instance, once booted
/** @type {any} */ let bridge = null;                   // the engine.bridge module (PyProxy)
/** @type {Promise<any>|null} */ let booting = null;
/** @type {Promise<any>|null} */ let pythonUp = null;   // the Pyodide instance once Python runs (before numpy), or null
/** @type {string|null} */ let loadedSha = null;        // sha256 of the model in memory
let abortRequested = false;
let generating = false;
let loadingModel = false;                             // one model load at a time (see store)
/** @type {Object<string, number>} */ const timings = {};
/** @type {"restored"|"stored"|"model"|null} */ let runtimeSnapshot = null;   // see static/boot.js; "model": below
/** @type {(() => [Uint8Array, Uint8Array])|null} */ let takeLater = null;   // this instance's snapshot, now
/** @type {Promise<boolean>|null} */ let speculation = null;   // the boot starts from a saved model snapshot (below)
/** @type {string|null} */ let speculativeKey = null;          // ...whose key this is, until a load names its model

/** @param {import("./protocol.js").WorkerEvent} ev */
function post(ev) { self.postMessage(ev); }

/** @param {string} stage @param {Object} [extra] */
function progress(stage, extra) {
  post(/** @type {any} */ ({ type: Ev.PROGRESS, stage, ...(extra || {}) }));
}

// ---- boot: runtime, numpy, engine (static/boot.js) ---------------------------------------------

/** bootPython's stages as timings and progress events. @type {(stage: string, phase: "start"|"done", seconds?: number) => void} */
const onStage = (stage, phase, seconds) => {
  if (phase === "done") timings[stage] = /** @type {number} */ (seconds);
  progress(stage, phase === "done" ? { phase, seconds } : { phase });
};

/** @param {import("./protocol.js").LoadRequest} msg  the request that starts the boot */
async function boot(msg) {
  if (msg.model_snapshot === true && !msg.model) {     // Mote.load booting before it knows the model
    const started = await bootFromAnyModelSnapshot();
    if (started !== null) return started;
  }
  /** @type {(py: any) => void} */ let up = () => {};
  pythonUp = new Promise((r) => { up = r; });
  // Only a boot asked for with model_snapshot can be snapshotted with its model later: Pyodide's
  // `_makeSnapshot` wraps the JS globals Python sees, and every token's trip to the page pays for it
  // (Atome 944K, paired A/B: decode 0.92-0.94x with it on every boot).
  const { py, mod, snapshot, snapshotRead, takeLater: take } = await bootPython(BASE, "engine.bridge", onStage, up,
                                                                                { snapshotLater: msg.model_snapshot === true })
    .finally(() => up(null));                        // a failed boot: nobody waits for Python forever
  pyodide = py;
  bridge = mod;
  takeLater = take;
  runtimeSnapshot = snapshot;
  if (snapshotRead !== null) timings.snapshot_read = snapshotRead;
  return mod.runtime_info();
}

// ---- weights: one ModelBuffer as the sink of static/model-source.js --------------------------------

/** Bytes gathered before the first look at the GGUF header (doubled while it is longer): the
 *  headers of Gemma 3 (262,144 tokens, 6.2 MiB) and Qwen2.5 (5.7 MiB) fit, so neither is parsed twice. */
const HEADER_TRY = 8 << 20;
/** Past this, stop waiting for the header (a damaged file): load it, and let the parser name the fault. */
const HEADER_LIMIT = 64 << 20;

/** navigator.deviceMemory (GB, coarse) where the browser reports it, else null. */
function deviceMemory() {
  const gb = /** @type {any} */ (self.navigator)?.deviceMemory;
  return typeof gb === "number" && gb > 0 ? gb : null;
}

/**
 * The sink: a fresh ModelBuffer per source (the cached copy, else the download), filled and hashed
 * in WASM memory; stores a verified copy straight out of it. `buf` is the caller's once loaded.
 * With `early` (engine.buffer, while numpy and the engine still load) the buffer is made at once,
 * and the memory budget is checked by settle() once the engine is up.
 * @param {import("./protocol.js").ModelRef} model @param {any} [early]  the engine.buffer module (PyProxy)
 */
function bufferSink(model, msg, early = null) {
  return {
    /** @type {any} */ buf: null,                        // engine.bridge.ModelBuffer (PyProxy)
    /** @type {Uint8Array[]} */ head: [],                 // the first bytes, until they hold the GGUF header
    headBytes: 0,
    nextTry: HEADER_TRY,
    /** @type {any} */ budget: null,
    /** @type {string|null} */ layout: null,
    hash: true,                                          // false: model-source.js checks a chunk list instead
    begin(/** @type {{hash: boolean}} */ { hash }) {
      this.discard();
      this.head = []; this.headBytes = 0; this.nextTry = HEADER_TRY; this.hash = hash;
      if (early) this.buf = allocate(model.size, () => early.ModelBuffer(model.size, hash));
    },
    /** The memory this model will need (engine/budget.py), from `header`: the file's first bytes, or
     *  the filled ModelBuffer. False while they do not hold the whole header; throws a refusal. */
    adopt(/** @type {any} */ header) {
      const verdict = bridge.header_budget(header, model.size, msg.n_ctx ?? undefined, msg.layout ?? undefined, deviceMemory());
      if (verdict === undefined) return false;
      if (verdict?.refusal) throw Object.assign(new Error(verdict.refusal), { fatal: true, budget: verdict.budget });
      this.budget = verdict?.budget ?? null;
      this.layout = verdict?.layout ?? null;              // the default layout may fall back to "compact" to fit
      return true;
    },
    /** The heap's final size at once (before the model's buffer, where the budget comes first). */
    reserve() { if (this.budget) growHeap(pyodide, this.budget.workers[0].heap_bytes); },
    /** After an early read, once the engine is up: the budget from the header in the buffer. */
    settle() {
      this.adopt(this.buf);
      allocate(model.size, () => this.reserve());
    },
    /** The budget from the first bytes, before the rest is read; then the buffer. */
    check(/** @type {boolean} */ last) {
      const prefix = new Uint8Array(this.headBytes);
      let at = 0;
      for (const c of this.head) { prefix.set(c, at); at += c.byteLength; }
      if (!this.adopt(prefix)) {
        if (!last) { this.nextTry = 2 * this.headBytes; return; }   // header not complete yet
        this.budget = null; this.layout = null;          // never complete: the parser names the fault
      }
      this.buf = allocate(model.size, () => {
        this.reserve();
        return bridge.ModelBuffer(model.size, this.hash);   // (size,) bytes in WASM memory
      });
      this.buf.write(prefix);
      this.head = [];
    },
    write(/** @type {Uint8Array} */ chunk) {
      if (this.buf) { this.buf.write(chunk); return; }  // copied into WASM memory and hashed
      this.head.push(chunk.slice());                     // (the chunk is the reader's scratch)
      this.headBytes += chunk.byteLength;
      if (this.headBytes >= Math.min(this.nextTry, model.size)) {
        this.check(this.headBytes >= Math.min(model.size, HEADER_LIMIT));
      }
    },
    end() { if (!this.buf) this.check(true); },
    sha256() { return this.buf.sha256(); },
    discard() { this.head = []; if (this.buf) { this.buf.destroy(); this.buf = null; } },  // frees the WASM copy now
    store(/** @type {import("./protocol.js").ModelRef} */ m) { return store(m, this.buf); },
  };
}

/** The model's buffer from make(); failing (e.g. MemoryError) is not the source's fault.
 *  @param {number} size @param {() => any} make */
function allocate(size, make) {
  try {
    return make();
  } catch (e) {
    throw Object.assign(new Error(`cannot hold ${size} bytes in WASM memory: ${/** @type {any} */ (e)?.message || e}`), { fatal: true });
  }
}

/**
 * Store a verified copy, streamed straight out of WASM memory: each chunk is a view of the
 * ModelBuffer's bytes, not a copy, so storing allocates nothing the size of the file. No Python
 * runs while this awaits (generate is refused during a load), so WASM memory cannot grow and
 * detach the views; if it did, the stream errors and nothing is stored.
 * @param {import("./protocol.js").ModelRef} model @param {any} buf  a complete, verified ModelBuffer
 */
async function store(model, buf) {
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
  } finally {
    view.release();
    bytes.destroy();
  }
}

// ---- requests ------------------------------------------------------------------------------------

/** @param {import("./protocol.js").LoadRequest} msg */
async function handleLoad(msg) {
  if (msg.model && !loadingModel && loadedSha !== msg.model.sha256) {
    if (speculation && await speculation) await booting?.catch(() => null);
    if (speculativeKey !== null) {                   // booted from a model snapshot: is it this model's?
      const was = speculativeKey;
      speculativeKey = null;
      const key = wantsModelSnapshot(msg) ? await modelKey(msg, msg.model).catch(() => null) : null;
      if (key === was) { readyFromSnapshot(msg.model); return; }
      bridge.drop_model();                           // another model's: freed, then this one loads as usual
    } else if (wantsModelSnapshot(msg) && await loadModelSnapshot(msg, msg.model)) return;
  }
  booting = booting || boot(msg);
  // While the runtime boots, the model's bytes go into the Cache API (model-source.js prefetch);
  // once Python runs, the cached copy is read into WASM memory while numpy and the engine load
  // (readWhileBooting); otherwise loadWeights reads them after the boot.
  const first = Boolean(msg.model) && !pyodide && !loadingModel;
  if (first) loadingModel = true;                    // this load's weights may come in during the boot
  try {
    await loadAfterBoot(msg, first);
  } finally {
    if (first) loadingModel = false;
  }
}

/** @param {import("./protocol.js").LoadRequest} msg @param {boolean} first  the load that started the boot */
async function loadAfterBoot(msg, first) {
  const early = first ? startPrefetch(msg.model) : null;
  const earlyRead = first ? readWhileBooting(msg, msg.model, early) : null;
  let runtimeInfo;
  try {
    runtimeInfo = await booting;
  } catch (e) {
    booting = null;                                  // allow a retry after e.g. a network error
    earlyRead?.then((r) => r?.sink.discard());
    throw Object.assign(new Error(String(/** @type {any} */ (e)?.message || e)), { stage: "runtime" });
  }
  /** @type {{error: unknown, result: string|null}|null} */
  const fetched = early && await early;
  const booted = performance.now();
  const read = earlyRead && await earlyRead;
  if (read) read.afterBoot = Math.max(0, read.done - booted) / 1000;   // the part of it the boot did not hide
  try {
    await loadBooted(msg, first, runtimeInfo, fetched, read);
  } catch (e) {
    read?.sink.discard();                            // not taken by loadWeights (which frees its own): free it now
    throw e;
  }
}

/**
 * The rest of a load once booted: the ready event without a model, for a model already in memory,
 * or loadWeights.
 * @param {import("./protocol.js").LoadRequest} msg @param {boolean} first @param {any} runtimeInfo
 * @param {{error: unknown, result: string|null}|null} fetched @param {any} read  readWhileBooting's result
 */
async function loadBooted(msg, first, runtimeInfo, fetched, read) {
  if (fetched?.error) {                              // a bad download is this load's error
    throw Object.assign(new Error(String(/** @type {any} */ (fetched.error)?.message || fetched.error)), { stage: "weights" });
  }
  const info = runtimeInfo.toJs ? runtimeInfo.toJs({ dict_converter: Object.fromEntries }) : runtimeInfo;
  info.runtime_snapshot = runtimeSnapshot;
  if (msg.self_check && info.template_guard === undefined) {   // on request only: it costs a few hundred ms
    const guard = bridge.template_guard();
    info.template_guard = guard ? guard.results : null;
    const chat = bridge.chat_check();                  // Jinja2 in this runtime (imported here, not at boot)
    Object.assign(info, chat.toJs ? chat.toJs({ dict_converter: Object.fromEntries }) : chat);
  }
  if (!msg.model) {
    post({ type: Ev.READY, info, timings: { ...timings } });
    return;
  }
  const model = msg.model;
  if (loadedSha === model.sha256) {                 // already in memory
    post({ type: Ev.READY, info, model: { sha256: model.sha256, reused: true }, timings: { ...timings }, cached: true });
    return;
  }
  if (!first) {
    if (loadingModel) throw new Error("a model is already loading: wait for its ready or error event");
    loadingModel = true;
  }
  try {
    await loadWeights(msg, model, info, fetched?.result === "stored", read);
  } finally {
    if (!first) loadingModel = false;
  }
}

/** Largest model whose cached copy is read while numpy and the engine load. The memory budget
 *  can only be checked once the engine is up: a larger file is only read after its budget passed.
 *  Measured (paired, docs/bench/startup-2026-12-04.md): Gemma's 253 MB reach ready 0.92x cold, 0.94x
 *  warm; Qwen2.5-Coder 0.5B's 491 MB gained nothing (1.00-1.04x cold, 0.97-1.20x warm): on two cores
 *  a long read only slows numpy's loading while it runs. */
const EARLY_MAX_BYTES = 320 << 20;

/**
 * The cached copy of `model` into a ModelBuffer while numpy and the engine load (after the
 * prefetch, if one runs): resolves with the filled, verified sink, or null where this does not
 * apply (no cached copy, a bad one, a large model, a failed boot); loadWeights then reads as usual.
 * @param {import("./protocol.js").LoadRequest} msg @param {import("./protocol.js").ModelRef} model
 * @param {Promise<{error: unknown, result: string|null}>|null} prefetched
 * @returns {Promise<{sink: any, cached: boolean, hashWait: number|null, seconds: number, done: number, afterBoot?: number}|null>}
 */
async function readWhileBooting(msg, model, prefetched) {
  if (!(model.size <= EARLY_MAX_BYTES) || typeof caches === "undefined") return null;
  const py = await pythonUp;
  if (!py || (prefetched && (await prefetched).error)) return null;
  const buffers = py.pyimport("engine.buffer");
  const sink = bufferSink(model, msg, buffers);
  const t0 = performance.now();
  try {
    const got = await loadVerified(model, sink, (p) => progress("weights", { ...p, early: true }), { cacheOnly: true });
    if (!got) return null;
    const done = performance.now();
    return { sink, cached: got.cached, hashWait: got.hashWait, seconds: (done - t0) / 1000, done };
  } catch {
    sink.discard();                                  // e.g. no room: the load after the boot says so
    return null;
  } finally {
    buffers.destroy();
  }
}

/**
 * The model into the Cache API while the runtime boots, by static/prefetch-worker.js (booting blocks
 * this thread): resolves with the download's error, if any, and prefetch()'s result ("stored": it
 * was downloaded now). Storing that fails, no chunk list, or no nested workers only mean that
 * loadWeights downloads as before.
 * @param {import("./protocol.js").ModelRef} model @returns {Promise<{error: unknown, result: string|null}>}
 */
function startPrefetch(model) {
  const none = { error: null, result: null };
  if (!chunkList(model) || typeof caches === "undefined" || typeof Worker === "undefined") return Promise.resolve(none);
  return new Promise((resolve) => {
    let helper;
    try {
      helper = moduleWorker(new URL("./prefetch-worker.js", import.meta.url), "mote-prefetch");
    } catch {
      resolve(none);
      return;
    }
    const finish = (/** @type {{error: unknown, result: string|null}} */ out) => { helper.terminate(); resolve(out); };
    helper.addEventListener("message", (e) => {
      const d = e.data;
      if (d?.type === "progress") { const { type, ...p } = d; progress("weights", { ...p, early: true }); }
      else if (d?.type === "prefetched") { if (d.result === "stored") timings.prefetch = d.seconds; finish({ error: null, result: d.result }); }
      else if (d?.type === "error") finish({ error: new Error(d.message), result: null });
    });
    helper.addEventListener("error", () => finish(none));   // the helper could not start: download as before
    helper.postMessage({ type: "prefetch", model });
  });
}

/**
 * Weights of `model` into the engine: Cache API or download, store, parse; posts ready.
 * @param {import("./protocol.js").LoadRequest} msg @param {import("./protocol.js").ModelRef} model
 * @param {Object} info  the runtime info for the ready event
 * @param {boolean} [downloaded]  prefetched into the Cache API by this load: not "cached" for the page
 * @param {{sink: any, cached: boolean, hashWait: number|null, seconds: number, afterBoot?: number}|null} [early]
 *   the weights already read by readWhileBooting
 */
async function loadWeights(msg, model, info, downloaded = false, early = null) {
  loadedSha = null;                                 // from here on generate is refused (see store)
  const t0 = performance.now();
  const sink = early ? early.sink : bufferSink(model, msg);
  let cached, hashWait, storeSeconds;
  try {
    if (early) {                                     // read during the boot: now the budget
      ({ cached, hashWait } = early);
      sink.settle();
    } else {
      ({ cached, hashWait, storeSeconds } = await loadVerified(model, sink, (p) => progress("weights", p)));
    }
  } catch (e) {
    sink.discard();
    throw Object.assign(new Error(String(/** @type {any} */ (e)?.message || e)), { stage: "weights" });
  }
  // after the boot; an early read counts only the part of it that outlasted the boot (weights_early: all of it)
  timings.weights = (early?.afterBoot ?? 0) + (performance.now() - t0) / 1000;
  if (early) timings.weights_early = early.seconds;
  else delete timings.weights_early;
  if (hashWait !== null) timings.hash_wait = hashWait;   // chunk digests the stream waited for (native SHA-256)
  else delete timings.hash_wait;
  if (storeSeconds !== undefined) timings.store = storeSeconds;   // the verified download into the Cache API
  else delete timings.store;
  progress("weights", { phase: "parse", loaded: model.size, total: model.size });
  const t1 = performance.now();
  let modelInfo;
  try {
    modelInfo = bridge.load_model(sink.buf, msg.n_ctx ?? undefined, sink.layout ?? msg.layout ?? undefined);   // parses in place
  } catch (e) {                                      // e.g. GGUFError: a verified file we cannot run
    throw Object.assign(new Error(String(/** @type {any} */ (e)?.message || e)), { stage: "weights" });
  } finally {
    sink.discard();                                  // the Session keeps the bytes; drop our handle
  }
  timings.model = (performance.now() - t1) / 1000;
  loadedSha = model.sha256;
  post({ type: Ev.READY, info, model: modelInfo, cached: cached && !downloaded, timings: { ...timings }, memory: memory(pyodide), budget: sink.budget });
  saveModelSnapshot(msg, model);
  warmUpWhenIdle();
}

// ---- a snapshot taken with the model loaded (static/boot.js) --------------------------------------
//
// Asked for with LoadRequest.model_snapshot, from the request that boots the worker on (one worker;
// the shards of a parallel load keep their own loads): a later load of the same model (same file, context length, layout and reported device
// memory, on the same build) starts Python from the memory this load left, taken right after its
// ready event and before any generation: no read of the cached file, no chunk checks, no parse, no
// preparation. What it costs: OPFS space the size of the heap (one such snapshot is kept), and a
// copy of the heap in JS memory for a moment, when it is taken and when it is read back (Pyodide
// restores from a buffer). So it is only taken for a heap of at most MODEL_SNAPSHOT_MAX_HEAP and a
// quarter of the device memory the browser reports. Measured on Gemma 3 270M:
// docs/bench/startup-2026-12-04.md (2026-12-07).

/** @param {import("./protocol.js").LoadRequest} msg */
function wantsModelSnapshot(msg) {
  return msg.model_snapshot === true && Boolean(msg.model);
}

/** The snapshot's key: what the loaded state depends on besides the build.
 *  @param {import("./protocol.js").LoadRequest} msg @param {import("./protocol.js").ModelRef} model */
function modelKey(msg, model) {
  return modelSnapshotKey(BASE, modelSnapshotParts(model, msg.n_ctx, msg.layout, deviceMemory()));
}

/**
 * Load `model` from its snapshot, if one is saved: Python started from it replaces any instance this
 * worker booted (which is let finish first), and the ready event follows. False where there is none
 * or it did not restore (it is then deleted): the caller loads as usual.
 * @param {import("./protocol.js").LoadRequest} msg @param {import("./protocol.js").ModelRef} model
 */
async function loadModelSnapshot(msg, model) {
  const key = await modelKey(msg, model).catch(() => null);
  const hit = key === null ? null : await findModelSnapshot(key);
  if (hit === null) return false;
  loadingModel = true;
  try {
    if (booting) await booting.catch(() => null);
    for (const k of Object.keys(timings)) delete timings[k];
    const got = await restoreModelSnapshot(BASE, /** @type {string} */ (key), hit, "engine.bridge", onStage);
    if (!got) return false;
    booting = Promise.resolve(adoptSnapshot(got));
    readyFromSnapshot(model);
    return true;
  } finally {
    loadingModel = false;
  }
}

/** Python started from a model snapshot as this worker's: its runtime info.
 *  @param {{py: any, mod: any, takeLater: any, snapshotRead: number}} got */
function adoptSnapshot(got) {
  pyodide = got.py;
  bridge = got.mod;
  takeLater = got.takeLater;
  runtimeSnapshot = "model";
  timings.snapshot_read = got.snapshotRead;
  return bridge.runtime_info();
}

/** The ready event of `model`, in memory since Python started from its snapshot.
 *  @param {import("./protocol.js").ModelRef} model */
function readyFromSnapshot(model) {
  const runtimeInfo = bridge.runtime_info();
  const info = runtimeInfo.toJs ? runtimeInfo.toJs({ dict_converter: Object.fromEntries }) : runtimeInfo;
  info.runtime_snapshot = runtimeSnapshot;
  loadedSha = model.sha256;
  post({ type: Ev.READY, info, model: bridge.loaded_model(), cached: true, timings: { ...timings }, memory: memory(pyodide),
         budget: null });
  warmUpWhenIdle();
}

/**
 * A boot asked for before the model is named (Mote.load with modelSnapshot starts its worker at once):
 * where this build's model snapshot is saved, Python starts from it instead of from the runtime
 * snapshot, on the bet that the load names the same model (it is the one saved last); a load of
 * another model frees it and loads as usual. Resolves with the runtime info, or null where there is
 * none or it did not restore (then the boot goes on as usual).
 */
async function bootFromAnyModelSnapshot() {
  /** @type {(v: boolean) => void} */ let settle = () => {};
  speculation = new Promise((r) => { settle = r; });
  try {
    const found = await findAnyModelSnapshot(BASE).catch(() => null);
    settle(found !== null);
    const got = found && await restoreModelSnapshot(BASE, found.key, found.hit, "engine.bridge", onStage);
    if (!got) return null;
    speculativeKey = found.key;
    return adoptSnapshot(got);
  } finally {
    settle(false);
  }
}

/** Right after a load's ready event, before any other message: this instance's snapshot, saved in
 *  the background where wanted and possible. @param {import("./protocol.js").LoadRequest} msg
 *  @param {import("./protocol.js").ModelRef} model */
function saveModelSnapshot(msg, model) {
  if (!takeLater || !wantsModelSnapshot(msg)) return;
  if (!modelSnapshotFits(pyodide, 1, deviceMemory())) return;
  let parts;
  try {
    parts = takeLater();
  } catch (e) {
    console.warn("model snapshot not taken:", e);
    return;
  }
  modelKey(msg, model).then((key) => key && storeModelSnapshot(key, parts)).catch(() => {});
}

// ---- warming up once idle after ready (engine/bridge.py warm_up) ------------------------------------
//
// A small model's first answer after a load came at about half the speed of the next ones: Chromium
// compiles WebAssembly with its baseline compiler first and optimises what runs often later. So once
// the worker has been idle for WARM_DELAY_MS after ready, it decodes throwaway tokens for up to
// WARM_MS, in slices of WARM_SLICE_MS; any request (load, generate, reset) stops it first, within a
// slice. A request sent right after ready (a script, the benchmark) finds it not started and pays nothing.
// Then, any model: the chat template's opening (BOS, default system prompt, the user turn's header)
// goes into the KV cache a few tokens per slice (bridge.prefill_opening), so that a new chat's first
// answer prefills only what the user wrote; a request arriving meanwhile waits for the slice, whose
// tokens it then reuses.
const WARM_DELAY_MS = 100;
const WARM_MS = 600;
const WARM_SLICE_MS = 8;
/** @type {number|null} */ let warmedSeconds = null;   // the last warm-up's length, for the next done event
let warmDecode = true;                                   // the next idle run decodes throwaway tokens first

const idle = idleWork(WARM_DELAY_MS, async (stopped) => {
  if (warmDecode) {
    const t0 = performance.now();
    try {
      while (!stopped() && performance.now() - t0 < WARM_MS && bridge.warm_up(WARM_SLICE_MS)) await yieldToEventLoop();
    } catch (e) {
      console.warn("warm-up stopped:", e);
    } finally {
      try { bridge.end_warm_up(); } catch (e) { console.warn("warm-up not cleared:", e); }
      warmedSeconds = (performance.now() - t0) / 1000;
    }
  }
  try {
    while (!stopped() && bridge.prefill_opening()) await yieldToEventLoop();
  } catch (e) {
    console.warn("the chat template's opening was not prefilled:", e);
  }
});

/** @param {boolean} [decode]  false after a reset ("New chat"): the opening only, the code is warm */
function warmUpWhenIdle(decode = true) {
  if (idle.busy) return;
  warmDecode = decode;
  idle.start();
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
    await relayGeneration({ id: msg.id, gen, post, aborted: () => abortRequested,
                            doneExtra: () => ({ memory: memory(pyodide), warm_s: warmedSeconds }) });
  } finally {
    gen.close();
    gen.destroy();
    generating = false;
  }
}

self.addEventListener("message", async (event) => {
  const msg = event.data;
  if (!isMessage(msg, [Req.LOAD, Req.GENERATE, Req.ABORT, Req.RESET, Req.PING])) return;
  if (msg.type === Req.PING) { post({ type: Ev.PONG }); return; }
  if (msg.type === Req.ABORT) { abortRequested = true; return; }
  // a warm-up that runs or waits stops first: the session is then as the load left it, but for
  // whatever of the chat template's opening is prefilled (a request reuses it)
  if (idle.busy) await idle.stop();
  if (msg.type === Req.RESET) { bridge?.reset(); if (!generating && loadedSha) warmUpWhenIdle(false); return; }      // also during a generation: it records nothing
  try {
    if (msg.type === Req.LOAD) await handleLoad(/** @type {any} */ (msg));
    else await handleGenerate(/** @type {any} */ (msg));
  } catch (e) {
    const err = /** @type {any} */ (e);
    const message = String(err?.message || err);
    // Pyodide's runtime is unusable after a fatal error (e.g. out of memory): the page starts a fresh worker
    const fatal = /Pyodide (has suffered a fatal error|already fatally failed)/.test(message);
    post({ type: Ev.ERROR, id: /** @type {any} */ (msg).id, stage: err?.stage, message, ...(fatal ? { fatal } : {}) });
  }
});
