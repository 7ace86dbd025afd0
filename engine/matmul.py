"""Products with quantized weights (pipeline stage: quants.py -> matmul.py -> model.py).

This is the kernel module: the one place in the engine allowed to be clever. Every fast path sits
beside its naive reference (`reference_linear`: dequantize the whole matrix, then multiply), is
tested against it in tests/test_matmul.py (natively and inside Pyodide), and is measured by
`mote/bench/kernels.py` (table in docs/kernels.md).

A weight is prepared once at load time into one of two resident forms:

- `DenseLinear`: the matrix dequantized to float32 (4 bytes/weight). Natively numpy hands the
  product to BLAS (`matmul`); in Pyodide there is no BLAS and `einsum` is faster than `matmul`
  (its inner loop is a plain multiply-add over a contiguous row; docs/kernels.md).
- `BlockLinear`: int8 values plus one float32 scale (and offset) per sub-block, from
  `quants.split_blocks` (about 1 byte/weight; for Q8_0 the file's own bytes). Every block format
  in quants.py (Q8_0, Q4_0, Q5_0, Q4_K, Q5_K, Q6_K, Q2_K, Q3_K, TQ1_0, TQ2_0, ...) is
  `scale * q - offset` per sub-block, so one set of kernels serves them all; what differs between
  types is only the sub-block length (16, 32 or 256) and whether there is an offset.

A matrix-vector product with sub-block scales has four formulations here, all computing
    y[r] = sum_s scale[r, s] * (q[r, s, :] . x[s, :])  -  sum_s offset[r, s] * sum(x[s, :])
chunk by chunk (a few hundred rows into a reused float32 buffer, so no float copy of the matrix):

    "scale"       buf = q * scale (broadcast per sub-block), then buf @ x       (the first version)
    "subdot"      buf = float(q); for each sub-block s: P[s] = buf[:, s] @ x[s]; y = sum_s scale * P
    "einsum"      buf = float(q); P = einsum('rsk,sk->rs', buf, x); y = sum_s scale * P
    "transposed"  q repacked at load to (n_in, n_out): buf = float(q_T chunk of columns);
                  P = einsum('sk,skr->sr', x, buf), whose inner loop runs along the rows

Which one wins depends on the runtime and the shape (see docs/kernels.md): natively the cast
plus BLAS per-sub-block products ("subdot") beats the broadcast multiply, whose inner loop is only
one sub-block long; in Pyodide the int8 -> float32 cast dominates and "transposed" keeps every
loop long. `choose_kernel` uses the measured table by default (reproducible outputs and memory);
MOTE_KERNEL=auto times the candidates once per (runtime, shape, sub-block) on a slice of the real
matrix at load time instead, and MOTE_KERNEL=<name> forces one.

Products over several tokens (prefill) dequantize a chunk with "scale" and use one matrix-matrix
product per chunk (BLAS natively; einsum in Pyodide), which is already efficient.

Tried and dropped (numbers in docs/kernels.md): int16 weights times int16-quantized activations
(per-sub-block sums overflow int16 for 8-bit weights, and the short per-sub-block loops make it
only a little faster than the float path in Pyodide, at twice the memory and with activation
rounding); einsum with a dtype= cast (buffered, slower than one explicit cast).
"""

from __future__ import annotations

import math
import os
import sys
import threading
import time

import numpy as np

from . import quants

ON_WASM = sys.platform == "emscripten"  # Pyodide: no BLAS, no threads

# Rows per chunk: big enough to amortise Python overhead, small enough that the float32 chunk
# (rows * n_in * 4 bytes) stays in the CPU's L2 cache.
CHUNK_BYTES = 1 << 20

KERNELS = ("scale", "subdot", "einsum", "transposed")
CALIBRATION_ROWS = 1024  # rows of the real matrix timed per candidate kernel at load time
# "transposed" repacks q (1 byte/weight). For a matrix that is a view of the file (Q8_0) that
# copy is extra memory, allowed only below this size (Gemma's 262144 x 640 head would add 160 MB).
COPY_VIEW_LIMIT_MB = 64.0
# "transposed" reads each chunk as a band of columns of (n_in, n_out): rows n_out bytes apart. On a
# tall matrix (the LM head) that defeats the caches, and a slice timed at load would not show it.
TRANSPOSED_MAX_ROWS = 8192
_CHOSEN: dict[tuple, str] = {}  # (runtime, n_out, n_in, sub, offset?, file view?) -> kernel name

