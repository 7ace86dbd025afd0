"""Model shards for decoding across several workers (a parallel variant of stage model.py).

Each of N workers holds a slice of every layer's matrices and computes a slice of the forward
pass; the workers meet at a few sync points per token and sum (or concatenate) their partial
results. The split is Megatron-style, so a layer needs two sums, not one per matrix:

    x (replicated) -> norm -> q, k, v of MY heads (rows of attn_q/k/v)    column-parallel
                   -> RoPE, KV cache and attention of MY heads            local
                   -> attn_output[:, MY head columns] @ att -> partial    row-parallel
                   == SUM 1 ==  (+ bias) -> post-norm -> residual         replicated
                   -> norm -> gate, up of MY ffn units (rows)             column-parallel
                   -> ffn_down[:, MY units] @ act -> partial               row-parallel
                   == SUM 2 ==  (+ bias) -> post-norm -> residual         replicated

Per token there are 2 * n_layers + 2 sync points: one SUM for the embedding (each worker owns a
vocabulary slice of token_embd and adds zeros for ids it does not own, so no worker needs the
whole table), two per layer, and one GATHER of the logits, where each worker's vocabulary slice of
the LM head goes to the leader (shard 0), which samples. Every worker sums the same partials in
shard order, so the replicated activations are bit-identical on all of them.

What crosses each boundary:

    GGUF header bytes -> ShardFile.header(...)            metadata + tensor infos, no tensor data
        -> plan_shards(config, N)[i] -> ShardPlan          heads, kv heads, ffn units, vocab rows
        -> shard_ranges(file, plan) -> [(start, end)]     the only file bytes worker i needs
        -> ShardFile(header, size, pieces) -> load_shard -> ShardModel
        -> ShardModel.forward_steps(tokens)               a generator: yields (SUM | GATHER, partial),
                                                           is sent the combined array, returns logits

`run_lockstep` drives N shards in one process (the tests compare it with Model.forward);
`ShardRunner` drives one shard from a browser worker through a float32 mailbox, one call per sync
point, and `LeaderSession` runs engine.generate on the leader with logits computed ahead by the
shards (`LookaheadModel`). Nothing here touches the browser: static/parallel-worker.js copies
bytes in and out through Python buffers (see ShardRunner).

Memory: a worker holds its vocabulary slice of the embedding/LM head, its rows of the
column-parallel matrices and its columns of the row-parallel ones (attn_output and ffn_down are
fetched whole, about 1.4 MB per Gemma 3 270M layer, and cut after loading), the norms, and the
KV cache of its own kv heads.
"""

from __future__ import annotations

import bisect
import dataclasses
import hashlib
import math
import time
from dataclasses import dataclass
from typing import Iterator, Sequence

import numpy as np

from . import quants
from .config import ConfigError, ModelConfig
from .gguf import GGUFError, GGUFFile, TensorInfo
from .matmul import DenseLinear, Embedding, prepare_linear
from .model import DEFAULT_CTX, LoadPolicy, Model, rmsnorm

SUM = "sum"        # sync point: every worker gets the sum of all partials, in shard order
GATHER = "gather"  # sync point: the leader gets the concatenation of all slices (the logits)
LEADER = 0         # the shard that samples and runs the generation loop
MERGE_GAP = 4096   # byte ranges closer than this are fetched as one (tensors are padded to 32)

# Worker-side defaults, as engine.bridge loads the single-worker model: int8 blocks, no float32 copies.
WORKER_POLICY = LoadPolicy(dense_layers_mb=0.0)


# ---- the split --------------------------------------------------------------------------------


@dataclass(frozen=True)
class ShardPlan:
    """What shard `index` of `n_shards` computes; every range is [start, end)."""

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
    cuts = [round(n / unit * k / parts) * unit for k in range(parts + 1)]
    return cuts


def plan_shards(cfg: ModelConfig, n: int, ffn_unit: int = 1, split_attention: bool = True) -> list[ShardPlan]:
    """Split `cfg`'s heads, feed-forward units and vocabulary over n shards.

    split_attention=False keeps attention whole on every shard (replicated: about a third of a
    Gemma 3 270M layer's weights) and splits only the FFN and the vocabulary: one SUM per layer
    instead of two, for machines where a sync point costs more than the attention it saves.

    Heads follow their kv groups: with n <= n_kv each shard takes whole groups; with more shards
    than kv heads each shard's heads lie inside one group (its kv head is then computed by every
    shard of that group: a few % of a layer, no sync needed). ffn_unit: the block size of ffn_down,
    so each shard's columns of it are whole blocks (see load_shard).
    """
    if not isinstance(n, int) or n < 1:
        raise ValueError(f"number of shards {n!r} must be a positive integer")
    if n > cfg.n_heads and split_attention:
        raise ValueError(f"{n} shards for {cfg.n_heads} attention heads (expected at most one shard per head)")
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


