"""A new chat's first answer as a person sends it: the time from Send to the first token at the page.

    .venv/bin/python scripts/first_chat.py MODEL.gguf [--workers 2] [--pause-ms 7000] [--rounds 2] [--base ../old-checkout]

The chat page and `Mote.chat` send a conversation through the model's chat template: the tokens of
the template's opening (BOS, the default system prompt, the user turn's header) come before what the
user wrote, 24 of the 37 tokens of a short question to Qwen2.5-Coder. Each visit (Chromium on a fresh
profile: cold, then again on the same profile: warm) loads MODEL through the embed API on --workers
workers, waits --pause-ms (a person reading and typing), then sends one question and reports the
time to its first token at the page, the prompt's tokens and how many of them came from the KV cache
(n_reused), and the engine's prefill rate.

With --base, the same visits run in that checkout too (its own static/, built by build_wasm.py), the
two taking turns visit by visit, and the paired ratio new / base of that time is printed per visit
kind, median (min-max). Both checkouts need `python build_wasm.py` run first.
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from first_answers import visits  # noqa: E402  (the visit harness both scripts share)

ROOT = Path(__file__).resolve().parents[1]
QUESTION = "Write a Python function that adds two numbers."

# A visit's chat: Mote.load on `workers` workers, the pause, then one question through the chat template.
JS = """async ([url, pause, n, workers, question]) => {
  const m = await window.Mote.load(url, { workers });
  await new Promise((r) => setTimeout(r, pause));
  const t0 = performance.now();
  let first = null;
  for await (const ev of m.events({ messages: [{ role: 'user', content: question }] }, { temperature: 0, max_tokens: n })) {
    if (ev.type === 'token' && first === null) first = (performance.now() - t0) / 1000;
  }
  return { ttft_s: first, n_prompt: m.last.n_prompt, n_reused: m.last.n_reused, prefill_tok_s: m.last.prefill_tok_s,
           token_ids: m.last.token_ids };
}"""


def visit(checkout: Path, model: Path, pause_ms: int, n: int, workers: int) -> list[dict]:
    """One cold and one warm visit in `checkout`'s own code: [{kind, ttft_s, n_prompt, n_reused, ...}, ...]."""
    return [{"kind": v["kind"], **v["result"]} for v in visits(checkout, model, JS, [pause_ms, n, workers, QUESTION])]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("model", type=Path)
    ap.add_argument("--workers", type=int, default=1)
    ap.add_argument("--pause-ms", type=int, default=7000, help="idle time between ready and Send")
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("-n", type=int, default=8, help="tokens of the answer")
    ap.add_argument("--base", type=Path, help="another checkout to pair with this one, visit by visit")
    args = ap.parse_args(argv)
    model = args.model.resolve()
    if not model.is_file():
        ap.error(f"no model file at {model}")
    sides = [("new", ROOT)] + ([("base", args.base.resolve())] if args.base else [])
    ttft: dict[tuple[str, str], list[float]] = {}
    tokens: list[list[int]] = []
    for r in range(args.rounds):
        for label, checkout in (sides if r % 2 == 0 else sides[::-1]):
            for v in visit(checkout, model, args.pause_ms, args.n, args.workers):
                print(f"round {r + 1} {label:>4} {v['kind']}: first token {v['ttft_s']:.2f} s after Send; prompt "
                      f"{v['n_prompt']} tokens, {v['n_reused']} from the cache; prefill {v['prefill_tok_s']:.1f} tok/s",
                      flush=True)
                ttft.setdefault((label, v["kind"]), []).append(v["ttft_s"])
                tokens.append(v["token_ids"])
    same = all(t == tokens[0] for t in tokens)
    if args.base:
        for kind in ("cold", "warm"):
            ratios = sorted(a / b for a, b in zip(ttft[("new", kind)], ttft[("base", kind)]) if b)
            print(f"first token after Send, new / base, {kind}: {statistics.median(ratios):.2f} "
                  f"({ratios[0]:.2f}-{ratios[-1]:.2f}) over {len(ratios)} visits")
    print(f"same greedy tokens in every visit: {same}")
    return 0 if same else 1


if __name__ == "__main__":
    sys.exit(main())
