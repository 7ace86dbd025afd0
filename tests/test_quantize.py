"""`mote quantize` and `mote imatrix`: the per-tensor policy, output files re-read by the `gguf`
package (GGUFReader + gguf.quants.dequantize, written by others) and by our engine, re-quantizing a
quantized file, the importance matrix against a hand computation, and the vanilla 1M Q8_0 within
1 % of its f32 perplexity."""

import json
import math

import numpy as np
import pytest

from engine import quants
from engine.gguf import open_gguf, write_gguf
from engine.model import rmsnorm
from mote import encoders
from mote.cli import main as mote
from mote.loader import load
from mote.quantize import MIXES, choose_type, collect_imatrix, read_imatrix, use_more_bits
from tests.paths import shared_file
from tests.tiny_models import VOCAB, write_tiny

gguf = pytest.importorskip("gguf")


# ---- policy ---------------------------------------------------------------------------------------


def test_policy_table():
    q2, q4 = MIXES["q2_k"], MIXES["q4_k"]
    assert choose_type("blk.0.attn_norm.weight", (256,), q2, 8, True)[0] is None
    assert choose_type("position_embd.weight", (128, 256), q2, 8, True)[0] is None
    assert choose_type("output.weight", (1000, 256), q2, 8, True)[0] == "Q6_K"
    assert choose_type("token_embd.weight", (1000, 256), q2, 8, True)[0] == "Q2_K"
    assert choose_type("token_embd.weight", (1000, 256), q2, 8, False)[0] == "Q6_K"  # tied: it is the output
    assert choose_type("token_embd.weight", (1000, 256), MIXES["tq2_0"], 8, True)[0] == "Q4_K"
    assert choose_type("blk.3.attn_q.weight", (256, 256), MIXES["tq1_0"], 8, True)[0] == "TQ1_0"
    assert choose_type("blk.3.ffn_down.weight", (256, 512), q2, 8, True)[0] == "Q3_K"
    assert choose_type("output.weight", (1000, 256), MIXES["q8_0"], 8, True)[0] == "Q8_0"
    # Q4_K_M: attn_v / ffn_down get Q6_K only in the more-bits layers
    assert [use_more_bits(i, 8) for i in range(8)] == [True, False, False, True, False, False, True, True]
    assert choose_type("blk.0.attn_v.weight", (256, 256), q4, 8, True)[0] == "Q6_K"
    assert choose_type("blk.1.attn_v.weight", (256, 256), q4, 8, True)[0] == "Q4_K"


def test_row_length_fallbacks():
    q2, q4 = MIXES["q2_k"], MIXES["q4_k"]
    t, why = choose_type("blk.0.attn_q.weight", (1024, 640), q2, 18, True)  # Gemma 3 270M width
    assert t == "Q4_0" and "640" in why
    assert choose_type("blk.0.attn_q.weight", (1024, 640), q4, 18, True)[0] == "Q5_0"
    assert choose_type("token_embd.weight", (262144, 640), q4, 18, False)[0] == "Q8_0"  # Q6_K -> Q8_0
    t, why = choose_type("blk.0.attn_qkv.weight", (456, 152), MIXES["q8_0"], 3, True)  # vanilla 1M width
    assert t == "F16" and "152" in why


# ---- files round trip -----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """A llama-architecture model whose rows are multiples of 256, so every type applies."""
    d = tmp_path_factory.mktemp("quant")
    return write_tiny(d / "f32.gguf", "llama", d=256, n_heads=4, n_kv=2, d_ff=512, n_layers=2, ctx=64)


def _tokens(n, seed=3):
    return np.random.default_rng(seed).integers(3, VOCAB, size=n).tolist()


