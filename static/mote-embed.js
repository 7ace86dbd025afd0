// @ts-check
/**
 * Mote on any web page, with one script tag (classic script, no bundler, no globals but `Mote`):
 *
 *   <script src="https://HOST/static/mote-embed.js" data-model="https://HOST/models/x.gguf"
 *           data-target="#chat" data-title="Ask me"></script>
 *
 * With data-target: renders a chat widget inside a Shadow DOM on that element (load progress,
 * streaming answer, Stop). Without it: nothing visible, only the API on window.Mote:
 *
 *   const mote = await Mote.load("https://HOST/models/x.gguf", { onProgress, workers: 2 });   // workers: optional
 *   for await (const piece of mote.generate("Once upon a time", { temperature: 0, max_tokens: 32, signal })) ...
 *   const stream = await mote.chat.completions.create({ messages, stream: true });   // OpenAI-shaped chunks
 *   for await (const chunk of stream) chunk.choices[0].delta.content ...
 *   const completion = await mote.chat.completions.create({ messages });             // chat.completion + usage
 *   Mote.preload();   // (or data-preload on the tag) one worker boots now; the next one-worker load takes it
 *
 * Page -> worker path (see docs/EMBED.md for the host's CSP):
 *   this script (host page) -> Worker: static/worker.js directly when the host is Mote's own origin,
 *   else a one-line blob: module worker that imports the absolute worker URL (a page may not start
 *   a Worker from another origin's URL; protocol.js moduleWorker). worker.js resolves the runtime,
 *   wheels and manifest against its own URL, so everything comes from the Mote server, which must
 *   send CORS headers for the host's origin (`mote serve --cors-origin https://host.example`).
 *   No COOP/COEP is needed: no SharedArrayBuffer; Stop is cooperative (checked between tokens).
 *
 * Workers (`workers: N`, data-workers): above 1, the model is split over N workers by a
 * ParallelWorker (static/parallel.js, same protocol), whose shard workers start the same blob: way.
 * Default: static/worker-count.js, as on Mote's own page (files under MIN_PARALLEL_BYTES on one
 * worker); an explicit N applies to any file size. Either way a model engine/shard.py cannot split
 * is refused by the shard workers at its header (an error event with unsplittable: true), and is
 * loaded on one worker instead.
 *
 * Messages: only dedicated Workers (and, with several, MessageChannels between them) are used;
 * their messages cannot come from another origin or window. Each event is shape-checked (protocol.js isMessage) and routed by request id. This
 * script adds no window "message" listener, so window.postMessage from anyone reaches nothing here.
 * Text from the model is only ever put into the DOM with textContent.
 */
