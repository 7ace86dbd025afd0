"""engine/gguf.py against the gguf package (gguf-py, llama.cpp's reference reader and writer).

- write_gguf -> our reader and gguf.GGUFReader, every value type and several tensor types
- gguf.GGUFWriter -> our reader, compared field by field with gguf.GGUFReader
- v2 files (hand-made, and a v3 file with its version patched: the layouts are identical)
- zero copy: raw() shares memory with the buffer / the mmap
- the real Gemma 3 270M file: every key, value, tensor name, shape, type, offset and byte agrees
  with gguf.GGUFReader (slow: GGUFReader needs ~15 s), and the header parse time is reported
"""

import io
import math
import mmap
import os
import time
import tracemalloc
from pathlib import Path

import gguf
import numpy as np
import pytest

from tests import gguf_craft as c
from engine.gguf import GGUFError, GGUFFile, TensorInfo, ValueType, open_gguf, write_gguf
from engine.quants import BY_NAME, row_nbytes
from engine.strtable import StringTable

GEMMA = Path(os.environ.get("MOTE_GEMMA_PATH", "/tmp/gemma/gemma-3-270m-q4_k_m.gguf"))
needs_gemma = pytest.mark.skipif(not GEMMA.is_file(), reason=f"Gemma 3 270M GGUF not found at {GEMMA} "
                                 "(set MOTE_GEMMA_PATH)")
V = ValueType
REF_HEADER_FIELDS = ("GGUF.version", "GGUF.tensor_count", "GGUF.kv_count")


# --- The comparison against gguf.GGUFReader, used by every test below ---------------------------------
def ref_value(field):
    """A GGUFReader field's value in our representation (str, int, float, bool, list, ndarray)."""
    if field.types[0] == gguf.GGUFValueType.ARRAY:
        if not field.data:
            return [] if field.parts[3][0] == gguf.GGUFValueType.STRING else np.array([])
        etype = field.types[1]
        if etype == gguf.GGUFValueType.STRING:
            return [bytes(field.parts[i]).decode("utf-8", "surrogateescape") for i in field.data]
        return np.concatenate([field.parts[i] for i in field.data])
    return field.contents()


def assert_matches_reference(ours: GGUFFile, path: Path, check_bytes: bool = True):
    ref = gguf.GGUFReader(path)
    assert ours.version == int(ref.fields["GGUF.version"].contents())
    assert ours.alignment == ref.alignment
    assert ours.data_offset == ref.data_offset
    ref_keys = [k for k in ref.fields if k not in REF_HEADER_FIELDS]
    assert list(ours.metadata) == ref_keys  # same keys, same file order
    for key in ref_keys:
        field = ref.fields[key]
        vtype, etype = ours.value_types[key]
        assert int(vtype) == int(field.types[0]), key
        if vtype == V.ARRAY:
            # GGUFReader leaves the element type out of .types for empty arrays; parts[3] holds it
            ref_etype = field.types[1] if len(field.types) > 1 else field.parts[3][0]
            assert int(etype) == int(ref_etype), key
        else:
            assert etype is None
        mine, theirs = ours.metadata[key], ref_value(field)
        if isinstance(mine, np.ndarray):
            assert mine.dtype == theirs.dtype or mine.size == 0, key
            assert mine.tobytes() == theirs.tobytes(), key  # bit-exact, NaNs included
        elif isinstance(mine, float):
            assert mine == float(theirs) or (math.isnan(mine) and math.isnan(float(theirs))), key
        elif isinstance(mine, StringTable):  # string arrays: one bytes blob (engine/strtable.py)
            assert isinstance(theirs, list) and list(mine) == theirs, key
        else:
            assert mine == theirs and type(mine) is type(theirs), key
    assert list(ours.tensors) == [t.name for t in ref.tensors]
    for t in ref.tensors:
        info = ours.tensors[t.name]
        assert info.shape == tuple(int(d) for d in reversed(t.shape)), t.name  # ref: ggml order
        assert info.ggml_type == int(t.tensor_type), t.name
        assert info.offset == t.data_offset, t.name
        assert info.nbytes == t.n_bytes, t.name
        if check_bytes:
            assert np.array_equal(ours.raw(t.name), np.asarray(t.data).reshape(-1).view(np.uint8)), t.name


