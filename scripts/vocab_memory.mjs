// What the vocabulary costs a worker in Pyodide (engine/budget.py VOCAB_* constants): the GGUF
// header parse, then the tokenizer built from it, in the same Pyodide 0.27.7 and numpy as the page
// (static/, built by build_wasm.py). Node runs it; no browser is needed.
//
//   node scripts/vocab_memory.mjs MODEL.gguf
//
// Prints one JSON line: the wall times of the parse, the tokenizer and encoding 20,000 characters
// of English prose; then, in a second pass under tracemalloc, the live and peak MiB after the parse
// and after the tokenizer and a first encode (peak since the parse: the tokenizer's highest).
import { bootWithModel } from "./pyodide_node.mjs";

const [model] = process.argv.slice(2);
const py = await bootWithModel(model, "node scripts/vocab_memory.mjs MODEL.gguf");
console.log(py.runPython(`
import json, time, tracemalloc
import os
from engine.shard import ShardFile
from engine.tokenizer import Tokenizer
with open(MODEL, "rb") as f:
    head = f.read(16 << 20)          # every header here is under 16 MB
size = os.path.getsize(MODEL)
words = ("Once upon a time there was a little girl named Lily. She loved to play outside "
         "in the sunshine with her dog, and one day she found a shiny red ball. ").split()
text = " ".join(words[i % len(words)] for i in range(4000))[:20000]
MiB = 1 << 20
t0 = time.perf_counter()                    # timed without tracemalloc, which slows allocation
gf = ShardFile(head, size)
t1 = time.perf_counter()
tok = Tokenizer.from_metadata(gf.metadata)
t2 = time.perf_counter()
n = len(tok.encode(text))
t3 = time.perf_counter()
del gf, tok
tracemalloc.start()
gf = ShardFile(head, size)
parse = tracemalloc.get_traced_memory()
tracemalloc.reset_peak()
tok = Tokenizer.from_metadata(gf.metadata)
tok.encode(text[:2000])                     # a first encode builds the merge table of a BPE vocabulary
both = tracemalloc.get_traced_memory()
tracemalloc.stop()
json.dumps({"parse_live_mib": round(parse[0] / MiB, 1), "parse_peak_mib": round(parse[1] / MiB, 1),
            "tokenizer_live_mib": round(both[0] / MiB, 1), "tokenizer_peak_mib": round(both[1] / MiB, 1),
            "parse_s": round(t1 - t0, 3), "tokenizer_s": round(t2 - t1, 3),
            "encode_20k_chars_s": round(t3 - t2, 3), "encode_tokens": n})
`));
