// @ts-check
/**
 * The chat page: model picker, load progress, streaming chat with Stop, sampling settings,
 * tokens/s, licence notice. All inference runs in static/worker.js, or with the "Workers" setting
 * above 1 in a ParallelWorker (static/parallel.js: the model sharded over N workers, same
 * protocol); this file only talks the protocol in static/protocol.js and updates the DOM
 * (textContent only, never innerHTML).
 *
 * Workers: static/worker-count.js defaultWorkers(), unless the user chose a number (saved in
 * localStorage; it wins). A model decodes on one worker anyway when engine/shard.py cannot split its
 * architecture (GET /models says which it is) or its file is under MIN_PARALLEL_BYTES
 * (workersForModel; ?minParallelBytes=N overrides the floor, for tests). The status line says how
 * many workers are in use. The first boot waits for the model list, so it boots what Load will need
 * for the first model; changing the setting ends the current worker(s), and the model must be
 * loaded again.
 *
 * The conversation: answers are rendered from a Markdown subset as DOM nodes (static/markdown.js);
 * each user message has Edit and each answer Regenerate, which cut the conversation there and send
 * it again: the worker reuses its KV cache for the unchanged turns before (n_reused in done), so
 * only the changed turn on is computed. "New chat" clears the history and sends reset (the cache
 * is not reused). An optional system prompt (Settings) replaces the chat template's default one.
 * state.turns records, per answer, the time to first token and how much of the prompt was reused.
 *
 * window.moteApp.state is read by the Playwright tests (stages, timings, runtime info, last done).
 */
import { Req, Ev, STAGES, SAMPLING_KEYS, isMessage } from "./protocol.js";
import { ParallelWorker } from "./parallel.js";
import { renderMarkdown } from "./markdown.js";
import { clampWorkers, defaultWorkers, workersForModel, MAX_WORKERS, DEFAULT_MAX_WORKERS, GB_PER_WORKER,
         MIN_PARALLEL_BYTES } from "./worker-count.js";

const $ = (/** @type {string} */ id) => /** @type {any} */ (document.getElementById(id));

const state = {
  /** @type {Object<string, string>} */ stages: {},       // stage -> "active" | "done" | "failed"
  /** @type {Object<string, number>} */ timings: {},
  /** @type {any} */ runtime: null,                        // ready.info of the runtime-only boot
  /** @type {any} */ model: null,                          // ready.model of the loaded model
  /** @type {any[]} */ models: [],                         // GET /models
  /** @type {any} */ selected: null,
  /** @type {import("./protocol.js").ChatMessage[]} */ history: [],
  /** @type {any} */ lastDone: null,
  /** @type {{ttft_ms: number, n_prompt: number, n_reused: number, n_generated: number,
   *          prefill_tok_s: number, decode_tok_s: number, reason: string}[]} */ turns: [],
  /** @type {string|null} */ lastError: null,
  cached: false,
  /** @type {string|null} */ storeFailed: null,           // why the model could not be kept for offline use
  /** @type {any} */ memory: null,                         // worker memory at the last ready/done
  generating: false,
  loading: false,                                          // a model load is in flight
  nextId: 1,
  bootMs: 0,
  workers: 1,                                              // workers of the current worker object
  stoppedCount: 0,                                         // workers replaced after they failed
};

const WORKERS_KEY = "mote.workers";
/** The page's ?name=N as a number (NaN when absent or not a number): settings for tests. */
const queryNumber = (/** @type {string} */ name) => Number(new URLSearchParams(location.search).get(name) ?? NaN);

/** Files under this decode on one worker (MIN_PARALLEL_BYTES; ?minParallelBytes=N for tests). */
const MIN_BYTES = (() => {
  const v = queryNumber("minParallelBytes");
  return Number.isFinite(v) && v >= 0 ? v : MIN_PARALLEL_BYTES;
})();

/** Seconds a model read may go without a byte before it counts as stalled (?stallSeconds=N, for tests). */
const STALL = (() => {
  const v = queryNumber("stallSeconds");
  return Number.isFinite(v) && v > 0 ? { stall_s: v } : {};
})();

