"""Quantize a GGUF model, and collect the importance matrix that guides it (a tool beside the
pipeline: gguf.py -> quants.py -> gguf.write_gguf).

    mote quantize IN.gguf OUT.gguf --type q8_0|q4_0|q4_k|q3_k|q2_k|tq2_0|tq1_0 [--imatrix FILE]
    mote imatrix MODEL TEXTFILE -o FILE [--ctx 256] [--chunks 32]

`mote quantize` reads every tensor, dequantizes it to float32 if it is stored quantized (so a
Q4_K_M download can be re-quantized), encodes it with `encoders.quantize` in the type the policy
below picks, and writes a GGUF with all the input's metadata (general.file_type set to
llama.cpp's LLAMA_FTYPE of the mix, general.quantization_version = 2). The output uses only
standard ggml types, so llama.cpp loads it too (for architectures it knows).

Per-tensor policy (`choose_type`), after llama.cpp's llama_tensor_get_type, simplified:

    tensor                       q8_0   q4_0   q4_k (= Q4_K_M)      q3_k (~ Q3_K_M)  q2_k   tq2_0 / tq1_0
    1-D (norms, biases)          F32    F32    F32                  F32              F32    F32      kept as is: tiny, and
                                                                                                    error there hits every token
    position_embd                kept   kept   kept                 kept             kept   kept     (llama.cpp never quantizes it)
    output (or tied token_embd)  Q8_0   Q6_K   Q6_K                 Q6_K             Q6_K   Q6_K     the logits see every error
    token_embd (untied)          Q8_0   Q4_0   Q4_K                 Q3_K             Q2_K   Q4_K     ternary embeddings are poor
    attn_v, ffn_down             Q8_0   Q4_0   Q6_K in "more bits"  Q4_K             Q3_K   TQ
                                                layers, else Q4_K
    attn_qkv (fused)             Q8_0   Q4_0   Q5_K                 Q4_K             Q2_K   TQ
    attn_output                  Q8_0   Q4_0   Q4_K                 Q4_K             Q3_K   TQ
    other matrices               Q8_0   Q4_0   Q4_K                 Q3_K             Q2_K   TQ
    general.file_type            7      2      15                   12               10     37 / 36

q3_k is llama.cpp's Q3_K_M without its Q5_K in the first layers (attn_v in layers 0-1, ffn_down in
the first sixteenth): those are Q4_K here like the rest, under 0.01 bits per weight fewer on
Qwen2.5 1.5B.

"More bits" layers (llama.cpp use_more_bits): the first and last eighth of the layers and every
third layer in between. A tensor already stored in the chosen type is copied byte for byte.

Row-length fallback: a block type needs the row length (the innermost dimension, n_in) to be a
multiple of its block size: 256 for K-quants and TQ, 32 for Q4_0/Q5_0/Q8_0. When it is not, the
tensor falls back as llama.cpp does: Q2_K, Q3_K, TQ1_0, TQ2_0 -> Q4_0 (llama.cpp uses IQ4_NL, which
Mote does not implement; Q4_0 has the same 4.5 bits per weight), Q4_K -> Q5_0, Q5_K -> Q5_1,
Q6_K -> Q8_0; and if even 32 does not divide the row, F16. Gemma 3 270M (d_model 640) and the
vanilla 1M GPT (d_model 152, not a multiple of 32) hit this for most of their matrices, so their
"2-bit" files are mostly 4-bit or F16; every choice and its reason is printed.

Importance matrix (`mote imatrix`): the model runs over calibration text in windows (the same
windows as `mote perplexity`), every matrix of the blocks has its Linear wrapped by a recorder (the
output head is left out, as llama-imatrix does without --process-output), and for each matrix
we keep the sum over all tokens of the squared input activations, per input column, and the
number of tokens. The file is a GGUF in llama.cpp's imatrix layout (general.type = "imatrix"):
    {weight name}.in_sum2   F32, shape (1, n_in)   sum of x^2 over tokens
    {weight name}.counts    F32, shape (1, 1)      tokens seen
    imatrix.datasets, imatrix.chunk_count, imatrix.chunk_size
`--imatrix` hands in_sum2 / counts (mean squared activation per column) to `encoders.quantize`,
which weights the scale search of K-quants and Q4_0/Q4_1/Q5_0/Q5_1 by it (Q8_0 and TQ ignore it).
"""

