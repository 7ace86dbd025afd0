// @ts-check
/**
 * The browser benchmark's programs, on its page (index.html), as window.MoteBench:
 *
 *   mote(url, prompts, n, nCtx, _, layout)   plain Mote through the embed API (window.Mote), one worker
 *   parallel(url, prompts, n, nCtx, workers, layout)  Mote across N workers (static/parallel.js)
 *                                            (layout: "packed", the default, "compact" or "int8": LoadRequest.layout)
 *   run({workers, model, prompt, ...})       one load + one generation on N workers, with every
 *                                            shard's counters (tests/test_parallel.py, parallel.py)
 *   measureMessaging(n, iters)               postMessage round trips between two workers
 *   lookup(url, chats, n, nCtx, workers)     prompt lookup on and off, paired (mote/bench/lookup.py)
 *   wllama(url, prompts, n, nCtx)            wllama (llama.cpp in WebAssembly), see wllama.js
 *
 * Each returns plain JSON for Playwright. Timings come from the protocol's events: ttft_s is request
 * -> first token event; prefill / decode tok/s are the engine's own (the done event); page_tok_s is
 * the rate at which token events reached this page.
 */
import { Ev, Req } from "/static/protocol.js";
import { ParallelWorker } from "/static/parallel.js";
import { benchWllama } from "./wllama.js";

// `mote bench --browser --preload`: one worker boots while the page loads, as a page that calls
// Mote.preload() in its own script would (mote() below then takes it through Mote.load).
if (new URLSearchParams(location.search).has("preload")) /** @type {any} */ (window).Mote.preload();

/**
 * Plain Mote on the page: the public API (mote-embed.js), greedy. One worker (the API's default
 * follows the cores): the N-worker rows are `parallel`.
 * @param {string} url @param {string[]} prompts @param {number} n @param {number|null} nCtx
 */
async function mote(url, prompts, n, nCtx, _workers, layout, options = {}) {
  const Mote = /** @type {any} */ (window).Mote;
  const t0 = performance.now();
  const m = await Mote.load(url, { workers: 1, ...(nCtx ? { n_ctx: nCtx } : {}), ...(layout ? { layout } : {}),
                                   ...(options.model_snapshot ? { modelSnapshot: true } : {}) });
  const readyS = (performance.now() - t0) / 1000;
  const t = m.timings;
  const runs = [];
  for (const prompt of prompts) {
    const ts = performance.now();
    const seen = arrivals();
    for await (const ev of m.events({ prompt }, { temperature: 0, max_tokens: n })) {
      if (ev.type === Ev.TOKEN) seen.token();
    }
    runs.push(runRecord(m.last, ts, seen));
  }
  return { download_s: t.weights, init_s: (t.runtime || 0) + (t.numpy || 0) + (t.engine || 0) + (t.model || 0),
           ready_s: readyS, first_token_s: runs[0]?.first_token_s ?? null, timings: t, runs, memory: m.memory };
}

/** When token events reach the page: the first, the last, how many. */
function arrivals() {
  return {
    first: /** @type {number|null} */ (null), last: 0, count: 0,
    token() { const now = performance.now(); if (this.first === null) this.first = now; this.last = now; this.count++; },
  };
}

/**
 * One prompt's numbers from its done event, and page_tok_s: the rate at which tokens reached the
 * page (token events after the first, over the time from the first to the last), beside the
 * engine's own decode_tok_s, which leaves out each token's trip to the page.
 * @param {any} d @param {number} ts @param {ReturnType<typeof arrivals>} seen
 */
function runRecord(d, ts, seen) {
  const span = seen.first === null ? 0 : (seen.last - seen.first) / 1000;
  return { ttft_s: seen.first === null ? null : (seen.first - ts) / 1000, token_ids: d.token_ids, text: d.full_text,
           first_token_s: seen.first === null ? null : seen.first / 1000,   // after the page's navigation began
           prefill_tok_s: d.prefill_tok_s, decode_tok_s: d.decode_tok_s, n_prompt: d.n_prompt, n_generated: d.n_generated,
           page_tokens: seen.count, page_span_s: span,
           // null when the tokens came within one tick of the page's clock (a tiny model's can)
           page_tok_s: seen.count > 1 && span > 0 ? (seen.count - 1) / span : null };
}

/**
 * Requests to a ParallelWorker, one at a time: send(msg, want) resolves with the next `want` event
 * (ready: the one with a model), rejects on an error event; onToken sees every token event.
 * @param {ParallelWorker} w
 */
