"""Quantized ComfyUI DiT files read the way ComfyUI reads them, then checked at two parity levels.

Loader rules replayed (formats-comfyui.md §6): legacy `scaled_fp8` files are first rewritten as
`convert_old_quants` does (scale_weight -> weight_scale, scale_input -> input_scale unless 1.0,
format float8_e4m3fn); every `<layer>.comfy_quant` names a format comfy-kitchen has a layout for;
layer names are the keys as stored (prefix included) and each is a Linear of the detected model;
the tensors each format needs are there with ComfyUI's storage dtypes and shapes; the count of
quantized layers equals the file's own policy record. Weights are then dequantized by
comfy-kitchen's layout classes (the code ComfyUI runs) and the reference DiT is compared with the
source at the weight-only and the emulated-activation level (validators/quant_parity.py).
"""
from __future__ import annotations

import json

import numpy as np

from wan_export.dtypes import to_torch
from wan_export.validators.comfyui import _pick, _structure, _table, unet_prefix
from wan_export.validators.report import Report
from wan_export.variants import dit_shapes, infer_dit_config

COMFY_FORMATS = {"float8_e4m3fn": "fp8", "nvfp4": "nvfp4", "mxfp8": "mxfp8"}
CK_LAYOUTS = {"fp8": "TensorCoreFP8Layout", "nvfp4": "TensorCoreNVFP4Layout", "mxfp8": "TensorCoreMXFP8Layout"}
LEGACY_RENAMES = (("scale_weight", "weight_scale"), ("scale_input", "input_scale"))
# what each format stores per layer (dtype on disk) -- formats-comfyui.md §6.2 table
NEEDS = {"fp8": {"weight": ("F8_E4M3",), "weight_scale": ("F32",)},
         "nvfp4": {"weight": ("U8",), "weight_scale": ("F8_E4M3",), "weight_scale_2": ("F32",)},
         "mxfp8": {"weight": ("F8_E4M3",), "weight_scale": ("U8", "F8_E8M0")}}
QUANT_SUFFIXES = ("weight_scale", "weight_scale_2", "input_scale", "comfy_quant")


def is_quantized(sf) -> bool:
    """A per-layer quantized DiT file, or a legacy scaled_fp8 one wan-export wrote (others keep the
    plain fp8 path of validators/comfyui.py)."""
    names = [i.name for i in sf.infos()]
    if any(n.startswith(("encoder.", "shared.", "text_encoders.")) for n in names):
        return False
    return any(n.endswith(".comfy_quant") for n in names) or (
        "wan_export.quant" in (sf.metadata or {}) and any(n.endswith("scaled_fp8") for n in names))


def convert_old_quants(entries: dict, prefix: str) -> list[str]:
    """ComfyUI's load-time rewrite of a legacy scaled_fp8 file (in place); returns notes."""
    marker = entries.pop(prefix + "scaled_fp8", None)
    if marker is None:
        return []
    notes = [f"legacy scaled_fp8 marker ({marker[0].dtype}): rewritten to per-layer float8_e4m3fn"]
    for name in [n for n in entries if n.endswith(".scale_weight")]:
        layer = name[: -len(".scale_weight")]
        for old, new in LEGACY_RENAMES:
            if f"{layer}.{old}" in entries:
                info, read = entries.pop(f"{layer}.{old}")
                if new == "input_scale" and float(np.asarray(read()).reshape(())) == 1.0:
                    continue
                entries[f"{layer}.{new}"] = (info, read)
        data = np.frombuffer(json.dumps({"format": "float8_e4m3fn"}).encode(), np.uint8)
        entries[f"{layer}.comfy_quant"] = (None, lambda d=data: d)
    return notes


def _storage_shapes(fmt: str, shape) -> dict:
    from wan_export.quantizers.layer import LAYOUTS
    return {k: v[0] for k, v in LAYOUTS[("comfy", fmt)](shape).items()}


def read_layers(entries: dict, shapes: dict) -> tuple[dict, list[str]]:
    """{layer: {"format", tensors...}} of every comfy_quant layer, and the loader problems found."""
    layers, problems = {}, []
    for name in sorted(n for n in entries if n.endswith(".comfy_quant")):
        layer = name[: -len(".comfy_quant")]
        try:
            conf = json.loads(bytes(np.asarray(entries[name][1]()).astype(np.uint8)).decode())
        except (ValueError, UnicodeDecodeError):
            problems.append(f"{name}: not UTF-8 JSON")
            continue
        fmt = COMFY_FORMATS.get(conf.get("format"))
        if fmt is None:
            problems.append(f"{name}: format {conf.get('format')!r} is not one wan-export validates")
            continue
        wshape = shapes.get(f"{layer}.weight")
        if wshape is None or len(wshape) != 2:
            problems.append(f"{layer}: quantized, but not a Linear of this model (names must be as stored)")
            continue
        got = {"format": fmt}
        for suffix, dtypes in NEEDS[fmt].items():
            entry = entries.get(f"{layer}.{suffix}")
            want = _storage_shapes(fmt, wshape)[suffix]
            if entry is None:
                problems.append(f"{layer}.{suffix} missing ({fmt})")
            elif entry[0].dtype not in dtypes or tuple(entry[0].shape) != tuple(want):
                problems.append(f"{layer}.{suffix}: {entry[0].dtype} {list(entry[0].shape)}, ComfyUI "
                                f"expects {dtypes[0]} {list(want)}")
            else:
                got[suffix] = entry[1]
        if f"{layer}.input_scale" in entries:
            got["input_scale"] = entries[f"{layer}.input_scale"][1]
        layers[layer] = got
    return layers, problems