# ---- the file: a header plus the byte ranges one shard needs ------------------------------------


class ShardFile(GGUFFile):
    """A GGUF file of which only the header and some byte ranges are in memory.

    header: the file's first bytes, at least up to the data section; file_size: the whole file's
    size (tensor infos are checked against it, as GGUFFile checks them against its buffer);
    pieces: (file offset, bytes-like) ranges of tensor data. raw(name) and rows(name, a, b) give
    views into the piece that holds them, and name the tensor when no piece does.
    """

    def __init__(self, header, file_size: int, pieces: Sequence[tuple[int, object]] = ()):
        if not isinstance(file_size, int) or file_size <= 0:
            raise ValueError(f"file size {file_size!r} must be a positive number of bytes")
        self.file_size = file_size
        super().__init__(header)  # parses the metadata and tensor infos
        self.pieces = []          # (start, end, uint8 array) sorted by start
        for start, data in pieces:
            arr = np.frombuffer(data, dtype=np.uint8)  # (n,) view, no copy
            if start < 0 or start + len(arr) > file_size:
                raise ValueError(f"piece [{start}, {start + len(arr)}) lies outside the {file_size}-byte file")
            self.pieces.append((start, start + len(arr), arr))
        self.pieces.sort(key=lambda p: p[0])

    @classmethod
    def header_length(cls, prefix, file_size: int) -> int:
        """Bytes the header takes (the data section's offset), or 0 if `prefix` is too short to tell."""
        try:
            return cls(prefix, file_size).data_offset
        except GGUFError:
            if len(memoryview(prefix)) >= file_size:
                raise  # the whole file is there: a real defect
            return 0

    def _file_nbytes(self) -> int:
        """Tensors are checked against the declared file size, not the header bytes held."""
        return self.file_size

    def _span(self, name: str, start: int, end: int) -> np.ndarray:
        for p_start, p_end, arr in self.pieces:
            if p_start <= start and end <= p_end:
                return arr[start - p_start : end - p_start]  # (end - start,) view
        raise KeyError(f"bytes [{start}, {end}) of tensor {name!r} are not among this shard's pieces")

    def raw(self, name: str) -> np.ndarray:
        t = self.tensors.get(name)
        if t is None:
            raise KeyError(f"no tensor named {name!r} in this GGUF file ({len(self.tensors)} tensors)")
        return self._span(name, t.offset, t.offset + t.nbytes)

    def rows(self, name: str, a: int, b: int) -> np.ndarray:
        """Bytes of rows a..b of a 2-D tensor (one row = one output of the matrix)."""
        t = self.tensors[name]
        rb = quants.row_nbytes(t.ggml_type, t.shape[-1])
        return self._span(name, t.offset + a * rb, t.offset + b * rb)


def _row_span(t: TensorInfo, a: int, b: int) -> tuple[int, int]:
    rb = quants.row_nbytes(t.ggml_type, t.shape[-1])
    return t.offset + a * rb, t.offset + b * rb


def config_of(gf: GGUFFile) -> ModelConfig:
    """The model's hyperparameters, read as load_model reads them."""
    vocab = gf.tensors["token_embd.weight"].shape[0] if "token_embd.weight" in gf.tensors else None
    cfg = ModelConfig.from_metadata(gf.metadata, vocab_size=vocab)
    if gf.metadata.get(f"{cfg.architecture}.mote.activation") == "gelu_erf":
        cfg = dataclasses.replace(cfg, extra={"activation": "gelu_erf"})
    return cfg


def ffn_unit(gf: GGUFFile, cfg: ModelConfig) -> int:
    """The largest block size among the ffn_down matrices (their column cuts must be whole blocks)."""
    sizes = [quants.TYPES[gf.tensors[f"blk.{i}.ffn_down.weight"].ggml_type].block_size
             for i in range(cfg.n_layers) if f"blk.{i}.ffn_down.weight" in gf.tensors]
    return max(sizes, default=1)


def plan_for(gf: GGUFFile, n: int, split_attention: bool = True) -> list[ShardPlan]:
    """plan_shards for this file (its config and its ffn_down block size)."""
    cfg = config_of(gf)
    return plan_shards(cfg, n, ffn_unit(gf, cfg), split_attention)


def _row_ranges(cfg: ModelConfig, plan: ShardPlan) -> dict[str, list[tuple[int, int]]]:
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


ROW_PARALLEL = ("attn_output", "ffn_down")  # split by columns; their partial outputs are summed