/** @type {Worker|ParallelWorker} */ let worker;
let t0 = performance.now();                                // when the current worker started booting
let currentId = 0;
/** @type {HTMLElement|null} */ let streamingEl = null;
let streamText = "";                                       // the answer so far, as streamed
let renderQueued = false;
let sentAt = 0;                                            // performance.now() when the request was sent
let firstTokenAt = 0;

/** @param {import("./protocol.js").Request} msg */
const send = (msg) => worker.postMessage(msg);

/** How long an idle worker may take to answer a PING before the page replaces it. */
const PING_TIMEOUT_MS = 10_000;
let pingTimer = 0;

/**
 * Before a request to a worker that should be idle: a PING, answered at once by a live worker
 * (before it starts on the request). A worker the browser terminated, or one stuck for good,
 * never answers: the page says so and starts a fresh one (workerStopped).
 */
function checkAlive() {
  clearTimeout(pingTimer);
  const w = worker;
  send({ type: Req.PING });
  pingTimer = window.setTimeout(() => {
    if (w === worker) workerStopped(`it did not answer for ${PING_TIMEOUT_MS / 1000} s (terminated, or out of memory)`);
  }, PING_TIMEOUT_MS);
}

/** The Workers setting, clamped to 1..MAX_WORKERS. */
const workersSetting = () => clampWorkers($("workers").value);

/** Workers to decode `model` (a GET /models entry) with: the setting, or 1 where sharding does not pay. */
function workersFor(/** @type {any} */ model) {
  return workersForModel(model, workersSetting(), MIN_BYTES);
}

/** End the current worker(s), if any, and boot `n`: a plain worker for 1, a ParallelWorker above. */
function startWorker(/** @type {number} */ n) {
  if (worker) worker.terminate();
  const w = n > 1 ? new ParallelWorker({ workers: n })
                  : new Worker(new URL("./worker.js", import.meta.url), { type: "module" });
  // events of a terminated worker still queued must not reach the page
  w.addEventListener("message", (/** @type {any} */ e) => { if (w === worker) onWorkerMessage(e); });
  w.addEventListener("error", (/** @type {any} */ e) => { if (w === worker) onWorkerError(e); });
  worker = w;
  state.workers = n;
  state.runtime = null;
  state.model = null;
  state.loading = false;
  if (streamingEl) dropStreaming();
  for (const s of STAGES) setStage(s, "");
  setStage("runtime", "active");
  setStatus(`starting ${n === 1 ? "1 worker" : `${n} workers`}…`);
  t0 = performance.now();
  setBusy(false);
}

function setStatus(/** @type {string} */ text) { $("status").textContent = text; }

function setStage(/** @type {string} */ stage, /** @type {string} */ how) {
  state.stages[stage] = how;
  const li = document.querySelector(`#stages li[data-stage="${stage}"]`);
  if (li) li.className = how;
}

function fmtBytes(/** @type {number} */ n) {
  return n >= 1e9 ? `${(n / 1e9).toFixed(2)} GB` : n >= 1e6 ? `${(n / 1e6).toFixed(1)} MB` : `${(n / 1e3).toFixed(0)} kB`;
}

/**
 * A message in the log. Turns of the conversation (index = its place in state.history) get a body
 * and an action: Edit on the user's, Regenerate on answers; errors are plain text.
 * @param {"user"|"assistant"|"error"} role @param {string} text @param {number} [index]
 */
function addMessage(role, text, index) {
  const el = document.createElement("div");
  el.className = `msg ${role}`;
  if (index === undefined) {
    el.textContent = text;
  } else {
    el.dataset.index = String(index);
    const body = document.createElement("div");
    body.className = "body";
    el.append(body);
    setBody(el, text);
    const action = document.createElement("button");
    action.type = "button";
    action.className = "action";
    action.textContent = role === "user" ? "Edit" : "Regenerate";
    action.title = role === "user" ? "Change this message and send the conversation again from here"
                                   : "Answer this turn again (the turns before are not recomputed)";
    action.addEventListener("click", () => (role === "user" ? editTurn : regenerateTurn)(index));
    el.append(action);
  }
  $("log").appendChild(el);
  $("log").scrollTop = $("log").scrollHeight;
  return el;
}

