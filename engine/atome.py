"""The `atome` architecture's forward pass: model.py's counterpart for Atome LM's blocks.

Atome LM (github.com/TilelliLab/atome-lm, read at commit be1218672e9adb5656c877c2dbf7b05e55d96d10)
is a byte-level language model with ternary weights built for microcontrollers. This module is
written from its C99 engine (`c_engine/upstream/atome.c`), its PyTorch model (`atome_llm/core/`)
and its exporter (`scripts/export_to_atome.py`); the C engine is the numerical reference.

The model, per token t (x is the residual stream, d = d_model):

    x_0   = s_e * E[token]                               ternary embedding, per-tensor scale s_e
    block:  h = LayerNorm(x)                             eps 1e-5, biased variance
            r = softmax(s_r * R @ h)                     router: weights of the 3 pathways, per token
            local = s_c * sum_k C[k] * h_{t-k}           causal depthwise conv, k = 0 is the current token
            u_t   = tanh(a) * u_{t-1} + b * h ;  state = c * u_t     diagonal SSM, per channel
            q = s_q Wq h, k = s_k Wk h, v = s_v Wv h     one head: q, k (d_head,), v (d,), no out proj
            sparse = softmax(top-k of q.k_j / sqrt(d_head), j <= t) @ v_j
            x += r0 * local + r1 * state + r2 * sparse
    logits = s_o * O @ LayerNorm(x)                      separate ternary unembedding

There is no positional embedding and no MLP. Top-k keeps the k largest scores; on equal scores the
earlier position wins (the C engine's strict `>` insertion).

An atome model is a GGUF file like any other (architecture `atome`): its hyperparameters are
`config.AtomeConfig` (the `atome.*` keys), engine/model.py's architecture table sends it here, and
`mote convert` (mote/convert.py) writes it from Atome's ATOME01 blob. Weight names are the GGUF
names of `tensor_layout`: a ternary tensor X is two entries, `X.weight` (trits, numpy shape
(n_out, n_in), stored as TQ1_0 with block scale 1 so they dequantize to exactly -1/0/+1, or F32)
and `X.scale` (F32, shape (1,), the per-tensor scale). `weights_from_tensors` builds
`AtomeWeights` from such a dict.

Three implementations of the forward pass, tested against each other and against the C engine:
    reference_forward(weights, tokens)   naive, whole prefix, unpacks trits per product
    AtomeModel.forward(tokens)           vectorised over a chunk of new tokens, with caches
    AtomeModel.forward([token])          the single-token decode step (fast path, see its notes)
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import NamedTuple, Sequence

import numpy as np

from . import quants
from .config import AtomeConfig, ConfigError
from .matmul import _einsum, dense_matmul, dense_matvec
from .model import layernorm, softmax

N_PATHWAYS = 3  # local conv, SSM, sparse attention (the order of the router's rows)
# The C engine divides by (sum + 1e-10): in float32 a no-op, since the sum is >= 1 (the largest
# term is exp(0)), so model.softmax computes the same numbers; _step's float64 sums keep it.
SOFTMAX_EPS = 1e-10


class AtomeError(ConfigError):
    """An ATOME01 blob or a set of atome tensors that does not fit the given dimensions."""


# ---------------------------------------------------------------------------------------------
# Named tensors -> weights
# ---------------------------------------------------------------------------------------------

TERNARY, F32 = "ternary", "f32"


def tensor_layout(cfg: AtomeConfig) -> list[tuple[str, str, tuple[int, ...]]]:
    """The model's tensors in ATOME01 blob order: (GGUF base name, kind, shape as stored in the blob).

    A 2-D ternary shape is (n_out, n_in), row-major trits. The conv kernel is stored as
    (d_model, kernel) with tap k = 0 for the current token; the loader transposes it to (kernel, d).
    """
    d, dh, ks, v = cfg.d_model, cfg.d_head, cfg.kernel, cfg.vocab_size
    layout = [("token_embd", TERNARY, (v, d))]
    for i in range(cfg.n_layers):
        b = f"blk.{i}."
        layout += [
            (b + "attn_norm.weight", F32, (d,)),  # LayerNorm gamma
            (b + "attn_norm.bias", F32, (d,)),  # LayerNorm beta
            (b + "local_conv", TERNARY, (d, ks)),  # depthwise causal conv taps
            (b + "ssm_a", F32, (d,)),  # decay before tanh
            (b + "ssm_b", F32, (d,)),  # input gain
            (b + "ssm_c", F32, (d,)),  # output scale
            (b + "attn_q", TERNARY, (dh, d)),
            (b + "attn_k", TERNARY, (dh, d)),
            (b + "attn_v", TERNARY, (d, d)),
            (b + "router", TERNARY, (N_PATHWAYS, d)),  # rows: local, state, sparse
        ]
    layout += [
        ("output_norm.weight", F32, (d,)),
        ("output_norm.bias", F32, (d,)),
        ("output", TERNARY, (v, d)),
    ]
    return layout


@dataclass(frozen=True)
class TernaryMatrix:
    """W = scale * trits, kept ternary: 1 byte per weight, no float copy."""

    trits: np.ndarray  # (n_out, n_in) int8 in {-1, 0, +1}
    scale: float  # per-tensor absmean scale (an f32 value)

    def matvec(self, x: np.ndarray) -> np.ndarray:
        """Naive reference product x @ W.T, unpacking the trits per call: (..., n_in) -> (..., n_out)."""
        return (x @ self.trits.T.astype(np.float32)) * np.float32(self.scale)


@dataclass(frozen=True)
class AtomeLayer:
    norm_w: np.ndarray  # (d,) f32 LayerNorm gamma
    norm_b: np.ndarray  # (d,) f32 LayerNorm beta
    conv: TernaryMatrix  # (kernel, d): row k multiplies h_{t-k}
    ssm_a: np.ndarray  # (d,) f32 decay before tanh
    ssm_b: np.ndarray  # (d,) f32
    ssm_c: np.ndarray  # (d,) f32
    attn_q: TernaryMatrix  # (d_head, d)
    attn_k: TernaryMatrix  # (d_head, d)
    attn_v: TernaryMatrix  # (d, d)
    router: TernaryMatrix  # (3, d)


@dataclass(frozen=True)
class AtomeWeights:
    config: AtomeConfig
    token_embd: TernaryMatrix  # (vocab, d)
    layers: tuple[AtomeLayer, ...]
    output_norm_w: np.ndarray  # (d,) f32
    output_norm_b: np.ndarray  # (d,) f32
    output: TernaryMatrix  # (vocab, d)


def weights_from_tensors(tensors: dict[str, np.ndarray], cfg: AtomeConfig) -> AtomeWeights:
    """Build AtomeWeights from GGUF-named arrays, checking every shape and every trit.

    Trits may come as int8 or as floats (a dequantized TQ2_0 tensor with block scale 1.0);
    anything other than -1, 0, +1 is an error.
    """

    def floats(name: str, shape: tuple[int, ...]) -> np.ndarray:
        if name not in tensors:
            raise AtomeError(f"atome tensor {name!r} missing")
        a = np.asarray(tensors[name])
        if a.shape != shape:
            raise AtomeError(f"atome tensor {name!r} has shape {a.shape} (expected {shape})")
        return np.ascontiguousarray(a, dtype=np.float32)

    def ternary(base: str, shape: tuple[int, ...]) -> TernaryMatrix:
        w = floats(base + ".weight", shape)
        trits = w.astype(np.int8)
        if not np.array_equal(trits, w) or np.abs(trits).max(initial=0) > 1:
            raise AtomeError(f"atome tensor {base + '.weight'!r} holds values other than -1, 0, +1")
        scale = floats(base + ".scale", (1,))
        return TernaryMatrix(trits, float(scale[0]))

    shapes = {name: shape for name, _, shape in tensor_layout(cfg)}
    layers = []
    for i in range(cfg.n_layers):
        b = f"blk.{i}."
        layers.append(
            AtomeLayer(
                norm_w=floats(b + "attn_norm.weight", (cfg.d_model,)),
                norm_b=floats(b + "attn_norm.bias", (cfg.d_model,)),
                conv=ternary(b + "local_conv", (cfg.kernel, cfg.d_model)),
                ssm_a=floats(b + "ssm_a", (cfg.d_model,)),
                ssm_b=floats(b + "ssm_b", (cfg.d_model,)),
                ssm_c=floats(b + "ssm_c", (cfg.d_model,)),
                **{n: ternary(b + n, shapes[b + n]) for n in ("attn_q", "attn_k", "attn_v", "router")},
            )
        )
    return AtomeWeights(
        config=cfg,
        token_embd=ternary("token_embd", shapes["token_embd"]),
        layers=tuple(layers),
        output_norm_w=floats("output_norm.weight", (cfg.d_model,)),
        output_norm_b=floats("output_norm.bias", (cfg.d_model,)),
        output=ternary("output", shapes["output"]),
    )


# ---------------------------------------------------------------------------------------------
# Naive reference forward: the C engine's maths, whole prefix, no caches
# ---------------------------------------------------------------------------------------------


def top_k_earliest(scores: np.ndarray, k: int) -> np.ndarray:
    """Indices of the k largest scores, largest first, ties broken toward the earlier index.

    >>> top_k_earliest(np.array([1.0, 3.0, 2.0, 3.0]), 2)
    array([1, 3])
    """
    return np.argsort(-scores, kind="stable")[:k]


def reference_forward(weights: AtomeWeights, tokens: Sequence[int]) -> np.ndarray:
    """Logits for every position, (n, vocab) f32, recomputing everything from the tokens.

    A direct transcription of the model above, one query at a time for attention; slow but
    obviously right, and the yardstick for AtomeModel.
    """
    cfg = weights.config
    ids = _check_tokens(tokens, cfg.vocab_size)
    n = len(ids)
    x = weights.token_embd.trits[ids].astype(np.float32) * np.float32(weights.token_embd.scale)  # (n, d)
    for layer in weights.layers:
        h = layernorm(x, layer.norm_w, layer.norm_b, cfg.norm_eps)  # (n, d)
        r = softmax(layer.router.matvec(h))  # (n, 3)

        # local pathway: out_t = s * sum_k C[k] * h_{t-k}, taps before the start are skipped
        local = np.zeros_like(h)  # (n, d)
        for k in range(min(cfg.kernel, n)):
            local[k:] += layer.conv.trits[k].astype(np.float32) * h[: n - k]
        local *= np.float32(layer.conv.scale)

        # state pathway: per-channel linear recurrence from u = 0
        decay = np.tanh(layer.ssm_a)  # (d,)
        u = np.zeros(cfg.d_model, dtype=np.float32)  # (d,)
        state = np.empty_like(h)  # (n, d)
        for t in range(n):
            u = decay * u + layer.ssm_b * h[t]
            state[t] = layer.ssm_c * u

        # sparse pathway: each query keeps its top-k causal scores
        q, k_, v = layer.attn_q.matvec(h), layer.attn_k.matvec(h), layer.attn_v.matvec(h)  # (n, dh) (n, dh) (n, d)
        sparse = np.empty_like(h)  # (n, d)
        for t in range(n):
            scores = (k_[: t + 1] @ q[t]) * np.float32(1.0 / math.sqrt(cfg.d_head))  # (t+1,)
            keep = top_k_earliest(scores, cfg.top_k)  # (min(top_k, t+1),)
            sparse[t] = softmax(scores[keep]) @ v[keep]

        x = x + (r[:, 0:1] * local + r[:, 1:2] * state + r[:, 2:3] * sparse)  # (n, d)
    h = layernorm(x, weights.output_norm_w, weights.output_norm_b, cfg.norm_eps)  # (n, d)
    return weights.output.matvec(h)  # (n, vocab)


def _check_tokens(tokens: Sequence[int], vocab_size: int) -> np.ndarray:
    ids = np.asarray(tokens, dtype=np.int64).reshape(-1)  # (n,)
    if ids.size == 0:
        raise ValueError("atome forward needs at least one token (got none)")
    if ids.min() < 0 or ids.max() >= vocab_size:
        bad = int(ids[(ids < 0) | (ids >= vocab_size)][0])
        raise ValueError(f"token id {bad} out of range (expected 0 <= id < {vocab_size})")
    return ids


# ---------------------------------------------------------------------------------------------
# Cached model: chunked prefill + single-token decode
# ---------------------------------------------------------------------------------------------


class _Prepared(NamedTuple):
    """One layer's weights laid out for the cached forward (see AtomeModel's speed notes)."""

    norm_w: np.ndarray  # (d,) f32
    norm_b: np.ndarray  # (d,) f32
    fused: np.ndarray  # (2dh+d+3, d) f32 rows q | k | v | router: trits times their tensor's scale (q's also / sqrt(dh))
    conv_rev: np.ndarray  # (kernel, d) f32 trits, reversed: row j taps h_{t-(K-1)+j}
    conv_ring: np.ndarray  # (kernel, kernel, d) f32: [t % K][r] is the tap for window row r at position t
    conv_scale: float
    decay: np.ndarray  # (d,) f32 tanh(ssm_a)
    ssm_b: np.ndarray  # (d,) f32
    ssm_c: np.ndarray  # (d,) f32


class AtomeModel:
    """The atome forward pass with its state (conv window, SSM state, K/V cache), like engine.Model.

    `forward(tokens)` appends tokens after the `pos` already seen and returns the last logits
    (or all of them). Several tokens go through `_chunk`, vectorised over the chunk; one token
    goes through `_step`, the decode kernel.

    Speed notes (this class is the clever part of the module):
    - per layer the four products of h (q, k, v, router) are fused into one (2*d_head + d + 3, d)
      f32 matrix of trits times their tensor's scale (each entry exactly -s, 0 or +s), so a layer
      costs one f32 matrix-vector product (einsum in Pyodide). This float copy (3.4 MB for the 944K model,
      against 0.24 MB packed) buys the decode speed: numpy would otherwise convert int8 -> f32 on
      every product. `reference_forward` is the ternary-only path it is tested against.
    - `_step` allocates almost nothing: scratch vectors are made once and written with `out=`;
      the 3-way router and the top-k softmax run on Python floats, cheaper than numpy at n <= 4.
    - top-k uses argpartition (placing the k-th largest score and the one below it) and falls back
      to a stable sort only when those two are equal.
    - the conv window is a ring (position p in row p % K) with the taps reordered per phase, so
      a step writes one row and runs one einsum instead of shifting the window.
    """

    can_rewind = False  # the conv window and SSM state hold the whole past: pos cannot be cut back

    def __init__(self, weights: AtomeWeights, n_ctx: int = 2048):
        self.weights = weights
        self.config = cfg = weights.config
        self.n_ctx = n_ctx
        d, dh = cfg.d_model, cfg.d_head
        # slices of the fused projection output
        self._q, self._k = slice(0, dh), slice(dh, 2 * dh)
        self._v, self._r = slice(2 * dh, 2 * dh + d), slice(2 * dh + d, 2 * dh + d + N_PATHWAYS)
        self._layers = []
        for L in weights.layers:
            mats = (L.attn_q, L.attn_k, L.attn_v, L.router)
            row_scale = np.concatenate([np.full(m.trits.shape[0], m.scale, np.float32) for m in mats])
            row_scale[self._q] *= np.float32(1.0 / math.sqrt(dh))  # attention score scale
            fused = np.concatenate([m.trits for m in mats]).astype(np.float32) * row_scale[:, None]
            self._layers.append(
                _Prepared(
                    norm_w=L.norm_w,
                    norm_b=L.norm_b,
                    fused=fused,
                    conv_rev=L.conv.trits[::-1].astype(np.float32),
                    conv_ring=_ring_taps(L.conv.trits),
                    conv_scale=float(L.conv.scale),
                    decay=np.tanh(L.ssm_a),
                    ssm_b=L.ssm_b,
                    ssm_c=L.ssm_c,
                )
            )
        self._embd = weights.token_embd.trits  # (vocab, d) int8, one row converted per token
        self._embd_scale = np.float32(weights.token_embd.scale)
        self._out = weights.output.trits.astype(np.float32) * np.float32(weights.output.scale)  # (vocab, d) f32
        # decode scratch, reused by every _step
        self._x = np.empty(d, np.float32)  # (d,) residual
        self._h = np.empty(d, np.float32)  # (d,) normed
        self._tmp = np.empty(d, np.float32)  # (d,)
        self._proj = np.empty(2 * dh + d + N_PATHWAYS, np.float32)  # (2dh+d+3,)
        self._pq, self._pk, self._pv, self._pr = (self._proj[p] for p in (self._q, self._k, self._v, self._r))
        self._paths = np.empty((N_PATHWAYS, d), np.float32)  # (3, d) local, state, sparse outputs
        self._mix = np.empty(N_PATHWAYS, np.float32)  # (3,) router weights
        self._logits = np.empty(cfg.vocab_size, np.float32)  # (vocab,)
        self._cap = 0
        self.reset()

    # ---- state --------------------------------------------------------------------------
    def reset(self) -> None:
        """Forget all tokens: zero the conv windows and SSM states, empty the K/V cache."""
        cfg = self.config
        self.pos = 0
        # the last K normed h per layer, a ring: position p's row is p % K (rows of positions < 0 are 0)
        self._window = np.zeros((cfg.n_layers, cfg.kernel, cfg.d_model), np.float32)
        self._ssm = np.zeros((cfg.n_layers, cfg.d_model), np.float32)  # (n_layers, d) SSM state u
        if self._cap == 0:
            self._grow(min(self.n_ctx, 256))

    def _grow(self, cap: int) -> None:
        """Reallocate the K/V cache for `cap` positions, keeping the first `pos` rows."""
        cfg = self.config
        self._scores = np.empty(cap, np.float32)  # (cap,) _step's attention scores
        k_cache = np.zeros((cfg.n_layers, cap, cfg.d_head), np.float32)  # (n_layers, cap, d_head)
        v_cache = np.zeros((cfg.n_layers, cap, cfg.d_model), np.float32)  # (n_layers, cap, d)
        if self._cap:
            k_cache[:, : self.pos] = self._kc[:, : self.pos]
            v_cache[:, : self.pos] = self._vc[:, : self.pos]
        self._kc, self._vc, self._cap = k_cache, v_cache, cap

    # ---- forward ------------------------------------------------------------------------
    def forward(self, tokens: Sequence[int], all_logits: bool = False) -> np.ndarray:
        """Feed tokens after the current position; logits (vocab,) of the last, or (n, vocab)."""
        n = len(tokens)
        if self.pos + n > self.n_ctx:
            raise ValueError(f"context full: {self.pos} + {n} tokens exceed n_ctx={self.n_ctx}")
        if self.pos + n > self._cap:
            self._grow(min(self.n_ctx, max(self.pos + n, 2 * self._cap)))
        if n == 1 and not all_logits:
            token = int(tokens[0])
            if not 0 <= token < self.config.vocab_size:
                raise ValueError(f"token id {token} out of range (expected 0 <= id < {self.config.vocab_size})")
            return self._step(token).copy()
        logits = self._chunk(_check_tokens(tokens, self.config.vocab_size))  # (n, vocab)
        return logits if all_logits else logits[-1]

    def _chunk(self, ids: np.ndarray) -> np.ndarray:
        """Vectorised forward of n new tokens at positions pos..pos+n-1 -> (n, vocab) logits."""
        cfg, p0, n, K = self.config, self.pos, ids.size, self.config.kernel
        x = self._embd[ids].astype(np.float32) * self._embd_scale  # (n, d)
        future = np.arange(p0 + n)[None, :] > np.arange(p0, p0 + n)[:, None]  # (n, p0+n) keys after the query
        for L, win, u, kc, vc in zip(self._layers, self._window, self._ssm, self._kc, self._vc):
            h = layernorm(x, L.norm_w, L.norm_b, cfg.norm_eps)  # (n, d)
            proj = dense_matmul(h, L.fused)  # (n, 2dh+d+3)
            r = softmax(proj[:, self._r])  # (n, 3)

            # local: the ring's rows for positions p0-K+1 .. p0-1, oldest first, then the chunk
            hist = np.concatenate([np.roll(win, -(p0 % K), axis=0)[1:], h])  # (K-1+n, d)
            local = np.zeros_like(h)  # (n, d)
            for j in range(K):
                local += L.conv_rev[j] * hist[j : j + n]
            local *= np.float32(L.conv_scale)
            win[:] = np.roll(hist[-K:], (p0 + n) % K, axis=0)

            # state: sequential in t, u carried over from the previous chunk
            state = np.empty_like(h)  # (n, d)
            for t in range(n):
                u *= L.decay
                u += L.ssm_b * h[t]
                state[t] = u
            state *= L.ssm_c

            # sparse: cache k, v; every query ranks the cached keys up to its own position
            kc[p0 : p0 + n] = proj[:, self._k]
            vc[p0 : p0 + n] = proj[:, self._v]
            scores = proj[:, self._q] @ kc[: p0 + n].T  # (n, p0+n), 1/sqrt(dh) already in q
            scores[future] = -np.inf
            keep = np.argsort(-scores, axis=1, kind="stable")[:, : cfg.top_k]  # (n, top_k) earliest on ties
            att = softmax(np.take_along_axis(scores, keep, axis=1))  # (n, top_k), -inf keys get 0
            sparse = np.einsum("nk,nkd->nd", att, vc[keep])  # (n, d)

            x = x + (r[:, 0:1] * local + r[:, 1:2] * state + r[:, 2:3] * sparse)  # (n, d)
        self.pos += n
        h = layernorm(x, self.weights.output_norm_w, self.weights.output_norm_b, cfg.norm_eps)  # (n, d)
        return dense_matmul(h, self._out)  # (n, vocab)

    def _step(self, token: int) -> np.ndarray:
        """One token at position pos: the decode kernel. Returns the reused (vocab,) logits buffer."""
        cfg, t = self.config, self.pos
        n, top_k, eps, inv_d, ring = t + 1, cfg.top_k, cfg.norm_eps, 1.0 / cfg.d_model, t % cfg.kernel
        x, h, tmp, proj, paths, mix = self._x, self._h, self._tmp, self._proj, self._paths, self._mix
        pq, pk, pv, pr, scores = self._pq, self._pk, self._pv, self._pr, self._scores[:n]
        np.multiply(self._embd[token], self._embd_scale, out=x)  # (d,) embedding row
        for L, win, u, kc, vc in zip(self._layers, self._window, self._ssm, self._kc, self._vc):
            _layer_norm_1d(x, L.norm_w, L.norm_b, eps, inv_d, h, tmp)
            dense_matvec(L.fused, h, out=proj)  # (2dh+d+3,) q | k | v | router

            # router: softmax of three logits
            r0, r1, r2 = pr.tolist()
            top = max(r0, r1, r2)
            e0, e1, e2 = math.exp(r0 - top), math.exp(r1 - top), math.exp(r2 - top)
            z = e0 + e1 + e2 + SOFTMAX_EPS

            # local: h into the ring, each row weighted by its tap at this position
            win[ring] = h
            _einsum("kd,kd->d", L.conv_ring[ring], win, out=paths[0])

            # state: u = tanh(a) * u + b * h ; out = c * u
            u *= L.decay
            np.multiply(L.ssm_b, h, out=tmp)
            u += tmp
            np.multiply(L.ssm_c, u, out=paths[1])

            # sparse: cache k, v; score the n keys; softmax over the top-k
            kc[t] = pk
            vc[t] = pv
            _einsum("nd,d->n", kc[:n], pq, out=scores)  # (n,)
            if n <= top_k:
                keep = slice(0, n)
                s = scores.tolist()
            else:  # the largest score left out and the smallest kept, both put in place
                order = scores.argpartition((n - top_k - 1, n - top_k))
                keep = order[n - top_k :]  # (top_k,) in no order
                s = scores[keep].tolist()
                if scores[order[n - top_k - 1]] == scores[order[n - top_k]]:  # tie at the cut: earliest wins
                    keep = top_k_earliest(scores, top_k)
                    s = scores[keep].tolist()
            top_s = max(s)
            e = [math.exp(v - top_s) for v in s]
            _einsum("k,kd->d", np.array(e, np.float32), vc[keep], out=paths[2])  # (d,) unnormalised

            # mix: router weights, with the conv scale and the attention normaliser folded in
            mix[0] = e0 / z * L.conv_scale
            mix[1] = e1 / z
            mix[2] = e2 / z / (sum(e) + SOFTMAX_EPS)
            _einsum("k,kd->d", mix, paths, out=tmp)  # (d,)
            x += tmp
        self.pos += 1
        _layer_norm_1d(x, self.weights.output_norm_w, self.weights.output_norm_b, eps, inv_d, h, tmp)
        dense_matvec(self._out, h, out=self._logits)  # (vocab,)
        return self._logits


def _ring_taps(trits: np.ndarray) -> np.ndarray:
    """(K, d) conv taps -> (K, K, d) f32: [m][r] is the tap for the ring row r when the current
    position's row is m, i.e. for the token (m - r) mod K positions back."""
    K = trits.shape[0]
    return np.stack([trits[[(m - r) % K for r in range(K)]] for m in range(K)]).astype(np.float32)


def _layer_norm_1d(x, w, b, eps, inv_d, out, tmp) -> None:
    """LayerNorm of one (d,) vector into `out` without allocating (tmp is (d,) scratch)."""
    np.subtract(x, float(np.add.reduce(x)) * inv_d, out=tmp)  # (d,) centred
    np.multiply(tmp, 1.0 / math.sqrt(float(np.dot(tmp, tmp)) * inv_d + eps), out=tmp)
    np.multiply(tmp, w, out=out)
    np.add(out, b, out=out)


def load_model(gguf, n_ctx: int | None = None) -> AtomeModel:
    """An AtomeModel from an `atome` GGUF file (trits as TQ1_0 or F32, scales as F32)."""
    cfg = AtomeConfig.from_metadata(gguf.metadata)
    tensors = {name: quants.dequantize(gguf.raw(name), t.ggml_type, t.shape) for name, t in gguf.tensors.items()}
    weights = weights_from_tensors(tensors, cfg)
    return AtomeModel(weights, n_ctx=n_ctx) if n_ctx else AtomeModel(weights)
