"""Decoding across several workers: the distribution of a sharded model (after model.py).

engine/model.py builds one shard of a model (`load_model(gguf, plan=plan_shards(cfg, N)[i])`) and
runs its part of the forward pass (`Model.forward_steps`). This module moves bytes and partial
results between the shards. The split is Megatron-style, so a layer needs two sums:

    x (replicated) -> norm -> q, k, v of MY heads (rows of attn_q/k/v)    column-parallel
                   -> RoPE, KV cache and attention of MY heads            local
                   -> attn_output[:, MY head columns] @ att -> partial    row-parallel
                   == SUM 1 ==  (+ bias) -> post-norm -> residual         replicated
                   -> norm -> gate, up of MY ffn units (rows)             column-parallel
                   -> ffn_down[:, MY units] @ act -> partial               row-parallel
                   == SUM 2 ==  (+ bias) -> post-norm -> residual         replicated

Per token there are 2 * n_layers + 2 sync points: one SUM for the embedding (each worker owns a
vocabulary slice of token_embd and adds zeros for ids it does not own), two per layer, and one
GATHER of the logits, where each worker's vocabulary slice of the LM head goes to the leader
(shard 0), which samples. Every worker sums the same partials in shard order, so the replicated
activations are bit-identical on all of them.

What crosses each boundary:

    GGUF header bytes -> ShardFile(header, size)         metadata + tensor infos, no tensor data
        -> model.plan_for(file, N)[i] -> ShardPlan        heads, kv heads, ffn units, vocab rows
        -> shard_ranges(file, plan) -> [(start, end)]     the only file bytes worker i needs
        -> ShardFile(header, size, pieces) -> model.load_model(..., plan=plan) -> Model
        -> Model.forward_steps(tokens)                    yields (SUM | GATHER, partial), is sent
                                                          the combined array, returns the logits

`run_lockstep` drives N shards in one process (the tests compare it with Model.forward);
`ShardRunner` drives one shard from a browser worker through a float32 mailbox, one call per sync
point; `ShardLoader` builds a shard from the file as it streams in. The leader answers requests
with an engine.session.Session over a LookaheadModel (logits computed ahead by the shards).
Nothing here touches the browser: static/parallel-worker.js copies bytes in and out.

Memory: a worker holds its vocabulary slice of the embedding/LM head, its rows of the
column-parallel matrices and its columns of the row-parallel ones (attn_output and ffn_down are
fetched whole and cut after loading), the norms, and the KV cache of its own kv heads.
"""

from __future__ import annotations

import bisect
import hashlib
import time
from typing import Sequence

import numpy as np

from . import quants
from .config import ModelConfig
from .gguf import GGUFError, GGUFFile, TensorInfo
from .lookup import MAX_DRAFT
from .model import (PREFILL_CHUNK, SUM, LoadPolicy, Model, ShardPlan, column_ranges, load_model, plan_for,
                    plan_shards, row_ranges)
from .session import LookaheadModel, Session

LEADER = 0         # the shard that samples and runs the generation loop
MERGE_GAP = 4096   # byte ranges closer than this are fetched as one (tensors are padded to 32)

# Worker-side defaults, as engine.bridge loads the single-worker model: int8 blocks, no float32 copies,
# a float16 KV cache.
WORKER_POLICY = LoadPolicy(dense_layers_mb=0.0, kv_dtype="float16")


# ---- the file: a header plus the byte ranges one shard needs ------------------------------------


