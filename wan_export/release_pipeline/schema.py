"""The recipe schema: one table of keys per recipe section, each key with its type and meaning.

The per-format artifact options live with their format (formats.py); everything else is here.
`check_value` is the one type/choice check every key goes through; README's schema table is
rendered from these tables (`schema_rows`).
"""
from __future__ import annotations

from dataclasses import dataclass

SCHEMA_VERSION = 1


@dataclass(frozen=True)
class Opt:
    """One recipe key: type ('str', 'int', 'float', 'bool', 'list', 'str|list', 'int|list'), choices, default."""

    type: str
    doc: str
    required: bool = False
    choices: tuple = ()
    default: object = None


MODEL = {
    "name": Opt("str", "model name, the model card's title", required=True),
    "license": Opt("str", "license id for the card (e.g. apache-2.0)", required=True),
    "base_model": Opt("str", "Hugging Face id of the model this release quantizes/converts", required=True),
    "authors": Opt("list", "authors credited in the card", default=[]),
    "pipeline_tag": Opt("str", "Hugging Face pipeline tag (default from the variant)",
                        choices=("text-to-video", "image-to-video", "video-to-video")),
    "tags": Opt("list", "extra card tags", default=[]),
    "description": Opt("str", "a paragraph for the card", default=""),
    "repo": Opt("str", "Hugging Face repo id of this release (used in usage snippets)"),
}

SOURCE = {
    "path": Opt("str", "release folder or file, relative to the recipe (or --source)"),
    "synthetic": Opt("str", "a variant id: write a tiny synthetic release of it (demo, tests)"),
    "variant": Opt("str", "the variant the source must be; lets --plan/--dry-run work from shapes alone"),
    "seed": Opt("int", "seed of a synthetic source", default=0),
}

CALIBRATION = {
    "prompts": Opt("str", "prompt set: 'builtin' or a text file, one prompt a line", default="builtin"),
    "num_prompts": Opt("int", "prompts used", default=64),
    "steps": Opt("int", "sampling steps per prompt", default=8),
    "size": Opt("int|list", "[width, height] in pixels", default=[832, 480]),
    "frames": Opt("int", "video frames (4k+1)", default=17),
    "guidance": Opt("float", "classifier-free guidance scale (default: official)"),
    "shift": Opt("float", "flow shift (default: official)"),
    "seed": Opt("int", "sampling seed", default=0),
    "solver": Opt("str", "sampler", choices=("unipc", "euler"), default="unipc"),
    "save_activations": Opt("int", "input rows kept per layer (GPTQ/SVDQuant)", default=0),
    "image": Opt("str", "first frame for I2V/FLF2V/TI2V calibration, relative to the recipe"),
    "last_image": Opt("str", "last frame for FLF2V calibration, relative to the recipe"),
    "gpus": Opt("int", "GPUs for torchrun (1: no torchrun)", default=1),
}

GATE = {
    "max_rel_l2": Opt("float", "replaces the validator's output rel-L2 bound"),
    "min_cosine": Opt("float", "replaces the cosine bound"),
    "max_abs": Opt("float", "replaces the max-abs bound"),
    "min_snr_db": Opt("float", "replaces the SNR bound"),
    "min_psnr_db": Opt("float", "replaces the decoded-video PSNR bound (sampling parity)"),
}

# keys every artifact takes, whatever its format
COMMON = {
    "name": Opt("str", "unique artifact name: [A-Za-z0-9._-], the folder in DIST and the job name", required=True),
    "format": Opt("str", "an artifact format (table below)", required=True),
    "calibrated": Opt("bool", "built from the [calibration] statistics", default=False),
    "validate": Opt("bool", "validate and gate this artifact", default=True),
    "sampling": Opt("bool", "also validate by sampling through it (validate --sampling): per-step curves "
                    "and preview frames in the report", default=False),
}

SECTIONS = {"model": MODEL, "source": SOURCE, "calibration": CALIBRATION}
TOP_LEVEL = ("schema", "model", "source", "calibration", "artifact", "gates")

_PY = {"str": str, "int": int, "float": (int, float), "bool": bool, "list": list}


def check_value(opt: Opt, value) -> str | None:
    """None when `value` fits `opt`, else the problem in words."""
    kinds = opt.type.split("|")
    ok = any(isinstance(value, _PY[k]) and not (k in ("int", "float") and isinstance(value, bool))
             for k in kinds)
    if not ok:
        return f"expected {' or '.join(kinds)}, got {type(value).__name__} {value!r}"
    if opt.choices:
        items = value if isinstance(value, list) else [value]
        bad = [v for v in items if v not in opt.choices]
        if bad:
            return f"{bad[0]!r} is not one of {', '.join(map(str, opt.choices))}"
    return None


def schema_rows() -> list[tuple[str, str, str]]:
    """(key, type, meaning) of every section, for the README."""
    rows = [("schema", "int", f"schema version ({SCHEMA_VERSION})")]
    for section, table in (("model", MODEL), ("source", SOURCE), ("calibration", CALIBRATION)):
        rows += [(f"[{section}] {k}", o.type, o.doc + (" (required)" if o.required else ""))
                 for k, o in table.items()]
    rows += [(f"[[artifact]] {k}", o.type, o.doc + (" (required)" if o.required else ""))
             for k, o in COMMON.items()]
    rows += [(f"[gates.NAME] {k}", o.type, o.doc) for k, o in GATE.items()]
    return rows
