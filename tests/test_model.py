"""Model invariants on tiny random models of every architecture (layer (a) of the test pyramid).

- decoding one token at a time through the KV cache gives the logits of a full recomputation;
- the int8-block resident form gives the products of the float32 form;
- a missing tensor, a wrong shape or an unsupported architecture is a clear error.
"""

import dataclasses

import gguf as gguf_pkg
import numpy as np
import pytest

from engine.config import ConfigError
from engine.gguf import open_gguf
from engine.model import LoadPolicy, load_model
from tests.tiny_models import VOCAB, write_tiny

ARCHS = ["llama", "qwen2", "gemma3", "gpt2"]
DENSE = LoadPolicy(dense_layers_mb=1e6, dense_head_mb=1e6)
BLOCKS = LoadPolicy(dense_layers_mb=0, dense_head_mb=0)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    made = {}

    def get(arch, qtype="F32", tied=False):
        key = (arch, qtype, tied)
        if key not in made:
            path = tmp_path_factory.mktemp("tiny") / f"{arch}-{qtype}-{tied}.gguf"
            made[key] = write_tiny(path, arch, qtype=qtype, tied=tied)
        return made[key]

    return get


def _tokens(n, seed=1):
    return np.random.default_rng(seed).integers(3, VOCAB, size=n).tolist()


@pytest.mark.parametrize("arch", ARCHS)
def test_a_long_prompt_is_prefilled_in_chunks_with_bounded_activations(tmp_path, arch):
    """A prompt longer than PREFILL_CHUNK runs in chunks: the last token's logits agree with feeding
    the prompt one token at a time through the cache, and the pass's working memory is that of its
    largest chunk (the deepest full one, whose scores span the most context); whole, a 4-chunk prompt
    would hold 4x the activations and 4x the scores. tracemalloc sees numpy's data allocations."""
    import tracemalloc

    from engine.model import PREFILL_CHUNK

    g = open_gguf(write_tiny(tmp_path / f"{arch}.gguf", arch, ctx=1024, d_ff=512))
    c = PREFILL_CHUNK
    toks = _tokens(4 * c + 17, seed=3)  # crosses gemma3's window of 8 many times
    m = load_model(g, policy=DENSE)

    def working_memory(before, n):  # of forward(toks[before:before + n]) after toks[:before]
        m.reset()
        if before:
            m.forward(toks[:before])
        tracemalloc.start()
        try:
            start = tracemalloc.get_traced_memory()[0]
            logits = m.forward(toks[before : before + n])  # (vocab,)
            return tracemalloc.get_traced_memory()[1] - start - logits.nbytes, logits
        finally:
            tracemalloc.stop()

    working_memory(3 * c, c)  # scratch buffers of each shape are made once
    deepest_chunk, _ = working_memory(3 * c, c)
    whole, got = working_memory(0, len(toks))
    assert whole < 1.5 * deepest_chunk, (whole, deepest_chunk)
    ref = load_model(g, policy=DENSE)
    want = [ref.forward([t]) for t in toks][-1]  # (vocab,)
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)
    assert m.pos == len(toks)


@pytest.mark.parametrize("kv", ["float32", "float16"])
@pytest.mark.parametrize("arch", ARCHS)
def test_kv_cache_decoding_equals_full_recompute(tiny, arch, kv):
    g = open_gguf(tiny(arch))
    toks = _tokens(20)  # crosses gemma3's sliding window of 8
    policy = dataclasses.replace(DENSE, kv_dtype=kv)
    full = load_model(g, policy=policy).forward(toks, all_logits=True)  # (20, vocab)
    m = load_model(g, policy=policy)
    tol = 1e-4 if kv == "float32" else 2e-3  # float16: a last-bit difference may round one step away
    step = [m.forward([t]) for t in toks]  # one at a time through the cache
    np.testing.assert_allclose(np.stack(step), full, rtol=tol, atol=tol)
    # A prefill of part of the prompt, then single steps, must agree too.
    m.reset()
    first = m.forward(toks[:7], all_logits=True)
    rest = [m.forward([t]) for t in toks[7:]]
    np.testing.assert_allclose(np.concatenate([first, np.stack(rest)]), full, rtol=tol, atol=tol)
    assert m.pos == 20


