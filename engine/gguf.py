"""Pipeline stage 1: GGUF bytes -> GGUFFile (header, typed metadata, zero-copy tensor views).

Everything downstream (config.py, tokenizer.py, weights/model.py) reads the model through the
GGUFFile this module builds; nothing else parses file bytes. The reader takes any bytes-like
buffer (bytes, bytearray, memoryview, mmap, a numpy uint8 array - in the browser the bytes that
fetch() produced), never copies tensor data, and treats every count, length, offset and dimension
in the file as hostile: each one is checked, in Python ints, against the bytes that are actually
left BEFORE anything is allocated (see shared/research/security.md, Table A). Any defect of the
file raises GGUFError, whose message names the field; no IndexError, struct.error,
UnicodeDecodeError, MemoryError, OverflowError or RecursionError can escape the parser.

The writer (write_gguf) emits GGUF v3 for `mote quantize` and the converters.

Example:
    >>> gf = open_gguf("gemma-3-270m-q4_k_m.gguf")
    >>> gf.metadata["general.architecture"], gf.tensors["token_embd.weight"].shape
    ('gemma3', (262144, 640))
"""

# GGUF file layout (v2 and v3 are identical on disk; v1 used 32-bit counts and is not supported).
# All integers little-endian. Reference: ggml-org/ggml docs/gguf.md.
#
#   offset 0   magic      4 bytes  b"GGUF"
#          4   version    uint32   2 or 3
#          8   n_tensors  uint64
#         16   n_kv       uint64
#         24   n_kv x metadata pair:
#                key      string   (uint64 byte length + UTF-8 bytes, no NUL)
#                type     uint32   ValueType
#                value    scalar of that type | string | array
#                         array = uint32 element type + uint64 count + count elements
#              n_tensors x tensor info:
#                name     string   (< 64 bytes)
#                n_dims   uint32   1..4
#                ne       n_dims x uint64, ggml order (ne[0] = innermost = numpy's last axis)
#                type     uint32   ggml type id (engine.quants.TYPES)
#                offset   uint64   relative to the data section, a multiple of the alignment
#              zero padding up to a multiple of `general.alignment` (default 32)
#   data_offset  tensor data, each tensor padded to the alignment
#
# Policies (decided here, each tested in tests/test_malformed.py):
#   - Keys, scalar strings and tensor names must be valid UTF-8. Elements of string arrays under
#     "tokenizer.ggml." may hold invalid UTF-8 (llama.cpp keeps token texts as raw bytes, and some
#     vocabularies contain partial UTF-8 sequences); they are decoded with errors="surrogateescape"
#     so token.encode("utf-8", "surrogateescape") gives back the exact bytes. Everywhere else
#     invalid UTF-8 is a GGUFError naming the key.
#   - Zero-sized dimensions are rejected (llama.cpp accepts them; no real model has one).
#   - Tensors must be aligned, inside the file and must not overlap; unlike llama.cpp we do not
#     require them to be stored in info order without gaps. Trailing bytes after the last tensor
#     are tolerated (as llama.cpp does).
#   - Arrays of arrays are rejected (as llama.cpp does), so parsing never recurses.

from __future__ import annotations

import enum
import os
import struct
from array import array
from dataclasses import dataclass
from typing import Iterable

import numpy as np

from .quants import TYPES, row_nbytes  # ggml type id -> (block_size, type_size)
from .strtable import SkippedStrings, StringTable

__all__ = ["GGUFError", "ValueType", "TensorInfo", "GGUFFile", "open_gguf", "write_gguf"]

GGUF_MAGIC = b"GGUF"
SUPPORTED_VERSIONS = (2, 3)
DEFAULT_ALIGNMENT = 32
MAX_NAME_BYTES = 63  # ggml GGML_MAX_NAME = 64 including the terminating NUL
MAX_KEY_BYTES = 65535  # spec limit on metadata key length
MAX_DIMS = 4  # ggml GGML_MAX_DIMS
INT64_MAX = 2**63 - 1  # ggml stores ne as int64: element counts and dims must fit
_GATHER_CHUNK = 32768  # strings gathered per step of a string array's parse
_SCAN_BYTES = 1 << 20  # bytes of a string array looked at per step of its vectorised walk
_MIN_RUN = 1024        # strings a vectorised step must prove for the walk to stay vectorised
_LOOP_STEP = 4096      # strings walked one at a time where it does not
_ONE64, _LIMIT64 = np.array([1], np.uint64), np.array([255], np.uint64)  # 1-element arrays: cheaper than scalars in Pyodide


class GGUFError(ValueError):
    """A malformed or unsupported GGUF file. The message names the offending field."""


class ValueType(enum.IntEnum):
    """Metadata value type ids as stored in the file (gguf.md `gguf_metadata_value_type`)."""

    UINT8 = 0
    INT8 = 1
    UINT16 = 2
    INT16 = 3
    UINT32 = 4
    INT32 = 5
    FLOAT32 = 6
    BOOL = 7
    STRING = 8
    ARRAY = 9
    UINT64 = 10
    INT64 = 11
    FLOAT64 = 12


# One table for the fixed-size value types: struct format, byte size, numpy dtype (little-endian).
_FIXED: dict[ValueType, tuple[str, int, np.dtype]] = {
    ValueType.UINT8: ("<B", 1, np.dtype("<u1")),
    ValueType.INT8: ("<b", 1, np.dtype("<i1")),
    ValueType.UINT16: ("<H", 2, np.dtype("<u2")),
    ValueType.INT16: ("<h", 2, np.dtype("<i2")),
    ValueType.UINT32: ("<I", 4, np.dtype("<u4")),
    ValueType.INT32: ("<i", 4, np.dtype("<i4")),
    ValueType.FLOAT32: ("<f", 4, np.dtype("<f4")),
    ValueType.BOOL: ("<B", 1, np.dtype("?")),  # stored as one byte, 0 or 1
    ValueType.UINT64: ("<Q", 8, np.dtype("<u8")),
    ValueType.INT64: ("<q", 8, np.dtype("<i8")),
    ValueType.FLOAT64: ("<d", 8, np.dtype("<f8")),
}
_STRUCTS = {vt: struct.Struct(fmt) for vt, (fmt, _, _) in _FIXED.items()}
_U32 = struct.Struct("<I")
_U64 = struct.Struct("<Q")

