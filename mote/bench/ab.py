"""A/B: the same benchmark on two checkouts of Mote (old and new code), in turns, with paired ratios.

    python -m mote.bench.ab --base ../old-checkout --new . --rounds 3 -- MODEL -n 64 --browser --workers 2
    python -m mote.bench.ab --base ../old-checkout --new . --rounds 3 -- MODEL -n 64          # native

Round r runs `mote bench ... --repeat 1 --json` in one checkout, then in the other (which goes
first alternates by round), so the machine's drift falls on both alike; the r-th runs of both form
a pair. Each checkout runs its own code with this interpreter (its folder first on sys.path, its
CLI wherever that checkout keeps it). Reported per row (engine and worker count): decode tok/s of
each run, the new / base ratio per round with its median and range, whether the greedy tokens
of both checkouts are the same, and (browser, where the checkout reports it) the seconds to ready
and to the first token, from navigation, with their paired ratios. Browser assets must be built in both checkouts (build_wasm.py).
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path


def cli_module(checkout: Path) -> str:
    """Where a checkout keeps its `mote` command (it moved from engine/ to mote/ in the redesign)."""
    return "mote.cli" if (checkout / "mote" / "cli.py").is_file() else "engine.cli"


def run_once(checkout: Path, bench_args: list[str]) -> dict:
    """One `mote bench ... --repeat 1 --json` in `checkout`: {row label: {decode_tok_s, tokens}}."""
    with tempfile.TemporaryDirectory(prefix="mote-ab-") as out:
        args = ["bench", *bench_args, "--repeat", "1", "--json"]
        if "--browser" in bench_args:
            args += ["--out", out]
            bench = checkout / "mote" / "bench" / "browser.py"
            if bench.is_file() and '"--history"' in bench.read_text():
                args += ["--history", "none"]   # A/B rounds are not bench runs of their own
        code = f"import sys; from {cli_module(checkout)} import main; sys.exit(main(sys.argv[1:]))"
        proc = subprocess.run([sys.executable, "-c", code, *args], cwd=checkout, capture_output=True, text=True)
    report = _json_of(proc, checkout)
    if "rows" not in report:  # native bench: one row; its greedy tokens from `mote generate`
        model, n = bench_args[0], bench_args[bench_args.index("-n") + 1] if "-n" in bench_args else "32"
        gen = [sys.executable, "-c", code, "generate", model, "-p", "Once upon a time", "-n", n,
               "--temperature", "0", "--json"]
        tokens = _json_of(subprocess.run(gen, cwd=checkout, capture_output=True, text=True), checkout)["tokens"]
        return {"native": {"decode_tok_s": report["decode_tok_s"], "tokens": tokens}}
    rows = {}
    for row in report["rows"]:
        run = row["runs"][0] if row.get("runs") else {}
        rows[row["engine"]] = {"decode_tok_s": run.get("decode_tok_s"), "tokens": run.get("token_ids"),
                               "ready_s": run.get("ready_s"), "first_token_s": run.get("first_token_s"),
                               "timings": run.get("timings"),
                               "wasm_mb": run.get("wasm_mb"), "peak_rss_mb": run.get("peak_rss_mb")}
    return rows


# The browser rows' seconds compared pair by pair: ready, and the first token (both from navigation).
SECONDS = {"ready_s": "ready", "first_token_s": "first token"}


def _range(xs: list[float]) -> dict | None:
    return {"median": statistics.median(xs), "min": min(xs), "max": max(xs)} if xs else None


def _json_of(proc: subprocess.CompletedProcess, checkout: Path) -> dict:
    if proc.returncode != 0:
        raise SystemExit(f"{proc.args[3:5]} failed in {checkout} (exit {proc.returncode}):\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m mote.bench.ab", description=__doc__.split("\n")[0])
    ap.add_argument("--base", type=Path, required=True, help="checkout with the old code")
    ap.add_argument("--new", type=Path, default=Path("."), help="checkout with the new code (default .)")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--out", type=Path, default=None, help="write the JSON report here too")
    ap.add_argument("bench_args", nargs=argparse.REMAINDER, help="-- then the arguments of `mote bench`")
    args = ap.parse_args(argv)
    bench_args = [a for a in args.bench_args if a != "--"]
    if args.rounds < 1:
        ap.error(f"--rounds must be at least 1, got {args.rounds}")
    sides = {"base": args.base.resolve(), "new": args.new.resolve()}
    runs: dict[str, list[dict]] = {"base": [], "new": []}
    for r in range(args.rounds):
        order = ["base", "new"] if r % 2 == 0 else ["new", "base"]
        for side in order:
            print(f"[ab] round {r + 1}/{args.rounds}: {side} ...", file=sys.stderr, flush=True)
            runs[side].append(run_once(sides[side], bench_args))
    table = {}
    for label in runs["base"][0]:
        pairs = [(b[label], n[label]) for b, n in zip(runs["base"], runs["new"]) if label in n]
        ratios = [n["decode_tok_s"] / b["decode_tok_s"] for b, n in pairs if b["decode_tok_s"] and n["decode_tok_s"]]
        table[label] = {
            "base_decode_tok_s": [b["decode_tok_s"] for b, _ in pairs],
            "new_decode_tok_s": [n["decode_tok_s"] for _, n in pairs],
            "ratio_median": statistics.median(ratios) if ratios else None,
            "ratio_min": min(ratios, default=None), "ratio_max": max(ratios, default=None),
            "same_tokens": all(b["tokens"] == n["tokens"] for b, n in pairs),
            "base_wasm_mb": [b.get("wasm_mb") for b, _ in pairs], "new_wasm_mb": [n.get("wasm_mb") for _, n in pairs],
            "base_peak_rss_mb": [b.get("peak_rss_mb") for b, _ in pairs],
            "new_peak_rss_mb": [n.get("peak_rss_mb") for _, n in pairs],
            "base_timings": [b.get("timings") for b, _ in pairs], "new_timings": [n.get("timings") for _, n in pairs],
        }
        for key in SECONDS:
            table[label][f"base_{key}"] = [b.get(key) for b, _ in pairs]
            table[label][f"new_{key}"] = [n.get(key) for _, n in pairs]
            ratios = [n[key] / b[key] for b, n in pairs if b.get(key) and n.get(key)]
            table[label][f"{key.removesuffix('_s')}_ratio"] = _range(ratios)
    report = {"bench_args": bench_args, "rounds": args.rounds, "rows": table}
    if args.out:
        args.out.write_text(json.dumps(report, indent=1))
    for label, t in table.items():
        fmt = lambda xs: ", ".join(f"{x:.2f}" for x in xs if x is not None)  # noqa: E731
        ratio = "n/a" if t["ratio_median"] is None else \
            f"{t['ratio_median']:.3f} ({t['ratio_min']:.3f}-{t['ratio_max']:.3f})"
        print(f"{label:24} base [{fmt(t['base_decode_tok_s'])}] new [{fmt(t['new_decode_tok_s'])}] tok/s; "
              f"new/base {ratio}; same greedy tokens: {t['same_tokens']}")
        if any(t["base_peak_rss_mb"]) and any(t["new_peak_rss_mb"]):
            mb = lambda xs: ", ".join(f"{x:.0f}" for x in xs if x is not None)  # noqa: E731
            print(f"{'':24} tab peak MB: base [{mb(t['base_peak_rss_mb'])}] new [{mb(t['new_peak_rss_mb'])}]")
        for key, name in SECONDS.items():
            if r := t[f"{key.removesuffix('_s')}_ratio"]:
                print(f"{'':24} {name} s: base [{fmt(t[f'base_{key}'])}] new [{fmt(t[f'new_{key}'])}]; "
                      f"new/base {r['median']:.3f} ({r['min']:.3f}-{r['max']:.3f})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
