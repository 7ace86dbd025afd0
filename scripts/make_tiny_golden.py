"""Make tests/data/tiny_golden.json: greedy tokens of the tiny golden model for one chat turn.

    .venv/bin/python scripts/make_tiny_golden.py            # rewrite the golden
    .venv/bin/python scripts/make_tiny_golden.py --check    # only say whether it is still current

One golden, two tests (STYLE.md habit 11c): tests/test_tiny_golden.py asserts that the CPython
engine reproduces it, and tests/test_browser.py that the chat page (Pyodide + numpy in a Web Worker)
streams the same tokens, token for token. So "engine correct" and "browser wiring correct" are
checked against the same bytes.

Where the golden's authority comes from: the tokens are produced here by the CPython engine
(engine.bridge, the same entry points the worker calls). The engine's correctness is established
elsewhere against references written by others - tests/test_gemma_reference.py (Hugging Face
transformers' forward pass on Gemma 3 270M: greedy identical, logits close), the gguf-py
dequantizers (tests/test_quants.py) and llama.cpp's tokenizations (tests/test_tokenizer.py). This
golden adds no new claim about correctness; it pins one exact output so that a browser that
computes anything else fails.

The model (tests/tiny_golden.py): a 2-layer qwen2 with seeded random weights, and the byte-level
BPE vocabulary of tests/data/tokenizer_golden_bpe.json (made by scripts/make_tokenizer_golden.py
and tokenised by llama.cpp there), copied into the golden so the test model depends on nothing
else. Steps:
  1. read the vocabulary
  2. for seed = 0, 1, ...: write the model, run the conversation greedily in the engine, and keep
     the first seed whose answer runs the full max_tokens with a top-1 logit margin of at least
     MIN_GAP at every step (recomputed in one full forward pass), so that float rounding
     differences between CPython's numpy (BLAS) and Pyodide's (no BLAS) cannot flip a token
  3. write the golden JSON (vocabulary, seed, model sha256, prompt tokens, tokens, text)
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from engine.gguf import GGUFFile  # noqa: E402
from engine.model import load_model  # noqa: E402
from tests import tiny_golden as tg  # noqa: E402

VOCAB_SOURCE = ROOT / "tests" / "data" / "tokenizer_golden_bpe.json"
MESSAGES = [{"role": "user", "content": "Once upon a time, a little cat named Tom found a red ball."}]
MAX_TOKENS = 40
MIN_GAP = 0.05   # logits; observed rounding differences between numpy builds are ~1e-5
TOKENIZER_KEYS = ("tokenizer.ggml.model", "tokenizer.ggml.tokens", "tokenizer.ggml.token_type",
                  "tokenizer.ggml.merges", "tokenizer.ggml.bos_token_id", "tokenizer.ggml.eos_token_id")


def top1_gaps(data: bytes, prompt: list[int], tokens: list[int]) -> np.ndarray:
    """Top-1 minus top-2 logit at each generated position, from one full (no KV reuse) pass."""
    model = load_model(GGUFFile(data))
    seq = prompt + tokens[:-1]
    logits = model.forward(seq, all_logits=True)[len(prompt) - 1:]   # (n_tokens, vocab)
    top2 = np.sort(logits, axis=-1)[:, -2:]                          # (n_tokens, 2)
    if not np.array_equal(logits.argmax(-1), tokens):
        raise SystemExit("full recompute disagrees with the engine's incremental greedy tokens")
    return top2[:, 1] - top2[:, 0]                                    # (n_tokens,)


def make(seed_limit: int = 200) -> dict:
    print("1. vocabulary from", VOCAB_SOURCE.relative_to(ROOT))
    source = json.loads(VOCAB_SOURCE.read_text(encoding="utf-8"))
    tokenizer = {k: source["metadata"][k] for k in TOKENIZER_KEYS}
    golden = {"model": {"seed": None, **tg.DIMS, "types": tg.TYPES}, "tokenizer": tokenizer,
              "messages": MESSAGES, "max_tokens": MAX_TOKENS}
    print("2. seeds")
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / tg.FILE_NAME
        for seed in range(seed_limit):
            tg.write_model(path, golden, seed=seed)
            data = path.read_bytes()
            out = tg.engine_greedy(data, golden)
            if out["reason"] != "length":
                print(f"   seed {seed}: stopped early ({out['reason']}) after {len(out['tokens'])} tokens")
                continue
            gap = float(top1_gaps(data, out["prompt_tokens"], out["tokens"]).min())
            if gap < MIN_GAP:
                print(f"   seed {seed}: smallest top-1 margin {gap:.4f} < {MIN_GAP}")
                continue
            print(f"   seed {seed}: {len(out['tokens'])} tokens, smallest top-1 margin {gap:.3f}")
            golden["model"].update(seed=seed, size=len(data), sha256=tg.sha256_file(path))
            break
        else:
            raise SystemExit(f"no seed below {seed_limit} gives a clear greedy answer")
    return {
        "about": "Greedy answer of the tiny golden model (tests/tiny_golden.py) to `messages`; made by "
                 "scripts/make_tiny_golden.py with the CPython engine; asserted by tests/test_tiny_golden.py "
                 "(CPython) and tests/test_browser.py (the chat page in headless Chromium).",
        "vocabulary_source": "tests/data/tokenizer_golden_bpe.json (tokenised by llama.cpp there)",
        **golden,
        "min_top1_margin": round(gap, 4),
        "prompt_tokens": out["prompt_tokens"],
        "tokens": out["tokens"],
        "text": out["text"],
        "reason": out["reason"],
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--check", action="store_true", help="compare with the stored golden, write nothing")
    args = ap.parse_args()
    golden = make()
    if args.check:
        same = tg.GOLDEN.is_file() and tg.load_golden() == json.loads(json.dumps(golden))
        print("3. golden is", "current" if same else "OUT OF DATE")
        raise SystemExit(0 if same else 1)
    tg.GOLDEN.write_text(json.dumps(golden, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
    print("3. wrote", tg.GOLDEN.relative_to(ROOT), f"({len(golden['tokens'])} tokens: {golden['text']!r})")


if __name__ == "__main__":
    main()
