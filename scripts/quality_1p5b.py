"""Qwen2.5-Coder-1.5B-Instruct at 2 and 3 bits: size, bits per weight, perplexity on held-out code
and prose, KL and top-1 agreement against the Q4_K_M download, and greedy answers side by side.
Writes docs/quality_1p5b.json and the "## Qwen2.5-Coder-1.5B-Instruct" section of docs/quality.md
(the other sections are kept).

    OPENBLAS_NUM_THREADS=1 MOTE_THREADS=1 .venv/bin/python scripts/quality_1p5b.py   # ~70 min, one core
    .venv/bin/python scripts/quality_1p5b.py --steps texts                            # only list the texts

Method:
  - base: qwen2.5-coder-1.5b-instruct-q4_k_m.gguf as downloaded (`mote pull`); there is no float
    original at hand, so every row is a re-quantization of Q4_K_M (dequantize, then quantize) and
    KL is measured against Q4_K_M;
  - calibration text (imatrix only): the whole lines within bytes [0, 10240) of each of
    CALIBRATION_FILES, taken from the running interpreter's standard library, concatenated in the
    listed order; `mote imatrix`'s method over the first IMATRIX_CHUNKS chunks of CTX tokens;
  - held-out code: the whole lines within bytes [4096, 7168) of each of HELD_OUT_CODE_FILES (other
    standard-library files, never seen by the imatrix); held-out prose: shared/atome/tinystories_sample.txt
    from its start. Each text is scored on its first EVAL_WINDOWS windows of CTX tokens
    (`mote.perplexity`'s windows: no BOS for Qwen, every position after a window's first is scored);
  - rows: Q2_K with the imatrix; Q3_K with the imatrix when Q2_K + imatrix is poor (top-1 agreement
    below 70 % or PPL above 1.5 x Q4_K_M's on either text; --q3k yes|no overrides); Q2_K without it;
    each made by `mote.quantize.quantize_file` and kept in ~/.cache/mote/models/ (never in the repository);
  - answers: ANSWER_TOKENS greedy tokens (temperature 0, prompt lookup off) for each of REQUESTS,
    through the model's chat template, from every row.
"""

from __future__ import annotations

import argparse
import hashlib
import html
import json
import os
import platform
import sys
import sysconfig
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from engine import quants  # noqa: E402
from engine.gguf import open_gguf  # noqa: E402
from engine.sampler import SamplingParams  # noqa: E402
from mote.loader import load  # noqa: E402
from mote.perplexity import make_windows, perplexity, text_tokens, tokens_needed  # noqa: E402
from mote.quantize import MIXES, collect_imatrix, quantize_file, read_imatrix, write_imatrix  # noqa: E402
from quality_table import CachedBase, file_stats, merge_sections  # noqa: E402  (scripts/ is on sys.path)

MODELS = Path.home() / ".cache" / "mote" / "models"
BASE = Path(os.environ.get("MOTE_QWEN15_PATH", MODELS / "qwen2.5-coder-1.5b-instruct-q4_k_m.gguf"))
WORK = Path.home() / ".cache" / "mote" / "quality-1p5b"  # texts and the imatrix
SHARED = Path(os.environ.get("MOTE_SHARED", ROOT.parent / "shared"))
PROSE = SHARED / "atome" / "tinystories_sample.txt"
STDLIB = Path(sysconfig.get_paths()["stdlib"])
DATE = "2026-12-03"
SECTION = "Qwen2.5-Coder-1.5B-Instruct"  # the heading of this model's section in docs/quality.md

CTX = 256
IMATRIX_CHUNKS = 64
EVAL_WINDOWS = 8  # per text
CALIBRATION_FILES = ("argparse.py", "dataclasses.py", "enum.py", "functools.py",
                     "contextlib.py", "pathlib.py", "shutil.py", "csv.py")
CALIBRATION_BYTES = (0, 10240)
HELD_OUT_CODE_FILES = ("textwrap.py", "heapq.py", "fractions.py", "statistics.py")
HELD_OUT_CODE_BYTES = (4096, 7168)
ROWS = (("Q2_K + imatrix", "q2_k", True), ("Q3_K + imatrix", "q3_k", True), ("Q2_K", "q2_k", False))  # run order
POOR_TOP1, POOR_PPL_RATIO = 0.70, 1.5  # Q2_K + imatrix below / above these -> also Q3_K
ANSWER_TOKENS = 48
SYSTEM = "You are Qwen, created by Alibaba Cloud. You are a helpful assistant."  # Qwen2.5's default
REQUESTS = (
    "Write a Python function that returns the n-th Fibonacci number.",
    "What does `git rebase` do? Answer in two sentences.",
    "Fix the bug in this function: def mean(xs): return sum(xs) / len(xs) + 1",
)


