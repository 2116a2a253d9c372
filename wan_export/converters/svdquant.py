"""`wan-export svdquant`: SVDQuant W4A4 as a diffusers Nunchaku Lite folder.

The folder is the one `wan-export diffusers` writes (pipeline, or transformer
folder for a DiT-only source; A14B: both experts), planned by
`converters.diffusers.plan_folder`, with two changes to each transformer:
- its config.json carries `quantization_config` (quant_method nunchaku_lite,
  compute_dtype, svdq_w4a4 {precision, group_size, rank, targets}), targets named as
  diffusers modules;
- each target Linear's `weight`/`bias` become `qweight, wscales, smooth_factor,
  proj_down, proj_up, bias` (+ `wcscales, wtscale` for NVFP4) in the Nunchaku tile
  layout, computed lazily while the file is written (one layer at a time), and every
  other float tensor is cast to the compute dtype (diffusers loads them in it).
Linears whose shapes do not fit the 128-channel tiles, or in --exclude-blocks, stay
16-bit: each such rule is listed in the result and in `svdquant.json`.
"""
from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass, replace

from wan_export.errors import BadInputError, UnsupportedError
from wan_export.progress import null

TARGET = re.compile(r"^(blocks|vace_blocks)\.(\d+)\.(self_attn\.[qkvo]|cross_attn\.(?:[qkvo]|k_img|v_img)|ffn\.[02])$")
LAYOUT = "nunchaku_packed"
META_KEY = "wan_export.svdquant"
COMPUTE_CODES = {"bfloat16": "BF16", "float16": "F16"}
EXPERT_OF_FOLDER = {"transformer": "high_noise_model", "transformer_2": "low_noise_model"}


@dataclass(frozen=True)
class Target:
    stock: str            # blocks.3.ffn.0
    name: str             # diffusers module: blocks.3.ffn.net.0.proj
    n: int
    k: int
    bias: bool


def parse_exclude(spec: str | None) -> set[str]:
    """'0,2-4,vace_blocks.1' -> {'blocks.0', 'blocks.2', 'blocks.3', 'blocks.4', 'vace_blocks.1'}."""
    out: set[str] = set()
    for tok in filter(None, (t.strip() for t in (spec or "").split(","))):
        m = re.fullmatch(r"(?:(blocks|vace_blocks)\.)?(\d+)(?:-(\d+))?", tok)
        if not m:
            raise BadInputError(f"--exclude-blocks: {tok!r} is not N, A-B or vace_blocks.N")
        lo, hi = int(m.group(2)), int(m.group(3) or m.group(2))
        out |= {f"{m.group(1) or 'blocks'}.{i}" for i in range(lo, hi + 1)}
    return out


def select_targets(comp, mapping: dict[str, str], exclude: set[str]) -> tuple[list[Target], list[dict]]:
    """(targets, 16-bit rules): every block Linear SVDQuant may take, or why it stays 16-bit."""
    from wan_export.quantizers.svdquant_pack import TILE_K, TILE_N, fits_tiles

    shapes = {i.name: tuple(i.shape) for i in comp.table.infos()}
    targets, kept, bad = [], [], []
    for name, shape in shapes.items():
        base = name[: -len(".weight")] if name.endswith(".weight") else None
        m = TARGET.match(base) if base else None
        if not m:
            continue
        bias = shapes.get(base + ".bias")
        if len(shape) != 2 or (bias is not None and bias != (shape[0],)):
            bad.append(f"{base} (weight {list(shape)}, bias {list(bias) if bias else None})")
            continue
        n, k = shape
        d = mapping[name][: -len(".weight")]
        if f"{m.group(1)}.{m.group(2)}" in exclude:
            kept.append({"layer": d, "rule": "--exclude-blocks"})
        elif not fits_tiles(n, k):
            kept.append({"layer": d, "rule": f"[{n}, {k}] does not fit {TILE_N}-out x {TILE_K}-in tiles"})
        else:
            targets.append(Target(base, d, n, k, bias is not None))
    if bad:
        raise BadInputError(f"SVDQuant targets must be Linears (2-D weight, 1-D bias): {', '.join(bad[:4])}"
                            + (f" and {len(bad) - 4} more" if len(bad) > 4 else ""), comp.path)
    return targets, kept