def shard_ranges(gf: GGUFFile, plan: ShardPlan) -> list[tuple[int, int]]:
    """The byte ranges of the file that shard `plan` needs, merged, header first.

    Column-parallel matrices: only this shard's rows. Row-parallel ones (attn_output, ffn_down):
    whole, cut to this shard's columns at load time. Vectors (norms, biases): whole.
    """
    cfg = config_of(gf)
    rows = _row_ranges(cfg, plan)
    want = [(0, gf.data_offset)]
    for name, t in gf.tensors.items():
        kind = name.split(".")[-2] if name.count(".") >= 2 else name
        if name in ("token_embd.weight", "output.weight"):
            want.append(_row_span(t, *plan.vocab))
        elif name.startswith("blk.") and name.endswith(".weight") and kind in rows and len(t.shape) == 2:
            want += [_row_span(t, a, b) for a, b in rows[kind] if b > a]
        else:  # norms, biases, attn_output, ffn_down, position_embd
            want.append((t.offset, t.offset + t.nbytes))
    want.sort()
    merged = [list(want[0])]
    for a, b in want[1:]:
        if a <= merged[-1][1] + MERGE_GAP:
            merged[-1][1] = max(merged[-1][1], b)
        else:
            merged.append([a, b])
    return [(a, b) for a, b in merged]


# ---- loading one shard --------------------------------------------------------------------------


def _columns(gf: GGUFFile, name: str, c0: int, c1: int, dense: bool, own_buffer: bool = False):
    """Resident form of columns c0..c1 of matrix `name`: whole blocks when the cut allows it.

    The cut is a fresh copy (unless it is every column), so Q8_0 is compacted in it; with
    own_buffer the file's bytes are this shard's own and may be compacted too.
    """
    t = gf.tensors[name]
    n_out, n_in = t.shape
    qt = quants.TYPES[t.ggml_type]
    raw = gf.raw(name)  # (n_out * row bytes,) uint8
    if c0 % qt.block_size == 0 and c1 % qt.block_size == 0:
        b0, b1 = c0 // qt.block_size * qt.type_size, c1 // qt.block_size * qt.type_size  # byte columns
        rows = raw.reshape(n_out, quants.row_nbytes(t.ggml_type, n_in))  # (n_out, row bytes)
        part = np.ascontiguousarray(rows[:, b0:b1])  # (n_out, cut bytes) whole blocks
        mine = own_buffer or not np.shares_memory(part, raw)
        return prepare_linear(part.reshape(-1), t.ggml_type, (n_out, c1 - c0), dense=dense, in_place=mine)
    # a cut inside a block (tiny models only): dequantize, keep float32 columns
    w = quants.dequantize(raw, t.ggml_type, t.shape)  # (n_out, n_in) float32
    return DenseLinear(w[:, c0:c1])


def _rows(gf: ShardFile | GGUFFile, name: str, spans: list[tuple[int, int]], dense: bool, in_place: bool = False):
    """Resident form of the given row ranges of matrix `name` (concatenated in order)."""
    t = gf.tensors[name]
    n_in = t.shape[1]
    parts = [_raw_rows(gf, name, a, b) for a, b in spans if b > a]
    raw = parts[0] if len(parts) == 1 else np.concatenate(parts)  # (rows * row bytes,) uint8
    n_rows = sum(b - a for a, b in spans)
    return prepare_linear(raw, t.ggml_type, (n_rows, n_in), dense=dense, in_place=in_place)


def _raw_rows(gf, name: str, a: int, b: int) -> np.ndarray:
    if isinstance(gf, ShardFile):
        return gf.rows(name, a, b)
    t = gf.tensors[name]
    rb = quants.row_nbytes(t.ggml_type, t.shape[-1])
    return gf.raw(name)[a * rb : b * rb]


def _vector(gf: GGUFFile, name: str) -> np.ndarray:
    t = gf.tensors[name]
    return quants.dequantize(gf.raw(name), t.ggml_type, t.shape)  # (size,) float32


_VECTORS = ("attn_norm", "ffn_norm", "attn_q_norm", "attn_k_norm", "post_attention_norm", "post_ffw_norm")


