// @ts-check
/**
 * One shard of a model decoded across several workers (module worker, created by static/parallel.js).
 *
 *   boot              Pyodide + numpy + our wheels (each checked against build-manifest.json's sha256)
 *   ports{index,n}    a MessagePort to every other shard (MessageChannels made by the coordinator)
 *   header{prefix,size,n_ctx,hash}  the file's first bytes: -> header{more} (send a longer prefix) or
 *                     header{ranges}: engine.shard.ShardLoader made, the byte ranges this shard needs
 *   write{parts}      later bytes as the coordinator streams the file: [start, ArrayBuffer] parts,
 *                     copied into this shard's pieces in WASM memory -> wrote{n} (the coordinator's
 *                     flow control); shard 0 gets every byte and hashes it (sha256, Python's hashlib)
 *   digest            (shard 0) -> digest{sha256}: the coordinator compares it with GET /models'
 *   build             only after that check: the model from the pieces -> loaded{info, memory}
 *   drop              a failed load: free the pieces
 *   generate (shard 0, the leader): engine.shard.LeaderSession; before each step of the generation
 *                     loop it sends forward{tokens, start} to every peer and runs its own shard
 *
 * A forward pass is engine.shard.ShardRunner, one call per sync point. At a SUM each shard posts
 * its partial (d floats per token) to every peer over the direct ports and waits for theirs; the
 * peers' rows are written into the runner's mailbox straight in WASM memory (HEAPF32 at its
 * address), so a sync costs one copy out, one postMessage with the buffer transferred, one copy in.
 * No SharedArrayBuffer, so no COOP/COEP headers are needed.
 */
import { bootPython } from "./boot.js";
import { relayGeneration } from "./protocol.js";

const BASE = new URL(".", import.meta.url);

/** @type {any} */ let pyodide = null;
/** @type {any} */ let shardMod = null;                 // engine.shard (PyProxy)
/** @type {any} */ let runner = null;                   // ShardRunner
/** @type {any} */ let session = null;                  // LeaderSession (shard 0 only)
let index = 0, nShards = 1;
/** @type {(MessagePort|null)[]} */ let peers = [];
let transfer = true;                                     // postMessage partials with transfer (vs structured clone)
let abortRequested = false, generating = false;
let seq = 0;                                             // sync points so far: the same count on every shard
/** @type {number[]} */ let vocabStarts = [];
/** Per generation: where this shard's time goes (scripts/bench_parallel.py prints it per token).
 *  compute_ms: inside Python (the shard's share of the forward); wait_ms: waiting for peers at sync
 *  points; copy_ms: partials out of / into WASM memory; between_ms: from the end of one forward to
 *  the start of the next (the leader samples and relays then; a follower idles). */
const stats = { forwards: 0, syncs: 0, wait_ms: 0, copy_ms: 0, forward_ms: 0, compute_ms: 0, between_ms: 0 };
let lastForwardEnd = 0;                                  // performance.now() when the last forward ended
let statsGeneration = -1;                                // follower: the leader's generation its stats belong to
let generations = 0;                                     // leader: generations started
const resetStats = () => { for (const k of Object.keys(stats)) /** @type {any} */ (stats)[k] = 0; };

/** @param {any} msg @param {Transferable[]} [tr] */
const post = (msg, tr) => self.postMessage(msg, tr || []);

function memory() {
  return { wasm_bytes: pyodide?._module?.HEAP8?.buffer?.byteLength ?? null };
}

/** A macrotask turn without the 4 ms clamp of nested setTimeout (so `abort` can land). */
const yieldChannel = new MessageChannel();
/** @type {(() => void)[]} */ const yieldQueue = [];
yieldChannel.port1.onmessage = () => { const r = yieldQueue.shift(); if (r) r(); };
const yieldToEventLoop = () => new Promise((r) => { yieldQueue.push(/** @type {any} */ (r)); yieldChannel.port2.postMessage(0); });

// ---- boot (static/boot.js, as static/worker.js boots) ------------------------------------------------

async function boot() {
  const t0 = performance.now();
  const { py, mod } = await bootPython(BASE, "engine.shard");
  shardMod = mod;
  pyodide = py;
  return (performance.now() - t0) / 1000;
}