function requester(w) {
  /** @type {{resolve: (d: any) => void, reject: (e: Error) => void, want: string, onToken?: (d: any) => void}|null} */
  let waiter = null;
  w.addEventListener("message", (e) => {
    const d = /** @type {MessageEvent} */ (e).data;
    if (!waiter) return;
    if (d.type === Ev.ERROR) { const x = waiter; waiter = null; x.reject(new Error(d.message)); }
    else if (d.type === Ev.TOKEN && waiter.onToken) waiter.onToken(d);
    else if (d.type === waiter.want && (d.type !== Ev.READY || d.model)) { const x = waiter; waiter = null; x.resolve(d); }
  });
  return (/** @type {any} */ msg, /** @type {string} */ want, /** @type {((d: any) => void)|undefined} */ onToken) =>
    new Promise((resolve, reject) => { waiter = { resolve, reject, want, onToken }; w.postMessage(msg); });
}

/** The GET /models entry for `url`. @param {string} url */
async function listed(url) {
  const listing = await (await fetch("/models", { cache: "no-store" })).json();
  const model = listing.find((/** @type {any} */ m) => new URL(m.url, location.href).href === new URL(url, location.href).href);
  if (!model) throw new Error(`${url} is not in GET /models`);
  return model;
}

/**
 * Mote across N workers: loaded once, every prompt in turn; WASM memory summed over the workers.
 * The workers stay alive until the browser closes, so the JS heap is read with them, as for plain Mote.
 * @param {string} url @param {string[]} prompts @param {number} n @param {number|null} nCtx @param {number} workers
 */
async function parallel(url, prompts, n, nCtx, workers, layout, options = {}) {
  const t0 = performance.now();
  const w = new ParallelWorker({ workers });
  const send = requester(w);
  try {
    const ready = await send({ type: Req.LOAD, model: await listed(url), n_ctx: nCtx || undefined, layout: layout || undefined,
                               ...(options.model_snapshot ? { model_snapshot: true } : {}) }, Ev.READY);
    const readyS = (performance.now() - t0) / 1000;
    const t = ready.timings;
    const runs = [];
    let id = 0;
    for (const prompt of prompts) {
      const ts = performance.now();
      const seen = arrivals();
      const d = await send({ type: Req.GENERATE, id: ++id, prompt, params: { temperature: 0, max_tokens: n } }, Ev.DONE,
                           () => seen.token());
      runs.push(runRecord(d, ts, seen));
    }
    const perWorker = (await w.stats()).map((s) => s.memory.wasm_bytes || 0);
    /** @type {any} */ (window).moteBenchWorkers = w;     // alive, like plain Mote's worker, for the JS heap reading
    return { download_s: t.weights, init_s: (t.runtime || 0) + (t.model || 0), ready_s: readyS,
             first_token_s: runs[0]?.first_token_s ?? null, timings: t, runs,
             memory: { wasm_bytes: perWorker.reduce((a, b) => a + b, 0), per_worker: perWorker }, workers: w.n };
  } catch (e) {
    w.terminate();
    throw e;
  }
}

/**
 * Load `model` on `workers` workers, generate once, and say what happened: timings, every shard's
 * counters (static/parallel-worker.js stats), the speed between token events on this page.
 * @param {{workers: number, model: import("/static/protocol.js").ModelRef, prompt: string, params?: Object,
 *          n_ctx?: number, splitAttention?: boolean, transfer?: boolean}} opts
 */
async function run(opts) {
  const w = new ParallelWorker({ workers: opts.workers, splitAttention: opts.splitAttention, transfer: opts.transfer });
  const send = requester(w);
  /** @type {number[]} */ const tokenTimes = [];
  try {
    const t0 = performance.now();
    const ready = await send({ type: Req.LOAD, model: opts.model, n_ctx: opts.n_ctx }, Ev.READY);
    const loadS = (performance.now() - t0) / 1000;
    const t1 = performance.now();
    const done = await send({ type: Req.GENERATE, id: 1, prompt: opts.prompt, params: opts.params || {} }, Ev.DONE,
                            () => tokenTimes.push(performance.now()));
    const stats = (await w.stats()).map((s) => ({ ...s.stats, wasm_bytes: s.memory.wasm_bytes }));
    const span = tokenTimes.length > 1 ? (tokenTimes[tokenTimes.length - 1] - tokenTimes[0]) / 1000 : 0;
    return {
      workers: w.n, load_s: loadS, timings: ready.timings, shards: ready.model.shards, cached: ready.cached,
      coordinator_peak_bytes: ready.memory.coordinator_peak_bytes,
      ttft_s: tokenTimes.length ? (tokenTimes[0] - t1) / 1000 : null,
      page_decode_tok_s: span > 0 ? (tokenTimes.length - 1) / span : null,   // between token events
      decode_tok_s: done.decode_tok_s, prefill_tok_s: done.prefill_tok_s, n_generated: done.n_generated,
      text: done.full_text, token_ids: done.token_ids, reason: done.reason, worker_stats: stats,
    };
  } finally {
    w.terminate();
  }
}

