"""Forward pass with a KV cache (pipeline stage: matmul.py -> model.py -> sampler.py).

One `forward()` for all supported transformer families, reading like the maths; the per-family
differences are switches on `ModelConfig` (norm kind, RoPE layout, biases, gating, extra norms).

    llama   RMSNorm, RoPE on adjacent pairs (GGUF stores Q/K permuted for it), SwiGLU, GQA
    qwen2   llama + Q/K/V biases, RoPE on halves (NeoX)
    gemma3  embeddings * sqrt(d), QK-norm, norms before and after attention and FFN,
            GELU-tanh gate, five sliding-window layers (RoPE base 10k) per global one (base 1M)
    gpt2    LayerNorm with bias, learned positions, fused QKV with bias, GELU MLP

Weights keep their GGUF names (`blk.{i}.attn_q`, `ffn_gate`, `token_embd`, ...). Prefill is one
batched pass over the prompt; decoding feeds one token at a time. The KV cache is allocated once:
n_ctx positions per layer, except a sliding-window layer's, which is a ring of its window plus
KV_REWIND positions (position p in row p % rows; Gemma 3 270M at 2048 tokens: 36 MB, not 75). A
browser worker stores keys and values as float16 (LoadPolicy.kv_dtype, as llama.cpp's cache does:
18 MB) and reads them back as float32 for the attention's products.
"""

from __future__ import annotations

import math
import os
import sys
from dataclasses import dataclass
from typing import Callable, Iterator, Sequence

import numpy as np

from . import quants
from .config import SUPPORTED_ARCHITECTURES, ConfigError, ModelConfig
from .gguf import GGUFFile
from .matmul import BlockLinear, DenseLinear, Embedding, prepare_linear
from .packed import PackedLinear, reserve_scratch

DEFAULT_CTX = 2048  # KV cache length unless asked otherwise (Gemma's 32k would need 1.2 GB)
KV_REWIND = 256    # positions a sliding-window layer's ring keeps beyond its window: how far the cache
                   # can be cut back (lookup's drafts, MAX_DRAFT = 8; an edited or regenerated turn)
PREFILL_CHUNK = 64   # tokens a batched pass takes at most: a longer prompt runs in chunks, so its
                     # activations (chunk x ffn, chunk x context scores) stay inside the memory budget
KV_DTYPES = {"float32": np.dtype(np.float32), "float16": np.dtype(np.float16)}  # LoadPolicy.kv_dtype


@dataclass(frozen=True)
class LoadPolicy:
    """What to keep resident as float32 (fast BLAS products) and what as int8 blocks (1 byte/weight).

    dense_layers_mb: float32 budget for the transformer blocks' matrices, filled in layer order;
        matrices past the budget stay as int8 blocks (about 2x slower per weight natively).
    dense_head_mb: the LM head (often the largest matrix: Gemma's is 262144 x 640, 671 MB as
        float32) is float32 only below this size.
    own_buffer: the GGUF buffer is this model's private, writable copy (the browser worker's, never
        parsed again), so block weights may be rearranged in it in place (Q8_0 compacted to
        contiguous int8 rows, `matmul.compact_q8_0`; packed blocks planarized, `packed.planarize`).
        Off for files (read-only mmap) and shared bytes.
    packed: block matrices stay as the file's packed bytes and are multiplied a chunk at a time
        (`packed.PackedLinear`): resident memory is the file's size, instead of int8 values plus
        float32 scales (about 2.2x a 4-bit file).
    int8_types: block types kept as int8 values even when packed: a measured choice where the
        packed product is much slower (engine/bridge.py WORKER_POLICY), allowed only while the
        memory budget has room (engine/budget.py).
    kv_dtype: what the KV cache stores, "float32" or "float16" (half the memory; every read is cast
        back to float32, ~2 ns a value in Pyodide, so a key reads the same from this batch as from
        the cache; logits move by ~1e-3, as with llama.cpp's float16 cache).
    float_scales: a packed Q8_0 matrix keeps a float32 copy of its block scales beside its planes
        (+12 % of its size; Gemma 3's head: 20 MiB); off, each product converts its chunk's float16
        scales from the planes (exact; Gemma 3 270M's token ~2.7 % slower in Pyodide).

    The README's "Memory" section says what the defaults keep resident.
    """

    dense_layers_mb: float = 256.0
    dense_head_mb: float = 64.0
    own_buffer: bool = False
    packed: bool = False
    int8_types: tuple[str, ...] = ()
    kv_dtype: str = "float32"
    float_scales: bool = True

    def packs(self, ggml_type: int) -> bool:
        """Whether a block matrix of this type stays packed (see `packed`, `int8_types`)."""
        return self.packed and quants.TYPES[ggml_type].name not in self.int8_types

    def values(self, ggml_type: int) -> bool:
        """Whether a block matrix of this type, one of `int8_types` of a packed policy, keeps its int8
        values laid out for the packed kernels (`packed.VALUE_TYPES`; other int8 types: BlockLinear)."""
        from .packed import VALUE_TYPES

        name = quants.TYPES[ggml_type].name
        return self.packed and name in self.int8_types and name in VALUE_TYPES


def memory_limit() -> int:
    """Bytes this process could ever hold: physical memory natively, the 4 GiB of wasm32 in Pyodide."""
    if sys.platform == "emscripten":
        return 4 << 30
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (AttributeError, OSError, ValueError):  # no sysconf: do not guess
        return 1 << 62


# ---- small numpy helpers ------------------------------------------------------------------------


