"""Importers: models that are not GGUF yet -> GGUF (a tool beside the pipeline; writes what gguf.py reads).

    mote convert vanilla_1m_v1.pt vanilla-1m.gguf --allow-pickle     PyTorch GPT checkpoint -> gpt2
    mote convert ./hf-model-folder model.gguf [--type f16]            Hugging Face safetensors folder
    mote convert atome_944k.bin atome.gguf --d-model 256 ...          ATOME01 blob -> atome (engine/atome.py)

Every importer ends in the same place: a list of (GGUF name, float32 array) plus typed metadata,
written by `gguf.write_gguf`. Each source format has ONE rename table from its parameter names to
GGUF names (`_TORCH_GPT_NAMES`, `_HF_NAMES`), and every load-time fix-up (the llama Q/K row
permutation, Gemma's norm + 1) is a commented function applied after renaming.

PyTorch checkpoints (.pt) are pickles, and unpickling can run arbitrary code. So:
  - without --allow-pickle they are refused;
  - with it, a separate Python process (`sys.executable`) runs `torch.load(weights_only=True)`,
    torch's restricted unpickler that only builds tensors and plain containers, and hands back
    the tensors as a numpy .npz (read here with allow_pickle=False) plus the config as JSON.
  torch is never imported by this process; it is an optional extra, needed only for .pt files.

The PyTorch GPT layout is Atome LM's VanillaTransformer (atome_llm/baselines/vanilla_transformer.py):
byte vocabulary, learned positions, pre-LayerNorm blocks with bias, fused QKV with rows [q; k; v],
exact (erf) GELU MLP without biases, final LayerNorm, untied unembedding. It maps onto our `gpt2`
architecture with `gpt2.mote.activation = "gelu_erf"` (GPT-2 itself uses the tanh approximation)
and the byte tokenizer (`tokenizer.ggml.model = "bytes"`, Mote's own name: llama.cpp has no byte
vocabulary, so llama.cpp cannot run these files).
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

import numpy as np

from engine import atome, quants
from engine.config import ATOME_KEYS, AtomeConfig
from engine.gguf import ValueType, write_gguf

from . import encoders

# llama.cpp's LLAMA_FTYPE values for float files (general.file_type)
FTYPE_ALL_F32, FTYPE_MOSTLY_F16 = 0, 1


class ConvertError(ValueError):
    """The source cannot be converted; the message says what was expected."""


# ---- writing ------------------------------------------------------------------------------------


def float_type_for(name: str, shape: tuple[int, ...], out_type: str) -> int:
    """Storage type of one tensor: 1-D tensors (norms, biases) always F32, matrices F32 or F16."""
    if out_type == "f32" or len(shape) < 2:
        return quants.BY_NAME["F32"].type_id
    return quants.BY_NAME["F16"].type_id


def write_model(out_path, metadata: dict, tensors: list[tuple[str, np.ndarray]], out_type: str = "f32") -> int:
    """Write float tensors (GGUF names, numpy shapes) and typed metadata as a GGUF file."""
    if out_type not in ("f32", "f16"):
        raise ConvertError(f"--type {out_type!r} not supported for conversion (expected f32 or f16; "
                           "use `mote quantize` for smaller types)")
    metadata = dict(metadata)
    metadata["general.file_type"] = (ValueType.UINT32, FTYPE_ALL_F32 if out_type == "f32" else FTYPE_MOSTLY_F16)
    entries = []
    for name, arr in tensors:
        arr = np.ascontiguousarray(arr, dtype=np.float32)
        t = float_type_for(name, arr.shape, out_type)
        entries.append((name, t, arr.shape, encoders.quantize(arr, t)))
    tmp = Path(str(out_path) + ".part")
    with open(tmp, "wb") as f:
        n = write_gguf(f, metadata, entries)
    os.replace(tmp, out_path)  # no half-written file under the final name
    return n


def byte_vocab_metadata() -> dict:
    """The byte tokenizer: 256 tokens, id = byte value, no BOS/EOS (engine/tokenizer.py kind "bytes")."""
    return {
        "tokenizer.ggml.model": (ValueType.STRING, "bytes"),
        "tokenizer.ggml.tokens": (ValueType.ARRAY, (ValueType.STRING, [f"<0x{b:02X}>" for b in range(256)])),
        "tokenizer.ggml.token_type": (ValueType.ARRAY, (ValueType.INT32, [6] * 256)),  # 6 = BYTE
        "tokenizer.ggml.add_bos_token": (ValueType.BOOL, False),
    }


# ---- PyTorch checkpoints (pickle, in a child process) -------------------------------------------

# Run by a child Python: torch's restricted unpickler, then tensors -> .npz, everything else -> JSON.
_TORCH_CHILD = r"""
import json, sys
import numpy as np
import torch
src, npz_path, json_path = sys.argv[1:4]
obj = torch.load(src, map_location="cpu", weights_only=True)
tensors, rest = {}, {}
def walk(prefix, value):
    if isinstance(value, torch.Tensor):
        tensors[prefix] = value.detach().to(torch.float32).numpy()
    elif isinstance(value, dict):
        for k, v in value.items():
            walk(f"{prefix}/{k}" if prefix else str(k), v)
    elif isinstance(value, (int, float, str, bool)) or value is None:
        rest[prefix] = value
    elif isinstance(value, (list, tuple)) and all(isinstance(v, (int, float, str, bool)) for v in value):
        rest[prefix] = list(value)
