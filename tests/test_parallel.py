"""Sharded decoding (engine/shard.py, static/parallel*.js) against the plain engine.

CPython: N shards driven in lockstep give Model.forward's logits (prefill, then token by token
through the KV caches) for tiny models of every architecture and for Gemma 3 270M (slow), each shard
built from a ShardFile that holds only the header and shard_ranges() of the file, so a missing
range would fail here. The generation loop on the leader (LookaheadModel inside engine.generate)
gives engine.generate's greedy tokens.
ShardLoader fed block by block, as static/parallel.js streams the file: the leader's sha256 is the
file's, the other shards get only their ranges, gaps and missing bytes are refused.
Browser (marked `browser`): MoteBench.run (the browser benchmark's page) with 1 and 2 workers gives
the CPython engine's greedy tokens on a tiny model; a 38 MB one streams through the coordinator (which holds a few MB
of it at most), a wrong sha256 caches nothing, and the cached copy is read back.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import os

import numpy as np
import pytest

from engine import shard
from engine.generate import SamplingParams, generate
from engine.gguf import GGUFFile, open_gguf
from engine.lookup import DraftPolicy
from engine.model import ROW_PARALLEL, LoadPolicy, load_model
from engine.session import Generation, LookaheadModel, Session
from engine.strtable import SkippedStrings
from mote.loader import load
from tests.paths import gemma_path
from tests.tiny_models import VOCAB, write_tiny

ARCHS = ["llama", "qwen2", "gemma3", "gpt2"]
BLOCKS = LoadPolicy(dense_layers_mb=0, dense_head_mb=0)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    made = {}

    def get(arch, qtype="F32", tied=False, **kw):
        key = (arch, qtype, tied, tuple(sorted(kw.items())))
        if key not in made:
            path = tmp_path_factory.mktemp("tiny") / f"{arch}-{qtype}-{tied}.gguf"
            made[key] = write_tiny(path, arch, qtype=qtype, tied=tied, **kw)
        return made[key]

    return get


def _tokens(n, seed=1):
    return np.random.default_rng(seed).integers(3, VOCAB, size=n).tolist()


def _shards_from_ranges(path, n, policy=shard.WORKER_POLICY, n_ctx=None, split_attention=True):
    """Every shard as a worker builds it: header + its byte ranges only, copied out of the file."""
    data = path.read_bytes()
    header_len = shard.ShardFile.header_length(data[: 1 << 20], len(data))
    assert header_len > 0
    header = data[:header_len]
    plans = shard.plan_for(shard.ShardFile(header, len(data)), n, split_attention)
    shards = []
    for plan in plans:
        head = shard.ShardFile(header, len(data))
        pieces = [(a, bytearray(data[a:b])) for a, b in shard.shard_ranges(head, plan)]
        cuts = {name: (b0, b1, np.frombuffer(data, np.uint8, n_rows * rb, off).reshape(n_rows, rb)[:, b0:b1].copy())
                for name, off, rb, b0, b1, n_rows in shard.column_cuts(head, plan)}  # row-parallel column cuts
        shards.append(load_model(shard.ShardFile(header, len(data), pieces, cuts), n_ctx, policy, plan=plan))
    return shards


def _compare(shards, model, toks, split=7):
    """Prefill toks[:split], then one token at a time: sharded logits == Model.forward's."""
    for s in shards:
        s.reset()
    model.reset()
    worst = 0.0
    for chunk in [toks[:split]] + [[t] for t in toks[split:]]:
        got = shard.run_lockstep(shards, chunk)  # (vocab,)
        ref = model.forward(chunk)  # (vocab,)
        scale = max(1.0, float(np.abs(ref).max()))
        worst = max(worst, float(np.abs(got - ref).max()) / scale)
    assert all(s.pos == len(toks) for s in shards)
    return worst


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("n", [1, 2, 4])
def test_sharded_forward_equals_model(tiny, arch, n):
    path = tiny(arch)
    model = load_model(open_gguf(path), policy=BLOCKS)
    shards = _shards_from_ranges(path, n, policy=BLOCKS)
    assert _compare(shards, model, _tokens(20)) < 1e-4  # 20 tokens cross gemma3's window of 8


