"""Validate a ComfyUI file by ComfyUI's own loading rules, then by reference-model parity.

The file is re-read the way UNETLoader, VAELoader, CLIPLoader or CheckpointLoader
would (formats-comfyui.md sections 2-5): prefix choice (more than 5 keys),
detection by `head.modulation`, num_heads = dim // 128 (plus a metadata
`config` override), text_dim 4096, the model_type order and the supported_models
class, VAE 2.1/2.2 marker keys, UMT5 detection and `spiece_model`. ComfyUI only
logs missing keys; here every key set must be exact. Then the reference model
runs on the source's weights and on the file's with fixed inputs.
"""
from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass, field

from wan_export import layouts
from wan_export.components import CONFIGURE, Component
from wan_export.dtypes import FLOAT_CODES
from wan_export.errors import BadInputError
from wan_export.keymaps.umt5_hf import UMT5_HF
from wan_export.model.config import HEAD_DIM, TEXT_DIM, UMT5_XXL
from wan_export.release import open_input
from wan_export.safetensors_io import SafetensorsFile, TensorInfo
from wan_export.validators.parity import WEIGHT_DTYPE_TOLERANCE, Tolerance, check_vae, tensor_table
from wan_export.validators.report import Check, Report
from wan_export.variants import dit_shapes, infer_dit_config

UNET_PREFIXES = ("model.diffusion_model.", "model.model.", "net.")     # unet_prefix_from_state_dict
CHECKPOINT = {"model.diffusion_model.": "dit", "vae.": "vae", "text_encoders.umt5xxl.transformer.": "t5"}
CHECKPOINT_SPIECE = "text_encoders.spiece_model"
VAE_MARK, VAE22_MARK = "decoder.middle.0.residual.0.gamma", "decoder.upsamples.0.upsamples.0.residual.2.weight"
DIFFUSERS_VAE_MARKS = ("decoder.mid_block.resnets.0.norm1.gamma", "decoder.up_blocks.0.resnets.0.norm1.weight")
TE_MARKS = ("shared.weight", "spiece_model", "encoder.final_layer_norm.weight", "token_embedding.weight")

# model_type order of detect_unet_config: (model_type, marker key); vace and camera come first
MODEL_TYPE_MARKERS = (
    ("vace", "vace_patch_embedding.weight"),
    ("camera", "control_adapter.conv.weight"),
    ("s2v", "casual_audio_encoder.encoder.final_linear.weight"),
    ("humo", "audio_proj.audio_proj_glob_1.layer.bias"),
    ("animate", "face_adapter.fuser_blocks.0.k_norm.weight"),
    ("scail2", "patch_embedding_mask.weight"),
    ("scail", "patch_embedding_pose.weight"),
    ("wandancer", "patch_embedding_global.weight"),
    ("i2v", "img_emb.proj.0.bias"),
)
# supported_models.py order, first full match wins (CausalAR needs a metadata flag we never write)
COMFY_CLASSES = (
    ("WAN22_T2V", lambda c: c["model_type"] == "t2v" and c["out_dim"] == 48),
    ("WAN21_T2V", lambda c: c["model_type"] == "t2v"),
    ("WAN21_I2V", lambda c: c["model_type"] == "i2v" and c["in_dim"] == 36),
    ("WAN21_FunControl2V", lambda c: c["model_type"] == "i2v" and c["in_dim"] == 48),
    ("WAN21_Vace", lambda c: c["model_type"] == "vace"),
    ("WAN21_Camera", lambda c: c["model_type"] == "camera" and c["in_dim"] == 32),
    ("WAN22_Camera", lambda c: c["model_type"] == "camera_2.2" and c["in_dim"] == 36),
)
# our model_type (+ CLIP branch) -> the class ComfyUI must pick (section 2, "Stock model" table)
EXPECTED_CLASS = {("t2v", False): "WAN21_T2V", ("i2v", True): "WAN21_I2V", ("flf2v", True): "WAN21_I2V",
                  ("i2v", False): "WAN21_T2V", ("ti2v", False): "WAN22_T2V", ("vace", False): "WAN21_Vace"}
# artifact dtype -> source dtypes it holds exactly (a lossless widening gives identical outputs)
HOLDS = {"F32": {"F32", "BF16", "F16", "F8_E4M3", "F8_E5M2"}, "BF16": {"BF16", "F8_E4M3", "F8_E5M2"},
         "F16": {"F16", "F8_E4M3", "F8_E5M2"}, "F8_E4M3": {"F8_E4M3"}, "F8_E5M2": {"F8_E5M2"}}
