// @ts-check
/**
 * A worker for bench.js measureMessaging (no Pyodide): answers round trips of Float32Arrays.
 *   pong{port, mode}              echo everything that arrives on `port` back on it (clone or transfer)
 *   ping{port, n, iters, mode}    time `iters` round trips of a Float32Array(n) over `port` -> {ms}
 *   echo{data}                    send `data` straight back to the page (transferred)
 */

/** @param {Float32Array} data @param {string} mode */
const transfers = (data, mode) => (mode === "transfer" ? [data.buffer] : []);

/** Milliseconds per round trip of a Float32Array(n) to the peer on `port`. @param {MessagePort} port */
async function pingPong(port, /** @type {number} */ n, /** @type {number} */ iters, /** @type {string} */ mode) {
  let data = new Float32Array(n);
  const once = () => new Promise((resolve) => {
    port.onmessage = (e) => resolve(e.data);
    port.postMessage(data, transfers(data, mode));
  });
  for (let i = 0; i < 20; i++) data = /** @type {Float32Array} */ (await once());   // warm up
  const t0 = performance.now();
  for (let i = 0; i < iters; i++) data = /** @type {Float32Array} */ (await once());
  return (performance.now() - t0) / iters;
}

self.addEventListener("message", async (event) => {
  const msg = event.data;
  if (msg.type === "pong") msg.port.onmessage = (/** @type {MessageEvent} */ e) => msg.port.postMessage(e.data, transfers(e.data, msg.mode));
  else if (msg.type === "ping") self.postMessage({ ms: await pingPong(msg.port, msg.n, msg.iters, msg.mode) });
  else if (msg.type === "echo") self.postMessage({ data: msg.data }, [msg.data.buffer]);
});
