"""The reference pipeline against diffusers' own pipelines on tiny releases, plus bad input.

Same initial noise, same prompt embeddings (ours, padded to 512 as Wan pads them), the
diffusers sigma grid (the folder's scheduler), float32 weights. Measured on CPU: final latents
rel-L2 2.5e-6 (T2V-1.3B), 3.7e-6 (T2V-A14B), 3.0e-6 (I2V-A14B) over 4 UniPC steps with
CFG; every step is bounded by PIPELINE_REL_L2 = 1e-4.
"""
from __future__ import annotations

import pytest
import torch

from wan_export.errors import BadInputError
from wan_export.pipeline import (decode, encode_prompts, generate, load_pipeline, official_settings,
                                 pad_context)

pytest.importorskip("diffusers")
PIPELINE_REL_L2 = 1e-4
SIZE = dict(width=32, height=32, frames=5, steps=4)


@pytest.fixture(scope="module")
def diffusers_pair(tiny_release, tmp_path_factory):
    """variant -> (our pipeline, the diffusers pipeline of the converted folder), cached."""
    from wan_export.converters.diffusers import convert
    from wan_export.validators.diffusers_loader import load_diffusers_artifact

    cache = {}

    def make(variant):
        if variant not in cache:
            src = tiny_release(variant, dtype="F32")
            out = str(tmp_path_factory.mktemp("pipe") / variant)
            convert(src, out)
            cache[variant] = (load_pipeline(src), load_diffusers_artifact(out)["pipeline"][1])
        return cache[variant]

    return make


def _rel(a, b) -> float:
    return ((a - b).norm() / b.norm()).item()


def _ours_and_theirs(ours, theirs, s, **extra):
    ctx, neg = encode_prompts(ours, ["A cat walks on the grass", s.negative_prompt])
    noise = torch.randn(1, 16, 2, 4, 4, generator=torch.Generator().manual_seed(1))
    steps = []
    lat = generate(ours, ctx, neg, s, noise=noise, on_step=lambda i, t, slot, x: steps.append(x.clone()),
                   image=extra.get("ours_image"))
    kw = {k: v for k, v in extra.items() if k != "ours_image"}
    got = []

    def grab(pipe, i, t, kwargs):
        got.append(kwargs["latents"].clone())
        return {}

    ref = theirs(prompt_embeds=pad_context(ctx, 4096), negative_prompt_embeds=pad_context(neg, 4096),
                 latents=noise.clone(), height=s.height, width=s.width, num_frames=s.frames,
                 num_inference_steps=s.steps, output_type="latent", callback_on_step_end=grab, **kw).frames
    return lat, ref, steps, got


@pytest.mark.parametrize("variant", ["wan2.1-t2v-1.3b", "wan2.2-t2v-a14b"])
def test_sampling_equals_diffusers_wanpipeline(diffusers_pair, variant):
    ours, theirs = diffusers_pair(variant)
    s = official_settings(variant, grid="diffusers", **SIZE)
    if isinstance(s.guidance, tuple):
        kw = dict(guidance_scale=s.guide("high_noise_model"), guidance_scale_2=s.guide("low_noise_model"))
    else:
        kw = dict(guidance_scale=s.guidance)
    lat, ref, steps, got = _ours_and_theirs(ours, theirs, s, **kw)
    assert len(steps) == len(got) == s.steps
    for a, b in zip(steps, got):
        assert _rel(a, b) < PIPELINE_REL_L2
    assert _rel(lat, ref) < PIPELINE_REL_L2


def test_i2v_a14b_equals_diffusers_image_pipeline(diffusers_pair):
    """Wan2.2 I2V-A14B: [noisy | mask 4 | first-frame latent] against WanImageToVideoPipeline
    (the image is already at the output size, so neither side resizes it)."""
    ours, theirs = diffusers_pair("wan2.2-i2v-a14b")
    s = official_settings("wan2.2-i2v-a14b", grid="diffusers", **SIZE)
    image = torch.rand(3, 32, 32, generator=torch.Generator().manual_seed(2)) * 2 - 1
    lat, ref, steps, got = _ours_and_theirs(
        ours, theirs, s, ours_image=image, image=image[None] * 0.5 + 0.5,
        guidance_scale=s.guide("high_noise_model"), guidance_scale_2=s.guide("low_noise_model"))
    assert _rel(lat, ref) < PIPELINE_REL_L2