@pytest.mark.parametrize("arch", ARCHS)
def test_ffn_only_split_equals_model(tiny, arch):
    """Attention replicated on every shard, FFN and vocabulary split: one SUM per layer."""
    path = tiny(arch, "Q8_0")
    model = load_model(open_gguf(path), policy=BLOCKS)
    shards = _shards_from_ranges(path, 3, policy=BLOCKS, split_attention=False)
    assert _compare(shards, model, _tokens(14, seed=6)) < 1e-4
    runner = shard.ShardRunner(shards[0])
    for s in shards:
        s.reset()
    steps = [s.forward_steps([5]) for s in shards]
    kinds = []
    msgs = [next(g) for g in steps]
    while msgs[0][0] == shard.SUM:
        kinds.append(msgs[0][0])
        total = np.stack([p for _, p in msgs]).sum(axis=0)
        msgs = [g.send(total.copy()) for g in steps]
    assert len(kinds) == 1 + 2 and runner.n_shards == 3  # embedding + one per layer


@pytest.mark.parametrize("arch,qtype,tied", [("llama", "Q8_0", True), ("gemma3", "Q4_0", False),
                                              ("qwen2", "Q5_0", True), ("gpt2", "Q8_0", False)])
def test_sharded_block_quantized(tiny, arch, qtype, tied):
    """Quantized weights: rows cut by byte ranges, columns cut at block boundaries (or dequantized)."""
    path = tiny(arch, qtype, tied)
    model = load_model(open_gguf(path), policy=BLOCKS)
    for n in (2, 3):
        shards = _shards_from_ranges(path, n, policy=BLOCKS)
        assert _compare(shards, model, _tokens(12, seed=3), split=5) < 1e-4
    # as ShardLoader.runner loads them: each worker owns its pieces, Q8_0 is compacted in them
    own = dataclasses.replace(BLOCKS, own_buffer=True)
    shards = _shards_from_ranges(path, 2, policy=own)
    assert (qtype == "Q8_0") == any(getattr(s.w["output"], "compacted", False) for s in shards)
    assert _compare(shards, model, _tokens(12, seed=3), split=5) < 1e-4
    # the row-parallel matrices' column cuts are fresh copies: Q8_0 is compacted in them (the
    # contiguous int8 rows the fast kernel wants), with or without own_buffer
    for policy in (BLOCKS, own):
        for s in _shards_from_ranges(path, 2, policy=policy):
            for blk in s.w["blk"]:
                for m in ROW_PARALLEL:
                    if m in blk and hasattr(blk[m], "compacted"):
                        assert blk[m].compacted == (qtype == "Q8_0"), (m, policy.own_buffer)


def test_plan_splits_heads_by_kv_group():
    from engine.config import ModelConfig

    cfg = ModelConfig("llama", 128, 64, 2, 96, 8, VOCAB, n_kv_heads=2)
    two = shard.plan_shards(cfg, 2)
    assert [p.heads for p in two] == [(0, 4), (4, 8)] and [p.kv_heads for p in two] == [(0, 1), (1, 2)]
    four = shard.plan_shards(cfg, 4)  # more shards than kv heads: each stays inside one group
    assert [p.heads for p in four] == [(0, 2), (2, 4), (4, 6), (6, 8)]
    assert [p.kv_heads for p in four] == [(0, 1), (0, 1), (1, 2), (1, 2)]
    assert [p.ffn for p in shard.plan_shards(cfg, 2, ffn_unit=32)] == [(0, 64), (64, 96)]
    assert shard.plan_shards(cfg, 3)[-1].vocab[1] == VOCAB
    with pytest.raises(ValueError, match="9 shards for 8 attention heads"):
        shard.plan_shards(cfg, 9)


