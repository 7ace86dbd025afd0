// @ts-check
/**
 * One shard of a model decoded across several workers (module worker, created by static/parallel.js).
 * Its messages with the coordinator and with the other shards are protocol.js Shard and Peer:
 *
 *   boot              Pyodide + numpy + our wheels (static/boot.js, as static/worker.js boots); asked
 *                     with a load's model_snapshot: from this shard's saved snapshot of it, if any
 *   ports             a MessagePort to every other shard (MessageChannels made by the coordinator)
 *   header            the file's first bytes: a longer prefix needed, or engine.shard.ShardLoader made
 *                     and the byte ranges this shard needs, or refused (the model cannot be split)
 *   write             later bytes as the coordinator streams the file, copied into this shard's pieces
 *                     in WASM memory; shard 0 gets every byte and hashes it (sha256, Python's hashlib)
 *   digest            (shard 0) the sha256, which the coordinator compares with the expected one
 *   build             only after that check: the model from the pieces
 *   drop              a failed load: free the pieces
 *   snapshot          after build, before any generation: this shard's memory saved (model_snapshot)
 *   forget            free a model a snapshot started this shard with (another load follows)
 *   generate (shard 0, the leader): the generation loop; before each step it sends Peer.FORWARD to
 *                     every peer and runs its own shard
 *
 * A forward pass is engine.shard.ShardRunner, one call per sync point. At a SUM each shard posts
 * its partial (d floats per token) to every peer over the direct ports and waits for theirs; the
 * peers' rows are written into the runner's mailbox straight in WASM memory (HEAPF32 at its
 * address), so a sync costs one copy out, one postMessage with the buffer transferred, one copy in.
 * No SharedArrayBuffer, so no COOP/COEP headers are needed.
 */
import { bootPython, findModelSnapshot, growHeap, memory, modelSnapshotFits, modelSnapshotKey, modelSnapshotParts,
         idleWork, relayGeneration, restoreModelSnapshot, shardSnapshotKey, storeModelSnapshot, yieldToEventLoop } from "./boot.js";
import { Ev, Peer, Req, Shard } from "./protocol.js";

const BASE = new URL(".", import.meta.url);

/** @type {any} */ let pyodide = null;
/** @type {any} */ let shardMod = null;                 // engine.shard (PyProxy)
/** @type {any} */ let runner = null;                   // ShardRunner
/** @type {any} */ let session = null;                  // engine.session.Session over the shards (shard 0 only)
let index = 0, nShards = 1;
/** @type {(MessagePort|null)[]} */ let peers = [];
let transfer = true;                                     // postMessage partials with transfer (vs structured clone)
let abortRequested = false, generating = false;
let seq = 0;                                             // sync points so far: the same count on every shard
/** @type {number[]} */ let vocabStarts = [];
/** @type {number} */ let vocabSize = 0;
/** Per generation: where this shard's time goes (mote/bench/parallel.py prints it per forward).
 *  compute_ms: inside Python (the shard's share of the forward); wait_ms: waiting for peers at sync
 *  points; copy_ms: partials out of / into WASM memory; between_ms: from the end of one forward to
 *  the start of the next (the leader samples and relays then; a follower idles). */
const stats = { forwards: 0, syncs: 0, wait_ms: 0, copy_ms: 0, forward_ms: 0, compute_ms: 0, between_ms: 0 };
let lastForwardEnd = 0;                                  // performance.now() when the last forward ended
let statsGeneration = -1;                                // follower: the leader's generation its stats belong to
let generations = 0;                                     // leader: generations started
const resetStats = () => { for (const k of Object.keys(stats)) /** @type {any} */ (stats)[k] = 0; };

/** @param {any} msg */
const post = (msg) => self.postMessage(msg);

// ---- boot (static/boot.js, as static/worker.js boots) ------------------------------------------------

/**
 * @param {boolean} saveSnapshot  take and store a runtime snapshot when none is saved (static/boot.js)
 * @param {ShardSnapshotWish|null} want  LoadRequest.model_snapshot: start from this shard's snapshot
 *   of that load where one is saved (then `model` in the reply), else boot so that one can be taken
 */
