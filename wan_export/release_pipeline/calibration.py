"""The release's calibration job: one CALIB file, DIST/calibration/calib.safetensors, shared by
every calibrated artifact (quantized writers' input scales, GGUF imatrix, SVDQuant samples).

It is made once per DIST and reused while the recipe's [calibration] settings and the source
are unchanged (a stamp beside it records both), so `--only` jobs of a CI fan-out that download
the calibration job's output do not recompute it; recomputing gives the same bytes anyway.
With `gpus` > 1 it runs under torchrun (`--device cuda`, one GPU per rank).
"""
from __future__ import annotations

import json
import os
import subprocess
import sys

from wan_export.errors import BadInputError

CALIB_FILE = os.path.join("calibration", "calib.safetensors")


def _options(settings: dict, folder: str) -> dict:
    s = dict(settings)
    size = s.get("size", [832, 480])
    w, h = (size, size) if isinstance(size, int) else size
    rel = {k: (None if s.get(k) in (None, "builtin") else os.path.join(folder, s[k]))
           for k in ("prompts", "image", "last_image")}
    return {"num_prompts": s.get("num_prompts", 64), "steps": s.get("steps", 8), "size": f"{w}x{h}",
            "frames": s.get("frames", 17), "guidance": s.get("guidance"), "shift": s.get("shift"),
            "solver": s.get("solver", "unipc"), "seed": s.get("seed", 0),
            "save_activations": s.get("save_activations", 0), **rel}


def calibrate(src: str, output: str, settings: dict, folder: str, progress=None) -> None:
    """Write the CALIB file of the recipe's [calibration] settings (paths relative to `folder`)."""
    opts = _options(settings, folder)
    gpus = int(settings.get("gpus", 1))
    if gpus <= 1:
        from wan_export.calibration.run import calibrate as run

        run(src, output, overwrite=True, **opts, **({"progress": progress} if progress else {}))
        return
    args = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", str(gpus),
            "-m", "wan_export", "calibrate", src, "-o", output, "--overwrite", "--device", "cuda", "-q"]
    for k, v in opts.items():
        if v is not None:
            args += [f"--{k.replace('_', '-')}", str(v)]
    p = subprocess.run(args, capture_output=True, text=True)
    if p.returncode:
        last = (p.stderr.strip().splitlines() or ["torchrun failed"])[-1]
        raise BadInputError(f"calibration under torchrun failed: {last}", output)


def _synthetic_frames(folder: str, settings: dict) -> dict:
    """A synthetic model's calibration gets synthetic first / last frames (image variants need them)."""
    from wan_export.synthetic import write_image

    size = settings.get("size", [832, 480])
    w, h = (size, size) if isinstance(size, int) else size
    return {k: settings.get(k) or os.path.abspath(write_image(os.path.join(folder, f"{k}.png"), w, h, seed=i + 1))
            for i, k in enumerate(("image", "last_image"))}


def ensure(ctx) -> str:
    """The release's CALIB path, made now unless an up-to-date one is there."""
    path = os.path.join(ctx.dist, CALIB_FILE)
    stamp = {"calibration": ctx.recipe.calibration, "source": ctx.source["sha256"]}
    stamp_path = path + ".json"
    if os.path.isfile(path) and os.path.isfile(stamp_path):
        with open(stamp_path, encoding="utf-8") as f:
            if json.load(f) == stamp:
                return path
    os.makedirs(os.path.dirname(path), exist_ok=True)
    settings = dict(ctx.recipe.calibration or {})
    if "synthetic" in ctx.recipe.source:
        settings.update(_synthetic_frames(os.path.dirname(path), settings))
    calibrate(ctx.src, path, settings, ctx.recipe.folder, ctx.progress)
    with open(stamp_path, "w", encoding="utf-8") as f:
        json.dump(stamp, f, sort_keys=True)
    return path
