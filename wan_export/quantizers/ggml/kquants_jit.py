"""numba K-quants: quantize_row_qX_K_ref / _impl one super-block at a time, packed in place.

The optional accelerated path of kquants.py (same bytes; the numpy path stays the
fallback and the reference the tests compare against). `quantize_rows(name, x,
imatrix)` returns ggml bytes [rows, row_bytes]; each `_qNk` kernel takes float32
super-blocks [S, 256], the imatrix as [n/256, 256] super-blocks (or an empty
array), and writes the packed blocks [S, type_size].
"""
from __future__ import annotations

import numpy as np
from numba import njit

from .jit_lanes import clamp, outside, q3_lanes, qkx_lanes, qx_lanes, rint
from .jit_search import JIT, F0, F32, make_qp, make_qx, nearest_int, put_fp16

QK_K = 256
_F2, _F15, _F32_, _F63, _F256 = F32(2), F32(15), F32(32), F32(63), F32(256)
_M1, _M05, _M09, _P05, _P1 = F32(-1), F32(-0.5), F32(-0.9), F32(0.05), F32(0.1)
_M32, _M128 = F32(-32), F32(-128)
_M4, _P3, _P4 = F32(-4), F32(3), F32(4)


@njit(**JIT)
def _sigma2(x, factor):
    s = F0
    for j in range(QK_K):
        s += x[j] * x[j]
    return factor * s / _F256


@njit(**JIT)
def _requant(x, L, d, dm, lo, hi, off):
    """The final pass of every K-type: l = clamp(nearest_int((x + dm)/d)) + off, unless d == 0."""
    if d == 0:
        return
    for i in range(x.size):
        L[i] = max(lo, min(hi, nearest_int((x[i] + dm) / d))) + off


@njit(**JIT)
def _pack_2bit(L, y, at):
    for j in range(0, QK_K, 128):
        for l in range(32):
            y[at + j // 4 + l] = (L[j + l] | (L[j + l + 32] << 2) | (L[j + l + 64] << 4)
                                  | (L[j + l + 96] << 6)) & 0xFF


@njit(**JIT)
def _to_lanes(x, X):
    """Super-block x[256] -> element-major sub-blocks X[n, K] (X[i, k] = x[n*k + i])."""
    n, K = X.shape
    for k in range(K):
        for i in range(n):
            X[i, k] = x[n * k + i]


@njit(**JIT)
def _from_lanes(Lt, L):
    """Float32 levels Lt[n, K] back to int levels L[256] in super-block order."""
    n, K = Lt.shape
    for k in range(K):
        for i in range(n):
            L[n * k + i] = np.int32(Lt[i, k])


@njit(**JIT)
def _imatrix_lanes(X, qw, sigma2, W, sw):
    """W = qw*sqrtf(sigma2 + x²) per element; sw[k] = their sequential sum per sub-block."""
    n, K = X.shape
    sw[:] = 0
    for i in range(n):
        for k in range(K):
            W[i, k] = qw[n * k + i] * np.sqrt(sigma2 + X[i, k] * X[i, k])
            sw[k] += W[i, k]


@njit(**JIT)
def _products(X, W, WX, square):
    """WX = W*X, after W = X*X when `square` (C's rmse_type 1 / make_q3_quants weights)."""
    n, K = X.shape
    for i in range(n):
        for k in range(K):
            if square:
                W[i, k] = X[i, k] * X[i, k]
            WX[i, k] = W[i, k] * X[i, k]


@njit(**JIT)
def _lane_buffers(n, K):
    """X, W, WX, Lt, Laux [n, K] float32; S [16, K] float32 scratch; flags [K] bool."""
    return (np.empty((n, K), F32), np.empty((n, K), F32), np.empty((n, K), F32),
            np.empty((n, K), F32), np.empty((n, K), F32), np.empty((16, K), F32), np.empty(K, np.bool_))


# ---------------------------------------------------------------- Q2_K


@njit(**JIT)
def _q2k_scales(scales, mins, y):
    """_ref: 4-bit scales/mins against the largest of each; returns (d, dmin) as stored."""
    max_scale = F0
    max_min = F0
    for j in range(16):
        max_scale = scales[j] if scales[j] > max_scale else max_scale
        max_min = mins[j] if mins[j] > max_min else max_min
    for j in range(16):
        y[j] = 0
    d = dmin = F0
    y[80] = y[81] = y[82] = y[83] = 0
    if max_scale > 0:
        iscale = _F15 / max_scale
        for j in range(16):
            y[j] = nearest_int(iscale * scales[j]) & 0xFF
        d = put_fp16(y, 80, max_scale / _F15)
    if max_min > 0:
        iscale = _F15 / max_min
        for j in range(16):
            y[j] = (y[j] | (nearest_int(iscale * mins[j]) << 4)) & 0xFF
        dmin = put_fp16(y, 82, max_min / _F15)
    return d, dmin


