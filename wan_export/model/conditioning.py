"""Conditioning inputs of the Wan variants, built as the official pipelines build them.

- I2V / FLF2V: `y` = [mask 4 | VAE latent of (first frame, zeros..., [last frame]) 16],
  concatenated after the noisy latent: [noisy 16 | mask 4 | cond 16] = 36 channels.
- TI2V-5B: the first latent frame is the image latent, held by a mask; its tokens get t = 0.
- VACE: 96 channels [inactive latent 16 | reactive latent 16 | 8x8-folded pixel mask 64].
Images are [3, H, W] float tensors in [-1, 1]; videos [3, F, H, W]. Pure torch.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F


def resize(image: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """Bicubic resize of a [3, H, W] (or [3, F, H, W]) image, as Wan's image2video does."""
    if image.dim() == 3:
        return F.interpolate(image[None].float(), size=(height, width), mode="bicubic")[0]
    frames = image.float().transpose(0, 1)
    return F.interpolate(frames, size=(height, width), mode="bicubic").transpose(0, 1)


def frame_mask(frames: int, lat_h: int, lat_w: int, last: bool = False, temporal: int = 4) -> torch.Tensor:
    """The I2V mask [4, T_lat, lat_h, lat_w]: 1 on the given frames (first; last too for FLF2V).

    Pixel frames are folded in groups of `temporal`, the first frame repeated to fill its group.
    """
    m = torch.zeros(1, frames, lat_h, lat_w)
    m[:, 0] = 1
    if last:
        m[:, -1] = 1
    m = torch.cat([m[:, :1].repeat_interleave(temporal, dim=1), m[:, 1:]], dim=1)
    return m.view(1, m.shape[1] // temporal, temporal, lat_h, lat_w).transpose(1, 2)[0]


def i2v_condition(vae, first: torch.Tensor, frames: int, height: int, width: int,
                  last: torch.Tensor | None = None) -> torch.Tensor:
    """`y` [1, 4 + z, T_lat, h, w]: the frame mask, then the VAE latent of the masked video."""
    device = vae.device
    parts = [resize(first, height, width)[:, None]]
    parts.append(torch.zeros(3, frames - 1 - (last is not None), height, width))
    if last is not None:
        parts.append(resize(last, height, width)[:, None])
    video = torch.cat([p.to(device) for p in parts], dim=1)[None]
    z = vae.encode(video.to(vae.dtype), normalize=True)
    s = vae.cfg.spatial_stride
    mask = frame_mask(frames, height // s, width // s, last is not None, vae.cfg.temporal_stride)
    return torch.cat([mask[None].to(z), z], dim=1)


def ti2v_first_frame(vae, image: torch.Tensor, latent_shape, height: int, width: int):
    """(z0 [1, z, 1, h, w], mask [1, 1, T_lat, h, w]) with mask 0 on the first latent frame."""
    z0 = vae.encode(resize(image, height, width)[None, :, None].to(vae.device, vae.dtype), normalize=True)
    mask = torch.ones(1, 1, *latent_shape[2:], device=z0.device)
    mask[:, :, 0] = 0
    return z0.float(), mask


def token_timesteps(mask: torch.Tensor, t: float, patch: tuple[int, int, int]) -> torch.Tensor:
    """Per-token timesteps [1, L]: t where the mask is 1, 0 on the held first frame."""
    pt, ph, pw = patch
    return (mask[0, 0, ::pt, ::ph, ::pw] * t).flatten()[None]


def vace_context(vae, frames: torch.Tensor | None, mask: torch.Tensor | None, num_frames: int,
                 height: int, width: int) -> torch.Tensor:
    """The 96-channel VACE context [1, 96, T_lat, h, w] of a source video and its mask.

    Without a source video Wan uses zeros and an all-ones mask (pure generation).
    `frames` [3, F, H, W] in [-1, 1]; `mask` [F, H, W] or [1, F, H, W] in {0, 1} (1 = regenerate).
    """
    if frames is None:
        frames = torch.zeros(3, num_frames, height, width)
    if mask is None:
        mask = torch.ones(1, *frames.shape[1:])
    mask = (mask if mask.dim() == 4 else mask[None]).float()
    frames, mask = frames.float().to(vae.device), mask.to(vae.device)
    inactive = vae.encode((frames * (1 - mask))[None].to(vae.dtype), normalize=True)
    reactive = vae.encode((frames * mask)[None].to(vae.dtype), normalize=True)
    return torch.cat([inactive, reactive, fold_mask(mask, vae.cfg.spatial_stride, inactive.shape[2])[None]], 1)


def fold_mask(mask: torch.Tensor, stride: int, latent_frames: int) -> torch.Tensor:
    """Pixel mask [1, F, H, W] -> [stride², T_lat, H/stride, W/stride] (8x8 pixels into channels)."""
    _, f, h, w = mask.shape
    m = mask[0].view(f, h // stride, stride, w // stride, stride).permute(2, 4, 0, 1, 3)
    m = m.reshape(stride * stride, f, h // stride, w // stride)
    return F.interpolate(m[None], size=(latent_frames, h // stride, w // stride), mode="nearest-exact")[0]
