"""`validate --sampling`: sample through the artifact and through the reference from the same noise.

Both sides run the official sampler (pipeline.generate) with the source's VAE
and UMT5; only the DiT weights differ, loaded through the artifact's
back-loader. A diffusers folder samples with its own scheduler (built by
diffusers from `scheduler/scheduler_config.json`) and its own boundary_ratio,
and the reference with the official UniPC on diffusers' sigma grid and the
official shift, so a broken scheduler config shows as a diverging trajectory
and as a named field. Reported: per-step latent rel-L2, final latents, and the
PSNR of the decoded video (reference VAE), plus preview frames for plots.
"""
from __future__ import annotations

import dataclasses
import os

from wan_export.errors import BadInputError
from wan_export.validators.report import Report, Tolerance

# Measured on the tiny releases (CPU, fp32 compute): a lossless artifact repeats the reference
# bit for bit except through diffusers' scheduler (per-step rel-L2 <= 1e-6); lossy weights
# (bf16 from fp32, fp8, GGUF) drift along the trajectory.
TOLERANCES = {
    "exact": (Tolerance(max_rel_l2=1e-5), Tolerance(min_psnr_db=80.0)),
    "lossy": (Tolerance(max_rel_l2=0.15), Tolerance(min_psnr_db=25.0)),
}
DEFAULT_PROMPT = "A cat walks on the grass, realistic style."
PREVIEW_FRAMES = 3


def diffusers_scheduler_problems(path: str, variant) -> list[str]:
    """Scheduler / expert fields of a diffusers folder that differ from Wan's official ones."""
    from wan_export.converters.diffusers_configs import SCHEDULER
    from wan_export.release import read_json

    out = []
    sched_path = os.path.join(path, "scheduler", "scheduler_config.json")
    if not os.path.isfile(sched_path):
        return [f"{sched_path}: missing (official: {SCHEDULER['_class_name']})"]
    sched = read_json(sched_path)
    where = "scheduler/scheduler_config.json"
    for key in ("_class_name", "use_flow_sigmas", "prediction_type", "solver_order", "solver_type",
                "predict_x0", "final_sigmas_type"):
        if sched.get(key) != SCHEDULER[key]:
            got = "missing" if key not in sched else f"{sched[key]!r}"
            out.append(f"{where}: {key} is {got}; the official value is {SCHEDULER[key]!r}")
    shifts = _official_shifts(variant)
    if variant is not None and sched.get("flow_shift") not in shifts:
        out.append(f"{where}: flow_shift is {sched.get('flow_shift')!r}; the official value is "
                   f"{' or '.join(map(str, shifts))}")
    index_path = os.path.join(path, "model_index.json")
    if variant is not None and os.path.isfile(index_path):
        got = read_json(index_path).get("boundary_ratio")
        if got != variant.boundary_ratio:
            out.append(f"model_index.json: boundary_ratio is {got!r}; the official value is {variant.boundary_ratio!r}")
    return out


def _official_shifts(variant) -> tuple[float, ...]:
    if variant is None:
        return ()
    from wan_export.pipeline import I2V_480P_SHIFT

    return (variant.flow_shift, I2V_480P_SHIFT) if variant.name == "wan2.1-i2v-14b" else (variant.flow_shift,)


def _is_diffusers(path: str) -> bool:
    from wan_export.release import read_json

    if os.path.isfile(os.path.join(path, "model_index.json")):
        return True
    cfg = os.path.join(path, "config.json")
    return os.path.isfile(cfg) and str(read_json(cfg).get("_class_name", "")).startswith(
        ("WanTransformer", "WanVACETransformer"))


def artifact_dits(path: str, ref_slots: list[str], ref_states: dict) -> tuple[dict, str]:
    """{pipeline slot: stock state} of the artifact's DiT(s), and how they were loaded."""
    from wan_export.pipeline import SLOTS
    from wan_export.validators.parity import torch_state

    if _is_diffusers(path):
        from wan_export.validators.diffusers_loader import load_diffusers_artifact

        found = {SLOTS[k]: v[1] for k, v in load_diffusers_artifact(path).items() if v[0] == "dit"}
        how = "diffusers (from_pretrained)"
    else:
        from wan_export.release import open_input

        found = {SLOTS[k]: torch_state(c.table) for k, c in open_input(path).dits.items()}
        how = "wan-export reader (stock names)"
    if set(found) == set(ref_slots):
        return {k: {n: t.float() for n, t in v.items()} for k, v in found.items()}, how
    if len(found) == 1 and len(ref_slots) == 2:       # one A14B expert file: match it to its expert
        state = {n: t.float() for n, t in next(iter(found.values())).items()}
        slot = min(ref_slots, key=lambda s: _distance(state, ref_states[s]))
        return {slot: state}, how + f"; one expert, matched to {slot} (the other from the source)"
    raise BadInputError(f"the artifact has DiT slots {sorted(found)} but the source {sorted(ref_slots)}", path)


