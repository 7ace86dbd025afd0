"""The `mote` command line (glue: consumes loader.py and generate.py).

    mote pull gemma-3-270m
    mote info MODEL [--json]
    mote tokenize MODEL TEXT [--bos] [--special] [--json]
    mote generate MODEL -p PROMPT -n N [--temperature 0] [--seed S] [--json]
    mote chat MODEL [--system TEXT]
    mote logits MODEL -p PROMPT [--top 20] [--json]
    mote bench MODEL [--json]
    mote serve [--host 127.0.0.1] [--port 8000] [--models DIR]

MODEL is a .gguf path or the name of a pulled model. The --json forms are a stable contract used by
scripts and benchmarks: keep their keys.
"""

from __future__ import annotations

import argparse
import collections
import json
import math
import os
import sys
from pathlib import Path

from engine import __version__


def _blas_threads(argv: list[str]) -> str:
    """BLAS threads for this run, decided before numpy loads (OpenBLAS reads the variable once).

    By default the int8-block products of the LM head run in Mote's own row-band threads
    (engine/matmul.py), and a second, BLAS thread pool on the same cores only slows decoding down.
    With --dense-mb large enough that everything is float32, all the work is BLAS and its threads
    win. docs/kernels.md ("Later measurements") has the numbers.
    """
    for i, a in enumerate(argv):
        value = a.split("=", 1)[1] if a.startswith("--dense-mb=") else (argv[i + 1] if a == "--dense-mb" and i + 1 < len(argv) else None)
        try:
            if value is not None and float(value) >= 1024:
                return str(os.cpu_count() or 1)
        except ValueError:
            pass
    return "1"


if "numpy" not in sys.modules:  # the `mote` entry point: nothing has loaded numpy yet
    os.environ.setdefault("OPENBLAS_NUM_THREADS", _blas_threads(sys.argv[1:]))

class CLIError(Exception):
    """A user-facing error: printed as one line, exit status 1."""


def whole_number(low: int, high: int | None = None):
    """argparse type: a whole number in [low, high], refused by argparse (one line, exit 2) otherwise."""
    def parse(text: str) -> int:
        try:
            n = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
        if n < low or (high is not None and n > high):
            raise argparse.ArgumentTypeError(f"{n} is out of range (expected {low}..{high if high is not None else ''})")
        return n
    return parse


def _megabytes(text: str) -> float:
    """argparse type: a finite size in MB, >= 0."""
    try:
        v = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number of MB, got {text!r}") from None
    if not math.isfinite(v) or v < 0:
        raise argparse.ArgumentTypeError(f"{text} MB is not a size (expected a number >= 0)")
    return v


def _emit(args, data: dict, text: str) -> None:
    if getattr(args, "json", False):
        print(json.dumps(data, ensure_ascii=False))
    else:
        print(text)


def _params(args, max_tokens: int):
    from engine.generate import SamplingParams

    return SamplingParams(
        temperature=args.temperature,
        top_k=args.top_k,
        top_p=args.top_p,
        min_p=args.min_p,
        repeat_penalty=args.repeat_penalty,
        repeat_last_n=args.repeat_last_n,
        seed=args.seed,
        max_tokens=max_tokens,
        stop=tuple(args.stop or ()),
        speculative=not args.no_lookup,
    )


def _load(args):
    from .loader import load
    from engine.model import LoadPolicy

    policy = LoadPolicy()
    if getattr(args, "dense_mb", None) is not None:
        policy = LoadPolicy(dense_layers_mb=args.dense_mb, dense_head_mb=args.dense_mb)
    if getattr(args, "packed", False):  # the browser's layout: products from the mapped file's blocks
        policy = LoadPolicy(dense_layers_mb=0.0, dense_head_mb=0.0, packed=True, kv_dtype="float16")
    return load(args.model, n_ctx=getattr(args, "ctx", None), policy=policy, progress="auto")


# ---- commands -----------------------------------------------------------------------------------


def cmd_pull(args) -> int:
    from .pull import pull

    path = pull(args.name, cache_dir=args.cache_dir)
    print(path)
    return 0