def bos_of(tokenizer) -> int | None:
    """The BOS id each window starts with, or None when the tokenizer adds none (Qwen)."""
    return tokenizer.bos_id if tokenizer.add_bos and tokenizer.bos_id is not None else None


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 24):
            h.update(chunk)
    return h.hexdigest()


def whole_lines(data: bytes, lo: int, hi: int) -> tuple[int, int]:
    """The byte range of the whole lines lying within data[lo:hi] (a line ends with its newline).

    >>> whole_lines(b"ab\\ncd\\nef\\n", 1, 8)
    (3, 6)
    """
    start = 0 if lo == 0 else data.index(b"\n", lo - 1) + 1
    end = data.rindex(b"\n", 0, min(hi, len(data))) + 1
    return start, end


def stdlib_text(files: tuple[str, ...], byte_range: tuple[int, int]) -> tuple[bytes, list[dict]]:
    """The whole lines within `byte_range` of each standard-library file, concatenated in order."""
    parts, listing = [], []
    for name in files:
        data = (STDLIB / name).read_bytes()
        start, end = whole_lines(data, *byte_range)
        parts.append(data[start:end])
        listing.append({"file": name, "bytes": [start, end], "file_sha256": hashlib.sha256(data).hexdigest()})
    return b"".join(parts), listing


def texts() -> dict:
    """Calibration and held-out texts, written to WORK for inspection, with their provenance."""
    WORK.mkdir(parents=True, exist_ok=True)
    calib, calib_files = stdlib_text(CALIBRATION_FILES, CALIBRATION_BYTES)
    code, code_files = stdlib_text(HELD_OUT_CODE_FILES, HELD_OUT_CODE_BYTES)
    assert not set(CALIBRATION_FILES) & set(HELD_OUT_CODE_FILES), "held-out code must not be calibration text"
    out = {}
    for key, data, listing in (("calibration", calib, calib_files), ("code", code, code_files)):
        (WORK / f"{key}.txt").write_bytes(data)
        out[key] = {"path": str(WORK / f"{key}.txt"), "n_bytes": len(data),
                    "sha256": hashlib.sha256(data).hexdigest(), "files": listing}
    prose = PROSE.read_bytes()
    out["prose"] = {"path": str(PROSE), "n_bytes": len(prose), "sha256": hashlib.sha256(prose).hexdigest(),
                    "files": [{"file": "shared/atome/tinystories_sample.txt", "bytes": [0, len(prose)]}]}
    out["stdlib"] = f"{STDLIB} (CPython {platform.python_version()})"
    return out


def imatrix_step(loaded, calib_path: Path) -> tuple[Path, dict]:
    """Collect (or reuse) the importance matrix over the calibration text's first chunks."""
    data = calib_path.read_bytes()
    tag = f"{calib_path.name} sha256 {hashlib.sha256(data).hexdigest()[:16]}"
    path = WORK / f"imatrix-{IMATRIX_CHUNKS}x{CTX}.gguf"
    tokens = text_tokens(loaded.tokenizer, data)
    windows = make_windows(tokens, CTX, bos_of(loaded.tokenizer), IMATRIX_CHUNKS)
    info = {"path": str(path), "chunks": len(windows), "ctx": CTX, "text_tokens": len(tokens), "dataset": tag}
    sidecar = path.with_suffix(".json")  # how long it took, for the report of a later run that reuses it
    if path.exists():
        md = open_gguf(path).metadata
        if md.get("imatrix.datasets") == [tag] and md.get("imatrix.chunk_count") == len(windows):
            print(f"imatrix: reusing {path}", flush=True)
            seconds = json.loads(sidecar.read_text()).get("seconds") if sidecar.exists() else None
            return path, {**info, "seconds": seconds, "reused": True}
    t0 = time.perf_counter()

    def progress(done, total):
        print(f"  imatrix chunk {done}/{total} ({time.perf_counter() - t0:.0f} s)", flush=True)

    stats = collect_imatrix(loaded.model, windows, progress=progress)
    write_imatrix(path, stats, tag, len(windows), CTX)
    info["seconds"] = time.perf_counter() - t0
    sidecar.write_text(json.dumps(info))
    print(f"imatrix: {len(windows)} chunks of {CTX} ({len(tokens)} text tokens) in {info['seconds']:.0f} s -> {path}",
          flush=True)
    return path, info


