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
 *   2. streams the model once into the workers under static/worker.js's cache rules
 *      (static/model-cache.js: a cached copy is verified, a bad one dropped; a download is verified,
 *      and only then does its Cache API entry, written as it streamed, complete under the same key).
 *      This thread never holds the file: it keeps the first bytes until every worker has parsed
 *      the GGUF header and named its byte ranges (engine.shard.ShardLoader), then passes each
 *      chunk on, coalesced into BLOCK-sized messages: each worker gets copies of only the parts
 *      inside its ranges, straight into its pieces; the leader gets every block (transferred);
 *      WINDOW bounds the bytes in flight to each worker. memory.coordinator_peak_bytes in the ready
 *      event says how much it held at most (a few MB);
 *   3. verifies before anything is built: the leader hashes every byte with Python's hashlib as the
 *      blocks arrive (engine.shard.ShardLoader.write, as engine.bridge.ModelBuffer does for one
 *      worker), and only when its sha256 matches GET /models are the workers told to build their
 *      shards; on a mismatch or any error every worker drops its pieces and the page gets an error
 *      (stage "weights");
 *   4. forwards generate/abort to shard 0 (the leader: tokenizer, sampler, generation loop) and
 *      re-dispatches its token/done events.
 * Why the leader hashes: crypto.subtle.digest has no incremental form, so it needs the whole file
 * in one buffer (what this design removes). The leader already runs Python, whose hashlib sha256
 * (the one static/worker.js trusts) runs in its own thread, overlapped with the download, off the
 * page's main thread; the cost is sending it the bytes it does not keep (one memcpy into WASM
 * memory each, then dropped) - no new hashing code to get wrong, no extra worker to boot. Measured
 * (headless Chromium, x86, a 207 MB test model on 2 workers): timings.hash 0.7-0.8 s (~270 MB/s,
 * so ~1 s for Gemma 3 270M's 253 MB), timings.leader_write (copies + hash) 0.7-0.85 s, overlapped
 * with the download; the whole weights stage took 2.1 s from the network, 0.9 s from the cache.
 * The shard workers are started with protocol.js moduleWorker, so a page on another origin (the
 * embed script, docs/EMBED.md) can run this too.
 *
 * How many workers: workersForModel() below, used by the chat page (static/main.js) and the embed
 * script (static/mote-embed.js) alike.
 */
import { Req, Ev, moduleWorker } from "./protocol.js";
import { cachedModel, dropModel, fetchModel, storeModel } from "./model-cache.js";

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
 * boots its own Python and keeps its own KV cache (Gemma 3 270M: tab peak ~770 MB on one worker,
 * ~1.14 GB on two with the streamed load below; 1.33 GB when this thread held the whole file).
 */
export const GB_PER_WORKER = 2;
/** The architectures engine/shard.py can split; anything else (atome, ...) decodes on one worker. */
export const SHARDABLE = Object.freeze(["llama", "qwen2", "gemma3", "gpt2"]);
/** Smaller files decode on one worker by default: the per-layer syncs cost more than the split saves. */
export const MIN_PARALLEL_BYTES = 50e6;
/** The file's first bytes, handed to every worker to parse the GGUF header; doubled while too short
 *  (Gemma 3 270M's header is 6.5 MB: a second try at 8 MB). */
const HEADER_PREFIX = 4 << 20;
/** Bytes per write message after the header: network or cache chunks (often 64 kB) coalesced. */
const BLOCK = 2 << 20;
/** Bytes sent to one worker and not yet acknowledged before reading waits (flow control). */
const WINDOW = 8 << 20;
/** Bytes queued for the Cache API before reading waits. */
const CACHE_QUEUE = 4 << 20;

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

/** The first `n` bytes of `chunks` in one new buffer (always a copy: the chunks may sit in the cache's queue). @param {Uint8Array[]} chunks @param {number} n */
function concat(chunks, n) {
  const out = new Uint8Array(n);                         // (n,) bytes
  let at = 0;
  for (const c of chunks) { out.set(c, at); at += c.length; }
  return out;
}

/**
 * A download written into the Cache API while it streams (static/model-cache.js storeModel: same
 * key and headers as static/worker.js), committed only when the caller has verified the whole file:
 * commit() closes the body, so cache.put completes; abort() errors it, so cache.put rejects and
 * stores nothing (and the key is deleted, should anything be there). At most CACHE_QUEUE bytes wait
 * for the cache: write() waits while the cache is slower than the network. Where there is no cache
 * or storing fails (a full quota), writes are dropped and commit() reports it.
 */
class CacheWriter {
  /** @param {import("./protocol.js").ModelRef} model */
  constructor(model) {
    this.model = model;
    this.over = false;                                   // put settled before commit: writes are dropped
    /** @type {(() => void)[]} */ this.waiters = [];
    /** @type {ReadableStreamDefaultController<Uint8Array>|null} */ this.controller = null;
    const body = new ReadableStream({
      start: (c) => { this.controller = c; },
      pull: () => this.wakeUp(),
      cancel: () => { this.over = true; this.wakeUp(); },
    }, new ByteLengthQueuingStrategy({ highWaterMark: CACHE_QUEUE }));
    /** @type {Promise<boolean>} */
    this.put = storeModel(model, body).finally(() => { this.over = true; this.wakeUp(); });
    this.put.catch(() => {});                            // reported by commit()
  }

  wakeUp() { const w = this.waiters; this.waiters = []; for (const r of w) r(); }

  /** Bytes queued for the cache, not yet taken. */
  queued() { return this.over || !this.controller ? 0 : Math.max(0, CACHE_QUEUE - (this.controller.desiredSize ?? 0)); }

  /** Queue a chunk (not copied: the caller must not modify or transfer it); waits while the queue is full. */
  async write(/** @type {Uint8Array} */ chunk) {
    if (this.over) return;
    const c = /** @type {ReadableStreamDefaultController<Uint8Array>} */ (this.controller);
    c.enqueue(chunk);
    while (!this.over && (c.desiredSize ?? 1) <= 0) await new Promise((r) => this.waiters.push(/** @type {() => void} */ (r)));
  }

  /** The file is complete and verified: finish the entry. Throws when storing failed. */
  async commit() {
    if (!this.over) /** @type {ReadableStreamDefaultController<Uint8Array>} */ (this.controller).close();
    return await this.put;
  }

  /** The file was bad or incomplete: no entry may stay. @param {Error} reason */
  async abort(reason) {
    if (!this.over) /** @type {ReadableStreamDefaultController<Uint8Array>} */ (this.controller).error(reason);
    await this.put.catch(() => {});
    await dropModel(this.model).catch(() => {});
  }
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
    // while loading: bytes sent to each worker and not yet acknowledged, a worker's error, waiters
    this.loading = false;
    /** @type {number[]} */ this.inflight = [];
    /** @type {Error|null} */ this.failure = null;
    /** @type {(() => void)[]} */ this.waiters = [];
    this.peakHeld = 0;                                   // most file bytes this thread held at once
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
    this.wakeUp();                                       // a load in progress fails
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

  /** Events from the workers: write acknowledgements and load errors here, the leader's events to the page. */
  fromWorker(/** @type {Worker} */ w, /** @type {any} */ d) {
    const i = this.workers.indexOf(w);
    if (d?.type === "wrote") {
      this.inflight[i] -= d.n;
      this.wakeUp();
    } else if (d?.type === Ev.ERROR && this.loading) {
      this.failure = this.failure || new Error(d.message);
      this.wakeUp();
    } else if (d?.type === Ev.TOKEN || d?.type === Ev.DONE || (d?.type === Ev.ERROR && i >= 0 && this.loadedSha)) {
      this.emit(d);
    }
  }

  /** Wake whatever waits in waitUntil (a write acknowledged, a worker failed, a cache pull). */
  wakeUp() {
    const w = this.waiters;
    this.waiters = [];
    for (const r of w) r();
  }

  /** Resolves once cond() holds; rejects when a worker reported an error or the workers are gone. */
  async waitUntil(/** @type {() => boolean} */ cond) {
    for (;;) {
      if (this.failure) throw this.failure;
      if (!this.workers.length) throw new Error("the workers were terminated while loading");
      if (cond()) return;
      await new Promise((r) => this.waiters.push(/** @type {() => void} */ (r)));
    }
  }

  /** Note `bytes` of the file held in this thread right now (kept: the peak). */
  held(/** @type {number} */ bytes) { this.peakHeld = Math.max(this.peakHeld, bytes); }

  /**
   * Post `msg` to worker i once fewer than WINDOW bytes sent to it are unacknowledged (flow control:
   * a fast cache read must not queue the file in the workers' inboxes).
   * @param {number} i @param {any} msg @param {number} bytes @param {Transferable[]} transfer
   */
  async sendBytes(i, msg, bytes, transfer) {
    await this.waitUntil(() => this.inflight[i] < WINDOW);
    this.inflight[i] += bytes;
    this.workers[i].postMessage(msg, transfer);
  }

  /** Ask every worker `type` and collect their `reply` messages (a worker error rejects). */
  ask(/** @type {string} */ type, /** @type {string} */ reply, /** @type {(i: number) => [any, Transferable[]]} */ make) {
    return Promise.all(this.workers.map((w, i) => {
      const p = next(w, reply);
      const [msg, transfer] = make(i);
      w.postMessage({ type, ...msg }, transfer);
      return p;
    }));
  }

  /**
   * Stream `body` (exactly model.size bytes, else throws) to the shard workers, posting `phase`
   * progress: the prefix until every worker can parse the header (4 MB, doubled while needed), then
   * BLOCK-sized blocks, all of each to the leader (which hashes it) and to each other worker only
   * the parts inside its byte ranges. `store`, if given, gets every chunk too.
   * @param {ReadableStream<Uint8Array>} body @param {import("./protocol.js").ModelRef} model
   * @param {{n_ctx?: number|null}} opts @param {string} phase @param {string} what  names the source in errors
   * @param {CacheWriter|null} store
   */
  async feed(body, model, opts, phase, what, store) {
    const size = model.size;
    const reader = body.getReader();
    /** @type {Uint8Array[]} */ let chunks = [];         // read, not yet sent
    let pending = 0, sentTo = 0, loaded = 0, lastPost = 0;
    let prefixLen = Math.min(size, HEADER_PREFIX);
    /** @type {number[][][]|null} */ let ranges = null;  // per worker: [start, end) it needs
    try {
      for (;;) {
        let step;
        try {
          step = await reader.read();
        } catch (e) {                                      // a cut connection surfaces as a TypeError here
          throw Object.assign(new Error(String(/** @type {any} */ (e)?.message || e)), { readFailed: true });
        }
        const { done, value } = step;
        if (value) {
          if (loaded + value.length > size) throw new Error(`${what}: more than the expected ${size} bytes`);
          loaded += value.length;
          if (store) await store.write(value);
          chunks.push(value);
          pending += value.length;
          this.held(pending + (store ? store.queued() : 0));
          const now = performance.now();
          if (now - lastPost > 100) { this.emit({ type: Ev.PROGRESS, stage: "weights", phase, loaded, total: size }); lastPost = now; }
        }
        if (done && loaded !== size) throw new Error(`${what}: download truncated at ${loaded} of ${size} bytes`);
        if (!ranges && (pending >= prefixLen || done)) {
          const prefix = concat(chunks, pending);          // (pending,) the file's first bytes
          this.held(2 * pending);
          const answers = await this.ask("header", "header", (i) => [{
            prefix: prefix.buffer, size, n_ctx: opts.n_ctx ?? null, split_attention: this.splitAttention, hash: i === 0 }, []]);
          chunks = [prefix];
          if (answers.some((a) => a.more)) { prefixLen = Math.min(size, prefixLen * 2); continue; }
          ranges = answers.map((a) => a.ranges);
          chunks = [];
          sentTo = pending;
          pending = 0;
        } else if (ranges && (pending >= BLOCK || (done && pending > 0))) {
          const block = concat(chunks, pending);           // (pending,) file bytes [sentTo, sentTo + pending)
          chunks = [];
          this.held(2 * pending + (store ? store.queued() : 0));
          await this.distribute(block, sentTo, ranges);
          sentTo += pending;
          pending = 0;
        }
        if (done) break;
      }
    } catch (e) {
      reader.cancel().catch(() => {});
      throw e;
    }
    this.emit({ type: Ev.PROGRESS, stage: "weights", phase, loaded, total: size });
  }

  /**
   * File bytes [start, start + block.length): every worker other than the leader gets copies of the
   * parts inside its ranges (nothing if none), then the leader gets the block itself (transferred).
   * @param {Uint8Array} block @param {number} start @param {number[][][]} ranges
   */
  async distribute(block, start, ranges) {
    const end = start + block.length;
    for (let i = 1; i < this.n; i++) {
      /** @type {[number, ArrayBuffer][]} */ const parts = [];
      let bytes = 0;
      for (const [a, b] of ranges[i]) {
        if (b <= start) continue;
        if (a >= end) break;                               // ranges are sorted
        const from = Math.max(a, start), to = Math.min(b, end);
        parts.push([from, block.slice(from - start, to - start).buffer]);   // (to - from,) copy of the overlap
        bytes += to - from;
      }
      if (parts.length) await this.sendBytes(i, { type: "write", parts }, bytes, parts.map((p) => p[1]));
    }
    await this.sendBytes(0, { type: "write", parts: [[start, block.buffer]] }, block.length, [block.buffer]);
  }

  /** The whole file's sha256 as the leader hashed it (after every byte it was sent: messages keep their order). */
  async leaderDigest() {
    await this.waitUntil(() => true);                    // a worker's earlier error, not a later one, is reported
    const reply = next(this.workers[0], "digest");
    this.workers[0].postMessage({ type: "digest" });
    const d = await reply;
    this.timings.hash = d.hash_seconds;
    return d.sha256;
  }

  /**
   * Every worker frees its pieces, and answers once the messages of an earlier attempt are behind
   * it (errors and acknowledgements included), so a new attempt starts clean.
   */
  async dropPieces() {
    await Promise.all(this.workers.map((w) => new Promise((resolve) => {
      const on = (/** @type {MessageEvent} */ e) => { if (e.data?.type === "dropped") { w.removeEventListener("message", on); resolve(null); } };
      w.addEventListener("message", on);
      w.postMessage({ type: "drop" });
    })));
    this.failure = null;
    this.inflight = this.workers.map(() => 0);
  }

  /**
   * The model file streamed into the workers and verified, under the cache rules static/worker.js
   * keeps (static/model-cache.js): a cached copy is verified and used, or deleted if bad; else a
   * download, verified, and stored under the same key while it streams (committed only once the
   * sha256 matched), so either kind of worker reads what the other stored. Returns whether the
   * bytes came from the cache.
   * @param {import("./protocol.js").ModelRef} model @param {{n_ctx?: number|null}} opts
   */
  async streamModel(model, opts) {
    const size = model.size;
    const cached = await cachedModel(model);
    if (cached) {
      this.emit({ type: Ev.PROGRESS, stage: "weights", phase: "cache", loaded: 0, total: size });
      let ok = false;
      try {
        await this.feed(cached, model, opts, "cache", "cached model", null);
        this.emit({ type: Ev.PROGRESS, stage: "weights", phase: "verify", loaded: size, total: size });
        ok = await this.leaderDigest() === model.sha256;
      } catch { /* truncated, unreadable or unparsable: treated like a bad hash */ }
      if (ok) return true;
      await this.dropPieces();
      await dropModel(model);                            // truncated or corrupted: drop it and download again
      this.emit({ type: Ev.PROGRESS, stage: "weights", phase: "cache-corrupt", loaded: 0, total: size });
    }
    const body = await fetchModel(model);                // status and Content-Length checked
    const store = typeof caches === "undefined" ? null : new CacheWriter(model);
    try {
      try {
        await this.feed(body, model, opts, "download", model.url, store);
      } catch (e) {
        const msg = String(/** @type {any} */ (e)?.message || e);
        if (!(/** @type {any} */ (e)?.readFailed) || msg.startsWith(model.url)) throw e;
        throw new Error(`${model.url}: download failed after a partial response (${msg})`);
      }
      this.emit({ type: Ev.PROGRESS, stage: "weights", phase: "verify", loaded: size, total: size });
      const got = await this.leaderDigest();
      if (got !== model.sha256) throw new Error(`${model.url}: sha256 ${got} does not match the expected ${model.sha256}`);
    } catch (e) {
      await store?.abort(/** @type {Error} */ (e));      // nothing unverified stays in the cache
      throw e;
    }
    if (store) {
      this.emit({ type: Ev.PROGRESS, stage: "weights", phase: "store", loaded: 0, total: size });
      try {
        await store.commit();
      } catch (e) {                                      // a full quota only costs the offline copy
        this.emit({ type: Ev.PROGRESS, stage: "weights", phase: "store-failed", message: String(e) });
      }
    }
    return false;
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
    if (this.loading) throw new Error("a model is already loading: wait for its ready or error event");
    this.loadedSha = null;
    this.loading = true;
    this.peakHeld = 0;
    const t0 = performance.now();
    try {
      await this.dropPieces();                           // a clean start, whatever an earlier load left
      let cached;
      try {
        cached = await this.streamModel(model, { n_ctx: msg.n_ctx ?? null });
      } catch (e) {
        throw Object.assign(new Error(String(/** @type {any} */ (e)?.message || e)), { stage: "weights" });
      }
      this.timings.weights = (performance.now() - t0) / 1000;
      this.emit({ type: Ev.PROGRESS, stage: "weights", phase: "parse", loaded: model.size, total: model.size });
      const t1 = performance.now();
      let shards;
      try {                                              // verified: now the workers may build their shards
        shards = await this.ask("build", "loaded", () => [{}, []]);
      } catch (e) {                                      // e.g. GGUFError: a verified file we cannot run
        throw Object.assign(new Error(String(/** @type {any} */ (e)?.message || e)), { stage: "weights" });
      }
      this.timings.model = (performance.now() - t1) / 1000;
      this.timings.leader_write = shards[0].write_seconds;   // copying every block in + hashing it
      this.loadedSha = model.sha256;
      const memory = { wasm_bytes: shards.reduce((s, x) => s + (x.memory.wasm_bytes || 0), 0), js_heap_bytes: null,
                       per_worker: shards.map((x) => x.memory.wasm_bytes), coordinator_peak_bytes: this.peakHeld };
      this.emit({ type: Ev.READY, info, cached, timings: { ...this.timings }, memory,
                  model: { sha256: model.sha256, workers: this.n, shards: shards.map((x) => x.info), n_ctx: shards[0].info.n_ctx } });
    } catch (e) {
      for (const w of this.workers) w.postMessage({ type: "drop" });   // every worker frees its pieces
      throw e;
    } finally {
      this.loading = false;
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
      workers: w.n, load_s: loadS, timings: ready.timings, shards: ready.model.shards, cached: ready.cached,
      coordinator_peak_bytes: ready.memory.coordinator_peak_bytes,
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
