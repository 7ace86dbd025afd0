// @ts-check
/**
 * Writes one file of the origin private file system off the thread that asks (static/boot.js: the
 * runtime snapshot, ~52 MB, saved while a cold start's first answer streams, which a write on the
 * booting worker's own thread would stall; and a snapshot with the model loaded, as large as the heap).
 * Out first: {ready: true}, once it runs. In: {file: FileSystemFileHandle, parts: Uint8Array[]} (the
 * bytes transferred), written one after the other as the whole file through a sync access handle.
 * Out: {ok: true} or {ok: false, message}. A dedicated worker: only the worker that started it can
 * post to it.
 */
self.addEventListener("message", async (event) => {
  const { file, parts } = event.data ?? {};
  /** @type {any} */ let handle = null;
  let reply;
  try {
    handle = await file.createSyncAccessHandle();
    handle.truncate(0);
    let at = 0;
    for (const bytes of parts) {
      if (handle.write(bytes, { at }) !== bytes.length) throw new Error("short write");
      at += bytes.length;
    }
    handle.flush();
    reply = { ok: true };
  } catch (e) {
    reply = { ok: false, message: String(/** @type {any} */ (e)?.message || e) };
  } finally {
    handle?.close();                                     // before the reply: the file is moved next, and
  }                                                      // an open handle would lock it
  self.postMessage(reply);
});

self.postMessage({ ready: true });