@pytest.mark.parametrize("arch", ["llama", "gemma3"])
@pytest.mark.parametrize("qtype", ["Q8_0", "Q4_0", "Q5_0"])
def test_block_products_equal_dense(tiny, arch, qtype):
    g = open_gguf(tiny(arch, qtype, tied=True))
    toks = _tokens(9, seed=2)
    dense = load_model(g, policy=DENSE).forward(toks, all_logits=True)
    blocks = load_model(g, policy=BLOCKS).forward(toks, all_logits=True)
    np.testing.assert_allclose(blocks, dense, rtol=1e-4, atol=2e-4)


@pytest.mark.parametrize("arch", ["llama", "gemma3"])
def test_own_buffer_compacts_q8_0_with_the_same_logits(tiny, arch):
    """LoadPolicy.own_buffer (the browser worker's private copy): Q8_0 rewritten in place, same outputs."""
    from engine.gguf import GGUFFile

    path = tiny(arch, "Q8_0", tied=True)
    toks = _tokens(9, seed=4)
    ref = load_model(open_gguf(path), policy=BLOCKS).forward(toks, all_logits=True)
    buf = bytearray(path.read_bytes())
    own = dataclasses.replace(BLOCKS, own_buffer=True)
    model = load_model(GGUFFile(buf), policy=own)
    assert model.w["output"].compacted and model.w["token_embd"].block is model.w["output"]  # tied head
    assert any(getattr(m, "compacted", False) for m in model.w["blk"][0].values())  # layer Q8_0 too
    assert bytes(buf) != path.read_bytes()  # the buffer was rearranged, so it is the model's alone
    np.testing.assert_array_equal(model.forward(toks, all_logits=True), ref)  # same float ops, same bits


def test_sliding_window_changes_logits_only_past_the_window(tiny):
    """gemma3 layers 0-4 see 8 positions, layer 5 (global) all: beyond 8 tokens, the window matters."""
    g = open_gguf(tiny("gemma3"))
    m = load_model(g, policy=DENSE)
    toks = _tokens(12, seed=3)
    a = m.forward(toks, all_logits=True)
    m.reset()
    alt = list(toks)
    alt[0] = (alt[0] + 1 - 3) % (VOCAB - 3) + 3  # change the first token
    b = m.forward(alt, all_logits=True)
    assert not np.allclose(a[1], b[1])  # inside the window: the first token is seen


@pytest.fixture(scope="module")
def gemma6(tmp_path_factory):
    """gemma3 with six layers: five sliding (window 8), then a global one."""
    return open_gguf(write_tiny(tmp_path_factory.mktemp("tiny") / "gemma6.gguf", "gemma3", n_layers=6))


def _ring(monkeypatch, g, rewind, n_ctx=64, policy=DENSE):
    """A model whose sliding-window layers keep a ring of window - 1 + `rewind` positions."""
    import engine.model

    monkeypatch.setattr(engine.model, "KV_REWIND", rewind)
    return load_model(g, n_ctx=n_ctx, policy=policy)


@pytest.mark.parametrize("kv", ["float32", "float16"])
def test_sliding_window_ring_gives_the_full_cache_logits(gemma6, monkeypatch, kv):
    """gemma3's window of 8 in a ring of 16 rows (KV_REWIND 9), against a cache of every position
    (KV_REWIND 64: 71 rows, more than n_ctx): one token at a time past several wraps, a prompt wider
    than the ring, and a batch in the middle wider than the ring's room beside the window (whose
    fresh keys are rounded as the cache would round them)."""
    g = gemma6
    policy = dataclasses.replace(DENSE, kv_dtype=kv)
    full = _ring(monkeypatch, g, 64, policy=policy)
    assert [len(c) for c in full.k_cache] == [64] * 6 and full.max_cut is None
    toks = _tokens(50, seed=5)
    ref = full.forward(toks, all_logits=True)  # (50, vocab)
    ring = _ring(monkeypatch, g, 9, policy=policy)
    assert [len(c) for c in ring.k_cache] == [16] * 5 + [64] and ring.max_cut == 9  # layer 5 is global
    # a key computed one token at a time differs from the batch's in its last float32 bits, which can
    # round to a neighbouring float16: one float16 step (2^-11 relative) is the tolerance there
    tol = 1e-5 if kv == "float32" else 2e-3
    steps = np.stack([ring.forward([t]) for t in toks])
    np.testing.assert_allclose(steps, ref, rtol=tol, atol=tol)
    ring.reset()
    np.testing.assert_allclose(ring.forward(toks, all_logits=True), ref, rtol=1e-5, atol=1e-5)  # 50 > 16 rows
    ring.reset()
    parts = [ring.forward(toks[:20], all_logits=True), ring.forward(toks[20:45], all_logits=True),
             np.stack([ring.forward([t]) for t in toks[45:]])]
    np.testing.assert_allclose(np.concatenate(parts), ref, rtol=tol, atol=tol)


