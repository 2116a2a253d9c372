"""Two parity levels for quantized DiT files, shared by the ComfyUI and ModelOpt validators.

1. weight-only: the reference DiT with the file's dequantized weights and 16-bit-or-better
   activations (what a GPU without FP8/FP4 compute runs: ComfyUI emulates by dequantizing).
2. emulated W8A8 / W4A4: the same, with every quantized Linear's input fake-quantized the way the
   FP8 / FP4 GEMM does it, using the file's own input_scale: fp8 clamp(x/s, ±448) -> e4m3;
   nvfp4 per-16 dynamic e4m3 block scales under the global scale s (clip at 6·448·s); mxfp8 per-32
   dynamic E8M0 (no input_scale). A missing input_scale is what ComfyUI uses then: 1.0 for fp8;
   for nvfp4 the layout's per-call amax/(6·448) (comfy-kitchen `TensorCoreNVFP4Layout.quantize`).
The per-layer table (worst first) feeds each layer the reference model's own input (case 0): weight
rel-L2, layer-output rel-L2 at both levels, and the share of input values beyond the clip.
"""
from __future__ import annotations

import torch

from wan_export.quantizers.fp8 import FP8Quantizer
from wan_export.quantizers.lowbit import E2M1_MAX, E4M3_MAX
from wan_export.quantizers.mxfp8 import MXFP8Quantizer
from wan_export.quantizers.nvfp4 import NVFP4Quantizer
from wan_export.validators.metrics import compare
from wan_export.validators import parity
from wan_export.validators.parity import dit_inputs
from wan_export.validators.report import Tolerance

# DiT output bounds on the tiny synthetic models (every variant, calibrated and not), per level;
# measured worst cases are in the README's quantization section.
TOLERANCE = {
    ("fp8", "weight"): Tolerance(max_rel_l2=0.06, min_cosine=0.998),
    ("fp8", "emulated"): Tolerance(max_rel_l2=0.08, min_cosine=0.996),
    ("mxfp8", "weight"): Tolerance(max_rel_l2=0.06, min_cosine=0.998),
    ("mxfp8", "emulated"): Tolerance(max_rel_l2=0.08, min_cosine=0.996),
    ("nvfp4", "weight"): Tolerance(max_rel_l2=0.25, min_cosine=0.97),
    ("nvfp4", "emulated"): Tolerance(max_rel_l2=0.35, min_cosine=0.94),
}
# UMT5 output with per-tensor fp8 Linears: the tiny random 2-block T5 turns a 2.7 % weight error into
# up to 0.20 output rel-L2 (measured), more than a 16-bit cast; real UMT5-XXL fp8 is Comfy-Org's default
TE_FP8_TOLERANCE = Tolerance(max_rel_l2=0.3, min_cosine=0.97)
ORDER = ("fp8", "mxfp8", "nvfp4")       # loosest format present sets the bound


def act_fake(fmt: str, scale: float | None):
    """x -> (fake-quantized x, clip threshold) for one layer's input."""
    if fmt == "fp8":
        s = torch.tensor(1.0 if scale is None else scale)
        return (lambda x: FP8Quantizer().fake(x, s).to(x.dtype)), float(E4M3_MAX * s)
    if fmt == "nvfp4":
        q = NVFP4Quantizer()
        if scale is None:
            return (lambda x: q.fake(x, NVFP4Quantizer.global_scale(x)).to(x.dtype)), float("inf")
        return (lambda x: q.fake(x, torch.tensor(scale)).to(x.dtype)), float(E2M1_MAX * E4M3_MAX * scale)
    return (lambda x: MXFP8Quantizer().fake(x).to(x.dtype)), float("inf")


class Emulation:
    """Forward pre-hooks fake-quantizing the inputs of the quantized Linears; counts clipped values."""

    def __init__(self, model, layers: dict[str, tuple[str, float | None]]):
        self.clipped = {n: 0 for n in layers}
        self.seen = {n: 0 for n in layers}
        mods = dict(model.named_modules())
        self.handles = [mods[n].register_forward_pre_hook(self._hook(n, *act_fake(fmt, s)))
                        for n, (fmt, s) in layers.items()]

    def _hook(self, name, fake, clip):
        def hook(_m, args):
            x = args[0]
            self.clipped[name] += int((x.abs() > clip).sum())
            self.seen[name] += x.numel()
            return (fake(x),) + tuple(args[1:])
        return hook

    def rate(self, name: str) -> float:
        return self.clipped[name] / self.seen[name] if self.seen[name] else 0.0

    def close(self):
        for h in self.handles:
            h.remove()


def level_tolerance(formats, level: str) -> tuple[Tolerance, str]:
    fmt = max(formats, key=ORDER.index) if formats else "fp8"
    tol = TOLERANCE[(fmt, level)]
    return tol, f"{fmt} {level}: {tol.describe()}"


