"""Quantized ComfyUI files: `wan-export comfyui SRC --quant fp8|nvfp4|mxfp8|fp8-legacy [--calib CALIB]`.

The DiT gets per-layer `.comfy_quant` + `weight_scale` (+ `weight_scale_2`, `input_scale`) tensors
(formats-comfyui.md §6.2), or for `fp8-legacy` the `scaled_fp8` marker with `.scale_weight` /
`.scale_input` (§6.1, e4m3fn only). The UMT5 text encoder is written as Comfy-Org's
`umt5_xxl_fp8_e4m3fn_scaled` (legacy scaled_fp8, weight-only; CALIB covers the DiT only). The VAE
is never quantized (a Conv3d network). Names follow Comfy-Org: `..._fp8_e4m3fn_scaled`, `..._nvfp4`,
`..._mxfp8`; names inside the file are as stored, so `--checkpoint` prefixes apply to them too.
"""
from __future__ import annotations

import numpy as np

from wan_export.converters import comfyui
from wan_export.converters.quant_plan import (
    COMFY_STEMS,
    WEIGHT_ONLY_NOTE,
    QuantRequest,
    plan_quantized,
    quant_metadata,
    t5_decisions,
)
from wan_export.converters.stock import ORDER, component_dtype, provenance
from wan_export.keymaps.umt5_hf import UMT5_HF
from wan_export.variants import guess_variant
from wan_export.writing import Planned

LEGACY_MARKER = "scaled_fp8"


def _marker(part, name: str = LEGACY_MARKER):
    return part.plus(Planned(name, (0,), "F8_E4M3", _empty_fp8), "F8_E4M3")


def _empty_fp8() -> np.ndarray:
    from wan_export.dtypes import ST_TO_NP
    return np.zeros(0, dtype=ST_TO_NP["F8_E4M3"])


def dit_piece(req: QuantRequest):
    def piece(rel, comp, dtype):
        meta, notes = comfyui.check_dit(comp)
        code = component_dtype(comp, dtype)
        v = guess_variant(comp.config, experts=comp.expert is not None)
        meta.update(provenance("dit", comp.variant, code, expert=comp.expert,
                               pairs_with_vae=comfyui.VAE_STEMS[v.vae]))
        part, decisions = plan_quantized(comp, req, code, ORDER["dit"](comp))
        if req.quant == "fp8-legacy":
            part = _marker(part)
        meta.update(quant_metadata(req, decisions, comp))
        if not req.calib:
            notes.append(f"{comp.kind}{' ' + comp.expert if comp.expert else ''}: {WEIGHT_ONLY_NOTE}")
        req.decisions[comp.expert or "dit"] = decisions
        return f"{comfyui.dit_stem(comp)}_{COMFY_STEMS[req.quant]}", part, meta, notes
    return piece


def t5_piece(req: QuantRequest):
    t5_req = QuantRequest("fp8-legacy")

    def piece(rel, comp, dtype):
        code = component_dtype(comp, dtype)
        hf = UMT5_HF.rename(comp.table.names(), to_stock=False, path=comp.path)
        infos = {i.name: i for i in comp.table.infos()}
        order = ORDER["t5"](comp)
        decisions = t5_decisions(t5_req, [(hf[n], infos[n].shape) for n in order])
        stock = [type(d)(n, d.shape, d.format, d.rule, d.why) for n, d in zip(order, decisions)]
        part, _ = plan_quantized(comp, t5_req, code, order, rename=hf.__getitem__, decisions=stock)
        part = _marker(part).plus(comfyui.spiece_tensor(rel, comp), "U8")
        meta = provenance("t5", comp.variant, code)
        meta.update(quant_metadata(t5_req, decisions, comp))
        stem = comfyui.t5_stem(comp.config, code).rsplit("_", 1)[0] + "_fp8_e4m3fn_scaled"
        return stem, part, meta, comfyui.t5_notes(comp.config)
    return piece


def pieces(req: QuantRequest) -> dict:
    req.decisions = {}
    out = dict(comfyui.PIECES)
    out["dit"] = dit_piece(req)
    if req.fmt == "fp8":
        out["t5"] = t5_piece(req)
    return out
