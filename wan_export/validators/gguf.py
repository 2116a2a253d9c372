"""Validate a Wan GGUF the way ComfyUI-GGUF and stable-diffusion.cpp load it.

Static checks replay each consumer's rules (formats-gguf.md §2.3, §2.4): arch
string, prefix rule, orig_shape, which tensors must be plain torch data, n_dims,
the Conv3d ne sd.cpp declares. Then every tensor is dequantized (float32, which
is bit-exact with ComfyUI-GGUF's `dequant_dtype=float32`) and compared with the
source (table + one check per ggml type), and the reference DiT runs on both
weight sets against the mix's output tolerance. Exit 1 when anything fails.
"""
from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass

import numpy as np

from wan_export.converters.gguf_read import GGUFSource
from wan_export.errors import BadInputError
from wan_export.quantizers.ggml import GGML_TYPES
from wan_export.quantizers.gguf_policy import MIX_BY_FILE_TYPE, MIXES
from wan_export.validators.metrics import compare
from wan_export.validators.report import Report, Tolerance

# DiT output vs the source weights' output, per mix. Measured on the tiny dim-256 models
# (T2V, I2V, FLF2V, VACE, TI2V; two seeds; bf16 source; 2 fixed inputs each): worst rel-L2
# and cosine, then bounds at about 2x the rel-L2 and 2x the (1 - cosine).
#   mix      measured rel-L2 / cosine      bound rel-L2 / cosine
TOLERANCE = {
    "F32": Tolerance(max_rel_l2=1e-6, min_cosine=0.999999),        # 0 / 1
    "F16": Tolerance(max_rel_l2=1e-4, min_cosine=0.999999),        # 3.0e-7 / 1.000000
    "BF16": Tolerance(max_rel_l2=1e-4, min_cosine=0.999999),       # 2.9e-7 / 1.000000 (bf16 source)
    "Q8_0": Tolerance(max_rel_l2=0.015, min_cosine=0.99995),       # 6.8e-3 / 0.999977
    "Q6_K": Tolerance(max_rel_l2=0.05, min_cosine=0.9994),         # 2.3e-2 / 0.999730
    "Q5_K_M": Tolerance(max_rel_l2=0.09, min_cosine=0.998),        # 4.3e-2 / 0.999098
    "Q5_K_S": Tolerance(max_rel_l2=0.09, min_cosine=0.998),        # 4.4e-2 / 0.999034
    "Q5_1": Tolerance(max_rel_l2=0.09, min_cosine=0.998),          # 4.5e-2 / 0.999016
    "Q5_0": Tolerance(max_rel_l2=0.10, min_cosine=0.9975),         # 5.0e-2 / 0.998774
    "Q4_K_M": Tolerance(max_rel_l2=0.17, min_cosine=0.993),        # 8.2e-2 / 0.996602
    "Q4_K_S": Tolerance(max_rel_l2=0.17, min_cosine=0.992),        # 8.6e-2 / 0.996296
    "Q4_1": Tolerance(max_rel_l2=0.19, min_cosine=0.991),          # 9.5e-2 / 0.995568
    "Q4_0": Tolerance(max_rel_l2=0.21, min_cosine=0.989),          # 1.04e-1 / 0.994684
    "IQ4_NL": Tolerance(max_rel_l2=0.19, min_cosine=0.991),        # 9.5e-2 / 0.995441
    "IQ4_XS": Tolerance(max_rel_l2=0.19, min_cosine=0.991),        # 9.5e-2 / 0.995459
    "Q3_K_L": Tolerance(max_rel_l2=0.34, min_cosine=0.97),         # 1.68e-1 / 0.985840
    "Q3_K_M": Tolerance(max_rel_l2=0.34, min_cosine=0.97),         # 1.70e-1 / 0.985487
    "Q3_K_S": Tolerance(max_rel_l2=0.36, min_cosine=0.968),        # 1.77e-1 / 0.984238
    "Q2_K": Tolerance(max_rel_l2=0.65, min_cosine=0.88),           # 3.37e-1 / 0.943807
}
# Worst single tensor, dequantized vs source, per ggml type: about 2x the worst rel-L2 measured
# on 0.02-scaled rows of 1536 (Gaussian / Student-t 3 / t3 with 1% 8x outlier columns / Laplace):
# Q8_0 0.010, Q6_K 0.029, Q5_K 0.049, Q5_1 0.052, Q5_0 0.072, Q4_K 0.093, Q4_1 0.106, Q4_0 0.131,
# IQ4_NL 0.106, IQ4_XS 0.108, Q3_K 0.191, Q2_K 0.353. Float types: their rounding bound.
TENSOR_TOLERANCE = {
    "F32": 1e-6, "F16": 1e-3, "BF16": 8e-3, "Q8_0": 0.02, "Q6_K": 0.06, "Q5_K": 0.10, "Q5_1": 0.10,
    "Q5_0": 0.15, "Q4_K": 0.19, "Q4_1": 0.21, "Q4_0": 0.26, "IQ4_NL": 0.21, "IQ4_XS": 0.22,
    "Q3_K": 0.38, "Q2_K": 0.70,
}