class ShardModel:
    """One shard's weights and KV cache; `forward_steps` is its part of Model.forward.

    `local` is an engine.model.Model over this shard's heads and feed-forward units (its config has
    the local head and unit counts), so the attention, RoPE, norm and FFN code is Model's own.
    """

    def __init__(self, cfg: ModelConfig, plan: ShardPlan, local: Model, embed: Embedding, head,
                 top: dict, biases: list[dict]):
        self.config, self.plan, self.local = cfg, plan, local
        self.embed = embed      # rows plan.vocab of token_embd
        self.head = head        # rows plan.vocab of the LM head: (n_vocab_local, d)
        self.top = top          # output_norm (+ bias), position_embd (gpt2)
        self.biases = biases    # per layer: attn_output / ffn_down biases, added once after the SUM
        self.has_attention = plan.heads[1] > plan.heads[0]
        self.n_ctx = local.n_ctx

    @property
    def pos(self) -> int:
        return self.local.pos

    @pos.setter
    def pos(self, value: int) -> None:
        self.local.pos = value

    def reset(self) -> None:
        self.local.pos = 0

    def forward_steps(self, tokens: Sequence[int]) -> Iterator[tuple[str, np.ndarray]]:
        """Model.forward for one shard: yields (SUM | GATHER, partial), is sent the combined array.

        Returns (StopIteration.value) the full logits of the last position on the leader after the
        GATHER, None on the other shards.
        """
        cfg, m = self.config, self.local
        ids = np.asarray(tokens, dtype=np.int64).reshape(-1)  # (n,)
        n = len(ids)
        if n == 0:
            raise ValueError("forward needs at least one token")
        if ids.min() < 0 or ids.max() >= cfg.vocab_size:
            raise ValueError(f"token id out of range 0..{cfg.vocab_size - 1}")
        if m.pos + n > m.n_ctx:
            raise ValueError(f"context full: {m.pos} + {n} tokens > n_ctx {m.n_ctx}")
        start, end = m.pos, m.pos + n
        positions = np.arange(start, end)  # (n,)

        # embedding: the rows this shard owns, zeros elsewhere; the SUM assembles the whole
        v0, v1 = self.plan.vocab
        mine = (ids >= v0) & (ids < v1)  # (n,)
        part = np.zeros((n, cfg.d_model), np.float32)  # (n, d)
        if mine.any():
            part[mine] = self.embed(ids[mine] - v0)
        x = yield SUM, part  # (n, d)
        if cfg.architecture == "gemma3":
            x = x * np.float32(math.sqrt(cfg.d_model))
        if cfg.architecture == "gpt2":
            x = x + self.top["position_embd"][positions]

        for i in range(cfg.n_layers):
            b, bias = m.w["blk"][i], self.biases[i]
            # attention over MY heads -> partial output projection -> SUM
            h = m._norm(x, b, "attn_norm")  # (n, d)
            if self.has_attention:
                att = m._self_attention(i, h, b, positions)  # (n, H_local * hd_v), my heads
                o = b["attn_output"](att)  # (n, d) partial: my heads' share
            else:
                o = np.zeros((n, cfg.d_model), np.float32)
            if self.plan.split_attention:
                o = yield SUM, o  # (n, d) all heads
            if "attn_output" in bias:
                o = o + bias["attn_output"]
            if "post_attention_norm" in b:
                o = rmsnorm(o, b["post_attention_norm"], cfg.eps)
            x = x + o  # residual

            # feed-forward over MY units -> partial down projection -> SUM
            h = m._norm(x, b, "ffn_norm")  # (n, d)
            f = m._ffn(h, b)  # (n, d) partial (ffn_down's bias is in `bias`, added once)
            f = yield SUM, f  # (n, d)
            if "ffn_down" in bias:
                f = f + bias["ffn_down"]
            if "post_ffw_norm" in b:
                f = rmsnorm(f, b["post_ffw_norm"], cfg.eps)
            x = x + f  # residual

        m.pos = end
        x = m._norm(x[-1:], self.top, "output_norm")  # (1, d) only the last position feeds sampling
        logits = yield GATHER, self.head(x).reshape(-1)  # (n_vocab_local,) -> (vocab,) on the leader
        return logits


