"""The cost of one Wan generation, stage by stage: UMT5, CLIP, VAE encode, DiT x steps x CFG, VAE decode.

`model_from_source` / `model_from_variant` give the configs (from tensor shapes, no
data read); `estimate` returns a plain dict (the `--json` result) with, per stage,
FLOPs by op class, weight / activation / feat_cache bytes and a roofline time, plus
totals, memory peaks and warnings. Precisions follow the official pipeline
(wan-architecture.md §4): UMT5 bf16, CLIP fp16, VAE fp32 (cuDNN convs in TF32),
DiT in the chosen format with bf16 attention.
"""
from __future__ import annotations

from dataclasses import dataclass

from wan_export.cost import formats, roofline
from wan_export.cost.gpus import GPU
from wan_export.cost.ops import Ops
from wan_export.cost.schedule import expert_steps
from wan_export.cost.transformer_flops import (clip_activation_bytes, clip_forward, dit_activation_bytes, dit_forward,
                                          dit_tokens, t5_activation_bytes, t5_forward)
from wan_export.cost.vae import decode_cost, encode_cost
from wan_export.errors import BadInputError
from wan_export.model.config import TEXT_LEN, UMT5_XXL, VAE21, VAE22, DiTConfig, T5Config, VAEConfig
from wan_export.variants import VARIANTS, Variant, guess_variant

CLIP_PARAMS = 1_193_014_785          # the whole open-clip file Wan loads (§7), fp16
VAE_PARAMS = {"2.1": 126_892_531, "2.2": 704_688_668}
# Largest size and frame count each variant was trained / released for (§4): beyond is extrapolation.
TRAINED = {"wan2.1-t2v-1.3b": (832, 480, 81), "wan2.1-vace-1.3b": (832, 480, 81),
           "wan2.2-ti2v-5b": (1280, 704, 121)}
TRAINED_DEFAULT = (1280, 720, 81)
# Frames the VAE encodes for conditioning, per model type (x videos): I2V/FLF2V the whole clip
# (first/last image + zeros), TI2V the first image only, VACE its inactive and reactive videos.
CONDITIONING = {"t2v": (0, 0), "i2v": (None, 1), "flf2v": (None, 1), "ti2v": (1, 1), "vace": (None, 2)}


@dataclass(frozen=True)
class Model:
    variant: Variant
    dit: DiTConfig
    experts: tuple[str, ...]
    vae: VAEConfig
    t5: T5Config
    label: str


def model_from_variant(name: str) -> Model:
    v = VARIANTS.get(name.lower())
    if v is None:
        raise BadInputError(f"unknown variant {name!r} (known: {', '.join(VARIANTS)})")
    experts = ("high_noise", "low_noise") if v.experts else ("dit",)
    return Model(v, v.config, experts, VAE22 if v.vae == "2.2" else VAE21, UMT5_XXL, v.name)


def model_from_source(src: str) -> Model:
    from wan_export.release import open_input

    rel = open_input(src)
    dits = [c for _, c in sorted(rel.dits.items())]
    if not dits:
        raise BadInputError("no Wan DiT found (the cost model needs the DiT's shapes)", rel.path)
    v = guess_variant(dits[0].config, experts=len(dits) == 2)
    experts = ("high_noise", "low_noise") if len(dits) == 2 else ("dit",)
    vae = next((c.config for c in rel.components.values() if c.kind == "vae"), None)
    t5 = next((c.config for c in rel.components.values() if c.kind == "t5"), None)
    return Model(v, dits[0].config, experts, vae or (VAE22 if v.vae == "2.2" else VAE21), t5 or UMT5_XXL,
                 dits[0].variant if len(dits) == 1 else v.name)


@dataclass(frozen=True)
class Request:
    width: int
    height: int
    frames: int
    steps: int
    cfg: bool
    batch: int
    fmt: formats.Format
    gpu: GPU
    shift: float
    gpus: int = 1
    parallel: str = "sequence"


