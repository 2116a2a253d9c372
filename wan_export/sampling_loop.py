"""The denoising loop behind `pipeline.generate`: conditioning, CFG, expert switch, solver steps.

As Wan's generate: the conditional and unconditional branches are separate
DiT calls (batch 1), the DiT sees the integer timestep, and the A14B expert
is picked per step from that timestep.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from wan_export.errors import BadInputError
from wan_export.model import conditioning as cond
from wan_export.model.sampler import cfg as guide, make_solver


@dataclass
class Conditioning:
    """What every DiT call gets besides latents, timestep and context."""

    y: torch.Tensor | None = None              # I2V/FLF2V: [1, 20, T, h, w] after the noisy latent
    clip: torch.Tensor | None = None           # Wan2.1 I2V/FLF2V: [1, 257|514, 1280]
    vace: torch.Tensor | None = None           # VACE: [1, 96, T, h, w]
    z0: torch.Tensor | None = None             # TI2V: first-frame latent held by `mask`
    mask: torch.Tensor | None = None


def _image(x, what: str) -> torch.Tensor:
    if not isinstance(x, torch.Tensor) or x.dim() != 3 or x.shape[0] != 3:
        raise BadInputError(f"{what} must be a [3, H, W] tensor in [-1, 1]")
    return x.float()


def build_conditioning(pipe, s, shape, image=None, last_image=None, vace=None) -> Conditioning:
    """Encode the images / VACE source for this variant; raise if a needed input is missing."""
    mt, c = pipe.config.model_type, Conditioning()
    with torch.no_grad():
        if mt in ("i2v", "flf2v"):
            if image is None:
                raise BadInputError(f"{pipe.variant or mt} generates from an image: pass image "
                                    f"(--image){' and last_image' if mt == 'flf2v' else ''}")
            if mt == "flf2v" and last_image is None:
                raise BadInputError(f"{pipe.variant or mt} needs the last frame too (last_image)")
            first = _image(image, "image")
            last = _image(last_image, "last_image") if mt == "flf2v" else None
            c.y = cond.i2v_condition(pipe.vae, first, s.frames, s.height, s.width, last).float()
            if pipe.config.image_branch:
                frames = [first] + ([last] if last is not None else [])
                c.clip = pipe.clip.encode_images(frames)
        elif mt == "ti2v" and image is not None:
            c.z0, c.mask = cond.ti2v_first_frame(pipe.vae, _image(image, "image"), shape, s.height, s.width)
        elif mt == "vace":
            c.vace = _vace(pipe, s, vace)
    return c


def _vace(pipe, s, vace) -> torch.Tensor:
    if isinstance(vace, torch.Tensor):
        return vace.float()
    vace = vace or {}
    if not isinstance(vace, dict) or set(vace) - {"frames", "mask"}:
        raise BadInputError("vace must be a [1, 96, T, h, w] tensor or dict(frames=..., mask=...)")
    return cond.vace_context(pipe.vae, vace.get("frames"), vace.get("mask"), s.frames, s.height, s.width)


def _call(dit, latents, t, context, c: Conditioning, per_token: bool) -> torch.Tensor:
    x = latents if c.y is None else torch.cat([latents, c.y.to(latents)], dim=1)
    if per_token:
        ts = cond.token_timesteps(c.mask, float(t), dit.cfg.patch_size).to(latents.device)
    else:
        ts = torch.tensor([float(t)], device=latents.device)
    return dit(x, ts, context, clip_features=c.clip, vace_context=c.vace)


def run_loop(pipe, context, negative_context, s, *, image=None, last_image=None, vace=None,
             noise=None, on_step=None, progress=None, solver=None) -> torch.Tensor:
    from wan_export.pipeline import expert_for, initial_noise, latent_shape, pad_context

    shape = latent_shape(pipe, s)
    width = pipe.config.text_dim
    dev = pipe.device
    ctx, nctx = (pad_context(x, width).to(dev) for x in (context, negative_context))
    latents = initial_noise(pipe, s) if noise is None else noise.float()
    if tuple(latents.shape) != shape:
        raise BadInputError(f"noise must be {list(shape)} for these settings, got {list(latents.shape)}")
    latents = latents.to(dev)
    c = build_conditioning(pipe, s, shape, image, last_image, vace)
    per_token = c.mask is not None
    if per_token:
        latents = _hold(latents, c)
    solver = solver or make_solver(s.solver, s.steps, s.shift, s.grid)
    with torch.no_grad():
        for i, t in enumerate(solver.timesteps.tolist()[: s.steps]):
            slot = expert_for(pipe, s, t)
            dit = pipe.dits[slot]
            v_cond = _call(dit, latents, t, ctx, c, per_token)
            v_uncond = _call(dit, latents, t, nctx, c, per_token)
            latents = solver.step(guide(v_uncond, v_cond, s.guide(slot)), latents)
            if per_token:
                latents = _hold(latents, c)
            if on_step is not None:
                on_step(i, t, slot, latents)
            if progress is not None:
                progress(1)
    return latents


def _hold(latents: torch.Tensor, c: Conditioning) -> torch.Tensor:
    """TI2V: the first latent frame stays the image latent."""
    m = c.mask.to(latents)
    return (1 - m) * c.z0.to(latents) + m * latents
