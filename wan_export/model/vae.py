"""The reference Wan causal 3D VAE (2.1 `WanVAE_`, 2.2 `Wan2_2_VAE`) with stock tensor names.

The official chunked `feat_cache` scheme is kept, but its state is explicit:
`encoder_step` / `decoder_step` map (chunk, cache) -> (output, new cache) with
fixed-shape cache tensors and no data-dependent control flow, so each of the
'first' and 'step' variants exports as one static graph. `encode` / `decode`
are plain Python loops over the steps.
"""
from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import NamedTuple

import torch
import torch.nn as nn

from ..errors import BadInputError
from .config import VAEConfig
from .loading import as_state_dict, load_strict
from .vae_blocks import CausalConv3d, Decoder3d, Encoder3d, StepCache, patchify, unpatchify

ENCODE_CHUNK = 4  # frames per encoder step after the first (which takes 1)


class CacheSlot(NamedTuple):
    """One cache tensor: the causal layer that owns it and its fixed shape."""

    name: str
    shape: tuple[int, ...]


class WanVAE(nn.Module):
    """Wan2.1 / Wan2.2 VAE. State-dict keys and shapes equal the official files."""

    def __init__(self, cfg: VAEConfig):
        super().__init__()
        self.cfg = cfg
        z = cfg.z_dim
        self.encoder = Encoder3d(cfg)
        self.conv1 = CausalConv3d(2 * z, 2 * z, 1)
        self.conv2 = CausalConv3d(z, z, 1)
        self.decoder = Decoder3d(cfg)
        for name, module in self.named_modules():
            if isinstance(module, CausalConv3d):
                module.slot = name

    @property
    def dtype(self) -> torch.dtype:
        return self.conv2.weight.dtype

    @property
    def device(self) -> torch.device:
        return self.conv2.weight.device

    # ---- steps -------------------------------------------------------------

    def encoder_step(self, x: torch.Tensor, cache: list[torch.Tensor] | None, first: bool,
                     normalize: bool = False) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """One encoder chunk: video [B, 3, 1 (first) or 4, H, W] -> mu [B, z, 1, H/s, W/s] float32.

        `cache` is ignored (may be None) when `first`; the returned cache feeds the next step.
        """
        mu, state = self._encoder_step(x, cache, first, normalize)
        return mu, state.finish()

    def decoder_step(self, z: torch.Tensor, cache: list[torch.Tensor] | None, first: bool,
                     normalize: bool = False) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """One latent frame [B, z, 1, h, w] -> video [B, 3, 1 (first) or 4, h·s, w·s] float32 in [-1, 1].

        `cache` is ignored (may be None) when `first`; the returned cache feeds the next step.
        """
        video, state = self._decoder_step(z, cache, first, normalize)
        return video, state.finish()

    def _encoder_step(self, x, cache, first, normalize):
        _check_chunk(x, first, ENCODE_CHUNK)
        state = StepCache(cache, first)
        x = x.to(self.dtype)
        if self.cfg.version == "2.2":
            x = patchify(x)
        mu = self.conv1(self.encoder(x, state))[:, : self.cfg.z_dim]
        if normalize:
            mean, inv_std = self._latent_stats()
            mu = (mu - mean) * inv_std
        return mu.float(), state

    def _decoder_step(self, z, cache, first, normalize):
        _check_chunk(z, first, 1)
        state = StepCache(cache, first)
        z = z.to(self.dtype)
        if normalize:
            mean, inv_std = self._latent_stats()
            z = z / inv_std + mean
        x = self.decoder(self.conv2(z), state)
        if self.cfg.version == "2.2":
            x = unpatchify(x)
        return x.float().clamp(-1.0, 1.0), state

    def _latent_stats(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Official `scale = [mean, 1/std]`, shaped for [B, z, T, h, w]."""
        kw = dict(dtype=self.dtype, device=self.device)
        mean = torch.tensor(self.cfg.latents_mean, **kw).view(1, -1, 1, 1, 1)
        std = torch.tensor(self.cfg.latents_std, **kw).view(1, -1, 1, 1, 1)
        return mean, 1.0 / std

    # ---- cache layout ------------------------------------------------------

    def encoder_cache_spec(self, x_shape) -> list[CacheSlot]:
        """Names and shapes of the encoder cache for video of shape [B, 3, T, H, W] (T unused)."""
        b, c, _, h, w = x_shape
        twin = self._meta_twin()
        _, state = twin._encoder_step(torch.empty(b, c, 1, h, w, device="meta"), None, True, False)
        return [CacheSlot(n, tuple(t.shape)) for n, t in zip(state.names, state.new)]

    def decoder_cache_spec(self, z_shape) -> list[CacheSlot]:
        """Names and shapes of the decoder cache for latents of shape [B, z, T, h, w] (T unused)."""
        b, c, _, h, w = z_shape
        twin = self._meta_twin()
        _, state = twin._decoder_step(torch.empty(b, c, 1, h, w, device="meta"), None, True, False)
        return [CacheSlot(n, tuple(t.shape)) for n, t in zip(state.names, state.new)]

    def init_encoder_cache(self, x_shape, dtype: torch.dtype | None = None,
                           device: torch.device | str | None = None) -> list[torch.Tensor]:
        """Zero encoder cache (the official zero padding) for video of shape [B, 3, T, H, W]."""
        return self._zeros(self.encoder_cache_spec(x_shape), dtype, device)

    def init_decoder_cache(self, z_shape, dtype: torch.dtype | None = None,
                           device: torch.device | str | None = None) -> list[torch.Tensor]:
        """Zero decoder cache (the official zero padding) for latents of shape [B, z, T, h, w]."""
        return self._zeros(self.decoder_cache_spec(z_shape), dtype, device)

    def _zeros(self, spec, dtype, device) -> list[torch.Tensor]:
        dtype = dtype or self.dtype
        device = self.device if device is None else device
        return [torch.zeros(s.shape, dtype=dtype, device=device) for s in spec]

    def _meta_twin(self) -> "WanVAE":
        """A weightless copy for shape inference: running it costs no compute or memory."""
        with torch.device("meta"):
            return WanVAE(self.cfg)

    # ---- whole videos --------------------------------------------------------

    def encode(self, video: torch.Tensor, normalize: bool = False) -> torch.Tensor:
        """Video [B, 3, 4k+1, H, W] in [-1, 1] -> mu [B, z, k+1, H/s, W/s] float32.

        normalize=True applies the official `(mu - mean) / std`.
        """
        self._check_video(video)
        t = video.shape[2]
        chunks = [video[:, :, :1]] + [video[:, :, i:i + ENCODE_CHUNK] for i in range(1, t, ENCODE_CHUNK)]
        cache, out = None, []
        for i, chunk in enumerate(chunks):
            mu, cache = self.encoder_step(chunk, cache, first=i == 0, normalize=normalize)
            out.append(mu)
        return torch.cat(out, dim=2)

    def decode(self, z: torch.Tensor, normalize: bool = False) -> torch.Tensor:
        """Latents [B, z, T, h, w] -> video [B, 3, 1+4(T-1), h·s, w·s] float32 clamped to [-1, 1].

        normalize=True un-normalises first (`z·std + mean`), as the official decode.
        """
        if z.dim() != 5 or z.shape[1] != self.cfg.z_dim:
            raise BadInputError(f"latents must be [B, {self.cfg.z_dim}, T, h, w], got {list(z.shape)}")
        cache, out = None, []
        for i in range(z.shape[2]):
            video, cache = self.decoder_step(z[:, :, i:i + 1], cache, first=i == 0, normalize=normalize)
            out.append(video)
        return torch.cat(out, dim=2)

    def _check_video(self, video: torch.Tensor) -> None:
        s = self.cfg.spatial_stride
        if video.dim() != 5 or video.shape[1] != 3:
            raise BadInputError(f"video must be [B, 3, T, H, W], got {list(video.shape)}")
        t, h, w = video.shape[2:]
        if t % ENCODE_CHUNK != 1:
            raise BadInputError(f"video frame count must be 4k+1, got {t}")
        if h % s or w % s:
            raise BadInputError(f"video size must be a multiple of {s}, got {h}x{w}")


def _check_chunk(x: torch.Tensor, first: bool, frames: int) -> None:
    # The first chunk skips the temporal resampling, so it must be exactly one frame.
    t = x.shape[2]
    if (first and t != 1) or (not first and t % frames):
        need = "1 frame" if first else f"a multiple of {frames} frames"
        raise ValueError(f"{'first' if first else 'later'} chunk needs {need}, got {t}")


def load_vae(tensors: Mapping[str, torch.Tensor] | Iterable[tuple[str, torch.Tensor]],
             cfg: VAEConfig, dtype: torch.dtype = torch.float32) -> WanVAE:
    """Build a WanVAE on the meta device and load stock-named tensors into it (in `dtype`)."""
    with torch.device("meta"):
        model = WanVAE(cfg)
    what = f"Wan{cfg.version} VAE"
    return load_strict(model, as_state_dict(tensors, what), what, dtype=dtype)