from __future__ import annotations

import json
import math
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from engine import quants
from engine.gguf import GGUFFile, ValueType, open_gguf, write_gguf

from . import encoders

QUANTIZATION_VERSION = 2  # ggml's GGML_QNT_VERSION, written as general.quantization_version


@dataclass(frozen=True)
class Mix:
    """One `--type`: base type for matrices, overrides by tensor role, llama.cpp's LLAMA_FTYPE."""
    base: str
    ftype: int
    ftype_name: str
    output: str
    token_embd: str
    overrides: dict = field(default_factory=dict)  # role -> type ("attn_v" ...); "attn_v+" = more-bits layers only


MIXES = {
    "q8_0": Mix("Q8_0", 7, "MOSTLY_Q8_0", output="Q8_0", token_embd="Q8_0"),
    "q4_0": Mix("Q4_0", 2, "MOSTLY_Q4_0", output="Q6_K", token_embd="Q4_0"),
    "q4_k": Mix("Q4_K", 15, "MOSTLY_Q4_K_M", output="Q6_K", token_embd="Q4_K",
                overrides={"attn_v+": "Q6_K", "ffn_down+": "Q6_K", "attn_qkv": "Q5_K"}),
    "q3_k": Mix("Q3_K", 12, "MOSTLY_Q3_K_M", output="Q6_K", token_embd="Q3_K",
                overrides={"attn_v": "Q4_K", "ffn_down": "Q4_K", "attn_output": "Q4_K", "attn_qkv": "Q4_K"}),
    "q2_k": Mix("Q2_K", 10, "MOSTLY_Q2_K", output="Q6_K", token_embd="Q2_K",
                overrides={"attn_v": "Q3_K", "ffn_down": "Q3_K", "attn_output": "Q3_K"}),
    "tq2_0": Mix("TQ2_0", 37, "MOSTLY_TQ2_0", output="Q6_K", token_embd="Q4_K"),
    "tq1_0": Mix("TQ1_0", 36, "MOSTLY_TQ1_0", output="Q6_K", token_embd="Q4_K"),
}

# A type whose block does not divide the row -> the 32-block type llama.cpp falls back to.
FALLBACK = {"Q2_K": "Q4_0", "Q3_K": "Q4_0", "TQ1_0": "Q4_0", "TQ2_0": "Q4_0",
            "Q4_K": "Q5_0", "Q5_K": "Q5_1", "Q6_K": "Q8_0"}


def use_more_bits(layer: int, n_layers: int) -> bool:
    """llama.cpp's layer choice for extra bits: first and last eighth, and every third in between."""
    return layer < n_layers // 8 or layer >= 7 * n_layers // 8 or (layer - n_layers // 8) % 3 == 2


