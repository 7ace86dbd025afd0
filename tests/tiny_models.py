"""Tiny random models for each architecture, written with the `gguf` package's own GGUFWriter.

Used by the model tests (KV cache vs full recompute, dense vs int8-block products) and by the
browser tests as a fast stand-in for a real model. Weights are random but seeded, so a file is the
same bytes every time.
"""

from __future__ import annotations

from pathlib import Path

import gguf
import numpy as np

VOCAB = 256 + 3  # byte tokens plus <pad>, <s>, </s>


def _vocab():
    toks = ["<pad>", "<s>", "</s>"] + [f"<0x{i:02X}>" for i in range(256)]
    types = [gguf.TokenType.CONTROL] * 3 + [gguf.TokenType.BYTE] * 256
    return toks, types


def write_tiny(path: Path, arch: str = "llama", seed: int = 0, qtype: str = "F32", d: int = 64, n_layers: int = 2,
               n_heads: int = 4, n_kv: int = 2, d_ff: int = 96, ctx: int = 128, tied: bool = False) -> Path:
    """Write a tiny `arch` model to `path`. qtype: storage of 2-D weights (F32, F16, Q8_0, Q4_0, ...)."""
    rng = np.random.default_rng(seed)
    hd = 32 if arch == "gemma3" else d // n_heads
    w = gguf.GGUFWriter(str(path), arch)
    w.add_context_length(ctx)
    w.add_embedding_length(d)
    w.add_block_count(n_layers)
    w.add_feed_forward_length(d_ff)
    w.add_head_count(n_heads)
    w.add_head_count_kv(n_kv if arch != "gpt2" else n_heads)
    if arch == "gpt2":
        w.add_layer_norm_eps(1e-5)
    else:
        w.add_layer_norm_rms_eps(1e-6)
        w.add_rope_freq_base(10000.0)
    if arch == "gemma3":
        w.add_key_length(hd)
        w.add_value_length(hd)
        w.add_sliding_window(8)  # small, so the tests cross it
    toks, types = _vocab()
    w.add_tokenizer_model("llama")
    w.add_token_list(toks)
    w.add_token_scores([0.0] * len(toks))
    w.add_token_types(types)
    w.add_bos_token_id(1)
    w.add_eos_token_id(2)

    qt = gguf.GGMLQuantizationType[qtype]

    def mat(name: str, n_out: int, n_in: int, scale: float = 0.2):
        x = (rng.standard_normal((n_out, n_in)) * scale / np.sqrt(n_in) * 4).astype(np.float32)
        if qt == gguf.GGMLQuantizationType.F32:
            w.add_tensor(name, x)
        elif qt == gguf.GGMLQuantizationType.F16:
            w.add_tensor(name, x.astype(np.float16))
        else:
            try:
                blocks = gguf.quants.quantize(x, qt)
            except NotImplementedError:  # gguf-py has no encoder for it (K-quants): llama.cpp's, ported
                from mote import encoders

                blocks = encoders.quantize(x, int(qt)).reshape(n_out, -1)
            w.add_tensor(name, blocks, raw_dtype=qt)

    def vec(name: str, n: int, around: float = 1.0):
        w.add_tensor(name, (around + 0.1 * rng.standard_normal(n)).astype(np.float32))

    mat("token_embd.weight", VOCAB, d, scale=1.0)
    if arch == "gpt2":
        w.add_tensor("position_embd.weight", (0.1 * rng.standard_normal((ctx, d))).astype(np.float32))
    kv = n_kv if arch != "gpt2" else n_heads
    for i in range(n_layers):
        p = f"blk.{i}."
        vec(p + "attn_norm.weight", d)
        if arch == "gpt2":
            vec(p + "attn_norm.bias", d, 0.0)
            mat(p + "attn_qkv.weight", (n_heads + 2 * kv) * hd, d)
            vec(p + "attn_qkv.bias", (n_heads + 2 * kv) * hd, 0.0)
        else:
            mat(p + "attn_q.weight", n_heads * hd, d)
            mat(p + "attn_k.weight", kv * hd, d)
            mat(p + "attn_v.weight", kv * hd, d)
        if arch == "qwen2":
            vec(p + "attn_q.bias", n_heads * hd, 0.0)
            vec(p + "attn_k.bias", kv * hd, 0.0)
            vec(p + "attn_v.bias", kv * hd, 0.0)
        if arch == "gemma3":
            vec(p + "attn_q_norm.weight", hd)
            vec(p + "attn_k_norm.weight", hd)
            vec(p + "post_attention_norm.weight", d)
            vec(p + "post_ffw_norm.weight", d)
        mat(p + "attn_output.weight", d, n_heads * hd)
        vec(p + "ffn_norm.weight", d)
        if arch == "gpt2":
            vec(p + "ffn_norm.bias", d, 0.0)
            vec(p + "attn_output.bias", d, 0.0)
            mat(p + "ffn_up.weight", d_ff, d)
            vec(p + "ffn_up.bias", d_ff, 0.0)
            mat(p + "ffn_down.weight", d, d_ff)
            vec(p + "ffn_down.bias", d, 0.0)
        else:
            mat(p + "ffn_gate.weight", d_ff, d)
            mat(p + "ffn_up.weight", d_ff, d)
            mat(p + "ffn_down.weight", d, d_ff)
    vec("output_norm.weight", d)
    if arch == "gpt2":
        vec("output_norm.bias", d, 0.0)
    if not tied:
        mat("output.weight", VOCAB, d, scale=1.0)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path
