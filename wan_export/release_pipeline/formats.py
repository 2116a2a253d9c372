"""The artifact formats a recipe may name: one row per format.

A row gives the format's options (schema.Opt), its builder `build(src, folder, opts, ctx)` writing
the artifact into an empty folder (None: "not available in this build"), its dry run
`dry_run(src, opts) -> list[file rows]` (wan_export/dryrun.py), which files the validators
check, and the consumers its model card explains. A new format is one row; quantized variants
of an existing format are enabled by listing their `quant` value in QUANT_AVAILABLE, and
calibrated artifacts by setting CALIBRATE.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Callable

from wan_export.release_pipeline.schema import Opt

DTYPE = Opt("str", "cast floats (default: keep the source dtype)", choices=("bf16", "fp16", "fp32"))


@dataclass(frozen=True)
class Format:
    name: str
    doc: str
    options: dict[str, Opt]
    build: Callable | None              # (src, folder, opts, ctx) -> None; None: not in this build
    dry_run: str | None = None          # "module:function" (src, opts) -> list of file rows
    targets: str = "folder"             # what validate() gets: "folder", or a file suffix
    consumers: tuple[str, ...] = ()     # modelcard.USAGE sections
    library: str = "diffusers"          # model card library_name
    quant: tuple[str, ...] = field(default=())   # quant values the schema accepts
    validator: str | None = None        # "module:function" instead of validators.validate.validate


def _quant(o, layout: str):
    """The writers' QuantRequest of a recipe artifact (its CALIB when it is calibrated)."""
    if not o.get("quant"):
        return {}
    from wan_export.converters.quant_plan import QuantRequest
    from wan_export.quantizers.policy import parse_exclude_blocks, parse_overrides

    return {"quant": QuantRequest(o["quant"], layout, o.get("_calib"), o.get("act_calib", "max"),
                                  o.get("rounding", "nearest"), parse_exclude_blocks(o.get("exclude_blocks")),
                                  parse_overrides(tuple(o.get("tensor_types") or ())))}


def _comfyui(src, folder, o, ctx):
    from wan_export.converters.comfyui import convert

    extra = _quant(o, "comfy")
    convert(src, folder, dtype=o.get("dtype"), component=o.get("component", "all"),
            checkpoint=o.get("checkpoint", False), overwrite=True, progress=ctx.progress, **extra)


def _stock(src, folder, o, ctx):
    from wan_export.converters.stock import write_stock

    write_stock(src, folder, dtype=o.get("dtype"), overwrite=True, progress=ctx.progress)


def _diffusers(src, folder, o, ctx):
    from wan_export.converters.diffusers import convert

    extra = _quant(o, "modelopt")
    convert(src, folder, dtype=o.get("dtype"), flow_shift=o.get("flow_shift"), overwrite=True,
            progress=ctx.progress, **extra)


def _types(o) -> list[str]:
    t = o.get("types", "Q4_K_M")
    return [t] if isinstance(t, str) else list(t)


def _gguf(src, folder, o, ctx):
    from wan_export.converters.gguf import convert_gguf

    imatrix = o.get("imatrix")
    imatrix = o.get("_calib") if imatrix == "calibration" else ctx.recipe_path(imatrix)
    convert_gguf(src, folder + os.sep, types=_types(o), tensor_types=o.get("tensor_types", ()),
                 imatrix=imatrix, float_type=o.get("float_type"), jobs=ctx.jobs, overwrite=True,
                 progress=ctx.progress)


def _onnx(src, folder, o, ctx):
    from wan_export.converters.onnx_export import export_onnx

    extra = {"quant": o["quant"], "calib": o.get("_calib")} if o.get("quant") else {}
    export_onnx(src, folder, component=o.get("component", "dit"), dtype=o.get("dtype", "fp32"),
                opset=o.get("opset"), overwrite=True, progress=ctx.progress, **extra)


