"""safetensors reader for the Hugging Face importer (a tool beside the pipeline: feeds convert.py).

Layout (huggingface/safetensors README):

    offset 0      n        uint64 little-endian: byte length of the JSON header
           8      header   n bytes of UTF-8 JSON: {"name": {"dtype": "F32", "shape": [2, 3],
                           "data_offsets": [start, end]}, ..., "__metadata__": {str: str}}
           8 + n  data     the byte buffer; offsets are relative to its start

Every number in the header is hostile until checked (shared/research/security.md §1.3); the checks,
each a SafetensorsError naming the tensor and the value:
  - the file holds at least the 8-byte length; the header is at most MAX_HEADER_BYTES (100 MB, the
    reference implementation's cap) and lies inside the file;
  - the header is UTF-8 JSON whose top level is an object starting with "{" (whitespace padding
    around it is allowed); duplicate keys, NaN/Infinity literals and too-deep nesting are rejected;
  - each entry has exactly dtype, shape, data_offsets; dtype is one we know; shape is a list of
    non-negative ints; data_offsets are two ints 0 <= start <= end;
  - element count and byte size are computed with Python ints, and end - start equals the size;
  - sorted by offset, the tensors tile the data buffer exactly: the first starts at 0, each starts
    where the previous ended (so none overlap and there are no holes) and the last ends at the end
    of the file. A zero-size tensor may share its offset with the next one (it reads no bytes).
Tensor data is never copied at parse time: `array(name)` is a numpy view of the buffer (BF16 and
F16 are widened to float32 on request with `as_float32`).
"""

from __future__ import annotations

import json
import os
import struct
from dataclasses import dataclass

import numpy as np

__all__ = ["SafetensorsError", "SafetensorsFile", "open_safetensors", "MAX_HEADER_BYTES"]

MAX_HEADER_BYTES = 100_000_000  # huggingface/safetensors MAX_HEADER_SIZE
MAX_RANK = 8                    # more dimensions than any model uses; bounds the shape loop

# dtype -> (numpy dtype, bytes per element). BF16 is read as uint16 and widened by hand.
DTYPES = {
    "F64": ("<f8", 8), "F32": ("<f4", 4), "F16": ("<f2", 2), "BF16": ("<u2", 2),
    "I64": ("<i8", 8), "I32": ("<i4", 4), "I16": ("<i2", 2), "I8": ("i1", 1),
    "U64": ("<u8", 8), "U32": ("<u4", 4), "U16": ("<u2", 2), "U8": ("u1", 1), "BOOL": ("?", 1),
}


class SafetensorsError(ValueError):
    """A safetensors file that breaks the format's rules; the message names the field."""


@dataclass(frozen=True)
class TensorEntry:
    name: str
    dtype: str
    shape: tuple[int, ...]
    start: int  # absolute byte offset in the file
    end: int


def _no_duplicates(pairs):
    keys = [k for k, _ in pairs]
    if len(set(keys)) != len(keys):
        dup = next(k for k in keys if keys.count(k) > 1)
        raise SafetensorsError(f"header has the key {dup!r} twice")
    return dict(pairs)


def _reject_constant(name):
    raise SafetensorsError(f"header holds the JSON constant {name} (not valid JSON)")


