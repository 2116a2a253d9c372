"""make_qx_quants and make_q3_quants on all 16 sub-blocks of a super-block at once.

`X[n, K]` holds K independent sub-blocks element-major (X[i, k] = element i of
sub-block k). Each C loop over i stays a sequential loop, and the work for the
K sub-blocks inside it is element-wise, so LLVM turns it into SIMD without
reordering any float32 sum: every lane computes exactly the scalar C result.
Where C branches per block, the lanes use masks; where C copies levels into L on
acceptance, the lanes keep the accepted iscale and rebuild L from it. The
make_qkx searches run as lanes too (16 lanes of 16 for Q2_K, 8 of 32 for Q4_K/Q5_K).

Levels are kept as float32 and rounded with the magic-number trick, which equals
C's `nearest_int` for |v| <= 4194303 (and vectorises, unlike numba's int64 ints).
Where v is not provably inside that range, lanes count violations and the
caller redoes such a lane with the scalar port in jit_search.py (C's exact
out-of-range bits); for finite weights this practically never happens.
"""
from __future__ import annotations

import numpy as np
from numba import njit

from .jit_search import JIT, F0, F1, F32, make_q3, make_qkx

_EPS = F32(1e-15)
_P1 = F32(0.1)
_MAGIC = F32(12582912.0)
_LIMIT = F32(4194303.0)


@njit(inline="always", **JIT)
def rint(v):
    """nearest_int(v) as float32 for |v| <= 4194303: add and remove 1.5 * 2**23 (half-to-even)."""
    return (v + _MAGIC) - _MAGIC


@njit(inline="always", **JIT)
def clamp(v, lo, hi):
    return lo if v < lo else (hi if v > hi else v)


@njit(inline="always", **JIT)
def outside(v):
    """1 when nearest_int(v) could differ from rint(v) (|v| > 4194303 or NaN), else 0."""
    return F0 if abs(v) <= _LIMIT else F1


@njit(inline="always", **JIT)
def _signed_max_lanes(X, amax, mx):
    n, K = X.shape
    amax[:] = 0
    mx[:] = 0
    for i in range(n):
        for k in range(K):
            ax = abs(X[i, k])
            if ax > amax[k]:
                amax[k] = ax
                mx[k] = X[i, k]


@njit(inline="always", **JIT)
def _qx_sums_lanes(X, W, WX, nmax, iscale, sumlx, suml2):
    n, K = X.shape
    lo, hi = F32(-nmax), F32(nmax - 1)
    sumlx[:] = 0
    suml2[:] = 0
    for i in range(n):
        for k in range(K):
            l = clamp(rint(iscale[k] * X[i, k]), lo, hi)      # |iscale*x| <= nmax + 1: exact
            sumlx[k] += WX[i, k] * l
            suml2[k] += W[i, k] * l * l


@njit(**JIT)
def qx_lanes(X, W, WX, nmax, L, S, scale):
    """make_qx_quants(n, nmax, x, L, 1, w) on every lane; WX = W*X. L[i, k] = l + nmax (float32); scale[k]."""
    n, K = X.shape
    amax, mx, iscale, best_is, sumlx, suml2, best = S[0], S[1], S[2], S[3], S[4], S[5], S[6]
    _signed_max_lanes(X, amax, mx)
    fnmax = F32(nmax)
    for k in range(K):
        if amax[k] < _EPS:
            mx[k] = F1
        iscale[k] = -fnmax / mx[k]
        best_is[k] = iscale[k]
    _qx_sums_lanes(X, W, WX, nmax, iscale, sumlx, suml2)
    for k in range(K):
        scale[k] = sumlx[k] / suml2[k] if suml2[k] != 0 else F0
        best[k] = scale[k] * sumlx[k]
    for step in range(-9, 10):
        if step == 0:
            continue
        for k in range(K):
            iscale[k] = -(fnmax + _P1 * F32(step)) / mx[k]
        _qx_sums_lanes(X, W, WX, nmax, iscale, sumlx, suml2)
        for k in range(K):
            if suml2[k] > 0 and sumlx[k] * sumlx[k] > best[k] * suml2[k]:
                scale[k] = sumlx[k] / suml2[k]
                best[k] = scale[k] * sumlx[k]
                best_is[k] = iscale[k]
    for i in range(n):
        for k in range(K):
            L[i, k] = fnmax + clamp(rint(best_is[k] * X[i, k]), -fnmax, fnmax - F1)
    for k in range(K):
        if amax[k] < _EPS:
            scale[k] = F0
            L[:, k] = 0