_VALUE_TYPE_IDS = frozenset(int(v) for v in ValueType)
_INTS = frozenset({ValueType.UINT8, ValueType.INT8, ValueType.UINT16, ValueType.INT16,
                   ValueType.UINT32, ValueType.INT32, ValueType.UINT64, ValueType.INT64})
_FLOATS = frozenset({ValueType.FLOAT32, ValueType.FLOAT64})

# Smallest possible encodings, used to bound n_kv and n_tensors by the bytes left in the file:
# key (8-byte length + >= 1 byte) + type (4) + smallest value (1 byte)
_MIN_KV_BYTES = 8 + 1 + 4 + 1
# name (8 + >= 1) + n_dims (4) + one dim (8) + type (4) + offset (8)
_MIN_TENSOR_INFO_BYTES = 8 + 1 + 4 + 8 + 4 + 8


# --- Expected value types of the keys later stages read --------------------------------------
# A type confusion (e.g. scores stored as a UINT8 array but read as float32, llama.cpp#26690) is
# caught here, at parse time, with the key in the message. Each entry: (description, predicate
# over (type, element type)).
def _scalar(types: frozenset, what: str):
    return what, lambda t, e: t in types


def _array(types: frozenset, what: str):
    return what, lambda t, e: t == ValueType.ARRAY and e in types


def _scalar_or_array(types: frozenset, what: str):
    return what, lambda t, e: t in types or (t == ValueType.ARRAY and e in types)


_STR = frozenset({ValueType.STRING})
_KEY_TYPES = {
    "general.alignment": _scalar(frozenset({ValueType.UINT32}), "uint32"),
    "general.architecture": _scalar(_STR, "string"),
    "general.name": _scalar(_STR, "string"),
    "general.file_type": _scalar(_INTS, "an integer"),
    "general.quantization_version": _scalar(_INTS, "an integer"),
    "tokenizer.ggml.model": _scalar(_STR, "string"),
    "tokenizer.ggml.pre": _scalar(_STR, "string"),
    "tokenizer.ggml.tokens": _array(_STR, "an array of string"),
    "tokenizer.ggml.scores": _array(frozenset({ValueType.FLOAT32}), "an array of float32"),
    "tokenizer.ggml.token_type": _array(frozenset({ValueType.INT32}), "an array of int32"),
    "tokenizer.ggml.merges": _array(_STR, "an array of string"),
    "tokenizer.ggml.bos_token_id": _scalar(_INTS, "an integer"),
    "tokenizer.ggml.eos_token_id": _scalar(_INTS, "an integer"),
    "tokenizer.ggml.eot_token_id": _scalar(_INTS, "an integer"),
    "tokenizer.ggml.eom_token_id": _scalar(_INTS, "an integer"),
    "tokenizer.ggml.unknown_token_id": _scalar(_INTS, "an integer"),
    "tokenizer.ggml.seperator_token_id": _scalar(_INTS, "an integer"),  # sic, as in gguf-py
    "tokenizer.ggml.padding_token_id": _scalar(_INTS, "an integer"),
    "tokenizer.ggml.add_bos_token": _scalar(frozenset({ValueType.BOOL}), "bool"),
    "tokenizer.ggml.add_eos_token": _scalar(frozenset({ValueType.BOOL}), "bool"),
    "tokenizer.ggml.add_space_prefix": _scalar(frozenset({ValueType.BOOL}), "bool"),
    "tokenizer.chat_template": _scalar(_STR, "string"),
}
# Keys "{arch}.<suffix>" where arch = general.architecture.
_ARCH_KEY_TYPES = {
    "context_length": _scalar(_INTS, "an integer"),
    "embedding_length": _scalar(_INTS, "an integer"),
    "block_count": _scalar(_INTS, "an integer"),
    "vocab_size": _scalar(_INTS, "an integer"),
    "expert_count": _scalar(_INTS, "an integer"),
    "expert_used_count": _scalar(_INTS, "an integer"),
    # llama.cpp also accepts per-layer arrays for these three (e.g. OpenELM)
    "feed_forward_length": _scalar_or_array(_INTS, "an integer or an array of integers"),
    "attention.head_count": _scalar_or_array(_INTS, "an integer or an array of integers"),
    "attention.head_count_kv": _scalar_or_array(_INTS, "an integer or an array of integers"),
    "attention.key_length": _scalar(_INTS, "an integer"),
    "attention.value_length": _scalar(_INTS, "an integer"),
    "attention.sliding_window": _scalar(_INTS, "an integer"),
    "rope.dimension_count": _scalar(_INTS, "an integer"),
    "attention.layer_norm_rms_epsilon": _scalar(_FLOATS, "float32 or float64"),
    "attention.layer_norm_epsilon": _scalar(_FLOATS, "float32 or float64"),
    "rope.freq_base": _scalar(_FLOATS, "float32 or float64"),
    "final_logit_softcapping": _scalar(_FLOATS, "float32 or float64"),
    "attn_logit_softcapping": _scalar(_FLOATS, "float32 or float64"),
}


def _lenient_utf8(key: str) -> bool:
    """Whether string-array elements under `key` may hold invalid UTF-8 (see Policies above)."""
    return key.startswith("tokenizer.ggml.")


