"""What quantization costs: size, bits per weight, perplexity, KL and top-1 agreement vs the base,
and decode speed, for the vanilla 1M GPT and Gemma 3 270M. Writes Markdown, JSON and a PNG plot.

    .venv/bin/python scripts/quality_table.py                       # both models, outputs in docs/
    .venv/bin/python scripts/quality_table.py --models vanilla      # the vanilla 1M only (~10 min)
    MOTE_GEMMA_PATH=/path/gemma-3-270m-q4_k_m.gguf .venv/bin/python scripts/quality_table.py --models gemma

Method (the same for every row of a model):
  - base: the vanilla 1M converted to f32 (`mote convert --allow-pickle`, needs torch), or Gemma's
    Q4_K_M download as it is (no f32 Gemma is at hand: its rows are re-quantizations of Q4_K_M, and
    KL is measured against Q4_K_M);
  - rows: Q8_0, Q4_K (the Q4_K_M mix), Q2_K, Q2_K with an importance matrix, TQ2_0, each made by
    `mote.quantize.quantize_file` with its per-tensor policy and row-length fallbacks;
  - text: shared/atome/tinystories_sample.txt. Evaluation = the first K windows of --ctx 256
    tokens (K = --vanilla-windows, default 256, i.e. the first 64 KiB; --gemma-windows, default 8,
    given Gemma's speed in numpy); calibration for the imatrix = the last quarter of the file
    (bytes 196608..262143), which the evaluation windows never reach;
  - PPL, mean KL(base || row) and top-1 agreement from `mote.perplexity.perplexity`;
  - decode tok/s: median of 3 greedy generations (64 tokens for the vanilla, 16 for Gemma) after a
    fixed prompt, on this machine (native CPython + numpy, not the browser);
  - size: the file's bytes; bits per weight: 8 x tensor bytes / parameters (all tensors).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import re
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from engine import quants  # noqa: E402
from engine.generate import SamplingParams, generate  # noqa: E402
from engine.gguf import open_gguf  # noqa: E402
from mote.convert import convert_torch_gpt  # noqa: E402
from mote.loader import load  # noqa: E402
from mote.perplexity import make_windows, perplexity, text_tokens, tokens_needed  # noqa: E402
from mote.quantize import collect_imatrix, quantize_file, summary, write_imatrix, read_imatrix  # noqa: E402

SHARED = Path(os.environ.get("MOTE_SHARED", ROOT / "tests" / "data" / "shared"))
SAMPLE = SHARED / "atome" / "tinystories_sample.txt"
VANILLA_PT = SHARED / "atome" / "vanilla_1m_v1.pt"
GEMMA = Path(os.environ.get("MOTE_GEMMA_PATH", "/tmp/gemma/gemma-3-270m-q4_k_m.gguf"))
CTX = 256
CALIBRATION_START = 196608  # last quarter of the 256 KiB sample
PROMPT = "Once upon a time, in a small village, there lived"
ROWS = [("Q8_0", "q8_0", False), ("Q4_K", "q4_k", False), ("Q2_K", "q2_k", False),
        ("Q2_K + imatrix", "q2_k", True), ("TQ2_0", "tq2_0", False)]


class CachedBase:
    """The base model's logits per window, computed once and reused by every row (small vocabularies)."""

    def __init__(self, model):
        self.model, self.n_ctx, self.cache = model, model.n_ctx, {}

    def reset(self):
        pass

    def forward(self, tokens, all_logits=False):
        key = tuple(tokens)
        if key not in self.cache:
            self.model.reset()
            self.cache[key] = self.model.forward(tokens, all_logits=True)
        return self.cache[key]


def file_stats(path: Path) -> dict:
    g = open_gguf(path)
    n = sum(math.prod(t.shape) for t in g.tensors.values())
    nbytes = sum(t.nbytes for t in g.tensors.values())
    types: dict[str, int] = {}
    for t in g.tensors.values():
        if len(t.shape) >= 2:
            name = quants.TYPES[t.ggml_type].name
            types[name] = types.get(name, 0) + math.prod(t.shape)
    share = {k: round(v / sum(types.values()), 3) for k, v in sorted(types.items(), key=lambda kv: -kv[1])}
    return {"file_mb": path.stat().st_size / 1e6, "bits_per_weight": 8 * nbytes / n, "n_params": n,
            "matrix_weight_share": share}


def decode_speed(loaded, n_tokens: int, repeat: int = 3) -> float:
    """Median decode tok/s of `repeat` greedy runs (single runs are noisy on a shared machine)."""
    ids = loaded.tokenizer.encode(PROMPT)
    speeds = []
    for _ in range(repeat):
        for ev in generate(loaded.model, loaded.tokenizer, ids, SamplingParams(temperature=0, max_tokens=n_tokens)):
            if ev.kind == "done":
                speeds.append(ev.decode_tok_s)
    return float(np.median(speeds))


