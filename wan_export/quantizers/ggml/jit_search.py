"""numba ports of ggml-quants.c's per-block helpers, one block at a time, in float32.

The optional fast path behind kquants_jit.py: each function follows its C
namesake loop for loop (sequential float32 sums, left-to-right products, C's
uint8/int8 wraps), so the bytes equal the non-FMA C reference and the numpy
path in search.py. Compiled with `fastmath=False` (LLVM then never contracts
a*b+c into an FMA) and `error_model="numpy"` (IEEE division, like C). Every
constant is a float32 global: a Python float literal would promote the
arithmetic to float64 and round differently. Imported only when numba is.
"""
from __future__ import annotations

import numpy as np
from llvmlite import ir
from numba import njit, types
from numba.extending import intrinsic

JIT = dict(cache=True, nogil=True, fastmath=False, error_model="numpy", boundscheck=False)

F32 = np.float32
F0, F1 = F32(0), F32(1)
_MAGIC = F32(12582912.0)
_EPS = F32(1e-15)              # GROUP_MAX_EPS
_P1 = F32(0.1)
_TWO_M24 = F32(2.0 ** -24)
_LIMIT = F32(4194303.0)


@intrinsic
def f32_bits(typingctx, x):
    """The int32 bit pattern of a float32 (C's memcpy / union)."""
    if x != types.float32:
        return None

    def codegen(context, builder, sig, args):
        return builder.bitcast(args[0], ir.IntType(32))
    return types.int32(types.float32), codegen


@intrinsic
def bits_f32(typingctx, i):
    """The float32 with bit pattern `i` (an int32)."""
    if i != types.int32:
        return None

    def codegen(context, builder, sig, args):
        return builder.bitcast(args[0], ir.FloatType())
    return types.float32(types.int32), codegen


@njit(inline="always", **JIT)
def nearest_int(f):
    """C `nearest_int`: f + 12582912.f, then the low 23 bits minus 0x400000 (half-to-even)."""
    return (f32_bits(f + _MAGIC) & 0x7FFFFF) - 0x400000


@njit(inline="always", **JIT)
def rint(v):
    """nearest_int(v) as float32 for |v| <= 4194303: add and remove 1.5 * 2**23 (half-to-even)."""
    return (v + _MAGIC) - _MAGIC


@njit(inline="always", **JIT)
def clamp(v, lo, hi):
    return lo if v < lo else (hi if v > hi else v)


@njit(inline="always", **JIT)
def in_range(a, b):
    """Whether nearest_int equals rint for every value between a and b (|v| <= 4194303, no NaN)."""
    return abs(a) <= _LIMIT and abs(b) <= _LIMIT


@njit(**JIT)
def fp16_bits(f):
    """GGML_FP32_TO_FP16: round to nearest even, overflow to inf; returns the uint16 as int."""
    w = np.int64(f32_bits(f)) & 0xFFFFFFFF
    sign = (w >> 16) & 0x8000
    a = w & 0x7FFFFFFF
    if a > 0x7F800000:
        return sign | 0x7E00
    if a >= 0x477FF000:                      # >= 65520 rounds to inf
        return sign | 0x7C00
    e = a >> 23
    if e < 113:                              # below 2**-14: an fp16 subnormal (or zero)
        if e < 102:
            return sign
        m = (a & 0x7FFFFF) | 0x800000
        shift = 126 - e
        q = m >> shift
        rem = m & ((1 << shift) - 1)
        half = 1 << (shift - 1)
        if rem > half or (rem == half and (q & 1)):
            q += 1
        return sign | q
    h = ((e - 112) << 10) | ((a >> 13) & 0x3FF)
    rem = a & 0x1FFF
    if rem > 0x1000 or (rem == 0x1000 and (h & 1)):
        h += 1
    return sign | h


@njit(**JIT)
def fp16_value(h):
    """GGML_FP16_TO_FP32 of the uint16 `h` (exact)."""
    e = (h >> 10) & 0x1F
    m = h & 0x3FF
    if e == 0:
        v = F32(m) * _TWO_M24
        return -v if h & 0x8000 else v
    bits = ((h & 0x8000) << 16) | ((0xFF if e == 31 else e + 112) << 23) | (m << 13)
    return bits_f32(np.int32(np.uint32(bits)))