def cmd_info(args) -> int:
    from engine import quants
    from engine.gguf import open_gguf
    from .pull import resolve_model, sha256_file

    path = resolve_model(args.model)
    g = open_gguf(path)
    md = g.metadata
    arch = md.get("general.architecture", "?")
    types = collections.Counter(quants.TYPES[t.ggml_type].name for t in g.tensors.values())
    data = {
        "architecture": arch,
        "name": md.get("general.name"),
        "n_params": sum(math.prod(t.shape) for t in g.tensors.values()),
        "n_layers": md.get(f"{arch}.block_count"),
        "context_length": md.get(f"{arch}.context_length"),
        "tensor_types": dict(sorted(types.items())),
        "file_size": os.path.getsize(path),
        "sha256": sha256_file(path),
        "licence": md.get("general.license"),
        "tokenizer": md.get("tokenizer.ggml.model"),
        "vocab_size": len(md.get("tokenizer.ggml.tokens", [])) or (256 if md.get("tokenizer.ggml.model") == "bytes" else 0),
    }
    text = "\n".join(f"{k:16} {v}" for k, v in data.items())
    _emit(args, data, text)
    return 0


def cmd_tokenize(args) -> int:
    from engine.gguf import open_gguf
    from .pull import resolve_model
    from engine.tokenizer import Tokenizer

    tok = Tokenizer.from_metadata(open_gguf(resolve_model(args.model)).metadata)
    ids = tok.encode(args.text, add_bos=args.bos, parse_special=args.special)
    pieces = [tok.token_bytes(i).decode("utf-8", errors="replace") for i in ids]
    _emit(args, {"tokens": ids}, "\n".join(f"{i:8d}  {p!r}" for i, p in zip(ids, pieces)))
    return 0


def _read_messages(path: str) -> list[dict]:
    """A conversation from a JSON file: a list of {"role", "content"} (or {"messages": [...]})."""
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except OSError as e:
        raise CLIError(f"--messages {path}: {e.strerror or e}") from None
    except ValueError as e:
        raise CLIError(f"--messages {path}: not JSON ({e})") from None
    messages = data.get("messages") if isinstance(data, dict) else data
    if not isinstance(messages, list) or not messages or not all(
            isinstance(m, dict) and isinstance(m.get("role"), str) and isinstance(m.get("content"), str)
            for m in messages):
        raise CLIError(f"--messages {path}: expected a non-empty list of {{\"role\": str, \"content\": str}}")
    return messages


def _stream(gen, show: bool):
    """Run a Generation to its end, printing text as it comes when `show`; returns (token ids, done)."""
    tokens, done = [], None
    while (ev := gen.step()) is not None:
        if ev["type"] == "token":
            tokens.append(ev["token_id"])
        if ev["type"] == "done":
            done = ev
        if show and ev["type"] in ("token", "done"):
            print(ev["text"], end="", flush=True)  # done's text: what was held back for a stop string
    return tokens, done


def cmd_generate(args) -> int:
    import dataclasses

    params = _params(args, args.n_predict)  # before loading: a bad setting fails at once
    request = {"messages": _read_messages(args.messages)} if args.messages else {"prompt": args.prompt}
    session = _load(args)
    if args.messages:  # a chat: the template's end-of-turn strings stop it too
        params = dataclasses.replace(params, stop=params.stop + session.template.stop)
    gen = session.start(request, params)
    tokens, done = _stream(gen, show=not args.json)
    timings = {
        "prefill_tok_s": done["prefill_tok_s"],
        "decode_tok_s": done["decode_tok_s"],
        **gen.seconds,
        "load_seconds": session.load_seconds,
        "n_drafted": done["n_drafted"],    # prompt lookup: tokens drafted and checked,
        "n_accepted": done["n_accepted"],  # and those kept (--no-lookup: 0 and 0)
    }
    if args.json:
        print(json.dumps({
            "prompt_tokens": list(map(int, gen.prompt_tokens)),
            "tokens": tokens,
            "text": done["full_text"],
            "stop_reason": done["reason"],
            "timings": timings,
        }, ensure_ascii=False))
    else:
        print()
        drafts = f", {done['n_accepted']}/{done['n_drafted']} drafted tokens kept" if done["n_drafted"] else ""
        print(f"[{done['reason']}] prefill {done['prefill_tok_s']:.1f} tok/s, decode {done['decode_tok_s']:.1f} tok/s"
              f"{drafts}", file=sys.stderr)
    return 0


def cmd_logits(args) -> int:
    loaded = _load(args)
    ids = loaded.tokenizer.encode(args.prompt)
    logits = loaded.model.forward(ids)  # (vocab,)
    import numpy as np

    top = np.argsort(-logits, kind="stable")[: args.top]
    pairs = [[int(i), float(logits[i])] for i in top]
    text = "\n".join(f"{i:8d} {v:10.4f}  {loaded.tokenizer.token_bytes(i)!r}" for i, v in pairs)
    _emit(args, {"tokens": list(map(int, ids)), "top": pairs}, text)
    return 0


