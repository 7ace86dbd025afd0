"""engine/packed.py: products straight from packed blocks, against the naive reference.

- every block type, in the file's layout (read-only, as natively) and planarized in place (as the
  browser worker holds it), and Q4_0 / Q5_0 unpacked at load to int8 values (the worker's Q5_0):
  one token and several, within 1e-5 of `matmul.reference_linear`
  (dequantize everything with the gguf-py-exact decoders, then multiply);
- `rows` (the verify pass of lookup decoding) gives each row bit for bit what a one-token call gives;
- planarizing is a permutation: `unplanarize` gives the file's bytes back, and `dequantize_rows`
  (embedding lookups of a tied head, prefill) equals quants.dequantize exactly;
- a model loaded with LoadPolicy(packed=True) holds nothing of the weights' size besides its
  buffer and computes what the int8-block form computes;
- the same checks inside Pyodide (marked `browser`), where the kernels' integer loops differ.
"""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest

from engine import matmul, packed, quants
from engine.gguf import GGUFFile, open_gguf
from engine.model import LoadPolicy, load_model, resident_bytes
from mote import encoders
from tests.tiny_models import VOCAB, write_tiny

TYPES = ["Q8_0", "Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q2_K", "Q3_K", "Q4_K", "Q5_K", "Q6_K", "TQ1_0", "TQ2_0"]
RTOL = 1e-5  # of max |reference|


