"""Bit layouts of ggml's K-quant super-blocks (ggml-common.h): pack and unpack.

Every function works on a batch of super-blocks: quant levels `L [S, 256]` (integers),
packed fields `[S, nbytes]` uint8. The byte order of each block is in kquants.py.
"""
from __future__ import annotations

import numpy as np

U8 = np.uint8


def pack_k4_scales(ls: np.ndarray, lm: np.ndarray) -> np.ndarray:
    """Q4_K/Q5_K `scales[12]` from 8 scales and 8 mins per block, with C's uint8 wrap."""
    ls = np.asarray(ls).astype(U8)
    lm = np.asarray(lm).astype(U8)
    out = np.empty((ls.shape[0], 12), U8)
    out[:, 0:4] = ls[:, 0:4]
    out[:, 4:8] = lm[:, 0:4]
    out[:, 8:12] = (ls[:, 4:8] & 0xF) | ((lm[:, 4:8] & 0xF) << 4)
    out[:, 0:4] |= (ls[:, 4:8] >> 4) << 6
    out[:, 4:8] |= (lm[:, 4:8] >> 4) << 6
    return out


def unpack_k4_scales(sc: np.ndarray):
    """`get_scale_min_k4` for j = 0..7 -> (scale [S, 8], min [S, 8]) as uint8."""
    d = np.empty((sc.shape[0], 8), U8)
    m = np.empty_like(d)
    d[:, 0:4] = sc[:, 0:4] & 63
    m[:, 0:4] = sc[:, 4:8] & 63
    d[:, 4:8] = (sc[:, 8:12] & 0xF) | ((sc[:, 0:4] >> 6) << 4)
    m[:, 4:8] = (sc[:, 8:12] >> 4) | ((sc[:, 4:8] >> 6) << 4)
    return d, m


def pack_q3_scales(l: np.ndarray) -> np.ndarray:
    """Q3_K `scales[12]` from 16 six-bit values (already offset by +32)."""
    l = np.asarray(l).astype(U8)
    out = np.zeros((l.shape[0], 12), U8)
    out[:, 0:8] = (l[:, 0:8] & 0xF) | ((l[:, 8:16] & 0xF) << 4)
    hi = l >> 4
    for g in range(4):
        out[:, 8:12] |= hi[:, 4 * g:4 * g + 4] << (2 * g)
    return out


def unpack_q3_scales(sc: np.ndarray) -> np.ndarray:
    """The 16 six-bit Q3_K scales (0..63, still offset by +32) as uint8 [S, 16]."""
    out = np.empty((sc.shape[0], 16), U8)
    out[:, 0:8] = sc[:, 0:8] & 0xF
    out[:, 8:16] = sc[:, 0:8] >> 4
    for g in range(4):
        out[:, 4 * g:4 * g + 4] |= ((sc[:, 8:12] >> (2 * g)) & 3) << 4
    return out


def pack_2bit(L: np.ndarray) -> np.ndarray:
    """`qs[32c + l] = L0 | L32<<2 | L64<<4 | L96<<6` per 128-chunk c -> [S, 64]."""
    q = np.asarray(L).astype(U8).reshape(-1, 2, 4, 32)
    out = q[:, :, 0] | (q[:, :, 1] << 2) | (q[:, :, 2] << 4) | (q[:, :, 3] << 6)
    return out.reshape(-1, 64)


def unpack_2bit(qs: np.ndarray) -> np.ndarray:
    """Inverse of pack_2bit -> uint8 [S, 256]."""
    q = qs.reshape(-1, 2, 1, 32)
    shifts = np.array([0, 2, 4, 6], U8).reshape(1, 1, 4, 1)
    return ((q >> shifts) & 3).reshape(-1, 256)


def pack_hmask(L: np.ndarray):
    """Q3_K: split levels 0..7 into `hmask[32]` (bit j/32 of byte j%32) and low 2 bits."""
    L = np.asarray(L).astype(U8)
    hi = (L > 3).astype(U8).reshape(-1, 8, 32)
    hmask = np.zeros((L.shape[0], 32), U8)
    for b in range(8):
        hmask |= hi[:, b] << b
    return hmask, L & 3


def unpack_hmask(hmask: np.ndarray) -> np.ndarray:
    """The Q3_K high bits as uint8 [S, 256] (0/1)."""
    shifts = np.arange(8, dtype=U8).reshape(1, 8, 1)
    return ((hmask[:, None, :] >> shifts) & 1).reshape(-1, 256)


def pack_nibbles(L: np.ndarray) -> np.ndarray:
    """Q4_K/Q5_K `qs[32c + l] = L[64c+l] & 15 | (L[64c+32+l] & 15) << 4` -> [S, 128]."""
    q = (np.asarray(L).astype(U8) & 0xF).reshape(-1, 4, 2, 32)
    return (q[:, :, 0] | (q[:, :, 1] << 4)).reshape(-1, 128)


def unpack_nibbles(qs: np.ndarray) -> np.ndarray:
    q = qs.reshape(-1, 4, 1, 32)
    shifts = np.array([0, 4], U8).reshape(1, 1, 2, 1)
    return ((q >> shifts) & 0xF).reshape(-1, 256)


def pack_q5_high(L: np.ndarray) -> np.ndarray:
    """Q5_K `qh[32]`: bit 2c of qh[l] is L[64c+l] > 15, bit 2c+1 is L[64c+32+l] > 15."""
    hi = (np.asarray(L) > 15).astype(U8).reshape(-1, 8, 32)
    qh = np.zeros((hi.shape[0], 32), U8)
    for b in range(8):
        qh |= hi[:, b] << b
    return qh


def pack_q6(L: np.ndarray):
    """Q6_K `ql[128]`, `qh[64]` from levels 0..63 [S, 256]."""
    q = np.asarray(L).astype(U8).reshape(-1, 2, 4, 32)
    lo = q & 0xF
    ql = np.concatenate([lo[:, :, 0] | (lo[:, :, 2] << 4), lo[:, :, 1] | (lo[:, :, 3] << 4)], axis=2)
    hi = q >> 4
    qh = hi[:, :, 0] | (hi[:, :, 1] << 2) | (hi[:, :, 2] << 4) | (hi[:, :, 3] << 6)
    return ql.reshape(-1, 128), qh.reshape(-1, 64)


def unpack_q6(ql: np.ndarray, qh: np.ndarray) -> np.ndarray:
    """Levels 0..63 uint8 [S, 256] from Q6_K ql/qh."""
    ql = ql.reshape(-1, 2, 2, 32)
    qh = qh.reshape(-1, 2, 1, 32)
    lo = np.stack([ql[:, :, 0] & 0xF, ql[:, :, 1] & 0xF, ql[:, :, 0] >> 4, ql[:, :, 1] >> 4], axis=2)
    shifts = np.array([0, 2, 4, 6], U8).reshape(1, 1, 4, 1)
    hi = (qh >> shifts) & 3
    return (lo | (hi << 4)).reshape(-1, 256)
