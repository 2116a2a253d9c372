"""Our own ggml block quantizers, bit-exact with ggml's non-FMA C reference.

One small vectorised class per type (after gguf-py's quants.py): each has
`quantize_rows(x, imatrix=None) -> uint8 [rows, nbytes]` and
`dequantize_rows(q) -> float32 [rows, n]`, operating on float32 rows whose
length is a multiple of the block size. `quantize`/`dequantize` dispatch here.
"""
from __future__ import annotations

from dataclasses import dataclass
from importlib import import_module

import numpy as np


@dataclass(frozen=True)
class GGMLType:
    name: str
    type_id: int          # ggml enum value (GGUF tensor type)
    block_size: int       # elements per block
    type_size: int        # bytes per block
    impl: str | None      # "module:Class" of our quantizer; None for float types

    def row_bytes(self, n: int) -> int:
        return n // self.block_size * self.type_size


GGML_TYPES: dict[str, GGMLType] = {t.name: t for t in (
    GGMLType("F32", 0, 1, 4, None),
    GGMLType("F16", 1, 1, 2, None),
    GGMLType("BF16", 30, 1, 2, None),
    GGMLType("Q4_0", 2, 32, 18, "legacy:Q4_0"),
    GGMLType("Q4_1", 3, 32, 20, "legacy:Q4_1"),
    GGMLType("Q5_0", 6, 32, 22, "legacy:Q5_0"),
    GGMLType("Q5_1", 7, 32, 24, "legacy:Q5_1"),
    GGMLType("Q8_0", 8, 32, 34, "legacy:Q8_0"),
    GGMLType("Q2_K", 10, 256, 84, "kquants:Q2_K"),
    GGMLType("Q3_K", 11, 256, 110, "kquants:Q3_K"),
    GGMLType("Q4_K", 12, 256, 144, "kquants:Q4_K"),
    GGMLType("Q5_K", 13, 256, 176, "kquants:Q5_K"),
    GGMLType("Q6_K", 14, 256, 210, "kquants:Q6_K"),
    GGMLType("IQ4_NL", 20, 32, 18, "iq4:IQ4_NL"),
    GGMLType("IQ4_XS", 23, 256, 136, "iq4:IQ4_XS"),
)}
GGML_BY_ID = {t.type_id: t for t in GGML_TYPES.values()}
BLOCK_TYPES = tuple(n for n, t in GGML_TYPES.items() if t.impl)


def quantizer(name: str):
    """The quantizer class for a block type name, imported on first use."""
    t = GGML_TYPES[name]
    if t.impl is None:
        raise KeyError(f"{name} is a float type, not a block type")
    module, cls = t.impl.split(":")
    return getattr(import_module(f"{__name__}.{module}"), cls)


def quantize(x: np.ndarray, name: str, imatrix: np.ndarray | None = None) -> np.ndarray:
    """Quantize float32 rows [rows, n] to ggml bytes [rows, n/bs*ts] like ggml_quantize_chunk."""
    x = np.ascontiguousarray(x, dtype=np.float32)
    if x.ndim == 1:
        x = x[None]
    return quantizer(name).quantize_rows(x, imatrix)


def dequantize(q: np.ndarray, name: str) -> np.ndarray:
    """ggml bytes [rows, nbytes] back to float32 [rows, n]."""
    q = np.ascontiguousarray(q, dtype=np.uint8)
    if q.ndim == 1:
        q = q[None]
    return quantizer(name).dequantize_rows(q)
