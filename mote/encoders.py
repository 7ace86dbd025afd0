"""Quantization encoders: float32 weights -> GGUF blocks, the inverse of engine/quants.py's decoders.

    quantize(x, type_id, imatrix=None) -> (n_rows, row_nbytes) uint8     llama.cpp ggml-quants.c algorithms

A CPython-only tool (the browser only decodes): `mote quantize`, the converters and the tests use it.
The byte layouts, the type table and the decoders live in engine/quants.py; this module writes the
same layouts, so every encoder here is checked by decoding its output there.

Types gguf-py implements (Q4_0 Q4_1 Q5_0 Q5_1 Q8_0 TQ1_0 TQ2_0 BF16) reproduce its bytes exactly; the
K-quants follow llama.cpp's ggml-quants.c reference functions (vectorised over all blocks; float32 sums
are taken in numpy's order, so bytes may differ from llama.cpp in rare near-ties, never in validity).
Every encoder takes x (R, nb, block_size) float32 and per-column importance qw (nb, block_size) or
None, and returns (R, nb, type_size) uint8.

Example:
    >>> from engine.quants import BY_NAME, dequantize
    >>> x = np.linspace(-1, 1, 64, dtype=np.float32).reshape(2, 32)
    >>> raw = quantize(x, BY_NAME["Q8_0"].type_id)                    # (2, 34) uint8: 1 block per row
    >>> y = dequantize(raw.reshape(-1), 8, (2, 32))                   # (2, 32) float32, |y - x| < 0.005
"""

from __future__ import annotations

import numpy as np

# The type table and the decoders' f16 widening are the ones the decoders use: one definition each.
from engine.quants import QK_K, _f16, _type, row_nbytes

GROUP_MAX_EPS = 1e-15       # ggml: a group whose |max| is below this quantizes to all zeros
_STEP = 1 << 18             # weights encoded per step (whole rows): bounds the search temporaries
_f32 = np.float32


# ---------------------------------------------------------------------------------------------
# Bit packing and scale search (ggml make_*_quants), shared by the encoders below
# ---------------------------------------------------------------------------------------------

def _f16_bytes(v: np.ndarray) -> np.ndarray:
    """(...) float32 -> (..., 2) uint8, rounded to nearest-even like GGML_FP32_TO_FP16."""
    return np.ascontiguousarray(np.asarray(v, np.float32).astype(np.float16))[..., None].view(np.uint8)


def _k_scales_pack(sc: np.ndarray, mn: np.ndarray) -> np.ndarray:
    """Inverse of quants._k_scales: (nb, 8) scales and mins in [0, 63] -> (nb, 12) uint8."""
    sc, mn = sc.astype(np.uint8), mn.astype(np.uint8)
    return np.concatenate([
        sc[:, :4] | ((sc[:, 4:] >> 4) << 6),
        mn[:, :4] | ((mn[:, 4:] >> 4) << 6),
        (sc[:, 4:] & 0x0F) | ((mn[:, 4:] & 0x0F) << 4),
    ], axis=1)


def _roundf(x: np.ndarray) -> np.ndarray:
    """C roundf (ties away from zero), exact: rint except at exact .5 fractions."""
    t = np.trunc(x)
    return np.where(np.abs(x - t) == _f32(0.5), t + np.sign(x), np.rint(x))


def _recip(d: np.ndarray) -> np.ndarray:
    """1/d in float32, 0 where d == 0 (ggml: `id = d ? 1.0f/d : 0.0f`)."""
    out = np.zeros_like(d)
    return np.divide(_f32(1), d, out=out, where=d != 0)


def _signed_absmax(x: np.ndarray) -> np.ndarray:
    """(..., n) -> (...): the first element of largest magnitude, with its sign."""
    i = np.abs(x).argmax(axis=-1)
    return np.take_along_axis(x, i[..., None], axis=-1)[..., 0]


def _pack_nibbles(L: np.ndarray) -> np.ndarray:
    """(..., 2, k) values in [0, 15] -> (..., k) bytes, first half in the low nibbles."""
    L = L.astype(np.uint8)
    return L[..., 0, :] | (L[..., 1, :] << 4)


