"""NVFP4: E2M1 codes in 16-element blocks along K, E4M3 block scales, one fp32 global scale (torch).

    q = NVFP4Quantizer(NVFP4Config(layout="comfy"))     # or layout="modelopt"
    t = q.quantize(w)            # NVFP4Tensor(packed uint8, block_scale e4m3, global_scale fp32 [], shape)
    w_hat = q.dequantize(t)      # fp32 [out, in]
    x_hat = q.fake(x, s2)        # activation fake-quant: dynamic block scales under a fixed global scale

global_scale s2 = amax(W) / (6*448); W ~= e2m1 * block_scale * s2. The two layouts differ:

| | comfy (comfy-kitchen `quantize_nvfp4`) | modelopt (ModelOpt 0.47 HF export) |
|---|---|---|
| block scale | (amax_blk/6)/s2, clamp <= 448, e4m3; zero block -> 0 and zero data | amax_blk/(6*s2), zero -> 1.0, clamp [2^-9, 448], e4m3 |
| nibbles | element 2i in the high nibble | element 2i in the low nibble |
| scale layout | swizzled [roundup(out,128), roundup(in/16,4)] | linear [out, in/16] |
| padding | rows and cols padded to 16 | in must be a multiple of 16 |
| -0.0 | code 8 (sign bit) | code 0 (x < 0) |
"""
from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import ClassVar

import torch

from wan_export.errors import UnsupportedError
from wan_export.quantizers.lowbit import (
    E2M1_MAX,
    E4M3_MAX,
    as_matrix,
    e2m1_codes,
    e2m1_decode,
    e2m1_round,
    e4m3_round,
    pack_nibbles,
    pad_to,
    roundup,
    swizzle,
    unpack_nibbles,
    unswizzle,
)

BLOCK = 16
CHUNK_ELEMENTS = 1 << 16
LAYOUTS = ("comfy", "modelopt")
MODELOPT_MIN_BLOCK_SCALE = 2.0 ** -9


@dataclass(frozen=True)
class NVFP4Config:
    layout: str = "comfy"             # comfy | modelopt (table in the module docstring)

    TYPE: ClassVar[str] = "nvfp4"
    VERSION: ClassVar[int] = 1
    block_size: ClassVar[int] = BLOCK

    def __post_init__(self):
        if self.layout not in LAYOUTS:
            raise UnsupportedError(f"nvfp4 layout {self.layout!r} (choose from {', '.join(LAYOUTS)})")

    def to_dict(self) -> dict:
        return {"type": self.TYPE, "version": self.VERSION, "params": {**asdict(self), "block_size": BLOCK}}


@dataclass(frozen=True)
class NVFP4Tensor:
    packed: torch.Tensor              # uint8 [rows, cols/2] (comfy: padded rows/cols)
    block_scale: torch.Tensor         # float8_e4m3fn: comfy swizzled, modelopt [rows, cols/16]
    global_scale: torch.Tensor        # fp32 []
    shape: tuple[int, int]            # the unpadded weight shape


