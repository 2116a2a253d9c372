"""`wan-export calibrate`: run the official pipeline over prompts and write the CALIB file.

prompts -> tokenizer -> UMT5 -> the DiT(s) over the whole official denoising trajectory
with classifier-free guidance (A14B: each expert on its own timestep range), with
forward hooks recording every block Linear's input statistics and attention amax.
Prompt i gets noise seed `seed + i`, so a torchrun split gives the same trajectories
and, folded in prompt order, the same bytes.
"""
from __future__ import annotations

import hashlib
import math
import os
import time
from dataclasses import replace

import numpy as np

from wan_export import __version__
from wan_export.calibration import calibfile, distributed
from wan_export.calibration.prompts import load_prompts, prompt_set_sha256
from wan_export.calibration.stats import LayerStats, merge_all
from wan_export.errors import BadInputError
from wan_export.progress import null

DTYPES = {"fp32": "float32", "bf16": "bfloat16", "fp16": "float16"}
CFG_BRANCHES = 2


def parse_size(size: str | None) -> tuple[int, int] | None:
    if size is None:
        return None
    try:
        w, h = (int(v) for v in size.lower().split("x"))
    except ValueError:
        raise BadInputError(f"--size must be WxH (e.g. 832x480), got {size!r}") from None
    if w < 1 or h < 1:
        raise BadInputError(f"--size must be positive, got {size!r}")
    return w, h


def _check_request(output: str, steps, overwrite: bool, save_activations: int) -> None:
    if not str(output).endswith(".safetensors"):
        raise BadInputError("the calibration file must be a .safetensors path", output)
    if os.path.exists(output) and not overwrite:
        raise BadInputError("output exists (use --overwrite)", output)
    if steps is not None and steps < 1:
        raise BadInputError(f"--steps must be >= 1, got {steps}")
    if save_activations < 0:
        raise BadInputError(f"--save-activations must be >= 0, got {save_activations}")


def dit_sha256(pipe_src) -> str:
    """sha256 over the DiT tensors of a release, sorted by (slot, name): layout-independent."""
    from wan_export.release import open_input

    rel = open_input(str(pipe_src))
    h = hashlib.sha256()
    for slot, comp in sorted(rel.dits.items()):
        for info in sorted(comp.table.infos(), key=lambda i: i.name):
            h.update(f"{slot}\0{info.name}\0{info.dtype}\0{list(info.shape)}\0".encode())
            h.update(memoryview(np.ascontiguousarray(comp.table.read(info.name)).reshape(-1).view(np.uint8)))
    return h.hexdigest()


def _texts(pipe, prompts, context_file):
    """(per-prompt context tensors or None, negative context or None, prompt-set sha256)."""
    if context_file is None:
        return None, None, prompt_set_sha256(prompts)
    ctx, neg = load_context(context_file)
    from wan_export.hashing import file_sha256

    return ctx, neg, file_sha256(context_file)


def load_image(path: str):
    """An image file as a [3, H, W] float tensor in [-1, 1] (the pipeline resizes it)."""
    import torch
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as im:
            arr = np.asarray(im.convert("RGB"), dtype=np.float32)
    except FileNotFoundError:
        raise BadInputError("no such file", path) from None
    except (UnidentifiedImageError, OSError) as e:
        raise BadInputError(f"not a readable image ({e.__class__.__name__})", path) from None
    return torch.from_numpy(arr / 127.5 - 1.0).permute(2, 0, 1).contiguous()


def load_context(path: str):
    """A precomputed-embeddings file: `prompt_embeds` [N, L, D] (+ `negative_prompt_embeds` [L, D])."""
    import torch

    from wan_export.safetensors_io import SafetensorsFile

    try:
        f = SafetensorsFile(path)
    except FileNotFoundError:
        raise BadInputError("no such file", path) from None
    names = {i.name: i for i in f.infos()}
    if "prompt_embeds" not in names or len(names["prompt_embeds"].shape) != 3:
        raise BadInputError("a --context file needs 'prompt_embeds' [N, L, 4096]", path)
    pe = torch.from_numpy(np.array(f.read("prompt_embeds"), dtype=np.float32))
    neg = names.get("negative_prompt_embeds")
    ne = None if neg is None else torch.from_numpy(np.array(f.read("negative_prompt_embeds"), dtype=np.float32))
    if not torch.isfinite(pe).all() or (ne is not None and not torch.isfinite(ne).all()):
        raise BadInputError("embeddings contain NaN/Inf", path)
    return list(pe), ne


