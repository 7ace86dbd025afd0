"""Block layouts: stage 2 of the pipeline (GGUF bytes -> gguf.py -> **quants.py** -> matmul.py).

A quantized GGUF tensor is a sequence of rows; each row is a sequence of fixed-size blocks, and each
block packs `block_size` weights into `type_size` bytes (small integers plus f16 scales). This module
is the one place that knows those byte layouts. Per type it has one decoder:

    dequantize(raw, type_id, shape) -> float32 weights        bit-exact with gguf-py's gguf.quants
    split_blocks(raw, type_id, n_rows) -> (q, scale, offset)  int8 weights + one scale per sub-block,
                                                              what the int8 matmul kernels keep resident

The encoders (float32 -> blocks, llama.cpp's algorithms) are a CPython tool: mote/encoders.py.

Every quantized format dequantizes as `scale * q - offset` per sub-block of `sub_size` weights, so
`dequantize` is literally `split_blocks` followed by that one broadcast multiply. The floats are
computed in the same order as gguf-py / ggml (`d * sc` first, then `* q`, then `- dmin * m`), which is
what makes both paths bit-exact with the reference, NaNs from garbage f16 scales included.

Example (Q8_0: one f16 scale d, then 32 int8 weights; each weight is d * q):
    >>> raw = np.zeros((2, 34), np.uint8); raw[:, 1] = 0x3C; raw[:, 2:] = 1   # d = 1.0 (f16 0x3C00), q = 1
    >>> y = dequantize(raw.reshape(-1), 8, (2, 32))         # (2, 32) float32, all 1.0
    >>> q, scale, offset = split_blocks(raw.reshape(-1), 8, 2)  # (2, 32) int8, (2, 1) f32, None

Only numpy and the standard library are imported (runs unchanged in Pyodide, numpy 2.0.2).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import numpy as np

QK_K = 256                  # weights per K-quant / ternary super-block
_CHUNK = 1 << 20            # weights decoded per step: bounds temporaries to a few MiB (Pyodide heap)
_f32 = np.float32


# ---------------------------------------------------------------------------------------------
# The table of types. Sizes are written as the sum of the block's parts (ggml-common.h block_*).
# sub_size: how many consecutive weights share one (scale, offset) pair in split_blocks.
# ---------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class QuantType:
    name: str
    type_id: int
    block_size: int        # weights per block
    type_size: int         # bytes per block
    sub_size: int = 0      # weights per scale in split_blocks (0: a plain float type, no blocks)

    @property
    def is_float(self) -> bool:
        return self.sub_size == 0


_TABLE = [
    # F32:  4 bytes, IEEE float32 little-endian
    QuantType("F32", 0, 1, 4),
    # F16:  2 bytes, IEEE float16
    QuantType("F16", 1, 1, 2),
    # Q4_0: d:f16 (2) | qs:16 bytes, weight j in nibble (j%16), low nibbles first; w = d * (q - 8)
    QuantType("Q4_0", 2, 32, 2 + 16, 32),
    # Q4_1: d:f16 (2) | m:f16 (2) | qs:16 (nibbles as Q4_0); w = d * q + m
    QuantType("Q4_1", 3, 32, 2 + 2 + 16, 32),
    # Q5_0: d:f16 (2) | qh:4 (bit j = 5th bit of weight j) | qs:16 (low nibbles as Q4_0); w = d * (q - 16)
    QuantType("Q5_0", 6, 32, 2 + 4 + 16, 32),
    # Q5_1: d:f16 (2) | m:f16 (2) | qh:4 | qs:16; w = d * q + m
    QuantType("Q5_1", 7, 32, 2 + 2 + 4 + 16, 32),
    # Q8_0: d:f16 (2) | qs:32 int8; w = d * q
    QuantType("Q8_0", 8, 32, 2 + 32, 32),
    # Q2_K: scales:16 (low nibble scale, high nibble min, per 16 weights) | qs:64 (2-bit, 4 per byte:
    #       byte 32*h + l holds weight 128*h + 32*s + l at bits 2s) | d:f16 (2) | dmin:f16 (2)
    #       w = (d * sc) * q - (dmin * m)
    QuantType("Q2_K", 10, QK_K, QK_K // 16 + QK_K // 4 + 2 + 2, 16),
    # Q3_K: hmask:32 (bit b of byte l: weight 32*b + l has NO -4) | qs:64 (low 2 bits, as Q2_K) |
    #       scales:12 (16 x 6-bit, biased by 32) | d:f16 (2); w = (d * (sc - 32)) * (q - 4*!hbit)
    QuantType("Q3_K", 11, QK_K, QK_K // 8 + QK_K // 4 + 12 + 2, 16),
    # Q4_K: d:f16 (2) | dmin:f16 (2) | scales:12 (8 x 6-bit scale + 8 x 6-bit min, packed) |
    #       qs:128 (byte 32*c + l: weight 64*c + l low nibble, 64*c + 32 + l high nibble)
    #       w = (d * sc) * q - (dmin * m) per 32 weights
    QuantType("Q4_K", 12, QK_K, 2 + 2 + 12 + QK_K // 2, 32),
    # Q5_K: d:f16 (2) | dmin:f16 (2) | scales:12 (as Q4_K) | qh:32 (bit b of byte l: 5th bit of
    #       weight 32*b + l) | qs:128 (low nibbles as Q4_K); w = (d * sc) * q - (dmin * m)
    QuantType("Q5_K", 13, QK_K, 2 + 2 + 12 + QK_K // 8 + QK_K // 2, 32),
    # Q6_K: ql:128 (low nibbles: byte 64*h + k -> weight 128*h + k low, 128*h + 64 + k high) |
    #       qh:64 (byte 32*h + l bits 2s..2s+1: high 2 bits of weight 128*h + 32*s + l) |
    #       scales:16 int8 (per 16 weights) | d:f16 (2); w = (d * sc) * (q - 32)
    QuantType("Q6_K", 14, QK_K, QK_K // 2 + QK_K // 4 + QK_K // 16 + 2, 16),
    # BF16: 2 bytes, the upper half of an IEEE float32
    QuantType("BF16", 30, 1, 2),
    # TQ1_0: qs:48 (5 trits per byte, base-3 fixed point: bytes 0-31 weights 32*p + m, bytes 32-47
    #        weights 160 + 16*p + m) | qh:4 (4 trits per byte, weights 240 + 4*p + j) | d:f16 (2)
    #        w = d * (t - 1), t in {0, 1, 2}
    QuantType("TQ1_0", 34, QK_K, (QK_K - 4 * QK_K // 64) // 5 + QK_K // 64 + 2, QK_K),
    # TQ2_0: qs:64 (2-bit, 4 per byte, layout as Q2_K) | d:f16 (2); w = d * (q - 1)
    QuantType("TQ2_0", 35, QK_K, QK_K // 4 + 2, QK_K),
]

TYPES: dict[int, QuantType] = {t.type_id: t for t in _TABLE}
BY_NAME: dict[str, QuantType] = {t.name: t for t in _TABLE}


def _type(type_id: int) -> QuantType:
    qt = TYPES.get(int(type_id)) if isinstance(type_id, (int, np.integer)) else None
    if qt is None:
        known = ", ".join(f"{t.name}={t.type_id}" for t in _TABLE)
        raise ValueError(f"unknown ggml type id {type_id!r} (supported: {known})")
    return qt


def row_nbytes(type_id: int, n: int) -> int:
    """Bytes taken by a row of `n` weights, e.g. row_nbytes(12, 512) == 2 * 144 for Q4_K."""
    qt = _type(type_id)
    if n < 0 or n % qt.block_size != 0:
        raise ValueError(f"{qt.name} row of {n} values is not a multiple of the block size {qt.block_size}")
    return n // qt.block_size * qt.type_size


def _as_bytes(raw) -> np.ndarray:
    """A flat uint8 view of `raw` (ndarray, bytes, memoryview, mmap); never copies, never writes."""
    if not isinstance(raw, np.ndarray):
        raw = np.frombuffer(raw, dtype=np.uint8)
    if raw.dtype != np.uint8:
        if not raw.flags.c_contiguous:
            raise ValueError(f"raw tensor bytes must be contiguous, got a strided {raw.dtype} array")
        raw = raw.reshape(-1).view(np.uint8)
    return raw.reshape(-1)


# ---------------------------------------------------------------------------------------------
# Small bit helpers shared by the decoders
# ---------------------------------------------------------------------------------------------

def _f16(b: np.ndarray) -> np.ndarray:
    """(..., 2) uint8 little-endian f16 bytes -> (...) float32 (exact widening, NaN payload kept)."""
    return np.ascontiguousarray(b).view(np.float16)[..., 0].astype(np.float32)


def _nibbles(b: np.ndarray) -> np.ndarray:
    """(..., k) uint8 -> (..., 2, k): low nibbles then high nibbles."""
    return np.stack([b & 0x0F, b >> 4], axis=-2)


def _crumbs(b: np.ndarray) -> np.ndarray:
    """(..., k) uint8 -> (..., 4, k): 2-bit fields at bits 0, 2, 4, 6."""
    return np.stack([b & 3, (b >> 2) & 3, (b >> 4) & 3, b >> 6], axis=-2)


def _bits(b: np.ndarray) -> np.ndarray:
    """(..., k) uint8 -> (..., 8, k): bit i of byte l at [..., i, l]."""
    return np.stack([(b >> i) & 1 for i in range(8)], axis=-2)


def _k_scales(s: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Q4_K/Q5_K 12-byte scale field (nb, 12) -> (scales, mins), each (nb, 8) uint8 in [0, 63].

    Bytes 0-3: scale j (6 bits) + 2 high bits of scale j+4; 4-7: min j + 2 high bits of min j+4;
    8-11: low nibble scale j+4, high nibble min j+4 (ggml get_scale_min_k4).
    """
    lo_s, lo_m, packed = s[:, 0:4], s[:, 4:8], s[:, 8:12]
    sc = np.concatenate([lo_s & 63, (packed & 0x0F) | ((lo_s >> 6) << 4)], axis=1)  # (nb, 8)
    mn = np.concatenate([lo_m & 63, (packed >> 4) | ((lo_m >> 6) << 4)], axis=1)    # (nb, 8)
    return sc, mn