async function boot(saveSnapshot, want) {
  const t0 = performance.now();
  if (want) {
    index = want.index; nShards = want.n;
    const started = await bootFromModelSnapshot(want).catch(() => null);
    if (started) return { seconds: (performance.now() - t0) / 1000, snapshot: "model", ...(started.info ? { model: started } : {}) };
  }
  // Only a boot asked for with model_snapshot can be snapshotted with its model later (static/worker.js boot)
  const { py, mod, snapshot, takeLater: take } = await bootPython(BASE, "engine.shard", undefined, undefined,
                                                                  { saveSnapshot, snapshotLater: Boolean(want) });
  shardMod = mod;
  pyodide = py;
  takeLater = take;
  return { seconds: (performance.now() - t0) / 1000, snapshot };
}

// ---- a snapshot taken with the shard loaded (static/boot.js; one worker's is static/worker.js's) -----
//
// LoadRequest.model_snapshot on several workers: after a load's build, before any generation, every
// shard saves its memory under its own key (the load's, plus its index: shardSnapshotKey); a later
// load of the same model with the same context length, layout, split and worker count starts each
// shard from its file (ParallelWorker.load uses them only when every shard did). Measured:
// docs/bench/startup-2026-12-04.md (2026-12-07, shards).

/** @typedef {{sha256: string, size: number, n_ctx: number|null, layout: string|null, split: boolean, n: number, index: number}} ShardSnapshotWish */

/** @type {(() => [Uint8Array, Uint8Array])|null} */ let takeLater = null;   // this instance's snapshot, now

/** The load's key (shared by its shards) and this shard's. @param {ShardSnapshotWish} want */
async function shardKeys(want) {
  const group = await modelSnapshotKey(BASE, [...modelSnapshotParts(want, want.n_ctx, want.layout, deviceMemory()),
                                              `split ${want.split}`, `${want.n} workers`]);
  return group === null ? null : { group, key: shardSnapshotKey(group, want.index) };
}

/** Python started from this shard's saved snapshot of `want`'s load: {info, memory, snapshot_read},
 *  info null where it holds no shard of that load (freed: a normal load follows in this Python); null
 *  where none is saved or it did not restore (then it is deleted). @param {ShardSnapshotWish} want */
async function bootFromModelSnapshot(want) {
  const keys = await shardKeys(want);
  const hit = keys && await findModelSnapshot(keys.key);
  const got = hit && keys && await restoreModelSnapshot(BASE, keys.key, hit, "engine.shard", () => {});
  if (!got) return null;
  pyodide = got.py;
  shardMod = got.mod;
  takeLater = got.takeLater;
  runner = shardMod.kept_runner() ?? null;
  session = shardMod.kept_session() ?? null;
  if (!runner || (want.index === 0) !== Boolean(session)) { forget(); return { info: null }; }
  vocabStarts = runner.vocab_starts().toJs();
  vocabSize = runner.vocab_size;
  return { info: shardInfo(null), memory: memory(pyodide), snapshot_read: got.snapshotRead };
}

/** After a build, before any generation: this shard's memory, saved in the background under its key
 *  for `want`'s load. @param {ShardSnapshotWish} want */
function snapshot(want) {
  if (!takeLater || !runner) return { taken: false };
  if (!modelSnapshotFits(pyodide, nShards, deviceMemory())) return { taken: false };   // every shard's is read back at once
  shardMod.keep(runner, session);      // where the restored Python finds them (JS's handles do not survive)
  let parts;
  try {
    parts = takeLater();
  } catch (e) {
    console.warn("model snapshot not taken:", e);
    return { taken: false };
  }
  shardKeys(want).then((keys) => keys && storeModelSnapshot(keys.key, parts, keys.group)).catch(() => {});
  return { taken: true };
}

/** Free the model a snapshot started this shard with (another load follows). */
function forget() {
  runner = null;
  session = null;
  shardMod?.drop_kept();
}

// ---- the file, streamed in by the coordinator -------------------------------------------------------

