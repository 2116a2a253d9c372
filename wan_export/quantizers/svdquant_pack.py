"""Nunchaku's MMA tile layout for W4A4 Linears (quantization-svdquant.md section 2.3), both ways.

Every packed tensor is a fixed permutation of its logical form, so each pair
below is a named, reversible reshape + permute:
- qweight: 4-bit codes [N, K] -> int8 [N, K/2]: tiles of 128 (N) x 64 (K),
  split N = (8 packs, 2, 8 lanes), K = (2, 4 lanes, 8 nibbles per int32);
- 16-bit group scales [N, G] -> [G, N] and 1-D vectors (bias, smooth,
  wcscales) [N]: each 128-channel tile stored 0 1 8 9 | 2 3 10 11 | ...;
- FP8 micro-scales (NVFP4, group 16) [N, K/16] -> [K/16, N]: per 128-channel
  tile (4 packs, 4 lane-quarters, 8 lanes), four k-groups per 32-bit word;
- low-rank weights, down [K, r] and up [N, r]: 16 x 16 tiles.
Logical layouts are torch tensors: codes are nibbles 0..15 (INT4 two's
complement, or the E2M1 codebook index).
"""
from __future__ import annotations

import torch

TILE_N = 128          # warp_n: N (and every 1-D vector) is packed in 128-channel tiles
TILE_K = 128          # mem_k 64 x 2 k-unrolls: K must be a multiple of this
LOWRANK_TILE = 16     # low-rank weights pack in 16 x 16 tiles (the rank must be a multiple)

# qweight: logical view (nt, 8 packs, 2 n-sub, 8 n-lanes, 1, kt, 1, 2 k-sub, 4 k-lanes, 8 regs)
_QW_PERM = (0, 5, 6, 1, 3, 8, 2, 7, 4, 9)
# 16-bit scales / vectors: (nt, 1, 8 lane groups, 2, 4 lanes, 2 elements, G) -> (nt, G, 1, 8, 4, 2, 2)
_SC_PERM = (0, 6, 1, 2, 4, 3, 5)
# micro-scales: (nt, 1, 4 packs, 4 quarters, 8 lanes, K/64, 4 groups) -> (nt, K/64, 1, 8, 4, 4, 4)
_MS_PERM = (0, 5, 1, 4, 3, 2, 6)
# low-rank tile: (cp, rp, 2 n-sub, 8 n-lanes, 1, 2 k-sub, 4 k-lanes, 2) -> (cp, rp, 8, 4, 2, 2, 1, 2)
_LR_PERM = (0, 1, 3, 6, 2, 5, 4, 7)


def _inverse(perm: tuple[int, ...]) -> tuple[int, ...]:
    out = [0] * len(perm)
    for i, p in enumerate(perm):
        out[p] = i
    return tuple(out)


def fits_tiles(n: int, k: int) -> bool:
    """Whether an [N, K] Linear fits the packed layout (else it stays 16-bit)."""
    return n % TILE_N == 0 and k % TILE_K == 0


def _check(n: int, k: int) -> None:
    if not fits_tiles(n, k):
        raise ValueError(f"[{n}, {k}] does not fit {TILE_N} x {TILE_K} tiles")


