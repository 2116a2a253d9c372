"""Vectorised ports of ggml-quants.c's scale searches, bit-exact in float32.

Every function here works on many independent blocks at once. Public functions take
`x [nblocks, n]` (n = 8/16/32 elements per block) like the C helpers take one block;
the `*_t` variants take element-major `xt [n, nblocks]`, which is what the hot loops
use: each C loop over the n elements becomes n sequential steps (or one axis-0
`np.add.reduce`, which numpy evaluates row by row) vectorised across blocks, so
every float32 sum rounds exactly as the C loop does. Inputs must be finite.
"""
from __future__ import annotations

import numpy as np

F32 = np.float32
_MAGIC = F32(12582912.0)
_NI_LIMIT = F32(4194303.0)    # |v| up to here: nearest_int(v) == rint(v)
_EPS = F32(1e-15)             # GROUP_MAX_EPS


def nearest_int(v) -> np.ndarray:
    """C `nearest_int`: float32 + 12582912.f, low mantissa bits; int32, half-to-even."""
    s = np.asarray(v, dtype=F32) + _MAGIC
    return (s.view(np.int32) & 0x7FFFFF) - 0x400000


def seqsum(a: np.ndarray, from_zero: bool = True) -> np.ndarray:
    """Left-to-right float32 sum over axis 0: `s = 0; for i: s += a[i]` (or `s = a[0]; ...`).

    numpy reduces a C-contiguous array over axis 0 row by row, but with a single
    column it reduces pairwise, so that case (and any odd layout) loops explicitly.
    """
    if a.ndim >= 2 and a.shape[-1] >= 2 and a.flags.c_contiguous:
        if from_zero:
            return np.add.reduce(a, axis=0, initial=F32(0))
        return np.add.reduce(a, axis=0)
    s = a[0] + F32(0) if from_zero else a[0].copy()
    for i in range(1, a.shape[0]):
        s += a[i]
    return s


def rint_clip(v: np.ndarray, lo, hi, out: np.ndarray | None = None) -> np.ndarray:
    """`MAX(lo, MIN(hi, nearest_int(v)))` as float32, for |v| <= 4194303 (see `_fix_range`)."""
    out = np.rint(v, out=out)
    return np.clip(out, lo, hi, out=out)


def _fix_range(v: np.ndarray, l: np.ndarray, lo, hi) -> None:
    """Redo `l = clip(rint(v))` with C's exact nearest_int where |v| is out of its range."""
    bad = ~(np.abs(v) <= _NI_LIMIT)
    if bad.any():
        l[bad] = np.clip(nearest_int(v[bad]), lo, hi)


def _levels_from_min(xt, mn, iscale, nmax, xmin, xmax, out):
    """Laux = clamp(nearest_int(iscale*(x - min)), 0, nmax) for every block (float32)."""
    np.subtract(xt, mn, out=out)
    out *= iscale
    # |v| is bounded by its values at the block's extreme x, so checking those suffices.
    lo, hi = iscale * (xmin - mn), iscale * (xmax - mn)
    bad = ~((np.abs(lo) <= _NI_LIMIT) & (np.abs(hi) <= _NI_LIMIT))
    cols = np.flatnonzero(bad) if bad.any() else None
    v_bad = out[:, cols].copy() if cols is not None else None
    rint_clip(out, 0, nmax, out=out)
    if cols is not None:
        out[:, cols] = np.clip(nearest_int(v_bad), 0, nmax)
    return out


# ---------------------------------------------------------------- make_qx_quants

def _signed_max(xt):
    """(amax, max): the largest |x| and the first x that attains it (C's strict `>` scan)."""
    ax = np.abs(xt)
    idx = ax.argmax(axis=0)
    cols = np.arange(xt.shape[1])
    return ax[idx, cols], xt[idx, cols]


def _qx_weights(xt, rmse_type, wt):
    if wt is not None:
        return wt
    if rmse_type == 1:
        return xt * xt
    if rmse_type == 2:
        return np.ones_like(xt)
    if rmse_type == 3:
        return np.abs(xt)
    return np.sqrt(np.abs(xt))


