"""Mote.preload() as a page uses it: the worker boots while the visitor reads, then the page loads a model.

    .venv/bin/python scripts/preload.py MODEL.gguf [--pause-ms 1500] [--rounds 3]

Each visit (Chromium on a fresh profile: cold, then again on the same profile: warm) either calls
Mote.preload() or not, waits --pause-ms (the page is open, its visitor reading), then calls
Mote.load(MODEL, {workers: 1}) and asks one greedy prompt. It reports the time from that call to
ready and to the first token, with and without the preload, the two taking turns visit by visit.
(`mote bench --browser --preload` measures the other case, a page that loads its model as it opens.)
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from first_answers import visits  # noqa: E402  (the visit harness these scripts share)

ROOT = Path(__file__).resolve().parents[1]
PROMPT = "Once upon a time, there was a little"

JS = """async ([url, preload, pause, prompt]) => {
  if (preload) window.Mote.preload();
  await new Promise((r) => setTimeout(r, pause));
  const t0 = performance.now();
  const m = await window.Mote.load(url, { workers: 1 });
  const ready = (performance.now() - t0) / 1000;
  let first = null;
  for await (const ev of m.events({ prompt }, { temperature: 0, max_tokens: 16 })) {
    if (ev.type === 'token' && first === null) first = (performance.now() - t0) / 1000;
  }
  await new Promise((r) => setTimeout(r, 1000));   // a first visit's snapshot stored before the tab closes
  return { ready_s: ready, first_token_s: first, token_ids: m.last.token_ids };
}"""


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("model", type=Path)
    ap.add_argument("--pause-ms", type=int, default=1500, help="time between the preload and Mote.load")
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args(argv)
    model = args.model.resolve()
    if not model.is_file():
        ap.error(f"no model file at {model}")
    got: dict[tuple[str, str], list[dict]] = {}
    for r in range(args.rounds):
        for label in (("preload", "plain") if r % 2 == 0 else ("plain", "preload")):
            for v in visits(ROOT, model, JS, [label == "preload", args.pause_ms, PROMPT]):
                x = v["result"]
                got.setdefault((label, v["kind"]), []).append(x)
                print(f"round {r + 1} {label:>7} {v['kind']}: ready {x['ready_s']:.2f} s, first token "
                      f"{x['first_token_s']:.2f} s after Mote.load", flush=True)
    for kind in ("cold", "warm"):
        for label in ("preload", "plain"):
            xs = got[(label, kind)]
            line = lambda k: f"{statistics.median(x[k] for x in xs):.2f} ({min(x[k] for x in xs):.2f}-{max(x[k] for x in xs):.2f})"  # noqa: E731
            print(f"{kind} {label:>7}: ready {line('ready_s')} s, first token {line('first_token_s')} s after Mote.load")
    same = len({tuple(x["token_ids"]) for xs in got.values() for x in xs}) == 1
    print(f"same greedy tokens in every visit: {same}")
    return 0 if same else 1


if __name__ == "__main__":
    sys.exit(main())
