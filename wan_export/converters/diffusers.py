"""`wan-export diffusers`: write a diffusers pipeline folder from any Wan input.

Every weight is a pure rename of the stock tensors (the CLIP vision tower adds
one named split and two reshapes), streamed one tensor at a time through
`writing.write_sharded` into a folder built atomically. The JSON side comes
from `diffusers_configs`. A source holding only DiT weights becomes a folder
that `WanTransformer3DModel.from_pretrained(DIR)` loads (A14B: `DIR/transformer`
and `DIR/transformer_2`), since a pipeline without VAE and text encoder cannot load.
"""
from __future__ import annotations

import json
import os
import shutil
from collections import Counter
from dataclasses import dataclass, field

from wan_export.atomic import atomic_dir
from wan_export.converters import diffusers_clip as clip_map
from wan_export.converters import diffusers_configs as dc
from wan_export.dtypes import DTYPE_NAMES, FLOAT_CODES
from wan_export.errors import BadInputError, UnsupportedError
from wan_export.keymaps import vae_diffusers
from wan_export.keymaps.dit_diffusers import DIT_DIFFUSERS
from wan_export.keymaps.umt5_hf import UMT5_HF
from wan_export.progress import null
from wan_export.release import Release, open_input
from wan_export.writing import Planned, write_sharded

DIFFUSERS_STEM, TRANSFORMERS_STEM = "diffusion_pytorch_model", "model"
SAFETENSORS_METADATA = {"format": "pt"}        # what save_pretrained writes; transformers checks it
# tokenizer files copied verbatim from the release's google/umt5-xxl folder (what Wan itself loads)
TOKENIZER_FILES = ("spiece.model", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json",
                   "added_tokens.json")


@dataclass
class Part:
    """One model subfolder: config.json plus planned, renamed tensors."""

    folder: str                      # relative to the output root ("" = the root itself)
    config: dict
    stem: str
    shard_bytes: int
    plan: list[Planned] = field(default_factory=list)
    src_dtypes: dict[str, str] = field(default_factory=dict)
    source: str = ""
    jsons: dict[str, dict] = field(default_factory=dict)     # side files, e.g. the image processor
    metadata: dict = field(default_factory=lambda: dict(SAFETENSORS_METADATA))   # each file's __metadata__

    @property
    def out_dtype(self) -> str:
        floats = Counter(p.dtype for p in self.plan if p.dtype in FLOAT_CODES)
        return floats.most_common(1)[0][0] if floats else "F32"


@dataclass
class FolderPlan:
    parts: list[Part]
    jsons: dict[str, dict]           # relative path -> JSON object
    tokenizer_dir: str | None = None
    summary: dict = field(default_factory=dict)


def _out_dtype(src: str, dtype: str | None) -> str:
    return dtype if dtype and src in FLOAT_CODES else src


def _part(folder: str, config: dict, stem: str, shard_bytes: int, comp, mapping: dict[str, str],
          dtype: str | None) -> Part:
    """Plan a pure rename: mapping is stock name -> output name, in the source's order."""
    part = Part(folder, config, stem, shard_bytes, source=comp.path)
    for info in comp.table.infos():
        out = mapping[info.name]
        part.plan.append(Planned(out, info.shape, _out_dtype(info.dtype, dtype),
                                 lambda t=comp.table, n=info.name: t.read(n), info.name))
        part.src_dtypes[out] = info.dtype
    return part


def _dit_part(folder: str, comp, dtype, shard_bytes, quant=None) -> Part:
    mapping = DIT_DIFFUSERS.rename(comp.table.names(), to_stock=False, path=comp.path)
    part = _part(folder, dc.transformer_config(comp.config), DIFFUSERS_STEM, shard_bytes, comp, mapping, dtype)
    if quant is not None:             # --quant: the ModelOpt HF layout (diffusers_quant.py)
        from wan_export.converters.diffusers_quant import quantize_dit_part
        part = quantize_dit_part(part, comp, quant, dtype)
    return part


def _vae_part(comp, dtype, shard_bytes) -> Part:
    mapping = vae_diffusers.to_diffusers(comp.table.names(), comp.config.version, comp.path)
    return _part("vae", dc.vae_config(comp.config), DIFFUSERS_STEM, shard_bytes, comp, mapping, dtype)


def _t5_part(comp, dtype, shard_bytes) -> Part:
    mapping = UMT5_HF.rename(comp.table.names(), to_stock=False, path=comp.path)
    part = _part("text_encoder", {}, TRANSFORMERS_STEM, shard_bytes, comp, mapping, dtype)
    part.config = dc.text_encoder_config(comp.config, part.out_dtype)
    return part