class ShardFile(GGUFFile):
    """A GGUF file of which only the header and some byte ranges are in memory.

    header: the file's first bytes, at least up to the data section; file_size: the whole file's
    size (tensor infos are checked against it, as GGUFFile checks them against its buffer);
    pieces: (file offset, bytes-like) ranges of tensor data. raw(name) and rows(name, a, b) give
    views into the piece that holds them, and name the tensor when no piece does.
    """

    def __init__(self, header, file_size: int, pieces: Sequence[tuple[int, object]] = (), cuts: dict | None = None,
                 keep_strings: bool = True):
        if not isinstance(file_size, int) or file_size <= 0:
            raise ValueError(f"file size {file_size!r} must be a positive number of bytes")
        self.file_size = file_size
        super().__init__(header, keep_strings)  # parses the metadata and tensor infos
        # Tensor bytes come from the pieces only: the header's bytes are not kept once parsed (the
        # metadata holds copies), so the caller's prefix can be freed before the pieces are made.
        self._buffer, self._mv = None, memoryview(b"")
        self.pieces = []          # (start, end, uint8 array) sorted by start
        self.cuts = {}            # name -> (b0, b1, (rows, b1 - b0) uint8): row-parallel column cuts held apart
        self.attach(pieces, cuts)

    def attach(self, pieces: Sequence[tuple[int, object]], cuts: dict | None = None) -> "ShardFile":
        """Add tensor data: (file offset, bytes-like) pieces, and column cuts by tensor name."""
        for start, data in pieces:
            arr = np.frombuffer(data, dtype=np.uint8)  # (n,) view, no copy
            if start < 0 or start + len(arr) > self.file_size:
                raise ValueError(f"piece [{start}, {start + len(arr)}) lies outside the {self.file_size}-byte file")
            self.pieces.append((start, start + len(arr), arr))
        self.pieces.sort(key=lambda p: p[0])
        self.cuts.update(cuts or {})
        return self

    @property
    def nbytes(self) -> int:
        return self.file_size

    def columns(self, name: str, b0: int, b1: int) -> np.ndarray:
        cut = self.cuts.get(name)
        if cut is not None and (cut[0], cut[1]) == (b0, b1):
            return cut[2]  # the shard's own piece: rearranged in place by the packed layout
        return super().columns(name, b0, b1)

    @classmethod
    def header_length(cls, prefix, file_size: int) -> int:
        """Bytes the header takes (the data section's offset), or 0 if `prefix` is too short to tell."""
        try:
            return cls(prefix, file_size, keep_strings=False).data_offset
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
        t = self.tensors[name]
        rb = quants.row_nbytes(t.ggml_type, t.shape[-1])
        return self._span(name, t.offset + a * rb, t.offset + b * rb)


def _row_span(t: TensorInfo, a: int, b: int) -> tuple[int, int]:
    rb = quants.row_nbytes(t.ggml_type, t.shape[-1])
    return t.offset + a * rb, t.offset + b * rb


def column_cuts(gf: GGUFFile, plan: ShardPlan) -> list[tuple[str, int, int, int, int, int]]:
    """The row-parallel matrices (attn_output, ffn_down) of which shard `plan` holds a column cut
    of whole blocks: (name, offset, row bytes, b0, b1, rows), bytes b0..b1 of every row. The shard
    keeps only those bytes, compact (a piece of rows x (b1 - b0)), never the whole matrix."""
    cols = column_ranges(ModelConfig.from_gguf(gf), plan)
    cuts = []
    for name, t in gf.tensors.items():
        kind = name.split(".")[-2] if name.count(".") >= 2 else name
        if not (name.startswith("blk.") and name.endswith(".weight") and kind in cols and len(t.shape) == 2):
            continue
        c0, c1 = cols[kind]
        bs = quants.TYPES[t.ggml_type].block_size
        if c1 > c0 and (c0, c1) != (0, t.shape[1]) and c0 % bs == 0 and c1 % bs == 0:
            rb = quants.row_nbytes(t.ggml_type, t.shape[1])
            cuts.append((name, t.offset, rb, quants.row_nbytes(t.ggml_type, c0), quants.row_nbytes(t.ggml_type, c1),
                         t.shape[0]))
    return cuts


