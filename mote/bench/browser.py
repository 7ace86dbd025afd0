"""`mote bench --browser`: the engine measured in headless Chromium, beside CPython and wllama.

    mote bench MODEL [MODEL ...] --browser [--native] [--workers 2 4] [--compare wllama] [-n 32] [--repeat 3] [--out bench-out]
    python -m mote.bench.browser MODEL ...  (the same, without the CLI wiring)

For every model (several quantizations are several files) and every engine, `--repeat` runs,
each in a freshly launched Chromium (cold: no Cache API copy, no warm renderer), with the same
prompts for every model. The engines take turns (round r of every engine, then round r + 1), and
the table's "decode ÷ mote" / "decode ÷ wllama" columns are paired ratios: each run's decode tok/s
over the baseline's run of the same round, so a machine that speeds up or slows down between rounds
(shared cores, other load) does not tilt the comparison. Per run:

    ready_s      from the page's load call to a model ready to answer (Mote: Mote.load or the
                 ParallelWorker's ready event; wllama: its ESM import, fetch and loadModel)
    first_token_s  from the start of the page's navigation to the first token of the first prompt
                 (with --warm, the row "mote (warm)": the same on a second visit, Chromium started
                 again on the same profile: runtime in the HTTP cache, model in the Cache API)
    download_s   fetching the GGUF (Mote: the worker's weights stage after boot, cache or network;
                 wllama: fetch into a Blob)
    init_s       runtime boot + model load (Mote: Pyodide, numpy, engine wheels, GGUF parse)
    ttft_s       request -> first token (prefill included)
    prefill / decode tok/s   as each engine reports them (Mote's done event, llama.cpp's timings)
    tok/s at the page        Mote: the rate token events reached the page (each token's trip included)
    wasm_mb      Mote: the worker's WASM linear memory (it never shrinks: its size is the peak)
    js_heap_mb   JS heap of the page and its workers (CDP Runtime.getHeapUsage), after the run
    peak_rss_mb  the tab's renderer process peak resident memory (Linux /proc VmHWM): both engines
    greedy_ok    the browser's greedy tokens == the CPython engine's tokens for the same prompt
                 (mote/bench/native.py greedy_run in this process); wllama: llama.cpp's tokens

`--workers N [N ...]` adds a row `mote ×N workers` per N: Mote decoding across N Web Workers
(static/parallel.js, one model shard per worker), with the same prompts, greedy settings and
correctness check; its download_s is the coordinator's fetch + sha256, init_s the workers' boot +
shard load, wasm_mb the sum over the workers' WASM memories.

`--preload` adds a row `mote, preload`: the page calls Mote.preload() as it loads (bench.js), so one
worker boots before Mote.load is called; its ready_s still counts from that call, so compare its
first_token_s (from navigation) with the plain row's.

The programs that run in the page are mote/bench/pages/ (bench.js: window.MoteBench), served by
bench_app() at /__bench__/ beside the dev server's routes; nothing of them ships in static/.

`--native` adds the CPython engine's own numbers (load, TTFT, tok/s, process peak RSS). Output:
bench.json (every run), bench.md (median ± half the min-max range), bench.png (decode tok/s and
peak memory per model and engine; needs matplotlib, a dev dependency). The exit status is 1 when
any greedy_ok is false.

wllama: `scripts/setup_wllama.sh` installs npm `@wllama/wllama` into .cache/wllama (git-ignored);
its ESM and single-thread wasm are served from /wllama/ by the same dev server (no COOP/COEP, so
single-thread, like Mote).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import re
import shutil
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PAGES = Path(__file__).resolve().parent / "pages"  # the benchmark's page and its programs
WLLAMA_DIR = ROOT / ".cache" / "wllama" / "node_modules" / "@wllama" / "wllama"
WLLAMA_VERSION = "3.13.0"
HISTORY = ROOT / "docs" / "bench" / "history.jsonl"  # every recorded run: a speed claim is a range over these
# The machine's network is closed: background networking, sync, component updates and QUIC are off
# (otherwise Chromium retries refused connections at every start). Also the tests' flags.
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]
MAX_WORKERS = 8  # static/worker-count.js MAX_WORKERS
# The "layout" of the --model-snapshot row: the default layout, loaded with Mote.load's modelSnapshot.
SNAPSHOT = "model-snapshot"
PRELOAD = "preload"  # the page calls Mote.preload() as it loads (bench.js, ?preload)

DEFAULT_PROMPTS = (
    "Once upon a time, in a small village, there lived an old clockmaker who",
    "The three most important things to know about the ocean are",
)


class BenchError(Exception):
    """A user-facing error (missing Chromium, unbuilt assets, ...): one line, exit status 2."""


class RunFailed(Exception):
    """One engine failed on one model (e.g. llama.cpp refuses the file): shown in its table row."""


# ---- arguments ---------------------------------------------------------------------------------

def add_browser_args(parser: argparse.ArgumentParser) -> None:
    """The --browser options, added to an existing `bench` parser (skips names it already has)."""
    from mote.cli import whole_number

    have = set(parser._option_string_actions)  # noqa: SLF001 - argparse has no public lookup

    def add(*names, **kw):
        if not have.intersection(names):
            parser.add_argument(*names, **kw)

    add("--browser", action="store_true", help="run in headless Chromium (Playwright) instead of natively")
    add("--native", action="store_true", help="with --browser: add the CPython engine's numbers")
    add("--workers", type=_worker_count, nargs="+", default=None, metavar="N",
        help="with --browser: add a row per N for Mote decoding across N Web Workers (N >= 2)")
    add("--compare", action="append", choices=["wllama"], default=None,
        help="with --browser: add wllama (llama.cpp in WebAssembly) on the same GGUF")
    add("--warm", action="store_true",
        help="with --browser: each Mote run also revisits the page in the same browser profile (runtime in "
             "the HTTP cache, model in the Cache API): a row 'mote (warm)' per Mote row")
    add("--int8", action="store_true",
        help="with --browser: add a row per Mote row with the int8 weight layout (LoadRequest.layout), paired")
    add("--compact", action="store_true",
        help="with --browser: add a row per Mote row with the compact layout (every block type packed), paired")
    add("--model-snapshot", action="store_true",
        help="with --browser: add a row per Mote row that asks for a model snapshot (Mote.load modelSnapshot; "
             "LoadRequest.model_snapshot on N workers, one per shard; with --warm, its warm visit starts from "
             "it), paired")
    add("--preload", action="store_true",
        help="with --browser: add a row 'mote, preload' in which the page calls Mote.preload() as it loads "
             "(one worker boots before Mote.load is called), paired")
    add("--bench-prompt", action="append", default=None,
        help="prompt for every model (repeatable; default: two fixed prompts)")
    add("--out", default="bench-out", help="folder for bench.json, bench.md, bench.png (default bench-out)")
    add("--chromium", default=os.environ.get("MOTE_CHROMIUM", "/usr/bin/chromium"),
        help="Chromium executable (default /usr/bin/chromium or $MOTE_CHROMIUM)")
    add("--run-timeout", type=float, default=600.0, help="seconds allowed for one browser run")
    add("--latency", type=whole_number(0), default=0, metavar="MS",
        help="with --browser: the server answers every request MS milliseconds late, as over a network "
             "(loopback has none); the same for every engine")
    add("-n", "--n-predict", type=whole_number(1), default=32, help="tokens to generate per prompt")
    add("--repeat", type=whole_number(1), default=3, help="runs per model and engine")
    add("--ctx", type=int, default=None, help="KV cache length (default: the engine's)")
    add("--json", action="store_true", help="print the JSON report instead of the table")
    add("--history", default=str(HISTORY),
        help="append this run's medians and paired ratios here, and warn when a ratio falls outside "
             "the range recorded before (default docs/bench/history.jsonl; 'none' to skip)")


def _worker_count(text: str) -> int:
    """--workers values: whole numbers from 2 to MAX_WORKERS (1 is the plain `mote` row)."""
    try:
        n = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"worker count must be a whole number, got {text!r}") from None
    if not 2 <= n <= MAX_WORKERS:
        raise argparse.ArgumentTypeError(f"worker count must be 2..{MAX_WORKERS} (1 worker is the plain "
                                         f"'mote' row), got {n}")
    return n


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m mote.bench.browser", description=__doc__.split("\n")[0])
    p.add_argument("model", nargs="+", help=".gguf paths or pulled model names")
    p.add_argument("-p", "--prompt", default=None, help="one prompt (same as a single --bench-prompt)")
    add_browser_args(p)
    return p


# ---- the server and the browser ------------------------------------------------------------------

def bench_app(models_dir: Path, with_wllama: bool = False, latency_ms: int = 0):
    """The dev server app (web.app.create_app) plus the benchmark's page at /__bench__/
    (mote/bench/pages/) and, for --compare wllama, wllama's ESM and wasm at /wllama/. latency_ms:
    every response starts that much later (a round trip over a network, which loopback lacks)."""
    from fastapi.responses import FileResponse
    from fastapi.staticfiles import StaticFiles

    from web.app import Settings, create_app

    app = create_app(Settings(models_dir=models_dir, follow_symlinks=True))
    # wllama starts its worker from a blob: URL, so the page's own CSP allows blob: workers
    csp = ("default-src 'self'; script-src 'self' 'wasm-unsafe-eval'; worker-src 'self' blob:; "
           "connect-src 'self' blob: data:; object-src 'none'; base-uri 'none'")

    @app.get("/__bench__/", include_in_schema=False)
    async def bench_page():
        return FileResponse(PAGES / "index.html", headers={"Content-Security-Policy": csp, "Cache-Control": "no-store"})

    app.mount("/__bench__", StaticFiles(directory=PAGES), name="bench")
    if latency_ms:
        import asyncio

        @app.middleware("http")
        async def late(request, call_next):
            await asyncio.sleep(latency_ms / 1000)
            return await call_next(request)
    if with_wllama:
        app.mount("/wllama", StaticFiles(directory=WLLAMA_DIR), name="wllama")
    return app


@contextlib.contextmanager
def serve_in_thread(app, host: str = "127.0.0.1") -> Iterator[str]:
    """uvicorn on a free port of `host` in a daemon thread; yields the base URL, stops it afterwards.
    Also the tests' server (tests/browser_util.py)."""
    import socket

    import uvicorn

    with socket.socket() as s:
        s.bind((host, 0))
        port = s.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, host=host, port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.time() + 15
    while not server.started:
        if time.time() > deadline or not thread.is_alive():
            raise BenchError("the dev server did not start within 15 s")
        time.sleep(0.02)
    try:
        yield f"http://{host}:{port}"
    finally:
        server.should_exit = True
        thread.join(10)