def _clip_part(comp, dtype, shard_bytes) -> Part:
    if not comp.layout.startswith("stock"):
        raise UnsupportedError(f"the CLIP image encoder is in {comp.layout} layout; "
                               "convert from Wan's open-clip .pth", comp.path)
    infos = comp.table.infos()
    dims = dc.clip_shape_config({i.name: i.shape for i in infos}, comp.path)
    src = {i.name: i.dtype for i in infos}
    part = Part("image_encoder", {}, TRANSFORMERS_STEM, shard_bytes, source=comp.path)
    for name, shape, stock, transform in clip_map.plan_to_hf(infos, comp.path):
        def read(t=comp.table, n=stock, f=transform):
            return f(t.read(n)) if f else t.read(n)
        part.plan.append(Planned(name, shape, _out_dtype(src[stock], dtype), read, stock))
        part.src_dtypes[name] = src[stock]
    part.config = dc.image_encoder_config(dims, part.out_dtype)
    part.jsons = {"image_processor/preprocessor_config.json": dc.image_processor_config(dims["image_size"])}
    return part


def _experts(rel: Release) -> list[tuple[str, object]]:
    """[(subfolder, DiT component)]: transformer is the high-noise expert (it runs first)."""
    if "dit.high_noise" in rel.components:
        return [("transformer", rel.components["dit.high_noise"]),
                ("transformer_2", rel.components["dit.low_noise"])]
    return [("transformer", rel.only("dit"))]


def _pipeline_problems(rel: Release, cfg, variant) -> list[str]:
    """Everything missing or mismatched that stops a pipeline from loading, all at once."""
    c = rel.components
    problems = [f"no {what}" for slot, what in (("vae", "VAE"), ("t5", "UMT5 text encoder")) if slot not in c]
    if rel.tokenizer_dir is None:
        problems.append("no UMT5 tokenizer folder (google/umt5-xxl with spiece.model)")
    if cfg.image_branch and "clip" not in c:
        problems.append("no CLIP image encoder (models_clip_open-clip-xlm-roberta-large-vit-huge-14.pth), "
                        f"which {variant.name} needs")
    if "vae" in c and c["vae"].config.z_dim != cfg.out_dim:
        problems.append(f"the VAE has {c['vae'].config.z_dim} latent channels but the DiT {cfg.out_dim} "
                        f"({variant.name} pairs with the Wan{variant.vae} VAE)")
    return problems


def _width_warnings(rel: Release, cfg) -> list[str]:
    """Encoders narrower than the DiT expects: the folder loads, but only precomputed embeds work."""
    c, out = rel.components, []
    if c["t5"].config.dim != cfg.text_dim:
        out.append(f"the text encoder is {c['t5'].config.dim} wide but the DiT expects {cfg.text_dim}: "
                   "pass prompt_embeds")
    if cfg.image_branch:
        width = c["clip"].table.entries["visual.patch_embedding.weight"][0].shape[0]
        if width != cfg.clip_dim:
            out.append(f"the CLIP tower is {width} wide but the DiT expects {cfg.clip_dim}: pass image_embeds")
    return out


def plan_folder(rel: Release, dtype: str | None = None, flow_shift: float | None = None,
                shard_bytes: dict[str, int] | None = None, quant=None) -> FolderPlan:
    """Plan every file of the output folder (nothing is read yet)."""
    shards = {"diffusers": dc.DIFFUSERS_SHARD_BYTES, "transformers": dc.TRANSFORMERS_SHARD_BYTES,
              **(shard_bytes or {})}
    dits = _experts(rel)
    variant = rel.variant
    experts = len(dits) == 2
    if experts and dits[0][1].config != dits[1][1].config:
        raise BadInputError("the two A14B experts have different configs", rel.path)
    only_dits = all(c.kind == "dit" for c in rel.components.values())
    if only_dits and not experts:
        part = _dit_part("", dits[0][1], dtype, shards["diffusers"], quant)
        return FolderPlan([part], {}, summary=_summary(rel, variant, "transformer", part.config["_class_name"]))
    parts = [_dit_part(folder, comp, dtype, shards["diffusers"], quant) for folder, comp in dits]
    if only_dits:
        return FolderPlan(parts, {}, summary=_summary(rel, variant, "transformers", parts[0].config["_class_name"]))
    cfg = dits[0][1].config
    problems = _pipeline_problems(rel, cfg, variant)
    if problems:
        raise BadInputError("cannot build a diffusers pipeline: " + "; ".join(problems), rel.path)
    c = rel.components
    parts += [_vae_part(c["vae"], dtype, shards["diffusers"]), _t5_part(c["t5"], dtype, shards["transformers"])]
    if cfg.image_branch:
        parts.append(_clip_part(c["clip"], dtype, shards["transformers"]))
    jsons = {k: v for p in parts for k, v in p.jsons.items()}
    shift = variant.flow_shift if flow_shift is None else flow_shift
    index = dc.model_index(cfg, variant, experts=experts, clip=cfg.image_branch)
    jsons |= {"model_index.json": index, "scheduler/scheduler_config.json": dc.scheduler_config(shift)}
    summary = _summary(rel, variant, "pipeline", index["_class_name"])
    summary |= {"flow_shift": shift, "boundary_ratio": index.get("boundary_ratio"),
                "warnings": _width_warnings(rel, cfg)}
    return FolderPlan(parts, jsons, rel.tokenizer_dir, summary)