def ck_dequantize(fmt: str, t: dict, shape) -> "torch.Tensor":
    """comfy-kitchen's layout dequantize (what ComfyUI's QuantizedTensor runs), cropped to shape."""
    import torch
    from comfy_kitchen import tensor as ckt

    layout = getattr(ckt, CK_LAYOUTS[fmt])
    data = to_torch(np.array(t["weight"]()))
    scale = to_torch(np.array(t["weight_scale"]()))
    if fmt == "fp8":
        params = layout.Params(scale=scale.float(), orig_dtype=torch.float32, orig_shape=tuple(shape))
    elif fmt == "nvfp4":
        params = layout.Params(scale=to_torch(np.array(t["weight_scale_2"]())).float(), orig_dtype=torch.float32,
                               orig_shape=tuple(shape), block_scale=scale.view(torch.float8_e4m3fn))
    else:
        params = layout.Params(scale=scale.view(torch.uint8).view(torch.float8_e8m0fnu), orig_dtype=torch.float32,
                               orig_shape=tuple(shape))
    return layout.dequantize(data, params)[: shape[0], : shape[1]].float()


def validate_quantized(sf, rel, path: str, against: str, prefix: str | None = None, report: Report | None = None):
    """Report for a quantized ComfyUI DiT file (UNETLoader, or the model part of a checkpoint)."""
    from wan_export.validators.quant_parity import check_quantized_dit

    report = report or Report(artifact=str(path), against=str(against), format="comfyui")
    keys = [i.name for i in sf.infos()]
    if prefix is None:
        prefix = unet_prefix(keys)
        prefix = prefix if any(k.startswith(prefix) for k in keys) else ""
    entries = {n: e for n, e in _table(sf, "").entries.items() if n.startswith(prefix)}
    notes = convert_old_quants(entries, prefix)
    stored = {n: e[0].shape for n, e in entries.items() if e[0] is not None}
    plain = {n.removeprefix(prefix): s for n, s in stored.items() if n.startswith(prefix)}
    model_shapes = {n: s for n, s in plain.items() if not n.endswith(tuple("." + q for q in QUANT_SUFFIXES))}
    dtypes = {n.removeprefix(prefix): e[0].dtype for n, e in entries.items() if e[0] is not None}
    logical = _logical(model_shapes, plain, dtypes)
    layers, problems = read_layers(entries, {prefix + n: s for n, s in logical.items()})
    cfg = infer_dit_config(logical, path)
    expected = dit_shapes(cfg)
    stray = sorted(set(model_shapes) - set(expected))
    problems += [f"{len(stray)} keys ComfyUI would not load: {', '.join(stray[:4])}"] if stray else []
    record = json.loads(sf.metadata.get("wan_export.quant", "{}") or "{}")
    want = sum(r["tensors"] for r in record.get("rules", []) if r.get("format") not in (None, "bf16"))
    if record and want != len(layers):
        problems.append(f"{len(layers)} quantized layers found, the file's policy records {want}")
    report.info["loader"] = report.info.get("loader", "UNETLoader") + " (mixed_precision_ops)"
    report.info["quantized layers"] = (f"{len(layers)} ({', '.join(sorted({v['format'] for v in layers.values()}))}), "
                                       f"prefix {prefix!r}" + ("; " + "; ".join(notes) if notes else ""))
    ok = _structure(report, "dit: ComfyUI quantized-layer rules (names as stored, formats, tensors)", problems)
    if ok:
        src = _pick(rel, "dit", sf.metadata, path)
        check_quantized_dit(report, src, entries, prefix, layers, cfg)
    return report


def _logical(model_shapes: dict, plain: dict, dtypes: dict) -> dict:
    """Stored shapes with packed nvfp4 weights (U8, two codes a byte) at their Linear's logical shape."""
    out = dict(model_shapes)
    for name, shape in model_shapes.items():
        if name.endswith(".weight") and dtypes.get(name) == "U8" and name[: -len("weight")] + "comfy_quant" in plain:
            out[name] = (shape[0], shape[1] * 2)
    return out