# ---- rows ---------------------------------------------------------------------------------------


def tensor_types(path: Path) -> dict[str, int]:
    """{type name: number of tensors} of a GGUF file."""
    counts: dict[str, int] = {}
    for t in open_gguf(path).tensors.values():
        name = quants.TYPES[t.ggml_type].name
        counts[name] = counts.get(name, 0) + 1
    return counts


def eval_windows(tokenizer) -> dict[str, list[list[int]]]:
    """The first EVAL_WINDOWS windows of each held-out text: {"code": [...], "prose": [...]}."""
    bos = bos_of(tokenizer)
    out = {}
    for key, path in (("code", WORK / "code.txt"), ("prose", PROSE)):
        tokens = text_tokens(tokenizer, path.read_bytes(), tokens_needed(CTX, bos is not None, EVAL_WINDOWS))
        out[key] = make_windows(tokens, CTX, bos, EVAL_WINDOWS)
        if len(out[key]) < EVAL_WINDOWS:
            raise ValueError(f"{path} gives {len(out[key])} windows of {CTX} tokens (expected {EVAL_WINDOWS})")
    return out


def scored_bytes(tokenizer, windows: list[list[int]]) -> int:
    """How many bytes of the text the windows cover (from its start)."""
    return len(tokenizer.decode([t for w in windows for t in w if t != bos_of(tokenizer)]).encode("utf-8"))


def answers(loaded, base_answers: list[dict] | None) -> list[dict]:
    """ANSWER_TOKENS greedy tokens for each request; `same_prefix` counts tokens equal to the base's."""
    params = SamplingParams(temperature=0.0, max_tokens=ANSWER_TOKENS, stop=loaded.template.stop, speculative=False)
    out = []
    for k, request in enumerate(REQUESTS):
        loaded.forget()
        loaded.model.reset()
        gen = loaded.start({"messages": [{"role": "system", "content": SYSTEM}, {"role": "user", "content": request}]},
                           params)
        tokens, done = [], None
        while (ev := gen.step()) is not None:
            if ev["type"] == "token":
                tokens.append(int(ev["token_id"]))
            elif ev["type"] == "done":
                done = ev
        same = len(tokens)
        if base_answers is not None:
            ref = base_answers[k]["tokens"]
            same = next((i for i, (a, b) in enumerate(zip(tokens, ref)) if a != b), min(len(tokens), len(ref)))
        out.append({"request": request, "text": done["full_text"], "tokens": tokens, "stop_reason": done["reason"],
                    "same_prefix": same, "decode_tok_s": done["decode_tok_s"]})
        print(f"    answer {k + 1}: {len(tokens)} tokens, {same} as the base's, "
              f"{done['decode_tok_s']:.2f} tok/s: {done['full_text'][:60]!r}", flush=True)
    return out


def evaluate(label: str, path: Path, sets: dict, base, base_answers) -> tuple[dict, object]:
    """One row: file statistics, PPL per text (with KL and top-1 vs `base` when given), answers.
    Without `base` (the base row) it also returns the model wrapped in a CachedBase that holds its logits."""
    t0 = time.perf_counter()
    loaded = load(path, n_ctx=CTX)
    model = CachedBase(loaded.model) if base is None else loaded.model  # the base row fills the cache
    row = {"row": label, "file": path.name, "sha256": sha256(path), **file_stats(path), "tensor_types": tensor_types(path)}
    for key, windows in sets.items():
        r = perplexity(model, windows, base=base)
        row[key] = {"ppl": r.ppl, "n_scored": r.n_scored, "n_windows": r.n_windows,
                    "kl_mean": r.kl_mean if base is not None else 0.0, "kl_p99": r.kl_p99,
                    "top1_agreement": r.top1_agreement if base is not None else 1.0, "seconds": r.seconds}
        print(f"  {label}: {key} PPL {r.ppl:.4f}  KL {row[key]['kl_mean']:.4f}  "
              f"top-1 {100 * row[key]['top1_agreement']:.2f} %  ({r.seconds:.0f} s)", flush=True)
    n = sum(row[k]["n_scored"] for k in sets)
    row["kl_mean"] = sum(row[k]["kl_mean"] * row[k]["n_scored"] for k in sets) / n  # pooled over both texts
    row["top1_agreement"] = sum(row[k]["top1_agreement"] * row[k]["n_scored"] for k in sets) / n
    row["eval_seconds"] = time.perf_counter() - t0
    t1 = time.perf_counter()
    row["answers"] = answers(loaded, base_answers)
    row["answer_seconds"] = time.perf_counter() - t1
    return row, model


