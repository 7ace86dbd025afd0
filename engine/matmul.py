"""Products with quantized weights (pipeline stage: quants.py -> matmul.py -> model.py).

This is the kernel module: the one place in the engine allowed to be clever. Every fast path sits
beside its naive reference (`reference_linear`: dequantize the whole matrix, then multiply) and is
tested against it in tests/test_matmul.py; speed claims come from `scripts/bench_kernels.py`.

A weight is prepared once at load time into one of two resident forms:

- `DenseLinear`: the matrix dequantized to float32 (4 bytes/weight). Fastest natively, since numpy
  hands the product to BLAS.
- `BlockLinear`: int8 values plus one float32 scale (and offset) per sub-block, from
  `quants.split_blocks` (about 1 byte/weight). For Q8_0 the int8 values are a zero-copy strided
  view of the file's own bytes. A product dequantizes a few hundred rows at a time into a small
  reusable float32 buffer and multiplies that, so no full float32 copy ever exists.

`prepare_linear` picks the form from a memory policy (see `LoadPolicy` in model.py).
"""

from __future__ import annotations

import numpy as np

from . import quants

# Rows per chunk in BlockLinear: big enough to amortise Python overhead, small enough that the
# float32 chunk (rows * n_in * 4 bytes) stays in the CPU's L2 cache.
CHUNK_BYTES = 1 << 20


def reference_linear(raw: np.ndarray, ggml_type: int, shape: tuple[int, int], x: np.ndarray) -> np.ndarray:
    """Naive reference: y = x @ W.T with W dequantized in full. x: (..., n_in) -> (..., n_out)."""
    w = quants.dequantize(raw, ggml_type, shape)  # (n_out, n_in) float32
    return x @ w.T


class DenseLinear:
    """y = x @ W.T with W resident as float32."""

    def __init__(self, w: np.ndarray):
        self.w = np.ascontiguousarray(w, dtype=np.float32)  # (n_out, n_in)
        self.n_out, self.n_in = self.w.shape
        self.copied = True  # holds no view of the file
    @property
    def nbytes(self) -> int:
        return self.w.nbytes

    def __call__(self, x: np.ndarray) -> np.ndarray:
        return x @ self.w.T  # (..., n_out)


class BlockLinear:
    """y = x @ W.T with W = scale * q - offset per sub-block, dequantized chunk by chunk."""

    def __init__(self, q: np.ndarray, scale: np.ndarray, offset: np.ndarray | None):
        n_out, n_sub, sub = q.shape
        self.q = q  # (n_out, n_sub, sub) int8, may be a strided view of the file
        self.scale = np.ascontiguousarray(scale, dtype=np.float32)[:, :, None]  # (n_out, n_sub, 1)
        self.offset = None if offset is None else np.ascontiguousarray(offset, dtype=np.float32)  # (n_out, n_sub)
        self.n_out, self.n_in, self.n_sub, self.sub = n_out, n_sub * sub, n_sub, sub
        self.chunk = max(16, min(n_out, CHUNK_BYTES // (4 * self.n_in)))
        self._buf = np.empty((self.chunk, n_sub, sub), dtype=np.float32)  # reused every call
        self.copied = q.base is None or q.flags.c_contiguous  # False: q is a view of the file
    @property
    def nbytes(self) -> int:
        own = 0 if self.q.base is not None and not self.q.flags.c_contiguous else self.q.nbytes
        return own + self.scale.nbytes + (0 if self.offset is None else self.offset.nbytes) + self._buf.nbytes

    def __call__(self, x: np.ndarray) -> np.ndarray:
        squeeze = x.ndim == 1
        x2 = np.ascontiguousarray(x.reshape(-1, self.n_in), dtype=np.float32)  # (n, n_in)
        y = np.empty((x2.shape[0], self.n_out), dtype=np.float32)  # (n, n_out)
        buf, flat = self._buf, self._buf.reshape(self.chunk, self.n_in)
        for i in range(0, self.n_out, self.chunk):
            c = min(self.chunk, self.n_out - i)
            # Dequantize rows i..i+c without the offset: (c, n_sub, sub) float32.
            np.multiply(self.q[i : i + c], self.scale[i : i + c], out=buf[:c])
            if squeeze:
                np.matmul(flat[:c], x2[0], out=y[0, i : i + c])  # (c,)
            else:
                np.matmul(x2, flat[:c].T, out=y[:, i : i + c])  # (n, c)
        if self.offset is not None:
            # sum_k offset[r, s] * x[s, k] = offset @ (per-sub-block sums of x)
            xsum = x2.reshape(-1, self.n_sub, self.sub).sum(axis=2)  # (n, n_sub)
            y -= xsum @ self.offset.T  # (n, n_out)
        return y[0] if squeeze else y.reshape(*x.shape[:-1], self.n_out)


class Embedding:
    """Token embedding rows, dequantized on demand from the file's blocks (never all at once)."""

    def __init__(self, raw: np.ndarray, ggml_type: int, shape: tuple[int, int]):
        self.ggml_type = ggml_type
        self.n_vocab, self.d = shape
        self.rows = raw.reshape(self.n_vocab, quants.row_nbytes(ggml_type, self.d))  # (n_vocab, row bytes)

    def __call__(self, ids) -> np.ndarray:
        ids = np.asarray(ids, dtype=np.int64)
        if ids.size and (ids.min() < 0 or ids.max() >= self.n_vocab):
            raise ValueError(f"token id out of range 0..{self.n_vocab - 1}")
        picked = np.ascontiguousarray(self.rows[ids])  # (n, row bytes)
        return quants.dequantize(picked.reshape(-1), self.ggml_type, (len(ids), self.d))  # (n, d)


def prepare_linear(raw: np.ndarray, ggml_type: int, shape: tuple[int, int], dense: bool):
    """Resident form of a (n_out, n_in) weight: float32 when `dense` or not block-quantized."""
    if dense or ggml_type in (quants.BY_NAME["F32"].type_id, quants.BY_NAME["F16"].type_id, quants.BY_NAME["BF16"].type_id):
        return DenseLinear(quants.dequantize(raw, ggml_type, shape))
    n_out, n_in = shape
    if ggml_type == quants.BY_NAME["Q8_0"].type_id:
        # Q8_0 blocks are (f16 d, 32 x int8): use the file's int8 bytes in place, no copy.
        blocks = raw.reshape(n_out, n_in // 32, 2 + 32)  # (n_out, n_sub, 34) bytes
        d = blocks[:, :, :2].copy().view(np.float16)[:, :, 0].astype(np.float32)  # (n_out, n_sub)
        return BlockLinear(blocks[:, :, 2:].view(np.int8), d, None)
    q, scale, offset = quants.split_blocks(raw, ggml_type, n_out)  # (n_out, n_in) int8, (n_out, n_sub) f32
    sub = n_in // scale.shape[1]
    return BlockLinear(q.reshape(n_out, n_in // sub, sub), scale, offset)
