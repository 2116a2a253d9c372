"""Lazy safetensors reading and header-first streaming writing, with numpy only.

The reader parses and validates the header itself (so a corrupt file gets a
clear error naming it) and maps tensor data with mmap; a tensor's pages are
dropped from this process once its array is garbage collected, so streaming
through a file keeps RSS near the largest tensor. The writer computes the
whole header from shapes first, then streams tensors one at a time into a temp
file that is renamed into place only when complete. A tensor handed to it that
is still an unmodified view of a mapped source file (a rename, a merged shard)
is copied by the kernel from that file (kernel_copy.py), never through user space.
"""
from __future__ import annotations

import json
import mmap
import os
import struct
import weakref
from dataclasses import dataclass

import numpy as np

from wan_export.dtypes import ST_TO_NP, itemsize, st_code
from wan_export.errors import BadInputError, WanExportError
from wan_export.atomic import AtomicWriter, atomic_file
from wan_export.kernel_copy import RangeCopier
from wan_export.write_behind import WriteBehind

MAX_HEADER = 100 * 1024 * 1024


@dataclass(frozen=True)
class TensorInfo:
    """What a source knows about a tensor without reading it."""

    name: str
    shape: tuple[int, ...]
    dtype: str          # safetensors code: F32, BF16, F8_E4M3, ...

    @property
    def numel(self) -> int:
        n = 1
        for s in self.shape:
            n *= s
        return n

    @property
    def nbytes(self) -> int:
        return self.numel * itemsize(self.dtype)


def read_header(path: str) -> tuple[dict, dict, int]:
    """(tensor entries, __metadata__, data offset) of a safetensors file, validated."""
    try:
        size = os.path.getsize(path)
        with open(path, "rb") as f:
            head = f.read(8)
            if len(head) < 8:
                raise BadInputError("not a safetensors file (shorter than 8 bytes)", path)
            (n,) = struct.unpack("<Q", head)
            if n == 0 or n > MAX_HEADER or 8 + n > size:
                raise BadInputError(f"corrupt safetensors header (length {n}, file {size} bytes)", path)
            raw = f.read(n)
    except OSError as e:
        raise BadInputError(f"cannot read: {e.strerror}", path) from None
    try:
        header = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise BadInputError("corrupt safetensors header (not valid JSON)", path) from None
    if not isinstance(header, dict):
        raise BadInputError("corrupt safetensors header (not a JSON object)", path)
    meta = header.pop("__metadata__", None) or {}
    data_len = size - 8 - n
    for name, e in header.items():
        _check_entry(path, name, e, data_len)
    return header, meta, 8 + n


def _check_entry(path: str, name: str, e, data_len: int) -> None:
    try:
        dtype, shape, (start, end) = e["dtype"], list(e["shape"]), e["data_offsets"]
    except (TypeError, KeyError, ValueError):
        raise BadInputError(f"corrupt safetensors header entry for {name!r}", path) from None
    if dtype not in ST_TO_NP:
        raise BadInputError(f"tensor {name!r} has unsupported dtype {dtype}", path)
    numel = int(np.prod(shape, dtype=np.int64)) if shape else 1
    if any(s < 0 for s in shape) or end - start != numel * itemsize(dtype) or start < 0:
        raise BadInputError(f"tensor {name!r}: shape {shape} does not match its byte range", path)
    if end > data_len:
        raise BadInputError(f"truncated: tensor {name!r} ends at byte {end} of {data_len}", path)