@pytest.mark.parametrize("qtype", list(MIXES))
def test_quantized_file_is_read_by_gguf_package_and_engine(tiny, tmp_path, qtype, capsys):
    out = tmp_path / f"{qtype}.gguf"
    assert mote(["quantize", str(tiny), str(out), "--type", qtype, "--no-progress"]) == 0
    log = capsys.readouterr().out
    assert "blk.0.attn_q.weight" in log and "->" in log  # per-tensor choices are printed

    src, ours = open_gguf(tiny), open_gguf(out)
    reader = gguf.GGUFReader(str(out))
    mix = MIXES[qtype]
    assert int(reader.fields["general.file_type"].parts[-1][0]) == mix.ftype
    for key, value in src.metadata.items():  # every input key is copied
        if key != "general.file_type":
            got = ours.metadata[key]
            assert np.array_equal(got, value) if isinstance(value, np.ndarray) else got == value, key
    for t in reader.tensors:
        info = ours.tensors[t.name]
        want = choose_type(t.name, info.shape, mix, 2, True)[0]
        assert quants.TYPES[info.ggml_type].name == (want or "F32"), t.name
        ref = gguf.quants.dequantize(t.data, t.tensor_type)  # the gguf package's decoder
        np.testing.assert_array_equal(ref, quants.dequantize(ours.raw(t.name), info.ggml_type, info.shape))
        orig = quants.dequantize(src.raw(t.name), src.tensors[t.name].ggml_type, info.shape)
        rel = np.linalg.norm(ref - orig) / np.linalg.norm(orig)
        assert rel <= {"Q8_0": 0.01, "Q6_K": 0.02, "Q5_K": 0.04, "Q4_K": 0.1, "Q4_0": 0.12, "Q3_K": 0.2,
                      "Q2_K": 0.4, "TQ2_0": 0.9, "TQ1_0": 0.9, "F32": 1e-12}[quants.TYPES[info.ggml_type].name], t.name

    # the engine runs it exactly as the gguf package decodes it: same logits as an f32 file holding
    # gguf.quants.dequantize of every tensor
    deq = tmp_path / "dequantized.gguf"
    with open(deq, "wb") as f:
        write_gguf(f, ours.typed_metadata(), [
            (t.name, 0, ours.tensors[t.name].shape, gguf.quants.dequantize(t.data, t.tensor_type).astype(np.float32))
            for t in reader.tensors])
    ids = _tokens(24)
    got = load(out).model.forward(ids, all_logits=True)  # (24, vocab)
    np.testing.assert_allclose(got, load(deq).model.forward(ids, all_logits=True), rtol=1e-4, atol=1e-4)


def test_fewer_bits_move_the_logits_further(tiny, tmp_path):
    ids = _tokens(24)
    base = load(tiny).model.forward(ids, all_logits=True)  # (24, vocab)
    err = {}
    for qtype in ("q8_0", "q4_k", "q2_k", "tq1_0"):
        out = tmp_path / f"{qtype}.gguf"
        assert mote(["quantize", str(tiny), str(out), "--type", qtype, "--no-progress", "--quiet"]) == 0
        got = load(out).model.forward(ids, all_logits=True)
        err[qtype] = float(np.linalg.norm(got - base) / np.linalg.norm(base))
    assert err["q8_0"] < 0.05 and err["q8_0"] < err["q4_k"] < err["q2_k"] < err["tq1_0"], err


def test_requantizing_a_quantized_file(tiny, tmp_path):
    q4 = tmp_path / "q4_k.gguf"
    q8 = tmp_path / "q8_0-from-q4_k.gguf"
    assert mote(["quantize", str(tiny), str(q4), "--type", "q4_k", "--no-progress", "--quiet"]) == 0
    assert mote(["quantize", str(q4), str(q8), "--type", "q8_0", "--no-progress", "--quiet"]) == 0
    a, b = open_gguf(q4), open_gguf(q8)
    for name, info in b.tensors.items():
        if len(info.shape) == 2:
            assert quants.TYPES[info.ggml_type].name == "Q8_0"
            x = quants.dequantize(a.raw(name), a.tensors[name].ggml_type, info.shape)
            y = quants.dequantize(b.raw(name), info.ggml_type, info.shape)
            assert np.linalg.norm(y - x) / np.linalg.norm(x) < 0.01  # Q8_0 of the Q4_K values
    # a tensor already in the target type is copied byte for byte
    q4b = tmp_path / "q4_k-again.gguf"
    assert mote(["quantize", str(q4), str(q4b), "--type", "q4_k", "--no-progress", "--quiet"]) == 0
    c = open_gguf(q4b)
    for name in a.tensors:
        assert np.array_equal(a.raw(name), c.raw(name)), name


def test_bad_arguments(tiny, tmp_path, capsys):
    with pytest.raises(SystemExit):
        mote(["quantize", str(tiny), str(tmp_path / "x.gguf"), "--type", "q3_x"])
    assert mote(["quantize", str(tiny), str(tmp_path / "x.gguf"), "--type", "q4_k", "--imatrix", str(tiny)]) == 1
    assert "imatrix" in capsys.readouterr().err


# ---- importance matrix ----------------------------------------------------------------------------


