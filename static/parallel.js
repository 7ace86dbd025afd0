// @ts-check
/**
 * Decoding across several Web Workers, without SharedArrayBuffer (so no COOP/COEP headers: it works
 * on any static host and inside an embedding page).
 *
 *   const w = new ParallelWorker({ workers: 2 });   // default: defaultWorkers() (static/worker-count.js)
 *   w.addEventListener("message", (e) => ...);      // the events of static/protocol.js
 *   w.postMessage({ type: "load", model });         // progress* -> ready
 *   w.postMessage({ type: "generate", id, prompt | messages, params });   // token* -> done
 *   w.postMessage({ type: "abort" });  w.terminate();
 *
 * ParallelWorker speaks the same protocol as `new Worker("worker.js")`, so the chat page can use
 * either. Inside, N module workers (static/parallel-worker.js) each boot their own Pyodide and hold
 * one shard of the model (engine/shard.py: heads, feed-forward units and vocabulary split N ways).
 * This coordinator (its messages to the shards: protocol.js Shard):
 *   1. boots the workers in parallel and connects every pair with a MessageChannel, so per-layer
 *      activations go worker to worker, never through this thread;
 *   2. streams the model once into the workers through static/model-source.js (the cache rules and
 *      the verification of static/worker.js; a download is stored while it streams, committed only
 *      once verified). This thread never holds the file: it keeps the first bytes until every worker
 *      has parsed the GGUF header and named its byte ranges (engine.shard.ShardLoader), then passes
 *      the bytes on in BLOCK-sized messages: each worker gets copies of only the parts inside its
 *      ranges, straight into its pieces (without a chunk list the leader gets every block,
 *      transferred, to hash it). WINDOW bounds the bytes in flight to each worker, and the buffers
 *      that carry them come back with each acknowledgement to carry later bytes (bufferFor);
 *      memory.coordinator_peak_bytes in the ready event says how much it held at most;
 *   3. verifies before anything is built: model-source.js checks each chunk against the model's
 *      chunk list as it passes (native SHA-256); without a list the leader hashes every byte with
 *      Python's hashlib as the blocks arrive (the cost: a copy into its WASM memory of the bytes it
 *      does not keep). Only once verified are the workers told to build their shards; on a mismatch or any
 *      error every worker drops its pieces and the page gets an error (stage "weights"). A model
 *      engine/shard.py cannot split is refused at the header: an error event with unsplittable: true;
 *   4. forwards generate/abort to shard 0 (the leader: tokenizer, sampler, generation loop) and
 *      re-dispatches its token/done events.
 * With LoadRequest.model_snapshot every shard saves a snapshot of its memory after the build, and a
 * later ParallelWorker's load of the same model starts every shard from its own (parallel-worker.js).
 * The shard workers are started with protocol.js moduleWorker, so a page on another origin (the
 * embed script, docs/EMBED.md) can run this too.
 */
import { Req, Ev, STAGES, Shard, moduleWorker } from "./protocol.js";
import { loadVerified, prefetch } from "./model-source.js";
import { clampWorkers, defaultWorkers } from "./worker-count.js";

const WORKER_URL = new URL("./parallel-worker.js", import.meta.url);
/** The file's first bytes, handed to every worker to parse the GGUF header; doubled while too short
 *  (8 MiB: Gemma 3's header is 6.2 MiB and Qwen2.5's 5.7, so neither is parsed twice). */
const HEADER_PREFIX = 8 << 20;
/** Bytes per write message after the header: network or cache chunks coalesced. */
const BLOCK = 2 << 20;
/** Bytes sent to one worker and not yet acknowledged before reading waits (flow control). */
const WINDOW = 8 << 20;