def _check_utf8(blob: bytes, offsets: array, key: str) -> None:
    """Every string of a strict key is valid UTF-8: the whole blob decodes and no non-empty string
    starts inside a character (then each string lies between character boundaries, so each decodes)."""
    data = np.frombuffer(blob, np.uint8)                        # (len(blob),)
    o = np.frombuffer(offsets, np.int64)                        # (n + 1,)
    starts = o[:-1][o[1:] > o[:-1]]                             # (n_nonempty,)
    try:
        str(blob, "utf-8")
        if not np.any((data[starts] & 0xC0) == 0x80):
            return
    except UnicodeDecodeError:
        pass
    for i in range(len(o) - 1):                                 # the error path: name the string
        try:
            str(blob[o[i]:o[i + 1]], "utf-8")
        except UnicodeDecodeError as e:
            raise GGUFError(f"metadata key {key!r}: string #{i} is not valid UTF-8 (byte {e.start})") from None


@dataclass(frozen=True)
class TensorInfo:
    """Where one tensor lives in the buffer and how to read it."""

    name: str
    shape: tuple[int, ...]  # numpy order (outermost first) = reversed ggml ne; 2-D weights are (n_out, n_in)
    ggml_type: int  # engine.quants type id
    offset: int  # absolute byte offset of the tensor data in the buffer
    nbytes: int

    @property
    def n_elements(self) -> int:
        n = 1
        for d in self.shape:
            n *= d
        return n


# --- Reader -----------------------------------------------------------------------------------
class _Cursor:
    """Bounds-checked little-endian reads from a uint8 memoryview; every short read is a GGUFError."""

    def __init__(self, mv: memoryview):
        self.mv = mv
        self.pos = 0
        self.end = len(mv)

    def left(self) -> int:
        return self.end - self.pos

    def need(self, n: int, what: str) -> None:
        if n > self.end - self.pos:
            raise GGUFError(f"{what}: needs {n} bytes at offset {self.pos} but only "
                            f"{self.end - self.pos} are left (truncated file?)")

    def u32(self, what: str) -> int:
        self.need(4, what)
        (v,) = _U32.unpack_from(self.mv, self.pos)
        self.pos += 4
        return v

    def u64(self, what: str) -> int:
        self.need(8, what)
        (v,) = _U64.unpack_from(self.mv, self.pos)
        self.pos += 8
        return v

    def raw_string(self, what: str) -> memoryview:
        """A length-prefixed string's bytes (a view, no copy)."""
        n = self.u64(f"{what} length")
        if n > self.end - self.pos:
            raise GGUFError(f"{what}: length {n} exceeds the {self.end - self.pos} bytes left in the file")
        s = self.mv[self.pos:self.pos + n]
        self.pos += n
        return s

    def string(self, what: str) -> str:
        b = self.raw_string(what)
        try:
            return str(b, "utf-8")
        except UnicodeDecodeError as e:
            raise GGUFError(f"{what}: invalid UTF-8 at byte {e.start}") from None


