"""Released Wan variants, and detection of variant and config from tensor shapes.

Detection never looks at file names: the DiT config is inferred from shapes
(any dims, so fine-tunes and tiny models work), then checked against the full
expected key/shape list that `dit_shapes` derives from the config.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, replace

from wan_export.errors import BadInputError
from wan_export.model.config import CLIP_DIM, HEAD_DIM, TEXT_DIM, DiTConfig


@dataclass(frozen=True)
class Variant:
    """A released model: its DiT shape plus what consumers need to know about it."""

    name: str                 # our id, e.g. wan2.1-t2v-1.3b
    family: str               # Wan2.1 / Wan2.2
    config: DiTConfig
    comfy_stem: str           # community file name stem (Comfy-Org repackaged names)
    vae: str                  # "2.1" or "2.2": the VAE it pairs with
    flow_shift: float         # official sampling shift (wan-architecture.md section 4)
    boundary_ratio: float | None = None     # A14B: expert switch point
    experts: bool = False     # A14B: high_noise_model + low_noise_model
    steps: int = 50
    guidance: tuple[float, ...] = (5.0,)


_T13 = DiTConfig("t2v", 1536, 8960, 12, 30, 16, 16)
_T14 = DiTConfig("t2v", 5120, 13824, 40, 40, 16, 16)
_I14 = replace(_T14, model_type="i2v", in_dim=36, image_branch=True)

VARIANTS: dict[str, Variant] = {v.name: v for v in (
    Variant("wan2.1-t2v-1.3b", "Wan2.1", _T13, "wan2.1_t2v_1.3B", "2.1", 5.0),
    Variant("wan2.1-t2v-14b", "Wan2.1", _T14, "wan2.1_t2v_14B", "2.1", 5.0),
    Variant("wan2.1-i2v-14b", "Wan2.1", _I14, "wan2.1_i2v_14B", "2.1", 5.0, steps=40),
    Variant("wan2.1-flf2v-14b", "Wan2.1", replace(_I14, model_type="flf2v", flf_pos_len=514),
            "wan2.1_flf2v_720p_14B", "2.1", 16.0),
    Variant("wan2.1-vace-1.3b", "Wan2.1", replace(_T13, model_type="vace", vace_layers=tuple(range(0, 30, 2))),
            "wan2.1_vace_1.3B", "2.1", 16.0),
    Variant("wan2.1-vace-14b", "Wan2.1", replace(_T14, model_type="vace", vace_layers=tuple(range(0, 40, 5))),
            "wan2.1_vace_14B", "2.1", 16.0),
    Variant("wan2.2-t2v-a14b", "Wan2.2", _T14, "wan2.2_t2v_{expert}_14B", "2.1", 12.0,
            boundary_ratio=0.875, experts=True, steps=40, guidance=(3.0, 4.0)),
    Variant("wan2.2-i2v-a14b", "Wan2.2", replace(_T14, model_type="i2v", in_dim=36),
            "wan2.2_i2v_{expert}_14B", "2.1", 5.0, boundary_ratio=0.9, experts=True, steps=40,
            guidance=(3.5, 3.5)),
    Variant("wan2.2-ti2v-5b", "Wan2.2", DiTConfig("ti2v", 3072, 14336, 24, 30, 48, 48),
            "wan2.2_ti2v_5B", "2.2", 5.0),
)}

EXPERTS = ("high_noise", "low_noise")


def _linear(prefix: str, out: int, inp: int) -> list[tuple[str, tuple]]:
    return [(f"{prefix}.weight", (out, inp)), (f"{prefix}.bias", (out,))]


def _block(p: str, c: DiTConfig, image: bool) -> list[tuple[str, tuple]]:
    d, f = c.dim, c.ffn_dim
    rows = [(f"{p}.modulation", (1, 6, d))]
    for attn in ("self_attn", "cross_attn"):
        for x in "qkvo":
            rows += _linear(f"{p}.{attn}.{x}", d, d)
        rows += [(f"{p}.{attn}.norm_q.weight", (d,)), (f"{p}.{attn}.norm_k.weight", (d,))]
        if attn == "self_attn":
            rows += [(f"{p}.norm3.weight", (d,)), (f"{p}.norm3.bias", (d,))]
    if image:
        rows += _linear(f"{p}.cross_attn.k_img", d, d) + _linear(f"{p}.cross_attn.v_img", d, d)
        rows += [(f"{p}.cross_attn.norm_k_img.weight", (d,))]
    return rows + _linear(f"{p}.ffn.0", f, d) + _linear(f"{p}.ffn.2", d, f)


def dit_shapes(c: DiTConfig) -> dict[str, tuple[int, ...]]:
    """Every stock key and shape of a DiT config, in the official state-dict order."""
    d, pt, ph, pw = c.dim, *c.patch_size
    rows = [("patch_embedding.weight", (d, c.in_dim, pt, ph, pw)), ("patch_embedding.bias", (d,))]
    rows += _linear("text_embedding.0", d, c.text_dim) + _linear("text_embedding.2", d, d)
    rows += _linear("time_embedding.0", d, c.freq_dim) + _linear("time_embedding.2", d, d)
    rows += _linear("time_projection.1", 6 * d, d)
    for i in range(c.num_layers):
        rows += _block(f"blocks.{i}", c, c.image_branch)
    rows += [("head.modulation", (1, 2, d))] + _linear("head.head", c.out_dim * pt * ph * pw, d)
    if c.image_branch:
        if c.flf_pos_len:
            rows += [("img_emb.emb_pos", (1, c.flf_pos_len, c.clip_dim))]
        rows += [("img_emb.proj.0.weight", (c.clip_dim,)), ("img_emb.proj.0.bias", (c.clip_dim,))]
        rows += _linear("img_emb.proj.1", c.clip_dim, c.clip_dim) + _linear("img_emb.proj.3", d, c.clip_dim)
        rows += [("img_emb.proj.4.weight", (d,)), ("img_emb.proj.4.bias", (d,))]
    for j in range(len(c.vace_layers)):
        rows += _block(f"vace_blocks.{j}", c, False)
        if j == 0:
            rows += _linear("vace_blocks.0.before_proj", d, d)
        rows += _linear(f"vace_blocks.{j}.after_proj", d, d)
    if c.vace_layers:
        rows += [("vace_patch_embedding.weight", (d, c.vace_in_dim, pt, ph, pw)),
                 ("vace_patch_embedding.bias", (d,))]
    return dict(rows)


def _count(shapes: dict, pattern: str) -> int:
    rx = re.compile(pattern)
    return len({m.group(1) for k in shapes if (m := rx.match(k))})


def infer_dit_config(shapes: dict[str, tuple], path: str | None = None,
                     hints: dict | None = None) -> DiTConfig:
    """DiT config from stock-named shapes; `hints` (config.json) may give num_heads/vace_layers."""
    hints = hints or {}
    need = ("head.modulation", "head.head.weight", "patch_embedding.weight", "blocks.0.ffn.0.weight")
    missing = [k for k in need if k not in shapes]
    if missing:
        raise BadInputError(f"not a Wan DiT: missing {', '.join(missing)}", path)
    dim = shapes["head.modulation"][-1]
    pe = shapes["patch_embedding.weight"]
    if len(pe) != 5:
        raise BadInputError(f"patch_embedding.weight has shape {list(pe)}, expected 5-D", path)
    heads = int(hints.get("num_heads") or max(1, dim // HEAD_DIM))
    layers = _count(shapes, r"blocks\.(\d+)\.")
    n_vace = _count(shapes, r"vace_blocks\.(\d+)\.")
    image = "img_emb.proj.0.weight" in shapes
    flf = shapes["img_emb.emb_pos"][1] if "img_emb.emb_pos" in shapes else 0
    out_dim = shapes["head.head.weight"][0] // (pe[2] * pe[3] * pe[4])
    vace_layers = tuple(hints.get("vace_layers") or
                        (range(0, layers, layers // n_vace) if n_vace else ()))
    if n_vace:
        mtype = "vace"
    elif flf:
        mtype = "flf2v"
    elif image:
        mtype = "i2v"
    elif out_dim == 48:
        mtype = "ti2v"
    elif pe[1] == 36:
        mtype = "i2v"
    else:
        mtype = "t2v"
    try:
        return DiTConfig(
            model_type=mtype, dim=dim, ffn_dim=shapes["blocks.0.ffn.0.weight"][0], num_heads=heads,
            num_layers=layers, in_dim=pe[1], out_dim=out_dim,
            text_dim=shapes.get("text_embedding.0.weight", (0, TEXT_DIM))[1],
            freq_dim=shapes.get("time_embedding.0.weight", (0, 256))[1],
            patch_size=tuple(pe[2:]), image_branch=image, flf_pos_len=flf,
            vace_layers=vace_layers[:n_vace],
            vace_in_dim=shapes.get("vace_patch_embedding.weight", (0, 96))[1],
            clip_dim=shapes.get("img_emb.proj.1.weight", (CLIP_DIM,))[0])
    except ValueError as e:
        raise BadInputError(f"inconsistent DiT shapes: {e}", path) from None


def check_shapes(found: dict[str, tuple], expected: dict[str, tuple], what: str, path: str | None) -> None:
    """Raise once, listing every missing, unexpected and wrongly shaped key."""
    missing = [k for k in expected if k not in found]
    unexpected = [k for k in found if k not in expected]
    wrong = [f"{k} {list(found[k])} (expected {list(expected[k])})"
             for k in expected if k in found and tuple(found[k]) != tuple(expected[k])]
    problems = []
    for label, items in (("missing", missing), ("unexpected", unexpected), ("wrong shape", wrong)):
        if items:
            problems.append(f"{len(items)} {label}: {', '.join(items[:8])}" + (" ..." if len(items) > 8 else ""))
    if problems:
        raise BadInputError(f"keys do not fit a {what}: " + "; ".join(problems), path)


def match_variant(cfg: DiTConfig) -> Variant | None:
    """The released variant with exactly this config, if any."""
    for v in VARIANTS.values():
        if v.config == cfg:
            return v
    return None


def variant_label(cfg: DiTConfig, expert: str | None = None) -> str:
    """Human-readable variant: a released name, or a description of custom dims."""
    v = match_variant(cfg)
    if v is not None:
        if v.name == "wan2.1-t2v-14b" and expert:
            return "wan2.2-t2v-a14b"
        return v.name
    family = "wan2.2" if cfg.model_type == "ti2v" or (cfg.model_type == "i2v" and not cfg.image_branch) else "wan2.1"
    return f"{family}-{cfg.model_type} (custom: dim {cfg.dim}, {cfg.num_layers} layers)"


def guess_variant(cfg: DiTConfig, experts: bool = False) -> Variant:
    """The released variant this config is shaped like (a fine-tune or tiny model maps to its family)."""
    exact = match_variant(cfg)
    if exact and not (experts and exact.name == "wan2.1-t2v-14b"):
        return exact
    if experts:
        return VARIANTS["wan2.2-i2v-a14b" if cfg.in_dim == 36 else "wan2.2-t2v-a14b"]
    by_type = {"t2v": "wan2.1-t2v-1.3b" if cfg.dim < 5120 else "wan2.1-t2v-14b",
               "i2v": "wan2.1-i2v-14b" if cfg.image_branch else "wan2.2-i2v-a14b",
               "flf2v": "wan2.1-flf2v-14b", "ti2v": "wan2.2-ti2v-5b",
               "vace": "wan2.1-vace-1.3b" if cfg.dim < 5120 else "wan2.1-vace-14b"}
    return VARIANTS[by_type[cfg.model_type]]
