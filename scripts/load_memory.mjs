// A one-worker load in Pyodide under Node, step by step as static/worker.js does it (header budget,
// the heap grown, the file streamed into a ModelBuffer, load_model, a few greedy tokens), printing the WASM
// heap's size and the peak used (malloc's high-water mark) after each step beside the budget's estimate (engine/budget.py). No browser needed.
//
//   node scripts/load_memory.mjs MODEL.gguf [layout] [--no-reserve] [--early] [--margin=MB] [--prompt-words=N] [--max-tokens=N] [--no-lookup]
// --margin=MB grows the heap to the estimate + MB instead of heap_bytes (negative: below it), to find
// what the load really needs: the smallest heap that does not grow again.
import fs from "node:fs";
import { bootWithModel, growForLoad, heapBytes, mib, peakBytes, printSteps } from "./pyodide_node.mjs";

const args = process.argv.slice(2);
const noReserve = args.includes("--no-reserve");
const early = args.includes("--early");  // as a cached model is read: the buffer first, the budget after
const [model, layout] = args.filter((a) => !a.startsWith("--"));
const py = await bootWithModel(model, "node scripts/load_memory.mjs MODEL.gguf [packed|compact|int8] [--no-reserve] [--early] [--margin=MB] [--prompt-words=N] [--max-tokens=N] [--no-lookup]");
const heap = () => heapBytes(py);
const rows = [["booted", heap(), peakBytes(py)]];
const bridge = py.pyimport("engine.bridge");
const size = fs.statSync(model).size;
const fd = fs.openSync(model, "r");
const chunk = new Uint8Array(1 << 20);
const fill = (buf) => {
  for (let at = 0; at < size; ) {
    const n = fs.readSync(fd, chunk, 0, Math.min(chunk.length, size - at), at);
    buf.write(chunk.subarray(0, n));
    at += n;
  }
};
let buf = null;
if (early) { buf = bridge.ModelBuffer(size, false); fill(buf); rows.push(["file read early", heap(), peakBytes(py)]); }
const head = new Uint8Array(Math.min(size, 16 << 20));
fs.readSync(fd, head, 0, head.length, 0);
const verdict = bridge.header_budget(buf ?? head, size, undefined, layout ?? undefined);
const budget = verdict.budget;
rows.push(["header parsed", heap(), peakBytes(py)]);
if (!noReserve) growForLoad(py, budget.workers[0], args);
rows.push(["grown", heap(), peakBytes(py)]);
if (!early) { buf = bridge.ModelBuffer(size, false); fill(buf); }
rows.push(["file in a ModelBuffer", heap(), peakBytes(py)]);
bridge.load_model(buf, undefined, verdict.layout);
rows.push(["model loaded", heap(), peakBytes(py)]);
// --prompt-words=N: a prompt of N words instead of four (a long prompt's activations are not in the budget)
const words = Number(args.find((a) => a.startsWith("--prompt-words="))?.split("=")[1] ?? 0);
py.globals.set("WORDS", words);
py.globals.set("SPEC", !args.includes("--no-lookup"));
py.globals.set("MAX_TOKENS", Number(args.find((a) => a.startsWith("--max-tokens="))?.split("=")[1] ?? 8));
const nPrompt = py.runPython(`
from engine import bridge
prompt = " ".join(["story"] * WORDS) if WORDS else "Once upon a time"
g = bridge.start_generation({"prompt": prompt, "params": {"temperature": 0, "max_tokens": MAX_TOKENS, "speculative": SPEC}})
while (ev := g.step()).type != "done": pass
ev.n_prompt
`);
rows.push([`${nPrompt}-token prompt, ${py.globals.get("MAX_TOKENS")} out`, heap(), peakBytes(py)]);
const w = budget.workers[0];
console.log(`layout ${verdict.layout}; estimate ${mib(budget.total_bytes)} MiB = runtime ${mib(w.runtime)} + weights ${mib(w.weights)} `
  + `+ side ${mib(w.side)} + kv ${mib(w.kv)} + vocabulary ${mib(w.vocabulary)}`);
printSteps(rows);
