"""Files of `wan-export vae`: latents (.safetensors / .npy) and video (.mp4 / a folder of PNG frames).

Video is uint8 RGB [T, H, W, 3] here and float [-1, 1] [1, 3, T, H, W] for the VAE. mp4 goes
through imageio-ffmpeg (the `[video]` extra; its wheel ships an ffmpeg binary), PNG through
Pillow. Every output is written under a temp name and renamed when complete.
"""
from __future__ import annotations

import os

import numpy as np

from wan_export.errors import BadInputError, UnsupportedError

LATENTS_NAME = "latents"
FRAME_PATTERN = "frame_{:05d}.png"
LATENT_EXTS, VIDEO_EXTS = (".safetensors", ".npy"), (".mp4",)
# x264 with one thread and ffmpeg's bitexact flags: the same frames give the same bytes
MP4_PARAMS = ["-threads", "1", "-fflags", "+bitexact", "-flags:v", "+bitexact", "-map_metadata", "-1"]


def _ext(path: str) -> str:
    return os.path.splitext(path)[1].lower()


# ---- latents -------------------------------------------------------------------------------

def read_latents(path: str) -> np.ndarray:
    """[1, C, T, h, w] float32 from .safetensors (tensor `latents` or the only one) or .npy."""
    if not os.path.isfile(path):
        raise BadInputError("no such file", path)
    ext = _ext(path)
    if ext == ".npy":
        try:
            arr = np.load(path, allow_pickle=False)
        except (OSError, ValueError) as e:
            raise BadInputError(f"not a readable .npy file ({e})", path) from None
    elif ext == ".safetensors":
        arr = _read_safetensors(path)
    else:
        raise BadInputError(f"latents must be {' or '.join(LATENT_EXTS)}", path)
    from wan_export.dtypes import FLOAT_CODES, cast, st_code

    try:
        code = st_code(arr)
    except (KeyError, ValueError, TypeError):
        code = None
    if code not in FLOAT_CODES:
        raise BadInputError(f"latents must be floating point, got {arr.dtype}", path)
    arr = np.asarray(cast(arr, "F32"))
    if arr.ndim == 4:
        arr = arr[None]
    if arr.ndim != 5 or arr.shape[0] != 1:
        raise BadInputError(f"latents must be [C, T, h, w] or [1, C, T, h, w], got {list(arr.shape)}", path)
    arr = arr.astype(np.float32)
    if not np.isfinite(arr).all():
        raise BadInputError("latents contain NaN or Inf", path)
    return arr


def _read_safetensors(path: str) -> np.ndarray:
    from wan_export.safetensors_io import SafetensorsFile

    src = SafetensorsFile(path)
    try:
        names = [i.name for i in src.infos()]
        if LATENTS_NAME not in names and len(names) != 1:
            raise BadInputError(f"expected one tensor or one named {LATENTS_NAME!r}, found {len(names)}", path)
        return np.array(src.read(LATENTS_NAME if LATENTS_NAME in names else names[0]))
    finally:
        src.close()


def write_latents(path: str, arr: np.ndarray, overwrite: bool = False) -> None:
    from wan_export.atomic import atomic_file, check_output_file

    ext = _ext(path)
    if ext not in LATENT_EXTS:
        raise BadInputError(f"latents output must be {' or '.join(LATENT_EXTS)}", path)
    check_output_file(path, overwrite)
    arr = np.ascontiguousarray(arr, dtype=np.float32)
    with atomic_file(path) as f:
        if ext == ".npy":
            np.save(f, arr, allow_pickle=False)
        else:
            from safetensors.numpy import save

            f.write(save({LATENTS_NAME: arr}))


# ---- video ---------------------------------------------------------------------------------

def to_uint8(video) -> np.ndarray:
    """[1, 3, T, H, W] float in [-1, 1] -> [T, H, W, 3] uint8."""
    v = np.asarray(video)[0].transpose(1, 2, 3, 0)
    return np.clip(np.rint((v + 1.0) * 127.5), 0, 255).astype(np.uint8)


def from_uint8(frames: np.ndarray) -> np.ndarray:
    """[T, H, W, 3] uint8 -> [1, 3, T, H, W] float32 in [-1, 1]."""
    return (frames.transpose(3, 0, 1, 2)[None].astype(np.float32) / 127.5 - 1.0)


def _ffmpeg(path: str):
    try:
        import imageio_ffmpeg
    except ImportError:
        raise UnsupportedError("mp4 needs imageio-ffmpeg (pip install 'wan-export[video]'); "
                               "or use a folder of PNG frames", path) from None
    return imageio_ffmpeg


def write_video(path: str, frames: np.ndarray, fps: int, overwrite: bool = False) -> str:
    """Write [T, H, W, 3] uint8 as .mp4 (H.264) or, for any other path, a folder of PNG frames."""
    from wan_export.atomic import atomic_dir, atomic_path

    if _ext(path) in VIDEO_EXTS:
        ff = _ffmpeg(path)
        with atomic_path(path, overwrite) as tmp:
            writer = ff.write_frames(tmp, (frames.shape[2], frames.shape[1]), fps=fps, codec="libx264",
                                     quality=8, macro_block_size=1, output_params=MP4_PARAMS)
            writer.send(None)
            for frame in frames:
                writer.send(np.ascontiguousarray(frame))
            writer.close()
        return "mp4"
    from PIL import Image

    with atomic_dir(path, overwrite) as tmp:
        for i, frame in enumerate(frames):
            Image.fromarray(frame, "RGB").save(os.path.join(tmp, FRAME_PATTERN.format(i)), optimize=False)
    return "png"


def read_video(path: str) -> np.ndarray:
    """[T, H, W, 3] uint8 from an .mp4 or a folder of same-sized PNG frames (sorted by name)."""
    if os.path.isdir(path):
        return _read_pngs(path)
    if not os.path.isfile(path):
        raise BadInputError("no such file or folder", path)
    if _ext(path) not in VIDEO_EXTS:
        raise BadInputError("video must be an .mp4 file or a folder of PNG frames", path)
    ff = _ffmpeg(path)
    try:
        reader = ff.read_frames(path)
        meta = next(reader)
        w, h = meta["size"]
        frames = [np.frombuffer(f, np.uint8).reshape(h, w, 3) for f in reader]
    except (OSError, RuntimeError, StopIteration, ValueError) as e:
        raise BadInputError(f"cannot read video ({' '.join(str(e).split())[:200]})", path) from None
    if not frames:
        raise BadInputError("video has no frames", path)
    return np.stack(frames)


def _read_pngs(folder: str) -> np.ndarray:
    from PIL import Image, UnidentifiedImageError

    names = sorted(n for n in os.listdir(folder) if n.lower().endswith(".png"))
    if not names:
        raise BadInputError("no PNG frames in the folder", folder)
    frames = []
    for n in names:
        p = os.path.join(folder, n)
        try:
            with Image.open(p) as im:
                frames.append(np.asarray(im.convert("RGB")))
        except (OSError, UnidentifiedImageError):
            raise BadInputError("not a readable PNG", p) from None
        if frames[-1].shape != frames[0].shape:
            raise BadInputError(f"frame size {frames[-1].shape[1]}x{frames[-1].shape[0]} differs from the first "
                                f"frame's {frames[0].shape[1]}x{frames[0].shape[0]}", p)
    return np.stack(frames)