def made_by(path: Path, qtype: str, use_imatrix: bool) -> bool:
    """Whether an existing file is this row's: its mix's file type, with or without an imatrix."""
    md = open_gguf(path).metadata
    return md.get("general.file_type") == MIXES[qtype].ftype and ("quantize.imatrix.file" in md) == use_imatrix


def is_poor(row: dict, base_row: dict) -> bool:
    """The issue's test for "Q2_K quality is poor": top-1 below POOR_TOP1 or PPL above POOR_PPL_RATIO x base."""
    return any(row[k]["top1_agreement"] < POOR_TOP1 or row[k]["ppl"] > POOR_PPL_RATIO * base_row[k]["ppl"]
               for k in ("code", "prose"))


def verdict(rows: list[dict], base_row: dict) -> str:
    """One sentence on Q2_K + imatrix against the issue's test, from the numbers."""
    r = next(r for r in rows if r["row"] == "Q2_K + imatrix")
    ratios = {k: r[k]["ppl"] / base_row[k]["ppl"] for k in ("code", "prose")}
    poor = is_poor(r, base_row)
    q3 = any(x["row"].startswith("Q3_K") for x in rows)
    head = (f"Q2_K + imatrix against Q4_K_M: PPL x{ratios['code']:.2f} on code and x{ratios['prose']:.2f} on prose, "
            f"top-1 agreement {100 * r['code']['top1_agreement']:.1f} % / {100 * r['prose']['top1_agreement']:.1f} %: ")
    if poor:
        return head + ("poor by the issue's test (top-1 below 70 % or PPL above 1.5 x on a text), so the Q3_K row "
                       "was made." if q3 else "poor by the issue's test; the Q3_K row is still to come.")
    return head + ("not poor by the issue's test (top-1 at least 70 % and PPL at most 1.5 x on both texts)"
                   + ("; the Q3_K row was made anyway (--q3k yes), to show what one more bit buys." if q3 else "."))


# ---- report -------------------------------------------------------------------------------------


def span(r) -> str:
    return f"{r[0]}..{r[1]}"


