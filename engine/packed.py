"""Products straight from the file's packed blocks (pipeline stage: quants.py -> **packed.py** -> model.py).

`matmul.BlockLinear` keeps a quantized matrix as int8 values plus float32 scales: about 1.1 bytes
per weight, which for a 4-bit file is 2.2x the file. `PackedLinear` keeps the file's own bytes,
rearranged in place, and unpacks a chunk of a few hundred rows at a time into small reused
buffers: a model costs its file size, and nothing proportional to the weights on top. Like
matmul.py this is a kernel module (allowed to be clever); every product is tested against
`matmul.reference_linear` (dequantize everything, then multiply) in tests/test_packed.py, natively
and in Pyodide, and timed by `mote/bench/kernels.py`.

**Planes.** In the file each block interleaves its fields (Q4_K: d, dmin, scales, quants), so one
field of many blocks is a strided view of short runs, and numpy pays its per-run overhead on each.
`planarize` rewrites each chunk of rows in place as *planes*: the same field of every block, one
plane after the other. Same bytes, same size (Q4_K keeps its twelve bytes of 6-bit scales and mins
as three planes and unpacks them per chunk, seven uint64 operations on 1/12 of its bytes; Q8_0
keeps a float32 copy of its scales beside, +12 %, as matmul.BlockLinear does, unless `float_scales`
is off: then each product converts its chunk's scales, `_scales_of`). The mapped file natively is
read-only: there each chunk is planarized into scratch on every product (slower, no resident copy).

**The product of a chunk.** The small integers are unpacked with whole-plane integer operations
on bytes viewed as uint64 (one AND masks 8 nibbles), into one uint8 buffer laid out in *part
order*: for Q4_K [low nibbles of every block][high nibbles of every block]. That buffer is cast to
float32 once and reduced per sub-block against x laid out in the same order (one einsum), and the
sub-block sums are weighted by the scales (one more einsum, whose subscripts put the scales in
part order):

    y[r] = sum_j scale[r, j] * (q[r, j, :] . x[j, :])  -  sum_j offset[r, j] * sum(x[j, :])

where j runs over sub-blocks; a type whose weights are d * (q - z) has offset z * d.

**Why planes transposed.** Within a chunk each plane is stored (block, byte, row): the rows are
the fastest axis, so the einsum's inner loop runs over a few hundred rows instead of along one
16- or 32-weight sub-block, and every unpacking operation is one long contiguous loop. In
Pyodide that einsum costs ~0.4 ns per weight instead of ~0.5-0.8, which pays for the unpacking
(docs/kernels.md). Q5_0's fifth bits are stored in the order of the value bytes they belong to
(`_fifth_bits`), so that three uint64 operations per 8 weights put them in place.

Pyodide costs shape the code: a numpy call costs microseconds there, so a chunk makes about a dozen
calls whatever its size; ufuncs get their output positionally (`out=` as a keyword costs ~10 us
per call in Pyodide 0.27), and constants are 1-element arrays (a numpy scalar operand takes a
slower, buffered loop).

**Values split at load** (`values=True`, Q4_0 and Q5_0): where memory allows, a worker keeps
Q5_0 as int8 values q - z (1 + 1/8 bytes per weight with the float32 scales, as matmul.BlockLinear),
split once from the file's blocks and laid out in the planes' part order, rows last. A product skips the
unpacking (Q5_0's fifth bits cost the most of it) and keeps the einsum's inner loop over rows:
~0.77x BlockLinear's time per weight in Pyodide, where BlockLinear sums along 32-weight sub-blocks.

Fast types: Q8_0, Q4_0, Q5_0, Q4_K, Q6_K, Q2_K, Q3_K. Every other block type falls back to
`quants.split_blocks` per chunk (exact, slower, still nothing resident). Q8_0's bytes are already
the values: planarized, its chunks are int8 columns and the product is the same einsum with
its inner loop over rows, which in Pyodide is ~1.4x faster per weight than along a 32-weight
sub-block (`matmul.BlockLinear`); its scales are kept as float32 beside the planes (+12 %), as
BlockLinear keeps them, or (the compact layout) converted from the planes' float16 per product.
Read-only (the mapped file), Q8_0 stays a BlockLinear view.
"""

from __future__ import annotations

import math

import numpy as np

from . import quants
from .matmul import ON_WASM, _einsum, _scratch, dense_matmul, relay_scratch

# f32 bytes of unpacked weights per chunk. Larger than matmul.CHUNK_BYTES: each chunk pays a
# dozen numpy calls of fixed cost, and the buffers are read once, in order.
CHUNK_BYTES = 4 << 20

_U64 = np.uint64


def _c64(v: int) -> np.ndarray:
    return np.array([v], _U64)  # a constant as a 1-element array (see the module docstring)


_M4 = _c64(0x0F0F0F0F0F0F0F0F)    # low nibble of every byte
_M2 = _c64(0x0303030303030303)    # low 2 bits of every byte
_M30 = _c64(0x3030303030303030)   # bits 4-5 of every byte
_M3F = _c64(0x3F3F3F3F3F3F3F3F)   # low 6 bits of every byte
_M10 = _c64(0x1010101010101010)   # bit 4 of every byte
_M04 = _c64(0x0404040404040404)   # bit 2 of every byte
_B = {k: np.array([k], np.uint8) for k in (2, 3, 4, 6, 15, 0, 48, 63)}  # uint8 constants (masks, shifts)
_SH = [_c64(k) for k in range(8)]  # shift counts
_SHL = np.array([[4], [3], [2], [1], [0]], _U64)  # Q5_0: the shift that takes bit m of a byte to bit 4,
_SHR = np.array([[1], [2], [3]], _U64)            # m = 0..4 (left) and m = 5..7 (right)
_Z = {z: np.array([z], np.float32) for z in (4, 8, 16, 32)}  # zero points of Q3_K, Q4_0, Q5_0, Q6_K (and Q3_K's scale bias)

