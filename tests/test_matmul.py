"""Every kernel in engine/matmul.py against the naive reference (dequantize all, then multiply).

Natively for every block type and kernel, for one token and for several; and the same check inside
headless Chromium/Pyodide (marked `browser`), where the kernels take different code paths (einsum
for dense products, and `choose_kernel` timing with the browser's coarse clock).

Tolerance: the fast kernels only reorder float32 sums (per-sub-block partial dot products, then
the scales), so |fast - ref| <= 1e-5 * max|ref| for every type; no kernel rounds activations.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

from engine import matmul, quants
from mote import encoders

TYPES = ["Q8_0", "Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q2_K", "Q3_K", "Q4_K", "Q5_K", "Q6_K", "TQ1_0", "TQ2_0"]
RTOL = 1e-5  # of max |reference|, per output row set


def _case(name: str, n_out: int = 96, n_in: int = 512, seed: int = 0):
    rng = np.random.default_rng(seed)
    w = (rng.standard_normal((n_out, n_in)) * 0.05).astype(np.float32)  # (n_out, n_in)
    tid = quants.BY_NAME[name].type_id
    return tid, encoders.quantize(w, tid).reshape(-1), rng.standard_normal((5, n_in)).astype(np.float32)


def _close(got: np.ndarray, ref: np.ndarray) -> float:
    return float(np.abs(got - ref).max() / np.abs(ref).max())


@pytest.mark.parametrize("kernel", matmul.KERNELS)
@pytest.mark.parametrize("name", TYPES)
def test_kernel_equals_reference(name, kernel):
    tid, raw, xs = _case(name)
    shape = (96, 512)
    lin = matmul.prepare_linear(raw, tid, shape, dense=False, kernel=kernel)
    assert lin.kernel == kernel
    ref1 = matmul.reference_linear(raw, tid, shape, xs[0])  # (n_out,)
    refn = matmul.reference_linear(raw, tid, shape, xs)  # (5, n_out)
    assert _close(lin(xs[0]), ref1) <= RTOL
    assert _close(lin(xs), refn) <= RTOL
    out = np.full(96, np.nan, np.float32)  # a caller's buffer is filled, not replaced
    got = lin(xs[0], out=out)
    assert np.shares_memory(got, out) and _close(out, ref1) <= RTOL
    assert lin(xs[None, :2]).shape == (1, 2, 96)  # leading dims kept


def test_dense_and_chosen_kernel():
    tid, raw, xs = _case("Q4_K", 300, 768, seed=1)
    ref = matmul.reference_linear(raw, tid, (300, 768), xs)
    dense = matmul.prepare_linear(raw, tid, (300, 768), dense=True)
    assert _close(dense(xs), ref) <= RTOL and _close(dense(xs[1]), ref[1]) <= RTOL
    chosen = matmul.prepare_linear(raw, tid, (300, 768), dense=False)
    assert chosen.kernel in matmul.KERNELS
    assert _close(chosen(xs[2]), ref[2]) <= RTOL


def test_q8_0_head_stays_a_view_of_the_file():
    """The big Q8_0 matrix (LM head) is read in place: no int8 copy, so no extra resident memory."""
    tid, raw, xs = _case("Q8_0", 64, 256)
    for kernel in ("scale", "subdot", "einsum"):
        lin = matmul.prepare_linear(raw, tid, (64, 256), dense=False, kernel=kernel)
        assert np.shares_memory(lin.q, raw) and not lin.copied
    lin = matmul.prepare_linear(raw, tid, (64, 256), dense=False, kernel="transposed")
    assert lin.copied and not np.shares_memory(lin.qT, raw)


def test_q8_0_compacted_in_place():
    """compact_q8_0: the same products and embedding rows from contiguous int8 written over the blocks."""
    tid, raw, xs = _case("Q8_0", 200, 256)
    ref = matmul.reference_linear(raw, tid, (200, 256), xs)  # (5, 200)
    before, after = b"\xaa" * 40, b"\x55" * 40
    buf = bytearray(before + raw.tobytes() + after)  # the tensor inside a bigger writable buffer
    region = np.frombuffer(buf, np.uint8, count=raw.size, offset=len(before))
    matmul.CHUNK_BYTES, chunk = 34 * 8 * 7, matmul.CHUNK_BYTES  # several moves of 7 rows
    try:
        lin = matmul.prepare_linear(region, tid, (200, 256), dense=False, in_place=True)
    finally:
        matmul.CHUNK_BYTES = chunk
    assert lin.compacted and lin.q.flags.c_contiguous and np.shares_memory(lin.q, region)
    assert bytes(buf[: len(before)]) == before and bytes(buf[-len(after):]) == after  # nothing outside moved
    assert bytes(buf[len(before) : len(before) + 10]) != raw.tobytes()[:10]  # the file's bytes are gone
    assert _close(lin(xs), ref) <= RTOL and _close(lin(xs[0]), ref[0]) <= RTOL
    emb = matmul.Embedding.from_block(lin, tid)
    ids = [0, 199, 17, 17]
    want = matmul.Embedding(raw, tid, (200, 256))(ids)  # from the untouched file bytes
    assert np.array_equal(emb(ids), want)  # bit for bit: d * q in float32 either way
    with pytest.raises(ValueError, match="out of range"):
        emb([200])
    # the same with the kernel that keeps only q.T (MOTE_KERNEL=transposed, or auto choosing it)
    buf_t = np.frombuffer(bytearray(raw.tobytes()), np.uint8)
    lin_t = matmul.prepare_linear(buf_t, tid, (200, 256), dense=False, kernel="transposed", in_place=True)
    assert lin_t.compacted and lin_t.q is None
    assert _close(lin_t(xs), ref) <= RTOL
    assert np.array_equal(matmul.Embedding.from_block(lin_t, tid)(ids), want)
    # a read-only buffer (an mmapped file) is never rearranged: the strided view stays
    ro = np.frombuffer(raw.tobytes(), np.uint8)
    lin = matmul.prepare_linear(ro, tid, (200, 256), dense=False, in_place=True)
    assert not lin.compacted and np.shares_memory(lin.q, ro) and not lin.copied


@pytest.mark.parametrize("name", ["Q8_0", "Q4_K"])
def test_row_bands_in_threads_equal_one_band(name, monkeypatch):
    """Natively a tall matrix is split into row bands computed by a thread pool: same numbers."""
    monkeypatch.setattr(matmul, "THREAD_MIN_ROWS", 64)
    tid, raw, xs = _case(name, 300, 256, seed=3)
    one = matmul.prepare_linear(raw, tid, (300, 256), dense=False, kernel="einsum")
    q, scale, offset = one.q, one.scale, one.offset
    banded = matmul.BlockLinear(q, scale, offset, "einsum", threads=3)
    assert len(banded._bands) == 3 and sum(b - a for a, b, _ in banded._bands) == 300
    assert _close(banded(xs[0]), one(xs[0])) <= 1e-6  # same rows, same kernel (BLAS blocking may differ)
    ref = matmul.reference_linear(raw, tid, (300, 256), xs[0])
    assert _close(banded(xs[0]), ref) <= RTOL


def test_unknown_kernel_is_named():
    tid, raw, _ = _case("Q8_0", 8, 64)
    with pytest.raises(ValueError, match="unknown kernel 'fast'"):
        matmul.prepare_linear(raw, tid, (8, 64), dense=False, kernel="fast")


# ---- the same check inside Chromium / Pyodide --------------------------------------------------

BROWSER_CHECK = """
import json, numpy as np, sys
from engine import matmul, quants
from mote import encoders
rng = np.random.default_rng(0)
out = {"platform": sys.platform, "cases": []}
for name in %r:
    tid = quants.BY_NAME[name].type_id
    w = (rng.standard_normal((96, 512)) * 0.05).astype(np.float32)
    raw = encoders.quantize(w, tid).reshape(-1)
    xs = rng.standard_normal((5, 512)).astype(np.float32)
    ref1 = matmul.reference_linear(raw, tid, (96, 512), xs[0])
    refn = matmul.reference_linear(raw, tid, (96, 512), xs)
    for kernel in list(matmul.KERNELS) + ["dense", None, "compacted"]:
        forced = None if kernel in ("dense", "compacted") else kernel
        src = np.frombuffer(bytearray(raw.tobytes()), np.uint8) if kernel == "compacted" else raw
        lin = matmul.prepare_linear(src, tid, (96, 512), dense=kernel == "dense", kernel=forced,
                                    in_place=kernel == "compacted")
        e1 = float(np.abs(lin(xs[0]) - ref1).max() / np.abs(ref1).max())
        en = float(np.abs(lin(xs) - refn).max() / np.abs(refn).max())
        out["cases"].append([name, "compacted" if getattr(lin, "compacted", False) else lin.kernel, e1, en])
json.dumps(out)
"""


@pytest.mark.browser
def test_kernels_equal_reference_in_pyodide():
    pytest.importorskip("playwright.sync_api")
    from tests.browser_util import CHROMIUM, ensure_static_built

    from mote.bench import kernels as bench

    static = ensure_static_built()
    with bench.pyodide_runner(static, chromium=CHROMIUM) as run:
        res = json.loads(run(BROWSER_CHECK % (TYPES,)))
    assert res["platform"] == "emscripten"
    seen = set()
    for name, kernel, e1, en in res["cases"]:
        seen.add(kernel)
        assert e1 <= RTOL and en <= RTOL, (name, kernel, e1, en)
    assert seen >= set(matmul.KERNELS) | {"dense", "compacted"}  # Q8_0 compacted in place, as the worker runs it