COMFY_ARCHES = ("flux", "sd1", "sdxl", "sd3", "aura", "hidream", "cosmos", "ltxv", "hyvid", "wan",
                "lumina2", "qwen_image")
PREFIX = "model.diffusion_model."
# Used as plain torch data by ComfyUI (raw Parameters, Conv3d, RMSNorm): F32/F16 only (#477).
TORCH_DATA = re.compile(r"(^|\.)modulation$|^img_emb\.emb_pos$|^(vace_)?patch_embedding\.weight$|norm")
CONV3D = re.compile(r"^(vace_)?patch_embedding\.weight$")
SDCPP_DETECT = "blocks.0.cross_attn.norm_k.weight"
BLOCKING = ("prefix rule", "logical shape")      # without these the weights cannot be compared at all


@dataclass
class Static:
    """One consumer rule: problems found (empty = holds)."""

    consumer: str
    check: str
    problems: list[str]
    note: str = ""


@dataclass(frozen=True)
class MustHold(Tolerance):
    """A static rule: fails with its own problem list instead of metric bounds."""

    def failures(self, m: dict) -> list[str]:
        return list(m.get("problems", []))

    def describe(self) -> str:
        return "no violations"


def comfy_names(src: GGUFSource) -> dict[str, str]:
    """Stock name -> file name as ComfyUI-GGUF keys them: any prefixed tensor means only prefixed ones count."""
    names = src.names()
    if any(n.startswith(PREFIX) for n in names):
        return {n[len(PREFIX):]: n for n in names if n.startswith(PREFIX)}
    return {n: n for n in names}


def _arch(src: GGUFSource) -> list[str]:
    from gguf import GGUFValueType

    f = src.field("general.architecture")
    if f is None:
        return ["general.architecture missing: compat mode guesses from names (#230)"]
    if f.types != [GGUFValueType.STRING]:
        return ["general.architecture is not a STRING"]
    arch = f.contents()
    if arch not in COMFY_ARCHES:
        return [f"architecture {arch!r}: 'Unexpected architecture type'"]
    return [] if arch == "wan" else [f"architecture {arch!r} loads as another model"]


def comfy_checks(src: GGUFSource, expected: dict[str, tuple]) -> list[Static]:
    names = comfy_names(src)
    missing = [k for k in expected if k not in names]
    extra = [k for k in names if k not in expected]
    shapes = [f"{k} {list(src.shape(names[k]))} != {list(s)}"
              for k, s in expected.items() if k in names and src.shape(names[k]) != tuple(s)]
    types = [f"{k}: {src.ggml_type(n)}" for k, n in names.items()
             if TORCH_DATA.search(k) and src.ggml_type(n) not in ("F32", "F16")
             and not (src.ggml_type(n) == "BF16" and len(src.ne(n)) == 1)]
    unknown = [f"{n}: {src.ggml_type(n)}" for n in names.values()
               if src.ggml_type(n) not in GGML_TYPES]
    return [Static("ComfyUI-GGUF", "general.architecture = wan (STRING)", _arch(src)),
            Static("ComfyUI-GGUF", "prefix rule keeps every DiT key",
                   [f"missing {k}" for k in missing[:5]] + [f"unexpected {k}" for k in extra[:5]]),
            Static("ComfyUI-GGUF", "logical shape (orig_shape or reversed ne) = source shape", shapes[:5]),
            Static("ComfyUI-GGUF", "raw Parameters, Conv3d and norms are F32/F16", types[:5]),
            Static("ComfyUI-GGUF", "every ggml type dequantizable", unknown[:5])]