def _distance(a: dict, b: dict) -> float:
    names = [n for n in a if n in b and a[n].shape == b[n].shape and n.endswith("modulation")]
    if not names:
        return float("inf")
    return float(sum((a[n].float() - b[n].float()).norm() for n in names))


def _exact(art: dict, ref: dict) -> bool:
    import torch

    return all(set(art[s]) == set(ref[s]) and all(torch.equal(art[s][n], ref[s][n].float()) for n in art[s])
               for s in art)


class DiffusersSolver:
    """A diffusers scheduler behind the solver interface of pipeline.generate (timesteps, step)."""

    def __init__(self, scheduler, steps: int):
        scheduler.set_timesteps(steps)
        self.scheduler, self.timesteps, self._i = scheduler, scheduler.timesteps, 0

    def step(self, velocity, latents):
        t = self.timesteps[self._i]
        self._i += 1
        return self.scheduler.step(velocity, t, latents, return_dict=False)[0]


def _folder_scheduler(path: str, steps: int):
    import diffusers

    from wan_export.release import read_json

    cls_name = read_json(os.path.join(path, "scheduler", "scheduler_config.json")).get("_class_name")
    cls = getattr(diffusers, str(cls_name), None)
    if cls is None or not hasattr(cls, "set_timesteps"):
        raise BadInputError(f"scheduler/scheduler_config.json: {cls_name!r} is not a diffusers scheduler", path)
    return DiffusersSolver(cls.from_pretrained(path, subfolder="scheduler", local_files_only=True), steps)


def _folder_boundary(path: str, settings):
    from wan_export.release import read_json

    if settings.boundary_ratio is None:
        return settings
    got = read_json(os.path.join(path, "model_index.json")).get("boundary_ratio")
    # diffusers runs `transformer` on every step when the folder has no boundary_ratio
    return dataclasses.replace(settings, boundary_ratio=0.0 if got is None else float(got))


def test_images(height: int, width: int):
    """Deterministic smooth first / last frames [3, H, W] in [-1, 1] for the image variants."""
    import torch

    y, x = torch.meshgrid(torch.linspace(-1, 1, height), torch.linspace(-1, 1, width), indexing="ij")
    first = torch.stack([x, y, (x * y).sin()]) * 0.8
    return first, first.flip(-1)


def _context(ref, prompt: str, negative: str):
    import torch

    from wan_export.pipeline import encode_prompts

    if ref.t5 is not None:
        return encode_prompts(ref, [prompt, negative]), "UMT5 of the source"
    g = torch.Generator().manual_seed(0)
    width = ref.config.text_dim
    return [torch.randn(24, width, generator=g), torch.randn(24, width, generator=g)], \
        "fixed random embeddings (the source has no usable UMT5 + tokenizer)"


def _run(pipe, ctx, s, noise, images, solver=None):
    from wan_export.pipeline import generate

    steps = []
    extra = {}
    mt = pipe.config.model_type
    if mt in ("i2v", "flf2v", "ti2v"):
        extra["image"] = images[0]
    if mt == "flf2v":
        extra["last_image"] = images[1]
    final = generate(pipe, ctx[0], ctx[1], s, noise=noise, solver=solver,
                     on_step=lambda i, t, slot, x: steps.append((int(t), slot, x.clone())), **extra)
    return final, steps


def _has_text(src) -> bool:
    t5 = src.components.get("t5")
    cfg = next(iter(src.dits.values())).config
    return t5 is not None and src.tokenizer_dir is not None and t5.config.dim == cfg.text_dim


def _frames_u8(video, indices) -> list:
    """Frames [H, W, 3] uint8 of a decoded video [1, 3, F, H, W] in [-1, 1]."""
    v = ((video[0].float().clamp(-1, 1) + 1) * 127.5).round().byte()
    return [v[:, i].permute(1, 2, 0).numpy() for i in indices]


def _video_metrics(ref_video, art_video) -> dict:
    """compare() plus PSNR on the [0, 1] pixel scale (peak 1)."""
    import math

    from wan_export.validators.metrics import compare

    m = compare(ref_video, art_video)
    mse = float(((ref_video.double() - art_video.double()) / 2).pow(2).mean())
    m["psnr_db"] = math.inf if mse == 0 else 10 * math.log10(1 / mse)
    return m


