"""One Linear -> the tensors a ComfyUI or ModelOpt file stores for it (names, shapes, dtypes, bytes).

`LAYOUTS[(layout, fmt)]` lists each output tensor's suffix, dtype and shape rule, so writers can
plan headers before reading data; `quantize_layer` produces them from the weight and the layer's
CALIB statistics, with nearest or GPTQ rounding (never worse than nearest: the choice and both
layer-output errors are recorded). Layouts: `comfy` (per-layer `.comfy_quant`), `comfy-legacy`
(scaled_fp8: `.scale_weight` / `.scale_input`), `modelopt` (HF export).
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field

import numpy as np
import torch

from wan_export.dtypes import from_torch, to_torch
from wan_export.errors import UnsupportedError
from wan_export.quantizers import act_scales, gptq
from wan_export.quantizers.fp8 import FP8Config, FP8Quantizer
from wan_export.quantizers.lowbit import e2m1_round, roundup
from wan_export.quantizers.mxfp8 import MXFP8Quantizer
from wan_export.quantizers.nvfp4 import NVFP4Config, NVFP4Quantizer

COMFY_FORMAT_NAMES = {"fp8": "float8_e4m3fn", "nvfp4": "nvfp4", "mxfp8": "mxfp8"}
ROUNDINGS = ("nearest", "gptq")


def comfy_quant_bytes(fmt: str) -> np.ndarray:
    return np.frombuffer(json.dumps({"format": COMFY_FORMAT_NAMES[fmt]}).encode(), dtype=np.uint8).copy()


def _nvfp4_comfy(s):
    r, c = roundup(s[0], 16), roundup(s[1], 16)
    return {"weight": ((r, c // 2), "U8"), "weight_scale": ((roundup(r, 128), roundup(c // 16, 4)), "F8_E4M3"),
            "weight_scale_2": ((), "F32")}


def _mxfp8_comfy(s):
    r, c = roundup(s[0], 32), roundup(s[1], 32)
    return {"weight": ((r, c), "F8_E4M3"), "weight_scale": ((roundup(r, 128), roundup(c // 32, 4)), "U8")}


# (layout, format) -> shape -> {suffix: (shape, dtype)} of the weight tensors (input_scale added apart)
LAYOUTS = {
    ("comfy", "fp8"): lambda s: {"weight": (tuple(s), "F8_E4M3"), "weight_scale": ((), "F32")},
    ("comfy", "nvfp4"): _nvfp4_comfy,
    ("comfy", "mxfp8"): _mxfp8_comfy,
    ("comfy-legacy", "fp8"): lambda s: {"weight": (tuple(s), "F8_E4M3"), "scale_weight": ((), "F32")},
    ("modelopt", "fp8"): lambda s: {"weight": (tuple(s), "F8_E4M3"), "weight_scale": ((), "F32")},
    ("modelopt", "nvfp4"): lambda s: {"weight": ((s[0], s[1] // 2), "U8"),
                                      "weight_scale": ((s[0], s[1] // 16), "F8_E4M3"),
                                      "weight_scale_2": ((), "F32")},
}
INPUT_SCALE = {"comfy": "input_scale", "comfy-legacy": "scale_input", "modelopt": "input_scale"}


@dataclass(frozen=True)
class LayerSpec:
    layout: str                        # comfy | comfy-legacy | modelopt
    fmt: str                           # fp8 | nvfp4 | mxfp8
    rounding: str = "nearest"

    def __post_init__(self):
        if (self.layout, self.fmt) not in LAYOUTS:
            raise UnsupportedError(f"{self.fmt} is not available in the {self.layout} layout")
        if self.rounding not in ROUNDINGS:
            raise UnsupportedError(f"--rounding {self.rounding!r} (choose from {', '.join(ROUNDINGS)})")
        if self.rounding == "gptq" and self.fmt == "mxfp8":
            raise UnsupportedError("--rounding gptq is for fp8 and nvfp4 (mxfp8 scales are per 32-block "
                                   "powers of two chosen at quantization)")

    def outputs(self, shape, calibrated: bool) -> dict[str, tuple[tuple, str]]:
        out = dict(LAYOUTS[(self.layout, self.fmt)](tuple(shape)))
        if calibrated and self.fmt in act_scales.DIVISOR:
            out[INPUT_SCALE[self.layout]] = ((), "F32")
        if self.layout == "comfy":
            out["comfy_quant"] = ((len(comfy_quant_bytes(self.fmt)),), "U8")
        return out

    @property
    def quantizer_layout(self) -> str:
        return "modelopt" if self.layout == "modelopt" else "comfy"


@dataclass
class LayerResult:
    tensors: dict[str, np.ndarray]
    record: dict = field(default_factory=dict)


def _fp8(spec: LayerSpec, w: torch.Tensor, h, amax=None):
    q = FP8Quantizer(FP8Config("tensor", spec.quantizer_layout))
    scale = q.weight_scale(w) if amax is None else torch.tensor(amax, dtype=torch.float32) / 448.0
    nearest = q.quantize(w, scale)
    if h is None:
        return nearest, None
    hat = gptq.gptq(w, h, lambda cols, _i: q.fake(cols, scale))
    return nearest, q.quantize(hat, scale)


def _nvfp4(spec: LayerSpec, w: torch.Tensor, h, amax=None):
    q = NVFP4Quantizer(NVFP4Config(spec.quantizer_layout))
    nearest = q.quantize(w, None if amax is None else torch.tensor(amax, dtype=torch.float32) / (6.0 * 448.0))
    if h is None:
        return nearest, None
    s2, s_lin = nearest.global_scale, q.linear_scales(nearest)     # scales fixed from the weight
    total = s2 * s_lin[: w.shape[0]]

    def cols(c: torch.Tensor, i: int) -> torch.Tensor:
        t = total[:, i // 16, None]
        safe = torch.where(t == 0, 1.0, t)
        return torch.where(t == 0, 0.0, e2m1_round((c / safe).clamp(-6.0, 6.0)) * t)

    hat = gptq.gptq(w, h, cols)
    return nearest, q.pack(q.codes(q.padded(hat), s_lin, s2), s_lin, s2, tuple(w.shape))


def _dequant(spec: LayerSpec, t) -> torch.Tensor:
    if spec.fmt == "fp8":
        return FP8Quantizer(FP8Config("tensor", spec.quantizer_layout)).dequantize(t)
    if spec.fmt == "nvfp4":
        return NVFP4Quantizer(NVFP4Config(spec.quantizer_layout)).dequantize(t)
    return MXFP8Quantizer().dequantize(t)


def _arrays(spec: LayerSpec, t) -> dict[str, np.ndarray]:
    if spec.fmt == "fp8":
        scale_name = "scale_weight" if spec.layout == "comfy-legacy" else "weight_scale"
        return {"weight": from_torch(t.data), scale_name: from_torch(t.scale.reshape(()))}
    if spec.fmt == "nvfp4":
        return {"weight": from_torch(t.packed), "weight_scale": from_torch(t.block_scale),
                "weight_scale_2": from_torch(t.global_scale.reshape(()))}
    return {"weight": from_torch(t.data), "weight_scale": from_torch(t.scale)}


def hessian(stats: dict | None):
    """The layer's Hessian from its CALIB sample rows, else None (the diagonal gives nearest)."""
    if not stats or "input_sample" not in stats:
        return None
    return gptq.hessian_from_sample(torch.from_numpy(np.asarray(stats["input_sample"], np.float32)))