def sdcpp_checks(src: GGUFSource) -> list[Static]:
    names = comfy_names(src)
    over4 = [n for n in src.names() if len(src.ne(n)) > 4]
    dims = [f"{n}: {len(src.ne(n))} dims with array KVs (fallback reader bug)" for n in over4] \
        if src.array_keys() else []
    conv = []
    for k, n in names.items():
        if CONV3D.match(k):
            s = src.shape(n)
            want = (s[4], s[3], s[2], s[0] * s[1]) if len(s) == 5 else None
            ne = src.ne(n)
            if want is None or tuple(ne[:3]) + (math.prod(ne[3:]),) != want:
                conv.append(f"{k}: ne {list(ne)} != Conv3d ne {list(want or ())}")
            elif src.ggml_type(n) not in ("F16", "F32"):
                conv.append(f"{k}: {src.ggml_type(n)} (declared F16)")
    rows = [f"{n}: ne[0] {src.ne(n)[0]} % {GGML_TYPES[t].block_size}" for n in src.names()
            if (t := src.ggml_type(n)) in GGML_TYPES and src.ne(n)[0] % GGML_TYPES[t].block_size]
    long = [n for n in src.names() if len(n.encode()) > 63]
    note = f"{len(over4)} tensors > 4-D: needs sd.cpp >= Sep 2025 (#1759)" if over4 and not dims else ""
    return [Static("stable-diffusion.cpp", "n_dims <= 4, or > 4-D without array KVs", dims, note),
            Static("stable-diffusion.cpp", f"detection key {SDCPP_DETECT}",
                   [] if SDCPP_DETECT in names else [f"{SDCPP_DETECT} missing"]),
            Static("stable-diffusion.cpp", "Conv3d ne [kw,kh,kt,in*out], F16/F32", conv[:5],
                   "F32 is converted to the declared F16 at load" if not conv else ""),
            Static("stable-diffusion.cpp", "rows fit their block size", rows[:5]),
            Static("stable-diffusion.cpp", "names < 64 bytes (GGML_MAX_NAME)", long[:5])]


def add_static(report: Report, statics: list[Static]) -> bool:
    """Table of every rule plus one check per rule; True when all hold."""
    report.tables["loader checks"] = [{"consumer": s.consumer, "check": s.check,
                                       "result": "ok" if not s.problems else "FAIL",
                                       "detail": "; ".join(s.problems) or s.note} for s in statics]
    for s in statics:
        report.add(f"{s.consumer}: {s.check}", {"rel_l2": "-", "cosine": "-", "max_abs": "-", "snr_db": "-",
                                                "problems": s.problems}, MustHold(), s.note)
    return all(not s.problems for s in statics)


def file_mix(src: GGUFSource) -> str | None:
    """The mix a file was made with: our policy record, else general.file_type."""
    raw = src.metadata.get("wan_export.quantization")
    if raw:
        try:
            return json.loads(raw)["params"]["mix"]
        except (ValueError, KeyError, TypeError):
            pass
    return MIX_BY_FILE_TYPE.get(src.metadata.get("general.file_type"))


def tolerance_for(src: GGUFSource, types: set[str]) -> tuple[str, Tolerance]:
    mix = file_mix(src)
    if mix in TOLERANCE:
        return mix, TOLERANCE[mix]
    worst = max(types, key=lambda t: TENSOR_TOLERANCE.get(t, 1.0))          # loosest type present
    mix = next((m.name for m in MIXES.values() if m.linear == worst), "Q2_K")
    return mix, TOLERANCE[mix]