walk("", obj)
np.savez(npz_path, **tensors)
json.dump(rest, open(json_path, "w"))
"""


def load_torch_checkpoint(path, python: str | None = None) -> tuple[dict[str, np.ndarray], dict]:
    """Tensors (float32, keyed "state_dict/tok_embed.weight" ...) and plain values of a .pt file,
    unpickled by torch.load(weights_only=True) in a separate process."""
    with tempfile.TemporaryDirectory() as tmp:
        npz_path, json_path = os.path.join(tmp, "tensors.npz"), os.path.join(tmp, "values.json")
        proc = subprocess.run([python or sys.executable, "-c", _TORCH_CHILD, os.fspath(path), npz_path, json_path],
                              capture_output=True, text=True)
        if proc.returncode != 0:
            err = proc.stderr.strip().splitlines()
            if any("No module named 'torch'" in line for line in err):
                raise ConvertError("reading a PyTorch checkpoint needs torch in this Python "
                                   "(pip install torch); the engine itself does not")
            raise ConvertError(f"torch.load(weights_only=True) failed on {path}: {err[-1] if err else proc.returncode}")
        with np.load(npz_path, allow_pickle=False) as z:
            tensors = {k: z[k] for k in z.files}
        with open(json_path) as f:
            values = json.load(f)
    return tensors, values


def _is_pickle_checkpoint(path: Path) -> bool:
    """torch.save writes a zip holding data.pkl; older files are a bare pickle (first byte 0x80)."""
    with open(path, "rb") as f:
        head = f.read(2)
    if head == b"PK":
        try:
            return any(n.endswith("data.pkl") for n in zipfile.ZipFile(path).namelist())
        except zipfile.BadZipFile:
            return False
    return head[:1] == b"\x80"


# Atome LM VanillaTransformer parameter -> GGUF tensor ({i} = layer)
_TORCH_GPT_NAMES = {
    "tok_embed.weight": "token_embd.weight",          # (vocab, d)
    "pos_embed.weight": "position_embd.weight",       # (max_seq, d)
    "blocks.{i}.norm1.weight": "blk.{i}.attn_norm.weight",
    "blocks.{i}.norm1.bias": "blk.{i}.attn_norm.bias",
    "blocks.{i}.attn.qkv.weight": "blk.{i}.attn_qkv.weight",      # (3d, d) rows [q; k; v]
    "blocks.{i}.attn.out.weight": "blk.{i}.attn_output.weight",   # (d, d)
    "blocks.{i}.norm2.weight": "blk.{i}.ffn_norm.weight",
    "blocks.{i}.norm2.bias": "blk.{i}.ffn_norm.bias",
    "blocks.{i}.ffn.up.weight": "blk.{i}.ffn_up.weight",          # (d_ff, d)
    "blocks.{i}.ffn.down.weight": "blk.{i}.ffn_down.weight",      # (d, d_ff)
    "norm_final.weight": "output_norm.weight",
    "norm_final.bias": "output_norm.bias",
    "unembed.weight": "output.weight",                # (vocab, d), not tied
}


def rename(params: dict[str, np.ndarray], table: dict[str, str], n_layers: int, what: str) -> list[tuple[str, np.ndarray]]:
    """Apply a rename table ({i} = layer index); every source parameter must be used exactly once."""
    mapping = {}
    for src, dst in table.items():
        for i in range(n_layers) if "{i}" in src else [None]:
            mapping[src.format(i=i)] = dst.format(i=i)
    unknown = sorted(set(params) - set(mapping))
    if unknown:
        raise ConvertError(f"{what}: parameters with no GGUF name: {', '.join(unknown[:8])}"
                           f"{' ...' if len(unknown) > 8 else ''}")
    return [(mapping[k], v) for k, v in params.items()]


def convert_torch_gpt(src, out_path, allow_pickle: bool = False, out_type: str = "f32",
                      name: str | None = None, python: str | None = None) -> dict:
    """A VanillaTransformer-style checkpoint ({"state_dict", "config"} or a bare state_dict) -> gpt2 GGUF."""
    src = Path(src)
    if not allow_pickle:
        raise ConvertError(f"{src} is a pickle file (PyTorch checkpoint); unpickling can run code. "
                           "Pass --allow-pickle if you trust it (it is then read by "
                           "torch.load(weights_only=True) in a separate process)")
    tensors, values = load_torch_checkpoint(src, python=python)
    prefix = "state_dict/" if any(k.startswith("state_dict/") for k in tensors) else ""
    params = {k[len(prefix):]: v for k, v in tensors.items() if k.startswith(prefix)}
    if "tok_embed.weight" not in params:
        raise ConvertError(f"{src}: no tok_embed.weight (expected Atome LM's VanillaTransformer state_dict; "
                           f"found {', '.join(sorted(params)[:6])} ...)")
    cfg = {k.split("/", 1)[1]: v for k, v in values.items() if k.startswith("config/")}
    vocab, d = params["tok_embed.weight"].shape
    n_layers = 1 + max(int(k.split(".")[1]) for k in params if k.startswith("blocks."))
    n_heads = cfg.get("n_heads")
    if not isinstance(n_heads, int):
        raise ConvertError(f"{src}: config has no n_heads (the state_dict does not record it)")
    d_ff, max_seq = params["blocks.0.ffn.up.weight"].shape[0], params["pos_embed.weight"].shape[0]
    if vocab != 256:
        raise ConvertError(f"{src}: vocabulary {vocab} (expected 256 byte tokens)")
    gguf_tensors = rename(params, _TORCH_GPT_NAMES, n_layers, str(src))
    arch = "gpt2"
    md = {
        "general.architecture": (ValueType.STRING, arch),
        "general.name": (ValueType.STRING, name or src.stem),
        f"{arch}.context_length": (ValueType.UINT32, max_seq),
        f"{arch}.embedding_length": (ValueType.UINT32, d),
        f"{arch}.block_count": (ValueType.UINT32, n_layers),
        f"{arch}.feed_forward_length": (ValueType.UINT32, d_ff),
        f"{arch}.attention.head_count": (ValueType.UINT32, n_heads),
        f"{arch}.attention.layer_norm_epsilon": (ValueType.FLOAT32, 1e-5),  # torch nn.LayerNorm default
        f"{arch}.mote.activation": (ValueType.STRING, "gelu_erf"),         # F.gelu default: exact erf
    }
    md.update(byte_vocab_metadata())
    write_model(out_path, md, gguf_tensors, out_type)
    return {"architecture": arch, "n_tensors": len(gguf_tensors), "vocab": vocab, "d_model": d,
            "n_layers": n_layers, "n_heads": n_heads, "d_ff": d_ff, "context_length": max_seq}


# ---- Hugging Face safetensors folders -----------------------------------------------------------
#
# A folder with config.json, one or more *.safetensors (parsed by mote/safetensors.py) and
# tokenizer.json. model_type picks the rename table and the metadata:
#
#   llama        Q/K rows permuted from HF's rotate-half order to GGUF's adjacent pairs (below)
#   qwen2        as llama plus Q/K/V biases, no permutation (our qwen2 rotates halves)
#   gemma3_text  every *norm.weight gets + 1 (HF's Gemma RMSNorm multiplies by 1 + w; GGUF stores
#                1 + w, as llama.cpp's converter does), no permutation
#   gpt2         Conv1D weights are stored (n_in, n_out): transposed to (n_out, n_in)

_HF_LAYER = {  # HF name under "model.layers.{i}." -> GGUF name under "blk.{i}."
    "input_layernorm.weight": "attn_norm.weight",
    "self_attn.q_proj.weight": "attn_q.weight",
    "self_attn.k_proj.weight": "attn_k.weight",
    "self_attn.v_proj.weight": "attn_v.weight",
    "self_attn.q_proj.bias": "attn_q.bias",
    "self_attn.k_proj.bias": "attn_k.bias",
    "self_attn.v_proj.bias": "attn_v.bias",
    "self_attn.o_proj.weight": "attn_output.weight",
    "self_attn.q_norm.weight": "attn_q_norm.weight",
    "self_attn.k_norm.weight": "attn_k_norm.weight",
    "mlp.gate_proj.weight": "ffn_gate.weight",
    "mlp.up_proj.weight": "ffn_up.weight",
    "mlp.down_proj.weight": "ffn_down.weight",
}
_HF_NAMES = {
    "llama": {**_HF_LAYER, "post_attention_layernorm.weight": "ffn_norm.weight"},
    "qwen2": {**_HF_LAYER, "post_attention_layernorm.weight": "ffn_norm.weight"},
    "gemma3": {**_HF_LAYER,
               "post_attention_layernorm.weight": "post_attention_norm.weight",  # after attention
               "pre_feedforward_layernorm.weight": "ffn_norm.weight",
               "post_feedforward_layernorm.weight": "post_ffw_norm.weight"},
    "gpt2": {  # under "h.{i}."
        "ln_1.weight": "attn_norm.weight", "ln_1.bias": "attn_norm.bias",
        "attn.c_attn.weight": "attn_qkv.weight", "attn.c_attn.bias": "attn_qkv.bias",
        "attn.c_proj.weight": "attn_output.weight", "attn.c_proj.bias": "attn_output.bias",
        "ln_2.weight": "ffn_norm.weight", "ln_2.bias": "ffn_norm.bias",
        "mlp.c_fc.weight": "ffn_up.weight", "mlp.c_fc.bias": "ffn_up.bias",
        "mlp.c_proj.weight": "ffn_down.weight", "mlp.c_proj.bias": "ffn_down.bias",
    },
}
_HF_GLOBAL = {
    "model.embed_tokens.weight": "token_embd.weight", "model.norm.weight": "output_norm.weight",
    "lm_head.weight": "output.weight",
    "wte.weight": "token_embd.weight", "wpe.weight": "position_embd.weight",
    "ln_f.weight": "output_norm.weight", "ln_f.bias": "output_norm.bias",
}
_HF_SKIP = (".attn.bias", ".attn.masked_bias", "rotary_emb.inv_freq")  # buffers, not weights
_ARCH = {"llama": "llama", "qwen2": "qwen2", "gemma3_text": "gemma3", "gemma3": "gemma3", "gpt2": "gpt2"}


def permute_rope_rows(w: np.ndarray, n_heads: int) -> np.ndarray:
    """HF llama Q/K rows per head are [x_0 .. x_{h/2-1}, y_0 .. y_{h/2-1}] (rotate_half); GGUF's llama
    wants the rotated pairs adjacent: [x_0, y_0, x_1, y_1, ...] (llama.cpp convert_hf_to_gguf permute).

    >>> permute_rope_rows(np.arange(4)[:, None], 1)[:, 0]
    array([0, 2, 1, 3])
    """
    rows = w.shape[0]
    hd = rows // n_heads
    return w.reshape(n_heads, 2, hd // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)  # (rows, n_in)


def _rope(cfg: dict, which: str = "full_attention") -> tuple[float, dict]:
    """(rope base, scaling dict) from either config style (transformers < 5: rope_theta/rope_scaling;
    >= 5: rope_parameters, per layer type for Gemma 3)."""
    params = cfg.get("rope_parameters")
    if isinstance(params, dict) and which in params:
        params = params[which]
    if isinstance(params, dict) and "rope_theta" in params:
        return float(params["rope_theta"]), params
    base = cfg.get("rope_local_base_freq" if which == "sliding_attention" else "rope_theta", 10000.0)
    return float(base), cfg.get("rope_scaling") or {}


def hf_metadata(cfg: dict, arch: str, name: str) -> dict:
    """The {arch}.* hyperparameters llama.cpp's converter writes, from config.json."""
    if arch == "gemma3" and "text_config" in cfg:
        cfg = {**cfg, **cfg["text_config"]}
    S, U, F = ValueType.STRING, ValueType.UINT32, ValueType.FLOAT32
    md = {"general.architecture": (S, arch), "general.name": (S, name)}
    put = lambda key, vt, value: md.__setitem__(f"{arch}.{key}", (vt, value))  # noqa: E731
    if arch == "gpt2":
        d = cfg["n_embd"]
        put("context_length", U, cfg["n_positions"])
        put("embedding_length", U, d)
        put("block_count", U, cfg["n_layer"])
        put("feed_forward_length", U, cfg.get("n_inner") or 4 * d)
        put("attention.head_count", U, cfg["n_head"])
        put("attention.layer_norm_epsilon", F, cfg.get("layer_norm_epsilon", 1e-5))
        act = cfg.get("activation_function", "gelu_new")
        if act == "gelu":
            put("mote.activation", S, "gelu_erf")
        elif act not in ("gelu_new", "gelu_pytorch_tanh", "gelu_fast"):
            raise ConvertError(f"gpt2 activation_function {act!r} not supported (expected gelu_new or gelu)")
        return md
    d, n_heads = cfg["hidden_size"], cfg["num_attention_heads"]
    head_dim = cfg.get("head_dim") or d // n_heads
    put("context_length", U, cfg["max_position_embeddings"])
    put("embedding_length", U, d)
    put("block_count", U, cfg["num_hidden_layers"])
    put("feed_forward_length", U, cfg["intermediate_size"])
    put("attention.head_count", U, n_heads)
    put("attention.head_count_kv", U, cfg.get("num_key_value_heads") or n_heads)
    put("attention.layer_norm_rms_epsilon", F, cfg.get("rms_norm_eps", 1e-6))
    if head_dim != d // n_heads or arch == "gemma3":
        put("attention.key_length", U, head_dim)
        put("attention.value_length", U, head_dim)
    base, scaling = _rope(cfg)
    put("rope.freq_base", F, base)
    kind = scaling.get("rope_type", scaling.get("type", "default"))
    if kind == "linear":
        put("rope.scaling.type", S, "linear")
        put("rope.scaling.factor", F, float(scaling["factor"]))
    elif kind != "default":
        raise ConvertError(f"rope scaling {kind!r} not supported (expected none or linear)")
    if arch == "llama":
        put("rope.dimension_count", U, head_dim)
    if arch == "qwen2" and cfg.get("use_sliding_window"):
        raise ConvertError("qwen2 with use_sliding_window is not supported")
    if arch == "gemma3":
        put("attention.sliding_window", U, cfg["sliding_window"])
        put("rope.freq_base_swa", F, _rope(cfg, "sliding_attention")[0])
        n = cfg["num_hidden_layers"]
        types = cfg.get("layer_types") or ["full_attention" if (i + 1) % cfg.get("sliding_window_pattern", 6) == 0
                                           else "sliding_attention" for i in range(n)]
        ours = ["full_attention" if (i + 1) % 6 == 0 else "sliding_attention" for i in range(n)]
        if list(types) != ours:
            raise ConvertError("gemma3 layer_types must be five sliding layers then one full, repeating")
        if cfg.get("query_pre_attn_scalar", head_dim) != head_dim and n != 62:
            raise ConvertError(f"gemma3 query_pre_attn_scalar {cfg['query_pre_attn_scalar']} != head_dim {head_dim}")
        for cap in ("final_logit_softcapping", "attn_logit_softcapping"):
            if cfg.get(cap):
                raise ConvertError(f"gemma3 {cap} = {cfg[cap]} is not supported")
    return md


