"""Legacy 32-element ggml blocks: Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, bit-exact with ggml-quants.c.

Without an imatrix each type follows its `quantize_row_*_ref`; with one, Q4_x/Q5_x follow
`quantize_row_*_impl` (weighted scale search from `.search`, w = qw·sqrt(sigma2 + x²) with
sigma2 = Σx²/n over the whole row) and Q8_0 ignores it, as `ggml_quantize_chunk` does.
All arithmetic is float32, vectorised across blocks in chunks.
"""
from __future__ import annotations

import numpy as np

from .search import qkx_quants_t, qx_quants_t

F32 = np.float32
QK = 32
_CHUNK = 1 << 13                     # blocks per vectorised chunk
_HALF_DOWN = np.nextafter(F32(0.5), F32(0))


def _rows(x):
    x = np.ascontiguousarray(x, dtype=F32)
    if x.ndim != 2 or x.shape[1] % QK:
        raise ValueError(f"expected float32 rows [rows, n] with n % {QK} == 0, got {x.shape}")
    return x


def _imatrix(imatrix, n):
    qw = np.asarray(imatrix, dtype=F32).reshape(-1)
    if qw.shape[0] != n:
        raise ValueError(f"imatrix has {qw.shape[0]} values, rows have {n}")
    return qw


def _inv(d):
    """C's `d ? 1.0f/d : 0.0f`."""
    out = np.zeros_like(d)
    np.divide(F32(1), d, out=out, where=d != 0)
    return out


def _fp16(v):
    """float32 [B] -> fp16 bytes [B, 2] (round to nearest even, as GGML_FP32_TO_FP16)."""
    with np.errstate(over="ignore"):    # |d| > 65504 becomes ±inf, as in C
        return v.astype(np.float16).view(np.uint8).reshape(-1, 2)


def _half(b):
    """fp16 bytes [B, 2] -> float32 [B, 1]."""
    return np.ascontiguousarray(b).view(np.float16).astype(F32)


def _signed_max(xt):
    """The first value of largest |x| in each block of xt [32, B] (C: `if (amax < fabsf(v))`)."""
    hi, lo = xt.max(axis=0), xt.min(axis=0)
    mx = np.where(hi >= -lo, hi, lo)
    tie = np.flatnonzero((hi == -lo) & (hi > 0))
    if tie.size:   # both +amax and -amax occur: the first one wins
        col = xt[:, tie]
        mx[tie] = col[np.abs(col).argmax(axis=0), np.arange(tie.size)]
    return mx


def _trunc_u8(v):
    """C's `(int8_t)v` / `(uint8_t)v` for the in-range values the quantizers produce."""
    with np.errstate(invalid="ignore"):
        return v.astype(np.int32).astype(np.uint8)


def _nibbles(q):
    """q [32, B] uint8 -> qs [B, 16]: element j in the low nibble, j+16 in the high one."""
    return ((q[:16] & 15) | (q[16:] << 4)).T


def _high_bits(q):
    """Bit 4 of each of the 32 quants [32, B] as the little-endian u32 `qh` [B, 4]."""
    bits = ((q >> 4) & 1).astype(np.uint32) << np.arange(QK, dtype=np.uint32)[:, None]
    return np.bitwise_or.reduce(bits, axis=0).astype("<u4").view(np.uint8).reshape(-1, 4)


def _unpack(qs, qh=None):
    """Inverse of _nibbles/_high_bits: quants [B, 32] as int32."""
    q = np.concatenate([qs & 15, qs >> 4], axis=1).astype(np.int32)
    if qh is not None:
        q |= np.unpackbits(qh, axis=1, bitorder="little").astype(np.int32) << 4
    return q


def _assemble(*parts):
    """Concatenate per-block byte fields [B, k] into blocks [B, type_size]."""
    return np.concatenate(parts, axis=1)