class SafetensorsFile:
    """One .safetensors file read lazily through mmap.

    `read` returns a read-only view of the mapped bytes (no copy). Touched
    pages of a file mapping count toward RSS until unmapped, so each array gets
    a finalizer that drops its pages (MADV_DONTNEED) once the array and every
    view of it are gone; the bytes stay in the page cache for a later read.
    """

    def __init__(self, path: str):
        self.path = str(path)
        self._header, self.metadata, self._offset = read_header(self.path)
        self._mm = None

    def infos(self) -> list[TensorInfo]:
        items = sorted(self._header.items(), key=lambda kv: kv[1]["data_offsets"][0])
        return [TensorInfo(k, tuple(v["shape"]), v["dtype"]) for k, v in items]

    def read(self, name: str) -> np.ndarray:
        e = self._header[name]
        if self._mm is None:
            with open(self.path, "rb") as f:
                self._mm = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
            _register(self._mm, self.path)
        start, end = e["data_offsets"]
        dt = ST_TO_NP[e["dtype"]]
        offset = self._offset + start
        # views of `arr` keep `arr` alive (its base, the mmap, is not an ndarray), so the
        # finalizer runs only when the last of them is gone
        arr = np.frombuffer(self._mm, dtype=dt, count=(end - start) // dt.itemsize, offset=offset)
        if end > start:
            page = offset - offset % mmap.PAGESIZE
            weakref.finalize(arr, _drop_pages, self._mm, page, offset + (end - start) - page).atexit = False
        return arr.reshape(e["shape"])

    def close(self) -> None:
        # numpy views may still reference the map; dropping our handle lets GC unmap it
        self._mm = None


# id(mmap) -> (weak reference to it, file path, address of its first byte)
_MAPS: dict[int, tuple[weakref.ref, str, int]] = {}


def _register(mm: mmap.mmap, path: str) -> None:
    _MAPS[id(mm)] = (weakref.ref(mm), os.path.abspath(path), np.frombuffer(mm, np.uint8, count=1).ctypes.data)
    weakref.finalize(mm, _MAPS.pop, id(mm), None).atexit = False


def file_span(arr: np.ndarray) -> tuple[str, int] | None:
    """(path, byte offset) of an array that is a contiguous view of a SafetensorsFile mapping, else None."""
    if not arr.nbytes or not arr.flags.c_contiguous:
        return None
    base = arr
    while isinstance(base, np.ndarray):
        base = base.base
    mm = base.obj if isinstance(base, memoryview) else base
    entry = _MAPS.get(id(mm))
    if entry is None or entry[0]() is not mm:
        return None
    return entry[1], arr.ctypes.data - entry[2]


def _drop_pages(mm: mmap.mmap, start: int, length: int) -> None:
    """Unmap a released tensor's pages from this process; they stay in the page cache.

    Safe on a read-only shared file mapping even where a page is shared with a
    neighbouring tensor that is still alive: its next access faults the same
    bytes back in.
    """
    try:
        mm.madvise(mmap.MADV_DONTNEED, start, length)
    except (ValueError, OSError, AttributeError):    # map closed, or no madvise on this platform
        pass


def _align(n: int, a: int = 8) -> int:
    return (n + a - 1) // a * a


def build_header(infos: list[TensorInfo], metadata: dict[str, str] | None) -> bytes:
    """Header JSON for tensors laid out in the given order, padded to 8 bytes."""
    header: dict = {}
    if metadata:
        header["__metadata__"] = {str(k): str(v) for k, v in metadata.items()}
    offset = 0
    for t in infos:
        header[t.name] = {"dtype": t.dtype, "shape": list(t.shape),
                          "data_offsets": [offset, offset + t.nbytes]}
        offset += t.nbytes
    raw = json.dumps(header, separators=(",", ":")).encode("utf-8")
    return raw + b" " * (_align(len(raw) + 8) - 8 - len(raw))


class SafetensorsWriter(AtomicWriter):
    """Streaming writer: declare every tensor, then write them in that order.

    States: open -> writing -> closed. Writing a tensor out of order, with the
    wrong shape or dtype, or closing early is an error, never a silent fix.
    """

    def __init__(self, path: str, infos: list[TensorInfo], metadata: dict | None = None):
        names = [t.name for t in infos]
        if len(set(names)) != len(names):
            dups = sorted({n for n in names if names.count(n) > 1})
            raise WanExportError(f"duplicate tensor names: {', '.join(dups)}", path)
        self.path = str(path)
        self.infos = list(infos)
        self._header = build_header(self.infos, metadata)
        self._next = 0
        self._ctx = atomic_file(self.path)
        self._f = self._ctx.__enter__()
        self._f.write(struct.pack("<Q", len(self._header)))
        self._f.write(self._header)
        self._f.flush()
        self._copier = RangeCopier(self._f.fileno())
        self._behind = WriteBehind(self._f.fileno())

    def write(self, name: str, arr: np.ndarray) -> None:
        if self._next >= len(self.infos):
            raise WanExportError(f"unexpected extra tensor {name!r}", self.path)
        want = self.infos[self._next]
        if name != want.name or tuple(arr.shape) != want.shape or st_code(arr) != want.dtype:
            raise WanExportError(
                f"tensor written out of plan: got {name} {tuple(arr.shape)} {st_code(arr)}, "
                f"expected {want.name} {want.shape} {want.dtype}", self.path)
        span = file_span(arr)
        if span is not None:
            self._copier.add(span[0], span[1], arr.nbytes)
        else:
            self._copier.flush()
            _write_all(self._f.fileno(), memoryview(np.ascontiguousarray(arr).reshape(-1).view(np.uint8)))
        self._behind.advance()
        self._next += 1

    def close(self) -> None:
        if self._next != len(self.infos):
            missing = [t.name for t in self.infos[self._next:]]
            self.abort()
            raise WanExportError(f"{len(missing)} tensors never written, e.g. {missing[0]}", self.path)
        try:
            self._copier.flush()
        except BaseException as e:
            self.abort()
            raise e
        self._copier.close()
        self._ctx.__exit__(None, None, None)
        self._f = None

    def abort(self) -> None:
        if self._f is not None:
            self._copier.close()
            self._ctx.__exit__(WanExportError, WanExportError("aborted"), None)
            self._f = None


def _write_all(fd: int, view: memoryview) -> None:
    """os.write until done (the kernel copies and these writes share the fd's position)."""
    while view:
        view = view[os.write(fd, view):]
