"""Which ggml type each Wan DiT tensor gets in a GGUF file: mixes, rules, fallbacks.

MIXES is the one table of `--type` values (the CLI and README are checked
against it). RULES is an ordered list, first match wins, that reproduces the
published Wan GGUF files (city96's llama.cpp patch, formats-gguf.md §3 and §5);
`--tensor-type REGEX=TYPE` overrides go in front of it. A block type that does
not fit a tensor's row length falls back visibly (rule `row-fallback`).
Everything here works from names and shapes only, so sizes need no data.
"""
from __future__ import annotations

import json
import math
import re
from dataclasses import asdict, dataclass
from typing import Callable, ClassVar

from wan_export.errors import BadInputError, UnsupportedError
from wan_export.quantizers.ggml import GGML_TYPES

FLOAT_TYPES = ("F32", "F16", "BF16")


@dataclass(frozen=True)
class Mix:
    """A `--type` value: the ggml type of each quantized role (city96 `img_tensor_get_type`)."""

    name: str
    linear: str                       # block Linear weights not named below
    attn_v: str                       # `.v.weight` (self_attn.v and cross_attn.v, not v_img)
    ffn_down: str                     # `.ffn.2.weight`
    first_v: tuple[str, int] | None = None   # the first N `.v.weight` in file order get this type
    file_type: int = 0                # general.file_type (gguf-py LlamaFileType)

    @property
    def ggml_types(self) -> tuple[str, ...]:
        extra = (self.first_v[0],) if self.first_v else ()
        return tuple(dict.fromkeys((self.linear, self.attn_v, self.ffn_down) + extra))

    @property
    def is_float(self) -> bool:
        return self.name in FLOAT_TYPES


def _uniform(name: str, t: str, ftype: int) -> Mix:
    return Mix(name, t, t, t, file_type=ftype)


# file_type values are gguf-py's LlamaFileType (ALL_F32 = 0, MOSTLY_<name> otherwise).
MIXES: dict[str, Mix] = {m.name: m for m in (
    _uniform("F32", "F32", 0),
    _uniform("F16", "F16", 1),
    _uniform("BF16", "BF16", 32),
    _uniform("Q8_0", "Q8_0", 7),
    _uniform("Q6_K", "Q6_K", 18),
    Mix("Q5_K_M", "Q5_K", "Q6_K", "Q6_K", file_type=17),
    Mix("Q5_K_S", "Q5_K", "Q5_K", "Q5_K", file_type=16),
    _uniform("Q5_1", "Q5_1", 9),
    Mix("Q5_0", "Q5_0", "Q5_0", "Q5_1", file_type=8),      # the patch raises ffn.2 to Q5_1
    Mix("Q4_K_M", "Q4_K", "Q6_K", "Q6_K", file_type=15),
    Mix("Q4_K_S", "Q4_K", "Q4_K", "Q5_K", first_v=("Q5_K", 4), file_type=14),
    _uniform("Q4_1", "Q4_1", 3),
    Mix("Q4_0", "Q4_0", "Q4_0", "Q4_1", file_type=2),      # the patch raises ffn.2 to Q4_1
    Mix("Q3_K_L", "Q3_K", "Q5_K", "Q5_K", file_type=13),
    Mix("Q3_K_M", "Q3_K", "Q4_K", "Q4_K", first_v=("Q5_K", 2), file_type=12),
    _uniform("Q3_K_S", "Q3_K", 11),
    Mix("Q2_K", "Q2_K", "Q3_K", "Q2_K", file_type=10),
    # Not made by the city96 patch (it rejects IQ ftypes) but loaded by both consumers.
    _uniform("IQ4_NL", "IQ4_NL", 25),
    _uniform("IQ4_XS", "IQ4_XS", 30),
)}
MIX_BY_FILE_TYPE = {m.file_type: m.name for m in MIXES.values()}


@dataclass(frozen=True)
class Rule:
    """One policy row: tensors matching `pattern` (re.search) and `when` get `target`.

    target is a ggml type, or a role resolved by the policy: `mix` / `mix.attn_v` /
    `mix.ffn_down` (the mix table) or `float` (unquantized matrices).
    """

    id: str
    pattern: str
    target: str
    why: str
    when: Callable[[tuple[int, ...]], bool] | None = None

    def matches(self, name: str, shape: tuple[int, ...]) -> bool:
        return re.search(self.pattern, name) is not None and (self.when is None or self.when(shape))


