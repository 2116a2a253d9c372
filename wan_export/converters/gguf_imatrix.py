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

import numpy as np

from wan_export.errors import BadInputError
from wan_export.hashing import file_sha256

PREFIXES = ("model.diffusion_model.", "model.high_noise_diffusion_model.")     # sd.cpp names
SUMS, COUNTS = ".in_sum2", ".counts"
CALIB_KEY = "wan_export.calibration"      # calibration.calibfile.META_KEY, without importing torch


def _stock(name: str) -> str:
    for p in PREFIXES:
        if name.startswith(p):
            return name[len(p):]
    return name


def sha256(path: str) -> str:
    return file_sha256(path)


def _from_gguf(path: str, expert: str | None = None) -> dict[str, np.ndarray]:
    from wan_export.converters.gguf_read import GGUFSource

    src = GGUFSource(path)
    names = {i.name for i in src.infos()}
    # a file holding both A14B experts (sd.cpp names): take this expert's entries
    high = any(n.startswith(PREFIXES[1]) for n in names)
    wanted = PREFIXES[1] if high and expert == "high_noise" else PREFIXES[0] if high else ""
    out = {}
    for name in sorted(n for n in names if n.endswith(SUMS) and n.startswith(wanted)):
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


def _from_safetensors(path: str, expert: str | None = None) -> dict[str, np.ndarray]:
    from wan_export.safetensors_io import SafetensorsFile

    f = SafetensorsFile(path)
    out = {}
    if CALIB_KEY in (f.metadata or {}):
        raise BadInputError("a wan-export calibration file: read it with load_imatrix", path)
    for info in f.infos():
        if info.dtype not in ("F32", "F16", "BF16", "F64") or len(info.shape) != 1:
            raise BadInputError(f"imatrix entry {info.name!r} must be a 1-D float vector, "
                                f"got {info.dtype} {list(info.shape)}", path)
        out[_stock(info.name)] = np.array(f.read(info.name), dtype=np.float32)
    return out


READERS = {".gguf": _from_gguf, ".safetensors": _from_safetensors}


def _calib_file(path: str):
    """The opened CALIB file when `path` is one (wan-export calibrate output), else None."""
    from wan_export.calibration.calibfile import read_calib
    from wan_export.safetensors_io import read_header

    if not str(path).endswith(".safetensors"):
        return None
    _, metadata, _ = read_header(str(path))
    return read_calib(str(path)) if CALIB_KEY in (metadata or {}) else None


def load_imatrix(path: str, shapes: dict[str, tuple[int, ...]], expert: str | None = None) -> dict[str, np.ndarray]:
    """Read and check an imatrix against the model's stock shapes: name -> float32 [ne0].

    A CALIB file (`wan-export calibrate`) gives sum2 / count of the expert's layers and
    must cover every block Linear of the model.
    """
    calib = _calib_file(path)
    if calib is not None:
        from wan_export.calibration.imatrix import importance

        entries = importance(calib, shapes, expert, str(path))
        return _checked(entries, shapes, path)
    reader = next((r for suffix, r in READERS.items() if str(path).endswith(suffix)), None)
    if reader is None:
        raise BadInputError("unknown imatrix format (expected .gguf from llama-imatrix or .safetensors)", path)
    try:
        entries = reader(str(path), expert)
    except BadInputError as e:
        raise BadInputError(e.message, path) from None
    return _checked(entries, shapes, path)


def _checked(entries: dict[str, np.ndarray], shapes: dict[str, tuple[int, ...]], path: str) -> dict[str, np.ndarray]:
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