def hf_tensors(files, cfg: dict, arch: str) -> list[tuple[str, np.ndarray]]:
    """All weights of the folder, renamed to GGUF names and fixed up for `arch`."""
    if arch == "gemma3" and "text_config" in cfg:
        cfg = {**cfg, **cfg["text_config"]}
    layer_table = _HF_NAMES[arch]
    tied = cfg.get("tie_word_embeddings", arch in ("gpt2", "gemma3"))
    out, seen = [], {}
    for st in files:
        for hf_name in st.tensors:
            name = hf_name
            # multimodal Gemma 3 and bare GPT-2 checkpoints nest the text model under a prefix
            for prefix in ("model.language_model.", "language_model.model.", "transformer."):
                if name.startswith(prefix):
                    name = ("model." if prefix != "transformer." else "") + name[len(prefix):]
            # buffers are not weights; a tied head is token_embd (our loader falls back to it)
            if name.endswith(_HF_SKIP) or (name == "lm_head.weight" and tied):
                continue
            parts = name.split(".")  # "model.layers.3.mlp.up_proj.weight" -> layer 3, "mlp.up_proj.weight"
            if parts[0] == "model" and parts[1:2] == ["layers"]:
                i, rest = parts[2], ".".join(parts[3:])
            elif parts[0] == "h":
                i, rest = parts[1], ".".join(parts[2:])
            else:
                i, rest = None, name
            gname = f"blk.{i}.{layer_table[rest]}" if i is not None and rest in layer_table else _HF_GLOBAL.get(rest if i is None else "")
            if gname is None:
                raise ConvertError(f"{hf_name}: no GGUF name for this {arch} tensor")
            if gname in seen:
                raise ConvertError(f"{hf_name}: {gname} already came from {seen[gname]}")
            seen[gname] = hf_name
            w = st.as_float32(hf_name)  # (n_out, n_in) for Linear, (n_in, n_out) for GPT-2 Conv1D
            if arch == "gpt2" and w.ndim == 2 and gname.startswith("blk."):
                w = w.T  # Conv1D (n_in, n_out) -> (n_out, n_in)
            if arch == "llama" and gname.endswith(("attn_q.weight", "attn_k.weight")):
                heads = cfg["num_attention_heads"] if "attn_q" in gname else (cfg.get("num_key_value_heads") or cfg["num_attention_heads"])
                w = permute_rope_rows(w, heads)
            if arch == "gemma3" and gname.endswith("norm.weight"):
                w = w + np.float32(1)  # Gemma RMSNorm scales by (1 + w)
            out.append((gname, np.ascontiguousarray(w, dtype=np.float32)))
    if "token_embd.weight" not in seen:
        raise ConvertError("no embedding tensor (model.embed_tokens.weight or wte.weight) in the folder")
    return out


