// @ts-check
/**
 * The one browser load path: a model's bytes from the Cache API copy or a download, streamed into
 * a *sink* and verified there. Used by static/worker.js (the sink: one engine.bridge.ModelBuffer in
 * WASM memory) and static/parallel.js (the sink: the shard workers, each given its byte ranges).
 *
 *   const { cached } = await loadVerified(model, sink, (p) => post({ type: "progress", stage: "weights", ...p }));
 *
 *   1. a cached copy: streamed into the sink, and its sha256 compared; a bad or unreadable copy is
 *      deleted (progress "cache-corrupt") and the file downloaded instead;
 *   2. a download (status and Content-Length checked), streamed into the sink, its sha256 compared;
 *      a download cut short resumes with HTTP Range from the bytes received (progress "resume");
 *   3. only a verified download is stored: by the sink itself (sink.store: worker.js streams views
 *      of its WASM copy), or else written into the cache while it streams and committed only once
 *      verified (the coordinator never holds the whole file).
 * The sink hashes as the bytes arrive (Python's hashlib in a worker): crypto.subtle.digest has no
 * incremental form, so hashing here would need the whole file in one buffer.
 *
 * The cache rules (shared/research/security.md §2, F1-F8):
 *   key     the file's sha256, as a URL on this origin that is never fetched
 *           (/__mote_models__/<sha256>, passed over by sw.js): a new file is a new key
 *   store   only a complete download whose length and sha256 match GET /models
 *   read    a cached copy is verified again on every read; a bad one is deleted and downloaded again
 * Without a Cache API (an insecure context) or with storage blocked, nothing is found and nothing is
 * stored: the session goes on without an offline copy. The origin is the page's, also for a worker
 * started from a blob: URL by a page on another origin (docs/EMBED.md).
 */
import { MODEL_CACHE } from "./protocol.js";

/**
 * Where the bytes go. Every method may return a promise, which is awaited (back-pressure).
 * A sink error with `fatal: true` is not the source's fault (out of memory; a model the shards
 * cannot split): it ends the load at once, and a cached copy is kept.
 * @typedef {Object} Sink
 * @property {() => any} begin   a fresh start for one source (e.g. allocate the buffer)
 * @property {(chunk: Uint8Array, queued: number) => any} write  the next bytes, in file order; `chunk`
 *   is valid only during the call; `queued`: bytes also waiting for the Cache API
 * @property {() => any} end     every byte has been written
 * @property {() => (string|Promise<string>)} sha256  hex sha256 of everything written
 * @property {() => any} discard drop the bytes (a bad cached copy)
 * @property {(model: import("./protocol.js").ModelRef) => Promise<boolean>} [store]  store the
 *   verified bytes itself (throws when storing fails)
 */

/** Bytes read from a body per BYOB read (one reused scratch buffer). */
const READ_CHUNK = 1 << 20;
/** Bytes queued for the Cache API before reading waits (when storing while streaming). */
const CACHE_QUEUE = 4 << 20;
/** Progress events at most this often (ms). */
const PROGRESS_MS = 100;

/**
 * The model's bytes into `sink`, verified; cached first, else downloaded (and stored). Returns
 * whether they came from the cache; throws with a message that names the source otherwise.
 * @param {import("./protocol.js").ModelRef} model @param {Sink} sink
 * @param {(p: {phase: string, loaded?: number, total?: number, message?: string}) => void} progress
 */
