// One shard of a multi-worker load in Pyodide under Node, step by step as static/parallel-worker.js
// does it (an 8 MiB prefix, the ShardLoader and its budget, the heap grown to the shard's
// heap_bytes, the rest of its byte ranges in 2 MiB blocks, the model built; the leader's tokenizer
// on shard 0), printing the WASM heap after each step beside the shard's estimate (engine/budget.py).
// One shard per process, as each worker has its own heap. No browser needed.
//
//   node scripts/shard_memory.mjs MODEL.gguf INDEX N_SHARDS [--margin=MB]   (PREFIX_MB=8: the first bytes sent, as parallel.js HEADER_PREFIX)
import fs from "node:fs";
import { bootWithModel, growForLoad, heapBytes, mib, peakBytes, printSteps } from "./pyodide_node.mjs";

const args = process.argv.slice(2);
const [model, index, nShards] = args.filter((a) => !a.startsWith("--"));
const py = await bootWithModel(model, "node scripts/shard_memory.mjs MODEL.gguf INDEX N_SHARDS [--margin=MB]");
const heap = () => heapBytes(py);
const peak = () => peakBytes(py);
const rows = [["booted", heap()]];
const shard = py.pyimport("engine.shard");
const size = fs.statSync(model).size;
const fd = fs.openSync(model, "r");
const bytes = (start, n) => { const b = new Uint8Array(n); fs.readSync(fd, b, 0, n, start); return b; };
const toPy = (u8) => {
  const b = py.globals.get("bytearray")(u8.byteLength);
  const view = b.getBuffer("u8");
  try { view.data.set(u8, 0); } finally { view.release(); }
  return b;
};
const prefixLen = Math.min(size, Number(process.env.PREFIX_MB ?? 8) * 2 ** 20);
const prefix = toPy(bytes(0, prefixLen));
const loader = shard.open_loader(prefix, size, Number(nShards), Number(index), null, true, null);  // null: PREFIX_MB too short
const budget = loader.budget().toJs({ dict_converter: Object.fromEntries }).budget;
const mine = budget.workers[Number(index)];
rows.push(["header parsed", heap(), peak()]);
prefix.destroy();  // as parallel-worker.js: freed before the pieces are made
growForLoad(py, mine, args);
rows.push(["grown", heap(), peak()]);
loader.stream_from.callKwargs({ hash_all: Number(index) === 0 });
let scratch = null;
// shard 0 hashes the file: it gets every byte, in order; the others only their ranges
const wanted = Number(index) === 0 ? [[0, size]]  // the ranges past the prefix's bytes: each byte is written once
  : [[0, prefixLen], ...loader.ranges().toJs().filter(([, b]) => b > prefixLen).map(([a, b]) => [Math.max(a, prefixLen), b])];
for (const [start, end] of wanted) {
  for (let at = start; at < end; at += 2 << 20) {  // the prefix's bytes first, as the worker writes them
    const n = Math.min(2 << 20, end - at);
    if (!scratch) scratch = py.globals.get("bytearray")(2 << 20);
    const view = scratch.getBuffer("u8");
    try { view.data.set(bytes(at, n), 0); } finally { view.release(); }
    loader.write(at, scratch, n);
  }
}
rows.push(["pieces filled", heap(), peak()]);
scratch.destroy();
const runner = loader.runner();
if (Number(index) === 0) loader.leader_session(runner.model.n_ctx);
rows.push(["model built", heap(), peak()]);
// a 32-token prefill and 8 one-token steps, this shard alone: its own partial stands in for each sum
// and zeros for the peers' logits (the arithmetic is not the point; the buffers a forward makes are)
py.globals.set("RUNNER", runner);
py.runPython(`
import numpy as np
from engine.shard import SUM
m = RUNNER.model
vocab = m.config.vocab_size
for chunk in [list(range(1000, 1032))] + [[2000 + i] for i in range(8)]:
    g = m.forward_steps(chunk)
    kind, part = next(g)
    while kind == SUM:
        kind, part = g.send(part.copy())
    try:
        g.send(np.zeros(part.shape[:-1] + (vocab,), np.float32))
    except StopIteration:
        pass
`);
rows.push(["40 tokens run", heap(), peak()]);
console.log(`shard ${index} of ${nShards}: estimate ${mib(mine.total_bytes)} MiB = runtime ${mib(mine.runtime)} + weights `
  + `${mib(mine.weights)} + side ${mib(mine.side)} + kv ${mib(mine.kv)} + vocabulary ${mib(mine.vocabulary)}`);
printSteps(rows);
