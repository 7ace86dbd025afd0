"""Decode speed with 1 vs N workers in headless Chromium, where each shard's time goes, message costs.

    .venv/bin/python -m mote.bench.parallel MODEL.gguf [MODEL.gguf ...] [--workers 1 2 2f] [--repeat 3] [-n 32]

The detailed companion of `mote bench --browser --workers N` (mote/bench/browser.py), on the same
page (mote/bench/pages/, window.MoteBench: run and measureMessaging).

A worker count "Nf" splits only the FFN and the vocabulary (attention replicated: one sync point per
layer instead of two). `cores_used` is the CPU time of the tab's renderer threads (/proc) divided by
the run's wall time: how much of the machine the workers actually got.

For each model, runs alternate between worker counts (1, 2, 1, 2, ...) so that load from other
processes hits every count alike; each run is a fresh ParallelWorker in the same tab (fresh Pyodide
per worker, model read from the page's single download). Prints one JSON line per run and a
summary: median decode tok/s per worker count (from the leader's done event and from the page's
token timestamps), the speed-up, the per-sync wait, where each shard's time goes per forward
(Python compute, waits, copies, time between forwards), WASM memory per worker, the tab's peak RSS,
and the load average before and after. Also times postMessage round trips between two workers.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import tempfile
import time
from pathlib import Path

from mote.bench.browser import CHROMIUM_ARGS, bench_app, renderer_peak_rss, renderer_pids, serve_in_thread

CHROMIUM = os.environ.get("MOTE_CHROMIUM", "/usr/bin/chromium")

PROMPT = "Once upon a time, in a small village, there lived an old clockmaker who"


def renderer_cpu_seconds() -> float:
    """CPU seconds (user + system) of the Chromium renderers this process started, exited threads included."""
    total = 0
    for pid in renderer_pids():
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            total += int(fields[11]) + int(fields[12])  # utime, stime in clock ticks (all threads, live or exited)
        except OSError:
            pass
    return total / os.sysconf("SC_CLK_TCK")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("models", nargs="+", type=Path)
    ap.add_argument("--workers", nargs="+", default=["1", "2", "2f"])
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("-n", "--n-predict", type=int, default=32)
    ap.add_argument("--n-ctx", type=int, default=256)
    args = ap.parse_args()
    from playwright.sync_api import sync_playwright

    with tempfile.TemporaryDirectory() as tmp:
        models = Path(tmp)
        for m in args.models:
            dst = models / m.name
            try:
                os.link(m, dst)
            except OSError:
                shutil.copy(m, dst)
        with serve_in_thread(bench_app(models)) as base, sync_playwright() as p:
            browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
            page = browser.new_page()
            page.goto(f"{base}/__bench__/")
            page.wait_for_function("window.MoteBench !== undefined", timeout=60_000)
            msg = page.evaluate("() => MoteBench.measureMessaging(640, 1000)")
            msg_big = page.evaluate("() => MoteBench.measureMessaging(131072, 100)")
            print("messaging round trip ms, 640 floats:", json.dumps(msg))
            print("messaging round trip ms, 131072 floats (512 KB logits slice):", json.dumps(msg_big))
            listing = page.evaluate("async () => (await fetch('/models')).json()")
            summary = {}
            for entry in listing:
                runs = {n: [] for n in args.workers}
                for _ in range(args.repeat):
                    for n in args.workers:
                        load = os.getloadavg()[0]
                        cpu0, t0 = renderer_cpu_seconds(), time.perf_counter()
                        out = page.evaluate("""async ([n, split, model, prompt, k, ctx]) => MoteBench.run(
                            {workers: n, splitAttention: split, model, prompt, n_ctx: ctx,
                             params: {temperature: 0, max_tokens: k}})""",
                                            [int(n.rstrip("f")), not n.endswith("f"), entry, PROMPT, args.n_predict, args.n_ctx])
                        out["cores_used"] = (renderer_cpu_seconds() - cpu0) / (time.perf_counter() - t0)
                        out["loadavg_1m"] = load
                        print(json.dumps({k: v for k, v in out.items() if k not in ("token_ids", "text")}), flush=True)
                        runs[n].append(out)
                ref = runs[args.workers[0]][0]["token_ids"]
                same = all(r["token_ids"] == ref for rs in runs.values() for r in rs)
                row = {"same_tokens": same}
                for n, rs in runs.items():
                    st = [r["worker_stats"][0] for r in rs]
                    row[n] = {
                        "decode_tok_s": statistics.median(r["decode_tok_s"] for r in rs),
                        "page_decode_tok_s": statistics.median(r["page_decode_tok_s"] or 0 for r in rs),
                        "all_decode_tok_s": [round(r["decode_tok_s"], 2) for r in rs],
                        "wait_ms_per_sync": statistics.median(s["wait_ms"] / max(1, s["syncs"]) for s in st),
                        # per forward, each shard: Python compute, waiting at sync points, copying
                        # partials, and the time between forwards (leader: sampling; others: idle)
                        "ms_per_forward": [{k: round(statistics.median(r["worker_stats"][i][k] / max(1, r["worker_stats"][i]["forwards"])
                                                                      for r in rs), 2)
                                            for k in ("compute_ms", "wait_ms", "copy_ms", "between_ms")}
                                           for i in range(len(rs[0]["worker_stats"]))],
                        "syncs_per_forward": st[0]["syncs"] / max(1, st[0]["forwards"]),
                        "wasm_mb_per_worker": [round(s["wasm_bytes"] / 2**20) for s in rs[-1]["worker_stats"]],
                        "load_s": statistics.median(r["load_s"] for r in rs),
                        "cores_used": [round(r["cores_used"], 2) for r in rs],
                        "loadavg": [round(r["loadavg_1m"], 1) for r in rs],
                    }
                first = args.workers[0]
                for n in args.workers[1:]:
                    row[f"speedup_{n}x"] = row[n]["decode_tok_s"] / row[first]["decode_tok_s"]
                summary[entry["name"] if entry.get("name") else entry["file"]] = row
            browser.close()
            rss = renderer_peak_rss()
    print("summary:", json.dumps(summary, indent=1))
    print("tab peak RSS MB:", None if rss is None else round(rss / 2**20), " load average now:", os.getloadavg())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
