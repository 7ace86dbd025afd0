"""The first answers after a load, as a person sends them: a pause after ready, then prompt after prompt.

    .venv/bin/python scripts/first_answers.py MODEL.gguf [--pause-ms 2000] [--rounds 3] [--base ../old-checkout]

`mote bench --browser` sends its first prompt the moment the model is ready, as a script would. A
person reads, types and presses Send; the worker is idle meanwhile. This measures that case: each
visit (Chromium started on a fresh profile: cold, then again on the same profile: warm) loads MODEL
through the embed API (one worker), waits --pause-ms, then answers --prompts greedy prompts of -n
tokens one after the other, and reports per prompt the engine's decode tok/s and the rate at which
token events reached the page, plus the worker's warm-up seconds (the done event's warm_s, where
the checkout reports it).

With --base, the same visits run in that checkout too (its own static/, built by build_wasm.py),
the two taking turns visit by visit, and the paired ratio new / base of the first answer's page rate
is printed per visit kind, median (min-max). Both checkouts need `python build_wasm.py` run first.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PROMPTS = ("Once upon a time, there was a little", "The dog ran to the park and")

# The first answers of a visit: Mote.load on one worker, the pause, then the prompts one after the other.
JS = """async ([url, pause, n, prompts]) => {
  const m = await window.Mote.load(url, { workers: 1 });
  await new Promise((r) => setTimeout(r, pause));
  const answers = [];
  for (const prompt of prompts) {
    let first = null, last = 0, count = 0;
    for await (const ev of m.events({ prompt }, { temperature: 0, max_tokens: n })) {
      if (ev.type !== 'token') continue;
      const now = performance.now();
      if (first === null) first = now;
      last = now; count++;
    }
    answers.push({ decode_tok_s: m.last.decode_tok_s, page_tok_s: count > 1 ? (count - 1) / ((last - first) / 1000) : null,
                   warm_s: m.last.warm_s ?? null, token_ids: m.last.token_ids });
  }
  return answers;
}"""

# Runs in the checkout under test (its own bench server and static/): one cold and one warm visit, each
# evaluating the async function argv[3] in the benchmark page with [the model's URL, *argv[4]].
VISIT = r"""
import json, os, sys, tempfile
from pathlib import Path
checkout, model, js, args = sys.argv[1], sys.argv[2], sys.argv[3], json.loads(sys.argv[4])
sys.path.insert(0, checkout)
import mote.bench.browser as B
from playwright.sync_api import sync_playwright
out = []
with tempfile.TemporaryDirectory() as served, tempfile.TemporaryDirectory() as profile:
    os.symlink(model, Path(served) / "model.gguf")
    with B.serve_in_thread(B.bench_app(Path(served))) as base:
        for kind in ("cold", "warm"):
            with sync_playwright() as p:
                browser = p.chromium.launch_persistent_context(profile, executable_path=os.environ.get("MOTE_CHROMIUM", "/usr/bin/chromium"),
                                                               args=B.CHROMIUM_ARGS, headless=True)
                try:
                    page = browser.pages[0] if browser.pages else browser.new_page()
                    page.goto(base + "/__bench__/")
                    page.wait_for_function("() => window.Mote !== undefined", timeout=30_000)
                    out.append({"kind": kind, "result": page.evaluate(js, [base + "/models/model.gguf", *args])})
                finally:
                    browser.close()
print(json.dumps(out))
"""


def visits(checkout: Path, model: Path, js: str, args: list) -> list[dict]:
    """One cold and one warm visit in `checkout`'s own code, each running `js` with [URL, *args]:
    [{kind, result}, ...]. Also used by scripts/first_chat.py."""
    done = subprocess.run([sys.executable, "-c", VISIT, str(checkout), str(model), js, json.dumps(args)],
                          capture_output=True, text=True, timeout=900)
    if done.returncode != 0:
        raise SystemExit(f"{checkout}: the visit failed:\n{done.stderr[-2000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def visit(checkout: Path, model: Path, pause_ms: int, n: int, prompts: list[str]) -> list[dict]:
    """One cold and one warm visit: [{kind, answers: [...]}, ...]."""
    return [{"kind": v["kind"], "answers": v["result"]} for v in visits(checkout, model, JS, [pause_ms, n, prompts])]


def line(label: str, kind: str, answers: list[dict]) -> str:
    rates = ", ".join(f"{a['decode_tok_s']:.0f}/{a['page_tok_s']:.0f}" if a["page_tok_s"] else f"{a['decode_tok_s']:.0f}/-"
                      for a in answers)
    warm = answers[0].get("warm_s")
    return f"{label:>5} {kind}: engine/page tok/s per answer [{rates}]; warm-up before the first: " + \
           (f"{warm:.2f} s" if warm is not None else "none")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("model", type=Path)
    ap.add_argument("--pause-ms", type=int, default=2000, help="idle time between ready and the first prompt")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("-n", type=int, default=128, help="tokens per answer")
    ap.add_argument("--prompts", type=int, default=3, help="answers per visit (the two fixed prompts in turn)")
    ap.add_argument("--base", type=Path, help="another checkout to pair with this one, visit by visit")
    args = ap.parse_args(argv)
    model = args.model.resolve()
    if not model.is_file():
        ap.error(f"no model file at {model}")
    prompts = [PROMPTS[i % len(PROMPTS)] for i in range(args.prompts)]
    sides = [("new", ROOT)] + ([("base", args.base.resolve())] if args.base else [])
    first: dict[tuple[str, str], list[float]] = {}
    tokens: dict[str, list] = {}
    for r in range(args.rounds):
        for label, checkout in (sides if r % 2 == 0 else sides[::-1]):
            for v in visit(checkout, model, args.pause_ms, args.n, prompts):
                print(f"round {r + 1} " + line(label, v["kind"], v["answers"]), flush=True)
                first.setdefault((label, v["kind"]), []).append(v["answers"][0]["page_tok_s"] or 0.0)
                tokens.setdefault(label, []).append([a["token_ids"] for a in v["answers"]])
    if args.base:
        for kind in ("cold", "warm"):
            ratios = sorted(a / b for a, b in zip(first[("new", kind)], first[("base", kind)]) if b)
            if ratios:
                print(f"first answer's page rate, new / base, {kind}: {statistics.median(ratios):.2f} "
                      f"({ratios[0]:.2f}-{ratios[-1]:.2f}) over {len(ratios)} visits")
        same = all(t == tokens["new"][0] for t in tokens["new"] + tokens["base"])
        print(f"same greedy tokens in every visit of both: {same}")
        return 0 if same else 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
