"""Fuzzing at volume (issue 14): hostile inputs through every reader, with one allowed outcome.

    .venv/bin/python scripts/fuzz.py                      # the volumes of the issue (minutes)
    .venv/bin/python scripts/fuzz.py --scale 0.01         # a quick pass
    .venv/bin/python scripts/fuzz.py --only gguf --seed 7 --json

Campaigns (each case is made from a seed, so a failure prints what reproduces it):
  gguf         mutated GGUF files (bit flips; length/count/offset/type fields set to edge values;
               inserted, deleted, duplicated and truncated bytes) from small valid files and tiny
               real models, through GGUFFile, then Session.load (load_model, tokenizer, template)
               and `mote info` for those that parse.
  safetensors  mutated safetensors headers (JSON edits and byte edits) through SafetensorsFile.
  atome        mutated ATOME01 blobs (the vendored Atome 944K) through the blob reader.
  tokenizer    random Unicode strings through the tiny models' tokenizers (byte-level BPE and
               SentencePiece) and the pulled Qwen/Gemma ones when present: encode never fails, and
               for byte-level vocabularies decode(encode(s)) == s.
Allowed: the documented error type (GGUFError, ConfigError, ChatTemplateError and other
ValueErrors with a message; SafetensorsError; AtomeError), in under a second, with a traced
allocation peak under 2x the input (parse stage; checked on every 10th case). Anything else is
a failure and is printed with its seed. The exit status is 1 if any case failed.
CI keeps a small budget of the same generators in tests/test_malformed.py and tests/test_fuzz_smoke.py.
"""

from __future__ import annotations

import argparse
import io
import json
import random
import struct
import sys
import tempfile
import time
import tracemalloc
from contextlib import redirect_stdout
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from engine.config import ConfigError  # noqa: E402
from engine.gguf import GGUFError, GGUFFile  # noqa: E402

EDGE = [0, 1, 2, 3, 4, 7, 8, 31, 32, 33, 255, 256, 2**16, 2**31 - 1, 2**31, 2**32 - 1, 2**32, 2**63 - 1, 2**63,
        2**64 - 1]
VOLUMES = {"gguf": 100_000, "safetensors": 20_000, "atome": 20_000, "tokenizer": 100_000}
TIME_LIMIT_S = 1.0


class Campaign:
    def __init__(self, name: str):
        self.name, self.cases, self.errors, self.failures = name, 0, {}, []
        self.seconds = 0.0
        self.slowest = 0.0

    def ok(self, kind: str) -> None:
        self.errors[kind] = self.errors.get(kind, 0) + 1

    def fail(self, seed: int, what: str) -> None:
        self.failures.append({"seed": seed, "what": what[:300]})

    def report(self) -> dict:
        return {"campaign": self.name, "cases": self.cases, "failures": len(self.failures),
                "outcomes": dict(sorted(self.errors.items())), "seconds": round(self.seconds, 1),
                "cases_per_s": round(self.cases / self.seconds, 1) if self.seconds else None,
                "slowest_case_s": round(self.slowest, 3), "first_failures": self.failures[:10]}


def mutate(rng: random.Random, buf: bytes, head_end: int) -> bytes:
    out = bytearray(buf)
    for _ in range(rng.randint(1, 4)):
        if not out:
            break
        pos = rng.randrange(0, max(1, min(len(out), head_end)))
        op = rng.choice(["flip", "u32", "u64", "insert", "delete", "dup", "truncate", "type"])
        if op == "flip":
            out[pos] ^= rng.randint(1, 255)
        elif op in ("u32", "u64"):
            fmt, width = ("<I", 4) if op == "u32" else ("<Q", 8)
            v = rng.choice(EDGE + [len(out), len(out) + 1, len(out) - pos]) % (1 << 8 * width)
            out[pos:pos + width] = struct.pack(fmt, v)
        elif op == "insert":
            out[pos:pos] = rng.randbytes(rng.randint(1, 16))
        elif op == "delete":
            del out[pos:pos + rng.randint(1, 16)]
        elif op == "dup":                     # a repeated run: duplicated keys, entries, counts
            n = rng.randint(4, 64)
            out[pos:pos] = out[pos:pos + n]
        elif op == "type":                    # a value-type field (u32 0..12) set to another type
            out[pos:pos + 4] = struct.pack("<I", rng.choice(list(range(14)) + [2**31]))
        else:
            del out[pos:]
    return bytes(out)


