"""engine/strtable.py: a string array held as bytes answers like the list and dicts it replaces.

The references are Python's own: a list of the strings, `dict(zip(strings, ids))` (last id wins)
and `dict.setdefault` (first id wins), and zlib.crc32 for the vectorised hash.
"""

import zlib

import numpy as np
import pytest

from engine.strtable import _VECTOR_BYTES, StringTable, _crc32_all


def _vocabulary(rng, n=4000):
    """Strings the way vocabularies have them: short ASCII, non-ASCII, repeats, empties, long runs."""
    alphabet = list("abcdefgh ▁é漢😀\n") + ["<0x0A>", "<|im_end|>"]
    out = []
    for _ in range(n):
        k = int(rng.integers(0, 6))
        out.append("".join(rng.choice(alphabet, size=k)))
    out += ["", "", "a", "a", "x" * (_VECTOR_BYTES - 1), "x" * _VECTOR_BYTES, "x" * (_VECTOR_BYTES + 1),
            "▁" * 300, "y" * 5000]
    rng.shuffle(out)
    return out


def test_sequence_and_lookups_equal_list_and_dicts():
    rng = np.random.default_rng(0)
    strings = _vocabulary(rng)
    table = StringTable.from_strings(strings)
    assert len(table) == len(strings) and list(table) == strings and table == strings
    assert [table[i] for i in (0, 7, -1)] == [strings[0], strings[7], strings[-1]]
    assert table[2:9] == strings[2:9]
    last = dict(zip(strings, range(len(strings))))
    first: dict[str, int] = {}
    for i, s in enumerate(strings):
        first.setdefault(s, i)
    for s in set(strings):
        assert table.find(s) == last[s] and table.find(s, last=False) == first[s], s
        assert s in table and table.index(s) == first[s]
    for missing in ("zz", "a" * 7, "▁▁▁▁▁▁▁", "x" * (_VECTOR_BYTES + 2), "\ud800"):
        assert missing not in last and table.find(missing) is None and missing not in table
    with pytest.raises(ValueError):
        table.index("zz")
    with pytest.raises(IndexError):
        table[len(strings)]


def test_vectorised_crc_is_zlibs():
    rng = np.random.default_rng(1)
    table = StringTable.from_strings(_vocabulary(rng, 500))
    o = np.frombuffer(table._offsets, np.int64)
    crc = _crc32_all(np.frombuffer(table._blob, np.uint8), o)
    assert [int(c) for c in crc] == [zlib.crc32(table.raw(i)) for i in range(len(table))]


def test_colliding_home_slots_are_all_found():
    """Strings chosen to share home slots (same CRC low bits): every one is still found, the
    probe runs past the table's home slots into its tail, and a miss stops at an empty slot."""
    n_home = 16                                             # 8 strings -> 16 home slots
    bucket: dict[int, list[str]] = {}
    i = 0
    home = 12                                               # 8 strings from slot 12: 4 in the tail
    while len(bucket.get(home, ())) < 8:
        s = f"s{i}"
        bucket.setdefault(zlib.crc32(s.encode()) & (n_home - 1), []).append(s)
        i += 1
    strings = bucket[home][:8]
    table = StringTable.from_strings(strings)
    assert [table.find(s) for s in strings] == list(range(8))
    assert table._home_mask == n_home - 1 and len(table._table) == n_home + 4 + 1
    assert list(table._table[home:home + 8]) == list(range(8)) and table._table[-1] == -1
    assert table.find("not there") is None


def test_invalid_utf8_round_trips_with_surrogateescape():
    raw = [b"ok", b"\xff\xfe", b"\xe2\x82", b"\xac"]
    table = StringTable.from_strings(raw, errors="surrogateescape")
    assert [s.encode("utf-8", "surrogateescape") for s in table] == raw
    assert [table.raw(i) for i in range(4)] == raw
    assert table.find(b"\xff\xfe".decode("utf-8", "surrogateescape")) == 1
    assert table.find("\u20ac") is None                     # the bytes of two strings, not one


def test_empty_table():
    table = StringTable.from_strings([])
    assert len(table) == 0 and list(table) == [] and table.find("a") is None and table.find("") is None


def test_gguf_string_arrays_are_tables(tmp_path):
    """The parser gives StringTables whose strings are the written ones, and writing one back
    gives the same bytes."""
    import io

    from engine.gguf import GGUFFile, ValueType as V, write_gguf

    strings = _vocabulary(np.random.default_rng(2), 300)
    md = {"general.architecture": (V.STRING, "x"), "tokenizer.ggml.tokens": (V.ARRAY, (V.STRING, strings))}
    buf = io.BytesIO()
    write_gguf(buf, md, [])
    gf = GGUFFile(buf.getvalue())
    got = gf.metadata["tokenizer.ggml.tokens"]
    assert isinstance(got, StringTable) and list(got) == strings
    again = io.BytesIO()
    write_gguf(again, gf.typed_metadata(), [])
    assert again.getvalue() == buf.getvalue()