def _svdquant(src, folder, o, ctx):
    from wan_export.converters.svdquant import convert

    convert(src, o.get("_calib"), folder, precision=o.get("precision", "int4"), rank=o.get("rank", 32),
            smooth=None if o.get("smooth") is None else str(o["smooth"]), gptq=o.get("gptq", False), exclude_blocks=o.get("exclude_blocks"),
            overwrite=True, progress=ctx.progress)


def _trt(src, folder, o, ctx):
    from wan_export.converters.trt import Request, build_trt

    sm = o.get("sm", "all")
    profiles = o.get("profiles") or ["480p"]
    build_trt(src, folder, Request(component=o.get("component", "dit"), target=sm if isinstance(sm, str) else
                                   ",".join(sm), precision=o.get("precision", "fp16"), calib=o.get("_calib"),
                                   profiles=tuple(profiles), batch=o.get("batch", "1-2"),
                                   exporter=o.get("exporter", "dynamo")),
              overwrite=True, progress=ctx.progress)


QUANT_OPTIONS = {
    "act_calib": Opt("str", "input_scale from CALIB: max, percentile:P or mse", default="max"),
    "rounding": Opt("str", "weight rounding", choices=("nearest", "gptq"), default="nearest"),
    "exclude_blocks": Opt("str", "keep blocks unquantized, e.g. first:3,last:3"),
    "tensor_types": Opt("list", "REGEX=FORMAT overrides", default=[]),
}
COMFY_QUANT = ("fp8", "nvfp4", "mxfp8", "fp8-legacy")
FORMATS: dict[str, Format] = {f.name: f for f in (
    Format("comfyui", "ComfyUI single files (diffusion_models/, vae/, text_encoders/)",
           {"dtype": DTYPE, "component": Opt("str", "which files", choices=("dit", "vae", "text-encoder", "all"),
                                             default="all"),
            "checkpoint": Opt("bool", "one all-in-one checkpoint file", default=False),
            "quant": Opt("str", "quantized weights (comfy_quant layout)", choices=COMFY_QUANT), **QUANT_OPTIONS},
           _comfyui, "wan_export.dryrun:comfyui", ".safetensors", ("comfyui",), "comfyui", COMFY_QUANT),
    Format("stock", "the official Wan release layout", {"dtype": DTYPE}, _stock, "wan_export.dryrun:stock",
           "folder", ("wan",), "diffusers", validator="wan_export.validators.stock:validate_stock"),
    Format("diffusers", "a diffusers pipeline folder",
           {"dtype": DTYPE, "flow_shift": Opt("float", "scheduler shift (default: official)"),
            "quant": Opt("str", "quantized weights (ModelOpt HF layout)", choices=("fp8", "nvfp4")),
            **QUANT_OPTIONS},
           _diffusers, "wan_export.dryrun:diffusers", "folder", ("diffusers",), "diffusers", ("fp8", "nvfp4")),
    Format("gguf", "GGUF files for ComfyUI-GGUF and stable-diffusion.cpp (DiT)",
           {"types": Opt("str|list", "ggml mixes, one file each (Q8_0, Q4_K_M, ...)", default="Q4_K_M"),
            "tensor_types": Opt("list", "REGEX=TYPE overrides", default=[]),
            "float_type": Opt("str", "type of unquantized matrices", choices=("F16", "BF16", "F32")),
            "imatrix": Opt("str", "'calibration' or an imatrix file relative to the recipe")},
           _gguf, "wan_export.dryrun:gguf", ".gguf", ("comfyui-gguf", "sdcpp"), "gguf"),
    Format("onnx", "ONNX graphs with dynamic shapes",
           {"component": Opt("str", "graphs", choices=("dit", "vae-decoder", "vae-encoder", "text-encoder", "all"),
                             default="dit"),
            "dtype": Opt("str", "graph weights", choices=("fp32", "fp16", "bf16"), default="fp32"),
            "opset": Opt("int", "ONNX opset (default 20; bf16 22)"),
            "quant": Opt("str", "Q/DQ quantized graph", choices=("fp8", "nvfp4"))},
           _onnx, "wan_export.dryrun:onnx", "folder", ("onnxruntime",), "onnx", ("fp8", "nvfp4")),
    Format("trt", "TensorRT (RTX) engine plans",
           {"precision": Opt("str", "engine precision", choices=("fp32", "fp16", "bf16", "fp8", "nvfp4"),
                             default="fp16"),
            "sm": Opt("str|list", "target GPU architectures, e.g. sm89"),
            "component": Opt("str", "graphs", choices=("dit", "vae-decoder", "all"), default="dit"),
            "profiles": Opt("list", "optimisation profiles: 480p, 720p, 704p or WxH[xF]", default=["480p"]),
            "batch": Opt("str", "batch range MIN-MAX", default="1-2"),
            "exporter": Opt("str", "ONNX exporter", choices=("dynamo", "legacy"), default="dynamo")},
           _trt, None, "folder", ("tensorrt",), "tensorrt"),
    Format("svdquant", "SVDQuant W4A4 (nunchaku layout)",
           {"precision": Opt("str", "4-bit type", choices=("int4", "nvfp4"), default="int4"),
            "rank": Opt("int", "low-rank branch rank", default=32),
            "smooth": Opt("str|float", "smoothing: auto (search on CALIB samples) or a fixed alpha"),
            "gptq": Opt("bool", "GPTQ on the residual", default=False),
            "exclude_blocks": Opt("str", "blocks kept 16-bit, e.g. 0,38-39")},
           _svdquant, None, "folder", ("nunchaku",), "diffusers"),
)}

