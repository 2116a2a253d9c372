"""K-quants Q2_K..Q6_K, bit-exact with ggml-quants.c built without FMA.

Without an imatrix, `quantize_rows` is `quantize_row_qX_K_ref` (what ggml_quantize_chunk
runs); with one it is `quantize_row_qX_K_impl`, the imatrix reused for every row. All
super-blocks of all rows are processed together, in chunks, by the searches in search.py.
When numba is installed (the `fast` extra) the same algorithms run compiled, block by
block, from kquants_jit.py: same bytes, several times faster. WAN_EXPORT_NUMBA=0 forces
the numpy path.
"""
from __future__ import annotations

import contextlib
import functools
import os
import sys

import numpy as np

from . import kquants_pack as kp
from .search import (
    F32,
    Workspace,
    fix_range,
    nearest_int,
    q3_quants_t,
    qkx_quants_t,
    qp_quants_t,
    qx_quants_t,
    rint_clip,
    seqsum,
    signed_max,
)

QK_K = 256
U8 = np.uint8


def _t(a: np.ndarray, bs: int, ws: Workspace | None = None, name: str = "") -> np.ndarray:
    """Super-blocks [S, 256] -> element-major sub-blocks [bs, S*256/bs] (into ws[name])."""
    if ws is None:
        return np.ascontiguousarray(a.reshape(-1, bs).T)
    out = ws.get(name, (bs, a.size // bs))
    np.copyto(out, a.reshape(-1, bs).T)
    return out


def _levels(lt: np.ndarray) -> np.ndarray:
    """Element-major levels back to super-block order, uint8 [S, 256]."""
    return lt.T.reshape(-1, QK_K).astype(U8)


def _fp16(a: np.ndarray):
    """(fp16 bytes [S, 2], the fp16 value as float32): GGML_FP32_TO_FP16 then back."""
    with np.errstate(over="ignore"):
        h = np.asarray(a, F32).astype(np.float16)
    return h.view(U8).reshape(-1, 2), h.astype(F32)


def _pos_max(a: np.ndarray) -> np.ndarray:
    """C's `m = 0; if (v > m) m = v;` over axis 1 (a +0 result when nothing is > 0)."""
    m = a.max(axis=1)
    return np.where(m > 0, m, F32(0))


def _div0(num, den, cond):
    """num/den where cond, else 0 (without warnings for the masked-out lanes)."""
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        return np.where(cond, F32(num) / np.where(cond, den, F32(1)), F32(0))


def _requant(xt, d, dm, lo, hi, off, L, ws):
    """The final pass: `l = clamp(nearest_int((x + dm)/d), lo, hi) + off`; d == 0 keeps L."""
    d = d.reshape(-1)
    keep = np.flatnonzero(d == 0)
    v = ws.get("rq.v", xt.shape)
    if dm is not None:
        np.add(xt, dm.reshape(-1), out=v)
    else:
        np.copyto(v, xt)
    d = d.copy()
    d[keep] = 1
    np.divide(v, d, out=v)
    new = rint_clip(v, lo, hi, out=ws.get("rq.new", xt.shape))
    fix_range(v, new, lo, hi)
    new += F32(off)
    new[:, keep] = L[:, keep]
    return new


def _impl_weights(xb, qw, bs, factor, ws):
    """imatrix weights `qw*sqrtf(sigma2 + x²)`, sigma2 = factor*Σx²/256 per super-block."""
    xs = _t(xb, QK_K, ws, "iw.x2")
    sumx2 = seqsum(np.multiply(xs, xs, out=xs))
    sigma2 = F32(factor) * sumx2 / F32(QK_K)
    xt = _t(xb, bs, ws, "xt")
    wt = np.multiply(xt, xt, out=ws.get("iw.w", xt.shape))
    np.add(wt, np.repeat(sigma2, QK_K // bs), out=wt)
    np.sqrt(wt, out=wt)
    np.multiply(_t(qw, bs, ws, "iw.qw"), wt, out=wt)
    return xt, wt, seqsum(wt)


def _k4_scales(ls, lm, d, dmin):
    """Pack 6-bit scales/mins and fp16 d/dmin; return bytes and the per-sub-block d, dm."""
    sc = kp.pack_k4_scales(ls, lm)
    dh, dF = _fp16(d)
    mh, mF = _fp16(dmin)
    s, m = kp.unpack_k4_scales(sc)
    return np.hstack([dh, mh, sc]), dF[:, None] * s, mF[:, None] * m


def _k4_ref(xb, nmax, rmin, rdelta, nstep, ws):
    """Q4_K/Q5_K `_ref`: head bytes (d, dmin, scales) and final levels [S, 256]."""
    xt = _t(xb, 32, ws, "xt")
    wt = np.multiply(xt, xt, out=ws.get("k4.w", xt.shape))
    av_x = np.sqrt(seqsum(wt) / F32(32))
    np.abs(xt, out=wt)
    np.add(wt, av_x, out=wt)
    scales, mins, L = qkx_quants_t(xt, wt, nmax, rmin, rdelta, nstep, False, ws=ws)
    sc, mn = scales.reshape(-1, 8), mins.reshape(-1, 8)
    max_scale, max_min = _pos_max(sc), _pos_max(mn)
    inv_s = _div0(63, max_scale, max_scale > 0)
    inv_m = _div0(63, max_min, max_min > 0)
    ls = np.minimum(nearest_int(inv_s[:, None] * sc) & 0xFF, 63)
    lm = np.minimum(nearest_int(inv_m[:, None] * mn) & 0xFF, 63)
    head, d, dm = _k4_scales(ls, lm, max_scale / F32(63), max_min / F32(63))
    return head, _levels(_requant(xt, d, dm, 0, nmax, 0, L, ws))


def _k4_impl(xb, qw, nmax, clamp63, ws):
    """Q4_K/Q5_K `_impl` with an imatrix."""
    xt, wt, sw = _impl_weights(xb, qw, 32, 2, ws)
    scales, mins, L = qkx_quants_t(xt, wt, nmax, -0.9, 0.05, 36, False, flat_le=True, ws=ws)
    swt = _t(sw, 8)
    d_block, ls = qp_quants_t(_t(scales, 8), 63, swt)
    m_block, lm = qp_quants_t(_t(mins, 8), 63, swt)
    ls, lm = ls.T, lm.T
    if clamp63:
        ls, lm = np.minimum(ls, 63), np.minimum(lm, 63)
    head, d, dm = _k4_scales(ls, lm, d_block, m_block)
    return head, _levels(_requant(xt, d, dm, 0, nmax, 0, L, ws))


@functools.cache
def jit():
    """kquants_jit if numba imports and WAN_EXPORT_NUMBA is not 0, else None (numpy path).

    Loading numba's compiled-code support happens on the first call of any jitted
    function and costs most of numba's fixed start-up; it is done here, once.
    """
    if os.environ.get("WAN_EXPORT_NUMBA", "1") == "0":
        return None
    try:
        with _scipy_held_off():
            from . import kquants_jit
            kquants_jit.warm_up()
    except ImportError:
        return None
    return kquants_jit


@contextlib.contextmanager
def _scipy_held_off():
    """numba's first call imports scipy.linalg (~0.15 CPU s) only to learn whether np.dot has a BLAS.

    The kernels use no BLAS, so scipy is made unimportable for that moment (where it is not
    imported already); numba then records "no BLAS" and scipy imports normally afterwards.
    """
    if "scipy" in sys.modules:
        yield
        return
    sys.modules["scipy"] = None
    try:
        yield
    finally:
        if sys.modules.get("scipy", 0) is None:
            del sys.modules["scipy"]


class _KQuant:
    """Shared row/chunk plumbing; subclasses define `_ref`, `_impl`, `_dequant`."""
    type_size: int
    chunk = 1024        # super-blocks per batch: the search's arrays stay cache-sized

    @classmethod
    def quantize_rows(cls, x: np.ndarray, imatrix: np.ndarray | None = None) -> np.ndarray:
        x = np.ascontiguousarray(x, dtype=F32)
        rows, n = x.shape
        if n % QK_K:
            raise ValueError(f"{cls.__name__}: row length {n} is not a multiple of {QK_K}")
        xs = x.reshape(-1, QK_K)
        if imatrix is not None:
            qw = np.ascontiguousarray(imatrix, dtype=F32).reshape(-1)
            if qw.size != n:
                raise ValueError(f"{cls.__name__}: imatrix has {qw.size} values, rows have {n}")
            qw = qw.reshape(-1, QK_K)
        if jit() is not None:
            return jit().quantize_rows(cls.__name__, x, imatrix)
        out = np.empty((xs.shape[0], cls.type_size), U8)
        ws = Workspace()
        for a in range(0, xs.shape[0], cls.chunk):
            b = min(a + cls.chunk, xs.shape[0])
            if imatrix is None:
                out[a:b] = cls._ref(xs[a:b], ws)
            else:
                out[a:b] = cls._impl(xs[a:b], qw[np.arange(a, b) % qw.shape[0]], ws)
        return out.reshape(rows, -1)

    @classmethod
    def dequantize_rows(cls, q: np.ndarray) -> np.ndarray:
        q = np.ascontiguousarray(q, dtype=U8)
        rows = q.shape[0]
        return cls._dequant(q.reshape(-1, cls.type_size)).reshape(rows, -1)


def _half(b: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(b).view(np.float16).astype(F32)


class Q2_K(_KQuant):
    """scales[16] (lo4 scale, hi4 min), qs[64], d, dmin; 16 sub-blocks of 16."""
    type_size = 84

    @classmethod
    def _finish(cls, xt, L, ls, lm, d, dmin, ws):
        scb = ((ls & 0xFF) | ((lm << 4) & 0xFF)).astype(U8)
        dh, dF = _fp16(d)
        mh, mF = _fp16(dmin)
        dsub = dF[:, None] * (scb & 0xF)
        msub = mF[:, None] * (scb >> 4)
        L = _levels(_requant(xt, dsub, msub, 0, 3, 0, L, ws))
        return np.hstack([scb, kp.pack_2bit(L), dh, mh])

    @classmethod
    def _ref(cls, xb, ws):
        xt = _t(xb, 16, ws, "xt")
        wt = np.abs(xt, out=ws.get("q2.w", xt.shape))
        scales, mins, L = qkx_quants_t(xt, wt, 3, -0.5, 0.1, 15, True, ws=ws)
        sc, mn = scales.reshape(-1, 16), mins.reshape(-1, 16)
        max_scale, max_min = _pos_max(sc), _pos_max(mn)
        has_s, has_m = max_scale > 0, max_min > 0
        ls = np.where(has_s[:, None], nearest_int(_div0(15, max_scale, has_s)[:, None] * sc), 0)
        lm = np.where(has_m[:, None], nearest_int(_div0(15, max_min, has_m)[:, None] * mn), 0)
        d = np.where(has_s, max_scale / F32(15), F32(0))
        dmin = np.where(has_m, max_min / F32(15), F32(0))
        return cls._finish(xt, L, ls, lm, d, dmin, ws)

    @classmethod
    def _impl(cls, xb, qw, ws):
        xt, wt, sw = _impl_weights(xb, qw, 16, 1, ws)
        scales, mins, L = qkx_quants_t(xt, wt, 3, -0.9, 0.05, 36, False, flat_le=True, ws=ws)
        swt = _t(sw, 16)
        dm, ls = qp_quants_t(_t(scales, 16), 15, swt)
        mm, lm = qp_quants_t(_t(mins, 16), 15, swt)
        return cls._finish(xt, L, ls.T, lm.T, dm, mm, ws)

    @staticmethod
    def _dequant(b):
        sc = b[:, 0:16]
        q = kp.unpack_2bit(b[:, 16:80]).reshape(-1, 16, 16).astype(F32)
        dl = _half(b[:, 80:82]) * (sc & 0xF)
        ml = _half(b[:, 82:84]) * (sc >> 4)
        return (dl[:, :, None] * q - ml[:, :, None]).reshape(-1, QK_K)


class Q3_K(_KQuant):
    """hmask[32], qs[64], scales[12] (16 × 6-bit, +32), d; 16 sub-blocks of 16."""
    type_size = 110
    chunk = 2048        # the descent's tail rounds cost per round, not per block

    @classmethod
    def _finish(cls, xt, L, l6, d, ws):
        sc = kp.pack_q3_scales(l6)
        dh, dF = _fp16(d)
        dsub = dF[:, None] * (kp.unpack_q3_scales(sc).astype(np.int8) - np.int8(32))
        L = _levels(_requant(xt, dsub, None, -4, 3, 4, L, ws))
        hmask, low = kp.pack_hmask(L)
        return np.hstack([hmask, kp.pack_2bit(low), sc, dh])

    @classmethod
    def _ref(cls, xb, ws):
        xt = _t(xb, 16, ws, "xt")
        scales, L = q3_quants_t(xt, 4, ws=ws)
        sc = scales.reshape(-1, 16)
        _, max_scale = signed_max(np.ascontiguousarray(sc.T))
        has = max_scale != 0
        iscale = _div0(-32, max_scale, has)
        l = nearest_int(iscale[:, None] * sc).astype(np.int8)       # C's int8_t l
        l6 = np.where(has[:, None], np.clip(l, -32, 31) + 32, 0)
        with np.errstate(divide="ignore"):
            d = np.where(has, F32(1) / iscale, F32(0))
        return cls._finish(xt, L, l6, d, ws)

    @classmethod
    def _impl(cls, xb, qw, ws):
        xt, wt, sw = _impl_weights(xb, qw, 16, 2, ws)
        scales, L = qx_quants_t(xt, 4, 1, wt, ws=ws)
        d_block, ls = qx_quants_t(_t(scales, 16), 32, 1, _t(sw, 16))
        return cls._finish(xt, L, ls.T, d_block, ws)

    @staticmethod
    def _dequant(b):
        q = kp.unpack_2bit(b[:, 32:96]).astype(np.int8)
        q -= np.int8(4) * (1 - kp.unpack_hmask(b[:, 0:32])).astype(np.int8)
        s = kp.unpack_q3_scales(b[:, 96:108]).astype(np.int8) - np.int8(32)
        dl = _half(b[:, 108:110]) * s
        return (dl[:, :, None] * q.reshape(-1, 16, 16)).reshape(-1, QK_K)


class Q4_K(_KQuant):
    """d, dmin, scales[12] (8 × 6-bit scale and min), qs[128]; 8 sub-blocks of 32."""
    type_size = 144

    @classmethod
    def _ref(cls, xb, ws):
        head, L = _k4_ref(xb, 15, -1.0, 0.1, 20, ws)
        return np.hstack([head, kp.pack_nibbles(L)])

    @classmethod
    def _impl(cls, xb, qw, ws):
        head, L = _k4_impl(xb, qw, 15, False, ws)
        return np.hstack([head, kp.pack_nibbles(L)])

    @staticmethod
    def _dequant(b, q=None):
        s, m = kp.unpack_k4_scales(b[:, 4:16])
        d1 = _half(b[:, 0:2]) * s
        m1 = _half(b[:, 2:4]) * m
        if q is None:
            q = kp.unpack_nibbles(b[:, 16:144])
        q = q.reshape(-1, 8, 32).astype(F32)
        return (d1[:, :, None] * q - m1[:, :, None]).reshape(-1, QK_K)


class Q5_K(_KQuant):
    """d, dmin, scales[12], qh[32], qs[128]; as Q4_K with a fifth bit in qh."""
    type_size = 176

    @classmethod
    def _ref(cls, xb, ws):
        head, L = _k4_ref(xb, 31, -0.5, 0.1, 15, ws)
        return np.hstack([head, kp.pack_q5_high(L), kp.pack_nibbles(L)])

    @classmethod
    def _impl(cls, xb, qw, ws):
        head, L = _k4_impl(xb, qw, 31, True, ws)
        return np.hstack([head, kp.pack_q5_high(L), kp.pack_nibbles(L)])

    @staticmethod
    def _dequant(b):
        q = kp.unpack_nibbles(b[:, 48:176]) + (kp.unpack_hmask(b[:, 16:48]) << 4)
        return Q4_K._dequant(b, q)


class Q6_K(_KQuant):
    """ql[128], qh[64], scales[16] int8, d; 16 sub-blocks of 16."""
    type_size = 210

    @classmethod
    def _finish(cls, xt, scales, L, ws):
        sc = scales.reshape(-1, 16)
        max_abs, max_scale = signed_max(np.ascontiguousarray(sc.T))
        live = ~(max_abs < F32(1e-15))
        with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
            iscale = F32(-128) / np.where(live, max_scale, F32(1))
            dh, dF = _fp16(F32(1) / iscale)
        s8 = np.minimum(nearest_int(iscale[:, None] * sc), 127).astype(np.int8)
        L = _levels(_requant(xt, dF[:, None] * s8, None, -32, 31, 32, L, ws))
        ql, qh = kp.pack_q6(L)
        out = np.hstack([ql, qh, s8.view(U8), dh])
        out[~live] = 0
        return out

    @classmethod
    def _ref(cls, xb, ws):
        xt = _t(xb, 16, ws, "xt")
        scales, L = qx_quants_t(xt, 32, 1, None, ws=ws)
        return cls._finish(xt, scales, L, ws)

    @classmethod
    def _impl(cls, xb, qw, ws):
        xt = _t(xb, 16, ws, "xt")
        scales, L = qx_quants_t(xt, 32, 1, _t(qw, 16, ws, "q6.qw"), ws=ws)
        return cls._finish(xt, scales, L, ws)

    @staticmethod
    def _dequant(b):
        q = kp.unpack_q6(b[:, 0:128], b[:, 128:192]).astype(np.int8) - np.int8(32)
        ds = _half(b[:, 208:210]) * b[:, 192:208].view(np.int8)
        return (ds[:, :, None] * q.reshape(-1, 16, 16)).reshape(-1, QK_K)
