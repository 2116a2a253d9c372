"""make_q3_quants and make_qp_quants: scale searches ending in a coordinate descent.

Both C functions walk i = 0..n-1 up to 5 times and move element i to a new level
only if that raises sumlx²/suml2 given the sums so far. Until a block's first
acceptance in a walk its sums are those at the walk's start, so one matrix
evaluation over all remaining i finds, exactly, where C accepts next. `_descent` runs
such rounds (apply that acceptance, resume after it) over the blocks still moving; a
block whose walk accepted nothing is finished, as in C.
"""
from __future__ import annotations

import numpy as np

from .search import (
    _EPS,
    F32,
    Workspace,
    fix_range,
    nearest_int,
    rint_clip,
    seqsum,
    signed_max,
)

_SLICE = 8192        # blocks per candidate evaluation: keeps its ~10 [n, B] arrays in cache


def _first_true(acc: np.ndarray) -> np.ndarray:
    """Per column, the first row where acc is True (n if none)."""
    n = acc.shape[0]
    f = np.full(acc.shape[1], n, np.intp)
    for i in range(n - 1, -1, -1):
        f[acc[i]] = i
    return f


def _descent(state, sumlx, suml2, candidates, ws, cols, products=None):
    """Run the walks for blocks `cols` of `state = [x, w, wx, L]` ([n, B]); in place.

    candidates(x, w, wx, L, sumlx, suml2, products) -> (acc, [new L, new sumlx, new suml2])
    for every element: whether C would accept it now, and what it would store.
    products: the [wx*L, (w*L)*L] behind sumlx/suml2, reused by the first round.
    """
    n = state[0].shape[0]
    whole = cols.size == state[0].shape[1]
    if whole:
        st, lx, l2 = list(state), sumlx, suml2
    else:
        st, lx, l2 = _compact(state, cols, ws, 0), sumlx[cols], suml2[cols]
        products = None
    # Live blocks are inside a walk that has accepted something: they resume at
    # `start` and may begin `left` more walks (C's 5 tries in all).
    start = left = None
    parity = 1
    while cols.size:
        f, new, slx2, sl22 = _next_accept(st, lx, l2, candidates, start, left, products)
        products = None
        hit = np.flatnonzero(f < n)
        fh = f[hit]
        st[3][fh, hit] = new[hit]
        lx[hit], l2[hit] = slx2[hit], sl22[hit]
        if start is None:
            start, left = np.zeros(cols.size, np.intp), np.full(cols.size, 4, np.intp)
        left[hit[fh < start[hit]]] -= 1             # accepted in a new walk
        start[hit] = fh + 1
        if hit.size == cols.size:
            continue
        if not whole:                               # hand finished blocks back
            done = np.flatnonzero(f == n)
            state[3][:, cols[done]] = st[3][:, done]
            sumlx[cols[done]], suml2[cols[done]] = lx[done], l2[done]
        cols, start, left = cols[hit], start[hit], left[hit]
        st, lx, l2 = _compact(st, hit, ws, parity), lx[hit], l2[hit]
        parity, whole = 1 - parity, False


def _next_accept(st, lx, l2, candidates, start, left, products=None):
    """Per block: the element C accepts next (n if none) with its new level and sums.

    start None: every block begins its first walk. Otherwise a block resumes at start;
    if nothing there is accepted, its walk ends having changed something, so (if
    left > 0) C begins a new walk from element 0 with the same sums, i.e. with
    the candidates already in hand. Wide batches go in cache-sized column slices.
    """
    n, nb = st[0].shape
    f = np.empty(nb, np.intp)
    vals = np.empty((3, nb), F32)
    for a in range(0, nb, _SLICE):
        b = min(a + _SLICE, nb)
        sl = slice(a, b) if b - a < nb else slice(None)
        pre = None if products is None else [p[:, sl] for p in products]
        acc, cand = candidates(*(x[:, sl] for x in st), lx[sl], l2[sl], pre)
        if start is None:
            fs = _first_true(acc)
        else:   # rank rows in C's visiting order: start..n-1, then (new walk) 0..start-1
            st_ = start[sl].astype(np.int16)
            rank = np.arange(n, dtype=np.int16)[:, None] - st_
            rank[rank < 0] += n
            rank[~acc] = n
            fs = rank.min(axis=0).astype(np.intp)
            fs[(fs >= n - st_) & (left[sl] == 0)] = n     # no walks left to restart
            found = fs < n
            fs[found] += st_[found]
            fs[fs >= n] -= n
            fs[~found] = n
        f[sl] = fs
        width = fs.size
        at = np.minimum(fs, n - 1) * width + np.arange(width)   # flat index into [n, width]
        np.take(cand.reshape(3, -1), at, axis=1, out=vals[:, sl])
    return f, vals[0], vals[1], vals[2]


def _compact(arrays, idx, ws, parity):
    """Columns `idx` of the [n, B] state arrays, stacked into one [4, n, len(idx)] scratch."""
    out = ws.get(f"descent{parity}", (len(arrays), arrays[0].shape[0], idx.size))
    if isinstance(arrays, np.ndarray):
        return np.take(arrays, idx, axis=2, out=out)
    for k, a in enumerate(arrays):
        np.take(a, idx, axis=1, out=out[k])
    return out


# ------------------------------------------------------------------ make_q3_quants

