"""Prompt-lookup benchmark: decoding with drafts from the prompt (engine/lookup.py) against plain
decoding, on code-editing and free-writing requests, natively, in Chromium and beside wllama.

    python -m mote.bench.lookup MODEL [--native] [--browser 1 2] [--wllama] [-n 96] [--out DIR]

The requests are mote/bench/data/lookup_prompts.json: 10 code edits (a 15-22 line function and an
instruction that keeps most of it) and 5 free-writing requests, as chat messages through the
model's chat template, answered greedily with up to -n tokens.

Paired rounds: for every request the same loaded model answers with lookup and without, the order
alternating from request to request (engine.session reuses the prompt's KV cache for the second,
which shortens only its prefill); the ratio compares the two decode tok/s of the pair, so drift of
the machine between requests falls on both. Each pair's greedy tokens must be identical (the exit
status is 1 otherwise). Per engine and kind the report gives the geometric mean of the paired
ratios, their range, the acceptance rate (drafted tokens kept) and the tok/s.

--wllama runs the same requests on wllama (llama.cpp in WebAssembly, one thread), its prompt being
the chat template's text; "lookup / wllama" divides Mote's lookup tok/s by wllama's on the same
request. --browser N [N ...]: Mote in headless Chromium on N workers per row (N = 1: one worker).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

PROMPTS = Path(__file__).resolve().parent / "data" / "lookup_prompts.json"


def load_cases(path: Path = PROMPTS) -> list[dict]:
    return json.loads(path.read_text(encoding="utf-8"))["cases"]


def native_runs(model_path: Path, cases: list[dict], n: int, n_ctx: int | None) -> list[dict]:
    """Paired plain/lookup answers in this CPython process (the CLI's load policy)."""
    from engine.sampler import SamplingParams
    from mote.loader import load

    session = load(str(model_path), n_ctx=n_ctx)
    pairs = []
    for i, case in enumerate(cases):
        pair = {}
        for speculative in ((True, False) if i % 2 else (False, True)):
            params = SamplingParams(temperature=0, max_tokens=n, speculative=speculative,
                                    stop=tuple(session.template.stop))
            gen = session.start({"messages": case["messages"]}, params)
            t0 = time.perf_counter()
            first = None
            while (ev := gen.step()) is not None:
                if ev["type"] == "token" and first is None:
                    first = time.perf_counter() - t0
                done = ev
            pair["lookup" if speculative else "plain"] = _record(done, first)
        pairs.append(pair)
        _progress("native", i, cases, pair)
    return pairs


def _record(done: dict, ttft_s: float | None) -> dict:
    return {"token_ids": done["token_ids"], "text": done["full_text"], "n_prompt": done["n_prompt"],
            "n_generated": done["n_generated"], "decode_tok_s": done["decode_tok_s"],
            "prefill_tok_s": done["prefill_tok_s"], "ttft_s": ttft_s, "n_drafted": done["n_drafted"],
            "n_accepted": done["n_accepted"]}


def _progress(engine: str, i: int, cases: list[dict], pair: dict) -> None:
    p, q = pair.get("plain") or {}, pair.get("lookup") or {}
    print(f"[lookup] {engine} {i + 1}/{len(cases)} {cases[i]['kind']}: plain {p.get('decode_tok_s', 0):.2f} tok/s, "
          f"lookup {q.get('decode_tok_s', 0):.2f} tok/s ({q.get('n_accepted', 0)}/{q.get('n_drafted', 0)} kept)",
          file=sys.stderr, flush=True)


def browser_pairs(base: str, chromium: str, url: str, cases: list[dict], n: int, n_ctx: int | None,
                  workers: int, timeout_s: float) -> dict:
    from mote.bench.browser import browser_run

    chats = [c["messages"] for c in cases]
    out = browser_run(base, chromium, "mote", url, chats, n, n_ctx, timeout_s, workers=workers, program="lookup")
    for i, pair in enumerate(out["runs"]):
        _progress(f"chromium x{workers}", i, cases, pair)
    return out


def wllama_runs(base: str, chromium: str, url: str, prompts: list[str], n: int, n_ctx: int | None,
                timeout_s: float) -> list[dict]:
    from mote.bench.browser import browser_run

    out = browser_run(base, chromium, "wllama", url, prompts, n, n_ctx, timeout_s)
    return out["runs"]


def summarize(cases: list[dict], pairs: list[dict], wllama: list[dict] | None = None) -> dict:
    """Per kind: geometric mean and range of lookup/plain decode ratios, acceptance, identical tokens."""
    out = {}
    for kind in sorted({c["kind"] for c in cases}):
        idx = [i for i, c in enumerate(cases) if c["kind"] == kind]
        ratios = [pairs[i]["lookup"]["decode_tok_s"] / pairs[i]["plain"]["decode_tok_s"] for i in idx]
        drafted = sum(pairs[i]["lookup"]["n_drafted"] for i in idx)
        kept = sum(pairs[i]["lookup"]["n_accepted"] for i in idx)
        row = {"n": len(idx), "ratio_geomean": _geomean(ratios), "ratio_min": min(ratios), "ratio_max": max(ratios),
               "plain_tok_s": statistics.fmean(pairs[i]["plain"]["decode_tok_s"] for i in idx),
               "lookup_tok_s": statistics.fmean(pairs[i]["lookup"]["decode_tok_s"] for i in idx),
               "drafted": drafted, "accepted": kept, "acceptance": kept / drafted if drafted else None,
               "generated": sum(pairs[i]["lookup"]["n_generated"] for i in idx),
               "identical": all(pairs[i]["lookup"]["token_ids"] == pairs[i]["plain"]["token_ids"] for i in idx)}
        if wllama:
            w = [wllama[i]["decode_tok_s"] for i in idx]
            row["wllama_tok_s"] = statistics.fmean(w)
            row["vs_wllama_geomean"] = _geomean([pairs[i]["lookup"]["decode_tok_s"] / w[k] for k, i in enumerate(idx)])
            row["plain_vs_wllama_geomean"] = _geomean([pairs[i]["plain"]["decode_tok_s"] / w[k] for k, i in enumerate(idx)])
        out[kind] = row
    return out


def _geomean(xs: list[float]) -> float:
    return math.exp(statistics.fmean(math.log(x) for x in xs))


def markdown(report: dict) -> str:
    lines = [f"Prompt lookup, {report['meta']['model']}, greedy, up to {report['meta']['n_predict']} tokens, "
             f"{report['meta']['time']} ({report['meta']['platform']}; {report['meta'].get('browser') or 'no browser'})", "",
             "| engine | kind | requests | plain tok/s | lookup tok/s | lookup ÷ plain (geomean, range) | kept / drafted "
             "| wllama tok/s | lookup ÷ wllama | identical tokens |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for engine, summary in report["summary"].items():
        for kind, r in summary.items():
            acc = f"{r['accepted']}/{r['drafted']} ({r['acceptance']:.0%})" if r["drafted"] else "0/0"
            wl = f"{r['wllama_tok_s']:.2f}" if "wllama_tok_s" in r else "–"
            vs = f"{r['vs_wllama_geomean']:.2f}" if "vs_wllama_geomean" in r else "–"
            lines.append(f"| {engine} | {kind} | {r['n']} | {r['plain_tok_s']:.2f} | {r['lookup_tok_s']:.2f} | "
                         f"{r['ratio_geomean']:.2f} ({r['ratio_min']:.2f}–{r['ratio_max']:.2f}) | {acc} | {wl} | {vs} | "
                         f"{'yes' if r['identical'] else 'NO'} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m mote.bench.lookup", description=__doc__.split("\n")[0])
    ap.add_argument("model", help=".gguf path or pulled model name (an instruction-tuned model)")
    ap.add_argument("--native", action="store_true", help="paired runs in this CPython process")
    ap.add_argument("--browser", type=int, nargs="*", default=None, metavar="N",
                    help="paired runs in headless Chromium on N workers (one row per N)")
    ap.add_argument("--wllama", action="store_true", help="the same requests on wllama, one thread")
    ap.add_argument("--wllama-from", default=None, metavar="LOOKUP.json",
                    help="compare with the wllama runs of an earlier report instead of running wllama")
    ap.add_argument("-n", "--n-predict", type=int, default=96)
    ap.add_argument("--ctx", type=int, default=1024)
    ap.add_argument("--cases", default=None, help="only these request numbers, e.g. 0,3,10 (default: all)")
    ap.add_argument("--out", default="bench-out/lookup")
    ap.add_argument("--chromium", default=os.environ.get("MOTE_CHROMIUM", "/usr/bin/chromium"))
    ap.add_argument("--run-timeout", type=float, default=3000.0)
    args = ap.parse_args(argv)

    from mote.pull import resolve_model

    path = Path(resolve_model(args.model)).resolve()
    cases = load_cases()
    numbers = [int(i) for i in args.cases.split(",")] if args.cases else list(range(len(cases)))
    cases = [cases[i] for i in numbers]
    report = {"meta": {"model": path.name, "n_predict": args.n_predict, "n_ctx": args.ctx, "cases": numbers,
                       "time": time.strftime("%Y-%m-%d %H:%M:%S"),
                       "platform": f"{platform.machine()}, {os.cpu_count()} CPUs, Python {platform.python_version()}",
                       "kinds": [c["kind"] for c in cases]},
              "pairs": {}, "summary": {}}
    out_dir = Path(args.out)
    out_dir.mkdir(parents=True, exist_ok=True)

    def save() -> str:  # after every engine: a later failure keeps what was measured
        (out_dir / "lookup.json").write_text(json.dumps(report, indent=1))
        md = markdown(report)
        (out_dir / "lookup.md").write_text(md)
        return md

    if args.native:
        pairs = native_runs(path, cases, args.n_predict, args.ctx)
        report["pairs"]["cpython"] = pairs
        report["summary"]["cpython"] = summarize(cases, pairs)
        save()
    if args.browser is not None or args.wllama:
        from mote.bench.browser import RunFailed, _browser_version, bench_app, serve_in_thread

        report["meta"]["browser"] = _browser_version(args.chromium)
        with tempfile.TemporaryDirectory(prefix="mote-lookup-") as tmp:
            os.symlink(path, Path(tmp) / "model.gguf")
            with serve_in_thread(bench_app(Path(tmp), args.wllama)) as base:
                url = f"{base}/models/model.gguf"
                for w in args.browser or []:
                    out = browser_pairs(base, args.chromium, url, cases, args.n_predict, args.ctx, w, args.run_timeout)
                    report["pairs"][f"chromium x{w}"] = out["runs"]
                    report["summary"][f"chromium x{w}"] = summarize(cases, out["runs"])
                    save()
                if args.wllama:
                    from engine.chat import ChatTemplate
                    from engine.gguf import open_gguf

                    template = ChatTemplate.from_metadata(open_gguf(path).metadata)
                    prompts = [template.render(c["messages"]) for c in cases]
                    print("[lookup] wllama ...", file=sys.stderr, flush=True)
                    try:
                        report["wllama"] = wllama_runs(base, args.chromium, url, prompts, args.n_predict, args.ctx,
                                                       args.run_timeout)
                    except RunFailed as e:
                        report["wllama_error"] = str(e)
                    else:
                        for engine, pairs in report["pairs"].items():
                            if engine.startswith("chromium"):
                                report["summary"][engine] = summarize(cases, pairs, report["wllama"])
    if args.wllama_from:
        earlier = json.loads(Path(args.wllama_from).read_text())
        report["wllama"], report["meta"]["wllama_from"] = earlier["wllama"], earlier["meta"]["time"]
        for engine, pairs in report["pairs"].items():
            if engine.startswith("chromium"):
                report["summary"][engine] = summarize(cases, pairs, report["wllama"])
    md = save()
    print(md)
    ok = all(r["identical"] for s in report["summary"].values() for r in s.values())
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