/** @type {any} */ let loader = null;                   // ShardLoader while loading (PyProxy)
/** @type {any} */ let scratch = null;                  // bytearray each chunk is copied into (WASM memory)
let loadStart = 0;
const PREFIX_BLOCK = 2 << 20;                            // the prefix goes in as blocks of the size later ones come in (parallel.js BLOCK)
const loadStats = { write_ms: 0, bytes: 0 };

/** A Python bytearray of at least n bytes holding `chunk`'s n bytes from `offset` (one memcpy into WASM memory). */
function intoScratch(/** @type {ArrayBuffer} */ chunk, offset = 0, n = chunk.byteLength) {
  if (!scratch || scratch.length < n) {
    if (scratch) scratch.destroy();
    scratch = pyodide.globals.get("bytearray")(n);
  }
  const view = scratch.getBuffer("u8");
  try { view.data.set(new Uint8Array(chunk, offset, n), 0); } finally { view.release(); }
  return scratch;
}

/** Free the pieces of a load that failed or was replaced. */
function drop() {
  if (loader) { loader.destroy(); loader = null; }
  if (scratch) { scratch.destroy(); scratch = null; }
}

/**
 * The first bytes of the file: if they hold the whole GGUF header, make the ShardLoader, its pieces
 * (filled from the prefix where it covers them) and, on shard 0, start the sha256 over the prefix.
 * A model engine.shard cannot split (its architecture, a config it cannot divide: ConfigError) is
 * refused, so the page can load it on one worker instead.
 * @param {{prefix: ArrayBuffer, size: number, n_ctx?: number|null, split_attention?: boolean, hash?: boolean,
 *          layout?: string|null}} msg
 * @returns {{more: true} | {ranges: number[][]} | {refused: string}}  more: send a longer prefix
 */
function header(msg) {
  drop();
  shardMod.drop_kept();                                  // a model kept for a snapshot goes with the load that replaces it
  loadStart = performance.now();
  loadStats.write_ms = 0; loadStats.bytes = msg.prefix.byteLength;
  let prefix = pyodide.globals.get("bytearray")(msg.prefix.byteLength);
  let verdict;
  try {
    const view = prefix.getBuffer("u8");
    try { view.data.set(new Uint8Array(msg.prefix), 0); } finally { view.release(); }
    try {  // the header parsed once, here (null: the prefix ends inside it)
      loader = shardMod.open_loader(prefix, msg.size, nShards, index, msg.n_ctx ?? null, msg.split_attention !== false,
                                    msg.layout ?? null) ?? null;
      if (loader === null) return { more: true };
    } catch (e) {
      if (/** @type {any} */ (e)?.type === "ConfigError") return { refused: String(/** @type {any} */ (e).message).trim().split("\n").pop() || "" };
      throw e;
    }
    // the memory every shard will need, before the download: shard 0 refuses for all
    verdict = loader.budget(deviceMemory()).toJs({ dict_converter: Object.fromEntries });
    if (verdict.refusal && index === 0) return { over: verdict.refusal, budget: verdict.budget };
  } finally {
    prefix.destroy();  // freed before the pieces are made: the load's peak holds no copy of it
    prefix = null;
  }
  // each shard grows its WASM memory once to its own share (boot.js growHeap), then makes its
  // pieces and takes the prefix's bytes as it takes every later block (2 MiB at a time)
  if (!verdict.refusal) growHeap(pyodide, verdict.budget.workers[index].heap_bytes);
  loader.stream_from.callKwargs({ hash_all: !!msg.hash });
  for (let at = 0; at < msg.prefix.byteLength; at += PREFIX_BLOCK) {
    const n = Math.min(msg.prefix.byteLength - at, PREFIX_BLOCK);
    loader.write(at, intoScratch(msg.prefix, at, n), n);
  }
  return { ranges: loader.ranges().toJs(), ...(index === 0 ? { budget: verdict.budget } : {}) };
}

/** navigator.deviceMemory (GB, coarse) where the browser reports it, else null. */
function deviceMemory() {
  const gb = /** @type {any} */ (self.navigator)?.deviceMemory;
  return typeof gb === "number" && gb > 0 ? gb : null;
}