export async function loadVerified(model, sink, progress) {
  const size = model.size;
  const cached = await cachedModel(model);
  if (cached) {
    progress({ phase: "cache", loaded: 0, total: size });
    let ok = false;
    try {
      await pump(cached, model, sink, "cache", "cached model", null, progress);
      progress({ phase: "verify", loaded: size, total: size });
      ok = await sink.sha256() === model.sha256;
    } catch (e) {
      if (/** @type {any} */ (e)?.fatal) throw e;       // not the copy's fault: keep it
    }                                                    // truncated, unreadable, unparsable: like a bad hash
    if (ok) return { cached: true };
    await sink.discard();
    await dropModel(model);
    progress({ phase: "cache-corrupt", loaded: 0, total: size });
  }
  const { body, etag } = await fetchModel(model);
  const canStore = typeof caches !== "undefined";
  const tee = canStore && !sink.store ? new CacheWriter(model) : null;
  try {
    await pump(body, model, sink, "download", model.url, tee, progress, (from) => resumeModel(model, from, etag));
    progress({ phase: "verify", loaded: size, total: size });
    const got = await sink.sha256();
    if (got !== model.sha256) throw new Error(`${model.url}: sha256 ${got} does not match the expected ${model.sha256}`);
  } catch (e) {
    await tee?.abort(/** @type {Error} */ (e));          // nothing unverified stays in the cache
    throw e;
  }
  if (canStore) {
    progress({ phase: "store", loaded: 0, total: size });
    try {
      if (sink.store) await sink.store(model);
      else await tee?.commit();
    } catch (e) {                                        // a full quota only costs the offline copy
      progress({ phase: "store-failed", message: String(e) });
    }
  }
  return { cached: false };
}

/** Times a download cut short is resumed (HTTP Range from the bytes already received) before giving up. */
const RESUMES = 3;

/**
 * Stream `body` (exactly model.size bytes, else throws) into `sink` (and `tee`), posting `phase`
 * progress. `what` names the source in error messages. With `resume`, a body that fails or ends
 * early is continued from the bytes already received (`resume(loaded)` -> the rest of the file),
 * up to RESUMES times: the sink keeps what it has (and keeps hashing), so the whole file is still
 * verified once at the end.
 * @param {ReadableStream<Uint8Array>} body @param {import("./protocol.js").ModelRef} model @param {Sink} sink
 * @param {string} phase @param {string} what @param {CacheWriter|null} tee @param {(p: any) => void} progress
 * @param {((from: number) => Promise<ReadableStream<Uint8Array>>)|null} [resume]
 */
async function pump(body, model, sink, phase, what, tee, progress, resume = null) {
  const size = model.size;
  await sink.begin();
  const at = { loaded: 0 };                              // bytes written to the sink so far
  for (let attempt = 0; ; attempt++) {
    try {
      await pumpBody(body, size, at, sink, phase, what, tee, progress);
      break;
    } catch (e) {
      const loaded = at.loaded;
      if (!resume || !/** @type {any} */ (e)?.resumable || loaded >= size) throw e;
      const first = /** @type {any} */ (e).message;
      if (attempt >= RESUMES) throw new Error(`${first} (gave up after ${RESUMES} resumed requests)`);
      progress({ phase: "resume", loaded, total: size });
      try {
        body = await resume(loaded);
      } catch (r) {
        throw new Error(`${first}; resuming from byte ${loaded} failed: ${/** @type {any} */ (r)?.message || r}`);
      }
    }
  }
  progress({ phase, loaded: at.loaded, total: size });
  await sink.end();
}

/**
 * One body's bytes into the sink, from file offset `at.loaded` (advanced as they are written).
 * Throws an error marked `resumable` when the body fails or ends before the file does.
 * @param {ReadableStream<Uint8Array>} body @param {number} size @param {{loaded: number}} at @param {Sink} sink
 * @param {string} phase @param {string} what @param {CacheWriter|null} tee @param {(p: any) => void} progress
 */
