// @ts-check
/**
 * Decoding across several Web Workers, without SharedArrayBuffer (so no COOP/COEP headers: it works
 * on any static host and inside an embedding page).
 *
 *   const w = new ParallelWorker({ workers: 2 });   // default: defaultWorkers() (cores, at most 4, memory permitting)
 *   w.addEventListener("message", (e) => ...);      // the events of static/protocol.js
 *   w.postMessage({ type: "load", model });         // progress* -> ready
 *   w.postMessage({ type: "generate", id, prompt | messages, params });   // token* -> done
 *   w.postMessage({ type: "abort" });  w.terminate();
 *
 * ParallelWorker speaks the same protocol as `new Worker("worker.js")`, so the chat page can use
 * either. Inside, N module workers (static/parallel-worker.js) each boot their own Pyodide and hold
 * one shard of the model (engine/shard.py: heads, feed-forward units and vocabulary split N ways).
 * This coordinator:
 *   1. boots the workers in parallel and connects every pair with a MessageChannel, so per-layer
 *      activations go worker to worker, never through this thread;
 *   2. reads the model once under static/worker.js's cache rules (static/model-cache.js: a cached
 *      copy is verified, a bad one dropped; a download is verified, then stored under the same key),
 *      and serves each worker only the byte ranges its shard asks for (transferred, 16 MB at a
 *      time); the whole file lives in this thread only while loading;
 *   3. forwards generate/abort to shard 0 (the leader: tokenizer, sampler, generation loop) and
 *      re-dispatches its token/done events.
 * The shard workers are started with protocol.js moduleWorker, so a page on another origin (the
 * embed script, docs/EMBED.md) can run this too.
 *
 * How many workers: workersForModel() below, used by the chat page (static/main.js) and the embed
 * script (static/mote-embed.js) alike.
 */
import { Req, Ev, moduleWorker } from "./protocol.js";
import { cachedModel, dropModel, fetchModel, storeModel } from "./model-cache.js";
import { sha256Hex } from "./boot.js";

const WORKER_URL = new URL("./parallel-worker.js", import.meta.url);
/** The most workers anyone may ask for. */
export const MAX_WORKERS = 8;
/**
 * The default's cap: on 2 cores, 2 workers decoded Gemma 3 270M 1.5-1.6x faster than 1 (7.4 vs 4.7
 * tok/s, docs/bench/gemma-q4_k_m-workers.md); more than 2 workers was never measured.
 */
export const DEFAULT_MAX_WORKERS = 4;
/**
 * Device memory (GB, navigator.deviceMemory where the browser reports it) per default worker: each
 * boots its own Python and keeps its own KV cache, and the page holds the file once while loading
 * (Gemma 3 270M: tab peak ~770 MB on one worker, ~1.33 GB on two).
 */
export const GB_PER_WORKER = 2;
/** The architectures engine/shard.py can split; anything else (atome, ...) decodes on one worker. */
export const SHARDABLE = Object.freeze(["llama", "qwen2", "gemma3", "gpt2"]);
/** Smaller files decode on one worker by default: the per-layer syncs cost more than the split saves. */
export const MIN_PARALLEL_BYTES = 50e6;

/**
 * Workers to use by default: one per logical core (navigator.hardwareConcurrency), at most
 * DEFAULT_MAX_WORKERS, and at most one per GB_PER_WORKER of navigator.deviceMemory where the
 * browser reports it (a 4 GB phone with 8 cores gets 2, a 2 GB one 1).
 */
export function defaultWorkers() {
  const nav = /** @type {any} */ (typeof navigator !== "undefined" ? navigator : {});
  const cores = nav.hardwareConcurrency || 1;
  const memory = Number(nav.deviceMemory);
  const byMemory = Number.isFinite(memory) && memory > 0 ? Math.floor(memory / GB_PER_WORKER) : Infinity;
  return Math.max(1, Math.min(cores, DEFAULT_MAX_WORKERS, byMemory));
}

