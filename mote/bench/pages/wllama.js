// @ts-check
/**
 * wllama (llama.cpp in WebAssembly, single-threaded like Mote: no COOP/COEP) on the benchmark page:
 * fetch the GGUF into a Blob (download_s), load it (init_s; ready_s: both and the ESM import), then every prompt greedy, with
 * llama.cpp's own timings. Its ESM and wasm are served from /wllama/ by the benchmark's app
 * (scripts/setup_wllama.sh installs them), so it is imported only when asked for.
 * @param {string} url @param {string[]} prompts @param {number} n @param {number|null} nCtx
 */
export async function benchWllama(url, prompts, n, nCtx) {
  const tStart = performance.now();
  const { Wllama } = await import(/** @type {string} */ ("/wllama/esm/index.js"));
  const t0 = performance.now();
  const r = await fetch(url, { cache: "no-store" });
  if (!r.ok) throw new Error(`${url}: HTTP ${r.status}`);
  const blob = await r.blob();
  const t1 = performance.now();
  const w = new Wllama({ default: "/wllama/esm/wasm/wllama.wasm" }, { suppressNativeLog: true });
  await w.loadModel([blob], { n_ctx: nCtx || 1024, n_threads: 1, n_gpu_layers: 0 });
  const t2 = performance.now();
  const runs = [];
  /** @type {number|null} */ let firstAt = null;       // the first token, after the page's navigation began
  for (const prompt of prompts) {
    const ts = performance.now();
    let first = null, text = "", timings = null, usage = null;
    /** @type {number[]} */ const tokens = [];
    const stream = await w.createCompletion({ prompt, max_tokens: n, temperature: 0, stream: true,
                                              return_tokens: true, cache_prompt: false });
    for await (const c of stream) {
      if (first === null && c.choices && c.choices.length && c.choices[0].text !== undefined) first = performance.now();
      if (firstAt === null && first !== null) firstAt = first;
      if (c.choices && c.choices.length) text += c.choices[0].text || "";
      if (c.timings) timings = c.timings;
      if (c.usage) usage = c.usage;
      if (Array.isArray(c.tokens)) tokens.push(...c.tokens);
    }
    runs.push({ ttft_s: first === null ? null : (first - ts) / 1000, text, token_ids: tokens.length ? tokens : null,
                prefill_tok_s: timings ? timings.prompt_per_second : null,
                decode_tok_s: timings ? timings.predicted_per_second : null,
                n_prompt: timings ? timings.prompt_n : null,
                n_generated: timings ? timings.predicted_n : (usage ? usage.completion_tokens : null) });
  }
  await w.exit();
  return { download_s: (t1 - t0) / 1000, init_s: (t2 - t1) / 1000, ready_s: (t2 - tStart) / 1000,
           first_token_s: firstAt === null ? null : firstAt / 1000, runs, memory: null };
}