def evaluate(label: str, path: Path, windows, base, n_decode: int) -> dict:
    t0 = time.perf_counter()
    loaded = load(path, n_ctx=CTX)
    r = perplexity(loaded.model, windows, base=base)
    row = {"row": label, **file_stats(path), "ppl": r.ppl, "n_scored": r.n_scored,
           "kl_mean": r.kl_mean, "top1_agreement": r.top1_agreement,
           "decode_tok_s": decode_speed(loaded, n_decode)}
    print(f"  {label:16s} {row['file_mb']:8.3f} MB {row['bits_per_weight']:6.2f} bpw  PPL {row['ppl']:.4f}  "
          f"KL {row['kl_mean'] if row['kl_mean'] is not None else 0:.5f}  "
          f"top1 {row['top1_agreement'] if row['top1_agreement'] is not None else 1:.4f}  "
          f"{row['decode_tok_s']:.1f} tok/s  ({time.perf_counter() - t0:.0f} s)", flush=True)
    return row


def run_model(name: str, base_path: Path, base_label: str, work: Path, n_windows: int, n_decode: int,
              imatrix_chunks: int, cache_base: bool) -> dict:
    print(f"{name}: base {base_path} ({base_label})", flush=True)
    data = SAMPLE.read_bytes()
    loaded = load(base_path, n_ctx=CTX)
    tok = loaded.tokenizer
    bos = tok.bos_id if tok.add_bos and tok.bos_id is not None else None
    tokens = text_tokens(tok, data[:CALIBRATION_START], tokens_needed(CTX, bos is not None, n_windows))
    windows = make_windows(tokens, CTX, bos, n_windows)
    if len(windows) < n_windows:
        print(f"  note: only {len(windows)} windows fit before the calibration text", flush=True)

    # importance matrix from the calibration quarter
    calib = make_windows(text_tokens(tok, data[CALIBRATION_START:]), CTX, bos, imatrix_chunks)
    im_path = work / f"{name}.imatrix.gguf"
    t0 = time.perf_counter()
    write_imatrix(im_path, collect_imatrix(loaded.model, calib), SAMPLE.name + " (last quarter)", len(calib), CTX)
    print(f"  imatrix: {len(calib)} chunks in {time.perf_counter() - t0:.0f} s", flush=True)
    imatrix = read_imatrix(im_path)

    base = CachedBase(loaded.model) if cache_base else loaded.model
    rows = [evaluate(base_label, base_path, windows, None, n_decode)]
    rows[0].update(kl_mean=0.0, top1_agreement=1.0)
    for label, qtype, use_im in ROWS:
        out = work / f"{name}-{label.replace(' + ', '-').lower()}.gguf"
        t0 = time.perf_counter()
        choices = quantize_file(base_path, out, qtype, imatrix=imatrix if use_im else None,
                                log=lambda *a, **k: None, show_progress=False)
        q_seconds = time.perf_counter() - t0
        row = evaluate(label, out, windows, base, n_decode)
        row["quantize_seconds"] = q_seconds
        row["tensor_types"] = summary(choices)["tensor_types"]
        rows.append(row)
        out.unlink()  # keep the work folder small
    return {"model": name, "base": str(base_path), "ctx": CTX, "n_windows": len(windows),
            "n_scored": rows[0]["n_scored"], "imatrix_chunks": len(calib), "rows": rows}


def markdown(results: list[dict], settings: dict) -> str:
    lines = ["# Quantization quality", "",
             f"Generated by `scripts/quality_table.py` on {settings['platform']}. Text: "
             "shared/atome/tinystories_sample.txt; windows of 256 tokens from the start; imatrix from the "
             "last quarter of the file (never evaluated). KL = mean KL(base || row) per scored token (nats); "
             "top-1 = share of positions where the row's most likely next token is the base's. Decode tok/s is the "
             "median of 3 short greedy runs and moves with machine load (these ran beside other jobs).", ""]
    for res in results:
        lines += [f"## {res['model']}", "",
                  f"{res['n_windows']} windows, {res['n_scored']} scored tokens; imatrix from {res['imatrix_chunks']} "
                  f"chunks. Base: `{Path(res['base']).name}`.", "",
                  "| row | file MB | bits/weight | PPL | KL vs base | top-1 agree | decode tok/s | matrix weights by type |",
                  "|---|---:|---:|---:|---:|---:|---:|---|"]
        for r in res["rows"]:
            share = ", ".join(f"{k} {100 * v:.0f}%" for k, v in r["matrix_weight_share"].items())
            lines.append(f"| {r['row']} | {r['file_mb']:.3f} | {r['bits_per_weight']:.2f} | {r['ppl']:.4f} | "
                         f"{r['kl_mean']:.5f} | {100 * r['top1_agreement']:.2f}% | {r['decode_tok_s']:.1f} | {share} |")
        lines.append("")
    return "\n".join(lines)