// ---- the file, streamed in by the coordinator -------------------------------------------------------

/** @type {any} */ let loader = null;                   // ShardLoader while loading (PyProxy)
/** @type {any} */ let scratch = null;                  // bytearray each chunk is copied into (WASM memory)
let loadStart = 0;
const loadStats = { write_ms: 0, bytes: 0 };

/** A Python bytearray of at least n bytes holding `chunk` at its start (one memcpy into WASM memory). */
function intoScratch(chunk) {
  const n = chunk.byteLength;
  if (!scratch || scratch.length < n) {
    if (scratch) scratch.destroy();
    scratch = pyodide.globals.get("bytearray")(n);
  }
  const view = scratch.getBuffer("u8");
  try { view.data.set(new Uint8Array(chunk), 0); } finally { view.release(); }
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
 * @param {{prefix: ArrayBuffer, size: number, n_ctx?: number|null, split_attention?: boolean, hash?: boolean}} msg
 * @returns {{more: true} | {ranges: number[][]}}  more: send a longer prefix
 */
function header(msg) {
  drop();
  loadStart = performance.now();
  loadStats.write_ms = 0; loadStats.bytes = msg.prefix.byteLength;
  const prefix = pyodide.globals.get("bytearray")(msg.prefix.byteLength);
  try {
    const view = prefix.getBuffer("u8");
    try { view.data.set(new Uint8Array(msg.prefix), 0); } finally { view.release(); }
    if (shardMod.ShardFile.header_length(prefix, msg.size) === 0 && msg.prefix.byteLength < msg.size) return { more: true };
    loader = shardMod.ShardLoader(prefix, msg.size, nShards, index, msg.n_ctx ?? null, msg.split_attention !== false);
    loader.stream_from(prefix, !!msg.hash);
    return { ranges: loader.ranges().toJs() };
  } finally {
    prefix.destroy();
  }
}

/** Later bytes of the file: parts [start, ArrayBuffer] (only what this shard needs; shard 0 gets every byte). */
function write(/** @type {[number, ArrayBuffer][]} */ parts) {
  if (!loader) throw new Error("bytes arrived before the header");
  const t0 = performance.now();
  let n = 0;
  for (const [start, data] of parts) {
    loader.write(start, intoScratch(data), data.byteLength);
    n += data.byteLength;
  }
  loadStats.write_ms += performance.now() - t0;
  loadStats.bytes += n;
  return n;
}

/** The model from the pieces: only after the coordinator compared shard 0's sha256 with the expected one. */
function build() {
  if (!loader) throw new Error("no model bytes to build from");
  if (scratch) { scratch.destroy(); scratch = null; }
  const tParse = performance.now();
  runner = loader.runner();
  vocabStarts = runner.vocab_starts().toJs();
  if (index === 0) session = loader.leader_session(runner.model.n_ctx);
  const plan = runner.model.plan;
  const info = { index, heads: plan.heads.toJs(), ffn: plan.ffn.toJs(), vocab: plan.vocab.toJs(),
                 held_bytes: loader.held_bytes(), n_ctx: runner.model.n_ctx };
  drop();
  return { info, seconds: (performance.now() - loadStart) / 1000, parse_seconds: (performance.now() - tParse) / 1000,
           write_seconds: loadStats.write_ms / 1000, received_bytes: loadStats.bytes };
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
    port.postMessage({ t: "p", seq: s, from: index, data: buf }, [buf.buffer]);
  } else {
    port.postMessage({ t: "p", seq: s, from: index, data });   // structured clone (a copy)
  }
}

/** One forward pass of this shard: tokens at cache position `start`, syncing with every peer. */
async function forward(tokens, start) {
  const t0 = performance.now();
  if (lastForwardEnd && stats.forwards) stats.between_ms += t0 - lastForwardEnd;
  const pyTokens = pyodide.toPy(tokens);
  let code = runner.begin(pyTokens, start);
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
    const mine = sends ? pyodide._module.HEAPF32.slice(box + index * cap, box + index * cap + n) : null;  // (n,) copy out
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
      const logits = runner.logits_address() >> 2;
      for (const [from, data] of got) heap.set(data, logits + vocabStarts[from]);
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
  if (m.t === "p") onPart(m);
  else if (m.t === "f") {
    if (m.gen !== statsGeneration) { statsGeneration = m.gen; resetStats(); }   // a new request: fresh stats
    followerChain = followerChain.then(() => forward(m.tokens, m.start)).catch((err) => {
      post({ type: "error", message: `shard ${index}: ${err?.message || err}` });
    });
  }
}

