"""String arrays of GGUF metadata held as bytes (pipeline stage 1, beside gguf.py; used by tokenizer.py).

A vocabulary is the largest thing in a GGUF header: Gemma 3 has 262,144 token texts, Qwen2.5
151,665 texts and 151,387 merge rules. As Python objects (a str per entry, then a dict of str -> id
and another of (str, str) -> rank) they took 40-70 MB natively and ~30-45 MB of a worker's WASM
heap. A `StringTable` keeps the file's own bytes instead:

    blob      one bytes (or bytearray) object: every string's UTF-8 bytes, back to back, ~8 per token
    offsets   array('q') of n + 1 positions in blob: string i is blob[offsets[i]:offsets[i + 1]]
    index     built on the first lookup: an open-addressing table of ids (array('i'), at most half
              full), home slot = CRC-32 of the string's bytes, linear probing; a hit is confirmed by
              comparing the bytes, so hash collisions cost a probe, never a wrong answer

It is a read-only Sequence[str] (len, [i], iteration, `in`, index) that decodes one string when
asked, plus `find(text)` -> the id of an exact text (the last of several equal ones, as a dict built
in order would give, or the first with last=False) at about a microsecond per lookup. The CRC is
zlib's (C speed per query); the table is built vectorised with the same CRC in numpy, one byte
position at a time over all strings (strings past 64 bytes are hashed with zlib one by one, so a
hostile file's very long string costs time in proportion to its bytes, not a loop per byte).
"""

from __future__ import annotations

import zlib
from array import array
from typing import Iterable, Iterator, Sequence

import numpy as np

__all__ = ["StringTable", "SkippedStrings"]

_VECTOR_BYTES = 64  # strings up to this length are hashed in the vectorised loop


def _crc_table() -> np.ndarray:
    """zlib's CRC-32 (reflected polynomial 0xEDB88320) byte table."""
    c = np.arange(256, dtype=np.uint32)                    # (256,)
    for _ in range(8):
        c = np.where(c & 1, (c >> 1) ^ np.uint32(0xEDB88320), c >> 1).astype(np.uint32)
    return c


_CRC = _crc_table()                                        # (256,) uint32


def _crc32_all(data: np.ndarray, offsets: np.ndarray) -> np.ndarray:
    """zlib.crc32 of every string data[offsets[i]:offsets[i + 1]], as uint32 (n,).

    Index arrays are int32 where the blob allows (a worker's heap is what this saves)."""
    idx = np.int32 if len(data) < 2**31 else np.int64
    lengths = np.diff(offsets).astype(idx)                 # (n,)
    out = np.empty(len(lengths), np.uint32)                # (n,)
    order = np.argsort(-lengths, kind="stable")            # (n,) longest first: the active ones lead
    neg = -lengths[order]                                  # (n,) ascending
    first = int(np.searchsorted(neg, -_VECTOR_BYTES, side="left"))  # those past 64 bytes: zlib below
    order, neg = order[first:], neg[first:]
    crc = np.full(len(order), 0xFFFFFFFF, np.uint32)       # (n_short,)
    pos = offsets[:-1][order].astype(idx)                  # (n_short,) next byte of each string
    for k in range(int(-neg[0]) if len(neg) else 0):
        m = int(np.searchsorted(neg, -k, side="left"))     # the strings longer than k bytes
        c, p = crc[:m], pos[:m]
        crc[:m] = _CRC[(c ^ data[p]) & 0xFF] ^ (c >> np.uint32(8))
        p += 1
    out[order] = crc ^ np.uint32(0xFFFFFFFF)
    del crc, pos, neg, order
    mv = memoryview(data)
    for i in np.flatnonzero(lengths > _VECTOR_BYTES).tolist():   # rare: zlib one by one
        out[i] = zlib.crc32(mv[int(offsets[i]):int(offsets[i + 1])])
    return out