def choose_type(name: str, shape: tuple[int, ...], mix: Mix, n_layers: int, has_output: bool) -> tuple[str | None, str]:
    """(type name or None = keep as stored, reason) for one tensor. See the table in the docstring."""
    if len(shape) < 2:
        return None, "1-D tensor stays as stored"
    if name.startswith("position_embd"):
        return None, "positional embeddings stay as stored (as in llama.cpp)"
    parts = name.split(".")
    role = parts[2] if parts[0] == "blk" and len(parts) > 3 else parts[0]
    if name == "output.weight" or (name == "token_embd.weight" and not has_output):
        want, why = mix.output, "output matrix" + ("" if name == "output.weight" else " (tied to token_embd)")
    elif name == "token_embd.weight":
        want, why = mix.token_embd, "token embeddings"
    else:
        want, why = mix.base, "matrix"
        layer = int(parts[1]) if parts[0] == "blk" and parts[1].isdigit() else 0
        if role in mix.overrides:
            want, why = mix.overrides[role], f"{role} override"
        elif role + "+" in mix.overrides and use_more_bits(layer, n_layers):
            want, why = mix.overrides[role + "+"], f"{role} in a more-bits layer"
    n_in = shape[-1]
    block = quants.BY_NAME[want].block_size
    if n_in % block == 0:
        return want, why
    fallback = FALLBACK.get(want)
    if fallback is not None and n_in % quants.BY_NAME[fallback].block_size == 0:
        return fallback, f"{why}; row length {n_in} is not a multiple of {block} ({want}): {fallback}"
    also = "" if block == 32 else " nor of 32"
    return "F16", f"{why}; row length {n_in} is not a multiple of {block} ({want}){also}: F16"


# ---- importance matrix --------------------------------------------------------------------------


class _Recorder:
    """Wraps one prepared Linear: accumulates sum(x^2) per input column and the token count."""

    def __init__(self, linear):
        self.linear = linear
        self.sum2 = None  # (n_in,) float64
        self.count = 0

    def __call__(self, x):
        x2 = np.asarray(x, dtype=np.float64).reshape(-1, x.shape[-1])  # (n, n_in)
        s = np.square(x2).sum(axis=0)  # (n_in,)
        self.sum2 = s if self.sum2 is None else self.sum2 + s
        self.count += x2.shape[0]
        return self.linear(x)


def collect_imatrix(model, windows, progress=None) -> dict[str, tuple[np.ndarray, int]]:
    """Run `model` over the windows with every matrix recorded: {weight name: (sum x^2 (n_in,), tokens)}."""
    recorders: dict[str, _Recorder] = {}
    originals = []
    for i, block in enumerate(model.w["blk"]):
        for key, value in list(block.items()):
            if callable(value) and not isinstance(value, np.ndarray) and "." not in key:
                rec = _Recorder(value)
                recorders[f"blk.{i}.{key}.weight"] = rec
                originals.append((block, key, value))
                block[key] = rec
    try:
        for w, window in enumerate(windows):
            model.reset()
            model.forward(window, all_logits=False)
            if progress is not None:
                progress(w + 1, len(windows))
    finally:
        for block, key, value in originals:  # the model is left as it was
            block[key] = value
    return {name: (r.sum2, r.count) for name, r in recorders.items() if r.count}


def write_imatrix(path, stats: dict[str, tuple[np.ndarray, int]], dataset: str, n_chunks: int, chunk_size: int) -> None:
    md = {
        "general.type": (ValueType.STRING, "imatrix"),
        "imatrix.datasets": (ValueType.ARRAY, (ValueType.STRING, [dataset])),
        "imatrix.chunk_count": (ValueType.UINT32, n_chunks),
        "imatrix.chunk_size": (ValueType.UINT32, chunk_size),
    }
    f32 = quants.BY_NAME["F32"].type_id
    tensors = []
    for name, (sum2, count) in sorted(stats.items()):
        s = np.asarray(sum2, dtype=np.float32).reshape(1, -1)  # (1, n_in)
        tensors.append((name + ".in_sum2", f32, s.shape, s))
        tensors.append((name + ".counts", f32, (1, 1), np.array([[count]], dtype=np.float32)))
    with open(path, "wb") as f:
        write_gguf(f, md, tensors)


