"""Importance matrices (`--imatrix FILE`) for GGUF quantization.

One float32 vector of length in_features (ggml ne[0]) per Linear weight: the mean
squared input activation of each column, reused for every row of that weight
(as llama-quantize does). Two file formats are read:

- `.gguf`, llama.cpp's current imatrix format (the legacy `.dat` is not read):
  tensors `<name>.in_sum2` (F32, ne [in_features, 1]) and `<name>.counts`
  (F32, ne [1, 1]); importance = in_sum2 / counts. Names are stock Wan names,
  optionally prefixed as sd.cpp names them (`model.diffusion_model.`,
  `model.high_noise_diffusion_model.`).
- `.safetensors`: stock tensor name -> float32 [in_features], the importance itself.
"""
from __future__ import annotations

import hashlib

import numpy as np

from wan_export.errors import BadInputError

PREFIXES = ("model.diffusion_model.", "model.high_noise_diffusion_model.")     # sd.cpp names
SUMS, COUNTS = ".in_sum2", ".counts"


def _stock(name: str) -> str:
    for p in PREFIXES:
        if name.startswith(p):
            return name[len(p):]
    return name


def sha256(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _from_gguf(path: str) -> dict[str, np.ndarray]:
    from wan_export.converters.gguf_read import GGUFSource

    src = GGUFSource(path)
    names = {i.name for i in src.infos()}
    out = {}
    for name in sorted(n for n in names if n.endswith(SUMS)):
        base = name[: -len(SUMS)]
        if base + COUNTS not in names:
            raise BadInputError(f"imatrix entry {base!r} has {SUMS} but no {COUNTS}", path)
        sums, counts = src.read(name), src.read(base + COUNTS).reshape(-1)
        if (sums.ndim == 2 and sums.shape[0] != 1) or counts.size != 1:
            raise BadInputError(f"imatrix entry {base!r} holds {counts.size} matrices (expert weights); "
                                "a Wan DiT has one per Linear", path)
        if not counts[0] > 0:
            raise BadInputError(f"imatrix entry {base!r} has count {counts[0]}", path)
        out[_stock(base)] = (sums.reshape(-1) / counts[0]).astype(np.float32)
    if not out:
        raise BadInputError(f"not an imatrix: no '<tensor>{SUMS}' tensors", path)
    return out


def _from_safetensors(path: str) -> dict[str, np.ndarray]:
    from wan_export.safetensors_io import SafetensorsFile

    f = SafetensorsFile(path)
    out = {}
    for info in f.infos():
        if info.dtype not in ("F32", "F16", "BF16", "F64") or len(info.shape) != 1:
            raise BadInputError(f"imatrix entry {info.name!r} must be a 1-D float vector, "
                                f"got {info.dtype} {list(info.shape)}", path)
        out[_stock(info.name)] = np.array(f.read(info.name), dtype=np.float32)
    return out


READERS = {".gguf": _from_gguf, ".safetensors": _from_safetensors}


def load_imatrix(path: str, shapes: dict[str, tuple[int, ...]]) -> dict[str, np.ndarray]:
    """Read and check an imatrix against the model's stock shapes: name -> float32 [ne0]."""
    reader = next((r for suffix, r in READERS.items() if str(path).endswith(suffix)), None)
    if reader is None:
        raise BadInputError("unknown imatrix format (expected .gguf from llama-imatrix or .safetensors)", path)
    try:
        entries = reader(str(path))
    except BadInputError as e:
        raise BadInputError(e.message, path) from None
    problems = []
    for name, v in entries.items():
        if name not in shapes:
            continue
        if v.shape[0] != shapes[name][-1]:
            problems.append(f"{name}: {v.shape[0]} values for rows of {shapes[name][-1]}")
        elif not np.isfinite(v).all() or (v < 0).any():
            problems.append(f"{name}: values must be finite and >= 0")
    if problems:
        raise BadInputError(f"imatrix does not fit this model: {'; '.join(problems[:4])}", path)
    known = {k: v for k, v in entries.items() if k in shapes}
    if not known:
        raise BadInputError(f"imatrix has no entries for this model's tensors (e.g. {next(iter(entries))})", path)
    return known