def markdown(res: dict) -> str:
    """The "## Qwen2.5-Coder-1.5B-Instruct" section of docs/quality.md."""
    t = res["texts"]
    rows = res["rows"][:1] + sorted(res["rows"][1:], key=lambda r: (-r["bits_per_weight"], "imatrix" not in r["row"]))
    code, prose = rows[0]["code"], rows[0]["prose"]
    lines = [f"## {SECTION}", "",
             f"Generated by `scripts/quality_1p5b.py` on {res['date']} ({res['platform']}). Base: "
             f"`{BASE.name}` as downloaded (sha256 `{rows[0]['sha256'][:16]}...`). There is no float original at "
             "hand: every other row is a re-quantization of the Q4_K_M (dequantize, then `mote quantize`), and KL "
             "and top-1 are measured against the Q4_K_M. KL = mean KL(Q4_K_M || row) per scored token (nats); "
             "top-1 = share of positions where the row's most likely next token is the Q4_K_M's. Both are given "
             "as code / prose.", "",
             "| row | file MB | bits/weight | PPL code | PPL prose | KL vs Q4_K_M | top-1 agree | matrix weights by type |",
             "|---|---:|---:|---:|---:|---:|---:|---|"]
    for r in rows:
        share = ", ".join(f"{k} {100 * v:.0f}%" for k, v in r["matrix_weight_share"].items())
        lines.append(f"| {r['row']} | {r['file_mb']:.1f} | {r['bits_per_weight']:.2f} | {r['code']['ppl']:.3f} | "
                     f"{r['prose']['ppl']:.3f} | {r['code']['kl_mean']:.3f} / {r['prose']['kl_mean']:.3f} | "
                     f"{100 * r['code']['top1_agreement']:.1f}% / {100 * r['prose']['top1_agreement']:.1f}% | {share} |")
    lines += ["", res["verdict"], "",
              "Files (in `~/.cache/mote/models/`, not in the repository):", ""]
    lines += [f"- `{r['file']}`: {r['file_mb'] * 1e6:,.0f} bytes, sha256 `{r['sha256']}`" for r in rows]
    im = res["imatrix"]
    lines += ["", "Method:", "",
              "- Byte ranges are start..end, end excluded.",
              f"- Calibration (imatrix only): the whole lines within bytes {span(CALIBRATION_BYTES)} of each of "
              f"{len(t['calibration']['files'])} standard-library files of {t['stdlib']}, concatenated in this order: "
              + ", ".join(f"`{f['file']}` {span(f['bytes'])}" for f in t["calibration"]["files"])
              + f" ({t['calibration']['n_bytes']} bytes, {im['text_tokens']} tokens, sha256 "
              f"`{t['calibration']['sha256'][:16]}...`). `mote imatrix`'s method over its first {im['chunks']} chunks "
              f"of {im['ctx']} tokens ({im['chunks'] * im['ctx']} tokens).",
              "- Held-out code: the whole lines within bytes "
              f"{span(HELD_OUT_CODE_BYTES)} of other standard-library files, concatenated: "
              + ", ".join(f"`{f['file']}` {span(f['bytes'])}" for f in t["code"]["files"])
              + f" ({t['code']['n_bytes']} bytes, sha256 `{t['code']['sha256'][:16]}...`); the windows cover its "
              f"first {res['scored_bytes']['code']} bytes.",
              f"- Held-out prose: `shared/atome/tinystories_sample.txt` from byte 0 (the windows cover its first "
              f"{res['scored_bytes']['prose']} bytes; the text Gemma's rows above are scored on).",
              f"- Each text: the first {code['n_windows']} windows of {CTX} tokens, no BOS (Qwen adds none), every "
              f"position after a window's first scored: {code['n_scored']} code and {prose['n_scored']} prose "
              "tokens (`mote.perplexity`).",
              f"- Q3_K is made when Q2_K + imatrix is poor: top-1 agreement below {100 * POOR_TOP1:.0f} % or PPL "
              f"above {POOR_PPL_RATIO} x Q4_K_M's on either text.",
              "- Bits per weight: 8 x tensor bytes / parameters, all tensors (the 233M-parameter output matrix "
              "stays Q6_K in every row).",
              "- Time on one core of this machine (OPENBLAS_NUM_THREADS=1): "
              + "; ".join(res["timings"]) + ".", "",
              f"Greedy answers ({ANSWER_TOKENS} tokens at most, temperature 0, prompt lookup off, chat template "
              f"with the system prompt \"{SYSTEM}\"); \"same\" = leading tokens identical to the Q4_K_M's answer:", ""]
    for k, request in enumerate(REQUESTS):
        lines += [f"**{k + 1}. {html.escape(request)}**", "", "<table><tr>"]
        lines += [f"<th>{r['row']}" + (f" (same: {r['answers'][k]['same_prefix']})" if i else "") + "</th>"
                  for i, r in enumerate(rows)]
        lines += ["</tr><tr>"]
        # newlines as &#10;: a blank line or a ``` line would end the HTML block in Markdown
        lines += [f"<td valign=\"top\"><pre>{html.escape(r['answers'][k]['text']).replace(chr(10), '&#10;')}</pre></td>"
                  for r in rows]
        lines += ["</tr></table>", ""]
    return "\n".join(lines)


def write_report(res: dict, docs: Path) -> None:
    (docs / "quality_1p5b.json").write_text(json.dumps(res, indent=1))
    md = docs / "quality.md"
    old = md.read_text() if md.exists() else "# Quantization quality\n"
    md.write_text(merge_sections(old, markdown(res)))