def test_sliding_window_ring_is_cut_back_at_most_its_room(gemma6, monkeypatch):
    """Cut back within KV_REWIND of the highest position written, the ring still holds the window
    the next position needs; further back is refused by name, and position 0 starts afresh."""
    g = gemma6
    toks, other = _tokens(40, seed=6), _tokens(40, seed=7)
    ref = _ring(monkeypatch, g, 64).forward(toks[:31] + other[31:36], all_logits=True)[31:]
    ring = _ring(monkeypatch, g, 9)
    ring.forward(toks)  # positions 0..39 written
    assert ring.cut_floor() == 31
    ring.pos = 31
    np.testing.assert_allclose(ring.forward(other[31:36], all_logits=True), ref, rtol=1e-5, atol=1e-5)
    ring.pos = 30
    with pytest.raises(ValueError, match="cannot cut the KV cache back to position 30.*lowest now 31"):
        ring.forward([5])
    ring.pos = 0
    np.testing.assert_allclose(ring.forward(toks[:3], all_logits=True),
                               _ring(monkeypatch, g, 64).forward(toks[:3], all_logits=True), rtol=1e-5, atol=1e-5)
    assert ring.cut_floor() == 0


def test_a_session_reuses_the_cache_only_above_the_rings_floor(gemma6, monkeypatch):
    """A next turn that extends the conversation reuses the ring; an edit further back than it can
    be cut computes the prompt again, and answers as a fresh session does. The leader of a
    sharded session (LookaheadModel) follows the same floor from the forwards it asks for."""
    from engine.sampler import SamplingParams
    from engine.session import LookaheadModel, Session

    def answer(session, prompt, n=12):
        gen = session.start({"prompt": prompt}, SamplingParams(temperature=0, max_tokens=n, speculative=False))
        events = list(iter(gen.step, None))
        return gen.reused, [e["token_id"] for e in events if e["type"] == "token"]

    _ring(monkeypatch, gemma6, 9)  # KV_REWIND 9 for the sessions below
    session = Session(gemma6, load_model(gemma6, n_ctx=128, policy=DENSE))
    first = "the quick brown fox jumps over the lazy dog"
    answer(session, first)
    assert session.model.cut_floor() > 3
    edited = first[:3] + "X" + first[4:]  # an edit at the 4th character
    reused, tokens = answer(session, edited, n=5)
    fresh = Session(gemma6, load_model(gemma6, n_ctx=128, policy=DENSE))
    assert reused == 0 and tokens == answer(fresh, edited, n=5)[1]
    n_prompt = len(session.prompt_tokens({"prompt": edited}))
    reused, tokens = answer(session, edited + " and")  # within 9 of the answer's end: the ring is kept
    again = Session(gemma6, load_model(gemma6, n_ctx=128, policy=DENSE))
    assert reused == n_prompt and tokens == answer(again, edited + " and")[1]

    lead, model = LookaheadModel(64, session.model.max_cut), load_model(gemma6, n_ctx=64, policy=DENSE)
    for pos, n in ((0, 30), (30, 1), (31, 9), (33, 4), (0, 5), (5, 20)):  # a prompt, steps, a draft cut back, a new fill
        for m in (lead, model):
            m.pos = pos
        lead.provide(list(range(3, 3 + n)), None)
        lead.forward(list(range(3, 3 + n)))
        model.forward(list(range(3, 3 + n)))
        assert lead.cut_floor() == model.cut_floor()