def test_shard_file_holds_only_its_ranges(tiny):
    """A shard's ranges are a fraction of the file; asking for bytes it does not hold names them."""
    path = tiny("gemma3", "Q8_0", True, d=128, d_ff=256, n_layers=2)
    data = path.read_bytes()
    header = data[: shard.ShardFile.header_length(data, len(data))]
    plans = shard.plan_for(shard.ShardFile(header, len(data)), 2)
    sizes = [sum(b - a for a, b in shard.shard_ranges(shard.ShardFile(header, len(data)), p)) for p in plans]
    assert all(s < 0.8 * len(data) for s in sizes)
    assert shard.ShardFile.header_length(data[:100], len(data)) == 0  # too short to tell
    with pytest.raises(shard.ShortPrefix, match="100 bytes do not hold the whole GGUF header"):
        shard.ShardLoader(data[:100], len(data), 2, 0)
    assert shard.open_loader(data[:100], len(data), 2, 0) is None  # the worker asks for a longer prefix
    gf = shard.ShardFile(header, len(data), [(len(header), bytearray(16))])
    with pytest.raises(KeyError, match="token_embd.weight"):
        gf.raw("token_embd.weight")


def test_runner_mailbox_protocol(tiny):
    """ShardRunner as the browser worker drives it, with the peers' rows copied in by hand."""
    path = tiny("llama", "Q8_0", True)
    toks = _tokens(6, seed=4)
    ref = shard.run_lockstep(_shards_from_ranges(path, 2), toks)
    runners = [shard.ShardRunner(s) for s in _shards_from_ranges(path, 2)]
    codes = [r.begin(toks, 0) for r in runners]
    n_sums = 0
    while codes[0] > 0:
        assert codes[0] == codes[1]
        n = codes[0]
        rows = [r.mailbox[r.index, :n].copy() for r in runners]  # what each worker posts
        for r in runners:
            for j, row in enumerate(rows):
                r.mailbox[j, :n] = row
        codes = [r.resume() for r in runners]
        n_sums += 1
    assert n_sums == 1 + 2 * 2  # embedding + two per layer
    starts = runners[0].vocab_starts()
    peer = runners[1].outbox(-codes[1])  # a one-row GATHER: the peer's slice of the row
    runners[0].logits[starts[1] : starts[1] + len(peer)] = peer
    assert [r.resume() for r in runners] == [0, 0]
    np.testing.assert_array_equal(runners[0].last_logits, ref)


@pytest.mark.parametrize("speculative", [False, True])
@pytest.mark.parametrize("arch", ["llama", "gemma3"])
def test_leader_generation_gives_engine_tokens(tiny, arch, speculative):
    """engine.generate over the LookaheadModel, fed by 2 shards: the same greedy tokens and text,
    with prompt lookup's verify passes run on the shards too."""
    path = tiny(arch, "Q8_0")
    loaded = load(path, policy=BLOCKS)
    prompt = [1] + _tokens(5, seed=5) * 3  # repeats, so lookup finds drafts
    params = SamplingParams(temperature=0, max_tokens=40, speculative=speculative)
    want = [ev.token_id for ev in generate(loaded.model, loaded.tokenizer, prompt, params) if ev.kind == "token"]

    shards = _shards_from_ranges(path, 2, policy=BLOCKS)
    session = Session(open_gguf(path), LookaheadModel(shards[0].n_ctx))
    session.draft_policy = DraftPolicy(t1=1.0, row_costs=[0.01])  # drafts whenever there is a match
    gen = Generation(session, prompt, 0, params)
    got, done = [], None
    while True:
        need = gen.need()
        if need is not None:
            tokens, start, verify = need
            assert verify == (len(tokens) > 1 and start > 0)
            for s in shards:
                s.pos = start
            gen.provide(shard.run_lockstep(shards, tokens, verify, verify), 1.0 + 0.01 * (len(tokens) - 1))
        ev = gen.step()
        if ev is None:
            break
        if ev["type"] == "token":
            got.append(ev["token_id"])
        if ev["type"] == "done":
            done = ev
    assert got == want and done["token_ids"] == want and done["reason"] == "length"
    assert done["decode_tok_s"] > 0 and done["prefill_tok_s"] > 0
    assert (done["n_drafted"] > 0) == speculative


