// A one-worker load in Pyodide under Node, step by step as static/worker.js does it (header budget,
// reserve, the file streamed into a ModelBuffer, load_model, a few greedy tokens), printing the WASM
// heap's size after each step beside the budget's estimate (engine/budget.py). No browser needed.
//
//   node scripts/load_memory.mjs MODEL.gguf [layout] [--no-reserve] [--early] [--margin=MB]
import fs from "node:fs";
import { bootWithModel } from "./pyodide_node.mjs";

const args = process.argv.slice(2);
const noReserve = args.includes("--no-reserve");
const early = args.includes("--early");
// --margin=MB: grow the heap to the estimate + MB instead of heap_bytes (negative: below the estimate),
// to find what a load really needs (the smallest margin at which the heap does not grow again)
const marginArg = args.find((a) => a.startsWith("--margin="));  // as a cached model is read: the buffer first, the budget after
const [model, layout] = args.filter((a) => !a.startsWith("--"));
const py = await bootWithModel(model, "node scripts/load_memory.mjs MODEL.gguf [packed|compact|int8] [--no-reserve]");
const heap = () => py._module.HEAP8.buffer.byteLength;
const mb = (n) => (n / 2 ** 20).toFixed(1);
const rows = [["booted", heap()]];
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
if (early) { buf = bridge.ModelBuffer(size, false); fill(buf); rows.push(["file read early", heap()]); }
const head = new Uint8Array(Math.min(size, 16 << 20));
fs.readSync(fd, head, 0, head.length, 0);
const verdict = bridge.header_budget(buf ?? head, size, undefined, layout ?? undefined);
const budget = verdict.budget;
rows.push(["header parsed", heap()]);
// as static/boot.js growHeap (not imported here: that module starts a MessageChannel Node would wait on)
const target = marginArg ? budget.total_bytes + Number(marginArg.split("=")[1]) * 2 ** 20 : budget.workers[0].heap_bytes;
if (!noReserve && target > heap()) py._module.growMemory(target);
rows.push(["reserved", heap()]);
if (!early) { buf = bridge.ModelBuffer(size, false); fill(buf); }
rows.push(["file in a ModelBuffer", heap()]);
bridge.load_model(buf, undefined, verdict.layout);
rows.push(["model loaded", heap()]);
py.runPython(`
from engine import bridge
g = bridge.start_generation({"prompt": "Once upon a time", "params": {"temperature": 0, "max_tokens": 8}})
while g.step().type != "done": pass
`);
rows.push(["8 tokens generated", heap()]);
const w = budget.workers[0];
console.log(`layout ${verdict.layout}; estimate ${mb(budget.total_bytes)} MiB = runtime ${mb(w.runtime)} + weights ${mb(w.weights)} `
  + `+ side ${mb(w.side)} + kv ${mb(w.kv)} + vocabulary ${mb(w.vocabulary)}`);
for (const [what, n] of rows) console.log(`${what.padEnd(24)} WASM ${mb(n)} MiB`);
