"""The tiny golden model shared by the CPython test and the browser test (STYLE.md habit 11c).

    golden = load_golden()                       # tests/data/tiny_golden.json
    path = write_model(tmp / "tiny-golden.gguf", golden)   # the same bytes every time
    tokens = engine_greedy(path.read_bytes(), golden)      # what the golden's `tokens` must equal

The model is a 2-layer qwen2 with seeded random weights in several storage types (Q8_0, Q4_0, F16,
F32) and a real byte-level BPE vocabulary (1206 tokens, 944 merges, ChatML control tokens) taken
from tests/data/tokenizer_golden_bpe.json, whose tokenizations llama.cpp produced. The vocabulary
is copied into the golden JSON, so the model depends only on that file and the seed. Nothing here
is committed as a .gguf: tests write the file into a temporary folder.

The golden itself is (re)made only by scripts/make_tiny_golden.py.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np

from engine.gguf import ValueType, write_gguf
from engine.quants import BY_NAME
from mote.encoders import quantize

GOLDEN = Path(__file__).resolve().parent / "data" / "tiny_golden.json"
FILE_NAME = "tiny-golden.gguf"

# Shape of the model; the seed is chosen by the script (first one whose greedy answer has clear
# top-1 margins, see scripts/make_tiny_golden.py) and stored in the golden.
DIMS = {"d": 64, "n_layers": 2, "n_heads": 4, "n_kv": 2, "d_ff": 128, "ctx": 2048}
# Storage type of each 2-D weight: several block layouts go through WASM numpy.
TYPES = {"token_embd": "Q8_0", "attn_q": "Q8_0", "attn_k": "Q8_0", "attn_v": "F16",
         "attn_output": "Q4_0", "ffn_gate": "Q8_0", "ffn_up": "Q4_0", "ffn_down": "F16",
         "output": "Q8_0"}


def load_golden(path: Path = GOLDEN) -> dict:
    return json.loads(path.read_text(encoding="utf-8"))


def _metadata(tok: dict, seed: int) -> dict:
    """GGUF metadata: qwen2 hyperparameters + the BPE vocabulary (`tok`: tokenizer.ggml.* keys)."""
    a, U32, F32, STR, ARR = "qwen2", ValueType.UINT32, ValueType.FLOAT32, ValueType.STRING, ValueType.ARRAY
    return {
        "general.architecture": (STR, a),
        "general.name": (STR, f"tiny-golden (qwen2, random weights, seed {seed})"),
        "general.license": (STR, "apache-2.0"),
        f"{a}.context_length": (U32, DIMS["ctx"]),
        f"{a}.embedding_length": (U32, DIMS["d"]),
        f"{a}.block_count": (U32, DIMS["n_layers"]),
        f"{a}.feed_forward_length": (U32, DIMS["d_ff"]),
        f"{a}.attention.head_count": (U32, DIMS["n_heads"]),
        f"{a}.attention.head_count_kv": (U32, DIMS["n_kv"]),
        f"{a}.attention.layer_norm_rms_epsilon": (F32, 1e-6),
        f"{a}.rope.freq_base": (F32, 10000.0),
        "tokenizer.ggml.model": (STR, tok["tokenizer.ggml.model"]),
        "tokenizer.ggml.pre": (STR, "qwen2"),
        "tokenizer.ggml.tokens": (ARR, (STR, tok["tokenizer.ggml.tokens"])),
        "tokenizer.ggml.token_type": (ARR, (ValueType.INT32, tok["tokenizer.ggml.token_type"])),
        "tokenizer.ggml.merges": (ARR, (STR, tok["tokenizer.ggml.merges"])),
        "tokenizer.ggml.bos_token_id": (U32, tok["tokenizer.ggml.bos_token_id"]),
        "tokenizer.ggml.eos_token_id": (U32, tok["tokenizer.ggml.eos_token_id"]),
        "tokenizer.ggml.add_bos_token": (ValueType.BOOL, False),
    }


def _tensors(vocab: int, seed: int) -> list[tuple[str, int, tuple[int, ...], bytes]]:
    """Seeded random weights, scaled so activations stay O(1) through both layers."""
    rng = np.random.default_rng(seed)
    d, hd = DIMS["d"], DIMS["d"] // DIMS["n_heads"]
    out: list[tuple[str, int, tuple[int, ...], bytes]] = []

    def mat(name: str, kind: str, n_out: int, n_in: int, gain: float = 1.0) -> None:
        x = (rng.standard_normal((n_out, n_in)) * gain / np.sqrt(n_in)).astype(np.float32)  # (n_out, n_in)
        qt = BY_NAME[TYPES[kind]]
        if qt.name == "F16":
            data = x.astype(np.float16).tobytes()
        else:
            data = quantize(x, qt.type_id).tobytes()
        out.append((name, qt.type_id, (n_out, n_in), data))

    def vec(name: str, n: int, around: float) -> None:
        v = (around + 0.1 * rng.standard_normal(n)).astype(np.float32)  # (n,)
        out.append((name, BY_NAME["F32"].type_id, (n,), v.tobytes()))

    mat("token_embd.weight", "token_embd", vocab, d, gain=np.sqrt(d))
    for i in range(DIMS["n_layers"]):
        p = f"blk.{i}."
        vec(p + "attn_norm.weight", d, 1.0)
        mat(p + "attn_q.weight", "attn_q", DIMS["n_heads"] * hd, d)
        mat(p + "attn_k.weight", "attn_k", DIMS["n_kv"] * hd, d)
        mat(p + "attn_v.weight", "attn_v", DIMS["n_kv"] * hd, d)
        vec(p + "attn_q.bias", DIMS["n_heads"] * hd, 0.0)
        vec(p + "attn_k.bias", DIMS["n_kv"] * hd, 0.0)
        vec(p + "attn_v.bias", DIMS["n_kv"] * hd, 0.0)
        mat(p + "attn_output.weight", "attn_output", d, DIMS["n_heads"] * hd)
        vec(p + "ffn_norm.weight", d, 1.0)
        mat(p + "ffn_gate.weight", "ffn_gate", DIMS["d_ff"], d)
        mat(p + "ffn_up.weight", "ffn_up", DIMS["d_ff"], d)
        mat(p + "ffn_down.weight", "ffn_down", d, DIMS["d_ff"])
    vec("output_norm.weight", d, 1.0)
    mat("output.weight", "output", vocab, d, gain=4.0)
    return out


def write_model(path: Path, golden: dict | None = None, seed: int | None = None) -> Path:
    """Write the tiny golden model to `path` (vocabulary from `golden`, seed from it unless given)."""
    golden = golden or load_golden()
    seed = golden["model"]["seed"] if seed is None else seed
    tok = golden["tokenizer"]
    with open(path, "wb") as f:
        write_gguf(f, _metadata(tok, seed), _tensors(len(tok["tokenizer.ggml.tokens"]), seed))
    return path


def sha256_file(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def engine_greedy(data: bytes, golden: dict) -> dict:
    """The golden's conversation through engine.bridge in CPython, the way static/worker.js drives it
    (bytes into a ModelBuffer in 64 kB chunks, load_model, step() until None).

    Returns {"prompt_tokens", "tokens", "text", "reason"}.
    """
    from engine import bridge

    buf = bridge.ModelBuffer(len(data))       # what static/worker.js does with the response body
    for i in range(0, len(data), 1 << 16):
        buf.write(data[i : i + (1 << 16)])
    assert buf.sha256() == hashlib.sha256(data).hexdigest()
    bridge.load_model(buf)
    gen = bridge.start_generation({"messages": golden["messages"],
                                   "params": {"temperature": 0, "max_tokens": golden["max_tokens"],
                                              **golden.get("params", {})}})
    text, tokens, done = "", [], None
    while (ev := gen.step()) is not None:
        if ev["type"] == "token":
            tokens.append(ev["token_id"])
            text += ev["text"]
        elif ev["type"] == "done":
            done = ev
    assert done is not None and done["token_ids"] == tokens
    return {"prompt_tokens": list(gen.prompt_tokens), "tokens": tokens, "text": text + done["text"],
            "reason": done["reason"]}