/**
 * Workers to decode `model` with: `wanted` (clamped to 1..MAX_WORKERS), or 1 where sharding cannot
 * or does not pay (an architecture engine/shard.py cannot split, a file under `minBytes`).
 *   workersForModel({architecture: "gemma3", size: 268e6}, 2)   // 2
 *   workersForModel({architecture: "gemma3", size: 2e6}, 2)     // 1: under MIN_PARALLEL_BYTES
 *   workersForModel({architecture: "atome", size: 1e9}, 4)      // 1: shard.py cannot split it
 * @param {{architecture?: string|null, size?: number}|null} model  a GET /models entry, or as much as is known
 * @param {number} wanted @param {number} [minBytes]
 */
export function workersForModel(model, wanted, minBytes = MIN_PARALLEL_BYTES) {
  const n = Math.max(1, Math.min(Math.floor(wanted) || 1, MAX_WORKERS));
  if (n === 1 || !model || !SHARDABLE.includes(model.architecture || "") || !((model.size ?? 0) >= minBytes)) return 1;
  return n;
}

// ---- the architecture of a file GET /models does not describe (the embed script) ---------------

const NEED_MORE = Symbol("need more bytes");

/**
 * general.architecture from the first bytes of a GGUF file; undefined while more bytes are needed;
 * null when it is not there (or this is not GGUF version 2 or 3).
 *   GGUF: "GGUF", u32 version, u64 n_tensors, u64 n_kv, then n_kv x (key string, u32 type, value);
 *   a string is a u64 length + UTF-8, an array a u32 type + u64 count + values (as engine/gguf.py reads)
 *   ggufArchitecture(first64kB)   // "gemma3"
 * @param {Uint8Array} bytes @returns {string|null|undefined}
 */
export function ggufArchitecture(bytes) {
  const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  const SIZE = [1, 1, 2, 2, 4, 4, 4, 1, 0, 0, 8, 8, 8];  // by value type; 8 string, 9 array vary
  let at = 0;
  const take = (/** @type {number} */ n) => { if (at + n > bytes.length) throw NEED_MORE; at += n; return at - n; };
  const u32 = () => view.getUint32(take(4), true);
  const u64 = () => Number(view.getBigUint64(take(8), true));
  const str = () => { const n = u64(); const a = take(n); return new TextDecoder().decode(bytes.subarray(a, a + n)); };
  const skip = (/** @type {number} */ type) => {
    if (type === 8) take(u64());
    else if (type === 9) {
      const inner = u32(), count = u64();
      if (SIZE[inner]) take(count * SIZE[inner]);
      else for (let i = 0; i < count; i++) skip(inner);
    } else if (SIZE[type]) take(SIZE[type]);
    else throw new Error(`GGUF value type ${type} unknown`);
  };
  try {
    if (u32() !== 0x46554747) return null;                // "GGUF", little-endian
    const version = u32();
    if (version !== 2 && version !== 3) return null;
    u64();                                               // n_tensors
    const nKv = u64();
    for (let i = 0; i < nKv; i++) {
      const key = str(), type = u32();
      if (key === "general.architecture") return type === 8 ? str() : null;
      skip(type);
    }
    return null;
  } catch (e) {
    if (e === NEED_MORE) return undefined;
    return null;
  }
}

/**
 * general.architecture of `model`'s file from its first bytes (the cached copy, else the network;
 * the rest is not read), or null when it cannot be told within `maxBytes`.
 * @param {import("./protocol.js").ModelRef} model
 */
export async function peekArchitecture(model, maxBytes = 16 << 20) {
  let body = await cachedModel(model);
  try { body = body || await fetchModel(model); } catch { return null; }
  const reader = body.getReader();
  /** @type {Uint8Array[]} */ const chunks = [];
  let have = 0, tried = 0;
  try {
    for (;;) {
      const { done, value } = await reader.read();
      if (value) { chunks.push(value); have += value.length; }
      if (!done && have < 2 * tried + 1 && have < maxBytes) continue;   // parse again once doubled
      tried = have;
      const bytes = new Uint8Array(have);
      chunks.reduce((at, c) => { bytes.set(c, at); return at + c.length; }, 0);
      const arch = ggufArchitecture(bytes);
      if (arch !== undefined || done || have >= maxBytes) return arch ?? null;
    }
  } catch {
    return null;
  } finally {
    reader.cancel().catch(() => {});
  }
}

