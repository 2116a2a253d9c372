"""Turn a source in any layout into a lazy source with stock Wan names.

Steps, each a named reversible operation on a lazy name -> tensor table:
strip a ComfyUI prefix, dequantize fp8 weights with their scales (ComfyUI
legacy `scale_weight` or `weight_scale`), split fused QKV, and rename through
the component's key map (diffusers, HF UMT5). Nothing is read until asked for.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Callable

import numpy as np

from wan_export.dtypes import FP8_CODES
from wan_export.errors import BadInputError, UnsupportedError
from wan_export.safetensors_io import TensorInfo

Reader = Callable[[], np.ndarray]

# Prefixes ComfyUI and trainers put in front of DiT names (formats-comfyui.md section 3).
PREFIXES = ("model.diffusion_model.", "model.model.", "net.", "diffusion_model.", "transformer.", "model.")

# Fused projections: fused name -> parts, split along dim 0 in this order.
FUSED = [
    ("self_attn.qkv", ("self_attn.q", "self_attn.k", "self_attn.v")),
    ("cross_attn.kv", ("cross_attn.k", "cross_attn.v")),
    ("attn1.to_qkv", ("attn1.to_q", "attn1.to_k", "attn1.to_v")),
    ("attn2.to_kv", ("attn2.to_k", "attn2.to_v")),
]
_FUSED_RE = re.compile(r"^(.*\.)(" + "|".join(re.escape(f) for f, _ in FUSED) + r")\.(weight|bias)$")

SCALE_SUFFIXES = (".scale_weight", ".weight_scale")
DROP_SUFFIXES = (".scale_input", ".input_scale", ".comfy_quant")
MARKERS = ("scaled_fp8",)


@dataclass
class LazyTable:
    """An ordered name -> (info, reader) table: a Source whose tensors are recipes."""

    path: str
    metadata: dict
    entries: dict[str, tuple[TensorInfo, Reader]]
    notes: list[str] = field(default_factory=list)    # what was done on the way, for reports

    @classmethod
    def of(cls, src) -> "LazyTable":
        return cls(src.path, dict(getattr(src, "metadata", {}) or {}),
                   {i.name: (i, (lambda s=src, n=i.name: s.read(n))) for i in src.infos()})

    def infos(self) -> list[TensorInfo]:
        return [info for info, _ in self.entries.values()]

    def read(self, name: str) -> np.ndarray:
        return self.entries[name][1]()

    def names(self) -> list[str]:
        return list(self.entries)


def strip_prefix(t: LazyTable) -> str | None:
    """Strip the one prefix that more than half of the keys carry (ComfyUI's rule, made strict)."""
    names = t.names()
    for p in PREFIXES:
        n = sum(k.startswith(p) for k in names)
        if n and n * 2 > len(names):
            keep = {k[len(p):]: v for k, v in t.entries.items() if k.startswith(p)}
            dropped = len(names) - len(keep)
            t.entries = {k: (TensorInfo(k, i.shape, i.dtype), r) for k, (i, r) in keep.items()}
            t.notes.append(f"stripped prefix {p!r}" + (f", ignored {dropped} other keys" if dropped else ""))
            return p
    return None


def dequantize_fp8(t: LazyTable) -> int:
    """Apply fp8 scales: weight (fp8) * scale (F32 scalar) -> F32. Returns layers dequantized."""
    e = t.entries
    count = 0
    for name in list(e):
        base = next((name[: -len(s)] for s in SCALE_SUFFIXES if name.endswith(s)), None)
        if base is None:
            continue
        wname = base + ".weight"
        if wname not in e:
            raise BadInputError(f"scale {name!r} has no weight {wname!r}", t.path)
        winfo, wread = e[wname]
        sinfo, sread = e.pop(name)
        if winfo.dtype not in FP8_CODES:
            if winfo.dtype == "U8":
                raise UnsupportedError(f"{wname}: packed (nvfp4/int4) weights cannot be read yet", t.path)
            continue   # a scale next to a high-precision weight: nothing to undo
        if sinfo.shape not in ((), (1,)):
            raise UnsupportedError(f"{name}: only per-tensor fp8 scales are supported, got {sinfo.shape}", t.path)

        def read(wread=wread, sread=sread):
            return (wread().astype(np.float32) * np.float32(sread().reshape(())))
        e[wname] = (TensorInfo(wname, winfo.shape, "F32"), read)
        count += 1
    for name in list(e):
        if name in MARKERS or name.endswith(DROP_SUFFIXES):
            del e[name]
    if count:
        t.notes.append(f"dequantized {count} fp8 weights with their scales")
    return count


def unfused_fp8_weights(t: LazyTable) -> list[str]:
    """fp8 weights still present after dequantize_fp8: raw fp8 with no scale."""
    return [n for n, (i, _) in t.entries.items() if i.dtype in FP8_CODES]


def split_fused(t: LazyTable) -> int:
    """Split fused QKV / KV projections into their parts (a chunk along dim 0)."""
    out, count = {}, 0
    for name, (info, read) in t.entries.items():
        m = _FUSED_RE.match(name)
        if not m:
            out[name] = (info, read)
            continue
        head, fused, param = m.groups()
        parts = dict(FUSED)[fused]
        if info.shape[0] % len(parts):
            raise BadInputError(f"{name}: dim 0 ({info.shape[0]}) does not split into {len(parts)}", t.path)
        n = info.shape[0] // len(parts)
        for k, part in enumerate(parts):
            pname = f"{head}{part}.{param}"
            out[pname] = (TensorInfo(pname, (n,) + info.shape[1:], info.dtype),
                          lambda read=read, k=k, n=n: read()[k * n:(k + 1) * n])
        count += 1
    t.entries = out
    if count:
        t.notes.append(f"split {count} fused projections")
    return count


def rename(t: LazyTable, keymap) -> None:
    """Rename every key to stock names through a key map (raises listing offenders)."""
    mapping = keymap.rename(t.names(), to_stock=True, path=t.path)
    t.entries = {mapping[k]: (TensorInfo(mapping[k], i.shape, i.dtype), r) for k, (i, r) in t.entries.items()}
    t.notes.append(f"renamed from {keymap.name} names")