def reference_run(ref_weights, cfg, names) -> tuple[list, dict]:
    """Reference outputs on every case, and each quantized Linear's input on case 0 (one pass)."""
    from wan_export.model.dit import load_dit

    model = load_dit(ref_weights, cfg)
    seen, mods = {}, dict(model.named_modules())

    def keep(name):
        def hook(_m, args):           # returns None: the input is recorded, never replaced
            if name not in seen:
                seen[name] = args[0].detach().clone()
        return hook

    hs = [mods[n].register_forward_pre_hook(keep(n)) for n in names]
    with torch.no_grad():
        outs = [model(**dit_inputs(cfg, c, seed=i)) for i, c in enumerate(parity.DIT_CASES)]
    for h in hs:
        h.remove()
    return outs, seen


def layer_rows(ref_weights, art_weights, inputs: dict, layers: dict, emu: Emulation) -> list[dict]:
    rows = []
    for name, (fmt, scale) in layers.items():
        x, w, wq = inputs[name], ref_weights[f"{name}.weight"].float(), art_weights[f"{name}.weight"].float()
        fake, _ = act_fake(fmt, scale)
        y = x @ w.T
        rows.append({"layer": name, "format": fmt, "input_scale": scale if scale is not None else "-",
                     "weight_rel_l2": compare(w, wq)["rel_l2"],
                     "out_rel_l2_weight_only": compare(y, x @ wq.T)["rel_l2"],
                     "out_rel_l2_emulated": compare(y, fake(x) @ wq.T)["rel_l2"],
                     "clip_rate": emu.rate(name)})
    return sorted(rows, key=lambda r: -r["out_rel_l2_emulated"])


def check_levels(report, ref_weights, art_weights, cfg, layers: dict, label: str = "dit") -> None:
    """Weight-only and emulated checks over DIT_CASES, the per-layer table, clip summary."""
    from wan_export.model.dit import load_dit

    formats = {f for f, _ in layers.values()}
    ref_out, inputs = reference_run(ref_weights, cfg, list(layers))
    tol_w, how_w = level_tolerance(formats, "weight")
    tol_e, how_e = level_tolerance(formats, "emulated")
    report.info[f"{label} tolerance weight-only"] = how_w
    report.info[f"{label} tolerance emulated"] = how_e
    model = load_dit(art_weights, cfg)
    with torch.no_grad():
        outs = [model(**dit_inputs(cfg, c, seed=i)) for i, c in enumerate(parity.DIT_CASES)]
        for case, r, a in zip(parity.DIT_CASES, ref_out, outs):
            report.add(f"{label} weight-only output {case.label}", compare(r, a), tol_w,
                       "dequantized weights, fp32 activations")
        emu = Emulation(model, layers)
        kind = "W4A4" if formats == {"nvfp4"} else "W8A8" if formats <= {"fp8", "mxfp8"} else "mixed"
        for i, (case, r) in enumerate(zip(parity.DIT_CASES, ref_out)):
            a = model(**dit_inputs(cfg, case, seed=i))
            report.add(f"{label} emulated {kind} output {case.label}", compare(r, a), tol_e,
                       "activations quantized with the file's input_scale")
        emu.close()
    calibrated = sum(s is not None for _, s in layers.values())
    report.info[f"{label} input_scale"] = (f"{calibrated} of {len(layers)} layers carry input_scale"
                                           + ("" if calibrated else " (weight-only file: ComfyUI uses 1.0 for fp8)"))
    rates = [emu.rate(n) for n in layers]
    report.info[f"{label} activation clip rate"] = (f"max {max(rates, default=0):.2e}, "
                                                    f"mean {sum(rates) / max(len(rates), 1):.2e}")
    report.tables[f"{label} per-layer error (worst first)"] = layer_rows(ref_weights, art_weights, inputs, layers, emu)


def check_quantized_dit(report, src, entries: dict, prefix: str, layers: dict, cfg, dequantize=None,
                        label: str = "dit") -> None:
    """Dequantize `layers` (comfy-kitchen unless `dequantize` is given), read the rest, run both levels."""
    import numpy as np

    from wan_export.dtypes import cast, to_torch
    from wan_export.validators.parity import torch_state
    from wan_export.variants import dit_shapes

    if dequantize is None:
        from wan_export.validators.comfyui_quant import ck_dequantize as dequantize
    shapes = dit_shapes(cfg)
    art = {}
    for name, shape in shapes.items():
        layer = name.removesuffix(".weight")
        if name.endswith(".weight") and prefix + layer in layers:
            art[name] = dequantize(layers[prefix + layer]["format"], layers[prefix + layer], shape)
        else:
            info, read = entries[prefix + name]
            arr = read()
            art[name] = to_torch(np.array(cast(arr, "F32") if info.dtype != "F32" else arr))
    quant = {}
    for full, t in layers.items():
        scale = float(np.asarray(t["input_scale"]()).reshape(())) if "input_scale" in t else None
        quant[full.removeprefix(prefix)] = (t["format"], scale)
    check_levels(report, torch_state(src.table), art, cfg, quant, label)