class GGUFFile:
    """A parsed GGUF file: metadata decoded, tensor data left in the caller's buffer.

    `buffer` must stay unchanged while the GGUFFile is in use (tensor views point into it).
    """

    version: int
    alignment: int
    data_offset: int  # absolute offset of the data section (TensorInfo.offset already includes it)
    metadata: dict[str, object]  # str | int | float | bool | StringTable (string arrays) | np.ndarray (numeric arrays)
    value_types: dict[str, tuple[ValueType, ValueType | None]]  # key -> (type, array element type)
    tensors: dict[str, TensorInfo]  # in file order

    def __init__(self, buffer, keep_strings: bool = True):
        """keep_strings False: string arrays (the vocabulary) are bounds-checked and skipped, kept as
        their length only (strtable.SkippedStrings), for a reader that never tokenizes."""
        try:
            mv = memoryview(buffer)
        except TypeError:
            raise TypeError(f"GGUFFile needs a bytes-like buffer, got {type(buffer).__name__}") from None
        if not mv.c_contiguous:
            raise TypeError("GGUFFile needs a C-contiguous buffer")
        self._buffer = buffer  # keeps an mmap (or the caller's array) alive for raw() views
        self._mv = mv.cast("B") if (mv.format != "B" or mv.ndim != 1) else mv
        self.metadata = {}
        self.value_types = {}
        self.tensors = {}
        self._keep_strings = keep_strings
        self._parse()

    @classmethod
    def with_header(cls, buffer, head: "GGUFFile") -> "GGUFFile":
        """`buffer` (the whole file) parsed as `head` parsed its first head.data_offset bytes, which
        must be byte-equal to buffer's (the caller checks): the header is not read again (Gemma's
        262144 token strings take ~0.45 s in Pyodide). `head`'s tensors were checked against a file
        of len(buffer) bytes (engine.shard.ShardFile with that file_size)."""
        self = cls.__new__(cls)
        mv = memoryview(buffer)
        self._buffer, self._mv = buffer, (mv.cast("B") if (mv.format != "B" or mv.ndim != 1) else mv)
        if getattr(head, "file_size", None) != len(self._mv):
            raise ValueError("the parsed header is of a file of another size")
        self.version, self.alignment, self.data_offset = head.version, head.alignment, head.data_offset
        self.metadata, self.value_types, self.tensors = head.metadata, head.value_types, head.tensors
        return self

    @property
    def nbytes(self) -> int:
        """Size of the whole buffer in bytes."""
        return len(self._mv)

    def __repr__(self) -> str:
        arch = self.metadata.get("general.architecture", "?")
        return (f"<GGUFFile v{self.version} arch={arch!r} {len(self.metadata)} keys "
                f"{len(self.tensors)} tensors {self.nbytes} bytes>")

    def raw(self, name: str) -> np.ndarray:
        """The bytes of tensor `name` as a uint8 view into the buffer (no copy).

        Read-only when the buffer is (bytes, read-only mmap); engine.quants turns it into numbers.
        """
        info = self.tensors.get(name)
        if info is None:
            raise KeyError(f"no tensor named {name!r} in this GGUF file ({len(self.tensors)} tensors)")
        return np.frombuffer(self._mv, dtype=np.uint8, count=info.nbytes, offset=info.offset)  # (nbytes,)

    def rows(self, name: str, a: int, b: int) -> np.ndarray:
        """The bytes of rows a..b of a 2-D tensor (one row = one output of the matrix), no copy."""
        t = self.tensors[name]
        rb = row_nbytes(t.ggml_type, t.shape[-1])
        return self.raw(name)[a * rb : b * rb]  # ((b - a) * row bytes,)

    def columns(self, name: str, b0: int, b1: int) -> np.ndarray:
        """Bytes b0..b1 of every row of 2-D tensor `name` (whole blocks: a column cut of the
        matrix), as a fresh contiguous (rows, b1 - b0) uint8 array the caller owns."""
        t = self.tensors[name]
        return np.ascontiguousarray(self.raw(name).reshape(t.shape[0], -1)[:, b0:b1])  # (rows, b1 - b0)

    def release(self, name: str) -> None:
        """Tell the OS it may drop the file pages of tensor `name` (after the engine copied it).

        Only for a memory-mapped file (open_gguf), where a later raw() simply reads the pages back
        from disk; for in-memory buffers this does nothing. Keeps the resident size at what the
        engine really holds instead of the whole file.
        """
        info = self.tensors.get(name)
        madvise = getattr(self._buffer, "madvise", None)
        advice = getattr(__import__("mmap"), "MADV_DONTNEED", None) if madvise else None
        if info is None or advice is None:
            return
        page = 4096
        start = (info.offset + page - 1) // page * page  # only whole pages inside the tensor
        end = (info.offset + info.nbytes) // page * page
        if end > start:
            madvise(advice, start, end - start)

    def typed_metadata(self) -> dict[str, tuple[ValueType, object]]:
        """The metadata in write_gguf's input form, e.g. to copy it into a re-quantized file."""
        out: dict[str, tuple[ValueType, object]] = {}
        for key, value in self.metadata.items():
            vtype, etype = self.value_types[key]
            out[key] = (vtype, (etype, value)) if vtype == ValueType.ARRAY else (vtype, value)
        return out

    # The parse runs top to bottom in file order: header, metadata, tensor infos, data section.
    def _parse(self) -> None:
        cur = _Cursor(self._mv)

        # 1. Header: magic, version, counts
        cur.need(4, "magic")
        magic = bytes(self._mv[0:4])
        if magic != GGUF_MAGIC:
            raise GGUFError(f"magic is {magic!r}, expected {GGUF_MAGIC!r} (not a GGUF file)")
        cur.pos = 4
        version = cur.u32("version")
        if version not in SUPPORTED_VERSIONS:
            hint = ""
            if version & 0xFFFF == 0 and version != 0:
                hint = " - byte-swapped, a big-endian file? only little-endian GGUF is supported"
            raise GGUFError(f"GGUF version {version} not supported (expected 2 or 3){hint}")
        self.version = version
        # v1 stored these two counts as uint32; v2 and v3 as uint64 (all later lengths too)
        n_tensors = cur.u64("n_tensors")
        n_kv = cur.u64("n_kv")
        # Bound both counts by the bytes left before looping over them (a 2^63 count must not hang).
        if n_kv > cur.left() // _MIN_KV_BYTES:
            raise GGUFError(f"n_kv = {n_kv} metadata pairs cannot fit in the {cur.left()} bytes left "
                            f"(each needs at least {_MIN_KV_BYTES})")
        if n_tensors > (cur.left() - n_kv * _MIN_KV_BYTES) // _MIN_TENSOR_INFO_BYTES:
            raise GGUFError(f"n_tensors = {n_tensors} tensor infos cannot fit in the {cur.left()} bytes "
                            f"left (each needs at least {_MIN_TENSOR_INFO_BYTES})")

        # 2. Metadata key/value pairs
        for i in range(n_kv):
            key = self._read_key(cur, i)
            vtype = cur.u32(f"metadata key {key!r}: value type")
            if vtype not in _VALUE_TYPE_IDS:
                raise GGUFError(f"metadata key {key!r}: unknown value type {vtype} (expected 0..12)")
            vtype = ValueType(vtype)
            if vtype == ValueType.ARRAY:
                etype, value = self._read_array(cur, key)
            else:
                etype, value = None, self._read_scalar(cur, key, vtype)
            self.metadata[key] = value
            self.value_types[key] = (vtype, etype)
        self._check_key_types()
        self.alignment = self._read_alignment()

        # 3. Tensor infos
        infos = []
        seen = set()
        for i in range(n_tensors):
            info = self._read_tensor_info(cur, i)
            if info[0] in seen:
                raise GGUFError(f"tensor {info[0]!r} appears twice (duplicate tensor name)")
            seen.add(info[0])
            infos.append(info)

        # 4. Data section: starts at the next multiple of the alignment after the infos. A file
        #    without tensors may end before that padding (nothing is read from it).
        pad = -cur.pos % self.alignment
        self.data_offset = cur.pos + pad
        if n_tensors and self.data_offset > len(self._mv):
            raise GGUFError(f"data section: padding to alignment {self.alignment} runs past the end "
                            f"of the file (data would start at {self.data_offset}, file is "
                            f"{len(self._mv)} bytes)")
        self._place_tensors(infos)

    def _read_key(self, cur: _Cursor, i: int) -> str:
        raw = cur.raw_string(f"metadata pair #{i}: key")
        if len(raw) == 0:
            raise GGUFError(f"metadata pair #{i}: empty key")
        if len(raw) > MAX_KEY_BYTES:
            raise GGUFError(f"metadata pair #{i}: key is {len(raw)} bytes, the limit is {MAX_KEY_BYTES}")
        try:
            key = str(raw, "utf-8")
        except UnicodeDecodeError:
            raise GGUFError(f"metadata pair #{i}: key {bytes(raw[:64])!r} is not valid UTF-8") from None
        if "\x00" in key:
            # a C reader would stop at the NUL and see a different key than we do
            raise GGUFError(f"metadata pair #{i}: key {key!r} contains a NUL byte")
        if key in self.metadata:
            raise GGUFError(f"metadata key {key!r} appears twice (duplicate key)")
        return key

    def _read_scalar(self, cur: _Cursor, key: str, vtype: ValueType):
        if vtype == ValueType.STRING:
            return cur.string(f"metadata key {key!r}: string")
        _, size, _ = _FIXED[vtype]
        cur.need(size, f"metadata key {key!r}: {vtype.name.lower()} value")
        (v,) = _STRUCTS[vtype].unpack_from(cur.mv, cur.pos)
        cur.pos += size
        if vtype == ValueType.BOOL:
            # read as uint8: the spec allows only 0 and 1, and readers disagree about 2..255
            if v > 1:
                raise GGUFError(f"metadata key {key!r}: bool value is {v}, expected 0 or 1")
            return bool(v)
        return v  # Python int or float

    def _read_array(self, cur: _Cursor, key: str):
        etype = cur.u32(f"metadata key {key!r}: array element type")
        if etype == ValueType.ARRAY:
            raise GGUFError(f"metadata key {key!r}: nested arrays are not supported")
        if etype not in _VALUE_TYPE_IDS:
            raise GGUFError(f"metadata key {key!r}: unknown array element type {etype} (expected 0..12)")
        etype = ValueType(etype)
        n = cur.u64(f"metadata key {key!r}: array length")
        if etype == ValueType.STRING:
            # each string costs at least its 8-byte length prefix
            if n > cur.left() // 8:
                raise GGUFError(f"metadata key {key!r}: array of {n} strings cannot fit in the "
                                f"{cur.left()} bytes left")
            if not self._keep_strings:
                return etype, self._skip_string_array(cur, key, n)
            return etype, self._read_string_array(cur, key, n)
        _, size, dtype = _FIXED[etype]
        if n > cur.left() // size:
            raise GGUFError(f"metadata key {key!r}: array of {n} {etype.name.lower()} needs {n * size} "
                            f"bytes but only {cur.left()} are left")
        arr = np.frombuffer(cur.mv, dtype=np.uint8, count=n * size, offset=cur.pos)  # (n * size,)
        cur.pos += n * size
        if etype == ValueType.BOOL and n and int(arr.max()) > 1:
            raise GGUFError(f"metadata key {key!r}: bool array holds a value other than 0 or 1")
        # copied so the metadata is aligned, writable and does not pin the caller's buffer
        return etype, arr.view(dtype).copy()  # (n,)

    @classmethod
    def _skip_string_array(cls, cur: _Cursor, key: str, n: int) -> SkippedStrings:
        """The bounds checks of _read_string_array, nothing kept (no UTF-8 check: never decoded)."""
        cls._string_offsets(cur, key, n)  # (its offsets: a transient n x 8 bytes, at parse time)
        return SkippedStrings(n)

    @staticmethod
    def _string_offsets(cur: _Cursor, key: str, n: int) -> array:
        """Walk n length-prefixed strings from cur.pos (left after them): array('q') (n + 1,) of their
        running byte totals. The hot loop of the header (Gemma: 262144 tokens). Vocabularies are
        short strings, so most of the walk is found a window at a time (_short_string_run) and only
        what that cannot prove is walked one string at a time, with the bounds checks."""
        offsets = array("q", bytes(8 * (n + 1)))  # n <= bytes left / 8: bounded by the file size
        lengths = np.frombuffer(offsets, np.int64)                            # (n + 1,): 0, then each length
        done, pos = 0, cur.pos
        while done < n:
            found, pos = _short_string_run(cur.mv, pos, cur.end, lengths[1 + done :])
            done += found
            if found < _MIN_RUN and done < n:                                 # not short strings here
                take = min(n - done, _LOOP_STEP)
                pos = _walk_strings(cur.mv, pos, cur.end, key, done, n, lengths[1 + done : 1 + done + take])
                done += take
        cur.pos = pos
        np.cumsum(lengths, out=lengths)                                       # running totals, in place
        return offsets

    def _read_string_array(self, cur: _Cursor, key: str, n: int) -> StringTable:
        # lengths first, then the bytes are gathered and checked in one vectorised pass
        mv, first = cur.mv, cur.pos
        offsets = self._string_offsets(cur, key, n)
        total = offsets[n]
        # the region is n x (8-byte length + string): gather the strings, dropping each length's
        # 8 bytes, a chunk of strings at a time (the mask stays small)
        blob = bytearray(total)
        out = np.frombuffer(blob, np.uint8)                                  # (total,)
        o = np.frombuffer(offsets, np.int64)                                 # (n + 1,)
        for c0 in range(0, n, _GATHER_CHUNK):
            c1 = min(n, c0 + _GATHER_CHUNK)
            a = first + 8 * c0 + int(o[c0])                                  # string c0's length field
            b = first + 8 * c1 + int(o[c1])
            region = np.frombuffer(mv, np.uint8, count=b - a, offset=a)      # (b - a,)
            keep = np.ones(b - a, bool)                                      # (b - a,)
            fields = o[c0:c1] - o[c0] + 8 * np.arange(c1 - c0, dtype=np.int64)  # (c1 - c0,) in region
            for k in range(8):
                keep[fields + k] = False
            np.compress(keep, region, out=out[o[c0]:o[c1]])
        del out
        errors = "surrogateescape" if _lenient_utf8(key) else "strict"
        if errors == "strict":
            _check_utf8(blob, offsets, key)
        return StringTable(blob, offsets, errors)

    def _check_key_types(self) -> None:
        """Reject known keys stored with the wrong value type (type confusion, K12/K13)."""
        checks = [(k, _KEY_TYPES[k]) for k in self.metadata if k in _KEY_TYPES]
        arch = self.metadata.get("general.architecture")
        if isinstance(arch, str):
            prefix = arch + "."
            checks += [(k, _ARCH_KEY_TYPES[k[len(prefix):]]) for k in self.metadata
                       if k.startswith(prefix) and k[len(prefix):] in _ARCH_KEY_TYPES]
        for key, (what, ok) in checks:
            vtype, etype = self.value_types[key]
            if not ok(vtype, etype):
                got = f"array of {etype.name.lower()}" if vtype == ValueType.ARRAY else vtype.name.lower()
                raise GGUFError(f"metadata key {key!r} has type {got}, expected {what}")

    def _read_alignment(self) -> int:
        align = self.metadata.get("general.alignment", DEFAULT_ALIGNMENT)  # type checked: uint32
        if align == 0 or align & (align - 1):
            raise GGUFError(f"general.alignment = {align}, expected a power of two > 0")
        return align

    def _read_tensor_info(self, cur: _Cursor, i: int) -> tuple[str, tuple[int, ...], int, int, int]:
        """(name, numpy shape, ggml type, offset relative to the data section, nbytes) of info #i."""
        raw = cur.raw_string(f"tensor info #{i}: name")
        if not 0 < len(raw) <= MAX_NAME_BYTES:
            raise GGUFError(f"tensor info #{i}: name is {len(raw)} bytes, expected 1..{MAX_NAME_BYTES}")
        try:
            name = str(raw, "utf-8")
        except UnicodeDecodeError:
            raise GGUFError(f"tensor info #{i}: name {bytes(raw)!r} is not valid UTF-8") from None
        what = f"tensor {name!r}"
        n_dims = cur.u32(f"{what}: n_dims")
        if not 1 <= n_dims <= MAX_DIMS:
            raise GGUFError(f"{what}: n_dims = {n_dims}, expected 1..{MAX_DIMS}")
        ne = [cur.u64(f"{what}: ne[{d}]") for d in range(n_dims)]  # ggml order, innermost first
        # ggml reads ne as int64: a value >= 2^63 is negative there
        for d, n in enumerate(ne):
            if not 1 <= n <= INT64_MAX:
                raise GGUFError(f"{what}: ne[{d}] = {n}, expected 1..{INT64_MAX}")
        ggml_type = cur.u32(f"{what}: type")
        qt = TYPES.get(ggml_type)
        if qt is None:
            raise GGUFError(f"{what}: unsupported ggml type {ggml_type}")
        rel_offset = cur.u64(f"{what}: offset")
        # Sizes in Python ints: a product that would wrap uint64 in C is simply large here.
        n_elements = 1
        for n in ne:
            n_elements *= n
        if n_elements > INT64_MAX:
            raise GGUFError(f"{what}: shape {tuple(reversed(ne))} has {n_elements} elements, "
                            f"more than {INT64_MAX}")
        if ne[0] % qt.block_size:
            raise GGUFError(f"{what}: ne[0] = {ne[0]} is not a multiple of the {qt.name} block "
                            f"size {qt.block_size}")
        nbytes = n_elements // qt.block_size * qt.type_size
        return name, tuple(reversed(ne)), ggml_type, rel_offset, nbytes

    def _file_nbytes(self) -> int:
        """Bytes the tensors may span: the buffer (a partial reader overrides this with the file's size)."""
        return len(self._mv)

    def _place_tensors(self, infos: list) -> None:
        """Check each tensor's offset against the alignment, the file end and its neighbours."""
        data_size = self._file_nbytes() - self.data_offset
        for name, shape, ggml_type, rel_offset, nbytes in infos:
            if rel_offset % self.alignment:
                raise GGUFError(f"tensor {name!r}: offset {rel_offset} is not a multiple of the "
                                f"alignment {self.alignment}")
            # non-wrapping form of rel_offset + nbytes <= data_size
            if rel_offset > data_size or nbytes > data_size - rel_offset:
                raise GGUFError(f"tensor {name!r}: bytes [{rel_offset}, {rel_offset + nbytes}) of the data "
                                f"section lie outside the file (data section holds {max(data_size, 0)} bytes)")
            self.tensors[name] = TensorInfo(name, shape, ggml_type, self.data_offset + rel_offset, nbytes)
        # Overlaps: sorted by start, each tensor must begin at or after the previous one's end.
        spans = sorted((t.offset, t.offset + t.nbytes, t.name) for t in self.tensors.values())
        for (_, end_a, name_a), (start_b, _, name_b) in zip(spans, spans[1:]):
            if start_b < end_a:
                raise GGUFError(f"tensor {name_b!r} at offset {start_b} overlaps tensor {name_a!r} "
                                f"(which ends at {end_a})")