# Planes per type: (name, bytes per block, element size). `_planes_of` fills them from the blocks.
PLANES: dict[str, list[tuple[str, int, int]]] = {
    "Q8_0": [("qs", 32, 1), ("d", 2, 2)],                 # + side: d as float32
    "Q4_0": [("qs", 16, 1), ("d", 2, 2)],
    "Q5_0": [("qs", 16, 1), ("hb", 4, 1), ("d", 2, 2)],  # hb: the fifth bits, in value order (_fifth_bits)
    "Q4_K": [("d", 4, 2), ("s0", 4, 1), ("s1", 4, 1), ("s2", 4, 1), ("qs", 128, 1)],  # s: the 6-bit scales' bytes
    "Q6_K": [("qa0", 32, 1), ("qa1", 32, 1), ("qb0", 32, 1), ("qb1", 32, 1), ("qh0", 32, 1), ("qh1", 32, 1),
             ("sc", 16, 1), ("d", 2, 2)],
    "Q2_K": [("sc", 16, 1), ("qs", 64, 1), ("dd", 4, 2)],
    # Q3_K: hmask (bit 4h + s of byte l: weight 128h + 32s + l is NOT -4), 2-bit quants as Q2_K,
    # 16 six-bit scales as 8 bytes of low nibbles and 4 bytes of high crumbs, d
    "Q3_K": [("hm", 32, 1), ("qs", 64, 1), ("slo", 8, 1), ("shi", 4, 1), ("d", 2, 2)],
}
FAST_TYPES = frozenset(PLANES)
VALUE_TYPES = frozenset({"Q4_0", "Q5_0"})  # may be split once, at load, to int8 values (PackedLinear values=True)


def _planes_of(name: str, b: np.ndarray) -> tuple[list[np.ndarray], np.ndarray | None]:
    """Blocks (c, nb, type_size) uint8 -> the planes in PLANES order, each (c, nb, bytes), and the
    side array (Q8_0: (c, nb, 1) float32 d; else None)."""
    if name == "Q8_0":
        return [b[:, :, 2:34], b[:, :, 0:2]], np.ascontiguousarray(b[:, :, 0:2]).view(np.float16)[:, :, :1].astype(np.float32)
    if name == "Q4_0":
        return [b[:, :, 2:18], b[:, :, 0:2]], None
    if name == "Q5_0":  # qh: bit j of the 4 bytes is weight j's fifth bit
        return [b[:, :, 6:22], _fifth_bits(b[:, :, 2:6]), b[:, :, 0:2]], None
    if name == "Q4_K":  # d and dmin, the scales' three groups of 4 bytes (`_k_scales_of`), quants
        return [b[:, :, 0:4], b[:, :, 4:8], b[:, :, 8:12], b[:, :, 12:16], b[:, :, 16:144]], None
    if name == "Q6_K":  # ql bytes 64h..+31 ("qa", h) and 64h+32..+63 ("qb", h); qh bytes 128 + 32h..
        return [b[:, :, 0:32], b[:, :, 64:96], b[:, :, 32:64], b[:, :, 96:128], b[:, :, 128:160],
                b[:, :, 160:192], b[:, :, 192:208], b[:, :, 208:210]], None
    if name == "Q2_K":
        return [b[:, :, 0:16], b[:, :, 16:80], b[:, :, 80:84]], None
    if name == "Q3_K":
        return [b[:, :, 0:32], b[:, :, 32:96], b[:, :, 96:104], b[:, :, 104:108], b[:, :, 108:110]], None
    raise ValueError(f"no planar layout for {name}")


def _dtype(size: int):
    return np.uint8 if size == 1 else np.float16


