// @ts-check
/**
 * Every message that crosses a worker boundary, declared once. Imported by both sides of each:
 *
 *   page <-> worker       static/main.js, static/mote-embed.js  <->  static/worker.js, static/parallel.js
 *     Requests (page -> worker):  load, generate, abort, reset                   (Req)
 *     Events   (worker -> page):  progress, ready, token, done, error            (Ev)
 *     A session:   load{model?} -> progress* (runtime, numpy, engine, weights) -> ready
 *                  generate{id} -> token* -> done{id, reason}      (abort{id} -> done{reason: "abort"})
 *     `load` without a model boots the runtime only (ready.info has versions, no model).
 *     `reset` (no reply): a new conversation; the next generate reuses nothing of the KV cache. Without
 *     it, a generate reuses the cache for the longest prefix its prompt shares with the last one.
 *
 *   coordinator <-> shard static/parallel.js  <->  static/parallel-worker.js         (Shard)
 *   shard <-> shard       over the MessagePorts the coordinator hands out            (Peer)
 *
 * The generation's own events (prefill, token, done) are made by Python (engine.bridge and
 * engine.shard's leader); ENGINE_FIELDS lists their fields and tests/test_protocol.py checks that
 * Python emits exactly those, and that SAMPLING_KEYS are the settings engine.bridge accepts.
 */

export const PROTOCOL_VERSION = 1;

/** Request types (page -> worker). PING: answered at once with PONG (a worker that does not
 *  answer was terminated or is stuck: the page replaces it). */
export const Req = Object.freeze({ LOAD: "load", GENERATE: "generate", ABORT: "abort", RESET: "reset", PING: "ping" });

/** Event types (worker -> page). */
export const Ev = Object.freeze({
  PROGRESS: "progress", READY: "ready", TOKEN: "token", DONE: "done", ERROR: "error", PONG: "pong",
});

/** Load stages, in order; `progress.stage` is one of these. */
export const STAGES = Object.freeze(["runtime", "numpy", "engine", "weights"]);

/**
 * Fields of the events Python's generation step() returns, by type (JSON: tests/test_protocol.py
 * reads this literal). The worker posts token and done with `id` added, done also with `memory` and
 * `warm_s` (and, from several workers, `stats`); prefill is not posted.
 *   text        newly printable text (done: the tail held back while a stop string could still match)
 *   full_text   the whole answer, stop strings cut
 *   n_prompt    the whole prompt's tokens; n_reused of them were already in the KV cache (the same
 *               conversation's earlier turns) and were not computed again
 */
export const ENGINE_FIELDS = Object.freeze({
  "prefill": ["type", "n_prompt", "n_reused", "prefill_tok_s"],
  "token": ["type", "text", "token_id", "n"],
  "done": ["type", "reason", "text", "full_text", "n_prompt", "n_reused", "n_generated", "prefill_tok_s",
           "decode_tok_s", "token_ids", "n_drafted", "n_accepted"]
});

/** The settings a generate request's `params` may hold (engine.session.PARAM_TYPES; others are refused).
 *  speculative (default true): prompt-lookup decoding, the same tokens in fewer forward passes. */
export const SAMPLING_KEYS = Object.freeze(["temperature", "top_k", "top_p", "min_p", "repeat_penalty",
                                            "repeat_last_n", "seed", "max_tokens", "speculative"]);