/** @param {Worker} w @param {string} type  the next message of `type` from w (an error rejects) */
function next(w, type) {
  return new Promise((resolve, reject) => {
    const on = (/** @type {MessageEvent} */ e) => {
      if (e.data?.type === type) { w.removeEventListener("message", on); resolve(e.data); }
      else if (e.data?.type === Ev.ERROR) { w.removeEventListener("message", on); reject(new Error(e.data.message)); }
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
    this.n = clampWorkers(options.workers ?? defaultWorkers());
    this.transfer = options.transfer !== false;
    this.splitAttention = options.splitAttention !== false;
    /** @type {Worker[]} */ this.workers = [];
    /** @type {Promise<any>|null} */ this.booting = null;
    this.booted = false;                                   // every worker is up
    /** @type {string|null} */ this.loadedSha = null;
    /** @type {Object<string, number>} */ this.timings = {};
    /** @type {((e: MessageEvent) => void)|null} */ this._onmessage = null;
    // while loading: bytes sent to each worker and not yet acknowledged, a worker's error, waiters
    this.loading = false;
    /** @type {number[]} */ this.inflight = [];
    /** @type {Error|null} */ this.failure = null;
    /** @type {(() => void)[]} */ this.waiters = [];
    this.peakHeld = 0;                                   // most file bytes this thread held at once (spare buffers included)
    /** @type {ArrayBuffer[]} */ this.spare = [];          // BLOCK-sized buffers the workers gave back (bufferFor)
    /** @type {any} */ this.budget = null;                 // shard 0's budget of the last load (engine/budget.py)
    /** @type {any[]|null} */ this.fromSnapshot = null;    // per shard, the model a model snapshot started it with (boot)
    /** @type {Promise<any>|null} */ this.snapshotting = null;   // the shards taking their model snapshots
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
    if (msg?.type === Req.ABORT || msg?.type === Req.RESET) {   // after a generate still waiting for the snapshots
      if (this.snapshotting) this.snapshotting.then(() => this.workers[0]?.postMessage(msg));
      else this.workers[0]?.postMessage(msg);
      return;
    }
    if (msg?.type === Req.PING) { this.ping(); return; }
    const run = msg?.type === Req.LOAD ? this.load(msg) : msg?.type === Req.GENERATE ? this.generate(msg) : null;
    run?.catch((e) => this.emit({ type: Ev.ERROR, id: msg.id, stage: e?.stage, message: String(e?.message || e),
                                  ...(e?.unsplittable ? { unsplittable: true } : {}) }));
  }

  terminate() {
    for (const w of this.workers) w.terminate();
    this.workers = [];
    this.booting = null;
    this.loadedSha = null;
    this.wakeUp();                                       // a load in progress fails
  }

  /**
   * Spawn the workers, boot Pyodide in each, connect every pair with a MessageChannel. With `want`
   * (LoadRequest.model_snapshot), each starts from its saved snapshot of that load where it has one;
   * this.fromSnapshot then holds, per shard, the model it started with (or null).
   * @param {{sha256: string, size: number, n_ctx: number|null, layout: string|null, split: boolean}|null} [want]
   */
  async boot(want = null) {
    const t0 = performance.now();
    this.emit({ type: Ev.PROGRESS, stage: "runtime", phase: "start", workers: this.n });
    this.workers = Array.from({ length: this.n }, (_, i) => moduleWorker(WORKER_URL, `mote shard ${i}`));
    for (const w of this.workers) {
      w.addEventListener("message", (e) => this.fromWorker(w, e.data));
      w.addEventListener("error", (e) => this.emit({ type: Ev.ERROR, message: `worker: ${e.message}` }));
    }
    // Only the first shard saves a runtime snapshot (they are the same); every shard starts from it later.
    const booted = await Promise.all(this.workers.map((w, i) => {
      const p = next(w, Shard.BOOTED);
      w.postMessage({ type: Shard.BOOT, save_snapshot: i === 0, ...(want ? { model_snapshot: { ...want, n: this.n, index: i } } : {}) });
      return p;
    }));
    this.timings.runtime = (performance.now() - t0) / 1000;
    this.timings.boot_per_worker = Math.max(...booted.map((b) => b.seconds));
    this.fromSnapshot = booted.map((b) => b.model ?? null);
    /** @type {(MessagePort|null)[][]} */
    const ports = this.workers.map(() => this.workers.map(() => null));
    for (let i = 0; i < this.n; i++) {
      for (let j = i + 1; j < this.n; j++) {
        const ch = new MessageChannel();
        ports[i][j] = ch.port1;
        ports[j][i] = ch.port2;
      }
    }
    this.workers.forEach((w, i) => w.postMessage({ type: Shard.PORTS, index: i, n: this.n, ports: ports[i], transfer: this.transfer },
                                                 /** @type {Transferable[]} */ (ports[i].filter(Boolean))));
    for (const stage of STAGES.slice(0, 3)) this.emit({ type: Ev.PROGRESS, stage, phase: "done" });
    // "restored" when every worker started from the saved runtime snapshot (static/boot.js)
    const runtimeSnapshot = booted.every((b) => b.snapshot === "restored") ? "restored" : booted[0].snapshot ?? null;
    return { workers: this.n, platform: "emscripten", parallel: true, runtime_snapshot: runtimeSnapshot };
  }

  /** PONG to the page once every shard worker answered a PING (a terminated one never does). */
  ping() {
    this.pongsDue = this.workers.length;
    if (this.pongsDue === 0) { this.emit({ type: Ev.PONG }); return; }
    for (const w of this.workers) w.postMessage({ type: Req.PING });
  }

  /** Events from the workers: write acknowledgements and load errors here, the leader's events to the page. */
  fromWorker(/** @type {Worker} */ w, /** @type {any} */ d) {
    const i = this.workers.indexOf(w);
    if (d?.type === Ev.PONG) {
      if (--this.pongsDue === 0) this.emit({ type: Ev.PONG });
    } else if (d?.type === Shard.WROTE) {                // the buffers written come back (bufferFor)
      for (const b of d.buffers) {
        this.inflight[i] -= b.byteLength;
        if (this.loading && b.byteLength === BLOCK) this.spare.push(b);
      }
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

  /**
   * A BLOCK-sized buffer to carry file bytes to a worker: one a worker gave back with its
   * acknowledgement, else a new one. Reusing them keeps the garbage of a load to a few blocks: a
   * new buffer per message left up to the file's size of dead buffers in the tab until the
   * collector came (2 workers, Gemma 3 270M: the tab's peak 0.83-1.1 GB for 0.49 GB of WASM).
   */
  bufferFor() { return this.spare.pop() ?? new ArrayBuffer(BLOCK); }

  /** Note `bytes` of the file held in this thread right now (kept: the peak). */
  held(/** @type {number} */ bytes) { this.peakHeld = Math.max(this.peakHeld, bytes); }

  /**
   * Post `msg` with its `buffers` to worker i once fewer than WINDOW bytes of buffers sent to it are
   * unacknowledged (flow control: a fast cache read must not queue the file in the workers' inboxes).
   * @param {number} i @param {any} msg @param {ArrayBuffer[]} buffers
   */
  async sendBytes(i, msg, buffers) {
    await this.waitUntil(() => this.inflight[i] < WINDOW);
    this.inflight[i] += buffers.reduce((n, b) => n + b.byteLength, 0);
    this.workers[i].postMessage(msg, buffers);
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
   * File bytes [start, start + block.length): every worker gets copies of the parts inside its
   * ranges (nothing if none); with `leaderAll` (the leader hashes the file) every worker but the
   * leader, which then gets the block itself (transferred).
   * @param {Uint8Array} block @param {number} start @param {number[][][]} ranges @param {boolean} leaderAll
   */
  async distribute(block, start, ranges, leaderAll) {
    const end = start + block.length;
    for (let i = leaderAll ? 1 : 0; i < this.n; i++) {
      /** @type {[number, number, number][]} */ const parts = [];   // [file offset, offset in buffer, length]
      /** @type {ArrayBuffer|null} */ let buffer = null;
      let fill = 0;
      for (const [a, b] of ranges[i]) {
        if (b <= start) continue;
        if (a >= end) break;                               // ranges are sorted
        const from = Math.max(a, start), to = Math.min(b, end);
        buffer = buffer ?? this.bufferFor();
        new Uint8Array(buffer, fill, to - from).set(block.subarray(from - start, to - start));   // (to - from,) copy of the overlap
        parts.push([from, fill, to - from]);
        fill += to - from;
      }
      if (buffer) await this.sendBytes(i, { type: Shard.WRITE, buffer, parts }, [buffer]);
    }
    if (leaderAll) await this.sendBytes(0, { type: Shard.WRITE, buffer: block.buffer, parts: [[start, 0, block.length]] }, [block.buffer]);
  }

  /** The whole file's sha256 as the leader hashed it (after every byte it was sent: messages keep their order). */
  async leaderDigest() {
    await this.waitUntil(() => true);                    // a worker's earlier error, not a later one, is reported
    const reply = next(this.workers[0], Shard.DIGEST);
    this.workers[0].postMessage({ type: Shard.DIGEST });
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
      const on = (/** @type {MessageEvent} */ e) => { if (e.data?.type === Shard.DROPPED) { w.removeEventListener("message", on); resolve(null); } };
      w.addEventListener("message", on);
      w.postMessage({ type: Shard.DROP });
    })));
    this.failure = null;
    this.inflight = this.workers.map(() => 0);
  }

  /**
   * The sink of static/model-source.js: the file's first bytes until every worker can parse the
   * header (HEADER_PREFIX, doubled while needed), then BLOCK-sized blocks (distribute). Blocks are
   * cut at exact sizes, so every byte has been passed on once the last one is written.
   * @param {import("./protocol.js").ModelRef} model @param {{n_ctx?: number|null, layout?: string|null}} opts
   * @returns {import("./model-source.js").Sink}
   */
  shardSink(model, opts) {
    const size = model.size;
    /** @type {number[][][]|null} */ let ranges = null;  // per worker: [start, end) it needs
    let block = new Uint8Array(0), fill = 0, sentTo = 0;  // (block.length,) bytes [sentTo, ...) being gathered
    let hashing = true;                                    // false: model-source.js checks a chunk list
    let clean = false;                                     // the workers are up and hold nothing of an earlier load
    const flush = async () => {
      if (!clean) await this.workersClean();
      clean = true;
      if (ranges) {
        const n = block.length;                          // read before the block is transferred away
        await this.distribute(block, sentTo, ranges, hashing);
        sentTo += n;
      } else {                                           // the prefix: does it hold the whole header?
        const answers = await this.ask(Shard.HEADER, Shard.HEADER, (i) => [{
          prefix: block.buffer, size, n_ctx: opts.n_ctx ?? null, split_attention: this.splitAttention, hash: hashing && i === 0,
          layout: opts.layout ?? null }, []]);
        const over = answers.find((a) => a.over);
        if (over) {                                      // would not fit: more workers do not fall back to fewer
          throw Object.assign(new Error(over.over), { fatal: true, budget: over.budget });
        }
        const refused = answers.find((a) => a.refused);
        if (refused) {
          throw Object.assign(new Error(`this model cannot be split over ${this.n} workers (${refused.refused})`),
                              { fatal: true, unsplittable: true });
        }
        if (answers.some((a) => a.more)) {                 // a longer prefix: keep these bytes, read on
          const longer = new Uint8Array(Math.min(size, 2 * block.length));
          longer.set(block);
          block = longer;
          this.held(block.length);
          return;
        }
        ranges = answers.map((a) => a.ranges);
        this.budget = answers[0].budget ?? null;         // shard 0's estimate for every shard (engine/budget.py)
        sentTo = block.length;
      }
      // the next block: this one again unless it went to the leader (then a spare); the header's is larger
      const buffer = block.buffer.byteLength === BLOCK ? block.buffer : this.bufferFor();
      block = new Uint8Array(buffer, 0, Math.min(BLOCK, size - sentTo));
      fill = 0;
    };
    return {
      begin: ({ hash }) => { ranges = null; block = new Uint8Array(Math.min(size, HEADER_PREFIX)); fill = 0; sentTo = 0; hashing = hash; clean = false; },
      write: async (chunk, queued) => {
        for (let at = 0; at < chunk.length;) {
          const n = Math.min(chunk.length - at, block.length - fill);
          block.set(chunk.subarray(at, at + n), fill);      // (n,) copy: the chunk is the reader's
          fill += n;
          at += n;
          this.held(block.length + queued + this.spare.length * BLOCK);
          if (fill === block.length) await flush();
        }
      },
      end: () => {},
      sha256: () => this.leaderDigest(),
      discard: () => this.workersClean(),
    };
  }

  /**
   * Once the workers are up (a cached copy is read while they boot, and its first bytes wait here),
   * every worker frees what an earlier load or attempt left. A failed boot is not the copy's fault
   * (`fatal`: the cached copy is kept).
   */
  async workersClean() {
    try {
      await this.booting;
    } catch (e) {
      throw Object.assign(new Error(String(/** @type {any} */ (e)?.message || e)), { fatal: true });
    }
    await this.dropPieces();
  }

  /** @param {import("./protocol.js").LoadRequest} msg */
  async load(msg) {
    const model = msg.model;
    // The first load reads a cached copy at once: its chunks are read and checked while the workers
    // boot, and its first bytes wait for them at the header (shardSink). Without one, the model goes
    // into the Cache API while they boot (prefetch), and is read from there once they are up.
    const first = Boolean(model) && !this.booted && !this.loading;
    // model_snapshot: the shards start from their saved snapshots of this load where all have one
    // (the boot must be this load's), and save them after it otherwise
    const snap = model && msg.model_snapshot === true
      ? { sha256: model.sha256, size: model.size, n_ctx: msg.n_ctx ?? null, layout: msg.layout ?? null, split: this.splitAttention }
      : null;
    this.booting = this.booting || this.boot(first ? snap : null);
    const early = first ? this.prefetch(/** @type {any} */ (model)) : null;
    if (first) this.loading = true;
    const reading = first && !snap ? this.readWeights(msg, true) : null;
    reading?.catch(() => {});                            // awaited below, after the boot
    let ours = first;                                    // this call set this.loading
    try {
      const info = await this.booting;
      const bootEnd = performance.now();
      this.booted = true;
      if (!model) { this.emit({ type: Ev.READY, info, timings: { ...this.timings } }); return; }
      const restored = this.fromSnapshot;
      this.fromSnapshot = null;
      // every shard holds the model already: ready now (a download into the Cache API goes on behind)
      if (ours && snap && restored?.length && restored.every(Boolean)) { this.readyFromSnapshot(model, info, restored); return; }
      if (restored?.some(Boolean)) for (const w of this.workers) w.postMessage({ type: Shard.FORGET });   // not all: load as usual
      const fetched = early && await early;
      let read = reading && await reading;             // null: no cached copy (or a bad one, dropped)
      if (fetched?.error && !read) {                     // a bad download is this load's error
        throw Object.assign(new Error(String(/** @type {any} */ (fetched.error)?.message || fetched.error)), { stage: "weights" });
      }
      const downloaded = fetched?.result === "stored";   // prefetched by this load: not "cached" for the page
      if (!read) {
        if (!ours && this.loadedSha === model.sha256) {
          this.emit({ type: Ev.READY, info, model: { sha256: model.sha256, reused: true }, timings: { ...this.timings }, cached: true });
          return;
        }
        if (!ours && this.loading) throw new Error("a model is already loading: wait for its ready or error event");
        this.loading = ours = true;
        await this.stopOpening();                        // the leader's idle prefill, before the shards change
        read = /** @type {NonNullable<typeof read>} */ (await this.readWeights(msg, false));
      }
      // weights: what the read took after the boot; weights_early: all of a read begun during it
      this.timings.weights = (performance.now() - Math.max(read.t0, bootEnd)) / 1000;
      if (read.t0 < bootEnd) this.timings.weights_early = (performance.now() - read.t0) / 1000;
      else delete this.timings.weights_early;
      if (read.hashWait !== null) this.timings.hash_wait = read.hashWait;
      await this.build(model, info, read.cached && !downloaded, snap);
    } catch (e) {
      if (ours) for (const w of this.workers) w.postMessage({ type: Shard.DROP });   // every worker frees its pieces
      throw e;
    } finally {
      if (ours) { this.loading = false; this.spare = []; }
    }
  }

  /**
   * The model's bytes into the shards, verified (static/model-source.js): {cached, hashWait, t0}, or
   * null with cacheOnly when no good copy is cached. Errors carry stage "weights".
   * @param {import("./protocol.js").LoadRequest} msg @param {boolean} cacheOnly
   */
  async readWeights(msg, cacheOnly) {
    const model = /** @type {import("./protocol.js").ModelRef} */ (msg.model);
    this.loadedSha = null;
    this.peakHeld = 0;
    delete this.timings.hash;
    delete this.timings.hash_wait;
    const t0 = performance.now();
    const progress = (/** @type {any} */ p) => this.emit({ type: Ev.PROGRESS, stage: "weights", ...p, ...(this.booted ? {} : { early: true }) });
    try {
      const got = await loadVerified(model, this.shardSink(model, { n_ctx: msg.n_ctx ?? null, layout: msg.layout ?? null }), progress,
                                     { cacheOnly });
      return got && { cached: got.cached, hashWait: got.hashWait, t0 };
    } catch (e) {
      const err = /** @type {any} */ (e);
      throw Object.assign(new Error(String(err?.message || err)), { stage: "weights", unsplittable: err?.unsplittable });
    }
  }

  /**
   * The verified bytes made into every worker's shard, then the ready event. With `snap`, the shards
   * take their model snapshots first (generate waits for them, so none holds a generation's state).
   * @param {import("./protocol.js").ModelRef} model @param {any} info @param {boolean} cached
   * @param {{sha256: string, size: number, n_ctx: number|null, layout: string|null, split: boolean}|null} snap
   */
  async build(model, info, cached, snap) {
    this.emit({ type: Ev.PROGRESS, stage: "weights", phase: "parse", loaded: model.size, total: model.size });
    const t1 = performance.now();
    let shards;
    try {                                                // verified: now the workers may build their shards
      shards = await this.ask(Shard.BUILD, Shard.LOADED, () => [{}, []]);
    } catch (e) {                                        // e.g. GGUFError: a verified file we cannot run
      throw Object.assign(new Error(String(/** @type {any} */ (e)?.message || e)), { stage: "weights" });
    }
    this.timings.model = (performance.now() - t1) / 1000;
    this.timings.leader_write = shards[0].write_seconds;   // copying every block in + hashing it
    this.loadedSha = model.sha256;
    this.snapshotting = null;
    if (snap) {
      this.snapshotting = this.ask(Shard.SNAPSHOT, Shard.SNAPSHOTTED, (i) => [{ model_snapshot: { ...snap, n: this.n, index: i } }, []])
        .catch(() => null);
    }
    this.emit({ type: Ev.READY, info, cached, timings: { ...this.timings }, memory: this.memoryOf(shards), budget: this.budget ?? null,
                model: { sha256: model.sha256, workers: this.n, shards: shards.map((x) => x.info), n_ctx: shards[0].info.n_ctx } });
    this.openingWhenIdle();
  }

  /** Let the leader prefill the chat template's opening once idle (parallel-worker.js), after any
   *  model snapshots (they must hold the shards' caches as the build left them). */
  openingWhenIdle() {
    const leader = this.workers[0];
    const send = () => { if (this.workers[0] === leader) leader.postMessage({ type: Shard.OPENING }); };
    if (this.snapshotting) this.snapshotting.then(send); else send();
  }

  /** Stop the leader's opening prefill and wait until its forward in flight is over. */
  async stopOpening() {
    const leader = this.workers[0];
    if (!leader || !this.loadedSha) return;
    const stopped = next(leader, Shard.OPENING_STOPPED);
    leader.postMessage({ type: Shard.OPENING_STOP });
    await stopped;
  }

  /**
   * The ready event of a model every shard started with from its model snapshot (boot): no read, no build.
   * @param {import("./protocol.js").ModelRef} model @param {any} info @param {any[]} restored  per shard {info, memory, snapshot_read}
   */
  readyFromSnapshot(model, info, restored) {
    for (const k of ["weights", "weights_early", "hash", "hash_wait", "model", "leader_write"]) delete this.timings[k];
    this.timings.snapshot_read = Math.max(...restored.map((r) => r.snapshot_read || 0));
    this.snapshotting = null;
    this.loadedSha = model.sha256;
    this.peakHeld = 0;
    this.emit({ type: Ev.READY, info: { ...info, runtime_snapshot: "model" }, cached: true, timings: { ...this.timings },
                memory: this.memoryOf(restored), budget: null,
                model: { sha256: model.sha256, workers: this.n, shards: restored.map((r) => r.info), n_ctx: restored[0].info.n_ctx } });
    this.openingWhenIdle();
  }

  /** The ready event's memory: WASM summed over the shards, and each shard's. @param {{memory: any}[]} shards */
  memoryOf(shards) {
    return { wasm_bytes: shards.reduce((s, x) => s + (x.memory.wasm_bytes || 0), 0), js_heap_bytes: null,
             peak_bytes: shards.reduce((s, x) => s + (x.memory.peak_bytes || 0), 0),
             per_worker: shards.map((x) => x.memory.wasm_bytes), per_worker_peak: shards.map((x) => x.memory.peak_bytes),
             coordinator_peak_bytes: this.peakHeld };
  }

  /**
   * The model into the Cache API while the workers boot: resolves with the download's error, if any,
   * and prefetch()'s result (storing that fails, or no chunk list, only means load() downloads as before).
   * @param {import("./protocol.js").ModelRef} model @returns {Promise<{error: unknown, result: string|null}>}
   */
  async prefetch(model) {
    const t0 = performance.now();
    try {
      const result = await prefetch(model, (p) => this.emit({ type: Ev.PROGRESS, stage: "weights", ...p, early: true }));
      if (result === "stored") this.timings.prefetch = (performance.now() - t0) / 1000;
      return { error: null, result };
    } catch (e) {
      return { error: e, result: null };
    }
  }

  /** @param {import("./protocol.js").GenerateRequest} msg */
  async generate(msg) {
    if (!this.loadedSha) throw new Error("no model loaded: send a load request first");
    if (this.snapshotting) await this.snapshotting;     // taken before any generation (and requests stay in order)
    this.workers[0].postMessage(msg);
  }

  /** Every worker's counters: forwards, sync points, ms waiting for peers, ms copying, WASM size. */
  async stats() {
    return Promise.all(this.workers.map((w) => { const p = next(w, Shard.STATS); w.postMessage({ type: Shard.STATS }); return p; }));
  }
}