class NVFP4Quantizer:
    def __init__(self, config: NVFP4Config = NVFP4Config()):
        self.config = config

    @property
    def comfy(self) -> bool:
        return self.config.layout == "comfy"

    def fits(self, shape: tuple[int, ...]) -> bool:
        """ModelOpt needs whole blocks along K; comfy-kitchen pads."""
        return len(shape) == 2 and (self.comfy or shape[1] % BLOCK == 0)

    @staticmethod
    def global_scale(w: torch.Tensor) -> torch.Tensor:
        lo, hi = torch.aminmax(w)
        return torch.maximum(-lo, hi).float() / (E4M3_MAX * E2M1_MAX)

    def padded(self, w: torch.Tensor) -> torch.Tensor:
        w = as_matrix(w, "nvfp4")
        if self.comfy:
            return pad_to(w, roundup(w.shape[0], BLOCK), roundup(w.shape[1], BLOCK))
        if w.shape[1] % BLOCK:
            raise UnsupportedError(f"nvfp4 (ModelOpt) needs in_features % 16 == 0, got {w.shape[1]}")
        return w

    def block_scales(self, w: torch.Tensor, s2: torch.Tensor) -> torch.Tensor:
        """[rows, cols/16] block scales, e4m3-rounded, as fp32 (w already padded)."""
        amax = w.reshape(w.shape[0], -1, BLOCK).abs().amax(dim=-1).float()
        if self.comfy:
            return e4m3_round((amax / E2M1_MAX / s2).clamp(max=E4M3_MAX))
        s = amax / (E2M1_MAX * s2)
        s = torch.where(s == 0, torch.ones_like(s), s)
        return e4m3_round(s.clamp(MODELOPT_MIN_BLOCK_SCALE, E4M3_MAX))

    def codes(self, w: torch.Tensor, s_blk: torch.Tensor, s2: torch.Tensor) -> torch.Tensor:
        """uint8 E2M1 codes [rows, cols] of w (padded) at the given fp32 block / global scales."""
        rows, cols = w.shape
        total = (s2 * s_blk if self.comfy else s_blk * s2).unsqueeze(-1)
        blocks = w.reshape(rows, -1, BLOCK).float()
        if self.comfy:                # a zero total scale (zero or underflowed block) stores zeros
            zero = total == 0         # (no clamp to ±6 needed: the E2M1 index saturates there)
            scaled = blocks / torch.where(zero, 1.0, total)
            if bool(zero.any()):
                scaled.masked_fill_(zero.expand_as(scaled), 0.0)
        else:
            scaled = blocks / total
        return e2m1_codes(scaled.reshape(rows, cols), signed_zero=self.comfy)

    def pack(self, codes: torch.Tensor, s_blk: torch.Tensor, s2: torch.Tensor,
             shape: tuple[int, int]) -> NVFP4Tensor:
        scales = s_blk.to(torch.float8_e4m3fn)
        if self.comfy:
            scales = swizzle(scales.view(torch.uint8)).view(torch.float8_e4m3fn)
        return NVFP4Tensor(pack_nibbles(codes, hi_first=self.comfy), scales, s2, tuple(shape))

    def quantize(self, w: torch.Tensor, global_scale: torch.Tensor | None = None) -> NVFP4Tensor:
        shape = tuple(as_matrix(w, "nvfp4").shape)
        s2 = self.global_scale(w) if global_scale is None else global_scale.float()
        wp = self.padded(w)
        s_blk = torch.empty((wp.shape[0], wp.shape[1] // BLOCK), dtype=torch.float32)
        codes = torch.empty(wp.shape, dtype=torch.uint8)
        rows = max(1, CHUNK_ELEMENTS // wp.shape[1])
        for i in range(0, wp.shape[0], rows):          # cache-sized row chunks, same results
            s_blk[i:i + rows] = self.block_scales(wp[i:i + rows], s2)
            codes[i:i + rows] = self.codes(wp[i:i + rows], s_blk[i:i + rows], s2)
        return self.pack(codes, s_blk, s2, shape)

    def linear_scales(self, t: NVFP4Tensor) -> torch.Tensor:
        """fp32 block scales [rows, cols/16] in the linear layout (unswizzled for comfy)."""
        rows, half = t.packed.shape
        if not self.comfy:
            return t.block_scale.float()
        return unswizzle(t.block_scale.view(torch.uint8), rows, half * 2 // BLOCK).view(torch.float8_e4m3fn).float()

    def dequantize(self, t: NVFP4Tensor, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        values = e2m1_decode(unpack_nibbles(t.packed, hi_first=self.comfy))
        rows, cols = values.shape
        total = (t.global_scale * self.linear_scales(t)).unsqueeze(-1)
        out = (values.reshape(rows, -1, BLOCK) * total).reshape(rows, cols)
        return out[: t.shape[0], : t.shape[1]].to(dtype)

    def fake(self, x: torch.Tensor, s2: torch.Tensor) -> torch.Tensor:
        """W4A4 activation fake-quant: per-16 dynamic e4m3 block scales under the fixed global scale
        s2 (the calibrated input_scale), comfy-kitchen's math; values past 6*448*s2 clip. fp32 out."""
        shape = x.shape
        k = shape[-1]
        xf = x.float().reshape(-1, k)
        xp = pad_to(xf, xf.shape[0], roundup(k, BLOCK)).reshape(xf.shape[0], -1, BLOCK)
        s2 = s2.float()
        s_blk = e4m3_round((xp.abs().amax(dim=-1) / E2M1_MAX / s2).clamp(max=E4M3_MAX))
        total = (s2 * s_blk).unsqueeze(-1)
        zero = total == 0
        scaled = torch.where(zero, 0.0, xp / torch.where(zero, 1.0, total)).clamp(-E2M1_MAX, E2M1_MAX)
        out = e2m1_round(scaled) * total
        return out.reshape(xf.shape[0], -1)[:, :k].reshape(shape)
