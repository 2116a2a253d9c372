"""Validate a Nunchaku Lite (SVDQuant W4A4) diffusers folder against its source.

Each transformer is loaded by diffusers itself (`from_pretrained`: quantization_config
parsing, `replace_with_nunchaku_linear`, weight loading) with the emulated kernel of
`validators.svdquant_kernels`; its file keys and shapes are checked strictly against
the patched model (diffusers only warns). Then, on fixed inputs:
- the DiT output against the reference WanDiT on the source weights (fp32), with the
  tolerance of the precision, and against plain W4A4 at the same precision (RTN, no
  smoothing, no branch, same compute dtype): SVDQuant must not be worse;
- per target: the emulated layer against the logical math (bit-exact) and its output
  error against the source Linear on the inputs it saw, worst first, with plain W4A4's;
- every non-target tensor equals the source cast to the compute dtype.
A pipeline folder is also loaded whole (DiffusionPipeline) and its VAE checked.
"""
from __future__ import annotations

import os

from wan_export.errors import BadInputError
from wan_export.release import read_json

# DiT output vs the fp32 reference. Measured on every variant's tiny release calibrated on
# random inputs (rel-L2 INT4 0.05-0.09, NVFP4 0.05-0.08 at r32 with a compute dtype of bf16);
# the bound leaves room for deeper models while a wrong layout (noise) is off by > 0.5
OUTPUT_TOLERANCE = {"int4": dict(max_rel_l2=0.25, min_cosine=0.97),
                    "nvfp4": dict(max_rel_l2=0.25, min_cosine=0.97)}
# SVDQuant's DiT error may not exceed plain W4A4's times this
VS_PLAIN_RATIO = 1.0


def nunchaku_config(folder: str) -> dict | None:
    """The transformer config's quantization_config when it is nunchaku_lite."""
    cfg_path = os.path.join(folder, "config.json")
    if not os.path.isfile(cfg_path):
        return None
    q = read_json(cfg_path).get("quantization_config") or {}
    return q if q.get("quant_method") == "nunchaku_lite" else None


def transformer_folders(path: str) -> dict[str, str]:
    """subfolder ('' = the folder itself) -> stock DiT slot, for the Nunchaku Lite transformers."""
    from wan_export.validators.diffusers_loader import slots

    return {sub: slot for sub, slot in slots(path).items()
            if slot.startswith("dit") and nunchaku_config(os.path.join(path, sub))}


def load_transformer(folder: str):
    """diffusers' Nunchaku Lite load of one transformer folder, with the emulated kernel."""
    import diffusers

    from wan_export.validators.diffusers_loader import _quiet_loaders, file_shapes, key_problems, meta_leftovers
    from wan_export.validators.svdquant_kernels import emulated_nunchaku

    _quiet_loaders()
    cls = getattr(diffusers, read_json(os.path.join(folder, "config.json"))["_class_name"])
    with emulated_nunchaku():
        try:
            model = cls.from_pretrained(folder, local_files_only=True)
        except (ValueError, TypeError, RuntimeError) as e:
            raise BadInputError(f"diffusers' Nunchaku Lite loader refused it: {' '.join(str(e).split())[:300]}",
                                folder) from None
    expected = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    problems = key_problems("transformer", file_shapes(folder), expected) + meta_leftovers("transformer", model)
    if problems:
        raise BadInputError("Nunchaku Lite folder does not load faithfully: " + "; ".join(problems), folder)
    return model.eval().requires_grad_(False)


def validate_svdquant(path: str, against: str, **options):
    from wan_export.release import open_input
    from wan_export.validators.report import Report

    path, against = str(path), str(against)
    folders = transformer_folders(path)
    if not folders:
        raise BadInputError("no transformer with a nunchaku_lite quantization_config", path)
    src = open_input(against)
    report = Report(path, against, "diffusers-nunchaku-lite")
    for sub, slot in sorted(folders.items()):
        comp = src.components.get(slot) or src.components.get("dit")
        if comp is None:
            raise BadInputError(f"the source has no DiT for {slot}", against)
        folder = os.path.join(path, sub)
        check_transformer(report, slot, load_transformer(folder), comp, nunchaku_config(folder))
    if os.path.isfile(os.path.join(path, "model_index.json")):
        _check_pipeline(report, path, src)
    return report


