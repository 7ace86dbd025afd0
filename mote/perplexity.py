"""Perplexity and KL divergence on a text file (a tool beside the pipeline: loader.py -> model.py).

    mote perplexity MODEL TEXTFILE --ctx 256 [--max-windows K] [--kl-base BASE.gguf] [--json]

Method (what the number means, so it can be compared with other tools):

1. Tokens. A byte-vocabulary model (tokenizer kind "bytes") reads the file's raw bytes, one token
   per byte. Any other model decodes the file as UTF-8 and runs its own tokenizer over the whole
   text without special tokens (with --max-windows, over a prefix of the text ending at a line
   break and holding at least `TOKENIZE_MARGIN` tokens more than the windows need, so the cut
   cannot change the scored tokens).
2. Windows. Non-overlapping windows of `ctx` tokens from the start of the text; the last partial
   window is dropped. A model whose tokenizer adds BOS (Gemma, Llama) gets BOS as each window's
   first token followed by the next ctx - 1 text tokens, so every text token is scored exactly
   once; a model without BOS takes ctx text tokens per window. llama.cpp's `llama-perplexity`
   differs in two ways: it overwrites each chunk's first text token with BOS, and it scores only
   the second half of each chunk. We score every position after the first, as the issue asks
   ("each window scores its tokens 1..N-1"), which matches Atome LM's reference evaluation.
3. Scoring. One batched forward per window (model.reset(); model.forward(window, all_logits=True)),
   then NLL_j = -log softmax(logits[j - 1])[token_j] for j = 1..ctx-1.
   PPL = exp(mean NLL) over all scored tokens of all windows.
4. --kl-base BASE runs the base model over the same windows and reports, like llama.cpp's
   --kl-divergence, the mean of KL(P_base || P_model) = sum_v p_base(v) (log p_base(v) - log p_model(v))
   over the scored positions, its median and 99th percentile, and the top-1 agreement: the share of
   positions where both models' most likely next token is the same. The base must share the
   vocabulary (same size); both tokenize the text with the model's tokenizer.

Example (vanilla 1M byte GPT, the full 256 KiB TinyStories sample):
    $ mote perplexity vanilla-1m.gguf tinystories_sample.txt --ctx 256
    PPL 3.0540 over 261120 tokens (1024 windows of 256) in ... s
Atome LM's own evaluation (shared/reference/vanilla-1m.json) gives 3.05406 over 260865 tokens: it
stops one window early (1023 windows), so its number covers 255 fewer tokens; the two agree to 0.002 %.
"""

from __future__ import annotations

import json
import math
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

TOKENIZE_MARGIN = 64  # extra tokens beyond the last scored one when only a prefix is tokenized
ROWS_PER_STEP = 32  # positions scored per step (bounds the float64 log-softmax temporaries)


# ---- tokens and windows -------------------------------------------------------------------------


def text_tokens(tokenizer, data: bytes, need: int | None = None) -> list[int]:
    """Token ids of a text file's bytes (the whole text, or a prefix giving at least `need` tokens).

    >>> text_tokens(Tokenizer.byte_tokenizer(), b"Hi!")
    [72, 105, 33]
    """
    if tokenizer.kind == "bytes":
        return list(data)  # one token per byte, id = byte value
    text = data.decode("utf-8", errors="replace")
    if need is None:
        return tokenizer.encode(text, add_bos=False)
    # A prefix big enough for `need` tokens, cut at a line break; grow it until it is.
    n_chars = max(4096, 8 * need)
    while True:
        if n_chars >= len(text):
            return tokenizer.encode(text, add_bos=False)
        cut = text.rfind("\n", 0, n_chars)
        prefix = text[: cut + 1] if cut > 0 else text[:n_chars]
        ids = tokenizer.encode(prefix, add_bos=False)
        if len(ids) >= need + TOKENIZE_MARGIN:
            return ids
        n_chars *= 2


