"""Which Wan DiT tensors get fp8 / nvfp4 / mxfp8 in ComfyUI and ModelOpt files: ordered rules.

First match wins. `--tensor-type REGEX=fp8|nvfp4|mxfp8|bf16` overrides go in front; then
`--exclude-blocks first:N,last:M` (ModelOpt keeps blocks 0-2 and the last 3 of Wan at high
precision, formats-onnx-tensorrt.md §5.3); then the convention every published Wan fp8 file
follows (formats-comfyui.md §6.2): only block Linears are quantized. A format whose block does not
divide a layer's in_features falls back to fp8 under the visible rule `block-fallback`.
The rule machinery (Rule) is the GGUF policy's; names and shapes only, no data.
"""
from __future__ import annotations

import json
import math
import re
from dataclasses import asdict, dataclass
from typing import ClassVar

from wan_export.errors import BadInputError, UnsupportedError
from wan_export.quantizers.gguf_policy import Rule

FORMATS = ("fp8", "nvfp4", "mxfp8")          # quantized formats a Linear can get
KEEP = "bf16"                                # `--tensor-type REGEX=bf16`: leave unquantized
BLOCK_SIZES = {"fp8": 1, "nvfp4": 16, "mxfp8": 32}
FALLBACK = "fp8"
FALLBACK_RULE = "block-fallback"

_BLOCK = r"^(vace_)?blocks\.\d+\."
RULES: tuple[Rule, ...] = (
    # raw nn.Parameters and vectors: ComfyUI's quant-aware ops are Linear (and Embedding) only
    Rule("modulation", r"(^|\.)modulation$", "keep", "modulation: a raw parameter added to activations"),
    Rule("bias", r"\.bias$", "keep", "bias: added after the GEMM in 16-bit"),
    Rule("norm", r"(^|\.)norm[^.]*\.weight$", "keep", "norm weight: elementwise, never a GEMM"),
    Rule("conv3d", r"^(vace_)?patch_embedding\.", "keep", "Conv3d patch embedding: only Linear is quant-aware"),
    # conditioning and output path: kept by Comfy-Org, ModelOpt and every community Wan fp8 file
    Rule("embedding", r"^(text_embedding|time_embedding|time_projection|head|img_emb)\.", "keep",
         "conditioning / output Linear: kept high precision (user-problems.md §4.6)"),
    Rule("not-matrix", r"", "keep", "not a 2-D weight", when=lambda s: len(s) != 2),
    Rule("block-linear", _BLOCK + r"((self_attn|cross_attn)\.(q|k|v|o|k_img|v_img)|ffn\.(0|2))\.weight$",
         "quant", "block Linear: quantized"),
    Rule("other", r"", "keep", "outside the block Linears: unquantized"),
)
# what an override may not quantize: no Linear behind it in the consumer
PROTECTED = ("modulation", "bias", "norm", "conv3d", "not-matrix")


@dataclass(frozen=True)
class Decision:
    name: str                          # the weight tensor (`blocks.3.ffn.0.weight`)
    shape: tuple[int, ...]
    format: str | None                 # fp8 | nvfp4 | mxfp8, or None (kept)
    rule: str
    why: str
    wanted: str | None = None          # the format before a block-size fallback

    @property
    def layer(self) -> str:
        return self.name.removesuffix(".weight")


@dataclass(frozen=True)
class QuantPolicy:
    """The per-tensor format policy of one file; validates itself, serialises to {type, version, params}."""

    quant: str                                   # fp8 | nvfp4 | mxfp8
    exclude_first: int = 0
    exclude_last: int = 0
    overrides: tuple[tuple[str, str], ...] = ()  # (regex, format), in front of RULES

    TYPE: ClassVar[str] = "wan_export.quant_policy"
    VERSION: ClassVar[int] = 1

    def __post_init__(self):
        if self.quant not in FORMATS:
            raise UnsupportedError(f"unknown quantization {self.quant!r} (choose from {', '.join(FORMATS)})")
        if self.exclude_first < 0 or self.exclude_last < 0:
            raise BadInputError("--exclude-blocks counts must be >= 0")
        for regex, fmt in self.overrides:
            if fmt not in FORMATS + (KEEP,):
                raise UnsupportedError(f"--tensor-type {regex}={fmt}: unknown format {fmt!r} "
                                       f"(choose from {', '.join(FORMATS + (KEEP,))})")
            try:
                re.compile(regex)
            except re.error as e:
                raise BadInputError(f"--tensor-type {regex}={fmt}: bad regular expression ({e})") from None

    def rules(self, num_blocks: int) -> tuple[Rule, ...]:
        user = tuple(Rule(f"user:{rx}", rx, fmt, "--tensor-type override") for rx, fmt in self.overrides)
        excluded = [i for i in range(num_blocks)
                    if i < self.exclude_first or i >= num_blocks - self.exclude_last]
        if not excluded:
            return user + RULES
        ex = Rule("excluded-block", rf"^blocks\.({'|'.join(map(str, excluded))})\.", "keep",
                  f"--exclude-blocks first:{self.exclude_first},last:{self.exclude_last}")
        return user + RULES[:6] + (ex,) + RULES[6:]

    def to_dict(self) -> dict:
        params = asdict(self)
        params["overrides"] = [list(o) for o in self.overrides]
        return {"type": self.TYPE, "version": self.VERSION, "params": params}


