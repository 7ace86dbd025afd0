// @ts-check
/**
 * A worker that downloads one model into the Cache API (static/model-source.js prefetch) for
 * static/worker.js while that worker boots Python: booting blocks its thread for seconds at a
 * time, which would stall a download run there.
 *
 *   in:   {type: "prefetch", model: ModelRef}
 *   out:  {type: "progress", ...}* then {type: "prefetched", result: "stored"|"cached"|null, seconds: number}
 *         or {type: "error", message}
 */
import { prefetch } from "./model-source.js";

self.addEventListener("message", async (event) => {
  const msg = event.data;
  if (msg?.type !== "prefetch") return;
  const t0 = performance.now();
  try {
    const result = await prefetch(msg.model, (p) => self.postMessage({ type: "progress", ...p }));
    self.postMessage({ type: "prefetched", result, seconds: (performance.now() - t0) / 1000 });
  } catch (e) {
    self.postMessage({ type: "error", message: String(/** @type {any} */ (e)?.message || e) });
  }
});