_BLOCK = r"^(vace_)?blocks\.\d+\."
RULES: tuple[Rule, ...] = (
    # ComfyUI-GGUF hands these to torch as raw nn.Parameters (no GGMLOps): BF16 or
    # quantized bytes leak into the math (#477), "can't load from BF16" (keys_hiprec).
    Rule("raw-parameter", r"(^|\.)modulation$|^img_emb\.emb_pos$", "F32",
         "raw nn.Parameter in ComfyUI: F32, n_dims 3"),
    # Norm weights and biases run as torch modules; ComfyUI-GGUF keeps 1-D in F32.
    Rule("vector", r"", "F32", "1-D (bias, norm): F32", when=lambda s: len(s) == 1),
    # city96's convert.py upgrades tensors of <= 1024 elements to F32.
    Rule("tiny", r"", "F32", "<= 1024 elements: F32", when=lambda s: math.prod(s) <= 1024),
    # Conv3d runs through torch manual_cast in ComfyUI, so only F32/F16 work; F32 is exact and
    # what every published Wan GGUF stores; sd.cpp converts it to its declared F16 at load.
    Rule("conv3d", r"^(vace_)?patch_embedding\.weight$", "F32",
         "Conv3d patch embedding: F32, never quantized"),
    # Excluded by the city96 llama.cpp patch: conditioning and output path.
    Rule("embedding", r"^(text_embedding|time_embedding|time_projection|head|img_emb)\.", "float",
         "embeddings, time projection, head, img_emb: unquantized"),
    # Only 2-D Linear weights are quantized by any published Wan GGUF.
    Rule("not-matrix", r"", "float", "not a 2-D weight: unquantized", when=lambda s: len(s) != 2),
    Rule("attn-v", _BLOCK + r"(self|cross)_attn\.v\.weight$", "mix.attn_v", "attention v: mix's attn_v type"),
    Rule("ffn-down", _BLOCK + r"ffn\.2\.weight$", "mix.ffn_down", "ffn down: mix's ffn_down type"),
    Rule("block-linear", _BLOCK + r".+\.weight$", "mix", "block Linear weight: mix type"),
    # The patch quantizes nothing outside (vace_)blocks.
    Rule("other", r"", "float", "outside the blocks: unquantized"),
)
# Tensors that loaders use as raw torch data: an override may only pick F32 or F16 for them.
PROTECTED_RULES = ("raw-parameter", "vector", "tiny", "conv3d", "not-matrix")
FALLBACK_RULE = "row-fallback"


@dataclass(frozen=True)
class Decision:
    """The type one tensor gets, and the rule that chose it (for reports)."""

    name: str
    shape: tuple[int, ...]
    ggml: str
    rule: str
    wanted: str | None = None         # the type before a row-length fallback

    @property
    def note(self) -> str:
        if self.rule != FALLBACK_RULE:
            return ""
        bs = GGML_TYPES[self.wanted].block_size
        return f"row length {self.shape[-1]} is not a multiple of {bs} ({self.wanted}): {self.ggml}"


@dataclass(frozen=True)
class GGUFPolicy:
    """The per-tensor type policy of one GGUF file; validates itself, serialises to {type, version, params}."""

    mix: str
    float_type: str | None = None     # unquantized matrices; None: F32/BF16 for those mixes, else F16
    fallback: str = "F16"             # what a block type that does not fit a row becomes (§2.2)
    overrides: tuple[tuple[str, str], ...] = ()     # (regex, type), in front of RULES
    imatrix: str | None = None        # sha256 of the importance file, when one is used

    TYPE: ClassVar[str] = "wan_export.gguf_policy"
    VERSION: ClassVar[int] = 1

    def __post_init__(self):
        if self.mix not in MIXES:
            raise UnsupportedError(f"unsupported GGUF type {self.mix!r} (choose from {', '.join(MIXES)})")
        for label, value in (("float type", self.float_type), ("fallback type", self.fallback)):
            if value is not None and value not in FLOAT_TYPES:
                raise UnsupportedError(f"unsupported {label} {value!r} (choose from {', '.join(FLOAT_TYPES)})")
        for regex, t in self.overrides:
            if t not in GGML_TYPES:
                raise UnsupportedError(f"--tensor-type {regex}={t}: unknown ggml type {t!r} "
                                       f"(choose from {', '.join(GGML_TYPES)})")
            try:
                re.compile(regex)
            except re.error as e:
                raise BadInputError(f"--tensor-type {regex}={t}: bad regular expression ({e})") from None

    @property
    def unquantized(self) -> str:
        if self.float_type:
            return self.float_type
        return self.mix if self.mix in ("F32", "BF16") else "F16"

    @property
    def rules(self) -> tuple[Rule, ...]:
        user = tuple(Rule(f"user:{rx}", rx, t, "--tensor-type override") for rx, t in self.overrides)
        return user + RULES

    def role(self, target: str, v_index: int) -> str:
        """A rule target -> ggml type."""
        m = MIXES[self.mix]
        if target == "mix.attn_v":
            return m.first_v[0] if m.first_v and v_index < m.first_v[1] else m.attn_v
        roles = {"mix": m.linear, "mix.ffn_down": m.ffn_down, "float": self.unquantized}
        return roles.get(target, target)

    def to_dict(self) -> dict:
        params = asdict(self)
        params["overrides"] = [list(o) for o in self.overrides]
        return {"type": self.TYPE, "version": self.VERSION, "params": params}

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True, separators=(",", ":"))

    @classmethod
    def from_dict(cls, d: dict) -> "GGUFPolicy":
        if d.get("type") != cls.TYPE or d.get("version") != cls.VERSION:
            raise BadInputError(f"not a version-{cls.VERSION} {cls.TYPE} record: {d.get('type')} v{d.get('version')}")
        p = dict(d["params"])
        p["overrides"] = tuple(tuple(o) for o in p.get("overrides", ()))
        return cls(**p)