def _stream(path, n, block, hash_leader=True, n_ctx=None):
    """Loaders fed as static/parallel.js feeds them: the 4 kB prefix (doubled until it holds the
    header), then `block`-byte blocks, all of each to the leader, only their ranges' parts to the others."""
    data = path.read_bytes()
    n_prefix = min(len(data), 4096)
    while shard.ShardFile.header_length(data[:n_prefix], len(data)) == 0:
        n_prefix = min(len(data), 2 * n_prefix)
    loaders = [shard.ShardLoader(data[:n_prefix], len(data), n, i, n_ctx) for i in range(n)]
    for i, ld in enumerate(loaders):
        assert ld.stream_from(data[:n_prefix], hash_all=hash_leader and i == 0) == n_prefix
    got = [0] * n
    for start in range(n_prefix, len(data), block):
        end = min(len(data), start + block)
        loaders[0].write(start, bytearray(data[start:end]) + b"junk", end - start)  # scratch larger than n
        got[0] += end - start
        for i in range(1, n):
            for a, b in loaders[i].ranges():
                a, b = max(a, start), min(b, end)
                if a < b:
                    loaders[i].write(a, data[a:b])
                    got[i] += b - a
    return data, loaders, got


def test_streamed_loaders_verify_and_build(tiny):
    """ShardLoader fed in blocks: the leader's sha256 is the file's, each other shard got only its
    ranges' bytes, and the shards built from the pieces give Model.forward's logits."""
    path = tiny("gemma3", "Q8_0", True, d=128, d_ff=256, n_layers=2)
    model = load_model(open_gguf(path), policy=BLOCKS)
    data, loaders, got = _stream(path, 3, block=1000)
    assert loaders[0].sha256() == hashlib.sha256(data).hexdigest()
    assert all(got[i] == sum(b - a for a, b in ld.ranges()) < len(data) for i, ld in enumerate(loaders) if i)
    with pytest.raises(ValueError, match="does not hash"):
        loaders[1].sha256()
    shards = [ld.runner().model for ld in loaders]
    assert _compare(shards, model, _tokens(10, seed=2), split=4) < 1e-4


def test_streamed_loader_refuses_gaps_and_missing_bytes(tiny):
    """The leader must get every byte in order; a shard missing bytes cannot build; nothing past the end."""
    path = tiny("llama", "Q8_0")
    data = path.read_bytes()
    n_header = shard.ShardFile.header_length(data, len(data))
    leader = shard.ShardLoader(data[:n_header], len(data), 2, 0)
    leader.stream_from(data[:n_header], hash_all=True)
    with pytest.raises(ValueError, match=f"bytes from {n_header + 10} but the hash has reached {n_header}"):
        leader.write(n_header + 10, data[n_header + 10 : n_header + 20])
    with pytest.raises(ValueError, match="not complete"):
        leader.sha256()
    other = shard.ShardLoader(data[:n_header], len(data), 2, 1)
    other.stream_from(data[:n_header])
    (a, b), *_ = other.ranges()
    other.write(a, data[a : b - 1])  # one byte short
    with pytest.raises(ValueError, match=r"shard 1 got \d+ of its \d+ bytes"):
        other.runner()
    with pytest.raises(ValueError, match="run past the file"):
        other.write(len(data) - 2, b"abcd")


def test_loaders_keep_no_header_bytes_and_only_the_leader_the_vocabulary(tiny):
    """The prefix can be freed as soon as the loader is made (nothing views it), the header's bytes
    are not among what a shard holds, and only shard 0, which tokenizes, keeps the string arrays;
    the others know their lengths (the budget needs them), and the file runs the same."""
    path = tiny("llama", "Q8_0")
    data = path.read_bytes()
    prefix = bytearray(data[:1 << 16])
    loaders = [shard.ShardLoader(prefix, len(data), 2, i) for i in range(2)]
    prefix.clear()  # a BufferError if a loader's parse still viewed it
    full = GGUFFile(data)
    tokens = full.metadata["tokenizer.ggml.tokens"]
    for i, ld in enumerate(loaders):
        ld.stream_from(hash_all=i == 0)
        ld.write(0, data)
        kept = ld.file().metadata["tokenizer.ggml.tokens"]
        assert len(kept) == len(tokens)
        if i == 0:
            assert list(kept) == list(tokens)
        else:
            assert isinstance(kept, SkippedStrings)
            with pytest.raises(LookupError, match="not kept"):
                kept[0]
        with pytest.raises(KeyError, match="not among this shard's pieces"):
            ld.file()._span("the header", 0, ld.n_header)
    assert loaders[0].sha256() == hashlib.sha256(data).hexdigest()
    model = load_model(open_gguf(path), n_ctx=32, policy=shard.WORKER_POLICY)
    assert _compare([ld.runner().model for ld in loaders], model, _tokens(6, seed=3), split=3) < 1e-4