def cmd_chat(args) -> int:
    import dataclasses

    params = _params(args, args.n_predict)  # before loading: a bad setting fails at once
    session = _load(args)
    params = dataclasses.replace(params, stop=params.stop + session.template.stop)
    print(f"{session.template.note}. Ctrl-D or /exit to quit, /reset to start over, "
          "/system TEXT to set the system prompt.", file=sys.stderr)
    system = [{"role": "system", "content": args.system}] if args.system else []
    turns: list[dict] = []  # user and assistant messages after the system prompt
    while True:
        try:
            line = input("> ")
        except EOFError:
            print()
            return 0
        command, _, rest = line.strip().partition(" ")
        if command in ("/exit", "/quit"):
            return 0
        if command == "/reset":
            turns = []
            continue
        if command == "/system":
            system = [{"role": "system", "content": rest}] if rest else []
            print("[system prompt " + ("set" if rest else "cleared") + "]", file=sys.stderr)
            continue
        turns.append({"role": "user", "content": line})
        # the whole conversation each turn (always right for any template); the session reuses the
        # KV cache of the turns before, and the oldest turns go when the context would overflow
        while True:
            n_prompt = len(session.prompt_tokens({"messages": system + turns}))
            if n_prompt + min(params.max_tokens, 64) <= session.model.n_ctx or len(turns) <= 1:
                break
            dropped, turns = turns[:2], turns[2:]
            print(f"[context full: the oldest {len(dropped)} message(s) leave the conversation]", file=sys.stderr)
        if n_prompt >= session.model.n_ctx:
            print(f"[this message is {n_prompt} tokens, more than the {session.model.n_ctx}-token context "
                  "(--ctx): not sent]", file=sys.stderr)
            turns.pop()
            continue
        gen = session.start({"messages": system + turns}, params)
        _, done = _stream(gen, show=True)
        print(f"\n[{done['reason']}, {done['decode_tok_s']:.1f} tok/s, {gen.reused} prompt tokens reused]",
              file=sys.stderr)
        turns.append({"role": "assistant", "content": done["full_text"]})


def cmd_bench(args) -> int:
    if args.browser:  # headless Chromium (and --native / --compare wllama beside it): the browser bench
        from mote.bench.browser import run_browser_bench

        return run_browser_bench(args)
    from .bench.native import bench, peak_rss_mb

    if len(args.model) != 1:
        raise CLIError("native bench takes one model (use --browser to compare several)")
    args.model = args.model[0]
    rss0 = peak_rss_mb()
    data = bench(_load(args), args.prompt, args.n_predict, args.repeat, rss_before_load_mb=rss0)
    text = "\n".join(f"{k:18} {v}" for k, v in data.items())
    _emit(args, data, text)
    return 0


def cmd_serve(args) -> int:
    try:
        import fastapi  # noqa: F401
        import uvicorn  # noqa: F401
    except ImportError as e:
        raise CLIError(f"mote serve needs the server extra ({e.name} is not installed): "
                       "pip install 'mote-engine[serve]'") from None
    from web.app import serve

    from .pull import DEFAULT_MODEL, default_cache_dir, pull

    models = args.models
    if models is not None and not Path(models).is_dir():
        raise CLIError(f"--models {models}: not a folder (expected a folder of .gguf files)")
    if models is None:  # the default: the chat model and Gemma 3 270M (pulled on first use) plus any GGUF in the cache
        if not args.no_pull:
            for name in (DEFAULT_MODEL, "gemma-3-270m"):
                pull(name)
        models = default_cache_dir()
    serve(host=args.host, port=args.port, models_dir=models, cors_origins=tuple(args.cors_origin or ()))
    return 0


# ---- argument parsing ---------------------------------------------------------------------------


def _add_sampling(p: argparse.ArgumentParser) -> None:
    p.add_argument("--temperature", type=float, default=0.8, help="0 = greedy (default 0.8)")
    p.add_argument("--top-k", type=int, default=40)
    p.add_argument("--top-p", type=float, default=0.95)
    p.add_argument("--min-p", type=float, default=0.05)
    p.add_argument("--repeat-penalty", type=float, default=1.0)
    p.add_argument("--repeat-last-n", type=int, default=64)
    p.add_argument("--seed", type=int, default=None)
    p.add_argument("--stop", action="append", help="stop string (repeatable)")
    p.add_argument("--no-lookup", action="store_true",
                   help="decode one token per forward pass (default: prompt-lookup drafting, same tokens, "
                        "fewer passes when the answer repeats the prompt)")
    _add_load(p)


