"""`wan-export trt`: build TensorRT plans from a wan-export ONNX folder, or from a
checkpoint (exported to ONNX first, into DIR/onnx/, through `export_onnx`).

Every option is checked before anything is exported or built: an impossible
target/precision pair, a profile whose latent size is odd or whose min exceeds
its max, an ONNX folder without wan_onnx.json. Plans are built into a temporary
folder that replaces DIR only when every plan built, so a failure leaves nothing.
Plans are not byte-reproducible, so trt.json records what was built: backend,
targets, precision, profiles, I/O ranges, ONNX and plan sha256, settings, time.
"""
from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass

from wan_export.converters import onnx_specs as S
from wan_export.converters import trt_specs as T
from wan_export.errors import BadInputError, UnsupportedError
from wan_export.progress import null

MANIFEST = "trt.json"
ONNX_SUBDIR = "onnx"


@dataclass(frozen=True)
class Request:
    component: str = "all"
    target: str = "all"
    precision: str | None = None
    calib: str | None = None
    profiles: tuple[str, ...] = ("480p",)
    batch: str = "1-2"
    text_len: int = T.DEFAULT_TEXT_LEN
    backend: str = "auto"
    weightless: bool = False
    exporter: str = "dynamo"


@dataclass
class Job:
    """One plan to build: a graph of the ONNX folder for one target group."""

    entry: dict
    precision: str
    targets: tuple[str, ...]
    profiles: list[dict]                  # per profile: input -> [min, opt, max]
    claims: list[dict]                    # per profile: the request it came from
    name: str = ""


def build_trt(src: str, output: str | None, req: Request, *, overwrite: bool = False, dry_run: bool = False,
              progress=null) -> dict:
    from wan_export.atomic import atomic_dir
    from wan_export.converters.trt_backend import load_backend

    _check_request(req)
    backend = load_backend(req.backend if req.backend != "auto" else _auto_backend(req.target))
    groups = T.parse_targets(req.target, backend.name)
    if not backend.aot:
        groups = _local_target(groups)
    if req.precision:
        T.check_precision(groups, req.precision, req.target != "all")
    onnx_dir = _onnx_folder(src)
    output = output or default_output(src)
    if onnx_dir is None:              # a checkpoint: check the precision now, export inside DIR
        precision = req.precision or "fp16"
        T.check_precision(groups, precision, req.target != "all")
        if dry_run:
            return {"output": os.path.abspath(output), "dry_run": True, "backend": _backend_doc(backend),
                    "precision": precision, "targets": [list(g) for g in groups], "plans": []}
    if dry_run:                       # an ONNX folder: list the plans, write nothing
        manifest, vae = _read_onnx_folder(onnx_dir)
        return _result(output, backend, plan_jobs(manifest, vae, req, backend, groups), onnx_dir, dry_run=True)
    with atomic_dir(output, overwrite) as tmp:
        folder = onnx_dir
        if folder is None:
            folder = os.path.join(tmp, ONNX_SUBDIR)
            _export(src, folder, req, precision, progress)
        manifest, vae = _read_onnx_folder(folder)
        jobs = plan_jobs(manifest, vae, req, backend, groups)
        entries = _build_all(backend, jobs, folder, tmp, req, progress)
        doc = _manifest(backend, manifest, vae, entries, os.path.relpath(folder, tmp) if onnx_dir is None
                        else os.path.relpath(os.path.abspath(onnx_dir), os.path.abspath(output)), req)
        _write_json(os.path.join(tmp, MANIFEST), doc)
    return _result(output, backend, jobs, folder, entries=entries)


def _check_request(req: Request) -> None:
    if req.component not in S.COMPONENT_CHOICES:
        raise UnsupportedError(f"unknown component {req.component!r} (choose from {', '.join(S.COMPONENT_CHOICES)})")
    if req.precision is not None and req.precision not in T.PRECISIONS:
        raise UnsupportedError(f"unknown precision {req.precision!r} (choose from {', '.join(T.PRECISIONS)})")
    if req.calib and req.precision not in T.QUANT_PRECISIONS:
        raise UnsupportedError("--calib is for --precision fp8 or nvfp4")
    if req.text_len < 1:
        raise BadInputError(f"--text-len {req.text_len} must be >= 1")
    batch = T.parse_batch(req.batch)
    for p in req.profiles:
        T.parse_profile(p, batch, req.text_len)


def _auto_backend(target: str) -> str:
    """RTX unless a target only standard TensorRT builds (SM90/SM100) is named."""
    names = [] if target == "all" else [s.strip().lower() for s in target.split(",")]
    if any(n in T.TARGETS and "rtx" not in T.TARGETS[n][1] for n in names):
        return "tensorrt"
    return "auto"