/** Show `text` in a turn: the user's as typed, an answer as Markdown. */
function setBody(/** @type {HTMLElement} */ el, /** @type {string} */ text) {
  const body = /** @type {HTMLElement} */ (el.querySelector(".body"));
  if (el.classList.contains("user")) body.textContent = text;
  else body.replaceChildren(renderMarkdown(text));
}

/** Re-render the streaming answer at most once per frame (Markdown is parsed whole each time). */
function queueRender() {
  if (renderQueued) return;
  renderQueued = true;
  requestAnimationFrame(() => {
    renderQueued = false;
    if (!streamingEl) return;
    setBody(streamingEl, streamText);
    $("log").scrollTop = $("log").scrollHeight;
  });
}

/**
 * The answer being streamed failed, or its worker ended: drop it, and give the question it answered
 * back to the composer (cut from the conversation), to send again.
 */
function dropStreaming() {
  if (!streamingEl) return;
  streamingEl.remove();
  streamingEl = null;
  const last = state.history.length - 1;
  if (last >= 0 && state.history[last].role === "user") {
    if (!$("prompt").value) $("prompt").value = state.history[last].content;
    truncateTo(last);
  }
}

/** Cut the conversation to its first `index` turns (history and log). */
function truncateTo(/** @type {number} */ index) {
  state.history.length = Math.min(state.history.length, index);
  let cut = false;
  for (const el of Array.from($("log").children)) {
    const i = /** @type {HTMLElement} */ (el).dataset.index;
    if (i !== undefined && Number(i) >= index) cut = true;
    if (cut) el.remove();
  }
}

/** Send the conversation as it stands and stream the answer into a new turn. */
function sendConversation() {
  streamText = "";
  streamingEl = addMessage("assistant", "", state.history.length);
  streamingEl.classList.add("streaming");
  currentId = state.nextId++;
  state.lastError = null;
  sentAt = performance.now();
  firstTokenAt = 0;
  setBusy(true);
  const system = $("system").value.trim();
  const messages = system ? [{ role: "system", content: system }, ...state.history] : state.history.slice();
  checkAlive();
  send({ type: Req.GENERATE, id: currentId, messages: /** @type {any} */ (messages), params: settings() });
}

/** Edit: the user's turn `index` goes back to the composer; it and everything after are cut. */
function editTurn(/** @type {number} */ index) {
  if (state.generating) return;
  $("prompt").value = state.history[index]?.content ?? "";
  truncateTo(index);
  $("prompt").focus();
}

/** Regenerate: answer turn `index` (an answer) again from the same conversation before it. */
function regenerateTurn(/** @type {number} */ index) {
  if (state.generating || !state.model) return;
  truncateTo(index);
  sendConversation();
}

function setBusy(/** @type {boolean} */ busy) {
  state.generating = busy;
  $("send-btn").disabled = busy || !state.model;
  $("prompt").disabled = !state.model;
  $("stop-btn").disabled = !busy;
  $("load-btn").disabled = busy || state.loading || !state.selected;
  for (const b of document.querySelectorAll("#log .action")) /** @type {HTMLButtonElement} */ (b).disabled = busy || !state.model;
}

/** What each kind of model (GET /models `kind`) does, for the picker and the line under it. */
const KIND = /** @type {Record<string, {label: string, note: string, placeholder: string}>} */ ({
  chat: { label: "chat", note: "Chat model: answers questions and requests, turn by turn.",
          placeholder: "Ask something…" },
  completion: { label: "completion", note: "Completion model: continues the text you write; it does not " +
                "answer requests (pick a chat model for that).", placeholder: "Write the start of a text…" },
});

/** The picked model's kind, size and licence under the picker. */
function showModel(/** @type {any} */ m) {
  const info = $("model-info");
  const kind = m && KIND[m.kind];
  info.hidden = !m;
  info.textContent = m ? [kind?.note, `${fmtBytes(m.size)} file`, m.architecture && `architecture ${m.architecture}`,
                          m.quantization].filter(Boolean).join(" · ") : "";
  showLicence(m);
}

