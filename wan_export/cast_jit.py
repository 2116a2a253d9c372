"""numba casts to float16 (the `fast` extra): the same bits as numpy's astype, at memory speed.

numpy's float32 -> float16 cast runs at ~0.1 GB/s here. This is the branch-free
round-to-nearest-even conversion of the FP16 library (what ggml's
GGML_FP32_TO_FP16 is): scale the magnitude so the hardware's float32 rounding
does the fp16 rounding, then read the fp16 exponent and mantissa off the bits.
LLVM vectorises it. bf16 sources are widened to float32 exactly by a 16-bit
shift first, as torch and numpy do. dtypes.cast uses it when numba imports.
"""
from __future__ import annotations

import numpy as np
from numba import njit

from wan_export.quantizers.ggml.jit_search import JIT, bits_f32, f32_bits

_TO_INF = np.float32(2.0 ** 112)
_TO_ZERO = np.float32(2.0 ** -110)


@njit(inline="always", **JIT)
def _half_bits(f):
    w = np.int64(f32_bits(f)) & 0xFFFFFFFF
    base = (abs(f) * _TO_INF) * _TO_ZERO
    shl1 = (w + w) & 0xFFFFFFFF
    bias = shl1 & 0xFF000000
    bias = 0x71000000 if bias < 0x71000000 else bias
    base = bits_f32(np.int32((bias >> 1) + 0x07800000)) + base
    b = np.int64(f32_bits(base))
    nonsign = ((b >> 13) & 0x7C00) + (b & 0xFFF)
    return ((w & 0x80000000) >> 16) | (0x7E00 if shl1 > 0xFF000000 else nonsign)


@njit(**JIT)
def bf16_to_f16(src, dst):
    """src, dst: uint16 views of equal size (bf16 in, float16 out)."""
    for i in range(src.size):
        dst[i] = _half_bits(bits_f32(np.int32(np.int64(src[i]) << 16)))


@njit(**JIT)
def f32_to_f16(src, dst):
    """src: float32, dst: uint16 view of the float16 output."""
    for i in range(src.size):
        dst[i] = _half_bits(src[i])


def to_f16(arr: np.ndarray, bf16: bool) -> np.ndarray:
    out = np.empty(arr.shape, np.float16)
    src = np.ascontiguousarray(arr).reshape(-1)
    if bf16:
        bf16_to_f16(src.view(np.uint16), out.reshape(-1).view(np.uint16))
    else:
        f32_to_f16(src, out.reshape(-1).view(np.uint16))
    return out