async function pumpBody(body, size, at, sink, phase, what, tee, progress) {
  // Without a tee nothing keeps a chunk after write(), so a BYOB reader refills one scratch buffer
  // and reading leaves no garbage behind (a default reader allocates every chunk: the file's size
  // in ArrayBuffers awaiting GC).
  /** @type {ReadableStreamBYOBReader|ReadableStreamDefaultReader<Uint8Array>} */ let reader;
  /** @type {ArrayBuffer|null} */ let scratch = null;
  try {
    if (tee) throw new Error("the tee keeps every chunk");
    reader = body.getReader({ mode: "byob" });
    scratch = new ArrayBuffer(READ_CHUNK);
  } catch {
    reader = body.getReader();                           // not a byte stream, or teed: default chunks
  }
  let lastPost = 0;
  try {
    for (;;) {
      let step;
      try {
        step = scratch ? await /** @type {ReadableStreamBYOBReader} */ (reader).read(new Uint8Array(scratch))
                       : await /** @type {ReadableStreamDefaultReader<Uint8Array>} */ (reader).read();
      } catch (e) {                                      // a cut connection surfaces as a TypeError here
        throw Object.assign(new Error(`${what}: download failed after a partial response ` +
                                      `(${/** @type {any} */ (e)?.message || e})`), { resumable: true });
      }
      const { done, value } = step;
      if (done || !value) break;
      if (scratch) scratch = /** @type {ArrayBuffer} */ (value.buffer);   // the scratch comes back, transferred
      if (at.loaded + value.length > size) throw new Error(`${what}: more than the expected ${size} bytes`);
      if (tee) await tee.write(value);
      await sink.write(value, tee ? tee.queued() : 0);
      at.loaded += value.length;
      const now = performance.now();
      if (now - lastPost > PROGRESS_MS) { progress({ phase, loaded: at.loaded, total: size }); lastPost = now; }
    }
    if (at.loaded !== size) {
      throw Object.assign(new Error(`${what}: download truncated at ${at.loaded} of ${size} bytes`), { resumable: true });
    }
  } catch (e) {
    reader.cancel().catch(() => {});
    throw e;
  }
}

// ---- the Cache API store ---------------------------------------------------------------------------

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
async function cachedModel(model) {
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
async function dropModel(model) {
  const cache = await openCache();
  if (cache) await cache.delete(cacheKey(model.sha256));
}

/**
 * Store a complete copy of `model` whose sha256 the caller has checked. Throws when the store fails
 * (e.g. a full quota); false when there is no cache to store into.
 * @param {import("./protocol.js").ModelRef} model
 * @param {ReadableStream<Uint8Array>} body  a stream lets the caller hand out views, not copies
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
async function fetchModel(model) {
  const r = await fetch(new URL(model.url, self.location.href), { cache: "no-store" });
  if (r.status !== 200) throw new Error(`${model.url}: HTTP ${r.status} ${r.statusText}`.trim());
  const declared = r.headers.get("Content-Length");
  if (declared !== null && Number(declared) !== model.size) {
    throw new Error(`${model.url}: Content-Length ${declared} but /models says ${model.size} bytes`);
  }
  if (!r.body) throw new Error(`${model.url}: empty response body`);
  const etag = r.headers.get("ETag");
  return { body: r.body, etag: etag && !etag.startsWith("W/") ? etag : null };
}

/**
 * The rest of the model file from byte `from` (a download cut short): a 206 whose Content-Range
 * starts there and ends at the file's end; If-Range pins it to the version first sent (a server
 * whose file changed answers 200, refused here: the bytes already received would not match).
 * @param {import("./protocol.js").ModelRef} model @param {number} from @param {string|null} etag
 * @returns {Promise<ReadableStream<Uint8Array>>}
 */
async function resumeModel(model, from, etag) {
  /** @type {Record<string, string>} */ const headers = { Range: `bytes=${from}-` };
  if (etag) headers["If-Range"] = etag;
  const r = await fetch(new URL(model.url, self.location.href), { cache: "no-store", headers });
  const range = /^bytes (\d+)-(\d+)\/(\d+)$/.exec(r.headers.get("Content-Range") || "");
  if (r.status !== 206 || !range || Number(range[1]) !== from || Number(range[2]) !== model.size - 1 ||
      Number(range[3]) !== model.size || !r.body) {
    r.body?.cancel().catch(() => {});
    throw new Error(`the server answered HTTP ${r.status}${range ? ` ${range[0]}` : ""}, not the rest of the file (no Range support?)`);
  }
  return r.body;
}

/**
 * A download written into the Cache API while it streams (storeModel), committed only when the
 * caller has verified the whole file: commit() closes the body, so cache.put completes; abort()
 * errors it, so cache.put rejects and stores nothing (and the key is deleted, should anything be
 * there). At most CACHE_QUEUE bytes wait for the cache: write() waits while the cache is slower
 * than the network. Where storing fails (a full quota), writes are dropped and commit() throws.
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
