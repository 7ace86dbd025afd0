// @ts-check
/**
 * Decoding across several Web Workers, without SharedArrayBuffer (so no COOP/COEP headers: it works
 * on any static host and inside an embedding page).
 *
 *   const w = new ParallelWorker({ workers: 2 });   // default: defaultWorkers()
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
 *   2. reads the model once (Cache API copy if there is one, else the network), checks its sha256,
 *      and serves each worker only the byte ranges its shard asks for (transferred, 16 MB at a time);
 *      the whole file lives in this thread only while loading;
 *   3. forwards generate/abort to shard 0 (the leader: tokenizer, sampler, generation loop) and
 *      re-dispatches its token/done events.
 */
import { Req, Ev, MODEL_CACHE } from "./protocol.js";

const WORKER_URL = new URL("./parallel-worker.js", import.meta.url);
export const MAX_WORKERS = 8;

/** Workers to use by default: one per logical core, at most MAX_WORKERS (the page may override). */
export function defaultWorkers() {
  const cores = typeof navigator !== "undefined" ? navigator.hardwareConcurrency || 1 : 1;
  return Math.max(1, Math.min(cores, MAX_WORKERS));
}

/** @param {BufferSource} data */
async function sha256Hex(data) {
  const digest = await crypto.subtle.digest("SHA-256", data);
  return Array.from(new Uint8Array(digest), (b) => b.toString(16).padStart(2, "0")).join("");
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
    this.workers = Array.from({ length: this.n }, () => new Worker(WORKER_URL, { type: "module" }));
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
   * The model file as one verified ArrayBuffer: the Cache API copy static/worker.js stored, else a
   * download with progress events. Not stored here (the single worker's cache rules stay in one place).
   * @param {import("./protocol.js").ModelRef} model
   */
  async readModel(model) {
    const key = new URL(`/__mote_models__/${model.sha256}`, self.location.origin).href;
    let response = null, phase = "download";
    if (typeof caches !== "undefined") {
      try { response = await (await caches.open(MODEL_CACHE)).match(key); phase = "cache"; } catch { response = null; }
    }
    if (!response) {
      phase = "download";
      response = await fetch(new URL(model.url, self.location.href), { cache: "no-store" });
      if (response.status !== 200) throw new Error(`${model.url}: HTTP ${response.status}`);
    }
    if (!response.body) throw new Error(`${model.url}: empty response body`);
    const out = new Uint8Array(model.size);
    const reader = response.body.getReader();
    let loaded = 0, lastPost = 0;
    for (;;) {
      const { done, value } = await reader.read();
      if (done) break;
      if (loaded + value.length > model.size) throw new Error(`${model.url}: more than the expected ${model.size} bytes`);
      out.set(value, loaded);
      loaded += value.length;
      const now = performance.now();
      if (now - lastPost > 100) { this.emit({ type: Ev.PROGRESS, stage: "weights", phase, loaded, total: model.size }); lastPost = now; }
    }
    if (loaded !== model.size) throw new Error(`${model.url}: got ${loaded} of ${model.size} bytes`);
    this.emit({ type: Ev.PROGRESS, stage: "weights", phase: "verify", loaded, total: model.size });
    const got = await sha256Hex(out);
    if (got !== model.sha256) throw new Error(`${model.url}: sha256 ${got} does not match the expected ${model.sha256}`);
    return { buffer: out.buffer, cached: phase === "cache" };
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
    const { buffer, cached } = await this.readModel(model);
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
  const [a, b] = [new Worker(WORKER_URL, { type: "module" }), new Worker(WORKER_URL, { type: "module" })];
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