def shard_ranges(gf: GGUFFile, plan: ShardPlan, cut: bool = True) -> list[tuple[int, int]]:
    """The byte ranges of the file that shard `plan` holds as they are, merged, header first.

    Column-parallel matrices: only this shard's rows. Row-parallel ones (attn_output, ffn_down):
    only their column cut (`column_cuts`, held apart) where it is whole blocks; whole otherwise
    (a cut inside a block: tiny models), or with cut=False (the bytes the shard must be sent).
    Vectors (norms, biases): whole.
    """
    rows = row_ranges(ModelConfig.from_gguf(gf), plan)
    apart = {c[0] for c in column_cuts(gf, plan)} if cut else set()
    want = [(0, gf.data_offset)]
    for name, t in gf.tensors.items():
        kind = name.split(".")[-2] if name.count(".") >= 2 else name
        if name in ("token_embd.weight", "output.weight"):
            want.append(_row_span(t, *plan.vocab))
        elif name.startswith("blk.") and name.endswith(".weight") and kind in rows and len(t.shape) == 2:
            want += [_row_span(t, a, b) for a, b in rows[kind] if b > a]
        elif name not in apart:  # norms, biases, row-parallel matrices cut inside a block, position_embd
            want.append((t.offset, t.offset + t.nbytes))
    return _merged(want)


def _merged(want: list) -> list[tuple[int, int]]:
    want = sorted(want)
    merged = [list(want[0])]
    for a, b in want[1:]:
        if a <= merged[-1][1] + MERGE_GAP:
            merged[-1][1] = max(merged[-1][1], b)
        else:
            merged.append([a, b])
    return [(a, b) for a, b in merged]