/** @param {Worker} w @param {string} type  the next message of `type` from w (an error rejects) */
function next(w, type) {
  return new Promise((resolve, reject) => {
    const on = (/** @type {MessageEvent} */ e) => {
      if (e.data?.type === type) { w.removeEventListener("message", on); resolve(e.data); }
      else if (e.data?.type === "error") { w.removeEventListener("message", on); reject(new Error(e.data.message)); }
    };
    w.addEventListener("message", on);
  });
}

export class ParallelWorker extends EventTarget {
  /**
   * @param {{workers?: number, transfer?: boolean, splitAttention?: boolean}} [options]
   *   workers: how many (default defaultWorkers()); transfer: postMessage partials by transfer
   *   (default) or structured clone; splitAttention: split heads too (2 sync points per layer,
   *   default) or only the FFN (1 per layer, attention computed by every worker)
   */
  constructor(options = {}) {
    super();
    this.n = Math.max(1, Math.min(options.workers ?? defaultWorkers(), MAX_WORKERS));
    this.transfer = options.transfer !== false;
    this.splitAttention = options.splitAttention !== false;
    /** @type {Worker[]} */ this.workers = [];
    /** @type {Promise<any>|null} */ this.booting = null;
    /** @type {string|null} */ this.loadedSha = null;
    /** @type {Object<string, number>} */ this.timings = {};
    /** @type {((e: MessageEvent) => void)|null} */ this._onmessage = null;
  }

  set onmessage(fn) {
    if (this._onmessage) this.removeEventListener("message", /** @type {any} */ (this._onmessage));
    this._onmessage = fn;
    if (fn) this.addEventListener("message", /** @type {any} */ (fn));
  }
  get onmessage() { return this._onmessage; }

  /** @param {any} data */
  emit(data) { this.dispatchEvent(new MessageEvent("message", { data })); }

  /** @param {any} msg */
  postMessage(msg) {
    if (msg?.type === Req.ABORT) { this.workers[0]?.postMessage(msg); return; }
    const run = msg?.type === Req.LOAD ? this.load(msg) : msg?.type === Req.GENERATE ? this.generate(msg) : null;
    run?.catch((e) => this.emit({ type: Ev.ERROR, id: msg.id, stage: e?.stage, message: String(e?.message || e) }));
  }

  terminate() {
    for (const w of this.workers) w.terminate();
    this.workers = [];
    this.booting = null;
    this.loadedSha = null;
  }

  /** Spawn the workers, boot Pyodide in each, connect every pair with a MessageChannel. */
  async boot() {
    const t0 = performance.now();
    this.emit({ type: Ev.PROGRESS, stage: "runtime", phase: "start", workers: this.n });
    this.workers = Array.from({ length: this.n }, (_, i) => moduleWorker(WORKER_URL, `mote shard ${i}`));
    for (const w of this.workers) {
      w.addEventListener("message", (e) => this.fromWorker(w, e.data));
      w.addEventListener("error", (e) => this.emit({ type: Ev.ERROR, message: `worker: ${e.message}` }));
    }
    const booted = await Promise.all(this.workers.map((w) => { const p = next(w, "booted"); w.postMessage({ type: "boot" }); return p; }));
    this.timings.runtime = (performance.now() - t0) / 1000;
    this.timings.boot_per_worker = Math.max(...booted.map((b) => b.seconds));
    /** @type {(MessagePort|null)[][]} */
    const ports = this.workers.map(() => this.workers.map(() => null));
    for (let i = 0; i < this.n; i++) {
      for (let j = i + 1; j < this.n; j++) {
        const ch = new MessageChannel();
        ports[i][j] = ch.port1;
        ports[j][i] = ch.port2;
      }
    }
    this.workers.forEach((w, i) => w.postMessage({ type: "ports", index: i, n: this.n, ports: ports[i], transfer: this.transfer },
                                                 /** @type {Transferable[]} */ (ports[i].filter(Boolean))));
    for (const stage of ["runtime", "numpy", "engine"]) this.emit({ type: Ev.PROGRESS, stage, phase: "done" });
    return { workers: this.n, platform: "emscripten", parallel: true };
  }

