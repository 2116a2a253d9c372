"""Vectorised ports of ggml-quants.c's scale searches, bit-exact in float32.

Every function here works on many independent blocks at once. Public functions take
`x [nblocks, n]` (n = 8/16/32 elements per block) like the C helpers take one block;
the `*_t` variants take element-major `xt [n, nblocks]`, which is what the hot loops
use: each C loop over the n elements becomes n sequential steps (or one axis-0
`np.add.reduce`, which numpy evaluates row by row) vectorised across blocks, so
every float32 sum rounds exactly as the C loop does. Inputs must be finite.
make_q3_quants and make_qp_quants live in search_descent.py and are re-exported here.
"""
from __future__ import annotations

import math

import numpy as np

F32 = np.float32
_MAGIC = F32(12582912.0)
_NI_LIMIT = F32(4194303.0)    # |v| up to here: nearest_int(v) == rint(v)
_EPS = F32(1e-15)             # GROUP_MAX_EPS
_HUGE = 1 << 22


class Workspace:
    """Scratch arrays reused from chunk to chunk.

    A fresh multi-MB temporary costs more than the arithmetic done in it: glibc gives
    freed heap tops back to the OS, so every reuse page-faults the memory in again.
    Arrays from `get` stay valid until the same name is requested again.
    """

    def __init__(self):
        self._bufs: dict = {}

    def get(self, name: str, shape, dtype=F32) -> np.ndarray:
        size = math.prod(shape)
        buf = self._bufs.get((name, dtype))
        if buf is None or buf.size < size:
            itemsize = np.dtype(dtype).itemsize
            nbytes = size * itemsize
            if nbytes >= _HUGE // 4:    # numpy madvises huge pages from 4 MiB: cheaper faults
                nbytes = max(nbytes, _HUGE)
            buf = self._bufs[(name, dtype)] = np.empty(nbytes // itemsize, dtype)
        return buf[:size].reshape(shape)


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
    """`MAX(lo, MIN(hi, nearest_int(v)))` as float32, for |v| <= 4194303 (see `fix_range`)."""
    out = np.rint(v, out=out)
    return np.clip(out, lo, hi, out=out)


def fix_range(v: np.ndarray, l: np.ndarray, lo, hi) -> None:
    """Redo `l = clip(rint(v))` with C's exact nearest_int where |v| is out of its range."""
    if v.size == 0 or (v.max() <= _NI_LIMIT and v.min() >= -_NI_LIMIT):   # False for NaN
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


def signed_max(xt: np.ndarray):
    """(amax, max): the largest |x| and the first x that attains it (C's strict `>` scan)."""
    hi, lo = xt.max(axis=0), xt.min(axis=0)
    amax = np.maximum(hi, -lo)
    mx = np.where(hi >= -lo, hi, lo)
    tie = np.flatnonzero((hi == -lo) & (hi != 0))    # +a and -a both there: first one wins
    if tie.size:
        sub = xt[:, tie]
        first = (np.abs(sub) == amax[tie]).argmax(axis=0)
        mx[tie] = sub[first, np.arange(tie.size)]
    return amax, mx


# ---------------------------------------------------------------- make_qx_quants

def _qx_weights(xt, rmse_type, wt, ws):
    if wt is not None:
        return wt
    w = ws.get("qx.w", xt.shape)
    if rmse_type == 1:
        return np.multiply(xt, xt, out=w)
    if rmse_type == 2:
        w.fill(1)
        return w
    if rmse_type == 3:
        return np.abs(xt, out=w)
    return np.sqrt(np.abs(xt, out=w), out=w)


def qx_quants_t(xt: np.ndarray, nmax: int, rmse_type: int = 1, wt: np.ndarray | None = None,
                ws: Workspace | None = None):
    """`make_qx_quants` on element-major blocks `xt [n, B]` -> (scale f32[B], L f32[n, B]).

    L holds `l + nmax` in 0..2*nmax-1 (0 for all-zero blocks), as float32; with a
    Workspace it is a scratch array of `ws`. rmse_type must be >= 1 (all that K-quants
    and the legacy imatrix paths use).
    """
    if rmse_type < 1:
        raise ValueError("only rmse_type >= 1 is implemented")
    ws = ws or Workspace()
    n, nb = xt.shape
    amax, mx = signed_max(xt)
    zero = amax < _EPS
    mx[zero] = 1
    w = _qx_weights(xt, rmse_type, wt, ws)
    wx = np.multiply(w, xt, out=ws.get("qx.wx", xt.shape))
    l = ws.get("qx.l", xt.shape)
    prod = ws.get("qx.prod", (n, 2, nb))

    def sums(iscale):
        np.multiply(xt, iscale, out=l)
        rint_clip(l, -nmax, nmax - 1, out=l)
        np.multiply(wx, l, out=prod[:, 0])
        np.multiply(w, l, out=prod[:, 1])
        np.multiply(prod[:, 1], l, out=prod[:, 1])
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

def qkx_quants_t(xt, wt, nmax, rmin, rdelta, nstep, use_mad, flat_le=False,
                 ws: Workspace | None = None):
    """make_qkx2_quants (flat_le False) / make_qkx3_quants (True) on `xt [n, B]`.

    Returns (scale f32[B], the_min f32[B], L f32[n, B] in 0..nmax; a scratch array of
    `ws` if given). wt None means w = x² (qkx3 only). The min found by an accepted
    step is used by later steps, as in C; L is rebuilt from the accepted (iscale, min).
    """
    ws = ws or Workspace()
    n, nb = xt.shape
    if wt is None:
        wt = np.multiply(xt, xt, out=ws.get("qkx.w", xt.shape))
    laux = ws.get("qkx.l", xt.shape)
    err = ws.get("qkx.err", xt.shape)
    prod = ws.get("qkx.prod", (n, 3, nb))
    xmin, xmax = xt.min(axis=0), xt.max(axis=0)
    sum_w = seqsum(wt, from_zero=False)
    sum_x = seqsum(np.multiply(wt, xt, out=err), from_zero=False)
    mn = np.minimum(xmin, F32(0))
    flat = (xmax <= mn) if flat_le else (xmax == mn)
    mn0 = mn.copy()
    mn[flat] = xmax[flat] - F32(1)       # any finite range: flat blocks are reset at the end

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
            D, this_scale, this_min = _qkx_fit(xt, wt, laux, sum_w, sum_x, prod)
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


def _qkx_fit(xt, wt, laux, sum_w, sum_x, prod):
    """Weighted least-squares (D, scale, min) for levels laux; min clamped to <= 0 as in C."""
    np.multiply(wt, laux, out=prod[:, 0])
    np.multiply(prod[:, 0], laux, out=prod[:, 1])
    np.multiply(prod[:, 0], xt, out=prod[:, 2])
    sum_l, sum_l2, sum_xl = seqsum(prod)
    D = sum_w * sum_l2 - sum_l * sum_l
    this_scale = (sum_w * sum_xl - sum_x * sum_l) / D
    this_min = (sum_l2 * sum_x - sum_l * sum_xl) / D
    pos = this_min > 0
    this_min[pos] = 0
    return D, np.where(pos, sum_xl / sum_l2, this_scale), this_min


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


_DESCENT = ("make_q3_quants", "make_qp_quants", "q3_quants_t", "qp_quants_t")


def __getattr__(name):
    # search_descent builds on this module, so its functions are re-exported lazily.
    if name in _DESCENT:
        from . import search_descent
        return getattr(search_descent, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
