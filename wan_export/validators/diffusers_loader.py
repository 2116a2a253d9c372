"""Back-loader for diffusers folders: load them through diffusers and transformers
themselves, check what those loaders hide, and hand back stock-named tensors.

`DiffusionPipeline.from_pretrained` (or the transformer class alone for a
transformer folder) does the loading. With low_cpu_mem_usage, diffusers leaves
missing keys on the meta device without a word (formats-diffusers.md section 4),
so every folder's file keys and shapes are checked here against the model its
own config builds on the meta device, and nothing loaded may stay on meta.
`validate_diffusers` turns the result into a parity Report against the source.
"""
from __future__ import annotations

import os
from importlib import import_module
from importlib.util import find_spec

from wan_export.errors import BadInputError, UnsupportedError
from wan_export.release import read_json
from wan_export.sources import find_model_file, open_file

# subfolder -> (component kind, library, allowed classes)
SUBFOLDERS = {
    "transformer": ("dit", "diffusers", ("WanTransformer3DModel", "WanVACETransformer3DModel")),
    "transformer_2": ("dit", "diffusers", ("WanTransformer3DModel", "WanVACETransformer3DModel")),
    "vae": ("vae", "diffusers", ("AutoencoderKLWan",)),
    "text_encoder": ("t5", "transformers", ("UMT5EncoderModel",)),
    "image_encoder": ("clip", "transformers", ("CLIPVisionModel",)),
}
# what transformers 5 leaves out of CLIPVisionModel's own names but files (and transformers 4) carry
FILE_PREFIX = {"clip": "vision_model."}


def _class_name(folder: str) -> str:
    cfg = read_json(os.path.join(folder, "config.json"))
    return cfg.get("_class_name") or (cfg.get("architectures") or [""])[0]


def _require_loaders(path: str) -> None:
    missing = [m for m in ("diffusers", "transformers", "accelerate") if find_spec(m) is None]
    if missing:
        # accelerate: Wan models keep modules in fp32, which diffusers only loads with low_cpu_mem_usage
        raise UnsupportedError(f"loading diffusers folders needs {', '.join(missing)} "
                               "(pip install 'wan-export[diffusers]')", path)


def slots(path: str) -> dict[str, str]:
    """subfolder ('' = the folder itself) -> component slot, as release.py names them."""
    if os.path.isfile(os.path.join(path, "config.json")):
        return {"": "dit"}
    present = [s for s in SUBFOLDERS if os.path.isdir(os.path.join(path, s))]
    experts = "transformer_2" in present
    names = {"transformer": "dit.high_noise" if experts else "dit", "transformer_2": "dit.low_noise"}
    return {s: names.get(s, SUBFOLDERS[s][0]) for s in present}


def _kind(sub: str) -> str:
    return SUBFOLDERS[sub or "transformer"][0]


# ---- key checks ---------------------------------------------------------------

def file_shapes(folder: str) -> dict[str, tuple]:
    """name -> shape from the safetensors headers alone (nothing is read)."""
    model = find_model_file(folder)
    if model is None:
        raise BadInputError("no weights found", folder)
    return {i.name: tuple(i.shape) for i in open_file(model).infos()}


def expected_shapes(model, kind: str) -> dict[str, tuple]:
    """name -> shape the loaded model's class expects in files (tied copies excluded)."""
    from wan_export.keymaps.umt5_hf import TIED

    prefix = FILE_PREFIX.get(kind, "")
    out = {}
    for k, v in model.state_dict().items():
        if kind == "t5" and k in TIED:
            continue
        out[k if k.startswith(prefix) else prefix + k] = tuple(v.shape)
    return out


def key_problems(label: str, found: dict, expected: dict) -> list[str]:
    missing = sorted(set(expected) - set(found))
    unexpected = sorted(set(found) - set(expected))
    wrong = sorted(f"{k} {list(found[k])} (expected {list(expected[k])})"
                   for k in set(found) & set(expected) if found[k] != expected[k])
    out = []
    for what, items in (("missing", missing), ("unexpected", unexpected), ("wrong shape", wrong)):
        if items:
            out.append(f"{label}: {len(items)} {what}: {', '.join(items[:6])}" + (" ..." if len(items) > 6 else ""))
    return out


