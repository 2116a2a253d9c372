"""Tables and profile arithmetic for `wan-export trt`: targets and what each builds,
resolution presets, `--profile` / `--batch` parsing, per-graph shape ranges and
plan names. Pure data plus small functions; TensorRT is never imported here.

A profile point is a video size W x H x frames; it becomes concrete min/opt/max
shapes for every input of a graph through the symbolic dims of wan_onnx.json
(`2*hh` = even latent height). Profiles cannot express divisibility, so a size
whose latent height or width is odd is refused here.
"""
from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass

from wan_export.converters import onnx_specs as S
from wan_export.errors import BadInputError, UnsupportedError

PRECISIONS = ("fp32", "fp16", "bf16", "fp8", "nvfp4")
QUANT_PRECISIONS = ("fp8", "nvfp4")
# target -> (what its tensor cores build, which backends target it). Turing builds fp16 only: the
# graphs' fp32 islands (norms, modulation) have no fp32 GEMM/conv3d there (formats-onnx-tensorrt §9).
TARGETS = {
    "sm75": (("fp16",), ("rtx",)),
    "sm80": (("fp32", "fp16", "bf16"), ("rtx", "tensorrt")),
    "sm86": (("fp32", "fp16", "bf16"), ("rtx", "tensorrt")),
    "sm89": (("fp32", "fp16", "bf16", "fp8"), ("rtx", "tensorrt")),
    "sm90": (("fp32", "fp16", "bf16", "fp8"), ("tensorrt",)),
    "sm100": (("fp32", "fp16", "bf16", "fp8", "nvfp4"), ("tensorrt",)),
    "sm120": (("fp32", "fp16", "bf16", "fp8", "nvfp4"), ("rtx", "tensorrt")),
    "sm121": (("fp32", "fp16", "bf16", "fp8", "nvfp4"), ("rtx",)),
}
# `--target all`: one plan per tier the backend targets (Turing and GB10 only when named); a tier's members share kernels'
# datatype support, so a plan for a tier never narrows to another's
TIERS = (("sm80", "sm86"), ("sm89",), ("sm90",), ("sm100",), ("sm120",))
NEEDS = {"fp32": "Ampere (SM80)", "bf16": "Ampere (SM80)", "fp8": "Ada (SM89)", "nvfp4": "Blackwell (SM100/SM120)",
         "fp16": "Turing (SM75)"}
# name -> (width, height); official Wan resolutions (TI2V-5B uses 1280x704, a multiple of 32)
PRESETS = {"480p": (832, 480), "720p": (1280, 720), "704p": (1280, 704)}
DEFAULT_FRAMES = 81               # video frames; 81 = 21 latent frames
DEFAULT_TEXT_LEN = 512            # Wan pads prompts to 512 tokens
DEFAULT_BATCH = (1, 2)            # CFG batches the conditional and unconditional branch


@dataclass(frozen=True)
class Point:
    """One video size: width, height (pixels) and video frames."""

    width: int
    height: int
    frames: int

    def label(self) -> str:
        return f"{self.width}x{self.height}x{self.frames}"


@dataclass(frozen=True)
class Profile:
    """min/opt/max video sizes, the batch range and the text length, as the user asked."""

    spec: str
    points: tuple[Point, Point, Point]       # min, opt, max
    batch: tuple[int, int]
    text_len: int

    def to_dict(self) -> dict:
        return {"spec": self.spec, "min": self.points[0].label(), "opt": self.points[1].label(),
                "max": self.points[2].label(), "batch": list(self.batch), "text_len": self.text_len}


# ---- targets -------------------------------------------------------------------------------------

def parse_targets(text: str, backend: str) -> list[tuple[str, ...]]:
    """'sm86,sm89' -> [('sm86', 'sm89')] (one plan); 'all' -> the backend's tiers, one plan each."""
    if text == "all":
        return [t for t in (tuple(s for s in tier if backend in TARGETS[s][1]) for tier in TIERS) if t]
    names = [s.strip().lower() for s in text.split(",") if s.strip()]
    for s in names:
        if s not in TARGETS:
            raise UnsupportedError(f"unknown target {s!r} (choose from {', '.join(TARGETS)}, or all)")
        if backend not in TARGETS[s][1]:
            other = " or ".join(b for b in TARGETS[s][1])
            raise UnsupportedError(f"{s} is not a {backend} target (use --backend {other})")
    if not names:
        raise UnsupportedError("no target given")
    return [tuple(dict.fromkeys(names))]


def check_precision(groups: list[tuple[str, ...]], precision: str, explicit: bool) -> list[tuple[str, ...]]:
    """Refuse a target that cannot build `precision` (named targets), or drop it (`all`)."""
    if explicit:
        for group in groups:
            bad = [s for s in group if precision not in TARGETS[s][0]]
            if bad:
                raise UnsupportedError(f"{precision} cannot be built for {', '.join(bad)}: it needs "
                                       f"{NEEDS[precision]} or newer" + (" (Turing builds fp16 only)"
                                                                         if "sm75" in bad else ""))
        return groups
    kept = [g for g in (tuple(s for s in group if precision in TARGETS[s][0]) for group in groups) if g]
    if not kept:
        raise UnsupportedError(f"no target of this backend builds {precision} (needs {NEEDS[precision]})")
    return kept


