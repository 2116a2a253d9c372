"""The stock (official Wan) layout, and the planning every single-file writer shares.

`plan_component` lists a component's tensors in the official order at one
output dtype; `Job`s write output files and `write_jobs` / `write_into_folder`
make a set of them atomic. `write_stock` writes the official release layout
back: DiT safetensors (sharded with an index above 10 GB) + `config.json`,
A14B expert folders, the VAE and T5 as weights_only-loadable `.pth` files
(the only place torch is needed), and the tokenizer folders.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace

from wan_export import __version__
from wan_export.atomic import _remove, atomic_dir, atomic_file, check_output_file
from wan_export.components import t5_shapes, vae_shapes
from wan_export.dtypes import DTYPE_NAMES, FLOAT_CODES
from wan_export.errors import BadInputError
from wan_export.model.config import TEXT_DIM, TEXT_LEN
from wan_export.progress import null
from wan_export.release import Release, open_input
from wan_export.safetensors_io import SafetensorsWriter
from wan_export.variants import dit_shapes, guess_variant
from wan_export.writing import Planned, read_checked, shard_plan

CODE_NAMES = {code: name for name, code in DTYPE_NAMES.items()}     # "BF16" -> "bf16"
# diffusers' default max_shard_size ("10GB"); the official 14B and 5B releases are sharded like this
MAX_SHARD_BYTES = 10 * 10**9

# Without --dtype a component keeps its dtype; mixed float dtypes widen to the first
# dtype here that holds every value exactly (fp8 fits bf16 and fp16; bf16 + fp16 need fp32).
_FP8 = {"F8_E4M3", "F8_E5M2"}
LOSSLESS = (
    (_FP8 | {"BF16"}, "BF16"),
    (_FP8 | {"F16"}, "F16"),
    (_FP8 | {"BF16", "F16", "F32"}, "F32"),
    (_FP8 | {"BF16", "F16", "F32", "F64"}, "F32"),     # F64 never occurs in Wan; narrowed
)

HUB_CONFIG = ("dim", "eps", "ffn_dim", "freq_dim", "in_dim", "model_type", "num_heads", "num_layers", "out_dim")
VAE_FILES = {"2.1": "Wan2.1_VAE.pth", "2.2": "Wan2.2_VAE.pth"}
T5_FILE = "models_t5_umt5-xxl-enc-{dtype}.pth"
CLIP_FILE = "models_clip_open-clip-xlm-roberta-large-vit-huge-14.pth"
TOKENIZER_DIRS = {"t5": "google/umt5-xxl", "clip": "xlm-roberta-large"}

Update = Callable[[int], None]


# ---------------------------------------------------------------- planning


def lossless_dtype(infos) -> str:
    codes = {i.dtype for i in infos if i.dtype in FLOAT_CODES}
    return next(out for allowed, out in LOSSLESS if codes <= allowed)


def component_dtype(comp, requested: str | None) -> str:
    """The output dtype code: --dtype (bf16/fp16/fp32) or the lossless source dtype."""
    return DTYPE_NAMES[requested] if requested else lossless_dtype(comp.table.infos())


# official state-dict order of each component kind (a permutation of its checked keys)
ORDER = {"dit": lambda c: list(dit_shapes(c.config)), "vae": lambda c: list(vae_shapes(c.config)),
         "t5": lambda c: list(t5_shapes(c.config))}


@dataclass(frozen=True)
class Part:
    """Planned tensors read from one source file (named in NaN/shape errors)."""

    tensors: list[Planned]
    src_dtypes: dict[str, str]        # output name -> source dtype code
    source_path: str

    def renamed(self, fn: Callable[[str], str]) -> Part:
        tensors = [replace(p, name=fn(p.name)) for p in self.tensors]
        return Part(tensors, {fn(k): v for k, v in self.src_dtypes.items()}, self.source_path)

    def plus(self, extra: Planned, src_dtype: str) -> Part:
        return Part(self.tensors + [extra], {**self.src_dtypes, extra.name: src_dtype}, self.source_path)


def plan_component(comp, dtype: str, rename: Callable[[str], str] = lambda n: n) -> Part:
    """Every tensor of a component in the official order; floats cast to `dtype`."""
    infos = {i.name: i for i in comp.table.infos()}
    order = ORDER[comp.kind](comp) if comp.kind in ORDER else list(infos)
    tensors, src = [], {}
    for name in order:
        info = infos[name]
        out = rename(name)
        tensors.append(Planned(out, info.shape, dtype if info.dtype in FLOAT_CODES else info.dtype,
                               lambda n=name: comp.table.read(n), source_name=name))
        src[out] = info.dtype
    return Part(tensors, src, comp.path)


def provenance(kind: str, variant: str, dtype: str, **extra) -> dict:
    """Deterministic metadata: no time stamps and no paths, so equal inputs give equal bytes."""
    meta = {"format": "pt", "wan_export.version": __version__, "wan_export.component": kind,
            "wan_export.source_variant": variant, "wan_export.dtype": CODE_NAMES.get(dtype, dtype)}
    meta.update({f"wan_export.{k}": str(v) for k, v in extra.items() if v is not None})
    return meta


# ---------------------------------------------------------------- jobs


@dataclass
class Job:
    """One output (file, or DiT shards + index, or folder): `write(path, update)` -> paths written."""

    name: str                          # relative path inside the output folder
    component: str                     # dit | vae | t5 | clip | checkpoint | config | tokenizer
    tensors: int
    write: Callable[[str, Update], list[str]]
    notes: list[str] = field(default_factory=list)
    parts: list[Part] | None = None    # single safetensors files: what is written (for dry runs)
    metadata: dict | None = None


_END = object()


def prefetched(items: Iterator) -> Iterator:
    """Produce the next item in a worker thread while the caller consumes this one.

    Reading (pread), the NaN check and casts run in numpy or the kernel without
    the GIL, as does writing, so the two overlap on two cores; exceptions surface
    in the caller in order. The caller must drop each item before asking for the
    next, so two tensors are alive at a time (the pool's two buffers).
    """
    with ThreadPoolExecutor(1) as pool:
        ahead = pool.submit(next, items, _END)
        while (item := ahead.result()) is not _END:
            ahead = pool.submit(next, items, _END)
            yield item
            del item


def write_parts(path: str, parts: list[Part], metadata: dict, update: Update) -> None:
    """Header first, then every tensor read, checked and cast one ahead of the write."""
    def checked():
        for part in parts:
            for p in part.tensors:
                yield p.name, read_checked(p, part.src_dtypes[p.name], part.source_path)

    tensors = [p for part in parts for p in part.tensors]
    with SafetensorsWriter(path, [p.info for p in tensors], metadata) as w:
        for name, arr in prefetched(checked()):
            w.write(name, arr)
            update(1)
            del arr           # before the next read takes a buffer


def safetensors_job(name: str, component: str, parts: list[Part], metadata: dict,
                    notes: list[str] | None = None) -> Job:
    def write(path: str, update: Update) -> list[str]:
        write_parts(path, parts, metadata, update)
        return [path]
    return Job(name, component, sum(len(p.tensors) for p in parts), write, list(notes or []), parts, metadata)


def write_shards(folder: str, stem: str, part: Part, metadata: dict, max_bytes: int, update: Update) -> list[str]:
    """`stem.safetensors`, or `stem-0000k-of-0000n.safetensors` + `stem.safetensors.index.json` (HF layout)."""
    shards = shard_plan(part.tensors, max_bytes)
    if len(shards) == 1:
        write_parts(os.path.join(folder, f"{stem}.safetensors"), [part], metadata, update)
        return [os.path.join(folder, f"{stem}.safetensors")]
    paths, weight_map = [], {}
    for k, shard in enumerate(shards, 1):
        name = f"{stem}-{k:05d}-of-{len(shards):05d}.safetensors"
        write_parts(os.path.join(folder, name), [replace(part, tensors=shard)], metadata, update)
        paths.append(os.path.join(folder, name))
        weight_map.update({p.name: name for p in shard})
    index = {"metadata": {"total_size": sum(p.info.nbytes for p in part.tensors)},
             "weight_map": dict(sorted(weight_map.items()))}
    with atomic_file(os.path.join(folder, f"{stem}.safetensors.index.json"), "w") as f:
        f.write(json.dumps(index, indent=2) + "\n")
    return paths + [os.path.join(folder, f"{stem}.safetensors.index.json")]


def write_jobs(jobs: list[Job], paths: dict[str, str], *, overwrite: bool, progress=null) -> list[dict]:
    """Write jobs to final paths all-or-nothing: stage beside each target, rename when all succeed."""
    for p in paths.values():
        check_output_file(p, overwrite)
    new_dirs = sorted({d for p in paths.values() for d in _missing_dirs(os.path.dirname(os.path.abspath(p)))},
                      key=len, reverse=True)
    staged: dict[str, str] = {}
    try:
        with progress(sum(j.tensors for j in jobs), "writing") as update:
            for job in jobs:
                final = os.path.abspath(paths[job.name])
                stage = os.path.join(os.path.dirname(final), f".{os.path.basename(final)}.staged.partial")
                staged[stage] = final
                job.write(stage, update)
        for stage, final in staged.items():
            os.replace(stage, final)
    except BaseException:
        for stage in staged:
            _remove(stage)
        for d in new_dirs:                      # a folder this run created, if it stayed empty
            with contextlib.suppress(OSError):
                os.rmdir(d)
        raise
    return [_file_row(paths[j.name], j.component) for j in jobs]


def _missing_dirs(folder: str) -> list[str]:
    out = []
    while folder and not os.path.exists(folder):
        out.append(folder)
        folder = os.path.dirname(folder)
    return out


def write_into_folder(jobs: list[Job], folder: str, *, overwrite: bool, progress=null) -> list[dict]:
    """Write jobs into a new folder built under a temp name (replaces `folder` only on success)."""
    written: list[tuple[str, str]] = []
    with atomic_dir(folder, overwrite) as tmp, progress(sum(j.tensors for j in jobs), "writing") as update:
        for job in jobs:
            target = os.path.join(tmp, job.name)
            os.makedirs(os.path.dirname(target), exist_ok=True)
            written += [(os.path.relpath(p, tmp), job.component) for p in job.write(target, update)]
    return [_file_row(os.path.join(folder, rel), comp) for rel, comp in written]


def _file_row(path: str, component: str) -> dict:
    size = sum(os.path.getsize(os.path.join(r, f)) for r, _, fs in os.walk(path) for f in fs) \
        if os.path.isdir(path) else os.path.getsize(path)
    return {"path": path, "component": component, "bytes": size}


def add_digests(rows: list[dict]) -> None:
    """sha256 of each written file (read back; folders are left without one)."""
    for row in rows:
        if os.path.isfile(row["path"]):
            h = hashlib.sha256()
            with open(row["path"], "rb") as f:
                while chunk := f.read(1 << 24):
                    h.update(chunk)
            row["sha256"] = h.hexdigest()


# ---------------------------------------------------------------- the stock layout


def hub_config(cfg) -> dict:
    """The official DiT config.json (sorted keys when dumped): the hub keys of WanModel / VaceWanModel."""
    d = {k: getattr(cfg, k) for k in HUB_CONFIG}
    d.update(_class_name="VaceWanModel" if cfg.vace_layers else "WanModel", text_len=TEXT_LEN)
    if cfg.vace_layers:
        d.update(vace_layers=list(cfg.vace_layers), vace_in_dim=cfg.vace_in_dim)
    if cfg.text_dim != TEXT_DIM:
        d["text_dim"] = cfg.text_dim      # WanModel takes it as an argument; the hub never needs it
    return d


def _text_job(name: str, text: str) -> Job:
    def write(path: str, update: Update) -> list[str]:
        with atomic_file(path, "w") as f:
            f.write(text)
        return [path]
    return Job(name, "config", 0, write)


def dit_jobs(comp, dtype: str, max_shard_bytes: int) -> list[Job]:
    folder = f"{comp.expert}_model/" if comp.expert else ""
    part = plan_component(comp, dtype)
    meta = provenance("dit", comp.variant, dtype, expert=comp.expert)

    def write(path: str, update: Update) -> list[str]:
        return write_shards(os.path.dirname(path), "diffusion_pytorch_model", part, meta, max_shard_bytes, update)

    config = json.dumps(hub_config(comp.config), indent=2, sort_keys=True) + "\n"
    return [_text_job(folder + "config.json", config),
            Job(folder + "diffusion_pytorch_model.safetensors", "dit", len(part.tensors), write)]


def pth_job(name: str, component: str, part: Part) -> Job:
    """A torch.save state dict; written to a file object so the archive name (and bytes) never vary."""
    def write(path: str, update: Update) -> list[str]:
        import warnings

        import torch

        from wan_export.dtypes import to_torch

        state = {}
        for p in part.tensors:
            arr = read_checked(p, part.src_dtypes[p.name], part.source_path)
            with warnings.catch_warnings():      # read-only mmap views; torch.save only reads them
                warnings.simplefilter("ignore", UserWarning)
                state[p.name] = to_torch(arr)
            update(1)
        with atomic_file(path) as f:
            torch.save(state, f)
        return [path]
    return Job(name, component, len(part.tensors), write)


def tokenizer_job(name: str, folder: str | None, spiece: tuple | None) -> Job | None:
    """Copy a tokenizer folder, or rebuild `spiece.model` from a ComfyUI `spiece_model` tensor."""
    if folder is None and spiece is None:
        return None

    def write(path: str, update: Update) -> list[str]:
        if folder is not None:
            shutil.copytree(folder, path)
        else:
            os.makedirs(path, exist_ok=True)
            with atomic_file(os.path.join(path, "spiece.model")) as f:
                f.write(spiece[1]().tobytes())
        return [os.path.join(r, f) for r, _, fs in sorted(os.walk(path)) for f in sorted(fs)]
    return Job(name, "tokenizer", 0, write)


def _vae_jobs(rel: Release, comp, notes: list[str]) -> list[Job]:
    return [pth_job(VAE_FILES[comp.config.version], "vae", plan_component(comp, component_dtype(comp, None)))]


def _t5_jobs(rel: Release, comp, notes: list[str]) -> list[Job]:
    code = component_dtype(comp, None)       # the T5 keeps its source dtype; the file name says which
    jobs = [pth_job(T5_FILE.format(dtype=CODE_NAMES[code]), "t5", plan_component(comp, code))]
    tok = tokenizer_job(TOKENIZER_DIRS["t5"], rel.tokenizer_dir, comp.side.get("spiece_model"))
    if tok is None:
        notes.append("t5: no tokenizer (spiece.model) found; google/umt5-xxl/ not written")
    return jobs + ([tok] if tok else [])


def _clip_jobs(rel: Release, comp, notes: list[str]) -> list[Job]:
    if not comp.layout.startswith("stock"):
        notes.append(f"clip: not written (only a stock-layout CLIP can be written back; this one is {comp.layout})")
        return []
    jobs = [pth_job(CLIP_FILE, "clip", plan_component(comp, component_dtype(comp, None)))]
    tok = tokenizer_job(TOKENIZER_DIRS["clip"], rel.clip_tokenizer_dir, None)
    return jobs + ([tok] if tok else [])


STOCK_JOBS = {"vae": _vae_jobs, "t5": _t5_jobs, "clip": _clip_jobs}


def stock_jobs(rel: Release, dtype: str | None, notes: list[str],
               max_shard_bytes: int = MAX_SHARD_BYTES) -> list[Job]:
    """--dtype casts the DiT only; the VAE, T5 and CLIP keep their source dtype like the official files."""
    jobs = []
    for _, comp in sorted(rel.dits.items()):
        jobs += dit_jobs(comp, component_dtype(comp, dtype), max_shard_bytes)
    for _, comp in sorted(rel.components.items()):
        if comp.kind in STOCK_JOBS:
            jobs += STOCK_JOBS[comp.kind](rel, comp, notes)
    return jobs


def source_variant(rel: Release) -> str | None:
    """The released variant SRC is, or its DiT's custom label (never a release it only resembles)."""
    dits = [c for _, c in sorted(rel.dits.items())]
    if not dits:
        return None
    v = rel.variant
    return v.name if v.config == dits[0].config else dits[0].variant


def default_folder(rel: Release) -> str:
    """Hub-style folder name: Wan2.1-T2V-1.3B, Wan2.2-T2V-A14B; custom dims say so."""
    if not rel.dits:
        return "wan-stock"
    comp = next(iter(sorted(rel.dits.items())))[1]
    v = guess_variant(comp.config, experts=len(rel.dits) == 2)
    parts = v.name.split("-")[1:]
    if v.config != comp.config:
        parts = [parts[0], f"custom-d{comp.config.dim}-l{comp.config.num_layers}"]
    return "-".join([v.family] + [p.upper() if not p.startswith("custom") else p for p in parts])


def write_stock(src: str, output: str | None = None, *, dtype: str | None = None, overwrite: bool = False,
                digests: bool = False, max_shard_bytes: int = MAX_SHARD_BYTES, progress=null) -> dict:
    """Write SRC (any layout) back as an official release folder. Returns what was written."""
    rel = open_input(src)
    notes: list[str] = []
    jobs = stock_jobs(rel, dtype, notes, max_shard_bytes)
    if not any(j.tensors for j in jobs):
        raise BadInputError("nothing to write in the stock layout", rel.path)
    folder = output or default_folder(rel)
    rows = write_into_folder(jobs, folder, overwrite=overwrite, progress=progress)
    if digests:
        add_digests(rows)
    return {"command": "stock", "source": rel.path, "output": folder, "variant": source_variant(rel),
            "dtype": dtype, "files": rows, "notes": notes}


def render_text(result: dict) -> str:
    lines = [f"{r['path']}  ({r['component']}, {r['bytes']:,} bytes)" for r in result["files"]]
    return "\n".join(lines + [f"note: {n}" for n in result["notes"]])