@njit(**JIT)
def put_fp16(y, at, f):
    """Store fp16(f) little-endian at y[at:at+2]; returns the stored value as float32."""
    h = fp16_bits(f)
    y[at] = h & 0xFF
    y[at + 1] = h >> 8
    return fp16_value(h)


@njit(**JIT)
def _signed_max(x):
    mx = F0
    amax = F0
    for i in range(x.size):
        ax = abs(x[i])
        if ax > amax:
            amax = ax
            mx = x[i]
    return amax, mx


@njit(**JIT)
def _qx_sums(x, w, nmax, iscale):
    sumlx = F0
    suml2 = F0
    for i in range(x.size):
        l = F32(max(-nmax, min(nmax - 1, nearest_int(iscale * x[i]))))
        sumlx += w[i] * x[i] * l
        suml2 += w[i] * l * l
    return sumlx, suml2


@njit(**JIT)
def _qx_levels(x, nmax, iscale, L):
    for i in range(x.size):
        L[i] = nmax + max(-nmax, min(nmax - 1, nearest_int(iscale * x[i])))


@njit(**JIT)
def make_qx(x, nmax, w, L):
    """make_qx_quants(n, nmax, x, L, rmse_type=1, qw=w); w = x*x where C passes NULL."""
    amax, mx = _signed_max(x)
    if amax < _EPS:
        L[:x.size] = 0
        return F0
    fnmax = F32(nmax)
    iscale = -fnmax / mx
    _qx_levels(x, nmax, iscale, L)
    sumlx, suml2 = _qx_sums(x, w, nmax, iscale)
    scale = sumlx / suml2 if suml2 != 0 else F0
    best = scale * sumlx
    for step in range(-9, 10):
        if step == 0:
            continue
        iscale = -(fnmax + _P1 * F32(step)) / mx
        sumlx, suml2 = _qx_sums(x, w, nmax, iscale)
        if suml2 > 0 and sumlx * sumlx > best * suml2:
            _qx_levels(x, nmax, iscale, L)
            scale = sumlx / suml2
            best = scale * sumlx
    return scale


@njit(**JIT)
def make_q3(x, nmax, L):
    """make_q3_quants(n, nmax, x, L, do_rmse=true): L holds l + nmax."""
    n = x.size
    amax, mx = _signed_max(x)
    if amax < _EPS:
        L[:n] = 0
        return F0
    iscale = -F32(nmax) / mx
    sumlx = F0
    suml2 = F0
    for i in range(n):
        l = max(-nmax, min(nmax - 1, nearest_int(iscale * x[i])))
        L[i] = l
        w = x[i] * x[i]
        sumlx += w * x[i] * F32(l)
        suml2 += w * F32(l) * F32(l)
    for _ in range(5):
        changed = 0
        for i in range(n):
            w = x[i] * x[i]
            fl = F32(L[i])
            slx = sumlx - w * x[i] * fl
            if slx > 0:
                sl2 = suml2 - w * fl * fl
                new = max(-nmax, min(nmax - 1, nearest_int(x[i] * sl2 / slx)))
                if new != L[i]:
                    slx += w * x[i] * F32(new)
                    sl2 += w * F32(new) * F32(new)
                    if sl2 > 0 and slx * slx * suml2 > sumlx * sumlx * sl2:
                        L[i] = new
                        sumlx = slx
                        suml2 = sl2
                        changed += 1
        if changed == 0:
            break
    for i in range(n):
        L[i] += nmax
    return sumlx / suml2 if suml2 > 0 else F0


@njit(inline="always", **JIT)
def _qkx_error(x, w, L, scale, mn, use_mad):
    err = F0
    for i in range(x.size):
        diff = scale * L[i] + mn - x[i]
        err += w[i] * (abs(diff) if use_mad else diff * diff)
    return err


@njit(inline="always", **JIT)
def _qkx_levels(x, nmax, iscale, mn, xmin, xmax, L):
    """L[i] = clamp(nearest_int(iscale*(x[i] - mn)), 0, nmax) as float32.

    v is monotone in x, so its extremes are at xmin and xmax: when both are in
    nearest_int's exact range the float rounding is used, else C's bit trick.
    """
    fnmax = F32(nmax)
    if in_range(iscale * (xmin - mn), iscale * (xmax - mn)):
        for i in range(x.size):
            L[i] = clamp(rint(iscale * (x[i] - mn)), F0, fnmax)
    else:
        for i in range(x.size):
            L[i] = F32(max(0, min(nmax, nearest_int(iscale * (x[i] - mn)))))