def read_imatrix(path) -> dict[str, np.ndarray]:
    """{weight name: mean squared activation per input column (n_in,)} from an imatrix GGUF."""
    g = open_gguf(path)
    if g.metadata.get("general.type") != "imatrix":
        raise ValueError(f"{path}: general.type is {g.metadata.get('general.type')!r} (expected 'imatrix')")
    out = {}
    for tname, info in g.tensors.items():
        if not tname.endswith(".in_sum2"):
            continue
        name = tname[: -len(".in_sum2")]
        if name + ".counts" not in g.tensors:
            raise ValueError(f"{path}: {tname} has no {name}.counts")
        sum2 = quants.dequantize(g.raw(tname), info.ggml_type, info.shape).reshape(-1)  # (n_in,)
        c = g.tensors[name + ".counts"]
        count = float(quants.dequantize(g.raw(c.name), c.ggml_type, c.shape).reshape(-1)[0])
        if count <= 0:
            raise ValueError(f"{path}: {name}.counts is {count} (expected > 0)")
        out[name] = sum2 / np.float32(count)
    return out


# ---- quantize -----------------------------------------------------------------------------------


@dataclass
class TensorChoice:
    name: str
    shape: tuple[int, ...]
    src_type: str
    dst_type: str
    reason: str
    nbytes: int


def quantize_file(src, dst, qtype: str, imatrix: dict[str, np.ndarray] | None = None,
                  imatrix_path: str | None = None, log=print, show_progress: bool = True) -> list[TensorChoice]:
    """Quantize the GGUF at `src` into `dst` with mix `qtype` (a key of MIXES)."""
    from .progress import Progress

    if qtype not in MIXES:
        raise ValueError(f"--type {qtype!r} not supported (expected one of {', '.join(MIXES)})")
    mix = MIXES[qtype]
    g: GGUFFile = open_gguf(src)
    arch = g.metadata.get("general.architecture", "")
    n_layers = int(g.metadata.get(f"{arch}.block_count", 0) or 0)
    has_output = "output.weight" in g.tensors
    total = sum(math.prod(t.shape) for t in g.tensors.values())
    bar = Progress(total=total, label=f"quantize {qtype}", unit="w") if show_progress else None
    entries, choices = [], []
    used_imatrix = 0
    for k, (name, info) in enumerate(g.tensors.items()):
        src_name = quants.TYPES[info.ggml_type].name
        want, reason = choose_type(name, info.shape, mix, n_layers, has_output)
        if want is None or want == src_name:
            data, dst_name = g.raw(name), src_name  # copied byte for byte
            if want == src_name:
                reason += "; already stored so, copied"
        else:
            x = quants.dequantize(g.raw(name), info.ggml_type, info.shape)  # float32, numpy shape
            qw = None if imatrix is None else imatrix.get(name)
            if qw is not None and qw.shape != (info.shape[-1],):
                raise ValueError(f"imatrix entry {name} has {qw.shape[0]} columns (expected {info.shape[-1]})")
            used_imatrix += qw is not None and want not in ("Q8_0", "TQ1_0", "TQ2_0", "F16", "F32")
            data, dst_name = encoders.quantize(x, quants.BY_NAME[want].type_id, imatrix=qw), want
        entries.append((name, quants.BY_NAME[dst_name].type_id, info.shape, data))
        choice = TensorChoice(name, info.shape, src_name, dst_name, reason, int(np.asarray(data).nbytes))
        choices.append(choice)
        if bar is not None:
            bar.clear()
        log(f"[{k + 1:4d}/{len(g.tensors)}] {name:32s} {str(tuple(info.shape)):16s} {src_name:>5s} -> {dst_name:5s}  {reason}")
        if bar is not None:
            bar.update(math.prod(info.shape))
    if bar is not None:
        bar.close()

    md = g.typed_metadata()
    md["general.file_type"] = (ValueType.UINT32, mix.ftype)
    md["general.quantization_version"] = (ValueType.UINT32, QUANTIZATION_VERSION)
    if imatrix is not None:
        md["quantize.imatrix.file"] = (ValueType.STRING, str(imatrix_path or ""))
        md["quantize.imatrix.entries_count"] = (ValueType.INT32, len(imatrix))
    md.pop("general.alignment", None)
    tmp = Path(str(dst) + ".part")
    with open(tmp, "wb") as f:
        write_gguf(f, md, entries, alignment=g.alignment)
    os.replace(tmp, dst)
    if imatrix is not None and used_imatrix == 0:
        log("note: the imatrix was not used by any tensor (no entry matched a tensor quantized to a type that uses it)")
    return choices


