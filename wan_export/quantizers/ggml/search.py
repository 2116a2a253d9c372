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
    if v.size and np.abs(v).max() <= _NI_LIMIT:   # NaN fails this test too
        return
    bad = ~(np.abs(v) <= _NI_LIMIT)
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
    amax = ax.max(axis=0)
    first = np.where(ax == amax, np.arange(xt.shape[0])[:, None], xt.shape[0]).min(axis=0)
    return amax, np.take_along_axis(xt, first[None], axis=0)[0]


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

    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
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
        np.add(err, mn_, out=err)
        np.subtract(err, xt, out=err)
        if use_mad:
            np.abs(err, out=err)
        else:
            np.multiply(err, err, out=err)
        np.multiply(err, wt, out=err)
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


# ------------------------------------------------------------------ make_q3_quants

def _q3_descent(xt, w, wx, L, sumlx, suml2, nmax):
    """make_q3_quants' coordinate descent (up to 5 passes); updates L/sums in place.

    C walks i = 0..n-1 and accepts a new level for element i only if that lowers the
    error given the sums so far. Until a block's first acceptance its sums are those at
    the start of the walk, so one matrix evaluation over all remaining i finds, exactly,
    where C accepts next. Each round applies that acceptance and resumes after it; a
    block whose pass had no acceptance is finished, as in C.
    """
    n = xt.shape[0]
    rows = np.arange(n)[:, None]
    cols = np.arange(xt.shape[1])                  # global index of each live block
    st = [xt, w, wx, L, sumlx, suml2]              # live blocks' state (global at first)
    start = np.zeros(cols.size, np.intp)           # where each block's pass resumes
    changed = np.zeros(cols.size, bool)            # anything accepted in this pass
    npass = np.zeros(cols.size, np.intp)
    while cols.size:
        x_, w_, wx_, L_, lx, l2 = st
        acc, new, slx2, sl22 = _q3_candidates(x_, w_, wx_, L_, lx, l2, nmax)
        if start.any():
            acc &= rows >= start
        f = np.where(acc, rows, n).min(axis=0)
        hit = np.flatnonzero(f < n)
        fh = f[hit]
        L_[fh, hit] = new[fh, hit]
        lx[hit], l2[hit] = slx2[fh, hit], sl22[fh, hit]
        start[hit] = fh + 1
        changed[hit] = True
        ended = start == n
        ended[f == n] = True
        again = ended & changed & (npass < 4)
        start[again], changed[again] = 0, False
        npass[again] += 1
        keep = ~ended | again
        if keep.all():
            continue
        if x_ is not xt:                           # hand finished blocks back
            done = ~keep
            L[:, cols[done]], sumlx[cols[done]], suml2[cols[done]] = L_[:, done], lx[done], l2[done]
        cols, start, changed, npass = cols[keep], start[keep], changed[keep], npass[keep]
        st = [x_[:, keep], w_[:, keep], wx_[:, keep], L_[:, keep], lx[keep], l2[keep]]


def _q3_candidates(x, w, wx, L, sumlx, suml2, nmax):
    """For every element: C's candidate level and whether it would be accepted now."""
    slx = np.multiply(wx, L)
    np.subtract(sumlx, slx, out=slx)
    sl2 = np.multiply(w, L)
    sl2 *= L
    np.subtract(suml2, sl2, out=sl2)
    v = np.multiply(x, sl2)
    v /= slx
    new = rint_clip(v, -nmax, nmax - 1)
    _fix_range(v, new, -nmax, nmax - 1)
    slx2 = np.multiply(wx, new)
    slx2 += slx
    sl22 = np.multiply(w, new)
    sl22 *= new
    sl22 += sl2
    lhs = np.multiply(slx2, slx2, out=v)
    lhs *= suml2
    rhs = np.multiply(sl22, sumlx * sumlx)
    acc = lhs > rhs
    acc &= slx > 0
    acc &= new != L
    acc &= sl22 > 0
    return acc, new, slx2, sl22


