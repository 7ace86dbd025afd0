"""Hand-made GGUF byte strings for the parser tests.

Independent of engine/gguf.py on purpose: every field is packed here by hand, so a test can put
any value (a count of 2^63, a bad type id, a wrong offset) exactly where the format puts it.

    >>> f = gguf_bytes(kvs=[kv_u32("general.alignment", 32)],
    ...                infos=[tensor_info("w", ne=[4], ggml_type=F32, offset=0)], data=bytes(16))
    >>> f[:4]
    b'GGUF'
"""

import struct

# GGUF metadata value type ids (ggml docs/gguf.md)
UINT8, INT8, UINT16, INT16, UINT32, INT32, FLOAT32, BOOL, STRING, ARRAY, UINT64, INT64, FLOAT64 = range(13)
# a few ggml tensor type ids (ggml.h enum ggml_type)
F32, F16, Q4_0, Q8_0, Q4_K, Q6_K = 0, 1, 2, 8, 12, 14


def u8(v: int) -> bytes:
    return struct.pack("<B", v)


def u32(v: int) -> bytes:
    return struct.pack("<I", v)


def i32(v: int) -> bytes:
    return struct.pack("<i", v)


def u64(v: int) -> bytes:
    return struct.pack("<Q", v)


def f32(v: float) -> bytes:
    return struct.pack("<f", v)


def string(s: str | bytes, length: int | None = None) -> bytes:
    """uint64 length + bytes; `length` overrides the stored length (for lying headers)."""
    b = s.encode("utf-8") if isinstance(s, str) else s
    return u64(len(b) if length is None else length) + b


def kv(key: str | bytes, vtype: int, payload: bytes) -> bytes:
    """One metadata pair: key, value type id, then the already-packed value."""
    return string(key) + u32(vtype) + payload


def kv_u32(key: str, v: int) -> bytes:
    return kv(key, UINT32, u32(v))


def kv_str(key: str, s: str | bytes) -> bytes:
    return kv(key, STRING, string(s))


def kv_array(key: str, etype: int, items: list[bytes], count: int | None = None) -> bytes:
    """An ARRAY pair from already-packed elements; `count` overrides the stored element count."""
    n = len(items) if count is None else count
    return kv(key, ARRAY, u32(etype) + u64(n) + b"".join(items))


def tensor_info(name: str | bytes, ne: list[int], ggml_type: int, offset: int, n_dims: int | None = None) -> bytes:
    """One tensor info; `ne` in ggml order (innermost first); `n_dims` overrides len(ne)."""
    nd = len(ne) if n_dims is None else n_dims
    return string(name) + u32(nd) + b"".join(u64(d) for d in ne) + u32(ggml_type) + u64(offset)


def gguf_bytes(kvs=(), infos=(), data: bytes = b"", *, version: int = 3, n_kv: int | None = None,
               n_tensors: int | None = None, magic: bytes = b"GGUF", alignment: int = 32,
               pad: bool = True) -> bytes:
    """Header + pairs + tensor infos + zero padding to `alignment` + data.

    n_kv / n_tensors default to the number of pairs / infos given; pass other values to lie.
    """
    head = magic + u32(version)
    head += u64(len(infos) if n_tensors is None else n_tensors)
    head += u64(len(kvs) if n_kv is None else n_kv)
    head += b"".join(kvs) + b"".join(infos)
    if pad:
        head += bytes(-len(head) % alignment)
    return head + data


def small_valid_file(version: int = 3) -> bytes:
    """A small, valid GGUF: a few pairs of several types and two F32 tensors (2x4 and 8)."""
    kvs = [
        kv_str("general.architecture", "llama"),
        kv_u32("llama.block_count", 1),
        kv("llama.rope.freq_base", FLOAT32, f32(10000.0)),
        kv_array("tokenizer.ggml.tokens", STRING, [string(t) for t in ("<s>", "a", "b")]),
        kv_array("tokenizer.ggml.scores", FLOAT32, [f32(x) for x in (0.0, -1.0, -2.0)]),
        kv("tokenizer.ggml.add_bos_token", BOOL, u8(1)),
    ]
    infos = [tensor_info("a.weight", [4, 2], F32, 0), tensor_info("b.weight", [8], F32, 32)]
    data = struct.pack("<8f", *range(8)) + struct.pack("<8f", *range(8, 16))
    return gguf_bytes(kvs, infos, data, version=version)


_WRITER_MADE: list[bytes] = []


def writer_made_file() -> bytes:
    """A small file written by the gguf package's GGUFWriter (llama.cpp's reference writer) with
    every metadata value type, a string array, numeric arrays and F32/F16 tensors. Cached."""
    if not _WRITER_MADE:
        import tempfile
        from pathlib import Path

        import gguf
        import numpy as np

        V = gguf.GGUFValueType
        with tempfile.TemporaryDirectory() as d:
            path = Path(d) / "seed.gguf"
            w = gguf.GGUFWriter(str(path), "llama")
            w.add_block_count(2)
            w.add_key_value("t.u8", 7, V.UINT8)
            w.add_key_value("t.i8", -7, V.INT8)
            w.add_key_value("t.u16", 700, V.UINT16)
            w.add_key_value("t.i16", -700, V.INT16)
            w.add_key_value("t.i32", -70000, V.INT32)
            w.add_key_value("t.f32", 0.5, V.FLOAT32)
            w.add_key_value("t.bool", True, V.BOOL)
            w.add_key_value("t.u64", 2**40, V.UINT64)
            w.add_key_value("t.i64", -(2**40), V.INT64)
            w.add_key_value("t.f64", 0.25, V.FLOAT64)
            w.add_key_value("t.str", "héllo", V.STRING)
            w.add_token_list(["<s>", "</s>", "a", "é"])
            w.add_token_scores([0.0, 0.0, -1.0, -2.0])
            w.add_array("t.arr_i32", [1, -2, 3])
            w.add_tensor("a.weight", np.arange(32, dtype=np.float32).reshape(4, 8))
            w.add_tensor("b.weight", np.arange(3, dtype=np.float16))
            w.write_header_to_file()
            w.write_kv_data_to_file()
            w.write_tensors_to_file()
            w.close()
            _WRITER_MADE.append(path.read_bytes())
    return _WRITER_MADE[0]
