"""`wan-export vae decode|encode`: latents file <-> video, tiled, on a torch, ONNX or TensorRT VAE.

Backends give the tiling driver (`model/vae_tiling.run_tiled`) one `step(chunk, cache, first)`:
torch runs the reference model's decoder_step / encoder_step; onnx runs the first/step graphs
of a `wan-export onnx` folder as its vae.json describes (at the exported tile shape when the
graphs were exported with --vae-tile); trt needs the TensorRT runtime and an NVIDIA GPU.
Latents are the DiT's (normalised) unless `raw`: z·std + mean before decoding, (mu - mean)/std
after encoding, for every backend alike.
"""
from __future__ import annotations

import os
import time
from dataclasses import dataclass

import numpy as np

from wan_export.errors import BadInputError, UnsupportedError
from wan_export.progress import null

BACKENDS = ("torch", "onnx", "trt")
FPS = {"2.1": 16, "2.2": 24}          # Wan2.1 generates 16 fps, Wan2.2 TI2V-5B 24 fps


@dataclass
class Backend:
    name: str
    cfg: object                  # VAEConfig
    steps: dict                  # part -> step(chunk, cache, first)
    fixed_tile: int | None = None  # latents, when the graphs are static at a tile shape
    fixed_overlap: int | None = None


def open_backend(src: str, backend: str, part: str) -> Backend:
    if backend not in BACKENDS:
        raise UnsupportedError(f"unknown backend {backend!r} (choose from {', '.join(BACKENDS)})")
    return {"torch": _torch_backend, "onnx": _onnx_backend, "trt": _trt_backend}[backend](src, part)


def _torch_backend(src: str, part: str) -> Backend:
    from wan_export.model.vae import load_vae
    from wan_export.release import open_input
    from wan_export.validators.parity import torch_state

    comp = open_input(src).only("vae")
    vae = load_vae(torch_state(comp.table), comp.config)
    step = vae.decoder_step if part == "decoder" else vae.encoder_step
    return Backend("torch", comp.config, {part: lambda x, cache, first: step(x, cache, first)})


def _onnx_backend(src: str, part: str) -> Backend:
    import onnxruntime as ort
    import torch

    from wan_export.converters import onnx_specs as S
    from wan_export.model.config import VAEConfig
    from wan_export.release import read_json

    folder = src if os.path.isdir(src) else os.path.dirname(os.path.abspath(src))
    side_path = os.path.join(folder, S.VAE_SIDECAR)
    if not os.path.isfile(side_path):
        raise BadInputError(f"no {S.VAE_SIDECAR}: not a wan-export ONNX VAE folder", src)
    side, manifest = read_json(side_path), read_json(os.path.join(folder, S.MANIFEST))
    if part not in side:
        raise BadInputError(f"has no VAE {part} graphs (export with --component vae-{part})", folder)
    cfg = VAEConfig.from_dict(next(c for c in manifest["configs"].values() if c.get("z_dim") == side["z_dim"]))
    proto = side[part]
    first, step = (ort.InferenceSession(os.path.join(folder, proto[k]), providers=["CPUExecutionProvider"])
                   for k in ("first", "step"))
    dtype = {"float32": np.float32, "float16": np.float16}.get(side["cache_dtype"], np.float32)

    def run(x, cache, is_first):
        res = (first if is_first else step).run(None, {proto["input"]: x.numpy().astype(np.float32), **(cache or {})})
        return torch.from_numpy(res[0].astype(np.float32)), {c["input"]: r.astype(dtype)
                                                             for c, r in zip(proto["cache"], res[1:])}

    tiling = side.get("tiling")
    return Backend("onnx", cfg, {part: run}, tiling and tiling["tile_latent"], tiling and tiling["overlap_latent"])


def _trt_backend(src: str, part: str) -> Backend:
    import importlib.util

    if importlib.util.find_spec("tensorrt_rtx") is None and importlib.util.find_spec("tensorrt") is None:
        raise UnsupportedError("--backend trt needs TensorRT (pip install 'wan-export[trt]') and an NVIDIA GPU; "
                               "none found")
    import torch

    if not torch.cuda.is_available():
        raise UnsupportedError("--backend trt needs an NVIDIA GPU; CUDA is not available")
    raise UnsupportedError("--backend trt: this build has no TensorRT VAE runtime (wan_export.runtime)")


def _tiling(backend: Backend, tile: int | None, overlap: int | None):
    from wan_export.model.vae_tiling import Tiling, tiling_from_pixels

    s = backend.cfg.spatial_stride
    if backend.fixed_tile is None:
        return tiling_from_pixels(backend.cfg, tile, overlap)
    fixed = Tiling(backend.fixed_tile, backend.fixed_overlap)
    if tile not in (None, fixed.tile * s) or overlap not in (None, fixed.overlap * s):
        raise BadInputError(f"the ONNX graphs were exported at --vae-tile {fixed.tile * s} "
                            f"--vae-overlap {fixed.overlap * s} px; --tile/--overlap must match")
    return fixed


