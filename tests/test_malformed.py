"""Malformed GGUF files: every applicable case of shared/research/security.md Table A (A1-A4, plus
the tokenizer type-confusion part of M6), each a hand-made byte string.

Every REJECT case must raise GGUFError (never IndexError, struct.error, UnicodeDecodeError,
MemoryError, OverflowError, RecursionError), with a message naming the field, in well under a
second, and without allocating more than ~1 MiB + 2x the file size (tracemalloc traces numpy's
allocations too, so a 2^63-element preallocation or a lazily reserved huge buffer would show).
A hypothesis fuzz test then mutates small valid files and checks that only GGUFError escapes and
that any file that does parse only points inside itself.

Table A rows not covered here belong to later stages: K14 (NaN/Inf hyperparameters), M1-M5,
M7-M11 (model/tokenizer layer), D5/D6 (weight contents, sha256 of downloads), A6/A7 (converter).
"""

import struct
import signal
import time
import tracemalloc

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests import gguf_craft as c
from engine.gguf import GGUFError, GGUFFile

U64_MAX = 2**64 - 1


# --- helpers building the cases -----------------------------------------------------------------
def header(n_tensors=0, n_kv=0, version=3, magic=b"GGUF") -> bytes:
    return magic + c.u32(version) + c.u64(n_tensors) + c.u64(n_kv)


def with_kv(*kvs, n_kv=None, tail=b"") -> bytes:
    """A file holding only these metadata pairs (no tensors), plus optional trailing bytes."""
    return c.gguf_bytes(list(kvs), n_kv=n_kv) + tail


def with_tensors(infos, data_len, kvs=(), **kw) -> bytes:
    """A file with these tensor infos and `data_len` zero bytes of data."""
    return c.gguf_bytes(list(kvs), list(infos), bytes(data_len), **kw)


def f32_tensor(name="w", ne=(8,), offset=0, ggml_type=c.F32, n_dims=None) -> bytes:
    return c.tensor_info(name, list(ne), ggml_type, offset, n_dims)


ARCH = c.kv_str("general.architecture", "llama")
PAD = bytes(64)  # enough trailing bytes that count bounds do not fire before the field under test


def inconsistent_alignment() -> bytes:
    """T15: metadata says alignment 64, but the file was padded to 32 (data 32 bytes early)."""
    for filler in range(64):
        kvs = [c.kv_u32("general.alignment", 64), c.kv_str("x", "a" * filler)]
        infos = [f32_tensor("w", (16,), 0)]  # 64 bytes
        head_len = len(c.gguf_bytes(kvs, infos, pad=False))
        if 0 < head_len % 64 <= 32:  # pad32 lands 32 bytes before pad64
            return c.gguf_bytes(kvs, infos, bytes(64), alignment=32)
    raise AssertionError("no filler length found")


