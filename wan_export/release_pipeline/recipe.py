"""Read and check a release recipe (TOML). Every problem is one BadInputError naming the key and
its line: `recipe.toml: line 12: artifact[1].dtype: 'bf8' is not one of bf16, fp16, fp32`.

tomllib keeps no positions, so `key_lines` finds the line of each key by scanning the text for
table headers and `key =` lines (enough for the recipes' plain layout).
"""
from __future__ import annotations

import hashlib
import os
import re
from dataclasses import dataclass, field

from wan_export.errors import BadInputError
from wan_export.release_pipeline import schema as S
from wan_export.release_pipeline.formats import FORMATS

NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
_HEADER = re.compile(r"^\s*(\[\[?)\s*([^\]]+?)\s*\]\]?")
_KEY = re.compile(r"^\s*((?:[A-Za-z0-9_-]+|\"[^\"]*\"|'[^']*')(?:\s*\.\s*(?:[A-Za-z0-9_-]+|\"[^\"]*\"|'[^']*'))*)\s*=")


def _parts(dotted: str) -> tuple:
    return tuple(p.strip().strip("\"'") for p in re.findall(r"\"[^\"]*\"|'[^']*'|[^.]+", dotted))


def key_lines(text: str) -> dict[tuple, int]:
    """(path...) -> 1-based line, e.g. ('artifact', 1, 'dtype') or ('gates', 'gguf', 'max_rel_l2')."""
    lines: dict[tuple, int] = {}
    arrays: dict[tuple, int] = {}
    table: tuple = ()
    for n, line in enumerate(text.splitlines(), 1):
        if line.lstrip().startswith("#"):
            continue
        h = _HEADER.match(line)
        if h:
            path = _parts(h.group(2))
            if h.group(1) == "[[":
                arrays[path] = arrays.get(path, -1) + 1
                path = path + (arrays[path],)
            table = path
            for i in range(1, len(path) + 1):
                lines.setdefault(path[:i], n)
            continue
        k = _KEY.match(line)
        if k:
            path = table + _parts(k.group(1))
            for i in range(len(table) + 1, len(path) + 1):
                lines.setdefault(path[:i], n)
    return lines


@dataclass
class Recipe:
    path: str
    sha256: str
    model: dict
    source: dict
    calibration: dict | None
    artifacts: list[dict]                 # {"name", "format", "calibrated", "validate", "options"}
    gates: dict[str, dict] = field(default_factory=dict)

    @property
    def folder(self) -> str:
        return os.path.dirname(os.path.abspath(self.path))

    def artifact(self, name: str) -> dict:
        for a in self.artifacts:
            if a["name"] == name:
                return a
        raise BadInputError(f"no artifact named {name!r} (recipe has: {', '.join(self.names)})", self.path)

    @property
    def names(self) -> list[str]:
        return [a["name"] for a in self.artifacts]


class _Checker:
    def __init__(self, path: str, text: str):
        self.path, self.lines = path, key_lines(text)

    def fail(self, where: tuple, problem: str):
        line = next((self.lines[where[:i]] for i in range(len(where), 0, -1) if where[:i] in self.lines), 1)
        shown = "".join(f"[{p}]" if isinstance(p, int) else (f".{p}" if i else p) for i, p in enumerate(where))
        raise BadInputError(f"line {line}: {shown or 'recipe'}: {problem}", self.path)

    def table(self, where: tuple, data, spec: dict[str, S.Opt], extra: dict | None = None) -> dict:
        """Check a table against its spec; returns it with defaults filled in."""
        if not isinstance(data, dict):
            self.fail(where, f"expected a table, got {type(data).__name__}")
        allowed = {**spec, **(extra or {})}
        for key, value in data.items():
            if key not in allowed:
                self.fail(where + (key,), f"unknown key (expected one of {', '.join(allowed)})")
            problem = S.check_value(allowed[key], value)
            if problem:
                self.fail(where + (key,), problem)
        for key, opt in allowed.items():
            if opt.required and key not in data:
                self.fail(where, f"missing required key {key!r}")
        return {k: data.get(k, o.default) for k, o in allowed.items() if k in data or o.default is not None}


def parse(text: str, path: str) -> Recipe:
    import tomllib

    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        m = re.search(r"at line (\d+)", str(e))
        raise BadInputError(f"line {m.group(1) if m else '?'}: not valid TOML ({str(e).split(' (at')[0]})",
                            path) from None
    c = _Checker(path, text)
    for key in data:
        if key not in S.TOP_LEVEL:
            c.fail((key,), f"unknown key (expected one of {', '.join(S.TOP_LEVEL)})")
    if data.get("schema", S.SCHEMA_VERSION) != S.SCHEMA_VERSION:
        c.fail(("schema",), f"schema {data['schema']!r} is not supported (this build reads {S.SCHEMA_VERSION})")
    for key in ("model", "source", "artifact"):
        if key not in data:
            c.fail((), f"missing required {'[[artifact]] tables' if key == 'artifact' else f'[{key}] table'}")
    model = c.table(("model",), data["model"], S.MODEL)
    source = c.table(("source",), data["source"], S.SOURCE)
    if ("path" in source) == ("synthetic" in source):
        c.fail(("source",), "give exactly one of 'path' or 'synthetic'")
    calib = c.table(("calibration",), data["calibration"], S.CALIBRATION) if "calibration" in data else None
    arts = _artifacts(c, data["artifact"], calib is not None)
    gates = data.get("gates", {})
    if not isinstance(gates, dict):
        c.fail(("gates",), "expected a table of [gates.NAME] tables")
    names = {a["name"] for a in arts}
    for name, gate in gates.items():
        if name not in names:
            c.fail(("gates", name), f"no artifact named {name!r}")
        c.table(("gates", name), gate, S.GATE)
    sha = hashlib.sha256(text.encode("utf-8")).hexdigest()
    return Recipe(path, sha, model, source, calib, arts, gates)


def _artifacts(c: _Checker, items, has_calibration: bool) -> list[dict]:
    if not isinstance(items, list) or not items:
        c.fail(("artifact",), "expected one or more [[artifact]] tables")
    out, seen = [], {}
    for i, item in enumerate(items):
        where = ("artifact", i)
        fmt = item.get("format") if isinstance(item, dict) else None
        if isinstance(item, dict) and fmt not in FORMATS:
            c.fail(where + ("format",) if "format" in item else where,
                   f"unknown format {fmt!r} (known: {', '.join(FORMATS)})" if fmt else "missing required key 'format'")
        opts = FORMATS[fmt].options
        checked = c.table(where, item, S.COMMON, opts)
        name = checked["name"]
        if not NAME_RE.match(name):
            c.fail(where + ("name",), f"{name!r}: use letters, digits, '.', '_' and '-'")
        if name in seen:
            c.fail(where + ("name",), f"duplicate artifact name {name!r} (first at artifact[{seen[name]}])")
        seen[name] = i
        for key, value in (("calibrated", True), ("imatrix", "calibration")):
            if checked.get(key) == value and not has_calibration:
                c.fail(where + (key,), "needs a [calibration] table")
        common = {k: checked.pop(k) for k in list(checked) if k in S.COMMON}
        out.append({**common, "options": dict(sorted(checked.items()))})
    return out


def load(path: str) -> Recipe:
    """Read and check the recipe at `path` (exit 2 naming key and line on any problem)."""
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
    except OSError as e:
        raise BadInputError(f"cannot read recipe ({e.strerror or e})", path) from None
    except UnicodeDecodeError:
        raise BadInputError("recipe is not UTF-8 text", path) from None
    return parse(text, path)