def _pick_dit(rel, src: GGUFSource):
    """The source DiT this file was made from: our expert record, else the closer expert."""
    dits = rel.dits
    if not dits:
        raise BadInputError("no Wan DiT found to compare against", rel.path)
    if len(dits) == 1:
        return next(iter(dits.values()))
    expert = src.metadata.get("wan_export.expert")
    if f"dit.{expert}" in dits:
        return dits[f"dit.{expert}"]
    names = comfy_names(src)
    probe = "blocks.0.modulation"
    if probe not in names:
        raise BadInputError(f"cannot tell which expert this file holds ({probe} missing)", src.path)
    art = src.read(names[probe])

    def dist(comp):
        return float(np.abs(comp.table.read(probe).astype(np.float32) - art).sum())
    return min(dits.values(), key=dist)


def tensor_errors(src: GGUFSource, comp, names: dict[str, str]) -> tuple[list[dict], dict]:
    """Per-tensor rows (dequantized vs source) and the dequantized weights by stock name."""
    import torch

    rows, art = [], {}
    for info in comp.table.infos():
        a = np.array(src.read(names[info.name]), dtype=np.float32)     # writable copy for torch
        with np.errstate(invalid="ignore", over="ignore"):       # a damaged file may hold inf/NaN
            m = compare(comp.table.read(info.name).astype(np.float32), a)
        rows.append({"tensor": info.name, "type": src.ggml_type(names[info.name]), "rel_l2": m["rel_l2"],
                     "max_abs": m["max_abs"], "cosine": m["cosine"], "_metrics": m})
        art[info.name] = torch.from_numpy(a)
    return rows, art


def add_type_checks(report: Report, rows: list[dict]) -> None:
    """Error-by-type table and one check per ggml type on its worst tensor."""
    by_type: dict[str, list[dict]] = {}
    for r in rows:
        by_type.setdefault(r["type"], []).append(r)
    summary = []
    for t, rs in sorted(by_type.items()):
        worst = max(rs, key=lambda r: r["rel_l2"])
        bound = TENSOR_TOLERANCE.get(t)
        summary.append({"type": t, "tensors": len(rs), "mean rel_l2": float(np.mean([r["rel_l2"] for r in rs])),
                        "worst rel_l2": worst["rel_l2"], "worst tensor": worst["tensor"], "bound": bound})
        if bound is not None:
            report.add(f"tensors {t} (worst: {worst['tensor']})", worst["_metrics"], Tolerance(max_rel_l2=bound))
    report.tables["error by type"] = summary
    report.tables["per-tensor error"] = [{k: v for k, v in r.items() if k != "_metrics"} for r in rows]


def validate_gguf(path: str, against: str, **opts) -> Report:
    """Replay both loaders' rules on PATH, then compare tensors and DiT outputs with AGAINST."""
    from wan_export.release import open_input
    from wan_export.validators.blockwise import check_dit_blockwise
    from wan_export.variants import dit_shapes

    src = GGUFSource(path)
    report = Report(str(path), str(against), "gguf")
    comp = _pick_dit(open_input(str(against)), src)
    names = comfy_names(src)
    statics = comfy_checks(src, dit_shapes(comp.config)) + sdcpp_checks(src)
    add_static(report, statics)
    types = {src.ggml_type(n) for n in names.values()}
    mix, tol = tolerance_for(src, types)
    report.info.update({"variant": comp.variant, "expert": comp.expert or "-", "mix": mix,
                        "output tolerance": tol.describe(),
                        "dequantization": "float32 (= ComfyUI-GGUF dequant_dtype=float32; the fp16 default "
                                          "differs by <= 2.5e-4)"})
    if any(s.problems for s in statics if s.check.startswith(BLOCKING)):
        report.info["parity"] = "skipped: the file's keys or shapes do not fit the source"
        return report
    rows, art = tensor_errors(src, comp, names)
    add_type_checks(report, rows)
    check_dit_blockwise(report, comp.table, art, comp.config, tol, label=f"dit {mix}")   # reference block by block
    return report