@pytest.mark.slow
def test_gemma_sharded_forward_equals_model():
    path = gemma_path()
    gf = open_gguf(path)
    model = load_model(gf, n_ctx=64, policy=shard.WORKER_POLICY)
    toks = [2] + list(range(1000, 1010))
    data = path.read_bytes()
    header = data[: shard.ShardFile.header_length(data[: 8 << 20], len(data))]
    plans = shard.plan_for(shard.ShardFile(header, len(data)), 2)
    shards = []
    for plan in plans:  # as static/parallel-worker.js loads a shard: ShardLoader, pieces filled in
        loader = shard.ShardLoader(header, len(data), len(plans), plan.index, n_ctx=64)
        loader.stream_from(header)
        for start, end in loader.ranges():
            loader.write(start, memoryview(data)[start:end])
        shards.append(loader.runner().model)
        assert shards[-1].w["output"].compacted  # Gemma's tied Q8_0 head, compacted in the worker's piece
        print(f"\nshard {plan.index}: heads {plan.heads} ffn {plan.ffn} vocab {plan.vocab}: "
              f"{loader.held_bytes() / 2**20:.1f} MB of {len(data) / 2**20:.1f} MB")
    # Both sides keep float16 caches, as workers do: a partial sum added in another order can round a
    # key or value to the neighbouring float16 (2**-11 apart), so the logits agree less closely ...
    assert _compare(shards, model, toks, split=6) < 1e-3
    # ... and with float32 caches the split itself is as exact as on the tiny models
    for m in [model, *shards]:
        _float32_cache(m)
    assert _compare(shards, model, toks, split=6) < 1e-4


def _float32_cache(m):
    """Give a loaded model float32 caches (it holds nothing yet worth keeping: _compare resets it)."""
    m.kv_dtype = np.dtype(np.float32)
    m.k_cache = [c.astype(np.float32) for c in m.k_cache]
    m.v_cache = [c.astype(np.float32) for c in m.v_cache]


# ---- the browser --------------------------------------------------------------------------------


def _engine_tokens(path, prompt: str, max_tokens: int) -> list[int]:
    """The CPython engine's greedy tokens for `prompt` (what every browser run must reproduce)."""
    loaded = load(path)
    params = SamplingParams(temperature=0, max_tokens=max_tokens, stop=tuple(loaded.template.stop))
    events = generate(loaded.model, loaded.tokenizer, loaded.tokenizer.encode(prompt), params)
    return [ev.token_id for ev in events if ev.kind == "token"]


@contextlib.contextmanager
def _parallel_page(path, tmp_path, name: str):
    """The browser benchmark's page (mote/bench/pages/, window.MoteBench) in Chromium, served with
    `path` as the only model (named `name`)."""
    from mote.bench.browser import bench_app
    from tests.browser_util import chromium, ensure_static_built, serve_in_thread

    ensure_static_built()
    models = tmp_path / "models"
    models.mkdir()
    (models / name).write_bytes(path.read_bytes())
    with serve_in_thread(bench_app(models)) as base, chromium() as browser:
        page = browser.new_page()
        page.on("console", lambda m: print("console:", m.text))
        page.goto(f"{base}/__bench__/")
        page.wait_for_function("window.MoteBench !== undefined", timeout=30_000)
        yield page


@pytest.mark.browser
def test_parallel_page_matches_engine(tiny, tmp_path):
    path = tiny("gemma3", "Q8_0", True, d=128, d_ff=256, n_layers=3)
    prompt = "Hello, parallel world"
    want = _engine_tokens(path, prompt, 16)
    with _parallel_page(path, tmp_path, "tiny.gguf") as page:
        results = {}
        for n in (1, 2):
            out = page.evaluate("""async ([n, prompt]) => {
                const models = await (await fetch('/models')).json();
                return await MoteBench.run({workers: n, model: models[0], prompt,
                                                      params: {temperature: 0, max_tokens: 16}});
            }""", [n, prompt])
            print(f"\nparallel-metrics workers={n}:", json.dumps({k: v for k, v in out.items() if k != "token_ids"}))
            results[n] = out["token_ids"]
        assert results[1] == want
        assert results[2] == want