def meta_leftovers(label: str, model) -> list[str]:
    left = [n for n, t in list(model.named_parameters()) + list(model.named_buffers()) if t.is_meta]
    return [f"{label}: {len(left)} tensors left on the meta device, e.g. {left[0]}"] if left else []


def config_problems(path: str) -> list[str]:
    """Known-bad configs (formats-diffusers.md section 6) a loader accepts but runs wrongly."""
    out = []
    vae = os.path.join(path, "vae", "config.json")
    if os.path.isfile(vae) and "clip_output" in read_json(vae):
        out.append("vae/config.json has clip_output, which AutoencoderKLWan no longer accepts")
    index_path = os.path.join(path, "model_index.json")
    if os.path.isfile(index_path):
        index = read_json(index_path)
        has_t2 = (index.get("transformer_2") or [None])[0] is not None
        if has_t2 != (index.get("boundary_ratio") is not None):
            out.append("model_index.json: boundary_ratio and transformer_2 must come together "
                       "(a boundary without a second expert crashes once t < boundary)")
        proc = index.get("image_processor") or [None, None]
        if proc[1] not in (None, "CLIPImageProcessor"):
            out.append(f"model_index.json: image_processor {proc[1]!r} is not loadable by every transformers; "
                       "write CLIPImageProcessor")
    return out


# ---- stock names ------------------------------------------------------------------

def _dit_to_stock(sd: dict, path: str) -> dict:
    from wan_export.keymaps.dit_diffusers import DIT_DIFFUSERS

    m = DIT_DIFFUSERS.rename(list(sd), to_stock=True, path=path)
    return {m[k]: v for k, v in sd.items()}


def _vae_to_stock(sd: dict, path: str) -> dict:
    from wan_export.keymaps.vae_diffusers import keymap_for

    m = keymap_for(list(sd)).rename(list(sd), to_stock=True, path=path)
    return {m[k]: v for k, v in sd.items()}


def _t5_to_stock(sd: dict, path: str) -> dict:
    from wan_export.keymaps.umt5_hf import TIED, UMT5_HF

    sd = {k: v for k, v in sd.items() if k not in TIED}
    m = UMT5_HF.rename(list(sd), to_stock=True, path=path)
    return {m[k]: v for k, v in sd.items()}


def _clip_to_stock(sd: dict, path: str) -> dict:
    import torch

    from wan_export.converters.diffusers_clip import to_stock

    prefix = FILE_PREFIX["clip"]
    return to_stock({k if k.startswith(prefix) else prefix + k: v for k, v in sd.items()}, torch.cat, path)


TO_STOCK = {"dit": _dit_to_stock, "vae": _vae_to_stock, "t5": _t5_to_stock, "clip": _clip_to_stock}


# ---- loading -----------------------------------------------------------------------

def _load_module(folder: str, sub: str, torch_dtype):
    _, library, classes = SUBFOLDERS[sub or "transformer"]
    cls_name = _class_name(folder)
    if cls_name not in classes:
        raise BadInputError(f"unexpected class {cls_name!r} (expected {' or '.join(classes)})", folder)
    kwargs = {"local_files_only": True}
    if torch_dtype is not None:
        kwargs["torch_dtype" if library == "diffusers" else "dtype"] = torch_dtype
    return getattr(import_module(library), cls_name).from_pretrained(folder, **kwargs)


def load_diffusers_artifact(path: str, torch_dtype=None) -> dict[str, tuple[str, object]]:
    """Load a diffusers folder; returns {slot: (kind, stock-named torch tensors)}.

    Slots are those of release.py: dit (dit.high_noise + dit.low_noise for two
    experts), vae, t5, clip. A folder with model_index.json also yields
    "pipeline": ("pipeline", the DiffusionPipeline). Raises BadInputError
    listing every key-set, meta or config problem found.
    """
    return _load(path, torch_dtype)[0]


def _quiet_loaders() -> None:
    """diffusers/transformers draw their own progress bars on stderr; ours are enough."""
    from diffusers.utils import logging as diffusers_logging
    from transformers.utils import logging as transformers_logging

    diffusers_logging.disable_progress_bar()
    transformers_logging.disable_progress_bar()


