"""Memory budgets: what each worker will hold for a model, known from the GGUF header alone
(pipeline: gguf.py header -> **budget.py**; used by engine/bridge.py and engine/shard.py before
the rest of the file is downloaded).

A worker's WebAssembly memory only grows (its size is its peak), and a wasm32 heap cannot pass
4 GiB; a phone may give a tab far less. So the page asks before it downloads: `estimate` adds up

    runtime     Pyodide, numpy and the engine imported, plus the kernels' scratch buffers (those of the
                layouts this model's matrices are held in), a prefill chunk's arrays, attention's
                working arrays with the context full (on a shard also its exchange buffers: the rows
                of a SUM, and the logits of a verify pass)
    weights     the bytes of the file this worker holds (the whole file on one worker; on a shard
                its byte ranges, engine/shard.py shard_ranges), plus the column cuts of the
                row-parallel matrices a shard copies out of them
    side        what the layout keeps beside the blocks: float32 scales of Q8_0 matrices (the default
                packed layout; compact reads them from the blocks), or int8 values + float32 scales
                of every other block matrix (int8)
    kv          the KV cache for n_ctx tokens (a worker's float16 keys and values of this shard's kv heads; a
                sliding-window layer keeps a ring of its window + KV_REWIND positions, engine/model.py)
    vocabulary  the parsed metadata and the tokenizer: bytes, offsets and a hash table per vocabulary
                entry (and per BPE merge), on the worker that tokenizes (a shard that does not only
                walks the string arrays, and frees the header's bytes before its pieces are made)

and `Budget.refusal(limit)` says, in words, which worker would not fit and what to change. The
constants below were measured in Pyodide 0.27.7 (tests/test_budget.py checks the estimate against
the WASM memory a worker reports, natively against resident_bytes).

WebAssembly memory grows by at least 20 % of its size at a time (emscripten's geometric growth,
up to 96 MiB), so a heap that grows step by step while a model loads ends well above what it
holds. A worker therefore grows its heap once, before the file arrives, to exactly its estimate plus
RESERVE_MARGIN (`heap_bytes` in `Budget.as_dict`; static/boot.js growHeap). Not by allocating and
freeing a block from Python: malloc fills the free space already in the heap first, so that block
lands short of the target whenever the heap holds some, and the next growth overshoots by 20 %.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from . import quants
from .config import ModelConfig
from . import model
from .model import ROW_PARALLEL, LoadPolicy, ShardPlan, column_ranges, plan_for, row_ranges

MIB = 1 << 20
WASM_LIMIT = 4 << 30           # a wasm32 heap's ceiling (Pyodide's maximum memory)
BOOT_BYTES = 33 * MIB          # Pyodide + numpy + engine imported, with a 0.4 MB model loaded (measured 32.2 MiB;
                               # 34.6 before the sampler stopped importing numpy.random)
PACKED_SCRATCH = 7 * MIB       # packed.py's scratch, made at load (reserve_scratch): a chunk's float32 weights
                               # (packed.CHUNK_BYTES) and its bytes unpacked (Qwen2.5 1.5B's shard: 6.7 MiB)
INT8_SCRATCH = 2 * MIB         # matmul.BlockLinear's two float32 chunks (matmul.CHUNK_BYTES), where a matrix is int8
FORWARD_BYTES = 6 * MIB        # a 64-token prefill chunk's other arrays and the holes they leave, beyond
                               # attention's (measured under Node at a 1,900-token prompt: 2.0-5.8 MiB on
                               # 2 shards of Qwen2.5 0.5B, 1.5B and Gemma 3 270M)
LOGITS_BYTES = 16              # per vocabulary entry: logits and the sampler's float arrays during a generation
VOCAB_ENTRY_BYTES = 68         # per vocabulary entry, parsed metadata + tokenizer at their peak: the
                               # text's bytes, offsets, type, score, hash slots (engine/strtable.py)
                               # (scripts/vocab_memory.mjs, Pyodide: Gemma 3's 262144 -> 16.4 MiB peak)
MERGE_BYTES = 32               # per BPE merge rule (Qwen2.5's 151936 tokens + 151387 merges: 13.8 MiB peak)
RESERVE_MARGIN = 16 * MIB      # beyond the estimate: running short by a byte costs a whole growth step (up to 96 MiB)
DEVICE_SHARE = 0.5             # of navigator.deviceMemory, for all of a tab's workers together


@dataclass
class WorkerBudget:
    index: int
    runtime: int
    weights: int
    side: int
    kv: int
    vocabulary: int

    @property
    def total(self) -> int:
        return self.runtime + self.weights + self.side + self.kv + self.vocabulary

    def describe(self) -> str:
        return (f"weights {_gb(self.weights + self.side)} + KV cache {_gb(self.kv)} + vocabulary "
                f"{_gb(self.vocabulary)} + runtime {_gb(self.runtime)}")


@dataclass
class Budget:
    n_ctx: int
    layout: str
    workers: list[WorkerBudget] = field(default_factory=list)

    @property
    def per_worker(self) -> list[int]:
        return [w.total for w in self.workers]

    @property
    def total(self) -> int:
        return sum(self.per_worker)

    def as_dict(self) -> dict:
        return {"n_ctx": self.n_ctx, "layout": self.layout, "total_bytes": self.total,
                "workers": [{"total_bytes": w.total, "heap_bytes": w.total + RESERVE_MARGIN, "runtime": w.runtime,
                             "weights": w.weights, "side": w.side, "kv": w.kv, "vocabulary": w.vocabulary}
                            for w in self.workers]}

    def refusal(self, device_bytes: int | None = None, wasm_limit: int = WASM_LIMIT) -> str | None:
        """Why this does not fit, in words (None when it does): every worker under the wasm32
        ceiling, and all of them under DEVICE_SHARE of the device's memory where it is known."""
        n = len(self.workers)
        big = max(self.workers, key=lambda w: w.total)
        hints = f"Use fewer tokens of context (n_ctx, now {self.n_ctx})" + (" or more workers." if n < 8 else ".")
        if big.total > wasm_limit:
            who = "one worker" if n == 1 else f"worker {big.index} of {n}"
            return (f"this model needs about {_gb(big.total)} on {who} ({big.describe()}), more than the "
                    f"{_gb(wasm_limit)} a WebAssembly worker can address. {hints}")
        if device_bytes:
            allowed = int(device_bytes * DEVICE_SHARE)
            if self.total > allowed:
                where = f"on one worker ({big.describe()})" if n == 1 else \
                    f"over {n} workers ({big.describe()} on the largest)"
                return (f"this model needs about {_gb(self.total)} {where}, more than this device can give a "
                        f"page (about {_gb(allowed)} of its {_gb(device_bytes)}). {hints}")
        return None