def parse_overrides(items) -> tuple[tuple[str, str], ...]:
    """`REGEX=TYPE` strings -> (regex, TYPE) pairs (split at the last '=')."""
    out = []
    for item in items or ():
        regex, eq, t = str(item).rpartition("=")
        if not eq or not regex:
            raise BadInputError(f"--tensor-type {item!r}: expected REGEX=TYPE")
        out.append((regex, t.strip().upper()))
    return tuple(out)


def _first_rule(policy: GGUFPolicy, name: str, shape: tuple[int, ...]) -> Rule:
    return next(r for r in policy.rules if r.matches(name, shape))


def _default_rule(name: str, shape: tuple[int, ...]) -> Rule:
    return next(r for r in RULES if r.matches(name, shape))


def fits(t: str, shape: tuple[int, ...]) -> bool:
    """ggml stores rows of ne[0] = the last torch dim; blocks never cross rows."""
    return not shape or shape[-1] % GGML_TYPES[t].block_size == 0


def resolve(policy: GGUFPolicy, tensors: list[tuple[str, tuple[int, ...]]]) -> list[Decision]:
    """One Decision per tensor, in file order (the order `first_v` counts in)."""
    out, v_index, bad = [], 0, []
    for name, shape in tensors:
        shape = tuple(shape)
        rule = _first_rule(policy, name, shape)
        t = policy.role(rule.target, v_index)
        if rule.target == "mix.attn_v":
            v_index += 1
        if rule.id.startswith("user:") and _default_rule(name, shape).id in PROTECTED_RULES \
                and t not in ("F32", "F16"):
            bad.append(f"{name} -> {t}")
        if fits(t, shape):
            out.append(Decision(name, shape, t, rule.id))
        else:
            out.append(Decision(name, shape, policy.fallback, FALLBACK_RULE, wanted=t))
    if bad:
        raise UnsupportedError(f"--tensor-type would give {len(bad)} tensors a type their loaders cannot use "
                               f"(raw parameters, vectors and the Conv3d must stay F32/F16): {', '.join(bad[:5])}")
    return out


def summary(decisions: list[Decision]) -> list[dict]:
    """Rows (rule, ggml type, tensors, parameters) for reports, in first-seen order."""
    rows: dict[tuple[str, str], dict] = {}
    for d in decisions:
        row = rows.setdefault((d.rule, d.ggml), {"rule": d.rule, "type": d.ggml, "tensors": 0, "parameters": 0})
        row["tensors"] += 1
        row["parameters"] += math.prod(d.shape)
    return list(rows.values())


def fallbacks(decisions: list[Decision]) -> list[Decision]:
    return [d for d in decisions if d.rule == FALLBACK_RULE]


def missing_quantizers(mixes) -> dict[str, str]:
    """Block types the mixes need whose quantizer does not import: type -> reason."""
    from wan_export.quantizers.ggml import quantizer

    missing = {}
    for t in dict.fromkeys(t for m in mixes for t in MIXES[m].ggml_types):
        if GGML_TYPES[t].impl is None:
            continue
        try:
            quantizer(t)
        except (ImportError, AttributeError) as e:
            missing[t] = f"{type(e).__name__}: {e}"
    return missing
