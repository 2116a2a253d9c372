"""Key maps over every full-size key list: stock -> foreign -> stock is the identity,
and the foreign names and shapes are exactly what diffusers / transformers build
on the meta device from the configs we write (so the files load).
"""
from __future__ import annotations

import importlib

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from wan_export.converters import diffusers_clip as clip_map
from wan_export.converters import diffusers_configs as dc
from wan_export.errors import BadInputError
from wan_export.keymaps import vae_diffusers
from wan_export.keymaps.dit_diffusers import DIT_DIFFUSERS
from tests.shared_data import DIT_KEY_FILES, key_shapes
from wan_export.keymaps.umt5_hf import TIED, UMT5_HF
from wan_export.model.config import VAE21, VAE22, T5Config
from wan_export.safetensors_io import TensorInfo
from wan_export.variants import VARIANTS, dit_shapes

VAE_KEY_FILES = {"2.1": ("wan_vae21_keys.txt", VAE21), "2.2": ("wan_vae22_keys.txt", VAE22)}


def meta_shapes(library: str, cls_name: str, **kwargs) -> dict[str, tuple[int, ...]]:
    cls = getattr(importlib.import_module(library), cls_name)
    with torch.device("meta"):
        model = cls(**kwargs)
    return {k: tuple(v.shape) for k, v in model.state_dict().items()}


def diffusers_meta(config: dict) -> dict[str, tuple[int, ...]]:
    return meta_shapes("diffusers", config["_class_name"],
                       **{k: v for k, v in config.items() if not k.startswith("_")})


def renamed(keymap, shapes: dict) -> dict:
    mapping = keymap.rename(list(shapes), to_stock=False)
    back = keymap.rename(list(mapping.values()), to_stock=True)
    assert {back[mapping[k]]: s for k, s in shapes.items()} == shapes      # identity
    return {mapping[k]: s for k, s in shapes.items()}


# ---- DiT --------------------------------------------------------------------------

@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_dit_names_are_what_diffusers_builds(variant):
    cfg = VARIANTS[variant].config
    stock = dit_shapes(cfg)
    if variant in DIT_KEY_FILES:                      # the shapes table is the official list
        assert stock == key_shapes(DIT_KEY_FILES[variant])
    assert renamed(DIT_DIFFUSERS, stock) == diffusers_meta(dc.transformer_config(cfg))


def test_flf2v_pos_embed_is_mapped():
    # diffusers' single-file loader forgets it (formats-diffusers.md section 6.1)
    assert DIT_DIFFUSERS.from_stock("img_emb.emb_pos") == "condition_embedder.image_embedder.pos_embed"


# ---- VAE --------------------------------------------------------------------------

@pytest.mark.parametrize("version", sorted(VAE_KEY_FILES))
def test_vae_names_are_what_diffusers_builds(version):
    keyfile, cfg = VAE_KEY_FILES[version]
    stock = key_shapes(keyfile)
    config = dc.vae_config(cfg)
    assert "clip_output" not in config
    assert renamed(vae_diffusers.BY_VERSION[version], stock) == diffusers_meta(config)


@pytest.mark.parametrize("version", sorted(VAE_KEY_FILES))
def test_vae_keymap_for_picks_the_layout(version):
    stock = list(key_shapes(VAE_KEY_FILES[version][0]))
    foreign = list(vae_diffusers.to_diffusers(stock).values())
    assert vae_diffusers.version_of(stock) == vae_diffusers.version_of(foreign) == version
    assert vae_diffusers.keymap_for(foreign) is vae_diffusers.BY_VERSION[version]


def test_vae21_up_block_table():
    assert vae_diffusers.UP21[3] == (0, "upsamplers.0") and vae_diffusers.UP21[14] == (3, "resnets.2")
    assert vae_diffusers.to_diffusers(["decoder.upsamples.4.shortcut.weight"], "2.1") == {
        "decoder.upsamples.4.shortcut.weight": "decoder.up_blocks.1.resnets.0.conv_shortcut.weight"}


def test_vae_unmapped_keys_are_listed_together():
    with pytest.raises(BadInputError, match="2 unmapped: decoder.upsamples.15.residual.0.gamma, bogus"):
        vae_diffusers.to_diffusers(["decoder.upsamples.15.residual.0.gamma", "bogus"], "2.1")


# ---- UMT5 ---------------------------------------------------------------------------