def _add_load(p: argparse.ArgumentParser) -> None:
    p.add_argument("--ctx", type=whole_number(1), default=None, help="KV cache length (default: min(2048, model's))")
    from engine.model import LoadPolicy

    p.add_argument("--packed", action="store_true",
                   help="multiply straight from the mapped file's quantized blocks (engine/packed.py): "
                        "resident memory about the file's size, no float32 or int8 copies; slower natively")
    p.add_argument("--dense-mb", type=_megabytes, default=None,
                   help="float32 budget (MB) for layer matrices and the LM head: faster, more memory "
                        f"(default: {LoadPolicy.dense_layers_mb:g} for layers, {LoadPolicy.dense_head_mb:g} for the head)")


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="mote", description="Mote: pure-numpy GGUF inference.")
    ap.add_argument("--version", action="version", version=f"mote {__version__}")
    sub = ap.add_subparsers(dest="command", required=True)

    p = sub.add_parser("pull", help="download a known model (e.g. gemma-3-270m) into the cache")
    p.add_argument("name")
    p.add_argument("--cache-dir", default=None)
    p.set_defaults(func=cmd_pull)

    p = sub.add_parser("info", help="architecture, sizes and tensor types of a model")
    p.add_argument("model")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_info)

    p = sub.add_parser("tokenize", help="token ids of a text")
    p.add_argument("model")
    p.add_argument("text")
    p.add_argument("--bos", action="store_true", help="prepend BOS")
    p.add_argument("--special", action="store_true", help="parse special-token text like <start_of_turn>")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_tokenize)

    p = sub.add_parser("generate", help="continue a prompt, or answer a conversation (--messages)")
    p.add_argument("model")
    what = p.add_mutually_exclusive_group(required=True)
    what.add_argument("-p", "--prompt", help="text to continue")
    what.add_argument("--messages", metavar="FILE.json",
                      help='a conversation, [{"role": "user", "content": "..."}, ...], rendered with the model\'s chat template')
    p.add_argument("-n", "--n-predict", type=whole_number(1), default=128)
    p.add_argument("--json", action="store_true")
    _add_sampling(p)
    p.set_defaults(func=cmd_generate)

    p = sub.add_parser("chat", help="chat in the terminal using the model's chat template (/reset, /system TEXT)")
    p.add_argument("model")
    p.add_argument("--system", default=None, help="system prompt (default: the template's own, if any)")
    p.add_argument("-n", "--n-predict", type=whole_number(1), default=512)
    _add_sampling(p)
    p.set_defaults(func=cmd_chat)

    p = sub.add_parser("logits", help="top logits after a prompt")
    p.add_argument("model")
    p.add_argument("-p", "--prompt", required=True)
    p.add_argument("--top", type=whole_number(1), default=20)
    _add_load(p)
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_logits)

    p = sub.add_parser("bench", help="speed: natively, or in headless Chromium with --browser")
    p.add_argument("model", nargs="+", help="model(s); several files compare models or quantizations (--browser)")
    p.add_argument("-p", "--prompt", default=None, help="prompt (default: a fixed story opening; --browser: two fixed prompts)")
    p.add_argument("-n", "--n-predict", type=whole_number(1), default=32)
    p.add_argument("--repeat", type=whole_number(1), default=3)
    _add_load(p)
    p.add_argument("--json", action="store_true")
    try:
        from mote.bench.browser import add_browser_args
    except ImportError:  # the engine installed without web/: native bench only
        p.set_defaults(browser=False)
    else:
        add_browser_args(p)
    p.set_defaults(func=cmd_bench)

    p = sub.add_parser("serve", help="the dev server: chat page and model files")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=whole_number(1, 65535), default=8000)
    p.add_argument("--models", default=None, help="folder of .gguf files to serve (default: the model cache, with the default chat model and Gemma 3 270M)")
    p.add_argument("--no-pull", action="store_true", help="do not pull the default models first")
    p.add_argument("--cors-origin", action="append", help="allow pages on this origin to use the runtime and models (repeatable)")
    p.set_defaults(func=cmd_serve)

    # Tools that live beside the pipeline (each module adds its own subcommands).
    from . import convert, perplexity, quantize

    for module in (quantize, perplexity, convert):
        module.add_cli(sub)
    return ap


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from engine.config import ConfigError
    from engine.gguf import GGUFError
    from .pull import ModelNotFound, PullError

    try:
        return args.func(args)
    except (CLIError, ConfigError, GGUFError, ModelNotFound, PullError, FileNotFoundError, ValueError) as e:
        print(f"mote: error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