  /** Events from the workers: byte requests are served here, the leader's events go to the page. */
  fromWorker(/** @type {Worker} */ w, /** @type {any} */ d) {
    if (d?.type === "want") {
      const bytes = /** @type {ArrayBuffer} */ (this.file).slice(d.start, d.end);
      w.postMessage({ type: "bytes", id: d.id, data: bytes }, [bytes]);
    } else if (d?.type === Ev.TOKEN || d?.type === Ev.DONE || (d?.type === Ev.ERROR && this.workers.indexOf(w) >= 0 && this.loadedSha)) {
      this.emit(d);
    }
  }

  /**
   * The model file as one verified ArrayBuffer, under the cache rules static/worker.js keeps
   * (static/model-cache.js): a cached copy is verified and used, or deleted if bad; else a download,
   * verified, then stored under the same key, so either kind of worker reads what the other stored.
   * @param {import("./protocol.js").ModelRef} model
   */
  async readModel(model) {
    const out = new Uint8Array(model.size);              // throws when it cannot be held: the cached copy stays
    const cached = await cachedModel(model);
    if (cached) {
      this.emit({ type: Ev.PROGRESS, stage: "weights", phase: "cache", loaded: 0, total: model.size });
      const whole = await this.readInto(out, cached, "cache", "cached model").then(() => true, () => false);
      this.emit({ type: Ev.PROGRESS, stage: "weights", phase: "verify", loaded: model.size, total: model.size });
      if (whole && await sha256Hex(out) === model.sha256) return { buffer: out.buffer, cached: true };
      await dropModel(model);                            // truncated or corrupted: drop it and download again
      this.emit({ type: Ev.PROGRESS, stage: "weights", phase: "cache-corrupt", loaded: 0, total: model.size });
    }
    const body = await fetchModel(model);                // status and Content-Length checked
    try {
      await this.readInto(out, body, "download", model.url);
    } catch (e) {                                        // a cut connection surfaces as a TypeError here
      const msg = String(/** @type {any} */ (e)?.message || e);
      if (msg.startsWith(model.url)) throw e;
      throw new Error(`${model.url}: download failed after a partial response (${msg})`);
    }
    this.emit({ type: Ev.PROGRESS, stage: "weights", phase: "verify", loaded: model.size, total: model.size });
    const got = await sha256Hex(out);
    if (got !== model.sha256) throw new Error(`${model.url}: sha256 ${got} does not match the expected ${model.sha256}`);
    await this.store(model, out);
    return { buffer: out.buffer, cached: false };
  }

  /**
   * Read `body` into `out` (exactly out.length bytes, else throws), posting `phase` progress.
   * @param {Uint8Array} out @param {ReadableStream<Uint8Array>} body @param {string} phase
   * @param {string} what  names the source in error messages
   */
  async readInto(out, body, phase, what) {
    const reader = body.getReader();
    let loaded = 0, lastPost = 0;
    for (;;) {
      const { done, value } = await reader.read();
      if (done) break;
      if (loaded + value.length > out.length) {
        await reader.cancel();
        throw new Error(`${what}: more than the expected ${out.length} bytes`);
      }
      out.set(value, loaded);
      loaded += value.length;
      const now = performance.now();
      if (now - lastPost > 100) { this.emit({ type: Ev.PROGRESS, stage: "weights", phase, loaded, total: out.length }); lastPost = now; }
    }
    this.emit({ type: Ev.PROGRESS, stage: "weights", phase, loaded, total: out.length });
    if (loaded !== out.length) throw new Error(`${what}: download truncated at ${loaded} of ${out.length} bytes`);
  }

