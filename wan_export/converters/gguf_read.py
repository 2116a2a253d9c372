"""Read a GGUF file as a lazy tensor source, dequantizing each tensor on read.

Accepts our files, city96's (native 5-D or folded with `comfy.gguf.orig_shape`),
prefixed or bare names (prefixes are stripped later by `layouts`). Shapes are in
torch order: `comfy.gguf.orig_shape.<name>` when present, else reversed ne, as
ComfyUI-GGUF does. Tensors come back as float32 arrays, and a tensor's mapped
pages leave this process once its array is gone (as safetensors_io does), so
streaming through a file keeps RSS near the largest tensor. Any corrupt or
truncated file is a BadInputError naming it.
"""
from __future__ import annotations

import math
import mmap
import os
import weakref

import numpy as np

from wan_export.errors import BadInputError, UnsupportedError
from wan_export.quantizers.ggml import GGML_BY_ID, GGML_TYPES
from wan_export.safetensors_io import TensorInfo

ORIG_SHAPE = "comfy.gguf.orig_shape."


def _type_name(type_id: int) -> str:
    if type_id in GGML_BY_ID:
        return GGML_BY_ID[type_id].name
    from gguf import GGMLQuantizationType

    try:
        return GGMLQuantizationType(type_id).name
    except ValueError:
        return f"type{type_id}"


def _bf16(raw: np.ndarray) -> np.ndarray:
    return (raw.view(np.uint16).astype(np.uint32) << 16).view(np.float32)