def _row_sigma2(x):
    """Σx²/n_per_row per row, summed left to right in float32 (cumsum is sequential)."""
    step = max(1, (_CHUNK * QK) // x.shape[1])
    sums = [np.cumsum(np.square(x[r:r + step]), axis=1, dtype=F32)[:, -1]
            for r in range(0, len(x), step)]
    return np.concatenate(sums) / F32(x.shape[1])


class _Legacy:
    """Shared driver: element-major chunks [32, B] through `_ref` (no imatrix) or `_impl`."""
    block_size = QK
    type_size: int
    uses_imatrix = True

    @classmethod
    def quantize_rows(cls, x, imatrix=None):
        x = _rows(x)
        rows, n = x.shape
        nb = rows * (n // QK)
        out = np.empty((nb, cls.type_size), np.uint8)
        qw = None if imatrix is None else _imatrix(imatrix, n)
        if qw is None or not cls.uses_imatrix:
            blocks = x.reshape(-1, QK)
            for b0 in range(0, nb, _CHUNK):
                out[b0:b0 + _CHUNK] = cls._ref(np.ascontiguousarray(blocks[b0:b0 + _CHUNK].T))
        else:
            wx = _Weighted(x, qw)
            for b0 in range(0, nb, _CHUNK):
                out[b0:b0 + _CHUNK] = cls._impl(*wx.chunk(b0, min(b0 + _CHUNK, nb)))
        return out.reshape(rows, n // QK * cls.type_size)

    @classmethod
    def dequantize_rows(cls, q):
        q = np.ascontiguousarray(q, dtype=np.uint8)
        if q.ndim != 2 or q.shape[1] % cls.type_size:
            raise ValueError(
                f"expected uint8 rows of whole {cls.type_size}-byte blocks, got {q.shape}")
        with np.errstate(invalid="ignore"):    # an fp16 d of ±inf times 0 is NaN, as in C
            y = cls._dequant(q.reshape(-1, cls.type_size))
        return y.reshape(q.shape[0], q.shape[1] // cls.type_size * QK)


class _Weighted:
    """Rows plus imatrix: hands out element-major (x, w) chunks, w = qw·sqrt(sigma2 + x²)."""

    def __init__(self, x, qw):
        self.blocks, self.nbr = x.reshape(-1, QK), x.shape[1] // QK
        self.qw = qw.reshape(self.nbr, QK)
        self.sigma2 = _row_sigma2(x)

    def chunk(self, b0, b1):
        blk = np.arange(b0, b1)
        xt = np.ascontiguousarray(self.blocks[b0:b1].T)
        w = xt * xt
        w += self.sigma2[blk // self.nbr]
        np.sqrt(w, out=w)
        w *= self.qw[blk % self.nbr].T
        return xt, w


class Q8_0(_Legacy):
    """d = amax/127, q = roundf(x/d) (half away from zero); the imatrix is ignored."""
    type_size = 34
    uses_imatrix = False

    @staticmethod
    def _ref(xt):
        d = np.abs(xt).max(axis=0) / F32(127)
        v = xt * _inv(d)
        v += np.copysign(_HALF_DOWN, v)           # roundf == trunc(v ± largest float < 0.5)
        return _assemble(_fp16(d), _trunc_u8(v).T)

    @staticmethod
    def _dequant(blk):
        return blk[:, 2:].view(np.int8).astype(F32) * _half(blk[:, :2])


class _SymmetricQ(_Legacy):
    """Q4_0 / Q5_0: d = max/-2^(bits-1), q = MIN(nmax, (int8_t)(x/d + 2^(bits-1) + 0.5))."""
    bits: int

    @classmethod
    def _ref(cls, xt):
        half = 1 << (cls.bits - 1)
        d = _signed_max(xt) / F32(-half)
        v = xt * _inv(d)
        v += F32(half + 0.5)
        return cls._pack(d, np.minimum(_trunc_u8(v), 2 * half - 1))

    @classmethod
    def _impl(cls, xt, wt):
        d, lt = qx_quants_t(xt, 1 << (cls.bits - 1), 1, wt)
        return cls._pack(d, lt.astype(np.uint8))

    @classmethod
    def _dequant(cls, blk):
        q = _unpack(blk[:, -16:], blk[:, 2:6] if cls.bits == 5 else None)
        return (q - (1 << (cls.bits - 1))).astype(F32) * _half(blk[:, :2])

    @classmethod
    def _pack(cls, d, q):
        high = [_high_bits(q)] if cls.bits == 5 else []
        return _assemble(_fp16(d), *high, _nibbles(q))


class _AffineQ(_Legacy):
    """Q4_1 / Q5_1: d = (max-min)/nmax, m = min, q = (uint8)((x-min)/d + 0.5)."""
    bits: int

    @classmethod
    def _ref(cls, xt):
        lo, hi = xt.min(axis=0), xt.max(axis=0)
        d = (hi - lo) / F32((1 << cls.bits) - 1)
        v = xt - lo
        v *= _inv(d)
        v += F32(0.5)
        q = _trunc_u8(v)
        if cls.bits == 4:   # Q5_1 has no MIN(31, ...) in C
            np.minimum(q, 15, out=q)
        return cls._pack(d, lo, q)

    @classmethod
    def _impl(cls, xt, wt):
        nmax = (1 << cls.bits) - 1
        d, the_min, lt = qkx_quants_t(xt, wt, nmax, -0.9, 0.05, 36, False, flat_le=True)
        return cls._pack(d, -the_min, lt.astype(np.uint8))

    @classmethod
    def _dequant(cls, blk):
        q = _unpack(blk[:, -16:], blk[:, 4:8] if cls.bits == 5 else None)
        return q.astype(F32) * _half(blk[:, :2]) + _half(blk[:, 2:4])

    @classmethod
    def _pack(cls, d, m, q):
        high = [_high_bits(q)] if cls.bits == 5 else []
        return _assemble(_fp16(d), _fp16(m), *high, _nibbles(q))


class Q4_0(_SymmetricQ):
    type_size, bits = 18, 4


class Q5_0(_SymmetricQ):
    type_size, bits = 22, 5


class Q4_1(_AffineQ):
    type_size, bits = 20, 4


class Q5_1(_AffineQ):
    type_size, bits = 24, 5
