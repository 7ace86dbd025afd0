"""Atome LM: ATOME01 parsing (engine/convert.py) and the atome forward pass (engine/atome.py).

Oracle: shared/reference/atome-944k.json, written by Atome LM's own C99 engine (last-position
logits and 40 greedy bytes per prompt). The naive `reference_forward` and the cached AtomeModel
(chunk and single-token paths) are also checked against each other on the real model and on a
tiny random model written to a blob by `_write_blob` below, an independent writer of the format.
"""

import json
import struct

import numpy as np
import pytest

from engine.atome import (
    AtomeError,
    AtomeModel,
    TernaryMatrix,
    reference_forward,
    tensor_layout,
    top_k_earliest,
    weights_from_tensors,
)
from engine.config import AtomeConfig
from mote.convert import atome_blob_nbytes, load_atome_blob, pack_atome_trits, read_atome_blob
from engine.quants import unpack_atome_trits
from tests.paths import SHARED, shared_file

BLOB = SHARED / "atome" / "atome_944k.bin"
REFERENCE = SHARED / "reference" / "atome-944k.json"


@pytest.fixture(scope="module")
def weights():
    return load_atome_blob(shared_file("atome/atome_944k.bin").read_bytes())


@pytest.fixture(scope="module")
def reference():
    return json.loads(shared_file("reference/atome-944k.json").read_text())["prompts"]


def _prompts():
    return list(json.loads(REFERENCE.read_text())["prompts"])  # vendored: read at collection


# ---- an independent ATOME01 writer for tiny random models -----------------------------------