def test_kv_cache_size_follows_the_ring(gemma6, monkeypatch):
    """Budget and model agree on the rows: gemma3's sliding layers hold window - 1 + KV_REWIND."""
    from engine import budget

    g = gemma6
    ring = _ring(monkeypatch, g, 9)
    est = budget.estimate(g, n_ctx=64, kv_dtype="float32")
    assert est.workers[0].kv == sum(c.nbytes for c in ring.k_cache + ring.v_cache)
    hd = ring.config.head_dim
    assert est.workers[0].kv == (5 * 16 + 64) * ring.n_kv * 2 * hd * 4
    assert budget.estimate(g, n_ctx=64).workers[0].kv == est.workers[0].kv // 2  # a worker's float16 cache


@pytest.mark.parametrize("arch", ARCHS)
def test_a_float16_cache_holds_half_and_moves_logits_by_its_rounding(tiny, arch):
    """The workers' float16 KV cache: half the bytes of float32, and logits within what rounding
    keys and values to 11 significant bits allows, with the same greedy token at every step."""
    g = open_gguf(tiny(arch))
    toks = _tokens(20)
    f32 = load_model(g, n_ctx=32, policy=DENSE)
    f16 = load_model(g, n_ctx=32, policy=dataclasses.replace(DENSE, kv_dtype="float16"))
    assert {c.dtype for c in f16.k_cache + f16.v_cache} == {np.dtype(np.float16)}
    assert sum(c.nbytes for c in f16.k_cache + f16.v_cache) * 2 == sum(c.nbytes for c in f32.k_cache + f32.v_cache)
    a = np.stack([f32.forward([t]) for t in toks])  # (20, vocab)
    b = np.stack([f16.forward([t]) for t in toks])
    assert not np.array_equal(a, b)  # the cache does round
    np.testing.assert_allclose(b, a, rtol=0, atol=2e-3 * np.abs(a).max())
    assert (a.argmax(1) == b.argmax(1)).all()


def test_an_unknown_kv_cache_type_is_a_clear_error(tiny):
    with pytest.raises(ConfigError, match="unknown KV cache type 'int4'"):
        load_model(open_gguf(tiny("llama")), policy=dataclasses.replace(DENSE, kv_dtype="int4"))


def test_context_full_is_an_error(tiny):
    m = load_model(open_gguf(tiny("llama")), n_ctx=8, policy=DENSE)
    m.forward(_tokens(8))
    with pytest.raises(ValueError, match="context full"):
        m.forward([5])


def test_unsupported_architecture(tmp_path):
    w = gguf_pkg.GGUFWriter(str(tmp_path / "x.gguf"), "mamba")
    w.add_tensor("token_embd.weight", np.zeros((4, 4), np.float32))
    w.write_header_to_file(); w.write_kv_data_to_file(); w.write_tensors_to_file(); w.close()
    with pytest.raises(ConfigError, match="architecture 'mamba' not supported"):
        load_model(open_gguf(tmp_path / "x.gguf"))


def test_missing_tensor_names_it(tmp_path):
    path = write_tiny(tmp_path / "t.gguf", "llama")
    # Rewrite the file without one tensor, through our own reader + the gguf writer.
    r = gguf_pkg.GGUFReader(str(path))
    w = gguf_pkg.GGUFWriter(str(tmp_path / "m.gguf"), "llama")
    for k, f in r.fields.items():
        if k.startswith("llama.") and f.types[0] == gguf_pkg.GGUFValueType.UINT32:
            w.add_uint32(k, int(f.contents()))
    for t in r.tensors:
        if t.name != "blk.1.ffn_down.weight" and not t.name.startswith("token_"):
            w.add_tensor(t.name, np.array(t.data).reshape(tuple(reversed(t.shape.tolist()))))
    w.add_tensor("token_embd.weight", np.zeros((VOCAB, 64), np.float32))
    w.write_header_to_file(); w.write_kv_data_to_file(); w.write_tensors_to_file(); w.close()
    with pytest.raises(ConfigError, match="layer 1: missing tensors ffn_down"):
        load_model(open_gguf(tmp_path / "m.gguf"))