# tokenizer.json -> tokenizer.ggml.* ----------------------------------------------------------------
# Byte-level BPE (a ByteLevel pre-tokenizer) becomes a "gpt2" vocabulary; its `pre` is chosen from the
# split regex: ByteLevel's own regex -> "gpt-2"; a Split whose regex caps digit runs at 3 -> "llama-bpe"
# (Llama 3); a Split with single digits -> "qwen2". BPE with byte_fallback and no byte-level
# pre-tokenizer (Llama 2, Gemma) becomes a SentencePiece "llama" vocabulary: the score of a token is
# minus the rank of the merge that makes it (SentencePiece BPE scores record merge order), 0 for
# tokens no merge makes; add_space_prefix when the normalizer or pre-tokenizer prepends "▁".
NORMAL, UNKNOWN, CONTROL, USER_DEFINED, UNUSED, BYTE = 1, 2, 3, 4, 5, 6


def _components(node) -> list[dict]:
    """Flatten a tokenizer.json normalizer / pre_tokenizer (Sequence nodes) into a list."""
    if not node:
        return []
    if node.get("type") == "Sequence":
        out = []
        for child in node.get("pretokenizers") or node.get("normalizers") or []:
            out += _components(child)
        return out
    return [node]


def hf_tokenizer_metadata(folder: Path, cfg: dict) -> dict:
    path = folder / "tokenizer.json"
    if not path.exists():
        raise ConvertError(f"{folder}: no tokenizer.json")
    tj = json.loads(path.read_text(encoding="utf-8"))
    model = tj.get("model") or {}
    if model.get("type") != "BPE":
        raise ConvertError(f"tokenizer.json model type {model.get('type')!r} not supported (expected BPE)")
    vocab: dict[str, int] = dict(model["vocab"])  # text -> id; added tokens may extend or override it
    added = {t["content"]: t for t in tj.get("added_tokens", [])}
    for t in added.values():
        vocab[t["content"]] = t["id"]
    n = max(vocab.values()) + 1
    # the embedding may have more rows than the tokenizer has tokens: those ids get [PADn] names
    n = max(n, cfg.get("vocab_size") or (cfg.get("text_config") or {}).get("vocab_size") or 0)
    tokens = [f"[PAD{i}]" for i in range(n)]  # ids the tokenizer leaves unused (padding rows)
    types = [UNUSED] * n
    for text, i in vocab.items():
        tokens[i] = text
        types[i] = NORMAL
    merges = [m if isinstance(m, str) else " ".join(m) for m in model.get("merges", [])]
    for text, t in added.items():
        types[t["id"]] = CONTROL if t.get("special") else USER_DEFINED
    unk = model.get("unk_token")
    if unk in vocab:
        types[vocab[unk]] = UNKNOWN

    pre = _components(tj.get("pre_tokenizer"))
    norm = _components(tj.get("normalizer"))
    S, A = ValueType.STRING, ValueType.ARRAY
    md = {}
    if any(p.get("type") == "ByteLevel" for p in pre):
        splits = [p for p in pre if p.get("type") == "Split"]
        if not splits:
            pre_name = "gpt-2"
        else:
            regex = (splits[0].get("pattern") or {}).get("Regex", "")
            pre_name = "llama-bpe" if "{1,3}" in regex else "qwen2" if "\\p{N}" in regex else None
            if pre_name is None:
                raise ConvertError(f"tokenizer.json split regex {regex!r} is not one Mote knows")
        md["tokenizer.ggml.model"] = (S, "gpt2")
        md["tokenizer.ggml.pre"] = (S, pre_name)
        md["tokenizer.ggml.merges"] = (A, (S, merges))
    elif model.get("byte_fallback"):
        # the token a merge makes scores minus its rank: earlier merges win, as in SentencePiece BPE
        rank = {m.replace(" ", ""): -float(r) for r in range(len(merges)) for m in [merges[r]]}
        scores = [rank.get(t, 0.0) for t in tokens]
        for i, t in enumerate(tokens):
            if len(t) == 6 and t.startswith("<0x") and t.endswith(">"):
                types[i] = BYTE
        prefix = any(p.get("type") == "Metaspace" and p.get("prepend_scheme", "always") != "never" for p in pre) or \
            any(x.get("type") == "Prepend" for x in norm)
        md["tokenizer.ggml.model"] = (S, "llama")
        md["tokenizer.ggml.pre"] = (S, "default")
        md["tokenizer.ggml.scores"] = (A, (ValueType.FLOAT32, scores))
        md["tokenizer.ggml.add_space_prefix"] = (ValueType.BOOL, bool(prefix))
    else:
        raise ConvertError("tokenizer.json is BPE but neither byte-level nor byte-fallback (not supported)")
    md["tokenizer.ggml.tokens"] = (A, (S, tokens))
    md["tokenizer.ggml.token_type"] = (A, (ValueType.INT32, types))

    # special ids: tokenizer_config.json names them, config.json numbers them
    tc_path = folder / "tokenizer_config.json"
    tc = json.loads(tc_path.read_text(encoding="utf-8")) if tc_path.exists() else {}
    for key, gkey in (("bos", "bos_token_id"), ("eos", "eos_token_id"), ("unk", "unknown_token_id"),
                      ("pad", "padding_token_id")):
        tid = None
        name = tc.get(f"{key}_token")
        name = name.get("content") if isinstance(name, dict) else name
        if isinstance(name, str) and name in vocab:
            tid = vocab[name]
        elif isinstance(cfg.get(f"{key}_token_id"), int):
            tid = cfg[f"{key}_token_id"]
        if tid is not None and 0 <= tid < n:
            md[f"tokenizer.ggml.{gkey}"] = (ValueType.UINT32, tid)
    # BOS is added when the post-processor's template starts with a special token (Llama, Gemma)
    post = tj.get("post_processor") or {}
    single = post.get("single") or []
    add_bos = bool(single and "SpecialToken" in single[0]) if post.get("type") == "TemplateProcessing" \
        else bool(tc.get("add_bos_token", False))
    md["tokenizer.ggml.add_bos_token"] = (ValueType.BOOL, add_bos)
    if isinstance(tc.get("chat_template"), str):
        md["tokenizer.chat_template"] = (S, tc["chat_template"])
    return md