const ECHO_URL = new URL("./echo-worker.js", import.meta.url);

/** The next message from `target` (a worker or port). @param {Worker|MessagePort} target */
const reply = (target) => new Promise((resolve) => target.addEventListener("message", (e) => resolve(/** @type {MessageEvent} */ (e).data), { once: true }));

/**
 * Round-trip time of a Float32Array(n) between two workers (no Pyodide), per mode:
 *   "port-clone"      direct MessagePort, structured clone (copy)
 *   "port-transfer"   direct MessagePort, ArrayBuffer transferred
 *   "relay-transfer"  worker -> this thread -> worker and back (what a star through the page costs)
 * Returns {mode: ms per round trip}; one sync point of a forward costs about half a round trip.
 */
async function measureMessaging(n = 640, iters = 500) {
  const [a, b] = [new Worker(ECHO_URL, { type: "module" }), new Worker(ECHO_URL, { type: "module" })];
  /** @type {Object<string, number>} */ const out = {};
  try {
    for (const mode of ["clone", "transfer"]) {
      const ch = new MessageChannel();
      b.postMessage({ type: "pong", port: ch.port2, mode }, [ch.port2]);
      const p = reply(a);
      a.postMessage({ type: "ping", port: ch.port1, n, iters, mode }, [ch.port1]);
      out[`port-${mode}`] = (await p).ms;
    }
    let data = new Float32Array(n);                       // relay: a -> page -> b -> page -> a
    const hop = async (/** @type {Worker} */ w) => {
      const p = reply(w);
      w.postMessage({ type: "echo", data }, [data.buffer]);
      return /** @type {Float32Array} */ ((await p).data);
    };
    for (let i = 0; i < 20; i++) data = await hop(a);     // warm up
    const t0 = performance.now();
    for (let i = 0; i < iters; i++) { data = await hop(a); data = await hop(b); }
    out["relay-transfer"] = (performance.now() - t0) / iters;
  } finally {
    a.terminate();
    b.terminate();
  }
  return out;
}

/**
 * Prompt lookup on and off, in paired rounds: Mote on `workers` workers (the embed API), loaded
 * once; every chat answered greedily with lookup and without, the order alternating from chat to
 * chat. The second answer of a pair reuses the prompt's KV cache, which shortens only its prefill:
 * decode_tok_s (the engine's, from the done event) is what the pair compares.
 * @param {string} url @param {any[][]} chats  lists of chat messages @param {number} n
 * @param {number|null} nCtx @param {number} workers
 */
async function lookup(url, chats, n, nCtx, workers) {
  const Mote = /** @type {any} */ (window).Mote;
  const m = await Mote.load(url, nCtx ? { n_ctx: nCtx, workers } : { workers });
  const runs = [];
  for (const [i, messages] of chats.entries()) {
    /** @type {any} */ const pair = {};
    for (const speculative of i % 2 ? [true, false] : [false, true]) {
      const ts = performance.now();
      const seen = arrivals();
      for await (const ev of m.events({ messages }, { temperature: 0, max_tokens: n, speculative })) {
        if (ev.type === Ev.TOKEN) seen.token();
      }
      pair[speculative ? "lookup" : "plain"] = { ...runRecord(m.last, ts, seen), n_drafted: m.last.n_drafted,
                                                 n_accepted: m.last.n_accepted, n_reused: m.last.n_reused };
    }
    runs.push(pair);
  }
  return { runs, workers: m.workers, timings: m.timings, memory: m.memory };
}

/** @type {any} */ (window).MoteBench = { mote, parallel, run, measureMessaging, lookup, wllama: benchWllama };
