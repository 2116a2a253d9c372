"""ComfyUI single files: what UNETLoader, VAELoader and CLIPLoader load (formats-comfyui.md).

- DiT -> diffusion_models/: stock names, bare, shards merged, patch_embedding 5-D;
  A14B gives one file per expert. Refused when ComfyUI's hard-coded dims differ.
- VAE -> vae/: bare stock names.
- UMT5 -> text_encoders/: HF UMT5 names + the `spiece_model` tokenizer bytes.
- `checkpoint=True`: one all-in-one file with ComfyUI's checkpoint prefixes.

Names follow Comfy-Org (`wan2.1_t2v_1.3B_bf16.safetensors`); a config that is
not a released one gets `_custom_d<dim>_l<layers>` instead of the size, so a
tiny or fine-tuned-shape model never pretends to be the release.
"""
from __future__ import annotations

import json
import os

import numpy as np

from wan_export.converters.stock import (
    CODE_NAMES,
    Job,
    add_digests,
    component_dtype,
    plan_component,
    provenance,
    render_text,
    safetensors_job,
    source_variant,
    write_jobs,
)
from wan_export.errors import BadInputError, UnsupportedError
from wan_export.keymaps.umt5_hf import UMT5_HF
from wan_export.model.config import CLIP_DIM, FREQ_DIM, HEAD_DIM, TEXT_DIM, UMT5_XXL, VAE21, VAE22
from wan_export.progress import null
from wan_export.release import Release, open_input
from wan_export.variants import guess_variant
from wan_export.writing import Planned

__all__ = ["COMPONENTS", "convert", "render_text"]       # render_text: shared with stock, used by the CLI

# --component choice -> component kinds written (CLIP is not a ComfyUI text/diffusion file)
COMPONENTS = {"dit": ("dit",), "vae": ("vae",), "text-encoder": ("t5",), "all": ("dit", "vae", "t5")}

# (config field, value ComfyUI builds every Wan DiT with, what breaks otherwise) -- section 2 "Fixed"
COMFY_FIXED = (
    ("text_dim", TEXT_DIM, ("ComfyUI hard-codes text_dim 4096 (UMT5-XXL): "
                            "'size mismatch for text_embedding.0.weight'")),
    ("freq_dim", FREQ_DIM, "ComfyUI hard-codes freq_dim 256: 'size mismatch for time_embedding.0.weight'"),
    ("patch_size", (1, 2, 2), "ComfyUI hard-codes patch size (1, 2, 2)"),
)

# all-in-one checkpoint prefixes (section 3); the tokenizer sits beside the T5, not inside it
CHECKPOINT_PREFIX = {"dit": "model.diffusion_model.", "vae": "vae.", "t5": "text_encoders.umt5xxl.transformer."}
SPIECE = "spiece_model"
CHECKPOINT_SPIECE = "text_encoders.spiece_model"

VAE_STEMS = {"2.1": "wan_2.1_vae", "2.2": "wan2.2_vae"}
VAE_RELEASED = {"2.1": VAE21, "2.2": VAE22}
# where a tokenizer may sit next to a lone T5 file
TOKENIZER_NEAR = ("google/umt5-xxl/spiece.model", "umt5-xxl/spiece.model", "tokenizer/spiece.model",
                  "spiece.model")


# ---------------------------------------------------------------- names


def dit_stem(comp) -> str:
    """Comfy-Org stem of a DiT (without dtype), or a `_custom_d<dim>_l<layers>` one."""
    cfg = comp.config
    v = guess_variant(cfg, experts=comp.expert is not None)
    expert = f"{comp.expert}_" if comp.expert else ""
    if v.config == cfg:
        return v.comfy_stem.replace("{expert}_", expert)
    kind = v.name.split("-")[1]
    return f"{v.family.lower()}_{kind}_{expert}custom_d{cfg.dim}_l{cfg.num_layers}"


def _same_vae_dims(a, b) -> bool:
    return (a.dim, a.dec_dim, a.z_dim, a.dim_mult) == (b.dim, b.dec_dim, b.z_dim, b.dim_mult)


def vae_stem(cfg) -> str:
    stem = VAE_STEMS[cfg.version]
    return stem if _same_vae_dims(cfg, VAE_RELEASED[cfg.version]) else f"{stem}_custom_d{cfg.dim}"


def t5_stem(cfg, dtype: str) -> str:
    if cfg == UMT5_XXL:
        return f"umt5_xxl_{CODE_NAMES[dtype]}"
    return f"umt5_custom_d{cfg.dim}_l{cfg.num_layers}_{CODE_NAMES[dtype]}"


# ---------------------------------------------------------------- what ComfyUI accepts


