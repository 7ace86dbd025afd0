// @ts-check
/**
 * Service worker (served at /sw.js, scope /): keeps the app shell and the Pyodide runtime for
 * offline use. Model files are NOT handled here: the workers keep them in their own Cache API store
 * ("mote-models-v1", static/model-source.js), verified by sha256.
 *
 *   install   precache "/", the page scripts, /models, build-manifest.json and every runtime file
 *             and wheel it lists
 *   fetch     same-origin GET (no Range): network first, refresh the cached copy, and fall back to
 *             the cache when the network fails (offline); /models/<file> and Range requests pass
 *             straight through
 *   activate  delete older shell caches, take control of open pages
 *
 * A classic (non-module) script so every browser with service workers runs it; the cache name
 * prefix matches SHELL_CACHE_PREFIX in protocol.js.
 */
/// <reference lib="webworker" />
const sw = /** @type {ServiceWorkerGlobalScope} */ (/** @type {unknown} */ (self));
const SHELL_CACHE = "mote-shell-v1";
/** The page and every static file it runs (tests/test_server.py checks this against static/). */
const SHELL = ["/", "/models", "/static/main.js", "/static/worker.js", "/static/protocol.js",
               "/static/model-source.js", "/static/boot.js", "/static/worker-count.js", "/static/parallel.js",
               "/static/parallel-worker.js", "/static/markdown.js", "/static/style.css",
               "/static/build-manifest.json"];

sw.addEventListener("install", (event) => {
  event.waitUntil((async () => {
    const cache = await caches.open(SHELL_CACHE);
    const urls = [...SHELL];
    try {
      const manifest = await (await fetch("/static/build-manifest.json", { cache: "no-cache" })).json();
      const base = new URL(manifest.runtime.base_url, new URL("/static/", sw.location.href));
      if (base.origin === sw.location.origin) {
        for (const f of manifest.runtime.files) urls.push(new URL(f.file, new URL("/static/", sw.location.href)).pathname);
      }
      for (const f of manifest.wheels) urls.push("/static/" + f.file);
    } catch (e) {
      console.warn("sw: no build-manifest.json; caching the page only", e);
    }
    // One by one: a missing optional file must not fail the whole install.
    await Promise.all(urls.map(async (u) => {
      try {
        const r = await fetch(u, { cache: "no-cache" });
        if (r.ok) await cache.put(u, r);
      } catch (e) { console.warn("sw: could not precache", u, e); }
    }));
    await sw.skipWaiting();
  })());
});

sw.addEventListener("activate", (event) => {
  event.waitUntil((async () => {
    for (const name of await caches.keys()) {
      if (name.startsWith("mote-shell-") && name !== SHELL_CACHE) await caches.delete(name);
    }
    await sw.clients.claim();
  })());
});

sw.addEventListener("fetch", (event) => {
  const req = event.request;
  const url = new URL(req.url);
  if (req.method !== "GET" || url.origin !== sw.location.origin || req.headers.has("range")) return;
  if (url.pathname.startsWith("/models/") || url.pathname.startsWith("/__mote_models__/")) return;
  event.respondWith((async () => {
    const cache = await caches.open(SHELL_CACHE);
    let r;
    try {
      r = await fetch(req);
    } catch (e) {                                        // offline: the cached copy, if any
      const hit = await cache.match(req, { ignoreSearch: true });
      if (hit) return hit;
      throw e;
    }
    // Refreshing the offline copy must never cost the answer: a full storage quota only means no
    // offline copy (the response goes out either way).
    if (r.ok && r.status === 200) {
      event.waitUntil(cache.put(req, r.clone()).catch((e) => console.warn("sw: could not cache", url.pathname, e)));
    }
    return r;
  })());
});
