"""`wan-export diffusers SRC --quant fp8|nvfp4 [--calib]`: the ModelOpt 0.47 HF export layout.

Per quantized Linear (formats-onnx-tensorrt.md §5.5): FP8 `weight` float8_e4m3fn + `weight_scale`
fp32 scalar (+ `input_scale` = amax/448); NVFP4 `weight` uint8 [out, in/2] (element 2i in the low
nibble) + `weight_scale` float8_e4m3fn [out, in/16] (linear) + `weight_scale_2` fp32 (+
`input_scale` = amax/(6·448)). q/k/v (and k/v) sharing an input share one weight amax, as ModelOpt
exports them. transformer/config.json gains `quantization_config` as in NVIDIA's published
`nvidia/Wan2.2-T2V-A14B-Diffusers-FP8`; both A14B experts are quantized. Everything else is the
plain diffusers folder.
"""
from __future__ import annotations

import re

from wan_export import __version__
from wan_export.converters.quant_plan import plan_quantized
from wan_export.converters.stock import ORDER
from wan_export.keymaps.dit_diffusers import DIT_DIFFUSERS

QUANT_ALGO = {"fp8": "FP8", "nvfp4": "NVFP4"}
# ModelOpt's own `ignore` for Wan (the embedders, patch embedding and output projection)
BASE_IGNORE = ("condition_embedder*", "patch_embedding", "proj_out")


def _group(fmt: str) -> dict:
    bits = {"dynamic": False, "num_bits": 8 if fmt == "fp8" else 4, "type": "float"}
    if fmt == "nvfp4":
        bits["group_size"] = 16
    return {"input_activations": dict(bits), "weights": dict(bits), "targets": ["Linear"]}


def quantization_config(req, decisions, mapping: dict[str, str]) -> dict:
    """The `quantization_config` block of transformer/config.json."""
    kept = sorted({mapping[d.name].removesuffix(".weight") for d in decisions
                   if not d.format and len(d.shape) == 2 and d.name.endswith(".weight")
                   and re.match(r"^(vace_)?blocks\.", d.name)})
    return {"config_groups": {"group_0": _group(req.fmt)}, "ignore": list(BASE_IGNORE) + kept,
            "quant_algo": QUANT_ALGO[req.fmt], "quant_method": "modelopt",
            "producer": {"name": "modelopt", "version": "0.47.0"}}


def provenance(req) -> dict:
    """A `_`-prefixed config key (diffusers ignores those): what wan-export did."""
    return {"version": __version__, "calibrated": bool(req.calib), "act_calib": req.act_calib if req.calib else None,
            "rounding": req.rounding, "policy": req.policy.to_dict()}


def quantize_dit_part(part, comp, req, dtype: str | None):
    """Replace a diffusers DiT part's plan with the quantized one and add quantization_config."""
    mapping = DIT_DIFFUSERS.rename(comp.table.names(), to_stock=False, path=comp.path)
    infos = {i.name: i for i in comp.table.infos()}
    code = dtype or next(iter({i.dtype for i in infos.values()}))
    stock_part, decisions = plan_quantized(comp, req, code if dtype else None, ORDER["dit"](comp),
                                           rename=mapping.__getitem__)
    part.plan = stock_part.tensors
    part.src_dtypes = stock_part.src_dtypes
    part.config = {**part.config, "quantization_config": quantization_config(req, decisions, mapping),
                   "_wan_export_quantization": provenance(req)}
    req.decisions[comp.expert or "dit"] = decisions
    return part