def _summary(rel: Release, variant, layout: str, cls: str) -> dict:
    return {"source": rel.path, "variant": variant.name if variant else None, "layout": layout, "class": cls}


def write_json(path: str, obj: dict) -> None:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:
        json.dump(obj, f, indent=2, sort_keys=True)
        f.write("\n")


def write_tokenizer(src: str, dst: str) -> list[str]:
    """Copy the UMT5 tokenizer files Wan loads; add tokenizer.json (made by transformers) if missing.

    spiece.model stays for transformers 4's sentencepiece T5Tokenizer.
    """
    os.makedirs(dst, exist_ok=True)
    names = [n for n in TOKENIZER_FILES if os.path.isfile(os.path.join(src, n))]
    for n in names:
        shutil.copyfile(os.path.join(src, n), os.path.join(dst, n))
    if "tokenizer.json" not in names:
        _tokenizer_json(src, os.path.join(dst, "tokenizer.json"))
        names.append("tokenizer.json")
    return sorted(names)


def _tokenizer_json(src: str, dst_file: str) -> None:
    import tempfile

    from transformers import AutoTokenizer

    try:
        tok = AutoTokenizer.from_pretrained(src, local_files_only=True)
    except Exception as e:   # transformers raises many types for a broken tokenizer
        raise BadInputError(f"cannot load the UMT5 tokenizer ({type(e).__name__}: {e})", src) from None
    with tempfile.TemporaryDirectory() as tmp:
        tok.save_pretrained(tmp)
        if not os.path.isfile(os.path.join(tmp, "tokenizer.json")):
            raise UnsupportedError("transformers wrote no tokenizer.json for this tokenizer", src)
        shutil.copyfile(os.path.join(tmp, "tokenizer.json"), dst_file)


def write_folder(plan: FolderPlan, root: str, progress=null) -> list[str]:
    """Write a planned folder into `root` (already created); returns relative file paths."""
    files = []
    total = sum(len(p.plan) for p in plan.parts)
    with progress(total, "writing diffusers") as update:
        for part in plan.parts:
            folder = os.path.join(root, part.folder)
            write_json(os.path.join(folder, "config.json"), part.config)
            written = write_sharded(folder, part.stem, part.plan, part.src_dtypes, max_bytes=part.shard_bytes,
                                    source_path=part.source, metadata=part.metadata, progress=update)
            files += [os.path.join(part.folder, n) for n in ["config.json", *written]]
    for rel_path, obj in plan.jsons.items():
        write_json(os.path.join(root, rel_path), obj)
        files.append(rel_path)
    if plan.tokenizer_dir:
        files += [os.path.join("tokenizer", n) for n in write_tokenizer(plan.tokenizer_dir,
                                                                         os.path.join(root, "tokenizer"))]
    return sorted(os.path.normpath(f) for f in files)


def convert(src: str, output: str | None = None, *, dtype: str | None = None, overwrite: bool = False,
            flow_shift: float | None = None, shard_bytes: dict[str, int] | None = None,
            progress=null, quant=None, dry_run: bool = False) -> dict:
    """Convert SRC into a diffusers folder; returns a summary (output path, files, class, ...).

    dtype: None (keep each tensor's dtype), or bf16 / fp16 / fp32 for every float tensor.
    shard_bytes: {"diffusers": n, "transformers": n} overrides the save_pretrained defaults.
    """
    code = None if dtype is None else DTYPE_NAMES[dtype]
    rel = open_input(src)
    if quant is not None:
        quant.decisions = {}
    plan = plan_folder(rel, code, flow_shift, shard_bytes, quant)
    layout = plan.summary["layout"]
    default = dc.default_name(rel.variant, transformer_only=layout != "pipeline")
    output = output or (f"{default}-{quant.quant.upper()}" if quant else default)    # NVIDIA: ...-Diffusers-FP8
    if dry_run:
        files = sorted({os.path.join(p.folder, p.stem + ".safetensors") for p in plan.parts})
        result = {**plan.summary, "output": os.path.abspath(output), "dtype": dtype or "source", "files": files,
                  "written": False}
    else:
        with atomic_dir(output, overwrite=overwrite) as tmp:
            files = write_folder(plan, tmp, progress)
        result = {**plan.summary, "output": os.path.abspath(output), "dtype": dtype or "source", "files": files}
    if quant is not None:
        from wan_export.converters.quant_report import quant_result
        result.update(quant_result(quant), notes=[] if quant.calib else [
            "no --calib: weight-only (no input_scale); runtimes then need their own activation scales"])
    return result


def render_text(r: dict) -> str:
    extra = "".join(f", {k.replace('_', ' ')} {r[k]}" for k in ("flow_shift", "boundary_ratio") if r.get(k) is not None)
    lines = [f"wrote {r['output']}  ({r['class']}, {r['variant']}{extra}; {len(r['files'])} files)"]
    return "\n".join(lines + [f"warning: {w}" for w in r.get("warnings", [])])