def open_gguf(path: str | os.PathLike) -> GGUFFile:
    """Memory-map `path` read-only and parse it.

    A missing path, a directory or an unreadable file raise the usual OSError subclass
    (FileNotFoundError, IsADirectoryError, PermissionError), whose message names the path; a
    file that is there but is not a valid GGUF raises GGUFError prefixed with the path.
    Where mmap is unavailable (some Pyodide file systems) the file is read into memory instead.
    """
    with open(path, "rb") as f:
        size = os.fstat(f.fileno()).st_size
        if size == 0:  # mmap refuses empty files with an unhelpful ValueError
            raise GGUFError(f"{os.fspath(path)}: file is empty (0 bytes), expected a GGUF file")
        try:
            import mmap  # imported here: the parser itself must not depend on it

            # pages are read on demand; tensor views (raw()) keep the mapping alive
            buffer = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
        except (ImportError, OSError, ValueError):
            buffer = f.read()
    try:
        return GGUFFile(buffer)
    except GGUFError as e:
        raise GGUFError(f"{os.fspath(path)}: {e}") from None


# --- Writer -----------------------------------------------------------------------------------
def _pack_string(s, key: str, errors: str = "strict") -> bytes:
    """uint64 byte length + bytes. str is UTF-8 encoded; bytes are written unchanged."""
    if isinstance(s, str):
        try:
            b = s.encode("utf-8", errors)
        except UnicodeEncodeError:
            raise ValueError(f"metadata key {key!r}: string {s!r} cannot be encoded as UTF-8") from None
    elif isinstance(s, (bytes, bytearray, memoryview)):
        b = bytes(s)  # raw bytes are written as they are
    else:
        raise ValueError(f"metadata key {key!r}: expected str or bytes, got {type(s).__name__}")
    return _U64.pack(len(b)) + b