def _load(path: str, torch_dtype=None) -> tuple[dict, dict]:
    """(load_diffusers_artifact's dict, {subfolder: loaded module})."""
    path = str(path)
    if not os.path.isdir(path):
        raise BadInputError("not a diffusers folder", path)
    _require_loaders(path)
    _quiet_loaders()
    found = slots(path)
    if not found:
        raise BadInputError("no diffusers model folders (transformer/, vae/, ...) or config.json here", path)
    modules, out = {}, {}
    if os.path.isfile(os.path.join(path, "model_index.json")):
        from diffusers import DiffusionPipeline

        kwargs = {"local_files_only": True} | ({"torch_dtype": torch_dtype} if torch_dtype is not None else {})
        pipe = DiffusionPipeline.from_pretrained(path, **kwargs)
        modules = {sub: getattr(pipe, sub) for sub in found if getattr(pipe, sub, None) is not None}
        out["pipeline"] = ("pipeline", pipe)
    for sub in found:
        if sub not in modules:
            modules[sub] = _load_module(os.path.join(path, sub), sub, torch_dtype)
    problems = config_problems(path)
    for sub, model in modules.items():
        label, kind = sub or "transformer", _kind(sub)
        problems += key_problems(label, file_shapes(os.path.join(path, sub)), expected_shapes(model, kind))
        problems += meta_leftovers(label, model)
    if problems:
        raise BadInputError("diffusers folder does not load faithfully: " + "; ".join(problems), path)
    for sub, model in modules.items():
        kind = _kind(sub)
        out[found[sub]] = (kind, TO_STOCK[kind](model.state_dict(), os.path.join(path, sub)))
    return out, modules


# ---- parity report -------------------------------------------------------------------

# the diffusers transformer's own forward vs the reference DiT on the same weights: implementations
# differ (fp32 sinusoid, op order): rel-L2 4.4e-6 on the tiny models, bound with room for 40 layers;
# a wrong config (heads, qk_norm, pos_embed) is off by far more
FORWARD_TOLERANCE_RULE = dict(max_rel_l2=1e-4, min_cosine=0.9999)


def diffusers_forward(model, cfg, x: dict):
    """Run a Wan(VACE)Transformer3DModel on parity.dit_inputs-style inputs."""
    import torch

    kw = {"hidden_states": x["latents"], "timestep": x["timestep"], "encoder_hidden_states": x["context"],
          "return_dict": False}
    if "clip_features" in x:                      # FLF2V's two frames go in stacked as [2B, 257, C]
        kw["encoder_hidden_states_image"] = x["clip_features"].reshape(-1, 257, cfg.clip_dim)
    if "vace_context" in x:
        kw["control_hidden_states"] = x["vace_context"]
        kw["control_hidden_states_scale"] = torch.ones(len(cfg.vace_layers))
    return model(**kw)[0]


def _file_dtypes(path: str, sub: str, kind: str, source_table) -> dict[str, str]:
    """stock name -> dtype the artifact stores it in (from the headers)."""
    model = find_model_file(os.path.join(path, sub))
    by_file = {i.name: i.dtype for i in open_file(model).infos()}
    if kind == "clip":                  # split parts share the fused tensor's dtype
        from wan_export.converters.diffusers_clip import plan_to_hf

        return {stock: by_file[hf] for hf, _, stock, _ in plan_to_hf(source_table.infos())}
    return TO_STOCK[kind](by_file, model)


# weight dtypes from least to most precise: a cast to the first one found sets the tolerance
PRECISION = ("F8_E4M3", "BF16", "F16", "F32")


def _tolerance(stored: dict[str, str], table):
    from wan_export.validators.parity import WEIGHT_DTYPE_TOLERANCE

    source = {i.name: i.dtype for i in table.infos()}
    cast_to = {d for n, d in stored.items() if source.get(n) != d}
    return WEIGHT_DTYPE_TOLERANCE[next((d for d in PRECISION if d in cast_to), "exact")]