  /**
   * Store a verified download for the next visit (and offline use), as 1 MB views of `bytes`, not a
   * copy. A full quota only costs the offline copy, not the session.
   * @param {import("./protocol.js").ModelRef} model @param {Uint8Array} bytes  complete, sha256 checked
   */
  async store(model, bytes) {
    if (typeof caches === "undefined") return false;
    this.emit({ type: Ev.PROGRESS, stage: "weights", phase: "store", loaded: 0, total: model.size });
    const STORE_CHUNK = 1 << 20;
    let offset = 0;
    const body = new ReadableStream({
      pull(controller) {
        if (offset >= bytes.length) { controller.close(); return; }
        const end = Math.min(offset + STORE_CHUNK, bytes.length);
        controller.enqueue(bytes.subarray(offset, end));  // (end - offset,) view, no copy
        offset = end;
      },
    }, { highWaterMark: 1 });
    try {
      return await storeModel(model, body);
    } catch (e) {
      this.emit({ type: Ev.PROGRESS, stage: "weights", phase: "store-failed", message: String(e) });
      return false;
    }
  }

  /** @param {import("./protocol.js").LoadRequest} msg */
  async load(msg) {
    this.booting = this.booting || this.boot();
    const info = await this.booting;
    if (!msg.model) { this.emit({ type: Ev.READY, info, timings: { ...this.timings } }); return; }
    const model = msg.model;
    if (this.loadedSha === model.sha256) {
      this.emit({ type: Ev.READY, info, model: { sha256: model.sha256, reused: true }, timings: { ...this.timings }, cached: true });
      return;
    }
    this.loadedSha = null;
    const t0 = performance.now();
    let read;
    try {
      read = await this.readModel(model);
    } catch (e) {
      throw Object.assign(new Error(String(/** @type {any} */ (e)?.message || e)), { stage: "weights" });
    }
    const { buffer, cached } = read;
    this.file = buffer;
    this.timings.weights = (performance.now() - t0) / 1000;
    this.emit({ type: Ev.PROGRESS, stage: "weights", phase: "parse", loaded: model.size, total: model.size });
    const t1 = performance.now();
    try {
      const shards = await Promise.all(this.workers.map((w) => {
        const p = next(w, "loaded");
        w.postMessage({ type: "load", size: model.size, n_ctx: msg.n_ctx ?? null, split_attention: this.splitAttention });
        return p;
      }));
      this.timings.model = (performance.now() - t1) / 1000;
      this.loadedSha = model.sha256;
      const memory = { wasm_bytes: shards.reduce((s, x) => s + (x.memory.wasm_bytes || 0), 0), js_heap_bytes: null,
                       per_worker: shards.map((x) => x.memory.wasm_bytes) };
      this.emit({ type: Ev.READY, info, cached, timings: { ...this.timings }, memory,
                  model: { sha256: model.sha256, workers: this.n, shards: shards.map((x) => x.info), n_ctx: shards[0].info.n_ctx } });
    } finally {
      this.file = null;                                   // the whole file is no longer needed here
    }
  }

  /** @param {import("./protocol.js").GenerateRequest} msg */
  async generate(msg) {
    if (!this.loadedSha) throw new Error("no model loaded: send a load request first");
    this.workers[0].postMessage(msg);
  }

  /** Every worker's counters: forwards, sync points, ms waiting for peers, ms copying, WASM size. */
  async stats() {
    return Promise.all(this.workers.map((w) => { const p = next(w, "stats"); w.postMessage({ type: "stats" }); return p; }));
  }
}

// ---- measuring message passing ------------------------------------------------------------------

/**
 * Round-trip time of a Float32Array(n) between two workers (no Pyodide), per mode:
 *   "port-clone"      direct MessagePort, structured clone (copy)
 *   "port-transfer"   direct MessagePort, ArrayBuffer transferred
 *   "relay-transfer"  worker -> this thread -> worker and back (what a star through the page costs)
 * Returns {mode: ms per round trip}; one sync point of a forward costs about half a round trip.
 */