# --- write_gguf round trips --------------------------------------------------------------------
EVERY_TYPE = {
    "s.u8": (V.UINT8, 255),
    "s.i8": (V.INT8, -128),
    "s.u16": (V.UINT16, 65535),
    "s.i16": (V.INT16, -32768),
    "s.u32": (V.UINT32, 2**32 - 1),
    "s.i32": (V.INT32, -(2**31)),
    "s.f32": (V.FLOAT32, 1.5),
    "s.f32_max": (V.FLOAT32, float(np.finfo(np.float32).max)),
    "s.f32_inf": (V.FLOAT32, float("-inf")),
    "s.bool_t": (V.BOOL, True),
    "s.bool_f": (V.BOOL, False),
    "s.str": (V.STRING, "héllo ✓ 🦙"),
    "s.str_empty": (V.STRING, ""),
    "s.u64": (V.UINT64, 2**64 - 1),
    "s.i64": (V.INT64, -(2**63)),
    "s.f64": (V.FLOAT64, math.pi),
    "a.u8": (V.ARRAY, (V.UINT8, [0, 255])),
    "a.i8": (V.ARRAY, (V.INT8, [-128, 127])),
    "a.u16": (V.ARRAY, (V.UINT16, [0, 65535])),
    "a.i16": (V.ARRAY, (V.INT16, [-32768, 32767])),
    "a.u32": (V.ARRAY, (V.UINT32, np.array([0, 2**32 - 1], dtype=np.uint64))),
    "a.i32": (V.ARRAY, (V.INT32, [-(2**31), 2**31 - 1])),
    "a.f32": (V.ARRAY, (V.FLOAT32, np.linspace(-1, 1, 7, dtype=np.float32))),
    "a.bool": (V.ARRAY, (V.BOOL, [True, False, True])),
    "a.str": (V.ARRAY, (V.STRING, ["", "a", "é", "<0x0A>", "▁the"])),
    "a.u64": (V.ARRAY, (V.UINT64, [0, 2**64 - 1])),
    "a.i64": (V.ARRAY, (V.INT64, [-(2**63), 2**63 - 1])),
    "a.f64": (V.ARRAY, (V.FLOAT64, [math.e, -0.0, 1e300])),
    "a.empty": (V.ARRAY, (V.UINT32, [])),
}


def sample_tensors(rng):
    """(name, ggml_type, numpy shape, bytes) for a mix of float and block-quantized types."""
    out = [("f32.weight", BY_NAME["F32"].type_id, (3, 8), rng.standard_normal((3, 8)).astype(np.float32)),
           ("f16.bias", BY_NAME["F16"].type_id, (5,), rng.standard_normal(5).astype(np.float16))]
    for name, shape in (("Q8_0", (2, 64)), ("Q4_K", (3, 256)), ("Q6_K", (1, 2, 256)), ("Q5_0", (4, 32))):
        qt = BY_NAME[name]
        nbytes = row_nbytes(qt.type_id, shape[-1]) * int(np.prod(shape[:-1]))
        out.append((f"{name.lower()}.weight", qt.type_id, shape, rng.integers(0, 256, nbytes, dtype=np.uint8)))
    return out


def expected_value(vtype, value):
    if vtype != V.ARRAY:
        return value
    etype, values = value
    return list(values) if etype == V.STRING else values


