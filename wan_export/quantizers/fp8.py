"""FP8 E4M3 (float8_e4m3fn) weights with per-tensor or per-channel fp32 scales (torch, vectorised).

    q = FP8Quantizer(FP8Config())                  # per-tensor, comfy-kitchen math
    t = q.quantize(w)                              # FP8Tensor(data=float8_e4m3fn [out,in], scale=fp32 [])
    w_hat = q.dequantize(t)                        # fp32, = data * scale
    x_hat = q.fake(x, input_scale)                 # activation fake-quant (what an FP8 GEMM sees)

Scale = amax / 448 (weights: from the weight; activations: the calibrated input_scale).
`layout="comfy"` is comfy-kitchen's `quantize_per_tensor_fp8` (x * (1/scale), clamp ±448);
`layout="modelopt"` is ModelOpt 0.47's export (x / scale, per-tensor or per output channel).
The math runs in fp32 on the upcast input (bf16/fp16 weights are upcast chunk by chunk), so results
are bit-exact with each reference run on `x.float()` (tests/quantizers/test_lowfloat.py).
"""
from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import ClassVar

import torch

from wan_export.errors import UnsupportedError
from wan_export.quantizers.lowbit import E4M3_MAX, as_matrix

GRANULARITIES = ("tensor", "channel")
LAYOUTS = ("comfy", "modelopt")
CHUNK_ELEMENTS = 1 << 16          # rows per step of the cast: stays in L2


@dataclass(frozen=True)
class FP8Config:
    granularity: str = "tensor"       # tensor | channel (one scale per output row; ModelOpt layout only)
    layout: str = "comfy"             # comfy | modelopt: whose rounding expression is reproduced

    TYPE: ClassVar[str] = "fp8_e4m3fn"
    VERSION: ClassVar[int] = 1

    def __post_init__(self):
        if self.granularity not in GRANULARITIES:
            raise UnsupportedError(f"fp8 granularity {self.granularity!r} (choose from {', '.join(GRANULARITIES)})")
        if self.layout not in LAYOUTS:
            raise UnsupportedError(f"fp8 layout {self.layout!r} (choose from {', '.join(LAYOUTS)})")
        if self.granularity == "channel" and self.layout == "comfy":
            raise UnsupportedError("ComfyUI's float8_e4m3fn layers take one scalar weight_scale; "
                                   "per-channel fp8 is for the ModelOpt layout")

    def to_dict(self) -> dict:
        return {"type": self.TYPE, "version": self.VERSION, "params": asdict(self)}


@dataclass(frozen=True)
class FP8Tensor:
    data: torch.Tensor                # float8_e4m3fn [out, in]
    scale: torch.Tensor               # fp32 [] (tensor) or [out] (channel)


class FP8Quantizer:
    def __init__(self, config: FP8Config = FP8Config()):
        self.config = config

    def weight_scale(self, w: torch.Tensor) -> torch.Tensor:
        """amax / 448 in fp32 (a zero tensor gets scale 1 so it stays zero)."""
        w = as_matrix(w, "fp8")
        if self.config.granularity == "channel":
            amax = w.abs().amax(dim=1)
        else:
            lo, hi = torch.aminmax(w)              # one pass, no |w| copy
            amax = torch.maximum(-lo, hi)
        scale = amax.float() / E4M3_MAX
        return torch.where(scale == 0, torch.ones_like(scale), scale)

    def quantize(self, w: torch.Tensor, scale: torch.Tensor | None = None) -> FP8Tensor:
        scale = self.weight_scale(w) if scale is None else scale.float()
        return FP8Tensor(self.cast(w, scale), scale)

    def cast(self, x: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
        """x -> float8_e4m3fn codes at `scale`, saturating at ±448; rows in cache-sized chunks."""
        out = torch.empty(x.shape, dtype=torch.float8_e4m3fn)
        rows = max(1, CHUNK_ELEMENTS // max(1, x.shape[-1]))
        for i in range(0, x.shape[0], rows):
            c = x[i:i + rows].float()
            if self.config.layout == "comfy":
                c = c * (1.0 / scale)
            else:
                c = c / (scale[i:i + rows, None] if scale.dim() == 1 else scale)
            out[i:i + rows] = c.clamp_(-E4M3_MAX, E4M3_MAX)
        return out

    def dequantize(self, t: FP8Tensor, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        scale = t.scale[:, None] if t.scale.dim() == 1 else t.scale
        return (t.data.to(torch.float32) * scale).to(dtype)

    def fake(self, x: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
        """Quantize-dequantize at a fixed scale (activations at their input_scale), in fp32."""
        scale = scale.float()
        return (x.float() / scale).clamp(-E4M3_MAX, E4M3_MAX).to(torch.float8_e4m3fn).float() * scale
