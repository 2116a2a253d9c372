"""Weight bytes of a Wan DiT in each deployable format, from tensor shapes alone.

Dense formats store every tensor at one width. fp8 / nvfp4 / SVDQuant quantize the
block Linear weights, the tensors the GGUF policy's `attn-v`, `ffn-down` and
`block-linear` rules select (quantizers/gguf_policy.py), and keep the rest in bf16;
their layouts follow formats-comfyui.md §6 and quantization-svdquant.md §2.4. GGUF
sizes are the exact file sizes of `wan-export gguf` (converters/gguf.plan_file).
"""
from __future__ import annotations

import functools
import math
from dataclasses import dataclass

from wan_export.errors import BadInputError
from wan_export.model.config import DiTConfig
from wan_export.variants import dit_shapes

SVDQ_RANK = 32
QUANTIZED_RULES = ("attn-v", "ffn-down", "block-linear")


@dataclass(frozen=True)
class Format:
    name: str
    kind: str            # dense | fp8 | nvfp4 | svdq | gguf
    compute: str         # tensor-core dtype of its GEMMs where the GPU has one (else bf16 after dequant)
    bits: float = 16     # dense: bits per element
    note: str = ""


NATIVE = {f.name: f for f in (
    Format("fp32", "dense", "fp32", 32),       # torch matmuls default to full fp32 (no TF32)
    Format("bf16", "dense", "bf16", 16),
    Format("fp16", "dense", "fp16", 16),
    Format("fp8", "fp8", "fp8", note="e4m3fn block Linears + F32 per-tensor scale (ComfyUI fp8_scaled)"),
    Format("nvfp4", "nvfp4", "fp4", note="E2M1 + FP8 scale per 16 + F32 per-tensor scales (comfy-kitchen)"),
    Format("svdq-int4", "svdq", "int4", note=f"nunchaku W4A4 INT4 group 64 + rank-{SVDQ_RANK} bf16 branch"),
    Format("svdq-nvfp4", "svdq", "fp4", note=f"nunchaku W4A4 NVFP4 group 16 + rank-{SVDQ_RANK} bf16 branch"),
)}
# The formats `wan-export inspect` lists for each DiT (the rest: `wan-export cost --format`).
INSPECT_FORMATS = ("bf16", "fp8", "nvfp4", "svdq-int4", "Q8_0", "Q6_K", "Q5_K_M", "Q4_K_M", "Q3_K_M", "Q2_K")
# nunchaku's kernels exist only for these architectures (quantization-svdquant.md §0.5)
SVDQ_ARCHS = {"svdq-int4": ("sm_75", "sm_80", "sm_86", "sm_89"), "svdq-nvfp4": ("sm_120", "sm_121")}


def _gguf_mixes() -> dict:
    from wan_export.quantizers.gguf_policy import MIXES
    return MIXES


def all_formats() -> list[str]:
    return list(NATIVE) + list(_gguf_mixes())


def get_format(name: str) -> Format:
    if name in NATIVE:
        return NATIVE[name]
    if name.lower() in NATIVE:
        return NATIVE[name.lower()]
    mixes = _gguf_mixes()
    upper = name.upper()
    if upper in mixes:
        return Format(upper, "gguf", "bf16", note="GGUF, dequantized to bf16 per layer (ComfyUI-GGUF)")
    raise BadInputError(f"unknown format {name!r} (known: {', '.join(all_formats())})")


@functools.lru_cache(maxsize=8)
def quantized_linears(cfg: DiTConfig) -> tuple[tuple[str, tuple[int, int]], ...]:
    """The block Linear weights that fp8 / nvfp4 / SVDQuant quantize, in file order."""
    from wan_export.quantizers.gguf_policy import GGUFPolicy, resolve

    shapes = dit_shapes(cfg)
    decisions = resolve(GGUFPolicy("Q8_0"), list(shapes.items()))
    return tuple((d.name, d.shape) for d in decisions if d.rule in QUANTIZED_RULES)


def _quantized_bytes(kind: str, name: str, n: int, k: int) -> int:
    if kind == "fp8":
        return n * k + 4
    if kind == "nvfp4":
        return n * k // 2 + n * k // 16 + 8
    group = 64 if name == "svdq-int4" else 16
    scales = (k // group) * n * (2 if group == 64 else 1)
    extra = 0 if group == 64 else 2 * n + 2            # nvfp4: wcscales [N] + wtscale
    return n * k // 2 + scales + 2 * k + 2 * SVDQ_RANK * (n + k) + extra


def weight_bytes(cfg: DiTConfig, fmt: str | Format) -> int:
    """Bytes of one DiT's weights in `fmt` (one expert for A14B)."""
    f = get_format(fmt) if isinstance(fmt, str) else fmt
    shapes = dit_shapes(cfg)
    if f.kind == "dense":
        return sum(math.prod(s) for s in shapes.values()) * int(f.bits) // 8
    if f.kind == "gguf":
        from wan_export.converters.gguf import file_size
        return file_size(cfg, f.name)
    quant = dict(quantized_linears(cfg))
    rest = sum(math.prod(s) for name, s in shapes.items() if name not in quant) * 2
    return rest + sum(_quantized_bytes(f.kind, f.name, n, k) for n, k in quant.values())


def lowrank_flops(cfg: DiTConfig, tokens: int, text_len: int) -> int:
    """FLOPs SVDQuant's 16-bit rank-r branch adds to one forward (x·down·up on every quantized Linear)."""
    d, f, r = cfg.dim, cfg.ffn_dim, SVDQ_RANK
    per_block = tokens * (6 * 2 * d + 2 * (d + f)) + text_len * 2 * 2 * d
    if cfg.image_branch:
        per_block += cfg.clip_tokens * 2 * 2 * d
    blocks = cfg.num_layers + len(cfg.vace_layers)
    return 2 * r * per_block * blocks


def weight_traffic(fmt: Format, stored: int, dense_bf16: int, native: bool) -> int:
    """Bytes one forward reads: the stored weights, plus a bf16 write and read per layer when the
    GEMM cannot run on the stored type (GGUF, or fp8/fp4/int4 without tensor cores for it)."""
    return stored if native else stored + 2 * dense_bf16


def bytes_by_format(cfg: DiTConfig, names=None) -> dict[str, int]:
    return {n: weight_bytes(cfg, n) for n in (names or all_formats())}
