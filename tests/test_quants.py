"""engine/quants.py (decoders) and mote/encoders.py against gguf-py's reference (de)quantizers and llama.cpp-made blocks in the real model.

Oracles: gguf.quants.dequantize / quantize (gguf-py 0.19, written by the ggml authors) and the
Q4_K/Q5_0/Q6_K/Q8_0 blocks that llama.cpp's quantizer wrote into Gemma 3 270M Q4_K_M.
Run: .venv/bin/python -m pytest tests/test_quants.py -q
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

gguf = pytest.importorskip("gguf")
from gguf.constants import GGML_QUANT_SIZES, GGMLQuantizationType  # noqa: E402

from engine import quants as Q  # noqa: E402
from mote.encoders import quantize  # noqa: E402

GEMMA_PATH = Path(os.environ.get("MOTE_GEMMA_PATH", "/tmp/gemma/gemma-3-270m-q4_k_m.gguf"))

ALL = [t.name for t in Q._TABLE]
QUANTIZED = [t.name for t in Q._TABLE if not t.is_float]
# Byte offsets of the f16 scale fields in each block (ggml-common.h block_* structs).
F16_FIELDS = {
    "Q4_0": [0], "Q4_1": [0, 2], "Q5_0": [0], "Q5_1": [0, 2], "Q8_0": [0],
    "Q2_K": [80, 82], "Q3_K": [108], "Q4_K": [0, 2], "Q5_K": [0, 2], "Q6_K": [208],
    "TQ1_0": [52], "TQ2_0": [64],
}
# Types gguf-py can quantize: our bytes must equal its bytes.
GGUF_QUANTIZES = ["F32", "F16", "BF16", "Q8_0", "Q4_0", "Q4_1", "Q5_0", "Q5_1", "TQ1_0", "TQ2_0"]
# Round-trip RMSE / RMS(x) bounds on Gaussian rows (measured values are ~10-15% below these).
RMSE_BOUND = {
    "Q8_0": 0.007, "Q4_0": 0.10, "Q4_1": 0.09, "Q5_0": 0.05, "Q5_1": 0.045,
    "Q2_K": 0.33, "Q3_K": 0.175, "Q4_K": 0.08, "Q5_K": 0.042, "Q6_K": 0.021,
}


def gtype(name: str) -> GGMLQuantizationType:
    return GGMLQuantizationType[name]


def same_bits(a: np.ndarray, b: np.ndarray) -> bool:
    """Bit-for-bit float32 equality, except that any NaN equals any NaN."""
    a, b = np.asarray(a), np.asarray(b)
    if a.shape != b.shape or a.dtype != np.float32 or b.dtype != np.float32:
        return False
    return bool(np.all((a.view(np.uint32) == b.view(np.uint32)) | (np.isnan(a) & np.isnan(b))))


def sane_blocks(name: str, n_blocks: int, rng: np.random.Generator) -> np.ndarray:
    """Random block bytes whose f16 scale fields hold finite values in about [-2, 2]."""
    qt = Q.BY_NAME[name]
    if qt.is_float:
        vals = rng.standard_normal(n_blocks).astype(np.float32)
        conv = {"F32": vals, "F16": vals.astype(np.float16), "BF16": (vals.view(np.uint32) >> 16).astype(np.uint16)}
        return np.ascontiguousarray(conv[name]).view(np.uint8).reshape(n_blocks, -1)
    raw = rng.integers(0, 256, size=(n_blocks, qt.type_size), dtype=np.uint8)
    for off in F16_FIELDS[name]:
        raw[:, off:off + 2] = (rng.standard_normal(n_blocks) * 0.5).astype(np.float16)[:, None].view(np.uint8)
    return raw


def matrix_shape(name: str, n_blocks: int) -> tuple[int, int]:
    qt = Q.BY_NAME[name]
    n_rows = 4
    return n_rows, n_blocks // n_rows * qt.block_size


# --- the table ------------------------------------------------------------------------------------

def test_table_matches_gguf_constants():
    assert set(Q.TYPES) == {0, 1, 2, 3, 6, 7, 8, 10, 11, 12, 13, 14, 30, 34, 35}
    for qt in Q.TYPES.values():
        assert GGMLQuantizationType(qt.type_id).name == qt.name
        assert GGML_QUANT_SIZES[GGMLQuantizationType(qt.type_id)] == (qt.block_size, qt.type_size)
        assert Q.BY_NAME[qt.name] is qt
        if not qt.is_float:
            assert qt.block_size % qt.sub_size == 0


def test_row_nbytes():
    assert Q.row_nbytes(Q.BY_NAME["Q4_K"].type_id, 512) == 2 * 144
    assert Q.row_nbytes(Q.BY_NAME["Q8_0"].type_id, 64) == 2 * 34
    assert Q.row_nbytes(Q.BY_NAME["F16"].type_id, 7) == 14


# --- bad sizes are clear errors -------------------------------------------------------------------

def test_bad_sizes_raise_clear_errors():
    with pytest.raises(ValueError, match=r"Q4_K row of 100 values is not a multiple of the block size 256"):
        Q.row_nbytes(12, 100)
    with pytest.raises(ValueError, match=r"unknown ggml type id 99"):
        Q.row_nbytes(99, 256)
    with pytest.raises(ValueError, match=r"unknown ggml type id 99"):
        Q.dequantize(np.zeros(10, np.uint8), 99, (10,))
    with pytest.raises(ValueError, match=r"Q8_0 tensor of shape \(2, 32\) needs 68 bytes, got 67"):
        Q.dequantize(np.zeros(67, np.uint8), 8, (2, 32))
    with pytest.raises(ValueError, match=r"Q8_0 row of 33 values"):
        Q.dequantize(np.zeros(68, np.uint8), 8, (2, 33))
    with pytest.raises(ValueError, match=r"144 bytes of Q4_K do not split into 2 rows"):
        Q.split_blocks(np.zeros(144, np.uint8), 12, 2)
    with pytest.raises(ValueError, match=r"needs a quantized type, got F32"):
        Q.split_blocks(np.zeros(16, np.uint8), 0, 1)
    with pytest.raises(ValueError, match=r"Q6_K row of 300 values"):
        quantize(np.zeros((2, 300), np.float32), 14)
    with pytest.raises(ValueError, match=r"imatrix must have shape \(256,\)"):
        quantize(np.zeros((2, 256), np.float32), 12, imatrix=np.ones(128, np.float32))


# --- dequantize == gguf.quants.dequantize, bit for bit ----------------------------------------------

@pytest.mark.parametrize("name", ALL)
def test_dequantize_sane_blocks_bit_exact(name):
    rng = np.random.default_rng(1000 + Q.BY_NAME[name].type_id)
    raw = sane_blocks(name, 64, rng)
    shape = matrix_shape(name, 64)
    ours = Q.dequantize(raw.reshape(-1), Q.BY_NAME[name].type_id, shape)
    ref = gguf.quants.dequantize(raw.reshape(shape[0], -1), gtype(name))
    assert ours.dtype == np.float32 and ours.shape == shape
    assert not np.isnan(ours).any()
    assert np.array_equal(ours.view(np.uint32), np.asarray(ref, np.float32).view(np.uint32))


@pytest.mark.parametrize("name", ALL)
def test_dequantize_raw_random_bytes_with_nans(name):
    """Arbitrary bytes (f16 scales may be inf/NaN) from a read-only buffer; input left untouched."""
    rng = np.random.default_rng(2000 + Q.BY_NAME[name].type_id)
    qt = Q.BY_NAME[name]
    raw = rng.integers(0, 256, size=256 * qt.type_size, dtype=np.uint8)
    if qt.block_size == 1:
        raw[0:qt.type_size] = 0xFF                                      # guarantee at least one NaN
    else:
        for off in F16_FIELDS[name]:
            raw[off:off + 2] = [0x00, 0x7E]                             # f16 NaN scale in block 0
    frozen = raw.tobytes()
    buf = np.frombuffer(memoryview(frozen), dtype=np.uint8)             # read-only, memoryview-backed
    shape = (8, 32 * qt.block_size)
    ours = Q.dequantize(buf, qt.type_id, shape)
    with np.errstate(invalid="ignore", over="ignore"):
        ref = gguf.quants.dequantize(raw.reshape(8, -1), gtype(name))
    assert np.isnan(ours).any()
    assert same_bits(ours, np.asarray(ref, np.float32))
    assert buf.tobytes() == frozen


def test_dequantize_accepts_bytes_and_nd_shapes():
    rng = np.random.default_rng(3)
    raw = sane_blocks("Q4_K", 6, rng)
    ours = Q.dequantize(raw.tobytes(), 12, (2, 3, 256))
    ref = gguf.quants.dequantize(raw.reshape(2, 3, -1).reshape(2, -1), GGMLQuantizationType.Q4_K)
    assert ours.shape == (2, 3, 256)
    assert np.array_equal(ours.reshape(2, -1), ref)


# --- split_blocks reconstructs dequantize ----------------------------------------------------------

Q_RANGE = {
    "Q4_0": (-8, 7), "Q4_1": (0, 15), "Q5_0": (-16, 15), "Q5_1": (0, 31), "Q8_0": (-128, 127),
    "Q2_K": (0, 3), "Q3_K": (-4, 3), "Q4_K": (0, 15), "Q5_K": (0, 31), "Q6_K": (-32, 31),
    "TQ1_0": (-1, 1), "TQ2_0": (-1, 2),   # TQ2_0: code 3 is unused by the encoder but decodes to +2
}


@pytest.mark.parametrize("name", QUANTIZED)
def test_split_blocks_reconstructs_dequantize(name):
    qt = Q.BY_NAME[name]
    rng = np.random.default_rng(3000 + qt.type_id)
    raw = sane_blocks(name, 64, rng).reshape(-1)
    n_rows, n_cols = matrix_shape(name, 64)
    q, scale, offset = Q.split_blocks(raw, qt.type_id, n_rows)
    assert q.dtype == np.int8 and q.shape == (n_rows, n_cols)
    assert scale.dtype == np.float32 and scale.shape == (n_rows, n_cols // qt.sub_size)
    assert (offset is None) == (name in {"Q4_0", "Q5_0", "Q8_0", "Q3_K", "Q6_K", "TQ1_0", "TQ2_0"})
    if offset is not None:
        assert offset.dtype == np.float32 and offset.shape == scale.shape
    lo, hi = Q_RANGE[name]
    assert q.min() >= lo and q.max() <= hi
    rebuilt = scale[..., None] * q.reshape(n_rows, -1, qt.sub_size)
    if offset is not None:
        rebuilt = rebuilt - offset[..., None]
    expect = Q.dequantize(raw, qt.type_id, (n_rows, n_cols))
    assert same_bits(rebuilt.reshape(n_rows, n_cols), expect)
    ref = gguf.quants.dequantize(raw.reshape(n_rows, -1), gtype(name))
    assert same_bits(rebuilt.reshape(n_rows, n_cols), np.asarray(ref, np.float32))


# --- quantize --------------------------------------------------------------------------------------

def awkward_rows(n_cols: int, rng: np.random.Generator) -> np.ndarray:
    """Gaussian rows of mixed scale plus blocks that are zero, constant, one-sided and tied."""
    x = (rng.standard_normal((12, n_cols)) * rng.uniform(0.01, 4.0, size=(12, 1))).astype(np.float32)
    x[1] = 0.0                                                          # all-zero row
    x[2, : n_cols // 2] = 0.75                                          # constant blocks
    x[3] = np.abs(x[3])                                                 # all positive (min clamps to 0)
    x[4] = -np.abs(x[4])                                                # all negative
    x[5] = np.round(x[5] * 4) / 4                                       # many exact ties
    x[6, ::7] = 0.0
    return x


@pytest.mark.parametrize("name", GGUF_QUANTIZES)
def test_quantize_equals_gguf(name):
    qt = Q.BY_NAME[name]
    rng = np.random.default_rng(4000 + qt.type_id)
    x = awkward_rows(512, rng)
    ours = quantize(x, qt.type_id)
    ref = np.ascontiguousarray(gguf.quants.quantize(x, gtype(name))).view(np.uint8).reshape(x.shape[0], -1)
    assert ours.dtype == np.uint8 and ours.shape == (x.shape[0], Q.row_nbytes(qt.type_id, 512))
    assert np.array_equal(ours, ref)


def ternary_rows(rng):
    d = rng.uniform(0.1, 2.0, size=(8, 1, 1)).astype(np.float32)
    t = rng.integers(-1, 2, size=(8, 2, 256)).astype(np.float32)
    t[:, :, 0] = 1.0                                                    # absmax of every block is d
    return (d * t).reshape(8, 512)


@pytest.mark.parametrize("name", ["TQ1_0", "TQ2_0"])
def test_ternary_round_trip(name):
    x = ternary_rows(np.random.default_rng(7))
    y = Q.dequantize(quantize(x, Q.BY_NAME[name].type_id).reshape(-1), Q.BY_NAME[name].type_id, x.shape)
    # only the f16 rounding of d is lost
    np.testing.assert_allclose(y, x, rtol=2 ** -11, atol=0)


@pytest.mark.parametrize("name", list(RMSE_BOUND))
def test_quantize_round_trip_error_and_validity(name):
    qt = Q.BY_NAME[name]
    rng = np.random.default_rng(5000 + qt.type_id)
    x = rng.standard_normal((16, 1024)).astype(np.float32) * rng.uniform(0.01, 3, size=(16, 1)).astype(np.float32)
    raw = quantize(x, qt.type_id)
    assert raw.dtype == np.uint8 and raw.shape == (16, Q.row_nbytes(qt.type_id, 1024))
    y = Q.dequantize(raw.reshape(-1), qt.type_id, x.shape)
    # our bytes are valid GGUF blocks: gguf-py decodes them to exactly what we decode
    assert np.array_equal(y, gguf.quants.dequantize(raw, gtype(name)))
    rel = np.sqrt(np.mean((y - x) ** 2, axis=1) / np.mean(x ** 2, axis=1))
    assert rel.max() < RMSE_BOUND[name], rel.max()
    # zero, constant and one-sided blocks stay finite and small-error
    z = awkward_rows(1024, rng)
    yz = Q.dequantize(quantize(z, qt.type_id).reshape(-1), qt.type_id, z.shape)
    assert np.isfinite(yz).all()
    assert np.all(yz[1] == 0)
    rms = np.sqrt(np.mean(z ** 2, axis=1)) + 1e-30
    assert np.all(np.sqrt(np.mean((yz - z) ** 2, axis=1)) / rms < 2 * RMSE_BOUND[name] + 0.01)


@pytest.mark.parametrize("name", ["Q2_K", "Q3_K", "Q4_K", "Q5_K", "Q6_K", "Q4_0", "Q4_1", "Q5_0", "Q5_1"])
def test_imatrix_lowers_weighted_error(name):
    """With a skewed importance vector the importance-weighted error must not get worse."""
    t = Q.BY_NAME[name].type_id
    rng = np.random.default_rng(6000 + t)
    x = rng.standard_normal((32, 1024)).astype(np.float32)
    imatrix = np.ones(1024, np.float32)
    imatrix[rng.choice(1024, 64, replace=False)] = 300.0
    err = {}
    for label, im in (("plain", None), ("imatrix", imatrix)):
        raw = quantize(x, t, imatrix=im)
        y = Q.dequantize(raw.reshape(-1), t, x.shape)
        assert np.array_equal(y, gguf.quants.dequantize(raw, gtype(name)))
        err[label] = float(np.sum(imatrix * (y - x) ** 2))
    assert err["imatrix"] <= err["plain"], err
    # and the plain (unweighted) error stays sane with an imatrix
    assert err["imatrix"] < 0.7 * err["plain"]


def test_imatrix_ignored_where_llama_cpp_ignores_it():
    x = np.random.default_rng(8).standard_normal((4, 256)).astype(np.float32)
    for name in ("Q8_0", "TQ1_0", "TQ2_0"):
        t = Q.BY_NAME[name].type_id
        assert np.array_equal(quantize(x, t), quantize(x, t, imatrix=np.full(256, 5.0, np.float32)))


def test_quantize_one_dimensional_input_is_one_row():
    x = np.linspace(-1, 1, 64, dtype=np.float32)
    raw = quantize(x, 8)
    assert raw.shape == (1, 68)
    np.testing.assert_allclose(Q.dequantize(raw.reshape(-1), 8, (64,)), x, atol=0.01)


# --- the real model: blocks written by llama.cpp ---------------------------------------------------

@pytest.fixture(scope="module")
def gemma():
    if not GEMMA_PATH.exists():
        pytest.skip(f"Gemma 3 270M GGUF not found at {GEMMA_PATH} (set MOTE_GEMMA_PATH)")
    reader = gguf.GGUFReader(str(GEMMA_PATH))
    smallest = {}
    for t in reader.tensors:
        name = t.tensor_type.name
        if name not in smallest or t.n_bytes < smallest[name].n_bytes:
            smallest[name] = t
    return smallest


def tensor_bytes_and_shape(t):
    raw = np.asarray(t.data).reshape(-1).view(np.uint8)                # zero-copy view of the mmap
    shape = tuple(int(s) for s in reversed(t.shape))                    # ggml ne -> numpy order
    return raw, shape


@pytest.mark.parametrize("name", ["F32", "Q8_0", "Q5_0", "Q4_K", "Q6_K"])
def test_gemma_tensor_dequantize_matches_gguf(gemma, name):
    if name not in gemma:
        pytest.skip(f"no {name} tensor in {GEMMA_PATH.name}")
    t = gemma[name]
    raw, shape = tensor_bytes_and_shape(t)
    ours = Q.dequantize(raw, int(t.tensor_type), shape)
    ref = gguf.quants.dequantize(np.asarray(t.data), t.tensor_type)
    assert ours.shape == shape
    assert np.array_equal(ours.view(np.uint32), np.asarray(ref, np.float32).reshape(shape).view(np.uint32))
    if name != "F32":
        q, scale, offset = Q.split_blocks(raw, int(t.tensor_type), shape[0])
        rebuilt = scale[..., None] * q.reshape(shape[0], -1, Q.TYPES[int(t.tensor_type)].sub_size)
        if offset is not None:
            rebuilt = rebuilt - offset[..., None]
        assert np.array_equal(rebuilt.reshape(shape), ours)


@pytest.mark.parametrize("name,min_same", [("Q8_0", 1.0), ("Q5_0", 1.0), ("Q4_K", 1.0), ("Q6_K", 0.9)])
def test_gemma_requantize_reproduces_llama_cpp_blocks(gemma, name, min_same):
    """Quantizing llama.cpp's own dequantized weights again gives back (nearly) its bytes: a check
    of the encoders against the real ggml quantizer, including Q4_K's scale search and packing."""
    if name not in gemma:
        pytest.skip(f"no {name} tensor in {GEMMA_PATH.name}")
    t = gemma[name]
    raw, shape = tensor_bytes_and_shape(t)
    w = Q.dequantize(raw, int(t.tensor_type), shape)
    again = quantize(w, int(t.tensor_type))
    assert np.mean(again.reshape(-1) == raw) >= min_same
    w2 = Q.dequantize(again.reshape(-1), int(t.tensor_type), shape)
    assert np.sqrt(np.mean((w2 - w) ** 2) / np.mean(w ** 2)) < 1e-3