def _pack_scalar(vtype: ValueType, value, key: str) -> bytes:
    """One scalar value, range-checked (struct refuses out-of-range ints)."""
    if vtype == ValueType.STRING:
        return _pack_string(value, key)
    if vtype == ValueType.BOOL:
        if value not in (0, 1) or isinstance(value, float):
            raise ValueError(f"metadata key {key!r}: bool value {value!r}, expected True or False")
        return bytes([int(value)])
    if vtype in _INTS and not isinstance(value, (int, np.integer)):
        raise ValueError(f"metadata key {key!r}: {vtype.name.lower()} value {value!r} is not an integer")
    try:
        return _STRUCTS[vtype].pack(value)
    except (struct.error, OverflowError) as e:
        raise ValueError(f"metadata key {key!r}: {value!r} does not fit {vtype.name.lower()} ({e})") from None


def _pack_array(etype: ValueType, values, key: str) -> bytes:
    """Element type + count + elements; integer values must fit the element type exactly."""
    if etype == ValueType.ARRAY:
        raise ValueError(f"metadata key {key!r}: nested arrays are not supported")
    if etype == ValueType.STRING:
        errors = "surrogateescape" if _lenient_utf8(key) else "strict"
        parts = [_U32.pack(etype), _U64.pack(len(values))]
        if isinstance(values, StringTable):                 # read from a GGUF: its bytes as they were
            parts += [_pack_string(values.raw(i), key) for i in range(len(values))]
        else:
            parts += [_pack_string(s, key, errors) for s in values]
        return b"".join(parts)
    _, _, dtype = _FIXED[etype]
    name = etype.name.lower()
    if etype in _INTS or etype == ValueType.BOOL:
        # integers must survive the cast exactly (no silent wrap or truncation)
        lo, hi = (0, 1) if etype == ValueType.BOOL else (int(np.iinfo(dtype).min), int(np.iinfo(dtype).max))
        if isinstance(values, np.ndarray):
            if values.size and values.dtype.kind not in "biu":
                raise ValueError(f"metadata key {key!r}: {name} array given {values.dtype} values")
        else:
            # a list of Python ints: check in Python (numpy would turn [0, 2**64-1] into float64)
            values = list(values)
            if not all(isinstance(v, (int, np.integer)) for v in values):
                raise ValueError(f"metadata key {key!r}: {name} array given non-integer values")
        if len(values) and (int(min(values)) < lo or int(max(values)) > hi):
            raise ValueError(f"metadata key {key!r}: values outside the {name} range [{lo}, {hi}]")
        arr = np.array(values, dtype=dtype)  # (n,)
    else:
        arr = np.asarray(values)  # (n,)
        if arr.size and arr.dtype.kind not in "biuf":
            raise ValueError(f"metadata key {key!r}: {name} array given {arr.dtype} values")
        arr = arr.astype(dtype)
    if arr.ndim != 1:
        raise ValueError(f"metadata key {key!r}: array values must be 1-D, got shape {arr.shape}")
    return _U32.pack(etype) + _U64.pack(arr.size) + arr.tobytes()


