"""`mote quantize --type q3_k` (Q3_K_M-like): its per-tensor policy, and its error on a tiny model
lies between Q4_K_M's and Q2_K's. The file round trip through the `gguf` package runs for every mix
in test_quantize.py."""

import numpy as np
import pytest

from engine import quants
from engine.gguf import open_gguf
from mote.loader import load
from mote.quantize import MIXES, choose_type, quantize_file
from tests.tiny_models import VOCAB, write_tiny

pytest.importorskip("gguf")  # write_tiny uses the gguf package's writer


def test_q3_k_policy():
    q3 = MIXES["q3_k"]
    assert (q3.ftype, q3.ftype_name) == (12, "MOSTLY_Q3_K_M")  # llama.cpp's LLAMA_FTYPE_MOSTLY_Q3_K_M
    assert choose_type("output.weight", (1000, 256), q3, 28, True)[0] == "Q6_K"
    assert choose_type("token_embd.weight", (1000, 256), q3, 28, True)[0] == "Q3_K"
    assert choose_type("token_embd.weight", (1000, 256), q3, 28, False)[0] == "Q6_K"  # tied: it is the output
    for role in ("attn_v", "ffn_down", "attn_output", "attn_qkv"):
        for layer in (0, 1, 13, 27):  # every layer, "more bits" or not
            assert choose_type(f"blk.{layer}.{role}.weight", (256, 512), q3, 28, True)[0] == "Q4_K", (role, layer)
    for role in ("attn_q", "attn_k", "ffn_gate", "ffn_up"):
        assert choose_type(f"blk.5.{role}.weight", (512, 256), q3, 28, True)[0] == "Q3_K", role
    assert choose_type("blk.0.attn_norm.weight", (256,), q3, 28, True)[0] is None


def test_q3_k_row_length_fallbacks():
    q3 = MIXES["q3_k"]
    t, why = choose_type("blk.0.attn_q.weight", (1024, 640), q3, 18, True)  # Gemma 3 270M width
    assert t == "Q4_0" and "640" in why
    assert choose_type("blk.0.attn_output.weight", (640, 1024 + 32), q3, 18, True)[0] == "Q5_0"  # Q4_K -> Q5_0


def test_q3_k_error_between_q4_k_and_q2_k(tmp_path):
    src = write_tiny(tmp_path / "f32.gguf", "llama", d=256, n_heads=4, n_kv=2, d_ff=512, n_layers=2, ctx=32)
    ids = np.random.default_rng(5).integers(3, VOCAB, size=16).tolist()
    base = load(src).model.forward(ids, all_logits=True)  # (16, vocab)
    err = {}
    for qtype in ("q4_k", "q3_k", "q2_k"):
        out = tmp_path / f"{qtype}.gguf"
        choices = quantize_file(src, out, qtype, log=lambda *a: None, show_progress=False)
        got = load(out).model.forward(ids, all_logits=True)  # (16, vocab)
        err[qtype] = float(np.linalg.norm(got - base) / np.linalg.norm(base))
        if qtype == "q3_k":
            g = open_gguf(out)
            assert g.metadata["general.file_type"] == 12
            kinds = {c.name: c.dst_type for c in choices}
            assert kinds["blk.1.ffn_up.weight"] == "Q3_K" and kinds["blk.1.ffn_down.weight"] == "Q4_K"
            assert quants.TYPES[g.tensors["blk.1.ffn_up.weight"].ggml_type].name == "Q3_K"
    assert err["q4_k"] < err["q3_k"] < err["q2_k"], err