def _write_blob(cfg: AtomeConfig, rng: np.random.Generator) -> bytes:
    """Random weights in ATOME01 layout, packed trit by trit (code 01 = +1, 11 = -1, 00 = 0)."""
    d, dh, ks, v = cfg.d_model, cfg.d_head, cfg.kernel, cfg.vocab_size

    def ternary(n):
        trits = rng.integers(-1, 2, size=n)
        packed = bytearray((n + 3) // 4)
        for i, w in enumerate(trits):
            packed[i // 4] |= {0: 0, 1: 1, -1: 3}[int(w)] << (2 * (i % 4))
        return struct.pack("<f", rng.uniform(0.02, 0.2)) + bytes(packed)

    def floats(n, lo, hi):
        return rng.uniform(lo, hi, size=n).astype("<f4").tobytes()

    out = [b"ATOME01", ternary(v * d)]
    for _ in range(cfg.n_layers):
        out += [floats(d, 0.5, 1.5), floats(d, -0.1, 0.1), ternary(d * ks)]  # norm, conv
        out += [floats(d, -2, 2), floats(d, -0.5, 0.5), floats(d, -0.5, 0.5)]  # ssm a, b, c
        out += [ternary(dh * d), ternary(dh * d), ternary(d * d), ternary(3 * d)]  # q, k, v, router
    out += [floats(d, 0.5, 1.5), floats(d, -0.1, 0.1), ternary(v * d)]
    return b"".join(out)


TINY = AtomeConfig(d_model=24, n_layers=2, d_head=8, top_k=3, kernel=4)


@pytest.fixture(scope="module")
def tiny():
    blob = _write_blob(TINY, np.random.default_rng(7))
    return load_atome_blob(blob, d_model=24, n_layers=2, d_head=8, top_k=3, kernel=4)


# ---- format -------------------------------------------------------------------------------


def test_trit_packing_round_trip():
    rng = np.random.default_rng(0)
    trits = rng.integers(-1, 2, size=1001).astype(np.int8)
    assert np.array_equal(unpack_atome_trits(pack_atome_trits(trits), trits.size), trits)
    # one byte, lowest bits first: codes 01, 11, 00, 10 -> +1, -1, 0, 0 (10 unused, read as 0)
    assert unpack_atome_trits(np.array([0b10_00_11_01], np.uint8), 4).tolist() == [1, -1, 0, 0]


def test_blob_size_follows_from_dimensions():
    cfg = AtomeConfig()
    # embed + 8 blocks (norm, conv, ssm, q, k, v, router) + final norm + unembed, by hand
    block = 2048 + (4 + 1280 // 4) + 3072 + 2 * (4 + 64 * 256 // 4) + (4 + 256 * 256 // 4) + (4 + 768 // 4)
    assert atome_blob_nbytes(cfg) == 7 + (4 + 16384) + 8 * block + 2048 + (4 + 16384) == 276655
    assert len(tensor_layout(cfg)) == 1 + 8 * 10 + 3


def test_wrong_dimensions_or_bytes_are_named():
    blob = BLOB.read_bytes()
    with pytest.raises(AtomeError, match=r"276655 bytes but .*d_head=32.* need 243887 bytes"):
        load_atome_blob(blob, d_head=32)
    with pytest.raises(AtomeError, match="276654 bytes"):
        load_atome_blob(blob[:-1])
    with pytest.raises(AtomeError, match="not an ATOME01 blob"):
        load_atome_blob(b"GGUF" + blob[4:])


def test_weights_stay_ternary(weights):
    cfg = weights.config
    mats = [weights.token_embd, weights.output]
    for layer in weights.layers:
        mats += [layer.conv, layer.attn_q, layer.attn_k, layer.attn_v, layer.router]
    assert len(mats) == 2 + 5 * cfg.n_layers
    for m in mats:
        assert m.trits.dtype == np.int8 and set(np.unique(m.trits)) <= {-1, 0, 1}
        assert 0 < m.scale < 10
    n_params = sum(m.trits.size for m in mats) + cfg.n_layers * 5 * cfg.d_model + 2 * cfg.d_model
    assert n_params == 944640  # the parameter count Atome's training log reports


def test_weights_from_tensors_accepts_float_trits_and_rejects_others(tiny):
    tensors = read_atome_blob(_write_blob(TINY, np.random.default_rng(7)), TINY)
    as_float = {k: v.astype(np.float32) for k, v in tensors.items()}  # like a dequantized TQ2_0
    w = weights_from_tensors(as_float, TINY)
    tokens = [1, 2, 3, 200]
    assert np.array_equal(reference_forward(w, tokens), reference_forward(tiny, tokens))

    bad = dict(as_float)
    bad["blk.1.attn_v.weight"] = bad["blk.1.attn_v.weight"] * 0.5
    with pytest.raises(AtomeError, match=r"'blk.1.attn_v.weight' holds values other than -1, 0, \+1"):
        weights_from_tensors(bad, TINY)
    bad = dict(as_float)
    bad["blk.0.local_conv.weight"] = bad["blk.0.local_conv.weight"].T
    with pytest.raises(AtomeError, match=r"'blk.0.local_conv.weight' has shape \(24, 4\) \(expected \(4, 24\)\)"):
        weights_from_tensors(bad, TINY)
    bad = dict(as_float)
    del bad["output.scale"]
    with pytest.raises(AtomeError, match="'output.scale' missing"):
        weights_from_tensors(bad, TINY)


def test_config_from_metadata():
    md = {"atome.embedding_length": 256, "atome.block_count": 8, "atome.attention.key_length": 64,
          "atome.attention.top_k": 4, "atome.conv_kernel": 5, "general.architecture": "atome"}  # fmt: skip
    assert AtomeConfig.from_metadata(md) == AtomeConfig(d_model=256, n_layers=8, d_head=64, top_k=4, kernel=5)


def test_ternary_matvec_is_scale_times_trits():
    trits = np.array([[1, 0, -1], [-1, -1, 1]], np.int8)
    m = TernaryMatrix(trits, 0.5)
    assert np.allclose(m.matvec(np.array([1.0, 2.0, 4.0], np.float32)), [-1.5, 0.5])


def test_top_k_prefers_earlier_positions_on_ties():
    assert top_k_earliest(np.array([2.0, 5.0, 5.0, 1.0, 5.0], np.float32), 2).tolist() == [1, 2]
    assert top_k_earliest(np.array([0.0, 0.0, 0.0], np.float32), 4).tolist() == [0, 1, 2]


# ---- against Atome's C engine --------------------------------------------------------------


@pytest.mark.parametrize("prompt", _prompts())
def test_last_logits_match_c_engine(weights, reference, prompt):
    case = reference[prompt]
    tokens = case["prompt_tokens"]
    assert tokens == list(prompt.encode())
    expected = np.array(case["last_logits"], np.float32)  # (256,)
    model = AtomeModel(weights)
    chunk = model.forward(tokens)
    model.reset()
    for t in tokens:
        step = model.forward([t])
    naive = reference_forward(weights, tokens)[-1]
    for got in (naive, chunk, step):
        assert got.shape == (256,)
        np.testing.assert_allclose(got, expected, atol=1e-3, rtol=0)


@pytest.mark.parametrize("prompt", _prompts())
def test_greedy_bytes_match_c_engine(weights, reference, prompt):
    case = reference[prompt]
    n_new = len(case["greedy_tokens"])
    model = AtomeModel(weights)

    # cached: prefill once, then one token per step
    logits, cached = model.forward(case["prompt_tokens"]), []
    for _ in range(n_new):
        cached.append(int(np.argmax(logits)))
        logits = model.forward([cached[-1]])

    # as the C engine does it: a full forward over the whole prefix for every new byte
    ids = list(case["prompt_tokens"])
    for _ in range(n_new):
        model.reset()
        ids.append(int(np.argmax(model.forward(ids))))

    assert cached == ids[len(case["prompt_tokens"]) :] == case["greedy_tokens"]
    assert bytes(cached).decode("utf-8", "replace") == case["greedy_text"]


# ---- incremental decoding equals full recompute ---------------------------------------------


def _check_incremental(weights, tokens, splits, atol):
    """All-position logits: naive reference vs one chunk vs the given chunk sizes vs one at a time."""
    expected = reference_forward(weights, tokens)  # (n, vocab)
    model = AtomeModel(weights, n_ctx=len(tokens))
    np.testing.assert_allclose(model.forward(tokens, all_logits=True), expected, atol=atol, rtol=0)

    model.reset()
    got, at = [], 0
    for size in splits:
        got.append(model.forward(tokens[at : at + size], all_logits=True))
        at += size
    assert at == len(tokens) == model.pos
    np.testing.assert_allclose(np.concatenate(got), expected, atol=atol, rtol=0)

    model.reset()
    steps = np.stack([model.forward([t]) for t in tokens])
    np.testing.assert_allclose(steps, expected, atol=atol, rtol=0)


def test_incremental_equals_full_recompute_tiny(tiny):
    rng = np.random.default_rng(1)
    tokens = rng.integers(0, 256, size=40).tolist() + [9] * 6 + rng.integers(0, 4, size=20).tolist()
    _check_incremental(tiny, tokens, splits=[1, 2, 3, 5, 1, 20, 34], atol=1e-4)


def test_incremental_equals_full_recompute_944k(weights):
    text = shared_file("atome/tinystories_sample.txt").read_bytes()[:150]
    tokens = list(text) + [ord("a")] * 10  # repeats give exactly tied attention scores
    _check_incremental(weights, tokens, splits=[7, 1, 1, 60, 3, 88], atol=1e-4)


def test_context_limit_and_token_range(tiny):
    model = AtomeModel(tiny, n_ctx=8)
    model.forward([1, 2, 3, 4, 5, 6])
    with pytest.raises(ValueError, match=r"context full: 6 \+ 3 tokens exceed n_ctx=8"):
        model.forward([1, 2, 3])
    with pytest.raises(ValueError, match=r"token id 256 out of range \(expected 0 <= id < 256\)"):
        model.forward([256])
    with pytest.raises(ValueError, match=r"token id -1 out of range"):
        model.forward([3, -1])
    model.reset()
    assert model.pos == 0 and model.forward([1]).shape == (256,)


def test_kv_cache_grows_past_first_allocation(tiny):
    tokens = np.random.default_rng(2).integers(0, 256, size=300).tolist()
    model = AtomeModel(tiny, n_ctx=400)  # first allocation holds 256 positions
    model.forward(tokens[:250])
    for t in tokens[250:]:
        last = model.forward([t])
    np.testing.assert_allclose(last, reference_forward(tiny, tokens)[-1], atol=1e-4, rtol=0)


# ---- through GGUF: `mote convert` -> the engine's loader -> generate ---------------------------


def test_converted_gguf_matches_c_engine(tmp_path, reference):
    """The blob converted to GGUF (TQ1_0 trits, F32 scales) and run through the CLI's path."""
    from engine.generate import SamplingParams, generate
    from engine.gguf import open_gguf
    from mote.cli import main
    from mote.loader import load

    out = tmp_path / "atome.gguf"
    assert main(["convert", str(BLOB), str(out)]) == 0
    types = {t.ggml_type for t in open_gguf(out).tensors.values()}
    assert types == {0, 34}  # F32 vectors and scales, TQ1_0 trits: ternary stays <= 2 bits
    loaded = load(out)
    for prompt, case in reference.items():
        tokens = loaded.tokenizer.encode(prompt)
        assert tokens == case["prompt_tokens"]
        loaded.model.reset()
        np.testing.assert_allclose(loaded.model.forward(tokens), case["last_logits"], atol=1e-3, rtol=0)
        got = [ev.token_id for ev in generate(loaded.model, loaded.tokenizer, tokens,
                                              SamplingParams(temperature=0, max_tokens=len(case["greedy_tokens"])))
               if ev.kind == "token"]
        assert got == case["greedy_tokens"]
