"""Analytic FLOPs, causal-cache bytes and peak activations of the Wan VAE (2.1 and 2.2), chunk by chunk.

A small tracer walks the same layer list as `model/vae_blocks.py` builds from a
VAEConfig, tracking (channels, frames, height, width) through one chunk: the
first chunk (1 frame, no temporal resampling) and a later one (decode: 1 latent
frame -> 4 frames; encode: 4 frames -> 1 latent frame). Whole videos are first
+ (n-1) x later. Every conv is counted as FlopCounterMode counts it, every cache
slot as `WanVAE.{de,en}coder_cache_spec` lists it (tests/cost/test_vae_cost.py).
"""
from __future__ import annotations

from dataclasses import dataclass, field

from wan_export.cost.ops import SOFTMAX_OPS, Ops
from wan_export.model.config import VAEConfig

CACHE_T = 2
NORM_SILU_OPS = 8        # RMS norm + SiLU per element before each 3x3x3 conv (our estimate)
COPY_OPS = 2             # a copy (cat with the cached frames, pad, nearest upsample): one read + one write


@dataclass
class Tracer:
    """The running shape of one chunk and what it has cost so far."""

    c: int
    t: int
    h: int
    w: int
    first: bool
    batch: int = 1
    ops: Ops = field(default_factory=Ops)
    cache: list[tuple[int, ...]] = field(default_factory=list)   # slot shapes, in execution order
    peak: int = 0                                                # elements live at once (estimate)

    @property
    def size(self) -> int:
        return self.batch * self.c * self.t * self.h * self.w

    def _live(self, elements: int) -> None:
        self.peak = max(self.peak, elements)

    def causal_conv(self, c_out: int, kt: int, ks: int, held: int = 0) -> None:
        """CausalConv3d with kernel (kt, ks, ks), stride 1, 'same' spatial padding."""
        context = kt - 1
        n_in, positions = self.size, self.batch * self.t * self.h * self.w
        if context:
            self.cache.append((self.batch, self.c, context, self.h, self.w))
            self.ops += Ops(elementwise=COPY_OPS * n_in * (self.t + context) // self.t)
        self.ops += Ops(conv=2 * positions * self.c * c_out * kt * ks * ks)
        self._live(held + n_in * (self.t + context) // self.t + positions * c_out)
        self.c = c_out

    def residual(self, c_out: int) -> None:
        shortcut = self.batch * self.t * self.h * self.w * c_out
        if self.c != c_out:
            self.ops += Ops(conv=2 * shortcut * self.c)
        self.ops += Ops(elementwise=NORM_SILU_OPS * self.size)
        self.causal_conv(c_out, 3, 3, held=shortcut + self.size)
        self.ops += Ops(elementwise=NORM_SILU_OPS * self.size + shortcut)
        self.causal_conv(c_out, 3, 3, held=shortcut)

    def attention(self) -> None:
        """Single-head spatial attention per frame, 1x1 Conv2d qkv and proj."""
        frames, hw, c = self.batch * self.t, self.h * self.w, self.c
        self.ops += Ops(conv=2 * frames * hw * c * (3 * c + c), attention=4 * frames * hw * hw * c,
                        softmax=SOFTMAX_OPS * frames * hw * hw, elementwise=NORM_SILU_OPS * self.size)
        self._live(frames * hw * hw + 5 * self.size)

    def conv2d(self, c_out: int, h_out: int, w_out: int) -> None:
        positions = self.batch * self.t * h_out * w_out
        self.ops += Ops(conv=2 * positions * self.c * c_out * 9)
        self._live(self.size + positions * c_out)
        self.c, self.h, self.w = c_out, h_out, w_out

    def upsample(self, mode: str, up_dim: int) -> None:
        if mode == "upsample3d":
            if self.first:
                self.cache.append((self.batch, self.c, CACHE_T, self.h, self.w))   # zeros, 'Rep'
            else:
                c = self.c
                self.causal_conv(2 * c, 3, 1)
                self.c, self.t = c, 2 * self.t
        self._live(self.size * 4 + self.batch * self.t * 4 * self.h * self.w * up_dim)
        self.ops += Ops(elementwise=COPY_OPS * 4 * self.size)
        self.conv2d(up_dim, 2 * self.h, 2 * self.w)

    def downsample(self, mode: str) -> None:
        self.conv2d(self.c, (self.h + 1 - 3) // 2 + 1, (self.w + 1 - 3) // 2 + 1)
        if mode == "downsample3d":
            self.cache.append((self.batch, self.c, 1, self.h, self.w))
            if not self.first:
                t_out = (self.t + 1 - 3) // 2 + 1
                positions = self.batch * t_out * self.h * self.w
                self.ops += Ops(conv=2 * positions * self.c * self.c * 3)
                self.t = t_out


def _levels(cfg: VAEConfig, decoder: bool):
    """(in, out, temporal, resample?) per level, as Encoder3d / Decoder3d build them."""
    mult = cfg.dim_mult
    if decoder:
        dims = [cfg.dec_dim * u for u in (mult[-1], *reversed(mult))]
        flags = tuple(reversed(cfg.temporal_downsample))
    else:
        dims = [cfg.dim * u for u in (1, *mult)]
        flags = cfg.temporal_downsample
    last = len(mult) - 1
    for i, (a, b) in enumerate(zip(dims[:-1], dims[1:])):
        yield i, a, b, i < len(flags) and bool(flags[i]), i != last


def decode_chunk(cfg: VAEConfig, h: int, w: int, first: bool, batch: int = 1) -> Tracer:
    """One latent frame [B, z, 1, h, w] through conv2 and the decoder."""
    tr = Tracer(cfg.z_dim, 1, h, w, first, batch)
    tr.causal_conv(cfg.z_dim, 1, 1)                        # conv2
    mult = cfg.dim_mult
    d0 = cfg.dec_dim * mult[-1]
    tr.causal_conv(d0, 3, 3)
    tr.residual(d0), tr.attention(), tr.residual(d0)
    is22 = cfg.version == "2.2"
    for _, _, out, temporal, up in _levels(cfg, decoder=True):
        for _ in range(cfg.num_res_blocks + 1):
            tr.residual(out)
        if up:
            tr.upsample("upsample3d" if temporal else "upsample2d", out if is22 else out // 2)
    tr.ops += Ops(elementwise=NORM_SILU_OPS * tr.size)
    tr.causal_conv(cfg.in_channels, 3, 3)
    return tr


def encode_chunk(cfg: VAEConfig, h: int, w: int, first: bool, batch: int = 1) -> Tracer:
    """One video chunk [B, 3, 1 (first) or 4, H, W] (H, W in pixels) through the encoder and conv1."""
    p = 2 if cfg.version == "2.2" else 1                     # 2.2 space-to-depth before the encoder
    tr = Tracer(cfg.in_channels, 1 if first else 4, h // p, w // p, first, batch)
    tr.causal_conv(cfg.dim, 3, 3)
    for _, _, out, temporal, down in _levels(cfg, decoder=False):
        for _ in range(cfg.num_res_blocks):
            tr.residual(out)
        if down:
            tr.downsample("downsample3d" if temporal else "downsample2d")
    c = tr.c
    tr.residual(c), tr.attention(), tr.residual(c)
    tr.ops += Ops(elementwise=NORM_SILU_OPS * tr.size)
    tr.causal_conv(2 * cfg.z_dim, 3, 3)
    tr.causal_conv(2 * cfg.z_dim, 1, 1)                    # conv1
    return tr


@dataclass(frozen=True)
class VAECost:
    ops: Ops
    cache_bytes: int          # the causal feat_cache carried between chunks
    activation_bytes: int     # peak live activations inside one chunk (estimate)
    output_bytes: int         # the decoded video (or latents) accumulated over the chunks
    chunks: int


def _whole(first: Tracer, later: Tracer | None, chunks: int, out_elems: int, dtype_bytes: int) -> VAECost:
    ops = first.ops + (later.ops * (chunks - 1) if later else Ops())
    slots = later.cache if later else first.cache
    cache = sum(a * b * c * d * e for a, b, c, d, e in slots) * dtype_bytes
    peak = max(first.peak, later.peak if later else 0) * dtype_bytes
    return VAECost(ops, cache, peak, out_elems * dtype_bytes, chunks)


def decode_cost(cfg: VAEConfig, lat_t: int, lat_h: int, lat_w: int, batch: int = 1,
                dtype_bytes: int = 4) -> VAECost:
    first = decode_chunk(cfg, lat_h, lat_w, True, batch)
    later = decode_chunk(cfg, lat_h, lat_w, False, batch) if lat_t > 1 else None
    s = cfg.spatial_stride
    frames = 1 + cfg.temporal_stride * (lat_t - 1)
    return _whole(first, later, lat_t, batch * 3 * frames * lat_h * s * lat_w * s, dtype_bytes)


def encode_cost(cfg: VAEConfig, frames: int, height: int, width: int, batch: int = 1,
                dtype_bytes: int = 4) -> VAECost:
    chunks = 1 + (frames - 1) // cfg.temporal_stride
    first = encode_chunk(cfg, height, width, True, batch)
    later = encode_chunk(cfg, height, width, False, batch) if chunks > 1 else None
    s = cfg.spatial_stride
    return _whole(first, later, chunks, batch * cfg.z_dim * chunks * (height // s) * (width // s), dtype_bytes)