def test_rmsnorm_is_bit_identical_to_the_np_mean_formula():
    """rmsnorm calls np.mean's two steps directly (speed in Pyodide): the bits must not change."""
    from engine.model import rmsnorm

    rng = np.random.default_rng(0)
    for shape in [(640,), (3, 640), (2, 4, 256), (5, 1)]:
        x = (rng.standard_normal(shape) * 7).astype(np.float32)
        w = rng.standard_normal(shape[-1]).astype(np.float32)
        want = x * (1.0 / np.sqrt(np.mean(np.square(x), axis=-1, keepdims=True) + np.float32(1e-6))) * w
        got = rmsnorm(x, w, 1e-6)
        assert got.dtype == np.float32 and np.array_equal(got, want)


@pytest.mark.slow
@pytest.mark.parametrize("policy", ["default", "browser"])
def test_decode_token_allocates_only_small_activations(policy):
    """The hot path keeps its working memory: one Gemma 3 270M decode token allocates, beyond the
    (vocab,) logits it returns, only activation vectors (measured: ~24 KB at the peak). The kernels'
    chunk buffers (1 MB each) are allocated once and shared, and no matrix is dequantized per call:
    the smallest one would take 640 KB. tracemalloc sees numpy's data allocations."""
    import tracemalloc

    from engine.gguf import GGUFFile
    from mote.loader import load
    from tests.paths import gemma_path

    if policy == "default":  # the CLI's policy: mmapped file, float32 layer budget, head in two threads
        model = load(gemma_path(), n_ctx=64).model
    else:  # as the browser worker loads it: its own buffer (Q8_0 compacted), int8 blocks only
        model = load_model(GGUFFile(bytearray(gemma_path().read_bytes())), n_ctx=64,
                           policy=LoadPolicy(dense_layers_mb=0.0, own_buffer=True))
    model.forward([2, 100, 200])
    model.forward([300])  # first decode: per-shape scratch buffers are made here, once
    tracemalloc.start()
    try:
        for tok in (400, 401, 402):
            start = tracemalloc.get_traced_memory()[0]
            tracemalloc.reset_peak()
            logits = model.forward([tok])
            peak = tracemalloc.get_traced_memory()[1]
            assert logits.nbytes == 262144 * 4
            assert peak - start - logits.nbytes < 64 * 1024, f"{(peak - start - logits.nbytes) // 1024} KB per token"
            del logits
    finally:
        tracemalloc.stop()


def test_a_kv_cache_bigger_than_memory_is_a_clear_error(tmp_path, monkeypatch):
    """--ctx 100000000 on a model that declares a huge context: a ConfigError that says how much,
    not numpy's MemoryError traceback (or, with overcommit, a process the OS kills later)."""
    import engine.model as model_mod

    path = write_tiny(tmp_path / "llama.gguf", "llama")
    monkeypatch.setattr(model_mod, "memory_limit", lambda: 1024)  # a machine with 1 KiB
    with pytest.raises(ConfigError, match=r"a KV cache of \d+ tokens needs [\d.]+ GiB, more than the 0.0 GiB"):
        load_model(open_gguf(path), n_ctx=4096)


def test_softmax_in_place_equals_softmax_bit_for_bit():
    """Attention's softmax is written over its scores (at a long context they are MBs): the same
    operations as engine.model.softmax, so the same bits, masked (-inf) positions included."""
    from engine.model import _softmax_into, softmax

    rng = np.random.default_rng(3)
    scores = (rng.standard_normal((2, 3, 5, 40)) * 8).astype(np.float32)  # (KV, G, n, T)
    scores[..., np.triu(np.ones((5, 40), bool), 36)] = -np.inf              # causal mask of the last keys
    want = softmax(scores)
    got = _softmax_into(scores)
    assert got is scores and np.array_equal(got, want)