def validate_sampling(path: str, against: str, report: Report | None = None, *, steps: int | None = None,
                      size: tuple[int, int] | None = None, frames: int | None = None,
                      prompt: str | None = None, seed: int | None = None) -> Report:
    """Sample through the artifact and the reference; add the sampling checks to `report`."""
    from wan_export import pipeline as pl

    path, against = str(path), str(against)
    report = report or Report(path, against, "sampling")
    ref, art, kind, how = _pipelines(path, against)
    diffusers = _is_diffusers(path)
    m = ref.size_multiple
    width, height = size or (2 * m, 2 * m)
    s = pl.official_settings(ref.variant, steps=steps or 10, width=width, height=height, frames=frames or 5,
                             seed=seed, grid="diffusers" if diffusers else "wan")
    ctx, text_how = _context(ref, prompt or DEFAULT_PROMPT, s.negative_prompt)
    noise, images = pl.initial_noise(ref, s), test_images(s.height, s.width)
    art_settings, solver = s, None
    if diffusers:
        _scheduler_check(report, path, ref.info)
        solver, art_settings = _folder_scheduler(path, s.steps), _folder_boundary(path, s)
    ref_final, ref_steps = _run(ref, ctx, s, noise, images)
    art_final, art_steps = _run(art, ctx, art_settings, noise, images, solver)
    rows = _step_rows(ref_steps, art_steps)
    videos = pl.decode(ref, ref_final), pl.decode(ref, art_final)
    vm = _add_checks(report, rows, (ref_steps, art_steps), (ref_final, art_final), videos, s, TOLERANCES[kind])
    report.info |= {"sampling": f"{s.steps} steps {s.solver} shift {s.shift} on the {s.grid} grid, seed {s.seed}",
                    "sampling weights": f"{kind} ({how})", "sampling text": text_how}
    idx = sorted({0, (s.frames - 1) // 2, s.frames - 1})[:PREVIEW_FRAMES]
    step_tol, video_tol = TOLERANCES[kind]
    report.extra["sampling"] = {
        "settings": s.to_dict(), "artifact_settings": art_settings.to_dict(), "weights": kind,
        "timesteps": [r["timestep"] for r in rows], "experts": [r["expert"] for r in rows],
        "step_rel_l2": [r["rel_l2"] for r in rows], "video_psnr_db": vm["psnr_db"],
        "tolerance": {"step": dataclasses.asdict(step_tol), "video": dataclasses.asdict(video_tol)},
        "preview_frame_indices": idx,
        "preview_frames": {"reference": _frames_u8(videos[0], idx), "artifact": _frames_u8(videos[1], idx)},
    }
    return report


def _pipelines(path: str, against: str):
    """(reference pipeline, artifact pipeline sharing its VAE/UMT5/CLIP, "exact"|"lossy", how loaded)."""
    from wan_export import pipeline as pl
    from wan_export.model.dit import load_dit
    from wan_export.release import open_input

    src = open_input(against)
    if not src.dits or src.variant is None:
        raise BadInputError("the source has no DiT to sample with", against)
    ref = pl.load_pipeline(src, text=_has_text(src))
    ref_states = {slot: dit.state_dict() for slot, dit in ref.dits.items()}
    art_states, how = artifact_dits(path, list(ref.dits), ref_states)
    dits = {**ref.dits, **{k: load_dit(v, ref.dits[k].cfg) for k, v in art_states.items()}}
    kind = "exact" if _exact(art_states, ref_states) else "lossy"
    return ref, dataclasses.replace(ref, dits=dits), kind, how


def _scheduler_check(report: Report, path: str, variant) -> None:
    from wan_export.validators.comfyui import StructureCheck

    dash = {k: "-" for k in ("rel_l2", "cosine", "max_abs", "snr_db")}
    report.checks.append(StructureCheck("sampling scheduler config", dash, Tolerance(),
                                        "the folder's scheduler and expert settings vs Wan's",
                                        diffusers_scheduler_problems(path, variant)))


def _add_checks(report: Report, rows, steps, finals, videos, s, tolerances) -> dict:
    from wan_export.validators.metrics import compare

    step_tol, video_tol = tolerances
    worst = max(range(len(rows)), key=lambda i: rows[i]["rel_l2"])
    report.add(f"sampling latents, worst of {len(rows)} steps (step {worst})",
               compare(steps[0][worst][2], steps[1][worst][2]), step_tol)
    report.add("sampling final latents", compare(*finals), step_tol)
    vm = _video_metrics(*videos)
    report.add(f"sampling decoded video {s.width}x{s.height}x{s.frames} (reference VAE), "
               f"PSNR {vm['psnr_db']:.1f} dB", vm, video_tol)
    report.tables["sampling per step"] = rows
    return vm


def _step_rows(ref_steps, art_steps) -> list[dict]:
    from wan_export.validators.metrics import compare

    rows = []
    for i, ((t, slot, a), (t2, slot2, b)) in enumerate(zip(ref_steps, art_steps)):
        m = compare(a, b)
        rows.append({"step": i, "timestep": t, "expert": slot if slot == slot2 else f"{slot}/{slot2}",
                     "artifact_timestep": t2, "rel_l2": m["rel_l2"], "max_abs": m["max_abs"]})
    return rows