def check_dit(comp) -> tuple[dict, list[str]]:
    """Refuse what ComfyUI cannot build; returns (extra metadata, notes)."""
    cfg = comp.config
    if "head.modulation" not in comp.table.entries:      # ComfyUI's Wan detection key
        raise BadInputError("no head.modulation: ComfyUI could not detect this as a Wan model", comp.path)
    problems = [f"{name} is {getattr(cfg, name)}: {why}" for name, value, why in COMFY_FIXED
                if getattr(cfg, name) != value]
    if cfg.image_branch and cfg.clip_dim != CLIP_DIM:
        problems.append(f"clip_dim is {cfg.clip_dim}: ComfyUI hard-codes the CLIP width 1280")
    if problems:
        raise UnsupportedError("not loadable by ComfyUI: " + "; ".join(problems), comp.path)
    if cfg.dim % HEAD_DIM == 0 and cfg.num_heads == cfg.dim // HEAD_DIM:
        return {}, []
    # ComfyUI reads no head count from the weights; its loader merges this metadata into the config
    meta = {"config": json.dumps({"transformer": {"num_heads": cfg.num_heads}}, sort_keys=True)}
    note = (f"{comp.variant}: head_dim is {cfg.head_dim}, not 128; ComfyUI derives num_heads = dim // 128 = "
            f"{cfg.dim // HEAD_DIM}, so the file carries a metadata config override num_heads={cfg.num_heads} "
            f"(honoured by ComfyUI's UNETLoader; other loaders would build the wrong attention)")
    return meta, [note]


def vae_notes(cfg) -> list[str]:
    """ComfyUI builds the 2.2 VAE with fixed dims, and the 2.1 VAE from one base dim (section 4)."""
    if cfg.version == "2.2" and not _same_vae_dims(cfg, VAE22):
        return [(f"vae: ComfyUI hard-codes the Wan2.2 VAE (dim 160, z 48); this one (dim {cfg.dim}, "
                 f"z {cfg.z_dim}) will not load there")]
    if cfg.version == "2.1" and (cfg.dim != cfg.dec_dim or cfg.z_dim != 16):
        return [(f"vae: ComfyUI builds the Wan2.1 VAE with one base dim and z 16; this one (dim {cfg.dim}, "
                 f"decoder {cfg.dec_dim}, z {cfg.z_dim}) will not load there")]
    return []


def t5_notes(cfg) -> list[str]:
    if cfg == UMT5_XXL:
        return []
    return [(f"text encoder: ComfyUI's detect_te_model only recognises UMT5-XXL (24 blocks, d_ff 10240); "
             f"this one (dim {cfg.dim}, {cfg.num_layers} blocks) will not load there")]


def spiece_tensor(rel: Release, comp, name: str = SPIECE) -> Planned:
    """The tokenizer as a uint8 tensor: an embedded `spiece_model`, or the release's spiece.model."""
    if SPIECE in comp.side:
        info, read = comp.side[SPIECE]
        return Planned(name, info.shape, "U8", lambda: np.asarray(read()).view(np.uint8), source_name=SPIECE)
    where = [os.path.join(rel.tokenizer_dir, "spiece.model")] if rel.tokenizer_dir else []
    if os.path.isfile(rel.path):
        where += [os.path.join(os.path.dirname(os.path.abspath(rel.path)), n) for n in TOKENIZER_NEAR]
    for path in where:
        if os.path.isfile(path):
            size = os.path.getsize(path)
            return Planned(name, (size,), "U8", lambda p=path: np.fromfile(p, dtype=np.uint8),
                           source_name=SPIECE)
    raise BadInputError("no UMT5 tokenizer (google/umt5-xxl/spiece.model) found: ComfyUI's CLIPLoader needs it "
                        "embedded as 'spiece_model'; convert the release folder, or put google/umt5-xxl/ next "
                        "to this file", comp.path)


# ---------------------------------------------------------------- pieces and jobs


def dit_piece(rel: Release, comp, dtype: str | None):
    meta, notes = check_dit(comp)
    code = component_dtype(comp, dtype)
    v = guess_variant(comp.config, experts=comp.expert is not None)
    meta.update(provenance("dit", comp.variant, code, expert=comp.expert, pairs_with_vae=VAE_STEMS[v.vae]))
    return f"{dit_stem(comp)}_{CODE_NAMES[code]}", plan_component(comp, code), meta, notes


def vae_piece(rel: Release, comp, dtype: str | None):
    code = component_dtype(comp, dtype)
    meta = provenance("vae", comp.variant, code)
    return vae_stem(comp.config), plan_component(comp, code), meta, vae_notes(comp.config)


def t5_piece(rel: Release, comp, dtype: str | None):
    code = component_dtype(comp, dtype)
    hf = UMT5_HF.rename(comp.table.names(), to_stock=False, path=comp.path)
    part = plan_component(comp, code, hf.__getitem__).plus(spiece_tensor(rel, comp), "U8")
    meta = provenance("t5", comp.variant, code)
    return t5_stem(comp.config, code), part, meta, t5_notes(comp.config)