# (id, file bytes, substring the message must contain)
REJECT = [
    # A1: header
    ("H1-empty", b"", "magic"),
    ("H1-3-bytes", b"GGU", "magic"),
    ("H1-no-version", b"GGUF\x03\x00", "version"),
    ("H1-no-n_tensors", b"GGUF" + c.u32(3) + c.u32(0), "n_tensors"),
    ("H1-23-bytes", header()[:23], "n_kv"),
    ("H2-bad-magic", header(magic=b"FUGG"), "magic"),
    ("H2-magic-at-offset-1", b"\x00" + header(), "magic"),
    ("H2-lowercase-magic", header(magic=b"gguf"), "magic"),
    ("H3-version-0", header(version=0), "GGUF version 0 not supported (expected 2 or 3)"),
    ("H3-version-1", header(version=1), "GGUF version 1 not supported (expected 2 or 3)"),
    ("H3-version-4", header(version=4), "GGUF version 4 not supported"),
    ("H3-version-u32max", header(version=2**32 - 1), "version"),
    ("H4-big-endian-v3", header(version=0x03000000), "big-endian"),
    ("H4-big-endian-v2", header(version=0x02000000), "big-endian"),
    ("H5-n_tensors-u64max", header(n_tensors=U64_MAX) + PAD, "n_tensors"),
    ("H5-n_tensors-2^63", header(n_tensors=2**63) + PAD, "n_tensors"),
    ("H5-n_tensors-one-too-many", header(n_tensors=64 // 33 + 1) + PAD, "n_tensors"),
    ("H6-n_kv-u64max", header(n_kv=U64_MAX) + PAD, "n_kv"),
    ("H6-n_kv-2^63", header(n_kv=2**63) + PAD, "n_kv"),
    ("H6-n_kv-u64max/64", header(n_kv=U64_MAX // 64) + PAD, "n_kv"),
    ("H8-ends-after-header", header(n_kv=1), "n_kv"),
    ("H8-kv-cut-short", with_kv(c.kv_str("general.name", "abc"))[:24 + 8 + 12 + 4 + 8 + 1], "general.name"),
    # A2: metadata pairs
    ("K1-key-length-u64max", header(n_kv=1) + c.u64(U64_MAX) + PAD, "pair #0: key"),
    ("K1-key-length-2^63", header(n_kv=1) + c.u64(2**63) + PAD, "pair #0: key"),
    ("K1-key-length-remaining+1", header(n_kv=1) + c.u64(65) + PAD, "pair #0: key"),
    ("K2-empty-key", with_kv(c.kv_u32("", 1), tail=PAD), "empty key"),
    ("K3-key-invalid-utf8", with_kv(c.kv(b"gen\xff", c.UINT32, c.u32(1))), "not valid UTF-8"),
    ("K3-key-overlong-utf8", with_kv(c.kv(b"\xc0\xaf", c.UINT32, c.u32(1))), "not valid UTF-8"),
    ("K3-key-NUL", with_kv(c.kv(b"general.name\x00x", c.UINT32, c.u32(1))), "NUL"),
    ("K3-key-65536-bytes", with_kv(c.kv_u32("k" * 65536, 1)), "limit is 65535"),
    ("K4-duplicate-key", with_kv(c.kv_u32("a.b", 1), c.kv_u32("a.b", 2)), "'a.b' appears twice"),
    ("K5-value-type-13", with_kv(c.kv("a.b", 13, c.u32(0))), "unknown value type 13"),
    ("K5-value-type-u32max", with_kv(c.kv("a.b", 2**32 - 1, c.u32(0))), "unknown value type"),
    ("K6-string-2^63", with_kv(c.kv("general.name", c.STRING, c.string("abc", 2**63))), "'general.name': string"),
    ("K6-string-u64max", with_kv(c.kv("general.name", c.STRING, c.string("abc", U64_MAX))), "'general.name': string"),
    ("K6-string-remaining+1", header(n_kv=1) + c.string("k") + c.u32(c.STRING) + c.u64(5) + b"abcd",
     "'k': string"),
    ("K6-string-invalid-utf8", with_kv(c.kv_str("general.name", b"caf\xe9")), "'general.name': string: invalid UTF-8"),
    ("K6-string-lone-surrogate", with_kv(c.kv_str("general.name", b"\xed\xa0\x80")), "invalid UTF-8"),
    ("K7-array-2^63", with_kv(c.kv_array("a.b", c.UINT32, [c.u32(1)], count=2**63)), "'a.b': array of"),
    ("K7-array-u64max/64", with_kv(c.kv_array("a.b", c.UINT8, [c.u8(1)], count=U64_MAX // 64)), "'a.b': array of"),
    ("K7-array-u64max-float64", with_kv(c.kv_array("a.b", c.FLOAT64, [], count=U64_MAX)), "'a.b': array of"),
    ("K7-array-remaining+1", header(n_kv=1) + c.kv_array("a.b", c.UINT32, [c.u32(1)] * 4, count=5), "'a.b': array of"),
    ("K7-array-no-count", header(n_kv=1) + c.string("a.b") + c.u32(c.ARRAY) + c.u32(c.UINT8), "'a.b': array length"),
    ("K7-array-element-type-13", with_kv(c.kv_array("a.b", 13, [c.u32(1)])), "unknown array element type 13"),
    ("K8-string-array-2^63", with_kv(c.kv_array("a.b", c.STRING, [c.string("x")], count=2**63)), "strings cannot fit"),
    ("K8-string-array-past-eof",
     header(n_kv=1) + c.kv_array("tokenizer.ggml.tokens", c.STRING, [c.string("ab"), c.string("cd"), c.string("efgh", 99)]),
     "'tokenizer.ggml.tokens': string #2"),
    ("K8-string-array-cut-in-length",
     header(n_kv=1) + c.kv_array("a.b", c.STRING, [c.string("abcdefghijklmnop")], count=3), "'a.b': string #1"),
    ("K8-string-array-invalid-utf8", with_kv(c.kv_array("general.tags", c.STRING, [c.string("ok"), c.string(b"\xff")])),
     "'general.tags': string #1 is not valid UTF-8"),
    # one character split over two strings: the bytes together are valid UTF-8, each string is not
    ("K8-string-array-split-character", with_kv(c.kv_array("general.tags", c.STRING, [c.string(b"a\xc3"), c.string(b"\xa9b")])),
     "'general.tags': string #0 is not valid UTF-8"),
    ("K8-string-array-starts-mid-character", with_kv(c.kv_array("general.tags", c.STRING, [c.string(""), c.string(b"\xa9")])),
     "'general.tags': string #1 is not valid UTF-8"),
    ("K9-nested-array", with_kv(c.kv_array("a.b", c.ARRAY, [c.u32(c.UINT8) + c.u64(1) + c.u8(1)])), "nested arrays"),
    ("K9-nested-depth-5000", header(n_kv=1) + c.string("a.b") + c.u32(c.ARRAY) + (c.u32(c.ARRAY) + c.u64(1)) * 5000,
     "nested arrays"),
    ("K10-bool-2", with_kv(c.kv("tokenizer.ggml.add_bos_token", c.BOOL, c.u8(2))), "bool value is 2"),
    ("K10-bool-255", with_kv(c.kv("a.b", c.BOOL, c.u8(255))), "'a.b': bool value is 255"),
    ("K10-bool-array-7", with_kv(c.kv_array("a.b", c.BOOL, [c.u8(1), c.u8(7)])), "'a.b': bool array"),
    ("K11-alignment-0", with_kv(c.kv_u32("general.alignment", 0)), "general.alignment = 0"),
    ("K11-alignment-13", with_kv(c.kv_u32("general.alignment", 13)), "general.alignment = 13"),
    ("K11-alignment-48", with_kv(c.kv_u32("general.alignment", 48)), "power of two"),
    ("K11-alignment-2^31-with-tensor",
     with_tensors([f32_tensor()], 32, kvs=[c.kv_u32("general.alignment", 2**31)]), "data section"),
    ("K12-alignment-int32", with_kv(c.kv("general.alignment", c.INT32, c.i32(32))),
     "'general.alignment' has type int32, expected uint32"),
    ("K12-alignment-uint64", with_kv(c.kv("general.alignment", c.UINT64, c.u64(32))), "'general.alignment' has type uint64"),
    ("K12-alignment-string", with_kv(c.kv_str("general.alignment", "32")), "'general.alignment' has type string"),
    ("K12-alignment-array", with_kv(c.kv_array("general.alignment", c.UINT32, [c.u32(32)])),
     "'general.alignment' has type array of uint32"),
    ("K13-block_count-string", with_kv(ARCH, c.kv_str("llama.block_count", "12")), "'llama.block_count' has type string"),
    ("K13-block_count-array", with_kv(ARCH, c.kv_array("llama.block_count", c.UINT32, [c.u32(1)])),
     "'llama.block_count' has type array of uint32"),
    ("K13-context_length-float", with_kv(ARCH, c.kv("llama.context_length", c.FLOAT32, c.f32(4096))),
     "'llama.context_length' has type float32"),
    ("K13-head_count-string-array", with_kv(ARCH, c.kv_array("llama.attention.head_count", c.STRING, [c.string("4")])),
     "'llama.attention.head_count'"),
    ("K13-rope_freq_base-uint32", with_kv(ARCH, c.kv_u32("llama.rope.freq_base", 10000)), "'llama.rope.freq_base'"),
    ("K13-architecture-uint32", with_kv(c.kv_u32("general.architecture", 1)), "'general.architecture' has type uint32"),
    ("M6-scores-uint8-array", with_kv(c.kv_array("tokenizer.ggml.scores", c.UINT8, [c.u8(1)] * 3)),
     "'tokenizer.ggml.scores' has type array of uint8, expected an array of float32"),
    ("M6-token_type-float32", with_kv(c.kv_array("tokenizer.ggml.token_type", c.FLOAT32, [c.f32(1)])),
     "'tokenizer.ggml.token_type' has type array of float32"),
    ("M6-tokens-int32", with_kv(c.kv_array("tokenizer.ggml.tokens", c.INT32, [c.i32(1)])), "'tokenizer.ggml.tokens'"),
    ("M6-tokens-scalar", with_kv(c.kv_str("tokenizer.ggml.tokens", "a")), "'tokenizer.ggml.tokens' has type string"),
    ("M6-merges-uint8", with_kv(c.kv_array("tokenizer.ggml.merges", c.UINT8, [c.u8(1)])), "'tokenizer.ggml.merges'"),
    ("M7-bos-id-string", with_kv(c.kv_str("tokenizer.ggml.bos_token_id", "1")), "'tokenizer.ggml.bos_token_id'"),
    # A3: tensor infos
    ("T1-name-64-bytes", with_tensors([f32_tensor("n" * 64)], 32), "name is 64 bytes"),
    ("T1-name-empty", with_tensors([f32_tensor("")], 32), "tensor info #0: name is 0 bytes"),
    ("T1-name-invalid-utf8", with_tensors([f32_tensor(b"w\xfe")], 32), "tensor info #0: name"),
    ("T1-name-length-2^63", header(n_tensors=1) + c.u64(2**63) + PAD, "tensor info #0: name"),
    ("T2-duplicate-name", with_tensors([f32_tensor("w", offset=0), f32_tensor("w", offset=32)], 64),
     "'w' appears twice"),
    ("T3-n_dims-0", with_tensors([f32_tensor(ne=(), n_dims=0)], 32), "n_dims = 0"),
    ("T3-n_dims-5", with_tensors([f32_tensor(ne=(8, 1, 1, 1, 1))], 32), "n_dims = 5"),
    ("T3-n_dims-1000000", with_tensors([f32_tensor(ne=(8,), n_dims=10**6)], 32), "n_dims = 1000000"),
    ("T3-n_dims-u32max", with_tensors([f32_tensor(ne=(8,), n_dims=2**32 - 1)], 32), "n_dims = 4294967295"),
    ("T3-dims-cut-short", header(n_tensors=1) + c.string("w") + c.u32(4) + c.u64(8) * 3 + bytes(11), "'w': ne[3]"),
    ("T4-dim-2^63", with_tensors([f32_tensor(ne=(8, 2**63))], 32), "'w': ne[1] = 9223372036854775808"),
    ("T4-dim-u64max", with_tensors([f32_tensor(ne=(U64_MAX,))], 32), "'w': ne[0]"),
    ("T5-dim-0", with_tensors([f32_tensor(ne=(0, 4))], 32), "'w': ne[0] = 0"),
    ("T6-elements-llama25378", with_tensors([f32_tensor(ne=(4194305, 4194305, 211106198978564))], 32), "elements"),
    ("T6-elements-2^32x2^32", with_tensors([f32_tensor(ne=(2**32, 2**32))], 32), "elements"),
    ("T6-elements-4xINT32_MAX-squared", with_tensors([f32_tensor(ne=(4 * (2**31 - 1),) * 2)], 32), "elements"),
    ("T6-dim-1152x(2^42+1)", with_tensors([f32_tensor(ne=(1152, 2**42 + 1))], 32), "outside the file"),
    ("T7-nbytes-only-overflow", with_tensors([f32_tensor(ne=(2**61, 2))], 32), "outside the file"),
    ("T8-type-40", with_tensors([f32_tensor(ggml_type=40)], 32), "unsupported ggml type 40"),
    ("T8-type-4-removed", with_tensors([f32_tensor(ggml_type=4)], 32), "unsupported ggml type 4"),
    ("T8-type-5-removed", with_tensors([f32_tensor(ggml_type=5)], 32), "unsupported ggml type 5"),
    ("T8-type-31-removed", with_tensors([f32_tensor(ggml_type=31)], 32), "unsupported ggml type 31"),
    ("T8-type-36-removed", with_tensors([f32_tensor(ggml_type=36)], 32), "unsupported ggml type 36"),
    ("T8-type-negative", with_tensors([f32_tensor(ggml_type=2**32 - 1)], 32), "unsupported ggml type 4294967295"),
    ("T8-type-IQ2_XXS-not-implemented", with_tensors([f32_tensor(ne=(256,), ggml_type=16)], 66), "unsupported ggml type 16"),
    ("T8-type-I8-not-implemented", with_tensors([f32_tensor(ggml_type=24)], 32), "unsupported ggml type 24"),
    ("T9-Q4_0-ne0-33", with_tensors([f32_tensor(ne=(33,), ggml_type=c.Q4_0)], 64), "ne[0] = 33 is not a multiple"),
    ("T9-Q4_K-ne0-32", with_tensors([f32_tensor(ne=(32, 8), ggml_type=c.Q4_K)], 256), "Q4_K block size 256"),
    ("T10-offset-u64max", with_tensors([f32_tensor(offset=U64_MAX)], 32), "'w': offset"),
    ("T10-offset-aligned-huge", with_tensors([f32_tensor(offset=2**64 - 32)], 32), "'w': bytes"),
    ("T11-offset-unaligned", with_tensors([f32_tensor(offset=16)], 64), "offset 16 is not a multiple of the alignment 32"),
    ("T11-offset-unaligned-custom", with_tensors([f32_tensor(offset=32)], 128, kvs=[c.kv_u32("general.alignment", 64)],
                                                alignment=64), "alignment 64"),
    ("T12-past-eof", with_tensors([f32_tensor(offset=32)], 32), "outside the file"),
    ("T12-second-past-eof", with_tensors([f32_tensor("a"), f32_tensor("b", offset=64)], 64), "'b': bytes"),
    ("T13-same-offset", with_tensors([f32_tensor("a"), f32_tensor("b")], 32), "'b' at offset"),
    ("T13-partial-overlap", with_tensors([f32_tensor("a", ne=(16,)), f32_tensor("b", offset=32)], 64), "overlaps tensor 'a'"),
    ("T13-overlap-out-of-order", with_tensors([f32_tensor("a", offset=32, ne=(16,)), f32_tensor("b", offset=64)], 128),
     "overlaps"),
    ("T15-inconsistent-alignment", inconsistent_alignment(), "tensor 'w'"),
    ("T16-million-tensors", header(n_tensors=10**6) + c.tensor_info("w", [8], c.F32, 0) + bytes(64), "n_tensors"),
    # A4: data section
    ("D1-data-one-byte-short", with_tensors([f32_tensor()], 31), "outside the file"),
    ("D1-data-missing", with_tensors([f32_tensor()], 0), "outside the file"),
    ("D2-two-huge-tensors", with_tensors([f32_tensor("a", ne=(0x7FFFFFFFFFFFFFC0,), ggml_type=c.F16),
                                          f32_tensor("b", ne=(0x7FFFFFFFFFFFFFC0,), ggml_type=c.F16)], 32),
     "'a': bytes"),
    ("D3-padding-past-eof", with_tensors([f32_tensor("w")], 0, pad=False), "data section"),
]


def parse_measured(buf: bytes):
    """Parse `buf`, returning (exception or None, seconds, peak traced bytes).

    A hang is caught by a generous watchdog (SIGALRM, 20 s) rather than by asserting on time.
    """
    signal.signal(signal.SIGALRM, _hung)
    signal.alarm(20)
    tracemalloc.start()
    t0 = time.perf_counter()
    try:
        GGUFFile(buf)
        err = None
    except Exception as e:  # noqa: BLE001 - the test inspects the type
        err = e
    dt = time.perf_counter() - t0
    signal.alarm(0)
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    return err, dt, peak


def _hung(signum, frame):
    raise TimeoutError("GGUF parse still running after 20 s: a hang")


@pytest.mark.parametrize("buf, expected", [pytest.param(b, e, id=i) for i, b, e in REJECT])
def test_rejected(buf, expected):
    err, dt, peak = parse_measured(buf)
    assert type(err) is GGUFError, f"expected GGUFError, got {type(err).__name__}: {err}"
    assert expected in str(err), str(err)
    assert peak < (1 << 20) + 2 * len(buf), f"peak allocation {peak} bytes for a {len(buf)}-byte file"


@pytest.mark.parametrize("buf, expected", [pytest.param(b, e, id=i) for i, b, e in REJECT if "UTF-8" not in e])
def test_rejected_when_string_arrays_are_skipped(buf, expected):
    """A shard that does not tokenize walks the string arrays without keeping them (engine/shard.py):
    the same bounds checks, the same errors (UTF-8 is checked where strings are decoded, on shard 0)."""
    with pytest.raises(GGUFError) as err:
        GGUFFile(buf, keep_strings=False)
    assert expected in str(err.value), str(err.value)


def test_case_ids_unique():
    ids = [i for i, _, _ in REJECT]
    assert len(ids) == len(set(ids))


def test_rejected_through_any_buffer_type():
    """Rejection does not depend on the buffer type (bytearray, memoryview, numpy)."""
    buf = header(n_kv=2**63) + PAD
    for b in (bytearray(buf), memoryview(buf), np.frombuffer(buf, np.uint8)):
        with pytest.raises(GGUFError, match="n_kv"):
            GGUFFile(b)


# --- ACCEPT cases: the policy for borderline files ------------------------------------------------
def test_H7_empty_header_accepted():
    f = GGUFFile(header())
    assert (f.version, f.metadata, f.tensors, f.alignment) == (3, {}, {}, 32)


def test_D4_trailing_bytes_tolerated():
    base = c.small_valid_file()
    f = GGUFFile(base + b"trailing junk, as llama.cpp tolerates")
    assert list(f.tensors) == ["a.weight", "b.weight"]
    assert f.raw("b.weight").view(np.float32).tolist() == list(range(8, 16))


def test_K11_small_power_of_two_alignments_accepted():
    for align in (1, 2, 8, 64, 4096):
        buf = with_tensors([f32_tensor("w", offset=0), f32_tensor("v", offset=max(32, align))], 2 * max(32, align),
                           kvs=[c.kv_u32("general.alignment", align)], alignment=align)
        f = GGUFFile(buf)
        assert f.alignment == align and f.data_offset % align == 0


def test_tokens_with_invalid_utf8_are_kept_as_raw_bytes():
    """Policy: tokenizer.ggml.* string arrays tolerate invalid UTF-8 (llama.cpp keeps raw bytes);
    each token decodes with surrogateescape and encodes back to exactly the stored bytes."""
    raw_tokens = [b"ok", b"\xe4\xbd", b"\xa0", b"caf\xc3\xa9"]  # a 3-byte char split over two tokens
    f = GGUFFile(with_kv(c.kv_array("tokenizer.ggml.tokens", c.STRING, [c.string(t) for t in raw_tokens])))
    tokens = f.metadata["tokenizer.ggml.tokens"]
    assert tokens[0] == "ok" and tokens[3] == "café"
    assert [t.encode("utf-8", "surrogateescape") for t in tokens] == raw_tokens


def test_zero_length_arrays_accepted():
    f = GGUFFile(with_kv(c.kv_array("a.u", c.UINT32, []), c.kv_array("a.s", c.STRING, [])))
    assert f.metadata["a.s"] == [] and f.metadata["a.u"].shape == (0,)


def test_tensors_out_of_order_with_gaps_accepted():
    """Policy: aligned, inside the file and non-overlapping is enough (llama.cpp is stricter)."""
    f = GGUFFile(with_tensors([f32_tensor("a", offset=96), f32_tensor("b", offset=0)], 128))
    assert [f.tensors[n].offset - f.data_offset for n in ("a", "b")] == [96, 0]


# --- Truncation at every position --------------------------------------------------------------------
@pytest.mark.parametrize("make", [c.small_valid_file, c.writer_made_file], ids=["hand-made", "GGUFWriter"])
def test_truncated_at_every_position(make):
    buf = make()
    full = GGUFFile(buf)
    end = max(t.offset + t.nbytes for t in full.tensors.values())
    for n in range(end):
        with pytest.raises(GGUFError):
            GGUFFile(buf[:n])


# --- Fuzzing: only GGUFError may escape; a file that parses only points inside itself ---------------
EDGE_INTS = [0, 1, 2, 3, 4, 5, 8, 9, 12, 13, 31, 32, 33, 63, 64, 255, 256, 2**31 - 1, 2**31, 2**32 - 1,
             2**32, 2**63 - 1, 2**63, 2**64 - 1]


def check_parse(buf) -> None:
    try:
        f = GGUFFile(buf)
    except GGUFError:
        return
    for t in f.tensors.values():
        assert t.offset % f.alignment == 0
        assert f.data_offset <= t.offset and t.offset + t.nbytes <= len(buf)
        assert f.raw(t.name).nbytes == t.nbytes


@st.composite
def mutated_files(draw):
    buf = bytearray(draw(st.sampled_from([c.small_valid_file(), c.small_valid_file(2), c.writer_made_file()])))
    head_end = GGUFFile(bytes(buf)).data_offset  # most fields live before the data section
    for _ in range(draw(st.integers(1, 4))):
        if not buf:
            break
        op = draw(st.sampled_from(["flip", "int32", "int64", "insert", "delete", "truncate"]))
        pos = draw(st.integers(0, max(0, min(len(buf), head_end) - 1)))
        if op == "flip":
            buf[pos] ^= draw(st.integers(1, 255))
        elif op in ("int32", "int64"):
            fmt, width = ("<I", 4) if op == "int32" else ("<Q", 8)
            v = draw(st.sampled_from(EDGE_INTS + [len(buf), len(buf) + 1, len(buf) - pos])) % (1 << 8 * width)
            buf[pos:pos + width] = struct.pack(fmt, v)
        elif op == "insert":
            buf[pos:pos] = draw(st.binary(min_size=1, max_size=16))
        elif op == "delete":
            del buf[pos:pos + draw(st.integers(1, 16))]
        else:
            del buf[pos:]
    return bytes(buf)


FUZZ = settings(max_examples=600, derandomize=True, deadline=None, suppress_health_check=list(HealthCheck))


@FUZZ
@given(mutated_files())
def test_fuzz_mutations(buf):
    check_parse(buf)


@FUZZ
@given(st.binary(max_size=600))
def test_fuzz_random_after_valid_magic(tail):
    check_parse(b"GGUF" + c.u32(3) + tail)
    check_parse(b"GGUF" + c.u32(2) + c.u64(1) + c.u64(2) + tail)