@pytest.mark.parametrize("variant", ["wan2.1-i2v-14b", "wan2.1-flf2v-14b"])
def test_wan21_image_variants_equal_diffusers(diffusers_pair, variant):
    """Wan2.1 I2V / FLF2V: the mask + first (and last) frame latent, and our CLIP features handed to
    diffusers in place of its encode_image (its CLIPImageProcessor resizes with PIL, ours with torch
    bicubic; diffusers refuses `image` together with `image_embeds`)."""
    ours, theirs = diffusers_pair(variant)
    s = official_settings(variant, grid="diffusers", **SIZE)
    g = torch.Generator().manual_seed(3)
    first, last = (torch.rand(3, 32, 32, generator=g) * 2 - 1 for _ in range(2))
    frames = [first] + ([last] if variant.endswith("flf2v-14b") else [])
    embeds = ours.clip.encode_images(frames).reshape(len(frames), 257, 1280)
    kw = dict(image=first[None] * 0.5 + 0.5, guidance_scale=s.guidance)
    if len(frames) == 2:
        kw["last_image"] = last[None] * 0.5 + 0.5
    ctx, neg = encode_prompts(ours, ["A cat walks on the grass", s.negative_prompt])
    noise = torch.randn(1, 16, 2, 4, 4, generator=torch.Generator().manual_seed(1))
    lat = generate(ours, ctx, neg, s, noise=noise, image=first, last_image=last if len(frames) == 2 else None)
    theirs.encode_image = lambda *args, **kwargs: embeds
    try:
        ref = theirs(prompt_embeds=pad_context(ctx, 4096), negative_prompt_embeds=pad_context(neg, 4096),
                     latents=noise.clone(), height=s.height, width=s.width, num_frames=s.frames,
                     num_inference_steps=s.steps, output_type="latent", **kw).frames
    finally:
        del theirs.encode_image
    assert _rel(lat, ref) < PIPELINE_REL_L2


def test_vace_runs_end_to_end(tiny_release):
    """VACE with Wan's pure-generation context and with a masked source video."""
    pipe = load_pipeline(tiny_release("wan2.1-vace-1.3b"), text=False)
    s = official_settings("wan2.1-vace-1.3b", **SIZE)
    ctx = torch.randn(7, 4096, generator=torch.Generator().manual_seed(0))
    plain = generate(pipe, ctx, ctx * 0, s)
    video = torch.rand(3, 5, 32, 32, generator=torch.Generator().manual_seed(1)) * 2 - 1
    mask = torch.zeros(5, 32, 32)
    mask[:, 8:24, 8:24] = 1
    edited = generate(pipe, ctx, ctx * 0, s, vace={"frames": video, "mask": mask})
    assert plain.shape == edited.shape == (1, 16, 2, 4, 4) and not torch.equal(plain, edited)
    from wan_export.model.conditioning import vace_context

    c = vace_context(pipe.vae, video, mask, 5, 32, 32)
    assert c.shape == (1, 96, 2, 4, 4) and torch.equal(generate(pipe, ctx, ctx * 0, s, vace=c), edited)


def test_ti2v_image_equals_diffusers(diffusers_pair):
    """TI2V-5B from an image: diffusers' WanImageToVideoPipeline with expand_timesteps (first frame
    held by the mask, per-token timesteps) built from the converted folder's components."""
    from diffusers import WanImageToVideoPipeline

    ours, t2v = diffusers_pair("wan2.2-ti2v-5b")
    theirs = WanImageToVideoPipeline(tokenizer=t2v.tokenizer, text_encoder=t2v.text_encoder, vae=t2v.vae,
                                     scheduler=t2v.scheduler, transformer=t2v.transformer, expand_timesteps=True)
    s = official_settings("wan2.2-ti2v-5b", grid="diffusers", **{**SIZE, "width": 64, "height": 64})
    image = torch.rand(3, 64, 64, generator=torch.Generator().manual_seed(4)) * 2 - 1
    ctx, neg = encode_prompts(ours, ["A cat walks on the grass", s.negative_prompt])
    noise = torch.randn(1, 48, 2, 4, 4, generator=torch.Generator().manual_seed(1))
    lat = generate(ours, ctx, neg, s, noise=noise, image=image)
    ref = theirs(image=image[None] * 0.5 + 0.5, prompt_embeds=pad_context(ctx, 4096),
                 negative_prompt_embeds=pad_context(neg, 4096), latents=noise.clone(), height=64, width=64,
                 num_frames=5, num_inference_steps=s.steps, guidance_scale=s.guidance, output_type="latent").frames
    assert _rel(lat, ref) < PIPELINE_REL_L2