function showLicence(/** @type {any} */ m) {
  const p = $("licence");
  p.textContent = "";
  const lic = m && m.licence;
  if (!lic) { p.hidden = true; return; }
  p.hidden = false;
  p.append(lic.notice || `Licence: ${lic.name}`);
  if (lic.url && /^https?:\/\//.test(lic.url)) {
    const a = document.createElement("a");
    a.href = lic.url; a.textContent = lic.name || lic.url; a.target = "_blank"; a.rel = "noopener noreferrer";
    p.append(" — ", a);
  }
}

// ---- worker events ----------------------------------------------------------------------------

function onWorkerMessage(/** @type {MessageEvent} */ event) {
  const ev = event.data;
  if (!isMessage(ev, Object.values(Ev))) return;
  switch (ev.type) {
    case Ev.PONG: clearTimeout(pingTimer); break;
    case Ev.PROGRESS: {
      const p = /** @type {import("./protocol.js").ProgressEvent} */ (ev);
      for (const s of p.early ? [] : STAGES) {       // every earlier stage is done by now (not so for a
        if (s === p.stage) break;                    // download while the runtime boots: early)
        if (state.stages[s] !== "done") setStage(s, "done");
      }
      setStage(p.stage, p.phase === "done" ? "done" : "active");
      if (p.phase === "store-failed") state.storeFailed = p.message || "the browser refused to store it";
      if (p.seconds !== undefined) state.timings[p.stage] = p.seconds;
      const bar = $("load-progress");
      if (p.total) {
        bar.hidden = false; bar.max = p.total; bar.value = p.loaded || 0;
        $("load-detail").textContent = `weights: ${p.phase} ${fmtBytes(p.loaded || 0)} / ${fmtBytes(p.total)}`;
      } else {
        $("load-detail").textContent = `${p.stage}: ${p.phase || ""}`;
      }
      break;
    }
    case Ev.READY: {
      const r = /** @type {import("./protocol.js").ReadyEvent} */ (ev);
      state.timings = { ...state.timings, ...r.timings };
      for (const s of STAGES.slice(0, 3)) setStage(s, "done");
      if (!state.runtime) {
        state.runtime = r.info;
        state.bootMs = performance.now() - t0;
        const ready = `ready in ${(state.bootMs / 1000).toFixed(1)} s`;
        setStatus(r.info.parallel ? `${r.info.workers} workers (Python + numpy in each) — ${ready}`
                                  : `1 worker: Python ${r.info.python}, numpy ${r.info.numpy}, engine ${r.info.engine} — ${ready}`);
      }
      if (r.model) {
        setStage("weights", "done");
        state.loading = false;
        state.model = r.model;
        state.cached = !!r.cached;
        state.memory = r.memory || null;
        $("load-progress").hidden = true;
        $("load-detail").textContent =
          `${r.model.name || state.selected?.name || "model"} loaded ${r.cached ? "from the offline cache" : "from the network"}` +
          (r.timings.weights !== undefined ? ` (${r.timings.weights.toFixed(1)} s fetch, ${(r.timings.model || 0).toFixed(1)} s load)` : "") +
          (state.storeFailed ? `. It runs for this visit but is not stored for offline use (${state.storeFailed}).` : "");
        $("prompt").placeholder = KIND[state.selected?.kind]?.placeholder ?? "Ask something…";
        setBusy(false);
        $("prompt").focus();
      }
      break;
    }
    case Ev.TOKEN: {
      const t = /** @type {import("./protocol.js").TokenEvent} */ (ev);
      if (t.id !== currentId || !streamingEl) break;
      if (!firstTokenAt) firstTokenAt = performance.now();
      streamText += t.text;
      queueRender();
      $("speed").textContent = `${t.n} tokens`;
      break;
    }
    case Ev.DONE: {
      const d = /** @type {import("./protocol.js").DoneEvent} */ (ev);
      if (d.id !== currentId) break;
      const ttft = (firstTokenAt || performance.now()) - sentAt;
      if (streamingEl) {                  // (none after "New chat" during the answer: nothing to keep)
        setBody(streamingEl, d.full_text);
        streamingEl.classList.remove("streaming");
        state.history.push({ role: "assistant", content: d.full_text });
        state.turns.push({ ttft_ms: ttft, n_prompt: d.n_prompt, n_reused: d.n_reused, n_generated: d.n_generated,
                           prefill_tok_s: d.prefill_tok_s, decode_tok_s: d.decode_tok_s, reason: d.reason });
      }
      state.lastDone = d;
      if (d.memory) state.memory = d.memory;
      if (d.reason !== "abort") {
        $("speed").textContent = `${d.n_generated} tokens · prefill ${d.prefill_tok_s.toFixed(1)} tok/s · decode ` +
          `${d.decode_tok_s.toFixed(1)} tok/s · ${d.reason} · first token ${(ttft / 1000).toFixed(2)} s` +
          (d.n_reused ? ` (${d.n_reused} of ${d.n_prompt} prompt tokens from the cache)` : "") +
          (d.n_drafted ? ` · ${d.n_accepted} of ${d.n_drafted} looked-up tokens kept` : "");
      } else {
        $("speed").textContent = `stopped after ${d.n_generated} tokens`;
      }
      streamingEl = null;
      setBusy(false);
      break;
    }
    case Ev.ERROR: {
      const e = /** @type {import("./protocol.js").ErrorEvent} */ (ev);
      state.lastError = e.message;
      if (e.fatal) { workerStopped(e.message); break; }
      if (e.id === undefined) state.loading = false;     // a load's error (generate errors carry an id)
      if (e.stage) setStage(e.stage, "failed");
      if (streamingEl) dropStreaming();
      addMessage("error", `Error${e.stage ? ` (${e.stage})` : ""}: ${e.message}`);
      $("load-progress").hidden = true;
      setBusy(false);
      break;
    }
  }
}

