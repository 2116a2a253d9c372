"""Building blocks of the Wan causal 3D VAE: 2.1 (`vae.py`) and 2.2 (`vae2_2.py`).

Module and parameter names mirror the official code, so stock state dicts load
strictly. The official mutable `feat_cache` list is replaced by `StepCache`:
every causal layer reads its slot from an input list and writes a fresh tensor
to an output list, so one chunk is a pure function (x, cache) -> (y, cache').
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from .config import VAEConfig

CACHE_T = 2  # frames of left context a 3-tap causal conv needs


class StepCache:
    """The explicit causal state of one chunk.

    Slots are read and written in execution order, one per cached layer. On
    the first chunk nothing is read (zeros are implied, as the official zero
    padding); every step writes all slots, always with the same shapes.
    """

    def __init__(self, cache: list[torch.Tensor] | None, first: bool):
        if not first and cache is None:
            raise ValueError("a non-first step needs the cache of the previous step")
        self.first = first
        self._old = None if first else list(cache)
        self.new: list[torch.Tensor] = []
        self.names: list[str] = []

    def read(self, frames: int) -> torch.Tensor:
        i = len(self.new)  # a slot is always read just before it is written
        if i >= len(self._old):
            raise ValueError(f"cache has {len(self._old)} slots, the step needs more")
        old = self._old[i]
        if old.shape[2] != frames:
            raise ValueError(f"cache slot {i} has {old.shape[2]} frames, expected {frames}")
        return old

    def write(self, name: str, t: torch.Tensor) -> None:
        self.names.append(name)
        self.new.append(t)

    def causal(self, name: str, x: torch.Tensor, frames: int) -> torch.Tensor:
        """x with `frames` frames of left context: zeros first, then the cached tail."""
        if self.first:
            x = F.pad(x, (0, 0, 0, 0, frames, 0))
        else:
            x = torch.cat([self.read(frames), x], dim=2)
        self.write(name, x[:, :, -frames:])
        return x

    def finish(self) -> list[torch.Tensor]:
        if self._old is not None and len(self._old) != len(self.new):
            raise ValueError(f"cache has {len(self._old)} slots, the step uses {len(self.new)}")
        return self.new


def _triple(v) -> tuple[int, int, int]:
    return tuple(v) if isinstance(v, (tuple, list)) else (v, v, v)


class CausalConv3d(nn.Conv3d):
    """Conv3d with 2·p_t frames of left-only temporal padding, supplied by a StepCache."""

    def __init__(self, in_dim: int, out_dim: int, kernel, stride=1, padding=0):
        p = _triple(padding)
        super().__init__(in_dim, out_dim, kernel, stride=stride, padding=(0, p[1], p[2]))
        self.context = 2 * p[0]
        self.slot = ""  # qualified module name, set by WanVAE; names the cache slot

    def step(self, x: torch.Tensor, cache: StepCache) -> torch.Tensor:
        if self.context:
            x = cache.causal(self.slot, x, self.context)
        return self(x)


class RMSNorm(nn.Module):
    """Official `RMS_norm`: L2-normalise over channels, times sqrt(C) and gamma."""

    def __init__(self, dim: int, images: bool = True):
        super().__init__()
        self.scale = dim ** 0.5
        self.gamma = nn.Parameter(torch.ones(dim, *((1, 1) if images else (1, 1, 1))))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # Half-precision norms over 1024 channels overflow; fp32 is identical for fp32 input.
        y = F.normalize(x.float() if x.dtype in (torch.float16, torch.bfloat16) else x, dim=1)
        return y.to(x.dtype) * self.scale * self.gamma


class Upsample2x(nn.Module):
    """2x nearest upsampling; 'nearest' equals the official 'nearest-exact' at integer
    factors and, unlike it, exports with every ONNX exporter."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.interpolate(x, scale_factor=2.0, mode="nearest")