def target_tensors(t: Target, cfg) -> list[tuple[str, tuple, str]]:
    """(parameter, shape, dtype code) of one target, in SVDQW4A4Linear's order."""
    dt = COMPUTE_CODES[cfg.compute_dtype]
    g = cfg.group_size
    rows = [("qweight", (t.n, t.k // 2), "I8"),
            ("wscales", (t.k // g, t.n), dt if cfg.precision == "int4" else "F8_E4M3"),
            ("smooth_factor", (t.k,), dt), ("proj_down", (t.k, cfg.rank), dt), ("proj_up", (t.n, cfg.rank), dt)]
    if t.bias:
        rows.append(("bias", (t.n,), dt))
    if cfg.precision == "nvfp4":
        rows += [("wcscales", (t.n,), dt), ("wtscale", (1,), dt)]
    return rows


def check_modules(config: dict, targets: list[Target], path: str) -> None:
    """Every target must be an nn.Linear of the diffusers model its config builds (on meta)."""
    import diffusers
    import torch
    from accelerate import init_empty_weights

    cls = getattr(diffusers, config["_class_name"])
    with init_empty_weights():
        model = cls.from_config({k: v for k, v in config.items() if k != "quantization_config"})
    bad = []
    for t in targets:
        try:
            mod = model.get_submodule(t.name)
        except AttributeError:
            mod = None
        if not isinstance(mod, torch.nn.Linear) or (mod.out_features, mod.in_features) != (t.n, t.k):
            bad.append(f"{t.name} ({type(mod).__name__ if mod is not None else 'missing'})")
    if bad:
        raise BadInputError(f"SVDQuant targets are not Linears of {cls.__name__}: {', '.join(bad[:4])}", path)


class LayerCache:
    """Quantizes a target on the first read of one of its tensors; hands each tensor out once,
    so only one layer (plus its activation sample) is held at a time."""

    def __init__(self, comp, calib, expert, cfg):
        self.comp, self.calib, self.expert, self.cfg = comp, calib, expert, cfg
        self.pending: dict[str, dict] = {}
        self.stats: list[dict] = []

    def read(self, t: Target, field: str):
        if t.name not in self.pending:
            self.pending[t.name] = self._quantize(t)
        arrays = self.pending[t.name]
        out = arrays.pop(field)
        if not arrays:
            del self.pending[t.name]
        return out

    def _quantize(self, t: Target) -> dict:
        import torch

        from wan_export.dtypes import from_torch
        from wan_export.quantizers.svdquant import Objective, plain_w4a4, quantize_linear
        from wan_export.quantizers.svdquant_calib import layer_inputs

        w = torch.from_numpy(self.comp.table.read(t.stock + ".weight").astype("float32"))
        b = torch.from_numpy(self.comp.table.read(t.stock + ".bias").astype("float32")) if t.bias else None
        sample, amax = layer_inputs(self.calib, t.stock, self.expert)
        layer, stats = quantize_linear(w, b, self.cfg, sample, amax)
        if sample is not None:
            stats["plain_w4a4_error"] = Objective(w, b, sample, self.cfg.dtype)(plain_w4a4(w, b, self.cfg))
        self.stats.append({"layer": t.name, **{k: _round(v) for k, v in stats.items()}})
        return {k: from_torch(v) for k, v in layer.packed().items()}


def _round(v):
    return round(v, 6) if isinstance(v, float) else v


def make_config(precision: str, rank: int, smooth, gptq: bool, compute_dtype: str, path: str | None = None):
    from wan_export.quantizers.svdquant import SVDQuantConfig

    if smooth not in (None, "auto"):
        try:
            smooth = float(smooth)
        except ValueError:
            raise BadInputError(f"--smooth must be 'auto' or an alpha in [0, 1], got {smooth!r}", path) from None
    try:
        return SVDQuantConfig(precision=precision, rank=rank, smooth=smooth or "auto", gptq=gptq,
                              compute_dtype=compute_dtype)
    except ValueError as e:
        raise BadInputError(str(e), path) from None


def _check_calib(calib, targets: list[Target], expert: str | None, cfg, path: str) -> None:
    calib.check_layers([t.stock for t in targets], expert, path=calib.path)
    if cfg.needs_samples:
        prefix = f"{expert}." if expert else ""
        names = calib._names          # the reader's name set: checked without reading any data
        missing = [t.stock for t in targets if f"{prefix}{t.stock}.input_sample" not in names]
        if missing:
            why = "--smooth auto searches" if cfg.smooth == "auto" else "--gptq needs"
            raise BadInputError(f"no activation samples (input_sample) for {len(missing)} layers, e.g. "
                                f"{prefix}{missing[0]}: {why} on them; calibrate with --save-activations N "
                                "or pass --smooth ALPHA", calib.path)


def _dit_parts(rel, plan) -> list[tuple[object, object, str | None]]:
    """(part, stock DiT component, CALIB expert prefix) for each transformer of the plan."""
    from wan_export.converters.diffusers import _experts

    experts = _experts(rel)
    two = len(experts) == 2
    by_folder = {p.folder: p for p in plan.parts}
    out = []
    for folder, comp in experts:
        part = by_folder.get(folder) or by_folder[""]
        out.append((part, comp, EXPERT_OF_FOLDER[folder] if two else None))
    return out


def _replan(part, comp, targets: list[Target], cache: LayerCache, cfg) -> None:
    """Swap each target's weight/bias for its W4A4 tensors; cast the rest to the compute dtype."""
    from wan_export.dtypes import FLOAT_CODES
    from wan_export.writing import Planned

    code = COMPUTE_CODES[cfg.compute_dtype]
    by_weight = {t.stock + ".weight": t for t in targets}
    biases = {t.stock + ".bias" for t in targets}
    plan, src = [], {}
    for p in part.plan:
        t = by_weight.get(p.source_name)
        if t is not None:
            for field, shape, dtype in target_tensors(t, cfg):
                name = f"{t.name}.{field}"
                plan.append(Planned(name, shape, dtype, lambda t=t, f=field: cache.read(t, f), name))
                src[name] = dtype
        elif p.source_name not in biases:
            dtype = code if p.dtype in FLOAT_CODES else p.dtype
            plan.append(replace(p, dtype=dtype))
            src[p.name] = part.src_dtypes[p.name]
    part.plan, part.src_dtypes = plan, src


def quantization_config(cfg, targets: list[Target]) -> dict:
    return {"quant_method": "nunchaku_lite", "compute_dtype": cfg.compute_dtype,
            "svdq_w4a4": {"precision": cfg.precision, "group_size": cfg.group_size, "rank": cfg.rank,
                          "targets": [t.name for t in targets]}}


def plan_svdquant(src: str, calib_path: str | None, cfg, exclude_blocks: str | None = None):
    """(folder plan, [(part, LayerCache, targets, kept)], summary): checks everything, reads no weights."""
    from wan_export.converters.diffusers import plan_folder
    from wan_export.keymaps.dit_diffusers import DIT_DIFFUSERS
    from wan_export.quantizers.svdquant_calib import calib_provenance, open_calib
    from wan_export.release import open_input

    if not calib_path:
        raise BadInputError("--calib is required: SVDQuant's smoothing and low-rank search work on the "
                            "layers' activation statistics (wan-export calibrate --save-activations N)", src)
    if not os.path.isfile(calib_path):
        raise BadInputError("no such calibration file", calib_path)
    try:
        exclude = parse_exclude(exclude_blocks)
    except BadInputError as e:
        raise BadInputError(e.message, src) from None
    rel = open_input(src)
    plan = plan_folder(rel)
    calib = open_calib(calib_path)
    provenance = calib_provenance(calib)
    jobs = []
    for part, comp, expert in _dit_parts(rel, plan):
        mapping = DIT_DIFFUSERS.rename(comp.table.names(), to_stock=False, path=comp.path)
        targets, kept = select_targets(comp, mapping, exclude)
        if not targets:
            raise UnsupportedError("no Linear fits the W4A4 tiles (or every block is excluded)", comp.path)
        too_big = [t for t in targets if cfg.rank > min(t.n, t.k)]
        if too_big:
            t = too_big[0]
            raise BadInputError(f"rank {cfg.rank} exceeds min(N, K) = {min(t.n, t.k)} of {t.name}", comp.path)
        _check_calib(calib, targets, expert, cfg, comp.path)
        check_modules(part.config, targets, comp.path)
        cache = LayerCache(comp, calib, expert, cfg)
        _replan(part, comp, targets, cache, cfg)
        part.config = {**part.config, "quantization_config": quantization_config(cfg, targets)}
        meta = {"layout": LAYOUT, "precision": cfg.precision, "group_size": cfg.group_size, "rank": cfg.rank,
                "compute_dtype": cfg.compute_dtype, "quantizer": cfg.to_dict(), "calibration": provenance,
                "calibration_expert": expert, "targets": len(targets), "kept_16bit": len(kept)}
        part.metadata = {**part.metadata, "runtime_tensor_layout": LAYOUT,
                         META_KEY: json.dumps(meta, sort_keys=True)}
        jobs.append((part, cache, targets, kept))
    return plan, jobs, {**plan.summary, "calibration": provenance}


def default_output(variant, cfg, transformer_only: bool) -> str:
    from wan_export.converters import diffusers_configs as dc

    return (dc.default_name(variant) + f"-svdq-{cfg.precision}-r{cfg.rank}"
            + ("-transformer" if transformer_only else ""))


def convert(src: str, calib: str | None, output: str | None = None, *, precision: str = "int4", rank: int = 32,
            smooth=None, gptq: bool = False, exclude_blocks: str | None = None,
            compute_dtype: str = "bfloat16", overwrite: bool = False, dry_run: bool = False,
            progress=null) -> dict:
    """Write SRC as a diffusers Nunchaku Lite (SVDQuant W4A4) folder; returns a summary."""
    from wan_export.atomic import atomic_dir
    from wan_export.converters.diffusers import write_folder, write_json
    from wan_export.release import open_input

    cfg = make_config(precision, rank, smooth, gptq, compute_dtype, src)
    plan, jobs, summary = plan_svdquant(src, calib, cfg, exclude_blocks)
    transformer_only = summary["layout"] != "pipeline"
    output = output or default_output(open_input(src).variant, cfg, transformer_only)
    result = {**summary, "output": os.path.abspath(output), "precision": cfg.precision, "rank": cfg.rank,
              "group_size": cfg.group_size, "smooth": cfg.smooth, "gptq": cfg.gptq,
              "targets": sum(len(j[2]) for j in jobs),
              "kept_16bit": [k for j in jobs for k in j[3]], "dry_run": dry_run}
    if dry_run:
        return result
    with atomic_dir(output, overwrite=overwrite) as tmp:
        files = write_folder(plan, tmp, progress)
        for part, cache, targets, kept in jobs:
            rel_path = os.path.join(part.folder, "svdquant.json")
            write_json(os.path.join(tmp, rel_path), {"quantizer": cfg.to_dict(), "layout": LAYOUT,
                                                     "layers": cache.stats, "kept_16bit": kept})
            files.append(os.path.normpath(rel_path))
    errs = [s for j in jobs for s in j[1].stats]
    worst = max(errs, key=lambda s: s["error"]) if errs else None
    return {**result, "files": sorted(files), "worst_layer": worst}


def render_text(r: dict) -> str:
    head = (f"{r['output']}: SVDQuant {r['precision']} r{r['rank']} ({r['targets']} Linears W4A4, "
            f"{len(r['kept_16bit'])} kept 16-bit)")
    if r.get("dry_run"):
        return "dry run: would write " + head
    lines = [f"wrote {head}"]
    if r.get("worst_layer"):
        w = r["worst_layer"]
        lines.append(f"worst layer on the calibration sample: {w['layer']} rel err {w['error']:.4g}"
                     + (f" (plain W4A4 {w['plain_w4a4_error']:.4g})" if "plain_w4a4_error" in w else ""))
    lines += [f"16-bit: {k['layer']}: {k['rule']}" for k in r["kept_16bit"][:10]]
    return "\n".join(lines)