def _local_target(groups: list[tuple[str, ...]]) -> list[tuple[str, ...]]:
    """Standard TensorRT builds for the GPU it runs on: the request must name (or include) it."""
    try:
        import torch

        major, minor = torch.cuda.get_device_capability() if torch.cuda.is_available() else (0, 0)
    except ImportError:
        major, minor = 0, 0
    if not major:
        raise UnsupportedError("standard TensorRT builds on the GPU it targets and there is no CUDA GPU here "
                               "(use --backend rtx to build ahead of time)")
    local = f"sm{major}{minor}"
    if not any(local in g for g in groups):
        raise UnsupportedError(f"standard TensorRT builds for this machine's GPU ({local}) only; "
                               f"build the other targets on their GPUs or with --backend rtx")
    return [(local,)]


def default_output(src: str) -> str:
    return os.path.basename(os.path.normpath(src)) + "_trt"


def _onnx_folder(src: str) -> str | None:
    """SRC when it is an ONNX folder (or a graph in one), None when it is a checkpoint."""
    if not os.path.exists(src):
        raise BadInputError("no such file or directory", src)
    folder = os.path.dirname(os.path.abspath(src)) if src.endswith(".onnx") else src
    if not os.path.isdir(folder) or not any(n.endswith(".onnx") for n in os.listdir(folder)):
        return None
    if not os.path.exists(os.path.join(folder, S.MANIFEST)):
        raise BadInputError(f"no {S.MANIFEST}: not a wan-export ONNX folder (write one with `wan-export onnx`)",
                            folder)
    return folder


def _export(src: str, folder: str, req: Request, precision: str, progress) -> None:
    from wan_export.converters.onnx_export import export_onnx

    quant = precision if precision in T.QUANT_PRECISIONS else None
    dtype = "fp16" if quant else precision
    options = {"quant": quant, "calib": req.calib} if quant else {}
    export_onnx(src, folder, component=req.component, dtype=dtype, exporter=req.exporter, progress=progress,
                **options)


def _read_onnx_folder(folder: str) -> tuple[dict, dict | None]:
    from wan_export.release import read_json

    manifest = read_json(os.path.join(folder, S.MANIFEST))
    if not isinstance(manifest.get("graphs"), list):
        raise BadInputError("corrupt manifest: no graph list", os.path.join(folder, S.MANIFEST))
    vae_path = os.path.join(folder, S.VAE_SIDECAR)
    return manifest, (read_json(vae_path) if os.path.exists(vae_path) else None)


# ---- planning -------------------------------------------------------------------------------

def plan_jobs(manifest: dict, vae: dict | None, req: Request, backend, groups) -> list[Job]:
    """Every (graph, target group) to build, with its profiles; refuses impossible pairs first."""
    roles = None if req.component == "all" else set(S.COMPONENTS[req.component][1])
    entries = [e for e in manifest["graphs"] if roles is None or e["role"] in roles]
    if not entries:
        raise BadInputError(f"the ONNX folder has no {req.component} graph", manifest.get("source"))
    batch = T.parse_batch(req.batch)
    jobs = []
    for e in entries:
        precision = graph_precision(manifest, e)
        if req.precision and e["role"] == "dit" and req.precision != precision:
            raise UnsupportedError(f"{e['file']} is a {precision} graph; --precision {req.precision} needs an "
                                   f"ONNX export in {req.precision}"
                                   + (f" (wan-export onnx --quant {req.precision})"
                                      if req.precision in T.QUANT_PRECISIONS else f" (--dtype {req.precision})"),
                                   e["file"])
        for group in T.check_precision(groups, precision, req.target != "all"):
            profiles, claims = [], []
            for text in req.profiles:
                prof = T.parse_profile(text, batch, req.text_len)
                sizes = T.graph_sizes(prof, _role_kind(e["role"]), _stride(manifest, vae, e), _patch(manifest, e),
                                      _fixed_text(manifest, e))
                profiles.append(T.input_ranges(e, sizes))
                claims.append(prof.to_dict())
            job = Job(e, precision, group, profiles, claims)
            job.name = T.plan_name(e["file"].removesuffix(".onnx"), backend.name, backend.version, group, precision,
                                   T.profile_hash(profiles))
            jobs.append(job)
    return jobs


def graph_precision(manifest: dict, entry: dict) -> str:
    return entry.get("quant") or manifest["dtype"]


def _role_kind(role: str) -> str:
    return "dit" if role == "dit" else "other"


def _stride(manifest: dict, vae: dict | None, entry: dict) -> int:
    if vae is not None:
        return int(vae["spatial_stride"])
    cfg = manifest.get("configs", {}).get(entry.get("slot"), {})
    return 16 if cfg.get("out_dim") == 48 else 8      # the 2.2 VAE (z_dim 48) compresses 16x


def _patch(manifest: dict, entry: dict) -> tuple[int, int]:
    cfg = manifest.get("configs", {}).get(entry.get("slot"), {})
    ps = cfg.get("patch_size", [1, 2, 2])
    return int(ps[1]), int(ps[2])


