"""Tensor sources: list tensors without reading them, then read one at a time.

A source has `path`, `metadata`, `infos()` (name, shape, dtype) and
`read(name) -> numpy array`. Readers exist for single and sharded safetensors,
`.pth` (weights_only + mmap only) and GGUF; `open_source` picks by file type.
"""
from __future__ import annotations

import json
import os
from typing import Iterator, Protocol

import numpy as np

from wan_export.errors import BadInputError
from wan_export.safetensors_io import SafetensorsFile, TensorInfo


class Source(Protocol):
    path: str
    metadata: dict

    def infos(self) -> list[TensorInfo]: ...

    def read(self, name: str) -> np.ndarray: ...


def iter_tensors(src: Source) -> Iterator[tuple[str, np.ndarray]]:
    """Yield (name, array) one tensor at a time, in the source's order."""
    for info in src.infos():
        yield info.name, src.read(info.name)


class ShardedSource:
    """Sharded safetensors described by a `*.safetensors.index.json`."""

    def __init__(self, index_path: str):
        self.path = str(index_path)
        folder = os.path.dirname(os.path.abspath(self.path))
        try:
            with open(self.path, encoding="utf-8") as f:
                index = json.load(f)
            weight_map = index["weight_map"]
            if not isinstance(weight_map, dict):
                raise TypeError
        except OSError as e:
            raise BadInputError(f"cannot read: {e.strerror}", self.path) from None
        except (ValueError, KeyError, TypeError):
            raise BadInputError("corrupt index: expected JSON with a 'weight_map' object", self.path) from None
        self.metadata = dict(index.get("metadata") or {})
        self._shards: dict[str, SafetensorsFile] = {}
        for shard in sorted(set(weight_map.values())):
            self._shards[shard] = SafetensorsFile(_inside(folder, shard, self.path))
        self._where: dict[str, str] = {}
        self._infos: list[TensorInfo] = []
        for shard, sf in self._shards.items():
            for info in sf.infos():
                self._where[info.name] = shard
                self._infos.append(info)
        wrong = sorted(n for n, s in weight_map.items() if self._where.get(n) != s)
        if wrong:
            raise BadInputError(f"index lists {len(wrong)} tensors not found in their shard, "
                                f"e.g. {wrong[0]!r}", self.path)

    def infos(self) -> list[TensorInfo]:
        return list(self._infos)

    def read(self, name: str) -> np.ndarray:
        return self._shards[self._where[name]].read(name)


def _inside(folder: str, name: str, index_path: str) -> str:
    """Resolve a shard name, refusing any that escapes the index's folder."""
    if not isinstance(name, str) or os.path.isabs(name) or "\\" in name:
        raise BadInputError(f"shard name {name!r} escapes its folder", index_path)
    real_folder = os.path.realpath(folder)
    target = os.path.realpath(os.path.join(folder, name))
    if os.path.commonpath([real_folder, target]) != real_folder:
        raise BadInputError(f"shard name {name!r} escapes its folder", index_path)
    if not os.path.isfile(target):
        raise BadInputError(f"shard {name!r} listed in the index is missing", index_path)
    return target


_WRAPPERS = ("state_dict", "model", "module", "params")


class PthSource:
    """A `.pth` state dict, loaded with weights_only=True (and mmap when possible)."""

    def __init__(self, path: str):
        self.path = str(path)
        self.metadata = {}
        import pickle

        import torch

        try:
            try:
                obj = torch.load(self.path, map_location="cpu", weights_only=True, mmap=True)
            except RuntimeError as e:
                if "mmap" not in str(e).lower() and "zip" not in str(e).lower():
                    raise
                obj = torch.load(self.path, map_location="cpu", weights_only=True)   # legacy format
        except pickle.UnpicklingError:
            raise BadInputError("refusing to load: the pickle needs code to run "
                                "(only weights_only=True pickles are accepted)", self.path) from None
        except FileNotFoundError:
            raise BadInputError("no such file", self.path) from None
        except Exception as e:   # torch raises a zoo of types on corrupt archives
            first = (str(e).strip().splitlines() or [type(e).__name__])[0]
            raise BadInputError(f"corrupt or unreadable .pth file ({first})", self.path) from None
        while isinstance(obj, dict) and len(obj) == 1 and next(iter(obj)) in _WRAPPERS:
            obj = next(iter(obj.values()))
        if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
            raise BadInputError("not a state dict of tensors", self.path)
        self._sd = obj

    def infos(self) -> list[TensorInfo]:
        from wan_export.dtypes import torch_code

        return [TensorInfo(k, tuple(v.shape), torch_code(v.dtype)) for k, v in self._sd.items()]

    def read(self, name: str) -> np.ndarray:
        from wan_export.dtypes import from_torch

        return from_torch(self._sd[name])


# file suffix -> "module:Class"; GGUF reading lives with the GGUF converter
READERS = {
    ".safetensors": "wan_export.safetensors_io:SafetensorsFile",
    ".index.json": "wan_export.sources:ShardedSource",
    ".pth": "wan_export.sources:PthSource",
    ".pt": "wan_export.sources:PthSource",
    ".bin": "wan_export.sources:PthSource",
    ".ckpt": "wan_export.sources:PthSource",
    ".gguf": "wan_export.converters.gguf_read:GGUFSource",
}


def open_file(path: str) -> Source:
    """Open one tensor file (or an index.json) by its suffix."""
    from importlib import import_module

    path = str(path)
    if not os.path.exists(path):
        raise BadInputError("no such file or directory", path)
    for suffix, impl in READERS.items():
        if path.endswith(suffix):
            module, cls = impl.split(":")
            return getattr(import_module(module), cls)(path)
    raise BadInputError("unknown file type (expected .safetensors, index.json, .pth or .gguf)", path)


def find_model_file(folder: str) -> str | None:
    """The DiT file(s) of a folder: an index.json, else a single safetensors file."""
    names = sorted(os.listdir(folder))
    index = [n for n in names if n.endswith(".safetensors.index.json")]
    if len(index) == 1:
        return os.path.join(folder, index[0])
    st = [n for n in names if n.endswith(".safetensors")]
    if len(st) == 1:
        return os.path.join(folder, st[0])
    return None
