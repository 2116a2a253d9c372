"""ModelOpt HF-layout diffusers folders (`wan-export diffusers --quant`): layout rules + two parity levels.

Checked for each transformer folder: `quantization_config` as NVIDIA publishes it (quant_method
modelopt, quant_algo FP8 / NVFP4, one Linear config group with the matching bit widths); each
quantized Linear carries the tensors, dtypes and shapes of ModelOpt 0.47's export; nothing in
`ignore` is quantized. Weights are dequantized with ModelOpt's own code (NVFP4QTensor.dequantize,
quant_utils.from_quantized_weight) when nvidia-modelopt is installed, else with
wan_export.quantizers (bit-exact with it in tests). Whether diffusers' own ModelOpt quantizer
accepts the config is reported (diffusers 0.42: no, its NVIDIAModelOptConfig needs `quant_type`).
"""
from __future__ import annotations

import fnmatch
import os
from importlib.util import find_spec

import numpy as np

from wan_export.dtypes import to_torch
from wan_export.keymaps.dit_diffusers import DIT_DIFFUSERS
from wan_export.quantizers.layer import LAYOUTS
from wan_export.release import open_input, read_json
from wan_export.sources import find_model_file, open_file
from wan_export.validators.comfyui import _structure
from wan_export.validators.report import Report
from wan_export.variants import infer_dit_config

ALGOS = {"FP8": ("fp8", 8), "NVFP4": ("nvfp4", 4)}
SUFFIXES = ("weight_scale", "weight_scale_2", "input_scale")


def is_modelopt(path: str) -> bool:
    for sub in ("", "transformer"):
        cfg = os.path.join(path, sub, "config.json")
        if os.path.isfile(cfg):
            q = read_json(cfg).get("quantization_config") or {}
            if q.get("quant_method") == "modelopt":
                return True
    return False


def diffusers_accepts(qcfg: dict) -> str:
    """What diffusers' quantizer registry makes of the config (it is what from_pretrained calls)."""
    if find_spec("diffusers") is None:
        return "diffusers not installed"
    from diffusers.quantizers.auto import DiffusersAutoQuantizer
    try:
        DiffusersAutoQuantizer.from_dict(dict(qcfg))
    except Exception as e:       # what from_pretrained would raise
        return f"refused by diffusers' ModelOpt quantizer ({type(e).__name__}: {e}); load with SGLang / ModelOpt"
    return "accepted by diffusers' ModelOpt quantizer config"


def config_problems(qcfg: dict) -> tuple[str | None, list[str]]:
    algo = ALGOS.get(qcfg.get("quant_algo"))
    problems = [] if qcfg.get("quant_method") == "modelopt" else ["quant_method is not 'modelopt'"]
    if algo is None:
        return None, problems + [f"quant_algo {qcfg.get('quant_algo')!r} is not FP8 or NVFP4"]
    group = (qcfg.get("config_groups") or {}).get("group_0") or {}
    for side in ("weights", "input_activations"):
        if (group.get(side) or {}).get("num_bits") != algo[1]:
            problems.append(f"config_groups.group_0.{side}.num_bits is not {algo[1]}")
    if group.get("targets") != ["Linear"]:
        problems.append("config_groups.group_0.targets is not ['Linear']")
    return algo[0], problems


def modelopt_dequantize(fmt: str, t: dict, shape):
    """ModelOpt's export-side dequantization of one layer (ours when modelopt is missing)."""
    import torch

    w, s = to_torch(np.array(t["weight"]())), to_torch(np.array(t["weight_scale"]()))
    if find_spec("modelopt") is None:
        from wan_export.quantizers.fp8 import FP8Quantizer, FP8Tensor
        from wan_export.quantizers.nvfp4 import NVFP4Config, NVFP4Quantizer, NVFP4Tensor
        if fmt == "fp8":
            return FP8Quantizer().dequantize(FP8Tensor(w, s.float()))
        s2 = to_torch(np.array(t["weight_scale_2"]())).float()
        return NVFP4Quantizer(NVFP4Config("modelopt")).dequantize(NVFP4Tensor(w, s, s2, tuple(shape)))
    import warnings
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from modelopt.torch.export import quant_utils
        from modelopt.torch.quantization.qtensor.nvfp4_tensor import NVFP4QTensor
    if fmt == "fp8":
        return quant_utils.from_quantized_weight(w, s.float(), quant_utils.QUANTIZATION_FP8, torch.float32)
    s2 = to_torch(np.array(t["weight_scale_2"]())).float()
    q = NVFP4QTensor(torch.Size(shape), torch.float32, w)
    return q.dequantize(torch.float32, scale=s, double_scale=s2, block_sizes={-1: 16})


