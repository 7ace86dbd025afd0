"""What the workers' float16 KV cache costs in quality (issue 13): the same model loaded twice with the
browser worker's layout (engine/bridge.py WORKER_POLICY), once with a float32 cache and once with the
float16 one, compared on

- perplexity over windows of a text, with KL(float32 || float16) and top-1 agreement per position
  (mote.perplexity, every position of a window, as a batched prefill reads its cache);
- greedy continuations, one token at a time (as decoding reads the cache): the first step where the
  two differ, if any.

    python scripts/kv_quality.py MODEL.gguf TEXT [--ctx 512] [--windows 4] [--steps 64]

Prints one JSON line.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from engine.bridge import WORKER_POLICY  # noqa: E402
from mote.loader import load  # noqa: E402
from mote.perplexity import make_windows, perplexity, text_tokens, tokens_needed  # noqa: E402

PROMPTS = ["Once upon a time, there was a little girl named",
           "def fibonacci(n):\n    \"\"\"Return the n-th Fibonacci number.\"\"\"\n",
           "The three most important rules of writing clear code are"]


def greedy(model, prompt: list[int], steps: int) -> list[int]:
    model.reset()
    logits, out = model.forward(prompt), []
    for _ in range(steps):
        out.append(int(np.argmax(logits)))
        logits = model.forward([out[-1]])
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("model")
    ap.add_argument("text")
    ap.add_argument("--ctx", type=int, default=512)
    ap.add_argument("--windows", type=int, default=4)
    ap.add_argument("--steps", type=int, default=64)
    args = ap.parse_args()
    f32 = load(args.model, n_ctx=args.ctx, policy=dataclasses.replace(WORKER_POLICY, kv_dtype="float32",
                                                                       own_buffer=False))
    f16 = load(args.model, n_ctx=args.ctx, policy=dataclasses.replace(WORKER_POLICY, own_buffer=False))
    tok = f32.tokenizer
    bos = tok.bos_id if tok.add_bos and tok.bos_id is not None else None
    tokens = text_tokens(tok, Path(args.text).read_bytes(), tokens_needed(args.ctx, bos is not None, args.windows))
    windows = make_windows(tokens, args.ctx, bos, args.windows)
    scored = perplexity(f16.model, windows, base=f32.model)
    report = {"model": Path(args.model).name, "text": Path(args.text).name, "ctx": args.ctx,
              "windows": scored.n_windows, "ppl_float32": scored.base_ppl, "ppl_float16": scored.ppl,
              "kl_mean": scored.kl_mean, "kl_p99": scored.kl_p99, "top1_agreement": scored.top1_agreement,
              "kv_mb": {name: sum(c.nbytes for c in m.model.k_cache + m.model.v_cache) / 1e6
                        for name, m in (("float32", f32), ("float16", f16))},
              "greedy": []}
    for text in PROMPTS:
        ids = tok.encode(text)
        if bos is not None:
            ids = [bos] + ids
        a, b = greedy(f32.model, ids, args.steps), greedy(f16.model, ids, args.steps)
        first = next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), None)
        report["greedy"].append({"prompt": text[:30], "steps": args.steps, "first_difference": first})
    print(json.dumps(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
