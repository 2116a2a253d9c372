"""Stream tensors from a lazy table into safetensors files (single or sharded).

The one export loop every safetensors writer shares: plan names, dtypes and
shapes first, then read, check (NaN/Inf), cast and write one tensor at a time,
so peak memory stays near the largest tensor.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass
from typing import Callable

import numpy as np

from wan_export.dtypes import FLOAT_CODES, cast
from wan_export.errors import BadInputError
from wan_export.safetensors_io import SafetensorsWriter, TensorInfo

Reader = Callable[[], np.ndarray]
Progress = Callable[[int], None]


@dataclass(frozen=True)
class Planned:
    """One output tensor: its output name and dtype, and how to read it."""

    name: str
    shape: tuple[int, ...]
    dtype: str
    read: Reader
    source_name: str = ""

    @property
    def info(self) -> TensorInfo:
        return TensorInfo(self.name, self.shape, self.dtype)


# code -> (unsigned view, mask dropping the sign, |bits| from which a value is NaN/Inf)
_NONFINITE_ABS = {"F32": (np.uint32, 0x7FFFFFFF, 0x7F800000), "F16": (np.uint16, 0x7FFF, 0x7C00),
                  "BF16": (np.uint16, 0x7FFF, 0x7F80), "F8_E5M2": (np.uint8, 0x7F, 0x7C),
                  "F8_E4M3": (np.uint8, 0x7F, 0x7F)}     # E4M3 has no inf; NaN is S.1111.111
_CHUNK_BYTES = 256 << 10     # cache-sized pieces: one pass over the source, no full-size temporaries


def nonfinite_count(arr: np.ndarray, code: str) -> int:
    """Number of NaN/Inf values, from the exponent bits, in cache-sized chunks.

    Reads the array in place (a mapped source is checked straight from its pages);
    the only temporary is one chunk, and values are counted only in a chunk that
    has any.
    """
    if code == "F64":
        return int(arr.size - np.count_nonzero(np.isfinite(arr)))
    if code not in _NONFINITE_ABS or arr.size == 0:
        return 0
    view, mask, limit = _NONFINITE_ABS[code]
    flat = np.ascontiguousarray(arr).reshape(-1).view(view)
    step = _CHUNK_BYTES // flat.itemsize
    buf = np.empty(min(step, flat.size), view)
    bad = 0
    for a in range(0, flat.size, step):
        b = buf[:min(step, flat.size - a)]
        np.bitwise_and(flat[a:a + step], mask, out=b)
        if b.max() >= limit:
            bad += int(np.count_nonzero(b >= limit))
    return bad


def check_finite(arr: np.ndarray, code: str, name: str, path: str) -> None:
    """Refuse a float tensor holding NaN/Inf, naming the tensor and its file."""
    if code in FLOAT_CODES:
        bad = nonfinite_count(np.ascontiguousarray(arr), code)
        if bad:
            raise BadInputError(f"tensor {name} has {bad} NaN/Inf values", path)


def read_checked(p: Planned, src_dtype: str, path: str) -> np.ndarray:
    """Read a planned tensor, refuse NaN/Inf, and cast it to its output dtype."""
    arr = p.read()
    check_finite(arr, src_dtype, p.source_name or p.name, path)
    if tuple(arr.shape) != p.shape:
        raise BadInputError(f"tensor {p.source_name or p.name} has shape {list(arr.shape)}, "
                            f"expected {list(p.shape)}", path)
    out = cast(arr, p.dtype)
    if p.dtype in FLOAT_CODES and src_dtype in FLOAT_CODES and p.dtype != src_dtype:
        bad = nonfinite_count(np.ascontiguousarray(out), p.dtype)
        if bad:
            raise BadInputError(f"tensor {p.source_name or p.name} overflows {p.dtype} "
                                f"({bad} values become Inf)", path)
    return out


def write_file(path: str, plan: list[Planned], src_dtypes: dict[str, str], *, source_path: str,
               metadata: dict | None = None, progress: Progress | None = None) -> None:
    """Write planned tensors into one safetensors file, atomically."""
    with SafetensorsWriter(path, [p.info for p in plan], metadata) as w:
        for p in plan:
            w.write(p.name, read_checked(p, src_dtypes[p.name], source_path))
            if progress:
                progress(1)


def shard_plan(plan: list[Planned], max_bytes: int) -> list[list[Planned]]:
    """Greedy split into shards of at most max_bytes (a bigger tensor gets its own shard)."""
    shards: list[list[Planned]] = [[]]
    size = 0
    for p in plan:
        n = p.info.nbytes
        if shards[-1] and size + n > max_bytes:
            shards.append([])
            size = 0
        shards[-1].append(p)
        size += n
    return shards


def write_sharded(folder: str, stem: str, plan: list[Planned], src_dtypes: dict[str, str], *,
                  max_bytes: int, source_path: str, metadata: dict | None = None,
                  progress: Progress | None = None) -> list[str]:
    """`stem.safetensors`, or `stem-0000k-of-0000n.safetensors` + `stem.safetensors.index.json`."""
    shards = shard_plan(plan, max_bytes)
    if len(shards) == 1:
        name = f"{stem}.safetensors"
        write_file(os.path.join(folder, name), plan, src_dtypes, source_path=source_path,
                   metadata=metadata, progress=progress)
        return [name]
    names, weight_map = [], {}
    for k, shard in enumerate(shards, 1):
        name = f"{stem}-{k:05d}-of-{len(shards):05d}.safetensors"
        write_file(os.path.join(folder, name), shard, src_dtypes, source_path=source_path,
                   metadata=metadata, progress=progress)
        names.append(name)
        weight_map.update({p.name: name for p in shard})
    index = {"metadata": {"total_size": sum(p.info.nbytes for p in plan)},
             "weight_map": dict(sorted(weight_map.items()))}
    with open(os.path.join(folder, f"{stem}.safetensors.index.json"), "w", encoding="utf-8") as f:
        json.dump(index, f, indent=2)
        f.write("\n")
    return names + [f"{stem}.safetensors.index.json"]