def geometry(m: Model, width: int, height: int, frames: int) -> dict:
    s, (_, ph, pw) = m.vae.spatial_stride, m.dit.patch_size
    if width <= 0 or height <= 0 or width % (s * pw) or height % (s * ph):
        raise BadInputError(f"size {width}x{height} is not patchable: width and height must be positive "
                            f"multiples of {s * pw} (VAE stride {s} x DiT patch {pw})")
    if frames < 1 or (frames - 1) % m.vae.temporal_stride:
        raise BadInputError(f"--frames {frames}: the causal VAE needs {m.vae.temporal_stride}k+1 frames")
    lat = (1 + (frames - 1) // m.vae.temporal_stride, height // s, width // s)
    return {"latent": list(lat), "tokens": dit_tokens(m.dit, *lat)}


def _stage(name, runs, per_run: Ops, weights, act, timing, dtypes, cache=0, output=0, note="") -> dict:
    """A stage record; `timing` is the whole stage's time on one rank."""
    return {"name": name, "runs": runs, "flops": (per_run * runs).to_dict(), "flops_per_run": per_run.to_dict(),
            "weight_bytes": weights, "activation_bytes": act, "cache_bytes": cache, "output_bytes": output,
            "memory_bytes": weights + act + cache + output, "dtypes": dtypes, "time": timing.to_dict(),
            "note": note}


def _t5_stage(m: Model, r: Request) -> dict:
    seqs = r.batch * (2 if r.cfg else 1)
    ops = t5_forward(m.t5, TEXT_LEN, seqs)
    c = m.t5
    weights = 2 * (c.vocab * c.dim + c.num_layers * (3 * c.dim * c.dim_attn + c.dim_attn * c.dim + 3 * c.dim
                   * c.dim_ffn + 2 * c.dim + c.num_buckets * c.num_heads) + c.dim)
    dt = dict.fromkeys(("gemm", "attention", "conv"), "bf16")
    t = roofline.forward_time(ops, dt, weights, 2, r.gpu)
    note = f"{seqs} x {TEXT_LEN} tokens (prompt" + (" + negative prompt)" if r.cfg else ")")
    return _stage("umt5", 1, ops, weights, t5_activation_bytes(c, TEXT_LEN, seqs), t, dt, note=note)


def _clip_stage(m: Model, r: Request) -> dict | None:
    if not m.dit.image_branch:
        return None
    images = r.batch * (2 if m.dit.flf_pos_len else 1)
    ops = clip_forward(images)
    dt = dict.fromkeys(("gemm", "attention", "conv"), "fp16")
    t = roofline.forward_time(ops, dt, CLIP_PARAMS * 2, 2, r.gpu)
    return _stage("clip", 1, ops, CLIP_PARAMS * 2, clip_activation_bytes(images), t, dt,
                  note=f"{images} image(s) at 224 px, 31 of 32 blocks")


def _vae_weights(vae: VAEConfig) -> int:
    stock = VAE21 if vae.version == "2.1" else VAE22
    if vae == stock:
        return VAE_PARAMS[vae.version] * 4
    import math

    from wan_export.components import vae_shapes
    return sum(math.prod(s) for s in vae_shapes(vae).values()) * 4


VAE_DTYPES = {"gemm": "tf32", "attention": "fp32", "conv": "tf32"}   # fp32 VAE, cuDNN TF32 convs


def _vae_stage(name: str, cost, runs: int, vae: VAEConfig, gpu: GPU, note: str) -> dict:
    w = _vae_weights(vae)
    t = roofline.forward_time(cost.ops, VAE_DTYPES, w * cost.chunks, 4, gpu) * runs
    return _stage(name, runs, cost.ops, w, cost.activation_bytes, t, VAE_DTYPES, cost.cache_bytes,
                  cost.output_bytes, note)


def _encode_stage(m: Model, r: Request) -> dict | None:
    frames, videos = CONDITIONING[m.dit.model_type]
    if not videos:
        return None
    frames = r.frames if frames is None else frames
    cost = encode_cost(m.vae, frames, r.height, r.width, r.batch)
    return _vae_stage("vae-encode", cost, videos, m.vae, r.gpu,
                      f"{videos} x {frames} frame(s), {cost.chunks} chunk(s)")


def _decode_stage(m: Model, r: Request, lat) -> dict:
    cost = decode_cost(m.vae, *lat, batch=r.batch)
    return _vae_stage("vae-decode", cost, 1, m.vae, r.gpu, f"{lat[0]} latent frames, one chunk each")


def _parallel(m: Model, r: Request) -> tuple[int, int, str]:
    """(CFG groups, sequence-parallel degree, 'ulysses' | 'ring') for r.gpus ranks."""
    n, mode = r.gpus, r.parallel
    if n < 1:
        raise BadInputError(f"--gpus must be at least 1, got {n}")
    if mode not in roofline.PARALLEL_MODES:
        raise BadInputError(f"unknown --parallel {mode!r} (choose from {', '.join(roofline.PARALLEL_MODES)})")
    groups, kind = 1, "ring" if mode == "ring" else "ulysses"
    if mode == "cfg" and n > 1:
        if not r.cfg:
            raise BadInputError("--parallel cfg splits the two CFG branches: it needs CFG (drop --no-cfg)")
        if n % 2:
            raise BadInputError(f"--parallel cfg needs an even --gpus (two branches), got {n}")
        groups = 2
    degree = n // groups
    if kind == "ulysses" and m.dit.num_heads % degree:
        raise BadInputError(f"Ulysses degree {degree} must divide the {m.dit.num_heads} attention heads "
                            "(use --parallel ring)")
    return groups, degree, kind


def _dit_dtypes(r: Request) -> tuple[dict, bool]:
    f, gpu = r.fmt, r.gpu
    native = f.kind == "dense" or (f.kind != "gguf" and gpu.tflops(f.compute) is not None)
    if f.kind == "svdq":
        native = native and gpu.arch in formats.SVDQ_ARCHS[f.name]
    half = "fp16" if f.name in ("fp16", "F16") else "bf16"
    return {"gemm": f.compute if native else half, "attention": half, "conv": half}, native


def _dit_stages(m: Model, r: Request, geo: dict) -> list[dict]:
    groups, degree, kind = _parallel(m, r)
    tokens, ti2v, d = geo["tokens"], m.dit.model_type == "ti2v", m.dit
    padded = -(-tokens // degree) * degree
    full = dit_forward(d, tokens, batch=r.batch, per_token_time=ti2v)
    local = dit_forward(d, padded, batch=r.batch, per_token_time=ti2v, shards=degree)
    dtypes, native = _dit_dtypes(r)
    stored = formats.weight_bytes(d, r.fmt)
    read = formats.weight_traffic(r.fmt, stored, formats.weight_bytes(d, "bf16"), native)
    extra = formats.lowrank_flops(d, padded // degree, TEXT_LEN) * r.batch if r.fmt.kind == "svdq" else 0
    blocks = d.num_layers + len(d.vace_layers)
    latent_bytes = r.batch * d.out_dim * geo["latent"][0] * geo["latent"][1] * geo["latent"][2] * 4
    if kind == "ring":
        attn_s = local.attention / (roofline.peak(r.gpu, dtypes["attention"]) * roofline.EFFICIENCY["attention"])
        comm = roofline.ring_comm(r.gpu, padded * r.batch, d.dim, blocks, degree, attn_s)
    else:
        comm = roofline.ulysses_comm(r.gpu, padded * r.batch, d.dim, blocks, degree)
    comm += roofline.gather_comm(r.gpu, latent_bytes, degree) + roofline.gather_comm(r.gpu, latent_bytes, groups)
    per_forward = roofline.forward_time(local, dtypes, read, 2, r.gpu, extra_gemm=extra, comm_s=comm)
    act = dit_activation_bytes(d, padded // degree, batch=r.batch, per_token_time=ti2v)
    branches = 2 if r.cfg else 1
    out = []
    for expert, steps in expert_steps(r.steps, r.shift, m.variant.boundary_ratio if len(m.experts) == 2
                                      else None).items():
        name = "dit" if expert == "dit" else f"dit.{expert}"
        note = f"{steps} of {r.steps} steps x {branches} CFG branch{'es' * (branches > 1)}"
        out.append(_stage(name, steps * branches, full, stored, act, per_forward * (steps * branches / groups),
                          dtypes, note=note))
    return out


def _memory(stages: list[dict], gpu: GPU) -> dict:
    """Per-GPU peaks: with each stage's weights loaded only while it runs (Wan's --offload_model),
    and with every model resident (the VAE counted once)."""
    unique = {}
    for s in stages:
        key = "vae" if s["name"].startswith("vae") else s["name"]
        unique[key] = max(unique.get(key, 0), s["weight_bytes"])
    work = max(s["activation_bytes"] + s["cache_bytes"] + s["output_bytes"] for s in stages)
    return {"offloaded_peak_bytes": max(s["memory_bytes"] for s in stages),
            "resident_peak_bytes": sum(unique.values()) + work,
            "gpu_memory_bytes": int(gpu.memory_gb * 1e9)}


def _warnings(m: Model, r: Request, mem: dict) -> list[str]:
    out = []
    tw, th, tf = TRAINED.get(m.variant.name, TRAINED_DEFAULT)
    if r.frames > tf:
        out.append(f"extrapolating: {r.frames} frames, {m.variant.name} was trained on up to {tf}")
    if r.width * r.height > tw * th or max(r.width, r.height) > max(tw, th):
        out.append(f"extrapolating: {r.width}x{r.height} is above the largest trained size ({tw}x{th})")
    dtypes, native = _dit_dtypes(r)
    if not native and r.fmt.kind != "dense":
        why = "GGUF runs by dequantizing" if r.fmt.kind == "gguf" else \
            f"{r.gpu.name} ({r.gpu.arch or 'custom'}) has no {r.fmt.name} kernel path; estimated as dequantizing"
        out.append(f"{r.fmt.name}: {why} each layer to {dtypes['gemm']} (its peak, plus the bf16 traffic)")
    cap = mem["gpu_memory_bytes"]
    if cap and mem["offloaded_peak_bytes"] > cap:
        out.append(f"does not fit: {mem['offloaded_peak_bytes'] / 1e9:.1f} GB needed per GPU even with "
                   f"per-stage offload, {r.gpu.name} has {cap / 1e9:.0f} GB")
    elif cap and mem["resident_peak_bytes"] > cap:
        out.append(f"all models resident need {mem['resident_peak_bytes'] / 1e9:.1f} GB > {cap / 1e9:.0f} GB: "
                   "offload per stage (Wan's --offload_model True)")
    return out


def estimate(m: Model, r: Request) -> dict:
    """The whole cost report (the `wan-export cost --json` result)."""
    if r.steps < 1 or r.batch < 1:
        raise BadInputError("--steps and --batch must be at least 1")
    geo = geometry(m, r.width, r.height, r.frames)
    stages = [s for s in (_t5_stage(m, r), _clip_stage(m, r), _encode_stage(m, r)) if s]
    stages += _dit_stages(m, r, geo) + [_decode_stage(m, r, geo["latent"])]
    keys = stages[0]["flops"].keys()
    total = {k: sum(s["flops"][k] for s in stages) for k in keys}
    mem = _memory(stages, r.gpu)
    return {
        "model": m.label, "variant": m.variant.name, "experts": list(m.experts),
        "settings": {"size": f"{r.width}x{r.height}", "frames": r.frames, "steps": r.steps, "cfg": r.cfg,
                     "batch": r.batch, "format": r.fmt.name, "shift": r.shift, "gpus": r.gpus,
                     "parallel": r.parallel if r.gpus > 1 else None,
                     "boundary_ratio": m.variant.boundary_ratio if len(m.experts) == 2 else None},
        "geometry": geo, "gpu": r.gpu.to_dict(), "efficiency": dict(roofline.EFFICIENCY),
        "stages": stages, "total": {"flops": total, "time_s": sum(s["time"]["total_s"] for s in stages)},
        "memory": mem, "warnings": _warnings(m, r, mem),
    }