# ---- steps --------------------------------------------------------------------------------------


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--steps", default="all", choices=("all", "texts", "docs"),
                    help="texts: write and list the texts only; docs: rewrite the section from quality_1p5b.json")
    ap.add_argument("--q3k", default="auto", choices=("auto", "yes", "no"),
                    help="make the Q3_K row: when Q2_K + imatrix is poor (auto), always, or never")
    ap.add_argument("--requantize", action="store_true", help="quantize again even when the file exists")
    ap.add_argument("--skip-plain", action="store_true", help="no Q2_K row without the imatrix")
    ap.add_argument("--docs", default=str(ROOT / "docs"), help="folder of quality.md and quality_1p5b.json")
    args = ap.parse_args()
    docs = Path(args.docs)
    if args.steps == "docs":
        write_report(json.loads((docs / "quality_1p5b.json").read_text()), docs)
        return 0
    t = texts()
    print(json.dumps(t, indent=1))
    if args.steps == "texts":
        return 0
    if not BASE.exists():
        raise SystemExit(f"{BASE} not found (`mote pull qwen2.5-coder-1.5b`, or set MOTE_QWEN15_PATH)")
    res = {"model": SECTION, "date": DATE, "base": str(BASE), "ctx": CTX, "texts": t,
           "platform": f"{platform.python_implementation()} {platform.python_version()}, numpy {np.__version__}, "
                       f"{os.cpu_count()} CPUs", "timings": [], "rows": []}

    # 1. importance matrix from the calibration text
    base_loaded = load(BASE, n_ctx=CTX)
    im_path, res["imatrix"] = imatrix_step(base_loaded, WORK / "calibration.txt")
    if res["imatrix"]["seconds"] is not None:
        res["timings"].append(f"imatrix {res['imatrix']['chunks']} chunks {res['imatrix']['seconds'] / 60:.1f} min"
                              + (" (an earlier run)" if res["imatrix"].get("reused") else ""))
    imatrix = read_imatrix(im_path)

    # 2. the base row; its logits are kept for every other row's KL
    sets = eval_windows(base_loaded.tokenizer)
    res["scored_bytes"] = {k: scored_bytes(base_loaded.tokenizer, w) for k, w in sets.items()}
    del base_loaded
    base_row, base = evaluate("Q4_K_M (source)", BASE, sets, None, None)
    base.model = None  # every window's logits are cached; free the weights
    res["rows"].append(base_row)
    res["timings"].append(f"Q4_K_M evaluation {base_row['eval_seconds'] / 60:.1f} min")
    base_answers = base_row["answers"]

    # 3. quantized rows, each written to ~/.cache/mote/models/ and evaluated
    for label, qtype, use_im in ROWS:
        if label == "Q2_K" and args.skip_plain:
            continue
        if qtype == "q3_k":
            poor = is_poor(next(r for r in res["rows"] if r["row"] == "Q2_K + imatrix"), base_row)
            if args.q3k == "no" or (args.q3k == "auto" and not poor):
                print(f"Q3_K: skipped (Q2_K + imatrix poor: {poor}, --q3k {args.q3k})", flush=True)
                continue
        out = MODELS / f"{BASE.name.split('-q4_k_m')[0]}-{qtype}{'-imat' if use_im else ''}.gguf"
        t0 = time.perf_counter()
        if out.exists() and not args.requantize and made_by(out, qtype, use_im):
            print(f"{label}: reusing {out}", flush=True)
            q_seconds, done = None, "an earlier run's file"
        else:
            print(f"{label}: quantizing -> {out}", flush=True)
            quantize_file(BASE, out, qtype, imatrix=imatrix if use_im else None,
                          imatrix_path=str(im_path) if use_im else None, log=lambda *a, **k: None, show_progress=False)
            q_seconds = time.perf_counter() - t0
            done = f"quantize {q_seconds / 60:.1f} min"
        row, _ = evaluate(label, out, sets, base, base_answers)
        row["quantize_seconds"] = q_seconds
        print(f"  {label}: sha256 {row['sha256']}  ({done})", flush=True)
        res["rows"].append(row)
        res["timings"].append(f"{label} {done}, evaluation {row['eval_seconds'] / 60:.1f} min")
        res["verdict"] = verdict(res["rows"], base_row)
        write_report(res, docs)  # after every row, so a long run never loses the finished ones
    res["timings"].append(f"greedy answers about {sum(r['answer_seconds'] for r in res['rows']) / 60:.1f} min in all")
    write_report(res, docs)
    print(f"wrote {docs / 'quality.md'} and {docs / 'quality_1p5b.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