def estimate(gguf, n_ctx: int | None = None, n_workers: int = 1, layout: str = "packed",
             split_attention: bool = True, default_ctx: int = 2048, kv_dtype: str = "float16") -> Budget:
    """The budget of loading `gguf` (a GGUFFile or a ShardFile holding only the header) on
    n_workers workers with n_ctx tokens of KV cache, as engine.bridge / engine.shard load it."""
    from .shard import buffer_floats, column_cuts, shard_ranges

    cfg = ModelConfig.from_gguf(gguf)
    n_ctx = min(n_ctx or default_ctx, cfg.context_length)
    budget = Budget(n_ctx, layout)
    plans = plan_for(gguf, n_workers, split_attention) if n_workers > 1 else [None]
    vocab = _vocabulary_bytes(gguf)
    for i, plan in enumerate(plans):
        if plan is None:
            held = _file_size(gguf)
            kv_heads = cfg.kv_heads
            cuts = 0
        else:
            head = gguf.data_offset  # the header's bytes are parsed, not kept (engine/shard.py ShardLoader)
            held = sum(b - max(a, head) for a, b in shard_ranges(gguf, plan) if b > head)
            held += sum(n_rows * (b1 - b0) for _, _, _, b0, b1, n_rows in column_cuts(gguf, plan))
            kv_heads = plan.kv_heads[1] - plan.kv_heads[0]
            cuts = _dense_cut_bytes(gguf, cfg, plan)
        kv_rows = sum(cfg.kv_rows(layer, n_ctx, model.KV_REWIND) for layer in range(cfg.n_layers))
        kv = kv_rows * kv_heads * (cfg.head_dim + cfg.v_head_dim) * model.KV_DTYPES[kv_dtype].itemsize
        side = _side_bytes(gguf, cfg, plan, layout)
        tokenizes = plan is None or i == 0
        voc = vocab if tokenizes else 0  # the others walk the string arrays without keeping them
        heads = cfg.n_heads if plan is None else plan.heads[1] - plan.heads[0]
        runtime = _fixed_runtime(gguf, cfg, plan, layout) + (cfg.vocab_size * LOGITS_BYTES if tokenizes else 0) + \
            _attention_bytes(cfg, n_ctx, heads, kv_heads)
        if plan is not None:  # the exchange buffers (engine/shard.py buffer_floats, made at their largest)
            runtime += 4 * sum(buffer_floats(cfg, plan, n_ctx))
        budget.workers.append(WorkerBudget(i, runtime, held + cuts, side, kv, voc))
    return budget


# ---- the parts ----------------------------------------------------------------------------------