/**
 * Later bytes of the file: `buffer` holds parts [file offset, offset in buffer, length] (only what
 * this shard needs; shard 0 gets every byte). The buffer goes back to the coordinator with the
 * acknowledgement, to carry later bytes.
 * @param {ArrayBuffer} buffer @param {[number, number, number][]} parts
 */
function write(buffer, parts) {
  if (!loader) throw new Error("bytes arrived before the header");
  const t0 = performance.now();
  let n = 0;
  for (const [start, offset, length] of parts) {
    loader.write(start, intoScratch(buffer, offset, length), length);
    n += length;
  }
  loadStats.write_ms += performance.now() - t0;
  loadStats.bytes += n;
}

/** The model from the pieces: only after the coordinator compared shard 0's sha256 with the expected one. */
function build() {
  if (!loader) throw new Error("no model bytes to build from");
  if (scratch) { scratch.destroy(); scratch = null; }
  const tParse = performance.now();
  runner = loader.runner();
  vocabStarts = runner.vocab_starts().toJs();
  vocabSize = runner.vocab_size;
  if (index === 0) session = loader.leader_session(runner.model.n_ctx);
  const info = shardInfo(loader.held_bytes());
  drop();
  return { info, seconds: (performance.now() - loadStart) / 1000, parse_seconds: (performance.now() - tParse) / 1000,
           write_seconds: loadStats.write_ms / 1000, received_bytes: loadStats.bytes };
}

/** What the ready event says of this shard. @param {number|null} held  bytes of the file it holds */
function shardInfo(held) {
  const plan = runner.model.plan;
  return { index, heads: plan.heads.toJs(), ffn: plan.ffn.toJs(), vocab: plan.vocab.toJs(), held_bytes: held,
           n_ctx: runner.model.n_ctx };
}

// ---- the exchange at sync points ------------------------------------------------------------------

/** @type {Map<number, Map<number, Float32Array>>} */ const arrived = new Map();
/** @type {{seq: number, need: number, resolve: (m: Map<number, Float32Array>) => void} | null} */
let waiting = null;

/** @param {{seq: number, from: number, data: Float32Array}} m */
function onPart(m) {
  let got = arrived.get(m.seq);
  if (!got) arrived.set(m.seq, got = new Map());
  got.set(m.from, m.data);
  if (waiting && waiting.seq === m.seq && got.size === waiting.need) {
    const w = waiting;
    waiting = null;
    arrived.delete(m.seq);
    w.resolve(got);
  }
}

/** The partials of sync point `s` from `need` peers: at once if all came, else a promise. */
function receive(s, need) {
  const got = arrived.get(s);
  if (need === 0 || (got && got.size === need)) { arrived.delete(s); return got || new Map(); }
  return new Promise((resolve) => { waiting = { seq: s, need, resolve }; });
}

/** @param {number} to @param {number} s @param {Float32Array} data @param {boolean} last */
function send(to, s, data, last) {
  const port = /** @type {MessagePort} */ (peers[to]);
  if (transfer) {
    const buf = last ? data : data.slice();             // a transferred buffer can go to one peer only
    port.postMessage({ t: Peer.PARTIAL, seq: s, from: index, data: buf }, [buf.buffer]);
  } else {
    port.postMessage({ t: Peer.PARTIAL, seq: s, from: index, data });   // structured clone (a copy)
  }
}