T5_CASES = ((1, 8), (2, 16))                  # (batch, tokens); the second has padding
# worst output rel-L2 of an F32 -> cast on the tiny synthetic models (every variant, seeds 0-1),
# quoted in reports beside the bound from parity.WEIGHT_DTYPE_TOLERANCE that is applied
MEASURED_CAST = {("dit", "BF16"): 3.4e-3, ("dit", "F16"): 4.6e-4, ("vae", "BF16"): 1.3e-2,
                 ("vae", "F16"): 1.8e-3, ("text encoder", "BF16"): 1.1e-2, ("text encoder", "F16"): 2.3e-3}


@dataclass
class StructureCheck(Check):
    """A loader-rule check: passes when there are no problems (no numeric metrics)."""

    problems: list[str] = field(default_factory=list)

    @property
    def failures(self) -> list[str]:
        return list(self.problems)


def _structure(report: Report, name: str, problems: list[str], note: str = "") -> bool:
    dash = {k: "-" for k in ("rel_l2", "cosine", "max_abs", "snr_db")}
    report.checks.append(StructureCheck(name, dash, Tolerance(), note or "ComfyUI loading rules", problems))
    return not problems


def _table(sf: SafetensorsFile, prefix: str = "", keep_others: bool = False) -> layouts.LazyTable:
    """The file's keys under `prefix`, stripped, as a lazy table (`keep_others`: other keys verbatim)."""
    entries = {}
    for i in sf.infos():
        if i.name.startswith(prefix) or keep_others:
            k = i.name.removeprefix(prefix)
            entries[k] = (TensorInfo(k, i.shape, i.dtype), lambda n=i.name: sf.read(n))
    return layouts.LazyTable(sf.path, dict(sf.metadata), entries)


def unet_prefix(keys) -> str:
    """ComfyUI: the first prefix more than 5 keys carry, else 'model.' (stripped only where present)."""
    return next((p for p in UNET_PREFIXES if sum(k.startswith(p) for k in keys) > 5), "model.")


def comfy_model_type(keys: set) -> str:
    for mtype, marker in MODEL_TYPE_MARKERS:
        if marker in keys:
            if mtype == "camera":
                return "camera" if "img_emb.proj.0.bias" in keys else "camera_2.2"
            return mtype
    return "t2v"


def comfy_unet_config(shapes: dict, metadata: dict) -> dict:
    """detect_unet_config's Wan branch (section 2), with the metadata `config` override merged."""
    dim = shapes["head.modulation"][-1]
    cfg = {"dim": dim, "num_heads": dim // HEAD_DIM, "out_dim": shapes["head.head.weight"][0] // 4,
           "ffn_dim": shapes["blocks.0.ffn.0.weight"][0], "in_dim": shapes["patch_embedding.weight"][1],
           "num_layers": len({k.split(".")[1] for k in shapes if k.startswith("blocks.")}),
           "model_type": comfy_model_type(set(shapes))}
    try:
        cfg.update(json.loads(metadata.get("config", "{}")).get("transformer", {}))
    except (ValueError, AttributeError):
        pass
    return cfg


def comfy_class(cfg: dict) -> str | None:
    return next((name for name, match in COMFY_CLASSES if match(cfg)), None)


def _detect_problem(keys: set, prefix: str) -> str:
    if "scale_shift_table" in keys or any(k.startswith("condition_embedder.") for k in keys):
        return ("ComfyUI cannot detect the model type ('Could not detect model type'): the keys are diffusers "
                "names (condition_embedder.*, attn1/attn2, scale_shift_table); write the file with "
                "`wan-export comfyui`")
    lead = sorted({k.split(".")[0] + "." for k in keys})
    return (f"ComfyUI cannot detect the model type ('Could not detect model type'): no head.modulation "
            f"after prefix {prefix or 'none'!r} (key prefixes: {', '.join(lead[:4])}); only bare, "
            "model.diffusion_model. and net. keys are recognised")