@pytest.mark.browser
def test_parallel_load_streams_and_verifies(tiny, tmp_path):
    """A 38 MB model on 2 workers: the coordinator never holds more than a few MB of it (the header
    prefix, one block, the cache's queue, the buffers coming back), a wrong sha256 (no chunk list)
    or a wrong chunk digest is an error that caches nothing, the good file gives the engine's tokens, is cached, and is read
    back from the cache, starting while the workers boot."""
    path = tiny("gemma3", "F32", False, d=512, d_ff=2048, n_layers=3)
    size = path.stat().st_size
    assert size > 30e6
    prompt = "Hello"
    want = _engine_tokens(path, prompt, 6)
    with _parallel_page(path, tmp_path, "big.gguf") as page:
        go = """async ([prompt, bad]) => {
            const [model] = await (await fetch('/models')).json();
            const chunks = model.chunks, digests = [...chunks.sha256];
            digests[3] = '0'.repeat(64);
            const ref = bad === 'sha256' ? {...model, sha256: '0'.repeat(64), chunks: undefined}
                      : bad === 'chunk' ? {...model, chunks: {...chunks, sha256: digests}} : model;
            try {
                return await MoteBench.run({workers: 2, prompt, params: {temperature: 0, max_tokens: 6}, model: ref});
            } catch (e) { return {error: String(e.message || e)}; }
        }"""
        keys = "async () => (await (await caches.open('mote-models-v1')).keys()).map((r) => r.url.split('/').pop())"
        bad = page.evaluate(go, [prompt, "sha256"])
        assert "does not match the expected " + "0" * 64 in bad.get("error", ""), bad
        assert page.evaluate(keys) == []
        bad = page.evaluate(go, [prompt, "chunk"])
        assert "(chunk 4 of " in bad.get("error", "") and "do not match their sha256" in bad["error"], bad
        assert page.evaluate(keys) == []
        sha = hashlib.sha256(path.read_bytes()).hexdigest()
        for cached in (False, True):
            out = page.evaluate(go, [prompt, None])
            print(f"\nparallel-stream cached={cached}:", json.dumps({k: out.get(k) for k in (
                "load_s", "timings", "coordinator_peak_bytes", "cached", "error")}))
            assert out.get("token_ids") == want, out
            assert out["cached"] is cached
            assert ("weights_early" in out["timings"]) is cached  # a cached copy is read while the workers boot
            # the old coordinator held all of it; now a block, the cache's queue and the buffers the
            # workers gave back (parallel.js: BLOCK 2 MiB, CACHE_QUEUE 4 MiB, at most WINDOW / BLOCK = 4
            # buffers in flight per worker), or the 8 MiB header prefix before them
            assert 0 < out["coordinator_peak_bytes"] <= (2 + 4 + 2 * 4 * 2) * 2**20 < size
            assert page.evaluate(keys) == [sha, sha + ".checksum"]   # the copy, and its checksum kept beside it


@pytest.mark.browser
def test_parallel_load_of_a_header_longer_than_the_first_bytes(tmp_path, monkeypatch):
    """A GGUF header past the first 8 MiB (here 9 MB of extra metadata): the workers ask for a longer
    prefix, which grows by the blocks read after it, from the cache (read while the workers boot)
    and from a download, with and without a chunk list; the shards then build the engine's model."""
    import gguf as gguf_py

    write_header = gguf_py.GGUFWriter.write_header_to_file

    def padded(self, *args, **kwargs):
        self.add_array("mote.test.padding", ["x" * 1000] * 9000)  # ~9 MB of strings in the header
        return write_header(self, *args, **kwargs)

    monkeypatch.setattr(gguf_py.GGUFWriter, "write_header_to_file", padded)
    path = write_tiny(tmp_path / "long-header.gguf", "llama", qtype="Q8_0", d=128, d_ff=256, n_layers=2)
    monkeypatch.undo()
    assert GGUFFile(bytearray(path.read_bytes())).data_offset > 8 << 20
    want = _engine_tokens(path, "Hello", 6)
    with _parallel_page(path, tmp_path, "long-header.gguf") as page:
        go = """async (chunks) => {
            const [model] = await (await fetch('/models')).json();
            const ref = chunks ? model : {...model, chunks: undefined};
            try {
                return await MoteBench.run({workers: 2, prompt: 'Hello', params: {temperature: 0, max_tokens: 6}, model: ref});
            } catch (e) { return {error: String(e.message || e)}; }
        }"""
        for chunks in (True, False):
            for cached in (False, True):
                out = page.evaluate(go, chunks)
                assert out.get("token_ids") == want, (chunks, cached, out)
                assert out["cached"] is cached
            page.evaluate("async () => { for (const k of await caches.keys()) await caches.delete(k); }")