def timed(campaign: Campaign, seed: int, fn, allowed: tuple[type[BaseException], ...], size: int,
          trace: bool, stage: str = "") -> object:
    """Run fn(); record its outcome; return its result (None after an allowed error)."""
    if trace:
        tracemalloc.start()
    t0 = time.perf_counter()
    result = None
    try:
        result = fn()
        kind = "accepted"
    except allowed as e:
        kind = type(e).__name__
        if not str(e).strip():
            campaign.fail(seed, f"{kind} without a message")
    except Exception as e:  # noqa: BLE001 - the point: anything else is a finding
        kind = None
        campaign.fail(seed, f"{type(e).__name__}: {e}")
    dt = time.perf_counter() - t0
    if trace:
        _, peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
        if peak > 2 * size + (1 << 20):
            campaign.fail(seed, f"allocated {peak} bytes for a {size}-byte input")
    campaign.slowest = max(campaign.slowest, dt)
    if dt > TIME_LIMIT_S:
        campaign.fail(seed, f"took {dt:.2f} s")
    if kind:
        campaign.ok(f"{stage}:{kind}" if stage else kind)
    return result


def gguf_seeds(tmp: Path) -> list[bytes]:
    from tests import gguf_craft as c
    from tests.tiny_models import write_tiny

    seeds = [c.small_valid_file(), c.small_valid_file(2), c.writer_made_file()]
    for arch in ("llama", "qwen2", "gemma3", "gpt2"):
        seeds.append(write_tiny(tmp / f"{arch}.gguf", arch, d=32, n_layers=1, n_heads=2, n_kv=1, d_ff=32,
                                ctx=32).read_bytes())
    return seeds


def run_gguf(n: int, seed: int) -> Campaign:
    from engine.chat import ChatTemplateError
    from engine.session import Session
    from mote import cli

    camp = Campaign("gguf")
    allowed = (GGUFError, ConfigError, ChatTemplateError, ValueError)
    with tempfile.TemporaryDirectory() as tmp:
        seeds = gguf_seeds(Path(tmp))
        heads = [GGUFFile(s).data_offset for s in seeds]
        path = Path(tmp) / "case.gguf"
        t_start = time.perf_counter()
        for i in range(n):
            case_seed = seed * 1_000_003 + i
            rng = random.Random(case_seed)
            k = rng.randrange(len(seeds))
            buf = mutate(rng, seeds[k], heads[k] + 64)
            camp.cases += 1
            parsed = timed(camp, case_seed, lambda: GGUFFile(buf), (GGUFError,), len(buf), trace=i % 10 == 0,
                           stage="parse")
            if parsed is None:
                continue
            timed(camp, case_seed, lambda: Session.load(parsed, n_ctx=32), allowed, len(buf), trace=False,
                  stage="load")
            if i % 25 == 0:          # the CLI on a file: one line on stderr, exit 1, or a report
                path.write_bytes(buf)
                def info():
                    with redirect_stdout(io.StringIO()), _quiet_stderr():
                        code = cli.main(["info", str(path), "--json"])
                    if code not in (0, 1):
                        raise RuntimeError(f"mote info exited {code}")
                timed(camp, case_seed, info, (), len(buf), trace=False, stage="mote info")
        camp.seconds = time.perf_counter() - t_start
    return camp


class _quiet_stderr:
    def __enter__(self):
        self.saved, sys.stderr = sys.stderr, io.StringIO()

    def __exit__(self, *exc):
        sys.stderr = self.saved


def run_safetensors(n: int, seed: int) -> Campaign:
    import numpy as np

    from mote.safetensors import SafetensorsError, SafetensorsFile

    camp = Campaign("safetensors")
    header = {"w": {"dtype": "F32", "shape": [2, 3], "data_offsets": [0, 24]},
              "b": {"dtype": "F16", "shape": [4], "data_offsets": [24, 32]}, "__metadata__": {"format": "pt"}}
    data = np.arange(8, dtype=np.float32).tobytes()
    t_start = time.perf_counter()
    for i in range(n):
        case_seed = seed * 1_000_003 + i
        rng = random.Random(case_seed)
        h = json.loads(json.dumps(header))
        for _ in range(rng.randint(1, 3)):       # JSON-level edits
            name = rng.choice(["w", "b", "x"])
            entry = h.setdefault(name, {})
            field = rng.choice(["dtype", "shape", "data_offsets", "extra"])
            entry[field] = rng.choice([None, -1, 0, 2**64, "F32", "I8", "BOOL", "Q4", [], [1, -2], [0, 2**63],
                                       [3, 1], [0, 8, 16], {"a": 1}, "x" * rng.randint(0, 300), 1.5])
        text = json.dumps(h).encode()
        buf = struct.pack("<Q", len(text)) + text + data
        if rng.random() < 0.5:                   # byte-level edits of the whole file
            buf = mutate(rng, buf, len(text) + 8)
        camp.cases += 1
        timed(camp, case_seed, lambda: SafetensorsFile(buf), (SafetensorsError,), len(buf), trace=i % 10 == 0)
    camp.seconds = time.perf_counter() - t_start
    return camp