def _children(pid: int) -> list[int]:
    out = []
    for task in Path(f"/proc/{pid}/task").glob("*"):
        try:
            out += [int(c) for c in (task / "children").read_text().split()]
        except OSError:
            pass
    return out


def renderer_pids() -> list[int]:
    """Chromium renderer processes started (directly or not) by this process; [] without /proc."""
    seen, todo, out = set(), [os.getpid()], []
    while todo:
        pid = todo.pop()
        if pid in seen:
            continue
        seen.add(pid)
        todo += _children(pid)
        try:
            if b"--type=renderer" in Path(f"/proc/{pid}/cmdline").read_bytes():
                out.append(pid)
        except OSError:
            pass
    return out


def renderer_peak_rss(pids=None) -> int | None:
    """Largest VmHWM (peak resident set, bytes) among `pids` (default: renderer_pids()).

    A page and its workers live in one renderer process, so this is the tab's peak memory as the OS
    sees it (WASM memory, JS heaps, Chromium's own share). None where /proc is unavailable.
    """
    peak = None
    for pid in renderer_pids() if pids is None else pids:
        try:
            m = re.search(r"VmHWM:\s+(\d+) kB", Path(f"/proc/{pid}/status").read_text())
        except OSError:
            continue
        if m:
            peak = max(peak or 0, int(m[1]) * 1024)
    return peak