(() => {
  "use strict";

  const script = /** @type {HTMLScriptElement|null} */ (document.currentScript);
  /** .../static/ on the Mote server: where this script, worker.js and protocol.js live */
  const BASE = new URL(".", script && script.src ? script.src : location.href).href;

  /** @type {Promise<string>|null} */ let shellBase = null;
  /**
   * BASE under the Mote server's current version, .../static/v/<version>/ (web/app.py): there the
   * modules, the workers, the build manifest and the runtime are cached for good, so a later visit
   * starts without revalidating them one round trip after another. Asked once per page, beside the
   * model's HEAD; BASE itself where the host does not say (a static host serving static/ as files).
   * @returns {Promise<string>}
   */
  const base = () => shellBase ??= fetch(BASE + "shell.json", { cache: "no-store" })
    .then((r) => (r.ok ? r.json() : null))
    .then((j) => (typeof j?.version === "string" && /^[0-9a-f]{1,64}$/.test(j.version) ? `${BASE}v/${j.version}/` : BASE))
    .catch(() => BASE);
  /** A module of the Mote server; a module import is a CORS request, so a failure says what to allow. */
  const importFromMote = async (/** @type {string} */ file) => {
    const from = await base();
    return import(from + file).catch((e) => {
      throw new Error(`Mote: cannot load ${from}${file} (${e && e.message || e}); the Mote server must allow `
        + `this page's origin: mote serve --cors-origin ${location.origin}`);
    });
  };
  /** @type {Map<string, Promise<any>>} */ const modules = new Map();
  /** A module of the Mote server, imported once (a failed import is tried again by a later call). */
  const moteModule = (/** @type {string} */ file) => {
    if (!modules.has(file)) modules.set(file, importFromMote(file).catch((e) => { modules.delete(file); throw e; }));
    return /** @type {Promise<any>} */ (modules.get(file));
  };
  /** @returns {Promise<typeof import("./protocol.js")>} */ const protocol = () => moteModule("protocol.js");
  /** @returns {Promise<typeof import("./worker-count.js")>} */ const workerCount = () => moteModule("worker-count.js");
  /** @returns {Promise<typeof import("./parallel.js")>} */ const parallel = () => moteModule("parallel.js");

  // ---- model reference: url + sha256 + size (the worker verifies the download against them) ---

  /**
   * @param {string|{url: string, sha256?: string, size?: number, name?: string}} model
   * @param {{sha256?: string, size?: number, name?: string}} opts
   * @returns {Promise<import("./protocol.js").ModelRef>}
   */
  async function resolveModel(model, opts) {
    const given = typeof model === "string" ? { url: model } : { ...model };
    const url = new URL(given.url, location.href).href;           // absolute: the worker may be a blob:
    const name = given.name || opts.name || decodeURIComponent(url.split("/").pop() || "model").replace(/\.gguf$/, "");
    let sha256 = given.sha256 || opts.sha256, size = given.size ?? opts.size;
    let chunks = /** @type {any} */ (given).chunks;
    if (!sha256 || size === undefined) {
      // The Mote server's strong ETag is the file's sha256, and Content-Length its size (both readable
      // cross-origin: the server exposes ETag). Other static hosts: pass {sha256, size} (data-sha256/-size).
      // A model of the Mote server this script came from has its chunk list at <url>/chunks (web/app.py):
      // asked for beside the HEAD, not one round trip after it, and used only if the HEAD names it.
      const pinned = Boolean(given.sha256 || opts.sha256);
      const at = new URL(url);
      const guess = !chunks && !pinned && at.origin === new URL(BASE).origin && /^\/models\/[^/]+$/.test(at.pathname)
        ? `${url}/chunks` : null;
      const early = guess ? fetchJson(guess) : null;
      let r;
      try {
        r = await fetch(url, { method: "HEAD", cache: "no-store" });
      } catch (e) {
        throw new Error(`Mote: cannot reach ${url} (${e}); is the Mote server up, and does it allow this `
          + `page's origin (mote serve --cors-origin ${location.origin})?`);
      }
      if (!r.ok) throw new Error(`Mote: HEAD ${url}: HTTP ${r.status}`);
      const etag = (r.headers.get("ETag") || "").replace(/^W\//, "").replace(/"/g, "");
      sha256 = sha256 || (/^[0-9a-f]{64}$/.test(etag) ? etag : undefined);
      size = size ?? (r.headers.get("Content-Length") !== null ? Number(r.headers.get("Content-Length")) : undefined);
      if (!sha256 || size === undefined || !Number.isFinite(size)) {
        throw new Error(`Mote: ${url} has no sha256 ETag or no Content-Length; pass {sha256, size} `
          + `(data-sha256 and data-size on the script tag)`);
      }
      // A Mote server: the file's chunk list, when the sha256 is the server's word too (a sha256 the
      // page pinned is checked against the whole file, not against anything the server says)
      const listed = r.headers.get("X-Mote-Chunks");
      const where = listed ? new URL(listed, url).href : null;
      if (!chunks && where && !pinned) chunks = await chunkList(where === guess ? early : fetchJson(where), String(sha256));
    }
    if (!/^[0-9a-f]{64}$/.test(String(sha256))) throw new Error(`Mote: sha256 must be 64 hex digits, got ${sha256}`);
    return { url, sha256: String(sha256), size: Number(size), name, ...(chunks ? { chunks } : {}) };
  }

  /**
   * A Mote server's chunk list for the file whose sha256 is `sha256` (the worker then checks the file
   * chunk by chunk at the browser's native speed, model-source.js), or undefined: any failure only
   * costs that speed, as the whole file is hashed instead.
   * @param {Promise<any>} got  the chunk list's JSON (fetchJson) @param {string} sha256
   */
  async function chunkList(got, sha256) {
    const body = await got;
    return body?.sha256 === sha256 ? body.chunks : undefined;
  }

  /** The JSON at `url` (uncached), or null. @param {string} url @returns {Promise<any>} */
  const fetchJson = (url) => fetch(url, { cache: "no-store" })
    .then((r) => (r.ok ? r.json() : null))
    .catch(() => null);

  // ---- the worker(s) ---------------------------------------------------------------------------

  /**
   * How many workers decode `ref`: `workers` if given, else worker-count.js defaultWorkers() for
   * files of MIN_PARALLEL_BYTES and more (its architecture is not known here: see Mote.load).
   * @param {typeof import("./worker-count.js")} wc @param {import("./protocol.js").ModelRef} ref
   * @param {number|string|undefined} workers  the option or data-workers attribute
   */
  function chooseWorkers(wc, ref, workers) {
    const given = workers !== undefined && workers !== null && workers !== "";
    const wanted = given ? Number(workers) : wc.defaultWorkers();
    if (!Number.isInteger(wanted) || wanted < 1) throw new TypeError(`Mote: workers must be a whole number from 1, got ${workers}`);
    return wc.workersForModel({ size: ref.size }, wanted, given ? 0 : wc.MIN_PARALLEL_BYTES);
  }

  const abortError = (/** @type {AbortSignal|undefined} */ signal) =>
    signal && signal.reason instanceof Error ? signal.reason : new DOMException("generation aborted", "AbortError");

  const FINISH = /** @type {Object<string, string>} */ ({ eos: "stop", stop: "stop", length: "length" });

  /** OpenAI's usage object for a done event (cached_tokens: prompt tokens reused from the KV cache;
   *  accepted/rejected_prediction_tokens: prompt lookup's drafted tokens kept and refused). */
  const usage = (/** @type {any} */ done) => ({
    prompt_tokens: done.n_prompt, completion_tokens: done.n_generated, total_tokens: done.n_prompt + done.n_generated,
    prompt_tokens_details: { cached_tokens: done.n_reused },
    completion_tokens_details: { accepted_prediction_tokens: done.n_accepted,
                                 rejected_prediction_tokens: done.n_drafted - done.n_accepted },
  });

  let nextModelId = 1;

  /** What the page is told when worker.js cannot start. @param {any} e an error event @param {string} from */
  const workerFailed = (e, from) => `Mote: the worker failed (${e.message || "could not load " + new URL("worker.js", from).href}). `
    + `Cross-origin use needs the Mote server to allow ${location.origin} (mote serve --cors-origin ${location.origin}) `
    + `and this page's CSP to allow worker-src blob: and script-src ${new URL(BASE).origin} 'wasm-unsafe-eval'.`;

  /**
   * worker.js, booting at once (a load request without a model), its messages kept until a MoteModel
   * takes it over: `stop()` hands them over and stops keeping them; `failed` is set if the worker
   * could not start.
   * @param {typeof import("./protocol.js")} P @param {string} from
   */
  function startWorker(P, from, modelSnapshot = false) {
    const worker = P.moduleWorker(new URL("worker.js", from), "mote");
    /** @type {any[]} */ const kept = [];
    const keep = (/** @type {MessageEvent} */ e) => { kept.push(e.data); };
    const out = {
      worker, /** @type {string|null} */ failed: null,
      stop() { worker.removeEventListener("message", keep); worker.removeEventListener("error", fail); return kept; },
    };
    const fail = (/** @type {any} */ e) => { out.failed = workerFailed(e, from); };
    worker.addEventListener("message", keep);
    worker.addEventListener("error", fail);
    // (modelSnapshot: the worker may start from its saved model snapshot, static/worker.js)
    worker.postMessage({ type: P.Req.LOAD, ...(modelSnapshot ? { model_snapshot: true } : {}) });
    return out;
  }

  /** @type {Promise<{started: ReturnType<typeof startWorker>, modelSnapshot: boolean}>|null} the worker Mote.preload started */
  let preloaded = null;

  /** Mote.preload's worker for a load with `modelSnapshot`, taken (a later load starts its own); null
   *  if there is none, or it booted for the other kind (then it is ended). @param {boolean} modelSnapshot */
  async function takePreloaded(modelSnapshot) {
    const waiting = preloaded;
    preloaded = null;
    const got = waiting && await waiting.catch(() => null);
    if (!got) return null;
    if (got.modelSnapshot === modelSnapshot) return got.started;
    got.started.worker.terminate();
    return null;
  }

  /** One loaded model in its own worker(s). Requests run one at a time, in call order. */
  class MoteModel {
    /**
     * @param {typeof import("./protocol.js")} P @param {typeof import("./parallel.js")|null} par  (workers > 1)
     * @param {import("./protocol.js").ModelRef} ref @param {number} workers  1: worker.js; more: a ParallelWorker
     * @param {string} from  where worker.js is (base())
     * @param {ReturnType<typeof startWorker>|null} [started]  a worker.js already booting (Mote.load), for one worker
     */
    constructor(P, par, ref, workers, from, started = null) {
      this.P = P;
      this.ref = ref;
      this.model = ref.name;                 // OpenAI's `model` field
      /** @type {any} */ this.info = null;   // ready.model (name, architecture, n_ctx, ...)
      /** @type {any} */ this.runtime = null;
      /** @type {any} */ this.timings = null;
      /** @type {any} */ this.memory = null;
      /** @type {any} */ this.last = null;   // the last done event (token_ids, speeds, memory)
      this.cached = false;
      this._id = (nextModelId++) * 1_000_000;
      /** @type {Map<number, (ev: any) => void>} */ this._routes = new Map();
      /** @type {((ev: any) => void)|null} */ this._loadRoute = null;
      this._tail = Promise.resolve();        // request queue
      this.workers = workers;                // how many decode this model (each boots its own Python)
      const worker = par && workers > 1 ? new par.ParallelWorker({ workers })
                                 : started ? started.worker : P.moduleWorker(new URL("worker.js", from), "mote");
      /** @type {Worker|import("./parallel.js").ParallelWorker} */ this.worker = worker;
      this._startError = null;
      worker.addEventListener("message", (event) => this._route(/** @type {MessageEvent} */ (event).data));
      worker.addEventListener("error", (/** @type {any} */ e) => this._fail(workerFailed(e, from)));
      this.chat = { completions: { create: (/** @type {any} */ req) => this._createCompletion(req) } };
      /** @type {any[]} */ this._early = started ? started.stop() : [];   // what it said before this model listened
      if (started?.failed) this._startError = started.failed;             // _load reports it
    }

    /** @param {any} data */
    _route(data) {
      if (!this.P.isMessage(data, Object.values(this.P.Ev))) return;
      const ev = /** @type {any} */ (data);
      const route = typeof ev.id === "number" ? this._routes.get(ev.id) : undefined;
      const Ev = this.P.Ev;
      if (route) route(ev);
      else if (this._loadRoute && [Ev.PROGRESS, Ev.READY, Ev.ERROR].includes(ev.type)) this._loadRoute(ev);
    }

    /** @param {string} message */
    _fail(message) {
      this._startError = message;
      const ev = { type: this.P.Ev.ERROR, message };
      if (this._loadRoute) this._loadRoute(ev);
      for (const route of this._routes.values()) route(ev);
    }

    /** @param {((p: any) => void)|undefined} onProgress @param {number|undefined} n_ctx @param {string|undefined} layout
     *  @param {boolean} [modelSnapshot] */
    _load(onProgress, n_ctx, layout, modelSnapshot) {
      return new Promise((resolve, reject) => {
        this._loadRoute = (ev) => {
          if (ev.type === this.P.Ev.PROGRESS) { if (onProgress) try { onProgress(ev); } catch (e) { console.error(e); } return; }
          if (ev.type === this.P.Ev.READY && !ev.model) return;   // the boot's own (Mote.load started it early)
          this._loadRoute = null;
          if (ev.type === this.P.Ev.ERROR) {
            const err = new Error(ev.stage ? `${ev.stage}: ${ev.message}` : ev.message);
            reject(Object.assign(err, { unsplittable: !!ev.unsplittable }));
            return;
          }
          this.info = ev.model; this.runtime = ev.info; this.timings = ev.timings;
          this.memory = ev.memory || null; this.cached = !!ev.cached;
          if (ev.model && ev.model.name) this.model = ev.model.name;
          resolve(this);
        };
        for (const ev of this._early.splice(0)) this._route(ev);
        if (this._startError) { this._fail(this._startError); return; }
        this.worker.postMessage({ type: this.P.Req.LOAD, model: this.ref, ...(n_ctx ? { n_ctx } : {}), ...(layout ? { layout } : {}),
                                  ...(modelSnapshot ? { model_snapshot: true } : {}) });
      });
    }

    /**
     * Protocol events of one generate request: token* then done (ends the iteration).
     * An error event throws; `signal` aborts (throws AbortError); leaving the loop early aborts too.
     * @param {{prompt?: string, messages?: any[]}} request @param {any} params @param {AbortSignal} [signal]
     */
    async *events(request, params, signal) {
      if (signal && signal.aborted) throw abortError(signal);
      const prev = this._tail;
      /** @type {() => void} */ let release = () => {};
      this._tail = new Promise((r) => { release = r; });
      await prev;
      const id = ++this._id;
      /** @type {any[]} */ const queue = [];
      /** @type {(() => void)|null} */ let wake = null;
      let finished = false;
      /** @type {(v?: any) => void} */ let settle = () => {};
      const settled = new Promise((r) => { settle = r; });
      this._routes.set(id, (ev) => {
        if (ev.type === this.P.Ev.DONE || ev.type === this.P.Ev.ERROR) { finished = true; settle(); }
        queue.push(ev);
        if (wake) wake();
      });
      const abort = () => this.worker.postMessage({ type: this.P.Req.ABORT, id });
      let started = false;
      if (signal) signal.addEventListener("abort", abort);
      try {
        if (this._startError) throw new Error(this._startError);
        if (signal && signal.aborted) throw abortError(signal);   // aborted while queued
        this.worker.postMessage({ type: this.P.Req.GENERATE, id, ...request, params });
        started = true;
        for (;;) {
          while (!queue.length) await new Promise((r) => { wake = () => { wake = null; r(undefined); }; });
          const ev = queue.shift();
          if (ev.type === this.P.Ev.ERROR) throw new Error(ev.message);
          if (ev.type === this.P.Ev.DONE) {
            this.last = ev;
            if (ev.memory) this.memory = ev.memory;
            if (ev.reason === "abort" && signal && signal.aborted) throw abortError(signal);
          }
          yield ev;
          if (ev.type === this.P.Ev.DONE) return;
        }
      } finally {
        if (signal) signal.removeEventListener("abort", abort);
        if (started && !finished && !this._startError) { abort(); await settled; }   // the worker is free again
        this._routes.delete(id);
        release();
      }
    }

    /**
     * Text pieces of a completion: `prompt` is raw text (no chat template), or an array of
     * {role, content} messages (the model's chat template).
     * @param {string|any[]} prompt
     * @param {import("./protocol.js").SamplingSettings & {signal?: AbortSignal}} [opts]  protocol.js SAMPLING_KEYS
     */
    async *generate(prompt, opts = {}) {
      const { signal, ...params } = opts;
      const request = Array.isArray(prompt) ? { messages: checkMessages(prompt) } : { prompt: String(prompt) };
      for await (const ev of this.events(request, samplingParams(params, this.P.SAMPLING_KEYS), signal)) {
        if (ev.text) yield ev.text;               // token text, then the done event's held-back tail
      }
    }

    /**
     * OpenAI-style chat completion: a chat.completion, or (stream: true) async chat.completion.chunk's.
     * A call whose messages extend the previous call's (the next turn) reuses the KV cache for them:
     * usage.prompt_tokens_details.cached_tokens says how many prompt tokens were not computed again.
     */
    async _createCompletion(/** @type {any} */ req) {
      if (!req || !Array.isArray(req.messages)) throw new TypeError("chat.completions.create needs {messages: [...]}");
      if (req.n !== undefined && req.n !== 1) throw new TypeError(`n=${req.n}: only n=1 is supported`);
      if (req.stop !== undefined && req.stop !== null) throw new TypeError("stop strings are not supported yet (the chat template's own stops apply)");
      const messages = checkMessages(req.messages);
      const params = samplingParams({
        temperature: req.temperature, top_p: req.top_p, top_k: req.top_k, seed: req.seed,
        max_tokens: req.max_completion_tokens ?? req.max_tokens, speculative: req.speculative,
      }, this.P.SAMPLING_KEYS);
      const id = `chatcmpl-${Math.random().toString(36).slice(2)}${Date.now().toString(36)}`;
      const created = Math.floor(Date.now() / 1000);
      const model = req.model || this.model;
      const events = this.events({ messages }, params, req.signal);
      if (!req.stream) {
        let done = null;
        for await (const ev of events) if (ev.type === this.P.Ev.DONE) done = ev;
        return {
          id, object: "chat.completion", created, model,
          choices: [{ index: 0, message: { role: "assistant", content: done.full_text }, logprobs: null,
                      finish_reason: FINISH[done.reason] || "stop" }],
          usage: usage(done),
        };
      }
      const includeUsage = !!(req.stream_options && req.stream_options.include_usage);
      const P = this.P;
      const chunk = (/** @type {any} */ delta, /** @type {string|null} */ finish) => ({
        id, object: "chat.completion.chunk", created, model,
        choices: [{ index: 0, delta, logprobs: null, finish_reason: finish }],
      });
      async function* chunks() {
        yield chunk({ role: "assistant", content: "" }, null);
        for await (const ev of events) {
          if (ev.type !== P.Ev.DONE) { if (ev.text) yield chunk({ content: ev.text }, null); continue; }
          if (ev.text) yield chunk({ content: ev.text }, null);
          yield chunk({}, FINISH[ev.reason] || "stop");
          if (includeUsage) {
            yield { id, object: "chat.completion.chunk", created, model, choices: [],
                    usage: usage(ev) };
          }
        }
      }
      const it = chunks();
      // like the OpenAI SDK's Stream: async-iterable, and .controller.abort() stops it
      return Object.assign(it, { controller: { abort: () => it.return(undefined) } });
    }

    /** Stop the running generation (its iterator ends, or throws AbortError if it had a signal). */
    abort() { for (const id of this._routes.keys()) this.worker.postMessage({ type: this.P.Req.ABORT, id }); }

    /** End the worker(s) and free their memory; this object can no longer generate. */
    terminate() { this.worker.terminate(); this._fail("Mote: this model was terminated"); }
  }

  /** @param {any[]} messages */
  function checkMessages(messages) {
    return messages.map((m, i) => {
      if (!m || !["system", "user", "assistant"].includes(m.role)) throw new TypeError(`messages[${i}].role must be system, user or assistant`);
      let content = m.content;
      if (Array.isArray(content)) {             // OpenAI content parts: keep the text ones
        content = content.filter((p) => p && p.type === "text").map((p) => String(p.text)).join("");
      }
      if (typeof content !== "string") throw new TypeError(`messages[${i}].content must be a string`);
      return { role: m.role, content };
    });
  }

  /**
   * Only the settings the engine knows (`keys`: protocol.js SAMPLING_KEYS); undefined/null dropped.
   * @param {Object<string, any>} p @param {readonly string[]} keys
   */
  function samplingParams(p, keys) {
    /** @type {Object<string, number>} */ const out = {};
    for (const [key, value] of Object.entries(p)) {
      if (value === undefined || value === null) continue;
      if (!keys.includes(key)) throw new TypeError(`unknown setting ${key} (known: ${keys.join(", ")}, signal)`);
      const v = Number(value);
      if (!Number.isFinite(v)) throw new TypeError(`${key} must be a number, got ${value}`);
      out[key] = v;
    }
    return out;
  }

  // ---- the widget ------------------------------------------------------------------------------

  const CSS = `
:host { display: block; }
.mote { all: initial; box-sizing: border-box; display: flex; flex-direction: column; gap: 8px;
  font: 14px/1.45 system-ui, -apple-system, "Segoe UI", sans-serif; color: #1d2127; background: #fff;
  border: 1px solid #d5d9e0; border-radius: 10px; padding: 10px; min-height: 220px; max-height: 100%; }
.mote * { box-sizing: border-box; font: inherit; color: inherit; margin: 0; }
.title { font-weight: 600; font-size: 15px; }
.status { font-size: 12px; color: #5b6470; }
progress { width: 100%; height: 6px; }
.log { flex: 1; overflow-y: auto; display: flex; flex-direction: column; gap: 6px; min-height: 80px; }
.msg { padding: 6px 9px; border-radius: 8px; white-space: pre-wrap; overflow-wrap: anywhere; max-width: 92%; }
.user { align-self: flex-end; background: #e3ecff; }
.assistant { align-self: flex-start; background: #f2f3f5; }
.error { align-self: stretch; background: #fde8e8; color: #8a1c1c; }
form { display: flex; gap: 6px; }
textarea { flex: 1; resize: none; min-height: 38px; padding: 6px 8px; border: 1px solid #c5cad3; border-radius: 6px; background: #fff; }
button { padding: 6px 12px; border-radius: 6px; border: 1px solid #3b63c4; background: #3b63c4; color: #fff; cursor: pointer; }
button.stop { background: #fff; color: #3b63c4; }
button:disabled { opacity: .45; cursor: default; }
`;

  /** @type {CSSStyleSheet|null} */ let sheet = null;

  /**
   * A chat widget on `target` (an element or a selector), in its own shadow root.
   * @param {Element|string} target
   * @param {{model: string, title?: string, sha256?: string, size?: number, temperature?: number,
   *          max_tokens?: number, placeholder?: string, workers?: number}} options
   */
  function mount(target, options) {
    const hostEl = typeof target === "string" ? document.querySelector(target) : target;
    if (!hostEl) throw new Error(`Mote: data-target ${target} matches no element`);
    const root = hostEl.attachShadow({ mode: "open" });
    if ("adoptedStyleSheets" in root) {         // constructed sheets: no inline <style>, no CSP style-src needed
      sheet = sheet || new CSSStyleSheet();
      if (!sheet.cssRules.length) sheet.replaceSync(CSS);
      root.adoptedStyleSheets = [sheet];
    } else {
      const style = document.createElement("style");
      style.textContent = CSS;
      root.append(style);
    }
    const el = (/** @type {string} */ tag, /** @type {string} */ cls, /** @type {string} */ text = "") => {
      const e = document.createElement(tag);
      if (cls) e.className = cls;
      if (text) e.textContent = text;
      return e;
    };
    const box = el("div", "mote");
    const title = el("div", "title", options.title || "Ask me");
    const status = el("div", "status", "Loading…");
    const bar = /** @type {HTMLProgressElement} */ (el("progress", "bar"));
    const log = el("div", "log");
    const form = el("form", "");
    const input = /** @type {HTMLTextAreaElement} */ (el("textarea", "prompt"));
    input.placeholder = options.placeholder || "Loading the model…";
    input.disabled = true;
    input.setAttribute("aria-label", "Message");
    const send = /** @type {HTMLButtonElement} */ (el("button", "send", "Send"));
    send.type = "submit"; send.disabled = true;
    const stop = /** @type {HTMLButtonElement} */ (el("button", "stop", "Stop"));
    stop.type = "button"; stop.disabled = true;
    form.append(input, send, stop);
    box.append(title, status, bar, log, form);
    root.append(box);

    const widget = {
      element: hostEl, root,
      /** @type {"loading"|"ready"|"generating"|"error"} */ state: "loading",
      /** @type {MoteModel|null} */ mote: null,
      /** @type {any} */ last: null,         // the last done event
      /** @type {string|null} */ error: null,
      /** @type {{role: string, content: string}[]} */ history: [],
    };
    const setState = (/** @type {typeof widget.state} */ s) => { widget.state = s; box.dataset.state = s; };
    setState("loading");
    const addMsg = (/** @type {string} */ role, /** @type {string} */ text) => {
      const m = el("div", `msg ${role}`, text);
      log.append(m);
      log.scrollTop = log.scrollHeight;
      return m;
    };
    const fail = (/** @type {any} */ e) => {
      widget.error = String(e && e.message || e);
      addMsg("error", widget.error);
      status.textContent = "Error";
      bar.hidden = true;
      setState("error");
    };

    /** @type {AbortController|null} */ let controller = null;
    form.addEventListener("submit", async (e) => {
      e.preventDefault();
      const text = input.value.trim();
      if (!text || !widget.mote || widget.state !== "ready") return;
      input.value = "";
      addMsg("user", text);
      widget.history.push({ role: "user", content: text });
      const answer = addMsg("assistant", "");
      controller = new AbortController();
      setState("generating");
      send.disabled = true; stop.disabled = false;
      let content = "";
      try {
        const stream = await widget.mote.chat.completions.create({
          messages: widget.history.slice(), stream: true, signal: controller.signal,
          temperature: options.temperature, max_tokens: options.max_tokens,
        });
        for await (const chunk of stream) {
          const delta = chunk.choices[0] && chunk.choices[0].delta.content;
          if (delta) { content += delta; answer.textContent = content; log.scrollTop = log.scrollHeight; }
        }
        const d = widget.mote.last;
        status.textContent = `${d.n_generated} tokens · ${d.decode_tok_s.toFixed(1)} tok/s`;
      } catch (err) {
        if (/** @type {any} */ (err).name !== "AbortError") { fail(err); return; }
        status.textContent = `Stopped after ${widget.mote.last ? widget.mote.last.n_generated : 0} tokens`;
      } finally {
        controller = null;
        stop.disabled = true;
      }
      widget.history.push({ role: "assistant", content });
      widget.last = widget.mote.last;
      send.disabled = false;
      setState("ready");
      input.focus();
    });
    input.addEventListener("keydown", (e) => {
      if (e.key === "Enter" && !e.shiftKey) { e.preventDefault(); form.requestSubmit(); }
    });
    stop.addEventListener("click", () => { if (controller) controller.abort(); });

    const onProgress = (/** @type {any} */ p) => {
      if (p.total) { bar.max = p.total; bar.value = p.loaded || 0; }
      const pct = p.total ? ` ${Math.round(100 * (p.loaded || 0) / p.total)}%` : "";
      status.textContent = `Loading ${p.stage}${p.phase && p.phase !== "start" ? ` (${p.phase})` : ""}${pct}`;
    };
    if (!options.model) { fail(new Error("Mote: the script tag has no data-model")); return widget; }
    Mote.load(options.model, { onProgress, sha256: options.sha256, size: options.size, workers: options.workers }).then((mote) => {
      widget.mote = mote;
      bar.hidden = true;
      status.textContent = `${mote.model} ready${mote.cached ? " (offline copy)" : ""}`
        + (mote.workers > 1 ? ` · ${mote.workers} workers` : "");
      input.disabled = false; send.disabled = false;
      input.placeholder = options.placeholder || "Ask something…";
      setState("ready");
    }, fail);
    return widget;
  }

  // ---- window.Mote ----------------------------------------------------------------------------

  const Mote = {
    version: "0.1.0",
    base: BASE,
    /**
     * Start the worker(s) and load a model into them; `workers` as in the file docstring. A model
     * the shard workers refuse to split is loaded again on one worker.
     * @param {string|{url: string, sha256?: string, size?: number, name?: string}} model
     * @param {{onProgress?: (p: any) => void, sha256?: string, size?: number, name?: string, n_ctx?: number,
     *          workers?: number, layout?: "packed"|"compact"|"int8", modelSnapshot?: boolean}} [opts]
     *   modelSnapshot: a later load of this model starts from a snapshot of the worker's memory (on
     *   several workers, of each one's) taken after this one (faster to be ready; costs storage and,
     *   while it is taken and read, memory the size of the workers' heaps: docs/EMBED.md)
     */
    async load(model, opts = {}) {
      const resolving = resolveModel(model, opts);
      resolving.catch(() => {});                       // awaited below
      const [P, wc, from] = await Promise.all([protocol(), workerCount(), base()]);
      // A worker Mote.preload started is taken if it booted for the same kind of load. Otherwise, when
      // one worker is the answer whatever the model turns out to be (one asked for, or the default
      // here, or a size given that is too small to split), one starts booting Python now, while the
      // model's HEAD and chunk list are fetched, as the chat page boots its worker at open.
      const given = typeof model === "object" && model !== null ? model.size ?? opts.size : opts.size;
      let started = await takePreloaded(Boolean(opts.modelSnapshot))
        ?? (chooseWorkers(wc, { size: given ?? Infinity }, opts.workers) === 1 ? startWorker(P, from, Boolean(opts.modelSnapshot)) : null);
      let ref;
      try {
        ref = await resolving;
      } catch (e) {
        started?.worker.terminate();
        throw e;
      }
      let workers = chooseWorkers(wc, ref, opts.workers);
      if (workers > 1 && started) {                    // a preloaded worker, and the model goes to several
        started.worker.terminate();
        started = null;
      }
      for (;;) {
        // (started only where one worker was certain, so it is never beside a ParallelWorker)
        const m = new MoteModel(P, workers > 1 ? await parallel() : null, ref, workers, from, started);
        started = null;
        try {
          return await m._load(opts.onProgress, opts.n_ctx, opts.layout, opts.modelSnapshot);
        } catch (e) {
          m.worker.terminate();
          if (!(workers > 1 && /** @type {any} */ (e).unsplittable)) throw e;
          workers = 1;
        }
      }
    },
    /**
     * Start one worker booting Python now, before any model is named, for the next Mote.load on one
     * worker: that load then finds the runtime up, or on its way (docs/EMBED.md). It costs what a
     * booted worker holds (~50 MB) whether or not a model follows; a load that goes to several workers,
     * or asks for a model snapshot when this did not (or the reverse), ends it and starts its own.
     * Calling it again while one waits does nothing. Resolves once the worker is started.
     * @param {{modelSnapshot?: boolean}} [opts]  as Mote.load's, for the load that will take it
     */
    async preload(opts = {}) {
      preloaded ??= Promise.all([protocol(), base()])
        .then(([P, from]) => ({ started: startWorker(P, from, Boolean(opts.modelSnapshot)), modelSnapshot: Boolean(opts.modelSnapshot) }));
      preloaded.catch(() => { preloaded = null; });    // the load that follows reports what failed
      await preloaded.then(() => {}, () => {});
    },
    mount,
    /** @type {any[]} widgets rendered from script tags or mount() (state, last done event, error) */
    widgets: [],
  };
  const mountAndRecord = (/** @type {Element|string} */ t, /** @type {any} */ o) => {
    const w = mount(t, o);
    Mote.widgets.push(w);
    return w;
  };
  Mote.mount = mountAndRecord;

  if (!("Mote" in window)) Object.defineProperty(window, "Mote", { value: Object.freeze(Mote), enumerable: true });

  // ---- the script tag --------------------------------------------------------------------------
  const data = script ? script.dataset : {};
  if (data.preload !== undefined && !data.target) Mote.preload();   // data-preload: as Mote.preload()
  if (data.target) {
    const num = (/** @type {string|undefined} */ s) => (s === undefined || s === "" ? undefined : Number(s));
    const options = {
      model: data.model || "", title: data.title, sha256: data.sha256, size: num(data.size),
      temperature: num(data.temperature), max_tokens: num(data.maxTokens), placeholder: data.placeholder,
      workers: num(data.workers),
    };
    const go = () => { Mote.mount(/** @type {string} */ (data.target), options); };
    if (document.readyState === "loading") document.addEventListener("DOMContentLoaded", go, { once: true });
    else go();
  }
})();