function onWorkerError(/** @type {ErrorEvent} */ e) {
  state.lastError = e.message || "the worker failed to start";
  if (!state.runtime) {                              // it never booted: say so, no restart loop
    addMessage("error", `Worker error: ${state.lastError}`);
    return;
  }
  workerStopped(state.lastError);
}

/**
 * The worker failed in a way that leaves it unusable (an uncaught error, or Python's runtime
 * fatally broken, e.g. out of memory): say what happened, start a fresh worker so the page stays
 * usable, and ask for the model to be loaded again.
 * @param {string} what
 */
function workerStopped(what) {
  const hadModel = !!state.model || state.loading;
  if (streamingEl) dropStreaming();
  state.stoppedCount++;
  addMessage("error", `The worker stopped: ${what}. A fresh one is starting` +
             (hadModel ? "; press Load to load the model again." : "."));
  startWorker(state.workers);
  send({ type: Req.LOAD });
}

// ---- user actions -----------------------------------------------------------------------------

/** The sampling settings the page has an input for (id = the key); empty: the engine's default. */
function settings() {
  /** @type {import("./protocol.js").SamplingSettings} */
  const out = {};
  for (const key of SAMPLING_KEYS) {
    const input = /** @type {HTMLInputElement|null} */ ($(key));
    if (!input) continue;
    if (input.type === "checkbox") { /** @type {any} */ (out)[key] = input.checked; continue; }   // speculative
    const raw = input.value.trim();
    out[key] = raw === "" ? null : Number(raw);
  }
  return out;
}

$("load-btn").addEventListener("click", () => {
  if (!state.selected) return;
  state.model = null;
  state.lastError = null;                           // lastError belongs to the latest request
  state.storeFailed = null;
  const n = workersFor(state.selected);
  if (n !== state.workers) startWorker(n);         // e.g. a small or atome model on a multi-worker setting
  else if (state.runtime) checkAlive();            // a booted worker: is it still there?
  state.loading = true;
  setBusy(false);
  setStage("weights", "active");
  const m = state.selected;                              // chunks: checked at native speed (model-source.js)
  send({ type: Req.LOAD, model: { url: m.url, sha256: m.sha256, size: m.size, name: m.name, ...(m.chunks ? { chunks: m.chunks } : {}), ...STALL } });
});