def _as_bytes(data, name: str) -> memoryview:
    """A flat byte view of a tensor's data (bytes, bytearray, memoryview or numpy array), no copy
    unless a numpy array is not C-contiguous."""
    if isinstance(data, np.ndarray):
        data = np.ascontiguousarray(data).reshape(-1).view(np.uint8)  # (nbytes,)
    try:
        return memoryview(data).cast("B")
    except TypeError:
        raise ValueError(f"tensor {name!r}: data must be bytes-like, got {type(data).__name__}") from None


def write_gguf(fileobj, metadata: dict | Iterable, tensors: Iterable, alignment: int = DEFAULT_ALIGNMENT) -> int:
    """Write a GGUF v3 file to the binary file object `fileobj`; returns the bytes written.

    metadata: {key: (ValueType, value)} (or an iterable of (key, (ValueType, value)) pairs, in
        file order). Scalars are Python values; STRING values are str (or raw bytes); arrays are
        (ValueType.ARRAY, (element ValueType, values)) with values a sequence or a numpy array:
            {"general.architecture": (ValueType.STRING, "gemma3"),
             "tokenizer.ggml.scores": (ValueType.ARRAY, (ValueType.FLOAT32, scores))}
        GGUFFile.typed_metadata() returns this form. `general.alignment` is added when
        `alignment` is not the default.
    tensors: (name, ggml_type, shape in numpy order, bytes-like data) each; the data must be
        exactly the tensor's size (engine.quants.row_nbytes(ggml_type, shape[-1]) * rows).
    Tensor data is streamed to `fileobj` one tensor at a time, each padded to the alignment.
    """
    if not isinstance(alignment, int) or alignment <= 0 or alignment & (alignment - 1):
        raise ValueError(f"alignment = {alignment!r}, expected a power of two > 0")
    items = list(metadata.items() if isinstance(metadata, dict) else metadata)
    keys = [k for k, _ in items]
    if len(set(keys)) != len(keys):
        raise ValueError("metadata has duplicate keys")
    if "general.alignment" in keys:
        given = dict(items)["general.alignment"]
        if tuple(given) != (ValueType.UINT32, alignment):
            raise ValueError(f"general.alignment = {given!r} disagrees with alignment={alignment}")
    elif alignment != DEFAULT_ALIGNMENT:
        items.append(("general.alignment", (ValueType.UINT32, alignment)))

    # 1. Metadata pairs, packed in memory (small next to the tensors; Gemma's are ~4 MB)
    parts = []
    for key, (vtype, value) in items:
        if not isinstance(key, str) or not key or "\x00" in key:
            raise ValueError(f"metadata key {key!r}: expected a non-empty str without NUL")
        vtype = ValueType(vtype)
        parts.append(_pack_string(key, key))
        parts.append(_U32.pack(vtype))
        if vtype == ValueType.ARRAY:
            etype, values = value
            parts.append(_pack_array(ValueType(etype), values, key))
        else:
            parts.append(_pack_scalar(vtype, value, key))

    # 2. Tensor infos, offsets relative to the data section, each tensor padded to the alignment
    tensors = list(tensors)
    names = set()
    datas = []
    offset = 0
    for name, ggml_type, shape, data in tensors:
        if name in names:
            raise ValueError(f"tensor {name!r} appears twice")
        names.add(name)
        if not isinstance(name, str) or not 0 < len(name.encode("utf-8")) <= MAX_NAME_BYTES:
            raise ValueError(f"tensor {name!r}: name must be 1..{MAX_NAME_BYTES} bytes of UTF-8")
        if ggml_type not in TYPES:
            raise ValueError(f"tensor {name!r}: unknown ggml type {ggml_type}")
        shape = tuple(int(d) for d in shape)
        if not 1 <= len(shape) <= MAX_DIMS or min(shape) < 1:
            raise ValueError(f"tensor {name!r}: shape {shape}, expected 1..{MAX_DIMS} positive dims")
        rows = 1
        for d in shape[:-1]:
            rows *= d
        nbytes = row_nbytes(ggml_type, shape[-1]) * rows
        mv = _as_bytes(data, name)
        if len(mv) != nbytes:
            raise ValueError(f"tensor {name!r}: {len(mv)} bytes of data, expected {nbytes} for "
                             f"{TYPES[ggml_type].name} {shape}")
        parts.append(_pack_string(name, name))
        parts.append(_U32.pack(len(shape)))
        parts.extend(_U64.pack(d) for d in reversed(shape))  # ggml order, innermost first
        parts.append(_U32.pack(ggml_type))
        parts.append(_U64.pack(offset))
        datas.append(mv)
        offset += nbytes + (-nbytes % alignment)

    # 3. Header, then padding, then the data section. Every tensor is padded, the last one too,
    #    as gguf-py's GGUFWriter does, so both writers produce identical bytes.
    header = GGUF_MAGIC + _U32.pack(3) + _U64.pack(len(tensors)) + _U64.pack(len(items))
    head = header + b"".join(parts)
    head += bytes(-len(head) % alignment)
    fileobj.write(head)
    written = len(head)
    for mv in datas:
        fileobj.write(mv)
        pad = -len(mv) % alignment
        fileobj.write(bytes(pad))
        written += len(mv) + pad
    return written