def _js_heap_mb(browser) -> float | None:
    """Used JS heap over the page and worker targets (CDP Runtime.getHeapUsage), in MB."""
    try:
        cdp = browser.new_browser_cdp_session()
        targets = cdp.send("Target.getTargets")["targetInfos"]
        total = 0.0
        for t in targets:
            if t["type"] not in ("page", "worker"):
                continue
            sid = cdp.send("Target.attachToTarget", {"targetId": t["targetId"], "flatten": False})["sessionId"]
            replies: list[dict] = []
            cdp.on("Target.receivedMessageFromTarget",
                   lambda e, sid=sid: replies.append(json.loads(e["message"])) if e.get("sessionId") == sid else None)
            cdp.send("Target.sendMessageToTarget",
                     {"sessionId": sid, "message": json.dumps({"id": 1, "method": "Runtime.getHeapUsage"})})
            deadline = time.time() + 5
            while not any(r.get("id") == 1 for r in replies) and time.time() < deadline:
                cdp.send("Target.getTargets")  # pumps the event loop while waiting
            got = next((r for r in replies if r.get("id") == 1), None)
            if got and "result" in got:
                total += got["result"]["usedSize"] / 1e6
            cdp.send("Target.detachFromTarget", {"sessionId": sid})
        cdp.detach()
        return total
    except Exception:  # noqa: BLE001 - a missing metric must not sink the benchmark
        return None


def _check_chromium(path: str) -> None:
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError as e:
        raise BenchError(f"--browser needs Playwright: pip install playwright ({e})") from e
    if not (os.path.isfile(path) or shutil.which(path)):
        raise BenchError(f"Chromium not found at {path!r}: install it (apt-get install -y chromium) "
                         "or pass --chromium PATH / set MOTE_CHROMIUM")


def browser_run(base: str, chromium: str, engine: str, model_url: str, prompts: list, n: int,
                n_ctx: int | None, timeout_s: float, workers: int | None = None, program: str | None = None,
                layout: str | None = None, warm: bool = False) -> dict:
    """One cold run in a fresh Chromium: load the model, answer every prompt, read memory.
    engine "mote" with `workers` set: Mote across that many Web Workers (MoteBench.parallel);
    `program` names another MoteBench program taking the same arguments (e.g. "lookup");
    `layout`: Mote's weight layout ("packed", the default, "compact" or "int8").
    warm: then a second visit, Chromium started again on the same profile (the runtime in the HTTP
    cache, the model in the Cache API), returned as out["warm"]."""
    with tempfile.TemporaryDirectory(prefix="mote-bench-profile-") as profile:
        out = _visit(base, chromium, engine, model_url, prompts, n, n_ctx, timeout_s, workers, program, layout, profile)
        if warm:
            out["warm"] = _visit(base, chromium, engine, model_url, prompts, n, n_ctx, timeout_s, workers, program,
                                 layout, profile)
    return out