export async function measureMessaging(n = 640, iters = 500) {
  const [a, b] = [moduleWorker(WORKER_URL), moduleWorker(WORKER_URL)];
  /** @type {Object<string, number>} */ const out = {};
  try {
    for (const mode of ["clone", "transfer"]) {
      const ch = new MessageChannel();
      b.postMessage({ type: "pong", port: ch.port2, mode }, [ch.port2]);
      const p = next(a, "pinged");
      a.postMessage({ type: "ping", port: ch.port1, n, iters, mode }, [ch.port1]);
      out[`port-${mode}`] = (await p).ms;
    }
    // relay: a -> page -> b -> page -> a, transferring each time
    let data = new Float32Array(n);
    const hop = (/** @type {Worker} */ w) => { const p = next(w, "echo"); w.postMessage({ type: "echo", data, mode: "transfer" }, [data.buffer]); return p; };
    for (let i = 0; i < 20; i++) data = (await hop(a)).data;
    const t0 = performance.now();
    for (let i = 0; i < iters; i++) { data = (await hop(a)).data; data = (await hop(b)).data; }
    out["relay-transfer"] = (performance.now() - t0) / iters;
  } finally {
    a.terminate();
    b.terminate();
  }
  return out;
}

// ---- the test page (static/parallel.html) ---------------------------------------------------------

/**
 * Load `model` on `workers` workers, generate once, and return what happened (for the test page,
 * tests/test_parallel.py and scripts/bench_parallel.py).
 * @param {{workers: number, model: import("./protocol.js").ModelRef, prompt: string, params?: Object,
 *          n_ctx?: number, splitAttention?: boolean, transfer?: boolean}} opts
 */
export async function run(opts) {
  const w = new ParallelWorker({ workers: opts.workers, splitAttention: opts.splitAttention, transfer: opts.transfer });
  const t0 = performance.now();
  /** @type {number[]} */ const tokenTimes = [];
  try {
    const ready = await new Promise((resolve, reject) => {
      w.addEventListener("message", (e) => {
        const d = /** @type {MessageEvent} */ (e).data;
        if (d.type === Ev.READY && d.model) resolve(d);
        if (d.type === Ev.ERROR) reject(new Error(d.message));
      });
      w.postMessage({ type: Req.LOAD, model: opts.model, n_ctx: opts.n_ctx });
    });
    const loadS = (performance.now() - t0) / 1000;
    const t1 = performance.now();
    const done = await new Promise((resolve, reject) => {
      w.addEventListener("message", (e) => {
        const d = /** @type {MessageEvent} */ (e).data;
        if (d.type === Ev.TOKEN) tokenTimes.push(performance.now());
        if (d.type === Ev.DONE) resolve(d);
        if (d.type === Ev.ERROR) reject(new Error(d.message));
      });
      w.postMessage({ type: Req.GENERATE, id: 1, prompt: opts.prompt, params: opts.params || {} });
    });
    const stats = (await w.stats()).map((s) => ({ ...s.stats, wasm_bytes: s.memory.wasm_bytes }));
    const span = tokenTimes.length > 1 ? (tokenTimes[tokenTimes.length - 1] - tokenTimes[0]) / 1000 : 0;
    return {
      workers: w.n, load_s: loadS, timings: ready.timings, shards: ready.model.shards,
      ttft_s: tokenTimes.length ? (tokenTimes[0] - t1) / 1000 : null,
      page_decode_tok_s: span > 0 ? (tokenTimes.length - 1) / span : null,   // between token events
      decode_tok_s: done.decode_tok_s, prefill_tok_s: done.prefill_tok_s, n_generated: done.n_generated,
      text: done.text, token_ids: done.token_ids, reason: done.reason, worker_stats: stats,
    };
  } finally {
    w.terminate();
  }
}

if (typeof document !== "undefined" && document.getElementById("mote-parallel")) {
  /** @type {any} */ (globalThis).MoteParallel = { ParallelWorker, run, measureMessaging, defaultWorkers };
  const $ = (/** @type {string} */ id) => /** @type {any} */ (document.getElementById(id));
  $("workers").value = String(defaultWorkers());
  $("run").addEventListener("click", async () => {
    $("out").textContent = "running…";
    try {
      const models = await (await fetch("/models")).json();
      const res = await run({ workers: Number($("workers").value), model: models[0], prompt: $("prompt").value,
                              params: { temperature: 0, max_tokens: 32 } });
      $("out").textContent = JSON.stringify(res, null, 2);
    } catch (e) {
      $("out").textContent = String(e);
    }
  });
  $("measure").addEventListener("click", async () => {
    $("out").textContent = JSON.stringify(await measureMessaging(), null, 2);
  });
}
