"""MXFP8: float8_e4m3fn data in 32-element blocks along K with E8M0 (power-of-two) scales (torch).

    q = MXFP8Quantizer()
    t = q.quantize(w)          # MXFP8Tensor(data e4m3fn [rows, cols] padded to 32, scale uint8 E8M0 swizzled)
    w_hat = q.dequantize(t)    # fp32
    x_hat = q.fake(x)          # dynamic activation quantization (ComfyUI ignores input_scale for mxfp8)

comfy-kitchen's `quantize_mxfp8`: e = ceil(log2(max(amax_blk/448, 2^-127))) + 127 clamped to [0, 254];
data = clamp(x / 2^(e-127), ±448); a zero block stores e = 0 and zero data; scales swizzled
([roundup(rows,128), roundup(cols/32,4)]); rows and cols padded to 32.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch

from wan_export.quantizers.lowbit import E4M3_MAX, E8M0_BIAS, as_matrix, pad_to, roundup, swizzle, unswizzle

BLOCK = 32


@dataclass(frozen=True)
class MXFP8Config:
    TYPE: ClassVar[str] = "mxfp8"
    VERSION: ClassVar[int] = 1
    block_size: ClassVar[int] = BLOCK

    def to_dict(self) -> dict:
        return {"type": self.TYPE, "version": self.VERSION, "params": {"block_size": BLOCK, "scale": "e8m0"}}


@dataclass(frozen=True)
class MXFP8Tensor:
    data: torch.Tensor                # float8_e4m3fn [roundup(rows,32), roundup(cols,32)]
    scale: torch.Tensor               # uint8 E8M0, swizzled
    shape: tuple[int, int]


def e8m0_to_f32(e: torch.Tensor) -> torch.Tensor:
    """2^(e-127) as fp32; e = 0 decodes to 0 (comfy-kitchen's convention)."""
    bits = e.to(torch.int32) << 23
    return torch.where(e == 0, 0, bits).view(torch.float32)


def _exponents(blocks: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    amax = blocks.abs().amax(dim=-1).float()
    need = (amax / E4M3_MAX).clamp(min=2.0 ** -127)
    e = (torch.ceil(torch.log2(need)).to(torch.int32) + E8M0_BIAS).clamp(0, 254)
    return e.to(torch.uint8), amax == 0


def _cast(blocks: torch.Tensor, e: torch.Tensor, zero: torch.Tensor) -> torch.Tensor:
    scale = torch.where(zero, 1.0, e8m0_to_f32(e)).unsqueeze(-1)
    scaled = torch.where(zero.unsqueeze(-1), 0.0, blocks.float() / scale)
    return scaled.clamp(-E4M3_MAX, E4M3_MAX).to(torch.float8_e4m3fn)


class MXFP8Quantizer:
    def __init__(self, config: MXFP8Config = MXFP8Config()):
        self.config = config

    @staticmethod
    def fits(shape: tuple[int, ...]) -> bool:
        return len(shape) == 2

    def quantize(self, w: torch.Tensor) -> MXFP8Tensor:
        shape = tuple(as_matrix(w, "mxfp8").shape)
        wp = pad_to(w, roundup(shape[0], BLOCK), roundup(shape[1], BLOCK))
        blocks = wp.reshape(wp.shape[0], -1, BLOCK)
        e, zero = _exponents(blocks)
        data = _cast(blocks, e, zero).reshape(wp.shape)
        e = torch.where(zero, 0, e).to(torch.uint8)
        return MXFP8Tensor(data, swizzle(e), shape)

    def dequantize(self, t: MXFP8Tensor, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        rows, cols = t.data.shape
        e = unswizzle(t.scale.view(torch.uint8), rows, cols // BLOCK)
        out = t.data.float().reshape(rows, -1, BLOCK) * e8m0_to_f32(e).unsqueeze(-1)
        return out.reshape(rows, cols)[: t.shape[0], : t.shape[1]].to(dtype)

    def fake(self, x: torch.Tensor) -> torch.Tensor:
        shape, k = x.shape, x.shape[-1]
        xf = x.float().reshape(-1, k)
        xp = pad_to(xf, xf.shape[0], roundup(k, BLOCK)).reshape(xf.shape[0], -1, BLOCK)
        e, zero = _exponents(xp)
        out = _cast(xp, e, zero).float() * torch.where(zero, 0.0, e8m0_to_f32(e)).unsqueeze(-1)
        return out.reshape(xf.shape[0], -1)[:, :k].reshape(shape)
