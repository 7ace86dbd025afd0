"""Forward pass with a KV cache (pipeline stage: matmul.py -> model.py -> sampler.py).

One `forward()` for all supported transformer families, reading like the maths; the per-family
differences are switches on `ModelConfig` (norm kind, RoPE layout, biases, gating, extra norms).

    llama   RMSNorm, RoPE on adjacent pairs (GGUF stores Q/K permuted for it), SwiGLU, GQA
    qwen2   llama + Q/K/V biases, RoPE on halves (NeoX)
    gemma3  embeddings * sqrt(d), QK-norm, norms before and after attention and FFN,
            GELU-tanh gate, five sliding-window layers (RoPE base 10k) per global one (base 1M)
    gpt2    LayerNorm with bias, learned positions, fused QKV with bias, GELU MLP

Weights keep their GGUF names (`blk.{i}.attn_q`, `ffn_gate`, `token_embd`, ...). Prefill is one
batched pass over the prompt; decoding feeds one token at a time. The KV cache is allocated once
for the context length.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np

from . import quants
from .config import ConfigError, ModelConfig
from .gguf import GGUFFile
from .matmul import BlockLinear, DenseLinear, Embedding, prepare_linear

DEFAULT_CTX = 2048  # KV cache length unless asked otherwise (Gemma's 32k would need 1.2 GB)


@dataclass(frozen=True)
class LoadPolicy:
    """What to keep resident as float32 (fast BLAS products) and what as int8 blocks (1 byte/weight).

    dense_layers_mb: float32 budget for the transformer blocks' matrices, filled in layer order;
        matrices past the budget stay as int8 blocks (about 2x slower per weight natively).
        256 MB keeps Gemma 3 270M at ~600 MB RSS, ~680 MB with a full 2048-token KV cache.
    dense_head_mb: the LM head (often the largest matrix: Gemma's is 262144 x 640, 671 MB as
        float32) is float32 only below this size.
    own_buffer: the GGUF buffer is this model's private, writable copy (the browser worker's, never
        parsed again), so block weights may be rearranged in it in place (Q8_0 compacted to
        contiguous int8 rows, `matmul.compact_q8_0`). Off for files (read-only mmap) and shared bytes.

    The defaults keep Gemma 3 270M under 700 MB resident while generating (see README, "Memory").
    """

    dense_layers_mb: float = 256.0
    dense_head_mb: float = 64.0
    own_buffer: bool = False


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


class Model:
    """A loaded model: prepared weights, the KV cache, and `forward`."""

    def __init__(self, config: ModelConfig, weights: dict, n_ctx: int):
        self.config = config
        self.w = weights
        self.n_ctx = n_ctx
        cfg = config
        kv_shape = (cfg.n_layers, n_ctx, cfg.kv_heads, cfg.head_dim)
        self.k_cache = np.zeros(kv_shape, dtype=np.float32)  # (L, n_ctx, n_kv, hd)
        self.v_cache = np.zeros(kv_shape[:3] + (cfg.v_head_dim,), dtype=np.float32)  # (L, n_ctx, n_kv, hd_v)
        self.pos = 0
        if cfg.architecture == "gemma3":
            # llama.cpp: Gemma 3 27B scales queries by 1/sqrt(d_model / n_heads), the others by 1/sqrt(head_dim).
            q_scalar = cfg.d_model // cfg.n_heads if cfg.n_layers == 62 else cfg.head_dim
            self.attn_scale = 1.0 / math.sqrt(q_scalar)
        else:
            self.attn_scale = 1.0 / math.sqrt(cfg.head_dim)
        rope_dim = cfg.rope_dim or cfg.head_dim
        self._inv_freq = {}
        for layer in range(cfg.n_layers):
            base = cfg.layer_rope_base(layer)
            self._inv_freq.setdefault(base, 1.0 / base ** (np.arange(0, rope_dim, 2, dtype=np.float64) / rope_dim))

    def reset(self) -> None:
        self.pos = 0

    # The one forward pass. tokens: (n,) ids appended after the cached ones.
    def forward(self, tokens: Sequence[int], all_logits: bool = False) -> np.ndarray:
        cfg, w = self.config, self.w
        ids = np.asarray(tokens, dtype=np.int64).reshape(-1)  # (n,)
        n = len(ids)
        if n == 0:
            raise ValueError("forward needs at least one token")
        if self.pos + n > self.n_ctx:
            raise ValueError(f"context full: {self.pos} + {n} tokens > n_ctx {self.n_ctx}")
        start, end = self.pos, self.pos + n
        positions = np.arange(start, end)  # (n,)

        x = w["token_embd"](ids)  # (n, d)
        if cfg.architecture == "gemma3":
            x = x * np.float32(math.sqrt(cfg.d_model))  # Gemma scales embeddings by sqrt(d_model)
        if cfg.architecture == "gpt2":
            x = x + w["position_embd"][positions]  # learned positions, (n, d)

        for i in range(cfg.n_layers):
            b = w["blk"][i]
            # attention block: norm -> q, k, v -> (QK-norm) -> RoPE -> cache -> attend -> output
            h = self._norm(x, b, "attn_norm")  # (n, d)
            att = self._self_attention(i, h, b, positions)  # (n, H * hd_v)
            o = b["attn_output"](att)  # (n, d)
            if "attn_output.bias" in b:
                o = o + b["attn_output.bias"]
            if "post_attention_norm" in b:
                o = rmsnorm(o, b["post_attention_norm"], cfg.eps)
            x = x + o  # residual

            # feed-forward block: norm -> (gate *) up -> down -> (post-norm) -> residual
            h = self._norm(x, b, "ffn_norm")  # (n, d)
            f = self._ffn(h, b)  # (n, d)
            if "post_ffw_norm" in b:
                f = rmsnorm(f, b["post_ffw_norm"], cfg.eps)
            x = x + f  # residual

        self.pos = end
        x = x if all_logits else x[-1:]  # only the last position feeds sampling
        x = self._norm(x, w, "output_norm")  # (m, d)
        logits = w["output"](x)  # (m, vocab)
        return logits if all_logits else logits[0]

    # ---- pieces of forward ----------------------------------------------------------------------

    def _norm(self, x: np.ndarray, b: dict, name: str) -> np.ndarray:
        if self.config.architecture == "gpt2":
            return layernorm(x, b[name], b[name + ".bias"], self.config.eps)
        return rmsnorm(x, b[name], self.config.eps)

    def _qkv(self, h: np.ndarray, b: dict):
        cfg, n = self.config, h.shape[0]
        if "attn_qkv" in b:  # fused (gpt2): rows are [q; k; v]
            qkv = b["attn_qkv"](h)  # (n, (H + 2 KV) hd)
            if "attn_qkv.bias" in b:
                qkv = qkv + b["attn_qkv.bias"]
            dq, dk = cfg.n_heads * cfg.head_dim, cfg.kv_heads * cfg.head_dim
            q, k, v = qkv[:, :dq], qkv[:, dq : dq + dk], qkv[:, dq + dk :]
        else:
            q, k, v = b["attn_q"](h), b["attn_k"](h), b["attn_v"](h)  # (n, H hd), (n, KV hd), (n, KV hd_v)
            if "attn_q.bias" in b:
                q, k, v = q + b["attn_q.bias"], k + b["attn_k.bias"], v + b["attn_v.bias"]
        return (
            q.reshape(n, cfg.n_heads, cfg.head_dim),
            k.reshape(n, cfg.kv_heads, cfg.head_dim),
            v.reshape(n, cfg.kv_heads, cfg.v_head_dim),
        )

    def _self_attention(self, layer: int, h: np.ndarray, b: dict, positions: np.ndarray) -> np.ndarray:
        """q, k, v -> (QK-norm) -> RoPE -> append k, v to the cache -> attend. h: (n, d) -> (n, H * hd_v)."""
        cfg = self.config
        q, k, v = self._qkv(h, b)  # (n, H, hd), (n, KV, hd), (n, KV, hd_v)
        if "attn_q_norm" in b:
            q = rmsnorm(q, b["attn_q_norm"], cfg.eps)
            k = rmsnorm(k, b["attn_k_norm"], cfg.eps)
        if cfg.architecture != "gpt2":
            cos, sin = self._rope_angles(layer, positions)  # (n, 1, hd/2)
            q = rope(q, cos, sin, cfg.rope_neox)
            k = rope(k, cos, sin, cfg.rope_neox)
        start, end = int(positions[0]), int(positions[-1]) + 1
        self.k_cache[layer, start:end] = k
        self.v_cache[layer, start:end] = v
        return self._attend(layer, q, start, end)  # (n, H * hd_v)

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

    def _attend(self, layer: int, q: np.ndarray, start: int, end: int) -> np.ndarray:
        """Causal (and, for sliding layers, windowed) attention over the cache. q: (n, H, hd)."""
        cfg = self.config
        n, n_heads, hd = q.shape
        kv, group = cfg.kv_heads, cfg.n_heads // cfg.kv_heads
        lo = 0
        window = cfg.sliding_window if cfg.is_sliding(layer) else None
        if window is not None:
            lo = max(0, start - window + 1)  # oldest key any of these queries may see
        keys = self.k_cache[layer, lo:end]  # (T, KV, hd)
        vals = self.v_cache[layer, lo:end]  # (T, KV, hd_v)
        qg = q.reshape(n, kv, group, hd).transpose(1, 2, 0, 3)  # (KV, G, n, hd)
        scores = qg @ keys.transpose(1, 2, 0)[:, None]  # (KV, G, n, T)
        scores *= np.float32(self.attn_scale)
        qpos = np.arange(start, end)[:, None]  # (n, 1)
        kpos = np.arange(lo, end)[None, :]  # (1, T)
        masked = kpos > qpos  # causal
        if window is not None:
            masked |= qpos - kpos >= window  # sliding window: only the last `window` positions
        if masked.any():
            scores[..., masked] = -np.inf
        probs = softmax(scores)  # (KV, G, n, T)
        out = probs @ vals.transpose(1, 0, 2)[:, None]  # (KV, G, n, hd_v)
        return out.transpose(2, 0, 1, 3).reshape(n, n_heads * cfg.v_head_dim)  # (n, H hd_v)

    def _ffn(self, h: np.ndarray, b: dict) -> np.ndarray:
        arch = self.config.architecture
        if "ffn_gate" in b:  # gated: act(gate) * up
            g, u = b["ffn_gate"](h), b["ffn_up"](h)  # (n, d_ff)
            a = gelu_tanh(g) if arch == "gemma3" else silu(g)
            return b["ffn_down"](a * u)  # (n, d)
        u = b["ffn_up"](h)  # (n, d_ff)
        if "ffn_up.bias" in b:
            u = u + b["ffn_up.bias"]
        a = gelu_erf(u) if self.config.extra.get("activation") == "gelu_erf" else gelu_tanh(u)
        f = b["ffn_down"](a)  # (n, d)
        if "ffn_down.bias" in b:
            f = f + b["ffn_down.bias"]
        return f


# ---- loading ------------------------------------------------------------------------------------

_MATRICES = ("attn_q", "attn_k", "attn_v", "attn_qkv", "attn_output", "ffn_gate", "ffn_up", "ffn_down")
_VECTORS = ("attn_norm", "ffn_norm", "attn_q_norm", "attn_k_norm", "post_attention_norm", "post_ffw_norm")


def load_model(gguf: GGUFFile, n_ctx: int | None = None, policy: LoadPolicy = LoadPolicy(),
               progress: Callable[[int, int], None] | None = None) -> Model:
    """Build a Model from a parsed GGUF file: hyperparameters once, then every weight in its resident form.

    `progress(done, total)` is called with tensor bytes prepared so far (a bar for big files).
    """
    md = gguf.metadata
    if md.get("general.architecture") == "atome":  # not a transformer: its own module
        from . import atome

        return atome.load_from_gguf(gguf, n_ctx)
    vocab = gguf.tensors["token_embd.weight"].shape[0] if "token_embd.weight" in gguf.tensors else None
    cfg = ModelConfig.from_metadata(md, vocab_size=vocab)
    if md.get(f"{cfg.architecture}.mote.activation") == "gelu_erf":  # written by `mote convert` for exact-GELU models
        cfg = ModelConfig(**{**cfg.__dict__, "extra": {"activation": "gelu_erf"}})
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
    total_bytes = sum(t.nbytes for t in gguf.tensors.values())
    done_bytes = 0
    dense_left = policy.dense_layers_mb * 2**20  # float32 bytes still allowed for block matrices
    release = getattr(gguf, "release", None)  # drop a tensor's file pages once it has been copied

    blocks = []
    for i in range(cfg.n_layers):
        b: dict = {}
        for m in _MATRICES:
            name = f"blk.{i}.{m}.weight"
            if name in gguf.tensors:
                t = tensor(name, shapes[m])
                dense = 4 * math.prod(t.shape) <= dense_left
                dense_left -= 4 * math.prod(t.shape) if dense else 0
                b[m] = prepare_linear(gguf.raw(name), t.ggml_type, t.shape, dense=dense, in_place=policy.own_buffer)
                if release is not None and b[m].copied:
                    release(name)
                done_bytes += t.nbytes
                if progress is not None:
                    progress(done_bytes, total_bytes)
                if f"blk.{i}.{m}.bias" in gguf.tensors:
                    b[m + ".bias"] = vector(f"blk.{i}.{m}.bias", shapes[m][0])
        for v in _VECTORS:
            if f"blk.{i}.{v}.weight" in gguf.tensors:
                b[v] = vector(f"blk.{i}.{v}.weight", vec_sizes.get(v, d))
                if f"blk.{i}.{v}.bias" in gguf.tensors:
                    b[v + ".bias"] = vector(f"blk.{i}.{v}.bias", vec_sizes.get(v, d))
        missing = [m for m in ("attn_norm", "attn_output", "ffn_norm", "ffn_up", "ffn_down") if m not in b]
        if "attn_qkv" not in b and not all(m in b for m in ("attn_q", "attn_k", "attn_v")):
            missing.append("attn_q/attn_k/attn_v or attn_qkv")
        if cfg.architecture == "gemma3":
            missing += [m for m in ("attn_q_norm", "attn_k_norm", "post_attention_norm", "post_ffw_norm") if m not in b]
        if cfg.architecture in ("llama", "qwen2", "gemma3") and "ffn_gate" not in b:
            missing.append("ffn_gate")
        if missing:
            raise ConfigError(f"layer {i}: missing tensors {', '.join(missing)}")
        blocks.append(b)

    emb = tensor("token_embd.weight")
    if len(emb.shape) != 2 or emb.shape[1] != d:
        raise ConfigError(f"token_embd.weight has shape {tuple(emb.shape)} (expected (vocab, {d}))")
    weights: dict = {"blk": blocks, "token_embd": Embedding(gguf.raw("token_embd.weight"), emb.ggml_type, emb.shape)}
    weights["output_norm"] = vector("output_norm.weight", d)
    if "output_norm.bias" in gguf.tensors:
        weights["output_norm.bias"] = vector("output_norm.bias", d)
    head = tensor("output.weight") if "output.weight" in gguf.tensors else emb  # tied when absent
    if len(head.shape) != 2 or head.shape[1] != d:
        raise ConfigError(f"{head.name} has shape {tuple(head.shape)} (expected (vocab, {d}))")
    head_dense = 4 * math.prod(head.shape) <= policy.dense_head_mb * 2**20
    weights["output"] = prepare_linear(gguf.raw(head.name), head.ggml_type, head.shape, dense=head_dense,
                                       in_place=policy.own_buffer)
    if getattr(weights["output"], "compacted", False) and head is emb:  # tied: the file's rows are gone
        weights["token_embd"] = Embedding.from_block(weights["output"], emb.ggml_type)
    if release is not None and weights["output"].copied:  # the kernel repacked the head: drop its file pages
        release(head.name)
    if cfg.architecture == "gpt2":
        pe = tensor("position_embd.weight")
        weights["position_embd"] = quants.dequantize(gguf.raw(pe.name), pe.ggml_type, pe.shape)  # (n_pos, d)
        n_ctx = min(n_ctx, pe.shape[0])
    if progress is not None:
        progress(total_bytes, total_bytes)
    return Model(cfg, weights, n_ctx)


def resident_bytes(model: Model) -> int:
    """Bytes held by prepared weights and the KV cache (not counting the mapped file)."""
    total = model.k_cache.nbytes + model.v_cache.nbytes
    for b in model.w["blk"] + [model.w]:
        for v in b.values():
            if isinstance(v, (DenseLinear, BlockLinear)):
                total += v.nbytes
            elif isinstance(v, np.ndarray):
                total += v.nbytes
    return total