def test_ti2v_runs_end_to_end(tiny_release):
    pipe = load_pipeline(tiny_release("wan2.2-ti2v-5b"))
    s = official_settings("wan2.2-ti2v-5b", width=64, height=64, frames=5, steps=3)
    ctx, neg = encode_prompts(pipe, ["a dog", ""])
    image = torch.rand(3, 64, 64, generator=torch.Generator().manual_seed(0)) * 2 - 1
    seen = []
    lat = generate(pipe, ctx, neg, s, image=image, on_step=lambda *a: seen.append(a[3][:, :, :1].clone()))
    assert lat.shape == (1, 48, 2, 4, 4)
    # the first latent frame is the image latent at every step
    z0 = pipe.vae.encode(image[None, :, None], normalize=True)
    assert all(torch.equal(x, z0) for x in seen)
    assert decode(pipe, lat).shape == (1, 3, 5, 64, 64)


def test_bad_input(tiny_release):
    pipe = load_pipeline(tiny_release("wan2.2-i2v-a14b"), text=False)
    ctx = torch.zeros(3, 4096)
    with pytest.raises(BadInputError, match="multiples of 16"):
        generate(pipe, ctx, ctx, official_settings("wan2.2-i2v-a14b", width=40, height=32, frames=5, steps=1))
    with pytest.raises(BadInputError, match="generates from an image"):
        generate(pipe, ctx, ctx, official_settings("wan2.2-i2v-a14b", width=32, height=32, frames=5, steps=1))
    with pytest.raises(BadInputError, match="steps must be at least 1"):
        official_settings("wan2.2-i2v-a14b", steps=0)
    with pytest.raises(BadInputError, match="no UMT5 encoder"):
        encode_prompts(pipe, ["x"])
    ti2v = load_pipeline(tiny_release("wan2.2-ti2v-5b"), text=False)
    with pytest.raises(BadInputError, match="multiples of 32"):
        generate(ti2v, ctx, ctx, official_settings("wan2.2-ti2v-5b", width=48, height=32, frames=5, steps=1))


def test_official_settings_table():
    s = official_settings("wan2.2-t2v-a14b")
    assert (s.steps, s.shift, s.guidance, s.boundary_ratio, s.frames) == (40, 12.0, (3.0, 4.0), 0.875, 81)
    assert s.guide("high_noise_model") == 4.0 and s.guide("low_noise_model") == 3.0
    assert official_settings("wan2.2-i2v-a14b").boundary_ratio == 0.9
    ti2v = official_settings("wan2.2-ti2v-5b")
    assert (ti2v.frames, ti2v.width, ti2v.height, ti2v.steps) == (121, 1280, 704, 50)
    assert official_settings("wan2.1-i2v-14b", width=832, height=480).shift == 3.0
    assert official_settings("wan2.1-i2v-14b").shift == 5.0
    assert official_settings("wan2.1-flf2v-14b").negative_prompt.startswith("镜头切换，")
    assert official_settings("wan2.1-t2v-1.3b").boundary_ratio is None


def test_source_without_text_encoder(tiny_release, tmp_path):
    import os
    import shutil

    from wan_export import synthetic

    src = shutil.copytree(tiny_release("wan2.1-t2v-1.3b"), tmp_path / "src")
    os.remove(src / synthetic.T5_FILE)
    shutil.rmtree(src / "google")
    with pytest.raises(BadInputError, match=r"no UMT5 text encoder .*; no UMT5 tokenizer folder .*: supply "
                                            r"precomputed prompt embeddings instead"):
        load_pipeline(src)
    pipe = load_pipeline(src, text=False, dtype=torch.bfloat16)       # precomputed context still samples
    ctx = torch.randn(5, 4096, generator=torch.Generator().manual_seed(0))
    lat = generate(pipe, ctx, ctx * 0, official_settings(pipe.variant, steps=2, width=16, height=16, frames=1))
    assert lat.shape == (1, 16, 1, 2, 2) and lat.dtype == torch.float32 and torch.isfinite(lat).all()
