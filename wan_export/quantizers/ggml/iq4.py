"""IQ4_NL and IQ4_XS: ggml's 4-bit non-linear quants, bit-exact with ggml-quants.c.

Both run `quantize_row_iq4_nl_impl`: a per-32 scale search over the 16-entry
`kvalues_iq4nl` grid (ntry=7, so 15 trial scales), then IQ4_NL stores that scale as
fp16 and IQ4_XS quantizes the eight scales of a 256-superblock to 6 bits. Arrays are
element-major, `[sub-block g, element j, superblock s]`, so every C loop over j is a
row-by-row float32 sum vectorised across blocks.
"""
from __future__ import annotations

import numpy as np

F32 = np.float32
KVALUES = np.array([-127, -104, -83, -65, -49, -35, -22, -10,
                    1, 13, 25, 38, 53, 69, 89, 113], dtype=np.int8)
_EPS = F32(1e-15)                    # GROUP_MAX_EPS
_CHUNK = 1 << 16                     # elements per vectorised chunk (fits in L2)


def _level_tables(half: int = 512):
    """Index and value of `best_index_int8(16, kvalues, a)` for every k = floor(2a).

    best_index_int8 picks level i once a reaches the midpoint of kvalues[i-1] and
    kvalues[i] (ties go up, since `x - lo < hi - x` is then false). Twice those
    midpoints are integers, so the level depends only on floor(2a). The tables are
    laid out so a negative k indexes from the end, as numpy fancy indexing does.
    """
    twice_mid = KVALUES[:-1].astype(np.int32) + KVALUES[1:]
    k = np.arange(2 * half) - np.where(np.arange(2 * half) >= half, 2 * half, 0)
    idx = np.searchsorted(twice_mid, k, side="right").astype(np.uint8)
    return idx, KVALUES[idx].astype(F32)