# ---------------------------------------------------------------------------------------------
# Decoders: blocks (nb, type_size) uint8 -> q (nb, block_size) int8, scale (nb, n_sub) float32,
# offset (nb, n_sub) float32 or None, with weight = scale * q - offset per sub-block.
# Scales are computed exactly as gguf-py/ggml do (f16 -> f32, then d * sc in float32).
# ---------------------------------------------------------------------------------------------

Split = tuple[np.ndarray, np.ndarray, "np.ndarray | None"]


def _split_q4_0(b: np.ndarray) -> Split:
    q = _nibbles(b[:, 2:]).reshape(-1, 32).view(np.int8) - np.int8(8)   # (nb, 32) in [-8, 7]
    return q, _f16(b[:, 0:2])[:, None], None                            # d: (nb, 1)


def _split_q4_1(b: np.ndarray) -> Split:
    q = _nibbles(b[:, 4:]).reshape(-1, 32).view(np.int8)                # (nb, 32) in [0, 15]
    return q, _f16(b[:, 0:2])[:, None], -_f16(b[:, 2:4])[:, None]       # w = d*q + m = d*q - (-m)


def _q5_values(qh: np.ndarray, qs: np.ndarray) -> np.ndarray:
    """Q5_0/Q5_1: 32-bit high mask (nb, 4) + nibbles (nb, 16) -> (nb, 32) uint8 in [0, 31]."""
    high = np.unpackbits(qh, axis=1, bitorder="little")                 # (nb, 32): bit j of the u32
    return _nibbles(qs).reshape(-1, 32) | (high << 4)