def make_windows(tokens: Sequence[int], ctx: int, bos_id: int | None = None,
                 max_windows: int | None = None) -> list[list[int]]:
    """Non-overlapping windows of `ctx` tokens; with `bos_id`, BOS + ctx - 1 text tokens each.

    >>> make_windows([1, 2, 3, 4, 5, 6, 7], 3)
    [[1, 2, 3], [4, 5, 6]]
    >>> make_windows([1, 2, 3, 4, 5, 6, 7], 3, bos_id=0)
    [[0, 1, 2], [0, 3, 4], [0, 5, 6]]
    """
    if ctx < 2:
        raise ValueError(f"--ctx {ctx} is too small (expected at least 2: one context token and one scored)")
    step = ctx - 1 if bos_id is not None else ctx  # text tokens per window
    n = len(tokens) // step
    if max_windows is not None:
        n = min(n, max_windows)
    head = [bos_id] if bos_id is not None else []
    return [head + list(tokens[i * step : (i + 1) * step]) for i in range(n)]


def tokens_needed(ctx: int, has_bos: bool, max_windows: int | None) -> int | None:
    """Text tokens that `max_windows` windows consume (None: all of the text)."""
    if max_windows is None:
        return None
    return max_windows * (ctx - 1 if has_bos else ctx)


# ---- scoring ------------------------------------------------------------------------------------


def log_softmax(logits: np.ndarray) -> np.ndarray:
    """Row-wise log softmax in float64 (the sums over 262k-token vocabularies need the precision)."""
    z = logits.astype(np.float64)  # (n, vocab)
    z -= z.max(axis=-1, keepdims=True)
    return z - np.log(np.exp(z).sum(axis=-1, keepdims=True))  # (n, vocab)


@dataclass
class PerplexityResult:
    ppl: float
    n_scored: int
    n_windows: int
    ctx: int
    seconds: float
    nll_mean: float                    # mean negative log-likelihood per scored token (nats)
    bos: bool                          # windows start with BOS
    tokens_per_second: float           # scored tokens per second (forward passes included)
    # with a base model (--kl-base):
    kl_mean: float | None = None       # mean KL(P_base || P_model), nats per position
    kl_median: float | None = None
    kl_p99: float | None = None
    top1_agreement: float | None = None  # share of positions whose argmax tokens agree
    base_ppl: float | None = None
    extra: dict = field(default_factory=dict)

    def as_dict(self) -> dict:
        d = asdict(self)
        d.update(d.pop("extra"))
        return {k: v for k, v in d.items() if v is not None}


def perplexity(model, windows: list[list[int]], base=None,
               progress: Callable[[int, int], None] | None = None) -> PerplexityResult:
    """Score every window with `model` (and `base`, for KL). Models need n_ctx >= the window length."""
    if not windows:
        raise ValueError("the text is shorter than one window: no tokens to score")
    ctx = len(windows[0])
    for m, what in ((model, "model"), (base, "base model")):
        if m is not None and getattr(m, "n_ctx", ctx) < ctx:
            raise ValueError(f"--ctx {ctx} is longer than the {what}'s context ({m.n_ctx} tokens)")
    t0 = time.perf_counter()
    nll_sum = base_nll_sum = 0.0
    n_scored = agree = 0
    kls: list[np.ndarray] = []
    for w, window in enumerate(windows):
        target = np.asarray(window[1:], dtype=np.int64)  # (ctx - 1,) tokens 1..ctx-1
        model.reset()
        logits = model.forward(window, all_logits=True)  # (ctx, vocab)
        base_logits = None
        if base is not None:
            base.reset()
            base_logits = base.forward(window, all_logits=True)  # (ctx, vocab)
            if base_logits.shape != logits.shape:
                raise ValueError(f"base model has vocabulary {base_logits.shape[1]} (expected {logits.shape[1]}, "
                                 "the model's: KL needs the same tokens)")
        # Row chunks keep the float64 temporaries small (Gemma: 262144 floats per row).
        for r in range(0, len(target), ROWS_PER_STEP):
            rows = slice(r, min(r + ROWS_PER_STEP, len(target)))
            pick = np.arange(rows.stop - rows.start)  # (m,)
            logp = log_softmax(logits[rows])  # (m, vocab) position j predicts token j + 1
            nll_sum -= float(logp[pick, target[rows]].sum())
            if base_logits is not None:
                base_logp = log_softmax(base_logits[rows])  # (m, vocab)
                base_nll_sum -= float(base_logp[pick, target[rows]].sum())
                kl = (np.exp(base_logp) * (base_logp - logp)).sum(axis=-1)  # (m,)
                kls.append(np.maximum(kl, 0.0))  # rounding can give -1e-17
                agree += int((base_logp.argmax(axis=-1) == logp.argmax(axis=-1)).sum())
        n_scored += len(target)
        if progress is not None:
            progress(w + 1, len(windows))
    seconds = time.perf_counter() - t0
    nll = nll_sum / n_scored
    result = PerplexityResult(
        ppl=math.exp(nll), n_scored=n_scored, n_windows=len(windows), ctx=ctx, seconds=seconds,
        nll_mean=nll, bos=False, tokens_per_second=n_scored / max(seconds, 1e-9))
    if base is not None:
        kl_all = np.concatenate(kls)  # (n_scored,)
        result.kl_mean = float(kl_all.mean())
        result.kl_median = float(np.median(kl_all))
        result.kl_p99 = float(np.percentile(kl_all, 99))
        result.top1_agreement = agree / n_scored
        result.base_ppl = math.exp(base_nll_sum / n_scored)
    return result