def summary(choices: list[TensorChoice]) -> dict:
    n = sum(math.prod(c.shape) for c in choices)
    nbytes = sum(c.nbytes for c in choices)
    types: dict[str, int] = {}
    for c in choices:
        types[c.dst_type] = types.get(c.dst_type, 0) + 1
    return {"n_params": n, "tensor_bytes": nbytes, "bits_per_weight": 8 * nbytes / max(n, 1), "tensor_types": types}


# ---- command line -------------------------------------------------------------------------------


def cmd_quantize(args) -> int:
    imatrix = read_imatrix(args.imatrix) if args.imatrix else None
    log = (lambda *a, **k: None) if args.quiet else print
    t0 = time.perf_counter()
    choices = quantize_file(args.input, args.output, args.type, imatrix=imatrix, imatrix_path=args.imatrix,
                            log=log, show_progress=not args.no_progress)
    s = summary(choices)
    s["seconds"] = time.perf_counter() - t0
    s["file_size"] = os.path.getsize(args.output)
    print(f"wrote {args.output}: {s['file_size'] / 1e6:.2f} MB, {s['bits_per_weight']:.2f} bits per weight, "
          f"types {s['tensor_types']}, {s['seconds']:.1f} s")
    if args.json:
        print(json.dumps(s))
    return 0


def cmd_imatrix(args) -> int:
    from .loader import load
    from .perplexity import make_windows, text_tokens, tokens_needed
    from .progress import Progress

    loaded = load(args.model, n_ctx=args.ctx)
    tok = loaded.tokenizer
    bos_id = tok.bos_id if tok.add_bos and tok.bos_id is not None else None
    data = Path(args.textfile).read_bytes()
    tokens = text_tokens(tok, data, tokens_needed(args.ctx, bos_id is not None, args.chunks))
    windows = make_windows(tokens, args.ctx, bos_id, args.chunks)
    if not windows:
        raise ValueError(f"{args.textfile} is shorter than one window of {args.ctx} tokens")
    bar = Progress(total=len(windows), label="imatrix", unit="chunk") if not args.no_progress else None
    stats = collect_imatrix(loaded.model, windows, progress=bar)
    if bar is not None:
        bar.close()
    write_imatrix(args.output, stats, os.path.basename(args.textfile), len(windows), args.ctx)
    print(f"wrote {args.output}: {len(stats)} matrices, {len(windows)} chunks of {args.ctx} tokens")
    return 0


def add_cli(sub) -> None:
    p = sub.add_parser("quantize", help="re-encode a GGUF with a quantization mix (q8_0 ... tq1_0)")
    p.add_argument("input")
    p.add_argument("output")
    p.add_argument("--type", required=True, choices=tuple(MIXES), help="the mix (see `mote/quantize.py`)")
    p.add_argument("--imatrix", default=None, help="importance matrix from `mote imatrix` (GGUF)")
    p.add_argument("--json", action="store_true", help="also print a JSON summary line")
    p.add_argument("--quiet", action="store_true", help="no per-tensor lines")
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=cmd_quantize)

    p = sub.add_parser("imatrix", help="importance matrix (mean squared activations per matrix input) from text")
    p.add_argument("model")
    p.add_argument("textfile")
    p.add_argument("-o", "--output", required=True)
    p.add_argument("--ctx", type=int, default=256, help="chunk length in tokens (default 256)")
    p.add_argument("--chunks", type=int, default=None, help="use only the first K chunks (default: all)")
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=cmd_imatrix)