def run_atome(n: int, seed: int) -> Campaign:
    from engine.atome import AtomeError
    from engine.config import AtomeConfig
    from mote.convert import read_atome_blob

    camp = Campaign("atome")
    blob = (ROOT / "tests" / "data" / "shared" / "atome" / "atome_944k.bin").read_bytes()
    cfg = AtomeConfig()
    t_start = time.perf_counter()
    for i in range(n):
        case_seed = seed * 1_000_003 + i
        rng = random.Random(case_seed)
        buf = mutate(rng, blob, len(blob)) if rng.random() < 0.7 else blob[: rng.randrange(len(blob))]
        camp.cases += 1
        timed(camp, case_seed, lambda: read_atome_blob(buf, cfg), (AtomeError,), len(buf), trace=i % 50 == 0)
    camp.seconds = time.perf_counter() - t_start
    return camp


def random_text(rng: random.Random) -> str:
    pools = [(0x20, 0x7E), (0x00, 0x1F), (0xA0, 0x2FF), (0x400, 0x4FF), (0x4E00, 0x9FFF), (0x1F300, 0x1FAFF),
             (0xE000, 0xF8FF), (0x300, 0x36F), (0x10000, 0x10FFFF)]
    out = []
    for _ in range(rng.randint(0, 40)):
        if rng.random() < 0.15:
            out.append(rng.choice([" " * rng.randint(1, 9), "\t", "\r\n", "\n\n", "<|im_end|>", "<bos>", "▁",
                                   "12345678901", "def f():\n    return 1"]))
            continue
        lo, hi = rng.choice(pools)
        cp = rng.randint(lo, hi)
        if 0xD800 <= cp <= 0xDFFF:
            continue
        out.append(chr(cp))
    return "".join(out)


def run_tokenizer(n: int, seed: int) -> Campaign:
    from engine.gguf import open_gguf
    from engine.tokenizer import Tokenizer
    from mote.pull import KNOWN_MODELS, default_cache_dir

    camp = Campaign("tokenizer")
    toks = []
    with tempfile.TemporaryDirectory() as tmp:
        from tests.tiny_models import write_tiny

        for arch in ("llama", "qwen2", "gemma3", "gpt2"):
            p = write_tiny(Path(tmp) / f"{arch}.gguf", arch, d=32, n_layers=1, n_heads=2, n_kv=1, d_ff=32, ctx=32)
            toks.append((arch, Tokenizer.from_metadata(open_gguf(p).metadata)))
    for name in ("qwen2.5-coder-0.5b-instruct", "gemma-3-270m"):
        p = default_cache_dir() / KNOWN_MODELS[name].filename
        if p.exists():
            toks.append((name, Tokenizer.from_metadata(open_gguf(p).metadata)))
    t_start = time.perf_counter()
    for i in range(n):
        case_seed = seed * 1_000_003 + i
        rng = random.Random(case_seed)
        s = random_text(rng)
        name, tok = toks[i % len(toks)]
        camp.cases += 1

        def check():
            ids = tok.encode(s, add_bos=False)
            if tok.kind == "gpt2" and tok.decode(ids) != s:
                raise AssertionError(f"{name}: decode(encode(s)) != s for {s!r}")
        timed(camp, case_seed, check, (), len(s.encode()) + 1, trace=False)
    camp.seconds = time.perf_counter() - t_start
    return camp


CAMPAIGNS = {"gguf": run_gguf, "safetensors": run_safetensors, "atome": run_atome, "tokenizer": run_tokenizer}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--only", choices=list(CAMPAIGNS), action="append")
    ap.add_argument("--scale", type=float, default=1.0, help="fraction of the default volumes")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args(argv)
    reports = []
    for name in args.only or list(CAMPAIGNS):
        n = max(1, int(VOLUMES[name] * args.scale))
        print(f"[fuzz] {name}: {n} cases ...", file=sys.stderr, flush=True)
        rep = CAMPAIGNS[name](n, args.seed).report()
        reports.append(rep)
        if not args.json:
            print(f"{name:12} {rep['cases']:7d} cases  {rep['failures']:4d} failures  {rep['cases_per_s']} cases/s  "
                  f"slowest {rep['slowest_case_s']} s  outcomes {rep['outcomes']}")
            for f in rep["first_failures"]:
                print(f"    seed {f['seed']}: {f['what']}")
    if args.json:
        print(json.dumps(reports, indent=1))
    return 1 if any(r["failures"] for r in reports) else 0


if __name__ == "__main__":
    sys.exit(main())
