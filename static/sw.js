// @ts-check
/**
 * Service worker (served at /sw.js, scope /): keeps the app shell and the Pyodide runtime for
 * offline use, one consistent set per deployment. Model files are NOT handled here: the workers
 * keep them in their own Cache API store ("mote-models-v1", static/model-source.js), verified by sha256.
 *
 * The page loads its scripts, style, build-manifest.json, wheels and runtime from
 * /static/v/<version>/ (web/app.py ShellVersion: a hash of those files; the page's response says it
 * in X-Mote-Shell). A version's URLs never change content, so:
 *
 *   /static/v/<version>/...   cache first, from that version's own cache "mote-shell-<version>";
 *                             a page keeps running the set it started with, also after a deployment
 *                             (its later requests, e.g. a fresh worker, still get its own version)
 *   "/", "/models", other same-origin GETs (no Range): network first, the last good copy kept in
 *             "mote-pages" for offline use; a page from a new version has that version precached
 *   /models/<file> and Range requests pass straight through
 *   install   precache "/", "/models" and the current version's files
 *   activate  take control of open pages
 * Two shell versions are kept (the newest and the one before it); older ones are deleted.
 *
 * A classic (non-module) script so every browser with service workers runs it; the cache name
 * prefix matches SHELL_CACHE_PREFIX in protocol.js.
 */
/// <reference lib="webworker" />
const sw = /** @type {ServiceWorkerGlobalScope} */ (/** @type {unknown} */ (self));
const PAGES_CACHE = "mote-pages";
const SHELL_PREFIX = "mote-shell-";
const VERSIONS_KEY = "/__mote_shell_versions__";      // in PAGES_CACHE: the versions kept, oldest first
const KEEP = 2;
/** The page's files under static/ (tests/test_protocol.py checks this against static/). */
const SHELL = ["main.js", "worker.js", "protocol.js", "model-source.js", "boot.js", "snapshot.js", "worker-count.js",
               "parallel.js", "parallel-worker.js", "prefetch-worker.js", "file-writer.js", "markdown.js", "style.css"];

/** The shell version in a URL path /static/v/<version>/..., or null. @param {string} path */
const versionOf = (path) => (path.match(/^\/static\/v\/([0-9a-f]{1,64})\//) || [])[1] || null;

/** Fill "mote-shell-<version>" with the version's files (those not there yet), then prune. @param {string} version */
async function precache(version) {
  const cache = await caches.open(SHELL_PREFIX + version);
  const base = new URL(`/static/v/${version}/`, sw.location.href);
  const urls = SHELL.map((f) => new URL(f, base).pathname);
  try {
    const manifestUrl = new URL("build-manifest.json", base);
    const manifest = await (await fetch(manifestUrl, { cache: "no-cache" })).json();
    urls.push(manifestUrl.pathname);
    const runtime = new URL(manifest.runtime.base_url, base);
    if (runtime.origin === sw.location.origin) {
      for (const f of manifest.runtime.files) urls.push(new URL(f.file, base).pathname);
    }
    for (const f of manifest.wheels) urls.push(new URL(f.file, base).pathname);
    // Not the build's runtime snapshot (manifest.snapshot, 52 MB): a visit keeps its own copy in OPFS,
    // and without one a start from these files works offline too.
  } catch (e) {
    console.warn("sw: no build-manifest.json for", version, e);
  }
  // One by one: a missing optional file must not fail the whole set.
  await Promise.all(urls.map(async (u) => {
    if (await cache.match(u)) return;
    try {
      const r = await fetch(u, { cache: "no-cache" });
      if (r.ok) await cache.put(u, r);
    } catch (e) { console.warn("sw: could not precache", u, e); }
  }));
  await keepVersion(version);
}

/** Record `version` as the newest kept; delete the shell caches of versions no longer kept. @param {string} version */
async function keepVersion(version) {
  const pages = await caches.open(PAGES_CACHE);
  const hit = await pages.match(VERSIONS_KEY);
  /** @type {string[]} */ let kept = hit ? await hit.json() : [];
  kept = [...kept.filter((v) => v !== version), version].slice(-KEEP);
  await pages.put(VERSIONS_KEY, new Response(JSON.stringify(kept), { headers: { "Content-Type": "application/json" } }));
  for (const name of await caches.keys()) {
    if (name.startsWith(SHELL_PREFIX) && !kept.includes(name.slice(SHELL_PREFIX.length))) await caches.delete(name);
  }
}

sw.addEventListener("install", (event) => {
  event.waitUntil((async () => {
    const pages = await caches.open(PAGES_CACHE);
    for (const u of ["/", "/models"]) {
      try {
        const r = await fetch(u, { cache: "no-cache" });
        if (!r.ok) continue;
        const version = r.headers.get("X-Mote-Shell");
        await pages.put(u, r);
        if (version) await precache(version);
      } catch (e) { console.warn("sw: could not precache", u, e); }
    }
    await sw.skipWaiting();
  })());
});

sw.addEventListener("activate", (event) => {
  event.waitUntil(sw.clients.claim());
});

sw.addEventListener("fetch", (event) => {
  const req = event.request;
  const url = new URL(req.url);
  if (req.method !== "GET" || url.origin !== sw.location.origin || req.headers.has("range")) return;
  if (url.pathname.startsWith("/models/") || url.pathname.startsWith("/__mote_models__/")) return;
  const version = versionOf(url.pathname);
  event.respondWith(version ? fromShell(event, req, version) : networkFirst(event, req));
});

/** A versioned file: its version's cached copy, else the network (and cached for next time).
 * @param {FetchEvent} event @param {Request} req @param {string} version */
async function fromShell(event, req, version) {
  const cache = await caches.open(SHELL_PREFIX + version);
  const hit = await cache.match(req, { ignoreSearch: true });
  if (hit) return hit;
  const r = await fetch(req);
  if (r.ok && r.status === 200) {
    event.waitUntil(cache.put(req, r.clone()).catch((e) => console.warn("sw: could not cache", req.url, e)));
  }
  return r;
}

/** The network's answer (its copy kept for offline use), else the last copy kept.
 * @param {FetchEvent} event @param {Request} req */
async function networkFirst(event, req) {
  const pages = await caches.open(PAGES_CACHE);
  let r;
  try {
    r = await fetch(req);
  } catch (e) {                                        // offline: the cached copy, if any
    const hit = await pages.match(req, { ignoreSearch: true });
    if (hit) return hit;
    throw e;
  }
  // Refreshing the offline copy must never cost the answer: a full storage quota only means no
  // offline copy (the response goes out either way).
  if (r.ok && r.status === 200) {
    const version = r.headers.get("X-Mote-Shell");   // a page: have its version's files for offline use
    event.waitUntil((async () => {
      await pages.put(req, r.clone());
      if (version && !(await caches.has(SHELL_PREFIX + version))) await precache(version);
    })().catch((e) => console.warn("sw: could not cache", req.url, e)));
  }
  return r;
}