# Q5_0 as int8 eight bytes at a time: value - 16 = nibble + 16 * bit - 16, as an int8 the nibble with
# high nibble 0x0 (bit set) or 0xF (bit clear). _Q5_HIGH[x] holds in byte j that high nibble for bit j
# of x; uint64 words (little-endian, as packed.py) cost a fraction of numpy's uint8 loops in Pyodide.
_Q5_HIGH = np.array([sum((0 if (x >> j) & 1 else 0xF0) << (8 * j) for j in range(8)) for x in range(256)],
                    np.uint64)  # (256,)
_LOW4 = np.uint64(0x0F0F0F0F0F0F0F0F)


def _split_q5_0(b: np.ndarray) -> Split:
    qs = np.ascontiguousarray(b[:, 6:22]).view(np.uint64)              # (nb, 2): weights j and 16 + j
    q = _Q5_HIGH[np.ascontiguousarray(b[:, 2:6])]                      # (nb, 4) uint64: high nibbles
    q[:, 0:2] |= qs & _LOW4                                            # weights 0..15: low nibbles
    q[:, 2:4] |= (qs >> np.uint64(4)) & _LOW4                          # weights 16..31: high nibbles
    return q.view(np.int8), _f16(b[:, 0:2])[:, None], None             # (nb, 32) in [-16, 15], d: (nb, 1)