def q3_quants_t(xt: np.ndarray, nmax: int, do_rmse: bool = True):
    """`make_q3_quants` on `xt [n, B]` -> (scale f32[B], L f32[n, B] = l + nmax, 0 if all-zero)."""
    amax, mx = _signed_max(xt)
    zero = amax < _EPS
    mx = np.where(zero, F32(1), mx)
    iscale = F32(-nmax) / mx
    L = rint_clip(xt * iscale, -nmax, nmax - 1)
    if do_rmse:
        w = xt * xt
        wx = w * xt
        sumlx = seqsum(wx * L)
        suml2 = seqsum((w * L) * L)
        with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
            _q3_descent(xt, w, wx, L, sumlx, suml2, nmax)
            scale = np.where(suml2 > 0, sumlx / suml2, F32(0))
    else:
        scale = F32(1) / iscale
    L += F32(nmax)
    L[:, zero] = 0
    scale[zero] = 0
    return scale, L


def make_q3_quants(x: np.ndarray, nmax: int, do_rmse: bool = True):
    """C `make_q3_quants(n, nmax, x, L, do_rmse)` for `x [nblocks, n]`.

    Returns (scale f32[nblocks], L uint8 [nblocks, n] = l + nmax in 0..2*nmax-1).
    """
    scale, lt = q3_quants_t(np.ascontiguousarray(np.asarray(x, F32).T), nmax, do_rmse)
    return scale, lt.T.astype(np.uint8)


# ------------------------------------------------------------------ make_qp_quants

def _qp_mse(xt, wt, scale, l):
    diff = xt - scale * l
    return seqsum((wt * diff) * diff)


def qp_quants_t(xt: np.ndarray, nmax: int, wt: np.ndarray):
    """`make_qp_quants` on `xt [n, B]` (non-negative values, e.g. sub-block scales).

    Returns (scale f32[B], L int32 [n, B]). L mimics C's `uint8_t L[]`: values are
    stored mod 256, and the refinement reads them back that way.
    """
    mx = np.where(xt.max(axis=0) > 0, xt.max(axis=0), F32(0))
    zero = mx < _EPS
    mx = np.where(zero, F32(1), mx)
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        iscale = F32(nmax) / mx
        best = _qp_mse(xt, wt, F32(1) / iscale, (nearest_int(iscale * xt) & 0xFF).astype(F32))
        for step in range(-4, 5):
            if step == 0:
                continue
            iscale_is = (F32(0.1) * F32(step) + F32(nmax)) / mx
            l = np.minimum(nearest_int(iscale_is * xt), nmax).astype(F32)
            mse = _qp_mse(xt, wt, F32(1) / iscale_is, l)
            acc = mse < best
            best = np.where(acc, mse, best)
            iscale = np.where(acc, iscale_is, iscale)
        l = np.minimum(nearest_int(iscale * xt), nmax)
        lf = l.astype(F32)
        sumlx = seqsum((wt * xt) * lf)
        suml2 = seqsum((wt * lf) * lf)
        L = l & 0xFF
        for _ in range(5):
            if not _qp_pass(xt, wt, L, sumlx, suml2, nmax):
                break
        scale = np.where(suml2 > 0, sumlx / suml2, F32(0))
    L[:, zero] = 0
    scale[zero] = 0
    return scale, L


def _qp_pass(xt, wt, L, sumlx, suml2, nmax):
    changed = False
    for i in range(xt.shape[0]):
        li = L[i].astype(F32)
        wx = wt[i] * xt[i]
        slx = sumlx - wx * li
        sl2 = suml2 - (wt[i] * li) * li
        new = np.minimum(nearest_int((xt[i] * sl2) / slx), nmax)
        newf = new.astype(F32)
        slx2 = slx + wx * newf
        sl22 = sl2 + (wt[i] * newf) * newf
        acc = (slx > 0) & (sl2 > 0) & (new != L[i]) & ((slx2 * slx2) * suml2 > (sumlx * sumlx) * sl22)
        L[i] = np.where(acc, new & 0xFF, L[i])
        sumlx[...] = np.where(acc, slx2, sumlx)
        suml2[...] = np.where(acc, sl22, suml2)
        changed = changed or bool(acc.any())
    return changed


def make_qp_quants(x: np.ndarray, nmax: int, quant_weights: np.ndarray):
    """C `make_qp_quants(n, nmax, x, L, quant_weights)` for `x, quant_weights [nblocks, n]`.

    Returns (scale f32[nblocks], L uint8 [nblocks, n]).
    """
    xt = np.ascontiguousarray(np.asarray(x, F32).T)
    wt = np.ascontiguousarray(np.asarray(quant_weights, F32).T)
    scale, lt = qp_quants_t(xt, nmax, wt)
    return scale, lt.T.astype(np.uint8)