def _layers(entries: dict, fmt: str, ignore: list[str]) -> tuple[dict, list[str]]:
    layers, problems = {}, []
    for name in sorted(n for n in entries if n.endswith(".weight_scale")):
        layer = name.removesuffix(".weight_scale")
        info = entries[f"{layer}.weight"][0]
        logical = (info.shape[0], info.shape[1] * 2) if fmt == "nvfp4" else tuple(info.shape)
        want = LAYOUTS[("modelopt", fmt)](logical)
        got = {"format": fmt, "shape": logical}
        for suffix, (shape, code) in want.items():
            e = entries.get(f"{layer}.{suffix}")
            if e is None or e[0].dtype != code or tuple(e[0].shape) != tuple(shape):
                problems.append(f"{layer}.{suffix}: expected {code} {list(shape)} (ModelOpt {fmt})")
            else:
                got[suffix] = e[1]
        if f"{layer}.input_scale" in entries:
            got["input_scale"] = entries[f"{layer}.input_scale"][1]
        if any(fnmatch.fnmatch(layer, pat) or layer == pat for pat in ignore):
            problems.append(f"{layer} is quantized but listed in quantization_config.ignore")
        layers[layer] = got
    return layers, problems


def _check_folder(report: Report, folder: str, comp, label: str) -> None:
    from wan_export.validators.quant_parity import check_quantized_dit

    qcfg = read_json(os.path.join(folder, "config.json")).get("quantization_config") or {}
    fmt, problems = config_problems(qcfg)
    report.info[f"{label} diffusers"] = diffusers_accepts(qcfg)
    src = open_file(find_model_file(folder))
    entries = {i.name: (i, lambda n=i.name: src.read(n)) for i in src.infos()}
    if fmt is None:
        _structure(report, f"{label}: ModelOpt quantization_config", problems)
        return
    layers, more = _layers(entries, fmt, qcfg.get("ignore") or [])
    problems += more
    weights = [n for n in entries if not n.endswith(tuple("." + s for s in SUFFIXES))]
    to_stock = DIT_DIFFUSERS.rename(weights, to_stock=True, path=folder)
    stock_entries = {to_stock[n]: entries[n] for n in weights}
    stock_layers = {to_stock[f"{k}.weight"].removesuffix(".weight"): v for k, v in layers.items()}
    shapes = {k: tuple(e[0].shape) for k, e in stock_entries.items()}
    shapes.update({f"{layer}.weight": v["shape"] for layer, v in stock_layers.items()})
    report.info[f"{label} quantized layers"] = f"{len(layers)} ({fmt}), dequantized with " + (
        "ModelOpt 0.47" if find_spec("modelopt") else "wan_export (modelopt not installed)")
    if _structure(report, f"{label}: ModelOpt HF layout (quantization_config, tensors, ignore)", problems):
        cfg = infer_dit_config(shapes, folder)
        check_quantized_dit(report, comp, stock_entries, "", stock_layers, cfg,
                            dequantize=lambda f, t, s: modelopt_dequantize(f, t, s), label=label)


def validate_modelopt(path: str, against: str, **opts) -> Report:
    rel = open_input(against)
    report = Report(artifact=str(path), against=str(against), format="diffusers-modelopt")
    subs = [s for s in ("transformer", "transformer_2") if os.path.isdir(os.path.join(path, s))] or [""]
    dits = {c.expert or "dit": c for c in rel.dits.values()}
    for sub in subs:
        expert = {"transformer": "high_noise", "transformer_2": "low_noise"}.get(sub) if len(subs) == 2 else None
        comp = dits.get(expert or "dit") or next(iter(dits.values()))
        _check_folder(report, os.path.join(path, sub), comp, sub or "transformer")
    report.info["loaders"] = ("SGLang loads this layout (sgl-project/sglang#25483); TensorRT-LLM / ModelOpt "
                              "read it; diffusers 0.42 does not (see each folder's line)")
    return report