def _case(name: str, n_out: int, n_in: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    w = (rng.standard_normal((n_out, n_in)) * 0.05).astype(np.float32)  # (n_out, n_in)
    tid = quants.BY_NAME[name].type_id
    return tid, encoders.quantize(w, tid).reshape(-1), rng.standard_normal((5, n_in)).astype(np.float32)


def _err(got, ref) -> float:
    return float(np.abs(got - ref).max() / np.abs(ref).max())


@pytest.mark.parametrize("planar", [False, True])
@pytest.mark.parametrize("name", TYPES)
def test_product_equals_reference(name, planar, monkeypatch):
    monkeypatch.setattr(packed, "CHUNK_BYTES", 64 << 10)  # several chunks, the last one shorter
    n_out, n_in = 300, 768
    tid, raw, xs = _case(name, n_out, n_in)
    buf = raw.copy().reshape(n_out, -1)
    lin = packed.PackedLinear(buf, tid, (n_out, n_in), planar=planar)
    assert len(lin._chunks) > 1 and lin.fast == (name in packed.FAST_TYPES)
    ref1 = matmul.reference_linear(raw, tid, (n_out, n_in), xs[0])
    refn = matmul.reference_linear(raw, tid, (n_out, n_in), xs)
    assert _err(lin(xs[0]), ref1) <= RTOL
    assert _err(lin(xs), refn) <= RTOL  # prefill: dequantized chunks, one matrix product each
    out = np.full(n_out, np.nan, np.float32)
    assert np.shares_memory(lin(xs[0], out=out), out) and _err(out, ref1) <= RTOL
    rows = lin.rows(xs)  # the verify pass: every row exactly the one-token call
    for j in range(len(xs)):
        np.testing.assert_array_equal(rows[j], lin(xs[j]))
    ids = np.array([299, 0, 5, 150, 5])
    np.testing.assert_array_equal(lin.dequantize_rows(ids), quants.dequantize(raw, tid, (n_out, n_in))[ids])
    assert (bytes(buf) != raw.tobytes()) == (planar and lin.fast)  # planarized in place, or untouched


@pytest.mark.parametrize("name", sorted(packed.FAST_TYPES))
def test_planarize_is_a_permutation_of_the_bytes(name):
    n_out, n_in = 40, 512
    tid, raw, _ = _case(name, n_out, n_in, seed=3)
    region = raw.copy()
    nb = n_in // quants.TYPES[tid].block_size
    side = packed.planarize(region, tid, n_out, nb)
    assert region.nbytes == raw.nbytes and not np.array_equal(region, raw)
    blocks = packed.unplanarize(region, tid, n_out, nb, side)
    np.testing.assert_array_equal(blocks.reshape(-1), raw)
    if name == "Q5_0":  # the fifth bits' plane, both ways
        qh = raw.reshape(n_out, nb, -1)[:, :, 2:6]
        np.testing.assert_array_equal(packed._fifth_bits_inverse(packed._fifth_bits(qh), n_out, nb), qh)


@pytest.mark.parametrize("planar", [False, True])
@pytest.mark.parametrize("name", sorted(packed.VALUE_TYPES))
def test_values_split_at_load_equal_reference(name, planar, monkeypatch):
    """values=True (the worker's default for Q5_0): int8 values in the planes' order, split once."""
    monkeypatch.setattr(packed, "CHUNK_BYTES", 64 << 10)
    n_out, n_in = 300, 768
    tid, raw, xs = _case(name, n_out, n_in, seed=5)
    buf = raw.copy().reshape(n_out, -1)
    lin = packed.PackedLinear(buf, tid, (n_out, n_in), planar=planar, values=True)
    assert lin.holds_values and len(lin._chunks) > 1 and not lin.planar
    assert bytes(buf) == raw.tobytes()  # the file's bytes are read, not rewritten
    assert lin.nbytes == n_out * n_in + n_out * (n_in // 32) * 4  # 1 + 1/8 bytes per weight, as BlockLinear
    ref1 = matmul.reference_linear(raw, tid, (n_out, n_in), xs[0])
    assert _err(lin(xs[0]), ref1) <= RTOL
    assert _err(lin(xs), matmul.reference_linear(raw, tid, (n_out, n_in), xs)) <= RTOL
    rows = lin.rows(xs)
    for j in range(len(xs)):
        np.testing.assert_array_equal(rows[j], lin(xs[j]))
    ids = np.array([299, 0, 5, 150, 5])
    np.testing.assert_array_equal(lin.dequantize_rows(ids), quants.dequantize(raw, tid, (n_out, n_in))[ids])
    block = matmul.prepare_linear(raw.copy(), tid, (n_out, n_in), dense=False, in_place=True)  # the same values
    assert _err(lin(xs[0]), block(xs[0])) <= RTOL


def test_values_of_a_type_or_chunk_they_do_not_fit_fall_back_to_int8_blocks():
    tid, raw, _ = _case("Q5_0", 7, 96)  # 21 blocks: no whole uint64 words of fifth bits
    assert not packed.PackedLinear(raw.copy().reshape(7, -1), tid, (7, 96), values=True).holds_values
    assert type(matmul.prepare_linear(raw.copy(), tid, (7, 96), dense=False, values=True)).__name__ == "BlockLinear"
    tid, raw, xs = _case("Q4_K", 8, 256)
    assert type(matmul.prepare_linear(raw.copy(), tid, (8, 256), dense=False, values=True)).__name__ == "BlockLinear"
    own = raw.copy()  # the model's own buffer: not planarized for a type that has no values layout
    lin = matmul.prepare_linear(own, tid, (8, 256), dense=False, in_place=True, values=True)
    assert type(lin).__name__ == "BlockLinear" and np.array_equal(own, raw)
    assert _err(lin(xs[0]), matmul.reference_linear(raw, tid, (8, 256), xs[0])) <= RTOL
    assert not LoadPolicy(packed=True, int8_types=("Q4_K", "Q5_0")).values(tid)  # Q4_K: BlockLinear


def test_a_q5_0_chunk_with_an_odd_number_of_blocks_is_still_exact():
    """Q5_0's bit plane needs whole uint64 words; an odd rows x blocks count falls back to split."""
    tid, raw, xs = _case("Q5_0", 7, 96)  # 3 blocks per row, 7 rows: 21 blocks
    lin = packed.PackedLinear(raw.copy().reshape(7, -1), tid, (7, 96), planar=True)
    assert not lin.fast and not lin.planar
    assert _err(lin(xs[0]), matmul.reference_linear(raw, tid, (7, 96), xs[0])) <= RTOL


def test_q4_k_scales_of_an_odd_number_of_blocks_are_unpacked_byte_by_byte():
    """Q4_K's scale planes are unpacked as uint64 words when a chunk's rows are even in number; 7
    rows are not, and take the byte-wise path, which must give the same products and rows."""
    tid, raw, xs = _case("Q4_K", 7, 256)
    lin = packed.PackedLinear(raw.copy().reshape(7, -1), tid, (7, 256), planar=True)
    assert lin.planar and lin._chunks == [(0, 7)]
    assert _err(lin(xs[0]), matmul.reference_linear(raw, tid, (7, 256), xs[0])) <= RTOL
    assert _err(lin(xs), matmul.reference_linear(raw, tid, (7, 256), xs)) <= RTOL
    np.testing.assert_array_equal(lin.dequantize_rows([0, 6]), quants.dequantize(raw, tid, (7, 256))[[0, 6]])


@pytest.mark.filterwarnings("ignore:invalid value:RuntimeWarning")  # an infinite scale times a zero weight
@pytest.mark.parametrize("scales", ["quantized", "signed", "infinite"])
def test_q8_0_scales_read_from_the_planes_give_the_same_bits(scales, monkeypatch):
    """float_scales off (the compact layout): Q8_0 keeps no float32 copy of its scales and converts
    a chunk's float16 scales per product, by their bits, or through the table for a scale with a
    sign bit or an infinity (which no quantizer writes): the same products, bit for bit, as the
    float32 copy gives, one token, several, and the verify pass's rows."""
    monkeypatch.setattr(packed, "CHUNK_BYTES", 64 << 10)
    n_out, n_in = 300, 768
    tid, raw, xs = _case("Q8_0", n_out, n_in)
    blocks = raw.reshape(n_out, n_in // 32, 34)
    d = blocks[:, :, :2].copy().view(np.float16)  # (n_out, nb, 1)
    d[7, 3] = np.float16(6e-8)  # a subnormal scale
    d[9, 0] = 0
    if scales == "signed":
        d[5, 2] = -d[5, 2]
    elif scales == "infinite":
        d[5, 2] = np.inf
    blocks[:, :, :2] = d.view(np.uint8)
    with_copy = packed.PackedLinear(raw.copy().reshape(n_out, -1), tid, (n_out, n_in), planar=True)
    without = packed.PackedLinear(raw.copy().reshape(n_out, -1), tid, (n_out, n_in), planar=True, float_scales=False)
    assert with_copy.nbytes == n_out * n_in // 32 * 4 and without.nbytes == 0
    assert [v["plain"] for v in without._views] == [scales == "quantized"] + [True] * (len(without._chunks) - 1)
    for x in (xs[0], xs):
        np.testing.assert_array_equal(without(x), with_copy(x))
    np.testing.assert_array_equal(without.rows(xs), with_copy.rows(xs))
    if scales == "quantized":
        assert _err(without(xs[0]), matmul.reference_linear(raw, tid, (n_out, n_in), xs[0])) <= RTOL
    ids = np.array([5, 7, 9, 299])
    np.testing.assert_array_equal(without.dequantize_rows(ids), quants.dequantize(raw, tid, (n_out, n_in))[ids])


def test_unknown_width_is_named():
    tid, raw, _ = _case("Q4_K", 4, 256)
    with pytest.raises(ValueError, match="Q4_K rows of 512 weights take"):
        packed.PackedLinear(raw.reshape(4, -1), tid, (4, 512))


# ---- in a model ---------------------------------------------------------------------------------

INT8 = LoadPolicy(dense_layers_mb=0, dense_head_mb=0)
PACKED = dataclasses.replace(INT8, packed=True)


@pytest.mark.parametrize("arch, qtype", [(a, q) for a in ("llama", "gemma3") for q in ("Q8_0", "Q4_0", "Q5_0")]
                         + [("llama", q) for q in ("Q4_K", "Q6_K", "Q2_K")])
def test_packed_model_equals_int8_blocks(tmp_path, arch, qtype):
    wide = dict(d=256, d_ff=512) if qtype.endswith("_K") else {}  # K-quant rows are 256-weight blocks
    path = write_tiny(tmp_path / "m.gguf", arch, qtype=qtype, tied=True, **wide)
    toks = np.random.default_rng(2).integers(3, VOCAB, size=9).tolist()
    ref = load_model(open_gguf(path), policy=INT8)
    want = ref.forward(toks, all_logits=True)
    step_ref = [ref.forward([t]) for t in toks[:3]]
    for own in (False, True):  # the mapped file natively; the worker's own buffer, planarized
        buf = bytearray(path.read_bytes())
        model = load_model(GGUFFile(buf), policy=dataclasses.replace(PACKED, own_buffer=own))
        kinds = {type(m).__name__ for m in model.w["blk"][0].values() if hasattr(m, "n_out")}
        assert kinds == ({"BlockLinear"} if qtype == "Q8_0" and not own else {"PackedLinear"}), kinds
        np.testing.assert_allclose(model.forward(toks, all_logits=True), want, rtol=1e-4, atol=2e-4)
        got = [model.forward([t]) for t in toks[:3]]  # decode steps: the packed one-token kernels
        np.testing.assert_allclose(np.stack(got), np.stack(step_ref), rtol=1e-4, atol=2e-4)
        if own:  # tied head planarized in place: the embedding reads its rows from the planes
            assert model.w["token_embd"].block is model.w["output"] and model.w["output"].planar
            assert bytes(buf) != path.read_bytes()
    if qtype in packed.VALUE_TYPES:  # kept as int8 values for the packed kernels (the worker's Q5_0)
        policy = dataclasses.replace(PACKED, own_buffer=True, int8_types=(qtype,))
        model = load_model(GGUFFile(bytearray(path.read_bytes())), policy=policy)
        assert all(m.holds_values for m in model.w["blk"][0].values() if hasattr(m, "n_out"))
        np.testing.assert_allclose(model.forward(toks, all_logits=True), want, rtol=1e-4, atol=2e-4)
        got = [model.forward([t]) for t in toks[:3]]
        np.testing.assert_allclose(np.stack(got), np.stack(step_ref), rtol=1e-4, atol=2e-4)


def test_scratch_is_made_at_load_and_neither_a_prefill_nor_a_step_grows_it(tmp_path):
    """WASM memory never shrinks, so a scratch buffer outgrown by a later matrix would leave its old
    block as a hole: load_model makes them at their largest (packed.reserve_scratch), and a prompt
    longer than a prefill chunk, then decode steps, use those same arrays and make no others."""
    from engine.model import PREFILL_CHUNK

    path = write_tiny(tmp_path / "m.gguf", "llama", qtype="Q4_K", d=256, d_ff=768, n_layers=2, ctx=256)
    matmul._LOCAL.bufs = {}  # this thread's buffers, as a fresh worker starts
    model = load_model(GGUFFile(bytearray(path.read_bytes())), policy=dataclasses.replace(PACKED, own_buffer=True))
    made = dict(matmul._LOCAL.bufs)
    assert {"pk_w", "u8_pk_u", "u8_pk_sc"} <= set(made)
    toks = np.random.default_rng(4).integers(3, VOCAB, size=PREFILL_CHUNK + 6).tolist()
    model.forward(toks)
    for t in toks[:3]:
        model.forward([t])
    assert matmul._LOCAL.bufs.keys() == made.keys()
    assert all(matmul._LOCAL.bufs[k] is buf for k, buf in made.items())


def test_prepared_forms_are_kept_for_the_last_x_only():
    """q, k and v (or gate and up) share one prepared x; once another x comes, the forms of the
    old one are dropped (a 64-row prefill chunk's would otherwise stay for every kind of matrix)."""
    (ta, ra, xs), (tb, rb, _) = _case("Q4_K", 16, 256), _case("Q6_K", 16, 256, seed=1)
    tc, rc, xc = _case("Q4_K", 8, 512, seed=2)
    a, b = (packed.PackedLinear(r.copy().reshape(16, -1), t, (16, 256), planar=True) for t, r in ((ta, ra), (tb, rb)))
    c = packed.PackedLinear(rc.copy().reshape(8, -1), tc, (8, 512), planar=True)
    a(xs), b(xs)
    assert len(packed._PREPARED) == 3 and np.array_equal(packed._PREPARED["x"], xs)  # x, Q4_K's and Q6_K's forms
    c(xc)
    assert len(packed._PREPARED) == 2 and np.array_equal(packed._PREPARED["x"], xc)
    assert _err(a(xs), matmul.reference_linear(ra, ta, (16, 256), xs)) <= RTOL  # prepared again: still right


def test_packed_model_holds_no_copy_of_its_weights(tmp_path):
    path = write_tiny(tmp_path / "m.gguf", "llama", qtype="Q4_K", d=256, d_ff=512, n_layers=2)
    g = open_gguf(path)
    int8 = load_model(g, policy=INT8)
    pk = load_model(GGUFFile(bytearray(path.read_bytes())), policy=dataclasses.replace(PACKED, own_buffer=True))
    kv = sum(c.nbytes for c in pk.k_cache + pk.v_cache)
    weights = sum(t.nbytes for n, t in g.tensors.items() if n.startswith("blk.") and len(t.shape) == 2)
    assert resident_bytes(int8) - kv > weights  # int8 values + float32 scales: more than the file's blocks
    assert resident_bytes(pk) - kv < 0.05 * weights  # only Q4_K's d/dmin side arrays and small vectors


# ---- the same inside Chromium / Pyodide ------------------------------------------------------------

BROWSER_CHECK = """
import json, numpy as np, sys
from engine import matmul, packed, quants
from mote import encoders
packed.CHUNK_BYTES = 64 << 10
rng = np.random.default_rng(0)
out = {"platform": sys.platform, "cases": []}
for name in %r:
    tid = quants.BY_NAME[name].type_id
    w = (rng.standard_normal((300, 512)) * 0.05).astype(np.float32)
    raw = encoders.quantize(w, tid).reshape(-1)
    xs = rng.standard_normal((5, 512)).astype(np.float32)
    ref1 = matmul.reference_linear(raw, tid, (300, 512), xs[0])
    refn = matmul.reference_linear(raw, tid, (300, 512), xs)
    cases = [(False, False, True), (True, False, True)] + [(True, True, True)] * (name in packed.VALUE_TYPES)
    cases += [(True, False, False)] * (name == "Q8_0")  # its scales converted per product
    for planar, values, float_scales in cases:
        lin = packed.PackedLinear(raw.copy().reshape(300, -1), tid, (300, 512), planar=planar, values=values,
                                  float_scales=float_scales)
        assert lin.holds_values == values
        e1 = float(np.abs(lin(xs[0]) - ref1).max() / np.abs(ref1).max())
        en = float(np.abs(lin(xs) - refn).max() / np.abs(refn).max())
        rows = lin.rows(xs)
        same = all(np.array_equal(rows[j], lin(xs[j])) for j in range(5))
        out["cases"].append([name, planar, lin.fast, e1, en, same])
json.dumps(out)
"""


@pytest.mark.browser
def test_packed_products_in_pyodide():
    pytest.importorskip("playwright.sync_api")
    from tests.browser_util import CHROMIUM, ensure_static_built

    from mote.bench import kernels as bench

    static = ensure_static_built()
    with bench.pyodide_runner(static, chromium=CHROMIUM) as run:
        res = json.loads(run(BROWSER_CHECK % (TYPES,)))
    assert res["platform"] == "emscripten"
    assert len(res["cases"]) == 2 * len(TYPES) + len(packed.VALUE_TYPES) + 1
    for name, planar, fast, e1, en, same in res["cases"]:
        assert e1 <= RTOL and en <= RTOL and same, (name, planar, fast, e1, en)


def test_cli_packed_option_gives_the_same_greedy_text(tmp_path, capsys):
    """`mote generate --packed` (natively: products from the mapped file, read-only) = the default."""
    from mote.cli import main

    path = write_tiny(tmp_path / "m.gguf", "llama", qtype="Q4_0")
    outs = []
    for extra in ([], ["--packed"]):
        assert main(["generate", str(path), "-p", "hello", "-n", "12", "--temperature", "0",
                     *extra]) == 0
        outs.append(capsys.readouterr().out)
    assert outs[0] == outs[1] and outs[0].strip()