@njit(**JIT)
def make_qkx(x, w, nmax, rmin, rdelta, nstep, use_mad, flat_le, L, Laux):
    """make_qkx2_quants (flat_le False) / make_qkx3_quants (True, weights given) -> (scale, the_min).

    L and Laux are float32 scratch of x.size; L receives the levels.
    """
    n = x.size
    mn = x[0]
    mx = x[0]
    sum_w = w[0]
    sum_x = sum_w * x[0]
    for i in range(1, n):
        if x[i] < mn:
            mn = x[i]
        if x[i] > mx:
            mx = x[i]
        sum_w += w[i]
        sum_x += w[i] * x[i]
    xmin = mn
    if mn > 0:
        mn = F0
    if (mx <= mn) if flat_le else (mx == mn):
        L[:n] = 0
        return F0, -mn
    fnmax = F32(nmax)
    iscale = fnmax / (mx - mn)
    scale = F1 / iscale
    _qkx_levels(x, nmax, iscale, mn, xmin, mx, L)
    best = _qkx_error(x, w, L, scale, mn, use_mad)
    for step in range(nstep + 1 if nstep >= 1 else 0):
        iscale = (rmin + rdelta * F32(step) + fnmax) / (mx - mn)
        _qkx_levels(x, nmax, iscale, mn, xmin, mx, Laux)
        sum_l = F0
        sum_l2 = F0
        sum_xl = F0
        for i in range(n):
            fl = Laux[i]
            sum_l += w[i] * fl
            sum_l2 += w[i] * fl * fl
            sum_xl += w[i] * fl * x[i]
        D = sum_w * sum_l2 - sum_l * sum_l
        if D > 0:
            this_scale = (sum_w * sum_xl - sum_x * sum_l) / D
            this_min = (sum_l2 * sum_x - sum_l * sum_xl) / D
            if this_min > 0:
                this_min = F0
                this_scale = sum_xl / sum_l2
            cur = _qkx_error(x, w, Laux, this_scale, this_min, use_mad)
            if cur < best:
                L[:n] = Laux[:n]
                best = cur
                scale = this_scale
                mn = this_min
    return scale, -mn


@njit(**JIT)
def _qp_mse(x, w, nmax, iscale, clamp):
    scale = F1 / iscale
    mse = F0
    for i in range(x.size):
        l = nearest_int(iscale * x[i])
        l = min(nmax, l) if clamp else l & 0xFF        # the first pass stores into uint8_t L
        diff = x[i] - scale * F32(l)
        mse += w[i] * diff * diff
    return mse


@njit(**JIT)
def make_qp(x, nmax, w, L):
    """make_qp_quants(n, nmax, x, L, quant_weights=w); L holds C's uint8_t values."""
    n = x.size
    mx = F0
    for i in range(n):
        mx = mx if mx > x[i] else x[i]
    if mx < _EPS:
        L[:n] = 0
        return F0
    fnmax = F32(nmax)
    iscale = fnmax / mx
    best = _qp_mse(x, w, nmax, iscale, False)
    for step in range(-4, 5):
        if step == 0:
            continue
        iscale_is = (_P1 * F32(step) + fnmax) / mx
        mse = _qp_mse(x, w, nmax, iscale_is, True)
        if mse < best:
            best = mse
            iscale = iscale_is
    sumlx = F0
    suml2 = F0
    for i in range(n):
        l = min(nmax, nearest_int(iscale * x[i]))
        L[i] = l & 0xFF
        sumlx += w[i] * x[i] * F32(l)
        suml2 += w[i] * F32(l) * F32(l)
    for _ in range(5):
        changed = 0
        for i in range(n):
            fl = F32(L[i])
            slx = sumlx - w[i] * x[i] * fl
            sl2 = suml2 - w[i] * fl * fl
            if slx > 0 and sl2 > 0:
                new = min(nmax, nearest_int(x[i] * sl2 / slx))
                if new != L[i]:
                    slx += w[i] * x[i] * F32(new)
                    sl2 += w[i] * F32(new) * F32(new)
                    if slx * slx * suml2 > sumlx * sumlx * sl2:
                        L[i] = new & 0xFF
                        sumlx = slx
                        suml2 = sl2
                        changed += 1
        if changed == 0:
            break
    return sumlx / suml2 if suml2 > 0 else F0