def calibrate(src: str, output: str, *, prompts: str | None = None, num_prompts: int | None = None,
              steps: int | None = None, size: str | None = None, frames: int | None = None,
              guidance: float | None = None, shift: float | None = None, solver: str | None = None,
              seed: int = 0, image: str | None = None,
              last_image: str | None = None, device: str = "cpu", dtype: str = "fp32",
              save_activations: int = 0, imatrix_gguf: str | None = None, context: str | None = None,
              attention: bool = True, overwrite: bool = False, progress=null) -> dict:
    """Calibrate SRC's DiT(s); write CALIB to `output` (rank 0 only under torchrun)."""
    import torch

    from wan_export import pipeline as pl
    from wan_export.calibration.recorder import Recorder

    _check_request(output, steps, overwrite, save_activations)
    wh = parse_size(size)
    world = distributed.world_from_env()
    dev = distributed.init(world, device)
    texts = None if context else load_prompts(prompts, num_prompts)
    t0 = time.monotonic()
    pipe = pl.load_pipeline(src, device=dev, dtype=getattr(torch, DTYPES[dtype]), text=context is None)
    overrides = {k: v for k, v in {"steps": steps, "frames": frames, "guidance": guidance, "shift": shift,
                                   "solver": solver,
                                   "width": wh and wh[0], "height": wh and wh[1], "seed": seed}.items()
                 if v is not None}
    settings = pl.official_settings(pipe.variant, **overrides)
    cond = {k: load_image(v) for k, v in (("image", image), ("last_image", last_image)) if v}
    ctx_list, neg_ctx, set_sha = _texts(pipe, texts, context)
    n = len(ctx_list) if ctx_list is not None else len(texts)
    if context and num_prompts:
        n = min(n, num_prompts)
    if neg_ctx is None:
        neg_ctx = pl.encode_prompts(pipe, [settings.negative_prompt])[0]
    per_prompt = math.ceil(save_activations / n) if save_activations else 0
    rows_per_call = math.ceil(per_prompt / (settings.steps * CFG_BRANCHES)) if per_prompt else 0
    recorder = Recorder(pipe.dits, rows_per_call=rows_per_call, attention=attention)
    total: dict = {}
    forwards = 0
    with recorder.active(), progress(math.ceil(n / world.size) * settings.steps, "calibrate") as update:
        for idx in distributed.rounds(n, world):
            part = None
            if idx is not None:
                recorder.begin_prompt()
                ctx = ctx_list[idx] if ctx_list is not None else pl.encode_prompts(pipe, [texts[idx]])[0]
                with torch.no_grad():
                    pl.generate(pipe, ctx, neg_ctx, replace(settings, seed=seed + idx), **cond,
                                on_step=lambda *a: update(1))
                part = recorder.end_prompt()
                for s in part.values():
                    if isinstance(s, LayerStats):
                        s.thin(per_prompt)
            for p in distributed.gather(part, world):
                if p is not None:
                    total = merge_all([total, p])
                    forwards += settings.steps * CFG_BRANCHES
    for s in total.values():
        if isinstance(s, LayerStats):
            s.thin(save_activations)
    seconds = time.monotonic() - t0
    meta = _metadata(pipe, settings, src, set_sha, n, seed, recorder, total)
    result = {"output": os.path.abspath(output), "layers": len(recorder.layer_names), "prompts": n,
              "steps": settings.steps, "dit_forwards": forwards, "ranks": world.size,
              "seconds": round(seconds, 3), "forwards_per_second": round(forwards / seconds, 3) if seconds else None,
              "imatrix_gguf": imatrix_gguf and os.path.abspath(imatrix_gguf)}
    if world.is_writer:
        calibfile.write_calib(output, calib_tensors(total, recorder.layer_names), meta)
        if imatrix_gguf:
            write_imatrix(imatrix_gguf, total, recorder.layer_names, meta)
    distributed.barrier(world)
    distributed.finish(world)
    return result


def calib_tensors(total: dict, layer_names: list[str]) -> list[tuple[str, np.ndarray]]:
    """Every layer's tensors in hook order, then attention amax, names sorted within."""
    missing = [n for n in layer_names if n not in total]
    if missing:
        raise BadInputError(f"no activations reached {len(missing)} layers, e.g. {missing[0]}")
    out = []
    for name in layer_names:
        out += calibfile.layer_tensors(name, total[name])
    for name in sorted(k for k in total if k.endswith(".sdpa")):
        out += calibfile.attention_tensors(name, total[name])
    return out


def write_imatrix(path: str, total: dict, layer_names: list[str], meta: dict) -> None:
    from wan_export.calibration.imatrix import SDCPP_PREFIX, write_imatrix_gguf

    entries = []
    for name in layer_names:
        slot, _, stock = name.partition(".") if name.startswith(calibfile.EXPERTS) else (None, "", name)
        prefix = SDCPP_PREFIX[slot]
        s = total[name]
        entries.append((f"{prefix}{stock}.weight", s.sum2.numpy().astype(np.float32), s.count))
    write_imatrix_gguf(path, entries, [f"wan-export prompts {meta['prompt_set_sha256'][:16]}"],
                       chunk_count=meta["num_prompts"] * meta["steps"] * CFG_BRANCHES, chunk_size=1)


def _metadata(pipe, settings, src, set_sha, n, seed, recorder, total) -> dict:
    rows = [s.sample().shape[0] for s in total.values() if isinstance(s, LayerStats) and s.samples]
    return {"source_sha256": dit_sha256(src), "variant": pipe.variant,
            "layers": recorder.layer_names, "prompt_set_sha256": set_sha, "num_prompts": n,
            "steps": settings.steps, "size": [settings.width, settings.height], "frames": settings.frames,
            "guidance": settings.guidance, "shift": settings.shift, "seed": seed, "solver": settings.solver,
            "boundary_ratio": settings.boundary_ratio, "tool_version": __version__,
            "experts": [s for s in pipe.dits if s != "dit"],
            "activation_rows": max(rows, default=0)}


def render_text(result: dict) -> str:
    lines = [f"wrote {result['output']}  ({result['layers']} layers, {result['prompts']} prompts x "
             f"{result['steps']} steps, {result['dit_forwards']} DiT forwards in {result['seconds']:.1f} s"
             + (f" on {result['ranks']} ranks" if result["ranks"] > 1 else "") + ")"]
    if result.get("imatrix_gguf"):
        lines.append(f"wrote {result['imatrix_gguf']}  (llama.cpp imatrix GGUF)")
    return "\n".join(lines)