def _visit(base: str, chromium: str, engine: str, model_url: str, prompts: list, n: int, n_ctx: int | None,
           timeout_s: float, workers: int | None, program: str | None, layout: str | None, profile: str) -> dict:
    """One visit of the benchmark page in Chromium started on the `profile` folder (fresh: cold)."""
    from playwright.sync_api import Error as PlaywrightError
    from playwright.sync_api import sync_playwright

    logs: list[str] = []
    before = set(renderer_pids())
    with sync_playwright() as p:
        try:
            browser = p.chromium.launch_persistent_context(profile, executable_path=chromium, args=CHROMIUM_ARGS,
                                                           headless=True)
        except PlaywrightError as e:
            raise BenchError(f"could not start Chromium at {chromium!r}: {str(e).splitlines()[0]}") from e
        try:
            page = browser.pages[0] if browser.pages else browser.new_page()
            page.set_default_timeout(timeout_s * 1000)
            page.on("console", lambda m: logs.append(f"{m.type}: {m.text}") if m.type in ("error", "warning") else None)
            page.on("pageerror", lambda e: logs.append(f"pageerror: {e}"))
            page.goto(base + "/__bench__/" + ("?preload" if layout == PRELOAD else ""))
            t0 = time.perf_counter()
            try:
                page.wait_for_function("() => window.MoteBench !== undefined", timeout=30_000)
                program = program or ("parallel" if workers else "mote" if engine == "mote" else engine)
                options = {"model_snapshot": True} if layout == SNAPSHOT else {}
                out = page.evaluate(f"([u, p, n, c, w, l, o]) => MoteBench.{program}(u, p, n, c, w, l, o)",
                                    [model_url, prompts, n, n_ctx, workers, None if layout in (SNAPSHOT, PRELOAD) else layout, options])
                if workers and out.get("workers") != workers:
                    raise RunFailed(f"{engine}: asked for {workers} workers, the page ran {out.get('workers')}")
            except PlaywrightError as e:
                detail = next((m for m in logs if "Error" in m), logs[-1] if logs else "")
                raise RunFailed(f"{engine}: {str(e).splitlines()[0]} ({detail.splitlines()[0][:200] if detail else 'no console error'})") from e
            out["wall_s"] = time.perf_counter() - t0
            out["js_heap_mb"] = _js_heap_mb(browser.browser) if browser.browser else None
            peak = renderer_peak_rss(set(renderer_pids()) - before)
            out["peak_rss_mb"] = None if peak is None else peak / 2**20
        finally:
            browser.close()
    return out


# ---- the report --------------------------------------------------------------------------------

# ---- history: every run's ratios, so that a claim is a range over all of them ----------------------

def history_record(report: dict) -> dict:
    """What the history keeps of one bench run: when, where, which versions, and per row (model file,
    engine) the median decode tok/s and the paired ratios against each baseline."""
    from engine import __version__

    meta = report["meta"]
    rows = []
    for row in report["rows"]:
        decode = (row.get("stats") or {}).get("decode_tok_s")
        rows.append({
            "model": row["model"], "quant": row["quant"], "file": Path(row["file"]).name, "engine": row["engine"],
            "runs": len(row["runs"]), "decode_tok_s": decode and round(decode["median"], 3),
            "paired": {b: {k: round(v, 4) if isinstance(v, float) else v for k, v in st.items()}
                       for b, st in (row.get("paired") or {}).items() if st},
        })
    return {"date": meta["time"], "machine": meta["platform"], "browser": meta["browser"], "mote": __version__,
            "wllama": WLLAMA_VERSION, "n_predict": meta["n_predict"], "prompts": len(meta["prompts"]), "rows": rows}


def read_history(path: Path) -> list[dict]:
    """The recorded runs, oldest first (lines that are not JSON records are skipped)."""
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except FileNotFoundError:
        return []
    out = []
    for line in lines:
        try:
            rec = json.loads(line)
        except ValueError:
            continue
        if isinstance(rec, dict) and isinstance(rec.get("rows"), list):
            out.append(rec)
    return out


def check_history(record: dict, history: list[dict]) -> list[str]:
    """Warnings for every paired ratio of `record` outside the range of the same ratio's medians in
    `history` (same model file, engine and baseline), naming that range and its dates."""
    seen: dict[tuple, list[tuple[float, str]]] = {}
    for rec in history:
        for row in rec["rows"]:
            for base, st in (row.get("paired") or {}).items():
                if isinstance(st, dict) and isinstance(st.get("median"), (int, float)):
                    seen.setdefault((row.get("file"), row.get("engine"), base), []).append((st["median"], rec.get("date", "?")))
    warnings = []
    for row in record["rows"]:
        for base, st in row["paired"].items():
            past = seen.get((row["file"], row["engine"], base))
            if not past or row["engine"] == base:
                continue
            low, high = min(r for r, _ in past), max(r for r, _ in past)
            if not low <= st["median"] <= high:
                dates = sorted(d[:10] for _, d in past)
                warnings.append(f"{row['engine']} ÷ {base} on {row['file']}: {st['median']:.2f} today, outside "
                                f"the {low:.2f}–{high:.2f} recorded in {len(past)} run(s) from {dates[0]} to {dates[-1]}")
    return warnings