def planarize(region: np.ndarray, ggml_type: int, c: int, nb: int) -> np.ndarray | None:
    """Rewrite one chunk of c rows, region = its (c * row bytes,) contiguous writable uint8 bytes, in
    place as transposed planes: plane p becomes (nb, elements per block, c), so that the rows of
    the chunk are the fastest axis. Returns the side array transposed the same way ((nb, 1, c)
    float32 d for Q8_0) or None."""
    qt = quants.TYPES[ggml_type]
    blocks = region.reshape(c, nb, qt.type_size).copy()  # (c, nb, type_size), read before the writes
    planes, side = _planes_of(qt.name, blocks)
    at = 0
    for p, (_, n, e) in zip(planes, PLANES[qt.name]):
        if p.ndim == 1:  # already in its chunk layout
            region[at : at + c * nb * n] = p
        else:  # one strided copy straight into place (as unsigned ints: the bytes move unchanged)
            u = np.uint8 if e == 1 else np.uint16
            region[at : at + c * nb * n].view(u).reshape(nb, n // e, c)[...] = p.view(u).transpose(1, 2, 0)
        at += c * nb * n
    return None if side is None else np.ascontiguousarray(side.transpose(1, 2, 0))  # (nb, 2, c)


def unplanarize(region: np.ndarray, ggml_type: int, c: int, nb: int, side: np.ndarray | None,
                rows: np.ndarray | None = None) -> np.ndarray:
    """The inverse of `planarize`, on copies: rows `rows` (default all) of the chunk as the file's
    blocks (m, nb, type_size) uint8."""
    qt = quants.TYPES[ggml_type]
    sel = slice(None) if rows is None else rows
    planes, at = {}, 0
    for name, n, e in PLANES[qt.name]:
        flat = region[at : at + c * nb * n]
        if name == "hb":  # Q5_0's fifth bits back to qh bytes
            planes[name] = _fifth_bits_inverse(flat, c, nb)[sel]  # (m, nb, 4)
        else:
            t = flat.view(_dtype(e)).reshape(nb, n // e, c)[:, :, sel]  # (nb, n / e, m)
            planes[name] = np.ascontiguousarray(t.transpose(2, 0, 1)).view(np.uint8)  # (m, nb, n)
        at += c * nb * n
    c = next(iter(planes.values())).shape[0]
    if side is not None:
        side = side[:, :, sel]
    b = np.empty((c, nb, qt.type_size), np.uint8)
    if qt.name == "Q8_0":
        b[:, :, 0:2], b[:, :, 2:] = planes["d"], planes["qs"]
    elif qt.name in ("Q4_0", "Q5_0"):
        b[:, :, 0:2] = planes["d"]
        if qt.name == "Q5_0":
            b[:, :, 2:6] = planes["hb"]
        b[:, :, -16:] = planes["qs"]
    elif qt.name == "Q4_K":
        b[:, :, 0:4], b[:, :, 16:] = planes["d"], planes["qs"]
        b[:, :, 4:8], b[:, :, 8:12], b[:, :, 12:16] = planes["s0"], planes["s1"], planes["s2"]
    elif qt.name == "Q6_K":
        for name, off in (("qa0", 0), ("qb0", 32), ("qa1", 64), ("qb1", 96), ("qh0", 128), ("qh1", 160),
                          ("sc", 192), ("d", 208)):
            b[:, :, off : off + planes[name].shape[2]] = planes[name]
    elif qt.name == "Q2_K":
        b[:, :, 0:16], b[:, :, 16:80], b[:, :, 80:84] = planes["sc"], planes["qs"], planes["dd"]
    elif qt.name == "Q3_K":
        for name, off in (("hm", 0), ("qs", 32), ("slo", 96), ("shi", 104), ("d", 108)):
            b[:, :, off : off + planes[name].shape[2]] = planes[name]
    return b


# f16 -> f32 by lookup: numpy's float16 cast is software and ~3x slower in Pyodide than a gather.
_F16 = np.arange(1 << 16, dtype=np.uint16).view(np.float16).astype(np.float32)  # (65536,)


def _f32(h: np.ndarray) -> np.ndarray:
    """float16 array -> float32 (exact) via the table."""
    return _F16[h.view(np.uint16)]


_SH13 = np.array([13], np.uint32)
_P112 = np.array([2.0**112], np.float32)


def _scales_of(h: np.ndarray, plain: bool) -> np.ndarray:
    """Q8_0's float16 block scales (nb, c) -> float32 in scratch, by their bits: a float16's exponent
    and mantissa shifted up 13 bits read as a float32 2**112 times too small, which a multiply by
    2**112 makes exact, subnormals included (1.3 ns a scale in Pyodide, where the table lookup of
    `_f32` takes 1.9 and numpy's cast 2.7). Exact for every finite scale without its sign bit
    (llama.cpp writes d = amax / 127: `plain`, see `_plain_scales`); others go through the table."""
    d = _scratch("pk_d", h.shape)
    if not plain:
        d[...] = _f32(h)
        return d
    np.left_shift(h.view(np.uint16), _SH13, d.view(np.uint32), casting="unsafe")
    return np.multiply(d, _P112, d)


def _plain_scales(h: np.ndarray) -> bool:
    """Whether float16 scales are all finite and without a sign bit (`_scales_of`'s bit path)."""
    return bool((h.view(np.uint16) < 0x7C00).all())


# ---- the matrix ---------------------------------------------------------------------------------


class PackedLinear:
    """y = x @ W.T with W kept as its packed blocks.

    raw: (n_out, row bytes) uint8, contiguous when planar.
    planar: rewrite raw in place, chunk by chunk, as transposed planes (it must be writable and
        the model's own); otherwise raw is only read (the mapped file) and each chunk is
        planarized into scratch per product.
    values: Q4_0 and Q5_0 only (VALUE_TYPES): split the weights once, at load, to int8 values in
        the planes' order (`_split_values`), for speed where memory allows; `holds_values` says
        whether it did (not for a Q5_0 chunk of an odd number of blocks, see `_fifth_bits`).
    float_scales: Q8_0 keeps its block scales as float32 beside the planes (+12 %); off, each
        product converts the chunk's float16 scales (`_scales_of`), and the matrix holds nothing
        beyond the file's bytes.
    """

    kernel = "packed"

    def __init__(self, raw: np.ndarray, ggml_type: int, shape: tuple[int, int], planar: bool = False,
                 values: bool = False, float_scales: bool = True):
        self.qt = quants.TYPES[ggml_type]
        self.ggml_type = ggml_type
        self.n_out, self.n_in = shape
        self.nb = self.n_in // self.qt.block_size  # blocks per row
        self.sub = self.qt.sub_size
        self.n_sub = self.n_in // self.sub
        self.rows_u8 = raw.reshape(self.n_out, -1)  # (n_out, row bytes)
        self.row_bytes = self.nb * self.qt.type_size
        if self.rows_u8.shape[1] != self.row_bytes or self.n_in % self.qt.block_size:
            raise ValueError(f"{self.qt.name} rows of {self.n_in} weights take {self.row_bytes} bytes, "
                             f"got {self.rows_u8.shape[1]}")
        # rows per chunk: as many as CHUNK_BYTES of float32 allow, in chunks of equal size (a short
        # last chunk would run the einsums' inner loop over few rows), a multiple of 8 rows
        most = max(8, CHUNK_BYTES // (4 * self.n_in))
        n_chunks = -(-self.n_out // most)
        self.chunk = min(self.n_out, (-(-self.n_out // n_chunks) + 7) // 8 * 8)
        self._chunks = [(i, min(self.chunk, self.n_out - i)) for i in range(0, self.n_out, self.chunk)]
        self.fast = self.qt.name in FAST_TYPES
        if self.qt.name == "Q5_0" and any(self.nb * c % 2 for _, c in self._chunks):
            self.fast = False  # its bit plane needs whole uint64 words (see _fifth_bits)
        self.holds_values = values and self.fast and self.qt.name in VALUE_TYPES
        self.planar = planar and self.fast and not self.holds_values
        if self.planar and not self.rows_u8.flags.c_contiguous:
            raise ValueError("planar packing needs the matrix's rows contiguous")
        self.copied = False            # views of the buffer: its pages stay
        self.compacted = self.planar   # the buffer no longer holds the file's bytes here
        self.sides: list = []          # per chunk: Q8_0's (nb, 1, c) float32 d, or None (float_scales off)
        self._views = None
        if self.planar:
            flat = self.rows_u8.reshape(-1)
            for i, c in self._chunks:
                side = planarize(flat[i * self.row_bytes : (i + c) * self.row_bytes], ggml_type, c, self.nb)
                self.sides.append(side if float_scales else None)
            self._views = [self._chunk_views(flat[i * self.row_bytes : (i + c) * self.row_bytes], c, side)
                           for (i, c), side in zip(self._chunks, self.sides)]
        self._kernel = "_chunk_" + ("values" if self.holds_values else self.qt.name.lower() if self.fast else "split")
        if self.holds_values:
            self._views = self._split_values()

    @property
    def nbytes(self) -> int:
        """Bytes of its own: the side arrays, and the int8 values and scales if it holds them (the
        rest are the buffer's bytes)."""
        own = sum(0 if s is None else s.nbytes for s in self.sides)
        return own + (self._values.nbytes + self._scales.nbytes if self.holds_values else 0)

    def _split_values(self) -> list[dict]:
        """`values`: every chunk's weights split once, at load, to int8 q - z (Q4_0: z = 8, Q5_0:
        16) in the kernel's part order, rows last (2, nb, 16, c), with the block scales as float32
        (nb, c). A product then casts and multiplies, as for the file's planes, without unpacking:
        1 + 1/8 bytes per weight, as matmul.BlockLinear, but the einsum's inner loop runs over rows
        (~0.77x BlockLinear's time per weight in Pyodide, docs/kernels.md). The file's bytes are
        split as for BlockLinear and transposed into place (Pyodide: 1.2x the split alone, where
        planarizing first and unpacking the planes took 1.7x)."""
        nb = self.nb
        self._values = np.empty(self.n_out * self.n_in, np.int8)
        self._scales = np.empty(self.n_out * nb, np.float32)
        views = []
        for i, c in self._chunks:
            q = self._values[i * self.n_in : (i + c) * self.n_in].reshape(2, nb, 16, c)
            d = self._scales[i * nb : (i + c) * nb].reshape(nb, c)
            split, scale, _ = self._split(self.rows_u8[i : i + c], c)  # (c, nb, 32) q - z, (c, nb) d
            q[...] = split.reshape(c, nb, 2, 16).transpose(2, 1, 3, 0)
            d[...] = scale.T
            views.append({"q": q, "d32": d})
        return views

    def _chunk_views(self, region: np.ndarray, c: int, side: np.ndarray | None) -> dict:
        """Plane name -> (nb, elements per block, c) view of a planarized chunk (and "<name>64":
        the whole plane as uint64, for byte planes)."""
        views, at = {}, 0
        for name, n, e in PLANES[self.qt.name]:
            flat = region[at : at + c * self.nb * n]
            views[name] = flat.view(_dtype(e)).reshape(self.nb, n // e, c)
            if e == 1 and flat.size % 8 == 0:
                views[name + "64"] = flat.view(_U64)
            at += c * self.nb * n
        if side is not None:
            views["d32"] = side  # Q8_0: (nb, 1, c) float32
        elif self.qt.name == "Q8_0":  # its scales converted per product
            views["plain"] = _plain_scales(views["d"])
        if self.qt.name == "Q4_K":  # the scales' planes for _k_scales_of: s0 and s1 side by side, s2
            k = 4 * self.nb * c  # bytes per plane; planes d, s0, s1, s2 from the chunk's start
            s01, s2 = region[k : 3 * k].reshape(2, self.nb, 4 * c).transpose(1, 0, 2), region[3 * k : 4 * k]
            views["s01"], views["s2"] = (s01, s2.reshape(self.nb, 4 * c)) if c % 2 else \
                (s01.view(_U64), s2.reshape(self.nb, 4 * c).view(_U64))  # words when c is even
        return views

    def _views_of(self, k: int) -> dict:
        """Chunk k's planes: views of the planarized buffer, or the file's rows planarized into scratch."""
        if self._views is not None:
            return self._views[k]
        i, c = self._chunks[k]
        region = _scratch_u8("pk_rows", (c * self.row_bytes,))
        region.reshape(c, self.row_bytes)[...] = self.rows_u8[i : i + c]
        side = planarize(region, self.ggml_type, c, self.nb)
        return self._chunk_views(region, c, side)

    # ---- per call: x in part order -------------------------------------------------------------

    def _prep(self, x: np.ndarray) -> dict:
        """x (n, n_in) -> per row: x in the part order of the values, sub-block sums, tables.

        Kept while the next matrices get the same x (attn_q, attn_k and attn_v share one; ffn_gate
        and ffn_up another): one comparison instead of the transposes and sums, a few numpy calls
        that cost microseconds each in Pyodide. Only the last x is kept, with its forms for each
        kind of matrix that took it: forms of an older x are dropped when a new x comes (after a
        64-token prefill chunk they held 8 MiB on Qwen2.5 1.5B's shard, none of it used again)."""
        key = (self.qt.name if self.fast else "split", self.n_in, self.sub)
        last = _PREPARED.get("x")
        if last is not None and last.shape == x.shape and np.array_equal(last, x):
            hit = _PREPARED.get(key)
            if hit is not None:
                return hit
        else:
            _PREPARED.clear()
            _PREPARED["x"] = x.copy()
        out = _PREPARED[key] = self._prepare(x)
        return out

    def _prepare(self, x: np.ndarray) -> dict:
        n, nb, name = x.shape[0], self.nb, self.qt.name
        xsum = x.reshape(n, self.n_sub, self.sub).sum(axis=2)  # (n, n_sub) natural order
        out = {"xsum": xsum}
        if not self.fast:
            out["x"] = x.reshape(n, self.n_sub, self.sub)
        elif name == "Q8_0":
            out["xp"] = x.reshape(n, nb, 32)
        elif name in ("Q4_0", "Q5_0"):  # parts: weights j (low nibbles), 16 + j (high)
            out["xp"] = np.ascontiguousarray(x.reshape(n, nb, 2, 16).transpose(0, 2, 1, 3))  # (n, 2, nb, 16)
            out["xz"] = (8 if name == "Q4_0" else 16) * xsum[:, :, None]  # (n, nb, 1)
        elif name == "Q4_K":  # parts: low nibbles (sub-block 2c), high (2c + 1)
            out["xp"] = np.ascontiguousarray(x.reshape(n, nb, 4, 2, 32).transpose(0, 3, 1, 2, 4))  # (n, 2, nb, 4, 32)
        elif name == "Q6_K":  # parts (s, h, block, t): weight 128h + 32s + 16t + k
            out["xp"] = np.ascontiguousarray(x.reshape(n, nb, 2, 4, 2, 16).transpose(0, 3, 2, 1, 4, 5))
            out["xz"] = np.ascontiguousarray(32 * xsum.reshape(n, nb, 2, 4, 2).transpose(0, 3, 2, 1, 4))[..., None]
        elif name in ("Q2_K", "Q3_K"):  # parts (s, block, h, t)
            out["xp"] = np.ascontiguousarray(x.reshape(n, nb, 2, 4, 2, 16).transpose(0, 3, 1, 2, 4, 5))
            if name == "Q3_K":
                out["xz"] = np.ascontiguousarray(4 * xsum.reshape(n, nb, 2, 4, 2).transpose(0, 3, 1, 2, 4))[..., None]
        return out

    # ---- the product ----------------------------------------------------------------------------

    def __call__(self, x: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
        x = np.asarray(x, dtype=np.float32)
        lead = x.shape[:-1]
        x2 = np.ascontiguousarray(x.reshape(-1, self.n_in))  # (n, n_in)
        y2 = np.empty((x2.shape[0], self.n_out), np.float32) if out is None else out.reshape(-1, self.n_out)
        if x2.shape[0] == 1:
            self._mv(x2, y2)
        else:
            self._mm(x2, y2)
        return y2.reshape(*lead, self.n_out)

    def rows(self, x: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
        """Several tokens, each row bit-identical to a one-token call (lookup decoding's verify
        pass): each chunk is unpacked and cast once, then every row gets the one-token calls."""
        x2 = np.ascontiguousarray(np.asarray(x, dtype=np.float32).reshape(-1, self.n_in))  # (n, n_in)
        y2 = np.empty((x2.shape[0], self.n_out), np.float32) if out is None else out  # (n, n_out)
        self._mv(x2, y2)
        return y2

    def _mv(self, x2: np.ndarray, y2: np.ndarray) -> None:
        """y2 (n, n_out) = each row of x2 (n, n_in) times W, with one-token arithmetic per row."""
        xp = self._prep(x2)
        run = getattr(self, self._kernel)
        for k, (i, c) in enumerate(self._chunks):
            run(self._views_of(k) if self.fast else self.rows_u8[i : i + c], c, xp, y2[:, i : i + c])

    def _nibble_halves(self, q64: np.ndarray, shape: tuple) -> np.ndarray:
        """A plane of packed nibbles (k,) uint64 -> uint8 `shape` = (2, ...): all low nibbles,
        then all high ones, each in the plane's order (scratch)."""
        u = _scratch_u8("pk_u", shape)
        u64 = u.reshape(2, -1).view(_U64)  # (2, k)
        np.bitwise_and(q64, _M4, u64[0])
        np.right_shift(q64, _SH[4], u64[1])
        np.bitwise_and(u64[1], _M4, u64[1])
        return u

    def _cast(self, u: np.ndarray) -> np.ndarray:
        w = _scratch("pk_w", u.shape)
        np.copyto(w, u, casting="unsafe")  # one cast for the chunk
        return w

    def _chunk_q8_0(self, v: dict, c: int, xp: dict, y: np.ndarray | None, dense: bool = False):
        nb = self.nb
        w = _scratch("pk_w", (nb, 32, c))
        np.copyto(w, v["qs"].view(np.int8).reshape(nb, 32, c), casting="unsafe")  # one cast for the chunk
        d = v["d32"][:, 0] if "d32" in v else _scales_of(v["d"][:, 0], v["plain"])  # (nb, c) float32
        if dense:  # prefill: the chunk's weights, in part order, rows last
            return np.multiply(w, d[:, None, :], w)
        p = _scratch("pk_p", (nb, c))
        for j in range(y.shape[0]):
            _einsum("bk,bkr->br", xp["xp"][j], w, out=p)  # (nb, c) block sums, the inner loop over rows
            _einsum("br,br->r", p, d, out=y[j])

    def _chunk_values(self, v: dict, c: int, xp: dict, y: np.ndarray | None, dense: bool = False):
        """`values` (Q4_0, Q5_0 split at load): `_chunk_q4_0` from its q - z on, without unpacking."""
        w = _scratch("pk_w", (2, self.nb, 16, c))
        np.copyto(w, v["q"], casting="unsafe")  # one cast for the chunk
        return self._half_block_sums(w, v["d32"], None, c, xp, y, dense)

    def _half_block_sums(self, w: np.ndarray, d: np.ndarray, z, c: int, xp: dict, y: np.ndarray | None, dense: bool):
        """Q4_0 / Q5_0 from a chunk's values w (2, nb, 16, c) float32 and block scales d (nb, c):
        y = d * (q - z) . x per row, or (dense) the weights d * (q - z). w holds q when the zero
        point z is given, q - z already when it is None."""
        if dense:  # prefill: d * (q - z), as the reference
            if z is not None:
                np.subtract(w, z, w)
            return np.multiply(w, d[None, :, None, :], w)
        p = _scratch("pk_p", (2, self.nb, c))
        for j in range(y.shape[0]):
            _einsum("hbk,hbkr->hbr", xp["xp"][j], w, out=p)  # (2, nb, c) half-block sums, inner loop over rows
            if z is not None:
                np.subtract(p[0], xp["xz"][j], p[0])  # - z * sum(x) once per block: w = d * (q - z)
            _einsum("hbr,br->r", p, d, out=y[j])

    def _chunk_q4_0(self, v: dict, c: int, xp: dict, y: np.ndarray | None, dense: bool = False):
        nb = self.nb
        d = _f32(v["d"][:, 0])  # (nb, c) block scales
        u = self._nibble_halves(v["qs64"], (2, nb, 16, c))  # weights j, 16 + j of each block
        if "hb64" in v:  # Q5_0: the fifth bit of each value byte, + 16 (see _fifth_bits)
            bits = v["hb64"]  # (G,)
            val = u.reshape(-1).view(_U64).reshape(8, bits.shape[0])  # (8, G): value word mG + g
            hb = _scratch_u8("pk_hb", (8, bits.shape[0] * 8)).view(_U64)  # (8, G)
            np.left_shift(bits, _SHL, hb[:5])  # bit 8k + m of word g -> bit 8k + 4, for m = 0..4
            np.right_shift(bits, _SHR, hb[5:])  # and for m = 5..7
            np.bitwise_and(hb, _M10, hb)
            np.bitwise_or(val, hb, val)
        w = _scratch("pk_w", (2, nb, 16, c))
        np.copyto(w, u, casting="unsafe")  # one cast for the chunk
        return self._half_block_sums(w, d, _Z[16 if "hb64" in v else 8], c, xp, y, dense)

    _chunk_q5_0 = _chunk_q4_0

    def _chunk_q4_k(self, v: dict, c: int, xp: dict, y: np.ndarray | None, dense: bool = False):
        nb = self.nb
        s = _scratch("pk_s", (nb, 2, 8, c))
        np.copyto(s, _k_scales_of(v, nb, c), casting="unsafe")  # 6-bit scales, mins
        np.multiply(s, _f32(v["d"])[:, :, None, :], s)  # [d * sc, dmin * m], as the reference
        w = self._cast(self._nibble_halves(v["qs64"], (2, nb, 4, 32, c)))  # sub-blocks 2c (low), 2c + 1 (high)
        scale = s[:, 0].reshape(nb, 4, 2, c)  # sub-block 2c + h
        if dense:  # prefill: scale * q - offset per sub-block, as the reference
            offset = s[:, 1].reshape(nb, 4, 2, c)
            for h in (0, 1):
                np.multiply(w[h], scale[:, :, h, None, :], w[h])
                np.subtract(w[h], offset[:, :, h, None, :], w[h])
            return w
        p = _scratch("pk_p", (2, nb, 4, c))
        for j in range(y.shape[0]):
            _einsum("hbcl,hbclr->hbcr", xp["xp"][j], w, out=p)  # (2, nb, 4, c) sub-block sums
            _einsum("hbcr,bchr->r", p, scale, out=y[j])
            y[j] -= _einsum("bjr,bj->r", s[:, 1], xp["xsum"][j].reshape(nb, 8))  # - dmin * m * sum(x)

    def _chunk_q6_k(self, v: dict, c: int, xp: dict, y: np.ndarray | None, dense: bool = False):
        nb = self.nb
        s = _scratch("pk_s", (nb, 16, c))
        np.copyto(s, v["sc"].view(np.int8), casting="unsafe")  # (nb, 16, c) int8 scales
        np.multiply(s, _f32(v["d"]), s)  # d * sc, as the reference computes it
        k = nb * 4 * c  # uint64 words per plane
        ql = _run64(v["qa064"], 4 * k)  # qa0 qa1 qb0 qb1: adjacent planes, (qa/qb, h) order
        qh = _run64(v["qh064"], 2 * k)  # qh0 qh1
        u = _scratch_u8("pk_u", (4, 2, nb, 32, c))  # values (s, h, block, l, row)
        u64 = u.reshape(2, -1).view(_U64)  # (nibble half, qa/qb x h x plane)
        np.bitwise_and(ql, _M4, u64[0])    # s = 0, 1: low nibbles of qa, qb
        np.right_shift(ql, _SH[4], u64[1])  # s = 2, 3: high nibbles
        np.bitwise_and(u64[1], _M4, u64[1])
        hb = _scratch_u8("pk_hb", (4, 2 * k * 8)).view(_U64)  # (s, h x plane): bits 2s.. of qh at 4-5
        np.left_shift(qh, _SH[4], hb[0])
        np.left_shift(qh, _SH[2], hb[1])
        hb[2] = qh
        np.right_shift(qh, _SH[2], hb[3])
        np.bitwise_and(hb, _M30, hb)
        np.bitwise_or(u64.reshape(4, -1), hb, u64.reshape(4, -1))
        w = _scratch("pk_w", (4, 2, nb, 2, 16, c))
        np.copyto(w, u.reshape(4, 2, nb, 2, 16, c), casting="unsafe")  # weight 128h + 32s + 16t + k
        scale = s.reshape(nb, 2, 4, 2, c)  # sub-block 8h + 2s + t
        if dense:  # prefill: d * sc * (q - 32), as the reference
            np.subtract(w, _Z[32], w)
            return np.multiply(w, scale.transpose(2, 1, 0, 3, 4)[..., None, :], w)
        p = _scratch("pk_p", (4, 2, nb, 2, c))
        for j in range(y.shape[0]):
            _einsum("shbtk,shbtkr->shbtr", xp["xp"][j], w, out=p)
            np.subtract(p, xp["xz"][j], p)  # - 32 * sum(x): w = d * sc * (q - 32)
            _einsum("shbtr,bhstr->r", p, scale, out=y[j])

    def _chunk_q2_k(self, v: dict, c: int, xp: dict, y: np.ndarray | None, dense: bool = False):
        nb = self.nb
        sm = _scratch_u8("pk_sm", (2, nb, 16, c))  # scale nibbles, then min nibbles
        sm64 = sm.reshape(2, -1).view(_U64)
        np.bitwise_and(v["sc64"], _M4, sm64[0])
        np.right_shift(v["sc64"], _SH[4], sm64[1])
        np.bitwise_and(sm64[1], _M4, sm64[1])
        s = _scratch("pk_s", (2, nb, 16, c))
        np.copyto(s, sm, casting="unsafe")
        dd = _f32(v["dd"])  # (nb, 2, c): d, dmin
        np.multiply(s, dd.transpose(1, 0, 2)[:, :, None, :], s)  # [d * sc, dmin * m]
        u = _scratch_u8("pk_u", (4, nb, 64, c))  # part s: bits 2s of each byte
        u64 = u.reshape(4, -1).view(_U64)
        u64[0] = v["qs64"]
        for k in (1, 2, 3):
            np.right_shift(v["qs64"], _SH[2 * k], u64[k])
        np.bitwise_and(u64, _M2, u64)
        w = _scratch("pk_w", (4, nb, 2, 2, 16, c))
        np.copyto(w, u.reshape(4, nb, 2, 2, 16, c), casting="unsafe")  # weight 128h + 32s + 16t + k
        scale = s[0].reshape(nb, 2, 4, 2, c)  # sub-block 8h + 2s + t
        if dense:  # prefill: scale * q - offset, as the reference
            np.multiply(w, scale.transpose(2, 0, 1, 3, 4)[..., None, :], w)
            return np.subtract(w, s[1].reshape(nb, 2, 4, 2, c).transpose(2, 0, 1, 3, 4)[..., None, :], w)
        p = _scratch("pk_p", (4, nb, 2, 2, c))
        for j in range(y.shape[0]):
            _einsum("sbhtk,sbhtkr->sbhtr", xp["xp"][j], w, out=p)
            _einsum("sbhtr,bhstr->r", p, scale, out=y[j])
            y[j] -= _einsum("bjr,bj->r", s[1], xp["xsum"][j].reshape(nb, 16))

    def _chunk_q3_k(self, v: dict, c: int, xp: dict, y: np.ndarray | None, dense: bool = False):
        nb = self.nb
        # scales: 6 bits = low nibble (slo byte j % 8, low/high half by j // 8) | crumb of shi
        # byte j % 4 at bits 2 * (j // 4), minus 32; times d
        sc = _scratch_u8("pk_sc", (nb, 16, c))
        np.bitwise_and(v["slo"], _B[15], sc[:, :8])
        np.right_shift(v["slo"], _B[4], sc[:, 8:])
        cr = _scratch_u8("pk_cr", (nb, 4, 4, c))  # (block, j // 4, j % 4, row)
        for k in range(4):
            np.right_shift(v["shi"], _B[2 * k], cr[:, k])
        np.bitwise_and(cr, _B[3], cr)
        np.left_shift(cr, _B[4], cr)
        np.bitwise_or(sc, cr.reshape(nb, 16, c), sc)
        s = _scratch("pk_s", (nb, 16, c))
        np.copyto(s, sc, casting="unsafe")
        np.subtract(s, _Z[32], s)  # sc - 32, exact in float32
        np.multiply(s, _f32(v["d"]), s)  # d * (sc - 32), as the reference computes it
        # values (s, block, h, l, row): 2 bits of qs at 2s | (hmask bit 4h + s) << 2, in 0..7
        u = _scratch_u8("pk_u", (4, nb, 64, c))
        u64 = u.reshape(4, -1).view(_U64)
        u64[0] = v["qs64"]
        for k in (1, 2, 3):
            np.right_shift(v["qs64"], _SH[2 * k], u64[k])
        np.bitwise_and(u64, _M2, u64)
        hm = v["hm64"].reshape(nb, 4 * c)  # (block, l x row) as words
        hb = _scratch_u8("pk_hb", (4, nb, 2, 32 * c)).view(_U64)  # (s, block, h, words)
        for part in range(4):
            for h in (0, 1):
                k = 4 * h + part  # the hmask bit of weight 128h + 32s + l
                if k >= 2:
                    np.right_shift(hm, _SH[k - 2], hb[part, :, h])
                else:
                    np.left_shift(hm, _SH[2 - k], hb[part, :, h])
        np.bitwise_and(hb, _M04, hb)
        np.bitwise_or(u64.reshape(hb.shape), hb, u64.reshape(hb.shape))
        w = _scratch("pk_w", (4, nb, 2, 2, 16, c))
        np.copyto(w, u.reshape(4, nb, 2, 2, 16, c), casting="unsafe")  # weight 128h + 32s + 16t + k
        scale = s.reshape(nb, 2, 4, 2, c)  # sub-block 8h + 2s + t
        if dense:  # prefill: d * (sc - 32) * (q - 4), as the reference
            np.subtract(w, _Z[4], w)
            return np.multiply(w, scale.transpose(2, 0, 1, 3, 4)[..., None, :], w)
        p = _scratch("pk_p", (4, nb, 2, 2, c))
        for j in range(y.shape[0]):
            _einsum("sbhtk,sbhtkr->sbhtr", xp["xp"][j], w, out=p)
            np.subtract(p, xp["xz"][j], p)  # - 4 * sum(x): values are q + 4 * hbit, weights q + 4 * hbit - 4
            _einsum("sbhtr,bhstr->r", p, scale, out=y[j])

    def _chunk_split(self, rows: np.ndarray, c: int, xp: dict, y: np.ndarray) -> None:
        q, scale, offset = self._split(rows, c)
        w = _scratch("pk_w", q.shape)
        np.copyto(w, q, casting="unsafe")
        p = _scratch("pk_p", (c, self.n_sub))
        for j in range(y.shape[0]):
            _einsum("rsk,sk->rs", w, xp["x"][j], out=p)
            _einsum("rs,rs->r", p, scale, out=y[j])
            if offset is not None:
                y[j] -= _einsum("rs,s->r", offset, xp["xsum"][j])

    def _split(self, rows: np.ndarray, c: int):
        """Rows as int8 q (c, n_sub, sub), scale and offset (c, n_sub) (quants.split_blocks)."""
        blocks = np.ascontiguousarray(rows).reshape(-1, self.qt.type_size)
        with np.errstate(invalid="ignore", over="ignore"):
            q, scale, offset = quants._SPLIT[self.ggml_type](blocks)
        return (q.reshape(c, self.n_sub, self.sub), scale.reshape(c, self.n_sub),
                None if offset is None else offset.reshape(c, self.n_sub))

    # ---- prefill and embedding rows: dequantize ---------------------------------------------------

    def _mm(self, x2: np.ndarray, y2: np.ndarray) -> None:
        """Several tokens (prefill): each chunk's weights as float32 in part order (rows last), and
        one matrix product per chunk with x in the same order (a permutation of its inputs)."""
        if not self.fast:
            for k, (i, c) in enumerate(self._chunks):
                dense_matmul(x2, self._dequantize_chunk(k), out=y2[:, i : i + c])  # (n, c)
            return
        xp = self._prep(x2)
        xs = xp["xp"].reshape(x2.shape[0], self.n_in)  # (n, n_in) in part order
        run = getattr(self, self._kernel)
        for k, (i, c) in enumerate(self._chunks):
            wt = run(self._views_of(k), c, xp, None, dense=True).reshape(self.n_in, c)  # (n_in, c)
            if ON_WASM:
                _einsum("nk,kc->nc", xs, wt, out=y2[:, i : i + c])  # inner loop along the chunk's rows
            else:
                np.matmul(xs, wt, out=y2[:, i : i + c])  # (n, c) BLAS

    def warm_scratch(self) -> None:
        """The scratch buffers this matrix's products use, at their sizes: its first (largest)
        chunk times zeros, one token and prefill (`reserve_scratch`)."""
        c = self._chunks[0][1]
        x = np.zeros((2, self.n_in), np.float32)  # (2, n_in)
        y = np.empty((1, c), np.float32)
        if not self.fast:
            self._chunk_split(self.rows_u8[:c], c, self._prepare(x[:1]), y)
            return
        run = getattr(self, self._kernel)
        run(self._views_of(0), c, self._prepare(x[:1]), y)
        run(self._views_of(0), c, self._prepare(x), None, dense=True)

    def _dequantize_chunk(self, k: int) -> np.ndarray:
        """Chunk k as float32 (c, n_in): the split fallback's prefill (never planarized)."""
        i, c = self._chunks[k]
        return quants.dequantize(np.ascontiguousarray(self.rows_u8[i : i + c]).reshape(-1), self.ggml_type, (c, self.n_in))

    def dequantize_rows(self, ids) -> np.ndarray:
        """Rows `ids` of W as float32 (len(ids), n_in), bit-exact with quants.dequantize (the
        embedding lookup of a tied head): only those rows are gathered from the planes."""
        ids = np.asarray(ids, dtype=np.int64)
        out = np.empty((len(ids), self.n_in), np.float32)  # (n, n_in)
        for k, (i, c) in enumerate(self._chunks):
            mine = (ids >= i) & (ids < i + c)
            if not mine.any():
                continue
            if self.holds_values:  # d * (q - z), as quants.dequantize computes it
                v, sel = self._views[k], ids[mine] - i
                q = v["q"][:, :, :, sel].transpose(3, 1, 0, 2).astype(np.float32)  # (m, nb, 2, 16)
                out[mine] = (q * v["d32"][:, sel].T[:, :, None, None]).reshape(-1, self.n_in)
                continue
            if self.planar:
                region = self.rows_u8.reshape(-1)[i * self.row_bytes : (i + c) * self.row_bytes]
                blocks = unplanarize(region, self.ggml_type, c, self.nb, self.sides[k], ids[mine] - i)
            else:
                blocks = np.ascontiguousarray(self.rows_u8[ids[mine]])
            out[mine] = quants.dequantize(blocks.reshape(-1), self.ggml_type, (int(mine.sum()), self.n_in))
        return out


# ---- small helpers ------------------------------------------------------------------------------

_PREPARED: dict = {}  # "x": the last x a product got; (type, n_in, sub) -> its prepared forms for that kind


def _run64(first: np.ndarray, n: int) -> np.ndarray:
    """n uint64 words from the start of `first` on: adjacent planes of a chunk read as one."""
    return np.lib.stride_tricks.as_strided(first, (n,), (8,))


def reserve_scratch(linears) -> None:
    """Make the scratch buffers once, at the largest size any of `linears` will ask for, before the
    first product. Grown on demand, a buffer outgrown by a later matrix leaves its old block as a
    hole that the forward's other arrays only partly reuse, and WASM memory never shrinks (Qwen2.5
    1.5B's second shard, Pyodide: 4.9 MiB off the peak). Every scratch shape of a kernel is a
    multiple of its chunk's rows x blocks, so one chunk of the largest matrix of each kind is run."""
    biggest: dict = {}
    for lin in linears:
        if isinstance(lin, PackedLinear):
            key = (lin.qt.name, lin.fast, lin.planar, lin.holds_values)
            if key not in biggest or lin.chunk * lin.nb > biggest[key].chunk * biggest[key].nb:
                biggest[key] = lin
    for lin in biggest.values():
        lin.warm_scratch()
    relay_scratch()


def _k_scales_of(v: dict, nb: int, c: int) -> np.ndarray:
    """Q4_K's 6-bit scales and mins from a chunk's planes s0, s1, s2 (the block's bytes 4-7, 8-11,
    12-15, each (nb, 4, c)) -> uint8 (nb, 2, 8, c) scratch: per block [scales 0-7], [mins 0-7].

    As the reference (get_scale_min_k4): value j < 4 is the low 6 bits of s0[j] (scale) or s1[j]
    (min); value 4 + j takes its low 4 bits from s2[j]'s low (scale) or high (min) nibble and its
    top 2 from the top bits of s0[j] or s1[j]. s0 and s1 are adjacent planes, so both go through
    each operation at once; a block's 4 x c bytes are uint64 words when c is even (the views
    "s01", "s2" of `PackedLinear._chunk_views`), and the output is laid out as the scales are used."""
    u = _scratch_u8("pk_sc", (nb, 2, 2, 4, c))  # (block, scale/min, values 0-3/4-7, 4, row)
    s01, s2 = v["s01"], v["s2"]  # (nb, 2, 4 * c / 8) and (nb, 4 * c / 8) words, or bytes for an odd c
    if c % 2 == 0:
        m6, m4, m30, sh2, sh4 = _M3F, _M4, _M30, _SH[2], _SH[4]
        out, t = u.reshape(nb, 2, 2, 4 * c).view(_U64), _scratch_u8("pk_sct", (2, nb, 4 * c)).view(_U64)
    else:  # an odd number of rows: the same operations byte by byte
        m6, m4, m30, sh2, sh4 = _B[63], _B[15], _B[48], _B[2], _B[4]
        out, t = u.reshape(nb, 2, 2, 4 * c), _scratch_u8("pk_sct", (2, nb, 4 * c))
    lo, hi = out[:, :, 0], out[:, :, 1]       # (nb, 2, words): scales and mins 0-3, 4-7
    np.bitwise_and(s01, m6, lo)               # values 0-3: the low 6 bits of s0 (scales), s1 (mins)
    np.right_shift(s01, sh2, hi)              # values 4-7: bits 6-7 of s0, s1 to 4-5 ...
    np.bitwise_and(hi, m30, hi)
    np.bitwise_and(s2, m4, t[0])              # ... and the low (scales), high (mins) nibble of s2
    np.right_shift(s2, sh4, t[1])
    np.bitwise_and(t[1], m4, t[1])
    np.bitwise_or(hi, t.transpose(1, 0, 2), hi)
    return u.reshape(nb, 2, 8, c)


def _scratch_u8(name: str, shape: tuple[int, ...]) -> np.ndarray:
    """A reused uint8 buffer (float32 scratch's bytes under another name), 8-byte aligned."""
    n = math.prod(shape)
    return _scratch("u8_" + name, ((n + 7) // 8 * 2,)).view(np.uint8)[:n].reshape(shape)


def _fifth_bits(qh: np.ndarray) -> np.ndarray:
    """Q5_0's fifth bits of a chunk, qh (c, nb, 4) bytes, as the "hb" plane (4 * nb * c bytes).

    The kernel unpacks nibbles into value bytes ordered (half h, block, k, row) for weight 16h + k;
    each fifth bit must land on bit 4 of its value byte. Read as uint64, the G = nb * c / 2 bit
    words serve the 8 * G value words as 8 runs of G: bit 8k + m of bit word g belongs to byte k
    of value word mG + g. Then one shift per m (two broadcast calls), one AND and one OR place
    every bit, each over contiguous (8, G) arrays: three operations per 8 weights."""
    c, nb, _ = qh.shape
    if (nb * c) % 2:
        raise ValueError("Q5_0 planes need an even number of blocks per chunk")
    bits = np.unpackbits(np.ascontiguousarray(qh), axis=2, bitorder="little")  # (c, nb, 32): weight j
    order = bits.reshape(c, nb, 2, 16).transpose(2, 1, 3, 0).reshape(8, -1, 8)  # (m, g, k) in value order
    return np.packbits(order.transpose(1, 2, 0), axis=2, bitorder="little").reshape(-1)  # (G * 8,) bytes


def _fifth_bits_inverse(plane: np.ndarray, c: int, nb: int) -> np.ndarray:
    """The "hb" plane back to qh bytes (c, nb, 4)."""
    order = np.unpackbits(plane.reshape(-1, 8, 1), axis=2, bitorder="little")  # (G, k, m)
    bits = order.transpose(2, 0, 1).reshape(2, nb, 16, c).transpose(3, 1, 0, 2).reshape(c, nb, 32)
    return np.packbits(bits, axis=2, bitorder="little")  # (c, nb, 4)