def _pack_crumbs(L: np.ndarray) -> np.ndarray:
    """(..., 4, k) values in [0, 3] -> (..., k) bytes, value s at bits 2s."""
    L = L.astype(np.uint8)
    return L[..., 0, :] | (L[..., 1, :] << 2) | (L[..., 2, :] << 4) | (L[..., 3, :] << 6)


def _row_sigma2(x: np.ndarray) -> np.ndarray:
    """(R, nb, bs) -> (R, 1, 1): mean square over each whole row (legacy-quant imatrix weighting)."""
    return (x * x).sum(axis=(1, 2), keepdims=True) / _f32(x.shape[1] * x.shape[2])


def _make_qx(x: np.ndarray, nmax: int, w: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
    """ggml make_qx_quants(rmse_type=1), vectorised: symmetric levels l in [-nmax, nmax-1].

    x (B, n), weights w (B, n) or None (then w = x*x). Tries 19 scales around -nmax/max and keeps
    the one maximising (sum w x l)^2 / (sum w l^2). Returns scale (B,), L = l + nmax (B, n).
    """
    w = x * x if w is None else w
    mx = _signed_absmax(x)                                              # (B,)
    zero = np.abs(mx) < GROUP_MAX_EPS
    mx = np.where(zero, _f32(1), mx)
    wx = w * x                                                          # (B, n)

    def fit(iscale):
        l = np.clip(np.rint(iscale[:, None] * x), -nmax, nmax - 1)      # (B, n)
        return l, (wx * l).sum(-1), ((w * l) * l).sum(-1)

    with np.errstate(divide="ignore", invalid="ignore"):
        L, sumlx, suml2 = fit(-_f32(nmax) / mx)
        scale = np.where(suml2 != 0, sumlx / suml2, _f32(0))
        best = scale * sumlx
        for step in range(-9, 10):
            if step == 0:
                continue
            l, sumlx, suml2 = fit(-(_f32(nmax) + _f32(0.1) * _f32(step)) / mx)
            better = (suml2 > 0) & (sumlx * sumlx > best * suml2)
            L = np.where(better[:, None], l, L)
            scale = np.where(better, sumlx / suml2, scale)
            best = np.where(better, scale * sumlx, best)
    scale = np.where(zero, _f32(0), scale)
    L = np.where(zero[:, None], _f32(0), L + nmax)
    return scale.astype(np.float32), L


def _make_q3(x: np.ndarray, nmax: int) -> tuple[np.ndarray, np.ndarray]:
    """ggml make_q3_quants(do_rmse=true): like _make_qx, then up to 5 passes of per-weight
    coordinate descent on the x^2-weighted error (sequential over the n weights of a group,
    vectorised over groups). Returns scale (B,), L = l + nmax (B, n)."""
    w = x * x                                                           # (B, n)
    mx = _signed_absmax(x)
    zero = np.abs(mx) < GROUP_MAX_EPS
    mx = np.where(zero, _f32(1), mx)
    L = np.clip(np.rint((-_f32(nmax) / mx)[:, None] * x), -nmax, nmax - 1)  # (B, n)
    wx = w * x
    sumlx, suml2 = (wx * L).sum(-1), ((w * L) * L).sum(-1)              # (B,)
    with np.errstate(divide="ignore", invalid="ignore"):
        for _ in range(5):      # a pass with no change leaves the state fixed, so 5 passes == "until stable"
            for i in range(x.shape[1]):
                wi, xi, li = w[:, i], x[:, i], L[:, i]
                slx = sumlx - wx[:, i] * li
                sl2 = suml2 - (wi * li) * li
                new = np.clip(np.rint(xi * sl2 / slx), -nmax, nmax - 1)
                slx_n = slx + wx[:, i] * new
                sl2_n = sl2 + (wi * new) * new
                ok = (slx > 0) & (new != li) & (sl2_n > 0) & (slx_n * slx_n * suml2 > sumlx * sumlx * sl2_n)
                L[:, i] = np.where(ok, new, li)
                sumlx = np.where(ok, slx_n, sumlx)
                suml2 = np.where(ok, sl2_n, suml2)
        scale = np.where(suml2 > 0, sumlx / suml2, _f32(0))
    return np.where(zero, _f32(0), scale), np.where(zero[:, None], _f32(0), L + nmax)


def _make_qkx(x: np.ndarray, w: np.ndarray, nmax: int, rmin: float, rdelta: float, nstep: int,
              use_mad: bool) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """ggml make_qkx2_quants / make_qkx3_quants, vectorised: asymmetric levels l in [0, nmax].

    x, w (B, n). Fits x ~ scale * l - the_min by weighted least squares for nstep+1 trial inverse
    scales (rmin + rdelta*is + nmax) / (max - min), keeping the lowest weighted error (abs if
    use_mad). min is clamped to <= 0. Returns scale (B,), the_min (B,) >= 0, L (B, n).
    """
    xmin = np.minimum(x.min(-1), _f32(0))                               # (B,)
    xmax = x.max(-1)
    flat = ~(xmax > xmin)                                               # constant (or NaN) group
    span = np.where(flat, _f32(1), xmax - xmin)
    sum_w = w.sum(-1)
    sum_x = (w * x).sum(-1)

    def err(scale, mn, L):
        diff = (scale[:, None] * L + mn[:, None]) - x
        return (w * (np.abs(diff) if use_mad else diff * diff)).sum(-1)

    def levels(iscale, mn):
        # min may have moved close to max, so v can be huge, inf or NaN: v > 0 ? round(min(v, nmax)) : 0
        v = iscale[:, None] * (x - mn[:, None])
        return np.where(v > 0, np.rint(np.minimum(v, _f32(nmax))), _f32(0))

    with np.errstate(divide="ignore", invalid="ignore"):
        iscale = _f32(nmax) / span
        scale = _f32(1) / iscale
        mn = xmin
        L = levels(iscale, mn)
        best = err(scale, mn, L)
        for step in range(nstep + 1):
            # as in ggml, each trial starts from the best (scale, min) found so far
            Lt = levels((_f32(rmin) + _f32(rdelta) * _f32(step) + _f32(nmax)) / (xmax - mn), mn)
            wl = w * Lt
            sum_l, sum_l2, sum_xl = wl.sum(-1), (wl * Lt).sum(-1), (wl * x).sum(-1)
            D = sum_w * sum_l2 - sum_l * sum_l
            t_scale = (sum_w * sum_xl - sum_x * sum_l) / D
            t_min = (sum_l2 * sum_x - sum_l * sum_xl) / D
            pos = t_min > 0                                             # min must stay <= 0
            t_scale = np.where(pos, sum_xl / sum_l2, t_scale)
            t_min = np.where(pos, _f32(0), t_min)
            cur = err(t_scale, t_min, Lt)
            better = (D > 0) & (cur < best)
            L = np.where(better[:, None], Lt, L)
            best = np.where(better, cur, best)
            scale = np.where(better, t_scale, scale)
            mn = np.where(better, t_min, mn)
    scale = np.where(flat, _f32(0), scale)
    mn = np.where(flat, xmin, mn)
    L = np.where(flat[:, None], _f32(0), L)
    return scale.astype(np.float32), (-mn).astype(np.float32), L


def _make_qp(x: np.ndarray, nmax: int, w: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """ggml make_qp_quants: quantize non-negative super-block scales x (B, n) to l in [0, nmax]
    with importance w (B, n): best of 9 trial scales, then coordinate descent. Returns d (B,), L (B, n)."""
    mx = x.max(-1)                                                      # (B,)
    zero = mx < GROUP_MAX_EPS
    mx = np.where(zero, _f32(1), mx)
    with np.errstate(divide="ignore", invalid="ignore"):
        iscale = _f32(nmax) / mx
        L = np.rint(iscale[:, None] * x)
        diff = x - (_f32(1) / iscale)[:, None] * L
        best = ((w * diff) * diff).sum(-1)
        for step in (-4, -3, -2, -1, 1, 2, 3, 4):
            is_t = (_f32(0.1) * _f32(step) + _f32(nmax)) / mx
            l = np.minimum(np.rint(is_t[:, None] * x), nmax)
            diff = x - (_f32(1) / is_t)[:, None] * l
            mse = ((w * diff) * diff).sum(-1)
            better = mse < best
            best = np.where(better, mse, best)
            iscale = np.where(better, is_t, iscale)
        L = np.minimum(np.rint(iscale[:, None] * x), nmax)              # (B, n)
        wx = w * x
        sumlx, suml2 = (wx * L).sum(-1), ((w * L) * L).sum(-1)
        for _ in range(5):
            for i in range(x.shape[1]):
                wi, xi, li = w[:, i], x[:, i], L[:, i]
                slx = sumlx - wx[:, i] * li
                sl2 = suml2 - (wi * li) * li
                new = np.minimum(np.rint(xi * sl2 / slx), nmax)
                slx_n = slx + wx[:, i] * new
                sl2_n = sl2 + (wi * new) * new
                ok = (slx > 0) & (sl2 > 0) & (new != li) & (slx_n * slx_n * suml2 > sumlx * sumlx * sl2_n)
                L[:, i] = np.where(ok, new, li)
                sumlx = np.where(ok, slx_n, sumlx)
                suml2 = np.where(ok, sl2_n, suml2)
        d = np.where(suml2 > 0, sumlx / suml2, _f32(0))
    return np.where(zero, _f32(0), d).astype(np.float32), np.where(zero[:, None], _f32(0), L)


def _imatrix_weights(x: np.ndarray, qw: np.ndarray, sigma2: np.ndarray) -> np.ndarray:
    """llama.cpp's importance weight per value: qw * sqrt(sigma2 + x^2)."""
    return qw * np.sqrt(sigma2 + x * x)


def _superblocks(x: np.ndarray, qw: np.ndarray | None):
    """(R, nb, 256) values and (nb, 256) importances -> (B, 256) each (qw broadcast over rows)."""
    flat = x.reshape(-1, QK_K)
    if qw is None:
        return flat, None
    return flat, np.broadcast_to(qw, x.shape).reshape(-1, QK_K)


# --- gguf-py / ggml reference encoders for the 32-weight formats --------------------------------

def _quant_q8_0(x, qw):
    d = np.abs(x).max(-1, keepdims=True) / _f32(127)                    # (R, nb, 1)
    q = _roundf(x * _recip(d)).astype(np.int8)                          # (R, nb, 32)
    return np.concatenate([_f16_bytes(d[..., 0]), q.view(np.uint8)], axis=-1)


def _symmetric_32(x, qw, nmax):
    """Q4_0 (nmax 8) / Q5_0 (nmax 16): d = max / -nmax, q = trunc(x/d + nmax + 0.5) in [0, 2*nmax-1].
    With an imatrix: ggml quantize_row_q{4,5}_0_impl (make_qx_quants with weights)."""
    if qw is None:
        d = _signed_absmax(x)[..., None] / _f32(-nmax)                  # (R, nb, 1)
        q = np.trunc(x * _recip(d) + _f32(nmax + 0.5)).astype(np.uint8)
        return d[..., 0], np.minimum(q, 2 * nmax - 1)                   # (R, nb), (R, nb, 32)
    w = _imatrix_weights(x, qw, _row_sigma2(x)).reshape(-1, 32)
    d, L = _make_qx(x.reshape(-1, 32), nmax, w)
    return d.reshape(x.shape[:2]), L.reshape(x.shape).astype(np.uint8)


def _asymmetric_32(x, qw, nmax):
    """Q4_1 (nmax 15) / Q5_1 (nmax 31): d = (max - min) / nmax, m = min, q = trunc((x - min)/d + 0.5).
    With an imatrix: ggml quantize_row_q{4,5}_1_impl (make_qkx3_quants with weights)."""
    if qw is None:
        mn = x.min(-1, keepdims=True)                                   # (R, nb, 1)
        d = (x.max(-1, keepdims=True) - mn) / _f32(nmax)
        q = np.trunc((x - mn) * _recip(d) + _f32(0.5)).astype(np.uint8)
        return d[..., 0], mn[..., 0], np.minimum(q, nmax)
    w = _imatrix_weights(x, qw, _row_sigma2(x)).reshape(-1, 32)
    d, neg_min, L = _make_qkx(x.reshape(-1, 32), w, nmax, -0.9, 0.05, 36, False)
    return d.reshape(x.shape[:2]), -neg_min.reshape(x.shape[:2]), L.reshape(x.shape).astype(np.uint8)


def _quant_q4_0(x, qw):
    d, q = _symmetric_32(x, qw, 8)
    return np.concatenate([_f16_bytes(d), _pack_nibbles(q.reshape(*q.shape[:2], 2, 16))], axis=-1)


def _quant_q4_1(x, qw):
    d, m, q = _asymmetric_32(x, qw, 15)
    return np.concatenate([_f16_bytes(d), _f16_bytes(m), _pack_nibbles(q.reshape(*q.shape[:2], 2, 16))], axis=-1)


def _q5_pack(q):
    """(R, nb, 32) values in [0, 31] -> qh (R, nb, 4) bit j = 5th bit of q[j], qs (R, nb, 16)."""
    qh = np.packbits(q >> 4, axis=-1, bitorder="little")
    return qh, _pack_nibbles((q & 0x0F).reshape(*q.shape[:2], 2, 16))


def _quant_q5_0(x, qw):
    d, q = _symmetric_32(x, qw, 16)
    return np.concatenate([_f16_bytes(d), *_q5_pack(q)], axis=-1)


def _quant_q5_1(x, qw):
    d, m, q = _asymmetric_32(x, qw, 31)
    return np.concatenate([_f16_bytes(d), _f16_bytes(m), *_q5_pack(q)], axis=-1)


# --- ternary (gguf-py / ggml quantize_row_tq*_ref) ------------------------------------------------

def _ternary(x):
    """(R, nb, 256) -> d (R, nb), trits (R, nb, 256) in {0, 1, 2} = roundf(x / absmax) + 1."""
    d = np.abs(x).max(-1, keepdims=True)
    return d[..., 0], (_roundf(x * _recip(d)) + 1).astype(np.uint8)


def _pack_trits(t, n):
    """(..., n, k) trits -> (..., k) bytes: base-3 number, first trit most significant, scaled to
    a byte by ceil(v * 256 / 243) so that dequantize's (byte * 3^p * 3) >> 8 reads trit p."""
    v = np.zeros(t.shape[:-2] + t.shape[-1:], np.uint16)
    for p in range(n):
        v = v * 3 + t[..., p, :]
    v = v * 3 ** (5 - n)                                                # 4-trit bytes: pad to 5 trits
    return ((v * 256 + 242) // 243).astype(np.uint8)


def _quant_tq1_0(x, qw):
    d, t = _ternary(x)
    R, nb = t.shape[:2]
    qs0 = _pack_trits(t[..., :160].reshape(R, nb, 5, 32), 5)            # (R, nb, 32)
    qs1 = _pack_trits(t[..., 160:240].reshape(R, nb, 5, 16), 5)         # (R, nb, 16)
    qh = _pack_trits(t[..., 240:].reshape(R, nb, 4, 4), 4)              # (R, nb, 4)
    return np.concatenate([qs0, qs1, qh, _f16_bytes(d)], axis=-1)


def _quant_tq2_0(x, qw):
    d, t = _ternary(x)
    qs = _pack_crumbs(t.reshape(*t.shape[:2], 2, 4, 32)).reshape(*t.shape[:2], 64)
    return np.concatenate([qs, _f16_bytes(d)], axis=-1)


# --- K-quants (llama.cpp quantize_row_q*_K_ref, and quantize_row_q*_K_impl with an imatrix) ---------

def _requant(x, d, dmin, lo, hi, L_prev):
    """Recompute levels against the f16-rounded scales: l = round((x + dmin) / d) clipped to
    [lo, hi]; groups whose scale is 0 keep their previous levels (ggml `if (!d) continue`).
    x, L_prev (B, G, n); d, dmin (B, G) or dmin None."""
    with np.errstate(divide="ignore", invalid="ignore"):
        num = x if dmin is None else x + dmin[..., None]
        l = np.clip(np.rint(num / d[..., None]), lo, hi)
    return np.where((d != 0)[..., None], l, L_prev)


def _quant_q2_k(x, qw):
    xb, wb = _superblocks(x, qw)                                        # (B, 256)
    B = xb.shape[0]
    xs = xb.reshape(-1, 16)                                             # (B*16, 16)
    if wb is None:
        sc, mn, L = _make_qkx(xs, np.abs(xs), 3, -0.5, 0.1, 15, True)
        sc, mn = sc.reshape(B, 16), mn.reshape(B, 16)
        max_sc, max_mn = sc.max(-1), mn.max(-1)                         # (B,)
        with np.errstate(divide="ignore", invalid="ignore"):
            ls = np.where((max_sc > 0)[:, None], np.rint((_f32(15) / max_sc)[:, None] * sc), 0)
            lm = np.where((max_mn > 0)[:, None], np.rint((_f32(15) / max_mn)[:, None] * mn), 0)
        d = np.where(max_sc > 0, max_sc / _f32(15), _f32(0))
        dmin = np.where(max_mn > 0, max_mn / _f32(15), _f32(0))
    else:
        sigma2 = (xb * xb).sum(-1, keepdims=True) / _f32(QK_K)         # (B, 1)
        w = _imatrix_weights(xb, wb, sigma2).reshape(-1, 16)            # (B*16, 16)
        sc, mn, L = _make_qkx(xs, w, 3, -0.9, 0.05, 36, False)
        sw = w.sum(-1).reshape(B, 16)
        d, ls = _make_qp(sc.reshape(B, 16), 15, sw)
        dmin, lm = _make_qp(mn.reshape(B, 16), 15, sw)
    d_b, dmin_b = _f16_bytes(d), _f16_bytes(dmin)                       # (B, 2) each
    ls, lm = ls.astype(np.uint8), lm.astype(np.uint8)                   # (B, 16) each
    L = _requant(xb.reshape(B, 16, 16), _f16(d_b)[:, None] * ls.astype(np.float32),
                 _f16(dmin_b)[:, None] * lm.astype(np.float32), 0, 3, L.reshape(B, 16, 16))
    qs = _pack_crumbs(L.reshape(B, 2, 4, 32)).reshape(B, 64)            # (B, 64)
    out = np.concatenate([ls | (lm << 4), qs, d_b, dmin_b], axis=-1)    # (B, 84)
    return out.reshape(*x.shape[:2], -1)


def _quant_q3_k(x, qw):
    xb, wb = _superblocks(x, qw)                                        # (B, 256)
    B = xb.shape[0]
    xs = xb.reshape(-1, 16)                                             # (B*16, 16)
    if wb is None:
        sc, L = _make_q3(xs, 4)
        sc = sc.reshape(B, 16)
        max_sc = _signed_absmax(sc)                                     # (B,)
        with np.errstate(divide="ignore", invalid="ignore"):
            iscale = np.where(max_sc != 0, _f32(-32) / max_sc, _f32(0))
            ls = np.clip(np.rint(iscale[:, None] * sc), -32, 31) + 32   # (B, 16) in [0, 63]
            d = np.where(max_sc != 0, _f32(1) / iscale, _f32(0))
        ls = np.where((max_sc != 0)[:, None], ls, 0)
    else:
        sigma2 = _f32(2) * (xb * xb).sum(-1, keepdims=True) / _f32(QK_K)
        w = _imatrix_weights(xb, wb, sigma2).reshape(-1, 16)
        sc, L = _make_qx(xs, 4, w)
        d, ls = _make_qx(sc.reshape(B, 16), 32, w.sum(-1).reshape(B, 16))
    ls = ls.astype(np.uint8)
    d_b = _f16_bytes(d)                                                 # (B, 2)
    dl = _f16(d_b)[:, None] * (ls.astype(np.float32) - _f32(32))        # (B, 16)
    L = _requant(xb.reshape(B, 16, 16), dl, None, -4, 3, L.reshape(B, 16, 16) - 4) + 4
    L = L.reshape(B, QK_K).astype(np.uint8)                             # (B, 256) in [0, 7]
    hmask = np.zeros((B, 32), np.uint8)
    for bit in range(8):                                                # weight 32*bit + l -> byte l
        hmask |= (L[:, 32 * bit:32 * bit + 32] >> 2) << bit
    qs = _pack_crumbs((L & 3).reshape(B, 2, 4, 32)).reshape(B, 64)
    s = np.zeros((B, 12), np.uint8)
    s[:, 0:8] = (ls[:, 0:8] & 0x0F) | ((ls[:, 8:16] & 0x0F) << 4)
    hi = ls >> 4                                                        # (B, 16) in [0, 3]
    s[:, 8:12] = hi[:, 0:4] | (hi[:, 4:8] << 2) | (hi[:, 8:12] << 4) | (hi[:, 12:16] << 6)
    return np.concatenate([hmask, qs, s, d_b], axis=-1).reshape(*x.shape[:2], -1)


def _k_asymmetric(x, qw, nmax):
    """Shared body of Q4_K (nmax 15) and Q5_K (nmax 31): 8 groups of 32 with 6-bit scales/mins.
    Returns d bytes (B, 2), dmin bytes (B, 2), packed scales (B, 12), levels L (B, 256)."""
    xb, wb = _superblocks(x, qw)                                        # (B, 256)
    B = xb.shape[0]
    xs = xb.reshape(-1, 32)                                             # (B*8, 32)
    if wb is None:
        av_x = np.sqrt((xs * xs).sum(-1, keepdims=True) / _f32(32))     # (B*8, 1)
        rmin, rdelta, nstep = (-1.0, 0.1, 20) if nmax == 15 else (-0.5, 0.1, 15)
        sc, mn, L = _make_qkx(xs, av_x + np.abs(xs), nmax, rmin, rdelta, nstep, False)
        sc, mn = sc.reshape(B, 8), mn.reshape(B, 8)
        max_sc, max_mn = sc.max(-1), mn.max(-1)                         # (B,)
        with np.errstate(divide="ignore", invalid="ignore"):
            inv_s = np.where(max_sc > 0, _f32(63) / max_sc, _f32(0))
            inv_m = np.where(max_mn > 0, _f32(63) / max_mn, _f32(0))
        ls = np.minimum(np.rint(inv_s[:, None] * sc), 63)
        lm = np.minimum(np.rint(inv_m[:, None] * mn), 63)
        d, dmin = max_sc / _f32(63), max_mn / _f32(63)
    else:
        sigma2 = _f32(2) * (xb * xb).sum(-1, keepdims=True) / _f32(QK_K)   # (B, 1)
        w = _imatrix_weights(xb, wb, sigma2).reshape(-1, 32)            # (B*8, 32)
        sc, mn, L = _make_qkx(xs, w, nmax, -0.9, 0.05, 36, False)
        sw = w.sum(-1).reshape(B, 8)
        d, ls = _make_qp(sc.reshape(B, 8), 63, sw)
        dmin, lm = _make_qp(mn.reshape(B, 8), 63, sw)
    ls, lm = ls.astype(np.uint8), lm.astype(np.uint8)                   # (B, 8) each
    d_b, dmin_b = _f16_bytes(d), _f16_bytes(dmin)
    L = _requant(xb.reshape(B, 8, 32), _f16(d_b)[:, None] * ls.astype(np.float32),
                 _f16(dmin_b)[:, None] * lm.astype(np.float32), 0, nmax, L.reshape(B, 8, 32))
    return d_b, dmin_b, _k_scales_pack(ls, lm), L.reshape(B, QK_K).astype(np.uint8)


def _quant_q4_k(x, qw):
    d_b, dmin_b, s, L = _k_asymmetric(x, qw, 15)
    qs = _pack_nibbles(L.reshape(-1, 4, 2, 32)).reshape(-1, 128)        # (B, 128)
    return np.concatenate([d_b, dmin_b, s, qs], axis=-1).reshape(*x.shape[:2], -1)


def _quant_q5_k(x, qw):
    d_b, dmin_b, s, L = _k_asymmetric(x, qw, 31)
    qs = _pack_nibbles((L & 0x0F).reshape(-1, 4, 2, 32)).reshape(-1, 128)   # (B, 128)
    high = (L >> 4).reshape(-1, 8, 32)                                  # (B, 8, 32): weight 32*b + l
    qh = np.zeros((L.shape[0], 32), np.uint8)
    for bit in range(8):
        qh |= high[:, bit] << bit
    return np.concatenate([d_b, dmin_b, s, qh, qs], axis=-1).reshape(*x.shape[:2], -1)


def _quant_q6_k(x, qw):
    xb, wb = _superblocks(x, qw)                                        # (B, 256)
    B = xb.shape[0]
    xs = xb.reshape(-1, 16)                                             # (B*16, 16)
    sc, L = _make_qx(xs, 32, None if wb is None else wb.reshape(-1, 16))
    sc = sc.reshape(B, 16)
    max_sc = _signed_absmax(sc)                                         # (B,)
    zero = np.abs(max_sc) < GROUP_MAX_EPS
    with np.errstate(divide="ignore", invalid="ignore"):
        iscale = np.where(zero, _f32(0), _f32(-128) / np.where(zero, _f32(1), max_sc))
        d = np.where(zero, _f32(0), _f32(1) / iscale)
    ls = np.minimum(np.rint(iscale[:, None] * sc), 127).astype(np.int8)  # (B, 16)
    d_b = _f16_bytes(d)
    dl = _f16(d_b)[:, None] * ls.astype(np.float32)                     # (B, 16)
    L = _requant(xb.reshape(B, 16, 16), dl, None, -32, 31, L.reshape(B, 16, 16) - 32) + 32
    L = L.reshape(B, QK_K).astype(np.uint8)                             # (B, 256) in [0, 63]
    ql = _pack_nibbles((L & 0x0F).reshape(B, 2, 2, 64)).reshape(B, 128)
    qh = _pack_crumbs((L >> 4).reshape(B, 2, 4, 32)).reshape(B, 64)
    out = np.concatenate([ql, qh, ls.view(np.uint8), d_b], axis=-1)     # (B, 210)
    out[zero] = 0                                                       # ggml: an all-zero block
    return out.reshape(*x.shape[:2], -1)


_QUANTIZE = {
    2: _quant_q4_0, 3: _quant_q4_1, 6: _quant_q5_0, 7: _quant_q5_1, 8: _quant_q8_0,
    10: _quant_q2_k, 11: _quant_q3_k, 12: _quant_q4_k, 13: _quant_q5_k, 14: _quant_q6_k,
    34: _quant_tq1_0, 35: _quant_tq2_0,
}
# Types whose llama.cpp quantizer ignores the importance matrix (ggml quantize_q8_0 / tq*_0).
_NO_IMATRIX = {8, 34, 35}


def _bf16_bytes(x: np.ndarray) -> np.ndarray:
    """float32 -> bf16 bits, round to nearest even, NaNs kept quiet (ggml_compute_fp32_to_bf16)."""
    u = x.view(np.uint32).astype(np.uint64)
    nan = (u & 0x7FFFFFFF) > 0x7F800000
    rounded = (u + 0x7FFF + ((u >> 16) & 1)) >> 16
    quiet = ((u & 0xFFFF0000) | 0x00400000) >> 16
    return np.where(nan, quiet, rounded).astype(np.uint16).view(np.uint8)


def quantize(x: np.ndarray, type_id: int, imatrix: np.ndarray | None = None) -> np.ndarray:
    """Encode float weights (..., n_cols) as blocks: returns (n_rows, row_nbytes) uint8.

    `imatrix` (n_cols,) are per-column importances (llama-imatrix's mean squared activations);
    they steer the scale search of the K-quants and Q4_0/Q4_1/Q5_0/Q5_1 like llama.cpp's
    quantize_row_*_impl. Q8_0, TQ1_0, TQ2_0 and the float types ignore it, as llama.cpp does.
    """
    qt = _type(type_id)
    x = np.asarray(x, dtype=np.float32)
    if x.ndim == 0:
        raise ValueError("quantize needs at least a 1-D array of weights, got a scalar")
    n_cols = x.shape[-1]
    nbytes = row_nbytes(type_id, n_cols)
    rows = np.ascontiguousarray(x.reshape(-1, n_cols))                  # (R, n_cols)
    if qt.is_float:
        if qt.name == "F32":
            return rows.view(np.uint8).copy()
        if qt.name == "F16":
            return rows.astype(np.float16).view(np.uint8)
        return _bf16_bytes(rows)
    qw = None
    if imatrix is not None and qt.type_id not in _NO_IMATRIX:
        qw = np.asarray(imatrix, dtype=np.float32)
        if qw.shape != (n_cols,):
            raise ValueError(f"imatrix must have shape ({n_cols},) to match the rows, got {qw.shape}")
        qw = qw.reshape(-1, qt.block_size)                              # (nb, block_size)
    blocks = rows.reshape(rows.shape[0], -1, qt.block_size)             # (R, nb, block_size)
    out = np.empty((rows.shape[0], nbytes), np.uint8)                   # (R, row_nbytes)
    per_step = max(1, _STEP // max(n_cols, 1))                          # whole rows
    for start in range(0, rows.shape[0], per_step):                     # bounds the search temporaries
        stop = start + per_step
        out[start:stop] = _QUANTIZE[qt.type_id](blocks[start:stop], qw).reshape(-1, nbytes)
    return out