def _stat(xs: list) -> dict | None:
    xs = [x for x in xs if x is not None]
    if not xs:
        return None
    return {"median": statistics.median(xs), "min": min(xs), "max": max(xs), "n": len(xs)}


COLUMNS = [  # (key, header, format)
    ("ready_s", "ready s", "{:.2f}"), ("first_token_s", "1st token after navigation s", "{:.2f}"),
    ("download_s", "download s", "{:.2f}"), ("init_s", "init s", "{:.2f}"), ("ttft_s", "TTFT s", "{:.3f}"),
    ("prefill_tok_s", "prefill tok/s", "{:.1f}"), ("decode_tok_s", "decode tok/s", "{:.1f}"),
    ("page_tok_s", "tok/s at the page", "{:.1f}"),
    ("wasm_mb", "WASM MB", "{:.0f}"), ("js_heap_mb", "JS heap MB", "{:.0f}"), ("peak_rss_mb", "peak RSS MB", "{:.0f}"),
]


BASELINES = ("mote", "wllama")  # paired decode ratios are given against these rows, where present


def paired_ratios(row: dict, base: dict, key: str = "decode_tok_s") -> list[float]:
    """row's r-th run over base's r-th run, for every r both have (the browser runs alternate
    engines, so the r-th runs were measured side by side: drift cancels in the ratio)."""
    out = []
    for a, b in zip(row["runs"], base["runs"]):
        if a.get(key) and b.get(key):
            out.append(a[key] / b[key])
    return out


def summarize(rows: list[dict]) -> list[dict]:
    """Per row: median/min/max of every column, and `paired`: its decode tok/s over each baseline
    engine's (same model file), run by run. The CPython row is not interleaved with the browser
    runs, so it gets no paired ratio."""
    for row in rows:
        row["stats"] = {k: _stat([r.get(k) for r in row["runs"]]) for k, _, _ in COLUMNS}
    for row in rows:
        row["paired"] = {}
        if row["engine"] == "cpython":
            continue
        for name in BASELINES:
            base = next((b for b in rows if b["file"] == row["file"] and b["engine"] == name), None)
            if base is not None:
                row["paired"][name] = _stat(paired_ratios(row, base))
    return rows


def markdown(report: dict) -> str:
    rows = report["rows"]
    # a ratio column per baseline that some other row can be compared with
    bases = [b for b in BASELINES if any(r.get("paired", {}).get(b) for r in rows if r["engine"] != b)]
    head = (["model", "quant", "engine", "runs"] + [h for _, h, _ in COLUMNS] + [f"decode ÷ {b} (paired)" for b in bases]
            + ["greedy = CPython"])
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for row in rows:
        cells = [row["model"], row["quant"] or "?", row["engine"], str(len(row["runs"]))]
        for key, _, fmt in COLUMNS:
            s = row["stats"][key]
            if s is None:
                cells.append("–")
            else:
                spread = (s["max"] - s["min"]) / 2
                cells.append(fmt.format(s["median"]) + (f" ±{fmt.format(spread)}" if s["n"] > 1 else ""))
        for b in bases:
            s = row.get("paired", {}).get(b)
            cells.append("–" if s is None or row["engine"] == b else
                         f"{s['median']:.2f}" + (f" ({s['min']:.2f}–{s['max']:.2f})" if s["n"] > 1 else ""))
        ok, how = row["greedy_ok"], " (text)" if row.get("compared") == "text" else ""
        cells.append(("failed: " + row["error"][:80]) if row.get("error") else
                     "–" if ok is None else ("✅ yes" if ok else "❌ NO") + how)
        lines.append("| " + " | ".join(cells) + " |")
    meta = report["meta"]
    lines += ["", f"{meta['n_predict']} greedy tokens for each of {len(meta['prompts'])} prompt(s), "
              f"{meta['repeat']} cold run(s) each (fresh Chromium), the engines taking turns run by run; "
              "median ± half the min-max range. Paired: each run's decode tok/s over the baseline's run of the "
              "same round, median (min–max). "
              f"{meta['browser']}; {meta['platform']}.",
              "peak RSS: the tab's renderer process (browser) or this Python process (cpython)."]
    return "\n".join(lines) + "\n" + stages_markdown(report)


STAGE_NOTES = {  # what each of the page's load timings covers (static/worker.js, static/parallel.js)
    "runtime": "Pyodide fetched, WASM compiled, Python started or restored from the saved snapshot "
               "(N workers: all booting at once)",
    "snapshot_read": "of runtime: the saved snapshot read from the origin private file system (a later visit; "
                     "its sha256 is checked while Pyodide's script loads)",
    "boot_per_worker": "the slowest worker's whole boot",
    "numpy": "numpy wheel loaded (Pyodide loadPackage); from a snapshot: its modules loaded back in place",
    "engine": "our wheels unpacked, numpy and the engine imported (a first visit: and the snapshot taken); "
              "from a snapshot: nothing left to do",
    "prefetch": "download into the Cache API, chunks checked, while the runtime boots (overlaps the stages above)",
    "weights": "model bytes in after boot: Cache API or download, into WASM memory, checked",
    "weights_early": "of weights: a cached copy read while numpy and the engine loaded (overlaps them)",
    "hash_wait": "of weights: waiting for chunk digests (the browser's SHA-256)",
    "store": "of weights: the verified download into the Cache API (when not prefetched)",
    "hash": "sha256 of the file (shard 0, Python hashlib; only without a chunk list)",
    "leader_write": "shard 0 copying every block in and hashing it", "model": "GGUF parsed, weights prepared",
}