def quantize_layer(spec: LayerSpec, weight: np.ndarray, stats: dict | None,
                   act_method=("max", None), weight_amax: float | None = None) -> LayerResult:
    """Quantize one Linear weight (numpy, any float dtype); stats: its CALIB entry or None.

    weight_amax: a shared amax for the weight scale (ModelOpt unifies q/k/v that share an input)."""
    w = to_torch(np.array(weight)).float()
    h = hessian(stats) if spec.rounding == "gptq" else None
    if spec.fmt == "mxfp8":
        nearest, candidate = MXFP8Quantizer().quantize(w), None
    else:
        nearest, candidate = (_fp8 if spec.fmt == "fp8" else _nvfp4)(spec, w, h, weight_amax)
    chosen, record = nearest, {"rounding": "nearest"}
    if spec.rounding == "gptq":
        if candidate is None:
            record["rounding_note"] = "no input_sample in CALIB: nearest"
        else:
            best, used, errs = gptq.choose(w, h, _dequant(spec, nearest), _dequant(spec, candidate))
            chosen = candidate if used == "gptq" else nearest
            record.update(rounding=used, output_error_nearest=errs["nearest"], output_error_gptq=errs["gptq"])
    tensors = _arrays(spec, chosen)
    if stats is not None and spec.fmt in act_scales.DIVISOR:
        clip = act_scales.clip_value(stats, act_method)
        scale = act_scales.input_scale(spec.fmt, clip)
        tensors[INPUT_SCALE[spec.layout]] = np.array(scale, dtype=np.float32)
        record.update(input_amax=float(stats["input_amax"]), input_clip=clip, input_scale=scale)
    if spec.layout == "comfy":
        tensors["comfy_quant"] = comfy_quant_bytes(spec.fmt)
    return LayerResult(tensors, record)