def _fixed_runtime(gguf, cfg: ModelConfig, plan: ShardPlan | None, layout: str) -> int:
    """What a worker holds whatever the context: the runtime booted, the kernels' scratch (packed
    blocks always; matmul.BlockLinear's only where the layout keeps some matrix as int8 blocks, not
    as values for the packed kernels), a prefill chunk's arrays."""
    from .bridge import policy_for

    policy = policy_for(layout)
    int8 = any(not quants.TYPES[t.ggml_type].is_float and not (policy.packs(t.ggml_type) or policy.values(t.ggml_type))
               for t, _, _ in _matrices(gguf, cfg, plan))
    return BOOT_BYTES + PACKED_SCRATCH + (INT8_SCRATCH if int8 else 0) + FORWARD_BYTES


def _attention_bytes(cfg: ModelConfig, n_ctx: int, heads: int, kv_heads: int) -> int:
    """Attention's working arrays with the context full (engine/model.py _attend): a prefill chunk's
    float32 scores (heads, PREFILL_CHUNK, n_ctx), their softmax written over them, and the cached
    keys and values read back as float32. A short prompt needs little of it; a long one all."""
    scores = heads * min(model.PREFILL_CHUNK, n_ctx) * n_ctx * 4
    return scores + n_ctx * kv_heads * (cfg.head_dim + cfg.v_head_dim) * 4


def _file_size(gguf) -> int:
    return getattr(gguf, "file_size", None) or gguf.nbytes


def _vocabulary_bytes(gguf) -> int:
    md = gguf.metadata
    tokens = md.get("tokenizer.ggml.tokens")
    merges = md.get("tokenizer.ggml.merges")
    n_tokens = len(tokens) if tokens is not None else 0
    return n_tokens * VOCAB_ENTRY_BYTES + (len(merges) if merges is not None else 0) * MERGE_BYTES


def _matrices(gguf, cfg: ModelConfig, plan: ShardPlan | None):
    """(tensor, rows held, columns held) of every 2-D weight this worker prepares."""
    rows = row_ranges(cfg, plan) if plan is not None else {}
    cols = column_ranges(cfg, plan) if plan is not None else {}
    for name, t in gguf.tensors.items():
        if len(t.shape) != 2:
            continue
        n_out, n_in = t.shape
        if name == "token_embd.weight" and "output.weight" in gguf.tensors:
            continue  # an embedding alone stays the file's rows (decoded on lookup)
        kind = name.split(".")[-2] if name.startswith("blk.") else name
        if plan is None:
            yield t, n_out, n_in
        elif name in ("token_embd.weight", "output.weight"):
            yield t, plan.vocab[1] - plan.vocab[0], n_in
        elif kind in rows:
            yield t, sum(b - a for a, b in rows[kind]), n_in
        elif kind in cols:
            c0, c1 = cols[kind]
            yield t, n_out, c1 - c0



def _side_bytes(gguf, cfg: ModelConfig, plan: ShardPlan | None, layout: str) -> int:
    from .bridge import policy_for  # the layouts' policies (which types stay packed)

    policy = policy_for(layout)
    q8, q4k = quants.BY_NAME["Q8_0"].type_id, quants.BY_NAME["Q4_K"].type_id
    head = "output.weight" if "output.weight" in gguf.tensors else "token_embd.weight"
    dense_head = LoadPolicy().dense_head_mb * 2**20  # a small LM head is kept as float32 (model.load_transformer)
    total = 0
    for t, n_rows, n_cols in _matrices(gguf, cfg, plan):
        qt = quants.TYPES[t.ggml_type]
        n = n_rows * n_cols
        if t.name == head and 4 * n <= dense_head:
            total += 4 * n
            continue
        if qt.is_float:
            continue
        if t.ggml_type == q8:
            if policy.float_scales or not policy.packs(q8):
                total += n // 32 * 4  # float32 scales beside the int8 columns (not compact: read from the planes)
        elif not policy.packs(t.ggml_type):
            offsets = 2 if t.ggml_type in (q4k, 3, 7, 10, 13) else 1  # types with a min: scale + offset
            total += n + n // qt.sub_size * 4 * offsets
    return total


def _dense_cut_bytes(gguf, cfg: ModelConfig, plan: ShardPlan) -> int:
    """A row-parallel matrix cut inside a block (tiny models only) is held whole and its columns
    are dequantized to float32 (model._columns); whole-block cuts are pieces (shard.column_cuts)."""
    cols = column_ranges(cfg, plan)
    total = 0
    for name, t in gguf.tensors.items():
        kind = name.split(".")[-2] if name.startswith("blk.") else name
        if kind in ROW_PARALLEL and kind in cols and len(t.shape) == 2:
            c0, c1 = cols[kind]
            bs = quants.TYPES[t.ggml_type].block_size
            if (c0, c1) != (0, t.shape[1]) and c1 > c0 and (c0 % bs or c1 % bs):
                total += t.shape[0] * 4 * (c1 - c0)
    return total


def _gb(n: int) -> str:
    return f"{n / 1e9:.2f} GB" if n >= 1e9 else f"{n / 1e6:.0f} MB"