def merge_sections(old: str, new: str) -> str:
    """Markdown `old` with `new`'s "## " sections in place of those with the same heading (others kept,
    new ones appended) and `new`'s preamble, if it has one. scripts/quality_1p5b.py writes its own section.

    >>> merge_sections("# T\\n\\n## a\\nA\\n\\n## b\\nB\\n", "## b\\nB2\\n\\n## c\\nC\\n")
    '# T\\n\\n## a\\nA\\n\\n## b\\nB2\\n\\n## c\\nC\\n'
    """
    def split(md: str) -> tuple[str, dict[str, str]]:
        head, *sections = re.split(r"(?m)^(?=## )", md)
        return head, {s.split("\n", 1)[0]: s.rstrip("\n") + "\n\n" for s in sections}

    old_head, merged = split(old)
    new_head, new_sections = split(new)
    merged.update(new_sections)  # same heading: replaced in place; new heading: appended
    head = (new_head if new_head.strip() else old_head).rstrip("\n") + "\n\n"
    return (head + "".join(merged.values())).rstrip("\n") + "\n"


def plot(results: list[dict], path: Path) -> str | None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return "matplotlib is not installed: no plot (pip install matplotlib)"
    fig, axes = plt.subplots(1, len(results), figsize=(6 * len(results), 4.5), squeeze=False)
    for ax, res in zip(axes[0], results):
        xs = [r["file_mb"] for r in res["rows"]]
        ys = [r["ppl"] for r in res["rows"]]
        ax.plot(xs, ys, "o")
        labels: dict[tuple, list[str]] = {}  # rows that land on the same point share one label
        for r, x, y in zip(res["rows"], xs, ys):
            labels.setdefault((round(x, 4), round(y, 4)), []).append(r["row"])
        for (x, y), names in labels.items():
            ax.annotate(" = ".join(names), (x, y), textcoords="offset points", xytext=(5, 5), fontsize=8)
        if max(ys) > 10 * min(ys):  # a broken row (ternary Gemma) would flatten the others
            ax.set_yscale("log")
        ax.set_xlabel("file size (MB)")
        ax.set_ylabel(f"perplexity ({res['n_windows']} windows of {res['ctx']})")
        ax.set_title(res["model"])
        ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    return None


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--models", default="vanilla,gemma")
    ap.add_argument("--vanilla-windows", type=int, default=256)
    ap.add_argument("--gemma-windows", type=int, default=8)
    ap.add_argument("--out", default=str(ROOT / "docs"), help="folder for quality.md / .json / .png")
    ap.add_argument("--keep", action="store_true", help="keep the other models' results already in quality.json")
    args = ap.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    settings = {"platform": f"{platform.python_implementation()} {platform.python_version()}, numpy {np.__version__}, "
                            f"{os.cpu_count()} CPUs"}
    results = []
    if args.keep and (out / "quality.json").exists():
        results = json.loads((out / "quality.json").read_text())["results"]
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        for name in args.models.split(","):
            if name == "vanilla":
                base = work / "vanilla-1m-f32.gguf"
                convert_torch_gpt(VANILLA_PT, base, allow_pickle=True)
                results = [r for r in results if r["model"] != "vanilla 1M GPT"]
                results.append(run_model("vanilla 1M GPT", base, "f32", work, args.vanilla_windows, 64, 64, True))
            elif name == "gemma":
                if not GEMMA.exists():
                    print(f"gemma: {GEMMA} not found (set MOTE_GEMMA_PATH); skipped")
                    continue
                results = [r for r in results if r["model"] != "Gemma 3 270M"]
                results.append(run_model("Gemma 3 270M", GEMMA, "Q4_K_M (source)", work, args.gemma_windows, 16, 16, False))
            else:
                raise SystemExit(f"unknown model {name!r} (expected vanilla or gemma)")
            # write after every model, so a long Gemma run never loses the vanilla table
            (out / "quality.json").write_text(json.dumps({"settings": settings, "results": results}, indent=1))
            md = out / "quality.md"  # other scripts' sections (the 1.5B's) are kept
            md.write_text(merge_sections(md.read_text() if md.exists() else "", markdown(results, settings)))
            note = plot(results, out / "quality.png")
            if note:
                print(note)
    print(f"wrote {out / 'quality.md'}, {out / 'quality.json'}, {out / 'quality.png'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
