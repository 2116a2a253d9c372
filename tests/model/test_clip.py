"""The reference CLIP vision tower against transformers' CLIPVisionModel (through our converter).

The tiny CLIP of the synthetic release (1280 wide, 16 heads, 2 blocks, 224 px) is converted with
converters.diffusers_clip and loaded into CLIPVisionModel; hidden_states[-2] is Wan's use_31_block
output. Measured: identical (max abs 0) on CPU fp32; bound 1e-5 of peak.
"""
from __future__ import annotations

import numpy as np
import pytest
import torch

from wan_export import synthetic
from wan_export.converters import diffusers_clip
from wan_export.converters.diffusers_configs import clip_shape_config, image_encoder_config
from wan_export.dtypes import to_torch
from wan_export.model.clip import CLIP_MEAN, load_clip_visual

transformers = pytest.importorskip("transformers")


@pytest.fixture(scope="module")
def towers():
    state = {k: to_torch(v) for k, v in synthetic.clip_state().items()}
    ours = load_clip_visual(state)
    shapes = {k: tuple(v.shape) for k, v in state.items()}
    cfg = transformers.CLIPVisionConfig(**{k: v for k, v in image_encoder_config(clip_shape_config(shapes), "F32").items()
                                           if k not in ("architectures", "model_type", "transformers_version",
                                                        "torch_dtype")})
    hf = transformers.CLIPVisionModel(cfg).eval()
    plan = diffusers_clip.plan_to_hf(
        [type("I", (), {"name": k, "shape": v.shape})() for k, v in state.items()])
    arrays = {k: v.numpy() for k, v in state.items()}
    hf_state = {name: torch.from_numpy(np.ascontiguousarray(fn(arrays[stock]) if fn else arrays[stock]))
                for name, _, stock, fn in plan}
    if not any(k.startswith("vision_model.") for k in hf.state_dict()):   # transformers 5 drops the prefix
        hf_state = {k.removeprefix("vision_model."): v for k, v in hf_state.items()}
    missing, unexpected = hf.load_state_dict(hf_state, strict=False)
    assert not unexpected and all("position_ids" in m for m in missing)
    return ours, hf


def test_matches_clip_vision_model(towers):
    ours, hf = towers
    pixels = torch.randn(2, 3, 224, 224, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        want = hf(pixel_values=pixels, output_hidden_states=True).hidden_states[-2]
        got = ours(pixels)
    assert got.shape == (2, 257, 1280)
    assert (got - want).abs().max().item() <= 1e-5 * want.abs().max().item()


def test_encode_images_preprocesses_like_wan(towers):
    ours, _ = towers
    gray = torch.zeros(3, 30, 90)              # mid-gray frame, any aspect: resized whole to 224x224
    x = ours.preprocess([gray])
    assert x.shape == (1, 3, 224, 224)
    assert torch.allclose(x[0, :, 0, 0], (0.5 - torch.tensor(CLIP_MEAN)) / torch.tensor((0.26862954, 0.26130258,
                                                                                         0.27577711)))
    feats = ours.encode_images([gray, gray])   # FLF2V: first and last frame side by side
    assert feats.shape == (1, 514, 1280)
