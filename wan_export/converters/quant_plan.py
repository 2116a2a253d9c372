"""Planning quantized DiT / UMT5 tensors for ComfyUI and ModelOpt files, streamed one layer at a time.

`QuantRequest` holds the options (`--quant`, `--calib`, `--act-calib`, `--rounding`,
`--exclude-blocks`, `--tensor-type`); `plan_quantized(comp, request, ...)` returns the Part a
writer streams: every tensor in official order, each quantized Linear expanded into its stored
tensors (weight, scales, input_scale, comfy_quant). A layer is quantized when its first tensor is
read, so at most one layer's outputs are alive; the records (rounding chosen, clip) collect in
`request.records`. CALIB is checked up front: missing or foreign layers, wrong widths, NaN/Inf.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field

import numpy as np

from wan_export.converters.stock import Part
from wan_export.dtypes import FLOAT_CODES
from wan_export.errors import BadInputError, UnsupportedError
from wan_export.quantizers import act_scales
from wan_export.quantizers.layer import LAYOUTS, LayerSpec, quantize_layer
from wan_export.quantizers.policy import FORMATS, Decision, QuantPolicy, metadata_json, quantized, resolve
from wan_export.writing import Planned, check_finite

QUANTS = ("fp8", "nvfp4", "mxfp8", "fp8-legacy")
COMFY_STEMS = {"fp8": "fp8_e4m3fn_scaled", "fp8-legacy": "fp8_scaled", "nvfp4": "nvfp4", "mxfp8": "mxfp8"}
T5_RULE = (r"^encoder\.block\.\d+\.layer\.\d+\.(SelfAttention\.(q|k|v|o)|DenseReluDense\.(wi_0|wi_1|wo))"
           r"\.weight$")
WEIGHT_ONLY_NOTE = ("no --calib: weight-only file (no input_scale); ComfyUI then quantizes FP8/FP4 GEMM "
                    "activations with scale 1.0, clipping at ±448 (fp8) / ±2688 (nvfp4)")


@dataclass
class QuantRequest:
    quant: str                                   # fp8 | nvfp4 | mxfp8 | fp8-legacy
    layout: str = "comfy"                        # comfy | modelopt
    calib: str | None = None
    act_calib: str = "max"
    rounding: str = "nearest"
    exclude_blocks: tuple[int, int] = (0, 0)
    overrides: tuple[tuple[str, str], ...] = ()
    records: dict = field(default_factory=dict)  # layer -> record, filled while writing

    def __post_init__(self):
        if self.quant not in QUANTS:
            raise UnsupportedError(f"unknown --quant {self.quant!r} (choose from {', '.join(QUANTS)})")
        self.method = act_scales.parse_method(self.act_calib)
        self.fmt = "fp8" if self.quant == "fp8-legacy" else self.quant
        layout = "comfy-legacy" if self.quant == "fp8-legacy" else self.layout
        self.policy = QuantPolicy(self.fmt, *self.exclude_blocks, overrides=self.overrides)
        if self.quant == "fp8-legacy" and any(f not in ("fp8", "bf16") for _, f in self.overrides):
            raise UnsupportedError("the legacy scaled_fp8 format holds float8_e4m3fn only")
        self.specs = {f: LayerSpec(layout, f, self.rounding if f != "mxfp8" else "nearest")
                      for f in FORMATS if (layout, f) in LAYOUTS}
        if self.fmt not in self.specs:
            raise UnsupportedError(f"--quant {self.quant} is not available for this output ({layout} layout)")
        self._calib = None

    @property
    def opened_calib(self):
        if self.calib and self._calib is None:
            from wan_export.calibration.calibfile import read_calib
            self._calib = read_calib(self.calib)
        return self._calib


def expert_slot(expert: str | None) -> str | None:
    return None if not expert else (expert if expert.endswith("_model") else f"{expert}_model")


def check_calib(req: QuantRequest, comp, decisions: list[Decision]) -> dict[str, dict]:
    """Every quantized layer's CALIB statistics (scalars read now), refusing a CALIB that does not fit."""
    calib = req.opened_calib
    if calib is None:
        return {}
    slot = expert_slot(comp.expert)
    needed = [d.layer for d in quantized(decisions) if d.layer.startswith(("blocks.", "vace_blocks."))]
    calib.check_layers(needed, slot, path=req.calib)
    model_layers = {n.removesuffix(".weight") for n in comp.table.names() if n.endswith(".weight")}
    foreign = [n for n in calib.layers(slot) if n not in model_layers]
    if foreign:
        raise BadInputError(f"calibration file does not fit this model: statistics for layers it lacks "
                            f"({', '.join(foreign[:4])}{' ...' if len(foreign) > 4 else ''}); it was made for "
                            f"{calib.meta.get('variant', 'another model')}", req.calib)
    out = {}
    for d in quantized(decisions):
        if d.layer not in needed:
            continue
        # samples stay on disk until their layer is quantized: memory follows one layer
        stats = calib.layer(d.layer, slot, sample=False)
        act_scales.check_stats(stats, d.layer, req.calib)
        width = np.asarray(stats.get("input_channel_amax", np.zeros(d.shape[1]))).shape
        if width != (d.shape[1],):
            raise BadInputError(f"calibration file does not fit this model: {d.layer} has in_features "
                                f"{d.shape[1]}, its statistics {width[0]}", req.calib)
        out[d.layer] = stats
    return out


# Linears that share one input; ModelOpt's export gives them one weight amax (fused-QKV GEMMs)
FUSED_GROUPS = (("self_attn.q", "self_attn.k", "self_attn.v"), ("cross_attn.k", "cross_attn.v"),
                ("cross_attn.k_img", "cross_attn.v_img"))