# Natively, numpy releases the GIL inside casts and einsum loops, so a tall matrix (the LM head)
# is split into row bands computed by a small thread pool. Pyodide has no threads: one band.
THREADS = 1 if ON_WASM else max(1, min(int(os.environ.get("MOTE_THREADS", os.cpu_count() or 1)), 8))
THREAD_MIN_ROWS = 32768  # below this, thread hand-off costs more than it saves
_POOL = None


_LOCAL = threading.local()

# np.einsum without `optimize` hands its arguments straight to this C function; calling it directly
# skips the Python wrapper and the __array_function__ dispatch, which in Pyodide costs more than
# the arithmetic of a small call; a token makes thousands of such calls (the same numbers either way).
# Unlike np.einsum it refuses out=None, so callers pass `out` only when they have one.
_einsum = getattr(getattr(getattr(np, "_core", None), "_multiarray_umath", None), "c_einsum", np.einsum)


def _scratch(name: str, shape: tuple[int, ...]) -> np.ndarray:
    """A float32 working buffer of `shape`, reused across calls and matrices (one set per thread).

    One buffer per name, as large as the largest shape asked for, viewed at each shape: a model's
    matrices ask for many shapes, and one buffer per shape would hold several MB each for the
    whole session (WASM memory never shrinks)."""
    cache = getattr(_LOCAL, "bufs", None)
    if cache is None:
        cache = _LOCAL.bufs = {}
    n = math.prod(shape)
    buf = cache.get(name)
    if buf is None or buf.size < n:
        buf = cache[name] = np.empty(n, dtype=np.float32)
    return buf[:n].reshape(shape)


def relay_scratch() -> None:
    """Free this thread's scratch buffers and make them again at their present sizes, largest
    first, in one run: after a warm-up (packed.reserve_scratch) that grew them step by step, and
    left each outgrown buffer's block as a hole the heap keeps."""
    cache = getattr(_LOCAL, "bufs", None)
    if cache:
        sizes = sorted(((buf.size, name) for name, buf in cache.items()), reverse=True)
        cache.clear()
        for n, name in sizes:
            cache[name] = np.empty(n, dtype=np.float32)


def _pool():
    global _POOL
    if _POOL is None:
        from concurrent.futures import ThreadPoolExecutor

        _POOL = ThreadPoolExecutor(max_workers=THREADS, thread_name_prefix="mote-matmul")
    return _POOL


def reference_linear(raw: np.ndarray, ggml_type: int, shape: tuple[int, int], x: np.ndarray) -> np.ndarray:
    """Naive reference: y = x @ W.T with W dequantized in full. x: (..., n_in) -> (..., n_out)."""
    w = quants.dequantize(raw, ggml_type, shape)  # (n_out, n_in) float32
    return x @ w.T


