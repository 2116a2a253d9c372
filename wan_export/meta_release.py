"""A shapes-only Release of a full-size variant: every component's names, shapes and dtypes from
the variant tables, no data (reading a tensor is an error). Dry runs and `release --plan` use it
when the source is absent, so full-size plans need neither the weights nor memory.

Dtypes are those of the official release files: DiT and UMT5 bf16, VAE fp32, CLIP fp16.
"""
from __future__ import annotations

from wan_export.components import load_component, t5_shapes, vae_shapes
from wan_export.errors import BadInputError
from wan_export.model.config import UMT5_XXL, VAE21, VAE22
from wan_export.release import Release
from wan_export.safetensors_io import TensorInfo
from wan_export.variants import EXPERTS, VARIANTS, dit_shapes

SPIECE_BYTES = 4_548_313       # google/umt5-xxl spiece.model (ComfyUI embeds it as `spiece_model`)
DTYPES = {"dit": "BF16", "vae": "F32", "t5": "BF16", "clip": "F16"}


class ShapeSource:
    """A Source with infos() and no data."""

    def __init__(self, path: str, shapes: dict[str, tuple], dtype: str):
        self.path, self.metadata = path, {}
        self._infos = [TensorInfo(k, tuple(s), dtype) for k, s in shapes.items()]

    def infos(self) -> list[TensorInfo]:
        return list(self._infos)

    def read(self, name: str):
        raise BadInputError(f"shapes-only source (no data): cannot read {name}", self.path)


def _clip_shapes() -> dict[str, tuple]:
    from wan_export.synthetic import CLIPConfig, clip_shapes

    return clip_shapes(CLIPConfig(vision_dim=1280, vision_layers=32, image_size=224, text_dim=1024,
                                  text_layers=24, text_len=512, vocab=250002, embed_dim=1024))


def meta_release(variant: str, label: str | None = None) -> Release:
    """The full-size release of `variant` (ids as in variants.VARIANTS) as shapes only."""
    if variant not in VARIANTS:
        raise BadInputError(f"unknown variant {variant!r}; known: {', '.join(VARIANTS)}")
    v = VARIANTS[variant]
    base = label or f"<{variant} shapes>"
    rel = Release(base, layout="shapes only")
    slots = [(f"dit.{e}", e) for e in EXPERTS] if v.experts else [("dit", None)]
    for slot, expert in slots:
        src = ShapeSource(f"{base}/{slot}", dit_shapes(v.config), DTYPES["dit"])
        rel.components[slot] = load_component(src, expert=expert)
    rel.components["vae"] = load_component(ShapeSource(f"{base}/vae", vae_shapes(VAE22 if v.vae == "2.2" else VAE21),
                                                       DTYPES["vae"]))
    t5 = load_component(ShapeSource(f"{base}/t5", t5_shapes(UMT5_XXL), DTYPES["t5"]))
    t5.side["spiece_model"] = (TensorInfo("spiece_model", (SPIECE_BYTES,), "U8"), t5.table.read)
    rel.components["t5"] = t5
    if v.config.image_branch:
        rel.components["clip"] = load_component(ShapeSource(f"{base}/clip", _clip_shapes(), DTYPES["clip"]))
    rel.tokenizer_dir = f"{base}/google/umt5-xxl"          # named, not present: listed without sizes
    return rel


def open_for_dry_run(src: str) -> Release:
    """`shapes:VARIANT` -> meta_release(VARIANT); anything else is opened as usual (headers only)."""
    if str(src).startswith("shapes:"):
        return meta_release(str(src)[len("shapes:"):])
    from wan_export.release import open_input

    return open_input(str(src))