def convert_hf(folder, out_path, out_type: str = "f32", name: str | None = None) -> dict:
    """A Hugging Face folder (config.json + *.safetensors + tokenizer.json) -> GGUF."""
    from .safetensors import open_safetensors

    folder = Path(folder)
    cfg_path = folder / "config.json"
    if not cfg_path.exists():
        raise ConvertError(f"{folder}: no config.json (expected a Hugging Face model folder)")
    cfg = json.loads(cfg_path.read_text(encoding="utf-8"))
    arch = _ARCH.get(cfg.get("model_type"))
    if arch is None:
        raise ConvertError(f"model_type {cfg.get('model_type')!r} not supported (expected one of {', '.join(_ARCH)})")
    files = sorted(folder.glob("*.safetensors"))
    if not files:
        raise ConvertError(f"{folder}: no *.safetensors files")
    md = hf_metadata(cfg, arch, name or folder.name)
    md.update(hf_tokenizer_metadata(folder, cfg))
    tensors = hf_tensors([open_safetensors(f) for f in files], cfg, arch)
    write_model(out_path, md, tensors, out_type)
    return {"architecture": arch, "n_tensors": len(tensors), "tokenizer": md["tokenizer.ggml.model"][1],
            "vocab": len(md["tokenizer.ggml.tokens"][1][1])}