def _weights_metrics(table, art: dict, dtypes: dict) -> dict:
    """Every artifact tensor vs the source cast to the artifact's dtype, accumulated."""
    import numpy as np

    from wan_export.dtypes import cast

    err2 = ref2 = out2 = dot = abs_sum = 0.0
    worst = peak = 0.0
    count = 0
    for name, tensor in art.items():
        r = cast(table.read(name), dtypes[name]).astype(np.float64)
        o = tensor.detach().double().cpu().numpy()
        e = np.abs(o - r)
        err2, ref2, out2, dot = err2 + (e * e).sum(), ref2 + (r * r).sum(), out2 + (o * o).sum(), dot + (r * o).sum()
        abs_sum, count = abs_sum + e.sum(), count + e.size
        worst, peak = max(worst, float(e.max(initial=0.0))), max(peak, float(np.abs(r).max(initial=0.0)))
    rel = (err2 ** 0.5) / (ref2 ** 0.5) if ref2 else float(err2 > 0)
    cos = dot / ((ref2 * out2) ** 0.5) if ref2 and out2 else 1.0
    snr = float("inf") if err2 == 0 else 10 * np.log10(ref2 / err2) if ref2 else float("-inf")
    psnr = float("inf") if err2 == 0 else 10 * np.log10(peak * peak * count / err2)
    return {"max_abs": worst, "mean_abs": abs_sum / max(count, 1), "rel_l2": rel, "cosine": cos,
            "psnr_db": psnr, "snr_db": snr, "ref_max_abs": peak, "finite": bool(np.isfinite(err2))}


def _dit_checks(report, slot: str, model, comp, art: dict, tolerance) -> None:
    import torch

    from wan_export.model.dit import load_dit
    from wan_export.validators.metrics import compare
    from wan_export.validators.parity import DiTCase, check_dit, dit_inputs, torch_state
    from wan_export.validators.report import Tolerance

    cfg = comp.config
    # the 2.1 image branch reads the last 512 context rows as text
    cases = (DiTCase(1, 2, 4, 6, 512 if cfg.image_branch else 24),)
    check_dit(report, torch_state(comp.table), art, cfg, tolerance, label=f"{slot} reference", cases=cases)
    ref = load_dit(art, cfg)
    with torch.no_grad():
        for i, case in enumerate(cases):
            x = dit_inputs(cfg, case, seed=i)
            report.add(f"{slot} diffusers forward {case.label}",
                       compare(ref(**x), diffusers_forward(model.float(), cfg, x)),
                       Tolerance(**FORWARD_TOLERANCE_RULE), note="diffusers' own transformer vs the reference")


def validate_diffusers(path: str, against: str, **options):
    """Report: weights identical to the source (at the stored dtype), reference-model outputs on both
    weight sets, and the diffusers transformer's own forward against the reference."""
    from wan_export.release import open_input
    from wan_export.validators.parity import check_vae, torch_state
    from wan_export.validators.report import Report, Tolerance

    art, modules = _load(path)
    art.pop("pipeline", None)
    src = open_input(against)
    report = Report(str(path), str(against), "diffusers", info=_pipeline_info(path, src))
    subs = {slot: sub for sub, slot in slots(path).items()}
    for slot, (kind, tensors) in sorted(art.items()):
        comp = src.components.get(slot) or (src.components.get("dit") if kind == "dit" else None)
        if comp is None:
            report.info[slot] = "not in the source: not compared"
            continue
        dtypes = _file_dtypes(path, subs[slot], kind, comp.table)
        report.add(f"{slot} weights ({len(tensors)} tensors) vs source at stored dtype",
                   _weights_metrics(comp.table, tensors, dtypes), Tolerance(max_abs=0.0))
        tolerance = _tolerance(dtypes, comp.table)
        if kind == "dit":
            _dit_checks(report, slot, modules[subs[slot]], comp, tensors, tolerance)
        elif kind == "vae":
            check_vae(report, torch_state(comp.table), tensors, comp.config, tolerance)
    return report


def _pipeline_info(path: str, src) -> dict:
    info = {}
    v = src.variant
    if v is not None:
        info["variant"] = v.name
        info["official_flow_shift"] = v.flow_shift
    sched = os.path.join(path, "scheduler", "scheduler_config.json")
    if os.path.isfile(sched):
        info["flow_shift"] = read_json(sched).get("flow_shift")
    index = os.path.join(path, "model_index.json")
    if os.path.isfile(index):
        idx = read_json(index)
        info["pipeline"] = idx.get("_class_name")
        info["boundary_ratio"] = idx.get("boundary_ratio")
    return info
