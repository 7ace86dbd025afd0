"""How long `Mote.load` takes to start the workers on a warm visit over a network with latency: the
milliseconds from the call to its first progress event (the workers exist and boot), on the second
visit of a fresh Chromium profile (the scripts in the HTTP cache), with every response of the
benchmark's server LATENCY ms late (mote/bench/browser.py bench_app).

    python scripts/embed_first_progress.py MODEL.gguf [--workers 2] [--latency 100] [--rounds 5]

Run it from a checkout (its mote/, web/ and static/ are used); for a before/after, run it from two.
Prints one line: the checkout and every round's milliseconds.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, os.getcwd())

from mote.bench.browser import CHROMIUM_ARGS, bench_app, serve_in_thread  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("model", type=Path)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--latency", type=int, default=100, help="ms added to every response")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--chromium", default=os.environ.get("MOTE_CHROMIUM", "/usr/bin/chromium"))
    args = ap.parse_args()
    from playwright.sync_api import sync_playwright

    with tempfile.TemporaryDirectory() as served:
        (Path(served) / args.model.name).symlink_to(args.model.resolve())
        out = []
        with serve_in_thread(bench_app(Path(served), False, args.latency)) as base, sync_playwright() as p:
            for _ in range(args.rounds):
                with tempfile.TemporaryDirectory() as profile:
                    for visit in range(2):
                        ctx = p.chromium.launch_persistent_context(profile, executable_path=args.chromium,
                                                                   args=CHROMIUM_ARGS, headless=True)
                        page = ctx.pages[0] if ctx.pages else ctx.new_page()
                        page.goto(base + "/__bench__/")
                        page.wait_for_function("() => window.Mote !== undefined", timeout=30_000)
                        ms = page.evaluate("""([url, workers]) => new Promise((resolve) => {
                            const t0 = performance.now();
                            Mote.load(url, {workers, onProgress: () => resolve(performance.now() - t0)})
                                .catch((e) => resolve(String(e)));
                        })""", [f"{base}/models/{args.model.name}", args.workers])
                        if visit:
                            out.append(ms if isinstance(ms, str) else round(ms))
                        time.sleep(1.5)   # the first visit's stores finish
                        ctx.close()
    print(os.getcwd(), f"workers {args.workers}, latency {args.latency} ms: first progress ms after Mote.load:", out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