def _short_string_run(mv, pos: int, end: int, out: np.ndarray) -> tuple[int, int]:
    """The strings from `pos` whose lengths are 1..255, as far as one window proves them: (how many,
    the position after them); their lengths go into out[:how many] (at most len(out)).

    A length of 1..255 is a nonzero byte followed by seven zero bytes. Every position of the window that
    looks so is a candidate; the walk from `pos` is proven for as long as each candidate plus its 8
    + length bytes is the next candidate. It stops at the first that is not (an empty or long
    string, a zero byte inside one, the window's end), and the caller walks on from there: nothing
    here is taken on trust, so the result is the loop's, bounds included (every proven string ends
    inside the window, which ends inside the file)."""
    w = min(end - pos, _SCAN_BYTES, len(out) * (8 + 255) + 1)   # no further than len(out) such strings reach
    if w < 9 or len(out) == 0:
        return 0, pos
    b = np.frombuffer(mv, np.uint8, count=w, offset=pos)                      # (w,)
    # candidate q: the 8 bytes from q read as a little-endian 1..255, with its string's first byte in
    # the window; eight strided uint64 views of the window, one per byte offset
    looks = np.zeros(w, bool)                                                 # (w,)
    for r in range(8):
        k = (w - 1 - r) // 8                                                  # q = r + 8 j <= w - 9
        if k > 0:
            v = np.frombuffer(mv, np.uint64, count=k, offset=pos + r)         # (k,) unaligned: fine
            looks[r : r + 8 * k : 8] = (v - _ONE64) < _LIMIT64                # 1..255 (0 wraps round)
    cand = np.flatnonzero(looks)                                              # (m,)
    if len(cand) == 0 or cand[0] != 0:
        return 0, pos
    nxt = cand + 8 + b[cand]                                                  # (m,) where each string ends
    bad = np.flatnonzero(nxt[:-1] != cand[1:])                               # (<= m - 1,) where the chain breaks
    found = min(int(bad[0]) + 1 if len(bad) else len(cand), len(out))
    if nxt[found - 1] > w:                                                    # its last string runs out of the window
        found -= 1
    out[:found] = b[cand[:found]]
    return found, pos + (int(nxt[found - 1]) if found else 0)


def _walk_strings(mv, pos: int, end: int, key: str, first: int, n: int, out: np.ndarray) -> int:
    """Strings #first.. of n one at a time, len(out) of them, their lengths into out, with a bounds
    check each (the errors name the string): the position after them."""
    unpack = _U64.unpack_from
    for j in range(len(out)):
        if end - pos < 8:
            raise GGUFError(f"metadata key {key!r}: string #{first + j} of {n} runs past the end of the file")
        (length,) = unpack(mv, pos)
        pos += 8
        if length > end - pos:
            raise GGUFError(f"metadata key {key!r}: string #{first + j} has length {length} but only "
                            f"{end - pos} bytes are left")
        pos += length
        out[j] = length
    return pos

