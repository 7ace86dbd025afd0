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
 * Verification, two ways:
 *   chunked  the model names a sha256 per fixed-size chunk (`model.chunks`, from GET /models or the
 *            server's X-Mote-Chunks list): each chunk is hashed here with crypto.subtle, the browser's
 *            native SHA-256, as it passes (ChunkVerifier), and a bad chunk stops the load at once;
 *   whole    otherwise (a host that only gives data-sha256): the sink hashes every byte as it lands
 *            (Python's hashlib in a worker) and the whole file's sha256 is compared at the end;
 *            crypto.subtle.digest has no incremental form, so here it would need the whole file in
 *            one buffer.
 * The sink learns which at begin({hash}): it hashes only when there is no chunk list.
 *
 * The cache rules (shared/research/security.md §2, F1-F8):
 *   key     the file's sha256, as a URL on this origin that is never fetched
 *           (/__mote_models__/<sha256>, passed over by sw.js): a new file is a new key
 *   store   only a complete download whose length and sha256 match GET /models
 *   read    a cached copy is verified again on every read; a bad one is deleted and downloaded again.
 *           Once a copy's chunks have passed their sha256 (when it is downloaded, or on the first read
 *           of an older copy), its 128-bit checksum (static/snapshot.js Checksum) is kept beside it
 *           (key + CHECKSUM_SUFFIX), and later reads check that instead: it finds a damaged or
 *           cut-short copy as the hashes do, at a fraction of their cost (crypto.subtle.digest
 *           hashes on the calling thread: ~0.3 s for Gemma's 253 MB in Chromium, the checksum
 *           ~0.05 s), though not a forged one, which needs this origin's own storage and code.
 * Without a Cache API (an insecure context) or with storage blocked, nothing is found and nothing is
 * stored: the session goes on without an offline copy. The origin is the page's, also for a worker
 * started from a blob: URL by a page on another origin (docs/EMBED.md).
 */
import { MODEL_CACHE } from "./protocol.js";
import { Checksum } from "./snapshot.js";

/**
 * Where the bytes go. Every method may return a promise, which is awaited (back-pressure).
 * A sink error with `fatal: true` is not the source's fault (out of memory; a model the shards
 * cannot split): it ends the load at once, and a cached copy is kept.
 * @typedef {Object} Sink
 * @property {(opts: {hash: boolean}) => any} begin   a fresh start for one source; hash: whether
 *   the sink must hash what it is given (no chunk list: sha256() will be asked for)
 * @property {(chunk: Uint8Array, queued: number) => any} write  the next bytes, in file order; `chunk`
 *   is valid only during the call; `queued`: bytes also waiting for the Cache API
 * @property {() => any} end     every byte has been written
 * @property {() => (string|Promise<string>)} sha256  hex sha256 of everything written (asked only
 *   when begin was given hash: true)
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
/** Chunk sizes a chunk list may name (a power of two): the verifier holds one chunk and a few copies. */
const CHUNK_MIN = 1 << 16, CHUNK_MAX = 1 << 26;
/** Chunk digests computing at once (crypto.subtle copies each chunk when asked). */
const DIGESTS_IN_FLIGHT = 4;
/** Seconds one read (or a request's response) may take before it counts as stalled (ModelRef.stall_s). */
const STALL_S = 30;

/**
 * Seconds a read may wait: ModelRef.stall_s when it is a positive number (at most an hour: a timer
 * past 2**31 ms would fire at once), else STALL_S.
 * @param {import("./protocol.js").ModelRef} model @returns {number}
 */
const stallSeconds = (model) => {
  const s = Number(model.stall_s);
  return Number.isFinite(s) && s > 0 ? Math.min(s, 3600) : STALL_S;
};

/**
 * `read`, or a failure once `seconds` pass without it settling: a connection (or a cache read) that
 * stops sending without closing becomes an error the load can resume from or report, never a load
 * that waits for ever. The read left pending settles when the caller cancels its reader.
 * @template T @param {Promise<T>} read @param {number} seconds @returns {Promise<T>}
 */
function withinSeconds(read, seconds) {
  /** @type {ReturnType<typeof setTimeout>|undefined} */ let timer;
  const stalled = new Promise((_, reject) => {
    timer = setTimeout(() => reject(new Error(`no bytes for ${seconds} s`)), seconds * 1000);
  });
  return /** @type {Promise<T>} */ (Promise.race([read, stalled])).finally(() => clearTimeout(timer));
}

/**
 * The model's chunk list ({size, sha256: hex[]}) when it is well formed for model.size, else null
 * (then the whole file is hashed instead). A list from a hostile listing cannot make the verifier
 * allocate more than CHUNK_MAX.
 * @param {import("./protocol.js").ModelRef} model @returns {{size: number, sha256: string[]}|null}
 */
export function chunkList(model) {
  const c = /** @type {any} */ (model).chunks;
  if (!c || typeof c !== "object" || !Array.isArray(c.sha256)) return null;
  const size = c.size;
  if (!Number.isInteger(size) || size < CHUNK_MIN || size > CHUNK_MAX || (size & (size - 1)) !== 0) return null;
  if (c.sha256.length !== Math.ceil(model.size / size)) return null;
  if (!c.sha256.every((/** @type {unknown} */ h) => typeof h === "string" && /^[0-9a-f]{64}$/.test(h))) return null;
  return { size, sha256: c.sha256 };
}

/**
 * Checks a file's bytes, in order, against its chunk list with the browser's native SHA-256
 * (crypto.subtle.digest, which copies its input when called, so the staging buffer is reused at
 * once). write() throws as soon as a finished chunk is found bad; end() checks the last one.
 */
class ChunkVerifier {
  /** @param {{size: number, sha256: string[]}} list @param {number} fileSize @param {string} what */
  constructor(list, fileSize, what) {
    this.list = list;
    this.fileSize = fileSize;
    this.what = what;
    this.staging = new Uint8Array(Math.min(list.size, fileSize));   // (chunk,) the chunk being gathered
    this.fill = 0;
    this.index = 0;                                      // chunks handed to crypto.subtle so far
    /** @type {Promise<void>[]} */ this.pending = [];
    this.seconds = 0;                                    // wall time spent waiting for digests
  }

  /** The next bytes of the file. @param {Uint8Array} chunk */
  async write(chunk) {
    for (let at = 0; at < chunk.length;) {
      const n = Math.min(chunk.length - at, this.staging.length - this.fill);
      this.staging.set(chunk.subarray(at, at + n), this.fill);
      this.fill += n;
      at += n;
      if (this.fill === this.staging.length) await this.digest();
    }
  }

  async digest() {
    const i = this.index++;
    const expected = this.list.sha256[i];
    const start = i * this.list.size, end = start + this.fill;
    const done = crypto.subtle.digest("SHA-256", this.staging.subarray(0, this.fill)).then((d) => {
      if (hex(d) !== expected) {
        throw new Error(`${this.what}: bytes ${start}-${end - 1} (chunk ${i + 1} of ${this.list.sha256.length}) ` +
                        `do not match their sha256 in the model's chunk list`);
      }
    });
    done.catch(() => {});                                // awaited below; not an unhandled rejection meanwhile
    this.pending.push(done);
    this.fill = 0;
    const last = this.fileSize - end;
    this.staging = this.staging.length > last && last > 0 ? this.staging.subarray(0, last) : this.staging;
    if (this.pending.length >= DIGESTS_IN_FLIGHT) await this.wait(/** @type {Promise<void>} */ (this.pending.shift()));
  }

  /** @param {Promise<void>} p */
  async wait(p) { const t = performance.now(); try { await p; } finally { this.seconds += (performance.now() - t) / 1000; } }

  /** Every byte was written: check the last chunk and every digest still computing. */
  async end() {
    if (this.fill) await this.digest();
    while (this.pending.length) await this.wait(/** @type {Promise<void>} */ (this.pending.shift()));
    if (this.index !== this.list.sha256.length) throw new Error(`${this.what}: ${this.index} chunks checked, the list has ${this.list.sha256.length}`);
  }
}

/** @param {ArrayBuffer} digest @returns {string} */
const hex = (digest) => Array.from(new Uint8Array(digest), (b) => b.toString(16).padStart(2, "0")).join("");

/** What pump() checks the bytes with as they pass: write() each piece in order, end() throws when
 *  they were not the right ones; seconds: waiting for the check (hash_wait).
 *  @typedef {{write: (chunk: Uint8Array) => any, end: () => any, seconds: number}} Verifier */

/**
 * Checks bytes against the checksum recorded for them, as ChunkVerifier does against the chunk list
 * (the same write/end/seconds): end() throws when they differ.
 */
class ChecksumVerifier {
  /** @param {string} expected @param {string} what */
  constructor(expected, what) {
    this.expected = expected;
    this.what = what;
    this.sum = new Checksum();
    this.seconds = 0;
  }

  /** @param {Uint8Array} chunk */
  write(chunk) { this.sum.update(chunk); }

  end() {
    if (this.sum.hex() !== this.expected) throw new Error(`${this.what}: bytes do not match the checksum recorded when they were verified`);
  }
}

/**
 * The model's bytes into `sink`, verified; cached first, else downloaded (and stored). Returns
 * whether they came from the cache and, with a chunk list, the seconds spent waiting for chunk
 * digests (hashWait), and for a download the seconds spent storing it (storeSeconds); throws with a message that names the source otherwise.
 * With cacheOnly (a worker reading while its engine still loads) only a cached copy is read: null
 * when there is none, or when it was bad (then it is dropped, and the next load downloads).
 * @param {import("./protocol.js").ModelRef} model @param {Sink} sink
 * @param {(p: {phase: string, loaded?: number, total?: number, message?: string}) => void} progress
 * @param {{cacheOnly?: boolean}} [options]
 */
export async function loadVerified(model, sink, progress, { cacheOnly = false } = {}) {
  const size = model.size;
  const list = chunkList(model);
  const recording = recordedChecksum(model);            // looked up beside the copy (never rejects)
  const cached = await cachedModel(model);
  if (cached) {
    progress({ phase: "cache", loaded: 0, total: size });
    let ok = false;
    try {
      const recorded = await recording;
      const verifier = recorded ? new ChecksumVerifier(recorded, "cached model") : list && new ChunkVerifier(list, size, "cached model");
      const sum = recorded ? null : new Checksum();      // kept once the hashes have passed
      await pump(cached, model, sink, "cache", "cached model", null, progress, null, verifier, sum);
      progress({ phase: "verify", loaded: size, total: size });
      ok = verifier ? (await verifier.end(), true) : await sink.sha256() === model.sha256;
      if (ok && sum) await recordChecksum(model, sum);
      if (ok) return { cached: true, hashWait: recorded ? null : verifier?.seconds ?? null };
    } catch (e) {
      if (/** @type {any} */ (e)?.fatal) throw e;       // not the copy's fault: keep it
    }                                                    // truncated, unreadable, unparsable: like a bad hash
    await sink.discard();
    await dropModel(model);
    progress({ phase: "cache-corrupt", loaded: 0, total: size });
  }
  if (cacheOnly) return null;
  const { body, etag } = await fetchModel(model);
  const canStore = typeof caches !== "undefined";
  const tee = canStore && !sink.store ? new CacheWriter(model) : null;
  /** @type {ChunkVerifier|null} */ let verifier = null;
  const sum = new Checksum();                            // kept beside the stored copy
  try {
    verifier = list && new ChunkVerifier(list, size, model.url);
    await pump(body, model, sink, "download", model.url, tee, progress, (from) => resumeModel(model, from, etag), verifier, sum);
    progress({ phase: "verify", loaded: size, total: size });
    if (verifier) {
      await verifier.end();
    } else {
      const got = await sink.sha256();
      if (got !== model.sha256) throw new Error(`${model.url}: sha256 ${got} does not match the expected ${model.sha256}`);
    }
  } catch (e) {
    await tee?.abort(/** @type {Error} */ (e));          // nothing unverified stays in the cache
    throw e;
  }
  const stored = performance.now();
  if (canStore) {
    progress({ phase: "store", loaded: 0, total: size });
    try {
      const stored = sink.store ? await sink.store(model) : await tee?.commit();
      if (stored) await recordChecksum(model, sum);
    } catch (e) {                                        // a full quota only costs the offline copy
      progress({ phase: "store-failed", message: String(e) });
    }
  }
  return { cached: false, hashWait: verifier?.seconds ?? null, storeSeconds: (performance.now() - stored) / 1000 };
}

/** A sink that keeps nothing (prefetch: the bytes only go to the Cache API). @type {Sink} */
const NO_SINK = { begin() {}, write() {}, end() {}, sha256() { throw new Error("nothing hashed"); }, discard() {} };

/**
 * Download `model` straight into the Cache API, checked chunk by chunk, before anything can hold
 * it: the worker runs this while its runtime boots, then loadVerified reads the stored copy. No
 * WASM memory is needed and the JS side keeps only the cache's queue. Resolves "stored" once a
 * verified copy is stored, "cached" when one was there already, null where this cannot help: no
 * Cache API, no chunk list (the whole file would have to be hashed in one piece), or storing failed
 * (a full quota: the caller downloads as usual). Throws when the download itself is bad (its
 * message names the fault).
 * @param {import("./protocol.js").ModelRef} model @param {(p: any) => void} progress
 * @returns {Promise<"stored"|"cached"|null>}
 */
export async function prefetch(model, progress) {
  const list = chunkList(model);
  const cache = list ? await openCache() : null;
  if (!list || !cache) return null;
  try {
    const hit = await cache.match(cacheKey(model.sha256));
    if (hit) { hit.body?.cancel().catch(() => {}); return "cached"; }   // checked again when it is read
  } catch {
    return null;
  }
  const { body, etag } = await fetchModel(model);
  const tee = new CacheWriter(model);
  const verifier = new ChunkVerifier(list, model.size, model.url);
  const sum = new Checksum();                            // kept beside the stored copy
  try {
    await pump(body, model, NO_SINK, "download", model.url, tee, progress, (from) => resumeModel(model, from, etag), verifier, sum);
    await verifier.end();
  } catch (e) {
    await tee.abort(/** @type {Error} */ (e));           // nothing unverified stays in the cache
    throw e;
  }
  try {
    if (!(await tee.commit())) return null;
    await recordChecksum(model, sum);
    return "stored";
  } catch (e) {
    progress({ phase: "store-failed", message: String(e) });
    return null;
  }
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
 * @param {Verifier|null} [verifier]  checks each chunk as it passes (else the sink hashes)
 * @param {Checksum|null} [sum]  takes the checksum of every byte as it passes
 */
async function pump(body, model, sink, phase, what, tee, progress, resume = null, verifier = null, sum = null) {
  const size = model.size;
  await sink.begin({ hash: !verifier });
  const at = { loaded: 0 };                              // bytes written to the sink so far
  for (let attempt = 0; ; attempt++) {
    try {
      await pumpBody(body, size, at, sink, phase, what, tee, progress, verifier, stallSeconds(model), sum);
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
 * @param {Verifier|null} verifier @param {number} stall  seconds a read may take (withinSeconds)
 * @param {Checksum|null} sum  takes the checksum of every byte as it passes
 */
async function pumpBody(body, size, at, sink, phase, what, tee, progress, verifier, stall, sum) {
  // A BYOB reader's reads are gathered into READ_CHUNK pieces (a body's own chunks can be 64 KB:
  // fewer, larger pieces for the sink and the cache). Without a tee nothing keeps a piece after
  // write(), so the same two buffers serve every read and reading leaves no garbage behind; the tee
  // keeps each piece (a fresh one per read). A body that is not a byte stream is read with a default
  // reader, chunk by chunk.
  /** @type {ReadableStreamBYOBReader|null} */ let byob = null;
  /** @type {ReadableStreamDefaultReader<Uint8Array>|null} */ let plainReader = null;
  try {
    byob = body.getReader({ mode: "byob" });
  } catch {
    plainReader = body.getReader();
  }
  const io = { scratch: new ArrayBuffer(byob ? READ_CHUNK : 0) };
  const piece = new Uint8Array(byob && !tee ? READ_CHUNK : 0);
  let lastPost = 0;
  try {
    for (;;) {
      /** @type {Uint8Array|undefined} */ let value;
      let done = false;
      /** @type {unknown} */ let failure = null;          // a cut connection surfaces as a TypeError
      if (byob) {
        ({ value, done, failure } = await readFull(byob, io, tee ? new Uint8Array(READ_CHUNK) : piece, stall));
      } else {
        try {
          ({ value, done } = await withinSeconds(/** @type {ReadableStreamDefaultReader<Uint8Array>} */ (plainReader).read(), stall));
        } catch (e) {
          failure = e;
        }
      }
      if (value && value.length) {                       // (bytes read before a failure are kept)
        if (at.loaded + value.length > size) throw new Error(`${what}: more than the expected ${size} bytes`);
        if (tee) await tee.write(value);
        sum?.update(value);
        if (verifier) await verifier.write(value);       // before the sink, which may take the chunk's bytes away
        await sink.write(value, tee ? tee.queued() : 0);
        at.loaded += value.length;
        const now = performance.now();
        if (now - lastPost > PROGRESS_MS) { progress({ phase, loaded: at.loaded, total: size }); lastPost = now; }
      }
      if (failure) {
        throw Object.assign(new Error(`${what}: download failed after a partial response ` +
                                      `(${/** @type {any} */ (failure)?.message || failure})`), { resumable: true });
      }
      if (done || !value) break;
    }
    if (at.loaded !== size) {
      throw Object.assign(new Error(`${what}: download truncated at ${at.loaded} of ${size} bytes`), { resumable: true });
    }
  } catch (e) {
    (byob || /** @type {ReadableStreamDefaultReader<Uint8Array>} */ (plainReader)).cancel().catch(() => {});
    throw e;
  }
}

/**
 * Fill `out` from a BYOB reader (several reads into `io.scratch`, each copied into `out`) until it
 * is full, the body ends or a read fails. A failed read loses only its own buffer (transferred to
 * it), so the bytes already in `out` survive the failure.
 * @param {ReadableStreamBYOBReader} reader @param {{scratch: ArrayBuffer}} io @param {Uint8Array} out
 * @param {number} stall  seconds one read may take (withinSeconds)
 * @returns {Promise<{value: Uint8Array, done: boolean, failure: unknown}>} the bytes read (a view of
 *   `out`), whether the body has ended, and the read's error, if one failed
 */
async function readFull(reader, io, out, stall) {
  let filled = 0;
  while (filled < out.length) {
    let step;
    try {
      step = await withinSeconds(reader.read(new Uint8Array(io.scratch, 0, Math.min(io.scratch.byteLength, out.length - filled))), stall);
    } catch (failure) {
      io.scratch = new ArrayBuffer(READ_CHUNK);          // the failed (or stalled) read kept the old one
      return { value: out.subarray(0, filled), done: false, failure };
    }
    const { done, value } = step;
    if (value) {
      io.scratch = /** @type {ArrayBuffer} */ (value.buffer);   // comes back, transferred
      out.set(value, filled);
      filled += value.byteLength;
    }
    if (done) return { value: out.subarray(0, filled), done: true, failure: null };
  }
  return { value: out.subarray(0, filled), done: false, failure: null };
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

/** Delete the cached copy of `model` (truncated or corrupted), and its checksum.
 *  @param {import("./protocol.js").ModelRef} model */
async function dropModel(model) {
  const cache = await openCache();
  if (cache) await Promise.all([cache.delete(cacheKey(model.sha256)), cache.delete(cacheKey(model.sha256) + CHECKSUM_SUFFIX)]);
}

/** Where a cached copy's checksum is kept: its key + this (never fetched either). */
const CHECKSUM_SUFFIX = ".checksum";

/**
 * The checksum recorded for the cached copy of `model` (32 hex digits), or null: none recorded (an
 * older copy), or not one we wrote (then the copy is checked against its chunk list, and the
 * checksum recorded again).
 * @param {import("./protocol.js").ModelRef} model @returns {Promise<string|null>}
 */
async function recordedChecksum(model) {
  const cache = await openCache();
  try {
    const hit = cache && await cache.match(cacheKey(model.sha256) + CHECKSUM_SUFFIX);
    const blob = hit ? await hit.blob() : null;          // (its size known before anything is read)
    const text = blob && blob.size <= 64 ? (await blob.text()).trim() : "";
    return /^[0-9a-f]{32}$/.test(text) ? text : null;
  } catch {
    return null;
  }
}

/**
 * Keep the checksum of the copy of `model` just stored or read, whose chunks all passed their
 * sha256. Failing to store it only means the next read checks the chunks again.
 * @param {import("./protocol.js").ModelRef} model @param {Checksum} sum
 */
async function recordChecksum(model, sum) {
  const cache = await openCache();
  try {
    await cache?.put(cacheKey(model.sha256) + CHECKSUM_SUFFIX, new Response(sum.hex(), { headers: { "Content-Type": "text/plain" } }));
  } catch { /* the next read checks the chunks */ }
}

/**
 * Store a complete copy of `model` whose sha256 the caller has checked. Throws when the store fails
 * (e.g. a full quota), or when the cache asks for no bytes for the model's stall seconds (a stuck
 * store ends, it never holds a load: the time spent waiting for `body` itself does not count);
 * false when there is no cache to store into.
 * @param {import("./protocol.js").ModelRef} model
 * @param {ReadableStream<Uint8Array>} body  a stream lets the caller hand out views, not copies
 */
export async function storeModel(model, body) {
  const cache = await openCache();
  if (!cache) return false;
  const seconds = stallSeconds(model);
  const reader = body.getReader();
  /** @type {number|null} */ let idleSince = performance.now();   // null: the cache asked, `body` is supplying
  const watched = new ReadableStream({
    async pull(controller) {
      idleSince = null;
      const { value, done } = await reader.read();
      if (done) controller.close();
      else controller.enqueue(value);
      idleSince = performance.now();
    },
    cancel: (reason) => reader.cancel(reason),
  }, { highWaterMark: 0 });                             // pulled only when the cache reads
  /** @type {(e: Error) => void} */ let stuck = () => {};
  const stalled = new Promise((_, reject) => { stuck = reject; });
  const watchdog = setInterval(() => {
    if (idleSince !== null && performance.now() - idleSince > seconds * 1000) {
      stuck(new Error(`the Cache API took no bytes for ${seconds} s`));
    }
  }, 1000);
  const put = cache.put(cacheKey(model.sha256), new Response(watched, {
    headers: { "Content-Type": "application/octet-stream", "X-Mote-Sha256": model.sha256,
               "X-Mote-Size": String(model.size) },
  }));
  put.catch(() => {});                                  // a put still pending when the store stalled
  try {
    await Promise.race([put, stalled]);
  } catch (e) {
    reader.cancel(e).catch(() => {});
    throw e;
  } finally {
    clearInterval(watchdog);
  }
  return true;
}

/**
 * GET model.url bypassing the HTTP cache, failing when no response arrives within the model's stall
 * seconds (a server that accepts the connection and never answers); the body is read under
 * withinSeconds.
 * @param {import("./protocol.js").ModelRef} model @param {Record<string, string>} headers
 * @returns {Promise<Response>}
 */
async function fetchWithin(model, headers) {
  const seconds = stallSeconds(model);
  const abort = new AbortController();
  const timer = setTimeout(() => abort.abort(), seconds * 1000);
  try {
    return await fetch(new URL(model.url, self.location.href), { cache: "no-store", headers, signal: abort.signal });
  } catch (e) {
    if (abort.signal.aborted) throw new Error(`${model.url}: no response for ${seconds} s`);
    throw e;
  } finally {
    clearTimeout(timer);
  }
}

/**
 * GET the model file, bypassing the HTTP cache (the Cache API is the one copy kept): the body of a
 * 200 response whose Content-Length, when sent, is the size GET /models gave; else throws.
 * @param {import("./protocol.js").ModelRef} model @returns {Promise<ReadableStream<Uint8Array>>}
 */
async function fetchModel(model) {
  const r = await fetchWithin(model, {});
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
  const r = await fetchWithin(model, headers);
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

  /**
   * Queue a chunk (not copied: the caller must not modify or transfer it); waits while the queue is
   * full. A cache that stops taking bytes ends the put (storeModel), and writes are dropped from then.
   */
  async write(/** @type {Uint8Array} */ chunk) {
    if (this.over) return;
    const c = /** @type {ReadableStreamDefaultController<Uint8Array>} */ (this.controller);
    c.enqueue(chunk);
    while (!this.over && (c.desiredSize ?? 1) <= 0) await new Promise((r) => this.waiters.push(/** @type {() => void} */ (r)));
  }

  /** The file is complete and verified: finish the entry. Throws when storing failed (or stalled). */
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
