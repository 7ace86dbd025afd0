"""Replay prompt lookup's drafting on recorded greedy answers, with a cost model instead of a clock.

    python scripts/lookup_replay.py MODEL.gguf REPORT.json [--engine "chromium x2"] [--max-ngram N] [--max-draft N]

REPORT.json is what `python -m mote.bench.lookup` wrote. Greedy decoding makes every answer fixed, so
which drafts would be kept is known in advance: this script walks each plain answer as
engine/generate.py would, with engine/lookup.py's PromptLookup and DraftPolicy (one policy across the
requests, as a session keeps it), and charges a pass of 1 + k rows 1 + k * c one-token steps. It
prints, per kind of request, the geometric mean of plain ÷ lookup steps for several row costs c (the
verify cost measured by scripts/verify_cost.mjs: 0.44-0.50 in Pyodide on one worker), and the ceiling
of a drafter that knew how many tokens would be kept.

A model, not a measurement: it leaves out per-token overheads, the clock's noise and the time a
policy's Python takes. It is for choosing the drafting's constants on the benchmark's own answers
without an hour of browser runs per choice; the browser benchmark then measures the one chosen.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from engine import lookup  # noqa: E402

ROW_COSTS = (0.3, 0.35, 0.4, 0.46, 0.5)


def replay(prompt: list[int], answer: list[int], c: float, max_ngram: int, max_draft: int,
           policy: lookup.DraftPolicy | None) -> float:
    """Plain decoding's steps ÷ lookup's for one answer (its first token comes from the prefill).
    policy None: the ceiling, a drafter that drafts exactly the tokens that will be kept."""
    if len(answer) < 2:
        return 1.0  # nothing decoded after the prefill
    look = lookup.PromptLookup(prompt, max_ngram=max_ngram)
    look.append(answer[0])
    n, steps = 1, 0.0
    if policy is not None:
        policy.timed(1, 1.0)  # the plain answer of the pair, one step each
    while n < len(answer):
        ngram, found = look.find(min(max_draft, len(answer) - n - 1))
        agree = 0
        while agree < len(found) and found[agree] == answer[n + agree]:
            agree += 1
        k = agree if policy is None else policy.length(ngram, len(found))
        kept = min(k, agree)
        steps += 1 + k * c
        if policy is not None:
            policy.timed(1 + k, 1 + k * c)
            if k:
                policy.outcome(ngram, k, kept)
        for tok in answer[n : n + kept + 1]:
            look.append(tok)
        n += min(kept + 1, len(answer) - n)
    return (len(answer) - 1) / steps if steps else 1.0


def geomean(xs: list[float]) -> float:
    return math.exp(sum(map(math.log, xs)) / len(xs))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("model", help="the GGUF the report was made with (for its tokenizer and chat template)")
    ap.add_argument("report", help="lookup.json from python -m mote.bench.lookup")
    ap.add_argument("--engine", help="which engine's plain answers to replay (default: the report's first)")
    ap.add_argument("--max-ngram", type=int, default=lookup.MAX_NGRAM)
    ap.add_argument("--max-draft", type=int, default=lookup.MAX_DRAFT)
    args = ap.parse_args(argv)

    from mote.bench.lookup import load_cases
    from mote.loader import load

    try:
        report = json.loads(Path(args.report).read_text(encoding="utf-8"))
        engine = args.engine or next(iter(report["pairs"]))
        pairs, kinds = report["pairs"][engine], report["meta"]["kinds"]
    except (OSError, ValueError, KeyError, StopIteration, TypeError, AttributeError) as e:
        ap.error(f"{args.report} is not a report of python -m mote.bench.lookup with {args.engine or 'any'} "
                 f"answers ({type(e).__name__}: {e})")
    cases = load_cases()
    numbers = report["meta"].get("cases", list(range(len(cases))))  # reports before 2026-12-08: all cases
    if len(numbers) != len(pairs) or any(not 0 <= i < len(cases) for i in numbers):
        ap.error(f"{args.report} answers {len(pairs)} requests, not the requests {numbers} of the benchmark")
    try:
        session = load(args.model)
    except (OSError, ValueError) as e:
        ap.error(f"cannot load {args.model}: {e}")
    prompts = [session.prompt_tokens({"messages": cases[i]["messages"]}) for i in numbers]
    print(f"{engine} answers, MAX_NGRAM {args.max_ngram}, MAX_DRAFT {args.max_draft}; plain ÷ lookup steps, geomean:")
    for c in ROW_COSTS:
        policy = lookup.DraftPolicy()
        ratios: dict[str, list[float]] = {}
        bounds: dict[str, list[float]] = {}
        for prompt, pair, kind in zip(prompts, pairs, kinds):
            answer = pair["plain"]["token_ids"]
            ratios.setdefault(kind, []).append(replay(prompt, answer, c, args.max_ngram, args.max_draft, policy))
            bounds.setdefault(kind, []).append(replay(prompt, answer, c, args.max_ngram, args.max_draft, None))
        print(f"  c = {c:.2f}: " + "; ".join(
            f"{kind} {geomean(r):.3f} (min {min(r):.2f}, ceiling {geomean(bounds[kind]):.3f})" for kind, r in ratios.items()))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