# ---- ATOME01 blobs (Atome LM) -> the `atome` architecture ----------------------------------------
# Atome LM (github.com/TilelliLab/atome-lm, read at commit be1218672e9adb5656c877c2dbf7b05e55d96d10)
# exports its ternary model as an ATOME01 blob (scripts/export_to_atome.py; read by its C engine):
#     "ATOME01", then the tensors of engine.atome.tensor_layout(cfg) in order, no dimension header.
#     A ternary tensor is scale f32 (4 bytes) + ceil(n/4) bytes of 2-bit codes
#     (quants.unpack_atome_trits); a float tensor is n little-endian f32.
# In GGUF the trits are TQ1_0 with block scale 1.0, so they dequantize to exactly -1/0/+1, and the
# real per-tensor scale is the F32 tensor `X.scale` (an f16 block scale would move the logits).
# TQ1_0 needs rows of 256k values; other widths fall back to F32 trits (exact, 32 bits per weight).

ATOME_MAGIC = b"ATOME01"


def _atome_entry_nbytes(kind: str, shape: tuple[int, ...]) -> int:
    n = math.prod(shape)
    return 4 + (n + 3) // 4 if kind == atome.TERNARY else 4 * n  # (scale f32 + 2-bit codes) or f32s


def atome_blob_nbytes(cfg: AtomeConfig) -> int:
    """Size of an ATOME01 blob with these dimensions, e.g. 276655 for the 944K model."""
    return len(ATOME_MAGIC) + sum(_atome_entry_nbytes(kind, shape) for _, kind, shape in atome.tensor_layout(cfg))


