"""Shared pieces of the low-bit float formats (torch, vectorised): ranges, E2M1 codes, swizzling.

- `e4m3_round`: round fp32 to float8_e4m3fn values (torch's RNE cast), kept in fp32.
- `e2m1_codes` / `E2M1_VALUES`: 4-bit E2M1 (sign<<3 | index) with round-half-to-even.
- `pack_nibbles` / `unpack_nibbles`: two codes per byte, high-first (comfy-kitchen) or low-first (ModelOpt).
- `swizzle` / `unswizzle`: the cuBLAS 128x4 block-scale tile layout ComfyUI stores
  ([roundup(rows,128), roundup(cols,4)], each 128x4 tile stored as 32 rows of 4x4).
"""
from __future__ import annotations

import torch

E4M3_MAX = 448.0
E2M1_MAX = 6.0
E8M0_BIAS = 127
# E2M1 grid: index 0..7 -> magnitude; code = sign << 3 | index
E2M1_GRID = (0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0)
E2M1_VALUES = torch.tensor(E2M1_GRID + tuple(-v for v in E2M1_GRID), dtype=torch.float32)
# midpoints between grid values; `>=` at the ones whose upper neighbour has an even index (ties to even)
_E2M1_MIDPOINTS = ((0.25, False), (0.75, True), (1.25, False), (1.75, True), (2.5, False), (3.5, True), (5.0, False))


def roundup(n: int, m: int) -> int:
    return (n + m - 1) // m * m


def e4m3_round(x: torch.Tensor) -> torch.Tensor:
    """fp32 -> nearest float8_e4m3fn value, as fp32 (saturation is the caller's clamp)."""
    return x.to(torch.float8_e4m3fn).to(torch.float32)


def e2m1_index(a: torch.Tensor) -> torch.Tensor:
    """|x| (fp32, any size) -> grid index 0..7 by round-half-to-even, saturating at 6."""
    idx = torch.zeros(a.shape, dtype=torch.uint8)
    for mid, tie_up in _E2M1_MIDPOINTS:
        idx += (a >= mid) if tie_up else (a > mid)
    return idx


def e2m1_codes(x: torch.Tensor, signed_zero: bool) -> torch.Tensor:
    """fp32 -> uint8 E2M1 codes. signed_zero: sign from the sign bit (torchao / comfy-kitchen:
    -0.0 -> code 8); otherwise from `x < 0` (ModelOpt: -0.0 -> code 0)."""
    neg = torch.signbit(x) if signed_zero else (x < 0)
    return e2m1_index(x.abs()) | (neg.to(torch.uint8) << 3)


def e2m1_decode(codes: torch.Tensor) -> torch.Tensor:
    return E2M1_VALUES[codes.long()]


def e2m1_round(x: torch.Tensor) -> torch.Tensor:
    """Fake-quantize fp32 values (already divided by their scale) to the E2M1 grid."""
    mag = torch.tensor(E2M1_GRID)[e2m1_index(x.abs()).long()]
    return torch.where(x < 0, -mag, mag)


def pack_nibbles(codes: torch.Tensor, hi_first: bool) -> torch.Tensor:
    """[..., 2n] uint8 codes -> [..., n] bytes; element 2i in the high nibble when hi_first."""
    even, odd = codes[..., 0::2], codes[..., 1::2]
    return (even << 4 | odd) if hi_first else (odd << 4 | even)


def unpack_nibbles(packed: torch.Tensor, hi_first: bool) -> torch.Tensor:
    hi, lo = packed >> 4, packed & 0x0F
    pair = (hi, lo) if hi_first else (lo, hi)
    return torch.stack(pair, dim=-1).reshape(*packed.shape[:-1], packed.shape[-1] * 2)


def swizzle(scales: torch.Tensor) -> torch.Tensor:
    """[rows, cols] block scales -> cuBLAS tiled layout [roundup(rows,128), roundup(cols,4)] (zero padded)."""
    rows, cols = scales.shape
    r, c = roundup(rows, 128), roundup(cols, 4)
    padded = torch.zeros((r, c), dtype=scales.dtype)
    padded[:rows, :cols] = scales
    # row = 32*a + b inside a 128-row tile; a tile is stored as [b][a][col]
    tiles = padded.view(r // 128, 4, 32, c // 4, 4).permute(0, 3, 2, 1, 4)
    return tiles.reshape(r, c)


def unswizzle(blocked: torch.Tensor, rows: int, cols: int) -> torch.Tensor:
    """Inverse of swizzle, cropped to [rows, cols]."""
    r, c = blocked.shape
    tiles = blocked.reshape(r // 128, c // 4, 32, 4, 4).permute(0, 3, 2, 1, 4)
    return tiles.reshape(r, c)[:rows, :cols]


def as_matrix(w: torch.Tensor, what: str) -> torch.Tensor:
    if w.dim() != 2:
        raise ValueError(f"{what} quantizes 2-D weights, got shape {list(w.shape)}")
    return w


def pad_to(w: torch.Tensor, rows: int, cols: int) -> torch.Tensor:
    if tuple(w.shape) == (rows, cols):
        return w
    return torch.nn.functional.pad(w, (0, cols - w.shape[1], 0, rows - w.shape[0]))