def dense_matvec(w: np.ndarray, x: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
    """y = w @ x for a float32 (n_out, n_in) matrix and (n_in,) vector, fastest per runtime."""
    if ON_WASM:
        return _einsum("ij,j->i", w, x) if out is None else _einsum("ij,j->i", w, x, out=out)  # (n_out,) ~2x matmul
    return np.matmul(w, x, out=out)  # (n_out,) BLAS gemv


def dense_matmul(x: np.ndarray, w: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
    """y = x @ w.T for x (n, n_in), w (n_out, n_in): BLAS gemm natively, einsum in Pyodide."""
    if ON_WASM:
        return _einsum("ij,kj->ki", w, x) if out is None else _einsum("ij,kj->ki", w, x, out=out)  # (n, n_out)
    return np.matmul(x, w.T, out=out)  # (n, n_out)


class DenseLinear:
    """y = x @ W.T with W resident as float32."""

    def __init__(self, w: np.ndarray):
        self.w = np.ascontiguousarray(w, dtype=np.float32)  # (n_out, n_in)
        self.n_out, self.n_in = self.w.shape
        self.kernel = "dense"
        self.copied = True  # holds no view of the file

    @property
    def nbytes(self) -> int:
        return self.w.nbytes

    def __call__(self, x: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
        x = np.asarray(x, dtype=np.float32)
        if x.size == self.n_in:  # one token: matrix-vector product
            y = dense_matvec(self.w, x.reshape(self.n_in), None if out is None else out.reshape(self.n_out))  # (n_out,)
            return y.reshape(*x.shape[:-1], self.n_out)
        x2 = np.ascontiguousarray(x.reshape(-1, self.n_in))  # (n, n_in)
        y = dense_matmul(x2, self.w, None if out is None else out.reshape(-1, self.n_out))  # (n, n_out)
        return y.reshape(*x.shape[:-1], self.n_out)

    def rows(self, x: np.ndarray) -> np.ndarray:
        """Several tokens, each row bit-identical to a one-token call (the verify pass of lookup
        decoding, engine/lookup.py): one matrix-vector product per row. x: (n, n_in) -> (n, n_out)."""
        x2 = np.ascontiguousarray(np.asarray(x, dtype=np.float32).reshape(-1, self.n_in))  # (n, n_in)
        y = np.empty((x2.shape[0], self.n_out), np.float32)  # (n, n_out)
        for j in range(x2.shape[0]):
            dense_matvec(self.w, x2[j], out=y[j])  # (n_out,)
        return y


class BlockLinear:
    """y = x @ W.T with W = scale * q - offset per sub-block, never dequantized in full.

    q: (n_out, n_sub, sub) int8 (may be a strided view of the file's blocks, for Q8_0);
    scale, offset: (n_out, n_sub) float32 (offset None for symmetric types).
    kernel: one of KERNELS, or None to let `choose_kernel` time them on this matrix.
    """

    def __init__(self, q: np.ndarray, scale: np.ndarray, offset: np.ndarray | None, kernel: str | None = None,
                 threads: int | None = None):
        n_out, n_sub, sub = q.shape
        self.n_out, self.n_in, self.n_sub, self.sub = n_out, n_sub * sub, n_sub, sub
        self.scale = np.ascontiguousarray(scale, dtype=np.float32)  # (n_out, n_sub)
        self.offset = None if offset is None else np.ascontiguousarray(offset, dtype=np.float32)  # (n_out, n_sub)
        if kernel is None:
            kernel = choose_kernel(q, self.scale, self.offset)
        if kernel not in KERNELS:
            raise ValueError(f"unknown kernel {kernel!r} (expected one of {', '.join(KERNELS)})")
        self.kernel = kernel
        self.chunk = max(16, min(n_out, CHUNK_BYTES // (4 * self.n_in)))  # rows per chunk
        if kernel == "transposed":
            self.q = None
            self.qT = np.ascontiguousarray(q.reshape(n_out, self.n_in).T)  # (n_in, n_out) int8
            self.scaleT = np.ascontiguousarray(self.scale.T)  # (n_sub, n_out)
        else:
            self.q = q  # (n_out, n_sub, sub), kept as given (a strided view of the file for Q8_0)
        # False only while q is a strided view of the file (then the file's pages must stay)
        self.copied = self.q is None or self.q.base is None or self.q.flags.c_contiguous
        self.compacted = False  # True when q was compacted in the model's buffer (compact_q8_0)
        # Row bands for the thread pool (tall matrices, native only): each band its own buffers.
        self._bands = []
        threads = THREADS if threads is None else threads
        if threads > 1 and n_out >= THREAD_MIN_ROWS and self.q is not None:
            edges = [n_out * t // threads for t in range(threads + 1)]
            self._bands = [
                (a, b, BlockLinear(q[a:b], self.scale[a:b], None if offset is None else self.offset[a:b], kernel, 1))
                for a, b in zip(edges, edges[1:])
            ]

    # Working buffers: shared by every matrix of the same chunk shape (per thread), not one set per
    # matrix; a model has ~130 block matrices, which would otherwise hold ~1 MB of scratch each.
    @property
    def _buf(self) -> np.ndarray:
        return _scratch("buf", (self.chunk, self.n_sub, self.sub))  # (chunk, n_sub, sub) f32

    @property
    def _part(self) -> np.ndarray:
        return _scratch("part", (self.chunk, self.n_sub))  # per-sub-block dot products

    @property
    def _partT(self) -> np.ndarray:
        return _scratch("partT", (self.n_sub, self.chunk))

    @property
    def _bufT(self) -> np.ndarray:
        return _scratch("bufT", (self.n_in, self.chunk))  # columns of W.T

    @property
    def nbytes(self) -> int:
        """Bytes this matrix holds itself (not the file's pages, not the shared scratch)."""
        own = self.qT.nbytes if self.q is None else (self.q.nbytes if self.copied else 0)
        extra = self.scale.nbytes + (self.scaleT.nbytes if self.q is None else 0)
        return own + extra + (0 if self.offset is None else self.offset.nbytes)

    # ---- the product ----------------------------------------------------------------------------

    def __call__(self, x: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
        x = np.asarray(x, dtype=np.float32)
        if x.size == self.n_in:  # one token, (n_in,) or (1, n_in) as model.forward passes it in decode
            y = np.empty(self.n_out, np.float32) if out is None else out.reshape(self.n_out)  # (n_out,)
            x1 = np.ascontiguousarray(x.reshape(self.n_in))  # (n_in,)
            if self._bands:  # row bands in parallel threads, each writing its slice of y
                jobs = [_pool().submit(band, x1, y[a:b]) for a, b, band in self._bands]
                for job in jobs:
                    job.result()
                return y.reshape(*x.shape[:-1], self.n_out)
            getattr(self, "_mv_" + self.kernel)(x1, y)
            self._minus_offset(x1, y)
            return y.reshape(*x.shape[:-1], self.n_out)
        x2 = np.ascontiguousarray(x.reshape(-1, self.n_in))  # (n, n_in)
        y2 = np.empty((x2.shape[0], self.n_out), np.float32) if out is None else out.reshape(-1, self.n_out)
        self._mm(x2, y2)
        if self.offset is not None:
            xsum = x2.reshape(-1, self.n_sub, self.sub).sum(axis=2)  # (n, n_sub)
            y2 -= dense_matmul(xsum, self.offset)  # (n, n_out)
        return y2.reshape(*x.shape[:-1], self.n_out)

    def rows(self, x: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
        """Several tokens, each row bit-identical to a one-token call `self(x[j])`, for the verify
        pass of lookup decoding (engine/lookup.py): the one-token kernel's exact calls per row, but
        each chunk of weights is cast to float32 once for all rows (the cast is most of a token's
        cost in Pyodide). x: (n, n_in) -> (n, n_out)."""
        x2 = np.ascontiguousarray(np.asarray(x, dtype=np.float32).reshape(-1, self.n_in))  # (n, n_in)
        y2 = np.empty((x2.shape[0], self.n_out), np.float32) if out is None else out  # (n, n_out)
        if self._bands:  # row bands in parallel threads, as a one-token call splits them
            jobs = [_pool().submit(band.rows, x2, y2[:, a:b]) for a, b, band in self._bands]
            for job in jobs:
                job.result()
            return y2
        shared = {"einsum": self._mv_einsum, "subdot": self._mv_subdot}.get(self.kernel)
        if shared is not None:
            shared(x2, y2)
        else:  # "scale" and "transposed" (forced only): one call per row
            for j in range(x2.shape[0]):
                getattr(self, "_mv_" + self.kernel)(x2[j], y2[j])
        for j in range(x2.shape[0]):
            self._minus_offset(x2[j], y2[j])
        return y2

    def _minus_offset(self, x1: np.ndarray, y: np.ndarray) -> None:
        """One token's y -= offset @ (per-sub-block sums of x): x1 (n_in,), y (n_out,) in place."""
        if self.offset is not None:
            xsum = x1.reshape(self.n_sub, self.sub).sum(axis=1)  # (n_sub,) per-sub-block sums of x
            y -= dense_matvec(self.offset, xsum)  # (n_out,)

    def _rows(self) -> list[tuple[int, int]]:
        """(start, count) of each chunk of rows (computed once)."""
        rows = self.__dict__.get("_row_chunks")
        if rows is None:
            rows = self._row_chunks = [(i, min(self.chunk, self.n_out - i)) for i in range(0, self.n_out, self.chunk)]
        return rows

    def _dequant_chunk(self, i: int, c: int) -> np.ndarray:
        """Rows i..i+c of W without the offset, into the reused buffer: (c, n_in) float32."""
        src = self.q[i : i + c] if self.q is not None else self.qT[:, i : i + c].T.reshape(c, self.n_sub, self.sub)
        np.multiply(src, self.scale[i : i + c, :, None], out=self._buf[:c])  # (c, n_sub, sub)
        return self._buf[:c].reshape(c, self.n_in)

    def _mm(self, x2: np.ndarray, y2: np.ndarray) -> None:
        """Several tokens: dequantize a chunk, one matrix-matrix product per chunk."""
        for i, c in self._rows():
            dense_matmul(x2, self._dequant_chunk(i, c), out=y2[:, i : i + c])  # (n, c)

    def _mv_scale(self, x: np.ndarray, y: np.ndarray) -> None:
        for i, c in self._rows():
            dense_matvec(self._dequant_chunk(i, c), x, out=y[i : i + c])  # (c,)

    # The "subdot" and "einsum" kernels take x (n_in,) -> y (n_out,), or x (n, n_in) -> y (n, n_out)
    # from `rows`: each chunk is cast once, then every row gets the one-token calls on it.

    def _mv_subdot(self, x: np.ndarray, y: np.ndarray) -> None:
        sub, part = self.sub, self._partT
        xr, yr = x.reshape(-1, self.n_in), y.reshape(-1, self.n_out)  # (n, n_in), (n, n_out)
        for i, c in self._rows():
            np.copyto(self._buf[:c], self.q[i : i + c], casting="unsafe")  # (c, n_sub, sub) int8 -> f32
            buf = self._buf[:c].reshape(c, self.n_in)  # (c, n_in)
            for xj, yj in zip(xr, yr):
                for s in range(self.n_sub):  # one strided gemv per sub-block column band
                    dense_matvec(buf[:, s * sub : (s + 1) * sub], xj[s * sub : (s + 1) * sub], out=part[s, :c])
                _einsum("sr,rs->r", part[:, :c], self.scale[i : i + c], out=yj[i : i + c])  # (c,)

    def _mv_einsum(self, x: np.ndarray, y: np.ndarray) -> None:
        part, buf, q, scale = self._part, self._buf, self.q, self.scale
        xs = x.reshape(-1, self.n_sub, self.sub)  # (n, n_sub, sub)
        yr = y.reshape(-1, self.n_out)  # (n, n_out)
        for i, c in self._rows():
            b = buf[:c]  # (c, n_sub, sub) f32
            np.copyto(b, q[i : i + c], casting="unsafe")
            for xj, yj in zip(xs, yr):
                _einsum("rsk,sk->rs", b, xj, out=part[:c])  # (c, n_sub)
                _einsum("rs,rs->r", part[:c], scale[i : i + c], out=yj[i : i + c])  # (c,)

    def _mv_transposed(self, x: np.ndarray, y: np.ndarray) -> None:
        xs, part, bufT = x.reshape(self.n_sub, self.sub), self._partT, self._bufT
        for i, c in self._rows():
            np.copyto(bufT[:, :c], self.qT[:, i : i + c], casting="unsafe")  # (n_in, c) f32
            # P[s, r] = sum_k x[s, k] * W[r, s, k]: the inner loop runs over c rows, not k
            _einsum("sk,skr->sr", xs, bufT[:, :c].reshape(self.n_sub, self.sub, c), out=part[:, :c])
            _einsum("sr,sr->r", part[:, :c], self.scaleT[:, i : i + c], out=y[i : i + c])  # (c,)


# ---- choosing a kernel at load time ---------------------------------------------------------------


def _time_call(f, budget_s: float, min_batch_s: float = 0.002) -> float:
    """Best seconds per call of f over about budget_s, timing batches of calls.

    Browser timers are coarse (about 0.1 ms), so calls are timed in batches of at least
    min_batch_s; the first call warms caches and is not counted.
    """
    f()
    n = 1
    while True:  # batch size: enough calls to fill min_batch_s
        t = time.perf_counter()
        for _ in range(n):
            f()
        dt = time.perf_counter() - t
        if dt >= min_batch_s:
            break
        n *= 2
    best, spent = dt / n, dt
    while spent < budget_s:
        t = time.perf_counter()
        for _ in range(n):
            f()
        dt = time.perf_counter() - t
        best, spent = min(best, dt / n), spent + dt
    return best


def measured_kernel(sub: int, has_offset: bool) -> str:
    """The winner per runtime from the measured table in docs/kernels.md (deterministic default).

    Natively "einsum" wins for every block type except the ternary ones (one 256-long sub-block,
    no offset), where the cast plus BLAS per-sub-block products ("subdot") wins. In Pyodide
    "einsum" and "transposed" are within noise of each other; "einsum" needs no repacked copy,
    so memory stays the same from run to run.
    """
    if not ON_WASM and sub == 256 and not has_offset:
        return "subdot"
    return "einsum"


def choose_kernel(q: np.ndarray, scale: np.ndarray, offset: np.ndarray | None, budget_s: float = 0.02) -> str:
    """The matrix-vector kernel for this runtime and shape.

    By default the measured table (`measured_kernel`): the same choice on every run, so outputs
    and memory are reproducible. MOTE_KERNEL=auto instead times each of KERNELS on the first
    CALIBRATION_ROWS rows of the real matrix (a few ms each) and caches the answer per (runtime,
    shape, sub-block); MOTE_KERNEL=<name> forces one kernel.
    """
    forced = os.environ.get("MOTE_KERNEL")
    if forced and forced != "auto":
        return forced
    n_out, n_sub, sub = q.shape
    if forced != "auto":
        return measured_kernel(sub, offset is not None)
    is_view = q.base is not None and not q.flags.c_contiguous
    key = (sys.platform, n_out, n_sub * sub, sub, offset is not None, is_view)
    if key not in _CHOSEN:
        rows = min(n_out, CALIBRATION_ROWS)
        x = np.random.default_rng(0).standard_normal(n_sub * sub).astype(np.float32)  # (n_in,)
        y = np.empty(rows, np.float32)
        lins = {}
        for name in KERNELS:
            too_big_copy = is_view and q.size > COPY_VIEW_LIMIT_MB * 2**20
            if name == "transposed" and (n_out > TRANSPOSED_MAX_ROWS or too_big_copy):
                continue
            lins[name] = BlockLinear(q[:rows], scale[:rows], None, kernel=name)
        # Round robin, best of each: a burst of load from other processes hits every candidate.
        times = dict.fromkeys(lins, float("inf"))
        for _ in range(3):
            for name, lin in lins.items():
                times[name] = min(times[name], _time_call(lambda: lin(x, out=y), budget_s / 3))
        _CHOSEN[key] = min(times, key=times.get)
    return _CHOSEN[key]


class Embedding:
    """Token embedding rows, dequantized on demand from the file's blocks (never all at once).

    `Embedding.from_block(lin)` reads the rows from a BlockLinear instead (a tied LM head whose
    Q8_0 bytes were compacted in place, see `compact_q8_0`): the same numbers, q * scale - offset.
    """

    def __init__(self, raw: np.ndarray | None, ggml_type: int, shape: tuple[int, int]):
        self.ggml_type = ggml_type
        self.n_vocab, self.d = shape
        self.block: BlockLinear | None = None
        self.rows = None if raw is None else raw.reshape(self.n_vocab, quants.row_nbytes(ggml_type, self.d))  # (n_vocab, row bytes)

    @classmethod
    def from_block(cls, lin: "BlockLinear", ggml_type: int) -> "Embedding":
        emb = cls(None, ggml_type, (lin.n_out, lin.n_in))
        emb.block = lin
        return emb

    def __call__(self, ids) -> np.ndarray:
        ids = np.asarray(ids, dtype=np.int64)
        if ids.size and (ids.min() < 0 or ids.max() >= self.n_vocab):
            raise ValueError(f"token id out of range 0..{self.n_vocab - 1}")
        if self.block is not None and not isinstance(self.block, BlockLinear):  # packed.PackedLinear
            return self.block.dequantize_rows(ids)  # (n, d)
        if self.block is not None:
            lin = self.block
            # (n, n_sub, sub) int8: rows of q, or columns of q.T for the "transposed" kernel
            q = lin.q[ids] if lin.q is not None else lin.qT[:, ids].T.reshape(len(ids), lin.n_sub, lin.sub)
            rows = q.astype(np.float32) * lin.scale[ids][:, :, None]  # (n, n_sub, sub)
            if lin.offset is not None:
                rows -= lin.offset[ids][:, :, None]
            return rows.reshape(len(ids), self.d)  # (n, d)
        picked = np.ascontiguousarray(self.rows[ids])  # (n, row bytes)
        return quants.dequantize(picked.reshape(-1), self.ggml_type, (len(ids), self.d))  # (n, d)


def compact_q8_0(raw: np.ndarray, n_out: int, n_in: int) -> tuple[np.ndarray, np.ndarray]:
    """Rewrite a Q8_0 matrix's blocks in place as contiguous int8 rows; returns (q, scale).

    Q8_0 stores each 32 weights as (f16 scale, 32 x int8), so the int8 values of a row sit in
    32-byte runs 34 bytes apart. Casting such a strided view to float32 runs numpy's strided loop
    once per 32-byte run; on contiguous rows the cast is one long loop (faster in Pyodide,
    docs/kernels.md). The scales are copied out first;
    then rows are moved down chunk by chunk: chunk k's destination ends before chunk k+1's
    source begins (32 < 34 bytes per block), and each chunk is read before it is overwritten.
    No new memory the size of the matrix, but the buffer no longer holds the file's bytes there,
    so only a buffer the model owns (LoadPolicy.own_buffer) may be compacted.

    raw: (n_out * n_in / 32 * 34,) writable uint8. Returns q: (n_out, n_in / 32, 32) int8, a
    contiguous view of raw's first n_out * n_in bytes, and scale: (n_out, n_in / 32) float32.
    """
    n_sub = n_in // 32
    blocks = raw.reshape(n_out, n_sub, 34)  # (n_out, n_sub, 34) bytes
    scale = blocks[:, :, :2].copy().view(np.float16)[:, :, 0].astype(np.float32)  # (n_out, n_sub)
    dest = raw[: n_out * n_in].view(np.int8)  # (n_out * n_in,) the compacted rows
    step = max(1, CHUNK_BYTES // (34 * n_sub))  # rows per move
    for a in range(0, n_out, step):
        b = min(n_out, a + step)
        rows = blocks[a:b, :, 2:].copy()  # (b - a, n_sub, 32) read before the write overlaps it
        dest[a * n_in : b * n_in] = rows.reshape(-1).view(np.int8)
    return dest.reshape(n_out, n_sub, 32), scale


def prepare_linear(raw: np.ndarray, ggml_type: int, shape: tuple[int, int], dense: bool, kernel: str | None = None,
                   in_place: bool = False, packed: bool = False, values: bool = False, float_scales: bool = True):
    """Resident form of a (n_out, n_in) weight: float32 when `dense` or not block-quantized.

    kernel: force a BlockLinear kernel (None: `choose_kernel` decides).
    in_place: raw belongs to this model alone and may be rearranged (Q8_0 is compacted with
        `compact_q8_0`, packed blocks planarized, when raw is writable); the result then has
        `compacted` set.
    packed: keep block types other than Q8_0 as their packed bytes (`packed.PackedLinear`)
        instead of int8 values and float32 scales.
    values: (not packed) int8 values and float32 scales laid out as the packed kernels read them
        (`PackedLinear` with values=True) where the type allows, else as `BlockLinear`.
    float_scales: (packed) Q8_0 keeps a float32 copy of its scales (`PackedLinear`).
    """
    if dense or quants.TYPES[ggml_type].is_float:
        return DenseLinear(quants.dequantize(raw, ggml_type, shape))
    n_out, n_in = shape
    rows = raw.reshape(n_out, -1)  # (n_out, row bytes)
    planar = in_place and rows.flags.writeable and rows.flags.c_contiguous
    if packed and (planar or ggml_type != quants.BY_NAME["Q8_0"].type_id):
        from .packed import PackedLinear

        return PackedLinear(rows, ggml_type, shape, planar=planar, float_scales=float_scales)
    if values and not packed:
        from .packed import VALUE_TYPES, PackedLinear

        if quants.TYPES[ggml_type].name in VALUE_TYPES:  # (another type would be planarized in place)
            lin = PackedLinear(rows, ggml_type, shape, planar=planar, values=True)
            if lin.holds_values:  # else (a Q5_0 chunk of an odd number of blocks): BlockLinear
                return lin
    if ggml_type == quants.BY_NAME["Q8_0"].type_id and in_place and raw.flags.writeable:
        q, d = compact_q8_0(raw, n_out, n_in)
        lin = BlockLinear(q, d, None, kernel)
        lin.copied, lin.compacted = False, True  # still the buffer's memory, no longer the file's bytes
        return lin
    if ggml_type == quants.BY_NAME["Q8_0"].type_id:
        # Q8_0 blocks are (f16 d, 32 x int8): use the file's int8 bytes in place, no copy.
        blocks = raw.reshape(n_out, n_in // 32, 2 + 32)  # (n_out, n_sub, 34) bytes
        d = blocks[:, :, :2].copy().view(np.float16)[:, :, 0].astype(np.float32)  # (n_out, n_sub)
        return BlockLinear(blocks[:, :, 2:].view(np.int8), d, None, kernel)
    q, scale, offset = quants.split_blocks(raw, ggml_type, n_out)  # (n_out, n_in) int8, (n_out, n_sub) f32
    sub = n_in // scale.shape[1]
    return BlockLinear(q.reshape(n_out, n_in // sub, sub), scale, offset, kernel)