def _check_pipeline(report, path: str, src) -> None:
    from diffusers import DiffusionPipeline

    from wan_export.validators.diffusers_loader import TO_STOCK
    from wan_export.validators.parity import WEIGHT_DTYPE_TOLERANCE, check_vae, torch_state
    from wan_export.validators.svdquant_kernels import emulated_nunchaku

    with emulated_nunchaku():
        pipe = DiffusionPipeline.from_pretrained(path, local_files_only=True)
    report.info["pipeline"] = type(pipe).__name__
    if "vae" in src.components and getattr(pipe, "vae", None) is not None:
        comp = src.components["vae"]
        vae = TO_STOCK["vae"](pipe.vae.state_dict(), os.path.join(path, "vae"))
        check_vae(report, torch_state(comp.table), vae, comp.config, WEIGHT_DTYPE_TOLERANCE["exact"])


class _Accum:
    """rel-L2 / cosine / max-abs of many (reference, output) chunks, in float64."""

    def __init__(self):
        self.err2 = self.ref2 = self.out2 = self.dot = self.max_abs = 0.0

    def add(self, ref, out) -> None:
        r, o = ref.double().reshape(-1), out.double().reshape(-1)
        e = o - r
        self.err2 += float(e @ e)
        self.ref2 += float(r @ r)
        self.out2 += float(o @ o)
        self.dot += float(r @ o)
        self.max_abs = max(self.max_abs, float(e.abs().max()) if e.numel() else 0.0)

    def metrics(self) -> dict:
        import math

        rel = math.sqrt(self.err2 / self.ref2) if self.ref2 else float(self.err2 > 0)
        cos = self.dot / math.sqrt(self.ref2 * self.out2) if self.ref2 and self.out2 else 1.0
        snr = math.inf if self.err2 == 0 else (10 * math.log10(self.ref2 / self.err2) if self.ref2 else -math.inf)
        return {"rel_l2": rel, "cosine": cos, "max_abs": self.max_abs, "snr_db": snr,
                "finite": math.isfinite(self.err2)}


def _stock_names(targets: list[str], path: str) -> dict[str, str]:
    from wan_export.keymaps.dit_diffusers import DIT_DIFFUSERS

    m = DIT_DIFFUSERS.rename([t + ".weight" for t in targets], to_stock=True, path=path)
    return {t: m[t + ".weight"][: -len(".weight")] for t in targets}


def _cast_inputs(x: dict, dt) -> dict:
    return {k: (v.to(dt) if k != "timestep" and v.is_floating_point() else v) for k, v in x.items()}


def _plain_model(src_state: dict, cfg, stock: dict[str, str], qcfg):
    """The reference WanDiT in the compute dtype with every target as plain W4A4."""
    import torch
    from torch import nn

    from wan_export.model.dit import load_dit
    from wan_export.quantizers.svdquant import plain_w4a4

    model = load_dit(src_state, cfg, dtype=qcfg.dtype)

    class Plain(nn.Module):
        def __init__(self, layer):
            super().__init__()
            self.layer = layer

        def forward(self, x):
            return self.layer.forward(x.to(qcfg.dtype))

    for name in stock.values():
        w, b = src_state[name + ".weight"], src_state.get(name + ".bias")
        parent, _, child = name.rpartition(".")
        mod = model.get_submodule(parent)
        plain = Plain(plain_w4a4(w.float(), None if b is None else b.float(), qcfg))
        if isinstance(mod, nn.Sequential):
            mod[int(child)] = plain
        else:
            setattr(mod, child, plain)
    return model.eval().requires_grad_(False), torch


def _layer_hooks(model, stock: dict[str, str], src_state: dict, qcfg, rows: dict):
    """Forward hooks on each SVDQW4A4Linear: error vs the source Linear and plain W4A4, and the
    emulated output against the logical math from the unpacked parameters."""
    from wan_export.quantizers.svdquant import plain_w4a4
    from wan_export.quantizers.svdquant_kernel import W4A4Layer

    exact = _Accum()
    handles = []
    for name, s in stock.items():
        mod = model.get_submodule(name)
        w, b = src_state[s + ".weight"].float(), src_state.get(s + ".bias")
        b = None if b is None else b.float()
        logical = W4A4Layer.from_packed(dict(mod.named_parameters()), qcfg.precision)
        plain = plain_w4a4(w, b, qcfg)
        acc = rows.setdefault(name, (_Accum(), _Accum()))

        def hook(_m, args, out, w=w, b=b, logical=logical, plain=plain, acc=acc):
            x = args[0].reshape(-1, args[0].shape[-1])
            ref = x.float() @ w.t() + (0 if b is None else b)
            acc[0].add(ref, out.reshape(ref.shape).float())
            acc[1].add(ref, plain.forward(x).float())
            exact.add(logical.forward(x), out.reshape(ref.shape))
        handles.append(mod.register_forward_hook(hook))
    return handles, exact


