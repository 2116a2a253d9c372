"""Tensor dtypes: safetensors codes, numpy (+ml_dtypes) dtypes and torch dtypes.

Tensors travel through the pipeline as numpy arrays (bf16 and fp8 via
ml_dtypes), so renames and casts never import torch. `to_torch`/`from_torch`
bridge to the reference model when it is needed.
"""
from __future__ import annotations

import ml_dtypes
import numpy as np

# safetensors dtype code -> numpy dtype
ST_TO_NP: dict[str, np.dtype] = {
    "F64": np.dtype(np.float64),
    "F32": np.dtype(np.float32),
    "F16": np.dtype(np.float16),
    "BF16": np.dtype(ml_dtypes.bfloat16),
    "F8_E4M3": np.dtype(ml_dtypes.float8_e4m3fn),
    "F8_E5M2": np.dtype(ml_dtypes.float8_e5m2),
    "I64": np.dtype(np.int64),
    "I32": np.dtype(np.int32),
    "I16": np.dtype(np.int16),
    "I8": np.dtype(np.int8),
    "U8": np.dtype(np.uint8),
    "BOOL": np.dtype(np.bool_),
}
NP_TO_ST = {v: k for k, v in ST_TO_NP.items()}

# user-facing names (CLI --dtype) -> safetensors code
DTYPE_NAMES = {"fp32": "F32", "fp16": "F16", "bf16": "BF16", "fp8_e4m3fn": "F8_E4M3", "fp8_e5m2": "F8_E5M2"}
FLOAT_CODES = ("F64", "F32", "F16", "BF16", "F8_E4M3", "F8_E5M2")
FP8_CODES = ("F8_E4M3", "F8_E5M2")

# torch dtype attribute names, resolved lazily so importing this module never imports torch
_ST_TO_TORCH = {"F64": "float64", "F32": "float32", "F16": "float16", "BF16": "bfloat16",
                "F8_E4M3": "float8_e4m3fn", "F8_E5M2": "float8_e5m2", "I64": "int64",
                "I32": "int32", "I16": "int16", "I8": "int8", "U8": "uint8", "BOOL": "bool"}


def st_code(arr_or_dtype) -> str:
    """safetensors code of a numpy array or dtype."""
    dt = np.dtype(getattr(arr_or_dtype, "dtype", arr_or_dtype))
    try:
        return NP_TO_ST[dt]
    except KeyError:
        raise TypeError(f"dtype {dt} has no safetensors code") from None


def itemsize(code: str) -> int:
    return ST_TO_NP[code].itemsize


def _fast_f16():
    """wan_export.cast_jit when numba imports (the `fast` extra) and WAN_EXPORT_NUMBA is not 0."""
    from wan_export.quantizers.ggml.kquants import jit
    if jit() is None:
        return None
    from wan_export import cast_jit
    return cast_jit


def cast(arr: np.ndarray, code: str) -> np.ndarray:
    """Cast to a safetensors dtype code (round-to-nearest-even, like torch)."""
    target = ST_TO_NP[code]
    if arr.dtype == target:
        return arr
    if code == "F16" and arr.dtype in (ST_TO_NP["BF16"], ST_TO_NP["F32"]) and _fast_f16() is not None:
        return _fast_f16().to_f16(arr, arr.dtype == ST_TO_NP["BF16"])
    if arr.dtype.itemsize <= 2 and target.itemsize <= 2 and arr.dtype != np.float32:
        # bf16 <-> fp16 <-> fp8 go through float32 exactly as torch does
        return arr.astype(np.float32).astype(target)
    return arr.astype(target)


def to_torch(arr: np.ndarray):
    """numpy (incl. ml_dtypes) -> torch tensor, sharing memory where possible."""
    import torch

    code = st_code(arr)
    tdt = getattr(torch, _ST_TO_TORCH[code])
    if code in ("BF16", "F8_E4M3", "F8_E5M2"):
        raw = np.ascontiguousarray(arr).view(np.int16 if code == "BF16" else np.uint8)
        return torch.from_numpy(raw).view(tdt)
    return torch.from_numpy(np.ascontiguousarray(arr))


def torch_code(tdtype) -> str:
    """safetensors code of a torch dtype."""
    name = str(tdtype).removeprefix("torch.")
    for code, n in _ST_TO_TORCH.items():
        if n == name:
            return code
    raise TypeError(f"unsupported torch dtype {tdtype}")


def from_torch(t) -> np.ndarray:
    """torch tensor -> numpy (incl. ml_dtypes), without a float32 detour."""
    import torch

    t = t.detach().cpu().contiguous()
    code = torch_code(t.dtype)
    if code == "BF16":
        return t.view(torch.int16).numpy().view(ml_dtypes.bfloat16)
    if code in FP8_CODES:
        return t.view(torch.uint8).numpy().view(ST_TO_NP[code])
    return t.numpy()


def torch_dtype(code: str):
    import torch

    return getattr(torch, _ST_TO_TORCH[code])