def test_write_read_roundtrip_every_value_type(tmp_path):
    rng = np.random.default_rng(0)
    tensors = sample_tensors(rng)
    path = tmp_path / "all.gguf"
    with open(path, "wb") as f:
        n = write_gguf(f, EVERY_TYPE, tensors)
    assert n == path.stat().st_size

    ours = GGUFFile(path.read_bytes())
    assert ours.version == 3 and ours.alignment == 32
    assert list(ours.metadata) == list(EVERY_TYPE)
    for key, (vtype, value) in EVERY_TYPE.items():
        etype = value[0] if vtype == V.ARRAY else None
        assert ours.value_types[key] == (vtype, etype), key
        got = ours.metadata[key]
        if isinstance(got, np.ndarray):
            assert got.dtype.isnative and got.flags.writeable and got.flags.aligned
            np.testing.assert_array_equal(got, np.array(value[1], dtype=got.dtype), err_msg=key)
        elif etype == V.STRING:  # string arrays are held as one bytes blob (engine/strtable.py)
            assert isinstance(got, StringTable) and list(got) == expected_value(vtype, value), key
        else:
            assert got == expected_value(vtype, value) and type(got) is type(expected_value(vtype, value)), key
    for name, ggml_type, shape, data in tensors:
        info = ours.tensors[name]
        assert (info.shape, info.ggml_type, info.nbytes) == (shape, ggml_type, data.nbytes)
        assert info.offset % 32 == 0
        assert ours.raw(name).tobytes() == data.tobytes()

    assert_matches_reference(ours, path)


def test_gguf_writer_file_matches_reference(tmp_path):
    """A file written by gguf-py's GGUFWriter reads the same through us and through GGUFReader."""
    path = tmp_path / "w.gguf"
    path.write_bytes(c.writer_made_file())
    ours = open_gguf(path)
    assert ours.metadata["general.architecture"] == "llama"
    assert ours.metadata["tokenizer.ggml.tokens"] == ["<s>", "</s>", "a", "é"]
    np.testing.assert_array_equal(ours.raw("a.weight").view(np.float32), np.arange(32, dtype=np.float32))
    assert_matches_reference(ours, path)


def test_custom_alignment(tmp_path):
    rng = np.random.default_rng(1)
    path = tmp_path / "a64.gguf"
    with open(path, "wb") as f:
        write_gguf(f, {"general.architecture": (V.STRING, "llama")}, sample_tensors(rng), alignment=64)
    ours = open_gguf(path)
    assert ours.alignment == 64 and ours.metadata["general.alignment"] == 64
    assert ours.value_types["general.alignment"] == (V.UINT32, None)
    assert all(t.offset % 64 == 0 for t in ours.tensors.values())
    assert_matches_reference(ours, path)


def test_typed_metadata_rewrite_roundtrip():
    """read -> typed_metadata() + raw() -> write_gguf -> read gives the same file contents
    (what `mote quantize` does when it copies a model's metadata)."""
    src = GGUFFile(c.writer_made_file())
    out = io.BytesIO()
    write_gguf(out, src.typed_metadata(),
               [(t.name, t.ggml_type, t.shape, src.raw(t.name)) for t in src.tensors.values()])
    again = GGUFFile(out.getvalue())
    assert again.value_types == src.value_types
    assert list(again.metadata) == list(src.metadata)
    for key, value in src.metadata.items():
        if isinstance(value, np.ndarray):
            assert again.metadata[key].tobytes() == value.tobytes()
        else:
            assert again.metadata[key] == value
    for name, info in src.tensors.items():
        assert again.tensors[name].shape == info.shape and again.raw(name).tobytes() == src.raw(name).tobytes()
    assert out.getvalue() == c.writer_made_file()  # byte-identical to gguf-py's writer here