def _key_problems(found: dict, expected: dict) -> list[str]:
    missing = [k for k in expected if k not in found]
    unexpected = [k for k in found if k not in expected]
    wrong = [f"{k} {list(found[k])} (expected {list(expected[k])})"
             for k in expected if k in found and tuple(found[k]) != tuple(expected[k])]
    return [f"{len(v)} {label}: {', '.join(v[:6])}" + (" ..." if len(v) > 6 else "")
            for label, v in (("missing", missing), ("unexpected", unexpected), ("wrong shape", wrong)) if v]


# ---------------------------------------------------------------- dtypes and parity


def tolerance_for(src_table, art_dtypes: dict[str, str], label: str = "dit") -> tuple[Tolerance, str]:
    """Exact when every artifact tensor holds its source values exactly, else the narrowest cast's bound."""
    src = {i.name: i.dtype for i in src_table.infos() if i.dtype in FLOAT_CODES}
    lossy = sorted({art_dtypes[k] for k, s in src.items() if k in art_dtypes and s not in HOLDS.get(art_dtypes[k], ())},
                   key=lambda c: HOLDS_ORDER.index(c) if c in HOLDS_ORDER else -1)
    if not lossy:
        return WEIGHT_DTYPE_TOLERANCE["exact"], "exact (weights hold the source values)"
    code = "F8_E4M3" if lossy[0].startswith("F8") else lossy[0]
    tol = WEIGHT_DTYPE_TOLERANCE.get(code, WEIGHT_DTYPE_TOLERANCE["F8_E4M3"])
    seen = MEASURED_CAST.get((label.split(":")[0], code))
    return tol, f"{code} cast: {tol.describe()}" + (f" (tiny models measure rel_l2 <= {seen:.1e})" if seen else "")


HOLDS_ORDER = ("F8_E5M2", "F8_E4M3", "BF16", "F16", "F32")      # narrowest (loosest tolerance) first


def _pick(rel, kind: str, metadata: dict, artifact: str):
    comps = [c for _, c in sorted(rel.components.items()) if c.kind == kind]
    if not comps:
        raise BadInputError(f"no {kind} component to compare with", rel.path)
    if len(comps) == 1:
        return comps[0]
    expert = metadata.get("wan_export.expert") or next((e for e in ("high_noise", "low_noise") if e in artifact), None)
    for c in comps:
        if c.expert == expert:
            return c
    raise BadInputError("the source has two experts and the file does not say which one it is "
                        "(no wan_export.expert metadata, no high_noise/low_noise in its name)", artifact)


def _art_dtypes(table) -> dict[str, str]:
    return {i.name: i.dtype for i in table.infos()}


def _parity_dit(report, src, art_table, art_dtypes, cfg, label):
    from wan_export.validators.blockwise import LazyState, check_dit_blockwise

    tol, how = tolerance_for(src.table, art_dtypes, label)
    report.info[f"{label} tolerance"] = how
    check_dit_blockwise(report, src.table, art_table, cfg, tol, label=label, ref_cfg=src.config)   # block by block
    _tensor_rows(report, src, LazyState(art_table), tol, label)


def _tensor_rows(report, src, art, tol, label) -> None:
    """Per-tensor errors for lossy casts (exact artifacts need none)."""
    if tol.max_abs != 0:
        report.tables[f"{label} per-tensor error"] = tensor_table(src.table, art)


def _parity_vae(report, src, art_table, art_dtypes, cfg, label):
    from wan_export.validators.parity import torch_state

    tol, how = tolerance_for(src.table, art_dtypes, label)
    report.info[f"{label} tolerance"] = how
    art = torch_state(art_table)
    check_vae(report, torch_state(src.table), art, cfg, tol, label=label)
    _tensor_rows(report, src, art, tol, label)