def pack_qweight(codes: torch.Tensor) -> torch.Tensor:
    """Nibble codes [N, K] (0..15) -> int8 [N, K/2] in tile order, element i at bits 4i of an int32."""
    n, k = codes.shape
    _check(n, k)
    w = (codes.to(torch.int32) & 0xF).reshape(n // 128, 8, 2, 8, 1, k // 64, 1, 2, 4, 8)
    w = w.permute(_QW_PERM).contiguous()
    word = torch.zeros(w.shape[:-1], dtype=torch.int32)
    for i in range(8):
        word |= w[..., i] << (4 * i)
    return word.view(torch.int8).reshape(n, k // 2)


def unpack_qweight(packed: torch.Tensor) -> torch.Tensor:
    """int8 [N, K/2] -> nibble codes uint8 [N, K]."""
    n, k = packed.shape[0], packed.shape[1] * 2
    _check(n, k)
    word = packed.contiguous().view(torch.int32).reshape(n // 128, k // 64, 1, 8, 8, 4, 2, 2, 1)
    nib = torch.stack([(word >> (4 * i)) & 0xF for i in range(8)], dim=-1)
    return nib.permute(_inverse(_QW_PERM)).reshape(n, k).to(torch.uint8)


def _bytes_view(t: torch.Tensor) -> tuple[torch.Tensor, torch.dtype]:
    """FP8 tensors are permuted as bytes (not every op supports float8)."""
    if t.dtype in (torch.float8_e4m3fn, torch.float8_e5m2):
        return t.view(torch.uint8), t.dtype
    return t, t.dtype


def pack_scales(s: torch.Tensor) -> torch.Tensor:
    """Group scales [N, G] -> [G, N] (tile-major memory); a 1-D [N] vector stays [N]."""
    vec = s.dim() == 1
    s2 = s[:, None] if vec else s
    n, g = s2.shape
    if n % TILE_N:
        raise ValueError(f"{n} channels do not fit {TILE_N}-channel tiles")
    t, dt = _bytes_view(s2.contiguous())
    t = t.reshape(n // 128, 1, 8, 2, 4, 2, g).permute(_SC_PERM).contiguous()
    return (t.reshape(n) if vec else t.reshape(g, n)).view(dt)


def unpack_scales(p: torch.Tensor) -> torch.Tensor:
    """Inverse of pack_scales: [G, N] -> [N, G]; [N] -> [N]."""
    vec = p.dim() == 1
    g, n = (1, p.shape[0]) if vec else p.shape
    t, dt = _bytes_view(p.contiguous())
    t = t.reshape(n // 128, g, 1, 8, 4, 2, 2).permute(_inverse(_SC_PERM)).contiguous()
    return (t.reshape(n) if vec else t.reshape(n, g)).view(dt)


def pack_micro_scales(s: torch.Tensor) -> torch.Tensor:
    """NVFP4 FP8 micro-scales [N, K/16] -> [K/16, N] (tile-major memory)."""
    n, g = s.shape
    if n % TILE_N or g % 4:
        raise ValueError(f"micro-scales [{n}, {g}] do not fit the tiles")
    t, dt = _bytes_view(s.contiguous())
    t = t.reshape(n // 128, 1, 4, 4, 8, g // 4, 4).permute(_MS_PERM).contiguous()
    return t.reshape(g, n).view(dt)


def unpack_micro_scales(p: torch.Tensor) -> torch.Tensor:
    g, n = p.shape
    t, dt = _bytes_view(p.contiguous())
    t = t.reshape(n // 128, g // 4, 1, 8, 4, 4, 4).permute(_inverse(_MS_PERM)).contiguous()
    return t.reshape(n, g).view(dt)


def _lr_tiles(t: torch.Tensor) -> torch.Tensor:
    cp, rp = t.shape[0], t.shape[1]
    return t.reshape(cp, rp, 2, 8, 1, 2, 4, 2).permute(_LR_PERM)


def pack_lowrank(w: torch.Tensor, down: bool) -> torch.Tensor:
    """Low-rank weight [C, r] (down: C = K, x @ down; up: C = N) -> packed [C, r].

    Inside a 16 x 16 tile the MMA n axis is the rank for down and the channel for up.
    """
    c, r = w.shape
    if c % LOWRANK_TILE or r % LOWRANK_TILE:
        raise ValueError(f"low-rank weight [{c}, {r}] does not fit {LOWRANK_TILE} x {LOWRANK_TILE} tiles")
    cp, rp = c // 16, r // 16
    if down:   # tile (rank as n, channel as k)
        t = w.t().reshape(rp, 16, cp, 16).permute(2, 0, 1, 3)
    else:      # tile (channel as n, rank as k)
        t = w.reshape(cp, 16, rp, 16).permute(0, 2, 1, 3)
    return _lr_tiles(t.contiguous()).contiguous().reshape(c, r)


def unpack_lowrank(p: torch.Tensor, down: bool) -> torch.Tensor:
    c, r = p.shape
    cp, rp = c // 16, r // 16
    t = p.contiguous().reshape(cp, rp, 8, 4, 2, 2, 1, 2).permute(_inverse(_LR_PERM)).reshape(cp, rp, 16, 16)
    if down:
        return t.permute(1, 2, 0, 3).reshape(r, c).t().contiguous()
    return t.permute(0, 2, 1, 3).reshape(c, r).contiguous()