def _split_q5_1(b: np.ndarray) -> Split:
    q = _q5_values(b[:, 4:8], b[:, 8:]).view(np.int8)                   # (nb, 32) in [0, 31]
    return q, _f16(b[:, 0:2])[:, None], -_f16(b[:, 2:4])[:, None]


def _split_q8_0(b: np.ndarray) -> Split:
    return b[:, 2:].view(np.int8), _f16(b[:, 0:2])[:, None], None      # (nb, 32), (nb, 1)


def _split_q2_k(b: np.ndarray) -> Split:
    sc = b[:, 0:16]                                                     # (nb, 16) scale | min << 4
    q = _crumbs(b[:, 16:80].reshape(-1, 2, 32)).reshape(-1, QK_K).view(np.int8)  # (nb, 256) in [0, 3]
    d, dmin = _f16(b[:, 80:82])[:, None], _f16(b[:, 82:84])[:, None]
    scale = d * (sc & 0x0F).astype(np.float32)                          # (nb, 16)
    offset = dmin * (sc >> 4).astype(np.float32)                        # (nb, 16)
    return q, scale, offset


def _split_q3_k(b: np.ndarray) -> Split:
    hmask, qs, s = b[:, 0:32], b[:, 32:96], b[:, 96:108]
    low = _crumbs(qs.reshape(-1, 2, 32)).reshape(-1, QK_K)             # (nb, 256) in [0, 3]
    hbit = _bits(hmask).reshape(-1, QK_K)                               # (nb, 256) in {0, 1}
    q = low.view(np.int8) - ((hbit ^ 1) << 2).view(np.int8)             # (nb, 256) in [-4, 3]
    # 16 six-bit scales: low nibbles in bytes 0-7 (scales 0-7 low, 8-15 high), 2 high bits in 8-11
    lo = np.concatenate([s[:, 0:8] & 0x0F, s[:, 0:8] >> 4], axis=1)   # (nb, 16)
    hi = _crumbs(s[:, 8:12]).reshape(-1, 16)                            # (nb, 16): j -> byte j%4, bits 2*(j//4)
    sc = ((lo | (hi << 4)).view(np.int8) - np.int8(32)).astype(np.float32)  # (nb, 16) in [-32, 31]
    return q, _f16(b[:, 108:110])[:, None] * sc, None


def _split_q4_k(b: np.ndarray) -> Split:
    d, dmin = _f16(b[:, 0:2])[:, None], _f16(b[:, 2:4])[:, None]
    sc, mn = _k_scales(b[:, 4:16])                                      # (nb, 8) each
    q = _nibbles(b[:, 16:].reshape(-1, 4, 32)).reshape(-1, QK_K).view(np.int8)  # (nb, 256) in [0, 15]
    return q, d * sc.astype(np.float32), dmin * mn.astype(np.float32)


def _split_q5_k(b: np.ndarray) -> Split:
    d, dmin = _f16(b[:, 0:2])[:, None], _f16(b[:, 2:4])[:, None]
    sc, mn = _k_scales(b[:, 4:16])                                      # (nb, 8) each
    low = _nibbles(b[:, 48:].reshape(-1, 4, 32)).reshape(-1, QK_K)     # (nb, 256)
    high = _bits(b[:, 16:48]).reshape(-1, QK_K)                         # (nb, 256)
    q = (low | (high << 4)).view(np.int8)                               # (nb, 256) in [0, 31]
    return q, d * sc.astype(np.float32), dmin * mn.astype(np.float32)