def qx_quants_t(xt: np.ndarray, nmax: int, rmse_type: int = 1, wt: np.ndarray | None = None):
    """`make_qx_quants` on element-major blocks `xt [n, B]` -> (scale f32[B], L f32[n, B]).

    L holds `l + nmax` in 0..2*nmax-1 (0 for all-zero blocks), as float32.
    rmse_type must be >= 1 (the only kinds K-quants and legacy imatrix paths use).
    """
    if rmse_type < 1:
        raise ValueError("only rmse_type >= 1 is implemented")
    n, nb = xt.shape
    amax, mx = _signed_max(xt)
    zero = amax < _EPS
    mx = np.where(zero, F32(1), mx)
    w = _qx_weights(xt, rmse_type, wt)
    wx = w * xt
    l = np.empty_like(xt)
    prod = np.empty((n, 2, nb), F32)

    def sums(iscale):
        np.multiply(xt, iscale, out=l)
        rint_clip(l, -nmax, nmax - 1, out=l)
        np.multiply(wx, l, out=prod[:, 0])
        np.multiply(w, l, out=prod[:, 1])
        prod[:, 1] *= l
        s = seqsum(prod)
        return s[0], s[1]

    with np.errstate(divide="ignore", invalid="ignore"):
        best_is = F32(-nmax) / mx
        sumlx, suml2 = sums(best_is)
        scale = np.where(suml2 != 0, sumlx / suml2, F32(0))
        best = scale * sumlx
        for step in range(-9, 10):
            if step == 0:
                continue
            iscale = -(F32(nmax) + F32(0.1) * F32(step)) / mx
            sumlx, suml2 = sums(iscale)
            acc = (suml2 > 0) & (sumlx * sumlx > best * suml2)
            scale = np.where(acc, sumlx / suml2, scale)
            best = np.where(acc, scale * sumlx, best)
            best_is = np.where(acc, iscale, best_is)
    np.multiply(xt, best_is, out=l)
    rint_clip(l, -nmax, nmax - 1, out=l)
    l += F32(nmax)
    l[:, zero] = 0
    scale[zero] = 0
    return scale, l


def make_qx_quants(x: np.ndarray, nmax: int, rmse_type: int = 1, qw: np.ndarray | None = None):
    """C `make_qx_quants(n, nmax, x, L, rmse_type, qw)` for blocks `x [nblocks, n]`.

    qw: per-element weights `[nblocks, n]` (or None: weights from rmse_type, 1 = x²).
    Returns (scale float32 [nblocks], L uint8 [nblocks, n] holding l + nmax in
    0..2*nmax-1); an all-zero block (max |x| < 1e-15) gives scale 0 and L = 0.
    """
    xt = np.ascontiguousarray(np.asarray(x, F32).T)
    wt = None if qw is None else np.ascontiguousarray(np.asarray(qw, F32).T)
    scale, lt = qx_quants_t(xt, nmax, rmse_type, wt)
    return scale, lt.T.astype(np.uint8)


# ---------------------------------------------------------- make_qkx2/qkx3_quants