@njit(**JIT)
def _q2k(xs, qws, out):
    Li = np.empty(QK_K, np.int32)
    X, W, _, Lt, Laux, S, _ = _lane_buffers(16, 16)
    scales, mins, sw = np.empty(16, F32), np.empty(16, F32), np.empty(16, F32)
    Ls, Lm = np.empty(16, np.int32), np.empty(16, np.int32)
    for b in range(xs.shape[0]):
        x, y = xs[b], out[b]
        _to_lanes(x, X)
        if qws.shape[0] == 0:
            for i in range(16):
                for k in range(16):
                    W[i, k] = abs(X[i, k])
            qkx_lanes(X, W, 3, _M05, _P1, 15, True, False, Lt, Laux, S, scales, mins)
            d, dmin = _q2k_scales(scales, mins, y)
        else:
            _imatrix_lanes(X, qws[b % qws.shape[0]], _sigma2(x, F32(1)), W, sw)
            qkx_lanes(X, W, 3, _M09, _P05, 36, False, True, Lt, Laux, S, scales, mins)
            d = put_fp16(y, 80, make_qp(scales, 15, sw, Ls))
            dmin = put_fp16(y, 82, make_qp(mins, 15, sw, Lm))
            for j in range(16):
                y[j] = (Ls[j] | (Lm[j] << 4)) & 0xFF
        _from_lanes(Lt, Li)
        for j in range(16):
            sc = np.int64(y[j])
            _requant(x[16 * j:16 * j + 16], Li[16 * j:16 * j + 16], d * F32(sc & 0xF), dmin * F32(sc >> 4), 0, 3, 0)
        _pack_2bit(Li, y, 16)


# ---------------------------------------------------------------- Q3_K