$("workers").addEventListener("change", () => {
  const n = workersSetting();
  $("workers").value = String(n);
  try { localStorage.setItem(WORKERS_KEY, String(n)); } catch { /* storage blocked: this tab only */ }
  const boot = state.selected ? workersFor(state.selected) : n;   // what Load will need
  if (boot === state.workers && !state.model && !state.loading) return;
  startWorker(boot);
  send({ type: Req.LOAD });
  $("load-detail").textContent = `Workers: ${n}. Press Load to load the model again.`;
});

$("model-select").addEventListener("change", () => {
  state.selected = state.models[Number($("model-select").value)] || null;
  showModel(state.selected);
  setBusy(false);
});

$("chat-form").addEventListener("submit", (/** @type {Event} */ e) => {
  e.preventDefault();
  const text = $("prompt").value.trim();
  if (!text || !state.model || state.generating) return;
  $("prompt").value = "";
  addMessage("user", text, state.history.length);
  state.history.push({ role: "user", content: text });
  sendConversation();
});

$("prompt").addEventListener("keydown", (/** @type {KeyboardEvent} */ e) => {
  if (e.key === "Enter" && !e.shiftKey) { e.preventDefault(); $("chat-form").requestSubmit(); }
});

$("stop-btn").addEventListener("click", () => send({ type: Req.ABORT, id: currentId }));

$("clear-btn").addEventListener("click", () => {
  if (state.generating) send({ type: Req.ABORT, id: currentId });
  send({ type: Req.RESET });
  state.history = [];
  state.turns = [];
  streamingEl = null;
  $("log").textContent = "";
  $("speed").textContent = "";
});

// ---- start ------------------------------------------------------------------------------------

async function loadModelList() {
  const sel = $("model-select");
  try {
    const r = await fetch("/models");
    if (!r.ok) throw new Error(`HTTP ${r.status}`);
    state.models = (await r.json()).filter((/** @type {any} */ m) => !m.error);
  } catch (e) {
    sel.textContent = "";
    sel.append(new Option(`model list unavailable (${e})`));
    return;
  }
  sel.textContent = "";
  if (!state.models.length) { sel.append(new Option("no models in the models folder")); return; }
  state.models.forEach((m, i) => {
    const label = [m.name, KIND[m.kind]?.label ?? m.architecture ?? "?", m.quantization || "?", fmtBytes(m.size),
                   m.licence?.name].filter(Boolean).join(" · ");
    sel.append(new Option(label, String(i)));
  });
  sel.disabled = false;
  state.selected = state.models[0];
  showModel(state.selected);
  setBusy(false);
}

if ("serviceWorker" in navigator && window.isSecureContext) {
  navigator.serviceWorker.register("/sw.js", { scope: "/" }).catch((e) => console.warn("service worker:", e));
}
let saved = null;
try { saved = localStorage.getItem(WORKERS_KEY); } catch { saved = null; }
$("workers").max = String(MAX_WORKERS);
$("workers").value = saved ?? String(defaultWorkers());   // the user's choice wins (see the file docstring)
$("workers").title = `Decoding workers, each with its own Python (more memory per worker). Default: one per ` +
  `core, at most ${DEFAULT_MAX_WORKERS} and one per ${GB_PER_WORKER} GB of memory (this device: ` +
  `${navigator.hardwareConcurrency || "?"} cores, so ${defaultWorkers()}). Atome models and files under ` +
  `${fmtBytes(MIN_BYTES)} always use 1. Changing it needs a fresh Load.`;
loadModelList().then(() => {
  startWorker(workersFor(state.selected));  // what Load will need for the first model
  // boot Python + numpy + engine while the user picks a model (?selfcheck: and the template bounds)
  send({ type: Req.LOAD, ...(new URLSearchParams(location.search).has("selfcheck") ? { self_check: true } : {}) });
});

/** For tests and the console: read-only view of the page state, the current worker, the workers rule. */
Object.defineProperty(window, "moteApp", {
  value: Object.freeze({ state, get worker() { return worker; }, send, workersFor }),
});