def rmsnorm(x: np.ndarray, w: np.ndarray, eps: float) -> np.ndarray:
    """x * w / sqrt(mean(x^2) + eps) over the last axis. x: (..., d), w: (d,).

    The mean is np.mean's own two steps (sum, then divide by the count as an intp), called
    directly: the same bits, without np.mean's Python-level bookkeeping, which costs more than the
    arithmetic on a 640-vector in Pyodide (this runs ~110 times per token for Gemma 3).
    """
    ms = np.add.reduce(np.square(x), axis=-1, keepdims=True)  # (..., 1) sum of squares
    np.true_divide(ms, np.intp(x.shape[-1]), out=ms, casting="unsafe")  # mean
    return x * (1.0 / np.sqrt(ms + np.float32(eps))) * w


def layernorm(x: np.ndarray, w: np.ndarray, b: np.ndarray, eps: float) -> np.ndarray:
    mu = x.mean(axis=-1, keepdims=True)  # (..., 1)
    xc = x - mu
    var = np.mean(np.square(xc), axis=-1, keepdims=True)  # (..., 1)
    return xc / np.sqrt(var + np.float32(eps)) * w + b


def gelu_tanh(x: np.ndarray) -> np.ndarray:
    return np.float32(0.5) * x * (1 + np.tanh(np.float32(math.sqrt(2 / math.pi)) * (x + np.float32(0.044715) * x * x * x)))


def gelu_erf(x: np.ndarray) -> np.ndarray:
    """Exact GELU, x * Phi(x), with erf from Abramowitz & Stegun 7.1.26 (|error| < 1.5e-7)."""
    z = np.abs(x) * np.float32(1 / math.sqrt(2))
    t = 1 / (1 + np.float32(0.3275911) * z)
    poly = t * (0.254829592 + t * (-0.284496736 + t * (1.421413741 + t * (-1.453152027 + t * 1.061405429))))
    erf = 1 - poly * np.exp(-z * z)
    return (np.float32(0.5) * x * (1 + np.sign(x) * erf)).astype(np.float32)


def silu(x: np.ndarray) -> np.ndarray:
    return x / (1 + np.exp(-x))