def _fixed_text(manifest: dict, entry: dict) -> bool:
    """I2V concatenates 257 image tokens after exactly text_len text tokens: no text-length range."""
    return bool(manifest.get("configs", {}).get(entry.get("slot"), {}).get("image_branch"))


# ---- building -------------------------------------------------------------------------------

def _build_all(backend, jobs: list[Job], folder: str, tmp: str, req: Request, progress) -> list[dict]:
    from wan_export.converters.trt_backend import BuildSettings, build_plan

    out = []
    with progress(len(jobs), "building plans") as update:
        for job in jobs:
            onnx_path = os.path.join(folder, job.entry["file"])
            settings = BuildSettings(job.targets, weightless=req.weightless)
            plan, info = build_plan(backend, onnx_path, job.profiles, settings)
            with open(os.path.join(tmp, job.name), "wb") as f:
                f.write(plan)
            out.append(_plan_entry(backend, job, onnx_path, plan, info, settings))
            update(1)
    return out


def _plan_entry(backend, job: Job, onnx_path: str, plan: bytes, info: dict, settings) -> dict:
    e = job.entry
    io = []
    for t in info["io"]:
        spec = next((x for x in (*e["inputs"], *e["outputs"]) if x["name"] == t["name"]), {})
        row = {**t, "shape": spec.get("shape")}
        if t["io"] == "input":
            row["profiles"] = [{"min": p[t["name"]][0], "opt": p[t["name"]][1], "max": p[t["name"]][2]}
                               for p in job.profiles]
        io.append(row)
    return {"file": job.name, "graph": e["file"], "role": e["role"], "slot": e.get("slot"),
            "component": e.get("component"), "precision": job.precision, "targets": list(job.targets),
            "profiles": job.claims, "profile_hash": job.name.split(".")[-2], "io": io,
            "onnx_sha256": sha256_file(onnx_path), "plan_sha256": hashlib.sha256(plan).hexdigest(),
            "plan_bytes": len(plan), "weightless": settings.weightless,
            "build": {**settings.to_dict(backend), "seconds": info["seconds"]}}


def sha256_file(path: str) -> str:
    h = hashlib.sha256()
    for p in (path, path + ".data"):
        if os.path.exists(p):
            with open(p, "rb") as f:
                for block in iter(lambda: f.read(1 << 22), b""):
                    h.update(block)
    return h.hexdigest()


def _backend_doc(backend) -> dict:
    return {"name": backend.name, "module": backend.trt.__name__, "version": backend.version,
            "runs_on": RUNS_ON[backend.name]}


RUNS_ON = {"rtx": "the TensorRT-RTX runtime on Turing/Ampere/Ada/Blackwell GeForce and workstation GPUs "
                  "(and SM80 A100-class), not Hopper SM90; kernels are compiled just in time on first run",
           "tensorrt": "standard TensorRT of the same version on the GPU architecture it was built on "
                       "(data-center Ampere/Hopper/Blackwell included)"}


def _manifest(backend, manifest: dict, vae: dict | None, entries: list[dict], onnx_rel: str, req: Request) -> dict:
    doc = {"format": "wan-export-trt", "version": 1, "backend": _backend_doc(backend),
           "onnx": {"folder": onnx_rel, "dtype": manifest["dtype"], "opset": manifest["opset"],
                    "quant": manifest.get("quant")},
           "configs": manifest.get("configs", {}), "plans": entries,
           "request": {"component": req.component, "target": req.target, "precision": req.precision,
                       "profiles": list(req.profiles), "batch": req.batch, "text_len": req.text_len,
                       "weightless": req.weightless, "calib": os.path.basename(req.calib) if req.calib else None}}
    if vae is not None:
        doc["vae"] = vae
    return doc


def _write_json(path: str, doc: dict) -> None:
    with open(path, "w", encoding="utf-8") as f:
        json.dump(doc, f, indent=2, sort_keys=True)
        f.write("\n")


def _result(output, backend, jobs, folder, entries=None, dry_run=False) -> dict:
    plans = entries if entries is not None else [
        {"file": j.name, "graph": j.entry["file"], "precision": j.precision, "targets": list(j.targets)} for j in jobs]
    return {"output": os.path.abspath(output), "backend": _backend_doc(backend), "dry_run": dry_run,
            "plans": plans}


def render_text(result: dict) -> str:
    b = result["backend"]
    head = "would build" if result["dry_run"] else "built"
    lines = [f"TensorRT plans ({b['module']} {b['version']}) {head} -> {result['output']}"]
    for p in result["plans"]:
        size = f", {p['plan_bytes'] / 2**20:.1f} MiB, {p['build']['seconds']} s" if "plan_bytes" in p else ""
        lines.append(f"  {p['file']}  ({p.get('precision')}, {'+'.join(p.get('targets', []))}{size})")
    if not result["dry_run"]:
        lines.append(f"  {MANIFEST}")
        lines.append(f"Runs on: {b['runs_on']}")
        lines.append(f"Check with: wan-export validate {result['output']} --against <SRC>")
    return "\n".join(lines)