PIECES = {"dit": dit_piece, "vae": vae_piece, "t5": t5_piece}


def component_jobs(rel: Release, dtype: str | None, component: str, notes: list[str],
                   pieces: dict = PIECES) -> list[Job]:
    kinds = COMPONENTS[component]
    chosen = [c for _, c in sorted(rel.components.items()) if c.kind in kinds]
    if not chosen:
        found = ", ".join(sorted({c.kind for c in rel.components.values()}))
        raise BadInputError(f"no {' or '.join(kinds)} component to write for ComfyUI (found: {found})", rel.path)
    notes += [f"{c.kind}: not written (ComfyUI takes Comfy-Org's clip_vision_h.safetensors for CLIP)"
              for c in rel.components.values() if c.kind == "clip" and component == "all"]
    jobs = []
    for comp in chosen:
        stem, part, meta, piece_notes = pieces[comp.kind](rel, comp, dtype)
        jobs.append(safetensors_job(f"{stem}.safetensors", comp.kind, [part], meta, piece_notes))
    return jobs


def checkpoint_jobs(rel: Release, dtype: str | None, notes: list[str], pieces: dict = PIECES) -> list[Job]:
    """One all-in-one file: DiT + VAE (+ UMT5 and its tokenizer when SRC has them)."""
    dits = list(rel.dits.values())
    if len(dits) != 1:
        raise UnsupportedError("--checkpoint holds one diffusion model; this source has "
                               f"{len(dits) or 'no'} DiT{'s' if len(dits) != 1 else ''} "
                               "(A14B: write separate files without --checkpoint)", rel.path)
    comps = [dits[0], rel.only("vae")] + [c for c in rel.components.values() if c.kind == "t5"]
    parts, meta, piece_notes = [], {}, []
    for comp in comps:
        stem, part, m, n = pieces[comp.kind](rel, comp, dtype)
        prefix = CHECKPOINT_PREFIX[comp.kind]
        parts.append(part.renamed(lambda k, p=prefix: CHECKPOINT_SPIECE if k == SPIECE else p + k))
        piece_notes += n
        if comp.kind == "dit":
            name, meta = f"{stem}_checkpoint.safetensors", m
    meta.update({"wan_export.component": "checkpoint", "wan_export.components": ",".join(c.kind for c in comps)})
    return [safetensors_job(name, "checkpoint", parts, meta, piece_notes)]


def output_paths(names: list[str], output: str | None) -> dict[str, str]:
    """-o is the file when one file results (a *.safetensors path), else the folder for all of them."""
    if output is not None and output.endswith(".safetensors") and not os.path.isdir(output):
        if len(names) != 1:
            raise BadInputError(f"{len(names)} files result ({', '.join(names)}); -o must name a folder", output)
        return {names[0]: output}
    folder = output or "."
    if os.path.exists(folder) and not os.path.isdir(folder):
        raise BadInputError("output is not a folder", folder)
    return {n: os.path.join(folder, n) for n in names}


def convert(src: str, output: str | None = None, *, dtype: str | None = None, component: str = "all",
            checkpoint: bool = False, overwrite: bool = False, digests: bool = False, progress=null,
            quant=None, dry_run: bool = False) -> dict:
    """Write the ComfyUI file(s) of SRC; returns what was written (paths, sizes, sha256 with digests).

    quant: a converters.quant_plan.QuantRequest (`--quant`); dry_run: plan and list, write nothing."""
    if component not in COMPONENTS:
        raise BadInputError(f"unknown component {component!r} (choose from {', '.join(COMPONENTS)})")
    if checkpoint and component != "all":
        raise BadInputError("--checkpoint writes every component into one file; leave out --component")
    rel = open_input(src)
    notes: list[str] = []
    pieces = PIECES
    if quant is not None:
        from wan_export.converters.comfyui_quant import pieces as quant_pieces
        pieces = quant_pieces(quant)
    jobs = (checkpoint_jobs(rel, dtype, notes, pieces) if checkpoint
            else component_jobs(rel, dtype, component, notes, pieces))
    notes += [n for j in jobs for n in j.notes]
    paths = output_paths([j.name for j in jobs], output)
    if dry_run:
        rows = [{"path": os.path.abspath(paths[j.name]), "component": j.component, "tensors": j.tensors,
                 "written": False} for j in jobs]
    else:
        rows = write_jobs(jobs, paths, overwrite=overwrite, progress=progress)
    if digests and not dry_run:
        add_digests(rows)
    result = {"command": "comfyui", "source": rel.path, "variant": source_variant(rel), "dtype": dtype,
              "files": rows, "notes": notes}
    if quant is not None:
        from wan_export.converters.quant_report import quant_result
        result.update(quant_result(quant))
    return result