def _write_cut(data: memoryview, start: int, offset: int, rb: int, b0: int, b1: int, piece: np.ndarray) -> int:
    """Copy what file bytes [start, start + len(data)) hold of bytes b0..b1 of each row of the matrix
    at `offset` (rows of rb bytes) into `piece` (rows, b1 - b0). Returns the bytes copied."""
    end = start + len(data)
    r0 = max(0, (start - offset) // rb)
    r1 = min(piece.shape[0], -(-(end - offset) // rb))  # rows the data touches
    src = np.frombuffer(data, np.uint8)
    copied = 0
    full0, full1 = -(-(start - offset) // rb), (end - offset) // rb  # rows wholly inside the data
    full0, full1 = max(full0, r0), min(full1, r1)
    if full1 > full0:  # one copy for every whole row
        at = offset + full0 * rb - start
        rows = src[at : at + (full1 - full0) * rb].reshape(full1 - full0, rb)
        piece[full0:full1] = rows[:, b0:b1]
        copied += (full1 - full0) * (b1 - b0)
    for r in {r0, r1 - 1} - set(range(full0, full1)):  # the rows cut by the data's edges
        if not 0 <= r < piece.shape[0]:
            continue
        a, b = max(start, offset + r * rb + b0), min(end, offset + r * rb + b1)
        if a < b:
            piece[r, a - offset - r * rb - b0 : b - offset - r * rb - b0] = src[a - start : b - start]
            copied += b - a
    return copied


# ---- driving shards -------------------------------------------------------------------------------


def run_lockstep(shards: Sequence[Model], tokens: Sequence[int], all_logits: bool = False,
                 exact: bool = False) -> np.ndarray:
    """All shards' forward_steps in one process, combined as the workers combine them: the logits.

    The sum runs in shard order over a stacked (N, ...) array, exactly as ShardRunner sums.
    """
    steps = [s.forward_steps(tokens, all_logits, exact) for s in shards]
    msgs = [next(g) for g in steps]
    while msgs[0][0] == SUM:
        total = np.stack([p for _, p in msgs]).sum(axis=0)  # (...) in shard order
        msgs = [g.send(total.copy()) for g in steps]
    logits = np.concatenate([p for _, p in msgs], axis=-1)  # GATHER: (m, vocab) in vocabulary order
    out = None
    for g in steps:
        try:
            g.send(logits)
        except StopIteration as stop:
            out = stop.value if out is None else out
    return out


def buffer_floats(cfg: ModelConfig, plan: ShardPlan, n_ctx: int) -> tuple[int, int]:
    """Floats of a ShardRunner's two exchange buffers, at their largest: the mailbox (the shards'
    rows of a SUM of up to PREFILL_CHUNK tokens; elsewhere than on the leader also this shard's
    logits of a verify pass of MAX_DRAFT + 1 rows) and the leader's logits (that pass's rows of
    the whole vocabulary; nothing elsewhere). engine/budget.py counts them."""
    rows = MAX_DRAFT + 1
    summed = plan.n_shards * min(max(PREFILL_CHUNK, rows), n_ctx) * cfg.d_model
    if plan.index == LEADER:
        return summed, rows * cfg.vocab_size
    return max(summed, rows * (plan.vocab[1] - plan.vocab[0])), 0


class ShardRunner:
    """One shard's forward pass, driven one sync point at a time by a browser worker.

    The worker exchanges float32 arrays through `mailbox`, an (n_shards, capacity) view whose row
    j holds shard j's partial at a SUM: this shard writes its own row, the worker writes the peers'
    rows (straight into WASM memory at `mailbox_address()`), then `resume()` sums the rows in shard
    order. At a GATHER a shard other than the leader puts its (gather_rows, its vocabulary slice)
    logits at the start of the mailbox's memory (`outbox(n)`), and the leader's `logits` buffer, a
    (gather_rows, vocab) array in row order, receives each peer's block row by row: row r of shard
    j's block at float offset r * vocab_size + vocab_starts()[j] (gather_rows is 1 except in the
    verify pass of lookup decoding, which gathers every row). The leader hands out that buffer as
    the logits, without a copy.

    Sizes are bounded whatever the prompt: a SUM carries at most PREFILL_CHUNK tokens' rows (a longer
    prompt is summed chunk by chunk, Model.forward_steps), and both buffers are made at their largest
    (`buffer_floats`: a verify pass of MAX_DRAFT + 1 rows) when the runner is, so they never grow
    (a grown buffer is a new block beside the old one, in a heap that never shrinks).

    begin(tokens, start) and resume() return the next sync point as one int:
        n > 0   SUM: exchange the first n floats of my mailbox row with every peer
        n < 0   GATHER: send the first -n floats of my row to the leader (which waits for all)
        0       finished (the leader's logits are in `logits`)
    """

    def __init__(self, model: Model):
        self.model = model
        self.index = model.plan.index
        self.n_shards = model.plan.n_shards
        self.vocab_size = model.config.vocab_size
        box, logits = buffer_floats(model.config, model.plan, model.n_ctx)
        self._box = np.zeros(box, np.float32)      # (box,) the mailbox's memory
        self.logits = np.zeros(logits, np.float32)  # (rows * vocab,) the leader's gather target (empty elsewhere)
        self.capacity = model.config.d_model
        self.mailbox = self._box[: self.n_shards * self.capacity].reshape(self.n_shards, self.capacity)  # (N, capacity)
        self.gather_rows = 1        # rows of logits the current forward gathers
        self._vocab_starts = [p.vocab[0] for p in plan_shards(model.config, self.n_shards, split_attention=False)]
        self._steps = None
        self._kind, self._n = None, 0
        self._shape: tuple = ()
        self.last_logits = None     # the leader's (vocab,) logits of the last forward
        self.started = 0.0
        self.seconds = 0.0          # wall time of the last whole forward (waiting included)
        self.syncs = 0              # sync points of the last forward

    def vocab_starts(self) -> list[int]:
        """Where each shard's slice starts in the vocabulary (JavaScript writes the peers' slices
        at gather_rows times that)."""
        return list(self._vocab_starts)

    def mailbox_address(self) -> int:
        """Byte address of the mailbox (in Pyodide: an offset into WASM memory)."""
        return self._box.__array_interface__["data"][0]

    def outbox(self, n: int) -> np.ndarray:
        """(n,) where this shard's part of a GATHER is put: the start of the mailbox's memory."""
        return self._box[:n]

    def logits_address(self) -> int:
        return self.logits.__array_interface__["data"][0]

    def begin(self, tokens: Sequence[int], start: int, verify: bool = False) -> int:
        """Start a forward of `tokens` at cache position `start` (the leader says both); verify:
        the exact pass of lookup decoding, logits for every token (Model.forward_steps exact)."""
        n_tokens = len(tokens)
        self.gather_rows = n_tokens if verify else 1
        summed = n_tokens if verify else min(n_tokens, PREFILL_CHUNK)  # rows of the largest SUM
        self.capacity = summed * self.model.config.d_model  # the worker re-reads it and the address
        vocab_mine = self.model.plan.vocab[1] - self.model.plan.vocab[0]
        need = max(self.n_shards * self.capacity, 0 if self.index == LEADER else self.gather_rows * vocab_mine)
        if self._box.size < need:  # only past buffer_floats' sizes (a verify pass longer than MAX_DRAFT + 1)
            self._box = np.zeros(need, np.float32)
        self.mailbox = self._box[: self.n_shards * self.capacity].reshape(self.n_shards, self.capacity)
        if self.index == LEADER and self.logits.size < self.gather_rows * self.vocab_size:
            self.logits = np.zeros(self.gather_rows * self.vocab_size, np.float32)
        self.model.pos = int(start)
        self.started = time.perf_counter()
        self.syncs = 0
        self._steps = self.model.forward_steps([int(t) for t in tokens], verify, verify)
        return self._post(next(self._steps))

    def resume(self) -> int:
        """Continue after the worker filled the peers' rows (SUM) or slices (GATHER on the leader)."""
        if self._kind == SUM:
            total = self.mailbox[:, : self._n].sum(axis=0).reshape(self._shape)  # shard order
            sent = total
        else:
            sent = self._gathered() if self.index == LEADER else None
        try:
            return self._post(self._steps.send(sent))
        except StopIteration as stop:
            self.seconds = time.perf_counter() - self.started
            self.last_logits = stop.value
            self._steps = None
            return 0

    def _gathered(self) -> np.ndarray:
        """The leader's logits of the last GATHER: (gather_rows, vocab), a view of its buffer (valid
        until the next forward's GATHER; generate() samples from them before it asks for one)."""
        return self.logits[: self.gather_rows * self.vocab_size].reshape(self.gather_rows, self.vocab_size)

    def _post(self, msg: tuple[str, np.ndarray]) -> int:
        kind, part = msg
        flat = part.reshape(-1)  # (n,)
        self._kind, self._n, self._shape = kind, flat.size, part.shape
        self.syncs += 1
        if kind == SUM:
            self.mailbox[self.index, : flat.size] = flat
            return flat.size
        if self.index == LEADER:  # its own block in place; the peers' arrive row by row
            v0, v1 = self.model.plan.vocab
            self._gathered()[:, v0:v1] = part.reshape(self.gather_rows, v1 - v0)
        else:
            self.outbox(flat.size)[:] = flat
        return -flat.size


class ShortPrefix(ValueError):
    """The first bytes given to a ShardLoader end inside the header: send more of them."""


# A shard worker's model in its Python, for a snapshot of that memory (static/parallel-worker.js:
# LoadRequest.model_snapshot on several workers). JavaScript's handles on the runner and the leader's
# session do not survive a snapshot; these references do, and a worker started from one takes them
# back from here.
_kept: tuple | None = None  # (ShardRunner, Session or None)


def keep(runner: "ShardRunner", session: "Session | None") -> None:
    """Hold this worker's runner and (leader) session where a snapshot of its memory finds them."""
    global _kept
    _kept = (runner, session)


def kept_runner() -> "ShardRunner | None":
    return None if _kept is None else _kept[0]


def kept_session() -> "Session | None":
    return None if _kept is None else _kept[1]


def drop_kept() -> None:
    """Forget the kept model (a worker started from a snapshot of another load frees it)."""
    global _kept
    if _kept is None:
        return
    _kept = None
    import gc

    gc.collect()


def open_loader(prefix, file_size: int, n_shards: int, index: int, n_ctx: int | None = None,
                split_attention: bool = True, layout: str | None = None) -> "ShardLoader | None":
    """A ShardLoader, or None while `prefix` ends inside the header (send more bytes). The worker's
    entry point: ShortPrefix is caught here, in Python, because an exception that reaches JavaScript
    stays referenced by Pyodide (sys.last_value), and its traceback with the prefix and the partial
    parse (4.6 MiB of Qwen2.5's header) would stay in the heap for the whole load."""
    try:
        return ShardLoader(prefix, file_size, n_shards, index, n_ctx, split_attention, layout)
    except ShortPrefix:
        return None


class ShardLoader:
    """A worker's load steps: header -> plan -> byte ranges -> pieces -> ShardRunner.

    static/parallel-worker.js, fed by static/parallel.js as the file streams in (nobody holds the
    whole file; shard 0 also hashes every byte, so the file is verified before anything is built):
        loader = ShardLoader(prefix, file_size, n_shards, index, n_ctx)   # prefix: >= header_length bytes, parsed
        del prefix; loader.stream_from(hash_all=index == 0)   # pieces made (the prefix freed first)
        loader.write(start, chunk, n)                         # the file's bytes from 0 (the prefix's too), each once
        loader.sha256() == expected                           # (shard 0) checked by the coordinator
        runner = loader.runner(); session = loader.leader_session()       # the latter on shard 0
    """

    def __init__(self, prefix, file_size: int, n_shards: int, index: int, n_ctx: int | None = None,
                 split_attention: bool = True, layout: str | None = None):
        try:  # parsed once; only the tokenizing shard (0) keeps the vocabulary
            head = self._head = ShardFile(prefix, file_size, keep_strings=index == 0)
        except GGUFError:
            if len(memoryview(prefix)) >= file_size:
                raise
            raise ShortPrefix(f"{len(memoryview(prefix))} bytes do not hold the whole GGUF header") from None
        self.n_header = n_header = head.data_offset
        self.file_size, self.n_ctx = file_size, n_ctx
        from .bridge import policy_for

        self.policy = policy_for(layout)  # "packed" (default) or "int8"
        self.layout = layout or "packed"
        plans = plan_for(head, n_shards, split_attention)
        if not 0 <= index < n_shards:
            raise ValueError(f"shard index {index} out of range 0..{n_shards - 1}")
        self.plan = plans[index]
        self._ranges = [(a, b) for a, b in shard_ranges(head, self.plan) if b > n_header]
        self._sent = [(a, b) for a, b in shard_ranges(head, self.plan, cut=False) if b > n_header]
        self._cut_specs = column_cuts(head, self.plan)
        self._cuts: list[tuple[int, int, int, int, int, np.ndarray]] = []  # (offset, row bytes, b0, b1, rows, piece)
        self._pieces: list[tuple[int, np.ndarray]] = []
        self._starts: list[int] = []  # piece starts, sorted (for bisect)
        self._streamed = False        # pieces made by stream_from (and filled by write)
        self._written = 0             # bytes copied into pieces by write()
        self._sha = None              # hashlib.sha256 over every byte, on the hashing shard only
        self._hashed = 0              # bytes hashed so far (the next write must start here)
        self.hash_seconds = 0.0       # time spent in sha256 updates
        self._file: ShardFile | None = None

    def ranges(self) -> list[list[int]]:
        """[start, end) byte ranges of the file still needed (the header is already here): what
        the pieces hold, and the whole of each matrix of which only a column cut is kept."""
        return [[max(a, self.n_header), b] for a, b in self._sent]

    def piece(self, start: int, end: int) -> np.ndarray:
        """A buffer for bytes [start, end) of the file, for the caller to fill (not zeroed first: a
        zero fill is a pass over the shard's memory, and runner() refuses pieces not filled whole)."""
        buf = np.empty(end - start, np.uint8)  # (end - start,) bytes
        self._pieces.append((start, buf))
        self._starts.append(start)
        return buf

    def stream_from(self, prefix=b"", hash_all: bool = False) -> int:
        """Make a piece for every range and copy in what `prefix` (the file's first bytes; may be
        empty, the caller then writes from byte 0) holds of them; with hash_all, sha256 every byte
        of the file from byte 0 (prefix included), so later writes must come in file order, every
        byte of the file. Returns len(prefix): where the stream goes on."""
        if self._pieces:
            raise ValueError("stream_from called twice, or after piece()")
        self._streamed = True
        for start, end in self._ranges:
            self.piece(max(start, self.n_header), end)
        for _, offset, rb, b0, b1, n_rows in self._cut_specs:
            self._cuts.append((offset, rb, b0, b1, n_rows, np.empty((n_rows, b1 - b0), np.uint8)))
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
        for offset, rb, b0, b1, n_rows, piece in self._cuts:
            if offset < end and start < offset + n_rows * rb:
                self._written += _write_cut(data, start, offset, rb, b0, b1, piece)

    def sha256(self) -> str:
        """Hex sha256 of the whole file; only on the hashing shard, once every byte came."""
        if self._sha is None:
            raise ValueError("this shard does not hash the file (stream_from(..., hash_all=True))")
        if self._hashed != self.file_size:
            raise ValueError(f"hashed {self._hashed} of {self.file_size} bytes: the file is not complete")
        return self._sha.hexdigest()

    def file(self) -> ShardFile:
        if self._file is None:
            cuts = {name: (b0, b1, c[-1]) for (name, _, _, b0, b1, _), c in zip(self._cut_specs, self._cuts)}
            self._file = self._head.attach(self._pieces, cuts)
        return self._file

    def runner(self) -> ShardRunner:
        """The shard's model over its pieces, which it owns: Q8_0 matrices are compacted in them.
        Call it only once the file is verified (the coordinator checks the hashing shard's sha256)."""
        need = sum(len(b) for _, b in self._pieces) + sum(c[-1].nbytes for c in self._cuts)
        if self._streamed and self._written != need:  # every byte of every piece must have come
            raise ValueError(f"shard {self.plan.index} got {self._written} of its {need} bytes")
        model = load_model(self.file(), self.n_ctx, self.policy, plan=self.plan)
        return ShardRunner(model)

    def budget(self, device_memory_gb: float | None = None) -> dict:
        """What every shard will hold (engine/budget.py) and, if it does not fit, why: checked by
        the coordinator (static/parallel.js) before the rest of the file is downloaded."""
        from .bridge import choose_layout, policy_for

        head = self._head
        device = int(device_memory_gb * 2**30) if device_memory_gb else None
        verdict = choose_layout(head, self.n_ctx, self.plan.n_shards, self.layout, device, self.plan.split_attention)
        self.layout, self.policy = verdict["layout"], policy_for(verdict["layout"])  # every shard chooses alike
        return verdict

    def leader_session(self, n_ctx: int) -> Session:
        """The leader's tokenizer, chat template and generation loop, over logits the shards compute."""
        from . import model  # its KV_REWIND read now, as Model does

        gf = self.file()
        return Session(gf, LookaheadModel(n_ctx, ModelConfig.from_gguf(gf).max_cut(n_ctx, model.KV_REWIND)))

    def held_bytes(self) -> int:
        return sum(len(b) for _, b in self._pieces) + sum(c[-1].nbytes for c in self._cuts)
