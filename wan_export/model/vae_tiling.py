"""Spatially tiled decode and encode for the causal Wan VAE (2.1 and 2.2).

The frame is cut into overlapping square tiles (in latent units, spread evenly
from edge to edge so every tile has the same shape). Tiles are
processed one after the other; each runs through all time chunks with its own
causal cache, so working memory (activations and cache) follows the tile size,
not the frame size. Each chunk's output is added into the output canvas with
separable linear ramps over the overlaps and divided by the summed weights at
the end. Where one tile covers a pixel its weight is exactly 1; a tile that
covers the whole frame gives the untiled result bit for bit.

The driver is backend-agnostic: it calls `step(chunk, cache, first) -> (out,
cache)`, the reference model's `decoder_step` / `encoder_step` or ONNX graphs.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from ..errors import BadInputError
from ..progress import null
from .config import VAEConfig
from .vae import ENCODE_CHUNK

DEFAULT_TILE, DEFAULT_OVERLAP = 32, 8      # latents: diffusers' 256/64 px for 2.1 (2.2: 512/128 px)
BLEND = "linear"

Step = Callable[[torch.Tensor, object, bool], tuple[torch.Tensor, object]]


@dataclass(frozen=True)
class Tiling:
    """A square tiling in latent units: tiles of `tile`, `overlap` shared with each neighbour."""

    tile: int
    overlap: int

    @property
    def stride(self) -> int:
        return self.tile - self.overlap

    def to_dict(self, spatial_stride: int) -> dict:
        s = spatial_stride
        return {"tile": self.tile * s, "overlap": self.overlap * s, "stride": self.stride * s,
                "tile_latent": self.tile, "overlap_latent": self.overlap, "stride_latent": self.stride,
                "blend": BLEND}


def receptive_field(cfg: VAEConfig) -> int:
    """Latents seen by the latent-resolution convolutions (decoder conv1 + middle; encoder middle +
    head), the smallest tile worth decoding: 11 for every released Wan VAE. The middle attention
    is global and no tile contains it."""
    from .vae import WanVAE
    from .vae_blocks import CausalConv3d

    with torch.device("meta"):
        vae = WanVAE(cfg)
    parts = ((vae.decoder.conv1, vae.decoder.middle), (vae.encoder.middle, vae.encoder.head))
    return max(1 + sum(m.kernel_size[1] - 1 for p in group for m in p.modules() if isinstance(m, CausalConv3d))
               for group in parts)


def tiling_from_pixels(cfg: VAEConfig, tile: int | None, overlap: int | None) -> Tiling | None:
    """Check pixel --tile/--overlap against the VAE and convert them; tile 0 means untiled."""
    s = cfg.spatial_stride
    if tile == 0:
        return None
    tile = DEFAULT_TILE * s if tile is None else tile
    overlap = tile // 4 // s * s if overlap is None else overlap     # diffusers' 1/4
    for what, v in (("tile", tile), ("overlap", overlap)):
        if v < 0 or v % s:
            raise BadInputError(f"--{what} {v} is not a multiple of the Wan{cfg.version} VAE's spatial "
                                f"stride {s} px")
    rf = receptive_field(cfg)
    if tile // s < rf:
        raise BadInputError(f"--tile {tile} px is smaller than the Wan{cfg.version} VAE's receptive field "
                            f"({rf * s} px = {rf} latents)")
    if 2 * overlap > tile:
        raise BadInputError(f"--overlap {overlap} px is more than half the tile ({tile} px)")
    return Tiling(tile // s, overlap // s)


def starts(size: int, tile: int, stride: int) -> list[int]:
    """Tile starts along one axis: the fewest tiles of `tile` with steps <= `stride` that cover
    `size`, spread evenly from 0 to size - tile (so the last tile ends on the edge)."""
    if size <= tile:
        return [0]
    n = -(-(size - tile) // max(stride, 1)) + 1
    return [(k * (size - tile) + (n - 1) // 2) // (n - 1) for k in range(n)]


def ramps(size: int, tile: int, stride: int, scale: int) -> list[torch.Tensor]:
    """Blend weight of each tile along one axis, in output units (latent positions × scale).

    A linear ramp over each overlap with a neighbour, measured at pixel centres: in the
    overlap of two tiles the weights sum to 1; elsewhere a tile's weight is 1.
    """
    first = starts(size, tile, stride)
    length = min(tile, size) * scale
    out = []
    for k, a in enumerate(first):
        x = torch.arange(length, dtype=torch.float64) + 0.5
        w = torch.ones(length, dtype=torch.float64)
        if k > 0:
            span = (first[k - 1] + tile - a) * scale
            w = torch.minimum(w, (x / span).clamp(max=1.0))
        if k + 1 < len(first):
            span = (a + tile - first[k + 1]) * scale
            w = torch.minimum(w, ((length - x) / span).clamp(max=1.0))
        out.append(w.float())
    return out


def time_chunks(frames: int, part: str) -> list[tuple[slice, slice]]:
    """(input, output) time slices per step: decode 1 latent -> 1 then 4 frames; encode the reverse."""
    k = ENCODE_CHUNK
    if part == "decoder":
        return [(slice(i, i + 1), slice(0 if i == 0 else 1 + k * (i - 1), 1 + k * i)) for i in range(frames)]
    steps = 1 + (frames - 1) // k
    return [(slice(0 if i == 0 else 1 + k * (i - 1), 1 + k * i), slice(i, i + 1)) for i in range(steps)]


def run_tiled(step: Step, x: torch.Tensor, tiling: Tiling | None, *, part: str, scale: int,
              progress=null) -> torch.Tensor:
    """Drive `step` over tiles × time chunks of x [B, C, T, H, W] and blend the outputs.

    `scale` is the VAE's spatial stride; tiles are in latent units, so the input scale is 1
    (decoder) or `scale` (encoder) and the output scale the other.
    """
    s_in, s_out = (1, scale) if part == "decoder" else (scale, 1)
    b, _, t = x.shape[:3]
    h, w = x.shape[3] // s_in, x.shape[4] // s_in
    tile = tiling or Tiling(max(h, w), 0)
    ys, xs = starts(h, tile.tile, tile.stride), starts(w, tile.tile, tile.stride)
    wy, wx = ramps(h, tile.tile, tile.stride, s_out), ramps(w, tile.tile, tile.stride, s_out)
    chunks = time_chunks(t, part)
    t_out = chunks[-1][1].stop
    canvas = total = None
    th, tw = min(tile.tile, h), min(tile.tile, w)
    with progress(len(ys) * len(xs) * len(chunks), f"{part[:-2]}ing") as update:
        for i, y0 in enumerate(ys):
            for j, x0 in enumerate(xs):
                weight = wy[i][:, None] * wx[j][None, :]
                region = (slice(y0 * s_out, (y0 + th) * s_out), slice(x0 * s_out, (x0 + tw) * s_out))
                cache = None
                for c, (src, dst) in enumerate(chunks):
                    piece = x[:, :, src, y0 * s_in:(y0 + th) * s_in, x0 * s_in:(x0 + tw) * s_in]
                    out, cache = step(piece, cache, c == 0)
                    if canvas is None:
                        canvas = out.new_zeros(b, out.shape[1], t_out, h * s_out, w * s_out)
                        total = torch.zeros(h * s_out, w * s_out, dtype=out.dtype, device=out.device)
                    weight = weight.to(out.device)
                    canvas[:, :, dst, region[0], region[1]] += out * weight
                    update(1)
                total[region] += weight
                del cache
    if len(ys) * len(xs) > 1:
        canvas /= total
    return canvas


def decode_tiled(vae, z: torch.Tensor, tiling: Tiling | None, normalize: bool = False,
                 progress=null) -> torch.Tensor:
    """Latents [B, z, T, h, w] -> video [B, 3, 1+4(T-1), h·s, w·s], tile by tile (None: one tile)."""
    if z.dim() != 5 or z.shape[1] != vae.cfg.z_dim:
        raise BadInputError(f"latents must be [B, {vae.cfg.z_dim}, T, h, w] for the Wan{vae.cfg.version} "
                            f"VAE, got {list(z.shape)}")

    def step(chunk, cache, first):
        return vae.decoder_step(chunk, cache, first, normalize)

    with torch.no_grad():
        return run_tiled(step, z, tiling, part="decoder", scale=vae.cfg.spatial_stride, progress=progress)


def encode_tiled(vae, video: torch.Tensor, tiling: Tiling | None, normalize: bool = False,
                 progress=null) -> torch.Tensor:
    """Video [B, 3, 4k+1, H, W] in [-1, 1] -> mu [B, z, k+1, H/s, W/s], tile by tile (None: one tile)."""
    vae._check_video(video)

    def step(chunk, cache, first):
        return vae.encoder_step(chunk, cache, first, normalize)

    with torch.no_grad():
        return run_tiled(step, video, tiling, part="encoder", scale=vae.cfg.spatial_stride, progress=progress)