class StringTable(Sequence[str]):
    """n strings as one bytes blob + offsets (see the module docstring).

    errors: how a string's bytes are decoded ("strict", or "surrogateescape" for token texts that
    may hold invalid UTF-8; find() encodes its argument the same way, so the bytes round-trip).
    """

    __slots__ = ("_blob", "_offsets", "_errors", "_table", "_home_mask")

    def __init__(self, blob: bytes | bytearray, offsets: array, errors: str = "strict"):
        if len(offsets) < 1 or offsets[0] != 0 or offsets[-1] != len(blob):
            raise ValueError("offsets must run from 0 to len(blob)")
        self._blob = blob
        self._offsets = offsets                            # array('q') (n + 1,)
        self._errors = errors
        self._table: array | None = None                   # array('i') (2^k + tail,) ids, -1 empty
        self._home_mask = 0

    @classmethod
    def from_strings(cls, strings: Iterable[str | bytes], errors: str = "strict") -> "StringTable":
        """From Python strings (or raw bytes), e.g. a vocabulary built in a test or a converter."""
        parts = [s if isinstance(s, bytes) else s.encode("utf-8", errors) for s in strings]
        offsets = array("q", [0])
        total = 0
        for p in parts:
            total += len(p)
            offsets.append(total)
        return cls(b"".join(parts), offsets, errors)

    # ---- Sequence[str] ----------------------------------------------------------------------

    def __len__(self) -> int:
        return len(self._offsets) - 1

    def __getitem__(self, i):
        if isinstance(i, slice):
            return [self[j] for j in range(*i.indices(len(self)))]
        n = len(self._offsets) - 1
        if i < 0:
            i += n
        if not 0 <= i < n:
            raise IndexError(f"string index {i} out of range (0..{n - 1})")
        o = self._offsets
        return str(self._blob[o[i]:o[i + 1]], "utf-8", self._errors)

    def __iter__(self) -> Iterator[str]:
        blob, o, errors = self._blob, self._offsets, self._errors
        for i in range(len(o) - 1):
            yield str(blob[o[i]:o[i + 1]], "utf-8", errors)

    def __contains__(self, text) -> bool:
        return isinstance(text, str) and self.find(text) is not None

    def index(self, text, start: int = 0, stop: int | None = None) -> int:
        i = self.find(text, last=False) if isinstance(text, str) and start == 0 and stop is None else None
        if i is None:
            if start or stop is not None:
                return super().index(text, start, len(self) if stop is None else stop)
            raise ValueError(f"{text!r} is not in the table")
        return i

    def __eq__(self, other) -> bool:
        if isinstance(other, StringTable):
            return self._blob == other._blob and self._offsets == other._offsets
        if isinstance(other, (list, tuple)):
            return len(other) == len(self) and all(a == b for a, b in zip(self, other))
        return NotImplemented

    __hash__ = None  # mutable-looking equality with lists: not hashable, like a list

    def __repr__(self) -> str:
        head = ", ".join(repr(s) for s in self[:3])
        return f"StringTable([{head}{', ...' if len(self) > 3 else ''}], n={len(self)})"

    # ---- raw access -------------------------------------------------------------------------

    def raw(self, i: int) -> bytes:
        """The stored bytes of string i."""
        o = self._offsets
        return bytes(self._blob[o[i]:o[i + 1]])

    def lengths(self) -> np.ndarray:
        """Byte length of every string, (n,) int64."""
        return np.diff(np.frombuffer(self._offsets, np.int64))

    @property
    def nbytes(self) -> int:
        """What the table holds: blob + offsets + index (when built)."""
        table = self._table
        return len(self._blob) + 8 * len(self._offsets) + (4 * len(table) if table is not None else 0)

    # ---- lookup -----------------------------------------------------------------------------

    def find(self, text: str | bytes, last: bool = True) -> int | None:
        """The id of the string equal to `text` (the last such id, or the first with last=False),
        or None. `text` as str is encoded as the strings were decoded."""
        if isinstance(text, str):
            try:
                text = text.encode("utf-8", self._errors)
            except UnicodeEncodeError:
                return None                                # a lone surrogate: no stored string
        table = self._table
        if table is None:
            table = self._build()
        slot = zlib.crc32(text) & self._home_mask
        blob, o = self._blob, self._offsets
        found = None
        while True:
            i = table[slot]
            if i < 0:
                return found
            if blob[o[i]:o[i + 1]] == text:
                if found is None or (i > found if last else i < found):
                    found = i
            slot += 1                                      # the table ends with an empty slot

    def _build(self) -> array:
        """The open-addressing table: every id at its CRC slot or, taken, the next free one.

        Linear probing placed in one pass: with the ids sorted by home slot h, the j-th goes to
        p_j = max(h_j, p_(j-1) + 1) = j + max over i <= j of (h_i - i). The table runs past its
        2^k home slots by as many as the last cluster needs (plus an empty one), so a probe never wraps.
        """
        n = len(self)
        size = 1 << max(4, (2 * n - 1).bit_length())      # home slots; load factor <= 0.5
        idx = np.int32 if size + n < 2**31 else np.int64
        crc = _crc32_all(np.frombuffer(self._blob, np.uint8), np.frombuffer(self._offsets, np.int64))  # (n,)
        home = (crc & np.uint32(size - 1)).astype(idx)     # (n,)
        del crc
        order = np.argsort(home, kind="stable").astype(np.int32)  # (n,) ids by home slot
        home = home[order]                                 # (n,) ascending
        j = np.arange(n, dtype=idx)                        # (n,)
        home -= j
        place = np.maximum.accumulate(home, out=home) if n else home  # (n,) max over i <= j of h_i - i
        place += j                                         # (n,) strictly increasing
        del j
        table = np.full(max(size, int(place[-1]) + 1 if n else 0) + 1, -1, np.int32)  # (size + tail,)
        table[place] = order
        del place, order
        self._home_mask = size - 1
        self._table = array("i")
        self._table.frombytes(table.view(np.uint8))       # no intermediate bytes object
        return self._table


class SkippedStrings(Sequence[str]):
    """A string array of the header that was walked (bounds checked) but not kept: its length only.
    A shard that does not tokenize parses the header this way (engine/shard.py); the vocabulary is
    the header's largest part (Qwen2.5: 151,665 tokens and 151,387 merges, ~9 MiB parsed)."""

    __slots__ = ("_n",)

    def __init__(self, n: int):
        self._n = n

    def __len__(self) -> int:
        return self._n

    def __getitem__(self, i):
        raise LookupError("this string array was not kept (a header parsed without its string arrays)")
