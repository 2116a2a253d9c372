"""`wan-export validate`: pick the back-loader for an artifact, run it, report.

ARTIFACTS is the one table of artifact kinds: a predicate on the path and the
validator function, `validate_x(path, against, **options) -> Report`.
"""
from __future__ import annotations

import json
import os
from importlib import import_module

from wan_export.errors import BadInputError, UnsupportedError
from wan_export.validators.report import Report


def _is_gguf(p: str) -> bool:
    return p.endswith(".gguf")


def _is_onnx(p: str) -> bool:
    return p.endswith(".onnx") or (os.path.isdir(p) and any(n.endswith(".onnx") for n in os.listdir(p)))


def _is_trt(p: str) -> bool:
    return p.endswith((".plan", ".engine")) or (os.path.isdir(p) and any(
        n.endswith((".plan", ".engine")) for n in os.listdir(p)))


def _is_diffusers(p: str) -> bool:
    if not os.path.isdir(p):
        return False
    if os.path.exists(os.path.join(p, "model_index.json")):
        return True
    cfg = os.path.join(p, "config.json")
    if os.path.exists(cfg):
        try:
            with open(cfg, encoding="utf-8") as f:
                return str(json.load(f).get("_class_name", "")).startswith("Wan")
        except (OSError, ValueError):
            return False
    return False


def _is_nunchaku_lite(p: str) -> bool:
    """A diffusers folder whose transformer config declares quant_method nunchaku_lite (SVDQuant W4A4)."""
    if not _is_diffusers(p):
        return False
    for sub in ("", "transformer"):
        cfg = os.path.join(p, sub, "config.json")
        if os.path.isfile(cfg):
            try:
                with open(cfg, encoding="utf-8") as f:
                    q = json.load(f).get("quantization_config") or {}
            except (OSError, ValueError):
                return False
            if isinstance(q, dict) and q.get("quant_method") == "nunchaku_lite":
                return True
    return False


def _is_modelopt(p: str) -> bool:
    from wan_export.validators.modelopt import is_modelopt
    return is_modelopt(p)


def _is_stock(p: str) -> bool:
    from wan_export.validators.stock import is_stock_release

    return is_stock_release(p)


def _is_safetensors(p: str) -> bool:
    return p.endswith(".safetensors")


# (format, predicate, validator "module:function"), first match wins
ARTIFACTS = (
    ("gguf", _is_gguf, "wan_export.validators.gguf:validate_gguf"),
    ("trt", _is_trt, "wan_export.validators.trt:validate_trt"),
    ("onnx", _is_onnx, "wan_export.validators.onnx:validate_onnx"),
    ("svdquant", _is_nunchaku_lite, "wan_export.validators.svdquant:validate_svdquant"),
    ("diffusers-modelopt", lambda p: _is_diffusers(p) and _is_modelopt(p),
     "wan_export.validators.modelopt:validate_modelopt"),
    ("stock", _is_stock, "wan_export.validators.stock:validate_stock"),
    ("diffusers", _is_diffusers, "wan_export.validators.diffusers_loader:validate_diffusers"),
    ("comfyui", _is_safetensors, "wan_export.validators.comfyui:validate_comfyui"),
)


def artifact_format(path: str) -> tuple[str, str]:
    if not os.path.exists(path):
        raise BadInputError("no such file or directory", path)
    for fmt, pred, impl in ARTIFACTS:
        if pred(path):
            return fmt, impl
    raise BadInputError("not a recognised artifact (.gguf, .safetensors, .onnx, .plan, a diffusers folder "
                        "or an official release folder)",
                        path)


# formats whose DiT weights read back as stock tensors, so `--sampling` can sample through them
SAMPLING_FORMATS = ("gguf", "diffusers", "comfyui", "stock")


def validate(path: str, against: str, report_path: str | None = None, sampling: dict | None = None,
             **options) -> Report:
    """Validate an artifact against its source; write the report; return it (never raises on parity).

    sampling: None, or the options of validators.sampling.validate_sampling (steps, size, frames,
    prompt, seed) to add sampling parity to the report.
    """
    fmt, impl = artifact_format(path)
    if sampling is not None and fmt not in SAMPLING_FORMATS:
        raise UnsupportedError(f"--sampling needs DiT weights that read back ({', '.join(SAMPLING_FORMATS)}); "
                               f"{fmt} artifacts are not supported", path)
    if not os.path.exists(against):
        raise BadInputError("no such file or directory", against)
    module, fn = impl.split(":")
    try:
        validator = getattr(import_module(module), fn)
    except (ImportError, AttributeError):
        raise UnsupportedError(f"no validator for {fmt} artifacts yet", path) from None
    report = validator(path, against, **options)
    if sampling is not None:
        from wan_export.validators.sampling import validate_sampling

        validate_sampling(path, against, report, **sampling)
    if report_path:
        report.write(report_path)
    return report