/**
 * @typedef {Object} ModelRef           one entry of GET /models (only these fields are needed)
 * @property {string} url               where to fetch the GGUF (same origin or CORS-enabled)
 * @property {string} sha256            hex sha256 of the whole file: cache key and integrity check
 * @property {number} size              bytes
 * @property {string} [name]
 * @property {{size: number, sha256: string[]}} [chunks]  the sha256 of every `size`-byte chunk (GET
 *   /models, or the server's X-Mote-Chunks list): checked as the bytes stream, at the browser's native
 *   speed; without it (or when malformed) the whole file is hashed in the worker instead. With a
 *   list, the list is what the bytes are checked against and `sha256` only names the cached copy:
 *   give both from one source (GET /models does); a sha256 pinned by a page goes without a list
 * @property {number} [stall_s]  seconds a download (or a Cache API read) may go without a byte, or
 *   without a response, before it counts as stalled (default 30): a stalled download resumes with
 *   HTTP Range like one cut short, a stalled cached copy is read again from the network
 *
 * @typedef {Partial<Record<typeof SAMPLING_KEYS[number], number|boolean|null>>} SamplingSettings
 *   temperature <= 0: greedy; seed null: random; speculative: a boolean (default true)
 *
 * @typedef {{role: "system"|"user"|"assistant", content: string}} ChatMessage
 *
 * @typedef {{type: "load", model?: ModelRef, n_ctx?: number, self_check?: boolean, layout?: "packed"|"compact"|"int8",
 *            model_snapshot?: boolean}} LoadRequest
 *   layout: how workers hold block weights: "packed" (default; the file's own blocks, Q5_0 as int8
 *   values while the budget allows), "compact" (every type packed) or "int8" (int8 values + float32
 *   scales, ~2.2x a 4-bit file; for comparison benchmarks)
 *   model_snapshot: true: start from a snapshot of Python's memory taken with this model loaded, if
 *   one is saved, else save one after this load (static/worker.js; on several workers one per shard,
 *   static/parallel-worker.js); a worker saves one only if the request that booted it asked for it too
 *   self_check: also run engine.bridge.template_guard (the chat-template bounds in this runtime) and
 *   chat_check (Jinja2's version and a rendered conversation), reported in ready.info.template_guard,
 *   .jinja2 and .chat_check (the page's ?selfcheck; the browser smoke test)
 * @typedef {{type: "generate", id: number, messages?: ChatMessage[], prompt?: string,
 *            params?: SamplingSettings}} GenerateRequest
 * @typedef {{type: "abort", id?: number}} AbortRequest
 * @typedef {{type: "reset"}} ResetRequest
 * @typedef {LoadRequest | GenerateRequest | AbortRequest | ResetRequest} Request
 *
 * @typedef {{type: "progress", stage: "runtime"|"numpy"|"engine"|"weights", phase?: string,
 *            loaded?: number, total?: number, seconds?: number, message?: string, early?: boolean}} ProgressEvent
 *   early: a weights event while the runtime is still booting (the download into the Cache API)
 *   phase for weights: "cache" (reading the Cache API), "download", "resume" (a download cut short,
 *   continued with HTTP Range from `loaded`), "verify", "cache-corrupt",
 *   "store", "store-failed", "parse"
 * @typedef {{wasm_bytes: number|null, peak_bytes?: number|null, js_heap_bytes: number|null}} MemoryStats
 * @typedef {{type: "ready", info: Object, model?: Object, timings: Object<string, number>,
 *            cached?: boolean, memory?: MemoryStats}} ReadyEvent
 *   info.runtime_snapshot: "restored" (Python started from the runtime snapshot a first visit saved
 *   in the origin private file system, static/boot.js), "build" (a first visit: started from the
 *   build's snapshot, build_wasm.py, and kept it there), "stored" (started normally and saved one),
 *   "model" (started from a snapshot taken with a model loaded: this one's when the load had no
 *   weights stage; another's, freed before this load, otherwise), or null
 * @typedef {{type: "token", id: number, text: string, token_id: number, n: number}} TokenEvent
 * @typedef {{type: "done", id: number, reason: "eos"|"stop"|"length"|"abort", text: string,
 *            full_text: string, n_prompt: number, n_reused: number, n_generated: number, prefill_tok_s: number,
 *            decode_tok_s: number, token_ids: number[], memory?: MemoryStats, warm_s?: number|null}} DoneEvent
 *   warm_s: seconds of the last warm-up this worker ran before this answer (static/worker.js warmUpWhenIdle),
 *   null if none; one worker only
 * @typedef {{type: "error", id?: number, stage?: string, message: string, unsplittable?: boolean,
 *            fatal?: boolean}} ErrorEvent
 *   fatal: the worker's Python runtime is broken (e.g. out of memory): the page starts a fresh worker
 *   unsplittable: several workers were asked for, but engine/shard.py cannot split this model
 *   (its architecture): it must be loaded on one worker (static/mote-embed.js does)
 * @typedef {ProgressEvent | ReadyEvent | TokenEvent | DoneEvent | ErrorEvent} WorkerEvent
 */