def _check_output(path: str, overwrite: bool) -> None:
    if os.path.exists(path) and not overwrite and (not os.path.isdir(path) or os.listdir(path)):
        raise BadInputError("output exists (use --overwrite)", path)


def _stats(cfg):
    import torch

    view = (1, -1, 1, 1, 1)
    return torch.tensor(cfg.latents_mean).view(view), torch.tensor(cfg.latents_std).view(view)


def _check_fits(backend: Backend, h: int, w: int, path: str) -> None:
    if backend.fixed_tile is not None and min(h, w) < backend.fixed_tile:
        raise BadInputError(f"latent size {h}x{w} is smaller than the exported tile {backend.fixed_tile}; "
                            f"export the ONNX VAE with a smaller --vae-tile", path)


def decode_file(latents: str, output: str, vae: str, *, tile=None, overlap=None, backend="torch",
                raw=False, fps=None, overwrite=False, progress=null) -> dict:
    """Decode a latents file to an .mp4 or a folder of PNG frames."""
    import torch

    from wan_export.model.vae_tiling import run_tiled
    from wan_export.video_io import read_latents, to_uint8, write_video

    start = time.perf_counter()
    _check_output(output, overwrite)
    z = read_latents(latents)
    be = open_backend(vae, backend, "decoder")
    cfg = be.cfg
    if z.shape[1] != cfg.z_dim:
        raise BadInputError(f"latents have {z.shape[1]} channels but the Wan{cfg.version} VAE takes {cfg.z_dim}",
                            latents)
    tiling = _tiling(be, tile, overlap)
    _check_fits(be, z.shape[3], z.shape[4], latents)
    z = torch.from_numpy(z)
    if not raw:
        mean, std = _stats(cfg)
        z = z * std + mean
    with torch.no_grad():
        video = run_tiled(be.steps["decoder"], z, tiling, part="decoder", scale=cfg.spatial_stride,
                          progress=progress)
    frames = to_uint8(video.numpy())
    kind = write_video(output, frames, fps or FPS[cfg.version], overwrite)
    return _result(output, kind, be, tiling, frames.shape, start)


def encode_file(video_path: str, output: str, vae: str, *, tile=None, overlap=None, backend="torch",
                raw=False, overwrite=False, progress=null) -> dict:
    """Encode an .mp4 or a PNG folder (4k+1 frames, sides multiples of the VAE stride) to latents."""
    import torch

    from wan_export.atomic import check_output_file
    from wan_export.model.vae_tiling import run_tiled
    from wan_export.video_io import LATENT_EXTS, from_uint8, read_video, write_latents

    start = time.perf_counter()
    if os.path.splitext(output)[1].lower() not in LATENT_EXTS:
        raise BadInputError(f"latents output must be {' or '.join(LATENT_EXTS)}", output)
    check_output_file(output, overwrite)
    frames = read_video(video_path)
    be = open_backend(vae, backend, "encoder")
    cfg, s = be.cfg, be.cfg.spatial_stride
    t, h, w = frames.shape[:3]
    if t % 4 != 1:
        raise BadInputError(f"video has {t} frames; the VAE encodes 4k+1 (e.g. {t - (t - 1) % 4})", video_path)
    if h % s or w % s:
        raise BadInputError(f"video is {w}x{h}; the Wan{cfg.version} VAE needs sides that are multiples of {s}",
                            video_path)
    tiling = _tiling(be, tile, overlap)
    _check_fits(be, h // s, w // s, video_path)
    with torch.no_grad():
        mu = run_tiled(be.steps["encoder"], torch.from_numpy(from_uint8(frames)), tiling, part="encoder",
                       scale=s, progress=progress)
    if not raw:
        mean, std = _stats(cfg)
        mu = (mu - mean) / std
    write_latents(output, mu.numpy(), overwrite)
    return _result(output, "latents", be, tiling, tuple(mu.shape), start)


def _result(output, kind, be, tiling, shape, start) -> dict:
    s = be.cfg.spatial_stride
    return {"output": os.path.abspath(output), "kind": kind, "backend": be.name, "vae": f"Wan{be.cfg.version}",
            "shape": list(shape), "tiling": tiling.to_dict(s) if tiling else None,
            "seconds": round(time.perf_counter() - start, 2)}


def render_text(result: dict) -> str:
    t = result["tiling"]
    how = f"tiles {t['tile']} px, overlap {t['overlap']} px" if t else "untiled"
    return (f"{result['vae']} VAE ({result['backend']}, {how}) -> {result['output']} "
            f"({result['kind']}, shape {result['shape']}, {result['seconds']} s)")
