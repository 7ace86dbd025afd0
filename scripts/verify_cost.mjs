// What a verify pass of prompt lookup costs in Pyodide (engine/lookup.py, issue 15): the one-token
// forward t1 and, for k drafted tokens, the cost of each extra row over t1 (c / t1), with the layout
// a browser worker loads (engine.bridge.load_model: "packed" by default). Node runs the same Pyodide
// 0.27.7 and numpy as the page (static/, built by build_wasm.py); no browser is needed.
//
//   node scripts/verify_cost.mjs MODEL.gguf [layout]      e.g. ~/.cache/mote/models/qwen2.5-coder-0.5b-instruct-q4_k_m.gguf
//
// Prints one JSON line: {t1_ms, c_over_t1: {k: ...}}. Each figure is the median of 4 passes at the
// same position (the cache cut back after each), after 150 tokens of context.
import { bootWithModel } from "./pyodide_node.mjs";

const [model, layout] = process.argv.slice(2);
const py = await bootWithModel(model, "node scripts/verify_cost.mjs MODEL.gguf [packed|compact|int8]");
py.globals.set("LAYOUT", layout ?? null);
console.log(py.runPython(`
import json, time
from engine import bridge
data = open(MODEL, "rb").read()
buf = bridge.ModelBuffer(len(data)); buf.write(data); del data
bridge.load_model(buf, n_ctx=1024, layout=LAYOUT)
m = bridge._session.model
toks = [1000 + i for i in range(200)]
m.reset(); m.forward(toks[:150])
def timed(rows, reps=4):
    took = []
    for _ in range(reps):
        pos = m.pos
        t0 = time.perf_counter()
        if rows == 1:
            m.forward(toks[150:151])
        else:
            m.forward(toks[150:150 + rows], all_logits=True, exact=True)
        took.append(time.perf_counter() - t0)
        m.pos = pos
    return sorted(took)[len(took) // 2]
t1 = timed(1)
json.dumps({"t1_ms": round(t1 * 1000, 1),
            "c_over_t1": {k: round((timed(k + 1) - t1) / k / t1, 3) for k in (1, 2, 4, 8)}})
`));
