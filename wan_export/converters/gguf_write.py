"""GGUF v3 files, header first: layout from shapes, then tensor data streamed in order.

`Layout` computes the whole header (KVs, tensor infos with aligned offsets) and
the file size from names, shapes and ggml types alone, so sizes of full-size
models need no data. `GGUFFileWriter` writes that header into a temp file, then
takes tensors strictly in plan order (empty -> data -> closed) and renames the
file into place only when every tensor has been written.
"""
from __future__ import annotations

import math
import struct
from dataclasses import dataclass

import numpy as np

from wan_export.atomic import AtomicWriter, atomic_file
from wan_export.errors import WanExportError
from wan_export.quantizers.ggml import GGML_TYPES
from wan_export.write_behind import WriteBehind

MAGIC = b"GGUF"
VERSION = 3
ALIGNMENT = 32            # GGUF_DEFAULT_ALIGNMENT; we never write general.alignment
MAX_NAME = 63             # ggml's GGML_MAX_NAME (64) includes the NUL

# GGUF value types we write (gguf-py GGUFValueType ids)
UINT32, INT32, BOOL, STRING, ARRAY = 4, 5, 7, 8, 9


@dataclass(frozen=True)
class KV:
    """One metadata key: a UINT32, INT32, BOOL, STRING, or an ARRAY of INT32."""

    key: str
    vtype: int
    value: object

    def encode(self) -> bytes:
        return _str(self.key) + struct.pack("<I", self.vtype) + _value(self.vtype, self.value)


def _str(s: str) -> bytes:
    b = s.encode("utf-8")
    return struct.pack("<Q", len(b)) + b


_SCALARS = {UINT32: "<I", INT32: "<i", BOOL: "<?"}


def _value(vtype: int, v) -> bytes:
    if vtype == STRING:
        return _str(v)
    if vtype in _SCALARS:
        return struct.pack(_SCALARS[vtype], v)
    if vtype == ARRAY:       # only INT32 arrays (comfy.gguf.orig_shape) are needed
        return struct.pack("<IQ", INT32, len(v)) + b"".join(struct.pack("<i", int(x)) for x in v)
    raise ValueError(f"unsupported GGUF value type {vtype}")


def string(key: str, value: str) -> KV:
    return KV(key, STRING, value)


def uint32(key: str, value: int) -> KV:
    return KV(key, UINT32, int(value))


def int32_array(key: str, values) -> KV:
    return KV(key, ARRAY, tuple(int(v) for v in values))


@dataclass(frozen=True)
class TensorEntry:
    """A tensor as stored: name, torch-order stored shape (ne reversed) and ggml type."""

    name: str
    shape: tuple[int, ...]
    ggml: str

    @property
    def ne(self) -> tuple[int, ...]:
        return tuple(reversed(self.shape))

    @property
    def nbytes(self) -> int:
        t = GGML_TYPES[self.ggml]
        n = math.prod(self.shape)
        if self.shape and self.shape[-1] % t.block_size:
            raise ValueError(f"{self.name}: row length {self.shape[-1]} does not fit {self.ggml}")
        return n // t.block_size * t.type_size

    def encode(self, offset: int) -> bytes:
        ne = self.ne
        return (_str(self.name) + struct.pack("<I", len(ne)) + struct.pack(f"<{len(ne)}Q", *ne)
                + struct.pack("<IQ", GGML_TYPES[self.ggml].type_id, offset))


def _pad(n: int) -> int:
    return (n + ALIGNMENT - 1) // ALIGNMENT * ALIGNMENT


class Layout:
    """Header bytes and data offsets of a GGUF file, computed without any data."""

    def __init__(self, kvs: list[KV], tensors: list[TensorEntry]):
        names = [t.name for t in tensors]
        if len(set(names)) != len(names):
            raise ValueError("duplicate tensor names")
        long = [n for n in names if len(n.encode()) > MAX_NAME]
        if long:
            raise ValueError(f"tensor names longer than {MAX_NAME} bytes: {', '.join(long[:3])}")
        self.kvs, self.tensors = list(kvs), list(tensors)
        self.offsets, off = [], 0
        for t in self.tensors:
            self.offsets.append(off)
            off += _pad(t.nbytes)
        self.data_bytes = off
        head = MAGIC + struct.pack("<IQQ", VERSION, len(self.tensors), len(self.kvs))
        head += b"".join(kv.encode() for kv in self.kvs)
        head += b"".join(t.encode(o) for t, o in zip(self.tensors, self.offsets))
        self.header = head + b"\0" * (_pad(len(head)) - len(head))

    @property
    def file_size(self) -> int:
        return len(self.header) + self.data_bytes


class GGUFFileWriter(AtomicWriter):
    """Streams tensors into a planned Layout; atomic (temp file + rename)."""

    def __init__(self, path: str, layout: Layout):
        self.path, self.layout = str(path), layout
        self._next = 0
        self._ctx = atomic_file(self.path)
        self._f = self._ctx.__enter__()
        self._f.write(layout.header)
        self._behind = WriteBehind(self._f.fileno())

    def write(self, name: str, data) -> None:
        """Append the next tensor's bytes (any C-contiguous array or buffer) and its padding."""
        if self._f is None:
            raise WanExportError("writer is closed", self.path)
        if self._next >= len(self.layout.tensors):
            raise WanExportError(f"unexpected extra tensor {name!r}", self.path)
        want = self.layout.tensors[self._next]
        buf = memoryview(np.ascontiguousarray(data).reshape(-1).view(np.uint8))
        if name != want.name or buf.nbytes != want.nbytes:
            raise WanExportError(f"tensor written out of plan: got {name} ({buf.nbytes} bytes), "
                                 f"expected {want.name} ({want.nbytes} bytes)", self.path)
        self._f.write(buf)
        self._f.write(b"\0" * (_pad(buf.nbytes) - buf.nbytes))
        self._behind.advance()
        self._next += 1

    def close(self) -> None:
        if self._f is None:
            return
        if self._next != len(self.layout.tensors):
            missing = self.layout.tensors[self._next].name
            self.abort()
            raise WanExportError(f"{len(self.layout.tensors) - self._next} tensors never written, "
                                 f"e.g. {missing}", self.path)
        self._f = None
        self._ctx.__exit__(None, None, None)

    def abort(self) -> None:
        if self._f is not None:
            self._f = None
            self._ctx.__exit__(WanExportError, WanExportError("aborted"), None)
