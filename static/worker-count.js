// @ts-check
/**
 * How many workers decode a model: the one rule of the chat page (static/main.js) and the embed
 * script (static/mote-embed.js). Above 1, static/parallel.js splits the model over that many.
 *
 *   defaultWorkers()                                  // one per core, capped (below)
 *   workersForModel({architecture: "gemma3", size: 268e6}, 2)   // 2
 *   workersForModel({architecture: "gemma3", size: 2e6}, 2)     // 1: under MIN_PARALLEL_BYTES
 *   workersForModel({architecture: "atome", size: 1e9}, 4)      // 1: engine/shard.py cannot split it
 *
 * The page learns a model's architecture from GET /models (read by the server with engine.gguf).
 * Where nothing says it (the embed script on another host), the shard workers' engine.shard.ShardLoader
 * refuses an unsplittable model at the header, and the embed loads it on one worker instead.
 */

/** The most workers anyone may ask for. */
export const MAX_WORKERS = 8;
/** The default's cap: more workers than this were never measured (docs/bench/). */
export const DEFAULT_MAX_WORKERS = 4;
/**
 * Device memory (GB, navigator.deviceMemory where the browser reports it) per default worker: each
 * boots its own Python and keeps its own KV cache (docs/bench/ has the tab's peak memory per count).
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

/** `n` as a worker count: a whole number clamped to 1..MAX_WORKERS (1 for anything else). @param {unknown} n */
export function clampWorkers(n) {
  const k = Math.floor(Number(n));
  return Number.isFinite(k) ? Math.max(1, Math.min(k, MAX_WORKERS)) : 1;
}

/**
 * Workers to decode `model` with: `wanted` (clamped to 1..MAX_WORKERS), or 1 where sharding cannot
 * or does not pay: a file under `minBytes`, or an architecture engine/shard.py cannot split. An
 * unknown architecture (undefined: nobody said) is given the benefit of the doubt; the shard
 * workers refuse it if they must (see the file docstring).
 * @param {{architecture?: string|null, size?: number}|null} model  a GET /models entry, or as much as is known
 * @param {number} wanted @param {number} [minBytes]
 */
export function workersForModel(model, wanted, minBytes = MIN_PARALLEL_BYTES) {
  const n = clampWorkers(wanted);
  if (n === 1 || !model || !((model.size ?? 0) >= minBytes)) return 1;
  if (model.architecture !== undefined && !SHARDABLE.includes(model.architecture || "")) return 1;
  return n;
}