def _int(value, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise SafetensorsError(f"{what} is {value!r} (expected an integer)")
    return value


class SafetensorsFile:
    """A parsed safetensors buffer (bytes, mmap, memoryview): header checked, data as views."""

    def __init__(self, buffer):
        self._buf = buffer
        mv = memoryview(buffer).cast("B")
        size = len(mv)
        if size < 8:
            raise SafetensorsError(f"file is {size} bytes (expected at least the 8-byte header length)")
        (n,) = struct.unpack("<Q", mv[:8])  # Python int: compared before any slicing
        if n > MAX_HEADER_BYTES:
            raise SafetensorsError(f"header length {n} exceeds the {MAX_HEADER_BYTES}-byte limit")
        if n > size - 8:
            raise SafetensorsError(f"header length {n} runs past the end of the file ({size} bytes)")
        try:
            text = bytes(mv[8 : 8 + n]).decode("utf-8")
        except UnicodeDecodeError as e:
            raise SafetensorsError(f"header is not UTF-8 ({e.reason} at byte {e.start})") from None
        if not text.strip().startswith("{"):
            raise SafetensorsError("header does not start with '{' (expected a JSON object)")
        try:
            header = json.loads(text, object_pairs_hook=_no_duplicates, parse_constant=_reject_constant)
        except SafetensorsError:
            raise
        except (ValueError, RecursionError) as e:
            raise SafetensorsError(f"header is not valid JSON ({str(e)[:120]})") from None
        if not isinstance(header, dict):
            raise SafetensorsError("header is not a JSON object")

        # __metadata__ is the one entry that is not a tensor: free-form string pairs
        meta = header.pop("__metadata__", {})
        if not isinstance(meta, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in meta.items()):
            raise SafetensorsError("__metadata__ must map strings to strings")
        self.metadata: dict[str, str] = meta
        data_start, data_size = 8 + n, size - 8 - n  # offsets in the header are relative to data_start
        entries = []
        for name, e in header.items():
            if not name:
                raise SafetensorsError("a tensor has an empty name")
            if not isinstance(e, dict) or set(e) != {"dtype", "shape", "data_offsets"}:
                raise SafetensorsError(f"tensor {name!r}: entry must have exactly dtype, shape and data_offsets")
            dtype = e["dtype"]
            if not isinstance(dtype, str) or dtype not in DTYPES:
                raise SafetensorsError(f"tensor {name!r}: dtype {dtype!r} not supported "
                                       f"(expected one of {', '.join(DTYPES)})")
            shape = e["shape"]
            if not isinstance(shape, list) or len(shape) > MAX_RANK:
                raise SafetensorsError(f"tensor {name!r}: shape {shape!r} (expected a list of at most {MAX_RANK} ints)")
            count = 1
            for dim in shape:
                if _int(dim, f"tensor {name!r}: a shape entry") < 0:
                    raise SafetensorsError(f"tensor {name!r}: negative dimension {dim}")
                count *= dim  # Python int: no wrap-around
            offsets = e["data_offsets"]
            if not isinstance(offsets, list) or len(offsets) != 2:
                raise SafetensorsError(f"tensor {name!r}: data_offsets {offsets!r} (expected [start, end])")
            start, end = (_int(v, f"tensor {name!r}: data_offsets") for v in offsets)
            if not 0 <= start <= end:
                raise SafetensorsError(f"tensor {name!r}: data_offsets [{start}, {end}] (expected 0 <= start <= end)")
            if end > data_size:
                raise SafetensorsError(f"tensor {name!r}: data_offsets [{start}, {end}] lie outside the "
                                       f"{data_size}-byte data buffer")
            nbytes = count * DTYPES[dtype][1]  # exact: a forged 2**96-element shape cannot wrap to a small size
            if end - start != nbytes:
                raise SafetensorsError(f"tensor {name!r}: {end - start} bytes at data_offsets [{start}, {end}] "
                                       f"but {dtype} {tuple(shape)} needs {nbytes}")
            entries.append(TensorEntry(name, dtype, tuple(shape), data_start + start, data_start + end))

        # The tensors must tile the buffer: no overlap, no hole, nothing after the last one.
        expected = data_start
        for t in sorted(entries, key=lambda t: (t.start, t.end)):
            if t.start != expected:
                what = "overlaps the tensor before it" if t.start < expected else "leaves a hole before it"
                raise SafetensorsError(f"tensor {t.name!r} starts at data offset {t.start - data_start}, "
                                       f"expected {expected - data_start}: it {what}")
            expected = t.end
        if expected != size:
            raise SafetensorsError(f"data buffer holds {data_size} bytes but the tensors use {expected - data_start}")
        self.tensors: dict[str, TensorEntry] = {t.name: t for t in entries}

    def array(self, name: str) -> np.ndarray:
        """The tensor as stored (a view of the buffer; BF16 as raw uint16)."""
        t = self.tensors[name]
        dt, _ = DTYPES[t.dtype]
        flat = np.frombuffer(self._buf, dtype=dt, count=(t.end - t.start) // np.dtype(dt).itemsize, offset=t.start)
        return flat.reshape(t.shape)

    def as_float32(self, name: str) -> np.ndarray:
        """The tensor widened to float32 (BF16: the 16 bits become the top half of a float32)."""
        t = self.tensors[name]
        a = self.array(name)
        if t.dtype == "BF16":
            return (a.astype(np.uint32) << 16).view(np.float32)
        if t.dtype not in ("F64", "F32", "F16"):
            raise SafetensorsError(f"tensor {name!r} has dtype {t.dtype} (expected a float type)")
        return a.astype(np.float32)


def open_safetensors(path) -> SafetensorsFile:
    """Memory-map `path` read-only and parse it; errors are prefixed with the path."""
    import mmap

    with open(path, "rb") as f:
        size = os.fstat(f.fileno()).st_size
        buffer = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) if size else b""
    try:
        return SafetensorsFile(buffer)
    except SafetensorsError as e:
        raise SafetensorsError(f"{os.fspath(path)}: {e}") from None