def _per_frame(fn: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """Apply a 2D module to every frame of [b, c, t, h, w]."""
    b, c, t, h, w = x.shape
    y = fn(x.transpose(1, 2).reshape(b * t, c, h, w))
    return y.reshape(b, t, y.shape[1], y.shape[2], y.shape[3]).transpose(1, 2)


class Resample(nn.Module):
    """Official `Resample`: 2x spatial up/down, plus a 2x temporal `time_conv` in the 3d modes."""

    def __init__(self, dim: int, mode: str, up_dim: int | None = None):
        super().__init__()
        self.mode = mode
        if mode in ("upsample2d", "upsample3d"):
            self.resample = nn.Sequential(Upsample2x(), nn.Conv2d(dim, up_dim, 3, padding=1))
            if mode == "upsample3d":
                self.time_conv = CausalConv3d(dim, dim * 2, (3, 1, 1), padding=(1, 0, 0))
        elif mode in ("downsample2d", "downsample3d"):
            self.resample = nn.Sequential(nn.ZeroPad2d((0, 1, 0, 1)), nn.Conv2d(dim, dim, 3, stride=(2, 2)))
            if mode == "downsample3d":
                self.time_conv = CausalConv3d(dim, dim, (3, 1, 1), stride=(2, 1, 1))
        else:
            raise ValueError(f"unknown resample mode {mode!r}")

    def forward(self, x: torch.Tensor, cache: StepCache) -> torch.Tensor:
        if self.mode == "upsample3d":
            x = self._double_frames(x, cache)
        x = _per_frame(self.resample, x)
        if self.mode == "downsample3d":
            x = self._halve_frames(x, cache)
        return x

    def _double_frames(self, x: torch.Tensor, cache: StepCache) -> torch.Tensor:
        b, c, t, h, w = x.shape
        if cache.first:
            # Official 'Rep': the first chunk skips time_conv and the next chunk
            # still pads with zeros, i.e. the state after it is all zeros.
            cache.write(self.time_conv.slot, x.new_zeros(b, c, CACHE_T, h, w))
            return x
        y = self.time_conv.step(x, cache)  # [b, 2c, t, h, w]: two output frames per input frame
        return y.reshape(b, 2, c, t, h, w).permute(0, 2, 3, 1, 4, 5).reshape(b, c, 2 * t, h, w)

    def _halve_frames(self, x: torch.Tensor, cache: StepCache) -> torch.Tensor:
        tail = x[:, :, -1:]
        if cache.first:
            # The first chunk (one frame) passes through unchanged.
            cache.write(self.time_conv.slot, tail)
            return x
        y = self.time_conv(torch.cat([cache.read(1), x], dim=2))
        cache.write(self.time_conv.slot, tail)
        return y


class ResidualBlock(nn.Module):
    """norm → SiLU → conv3³ → norm → SiLU → dropout → conv3³; a 1³ shortcut if channels change."""

    def __init__(self, in_dim: int, out_dim: int):
        super().__init__()
        self.residual = nn.Sequential(
            RMSNorm(in_dim, images=False), nn.SiLU(), CausalConv3d(in_dim, out_dim, 3, padding=1),
            RMSNorm(out_dim, images=False), nn.SiLU(), nn.Dropout(0.0),
            CausalConv3d(out_dim, out_dim, 3, padding=1))
        self.shortcut = CausalConv3d(in_dim, out_dim, 1) if in_dim != out_dim else nn.Identity()

    def forward(self, x: torch.Tensor, cache: StepCache) -> torch.Tensor:
        h = self.shortcut(x)
        r = self.residual
        x = r[2].step(r[1](r[0](x)), cache)
        x = r[6].step(r[4](r[3](x)), cache)
        return x + h


class AttentionBlock(nn.Module):
    """Single-head spatial self-attention per frame (middle block only)."""

    def __init__(self, dim: int):
        super().__init__()
        self.norm = RMSNorm(dim)
        self.to_qkv = nn.Conv2d(dim, dim * 3, 1)
        self.proj = nn.Conv2d(dim, dim, 1)
        nn.init.zeros_(self.proj.weight)

    def forward(self, x: torch.Tensor, cache: StepCache | None = None) -> torch.Tensor:
        identity = x
        b, c, t, h, w = x.shape
        x = self.norm(x.transpose(1, 2).reshape(b * t, c, h, w))
        qkv = self.to_qkv(x).reshape(b * t, 1, c * 3, h * w).permute(0, 1, 3, 2).contiguous()
        q, k, v = qkv.chunk(3, dim=-1)
        x = F.scaled_dot_product_attention(q, k, v)
        x = self.proj(x.squeeze(1).permute(0, 2, 1).reshape(b * t, c, h, w))
        return x.reshape(b, t, c, h, w).transpose(1, 2) + identity


class AvgDown3D(nn.Module):
    """2.2 parameter-free shortcut: space/time-to-channel, then mean over channel groups."""

    def __init__(self, in_dim: int, out_dim: int, factor_t: int, factor_s: int = 1):
        super().__init__()
        self.out_dim, self.ft, self.fs = out_dim, factor_t, factor_s
        self.group = in_dim * factor_t * factor_s * factor_s // out_dim

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        ft, fs = self.ft, self.fs
        x = F.pad(x, (0, 0, 0, 0, (ft - x.shape[2] % ft) % ft, 0))
        b, c, t, h, w = x.shape
        x = x.reshape(b, c, t // ft, ft, h // fs, fs, w // fs, fs).permute(0, 1, 3, 5, 7, 2, 4, 6)
        x = x.reshape(b, self.out_dim, self.group, t // ft, h // fs, w // fs)
        return x.mean(dim=2)


class DupUp3D(nn.Module):
    """2.2 parameter-free shortcut: repeat channels, then channel-to-space/time."""

    def __init__(self, in_dim: int, out_dim: int, factor_t: int, factor_s: int = 1):
        super().__init__()
        self.out_dim, self.ft, self.fs = out_dim, factor_t, factor_s
        self.repeats = out_dim * factor_t * factor_s * factor_s // in_dim

    def forward(self, x: torch.Tensor, first: bool) -> torch.Tensor:
        ft, fs = self.ft, self.fs
        b, _, t, h, w = x.shape
        x = x.repeat_interleave(self.repeats, dim=1)
        x = x.reshape(b, self.out_dim, ft, fs, fs, t, h, w).permute(0, 1, 5, 2, 6, 3, 7, 4)
        x = x.reshape(b, self.out_dim, t * ft, h * fs, w * fs)
        # The first chunk's time_conv is skipped, so drop the duplicated leading frames.
        return x[:, :, ft - 1:] if first else x


class DownResidualBlock(nn.Module):
    """2.2 `Down_ResidualBlock`: residual blocks + Resample, with an AvgDown3D shortcut."""

    def __init__(self, in_dim: int, out_dim: int, mult: int, temporal: bool, down: bool):
        super().__init__()
        self.avg_shortcut = AvgDown3D(in_dim, out_dim, 2 if temporal else 1, 2 if down else 1)
        blocks = []
        for _ in range(mult):
            blocks.append(ResidualBlock(in_dim, out_dim))
            in_dim = out_dim
        if down:
            blocks.append(Resample(out_dim, "downsample3d" if temporal else "downsample2d"))
        self.downsamples = nn.Sequential(*blocks)

    def forward(self, x: torch.Tensor, cache: StepCache) -> torch.Tensor:
        skip = self.avg_shortcut(x)
        for block in self.downsamples:
            x = block(x, cache)
        return x + skip


class UpResidualBlock(nn.Module):
    """2.2 `Up_ResidualBlock`: residual blocks + Resample, with a DupUp3D shortcut."""

    def __init__(self, in_dim: int, out_dim: int, mult: int, temporal: bool, up: bool):
        super().__init__()
        self.avg_shortcut = DupUp3D(in_dim, out_dim, 2 if temporal else 1, 2) if up else None
        blocks = []
        for _ in range(mult):
            blocks.append(ResidualBlock(in_dim, out_dim))
            in_dim = out_dim
        if up:
            blocks.append(Resample(out_dim, "upsample3d" if temporal else "upsample2d", up_dim=out_dim))
        self.upsamples = nn.Sequential(*blocks)

    def forward(self, x: torch.Tensor, cache: StepCache) -> torch.Tensor:
        y = x
        for block in self.upsamples:
            y = block(y, cache)
        return y if self.avg_shortcut is None else y + self.avg_shortcut(x, cache.first)


def _middle(dim: int) -> nn.Sequential:
    return nn.Sequential(ResidualBlock(dim, dim), AttentionBlock(dim), ResidualBlock(dim, dim))


def _head(dim: int, out_dim: int) -> nn.Sequential:
    return nn.Sequential(RMSNorm(dim, images=False), nn.SiLU(), CausalConv3d(dim, out_dim, 3, padding=1))


def _temporal(flags: tuple[bool, ...], i: int) -> bool:
    return i < len(flags) and bool(flags[i])


class Encoder3d(nn.Module):
    """Official `Encoder3d`: 2.1 flat `downsamples`, 2.2 nested Down_ResidualBlocks."""

    def __init__(self, cfg: VAEConfig):
        super().__init__()
        dims = [cfg.dim * u for u in (1, *cfg.dim_mult)]
        last = len(cfg.dim_mult) - 1
        self.conv1 = CausalConv3d(cfg.in_channels, dims[0], 3, padding=1)
        blocks: list[nn.Module] = []
        for i, (in_dim, out_dim) in enumerate(zip(dims[:-1], dims[1:])):
            temporal = _temporal(cfg.temporal_downsample, i)
            if cfg.version == "2.2":
                blocks.append(DownResidualBlock(in_dim, out_dim, cfg.num_res_blocks, temporal, i != last))
                continue
            for _ in range(cfg.num_res_blocks):
                blocks.append(ResidualBlock(in_dim, out_dim))
                in_dim = out_dim
            if i != last:
                blocks.append(Resample(out_dim, "downsample3d" if temporal else "downsample2d"))
        self.downsamples = nn.Sequential(*blocks)
        self.middle = _middle(dims[-1])
        self.head = _head(dims[-1], 2 * cfg.z_dim)

    def forward(self, x: torch.Tensor, cache: StepCache) -> torch.Tensor:
        x = self.conv1.step(x, cache)
        for block in (*self.downsamples, *self.middle):
            x = block(x, cache)
        return self.head[2].step(self.head[1](self.head[0](x)), cache)


class Decoder3d(nn.Module):
    """Official `Decoder3d`: 2.1 flat `upsamples`, 2.2 nested Up_ResidualBlocks."""

    def __init__(self, cfg: VAEConfig):
        super().__init__()
        mult = cfg.dim_mult
        dims = [cfg.dec_dim * u for u in (mult[-1], *reversed(mult))]
        up_t = tuple(reversed(cfg.temporal_downsample))
        last = len(mult) - 1
        self.conv1 = CausalConv3d(cfg.z_dim, dims[0], 3, padding=1)
        self.middle = _middle(dims[0])
        blocks: list[nn.Module] = []
        for i, (in_dim, out_dim) in enumerate(zip(dims[:-1], dims[1:])):
            temporal = _temporal(up_t, i)
            if cfg.version == "2.2":
                blocks.append(UpResidualBlock(in_dim, out_dim, cfg.num_res_blocks + 1, temporal, i != last))
                continue
            if i > 0:
                in_dim //= 2  # the 2.1 Resample before this level halved the channels
            for _ in range(cfg.num_res_blocks + 1):
                blocks.append(ResidualBlock(in_dim, out_dim))
                in_dim = out_dim
            if i != last:
                mode = "upsample3d" if temporal else "upsample2d"
                blocks.append(Resample(out_dim, mode, up_dim=out_dim // 2))
        self.upsamples = nn.Sequential(*blocks)
        self.head = _head(dims[-1], cfg.in_channels)

    def forward(self, x: torch.Tensor, cache: StepCache) -> torch.Tensor:
        x = self.conv1.step(x, cache)
        for block in (*self.middle, *self.upsamples):
            x = block(x, cache)
        return self.head[2].step(self.head[1](self.head[0](x)), cache)


def patchify(x: torch.Tensor, p: int = 2) -> torch.Tensor:
    """2.2 space-to-depth: [b, c, t, h·p, w·p] -> [b, c·p·p, t, h, w], channel order (c, pw, ph)."""
    b, c, t, h, w = x.shape
    x = x.reshape(b, c, t, h // p, p, w // p, p).permute(0, 1, 6, 4, 2, 3, 5)
    return x.reshape(b, c * p * p, t, h // p, w // p)


def unpatchify(x: torch.Tensor, p: int = 2) -> torch.Tensor:
    """Inverse of `patchify`."""
    b, cpp, t, h, w = x.shape
    x = x.reshape(b, cpp // (p * p), p, p, t, h, w).permute(0, 1, 4, 5, 3, 6, 2)
    return x.reshape(b, cpp // (p * p), t, h * p, w * p)