def t5_outputs(weights, cfg) -> list:
    import torch

    from wan_export.model.t5 import load_t5

    model = load_t5(weights, cfg)
    outs = []
    for seed, (b, n) in enumerate(T5_CASES):
        ids = torch.randint(0, cfg.vocab, (b, n), generator=torch.Generator().manual_seed(seed))
        mask = torch.ones(b, n, dtype=torch.long)
        mask[1:, n // 2:] = 0
        with torch.no_grad():
            outs.append(model(ids, mask))
    return outs


def _parity_t5(report, src, art_table, art_dtypes, cfg, label, scaled_fp8: bool = False):
    from wan_export.validators.metrics import compare
    from wan_export.validators.parity import torch_state

    tol, how = tolerance_for(src.table, art_dtypes, label)
    if scaled_fp8:                # per-tensor scaled fp8 Linears (comfyui --quant): their own bound
        from wan_export.validators.quant_parity import TE_FP8_TOLERANCE as tol
        how = f"scaled fp8 text encoder: {tol.describe()}"
    report.info[f"{label} tolerance"] = how
    ref = t5_outputs(torch_state(src.table), src.config)
    weights = torch_state(art_table)
    for (b, n), r, a in zip(T5_CASES, ref, t5_outputs(weights, cfg)):
        report.add(f"{label} output B={b} L={n}", compare(r, a), tol)
    _tensor_rows(report, src, weights, tol, label)


# ---------------------------------------------------------------- the loaders


def check_unet(report: Report, sf, prefix: str | None, rel, label: str = "dit") -> None:
    """UNETLoader (or the checkpoint's model part): detection, class, exact keys, parity."""
    if prefix is None:                       # UNETLoader strips the prefix from the keys that carry it
        keys = [i.name for i in sf.infos()]
        prefix = unet_prefix(keys)
        prefix = prefix if any(k.startswith(prefix) for k in keys) else ""
        table = _table(sf, prefix, keep_others=True)
    else:
        table = _table(sf, prefix)
    if "head.modulation" not in table.entries:
        _structure(report, f"{label}: ComfyUI detection", [_detect_problem(set(table.names()), prefix)])
        return
    art_dtypes = _art_dtypes(table)
    problems = _legacy_fp8_problems(table)
    quantized = layouts.dequantize_fp8(table)
    shapes = {i.name: i.shape for i in table.infos()}
    ccfg = comfy_unet_config(shapes, sf.metadata)
    report.info[f"{label} (ComfyUI)"] = (f"prefix {prefix!r}, model_type {ccfg['model_type']}, "
                                         f"class {comfy_class(ccfg)}, dim {ccfg['dim']}, heads {ccfg['num_heads']}, "
                                         f"layers {ccfg['num_layers']}, in {ccfg['in_dim']}, out {ccfg['out_dim']}, "
                                         f"quantized layers {quantized}")
    try:
        cfg = infer_dit_config(shapes, sf.path, {"num_heads": ccfg["num_heads"]})
    except (BadInputError, ValueError) as e:
        _structure(report, f"{label}: ComfyUI detection", problems + [getattr(e, "message", str(e))])
        return
    problems += _dit_config_problems(shapes, ccfg, cfg)
    keys = _key_problems(shapes, dit_shapes(cfg))
    src = _pick(rel, "dit", sf.metadata, sf.path)
    same = [getattr(c, f) for c in (cfg, src.config) for f in ("dim", "in_dim", "out_dim", "num_layers",
                                                                 "image_branch", "vace_layers")]
    if same[:6] != same[6:]:
        keys.append(f"shape differs from the source ({src.variant})")
    _structure(report, f"{label}: ComfyUI detection and keys", problems + keys)
    if not keys:
        _parity_dit(report, src, table, art_dtypes, cfg, label)


def _dit_config_problems(shapes: dict, ccfg: dict, cfg) -> list[str]:
    problems = []
    text = shapes.get("text_embedding.0.weight", (0, 0))[1]
    if text != TEXT_DIM:
        problems.append(f"text_embedding.0.weight takes {text} features; ComfyUI hard-codes text_dim 4096")
    cls, want = comfy_class(ccfg), EXPECTED_CLASS.get((cfg.model_type, cfg.image_branch))
    if cls != want:
        problems.append(f"ComfyUI would build {cls} (model_type {ccfg['model_type']}), expected {want}")
    return problems


def _legacy_fp8_problems(table) -> list[str]:
    if "scaled_fp8" in table.entries and any(i.dtype == "F8_E5M2" for i in table.infos()):
        return ["legacy scaled fp8 in e5m2: ComfyUI reads it as e4m3fn and clips at 448"]
    return []


def check_vae_file(report: Report, sf, prefix: str, rel, label: str = "vae") -> None:
    """VAELoader: bare keys (the checkpoint loader strips `vae.` first), 2.1/2.2 markers, exact keys."""
    table = _table(sf, prefix)
    keys = set(table.names())
    if VAE_MARK not in keys:
        why = ("diffusers AutoencoderKLWan layout: ComfyUI misdetects it as an SD AutoencoderKL (size mismatch)"
               if keys & set(DIFFUSERS_VAE_MARKS) else f"not a Wan VAE by ComfyUI's rule (no {VAE_MARK})")
        _structure(report, f"{label}: ComfyUI detection", [why])
        return
    comp = Component("vae", "stock", table)
    try:
        CONFIGURE["vae"](comp, {})
    except BadInputError as e:
        _structure(report, f"{label}: ComfyUI detection and keys", [e.message])
        return
    cfg = comp.config
    marker = f"marker {VAE22_MARK}" if cfg.version == "2.2" else "no 2.2 marker"
    report.info[f"{label} (ComfyUI)"] = f"Wan{cfg.version} VAE ({marker})"
    _custom_vae_note(report, cfg, label)
    src = _pick(rel, "vae", sf.metadata, sf.path)
    problems = [] if src.config == cfg else [f"VAE differs from the source ({src.variant})"]
    if _structure(report, f"{label}: ComfyUI detection and keys", problems):
        _parity_vae(report, src, table, _art_dtypes(table), cfg, label)


def _custom_vae_note(report: Report, cfg, label: str) -> None:
    from wan_export.converters.comfyui import vae_notes

    for note in vae_notes(cfg):
        report.info[f"{label} note"] = note + " (checked against its own dims)"


def check_te(report: Report, sf, prefix: str, spiece: str, rel, label: str = "text encoder") -> None:
    """CLIPLoader: HF UMT5 names, detect_te_model (generalised to any size), spiece_model, exact keys."""
    table = _table(sf, prefix)
    table.entries.pop(spiece.removeprefix(prefix), None)
    names = set(table.names())
    if "token_embedding.weight" in names:
        _structure(report, f"{label}: ComfyUI detection", [
            ("stock Wan T5 names: ComfyUI finds every key missing and detect_te_model returns None; "
             "write HF UMT5 names with `wan-export comfyui`")])
        return
    problems = _te_detection(table, names) + _spiece_problems(sf, spiece, rel)
    fp8 = sorted(i.name for i in table.infos() if i.dtype.startswith("F8") and i.name.endswith(".weight"))
    layouts.dequantize_fp8(table)            # scaled fp8 (Comfy-Org's umt5_xxl_fp8_e4m3fn_scaled)
    try:
        fp8 = {v: "F8_E4M3" for v in UMT5_HF.rename(fp8, to_stock=True, path=sf.path).values()} if fp8 else {}
        layouts.rename(table, UMT5_HF)
        comp = Component("t5", "hf", table)
        CONFIGURE["t5"](comp, {})
    except BadInputError as e:
        _structure(report, f"{label}: ComfyUI detection and keys", problems + [e.message])
        return
    if comp.config != UMT5_XXL:
        report.info[f"{label} note"] = (f"custom size (dim {comp.config.dim}, {comp.config.num_layers} blocks): "
                                        "ComfyUI's detect_te_model only recognises UMT5-XXL; checked with the "
                                        "same rule on its last block")
    src = _pick(rel, "t5", sf.metadata, sf.path)
    if src.config != comp.config:
        problems.append("text encoder differs from the source")
    if _structure(report, f"{label}: ComfyUI detection and keys", problems):
        _parity_t5(report, src, table, _art_dtypes(table) | fp8, comp.config, label, scaled_fp8=bool(fp8))


def _te_detection(table, names: set) -> list[str]:
    """detect_te_model: block 23's wi_1 has 10240 rows; for other sizes, the last block's wi_1 matches block 0's."""
    blocks = sorted({int(m.group(1)) for k in names if (m := re.match(r"encoder\.block\.(\d+)\.", k))})
    if not blocks:
        return ["no encoder.block.* keys: not an HF UMT5 encoder"]
    last = f"encoder.block.{blocks[-1]}.layer.1.DenseReluDense.wi_1.weight"
    first = "encoder.block.0.layer.1.DenseReluDense.wi_1.weight"
    shapes = {i.name: i.shape for i in table.infos()}
    if shapes.get("shared.weight") == (UMT5_XXL.vocab, UMT5_XXL.dim):
        key = "encoder.block.23.layer.1.DenseReluDense.wi_1.weight"
        if shapes.get(key, (0,))[0] != UMT5_XXL.dim_ffn:
            return [f"detect_te_model needs {key} with 10240 rows"]
    elif last not in shapes or shapes[last][0] != shapes.get(first, (None,))[0]:
        return [f"detect_te_model: {last} missing or not the gated-GELU width of block 0"]
    return []


def _spiece_problems(sf, spiece: str, rel) -> list[str]:
    infos = {i.name: i for i in sf.infos()}
    if spiece not in infos:
        return [f"no {spiece}: CLIPLoader's tokenizer falls back to SD1 and SPieceTokenizer raises"]
    info = infos[spiece]
    if info.dtype != "U8" or len(info.shape) != 1 or not info.shape[0]:
        return [f"{spiece} must be non-empty uint8 1-D, got {info.dtype} {list(info.shape)}"]
    want = _source_spiece(rel)
    if want is not None and bytes(sf.read(spiece)) != want:
        return [f"{spiece} differs from the source's spiece.model"]
    return []


def _source_spiece(rel) -> bytes | None:
    if rel.tokenizer_dir:
        with open(os.path.join(rel.tokenizer_dir, "spiece.model"), "rb") as f:
            return f.read()
    t5 = [c for c in rel.components.values() if c.kind == "t5" and "spiece_model" in c.side]
    return bytes(t5[0].side["spiece_model"][1]()) if t5 else None


def check_checkpoint(report: Report, sf, rel) -> None:
    """CheckpointLoader: model.diffusion_model. + vae. + text_encoders.umt5xxl.transformer. (+ spiece)."""
    keys = [i.name for i in sf.infos()]
    stray = [k for k in keys if k != CHECKPOINT_SPIECE and not k.startswith(tuple(CHECKPOINT))]
    parts = {kind: p for p, kind in CHECKPOINT.items() if any(k.startswith(p) for k in keys)}
    problems = [f"{len(stray)} keys outside the checkpoint prefixes: {', '.join(stray[:5])}"] if stray else []
    problems += [] if "vae" in parts else ["no vae.* keys"]
    report.info["loader"] = "CheckpointLoaderSimple (" + ", ".join(parts.values()) + ")"
    _structure(report, "checkpoint layout", problems)
    prefix = parts.get("dit", "model.diffusion_model.")
    if any(k.startswith(prefix) and k.endswith(".comfy_quant") for k in keys) or (
            "wan_export.quant" in sf.metadata and prefix + "scaled_fp8" in keys):
        from wan_export.validators.comfyui_quant import validate_quantized     # quantized model part
        validate_quantized(sf, rel, sf.path, report.against, prefix=prefix, report=report)
    else:
        check_unet(report, sf, prefix, rel)
    if "vae" in parts:
        check_vae_file(report, sf, parts["vae"], rel)
    if "t5" in parts:
        check_te(report, sf, parts["t5"], CHECKPOINT_SPIECE, rel)


def _loader(keys: set) -> str:
    if any(k.startswith(("vae.", "text_encoders.")) for k in keys) and \
            any(k.startswith("model.diffusion_model.") for k in keys):
        return "checkpoint"
    if VAE_MARK in keys or keys & set(DIFFUSERS_VAE_MARKS):
        return "vae"
    if keys & set(TE_MARKS):
        return "te"
    return "unet"


LOADERS = {
    "checkpoint": ("CheckpointLoaderSimple", lambda r, sf, rel: check_checkpoint(r, sf, rel)),
    "vae": ("VAELoader", lambda r, sf, rel: check_vae_file(r, sf, "", rel)),
    "te": ("CLIPLoader (type wan)", lambda r, sf, rel: check_te(r, sf, "", "spiece_model", rel)),
    "unet": ("UNETLoader", lambda r, sf, rel: check_unet(r, sf, None, rel)),
}


def validate_comfyui(path: str, against: str, **opts) -> Report:
    """Check PATH with ComfyUI's loader rules and run reference-model parity against AGAINST."""
    sf = SafetensorsFile(path)
    rel = open_input(against)
    from wan_export.validators.comfyui_quant import is_quantized, validate_quantized
    if is_quantized(sf):          # quantized DiT: ComfyUI's mixed-precision loading (comfyui_quant.py)
        return validate_quantized(sf, rel, path, against)
    kind = _loader({i.name for i in sf.infos()})
    loader, check = LOADERS[kind]
    report = Report(artifact=str(path), against=str(against), format="comfyui")
    report.info.setdefault("loader", loader)
    check(report, sf, rel)
    return report
