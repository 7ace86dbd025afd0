// What the workers' float16 KV cache costs a decode step in Pyodide (LoadPolicy.kv_dtype, issue 13):
// the same model loaded as a browser worker loads it (engine.bridge, default layout), with a float16
// and with a float32 cache, after P tokens of context; each read of the cache is cast to float32.
// Node runs the same Pyodide 0.27.7 and numpy as the page (static/, built by build_wasm.py).
//
//   node scripts/kv_cost.mjs MODEL.gguf [P ...]          e.g. ~/.cache/mote/models/gemma-3-270m-q4_k_m.gguf 300 1500
//
// Prints one JSON line per P: the median of 7 one-token steps at position P (the cache cut back after
// each) for each cache type, rounds alternating float32 / float16, and the caches' MB.
import { bootWithModel } from "./pyodide_node.mjs";

const [model, ...positions] = process.argv.slice(2);
const py = await bootWithModel(model, "node scripts/kv_cost.mjs MODEL.gguf [P ...]");
py.globals.set("POSITIONS", (positions.length ? positions : ["300", "1500"]).map(Number));
console.log(py.runPython(`
import dataclasses, json, time
from engine import bridge
data = open(MODEL, "rb").read()
models = {}
for kv in ("float32", "float16"):
    bridge.WORKER_POLICY = dataclasses.replace(bridge.WORKER_POLICY, kv_dtype=kv)
    buf = bridge.ModelBuffer(len(data)); buf.write(data)
    bridge.load_model(buf, n_ctx=2048)
    models[kv] = bridge._session.model
del data
lines = []
for P in POSITIONS:
    toks = [1000 + i % 3000 for i in range(P + 1)]
    took = {kv: [] for kv in models}
    for m in models.values():
        m.reset(); m.forward(toks[:P])
    for _ in range(7):
        for kv, m in models.items():
            t0 = time.perf_counter(); m.forward(toks[P:P + 1]); took[kv].append(time.perf_counter() - t0)
            m.pos = P
    ms = {kv: round(sorted(t)[3] * 1000, 1) for kv, t in took.items()}
    lines.append(json.dumps({"P": P, "step_ms": ms, "float16_over_float32": round(ms["float16"] / ms["float32"], 3),
                             "kv_mb": {kv: round(sum(c.nbytes for c in m.k_cache + m.v_cache) / 1e6, 1)
                                       for kv, m in models.items()}}))
"\\n".join(lines)
`));