def load_shard(gf: GGUFFile, plan: ShardPlan, n_ctx: int | None = None,
               policy: LoadPolicy = WORKER_POLICY) -> ShardModel:
    """Build shard `plan` from a GGUFFile (whole, or a ShardFile holding shard_ranges(gf, plan))."""
    cfg = config_of(gf)
    if cfg.architecture not in ("llama", "qwen2", "gemma3", "gpt2"):
        raise ConfigError(f"architecture {cfg.architecture!r} cannot be sharded")
    n_ctx = min(n_ctx or DEFAULT_CTX, cfg.context_length)
    if cfg.architecture == "gpt2":
        n_ctx = min(n_ctx, gf.tensors["position_embd.weight"].shape[0])
    rows = _row_ranges(cfg, plan)
    (h0, h1), (k0, k1), (f0, f1) = plan.heads, plan.kv_heads, plan.ffn
    dense_left = policy.dense_layers_mb * 2**20

    def need(name: str) -> TensorInfo:
        if name not in gf.tensors:
            raise ConfigError(f"{cfg.architecture} model is missing tensor {name}")
        return gf.tensors[name]

    blocks, biases = [], []
    for i in range(cfg.n_layers):
        b: dict = {}
        bias: dict = {}
        for m, spans in rows.items():
            name = f"blk.{i}.{m}.weight"
            if name not in gf.tensors:
                continue
            t = gf.tensors[name]
            n_rows = sum(max(0, e - s) for s, e in spans)
            dense = 4 * n_rows * t.shape[1] <= dense_left
            dense_left -= 4 * n_rows * t.shape[1] if dense else 0
            if n_rows:
                b[m] = _rows(gf, name, spans, dense, policy.own_buffer)
            if f"blk.{i}.{m}.bias" in gf.tensors:
                full = _vector(gf, f"blk.{i}.{m}.bias")  # (n_out,)
                b[m + ".bias"] = np.concatenate([full[s:e] for s, e in spans])  # (n_rows,)
        hdv = cfg.v_head_dim
        for m, (c0, c1) in (("attn_output", (h0 * hdv, h1 * hdv)), ("ffn_down", (f0, f1))):
            name = f"blk.{i}.{m}.weight"
            t = need(name)
            if c1 > c0:
                dense = 4 * t.shape[0] * (c1 - c0) <= dense_left
                dense_left -= 4 * t.shape[0] * (c1 - c0) if dense else 0
                b[m] = _columns(gf, name, c0, c1, dense, policy.own_buffer)
            if f"blk.{i}.{m}.bias" in gf.tensors:
                bias[m] = _vector(gf, f"blk.{i}.{m}.bias")  # (d,) added once, after the SUM
        for v in _VECTORS:
            if f"blk.{i}.{v}.weight" in gf.tensors:
                b[v] = _vector(gf, f"blk.{i}.{v}.weight")
                if f"blk.{i}.{v}.bias" in gf.tensors:
                    b[v + ".bias"] = _vector(gf, f"blk.{i}.{v}.bias")
        blocks.append(b)
        biases.append(bias)

    # Model's pieces over the local heads and units; head_dim is pinned (it defaults to d / n_heads)
    local_cfg = dataclasses.replace(
        cfg, n_heads=max(1, h1 - h0), n_kv_heads=max(1, k1 - k0), d_ff=max(1, f1 - f0),
        key_length=cfg.head_dim, value_length=cfg.v_head_dim)
    local = Model(local_cfg, {"blk": blocks}, n_ctx)
    local.attn_scale = Model(cfg, {}, 1).attn_scale  # Gemma 27B's scale uses the global head count

    emb = need("token_embd.weight")
    v0, v1 = plan.vocab
    embed = Embedding(_raw_rows(gf, emb.name, v0, v1), emb.ggml_type, (v1 - v0, emb.shape[1]))
    head_t = gf.tensors.get("output.weight", emb)  # tied when absent
    head_dense = 4 * (v1 - v0) * head_t.shape[1] <= policy.dense_head_mb * 2**20
    head = _rows(gf, head_t.name, [(v0, v1)], head_dense, policy.own_buffer)
    if getattr(head, "compacted", False) and head_t is emb:  # tied: the piece no longer holds the file's rows
        embed = Embedding.from_block(head, emb.ggml_type)
    top = {"output_norm": _vector(gf, "output_norm.weight")}
    if "output_norm.bias" in gf.tensors:
        top["output_norm.bias"] = _vector(gf, "output_norm.bias")
    if cfg.architecture == "gpt2":
        top["position_embd"] = _vector(gf, "position_embd.weight")  # (n_pos, d)
    return ShardModel(cfg, plan, local, embed, head, top, biases)


# ---- driving shards -------------------------------------------------------------------------------


def run_lockstep(shards: Sequence[ShardModel], tokens: Sequence[int]) -> np.ndarray:
    """All shards' forward_steps in one process, combined as the workers combine them: the logits.

    The sum runs in shard order over a stacked (N, ...) array, exactly as ShardRunner sums.
    """
    steps = [s.forward_steps(tokens) for s in shards]
    msgs = [next(g) for g in steps]
    while True:
        kind = msgs[0][0]
        if kind == SUM:
            total = np.stack([p for _, p in msgs]).sum(axis=0)  # (...) in shard order
            msgs = [g.send(total.copy()) for g in steps]
        else:  # GATHER: the logits slices, in vocabulary order
            logits = np.concatenate([p for _, p in msgs])  # (vocab,)
            for g in steps:
                try:
                    g.send(logits)
                except StopIteration:
                    pass
            return logits