def pack_atome_trits(trits: np.ndarray) -> np.ndarray:
    """int8 trits -> ATOME01 2-bit codes, the inverse of quants.unpack_atome_trits (pads with 0)."""
    flat = np.asarray(trits, dtype=np.int8).reshape(-1)  # (n,)
    codes = np.zeros(-(-flat.size // 4) * 4, dtype=np.uint8)  # (4 * n_bytes,)
    codes[: flat.size] = np.where(flat == 1, 1, np.where(flat == -1, 3, 0))
    codes = codes.reshape(-1, 4)  # (n_bytes, 4)
    return (codes[:, 0] | codes[:, 1] << 2 | codes[:, 2] << 4 | codes[:, 3] << 6).astype(np.uint8)


def read_atome_blob(buffer, cfg: AtomeConfig) -> dict[str, np.ndarray]:
    """ATOME01 bytes -> {GGUF name: array}: `X.weight` int8 trits, `X.scale` f32 (1,), floats f32.

    The size must be exactly `atome_blob_nbytes(cfg)`: the blob has no header, so a size mismatch
    is the only sign that the dimensions given are not the ones it was exported with.
    """
    data = np.frombuffer(buffer, dtype=np.uint8)  # (n_bytes,) zero-copy view
    if data[: len(ATOME_MAGIC)].tobytes() != ATOME_MAGIC:
        raise atome.AtomeError(f"not an ATOME01 blob: starts with {data[:len(ATOME_MAGIC)].tobytes()!r} "
                               f"(expected {ATOME_MAGIC!r})")
    if data.size != atome_blob_nbytes(cfg):
        raise atome.AtomeError(
            f"ATOME01 blob is {data.size} bytes but d_model={cfg.d_model}, n_layers={cfg.n_layers}, "
            f"d_head={cfg.d_head}, kernel={cfg.kernel}, vocab={cfg.vocab_size} need {atome_blob_nbytes(cfg)} bytes"
        )
    tensors: dict[str, np.ndarray] = {}
    at = len(ATOME_MAGIC)
    for name, kind, shape in atome.tensor_layout(cfg):
        n = math.prod(shape)
        if kind == atome.F32:
            # copy: the floats sit at odd offsets (the magic is 7 bytes), aligned arrays are faster
            tensors[name] = data[at : at + 4 * n].view("<f4").astype(np.float32).reshape(shape)
        else:
            scale = data[at : at + 4].view("<f4").astype(np.float32)  # (1,)
            trits = quants.unpack_atome_trits(data[at + 4 : at + 4 + (n + 3) // 4], n).reshape(shape)
            if name.endswith(".local_conv"):
                trits = np.ascontiguousarray(trits.T)  # (d, kernel) -> (kernel, d): row k taps x_{t-k}
            tensors[name + ".weight"], tensors[name + ".scale"] = trits, scale
        at += _atome_entry_nbytes(kind, shape)
    return tensors


def load_atome_blob(buffer, d_model=256, n_layers=8, d_head=64, top_k=4, kernel=5) -> atome.AtomeWeights:
    """Parse an ATOME01 blob (bytes-like) with the given dimensions into ternary AtomeWeights."""
    cfg = AtomeConfig(d_model=d_model, n_layers=n_layers, d_head=d_head, top_k=top_k, kernel=kernel)
    return atome.weights_from_tensors(read_atome_blob(buffer, cfg), cfg)


def convert_atome_blob(src, out_path, args=None) -> dict:
    """ATOME01 blob -> GGUF (architecture `atome`, byte tokenizer). Returns a summary dict."""
    get = lambda k, default: getattr(args, k, default) if args is not None else default  # noqa: E731
    cfg = AtomeConfig(d_model=get("d_model", 256), n_layers=get("n_layers", 8), d_head=get("d_head", 64),
                      top_k=get("top_k", 4), kernel=get("kernel", 5))
    with open(src, "rb") as f:
        tensors = read_atome_blob(f.read(), cfg)
    tq1 = quants.BY_NAME["TQ1_0"]
    out, n_ternary_f32 = [], 0
    for name, a in tensors.items():
        if a.dtype == np.int8 and a.shape[-1] % tq1.block_size == 0:
            out.append((name, tq1.type_id, a.shape, encoders.quantize(a.astype(np.float32), tq1.type_id)))
        else:
            n_ternary_f32 += a.dtype == np.int8
            out.append((name, quants.BY_NAME["F32"].type_id, a.shape, np.ascontiguousarray(a, np.float32)))
    meta = {
        "general.architecture": (ValueType.STRING, "atome"),
        "general.name": (ValueType.STRING, get("name", None) or Path(src).stem),
        "general.license": (ValueType.STRING, "apache-2.0"),
        "tokenizer.ggml.model": (ValueType.STRING, "bytes"),
    }
    for key, field in ATOME_KEYS.items():
        value = getattr(cfg, field)
        meta[f"atome.{key}"] = (ValueType.FLOAT32, value) if isinstance(value, float) else (ValueType.UINT32, value)
    with open(out_path, "wb") as f:
        write_gguf(f, meta, out)
    return {"architecture": "atome", "tensors": len(out), "ternary_as_f32": n_ternary_f32}


# ---- command line -------------------------------------------------------------------------------


def convert(src, out_path, args=None) -> dict:
    """Pick the importer from what SRC is: an HF folder, an ATOME01 blob or a PyTorch pickle."""
    src = Path(src)
    get = lambda k, default=None: getattr(args, k, default) if args is not None else default  # noqa: E731
    out_type = get("type", "f32") or "f32"
    if src.is_dir():
        return convert_hf(src, out_path, out_type=out_type, name=get("name"))
    if not src.exists():
        raise FileNotFoundError(f"{src}: no such file or folder")
    with open(src, "rb") as f:
        head = f.read(8)
    if head.startswith(ATOME_MAGIC):
        return convert_atome_blob(src, out_path, args)
    if _is_pickle_checkpoint(src):  # by magic bytes, not by extension
        return convert_torch_gpt(src, out_path, allow_pickle=bool(get("allow_pickle")), out_type=out_type,
                                 name=get("name"))
    raise ConvertError(f"{src}: not a folder with config.json, an ATOME01 blob or a PyTorch checkpoint "
                       f"(first bytes {head[:4]!r})")


def cmd_convert(args) -> int:
    info = convert(args.src, args.out, args)
    print(f"wrote {args.out}: " + ", ".join(f"{k} {v}" for k, v in info.items()))
    return 0


def add_cli(sub) -> None:
    p = sub.add_parser("convert", help="import a PyTorch GPT checkpoint, a Hugging Face folder or an ATOME01 blob")
    p.add_argument("src", help="checkpoint file, model folder (config.json + *.safetensors) or .bin blob")
    p.add_argument("out", help="output .gguf")
    p.add_argument("--type", choices=("f32", "f16"), default="f32", help="storage of matrices (norms stay f32)")
    p.add_argument("--name", default=None, help="general.name (default: from the source)")
    p.add_argument("--allow-pickle", action="store_true",
                   help="allow PyTorch pickle checkpoints (read with torch.load(weights_only=True) in a child process)")
    # ATOME01 blobs carry no dimensions
    p.add_argument("--d-model", type=int, default=256)
    p.add_argument("--n-layers", type=int, default=8)
    p.add_argument("--d-head", type=int, default=64)
    p.add_argument("--top-k", type=int, default=4)
    p.add_argument("--kernel", type=int, default=5)
    p.set_defaults(func=cmd_convert)