def stages_markdown(report: dict) -> str:
    """Where a Mote row's load seconds go: the median of each of the worker's timings over its runs."""
    lines = []
    for row in report["rows"]:
        timed = [r["timings"] for r in row["runs"] if isinstance(r.get("timings"), dict)]
        if not row["engine"].startswith("mote") or not timed:
            continue
        if not lines:
            lines = ["", "Where the load seconds go (median over the runs; stages overlap where noted):", "",
                     "| model | engine | stage | seconds | what |", "|---|---|---|---|---|"]
        for key in dict.fromkeys(k for t in timed for k in t):
            values = [t[key] for t in timed if isinstance(t.get(key), (int, float))]
            if values:
                lines.append(f"| {row['model']} {row['quant'] or ''} | {row['engine']} | {key} | "
                             f"{statistics.median(values):.2f} | {STAGE_NOTES.get(key, '')} |")
    return "\n".join(lines) + ("\n" if lines else "")


def chart(report: dict, path: Path) -> Path | None:
    """bench.png: decode tok/s and peak memory per model/quant and engine; None without matplotlib."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    labels = [f"{r['model']}\n{r['quant'] or ''}\n{r['engine']}" for r in report["rows"]]
    decode = [(r["stats"]["decode_tok_s"] or {}).get("median", 0) for r in report["rows"]]
    memory = [(r["stats"]["peak_rss_mb"] or {}).get("median", 0) for r in report["rows"]]
    colors = [{"mote": "#3b63c4", "wllama": "#d9822b", "cpython": "#5a9e4b"}.get(r["engine"], "#888")
              if not r["engine"].startswith("mote ×") else "#7f9be0" for r in report["rows"]]  # workers: light blue
    fig, axes = plt.subplots(1, 2, figsize=(max(6, 1.6 * len(labels) + 2) * 1.3, 4.2))
    for ax, values, title in ((axes[0], decode, "decode tok/s (median)"), (axes[1], memory, "peak RSS MB (median)")):
        ax.bar(range(len(values)), values, color=colors)
        ax.set_xticks(range(len(values)), labels, fontsize=7)
        ax.set_title(title)
        for i, v in enumerate(values):
            text = "failed" if report["rows"][i].get("error") else f"{v:.0f}" if v >= 10 else f"{v:.1f}"
            ax.annotate(text, (i, v), ha="center", va="bottom", fontsize=7)
    fig.suptitle(f"mote bench: {report['meta']['browser']}", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


# ---- the command ---------------------------------------------------------------------------------

def _model_facts(path: Path) -> tuple[str, str | None]:
    from web.app import _header_facts

    facts = _header_facts(path)
    quant = facts.get("quantization")
    if quant is None:  # no general.file_type: name the most common type among the 2-D weights
        import collections

        from engine.gguf import open_gguf
        from engine.quants import TYPES

        counts = collections.Counter(t.ggml_type for t in open_gguf(path).tensors.values() if len(t.shape) == 2)
        if counts:
            tid = counts.most_common(1)[0][0]
            quant = TYPES[tid].name if tid in TYPES else f"type {tid}"
    return (facts.get("display_name") or path.stem), quant


def run_browser_bench(args) -> int:
    """`mote bench --browser`: see the module docstring. Returns the exit status."""
    try:
        return _run(args)
    except BenchError as e:
        print(f"mote bench: {e}", file=sys.stderr)
        return 2


def _run(args) -> int:
    from mote.pull import resolve_model

    models = args.model if isinstance(args.model, list) else [args.model]
    prompts = list(getattr(args, "bench_prompt", None) or ([args.prompt] if getattr(args, "prompt", None) else DEFAULT_PROMPTS))
    n, repeat, n_ctx = args.n_predict, max(1, args.repeat), getattr(args, "ctx", None)
    compare = list(dict.fromkeys(getattr(args, "compare", None) or []))
    workers = list(dict.fromkeys(getattr(args, "workers", None) or []))
    chromium = getattr(args, "chromium", None) or os.environ.get("MOTE_CHROMIUM", "/usr/bin/chromium")
    out_dir = Path(getattr(args, "out", None) or "bench-out")
    _check_chromium(chromium)
    if not (ROOT / "static" / "build-manifest.json").is_file():
        raise BenchError("browser assets are not built: run python build_wasm.py")
    if "wllama" in compare and not (WLLAMA_DIR / "esm" / "index.js").is_file():
        raise BenchError(f"wllama is not installed: run scripts/setup_wllama.sh "
                         f"(npm install --prefix .cache/wllama @wllama/wllama@{WLLAMA_VERSION})")
    paths = []
    for m in models:
        try:
            paths.append(Path(resolve_model(m)).resolve())
        except Exception as e:  # noqa: BLE001
            raise BenchError(f"model {m!r}: {e}") from e

    rows: list[dict] = []
    with tempfile.TemporaryDirectory(prefix="mote-bench-") as tmp:
        served = Path(tmp)
        names = []
        for i, path in enumerate(paths):  # the server lists plain names: link each file under one
            name = f"{i}-{re.sub(r'[^A-Za-z0-9._-]', '_', path.stem)[:120]}.gguf"
            os.symlink(path, served / name)
            names.append(name)
        with serve_in_thread(bench_app(served, "wllama" in compare, getattr(args, "latency", 0))) as base:
            for path, name in zip(paths, names):
                label, quant = _model_facts(path)
                print(f"[bench] {label} {quant or ''}: CPython reference ...", file=sys.stderr, flush=True)
                reference = cpython_reference(path, prompts, n, n_ctx)
                # (row label, engine, workers, layout): plain Mote, Mote across N workers, the same
                # with int8 weights (--int8) or every block type packed (--compact), the compared engines
                motes = [("mote", None)] + [(f"mote ×{w} workers", w) for w in workers]
                engines = ([(label, "mote", w, None) for label, w in motes]
                           + ([(f"{label} int8", "mote", w, "int8") for label, w in motes] if getattr(args, "int8", False) else [])
                           + ([(f"{label} compact", "mote", w, "compact") for label, w in motes]
                              if getattr(args, "compact", False) else [])
                           + ([(f"{label}, model snapshot", "mote", w, SNAPSHOT) for label, w in motes]
                              if getattr(args, "model_snapshot", False) else [])
                           + ([("mote, preload", "mote", None, PRELOAD)] if getattr(args, "preload", False) else [])
                           + [(c, c, None, None) for c in compare])
                # Round robin: every engine's r-th run comes before any engine's (r+1)-th, so a shared
                # machine's drift (load, neighbours, thermal state) falls on all engines alike, and the
                # r-th runs of two engines form a pair (the paired ratios of summarize()).
                warm = getattr(args, "warm", False)
                warm_of = {engine: f"{engine} (warm)" for engine, kind, _, _ in engines if warm and kind == "mote"}
                runs = {engine: [] for engine, _, _, _ in engines} | {w: [] for w in warm_of.values()}
                errors: dict[str, str | None] = {engine: None for engine in runs}
                for r in range(repeat):
                    for engine, kind, n_workers, layout in engines:
                        if errors[engine] is not None:  # a failed engine stops; the others go on
                            continue
                        print(f"[bench] {label} {quant or ''}: {engine} run {r + 1}/{repeat} ...", file=sys.stderr, flush=True)
                        try:
                            out = browser_run(base, chromium, kind, f"{base}/models/{name}", prompts, n, n_ctx,
                                              getattr(args, "run_timeout", 600.0), workers=n_workers, layout=layout,
                                              warm=engine in warm_of)
                        except RunFailed as e:  # reported in the table
                            errors[engine] = str(e)
                            print(f"[bench]   failed: {e}", file=sys.stderr, flush=True)
                            continue
                        runs[engine].append(_browser_record(out, kind, n_workers))
                        if "warm" in out:
                            runs[warm_of[engine]].append(_browser_record(out["warm"], kind, n_workers))
                for engine in runs:
                    rows.append(_row(label, quant, path, engine, runs[engine], reference, errors[engine]))
                if getattr(args, "native", False):
                    print(f"[bench] {label} {quant or ''}: cpython ...", file=sys.stderr, flush=True)
                    rows.append(_row(label, quant, path, "cpython", cpython_runs(path, prompts, n, repeat, n_ctx), reference))

    report = {
        "meta": {"prompts": prompts, "n_predict": n, "repeat": repeat, "n_ctx": n_ctx, "latency_ms": getattr(args, "latency", 0),
                 "browser": _browser_version(chromium), "platform": f"{platform.machine()}, {os.cpu_count()} CPUs, "
                 f"Python {platform.python_version()}", "time": time.strftime("%Y-%m-%d %H:%M:%S")},
        "rows": summarize(rows),
    }
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "bench.json").write_text(json.dumps(report, indent=1))  # first: nothing after can lose the run
    history = getattr(args, "history", None)
    if history and history != "none":
        record = history_record(report)
        for warning in check_history(record, read_history(Path(history))):
            print(f"mote bench: warning: {warning}", file=sys.stderr)
        Path(history).parent.mkdir(parents=True, exist_ok=True)
        with open(history, "a", encoding="utf-8") as f:
            f.write(json.dumps(record, ensure_ascii=False) + "\n")
    md = markdown(report)
    (out_dir / "bench.md").write_text(md)
    png = chart(report, out_dir / "bench.png")
    if getattr(args, "json", False):
        print(json.dumps(report))
    else:
        print(md)
        print(f"wrote {out_dir / 'bench.json'}, {out_dir / 'bench.md'}, "
              f"{png or 'no bench.png (pip install matplotlib)'}")
    return 0 if all(r["greedy_ok"] is not False for r in rows) else 1


def _per_prompt_summary(per: list[dict]) -> dict:
    """One run's numbers over its prompts: TTFT and prefill are per prompt, averaged; decode too."""
    mean = lambda xs: statistics.fmean(xs) if xs else None  # noqa: E731
    return {"ttft_s": mean([r["ttft_s"] for r in per if r["ttft_s"] is not None]),
            "prefill_tok_s": mean([r["prefill_tok_s"] for r in per if r["prefill_tok_s"]]),
            "decode_tok_s": mean([r["decode_tok_s"] for r in per if r["decode_tok_s"]]),
            "page_tok_s": mean([r["page_tok_s"] for r in per if r.get("page_tok_s")]),
            "page_tokens": sum(r.get("page_tokens") or 0 for r in per),  # token events the page saw
            "page_span_s": sum(r.get("page_span_s") or 0 for r in per),  # first to last, summed over prompts
            "n_generated": sum(r["n_generated"] for r in per)}