@njit(inline="always", **JIT)
def _q3_pass(X, W, WX, nmax, L, sumlx, suml2, active, changed, viol):
    """One of make_q3_quants' walks over i on every lane, branch-free; changed[k] counts moves."""
    n, K = X.shape
    lo, hi = F32(-nmax), F32(nmax - 1)
    changed[:] = 0
    for i in range(n):
        for k in range(K):
            fl = L[i, k]
            slx = sumlx[k] - WX[i, k] * fl
            sl2 = suml2[k] - W[i, k] * fl * fl
            v = X[i, k] * sl2 / slx
            live = (active[k] > 0) & (slx > 0)
            viol[k] += outside(v) if live else F0
            new = clamp(rint(v), lo, hi)
            slx2 = slx + WX[i, k] * new
            sl22 = sl2 + W[i, k] * new * new
            acc = live & (new != fl) & (sl22 > 0) & (slx2 * slx2 * suml2[k] > sumlx[k] * sumlx[k] * sl22)
            L[i, k] = new if acc else fl
            sumlx[k] = slx2 if acc else sumlx[k]
            suml2[k] = sl22 if acc else suml2[k]
            changed[k] += F1 if acc else F0


@njit(**JIT)
def q3_lanes(X, W, WX, nmax, L, S, scale):
    """make_q3_quants(n, nmax, x, L, true) on every lane; W = X*X, WX = W*X. L[i, k] = l + nmax (float32).

    Lanes whose walk met an out-of-range nearest_int are redone with the scalar port.
    """
    n, K = X.shape
    amax, mx, iscale, sumlx, suml2, active, changed, viol = S[0], S[1], S[2], S[3], S[4], S[5], S[6], S[7]
    _signed_max_lanes(X, amax, mx)
    lo, hi = F32(-nmax), F32(nmax - 1)
    for k in range(K):
        active[k] = F0 if amax[k] < _EPS else F1
        iscale[k] = -F32(nmax) / (mx[k] if active[k] > 0 else F1)
        sumlx[k] = suml2[k] = viol[k] = F0
    for i in range(n):
        for k in range(K):
            l = clamp(rint(iscale[k] * X[i, k]), lo, hi)
            L[i, k] = l
            sumlx[k] += WX[i, k] * l
            suml2[k] += W[i, k] * l * l
    for _ in range(5):
        _q3_pass(X, W, WX, nmax, L, sumlx, suml2, active, changed, viol)
        more = False
        for k in range(K):
            active[k] = active[k] if changed[k] > 0 else F0
            more = more or active[k] > 0
        if not more:
            break
    for k in range(K):
        live = not amax[k] < _EPS
        scale[k] = (sumlx[k] / suml2[k] if suml2[k] > 0 else F0) if live else F0
        for i in range(n):
            L[i, k] = L[i, k] + F32(nmax) if live else F0
        if viol[k] > 0:
            _redo_q3(X, nmax, L, scale, k)


@njit(**JIT)
def _redo_q3(X, nmax, L, scale, k):
    x = X[:, k].copy()
    Li = np.empty(x.size, np.int32)
    scale[k] = make_q3(x, nmax, Li)
    for i in range(x.size):
        L[i, k] = F32(Li[i])


@njit(inline="always", **JIT)
def _qkx_levels_lanes(X, fnmax, iscale, mn, xmin, xmax, L, viol):
    """L[i, k] = clamp(nearest_int(iscale*(x - mn)), 0, nmax); viol[k] += 1 where rint might differ."""
    n, K = X.shape
    for k in range(K):
        viol[k] += outside(iscale[k] * (xmin[k] - mn[k])) + outside(iscale[k] * (xmax[k] - mn[k]))
    for i in range(n):
        for k in range(K):
            L[i, k] = clamp(rint(iscale[k] * (X[i, k] - mn[k])), F0, fnmax)


@njit(inline="always", **JIT)
def _qkx_error_lanes(X, W, L, scale, mn, use_mad, err):
    n, K = X.shape
    err[:] = 0
    for i in range(n):
        for k in range(K):
            diff = scale[k] * L[i, k] + mn[k] - X[i, k]
            err[k] += W[i, k] * (abs(diff) if use_mad else diff * diff)