def _q3_candidates(nmax, ws):
    def candidates(x, w, wx, L, sumlx, suml2, products=None):
        g = lambda name, dtype=F32: ws.get(name, x.shape, dtype)
        if products is None:
            slx = np.multiply(wx, L, out=g("q3.slx"))
            sl2 = np.multiply(w, L, out=g("q3.sl2"))
            np.multiply(sl2, L, out=sl2)
        else:                                   # wx*L and (w*L)*L, kept from the initial sums
            slx, sl2 = products
        slx = np.subtract(sumlx, slx, out=g("q3.slx"))
        sl2 = np.subtract(suml2, sl2, out=g("q3.sl2"))
        v = np.multiply(x, sl2, out=g("q3.v"))
        np.divide(v, slx, out=v)
        cand = ws.get("q3.cand", (3,) + x.shape)       # new L, new sumlx, new suml2
        new = rint_clip(v, -nmax, nmax - 1, out=cand[0])
        fix_range(v, new, -nmax, nmax - 1)
        slx2 = np.multiply(wx, new, out=cand[1])
        np.add(slx2, slx, out=slx2)
        sl22 = np.multiply(w, new, out=cand[2])
        np.multiply(sl22, new, out=sl22)
        np.add(sl22, sl2, out=sl22)
        lhs = np.multiply(slx2, slx2, out=v)
        np.multiply(lhs, suml2, out=lhs)
        rhs = np.multiply(sl22, sumlx * sumlx, out=sl2)
        acc = np.greater(lhs, rhs, out=g("q3.acc", bool))
        tmp = g("q3.tmp", bool)
        acc &= np.greater(slx, 0, out=tmp)
        acc &= np.not_equal(new, L, out=tmp)
        acc &= np.greater(sl22, 0, out=tmp)
        return acc, cand
    return candidates


def q3_quants_t(xt: np.ndarray, nmax: int, do_rmse: bool = True, ws: Workspace | None = None):
    """`make_q3_quants` on `xt [n, B]` -> (scale f32[B], L f32[n, B] = l + nmax, 0 if all-zero).

    With a Workspace, L is one of its scratch arrays.
    """
    ws = ws or Workspace()
    amax, mx = signed_max(xt)
    zero = amax < _EPS
    mx[zero] = 1
    iscale = F32(-nmax) / mx
    L = np.multiply(xt, iscale, out=ws.get("q3.L", xt.shape))
    rint_clip(L, -nmax, nmax - 1, out=L)
    if do_rmse:
        w = np.multiply(xt, xt, out=ws.get("q3.w", xt.shape))
        wx = np.multiply(w, xt, out=ws.get("q3.wx", xt.shape))
        t1 = np.multiply(wx, L, out=ws.get("q3.t1", xt.shape))
        t2 = np.multiply(w, L, out=ws.get("q3.t2", xt.shape))
        np.multiply(t2, L, out=t2)
        sumlx, suml2 = seqsum(t1), seqsum(t2)
        with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
            _descent([xt, w, wx, L], sumlx, suml2, _q3_candidates(nmax, ws), ws,
                     np.flatnonzero(~zero), products=(t1, t2))
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


def _qp_candidates(nmax):
    # C keeps L in uint8_t: levels below 0 wrap, and later steps read them back wrapped.
    def candidates(x, w, wx, L, sumlx, suml2, products=None):
        slx = sumlx - wx * L
        sl2 = suml2 - (w * L) * L
        new = np.minimum(nearest_int((x * sl2) / slx), nmax).astype(F32)
        slx2 = slx + wx * new
        sl22 = sl2 + (w * new) * new
        acc = (slx2 * slx2) * suml2 > (sumlx * sumlx) * sl22
        acc &= (slx > 0) & (sl2 > 0) & (new != L)
        return acc, np.stack([np.mod(new, F32(256)), slx2, sl22])
    return candidates


def qp_quants_t(xt: np.ndarray, nmax: int, wt: np.ndarray, ws: Workspace | None = None):
    """`make_qp_quants` on `xt [n, B]` (non-negative values, e.g. sub-block scales).

    Returns (scale f32[B], L int32 [n, B] as C's uint8_t L, i.e. mod 256).
    """
    ws = ws or Workspace()
    mx = xt.max(axis=0)
    mx = np.where(mx > 0, mx, F32(0))
    zero = mx < _EPS
    mx[zero] = 1
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
        l = np.minimum(nearest_int(iscale * xt), nmax).astype(F32)
        wx = wt * xt
        sumlx = seqsum(wx * l)
        suml2 = seqsum((wt * l) * l)
        L = np.mod(l, F32(256))
        _descent([xt, wt, wx, L], sumlx, suml2, _qp_candidates(nmax), ws,
                 np.arange(xt.shape[1]))
        scale = np.where(suml2 > 0, sumlx / suml2, F32(0))
    L = L.astype(np.int32)
    L[:, zero] = 0
    scale[zero] = 0
    return scale, L


def make_qp_quants(x: np.ndarray, nmax: int, quant_weights: np.ndarray):
    """C `make_qp_quants(n, nmax, x, L, quant_weights)` for `x, quant_weights [nblocks, n]`.

    Returns (scale f32[nblocks], L uint8 [nblocks, n]).
    """
    xt = np.ascontiguousarray(np.asarray(x, F32).T)
    wt = np.ascontiguousarray(np.asarray(quant_weights, F32).T)
    scale, lt = qp_quants_t(xt, nmax, wt)
    return scale, lt.T.astype(np.uint8)