# ---- profiles ------------------------------------------------------------------------------------

_SIZE = re.compile(r"^(\d+)x(\d+)(?:x(\d+))?$")


def parse_point(text: str) -> Point:
    """'480p', '480px49' (a preset with frames) or 'WxH[xFRAMES]'."""
    text = text.strip().lower()
    preset = re.match(r"^([0-9]+p)(?:x(\d+))?$", text)
    if preset and preset[1] in PRESETS:
        (w, h), frames = PRESETS[preset[1]], preset[2]
    elif (m := _SIZE.match(text)):
        w, h, frames = int(m[1]), int(m[2]), m[3]
    else:
        raise BadInputError(f"profile size {text!r} is not a preset ({', '.join(PRESETS)}) or WxH[xFRAMES]")
    return Point(w, h, _frames(frames or str(DEFAULT_FRAMES), text))


def _frames(text: str, spec: str) -> int:
    n = int(text)
    if n < 1 or (n - 1) % 4:
        raise BadInputError(f"profile {spec!r}: {n} video frames is not 4k+1 (1, 5, ..., 81)")
    return n


def parse_profile(text: str, batch: tuple[int, int], text_len: int) -> Profile:
    """'480p' (frames 1..81 at 832x480), 'MIN:MAX' or 'MIN:OPT:MAX' points, e.g. '480p:720p'."""
    parts = [parse_point(p) for p in text.split(":")]
    if len(parts) == 1:
        p = parts[0]
        parts = [Point(p.width, p.height, 1), p, p]
    elif len(parts) == 2:
        parts = [parts[0], parts[1], parts[1]]
    elif len(parts) != 3:
        raise BadInputError(f"profile {text!r}: give SIZE, MIN:MAX or MIN:OPT:MAX")
    lo, opt, hi = parts
    for field in ("width", "height", "frames"):
        a, b, c = (getattr(p, field) for p in parts)
        if not a <= b <= c:
            raise BadInputError(f"profile {text!r}: min {field} {a} > opt {b} or opt > max {c}")
    return Profile(text, (lo, opt, hi), batch, text_len)


def parse_batch(text: str) -> tuple[int, int]:
    m = re.match(r"^(\d+)(?:-(\d+))?$", text.strip())
    if not m:
        raise BadInputError(f"--batch {text!r} is not N or MIN-MAX")
    lo, hi = int(m[1]), int(m[2] or m[1])
    if lo < 1 or lo > hi:
        raise BadInputError(f"--batch {text!r}: min {lo} must be >= 1 and <= max {hi}")
    return lo, hi


def graph_sizes(profile: Profile, role: str, stride: int, patch: tuple[int, int], fixed_text: bool) -> list[dict]:
    """min/opt/max symbol values of one graph (onnx_specs symbols: batch, frames, hh, ww, h, w, text_len)."""
    out = []
    for p, b in zip(profile.points, (profile.batch[0], profile.batch[1], profile.batch[1])):
        if p.width % stride or p.height % stride:
            raise BadInputError(f"profile {profile.spec!r}: {p.width}x{p.height} is not a multiple of the VAE "
                                f"stride {stride}")
        lw, lh = p.width // stride, p.height // stride
        sizes = {"batch": b, "frames": (p.frames - 1) // 4 + 1, "h": lh, "w": lw}
        if role == "dit":
            if lh % patch[0] or lw % patch[1]:
                raise BadInputError(f"profile {profile.spec!r}: latent size {lw}x{lh} of {p.width}x{p.height} is "
                                    f"odd; the DiT patchifies by {patch[1]}x{patch[0]} (use a multiple of "
                                    f"{stride * patch[0]} pixels)")
            sizes.update(hh=lh // patch[0], ww=lw // patch[1])
        sizes["text_len"] = profile.text_len if fixed_text or p is not profile.points[0] else 1
        out.append(sizes)
    return out


def input_ranges(entry: dict, sizes: list[dict]) -> dict[str, list[list[int]]]:
    """input name -> [min, opt, max] concrete shapes from the manifest's symbolic dims."""
    return {t["name"]: [list(S.concrete(tuple(t["shape"]), s)) for s in sizes] for t in entry["inputs"]}


def profile_hash(ranges: list[dict]) -> str:
    """8 hex digits over every profile's concrete shapes: same shapes, same name."""
    blob = json.dumps(ranges, sort_keys=True, separators=(",", ":")).encode()
    return hashlib.sha256(blob).hexdigest()[:8]


def plan_name(stem: str, backend: str, version: str, targets: tuple[str, ...], precision: str, phash: str) -> str:
    return f"{stem}.{backend}-{version}.{'-'.join(targets)}.{precision}.{phash}.plan"


PLAN_NAME = re.compile(r"^(?P<stem>[a-z0-9_]+)\.(?P<backend>rtx|tensorrt)-(?P<version>[0-9.]+)\."
                       r"(?P<targets>sm\d+(?:-sm\d+)*)\.(?P<precision>[a-z0-9]+)\.(?P<hash>[0-9a-f]{8})\.plan$")