/**
 * Coordinator <-> shard worker messages (field `type`). Requests, then the reply each gets:
 *   boot{save_snapshot, model_snapshot} -> booted{seconds, snapshot, model?}  Pyodide + numpy + the engine in
 *                                         the shard (snapshot: see boot.js; save_snapshot: false for all but the
 *                                         first shard); model_snapshot {sha256, size, n_ctx, layout, split, n,
 *                                         index}: start from this shard's saved model snapshot of that load
 *                                         where there is one (then model: {info, memory}), else boot so that
 *                                         one can be taken later
 *   snapshot{model_snapshot} -> snapshotted{taken}  right after build, before any generation: this
 *                                         shard's memory with its model, saved (taken: false where it is
 *                                         too large, or the boot could not be snapshotted)
 *   forget                                a model a snapshot started the shard with is freed (no reply)
 *   ports{index, n, ports, transfer}      a MessagePort to every other shard (no reply)
 *   header{prefix, size, n_ctx, split_attention, hash} -> header{more} | header{ranges} | header{refused}
 *   write{parts} -> wrote{n}              file bytes [start, ArrayBuffer] (flow control: the ack)
 *   digest -> digest{sha256, hash_seconds}  (shard 0) the whole file's sha256
 *   build -> loaded{info, memory, ...}    only once the digest matched
 *   drop -> dropped                       free the pieces of a failed or replaced load
 *   stats -> stats{stats, memory}         the shard's counters of the last generation
 *   generate, abort, reset                (shard 0, the leader) the page's requests, forwarded
 *   opening                               (shard 0) the load is over: prefill the chat template's opening
 *                                         through the shards once idle (no reply)
 *   opening_stop -> opening_stopped       (shard 0) stop that prefill; the reply once no forward is in flight
 * A shard reports any failure as an Ev.ERROR event.
 */
export const Shard = Object.freeze({
  BOOT: "boot", BOOTED: "booted", PORTS: "ports", HEADER: "header", WRITE: "write", WROTE: "wrote",
  DIGEST: "digest", BUILD: "build", LOADED: "loaded", DROP: "drop", DROPPED: "dropped", STATS: "stats",
  SNAPSHOT: "snapshot", SNAPSHOTTED: "snapshotted", FORGET: "forget",
  OPENING: "opening", OPENING_STOP: "opening_stop", OPENING_STOPPED: "opening_stopped",
});

/**
 * Shard <-> shard messages over the direct ports (field `t`, short: one message per sync point).
 *   PARTIAL {seq, from, data: Float32Array}   a shard's partial sum (or logits slice) at sync point seq
 *   FORWARD {tokens, start, verify, gen}      (from the leader) run one forward pass of generation gen
 *                                             (verify: lookup decoding's exact pass, logits for every token)
 */
export const Peer = Object.freeze({ PARTIAL: "p", FORWARD: "f" });

/**
 * Check the shape of a message before acting on it (both directions).
 * @param {unknown} msg
 * @param {readonly string[]} allowed  types accepted here
 * @returns {msg is {type: string}}
 */
export function isMessage(msg, allowed) {
  return typeof msg === "object" && msg !== null && typeof (/** @type {any} */ (msg).type) === "string"
    && allowed.includes(/** @type {any} */ (msg).type);
}

/**
 * A module worker running `url` (worker.js, parallel-worker.js), from a page on any origin.
 * A page may not start a Worker from another origin's URL (the embed case, docs/EMBED.md), so there
 * it is a one-line blob: module worker that imports the absolute URL; the blob URL is revoked once
 * the worker has answered or failed. The script resolves everything else against its own URL.
 * @param {URL} url @param {string} [name]  shown in the browser's task manager and devtools
 */
export function moduleWorker(url, name) {
  if (url.origin === self.location.origin) return new Worker(url, { type: "module", name });
  const source = `import ${JSON.stringify(url.href)};\n`;       // the whole blob: one static import
  const blobUrl = URL.createObjectURL(new Blob([source], { type: "text/javascript" }));
  const worker = new Worker(blobUrl, { type: "module", name });
  const revoke = () => URL.revokeObjectURL(blobUrl);
  worker.addEventListener("message", revoke, { once: true });
  worker.addEventListener("error", revoke, { once: true });
  return worker;
}

/** Cache API names used by the model cache (static/model-source.js) and the service worker (app shell + runtime). */
export const MODEL_CACHE = "mote-models-v1";
export const SHELL_CACHE_PREFIX = "mote-shell-";
/** The origin private file system's folder of the runtime snapshot: Python's memory with numpy and the
 *  engine loaded (static/boot.js, static/snapshot.js), one file per build. */
export const RUNTIME_DIR = "mote-runtime";