def test_write_then_every_buffer_type_reads_the_same(tmp_path):
    path = tmp_path / "b.gguf"
    path.write_bytes(c.writer_made_file())
    data = path.read_bytes()
    with open(path, "rb") as fh:
        mm = mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ)
    files = [GGUFFile(b) for b in (data, bytearray(data), memoryview(data), mm,
                                   np.frombuffer(data, np.uint8), np.frombuffer(data, np.uint8).reshape(-1, 8))]
    for f in files[1:]:
        assert f.tensors == files[0].tensors
        assert f.metadata.keys() == files[0].metadata.keys()
        assert f.metadata["tokenizer.ggml.tokens"] == files[0].metadata["tokenizer.ggml.tokens"]
        assert f.raw("a.weight").tobytes() == files[0].raw("a.weight").tobytes()


# --- GGUF v2 -----------------------------------------------------------------------------------
def test_v2_hand_made():
    v2, v3 = GGUFFile(c.small_valid_file(version=2)), GGUFFile(c.small_valid_file(version=3))
    assert (v2.version, v3.version) == (2, 3)
    assert v2.tensors == v3.tensors and v2.value_types == v3.value_types
    assert v2.metadata["tokenizer.ggml.tokens"] == ["<s>", "a", "b"]
    assert v2.raw("a.weight").view(np.float32).tolist() == list(range(8))


def test_v2_patched_writer_file_matches_reference(tmp_path):
    """v2 and v3 share one on-disk layout (v3 only added big-endian files), so a v3 file with its
    version field set to 2 is a valid v2 file; gguf.GGUFReader reads v2 too."""
    data = bytearray(c.writer_made_file())
    data[4:8] = (2).to_bytes(4, "little")
    path = tmp_path / "v2.gguf"
    path.write_bytes(data)
    ours = open_gguf(path)
    assert ours.version == 2
    assert_matches_reference(ours, path)


# --- Zero copy ---------------------------------------------------------------------------------
def test_raw_is_a_view_of_the_buffer():
    buf = bytearray(c.small_valid_file())
    f = GGUFFile(buf)
    view = f.raw("b.weight")
    assert np.shares_memory(view, np.frombuffer(buf, np.uint8))
    buf[f.tensors["b.weight"].offset] ^= 0xFF  # the change shows through the view
    assert view[0] == buf[f.tensors["b.weight"].offset]

    arr = np.frombuffer(c.small_valid_file(), np.uint8).copy()
    g = GGUFFile(arr)
    assert np.shares_memory(g.raw("a.weight"), arr)
    assert not GGUFFile(bytes(buf)).raw("a.weight").flags.writeable  # bytes stay immutable


def test_open_gguf_maps_read_only(tmp_path):
    path = tmp_path / "m.gguf"
    path.write_bytes(c.writer_made_file())
    f = open_gguf(path)
    view = f.raw("a.weight")
    assert not view.flags.writeable
    assert isinstance(view.base, memoryview) and isinstance(view.base.obj, mmap.mmap)


# --- open_gguf errors --------------------------------------------------------------------------
def test_open_gguf_missing_path(tmp_path):
    missing = tmp_path / "nope.gguf"
    with pytest.raises(FileNotFoundError, match="nope.gguf"):
        open_gguf(missing)


def test_open_gguf_directory(tmp_path):
    with pytest.raises(IsADirectoryError, match=str(tmp_path.name)):
        open_gguf(tmp_path)


def test_open_gguf_empty_and_bad_files_name_the_path(tmp_path):
    empty = tmp_path / "empty.gguf"
    empty.write_bytes(b"")
    with pytest.raises(GGUFError, match=r"empty\.gguf: file is empty"):
        open_gguf(empty)
    html = tmp_path / "page.gguf"
    html.write_bytes(b"<html>404 Not Found</html>")
    with pytest.raises(GGUFError, match=r"page\.gguf: magic is b'<htm'"):
        open_gguf(html)


def test_not_a_buffer():
    with pytest.raises(TypeError, match="bytes-like"):
        GGUFFile("GGUF")
    with pytest.raises(KeyError, match="no tensor named 'x'"):
        GGUFFile(c.small_valid_file()).raw("x")