def check_transformer(report, slot: str, model, comp, qraw: dict) -> None:
    """Every check of one Nunchaku Lite transformer against its stock DiT component."""
    import torch

    from wan_export.model.dit import load_dit
    from wan_export.quantizers.svdquant import SVDQuantConfig
    from wan_export.validators.diffusers_loader import diffusers_forward
    from wan_export.validators.metrics import compare
    from wan_export.validators.parity import DiTCase, dit_inputs, torch_state
    from wan_export.validators.report import Tolerance

    sv = qraw["svdq_w4a4"]
    qcfg = SVDQuantConfig(precision=sv["precision"], rank=sv["rank"], compute_dtype=qraw["compute_dtype"])
    cfg, dt = comp.config, qcfg.dtype
    src_state = torch_state(comp.table)
    stock = _stock_names(sv["targets"], comp.path)
    ref = load_dit(src_state, cfg)
    plain_model, _ = _plain_model(src_state, cfg, stock, qcfg)
    rows: dict = {}
    handles, exact = _layer_hooks(model, stock, src_state, qcfg, rows)
    case = DiTCase(1, 2, 4, 6, 512 if cfg.image_branch else 24)
    x = dit_inputs(cfg, case, seed=0)
    from wan_export.validators.svdquant_kernels import emulated_nunchaku

    with torch.no_grad(), emulated_nunchaku():
        y_ref = ref(**x)
        y = diffusers_forward(model, cfg, _cast_inputs(x, dt)).float()
        y_plain = plain_model(**_cast_inputs(x, dt)).float()
    for h in handles:
        h.remove()
    m, mp = compare(y_ref, y), compare(y_ref, y_plain)
    label = f"{slot} {qcfg.precision} r{qcfg.rank}"
    report.add(f"{label} DiT output vs fp32 reference {case.label}", m, Tolerance(**OUTPUT_TOLERANCE[qcfg.precision]),
               note="diffusers' Nunchaku Lite model, emulated W4A4 kernel")
    report.add(f"{label} DiT output vs plain W4A4 (rel-L2 bound = plain's x {VS_PLAIN_RATIO})", m,
               Tolerance(max_rel_l2=float(f"{mp['rel_l2'] * VS_PLAIN_RATIO:.4g}")),
               note=f"plain W4A4 (RTN, no smoothing, no branch): rel-L2 {mp['rel_l2']:.4g}, cosine {mp['cosine']:.5f}")
    report.add(f"{label} emulated kernel vs logical math ({len(stock)} layers)", exact.metrics(),
               Tolerance(max_abs=0.0))
    report.add(f"{slot} non-target tensors vs source at {qcfg.compute_dtype}",
               _other_weights(model, comp, set(stock), qcfg), Tolerance(max_abs=0.0))
    table = []
    for name, (a, p) in rows.items():
        ma, mp_ = a.metrics(), p.metrics()
        table.append({"layer": name, "rel_l2": ma["rel_l2"], "cosine": ma["cosine"], "plain_rel_l2": mp_["rel_l2"],
                      "vs_plain": ma["rel_l2"] / mp_["rel_l2"] if mp_["rel_l2"] else 0.0})
    report.tables[f"{slot} per-layer output error vs the source Linear (worst first)"] = sorted(
        table, key=lambda r: -r["rel_l2"])
    report.info[f"{slot} targets"] = len(stock)


def _other_weights(model, comp, targets: set[str], qcfg) -> dict:
    from wan_export.keymaps.dit_diffusers import DIT_DIFFUSERS
    from wan_export.validators.diffusers_loader import _weights_metrics

    sd = {k: v for k, v in model.state_dict().items() if k.rpartition(".")[0] not in targets}
    m = DIT_DIFFUSERS.rename(list(sd), to_stock=True, path=comp.path)
    art = {m[k]: v for k, v in sd.items()}
    code = {"bfloat16": "BF16", "float16": "F16"}[qcfg.compute_dtype]
    return _weights_metrics(comp.table, art, {n: code for n in art})
