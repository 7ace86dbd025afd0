"""Kernel benchmark: every matmul.py kernel against the naive reference, natively and in Pyodide.

    .venv/bin/python -m mote.bench.kernels --write docs/kernels.md   # both runtimes, table into the docs
    .venv/bin/python -m mote.bench.kernels --native                  # CPython only, prints the table
    OPENBLAS_NUM_THREADS=1 for stable native numbers (this is what docs/kernels.md records)

The same shapes (those of Gemma 3 270M, its LM head cut to 32768 rows, and 2048 x 1024 for the
low-bit types) are timed in CPython and inside headless Chromium: Playwright opens
mote/bench/pages/kernels.html from a throwaway http.server over static/ (build it first with
`python build_wasm.py`), copies the current engine/*.py, the encoders and this module into
Pyodide's file system and calls `measure()` there. Browser timers are coarse (about 0.1 ms), so every number is the best
of repeated calls over at least 0.15 s. Figures are GFLOP/s of the matrix-vector product
(2 * n_out * n_in flops per call), higher is better; "ref" dequantizes the whole matrix per call.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import http.server
import json
import sys
import threading
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
# What the page needs besides engine/*.py: the encoders make the test matrices, and this module.
PAGE_FILES = ("mote/__init__.py", "mote/encoders.py", "mote/bench/__init__.py", "mote/bench/kernels.py")

# (type, n_out, n_in): Gemma 3 270M's matrices, its tied Q8_0 head (cut), and low-bit types.
SHAPES = [
    ("Q8_0", 32768, 640),   # LM head / token_embd (262144 rows in the model)
    ("Q8_0", 256, 640),     # attn_v
    ("Q5_0", 2048, 640),    # ffn_gate / ffn_up
    ("Q5_0", 1024, 640),    # attn_q
    ("Q4_K", 640, 1024),    # attn_output
    ("Q4_K", 640, 2048),    # ffn_down (half the layers)
    ("Q6_K", 640, 2048),    # ffn_down (the other half)
    ("Q4_0", 2048, 1024),
    ("Q2_K", 2048, 1024),
    ("TQ2_0", 2048, 1024),
    ("TQ1_0", 2048, 1024),
]


def _best(f, budget_s: float) -> float:
    """Best seconds per call of f over about budget_s (batches of calls: browser timers are coarse)."""
    from engine.matmul import _time_call

    return _time_call(f, budget_s)


def measure(budget_s: float = 0.15, shapes=None) -> dict:
    """GFLOP/s per (shape, kernel) in this runtime, plus the kernel `choose_kernel` picks."""
    from engine import matmul, packed, quants
    from mote.encoders import quantize

    rng = np.random.default_rng(0)
    rows = []
    for name, n_out, n_in in shapes or SHAPES:
        tid = quants.BY_NAME[name].type_id
        w = (rng.standard_normal((n_out, n_in)) * 0.05).astype(np.float32)  # (n_out, n_in)
        raw = quantize(w, tid).reshape(-1)
        x = rng.standard_normal(n_in).astype(np.float32)  # (n_in,)
        y = np.empty(n_out, np.float32)
        gflop = 2 * n_out * n_in / 1e9
        row = {"type": name, "shape": f"{n_out}x{n_in}"}
        if n_out * n_in <= 4 * 2**20:  # the reference dequantizes everything per call: skip the head
            row["ref"] = gflop / _best(lambda: matmul.reference_linear(raw, tid, (n_out, n_in), x), budget_s)
        dense = matmul.DenseLinear(quants.dequantize(raw, tid, (n_out, n_in)))
        row["dense f32"] = gflop / _best(lambda: dense(x, out=y), budget_s)
        for k in matmul.KERNELS:
            lin = matmul.prepare_linear(raw, tid, (n_out, n_in), dense=False, kernel=k)
            row[k] = gflop / _best(lambda: lin(x, out=y), budget_s)
        if name == "Q8_0":  # the file's blocks compacted in place (the int8 layout of a worker)
            lin = matmul.prepare_linear(np.frombuffer(bytearray(raw.tobytes()), np.uint8), tid, (n_out, n_in),
                                        dense=False, kernel="einsum", in_place=True)
            row["einsum compacted"] = gflop / _best(lambda: lin(x, out=y), budget_s)
        # the packed layout (engine/packed.py): the file's blocks planarized in place, what workers run
        lin = matmul.prepare_linear(np.frombuffer(bytearray(raw.tobytes()), np.uint8), tid, (n_out, n_in),
                                    dense=False, in_place=True, packed=True)
        row["packed"] = gflop / _best(lambda: (packed._PREPARED.clear(), lin(x, out=y)), budget_s)
        if name in packed.VALUE_TYPES:  # unpacked at load to int8 values in the planes' order (a worker's Q5_0)
            lin = matmul.prepare_linear(np.frombuffer(bytearray(raw.tobytes()), np.uint8), tid, (n_out, n_in),
                                        dense=False, in_place=True, values=True)
            row["values"] = gflop / _best(lambda: (packed._PREPARED.clear(), lin(x, out=y)), budget_s)
        row["chosen"] = matmul.prepare_linear(raw, tid, (n_out, n_in), dense=False).kernel
        rows.append(row)
    return {"platform": sys.platform, "numpy": np.__version__, "python": sys.version.split()[0], "rows": rows}


# ---- running Python inside headless Chromium ------------------------------------------------------

class _Handler(http.server.SimpleHTTPRequestHandler):
    extensions_map = {**http.server.SimpleHTTPRequestHandler.extensions_map,
                      ".mjs": "text/javascript", ".js": "text/javascript", ".wasm": "application/wasm"}

    def log_message(self, *args):  # quiet
        pass

    def translate_path(self, path):  # the page is the benchmark's (mote/bench/pages/), the rest static/'s
        if path.split("?")[0] == "/kernels.html":
            return str(ROOT / "mote" / "bench" / "pages" / "kernels.html")
        return super().translate_path(path)


@contextlib.contextmanager
def pyodide_runner(static_dir: Path | None = None, chromium: str = "/usr/bin/chromium"):
    """Yield run(code) -> result of `await pyodide.runPythonAsync(code)` in headless Chromium.

    The page holds the current engine/*.py and PAGE_FILES (mote.encoders, mote.bench.kernels importable).
    """
    from playwright.sync_api import sync_playwright

    static_dir = static_dir or ROOT / "static"
    if not (static_dir / "pyodide" / "pyodide.mjs").is_file():
        raise FileNotFoundError(f"{static_dir}/pyodide/pyodide.mjs missing: run python build_wasm.py")
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(_Handler, directory=str(static_dir)))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=chromium, headless=True,
                                        args=["--no-sandbox", "--disable-gpu", "--disable-background-networking"])
            page = browser.new_page()
            page.goto(f"http://127.0.0.1:{server.server_address[1]}/kernels.html")
            page.evaluate("() => window.pyReady")
            files = {f"engine/{f.name}": f.read_text() for f in (ROOT / "engine").glob("*.py")}
            files |= {name: (ROOT / name).read_text() for name in PAGE_FILES}
            page.evaluate("""files => { const FS = window.py.FS;
                                        for (const d of ['engine', 'mote', 'mote/bench']) { try { FS.mkdir(d); } catch (e) {} }
                                        for (const [p, t] of Object.entries(files)) FS.writeFile(p, t); }""", files)
            try:
                yield lambda code: page.evaluate("c => window.py.runPythonAsync(c)", code)
            finally:
                browser.close()
    finally:
        server.shutdown()


def measure_in_browser(budget_s: float = 0.15) -> dict:
    with pyodide_runner() as run:
        return json.loads(run(f"import json; from mote.bench import kernels; json.dumps(kernels.measure({budget_s}))"))


# ---- the table --------------------------------------------------------------------------------

COLUMNS = ["ref", "dense f32", "scale", "subdot", "einsum", "transposed", "einsum compacted", "packed", "values"]


def table(results: list[dict]) -> str:
    """Markdown: one row per (type, shape), each runtime's GFLOP/s side by side."""
    head = "| type | shape |" + "".join(f" {r['platform']} {c} |" for r in results for c in COLUMNS + ["chosen"])
    lines = [head, "|" + "---|" * (2 + len(results) * (len(COLUMNS) + 1))]
    for i, row in enumerate(results[0]["rows"]):
        cells = [row["type"], row["shape"]]
        for r in results:
            rr = r["rows"][i]
            best = max(rr[c] for c in COLUMNS[2:] if c in rr)
            cells += [("**%.2f**" if rr.get(c) == best else "%.2f") % rr[c] if c in rr else "–" for c in COLUMNS]
            cells.append(rr["chosen"])
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def write_table(path: Path, md: str) -> None:
    """Replace the first table that starts with '| type | shape |' in path (or create the file)."""
    lines = path.read_text().splitlines() if path.is_file() else []
    start = next((i for i, line in enumerate(lines) if line.startswith("| type | shape |")), None)
    if start is None:
        lines += ["", md] if lines else [md]
    else:
        end = start
        while end < len(lines) and lines[end].startswith("|"):
            end += 1
        lines[start:end] = md.splitlines()
    path.write_text("\n".join(lines) + "\n")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m mote.bench.kernels", description=__doc__.split("\n")[0])
    ap.add_argument("--native", action="store_true", help="CPython only")
    ap.add_argument("--budget", type=float, default=0.15, help="seconds of timing per cell")
    ap.add_argument("--write", type=Path, default=None, help="write the table into this Markdown file")
    args = ap.parse_args(argv)
    results = [measure(args.budget)]
    if not args.native:
        results.append(measure_in_browser(args.budget))
    md = table(results)
    print(md)
    if args.write:
        write_table(args.write, md)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