/** One forward pass of this shard: tokens at cache position `start`, syncing with every peer. */
async function forward(tokens, start, verify = false) {
  const t0 = performance.now();
  if (lastForwardEnd && stats.forwards) stats.between_ms += t0 - lastForwardEnd;
  const pyTokens = pyodide.toPy(tokens);
  let code = runner.begin(pyTokens, start, verify);
  pyTokens.destroy();
  stats.compute_ms += performance.now() - t0;
  const cap = runner.capacity;
  const box = runner.mailbox_address() >> 2;            // float32 index of the mailbox in HEAPF32
  const others = peers.map((p, j) => j).filter((j) => j !== index);
  while (code !== 0) {
    const s = ++seq;
    const n = Math.abs(code);
    const sends = others.length > 0 && (code > 0 || index !== 0);   // the leader keeps its own logits slice
    const tc = performance.now();
    const at = box + (code > 0 ? index * cap : 0);      // a SUM's row is mine; a GATHER's part is at the start
    const mine = sends ? pyodide._module.HEAPF32.slice(at, at + n) : null;  // (n,) copy out
    stats.copy_ms += performance.now() - tc;
    const tw = performance.now();
    if (code > 0) {                                      // SUM: all-to-all
      others.forEach((j, k) => send(j, s, /** @type {Float32Array} */ (mine), k === others.length - 1));
      let got = receive(s, others.length);
      if (got instanceof Promise) got = await got;
      stats.wait_ms += performance.now() - tw;
      const heap = pyodide._module.HEAPF32;
      for (const [from, data] of got) heap.set(data, box + from * cap);
    } else if (index !== 0) {                            // GATHER: my logits slice to the leader
      send(0, s, /** @type {Float32Array} */ (mine), true);
    } else if (others.length) {
      let got = receive(s, others.length);
      if (got instanceof Promise) got = await got;
      stats.wait_ms += performance.now() - tw;
      const heap = pyodide._module.HEAPF32;
      const logits = runner.logits_address() >> 2;      // (rows, vocab) in row order
      const rows = runner.gather_rows;                   // > 1 only in lookup decoding's verify pass
      for (const [from, data] of got) {                  // (rows, the peer's slice): each row to its place
        const width = data.length / rows;
        for (let r = 0; r < rows; r++) heap.set(data.subarray(r * width, (r + 1) * width), logits + r * vocabSize + vocabStarts[from]);
      }
    }
    stats.syncs++;
    const tr = performance.now();
    code = runner.resume();
    stats.compute_ms += performance.now() - tr;
  }
  stats.forwards++;
  lastForwardEnd = performance.now();
  stats.forward_ms += lastForwardEnd - t0;
}

let followerChain = Promise.resolve();

/** @param {MessageEvent} e  a peer's message: a partial, or (from the leader) a forward to run */
function onPeerMessage(e) {
  const m = e.data;
  if (m.t === Peer.PARTIAL) onPart(m);
  else if (m.t === Peer.FORWARD) {
    if (m.gen !== statsGeneration) { statsGeneration = m.gen; resetStats(); }   // a new request: fresh stats
    followerChain = followerChain.then(() => forward(m.tokens, m.start, m.verify)).catch((err) => {
      post({ type: Ev.ERROR, message: `shard ${index}: ${err?.message || err}` });
    });
  }
}

// ---- generation on the leader ------------------------------------------------------------------------

/** The logits a leader's generation asks for next (prefill, one token or a verify pass), if it asks:
 *  computed across the shards and handed back to it. @param {any} gen */
async function forwardNeeded(gen) {
  const need = gen.need();
  if (need === undefined || need === null) return;
  const [tokens, start, verify] = need.toJs();
  need.destroy();
  for (const j of peers.keys()) if (j !== index) /** @type {MessagePort} */ (peers[j]).postMessage({ t: Peer.FORWARD, tokens, start, verify, gen: generations });
  await forward(tokens, start, verify);
  const logits = runner.last_logits;                     // (vocab,) or (rows, vocab) ndarray, handed back to Python
  gen.provide(logits, runner.seconds);
  logits.destroy();
}

async function generate(msg) {
  if (!session) throw new Error("no model loaded on the leader shard");
  if (generating) throw new Error("already generating: send abort first");
  generating = true;
  abortRequested = false;
  const request = pyodide.toPy({ messages: msg.messages ?? null, prompt: msg.prompt ?? null, params: msg.params ?? {} });
  let gen;
  try { gen = session.start(request); } finally { request.destroy(); }
  resetStats();
  generations++;
  try {
    await relayGeneration({ id: msg.id, gen, post, aborted: () => abortRequested, before: () => forwardNeeded(gen),
                            doneExtra: () => ({ memory: memory(pyodide), stats: { ...stats } }) });
  } finally {
    gen.close();
    gen.destroy();
    generating = false;
  }
}