class ShardRunner:
    """One shard's forward pass, driven one sync point at a time by a browser worker.

    The worker exchanges float32 arrays through `mailbox`, an (n_shards, capacity) array whose row
    j holds shard j's partial: this shard writes its own row, the worker writes the peers' rows
    (straight into WASM memory at `mailbox_address()`), then `resume()` sums the rows in shard
    order. On the leader, `logits` (vocab,) receives the peers' slices of the last GATHER.

    begin(tokens, start) and resume() return the next sync point as one int:
        n > 0   SUM: exchange the first n floats of my mailbox row with every peer
        n < 0   GATHER: send the first -n floats of my row to the leader (which waits for all)
        0       finished (the leader's logits are in `logits`)
    """

    def __init__(self, model: ShardModel):
        self.model = model
        self.index = model.plan.index
        self.n_shards = model.plan.n_shards
        self.capacity = model.config.d_model
        self.mailbox = np.zeros((self.n_shards, self.capacity), np.float32)  # (N, capacity)
        self.logits = np.zeros(model.config.vocab_size, np.float32)  # (vocab,) the leader's gather target
        self._steps = None
        self._kind, self._n = None, 0
        self._shape: tuple = ()
        self.last_logits = None     # the leader's (vocab,) logits of the last forward
        self.started = 0.0
        self.seconds = 0.0          # wall time of the last whole forward (waiting included)
        self.syncs = 0              # sync points of the last forward

    def vocab_starts(self) -> list[int]:
        """Where each shard's slice starts in the logits (JavaScript writes the peers' slices there)."""
        return [p.vocab[0] for p in plan_shards(self.model.config, self.n_shards)]

    def mailbox_address(self) -> int:
        """Byte address of the mailbox (in Pyodide: an offset into WASM memory)."""
        return self.mailbox.__array_interface__["data"][0]

    def logits_address(self) -> int:
        return self.logits.__array_interface__["data"][0]

    def begin(self, tokens: Sequence[int], start: int) -> int:
        """Start a forward of `tokens` at cache position `start` (the leader says both)."""
        n_tokens = len(tokens)
        need = max(n_tokens * self.model.config.d_model, self.model.plan.vocab[1] - self.model.plan.vocab[0])
        if need > self.capacity:  # grows only for longer prompts: the worker re-reads the address
            self.capacity = need
            self.mailbox = np.zeros((self.n_shards, need), np.float32)
        self.model.pos = int(start)
        self.started = time.perf_counter()
        self.syncs = 0
        self._steps = self.model.forward_steps([int(t) for t in tokens])
        return self._post(next(self._steps))

    def resume(self) -> int:
        """Continue after the worker filled the peers' rows (SUM) or slices (GATHER on the leader)."""
        if self._kind == SUM:
            total = self.mailbox[:, : self._n].sum(axis=0).reshape(self._shape)  # shard order
            sent = total
        else:
            sent = self.logits.copy() if self.index == LEADER else None
        try:
            return self._post(self._steps.send(sent))
        except StopIteration as stop:
            self.seconds = time.perf_counter() - self.started
            self.last_logits = stop.value
            self._steps = None
            return 0

    def _post(self, msg: tuple[str, np.ndarray]) -> int:
        kind, part = msg
        flat = part.reshape(-1)  # (n,)
        self._kind, self._n, self._shape = kind, flat.size, part.shape
        self.syncs += 1
        if kind == SUM:
            self.mailbox[self.index, : flat.size] = flat
            return flat.size
        v0 = self.model.plan.vocab[0]
        self.mailbox[self.index, : flat.size] = flat
        if self.index == LEADER:
            self.logits[v0 : v0 + flat.size] = flat
        return -flat.size


# ---- the leader: generation with logits computed ahead -----------------------------------------


class LookaheadModel:
    """Stands in for Model inside engine.generate: forward() hands out logits the shards computed.

    generate() calls forward() synchronously, but in the browser a sharded forward waits for
    messages. So the worker runs the forward first (`need` says which tokens at which position),
    `provide`s the logits, and only then lets generate() take its next step.
    """

    def __init__(self, n_ctx: int):
        self.n_ctx = n_ctx
        self.pos = 0
        self._ready: tuple[list[int], np.ndarray] | None = None

    def reset(self) -> None:
        self.pos = 0

    def provide(self, tokens: list[int], logits: np.ndarray) -> None:
        self._ready = (list(tokens), logits)

    def forward(self, tokens: Sequence[int]) -> np.ndarray:
        if self._ready is None or self._ready[0] != [int(t) for t in tokens]:
            have = None if self._ready is None else self._ready[0]
            raise RuntimeError(f"forward({list(tokens)}) but the shards computed {have}")
        logits = self._ready[1]
        self._ready = None
        self.pos += len(tokens)
        return logits