# --- write_gguf input validation ---------------------------------------------------------------
F32 = BY_NAME["F32"].type_id
ONE = [("w", F32, (4,), np.zeros(4, np.float32))]


@pytest.mark.parametrize("metadata, tensors, kw, match", [
    ({"k": (V.UINT8, 256)}, [], {}, "'k': 256 does not fit uint8"),
    ({"k": (V.INT32, 1.5)}, [], {}, "'k': int32 value 1.5 is not an integer"),
    ({"k": (V.BOOL, 2)}, [], {}, "'k': bool value 2"),
    ({"k": (V.STRING, 5)}, [], {}, "'k': expected str or bytes"),
    ({"general.name": (V.STRING, "\udcff")}, [], {}, "cannot be encoded as UTF-8"),
    ({"k": (V.ARRAY, (V.ARRAY, [[1]]))}, [], {}, "nested arrays"),
    ({"k": (V.ARRAY, (V.UINT8, [1, 300]))}, [], {}, "outside the uint8 range"),
    ({"k": (V.ARRAY, (V.INT32, [1.5]))}, [], {}, "int32 array given non-integer values"),
    ({"k": (V.ARRAY, (V.BOOL, [0, 2]))}, [], {}, "outside the bool range"),
    ({"": (V.UINT8, 1)}, [], {}, "non-empty"),
    ({}, [("w", F32, (4,), np.zeros(3, np.float32))], {}, "12 bytes of data, expected 16"),
    ({}, [("w", BY_NAME["Q4_0"].type_id, (33,), bytes(18))], {}, "not a multiple|multiple of"),
    ({}, [("w", 99, (4,), bytes(16))], {}, "unknown ggml type 99"),
    ({}, [("w", F32, (0, 4), b"")], {}, "positive dims"),
    ({}, [("w" * 64, F32, (4,), bytes(16))], {}, "name must be"),
    ({}, ONE + ONE, {}, "'w' appears twice"),
    ({}, ONE, {"alignment": 24}, "power of two"),
    ({"general.alignment": (V.UINT32, 64)}, ONE, {}, "disagrees with alignment=32"),
])
def test_write_rejects_bad_input(metadata, tensors, kw, match):
    with pytest.raises(ValueError, match=match):
        write_gguf(io.BytesIO(), metadata, tensors, **kw)


def test_write_accepts_pairs_and_raw_token_bytes():
    """metadata may be a list of (key, (type, value)) pairs; tokenizer string arrays may carry raw
    bytes (invalid UTF-8) which read back with surrogateescape."""
    out = io.BytesIO()
    write_gguf(out, [("tokenizer.ggml.tokens", (V.ARRAY, (V.STRING, [b"\xe4\xbd", "ok"]))),
                     ("general.name", (V.STRING, "x"))], [])
    f = GGUFFile(out.getvalue())
    assert list(f.metadata) == ["tokenizer.ggml.tokens", "general.name"]
    assert [t.encode("utf-8", "surrogateescape") for t in f.metadata["tokenizer.ggml.tokens"]] == [b"\xe4\xbd", b"ok"]
    # and a token list read that way writes back byte-identically
    out2 = io.BytesIO()
    write_gguf(out2, f.typed_metadata(), [])
    assert out2.getvalue() == out.getvalue()


def test_tensorinfo_n_elements():
    assert TensorInfo("w", (3, 4, 5), 0, 0, 240).n_elements == 60