# quant values whose writer is in this build, per format
QUANT_AVAILABLE: dict[str, tuple[str, ...]] = {"comfyui": COMFY_QUANT, "diffusers": ("fp8", "nvfp4"),
                                               "onnx": ("fp8", "nvfp4")}
# "module:function" that writes the CALIB file (calibrate(src, out_path, **settings)); None: not in this build
CALIBRATE: str | None = "wan_export.release_pipeline.calibration:calibrate"
# per-format option normalisation for the input hash (defaults filled in, lists kept in order)


def unavailable(art: dict) -> str | None:
    """Why this build cannot make the artifact, or None."""
    fmt = FORMATS[art["format"]]
    if fmt.build is None:
        return f"{fmt.name} writer not available in this build"
    q = art["options"].get("quant")
    if q and q not in QUANT_AVAILABLE.get(fmt.name, ()):
        return f"{fmt.name} quant {q} not available in this build"
    if needs_calibration(art) and CALIBRATE is None:
        return "calibration not available in this build"
    return None


def needs_calibration(art: dict) -> bool:
    return bool(art.get("calibrated")) or art["options"].get("imatrix") == "calibration"


def validation_targets(fmt: Format, folder: str) -> list[str]:
    """Paths inside a built artifact folder that `validators.validate.validate` checks."""
    if fmt.targets == "folder":
        subs = [os.path.join(folder, n) for n in sorted(os.listdir(folder))]
        dirs = [p for p in subs if os.path.isdir(p)]
        return dirs if len(dirs) == 1 and len(subs) == 1 else [folder]
    return [os.path.join(r, n) for r, _, fs in sorted(os.walk(folder)) for n in sorted(fs)
            if n.endswith(fmt.targets)]


_ALL = ("dit", "vae", "t5", "clip")
_COMPONENT_KINDS = {"dit": ("dit",), "vae": ("vae",), "vae-decoder": ("vae",), "vae-encoder": ("vae",),
                    "text-encoder": ("t5",), "all": ("dit", "vae", "t5")}


def artifact_kinds(art: dict) -> tuple[tuple[str, ...], int]:
    """(component kinds the artifact holds, copies of them): the base of its size ratio to bf16."""
    o, fmt = art["options"], art["format"]
    if fmt == "gguf":
        return ("dit",), len(_types(o))
    if fmt in ("diffusers", "stock"):
        return _ALL, 1
    if fmt == "comfyui" and o.get("checkpoint"):
        return ("dit", "vae", "t5"), 1
    return _COMPONENT_KINDS.get(o.get("component", "dit"), ("dit",)), 1