def softmax(x: np.ndarray) -> np.ndarray:
    e = np.exp(x - x.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


def _softmax_into(x: np.ndarray) -> np.ndarray:
    """softmax(x) written over x, with the same arithmetic (and so the same bits) as softmax()."""
    np.subtract(x, x.max(axis=-1, keepdims=True), x)
    np.exp(x, x)
    np.divide(x, x.sum(axis=-1, keepdims=True), x)
    return x


def rope(x: np.ndarray, cos: np.ndarray, sin: np.ndarray, neox: bool) -> np.ndarray:
    """Rotate pairs of x by the position angles. x: (n, heads, hd); cos, sin: (n, 1, hd/2)."""
    half = x.shape[-1] // 2
    if neox:  # pairs are (i, i + hd/2)
        a, b = x[..., :half], x[..., half:]
        return np.concatenate([a * cos - b * sin, b * cos + a * sin], axis=-1)
    a, b = x[..., 0::2], x[..., 1::2]  # pairs are (2i, 2i + 1)
    out = np.empty_like(x)
    out[..., 0::2] = a * cos - b * sin
    out[..., 1::2] = b * cos + a * sin
    return out


# ---- the model ----------------------------------------------------------------------------------

SUM = "sum"        # sync point: every shard gets the sum of all shards' partials, in shard order
GATHER = "gather"  # sync point: the leader gets the logits slices of all shards, in vocabulary order


class Model:
    """A loaded model (or one shard of it): prepared weights, the KV cache, and `forward`.

    A whole model is shard 0 of 1. A shard holds the rows of the column-parallel matrices (q, k, v,
    gate, up) for its heads and feed-forward units, the columns of the row-parallel ones
    (attn_output, ffn_down) and a vocabulary slice of the embedding and LM head (`plan`);
    `forward_steps` yields its partial results at the sync points, see engine/shard.py.
    """

    def __init__(self, config: ModelConfig, plan: "ShardPlan", weights: dict, n_ctx: int,
                 kv_dtype: str = "float32"):
        self.config = config
        self.plan = plan
        self.w = weights
        self.n_ctx = n_ctx
        cfg = config
        (h0, h1), (k0, k1) = plan.heads, plan.kv_heads
        self.n_heads, self.n_kv = h1 - h0, k1 - k0  # this shard's query and kv heads
        kv = max(1, self.n_kv)
        rows = [cfg.kv_rows(layer, n_ctx, KV_REWIND) for layer in range(cfg.n_layers)]
        if kv_dtype not in KV_DTYPES:
            raise ConfigError(f"unknown KV cache type {kv_dtype!r} (expected one of {', '.join(KV_DTYPES)})")
        self.kv_dtype = dtype = KV_DTYPES[kv_dtype]
        need = dtype.itemsize * sum(rows) * kv * (cfg.head_dim + cfg.v_head_dim)  # bytes of both caches
        too_big = f"a KV cache of {n_ctx} tokens needs {need / 2**30:.2f} GiB"
        if need > memory_limit():
            raise ConfigError(f"{too_big}, more than the {memory_limit() / 2**30:.1f} GiB this machine has "
                              "(ask for a shorter context)")
        try:
            self.k_cache = [np.zeros((r, kv, cfg.head_dim), dtype) for r in rows]  # per layer (rows, n_kv, hd)
            self.v_cache = [np.zeros((r, kv, cfg.v_head_dim), dtype) for r in rows]  # per layer (rows, n_kv, hd_v)
        except MemoryError:
            raise ConfigError(f"{too_big} and that much memory is not free (ask for a shorter context)") from None
        self.max_cut = cfg.max_cut(n_ctx, KV_REWIND)  # None: the cache can be cut back anywhere
        self._high = 0  # one past the highest position written since the cache was last filled from 0
        self.pos = 0
        rope_dim = cfg.rope_dim or cfg.head_dim
        self._inv_freq = {}
        for layer in range(cfg.n_layers):
            base = cfg.layer_rope_base(layer)
            self._inv_freq.setdefault(base, 1.0 / base ** (np.arange(0, rope_dim, 2, dtype=np.float64) / rope_dim))

    def reset(self) -> None:
        self.pos = 0

    def cut_floor(self) -> int:
        """The lowest position the cache can be cut back to (`pos` set lower, then a forward): below
        it a sliding-window ring has overwritten keys the next position needs. 0: anywhere."""
        return 0 if self.max_cut is None else max(0, self._high - self.max_cut)

    can_verify = True  # forward(..., exact=True) exists and the cache can be cut back (engine/lookup.py)

    def forward(self, tokens: Sequence[int], all_logits: bool = False, exact: bool = False) -> np.ndarray:
        """Logits after `tokens` (appended after the cached ones): (vocab,), or (n, vocab) with all_logits.

        The whole model's run of `forward_steps`: each sync point's sum is its own partial."""
        if self.plan.n_shards != 1:
            raise ValueError(f"shard {self.plan.index} of {self.plan.n_shards} cannot run alone "
                             "(drive the shards with engine.shard.run_lockstep)")
        steps = self.forward_steps(tokens, all_logits, exact)
        _, part = next(steps)
        try:
            while True:
                _, part = steps.send(part)
        except StopIteration as stop:
            return stop.value

    # The one forward pass. tokens: (n,) ids appended after the cached ones.
    def forward_steps(self, tokens: Sequence[int], all_logits: bool = False,
                      exact: bool = False) -> Iterator[tuple[str, np.ndarray]]:
        """Yields (SUM | GATHER, partial) at each sync point and is sent the combined array;
        returns the logits ((vocab,) or (n, vocab)) on the leader, None on the other shards.

        exact=True (the verify pass of lookup decoding): row j's logits are bit-identical to those
        of feeding tokens[j] alone after tokens[:j]; the products run the one-token kernels per row
        (`rows`, sharing each chunk's cast) and attention runs per position. Prefill (exact=False)
        is batched, PREFILL_CHUNK tokens a pass, faster per token but rounded differently."""
        cfg = self.config
        ids = np.asarray(tokens, dtype=np.int64).reshape(-1)  # (n,)
        n = len(ids)
        if n == 0:
            raise ValueError("forward needs at least one token")
        if ids.min() < 0 or ids.max() >= cfg.vocab_size:
            raise ValueError(f"token id out of range 0..{cfg.vocab_size - 1}")
        if self.pos + n > self.n_ctx:
            raise ValueError(f"context full: {self.pos} + {n} tokens > n_ctx {self.n_ctx}")
        start, end = self.pos, self.pos + n
        if start == 0:
            self._high = 0  # a fresh fill: nothing written before matters
        elif start < self.cut_floor():
            raise ValueError(f"cannot cut the KV cache back to position {start}: its sliding-window layers "
                             f"keep {self.max_cut} positions past their window (lowest now {self.cut_floor()}; "
                             "start again from position 0)")
        self._high = max(self._high, end)
        if exact or all_logits or n <= PREFILL_CHUNK:
            return (yield from self._pass_steps(ids, start, all_logits, exact))
        for c0 in range(0, n, PREFILL_CHUNK):  # a long prompt: its activations bounded by the chunk's
            last = c0 + PREFILL_CHUNK >= n
            out = yield from self._pass_steps(ids[c0 : c0 + PREFILL_CHUNK], start + c0, False, False, head=last)
        return out

    def _pass_steps(self, ids: np.ndarray, start: int, all_logits: bool, exact: bool,
                    head: bool = True) -> Iterator[tuple[str, np.ndarray]]:
        """forward_steps' batched pass over ids (n,) at positions start..start + n; head=False: the
        cache filled, no logits (an earlier chunk of a long prompt), returns None."""
        cfg, w, plan = self.config, self.w, self.plan
        mul = _mul_rows if exact else _mul
        n = len(ids)
        end = start + n
        positions = np.arange(start, end)  # (n,)

        # embedding: the rows of this shard's vocabulary slice, zeros elsewhere; the SUM assembles them
        v0, v1 = plan.vocab
        if v0 == 0 and v1 == cfg.vocab_size:
            x = w["token_embd"](ids)  # (n, d)
        else:
            x = np.zeros((n, cfg.d_model), np.float32)  # (n, d)
            mine = (ids >= v0) & (ids < v1)  # (n,)
            if mine.any():
                x[mine] = w["token_embd"](ids[mine] - v0)
        x = yield SUM, x  # (n, d)
        if cfg.embed_scale is not None:
            x = x * np.float32(cfg.embed_scale)  # Gemma scales embeddings by sqrt(d_model)
        if cfg.learned_positions:
            x = x + w["position_embd"][positions]  # (n, d)

        for i in range(cfg.n_layers):
            b = w["blk"][i]
            # attention block: norm -> my heads' q, k, v -> (QK-norm) -> RoPE -> cache -> attend -> output
            h = self._norm(x, b, "attn_norm")  # (n, d)
            if self.n_heads:
                att = self._self_attention(i, h, b, positions, mul, exact)  # (n, H_mine * hd_v)
                o = mul(b["attn_output"], att)  # (n, d) my heads' share
            else:
                o = np.zeros((n, cfg.d_model), np.float32)  # (n, d) more shards than heads: none here
            if plan.split_attention:
                o = yield SUM, o  # (n, d) all heads
            if "attn_output.bias" in b:
                o = o + b["attn_output.bias"]
            if "post_attention_norm" in b:
                o = rmsnorm(o, b["post_attention_norm"], cfg.eps)
            x = x + o  # residual

            # feed-forward block: norm -> act(gate) * up of my units -> down -> SUM -> (post-norm) -> residual
            h = self._norm(x, b, "ffn_norm")  # (n, d)
            f = yield SUM, self._ffn(h, b, mul)  # (n, d)
            if "ffn_down.bias" in b:
                f = f + b["ffn_down.bias"]
            if "post_ffw_norm" in b:
                f = rmsnorm(f, b["post_ffw_norm"], cfg.eps)
            x = x + f  # residual

        self.pos = end
        if not head:
            return None
        x = x if all_logits else x[-1:]  # only the last position feeds sampling
        x = self._norm(x, w, "output_norm")  # (m, d)
        logits = yield GATHER, mul(w["output"], x)  # (m, vocab_mine) -> (m, vocab) on the leader
        if logits is None:
            return None
        logits = np.asarray(logits).reshape(-1, cfg.vocab_size)  # (m, vocab)
        return logits if all_logits else logits[-1]

    # ---- pieces of forward ----------------------------------------------------------------------

    def _norm(self, x: np.ndarray, b: dict, name: str) -> np.ndarray:
        if self.config.layer_norm:
            return layernorm(x, b[name], b[name + ".bias"], self.config.eps)
        return rmsnorm(x, b[name], self.config.eps)

    def _qkv(self, h: np.ndarray, b: dict, mul):
        cfg, n = self.config, h.shape[0]
        if "attn_qkv" in b:  # fused (gpt2): rows are [q; k; v]
            qkv = mul(b["attn_qkv"], h)  # (n, (H + 2 KV) hd)
            if "attn_qkv.bias" in b:
                qkv = qkv + b["attn_qkv.bias"]
            dq, dk = self.n_heads * cfg.head_dim, self.n_kv * cfg.head_dim
            q, k, v = qkv[:, :dq], qkv[:, dq : dq + dk], qkv[:, dq + dk :]
        else:
            q, k, v = mul(b["attn_q"], h), mul(b["attn_k"], h), mul(b["attn_v"], h)  # (n, H hd), (n, KV hd), (n, KV hd_v)
            if "attn_q.bias" in b:
                q, k, v = q + b["attn_q.bias"], k + b["attn_k.bias"], v + b["attn_v.bias"]
        return (
            q.reshape(n, self.n_heads, cfg.head_dim),
            k.reshape(n, self.n_kv, cfg.head_dim),
            v.reshape(n, self.n_kv, cfg.v_head_dim),
        )

    def _self_attention(self, layer: int, h: np.ndarray, b: dict, positions: np.ndarray, mul,
                        exact: bool) -> np.ndarray:
        """q, k, v -> (QK-norm) -> RoPE -> append k, v to the cache -> attend. h: (n, d) -> (n, H * hd_v).
        exact: attend one position at a time, as decoding does (see forward_steps)."""
        cfg = self.config
        q, k, v = self._qkv(h, b, mul)  # (n, H, hd), (n, KV, hd), (n, KV, hd_v)
        if "attn_q_norm" in b:
            q = rmsnorm(q, b["attn_q_norm"], cfg.eps)
            k = rmsnorm(k, b["attn_k_norm"], cfg.eps)
        if not cfg.learned_positions:
            cos, sin = self._rope_angles(layer, positions)  # (n, 1, hd/2)
            q = rope(q, cos, sin, cfg.rope_neox)
            k = rope(k, cos, sin, cfg.rope_neox)
        start, end = int(positions[0]), int(positions[-1]) + 1
        n = end - start
        kc, vc = self.k_cache[layer], self.v_cache[layer]  # (rows, KV, hd), (rows, KV, hd_v)
        rows = len(kc)
        window = cfg.sliding_window if cfg.is_sliding(layer) else None
        if window is not None and end > rows and n > rows - window + 1:
            # more new positions than the ring holds beside the window (a long prompt): attend over
            # the window's past and the batch, then keep the batch's last `rows` positions
            lo = max(0, start - window + 1)
            past = np.arange(lo, start) % rows  # (start - lo,) rows of the window's past
            keys = np.concatenate([kc[past], k.astype(self.kv_dtype)])  # (T, KV, hd), as the cache holds them
            vals = np.concatenate([vc[past], v.astype(self.kv_dtype)])  # (T, KV, hd_v)
            _store(kc, vc, k[-rows:], v[-rows:], end - min(n, rows), end)
            return self._attend(q, keys, vals, np.arange(lo, end), start, window)
        _store(kc, vc, k, v, start, end)
        if exact and n > 1:  # each row as decoding would see the cache at its position
            return np.concatenate([self._attend_cache(layer, q[j : j + 1], start + j) for j in range(n)])
        return self._attend_cache(layer, q, start)  # (n, H * hd_v)

    def _rope_angles(self, layer: int, positions: np.ndarray):
        cfg = self.config
        pos = positions.astype(np.float64)
        if cfg.rope_scaling_type == "linear" and cfg.rope_scaling_factor and not cfg.is_sliding(layer):
            pos = pos / cfg.rope_scaling_factor
        ang = pos[:, None] * self._inv_freq[cfg.layer_rope_base(layer)][None, :]  # (n, rope_dim/2)
        cos = np.cos(ang).astype(np.float32)[:, None, :]  # (n, 1, hd/2)
        sin = np.sin(ang).astype(np.float32)[:, None, :]
        if cfg.rope_dim and cfg.rope_dim < cfg.head_dim:  # partial RoPE: the rest passes through
            pad = (cfg.head_dim - cfg.rope_dim) // 2
            cos = np.concatenate([cos, np.ones(cos.shape[:2] + (pad,), np.float32)], axis=-1)
            sin = np.concatenate([sin, np.zeros(sin.shape[:2] + (pad,), np.float32)], axis=-1)
        return cos, sin

    def _attend_cache(self, layer: int, q: np.ndarray, start: int) -> np.ndarray:
        """Attention of the queries at positions start.. over this layer's cache. The rows read
        depend on the positions alone (not on what was written and cut back), so a position's
        logits are the same bits in a verify pass as in plain decoding. q: (n, H, hd) -> (n, H * hd_v)."""
        kc, vc = self.k_cache[layer], self.v_cache[layer]  # (rows, KV, hd), (rows, KV, hd_v)
        rows, end = len(kc), start + q.shape[0]
        window = self.config.sliding_window if self.config.is_sliding(layer) else None
        if end <= rows:  # row p holds position p (rows that a cut-back draft overwrote hold positions
            # below `lo`: cut_floor keeps a cut within KV_REWIND of the highest position written)
            lo = 0 if window is None else max(0, start - window + 1)  # oldest key any of these queries may see
            return self._attend(q, kc[lo:end], vc[lo:end], np.arange(lo, end), start, window)
        # a ring that has wrapped: row r holds the latest position <= end - 1 that is r modulo rows
        # (older or later ones fall outside the window or in the future, and are masked)
        kpos = end - 1 - (end - 1 - np.arange(rows)) % rows  # (rows,)
        return self._attend(q, kc, vc, kpos, start, window)

    def _attend(self, q: np.ndarray, keys: np.ndarray, vals: np.ndarray, kpos: np.ndarray, start: int,
                window: int | None) -> np.ndarray:
        """Causal (and, for sliding layers, windowed) attention. q: (n, H, hd) at positions start..;
        keys, vals: (T, KV, hd) at positions kpos (T,), as the cache stores them (kv_dtype)."""
        cfg = self.config
        keys, vals = keys.astype(np.float32, copy=False), vals.astype(np.float32, copy=False)  # (T, KV, hd)
        n, n_heads, hd = q.shape
        kv, group = self.n_kv, n_heads // self.n_kv
        qg = q.reshape(n, kv, group, hd).transpose(1, 2, 0, 3)  # (KV, G, n, hd)
        scores = qg @ keys.transpose(1, 2, 0)[:, None]  # (KV, G, n, T)
        scores *= np.float32(cfg.attn_scale)
        qpos = np.arange(start, start + n)[:, None]  # (n, 1)
        masked = kpos > qpos  # causal
        if window is not None:
            masked |= qpos - kpos >= window  # sliding window: only the last `window` positions
        if masked.any():
            scores[..., masked] = -np.inf
        probs = _softmax_into(scores)  # (KV, G, n, T), in place: at a long context scores are MBs
        out = probs @ vals.transpose(1, 0, 2)[:, None]  # (KV, G, n, hd_v)
        return out.transpose(2, 0, 1, 3).reshape(n, n_heads * cfg.v_head_dim)  # (n, H hd_v)

    def _ffn(self, h: np.ndarray, b: dict, mul) -> np.ndarray:
        """My feed-forward units' share of the FFN output (ffn_down's bias is added after the SUM)."""
        act = _ACTIVATIONS[self.config.ffn_activation]
        if "ffn_gate" in b:  # gated: act(gate) * up
            g, u = mul(b["ffn_gate"], h), mul(b["ffn_up"], h)  # (n, d_ff_mine)
            return mul(b["ffn_down"], act(g) * u)  # (n, d)
        u = mul(b["ffn_up"], h)  # (n, d_ff_mine)
        if "ffn_up.bias" in b:
            u = u + b["ffn_up.bias"]
        return mul(b["ffn_down"], act(u))  # (n, d)


_ACTIVATIONS = {"silu": silu, "gelu_tanh": gelu_tanh, "gelu_erf": gelu_erf}


def _store(kc: np.ndarray, vc: np.ndarray, k: np.ndarray, v: np.ndarray, start: int, end: int) -> None:
    """Write positions start..end-1 into a layer's cache: row p, or p % rows in a ring."""
    rows = len(kc)
    if end <= rows:
        kc[start:end], vc[start:end] = k, v
    else:
        at = np.arange(start, end) % rows  # (n,)
        kc[at], vc[at] = k, v


def _mul(lin, x: np.ndarray) -> np.ndarray:
    """x @ W.T: (n, n_in) -> (n, n_out), batched over the rows (prefill) or one token (decode)."""
    return lin(x)


def _mul_rows(lin, x: np.ndarray) -> np.ndarray:
    """x @ W.T with every row bit-identical to a one-token product (forward_steps(exact=True))."""
    return lin.rows(x) if x.shape[0] > 1 else lin(x)  # (n, n_out)


# ---- the split: what one shard of N holds ---------------------------------------------------------


@dataclass(frozen=True)
class ShardPlan:
    """What shard `index` of `n_shards` computes; every range is [start, end). A whole model is 0 of 1."""

    index: int
    n_shards: int
    heads: tuple[int, int]      # query heads
    kv_heads: tuple[int, int]   # key/value heads those queries read (shared by several shards if N > n_kv)
    ffn: tuple[int, int]        # feed-forward units (rows of gate/up, columns of down)
    vocab: tuple[int, int]      # token ids: rows of token_embd and of the LM head
    split_attention: bool = True  # False: every shard computes all heads (no SUM after attention)


def _even(n: int, parts: int, unit: int = 1) -> list[int]:
    """Boundaries cutting n into `parts` nearly equal pieces at multiples of `unit`.

    >>> _even(10, 3), _even(96, 2, 32), _even(2048, 2, 256)
    ([0, 3, 7, 10], [0, 64, 96], [0, 1024, 2048])
    """
    if unit <= 1 or n % unit:
        return [round(n * k / parts) for k in range(parts + 1)]
    return [round(n / unit * k / parts) * unit for k in range(parts + 1)]


def plan_shards(cfg: ModelConfig, n: int, ffn_unit: int = 1, split_attention: bool = True) -> list[ShardPlan]:
    """Split `cfg`'s heads, feed-forward units and vocabulary over n shards (n = 1: the whole model).

    split_attention=False keeps attention whole on every shard (replicated: about a third of a
    Gemma 3 270M layer's weights) and splits only the FFN and the vocabulary: one SUM per layer
    instead of two, for machines where a sync point costs more than the attention it saves.

    Heads follow their kv groups: with n <= n_kv each shard takes whole groups; with more shards
    than kv heads each shard's heads lie inside one group (its kv head is then computed by every
    shard of that group: a few % of a layer, no sync needed). ffn_unit: the block size of ffn_down,
    so each shard's columns of it are whole blocks.
    """
    if not isinstance(n, int) or n < 1:
        raise ValueError(f"number of shards {n!r} must be a positive integer")
    if n > cfg.n_heads and split_attention:
        raise ConfigError(f"{n} shards for {cfg.n_heads} attention heads (expected at most one shard per head)")
    kv, group = cfg.kv_heads, cfg.n_heads // cfg.kv_heads
    heads, kvs = [], []
    if not split_attention:
        heads, kvs = [(0, cfg.n_heads)] * n, [(0, kv)] * n
    elif n <= kv:
        cuts = _even(kv, n)
        kvs = [(cuts[i], cuts[i + 1]) for i in range(n)]
        heads = [(a * group, b * group) for a, b in kvs]
    else:  # several shards per kv group: shard i works inside group i * kv // n
        for g in range(kv):
            members = [i for i in range(n) if i * kv // n == g]
            cuts = _even(group, len(members))
            for j, _ in enumerate(members):
                heads.append((g * group + cuts[j], g * group + cuts[j + 1]))
                kvs.append((g, g + 1))
    ffn = _even(cfg.d_ff, n, ffn_unit)
    vocab = _even(cfg.vocab_size, n)
    return [ShardPlan(i, n, heads[i], kvs[i], (ffn[i], ffn[i + 1]), (vocab[i], vocab[i + 1]), split_attention)
            for i in range(n)]


def plan_for(gguf: GGUFFile, n: int, split_attention: bool = True) -> list[ShardPlan]:
    """plan_shards for this file: its config, and ffn_down's block size (its column cuts must be whole blocks)."""
    cfg = ModelConfig.from_gguf(gguf)
    sizes = [quants.TYPES[gguf.tensors[f"blk.{i}.ffn_down.weight"].ggml_type].block_size
             for i in range(cfg.n_layers) if f"blk.{i}.ffn_down.weight" in gguf.tensors]
    return plan_shards(cfg, n, max(sizes, default=1), split_attention)


COLUMN_PARALLEL = ("attn_q", "attn_k", "attn_v", "attn_qkv", "ffn_gate", "ffn_up")  # split by rows
ROW_PARALLEL = ("attn_output", "ffn_down")  # split by columns; their partial outputs are summed


def row_ranges(cfg: ModelConfig, plan: ShardPlan) -> dict[str, list[tuple[int, int]]]:
    """Rows each column-parallel matrix contributes to this shard (several for the fused qkv)."""
    hd, hdv = cfg.head_dim, cfg.v_head_dim
    (h0, h1), (k0, k1), (f0, f1) = plan.heads, plan.kv_heads, plan.ffn
    q, k, v = (h0 * hd, h1 * hd), (k0 * hd, k1 * hd), (k0 * hdv, k1 * hdv)
    dq, dk = cfg.n_heads * hd, cfg.kv_heads * hd
    return {
        "attn_q": [q], "attn_k": [k], "attn_v": [v],
        "attn_qkv": [q, (dq + k[0], dq + k[1]), (dq + dk + v[0], dq + dk + v[1])],  # rows are [q; k; v]
        "ffn_gate": [(f0, f1)], "ffn_up": [(f0, f1)],
    }


def column_ranges(cfg: ModelConfig, plan: ShardPlan) -> dict[str, tuple[int, int]]:
    """Columns of each row-parallel matrix this shard multiplies (its heads' outputs, its units)."""
    (h0, h1), hdv = plan.heads, cfg.v_head_dim
    return {"attn_output": (h0 * hdv, h1 * hdv), "ffn_down": plan.ffn}


# ---- loading ------------------------------------------------------------------------------------

_MATRICES = ("attn_q", "attn_k", "attn_v", "attn_qkv", "attn_output", "ffn_gate", "ffn_up", "ffn_down")
_VECTORS = ("attn_norm", "ffn_norm", "attn_q_norm", "attn_k_norm", "post_attention_norm", "post_ffw_norm")


def load_model(gguf: GGUFFile, n_ctx: int | None = None, policy: LoadPolicy = LoadPolicy(),
               progress: Callable[[int, int], None] | None = None, plan: ShardPlan | None = None):
    """Build the model of a parsed GGUF file (or shard `plan` of it), by its general.architecture.

    gguf may be a whole file or an engine.shard.ShardFile holding only the byte ranges of `plan`.
    `progress(done, total)` is called with tensor bytes prepared so far (a bar for big files).
    """
    arch = gguf.metadata.get("general.architecture")
    if not isinstance(arch, str):
        raise ConfigError("GGUF metadata has no general.architecture string")
    if arch not in ARCHITECTURES:
        raise ConfigError(f"architecture {arch!r} not supported (expected one of {', '.join(ARCHITECTURES)})")
    return ARCHITECTURES[arch](gguf, n_ctx, policy, progress, plan)


def load_transformer(gguf: GGUFFile, n_ctx: int | None = None, policy: LoadPolicy = LoadPolicy(),
                     progress: Callable[[int, int], None] | None = None, plan: ShardPlan | None = None) -> Model:
    """A Model (or shard `plan` of one): hyperparameters once, then every weight this shard needs
    in its resident form (GGUF names kept: blk.{i}.attn_q, ffn_gate, token_embd, output, ...)."""
    cfg = ModelConfig.from_gguf(gguf)
    plan = plan or plan_shards(cfg, 1)[0]
    n_ctx = min(n_ctx or DEFAULT_CTX, cfg.context_length)

    def tensor(name: str, shape: tuple[int, ...] | None = None):
        if name not in gguf.tensors:
            raise ConfigError(f"{cfg.architecture} model is missing tensor {name}")
        t = gguf.tensors[name]
        if shape is not None and tuple(t.shape) != shape:
            raise ConfigError(f"tensor {name} has shape {tuple(t.shape)} (expected {shape})")
        return t

    def vector(name: str, size: int) -> np.ndarray:
        t = tensor(name, (size,))
        return quants.dequantize(gguf.raw(name), t.ggml_type, t.shape)  # (size,) float32

    d, hd, hdv = cfg.d_model, cfg.head_dim, cfg.v_head_dim
    shapes = {
        "attn_q": (cfg.n_heads * hd, d),
        "attn_k": (cfg.kv_heads * hd, d),
        "attn_v": (cfg.kv_heads * hdv, d),
        "attn_qkv": ((cfg.n_heads + cfg.kv_heads) * hd + cfg.kv_heads * hdv, d),
        "attn_output": (d, cfg.n_heads * hdv),
        "ffn_gate": (cfg.d_ff, d),
        "ffn_up": (cfg.d_ff, d),
        "ffn_down": (d, cfg.d_ff),
    }
    vec_sizes = {"attn_q_norm": hd, "attn_k_norm": hd}
    rows, cols = row_ranges(cfg, plan), column_ranges(cfg, plan)
    total_bytes = sum(t.nbytes for t in gguf.tensors.values())
    done_bytes = 0
    dense_left = policy.dense_layers_mb * 2**20  # float32 bytes still allowed for block matrices
    release = getattr(gguf, "release", None)  # drop a tensor's file pages once it has been copied

    def matrix(name: str, t, n_out: int, n_in: int, cut):
        """My part of matrix `name` (cut(dense) builds it), float32 while the budget lasts."""
        nonlocal dense_left, done_bytes
        dense = 4 * n_out * n_in <= dense_left
        dense_left -= 4 * n_out * n_in if dense else 0
        lin = cut(dense)
        if release is not None and lin.copied:
            release(name)
        done_bytes += t.nbytes
        if progress is not None:
            progress(done_bytes, total_bytes)
        return lin

    blocks = []
    for i in range(cfg.n_layers):
        b: dict = {}
        for m in _MATRICES:
            name = f"blk.{i}.{m}.weight"
            if name not in gguf.tensors:
                continue
            t = tensor(name, shapes[m])
            bias = gguf.tensors.get(f"blk.{i}.{m}.bias")
            if m in rows:  # column-parallel: my rows (and their biases)
                spans = [(a, e) for a, e in rows[m] if e > a]
                n_rows = sum(e - a for a, e in spans)
                if n_rows:
                    b[m] = matrix(name, t, n_rows, t.shape[1],
                                  lambda dense: _rows(gguf, name, spans, dense, policy))
                if bias is not None:
                    full = vector(bias.name, shapes[m][0])  # (n_out,)
                    b[m + ".bias"] = np.concatenate([full[a:e] for a, e in spans]) if spans else full[:0]
            else:  # row-parallel: my columns; the bias is added once, after the SUM
                c0, c1 = cols[m]
                if c1 > c0:
                    b[m] = matrix(name, t, t.shape[0], c1 - c0,
                                  lambda dense: _columns(gguf, name, c0, c1, dense, policy))
                if bias is not None:
                    b[m + ".bias"] = vector(bias.name, shapes[m][0])
        for v in _VECTORS:
            if f"blk.{i}.{v}.weight" in gguf.tensors:
                b[v] = vector(f"blk.{i}.{v}.weight", vec_sizes.get(v, d))
                if f"blk.{i}.{v}.bias" in gguf.tensors:
                    b[v + ".bias"] = vector(f"blk.{i}.{v}.bias", vec_sizes.get(v, d))
        _check_layer(cfg, i, gguf.tensors)
        blocks.append(b)

    emb = tensor("token_embd.weight")
    if len(emb.shape) != 2 or emb.shape[1] != d:
        raise ConfigError(f"token_embd.weight has shape {tuple(emb.shape)} (expected (vocab, {d}))")
    v0, v1 = plan.vocab
    weights: dict = {"blk": blocks, "token_embd": Embedding(gguf.rows(emb.name, v0, v1), emb.ggml_type, (v1 - v0, d))}
    weights["output_norm"] = vector("output_norm.weight", d)
    if "output_norm.bias" in gguf.tensors:
        weights["output_norm.bias"] = vector("output_norm.bias", d)
    head = tensor("output.weight") if "output.weight" in gguf.tensors else emb  # tied when absent
    if len(head.shape) != 2 or head.shape[1] != d:
        raise ConfigError(f"{head.name} has shape {tuple(head.shape)} (expected (vocab, {d}))")
    head_dense = 4 * (v1 - v0) * d <= policy.dense_head_mb * 2**20
    weights["output"] = _rows(gguf, head.name, [(v0, v1)], head_dense, policy)  # (vocab_mine, d)
    if getattr(weights["output"], "compacted", False) and head is emb:  # tied: the file's rows are gone
        weights["token_embd"] = Embedding.from_block(weights["output"], emb.ggml_type)
    if release is not None and weights["output"].copied:  # the kernel repacked the head: drop its file pages
        release(head.name)
    if cfg.learned_positions:
        pe = tensor("position_embd.weight")
        weights["position_embd"] = quants.dequantize(gguf.raw(pe.name), pe.ggml_type, pe.shape)  # (n_pos, d)
        n_ctx = min(n_ctx, pe.shape[0])
    if progress is not None:
        progress(total_bytes, total_bytes)
    model = Model(cfg, plan, weights, n_ctx, policy.kv_dtype)
    reserve_scratch([v for b in blocks + [weights] for v in b.values()])  # after the KV cache: nothing grows past them
    return model


def _check_layer(cfg: ModelConfig, i: int, tensors: dict) -> None:
    """Every tensor layer i's forward pass reads is in the file (whichever part this shard holds)."""
    def has(m: str) -> bool:
        return f"blk.{i}.{m}.weight" in tensors

    missing = [m for m in ("attn_norm", "attn_output", "ffn_norm", "ffn_up", "ffn_down") if not has(m)]
    if not has("attn_qkv") and not all(has(m) for m in ("attn_q", "attn_k", "attn_v")):
        missing.append("attn_q/attn_k/attn_v or attn_qkv")
    if cfg.architecture == "gemma3":
        missing += [m for m in ("attn_q_norm", "attn_k_norm", "post_attention_norm", "post_ffw_norm") if not has(m)]
    if cfg.architecture in ("llama", "qwen2", "gemma3") and not has("ffn_gate"):
        missing.append("ffn_gate")
    if missing:
        raise ConfigError(f"layer {i}: missing tensors {', '.join(missing)}")


def _rows(gguf: GGUFFile, name: str, spans: list[tuple[int, int]], dense: bool, policy: LoadPolicy):
    """Resident form of the given row ranges of matrix `name`, concatenated in order."""
    t = gguf.tensors[name]
    parts = [gguf.rows(name, a, b) for a, b in spans if b > a]
    raw = parts[0] if len(parts) == 1 else np.concatenate(parts)  # (rows * row bytes,) uint8
    n_rows = sum(b - a for a, b in spans)
    return _prepare(raw, t.ggml_type, (n_rows, t.shape[1]), dense, policy.own_buffer, policy)


def _prepare(raw: np.ndarray, ggml_type: int, shape: tuple[int, int], dense: bool, in_place: bool, policy: LoadPolicy):
    """matmul.prepare_linear with what `policy` says of this block type."""
    return prepare_linear(raw, ggml_type, shape, dense=dense, in_place=in_place, packed=policy.packs(ggml_type),
                          values=policy.values(ggml_type), float_scales=policy.float_scales)


def _columns(gguf: GGUFFile, name: str, c0: int, c1: int, dense: bool, policy: LoadPolicy):
    """Resident form of columns c0..c1 of matrix `name`: whole blocks when the cut allows it.

    A cut is a fresh copy (unless it is every column), so Q8_0 is compacted in it; with
    own_buffer the file's bytes are this model's own and may be compacted too.
    """
    t = gguf.tensors[name]
    n_out, n_in = t.shape
    qt = quants.TYPES[t.ggml_type]
    if (c0, c1) == (0, n_in):
        return _prepare(gguf.raw(name), t.ggml_type, t.shape, dense, policy.own_buffer, policy)
    if c0 % qt.block_size == 0 and c1 % qt.block_size == 0:
        b0, b1 = c0 // qt.block_size * qt.type_size, c1 // qt.block_size * qt.type_size  # byte columns
        part = gguf.columns(name, b0, b1)  # (n_out, cut bytes) whole blocks: a copy, or a shard's own piece
        return _prepare(part.reshape(-1), t.ggml_type, (n_out, c1 - c0), dense, True, policy)
    # a cut inside a block (tiny models only): dequantize, keep float32 columns
    w = quants.dequantize(gguf.raw(name), t.ggml_type, t.shape)  # (n_out, n_in) float32
    return DenseLinear(np.ascontiguousarray(w[:, c0:c1]))


def resident_bytes(model: Model) -> int:
    """Bytes held by prepared weights and the KV cache (not counting the mapped file)."""
    total = sum(c.nbytes for c in model.k_cache + model.v_cache)
    for b in model.w["blk"] + [model.w]:
        for v in b.values():
            if isinstance(v, (DenseLinear, BlockLinear, PackedLinear)):
                total += v.nbytes
            elif isinstance(v, np.ndarray):
                total += v.nbytes
    return total


def _load_atome(gguf: GGUFFile, n_ctx: int | None, policy: LoadPolicy, progress, plan: ShardPlan | None):
    """engine/atome.py's model (Atome LM: conv, SSM and top-k attention blocks; one process only)."""
    from . import atome  # imported here: it uses this module's helpers

    if plan is not None and plan.n_shards > 1:
        raise ConfigError("architecture 'atome' cannot be sharded")
    return atome.load_model(gguf, n_ctx)


# The architecture table: general.architecture -> the function that builds its model.
ARCHITECTURES: dict[str, Callable] = {
    **{arch: load_transformer for arch in SUPPORTED_ARCHITECTURES},  # llama, qwen2, gemma3, gpt2
    "atome": _load_atome,
}
