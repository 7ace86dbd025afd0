"""Native benchmark: the engine's speed and memory in this CPython process.

    mote bench MODEL [-n 32] [--repeat 3] [--dense-mb MB] [--ctx N] [--json]     (mote/cli.py)

`bench()` is the `mote bench MODEL --json` row (keys are a stable contract, README table): load
seconds, median prefill and decode tok/s over `repeat` greedy runs of one prompt, peak RSS. For an
`atome` model it adds the naive forward pass (`atome.reference_forward`, whole prompt recomputed)
on the same prompt, to compare the vectorised/cached forward against.

`greedy_run()` is one greedy generation as the browser worker runs it (chat-template stop strings
apply), with its tokens for correctness checks: the browser benchmark's CPython reference and its
`--native` rows call it.
"""

from __future__ import annotations

import platform
import resource
import statistics
import time
from pathlib import Path

import numpy as np

from engine.generate import SamplingParams, generate

BENCH_PROMPT = "Once upon a time, in a small village, there lived an old clockmaker who"


def peak_rss_mb() -> float:
    """This process's peak resident memory so far, in MB."""
    kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # kilobytes on Linux, bytes on macOS
    return kb / 1024 if platform.system() != "Darwin" else kb / 2**20


def greedy_run(model: str | Path | None, prompt: str, n_predict: int, n_ctx: int | None = None,
               loaded=None, template_stops: bool = True) -> dict:
    """One greedy generation of up to `n_predict` tokens after `prompt`; returns its row.

    model: a .gguf path or pulled model name, loaded here (n_ctx: KV cache length) unless `loaded`
    (a mote.loader.load() result) is given; generation starts from an empty KV cache either way.
    template_stops: the chat template's stop strings end the text, as in the browser worker.
    Row: token_ids, text, stop_reason, n_prompt, n_generated, ttft_s, prefill_tok_s, decode_tok_s,
    load_s (0.0 when `loaded` was given), peak_rss_mb.
    """
    from mote.loader import load

    load_s = 0.0
    if loaded is None:
        t0 = time.perf_counter()
        loaded = load(model, n_ctx=n_ctx)
        load_s = time.perf_counter() - t0
    ids = loaded.tokenizer.encode(prompt)
    stop = tuple(loaded.template.stop) if template_stops else ()
    tokens, first, done = [], None, None
    t1 = time.perf_counter()
    for ev in generate(loaded.model, loaded.tokenizer, ids, SamplingParams(temperature=0, max_tokens=n_predict, stop=stop)):
        if ev.kind == "token":
            first = first if first is not None else time.perf_counter() - t1
            tokens.append(int(ev.token_id))
        elif ev.kind == "done":
            done = ev
    return {"token_ids": tokens, "text": done.full_text, "stop_reason": done.reason, "n_prompt": len(ids),
            "n_generated": done.n_generated, "ttft_s": first, "prefill_tok_s": done.prefill_tok_s,
            "decode_tok_s": done.decode_tok_s, "load_s": load_s, "peak_rss_mb": peak_rss_mb()}


def bench(loaded, prompt: str | None = None, n_predict: int = 32, repeat: int = 3,
          rss_before_load_mb: float | None = None) -> dict:
    """The `mote bench MODEL --json` row for a loaded model: `repeat` greedy runs, medians."""
    runs = [greedy_run(None, prompt or BENCH_PROMPT, n_predict, loaded=loaded, template_stops=False)
            for _ in range(repeat)]
    med = lambda xs: float(statistics.median(xs))  # noqa: E731
    row = {
        "model": str(loaded.path),
        "architecture": loaded.model.config.architecture,
        "load_seconds": loaded.load_seconds,
        "n_prompt": runs[0]["n_prompt"],
        "n_generated": runs[0]["n_generated"],
        "prefill_tok_s": med([r["prefill_tok_s"] for r in runs]),
        "decode_tok_s": med([r["decode_tok_s"] for r in runs]),
        "decode_tok_s_runs": [r["decode_tok_s"] for r in runs],
        "peak_rss_mb": peak_rss_mb(),
        "rss_before_load_mb": rss_before_load_mb,
        "platform": f"{platform.python_implementation()} {platform.python_version()} numpy {np.__version__}",
    }
    if row["architecture"] == "atome":
        row["reference_prefill_tok_s"] = _atome_reference_tok_s(loaded, prompt or BENCH_PROMPT)
    return row


def _atome_reference_tok_s(loaded, prompt: str) -> float:
    """Tokens per second of atome.reference_forward (naive: the whole prompt, trits unpacked per product)."""
    from engine.atome import reference_forward

    ids = loaded.tokenizer.encode(prompt)
    t0 = time.perf_counter()
    reference_forward(loaded.model.weights, ids)
    return len(ids) / (time.perf_counter() - t0)
