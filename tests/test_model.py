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
def test_kv_cache_decoding_equals_full_recompute(tiny, arch):
    g = open_gguf(tiny(arch))
    toks = _tokens(20)  # crosses gemma3's sliding window of 8
    full = load_model(g, policy=DENSE).forward(toks, all_logits=True)  # (20, vocab)
    m = load_model(g, policy=DENSE)
    step = [m.forward([t]) for t in toks]  # one at a time through the cache
    np.testing.assert_allclose(np.stack(step), full, rtol=1e-4, atol=1e-4)
    # A prefill of part of the prompt, then single steps, must agree too.
    m.reset()
    first = m.forward(toks[:7], all_logits=True)
    rest = [m.forward([t]) for t in toks[7:]]
    np.testing.assert_allclose(np.concatenate([first, np.stack(rest)]), full, rtol=1e-4, atol=1e-4)
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