def _drive_sharded(gen, shards) -> list[dict]:
    """A leader's generation, its forwards run by the shards in lockstep (as parallel-worker.js does)."""
    events = []
    while True:
        need = gen.need()
        if need is not None:
            tokens, start, verify = need
            for s in shards:
                s.pos = start
            gen.provide(shard.run_lockstep(shards, tokens, verify, verify), 1.0)
        ev = gen.step()
        if ev is None:
            return events
        events.append(ev)


@pytest.mark.parametrize("arch", ["llama", "gemma3"])
def test_leader_prefills_the_chat_templates_opening_on_the_shards(tiny, arch):
    """parallel-worker.js's idle prefill: Session.opening_generation over 2 shards, a few tokens per
    forward, then a new chat's first request reuses all of it and answers with the tokens of one
    model that prefilled nothing."""
    path = tiny(arch, "Q8_0")
    loaded = load(path, policy=BLOCKS)
    question = {"messages": [{"role": "user", "content": "Why is the sky blue?"}], "params": {"temperature": 0, "max_tokens": 12}}
    alone = Session(open_gguf(path), loaded.model)
    want = [e["token_id"] for e in _drive_sharded(alone.start(question), []) if e["type"] == "token"]

    shards = _shards_from_ranges(path, 2, policy=BLOCKS)
    session = Session(open_gguf(path), LookaheadModel(shards[0].n_ctx))
    opening = session.opening()
    assert len(opening) >= 2
    forwards = 0
    while (gen := session.opening_generation(3)) is not None:
        events = _drive_sharded(gen, shards)
        assert [e["type"] for e in events] == ["forward", "prefill", "done"] and events[-1]["token_ids"] == []
        forwards += 1
    assert forwards == -(-len(opening) // 3) and session._cached == opening
    events = _drive_sharded(session.start(question), shards)
    assert events[-1]["n_reused"] == len(opening)
    assert [e["token_id"] for e in events if e["type"] == "token"] == want
    assert session.opening_generation(3) is None   # a conversation in the cache is left alone


@pytest.mark.browser
def test_two_workers_prefill_the_chat_templates_opening_once_idle(tiny, tmp_path):
    """The embed API on 2 workers: idle after ready, the leader prefills the chat template's opening
    on the shards (parallel-worker.js); the first chat then reuses all of it, with CPython's tokens.
    After "New chat" (reset) it is prefilled again."""
    path = tiny("gemma3", "Q8_0", True, d=128, d_ff=256, n_layers=3)
    request = {"messages": [{"role": "user", "content": "Hello, parallel world"}], "params": {"temperature": 0, "max_tokens": 12}}
    alone = Session(open_gguf(path), load(path).model)
    want = [e["token_id"] for e in _drive_sharded(alone.start(request), []) if e["type"] == "token"]
    n_opening = len(alone.opening())
    assert n_opening >= 2
    with _parallel_page(path, tmp_path, "tiny.gguf") as page:
        page.wait_for_function("() => window.Mote !== undefined", timeout=30_000)
        out = page.evaluate("""async ([url, request]) => {
            const m = await Mote.load(url, { workers: 2 });
            const idle = () => new Promise((r) => setTimeout(r, 1500));
            const answer = async () => {
                for await (const ev of m.events({ messages: request.messages }, request.params)) {}
                return { n_reused: m.last.n_reused, token_ids: m.last.token_ids };
            };
            await idle();
            const first = await answer();
            m.worker.postMessage({ type: "reset" });   // the chat page's "New chat"
            await idle();
            return [first, await answer()];
        }""", [f"{page.url.split('/__bench__')[0]}/models/tiny.gguf", request])
    for done in out:
        assert done["n_reused"] == n_opening, out
        assert done["token_ids"] == want