// ---- the chat template's opening, prefilled once idle (leader; engine/session.py opening_generation) --
//
// As static/worker.js does on one worker: once the coordinator says the load is over (Shard.OPENING,
// sent after any model snapshots) and the leader has been idle for OPENING_DELAY_MS, the opening goes
// through the shards OPENING_CHUNK tokens per forward, so that a new chat's first answer prefills only
// what the user wrote. A generate waits for the forward in flight (its tokens then reused); the
// coordinator stops it (OPENING_STOP) before a new load touches the shards.
const OPENING_DELAY_MS = 100;
const OPENING_CHUNK = 8;
const opening = idleWork(OPENING_DELAY_MS, async (stopped) => {
  try {
    while (!stopped() && !generating && session) {
      const gen = session.opening_generation(OPENING_CHUNK);
      if (!gen) break;
      try { await prefillQuietly(gen); } finally { gen.close(); gen.destroy(); }
      await yieldToEventLoop();
    }
  } catch (e) {
    console.warn("the chat template's opening was not prefilled:", e);
  }
});

function openingWhenIdle() {
  if (index === 0 && session && !generating) opening.start();
}

/** Stop the opening's prefill, waiting for a forward in flight: resolves once the shards are idle. */
const stopOpening = () => opening.stop();

/** Run a generation that samples nothing (the opening's prefill) across the shards, posting nothing. @param {any} gen */
async function prefillQuietly(gen) {
  for (;;) {
    await forwardNeeded(gen);
    const ev = gen.step();
    if (ev === undefined || ev === null) return;
    const type = ev.get("type");
    ev.destroy();
    if (type === Ev.DONE) return;
  }
}

// ---- messages from the coordinator -----------------------------------------------------------------

self.addEventListener("message", async (event) => {
  const msg = event.data || {};
  try {
    switch (msg.type) {
      case Shard.BOOT: post({ type: Shard.BOOTED, ...await boot(msg.save_snapshot !== false, msg.model_snapshot ?? null) }); break;
      case Shard.SNAPSHOT: post({ type: Shard.SNAPSHOTTED, ...snapshot(msg.model_snapshot) }); break;
      case Shard.FORGET: forget(); break;
      case Shard.PORTS:
        index = msg.index; nShards = msg.n; transfer = msg.transfer !== false;
        peers = msg.ports;
        for (const p of peers) if (p) p.onmessage = onPeerMessage;
        break;
      case Shard.HEADER: post({ type: Shard.HEADER, ...header(msg) }); break;
      case Shard.WRITE: write(msg.buffer, msg.parts); self.postMessage({ type: Shard.WROTE, buffers: [msg.buffer] }, [msg.buffer]); break;
      case Shard.DIGEST: post({ type: Shard.DIGEST, sha256: loader.sha256(), hash_seconds: loader.hash_seconds }); break;
      case Shard.BUILD: post({ type: Shard.LOADED, ...build(), memory: memory(pyodide) }); break;
      case Shard.DROP: drop(); post({ type: Shard.DROPPED }); break;
      case Shard.STATS: post({ type: Shard.STATS, stats: { ...stats }, memory: memory(pyodide) }); break;
      case Req.GENERATE: await stopOpening(); await generate(msg); break;
      case Req.ABORT: abortRequested = true; break;
      case Req.PING: post({ type: Ev.PONG }); break;
      case Req.RESET: session?.forget(); openingWhenIdle(); break;   // also during a generation: it records nothing
      case Shard.OPENING: openingWhenIdle(); break;
      case Shard.OPENING_STOP: await stopOpening(); post({ type: Shard.OPENING_STOPPED }); break;
      default: break;
    }
  } catch (e) {
    const err = /** @type {any} */ (e);
    post({ type: Ev.ERROR, id: msg.id, message: `shard ${index}: ${String(err?.message || err)}` });
  }
});