def qkx_quants_t(xt, wt, nmax, rmin, rdelta, nstep, use_mad, flat_le=False):
    """make_qkx2_quants (flat_le False) / make_qkx3_quants (True) on `xt [n, B]`.

    Returns (scale f32[B], the_min f32[B], L f32[n, B] in 0..nmax). wt None means
    w = x² (qkx3 only). The min found by an accepted step is used by later steps,
    as in C; L is rebuilt at the end from the accepted step's (iscale, min).
    """
    n, nb = xt.shape
    if wt is None:
        wt = xt * xt
    xmin, xmax = xt.min(axis=0), xt.max(axis=0)
    sum_w = seqsum(wt, from_zero=False)
    sum_x = seqsum(wt * xt, from_zero=False)
    mn = np.minimum(xmin, F32(0))
    flat = (xmax <= mn) if flat_le else (xmax == mn)
    mn0 = mn.copy()
    mn[flat] = xmax[flat] - F32(1)       # any finite range: flat blocks are reset at the end
    laux = np.empty_like(xt)
    err = np.empty_like(xt)
    prod = np.empty((n, 3, nb), F32)

    def error(scale, mn_):
        np.multiply(laux, scale, out=err)
        err += mn_
        err -= xt
        if use_mad:
            np.abs(err, out=err)
        else:
            err *= err
        err *= wt
        return seqsum(err)

    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        best_is = F32(nmax) / (xmax - mn)
        scale = F32(1) / best_is
        _levels_from_min(xt, mn, best_is, nmax, xmin, xmax, laux)
        best = error(scale, mn)
        best_mn = mn.copy()
        live = ~flat
        for step in range(nstep + 1 if nstep >= 1 else 0):
            iscale = ((F32(rmin) + F32(rdelta) * F32(step)) + F32(nmax)) / (xmax - mn)
            _levels_from_min(xt, mn, iscale, nmax, xmin, xmax, laux)
            np.multiply(wt, laux, out=prod[:, 0])
            np.multiply(prod[:, 0], laux, out=prod[:, 1])
            np.multiply(prod[:, 0], xt, out=prod[:, 2])
            sum_l, sum_l2, sum_xl = seqsum(prod)
            D = sum_w * sum_l2 - sum_l * sum_l
            this_scale = (sum_w * sum_xl - sum_x * sum_l) / D
            this_min = (sum_l2 * sum_x - sum_l * sum_xl) / D
            pos = this_min > 0
            this_min[pos] = 0
            this_scale = np.where(pos, sum_xl / sum_l2, this_scale)
            cur = error(this_scale, this_min)
            acc = (D > 0) & (cur < best) & live
            best = np.where(acc, cur, best)
            scale = np.where(acc, this_scale, scale)
            best_is = np.where(acc, iscale, best_is)
            best_mn = np.where(acc, mn, best_mn)
            mn = np.where(acc, this_min, mn)
        _levels_from_min(xt, best_mn, best_is, nmax, xmin, xmax, laux)
    laux[:, flat] = 0
    scale[flat] = 0
    mn[flat] = mn0[flat]
    return scale, -mn, laux


def _qkx_public(x, weights, nmax, rmin, rdelta, nstep, use_mad, flat_le):
    xt = np.ascontiguousarray(np.asarray(x, F32).T)
    wt = None if weights is None else np.ascontiguousarray(np.asarray(weights, F32).T)
    scale, the_min, lt = qkx_quants_t(xt, wt, nmax, rmin, rdelta, nstep, use_mad, flat_le)
    return scale, the_min, lt.T.astype(np.uint8)


def make_qkx2_quants(x, weights, nmax, rmin, rdelta, nstep, use_mad=False):
    """C `make_qkx2_quants(n, nmax, x, weights, L, &the_min, Laux, rmin, rdelta, nstep, use_mad)`.

    x, weights: float32 [nblocks, n]. Returns (scale f32[nblocks], the_min f32[nblocks],
    L uint8 [nblocks, n] in 0..nmax); dequantised value = scale*L - the_min.
    """
    return _qkx_public(x, weights, nmax, rmin, rdelta, nstep, use_mad, flat_le=False)


def make_qkx3_quants(x, weights, nmax, rmin, rdelta, nstep, use_mad=False):
    """C `make_qkx3_quants(n, nmax, x, weights, L, &the_min, Laux, rmin, rdelta, nstep, use_mad)`.

    x: float32 [nblocks, n]; weights: float32 [nblocks, n] or None (then w = x²).
    Returns (scale f32[nblocks], the_min f32[nblocks], L uint8 [nblocks, n] in 0..nmax);
    dequantised value = scale*L - the_min, so Q4_1/Q5_1 store d = scale, m = -the_min.
    E.g. Q4_1 with imatrix: `make_qkx3_quants(x, w, 15, -0.9, 0.05, 36)`.
    """
    return _qkx_public(x, weights, nmax, rmin, rdelta, nstep, use_mad, flat_le=True)