class LeaderGeneration:
    """One answer: engine.generate over a LookaheadModel, plus the timings of the sharded forwards.

    The worker loop:  while ((need = gen.need()) != null) { run the shards on need; gen.provide(...) }
                      then ev = gen.step()  (a dict, or None when finished)
    """

    def __init__(self, session: "LeaderSession", prompt: list[int], reuse: int, params):
        from .generate import generate

        self.session, self.prompt, self.params = session, prompt, params
        self.proxy = session.proxy
        if reuse == 0:
            self.proxy.reset()
        self._need: tuple[list[int], int] | None = (prompt[reuse:], reuse)
        self._events = generate(self.proxy, session.tokenizer, prompt[reuse:], params, reset=False)
        self.generated: list[int] = []
        self.n_forwarded = len(prompt) - reuse
        self.prefill_seconds = 0.0
        self.decode_forward_seconds = 0.0
        self.finished = False

    def need(self) -> list | None:
        """[token ids, start position] of the forward generate() will ask for next, or None."""
        return None if self._need is None else [self._need[0], self._need[1]]

    def provide(self, logits: np.ndarray, seconds: float) -> None:
        tokens, _ = self._need
        self.proxy.provide(tokens, logits)
        if self.generated:
            self.decode_forward_seconds += seconds
        else:
            self.prefill_seconds += seconds
        self._need = None

    def step(self) -> dict | None:
        """The next event as a plain dict (the same fields as engine.bridge's), None when finished."""
        if self.finished:
            return None
        ev = next(self._events, None)
        if ev is None:
            self.finished = True
            return None
        if ev.kind == "prefill":
            rate = self.n_forwarded / self.prefill_seconds if self.prefill_seconds > 0 else 0.0
            return {"type": "prefill", "n_prompt": ev.n_prompt, "prefill_tok_s": rate}
        if ev.kind == "token":
            self.generated.append(int(ev.token_id))
            if len(self.generated) < self.params.max_tokens and self.proxy.pos < self.proxy.n_ctx:
                self._need = ([int(ev.token_id)], self.proxy.pos)  # generate() will feed it back
            return {"type": "token", "text": ev.text, "token_id": int(ev.token_id), "n": len(self.generated)}
        self.finished = True
        self._need = None
        self.session.remember(self.prompt + self.generated)
        decode = ev.decode_seconds + self.decode_forward_seconds  # sampling + the sharded forwards
        prefill = self.n_forwarded / self.prefill_seconds if self.prefill_seconds > 0 else 0.0
        return {"type": "done", "reason": ev.reason, "text": ev.text, "n_prompt": ev.n_prompt,
                "n_generated": ev.n_generated, "prefill_tok_s": prefill,
                "decode_tok_s": ev.n_generated / decode if decode > 0 else 0.0,
                "token_ids": list(self.generated)}

    def close(self) -> None:
        if not self.finished:
            self.finished = True
            self._events.close()
            self.session.remember([])


class LeaderSession:
    """Tokenizer, chat template and the generation loop on the leader shard (shard 0)."""

    def __init__(self, gf: GGUFFile, n_ctx: int):
        from .chat import ChatTemplate
        from .tokenizer import Tokenizer

        self.tokenizer = Tokenizer.from_metadata(gf.metadata)
        self.template = ChatTemplate.from_metadata(gf.metadata)
        self.proxy = LookaheadModel(n_ctx)
        self._cached: list[int] = []

    def remember(self, tokens: list[int]) -> None:
        self._cached = list(tokens[: self.proxy.pos]) if tokens else []

    def prompt_tokens(self, request: dict) -> list[int]:
        from .bridge import request_tokens

        return request_tokens(self.tokenizer, self.template, request)

    def start(self, request: dict) -> LeaderGeneration:
        from .bridge import reusable_prefix, sampling_params
        from .generate import SamplingParams

        params = sampling_params(request.get("params") or {}, SamplingParams, self.template.stop)
        tokens = self.prompt_tokens(request)
        return LeaderGeneration(self, tokens, reusable_prefix(self._cached, tokens, self.proxy.pos), params)