def dequantize_rows(raw: np.ndarray, type_name: str, ne0: int) -> np.ndarray:
    """ggml bytes (or F32/F16 values) -> float32 [rows, ne0]: ours, else gguf-py's."""
    if type_name == "F32":
        return np.asarray(raw).view(np.float32).reshape(-1, ne0)
    if type_name == "F16":
        return np.asarray(raw).view(np.float16).astype(np.float32).reshape(-1, ne0)
    if type_name == "BF16":
        return _bf16(np.ascontiguousarray(raw).reshape(-1)).reshape(-1, ne0)
    rows = np.ascontiguousarray(raw).view(np.uint8)
    t = GGML_TYPES.get(type_name)
    if t is not None:
        rows = rows.reshape(-1, t.row_bytes(ne0))
        try:
            from wan_export.quantizers.ggml import dequantize

            return dequantize(rows, type_name)
        except (ImportError, AttributeError):
            pass          # our quantizer module for this type is not there: gguf-py's is bit-exact too
    from gguf import GGML_QUANT_SIZES, GGMLQuantizationType, quants

    try:
        qtype = GGMLQuantizationType[type_name]
        block, size = GGML_QUANT_SIZES[qtype]
        return quants.dequantize(rows.reshape(-1, ne0 // block * size), qtype).reshape(-1, ne0)
    except (KeyError, NotImplementedError):
        raise UnsupportedError(f"cannot dequantize ggml type {type_name}") from None


def _mapping(arr: np.ndarray):
    """The mmap.mmap an array views (np.memmap keeps it as its base), or None."""
    base = arr
    while isinstance(base, np.ndarray):
        base = base.base
    return base if isinstance(base, mmap.mmap) else None


def _drop_pages(mm: mmap.mmap, start: int, length: int) -> None:
    """Unmap pages from this process; they stay in the page cache (safe on a read-only shared map)."""
    try:
        mm.madvise(mmap.MADV_DONTNEED, start, length)
    except (ValueError, OSError, AttributeError):    # map closed, or no madvise on this platform
        pass


class GGUFSource:
    """A `.gguf` file read lazily (mmap) through gguf-py's GGUFReader."""

    def __init__(self, path: str):
        self.path = str(path)
        try:
            from gguf import GGUFReader

            self._reader = GGUFReader(self.path, "r")
        except OSError as e:
            raise BadInputError(f"cannot read: {e.strerror or e}", self.path) from None
        except Exception as e:   # gguf-py raises ValueError/KeyError/IndexError... on damaged headers
            first = (str(e).strip().splitlines() or [type(e).__name__])[0]
            raise BadInputError(f"corrupt or truncated GGUF ({first})", self.path) from None
        self._tensors = {t.name: t for t in self._reader.tensors}
        self._check_bounds()
        self.metadata = self._scalar_kvs()
        self._shapes = {name: self._logical_shape(t) for name, t in self._tensors.items()}

    def _check_bounds(self) -> None:
        size = os.path.getsize(self.path)
        for t in self._tensors.values():
            if t.data_offset + t.n_bytes > size:
                raise BadInputError(f"truncated: tensor {t.name!r} ends at byte {t.data_offset + t.n_bytes} "
                                    f"of {size}", self.path)

    def _scalar_kvs(self) -> dict:
        from gguf import GGUFValueType

        out = {}
        for key, f in self._reader.fields.items():
            if key.startswith("GGUF.") or not f.types or f.types[0] == GGUFValueType.ARRAY:
                continue
            out[key] = f.contents()
        return out

    def field(self, key: str):
        """The raw gguf-py ReaderField of a KV, or None."""
        return self._reader.get_field(key)

    def _logical_shape(self, t) -> tuple[int, ...]:
        ne = tuple(int(d) for d in t.shape)
        f = self.field(ORIG_SHAPE + t.name)
        if f is None:
            return tuple(reversed(ne))
        from gguf import GGUFValueType

        if f.types != [GGUFValueType.ARRAY, GGUFValueType.INT32]:
            raise BadInputError(f"{ORIG_SHAPE}{t.name} must be an array of INT32 "
                                f"(ComfyUI-GGUF raises TypeError otherwise)", self.path)
        shape = tuple(int(v) for v in f.contents())
        if math.prod(shape) != t.n_elements or any(s < 0 for s in shape):
            raise BadInputError(f"{ORIG_SHAPE}{t.name} = {list(shape)} does not hold the tensor's "
                                f"{t.n_elements} elements", self.path)
        return shape

    def names(self) -> list[str]:
        return list(self._tensors)

    def infos(self) -> list[TensorInfo]:
        return [TensorInfo(n, self._shapes[n], "F32") for n in self._tensors]

    def shape(self, name: str) -> tuple[int, ...]:
        """Torch-order (logical) shape, as ComfyUI-GGUF sees it."""
        return self._shapes[name]

    def array_keys(self) -> list[str]:
        """Keys of ARRAY-typed KVs (sd.cpp's fallback reader mis-parses them)."""
        from gguf import GGUFValueType

        return [k for k, f in self._reader.fields.items() if f.types and f.types[0] == GGUFValueType.ARRAY]

    def ggml_type(self, name: str) -> str:
        return _type_name(int(self._tensors[name].tensor_type))

    def ne(self, name: str) -> tuple[int, ...]:
        return tuple(int(d) for d in self._tensors[name].shape)

    def raw(self, name: str) -> np.ndarray:
        """The stored bytes of a tensor (uint8, a view of the mapped file)."""
        t = self._tensors[name]
        return self._reader.data[t.data_offset: t.data_offset + t.n_bytes]

    def read(self, name: str) -> np.ndarray:
        t, ne = self._tensors[name], self.ne(name)
        x = dequantize_rows(t.data, self.ggml_type(name), ne[0] if ne else 1).reshape(self._shapes[name])
        mm = _mapping(self._reader.data)
        if mm is not None and t.n_bytes:
            page = t.data_offset - t.data_offset % mmap.PAGESIZE
            args = (mm, page, t.data_offset + t.n_bytes - page)
            if np.may_share_memory(x, t.data):       # F32: a view, released when the caller drops it
                weakref.finalize(x, _drop_pages, *args).atexit = False
            else:
                _drop_pages(*args)
        return x

    def close(self) -> None:
        self._reader = None
