"""Recognise what a tensor file is (DiT, VAE, UMT5, CLIP) and read it with stock names.

`load_component(path)` runs the layout steps (prefix, fp8 scales, fused QKV,
key map), identifies the component by marker keys from the COMPONENTS table,
infers its config from shapes and checks every key and shape against it.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from importlib import import_module

from wan_export import layouts
from wan_export.errors import BadInputError
from wan_export.keymaps import KeyMap
from wan_export.model.config import T5Config, VAEConfig, VAE21, VAE22
from wan_export.sources import open_file
from wan_export.variants import check_shapes, dit_shapes, infer_dit_config, variant_label

# (component, layout, marker key after prefix stripping, key map "module:NAME" or None)
COMPONENTS = (
    ("dit", "stock", "head.modulation", None),
    ("dit", "diffusers", "condition_embedder.time_proj.weight", "wan_export.keymaps.dit_diffusers:DIT_DIFFUSERS"),
    ("vae", "stock", "decoder.middle.0.residual.0.gamma", None),
    ("vae", "diffusers", "decoder.mid_block.resnets.0.norm1.gamma", "wan_export.keymaps.vae_diffusers:keymap_for"),
    ("t5", "stock", "token_embedding.weight", None),
    ("t5", "hf", "encoder.block.0.layer.0.SelfAttention.q.weight", "wan_export.keymaps.umt5_hf:UMT5_HF"),
    ("clip", "stock", "visual.transformer.0.attn.to_qkv.weight", None),
    ("clip", "hf", "vision_model.embeddings.patch_embedding.weight", None),
)
# Extra tensors a layout carries that are not weights: kept aside, never renamed.
SIDE_TENSORS = ("spiece_model", "encoder.embed_tokens.weight")


@dataclass
class Component:
    kind: str                      # dit | vae | t5 | clip
    layout: str                    # stock | diffusers | hf | comfyui ... (+ " fp8-scaled", " fused-qkv")
    table: layouts.LazyTable       # stock names
    config: object = None          # DiTConfig | VAEConfig | T5Config | None
    variant: str = ""
    expert: str | None = None      # high_noise / low_noise for A14B
    side: dict = field(default_factory=dict)      # side tensors, e.g. spiece_model
    warnings: list[str] = field(default_factory=list)

    @property
    def path(self) -> str:
        return self.table.path


def _resolve(ref: str):
    module, name = ref.split(":")
    return getattr(import_module(module), name)


def identify(table: layouts.LazyTable) -> tuple[str, str, str | None]:
    names = set(table.names())
    for kind, layout, marker, keymap in COMPONENTS:
        if marker in names:
            return kind, layout, keymap
    raise BadInputError("not a recognised Wan component (DiT, VAE, UMT5 or CLIP); "
                        f"first keys: {', '.join(sorted(names)[:5])}", table.path)


def load_component(path_or_source, expert: str | None = None, hints: dict | None = None) -> Component:
    """Open a tensor file (or Source) lazily as a stock-named, checked component."""
    src = open_file(path_or_source) if isinstance(path_or_source, str) else path_or_source
    table = layouts.LazyTable.of(src)
    if not table.entries:
        raise BadInputError("contains no tensors", table.path)
    prefix = layouts.strip_prefix(table)
    side = {k: table.entries.pop(k) for k in SIDE_TENSORS if k in table.entries}
    had_fp8 = layouts.dequantize_fp8(table)
    fused = layouts.split_fused(table)
    kind, layout, keymap = identify(table)
    if keymap:
        km = _resolve(keymap)
        if not isinstance(km, KeyMap):     # a function choosing the map from the keys
            km = km(table.names())
        layouts.rename(table, km)
    if prefix:
        layout = "comfyui" if prefix in ("model.diffusion_model.", "net.") else f"prefixed ({prefix})"
    layout += " fp8-scaled" * bool(had_fp8) + " fused-qkv" * bool(fused)
    comp = Component(kind, layout, table, side=side, expert=expert)
    raw_fp8 = layouts.unfused_fp8_weights(table)
    if raw_fp8:
        comp.warnings.append(f"{len(raw_fp8)} fp8 weights have no scale (read as raw fp8 values), "
                             f"e.g. {raw_fp8[0]}")
    CONFIGURE[kind](comp, hints or {})
    return comp


def _shapes(comp: Component) -> dict[str, tuple]:
    return {i.name: i.shape for i in comp.table.infos()}


def _configure_dit(comp: Component, hints: dict) -> None:
    shapes = _shapes(comp)
    cfg = infer_dit_config(shapes, comp.path, hints)
    check_shapes(shapes, dit_shapes(cfg), f"Wan DiT ({cfg.model_type})", comp.path)
    comp.config = cfg
    comp.variant = variant_label(cfg, comp.expert)


def infer_vae_config(shapes: dict, path: str | None = None) -> VAEConfig:
    is22 = "decoder.upsamples.0.upsamples.0.residual.2.weight" in shapes
    base = VAE22 if is22 else VAE21
    try:
        return VAEConfig(version=base.version, dim=shapes["encoder.conv1.weight"][0],
                         dec_dim=shapes["decoder.head.0.gamma"][0], z_dim=shapes["conv2.weight"][0],
                         latents_mean=base.latents_mean, latents_std=base.latents_std)
    except (KeyError, ValueError) as e:
        raise BadInputError(f"inconsistent Wan VAE shapes ({e})", path) from None


def _configure_vae(comp: Component, hints: dict) -> None:
    shapes = _shapes(comp)
    cfg = infer_vae_config(shapes, comp.path)
    check_shapes(shapes, vae_shapes(cfg), f"Wan {cfg.version} VAE", comp.path)
    comp.config = cfg
    comp.variant = f"wan{cfg.version}-vae"


def vae_shapes(cfg: VAEConfig) -> dict[str, tuple]:
    """Expected VAE keys and shapes, from the reference module built on the meta device."""
    import torch

    from wan_export.model.vae import WanVAE

    with torch.device("meta"):
        m = WanVAE(cfg)
    return {k: tuple(v.shape) for k, v in m.state_dict().items()}


def t5_shapes(c: T5Config) -> dict[str, tuple]:
    rows = [("token_embedding.weight", (c.vocab, c.dim))]
    for i in range(c.num_layers):
        p = f"blocks.{i}"
        rows += [(f"{p}.norm1.weight", (c.dim,))]
        rows += [(f"{p}.attn.{x}.weight", (c.dim_attn, c.dim)) for x in "qkv"]
        rows += [(f"{p}.attn.o.weight", (c.dim, c.dim_attn)), (f"{p}.norm2.weight", (c.dim,)),
                 (f"{p}.ffn.gate.0.weight", (c.dim_ffn, c.dim)), (f"{p}.ffn.fc1.weight", (c.dim_ffn, c.dim)),
                 (f"{p}.ffn.fc2.weight", (c.dim, c.dim_ffn)),
                 (f"{p}.pos_embedding.embedding.weight", (c.num_buckets, c.num_heads))]
    return dict(rows + [("norm.weight", (c.dim,))])


def _configure_t5(comp: Component, hints: dict) -> None:
    s = _shapes(comp)
    try:
        cfg = T5Config(vocab=s["token_embedding.weight"][0], dim=s["token_embedding.weight"][1],
                       dim_attn=s["blocks.0.attn.q.weight"][0], dim_ffn=s["blocks.0.ffn.fc1.weight"][0],
                       num_heads=s["blocks.0.pos_embedding.embedding.weight"][1],
                       num_layers=len({k.split(".")[1] for k in s if k.startswith("blocks.")}),
                       num_buckets=s["blocks.0.pos_embedding.embedding.weight"][0])
    except KeyError as e:
        raise BadInputError(f"not a complete UMT5 encoder: missing {e}", comp.path) from None
    check_shapes(s, t5_shapes(cfg), "UMT5 encoder", comp.path)
    comp.config = cfg
    comp.variant = "umt5-xxl-encoder" if cfg == T5Config() else f"umt5-encoder (custom: dim {cfg.dim})"


def _configure_clip(comp: Component, hints: dict) -> None:
    layer = r"visual\.transformer\.(\d+)\." if comp.layout.startswith("stock") else r"vision_model\.encoder\.layers\.(\d+)\."
    n = len({m.group(1) for k in comp.table.names() if (m := re.match(layer, k))})
    comp.config = {"vision_layers": n}
    comp.variant = "clip-xlmr-vit-h-14" if n == 32 else f"clip-vit (custom: {n} layers)"


CONFIGURE = {"dit": _configure_dit, "vae": _configure_vae, "t5": _configure_t5, "clip": _configure_clip}
