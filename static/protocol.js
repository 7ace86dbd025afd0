// @ts-check
/**
 * The page <-> worker protocol: every message has a `type`. Imported by static/main.js,
 * static/worker.js, static/parallel.js and static/mote-embed.js, so both sides use the same names.
 *
 * Requests (page -> worker):  load, generate, abort
 * Events   (worker -> page):  progress, ready, token, done, error
 *
 * A session:   load{model?} -> progress* (runtime, numpy, engine, weights) -> ready
 *              generate{id} -> token* -> done{id, reason}      (abort{id} -> done{reason: "abort"})
 * `load` without a model boots the runtime only (ready.info has versions, no model).
 */

export const PROTOCOL_VERSION = 1;

/** Request types. */
export const Req = Object.freeze({ LOAD: "load", GENERATE: "generate", ABORT: "abort" });

/** Event types. */
export const Ev = Object.freeze({
  PROGRESS: "progress", READY: "ready", TOKEN: "token", DONE: "done", ERROR: "error",
});

/** Load stages, in order; `progress.stage` is one of these. */
export const STAGES = Object.freeze(["runtime", "numpy", "engine", "weights"]);

/**
 * @typedef {Object} ModelRef           one entry of GET /models (only these fields are needed)
 * @property {string} url               where to fetch the GGUF (same origin or CORS-enabled)
 * @property {string} sha256            hex sha256 of the whole file: cache key and integrity check
 * @property {number} size              bytes
 * @property {string} [name]
 *
 * @typedef {Object} SamplingSettings
 * @property {number} [temperature]     <= 0: greedy
 * @property {number} [top_k]
 * @property {number} [top_p]
 * @property {number} [max_tokens]
 * @property {number|null} [seed]
 *
 * @typedef {{role: "system"|"user"|"assistant", content: string}} ChatMessage
 *
 * @typedef {{type: "load", model?: ModelRef, n_ctx?: number}} LoadRequest
 * @typedef {{type: "generate", id: number, messages?: ChatMessage[], prompt?: string,
 *            params?: SamplingSettings}} GenerateRequest
 * @typedef {{type: "abort", id?: number}} AbortRequest
 * @typedef {LoadRequest | GenerateRequest | AbortRequest} Request
 *
 * @typedef {{type: "progress", stage: "runtime"|"numpy"|"engine"|"weights", phase?: string,
 *            loaded?: number, total?: number, seconds?: number}} ProgressEvent
 *   phase for weights: "cache" (reading the Cache API), "download", "verify", "store", "parse"
 * @typedef {{wasm_bytes: number|null, js_heap_bytes: number|null}} MemoryStats
 * @typedef {{type: "ready", info: Object, model?: Object, timings: Object<string, number>,
 *            cached?: boolean, memory?: MemoryStats}} ReadyEvent
 * @typedef {{type: "token", id: number, text: string, token_id: number, n: number,
 *            tok_s: number}} TokenEvent
 * @typedef {{type: "done", id: number, reason: string, text: string, n_prompt: number,
 *            n_generated: number, prefill_tok_s: number, decode_tok_s: number,
 *            token_ids: number[], memory?: MemoryStats}} DoneEvent
 * @typedef {{type: "error", id?: number, stage?: string, message: string}} ErrorEvent
 * @typedef {ProgressEvent | ReadyEvent | TokenEvent | DoneEvent | ErrorEvent} WorkerEvent
 */

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

/** Cache API names used by the model cache (static/model-cache.js) and the service worker (app shell + runtime). */
export const MODEL_CACHE = "mote-models-v1";
export const SHELL_CACHE_PREFIX = "mote-shell-";

/**
 * The worker side of one generate request, shared by static/worker.js and the leader shard of
 * static/parallel-worker.js: take the Python generation's events one at a time, post token and done
 * events, and yield to the event loop between steps so an abort message lands within one token.
 *   step()       the generation's next event as a plain object ({type: "prefill"|"token"|"done", ...}),
 *                or null/undefined when it is over
 *   before()     awaited before each step, if given (the parallel leader computes the logits there)
 *   aborted()    true once an abort request arrived: a done event with reason "abort" ends the request
 *   doneExtra()  fields added to the done event (memory, counters)
 * @param {{id: number, step: () => any, post: (ev: WorkerEvent) => void, aborted: () => boolean,
 *          yieldTurn: () => Promise<unknown>, before?: (() => Promise<void>)|null,
 *          doneExtra?: () => Object}} args
 */
export async function relayGeneration({ id, step, post, aborted, yieldTurn, before = null, doneExtra = () => ({}) }) {
  const t0 = performance.now();
  let decodeStart = 0, n = 0;
  for (;;) {
    if (aborted()) {
      post({ type: Ev.DONE, id, reason: "abort", text: "", n_prompt: 0, n_generated: n,
             prefill_tok_s: 0, decode_tok_s: 0, token_ids: [] });
      return;
    }
    if (before) await before();
    const ev = step();
    if (ev === undefined || ev === null) return;
    if (ev.type === "prefill") {
      decodeStart = performance.now();
    } else if (ev.type === "token") {
      n = ev.n;
      const secs = (performance.now() - (decodeStart || t0)) / 1000;
      post({ type: Ev.TOKEN, id, text: ev.text, token_id: ev.token_id, n, tok_s: secs > 0 ? n / secs : 0 });
    } else if (ev.type === "done") {
      post(/** @type {any} */ ({ ...ev, type: Ev.DONE, id, ...doneExtra() }));
      return;
    }
    await yieldTurn();                                   // abort lands here
  }
}