def _split_q6_k(b: np.ndarray) -> Split:
    low = _nibbles(b[:, 0:128].reshape(-1, 2, 64)).reshape(-1, QK_K)   # (nb, 256)
    high = _crumbs(b[:, 128:192].reshape(-1, 2, 32)).reshape(-1, QK_K)  # (nb, 256)
    q = (low | (high << 4)).view(np.int8) - np.int8(32)                 # (nb, 256) in [-32, 31]
    sc = b[:, 192:208].view(np.int8).astype(np.float32)                 # (nb, 16)
    return q, _f16(b[:, 208:210])[:, None] * sc, None


_POW3 = np.array([1, 3, 9, 27, 81], dtype=np.uint8)


def _trits(b: np.ndarray, n: int) -> np.ndarray:
    """(nb, k) base-3 fixed-point bytes -> (nb, n, k) trits in {0, 1, 2} (ggml dequantize_row_tq1_0).

    Multiplying by 3**p (mod 256) brings trit p to the top; (byte * 3) >> 8 reads it out.
    """
    shifted = b[:, None, :] * _POW3[:n, None]                           # (nb, n, k) uint8, wraps mod 256
    return ((shifted.astype(np.uint16) * 3) >> 8).astype(np.uint8)


def _split_tq1_0(b: np.ndarray) -> Split:
    t = np.concatenate([
        _trits(b[:, 0:32], 5).reshape(-1, 160),                         # weights 0..159
        _trits(b[:, 32:48], 5).reshape(-1, 80),                         # weights 160..239
        _trits(b[:, 48:52], 4).reshape(-1, 16),                         # weights 240..255
    ], axis=1)
    q = t.view(np.int8) - np.int8(1)                                    # (nb, 256) in [-1, 1]
    return q, _f16(b[:, 52:54])[:, None], None


def _split_tq2_0(b: np.ndarray) -> Split:
    q = _crumbs(b[:, 0:64].reshape(-1, 2, 32)).reshape(-1, QK_K).view(np.int8) - np.int8(1)
    return q, _f16(b[:, 64:66])[:, None], None                          # (nb, 256), (nb, 1)


# ATOME01 (Atome LM's blob, not a GGUF type): 2-bit codes, 4 per byte, lowest bits first,
# 00 -> 0, 01 -> +1, 11 -> -1 (10 is read as 0, as Atome's C engine does). The trits of a
# converted model are stored in GGUF as TQ1_0 (above); the blob reader (mote/convert.py) uses this.
_ATOME_CODE_TO_TRIT = np.array([0, 1, 0, -1], dtype=np.int8)


def unpack_atome_trits(packed: np.ndarray, n: int) -> np.ndarray:
    """ATOME01 2-bit codes -> n int8 trits.

    >>> unpack_atome_trits(np.array([0b11_00_01_01], np.uint8), 4)   # codes 01, 01, 00, 11
    array([ 1,  1,  0, -1], dtype=int8)
    """
    codes = (packed[:, None] >> np.array([0, 2, 4, 6], dtype=np.uint8)) & 3  # (n_bytes, 4) uint8
    return _ATOME_CODE_TO_TRIT[codes.reshape(-1)[:n]]  # (n,) int8


_SPLIT: dict[int, Callable[[np.ndarray], Split]] = {
    2: _split_q4_0, 3: _split_q4_1, 6: _split_q5_0, 7: _split_q5_1, 8: _split_q8_0,
    10: _split_q2_k, 11: _split_q3_k, 12: _split_q4_k, 13: _split_q5_k, 14: _split_q6_k,
    34: _split_tq1_0, 35: _split_tq2_0,
}


def _dequantize_floats(raw: np.ndarray, qt: QuantType) -> np.ndarray:
    """F32 / F16 / BF16 bytes -> flat float32 (a fresh, writable array)."""
    if qt.name == "F32":
        return raw.view(np.float32).copy()
    if qt.name == "F16":
        return raw.view(np.float16).astype(np.float32)
    # BF16: the stored 16 bits are the top half of the float32
    return (raw.view(np.uint16).astype(np.uint32) << 16).view(np.float32)