@njit(**JIT)
def qkx_lanes(X, W, nmax, rmin, rdelta, nstep, use_mad, flat_le, L, Laux, S, scale, the_min):
    """make_qkx2_quants (flat_le False) / make_qkx3_quants (True) on every lane.

    X, W [n, K]; L, Laux [n, K] float32 scratch, L receives the levels; S [16, K] scratch;
    scale[k], the_min[k] as the scalar make_qkx returns them.
    """
    n, K = X.shape
    mn, mx, sum_w, sum_x, xmin, iscale, best, cur = S[0], S[1], S[2], S[3], S[4], S[5], S[6], S[7]
    sum_l, sum_l2, sum_xl, live, viol, t_scale, t_min, acc = S[8], S[9], S[10], S[11], S[12], S[13], S[14], S[15]
    for k in range(K):
        mn[k] = mx[k] = X[0, k]
        sum_w[k] = W[0, k]
        sum_x[k] = sum_w[k] * X[0, k]
    for i in range(1, n):
        for k in range(K):
            x = X[i, k]
            mn[k] = x if x < mn[k] else mn[k]
            mx[k] = x if x > mx[k] else mx[k]
            sum_w[k] += W[i, k]
            sum_x[k] += W[i, k] * x
    fnmax = F32(nmax)
    for k in range(K):
        xmin[k] = mn[k]
        mn[k] = F0 if mn[k] > 0 else mn[k]
        flat = (mx[k] <= mn[k]) if flat_le else (mx[k] == mn[k])
        live[k] = F0 if flat else F1
        viol[k] = F0
        iscale[k] = fnmax / (mx[k] - mn[k])
        scale[k] = F1 / iscale[k]
    _qkx_levels_lanes(X, fnmax, iscale, mn, xmin, mx, L, viol)
    _qkx_error_lanes(X, W, L, scale, mn, use_mad, best)
    for step in range(nstep + 1 if nstep >= 1 else 0):
        for k in range(K):
            iscale[k] = (rmin + rdelta * F32(step) + fnmax) / (mx[k] - mn[k])
        _qkx_levels_lanes(X, fnmax, iscale, mn, xmin, mx, Laux, viol)
        sum_l[:] = 0
        sum_l2[:] = 0
        sum_xl[:] = 0
        for i in range(n):
            for k in range(K):
                wl = W[i, k] * Laux[i, k]
                sum_l[k] += wl
                sum_l2[k] += wl * Laux[i, k]
                sum_xl[k] += wl * X[i, k]
        for k in range(K):
            D = sum_w[k] * sum_l2[k] - sum_l[k] * sum_l[k]
            ts = (sum_w[k] * sum_xl[k] - sum_x[k] * sum_l[k]) / D
            tm = (sum_l2[k] * sum_x[k] - sum_l[k] * sum_xl[k]) / D
            pos = tm > 0
            t_scale[k] = sum_xl[k] / sum_l2[k] if pos else ts
            t_min[k] = F0 if pos else tm
            acc[k] = F1 if D > 0 else F0
        _qkx_error_lanes(X, W, Laux, t_scale, t_min, use_mad, cur)
        anyacc = False
        for k in range(K):
            acc[k] = F1 if (acc[k] > 0) & (cur[k] < best[k]) else F0
            anyacc = anyacc or acc[k] > 0
        if not anyacc:
            continue
        for i in range(n):
            for k in range(K):
                L[i, k] = Laux[i, k] if acc[k] > 0 else L[i, k]
        for k in range(K):
            if acc[k] > 0:
                best[k] = cur[k]
                scale[k] = t_scale[k]
                mn[k] = t_min[k]
    for k in range(K):
        if live[k] == 0:
            L[:, k] = 0
            scale[k] = F0
        elif viol[k] > 0:
            _redo_qkx(X, W, nmax, rmin, rdelta, nstep, use_mad, flat_le, L, scale, mn, k)
        the_min[k] = -mn[k]


@njit(**JIT)
def _redo_qkx(X, W, nmax, rmin, rdelta, nstep, use_mad, flat_le, L, scale, mn, k):
    x, w = X[:, k].copy(), W[:, k].copy()
    Lk, Laux = np.empty(x.size, F32), np.empty(x.size, F32)
    scale[k], m = make_qkx(x, w, nmax, rmin, rdelta, nstep, use_mad, flat_le, Lk, Laux)
    mn[k] = -m
    for i in range(x.size):
        L[i, k] = Lk[i]
