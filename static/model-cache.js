// @ts-check
/**
 * The model cache: verified GGUF files in one Cache API store (MODEL_CACHE), shared by the single
 * worker (static/worker.js) and the coordinator of several (static/parallel.js), so a file stored
 * by one is read by the other. The rules (shared/research/security.md §2, F1-F8), kept by both:
 *
 *   key     the file's sha256, as a URL on this origin that is never fetched
 *           (/__mote_models__/<sha256>, passed over by sw.js): a new file is a new key
 *   store   only a complete download whose length and sha256 match GET /models (the caller checks
 *           both, then calls storeModel)
 *   read    a cached copy is verified again on every read (the caller hashes what cachedModel
 *           returns); a bad one is deleted (dropModel) and downloaded again
 *
 * Without a Cache API (an insecure context) or with storage blocked, nothing is found and nothing is
 * stored: the session goes on without an offline copy. The origin is the page's, also for a worker
 * started from a blob: URL by a page on another origin (docs/EMBED.md).
 */
import { MODEL_CACHE } from "./protocol.js";

/** @param {string} sha256 @returns {string} the cache key, e.g. http://host/__mote_models__/3fa9… */
export const cacheKey = (sha256) => new URL(`/__mote_models__/${sha256}`, self.location.origin).href;

/** The model cache, or null where there is none (no Cache API, storage blocked). */
async function openCache() {
  if (typeof caches === "undefined") return null;
  try { return await caches.open(MODEL_CACHE); } catch { return null; }
}

/**
 * The bytes of the cached copy of `model`, not yet verified; or null.
 * @param {import("./protocol.js").ModelRef} model @returns {Promise<ReadableStream<Uint8Array>|null>}
 */
export async function cachedModel(model) {
  const cache = await openCache();
  if (!cache) return null;
  try {
    const hit = await cache.match(cacheKey(model.sha256));
    return hit ? hit.body : null;
  } catch {
    return null;
  }
}

/** Delete the cached copy of `model` (truncated or corrupted). @param {import("./protocol.js").ModelRef} model */
export async function dropModel(model) {
  const cache = await openCache();
  if (cache) await cache.delete(cacheKey(model.sha256));
}

/**
 * Store a complete copy of `model` whose sha256 the caller has checked. Throws when the store fails
 * (e.g. a full quota); false when there is no cache to store into.
 * @param {import("./protocol.js").ModelRef} model
 * @param {ReadableStream<Uint8Array>|Uint8Array} body  a stream lets the caller hand out views, not copies
 */
export async function storeModel(model, body) {
  const cache = await openCache();
  if (!cache) return false;
  await cache.put(cacheKey(model.sha256), new Response(body, {
    headers: { "Content-Type": "application/octet-stream", "X-Mote-Sha256": model.sha256,
               "X-Mote-Size": String(model.size) },
  }));
  return true;
}

/**
 * GET the model file, bypassing the HTTP cache (the Cache API is the one copy kept): the body of a
 * 200 response whose Content-Length, when sent, is the size GET /models gave; else throws.
 * @param {import("./protocol.js").ModelRef} model @returns {Promise<ReadableStream<Uint8Array>>}
 */
export async function fetchModel(model) {
  const r = await fetch(new URL(model.url, self.location.href), { cache: "no-store" });
  if (r.status !== 200) throw new Error(`${model.url}: HTTP ${r.status} ${r.statusText}`.trim());
  const declared = r.headers.get("Content-Length");
  if (declared !== null && Number(declared) !== model.size) {
    throw new Error(`${model.url}: Content-Length ${declared} but /models says ${model.size} bytes`);
  }
  if (!r.body) throw new Error(`${model.url}: empty response body`);
  return r.body;
}