def _group(layer: str, quantized_fmt: dict) -> list[str]:
    head, _, tail = layer.rpartition(".")
    block, _, kind = head.rpartition(".")
    for g in FUSED_GROUPS:
        if f"{kind}.{tail}" in g:
            names = [f"{block}.{m}" for m in g]
            return [n for n in names if quantized_fmt.get(n) == quantized_fmt.get(layer)]
    return [layer]


def _group_amax(req, comp, d: Decision) -> float | None:
    """The shared weight amax of d's fused group (ModelOpt layout), read once per group."""
    if req.layout != "modelopt":
        return None
    group = _group(d.layer, req._formats)
    if len(group) < 2:
        return None
    key = group[0]
    if key not in req._amax:
        req._amax[key] = max(float(np.abs(comp.table.read(f"{n}.weight").astype(np.float32)).max()) for n in group)
    return req._amax[key]


class _Layer:
    """Quantizes one layer on first read and hands out its tensors one by one."""

    def __init__(self, fn):
        self.fn, self.tensors = fn, None

    def take(self, suffix: str) -> np.ndarray:
        if self.tensors is None:
            self.tensors = self.fn()
        return self.tensors.pop(suffix)


def _layer_planned(req, comp, d: Decision, stats, rename, out_name) -> list[tuple[Planned, str]]:
    spec = req.specs[d.format]
    table, path = comp.table, comp.path
    src_code = req._src_codes[d.name]

    def run() -> dict:
        arr = table.read(d.name)
        check_finite(arr, src_code, d.name, path)
        layer_stats = stats
        slot = expert_slot(comp.expert)
        if stats is not None and req.rounding == "gptq" and req.opened_calib.has_sample(d.layer, slot):
            layer_stats = {**stats, "input_sample": req.opened_calib.layer(d.layer, slot)["input_sample"]}
            act_scales.check_stats({"input_sample": layer_stats["input_sample"]}, d.layer, req.calib)
        result = quantize_layer(spec, arr, layer_stats, req.method, weight_amax=_group_amax(req, comp, d))
        req.records[out_name(d.layer)] = {"format": d.format, **result.record}
        return result.tensors

    layer = _Layer(run)
    out = []
    base = rename(d.name).removesuffix(".weight")
    for suffix, (shape, code) in spec.outputs(d.shape, stats is not None).items():
        name = f"{base}.{suffix}"
        out.append((Planned(name, shape, code, lambda s=suffix: layer.take(s), source_name=d.name), code))
    return out


def plan_quantized(comp, req: QuantRequest, dtype: str, order: list[str], rename=lambda n: n,
                   decisions: list[Decision] | None = None) -> tuple[Part, list[Decision]]:
    """The Part of a quantized component: kept tensors cast to `dtype` (None: as stored), Linears quantized."""
    infos = {i.name: i for i in comp.table.infos()}
    req._src_codes = {n: i.dtype for n, i in infos.items()}
    req._amax = {}
    if decisions is None:
        decisions = resolve(req.policy, [(n, infos[n].shape) for n in order])
    stats = check_calib(req, comp, decisions) if comp.kind == "dit" else {}
    slot = expert_slot(comp.expert)
    prefix = f"{slot}." if slot else ""
    req._formats = {d.layer: d.format for d in decisions if d.format}
    bad = sorted({d.format for d in decisions if d.format and d.format not in req.specs})
    if bad:
        raise UnsupportedError(f"{', '.join(bad)} is not available in this output's layout", comp.path)
    tensors, src = [], {}
    for d in decisions:
        if d.format:
            for p, code in _layer_planned(req, comp, d, stats.get(d.layer), rename, lambda n: prefix + n):
                tensors.append(p)
                src[p.name] = code
            continue
        info = infos[d.name]
        out = rename(d.name)
        keep = dtype if dtype and info.dtype in FLOAT_CODES else info.dtype
        tensors.append(Planned(out, info.shape, keep,
                               lambda n=d.name: comp.table.read(n), source_name=d.name))
        src[out] = info.dtype
    return Part(tensors, src, comp.path), decisions


def t5_decisions(req: QuantRequest, names_shapes) -> list[Decision]:
    """UMT5 (HF names): the attention and FFN Linears of every block in fp8, the rest kept."""
    import re
    out = []
    for name, shape in names_shapes:
        if re.search(T5_RULE, name) and len(shape) == 2:
            out.append(Decision(name, tuple(shape), "fp8", "t5-linear", "UMT5 block Linear: fp8 (weight-only)"))
        else:
            out.append(Decision(name, tuple(shape), None, "t5-other",
                                "embedding, relative attention bias, layer norms: kept"))
    return out


def quant_metadata(req: QuantRequest, decisions: list[Decision], comp) -> dict:
    extra = {"quant": req.quant, "layout": req.layout if req.quant != "fp8-legacy" else "comfy-legacy",
             "rounding": req.rounding, "act_calib": req.act_calib if req.calib else None,
             "calibrated": bool(req.calib and comp.kind == "dit")}
    calib = req.opened_calib
    if calib is not None and comp.kind == "dit":
        extra["calib"] = {k: calib.meta.get(k) for k in ("source_sha256", "variant", "prompt_set_sha256",
                                                         "num_prompts", "steps", "size", "frames", "seed")}
    return {"wan_export.quant": metadata_json(req.policy, decisions, extra)}


def layer_names_json(decisions: list[Decision]) -> str:
    return json.dumps([d.layer for d in quantized(decisions)])