@njit(**JIT)
def _q3k_finish(x, X, Lt, R, D, L, ls, d_block, y):
    """Pack 16 six-bit scales (+32 already) and d, requantize, write hmask and 2-bit qs.

    Lt holds make_q3's levels (+4) as lanes; R is scratch. The requantization rounds with
    rint unless some x/d is outside its exact range (then the scalar pass, as C's bits).
    """
    sc = y[96:108]
    sc[:] = 0
    for j in range(16):
        l = ls[j]
        if j < 8:
            sc[j] = l & 0xF
        else:
            sc[j - 8] |= (l & 0xF) << 4
        sc[8 + j % 4] |= ((l >> 4) << (2 * (j // 4))) & 0xFF
    d_all = put_fp16(y, 108, d_block)
    for j in range(16):
        lo = (np.int64(sc[j]) & 0xF) if j < 8 else (np.int64(sc[j - 8]) >> 4)
        D[j] = d_all * F32((lo | (((np.int64(sc[8 + j % 4]) >> (2 * (j // 4))) & 3) << 4)) - 32)
    viol = F0
    for j in range(16):
        d = D[j]
        if d == 0:                                     # C keeps make_q3's levels
            for i in range(16):
                L[16 * j + i] = np.int32(Lt[i, j])
            continue
        for i in range(16):
            v = x[16 * j + i] / d
            viol += outside(v)
            R[j, i] = clamp(rint(v), _M4, _P3) + _P4
        for i in range(16):
            L[16 * j + i] = np.int32(R[j, i])
    if viol != 0:
        _from_lanes(Lt, L)
        for j in range(16):
            _requant(x[16 * j:16 * j + 16], L[16 * j:16 * j + 16], D[j], F0, -4, 3, 4)
    for l in range(32):
        h = 0
        for m in range(8):
            up = L[32 * m + l] > 3
            h |= np.int32(up) << m
            L[32 * m + l] -= 4 * np.int32(up)
        y[l] = h
    _pack_2bit(L, y, 32)


@njit(**JIT)
def _q3k_ref_scales(scales, ls):
    """_ref: 6-bit signed scales against the one of largest |scale|; returns d."""
    amax = max_scale = F0
    for j in range(16):
        if abs(scales[j]) > amax:
            amax = abs(scales[j])
            max_scale = scales[j]
    ls[:] = 0
    if max_scale == 0:
        return F0
    iscale = _M32 / max_scale
    for j in range(16):
        l = ((nearest_int(iscale * scales[j]) + 128) & 0xFF) - 128     # int8_t l
        ls[j] = max(-32, min(31, l)) + 32
    return F32(1) / iscale


@njit(**JIT)
def _q3k(xs, qws, out):
    L = np.empty(QK_K, np.int32)
    X, W, WX, Lt, R, S, _ = _lane_buffers(16, 16)
    scales, sw, D = np.empty(16, F32), np.empty(16, F32), np.empty(16, F32)
    ls = np.empty(16, np.int32)
    for b in range(xs.shape[0]):
        x, y = xs[b], out[b]
        _to_lanes(x, X)
        if qws.shape[0] == 0:
            _products(X, W, WX, True)
            q3_lanes(X, W, WX, 4, Lt, S, scales)
            d_block = _q3k_ref_scales(scales, ls)
        else:
            _imatrix_lanes(X, qws[b % qws.shape[0]], _sigma2(x, _F2), W, sw)
            _products(X, W, WX, False)
            qx_lanes(X, W, WX, 4, Lt, S, scales)
            d_block = make_qx(scales, 32, sw, ls)
        _q3k_finish(x, X, Lt, R, D, L, ls, d_block, y)


# ---------------------------------------------------------------- Q4_K / Q5_K


@njit(**JIT)
def _k4_pack_scales(ls, lm, sc):
    for j in range(8):
        if j < 4:
            sc[j] = ls[j] & 0xFF
            sc[j + 4] = lm[j] & 0xFF
        else:
            sc[j + 4] = ((ls[j] & 0xF) | ((lm[j] & 0xF) << 4)) & 0xFF
            sc[j - 4] |= (((ls[j] & 0xFF) >> 4) << 6) & 0xFF
            sc[j] |= (((lm[j] & 0xFF) >> 4) << 6) & 0xFF


@njit(**JIT)
def _k4_requant(x, L, sc, d, dmin, nmax):
    for j in range(8):
        a, b, c = np.int64(sc[j]), np.int64(sc[j + 4]), np.int64(sc[j - 4]) if j >= 4 else 0
        if j < 4:
            s, m = a & 63, b & 63
        else:
            s = (b & 0xF) | ((c >> 6) << 4)
            m = (b >> 4) | ((a >> 6) << 4)
        _requant(x[32 * j:32 * j + 32], L[32 * j:32 * j + 32], d * F32(s), dmin * F32(m), 0, nmax, 0)


@njit(**JIT)
def _k4_ref_scales(X, W, nmax, rmin, rdelta, nstep, Lt, Laux, S, scales, mins, ls, lm):
    """_ref: per-32 weights av_x + |x|, make_qkx2, linear 6-bit scales; returns (d, dmin) to store."""
    sum_x2 = S[0]
    sum_x2[:] = 0
    for i in range(32):
        for k in range(8):
            sum_x2[k] += X[i, k] * X[i, k]
    for k in range(8):
        sum_x2[k] = np.sqrt(sum_x2[k] / _F32_)          # av_x
    for i in range(32):
        for k in range(8):
            W[i, k] = sum_x2[k] + abs(X[i, k])
    qkx_lanes(X, W, nmax, rmin, rdelta, nstep, False, False, Lt, Laux, S, scales, mins)
    max_scale = max_min = F0
    for j in range(8):
        max_scale = scales[j] if scales[j] > max_scale else max_scale
        max_min = mins[j] if mins[j] > max_min else max_min
    inv_scale = _F63 / max_scale if max_scale > 0 else F0
    inv_min = _F63 / max_min if max_min > 0 else F0
    for j in range(8):
        ls[j] = min(63, nearest_int(inv_scale * scales[j]) & 0xFF)
        lm[j] = min(63, nearest_int(inv_min * mins[j]) & 0xFF)
    return max_scale / _F63, max_min / _F63


@njit(**JIT)
def _k4_impl_scales(x, X, W, qw, nmax, Lt, Laux, S, scales, mins, sw, ls, lm):
    _imatrix_lanes(X, qw, _sigma2(x, _F2), W, sw)
    qkx_lanes(X, W, nmax, _M09, _P05, 36, False, True, Lt, Laux, S, scales, mins)
    d_block = make_qp(scales, 63, sw, ls)
    m_block = make_qp(mins, 63, sw, lm)
    if nmax == 31:
        for j in range(8):
            ls[j] = min(63, ls[j])
            lm[j] = min(63, lm[j])
    return d_block, m_block


@njit(**JIT)
def _k4(xs, qws, out, nmax, rmin, rdelta, nstep):
    """Q4_K (nmax 15) and Q5_K (nmax 31): d, dmin, scales[12], then Q5_K's qh[32], then qs[128]."""
    L = np.empty(QK_K, np.int32)
    X, W, _, Lt, Laux, S, _ = _lane_buffers(32, 8)
    scales, mins, sw = np.empty(8, F32), np.empty(8, F32), np.empty(8, F32)
    ls, lm = np.empty(8, np.int32), np.empty(8, np.int32)
    qs = 16 if nmax == 15 else 48
    for b in range(xs.shape[0]):
        x, y = xs[b], out[b]
        _to_lanes(x, X)
        if qws.shape[0] == 0:
            d, dmin = _k4_ref_scales(X, W, nmax, rmin, rdelta, nstep, Lt, Laux, S, scales, mins, ls, lm)
        else:
            d, dmin = _k4_impl_scales(x, X, W, qws[b % qws.shape[0]], nmax, Lt, Laux, S, scales, mins, sw, ls, lm)
        _from_lanes(Lt, L)
        _k4_pack_scales(ls, lm, y[4:16])
        d = put_fp16(y, 0, d)
        dmin = put_fp16(y, 2, dmin)
        _k4_requant(x, L, y[4:16], d, dmin, nmax)
        if nmax == 31:
            y[16:48] = 0
            for c in range(4):
                for j in range(32):
                    if L[64 * c + j] > 15:
                        L[64 * c + j] -= 16
                        y[16 + j] |= 1 << (2 * c)
                    if L[64 * c + j + 32] > 15:
                        L[64 * c + j + 32] -= 16
                        y[16 + j] |= 2 << (2 * c)
        for c in range(4):
            for l in range(32):
                y[qs + 32 * c + l] = L[64 * c + l] | (L[64 * c + l + 32] << 4)


# ---------------------------------------------------------------- Q6_K


@njit(**JIT)
def _q6k_pack(L, y):
    for c in range(2):
        j = 128 * c
        for l in range(32):
            y[64 * c + l] = (L[j + l] & 0xF) | ((L[j + l + 64] & 0xF) << 4)
            y[64 * c + l + 32] = (L[j + l + 32] & 0xF) | ((L[j + l + 96] & 0xF) << 4)
            y[128 + 32 * c + l] = ((L[j + l] >> 4) | ((L[j + l + 32] >> 4) << 2) | ((L[j + l + 64] >> 4) << 4)
                                   | ((L[j + l + 96] >> 4) << 6))


@njit(**JIT)
def _q6k(xs, qws, out):
    """ql[128], qh[64], scales[16] int8, d."""
    L = np.empty(QK_K, np.int32)
    X, W, WX, Lt, _, S, _ = _lane_buffers(16, 16)
    scales = np.empty(16, F32)
    for b in range(xs.shape[0]):
        x, y = xs[b], out[b]
        _to_lanes(x, X)
        if qws.shape[0] != 0:
            _to_lanes(qws[b % qws.shape[0]], W)
        _products(X, W, WX, qws.shape[0] == 0)
        qx_lanes(X, W, WX, 32, Lt, S, scales)
        max_scale = max_abs = F0
        for ib in range(16):
            if abs(scales[ib]) > max_abs:
                max_abs = abs(scales[ib])
                max_scale = scales[ib]
        if max_abs < F32(1e-15):
            y[:] = 0
            continue
        _from_lanes(Lt, L)
        iscale = _M128 / max_scale
        d = put_fp16(y, 208, F32(1) / iscale)
        for ib in range(16):
            s8 = ((min(127, nearest_int(iscale * scales[ib])) + 128) & 0xFF) - 128     # int8_t
            y[192 + ib] = s8 & 0xFF
            _requant(x[16 * ib:16 * ib + 16], L[16 * ib:16 * ib + 16], d * F32(s8), F0, -32, 31, 32)
        _q6k_pack(L, y)


TYPE_SIZE = {"Q2_K": 84, "Q3_K": 110, "Q4_K": 144, "Q5_K": 176, "Q6_K": 210}
# Q4_K / Q5_K _ref searches: make_qkx2_quants(32, nmax, ..., rmin, rdelta, nstep)
_K4_REF = {"Q4_K": (15, _M1, _P1, 20), "Q5_K": (31, _M05, _P1, 15)}


def warm_up() -> None:
    """Load numba's compiled-code support (what any first jitted call does) on a trivial kernel."""
    _requant(np.zeros(1, F32), np.zeros(1, np.int32), F32(0), F32(0), 0, 0, 0)


def quantize_rows(name: str, x: np.ndarray, imatrix: np.ndarray | None) -> np.ndarray:
    """float32 rows [rows, n] (n % 256 == 0) -> ggml bytes [rows, n/256*type_size]."""
    rows, n = x.shape
    xs = np.ascontiguousarray(x, F32).reshape(-1, QK_K)
    qws = (np.empty((0, QK_K), F32) if imatrix is None
           else np.ascontiguousarray(imatrix, F32).reshape(-1, QK_K))
    out = np.empty((xs.shape[0], TYPE_SIZE[name]), np.uint8)
    if name in _K4_REF:
        _k4(xs, qws, out, *_K4_REF[name])
    else:
        {"Q2_K": _q2k, "Q3_K": _q3k, "Q6_K": _q6k}[name](xs, qws, out)
    return out.reshape(rows, -1)