def test_umt5_names_are_what_transformers_builds():
    from transformers import UMT5Config

    stock = key_shapes("wan_t5_umt5xxl_encoder_keys.txt")
    config = dc.text_encoder_config(T5Config(), "BF16")
    hf = meta_shapes("transformers", "UMT5EncoderModel", config=UMT5Config(**{
        k: v for k, v in config.items() if k not in ("architectures", "transformers_version", "torch_dtype")}))
    assert renamed(UMT5_HF, stock) == {k: v for k, v in hf.items() if k not in TIED}
    assert set(TIED.values()) <= set(hf)


# ---- CLIP vision tower ------------------------------------------------------------------

def test_clip_names_are_what_transformers_builds():
    from transformers import CLIPVisionConfig

    stock = key_shapes("wan_clip_xlmr_vith14_keys.txt")
    plan = clip_map.plan_to_hf([TensorInfo(k, s, "F16") for k, s in stock.items()])
    dims = dc.clip_shape_config(stock)
    assert dims == {"hidden_size": 1280, "intermediate_size": 5120, "num_attention_heads": 16,
                    "num_hidden_layers": 32, "image_size": 224, "patch_size": 14, "projection_dim": 1024}
    hf = meta_shapes("transformers", "CLIPVisionModel", config=CLIPVisionConfig(**dims, hidden_act="gelu"))
    prefix = clip_map.RENAMES.rows[0][1].split(".")[0] + "."      # vision_model.
    assert {name: shape for name, shape, _, _ in plan} == {
        k if k.startswith(prefix) else prefix + k: v for k, v in hf.items()}
    # the inverse restores every converted tensor (the text tower and projection are dropped by design)
    fake = {name: torch.zeros(shape) for name, shape, _, _ in plan}
    back = clip_map.to_stock(fake, torch.cat)
    assert {k: tuple(v.shape) for k, v in back.items()} == {
        k: s for k, s in stock.items() if k.startswith("visual.") and k != "visual.head"}


# ---- property tests -----------------------------------------------------------------

def _all_maps():
    out = [(DIT_DIFFUSERS, dit_shapes(VARIANTS["wan2.1-vace-14b"].config)),
           (DIT_DIFFUSERS, dit_shapes(VARIANTS["wan2.1-flf2v-14b"].config)),
           (UMT5_HF, key_shapes("wan_t5_umt5xxl_encoder_keys.txt"))]
    out += [(vae_diffusers.BY_VERSION[v], key_shapes(f)) for v, (f, _) in VAE_KEY_FILES.items()]
    return [(km, list(shapes)) for km, shapes in out]


MAPS = _all_maps()


@settings(max_examples=60, deadline=None)
@given(st.data())
def test_random_subsets_and_orders_round_trip(data):
    keymap, keys = data.draw(st.sampled_from(MAPS))
    subset = data.draw(st.lists(st.sampled_from(keys), unique=True, max_size=80))
    mapping = keymap.rename(subset, to_stock=False)
    assert list(mapping) == subset                           # order kept, nothing dropped
    back = keymap.rename(list(mapping.values()), to_stock=True)
    assert [back[mapping[k]] for k in subset] == subset


BLOCK_KEYS = [k.removeprefix("blocks.0.") for k in dit_shapes(VARIANTS["wan2.1-i2v-14b"].config)
              if k.startswith("blocks.0.")]


@settings(max_examples=100, deadline=None)
@given(st.integers(0, 10**6), st.sampled_from(BLOCK_KEYS), st.sampled_from(["blocks", "vace_blocks"]))
def test_any_block_index_round_trips(i, suffix, group):
    key = f"{group}.{i}.{suffix}"
    foreign = DIT_DIFFUSERS.from_stock(key)
    assert foreign is not None and foreign.startswith(f"{group}.{i}.")
    assert DIT_DIFFUSERS.to_stock(foreign) == key


@settings(max_examples=60, deadline=None)
@given(st.integers(0, 10**4), st.sampled_from([k for k in key_shapes("wan_vae22_keys.txt")
                                                if k.startswith(("encoder.downsamples.0.", "decoder.upsamples.0."))]))
def test_vae22_any_level_round_trips(level, key):
    part, rest = key.split(".0.", 1)
    key = f"{part}.{level}.{rest}"
    km = vae_diffusers.VAE22_DIFFUSERS
    assert km.to_stock(km.from_stock(key)) == key