def parse_exclude_blocks(text: str | None) -> tuple[int, int]:
    """`first:N,last:M` (either part optional) -> (N, M)."""
    first = last = 0
    for part in filter(None, (text or "").split(",")):
        key, _, n = part.partition(":")
        if key.strip() not in ("first", "last") or not n.strip().isdigit():
            raise BadInputError(f"--exclude-blocks {text!r}: expected first:N,last:M")
        first, last = (int(n), last) if key.strip() == "first" else (first, int(n))
    return first, last


def parse_overrides(items) -> tuple[tuple[str, str], ...]:
    """`REGEX=FORMAT` strings -> (regex, format) pairs (split at the last '=')."""
    out = []
    for item in items or ():
        regex, eq, fmt = str(item).rpartition("=")
        if not eq or not regex:
            raise BadInputError(f"--tensor-type {item!r}: expected REGEX=fp8|nvfp4|mxfp8|bf16")
        out.append((regex, fmt.strip().lower()))
    return tuple(out)


def count_blocks(names) -> int:
    idx = [int(m.group(1)) for n in names if (m := re.match(r"^blocks\.(\d+)\.", n))]
    return max(idx) + 1 if idx else 0


def fits(fmt: str, shape: tuple[int, ...]) -> bool:
    return len(shape) == 2 and shape[1] % BLOCK_SIZES[fmt] == 0


def _protected(name: str, shape: tuple[int, ...]) -> Rule | None:
    default = next(r for r in RULES if r.matches(name, shape))
    return default if default.id in PROTECTED or len(shape) != 2 else None


def _decide(policy: QuantPolicy, rules, name: str, shape: tuple[int, ...]) -> Decision:
    """First matching rule; an override never applies to a tensor with no Linear behind it."""
    protected = _protected(name, shape)
    rule = next(r for r in rules if r.matches(name, shape) and not (r.id.startswith("user:") and protected))
    fmt = policy.quant if rule.target == "quant" else (None if rule.target in ("keep", KEEP) else rule.target)
    if fmt and not fits(fmt, shape):
        why = f"in_features {shape[1]} is not a multiple of the {fmt} block ({BLOCK_SIZES[fmt]}): {FALLBACK}"
        return Decision(name, shape, FALLBACK, FALLBACK_RULE, why, wanted=fmt)
    return Decision(name, shape, fmt, rule.id, rule.why)


def _check_overrides(policy: QuantPolicy, tensors) -> None:
    """An override that quantizes only tensors without a Linear (norms, the Conv3d, biases) is refused."""
    for regex, fmt in policy.overrides:
        if fmt == KEEP:
            continue
        hits = [(n, _protected(n, s)) for n, s in tensors if re.search(regex, n)]
        if hits and all(p is not None for _, p in hits):
            name, why = hits[0][0], hits[0][1].why
            raise UnsupportedError(f"--tensor-type {regex}={fmt}: {name} cannot take {fmt} ({why})")


def resolve(policy: QuantPolicy, tensors: list[tuple[str, tuple[int, ...]]]) -> list[Decision]:
    """One Decision per weight tensor (every tensor of the DiT), in the given order."""
    tensors = [(n, tuple(s)) for n, s in tensors]
    _check_overrides(policy, tensors)
    rules = policy.rules(count_blocks(n for n, _ in tensors))
    return [_decide(policy, rules, name, shape) for name, shape in tensors]


def quantized(decisions: list[Decision]) -> list[Decision]:
    return [d for d in decisions if d.format]


def summary(decisions: list[Decision]) -> list[dict]:
    """Rows (rule, format, tensors, parameters, why) for reports and metadata, first-seen order."""
    rows: dict[tuple[str, str], dict] = {}
    for d in decisions:
        key = (d.rule, d.format or KEEP)
        row = rows.setdefault(key, {"rule": d.rule, "format": d.format or KEEP, "tensors": 0,
                                    "parameters": 0, "why": d.why})
        row["tensors"] += 1
        row["parameters"] += math.prod(d.shape)
    return list(rows.values())


def metadata_json(policy: QuantPolicy, decisions: list[Decision], extra: dict | None = None) -> str:
    """The policy, its per-rule summary and every fallback, as one sorted JSON string."""
    record = {**policy.to_dict(), "rules": summary(decisions),
              "fallbacks": [{"tensor": d.name, "wanted": d.wanted, "format": d.format, "why": d.why}
                            for d in decisions if d.rule == FALLBACK_RULE], **(extra or {})}
    return json.dumps(record, sort_keys=True, separators=(",", ":"))