def dequantize(raw, type_id: int, shape) -> np.ndarray:
    """Decode a tensor's bytes into float32 weights of `shape` (numpy order, rows last).

    `raw` is read, never written (an mmap or memoryview-backed array is fine); its length must be
    exactly prod(shape[:-1]) * row_nbytes(type_id, shape[-1]). Bit-exact with gguf.quants.dequantize.
    """
    qt = _type(type_id)
    shape = (int(shape),) if isinstance(shape, (int, np.integer)) else tuple(int(s) for s in shape)
    if not shape:
        raise ValueError("tensor shape must have at least one dimension, got ()")
    raw = _as_bytes(raw)
    n_rows = math.prod(shape[:-1])
    expected = n_rows * row_nbytes(type_id, shape[-1])
    if raw.size != expected:
        raise ValueError(f"{qt.name} tensor of shape {shape} needs {expected} bytes, got {raw.size}")
    if qt.is_float:
        return _dequantize_floats(raw, qt).reshape(shape)

    blocks = raw.reshape(-1, qt.type_size)                              # (nb, type_size)
    out = np.empty((blocks.shape[0], qt.block_size), np.float32)        # (nb, block_size)
    per_step = max(1, _CHUNK // qt.block_size)
    sub = qt.sub_size
    with np.errstate(invalid="ignore", over="ignore"):                 # inf*0 from garbage f16 scales: NaN, like the reference
        for start in range(0, blocks.shape[0], per_step):               # chunks of ~1M weights, not blocks
            stop = start + per_step
            q, scale, offset = _SPLIT[qt.type_id](blocks[start:stop])
            view = out[start:stop].reshape(q.shape[0], -1, sub)         # (n, n_sub, sub)
            np.multiply(scale[:, :, None], q.reshape(view.shape), out=view)  # d * q, in float32
            if offset is not None:
                np.subtract(view, offset[:, :, None], out=view)         # ... - dmin * m
    return out.reshape(shape)


def split_blocks(raw, type_id: int, n_rows: int):
    """Split a quantized matrix into int8 weights and per-sub-block float32 scales.

    Returns q (n_rows, n_cols) int8, scale (n_rows, n_cols // sub) float32 and offset of the same
    shape or None (types without a min), where sub = TYPES[type_id].sub_size, such that
        scale[..., None] * q.reshape(n_rows, -1, sub) - offset[..., None]
    equals dequantize(raw, type_id, (n_rows, n_cols)) bit for bit, for every quantized type
    (the scales and offsets are the exact float32 products the reference computes; for Q4_1/Q5_1
    offset = -m, and x - (-m) == x + m exactly in IEEE arithmetic).
    """
    qt = _type(type_id)
    if qt.is_float:
        raise ValueError(f"split_blocks needs a quantized type, got {qt.name} (use dequantize)")
    raw = _as_bytes(raw)
    n_rows = int(n_rows)
    if n_rows <= 0 or raw.size % n_rows != 0 or (raw.size // n_rows) % qt.type_size != 0:
        raise ValueError(f"{raw.size} bytes of {qt.name} do not split into {n_rows} rows of whole "
                         f"{qt.type_size}-byte blocks")
    n_cols = raw.size // n_rows // qt.type_size * qt.block_size
    blocks = raw.reshape(-1, qt.type_size)                              # (nb, type_size)
    nb, n_sub = blocks.shape[0], qt.block_size // qt.sub_size
    q = np.empty((nb, qt.block_size), np.int8)                          # (nb, block_size)
    scale = np.empty((nb, n_sub), np.float32)                           # (nb, n_sub)
    offset = None
    per_step = max(1, _CHUNK // qt.block_size)
    for start in range(0, nb, per_step):
        stop = start + per_step
        with np.errstate(invalid="ignore", over="ignore"):
            q_c, s_c, o_c = _SPLIT[qt.type_id](blocks[start:stop])
        q[start:stop] = q_c
        scale[start:stop] = s_c
        if o_c is not None:
            if offset is None:
                offset = np.empty((nb, n_sub), np.float32)              # (nb, n_sub)
            offset[start:stop] = o_c
    scale = scale.reshape(n_rows, n_cols // qt.sub_size)
    offset = None if offset is None else offset.reshape(n_rows, n_cols // qt.sub_size)
    return q.reshape(n_rows, n_cols), scale, offset