# --- String arrays: the vectorised walk (engine/gguf.py _short_string_run) ------------------------
def _vocab(n: int, seed: int, odd_every: int = 0) -> list[bytes]:
    """n token-like byte strings of 1..40 bytes; with odd_every, every so many of them one the
    vectorised walk cannot prove: empty, over 255 bytes, or holding zero bytes that look like a
    string's length field (a fake length 5 and seven zero bytes, then 5 bytes)."""
    rng = np.random.default_rng(seed)
    odd = [b"", bytes(300), b"x" * 256, b"\x05" + bytes(7) + b"hello", b"ab" + bytes(9) + b"cd", b"\x00"]
    out = []
    for i in range(n):
        if odd_every and i % odd_every == odd_every - 1:
            out.append(odd[(i // odd_every) % len(odd)])
        else:
            out.append(bytes(rng.integers(0x21, 0x7F, int(rng.integers(1, 41)), dtype=np.uint8)))
    return out


def _parsed_tokens(tokens: list[bytes], count: int | None = None) -> list[str]:
    f = GGUFFile(c.gguf_bytes([c.kv_array("tokenizer.ggml.tokens", c.STRING, [c.string(t) for t in tokens], count=count)],
                              pad=False))
    return list(f.metadata["tokenizer.ggml.tokens"])


@pytest.mark.parametrize("odd_every", [0, 1, 2, 997, 70_000])
def test_string_arrays_over_several_windows_parse_exactly(odd_every):
    """~3 MiB of strings (several 1 MiB windows of the vectorised walk), plain or with strings it must
    hand to the one-at-a-time walk every so often (down to every one of them)."""
    tokens = _vocab(140_000, seed=odd_every, odd_every=odd_every)
    assert _parsed_tokens(tokens) == [t.decode("utf-8") for t in tokens]


def test_a_vocabulary_of_short_strings_is_not_walked_one_at_a_time(monkeypatch):
    import engine.gguf as g

    def loop(*a):
        raise AssertionError("walked one string at a time")
    monkeypatch.setattr(g, "_walk_strings", loop)
    tokens = _vocab(100_000, seed=1)
    assert _parsed_tokens(tokens) == [t.decode("utf-8") for t in tokens]


@pytest.mark.parametrize("at", [0, 5, 70_000, 99_999])
def test_a_lying_length_deep_in_a_string_array_is_named(at):
    """A length that runs past the end of the file, at string #at of 100,000: the error names it,
    however the walk got there."""
    tokens = _vocab(100_000, seed=2)
    items = [c.string(t) for t in tokens]
    items[at] = c.string(tokens[at], length=10**9)
    data = c.gguf_bytes([c.kv_array("tokenizer.ggml.tokens", c.STRING, items)])
    with pytest.raises(GGUFError, match=f"string #{at} has length 1000000000"):
        GGUFFile(data)


def test_a_string_array_counting_more_strings_than_it_holds_is_named():
    tokens = _vocab(50_000, seed=3)
    with pytest.raises(GGUFError, match="string #50000 of 50001 runs past the end of the file"):
        _parsed_tokens(tokens, count=50_001)


# --- The real model -------------------------------------------------------------------------------
@pytest.mark.slow
@needs_gemma
def test_gemma_header_matches_gguf_reader():
    assert_matches_reference(open_gguf(GEMMA), GEMMA)


@pytest.mark.slow
@needs_gemma
def test_gemma_parse_time_and_memory(capsys):
    """No copy of the 253 MB of weights while parsing (the parse time is printed, not asserted)."""
    times = []
    for _ in range(3):
        t0 = time.perf_counter()
        f = open_gguf(GEMMA)
        times.append(time.perf_counter() - t0)
    tracemalloc.start()
    f = open_gguf(GEMMA)
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    with capsys.disabled():
        print(f"\nGemma 3 270M header: {len(f.metadata)} keys, {len(f.tensors)} tensors, "
              f"{len(f.metadata['tokenizer.ggml.tokens'])} tokens; parse {min(times) * 1e3:.0f} ms "
              f"(best of 3), traced peak {peak / 2**20:.1f} MiB for a {f.nbytes / 2**20:.0f} MiB file")
    assert peak < 64 * 2**20  # metadata only (262144 token strings); weights stay in the mmap
    token_embd = f.tensors["token_embd.weight"]
    assert token_embd.shape == (262144, 640) and f.raw("token_embd.weight").nbytes == token_embd.nbytes