_IDX, _VAL = _level_tables()
_KMAX = F32(len(_IDX) // 2 - 1)


def _level_keys(xt, id2, buf, clip=False):
    """k = floor(fl(id*x) * 2) as intp; `id2` is 2*id, which gives the same product exactly."""
    np.multiply(xt, id2, out=buf)
    np.floor(buf, out=buf)
    if clip:   # search passes keep |a| <= 134 (|x| <= |max|); the final ones need not
        np.fmin(np.fmax(buf, -_KMAX - 1, out=buf), _KMAX, out=buf)
    return buf.astype(np.int32).astype(np.intp)


def _weights(xt, sub, qw_t):
    """C's weight[j]: x² without imatrix, else qw·sqrt(sigma2 + x²), sigma2 = 2·Σx²/sub."""
    g, n, s = xt.shape
    x2 = xt * xt
    if qw_t is None:
        return x2
    sigma2 = np.add.reduce(x2.reshape(g * n, s), axis=0, initial=F32(0))
    sigma2 *= F32(2.0 / sub)
    return qw_t * np.sqrt(sigma2 + x2)


def _signed_max(xt):
    """max |x| per block [g, s] and the first x attaining it (C's strict `>` scan)."""
    hi, lo = xt.max(axis=1), xt.min(axis=1)
    mx = np.where(hi >= -lo, hi, lo)
    tie = (hi == -lo) & (hi > 0)
    if tie.any():   # both +amax and -amax occur: the first one wins
        g, s = np.nonzero(tie)
        col = xt[g, :, s]
        mx[g, s] = col[np.arange(len(g)), np.abs(col).argmax(axis=1)]
    return np.maximum(hi, -lo), mx


class _Search:
    """The per-32 scale search of quantize_row_iq4_nl_impl for all blocks of a chunk."""

    def __init__(self, xt, wt):
        self.xt, self.wt = xt, wt
        self.buf = np.empty_like(xt)
        self.wq = np.empty_like(xt)
        g, n, s = xt.shape
        self.prod = np.empty((g, n, 2, s), F32)

    def sums(self, id2):
        """(sumqx, sumq2) with q = kvalues[best_index(id*x)]; also returns the keys."""
        k = _level_keys(self.xt, id2[:, None], self.buf)
        q = _VAL[k]
        np.multiply(self.wt, q, out=self.wq)
        np.multiply(self.wq, self.xt, out=self.prod[:, :, 0])
        np.multiply(self.wq, q, out=self.prod[:, :, 1])
        # j is not the innermost axis, so numpy adds row after row: C's left-to-right sum
        s = np.add.reduce(self.prod, axis=1, initial=F32(0))
        return s[:, 0], s[:, 1], k

    def scales(self, ntry):
        """(scale d [g, s], all-zero mask, first-pass keys): the keys are ntry <= 0's levels."""
        amax, mx = _signed_max(self.xt)
        zero = amax < _EPS
        mx[zero] = 1
        with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
            d0 = (-mx if ntry > 0 else mx) / F32(KVALUES[0])
            sumqx, sumq2, k0 = self.sums(F32(2) / d0)
            d = np.where(sumq2 > 0, sumqx / sumq2, F32(0))
            best = d * sumqx
            for itry in range(-ntry, ntry + 1):
                sumqx, sumq2, _ = self.sums(F32(2 * (itry + int(KVALUES[0]))) / mx)
                acc = (sumq2 > 0) & (sumqx * sumqx > best * sumq2)
                d = np.where(acc, sumqx / sumq2, d)
                best = np.where(acc, d * sumqx, best)
        d[zero] = 0
        return d, zero, k0


def _inv(d):
    """C's `d ? 1/d : 0` in float32."""
    out = np.zeros_like(d)
    np.divide(F32(1), d, out=out, where=d != 0)
    return out


def _pack_nibbles(L):
    """L [g, 32, s] levels -> qs [s, g, 16]: element j low nibble, j+16 high nibble."""
    qs = L[:, :16] | (L[:, 16:] << 4)
    return qs.transpose(2, 0, 1)


def _element_major(x, g):
    """[rows, n] float32 -> chunks of ([g, 32, s] contiguous, superblock slice)."""
    sb = x.reshape(-1, g, 32)
    step = max(1, _CHUNK // (32 * g))
    for s0 in range(0, len(sb), step):
        sl = slice(s0, s0 + step)
        yield np.ascontiguousarray(sb[sl].transpose(1, 2, 0)), sl


def _check(x, block):
    x = np.ascontiguousarray(x, dtype=F32)
    if x.ndim != 2 or x.shape[1] % block:
        raise ValueError(f"expected float32 rows [rows, n] with n % {block} == 0, got {x.shape}")
    return x


def _imatrix_t(imatrix, n, g, nsb):
    """The imatrix laid out like the chunk: [g, 32, nsb] for each superblock in a row."""
    qw = np.asarray(imatrix, dtype=F32).reshape(-1)
    if qw.shape[0] != n:
        raise ValueError(f"imatrix has {qw.shape[0]} values, rows have {n}")
    return qw.reshape(nsb, g, 32).transpose(1, 2, 0)


def _quantize(x, imatrix, g, type_size, encode):
    rows, n = x.shape
    nsb = n // (32 * g)
    qw = None if imatrix is None else _imatrix_t(imatrix, n, g, nsb)
    out = np.empty((rows * nsb, type_size), np.uint8)
    for xt, sl in _element_major(x, g):
        if not np.isfinite(xt).all():   # the level tables only cover finite products
            raise ValueError("IQ4 quantization needs finite input")
        qw_t = None
        if qw is not None:   # flat superblock i is superblock i % nsb of its row
            qw_t = qw[:, :, np.arange(sl.start, sl.start + xt.shape[2]) % nsb]
        out[sl] = encode(_Search(xt, _weights(xt, 32 * g, qw_t)))
    return out.reshape(rows, nsb * type_size)


class IQ4_NL:
    """IQ4_NL: block of 32 = fp16 d + 16 bytes of 4-bit indices into kvalues_iq4nl."""
    block_size, type_size = 32, 18

    @classmethod
    def quantize_rows(cls, x, imatrix=None, *, ntry: int = 7):
        """ggml_quantize_chunk (ntry=7). ntry=-1 is quantize_row_iq4_nl_ref, which needs
        no imatrix; all-zero blocks then get qs = 0 (C leaves them undefined)."""
        x = _check(x, 32)
        return _quantize(x, imatrix, 1, cls.type_size, lambda s: cls._encode(s, ntry))

    @staticmethod
    def _encode(search, ntry):
        d, zero, k = search.scales(ntry)
        if ntry > 0:
            k = _level_keys(search.xt, F32(2) * _inv(d)[:, None], search.buf, clip=True)
        L = _IDX[k]
        if ntry <= 0:
            L[:, :, zero[0]] = 0
        out = np.empty((d.shape[1], 18), np.uint8)
        out[:, :2] = d[0].astype(np.float16).view(np.uint8).reshape(-1, 2)
        out[:, 2:] = _pack_nibbles(L)[:, 0]
        return out

    @classmethod
    def dequantize_rows(cls, q):
        blocks = _blocks(q, cls.type_size)
        d = blocks[..., :2].copy().view(np.float16).astype(F32)
        v = _kv_of_nibbles(blocks[..., 2:])
        return (d * v).reshape(len(blocks), blocks.shape[1] * 32)


def _blocks(q, type_size):
    """uint8 rows [rows, nbytes] -> [rows, nblocks, type_size]."""
    q = np.ascontiguousarray(q, dtype=np.uint8)
    if q.ndim != 2 or q.shape[1] % type_size:
        raise ValueError(f"expected uint8 rows of whole {type_size}-byte blocks, got {q.shape}")
    return q.reshape(q.shape[0], q.shape[1] // type_size, type_size)


def _kv_of_nibbles(qs):
    """qs [..., 16] -> kvalues as float32 [..., 32] (low nibbles first)."""
    kv = KVALUES.astype(F32)
    return np.concatenate([kv[qs & 15], kv[qs >> 4]], axis=-1)


class IQ4_XS:
    """IQ4_XS: superblock of 256 = fp16 d, 8 six-bit sub-scales, 128 bytes of indices."""
    block_size, type_size = 256, 136

    @classmethod
    def quantize_rows(cls, x, imatrix=None):
        """ggml_quantize_chunk / quantize_iq4_xs (ntry=7); the `_ref` is the same call."""
        x = _check(x, 256)
        return _quantize(x, imatrix, 8, cls.type_size, cls._encode)

    @staticmethod
    def _encode(search):
        d, _, _ = search.scales(7)
        nsb = d.shape[1]
        ad = np.abs(d)
        ib = ad.argmax(axis=0)                                  # first largest |d|, as C's `>`
        max_scale = np.where(ad[ib, np.arange(nsb)] > 0, d[ib, np.arange(nsb)], F32(0))
        ds = -max_scale / F32(32)
        ls = np.clip(np.rint(_inv(ds) * d), -32, 31)
        dl = ds * ls
        k = _level_keys(search.xt, F32(2) * _inv(dl)[:, None], search.buf, clip=True)
        L = _IDX[k]
        ls = (ls + 32).astype(np.uint16)                       # [8, nsb], 0..63
        out = np.empty((nsb, 136), np.uint8)
        out[:, :2] = ds.astype(np.float16).view(np.uint8).reshape(-1, 2)
        shift = (2 * np.arange(8, dtype=np.uint16))[:, None]
        scales_h = ((ls >> 4) << shift).sum(axis=0, dtype=np.uint16)
        out[:, 2:4] = scales_h.astype("<u2").view(np.uint8).reshape(-1, 2)
        low = (ls & 15).astype(np.uint8)
        out[:, 4:8] = (low[0::2] | (low[1::2] << 4)).T
        out[:, 8:] = _pack_nibbles(L).reshape(nsb, 128)
        return out

    @classmethod
    def dequantize_rows(cls, q):
        blocks = _blocks(q, cls.type_size)
        d = blocks[..., :2].copy().view(np.float16).astype(F32)            # [r, nsb, 1]
        sh = blocks[..., 2:4].copy().view("<u2").astype(np.int32)          # [r, nsb, 1]
        sl = blocks[..., 4:8]
        ib = np.arange(8)
        ls = ((sl[..., ib // 2] >> (4 * (ib % 2))) & 15) | (((sh >> (2 * ib)) & 3) << 4)
        dl = d * (ls.astype(F32) - F32(32))                                # [r, nsb, 8]
        v = _kv_of_nibbles(blocks[..., 8:].reshape(*blocks.shape[:2], 8, 16))
        return (dl[..., None] * v).reshape(len(blocks), blocks.shape[1] * 256)