// ---- generation on the leader ------------------------------------------------------------------------

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
  /** The logits the generation asks for next (prefill or one token), computed across the shards. */
  const before = async () => {
    const need = gen.need();
    if (need === undefined || need === null) return;
    const [tokens, start] = need.toJs();
    need.destroy();
    for (const j of peers.keys()) if (j !== index) /** @type {MessagePort} */ (peers[j]).postMessage({ t: "f", tokens, start, gen: generations });
    await forward(tokens, start);
    const logits = runner.last_logits;                   // (vocab,) ndarray, handed back to Python
    gen.provide(logits, runner.seconds);
    logits.destroy();
  };
  const step = () => {
    const py = gen.step();
    if (py === undefined || py === null) return null;
    try { return py.toJs({ dict_converter: Object.fromEntries }); } finally { py.destroy(); }
  };
  try {
    await relayGeneration({ id: msg.id, step, post, aborted: () => abortRequested, yieldTurn: yieldToEventLoop, before,
                            doneExtra: () => ({ memory: memory(), stats: { ...stats } }) });
  } finally {
    gen.close();
    gen.destroy();
    generating = false;
  }
}

// ---- message-passing micro-benchmark (no Pyodide needed) --------------------------------------------

/** Round trips of a Float32Array(n) to a peer over `port`: clone or transfer. */
async function pingPong(port, n, iters, mode) {
  let data = new Float32Array(n);
  const once = () => new Promise((resolve) => {
    port.onmessage = (e) => resolve(e.data);
    if (mode === "transfer") port.postMessage(data, [data.buffer]); else port.postMessage(data);
  });
  for (let i = 0; i < 20; i++) data = /** @type {Float32Array} */ (await once());   // warm up
  const t0 = performance.now();
  for (let i = 0; i < iters; i++) data = /** @type {Float32Array} */ (await once());
  return (performance.now() - t0) / iters;
}

// ---- messages from the coordinator -----------------------------------------------------------------

self.addEventListener("message", async (event) => {
  const msg = event.data || {};
  try {
    switch (msg.type) {
      case "boot": post({ type: "booted", seconds: await boot() }); break;
      case "ports":
        index = msg.index; nShards = msg.n; transfer = msg.transfer !== false;
        peers = msg.ports;
        for (const p of peers) if (p) p.onmessage = onPeerMessage;
        break;
      case "header": post({ type: "header", ...header(msg) }); break;
      case "write": post({ type: "wrote", n: write(msg.parts) }); break;
      case "digest": post({ type: "digest", sha256: loader.sha256(), hash_seconds: loader.hash_seconds }); break;
      case "build": post({ type: "loaded", ...build(), memory: memory() }); break;
      case "drop": drop(); post({ type: "dropped" }); break;
      case "generate": await generate(msg); break;
      case "abort": abortRequested = true; break;
      case "stats": post({ type: "stats", stats: { ...stats }, memory: memory() }); break;
      case "pong": msg.port.onmessage = (e) => {                       // echo back, same mode
        const d = e.data;
        if (msg.mode === "transfer") msg.port.postMessage(d, [d.buffer]); else msg.port.postMessage(d);
      }; break;
      case "ping": post({ type: "pinged", ms: await pingPong(msg.port, msg.n, msg.iters, msg.mode) }); break;
      case "echo": post({ type: "echo", data: msg.data }, msg.mode === "transfer" ? [msg.data.buffer] : []); break;
      default: break;
    }
  } catch (e) {
    const err = /** @type {any} */ (e);
    post({ type: "error", id: msg.id, message: `shard ${index}: ${String(err?.message || err)}` });
  }
});