class ShardLoader:
    """A worker's load steps: header -> plan -> byte ranges -> pieces -> ShardRunner.

    static/parallel-worker.js, fed by static/parallel.js as the file streams in (nobody holds the
    whole file; shard 0 also hashes every byte, so the file is verified before anything is built):
        loader = ShardLoader(prefix, file_size, n_shards, index, n_ctx)   # prefix: >= header_length bytes
        at = loader.stream_from(prefix, hash_all=index == 0)  # pieces made; prefix bytes copied in
        loader.write(start, chunk, n)                         # later bytes, each byte once
        loader.sha256() == expected                           # (shard 0) checked by the coordinator
        runner = loader.runner(); session = loader.leader_session()       # the latter on shard 0
    """

    def __init__(self, prefix, file_size: int, n_shards: int, index: int, n_ctx: int | None = None,
                 split_attention: bool = True):
        n_header = ShardFile.header_length(prefix, file_size)
        if n_header == 0:
            raise ValueError(f"{len(memoryview(prefix))} bytes do not hold the whole GGUF header")
        self.header = bytes(memoryview(prefix)[:n_header])
        self.file_size, self.n_ctx = file_size, n_ctx
        head = ShardFile(self.header, file_size)
        plans = plan_for(head, n_shards, split_attention)
        if not 0 <= index < n_shards:
            raise ValueError(f"shard index {index} out of range 0..{n_shards - 1}")
        self.plan = plans[index]
        self._ranges = [(a, b) for a, b in shard_ranges(head, self.plan) if b > n_header]
        self._pieces: list[tuple[int, bytearray]] = []
        self._starts: list[int] = []  # piece starts, sorted (for bisect)
        self._streamed = False        # pieces made by stream_from (and filled by write)
        self._written = 0             # bytes copied into pieces by write()
        self._sha = None              # hashlib.sha256 over every byte, on the hashing shard only
        self._hashed = 0              # bytes hashed so far (the next write must start here)
        self.hash_seconds = 0.0       # time spent in sha256 updates
        self._file: ShardFile | None = None

    def ranges(self) -> list[list[int]]:
        """[start, end) byte ranges of the file still needed (the header is already here)."""
        return [[max(a, len(self.header)), b] for a, b in self._ranges]

    def piece(self, start: int, end: int) -> bytearray:
        """A buffer for bytes [start, end) of the file, for the caller to fill."""
        buf = bytearray(end - start)  # (end - start,) bytes
        self._pieces.append((start, buf))
        self._starts.append(start)
        return buf

    def stream_from(self, prefix, hash_all: bool = False) -> int:
        """Make a piece for every range and copy in what `prefix` (the file's first bytes) holds of
        them; with hash_all, sha256 every byte of the file from byte 0 (prefix included), so later
        writes must come in file order, every byte of the file. Returns len(prefix): where the
        stream goes on."""
        if self._pieces:
            raise ValueError("stream_from called twice, or after piece()")
        self._streamed = True
        for start, end in self.ranges():
            self.piece(start, end)
        self._sha = hashlib.sha256() if hash_all else None
        self._hashed = 0
        self.write(0, prefix)
        return len(memoryview(prefix))

    def write(self, start: int, chunk, n: int | None = None) -> None:
        """Bytes [start, start + n) of the file (the first n bytes of `chunk`; all of it when n is
        None): hashed (on the hashing shard), and copied into the pieces they fall in.

        >>> ld = ShardLoader.__new__(ShardLoader)   # a loader whose one piece holds file bytes [4, 7)
        >>> ld.file_size, ld._sha, ld._written, ld._pieces, ld._starts = 10, None, 0, [(4, bytearray(3))], [4]
        >>> ld.write(2, b"abcdefgh", 6); bytes(ld._pieces[0][1])   # file bytes [2, 8): "abcdef"
        b'cde'
        """
        data = memoryview(chunk).cast("B")
        if n is not None:
            data = data[:n]  # (n,) bytes
        end = start + len(data)
        if end > self.file_size:
            raise ValueError(f"bytes [{start}, {end}) run past the file's {self.file_size} bytes")
        if self._sha is not None:
            if start != self._hashed:
                raise ValueError(f"bytes from {start} but the hash has reached {self._hashed}: "
                                 "the hashing shard must get every byte in order")
            t0 = time.perf_counter()
            self._sha.update(data)
            self.hash_seconds += time.perf_counter() - t0
            self._hashed = end
        i = max(0, bisect.bisect_right(self._starts, start) - 1)  # first piece that can overlap
        for p_start, buf in self._pieces[i:]:
            if p_start >= end:
                break
            a, b = max(start, p_start), min(end, p_start + len(buf))
            if a < b:
                buf[a - p_start : b - p_start] = data[a - start : b - start]  # (b - a,) one memcpy
                self._written += b - a

    def sha256(self) -> str:
        """Hex sha256 of the whole file; only on the hashing shard, once every byte came."""
        if self._sha is None:
            raise ValueError("this shard does not hash the file (stream_from(..., hash_all=True))")
        if self._hashed != self.file_size:
            raise ValueError(f"hashed {self._hashed} of {self.file_size} bytes: the file is not complete")
        return self._sha.hexdigest()

    def file(self) -> ShardFile:
        if self._file is None:
            self._file = ShardFile(self.header, self.file_size, self._pieces)
        return self._file

    def runner(self) -> ShardRunner:
        """The shard's model over its pieces, which it owns: Q8_0 matrices are compacted in them.
        Call it only once the file is verified (the coordinator checks the hashing shard's sha256)."""
        need = sum(len(b) for _, b in self._pieces)
        if self._streamed and self._written != need:  # every byte of every piece must have come
            raise ValueError(f"shard {self.plan.index} got {self._written} of its {need} bytes")
        policy = dataclasses.replace(WORKER_POLICY, own_buffer=True)
        return ShardRunner(load_shard(self.file(), self.plan, self.n_ctx, policy))

    def leader_session(self, n_ctx: int) -> LeaderSession:
        return LeaderSession(self.file(), n_ctx)

    def held_bytes(self) -> int:
        return len(self.header) + sum(len(b) for _, b in self._pieces)