def _browser_record(out: dict, kind: str, n_workers: int | None) -> dict:
    """One browser run as bench.json keeps it (per-prompt numbers averaged, tokens per prompt)."""
    mem = out.get("memory") or {}
    return {
        "download_s": out["download_s"], "init_s": out["init_s"], "ready_s": out.get("ready_s"),
        "first_token_s": out.get("first_token_s"), "cached": out.get("cached"),
        **_per_prompt_summary([{**x, "n_generated": x.get("n_generated") or 0} for x in out["runs"]]),
        "wasm_mb": mem["wasm_bytes"] / 1e6 if mem.get("wasm_bytes") else None,
        "js_heap_mb": out.get("js_heap_mb"), "peak_rss_mb": out.get("peak_rss_mb"),
        "token_ids": [x.get("token_ids") for x in out["runs"]],
        "texts": [x.get("text") for x in out["runs"]] if kind != "mote" else None,
        "timings": out.get("timings"), "wall_s": out["wall_s"],
        **({"wasm_mb_per_worker": [b / 1e6 for b in mem.get("per_worker") or []]} if n_workers else {}),
    }


def _row(label, quant, path, engine, runs, reference, error: str | None = None) -> dict:
    """A table row. greedy_ok: every run's token ids equal the CPython reference's, per prompt;
    for an engine that reports text only (wllama), its text equals the reference's decoded text.
    A failed run is not ok for Mote; for a compared engine it is unknown (None) with the error."""
    want_ids = [r["token_ids"] for r in reference]
    want_text = [r["text"] for r in reference]
    compared = "tokens"
    if error is not None:
        ok = False if engine.startswith("mote") or engine == "cpython" else None
    elif all(t is not None for r in runs for t in r["token_ids"]):
        ok = all(r["token_ids"] == want_ids for r in runs)
    elif all(r.get("texts") for r in runs):
        compared = "text"
        ok = all(r["texts"] == want_text for r in runs)
    else:
        ok = None
    return {"model": label, "quant": quant, "file": str(path), "engine": engine, "runs": runs,
            "reference": reference, "greedy_ok": ok, "compared": compared, "error": error}