def test_imatrix_matches_hand_computed_layer0_inputs(tiny, tmp_path):
    text = tmp_path / "calib.txt"
    text.write_text("The quick brown fox jumps over the lazy dog. " * 60)
    im = tmp_path / "tiny.imatrix"
    assert mote(["imatrix", str(tiny), str(text), "-o", str(im), "--ctx", "32", "--chunks", "3", "--no-progress"]) == 0

    # layer 0's q/k/v see rmsnorm(token embeddings) * attn_norm: recompute that from the file
    loaded = load(tiny, n_ctx=32)
    tok = loaded.tokenizer
    ids = tok.encode(text.read_text(), add_bos=False)
    windows = [[tok.bos_id] + ids[i * 31 : (i + 1) * 31] for i in range(3)]
    g = open_gguf(tiny)
    emb = quants.dequantize(g.raw("token_embd.weight"), 0, g.tensors["token_embd.weight"].shape)
    norm = quants.dequantize(g.raw("blk.0.attn_norm.weight"), 0, (256,))
    h = rmsnorm(emb[np.concatenate(windows)], norm, 1e-6)  # (96, 256)
    want = (h.astype(np.float64) ** 2).mean(axis=0)

    stats = read_imatrix(im)
    for m in ("attn_q", "attn_k", "attn_v"):
        np.testing.assert_allclose(stats[f"blk.0.{m}.weight"], want, rtol=1e-4)
    assert set(stats) == {f"blk.{i}.{m}.weight" for i in range(2) for m in
                          ("attn_q", "attn_k", "attn_v", "attn_output", "ffn_gate", "ffn_up", "ffn_down")}
    assert stats["blk.1.ffn_down.weight"].shape == (512,)

    # the gguf package reads the file; the model is left unwrapped
    r = gguf.GGUFReader(str(im))
    assert {t.name for t in r.tensors} >= {"blk.0.attn_q.weight.in_sum2", "blk.0.attn_q.weight.counts"}
    counts = {t.name: float(np.asarray(t.data).reshape(-1)[0]) for t in r.tensors if t.name.endswith(".counts")}
    assert set(counts.values()) == {96.0}
    assert not any(type(v).__name__ == "_Recorder" for b in loaded.model.w["blk"] for v in b.values())


def test_imatrix_lowers_the_weighted_error(tiny, tmp_path):
    """With importances, Q2_K/Q4_K put their error where the importances are small."""
    g = open_gguf(tiny)
    w = quants.dequantize(g.raw("blk.0.ffn_up.weight"), 0, (512, 256))  # (512, 256)
    qw = np.exp(np.random.default_rng(0).normal(0, 2, size=256)).astype(np.float32)  # very uneven
    for name in ("Q2_K", "Q4_K"):
        t = quants.BY_NAME[name].type_id
        plain = quants.dequantize(encoders.quantize(w, t).reshape(-1), t, w.shape)
        guided = quants.dequantize(encoders.quantize(w, t, imatrix=qw).reshape(-1), t, w.shape)
        err = lambda y: float((qw * (y - w) ** 2).sum())  # noqa: E731
        assert err(guided) < 0.9 * err(plain), name


def test_quantize_with_imatrix_changes_the_bytes(tiny, tmp_path):
    text = tmp_path / "calib.txt"
    text.write_text("Once upon a time, a small cat found a red ball in the garden. " * 50)
    im = tmp_path / "tiny.imatrix"
    assert mote(["imatrix", str(tiny), str(text), "-o", str(im), "--ctx", "32", "--chunks", "2", "--no-progress"]) == 0
    a, b = tmp_path / "plain.gguf", tmp_path / "im.gguf"
    assert mote(["quantize", str(tiny), str(a), "--type", "q2_k", "--no-progress", "--quiet"]) == 0
    assert mote(["quantize", str(tiny), str(b), "--type", "q2_k", "--imatrix", str(im), "--no-progress", "--quiet"]) == 0
    ga, gb = open_gguf(a), open_gguf(b)
    assert not np.array_equal(ga.raw("blk.0.attn_q.weight"), gb.raw("blk.0.attn_q.weight"))
    assert np.array_equal(ga.raw("output.weight"), gb.raw("output.weight"))  # no imatrix entry for the head
    assert gb.metadata["quantize.imatrix.entries_count"] == 14


# ---- the vanilla 1M GPT ---------------------------------------------------------------------------


def test_vanilla_q8_0_within_1_percent_of_f32(tmp_path, capsys):
    pytest.importorskip("torch", reason="converting the .pt checkpoint needs torch (dev extra)")
    src = shared_file("atome/vanilla_1m_v1.pt")
    sample = shared_file("atome/tinystories_sample.txt")
    f32, q8 = tmp_path / "v.gguf", tmp_path / "v-q8_0.gguf"
    assert mote(["convert", str(src), str(f32), "--allow-pickle"]) == 0
    assert mote(["quantize", str(f32), str(q8), "--type", "q8_0", "--no-progress", "--quiet"]) == 0
    capsys.readouterr()
    ppl = {}
    for name, path in (("f32", f32), ("q8_0", q8)):
        assert mote(["perplexity", str(path), str(sample), "--ctx", "256", "--max-windows", "12",
                     "--json", "--no-progress"]) == 0
        ppl[name] = json.loads(capsys.readouterr().out)["ppl"]
    assert abs(ppl["q8_0"] / ppl["f32"] - 1) < 0.01, ppl
    g = open_gguf(q8)
    assert quants.TYPES[g.tensors["blk.0.ffn_down.weight"].ggml_type].name == "Q8_0"