def run_file(model_path, text_path, ctx: int, max_windows: int | None = None, kl_base=None,
             show_progress: bool = True) -> PerplexityResult:
    """Load the model (and base), tokenize the text, score it: what `mote perplexity` does."""
    from .loader import load
    from .progress import Progress

    loaded = load(model_path, n_ctx=ctx)
    tok = loaded.tokenizer
    bos_id = tok.bos_id if tok.add_bos and tok.bos_id is not None else None
    data = Path(text_path).read_bytes()
    tokens = text_tokens(tok, data, tokens_needed(ctx, bos_id is not None, max_windows))
    windows = make_windows(tokens, ctx, bos_id, max_windows)
    base = load(kl_base, n_ctx=ctx).model if kl_base is not None else None
    bar = Progress(total=len(windows), label="perplexity", unit="win") if show_progress else None
    try:
        result = perplexity(loaded.model, windows, base=base, progress=bar)
    finally:
        if bar is not None:
            bar.close()
    result.bos = bos_id is not None
    result.extra = {"model": str(loaded.path), "text": str(text_path), "n_text_tokens": len(tokens)}
    if kl_base is not None:
        result.extra["kl_base"] = str(kl_base)
    return result


# ---- command line -------------------------------------------------------------------------------


def cmd_perplexity(args) -> int:
    result = run_file(args.model, args.textfile, args.ctx, max_windows=args.max_windows,
                      kl_base=args.kl_base, show_progress=not args.no_progress)
    if args.json:
        print(json.dumps(result.as_dict()))
        return 0
    print(f"PPL {result.ppl:.4f} over {result.n_scored} tokens ({result.n_windows} windows of {result.ctx}"
          f"{', BOS first' if result.bos else ''}) in {result.seconds:.1f} s")
    if result.kl_mean is not None:
        print(f"KL(base || model) mean {result.kl_mean:.6f} median {result.kl_median:.6f} "
              f"p99 {result.kl_p99:.6f} nats; top-1 agreement {100 * result.top1_agreement:.2f} %; "
              f"base PPL {result.base_ppl:.4f}")
    return 0


def add_cli(sub) -> None:
    p = sub.add_parser("perplexity", help="perplexity of a model on a text file (optionally KL vs a base)")
    p.add_argument("model", help=".gguf path or pulled model name")
    p.add_argument("textfile")
    p.add_argument("--ctx", type=int, default=256, help="window length in tokens (default 256)")
    p.add_argument("--max-windows", type=int, default=None, help="score only the first K windows")
    p.add_argument("--kl-base", default=None, help="base model: add KL(base || model) and top-1 agreement")
    p.add_argument("--json", action="store_true")
    p.add_argument("--no-progress", action="store_true", help="no progress bar on stderr")
    p.set_defaults(func=cmd_perplexity)


if __name__ == "__main__":  # python -m mote.perplexity ...
    import argparse

    ap = argparse.ArgumentParser(prog="mote")
    add_cli(ap.add_subparsers(dest="command", required=True))
    a = ap.parse_args(["perplexity"] + sys.argv[1:])
    sys.exit(a.func(a))