def _browser_version(chromium: str) -> str:
    import subprocess

    try:
        v = subprocess.run([chromium, "--version"], capture_output=True, text=True, timeout=20).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        v = ""
    return f"headless {v or chromium}"


# ---- the CPython engine beside the browser -----------------------------------------------------
# The correctness reference and the --native row, from mote/bench/native.py's greedy_run.

def cpython_runs(path: Path, prompts: list[str], max_tokens: int, repeat: int = 1, n_ctx: int | None = None) -> list[dict]:
    """`repeat` runs of the CPython engine, each a fresh load then every prompt, greedy, as the
    browser worker runs it (template stops apply): bench.json's numbers plus token ids and texts."""
    from mote.bench.native import greedy_run, peak_rss_mb
    from mote.loader import load

    runs = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        loaded = load(path, n_ctx=n_ctx)
        init_s = time.perf_counter() - t0
        per = [greedy_run(None, prompt, max_tokens, loaded=loaded) for prompt in prompts]
        runs.append({"download_s": None, "init_s": init_s, **_per_prompt_summary(per), "wasm_mb": None,
                     "js_heap_mb": None, "peak_rss_mb": peak_rss_mb(),
                     "token_ids": [r["token_ids"] for r in per], "texts": [r["text"] for r in per]})
    return runs


def cpython_reference(path: Path, prompts: list[str], max_tokens: int, n_ctx: int | None = None) -> list[dict]:
    """Greedy {token_ids, text} per prompt from the CPython engine: the correctness column's reference."""
    (run,) = cpython_runs(path, prompts, max_tokens, 1, n_ctx)
    return [{"token_ids": ids, "text": text} for ids, text in zip(run["token_ids"], run["texts"])]


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    args.browser = True
    return run_browser_bench(args)


if __name__ == "__main__":
    sys.exit(main())
