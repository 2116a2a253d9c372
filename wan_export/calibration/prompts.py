"""Calibration prompts: the built-in set (prompts.txt, written for this project) and prompt files.

A prompt file is `.txt` (one prompt per line, blank lines and `#` comments skipped),
`.jsonl` (one `{"prompt": ...}` object per line) or `.csv` with a `prompt` or
`caption` column. The set's sha256 (over the prompts joined by newlines) goes into
the CALIB metadata.
"""
from __future__ import annotations

import csv
import hashlib
import io
import json
import os
from importlib import resources

from wan_export.errors import BadInputError

BUILTIN = "prompts.txt"


def builtin_prompts() -> list[str]:
    text = resources.files("wan_export.calibration").joinpath(BUILTIN).read_text(encoding="utf-8")
    return _from_txt(text, BUILTIN)


def _from_txt(text: str, path: str) -> list[str]:
    return [ln.strip() for ln in text.splitlines() if ln.strip() and not ln.lstrip().startswith("#")]


def _from_jsonl(text: str, path: str) -> list[str]:
    out = []
    for i, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as e:
            raise BadInputError(f"line {i}: not JSON ({e.msg})", path) from None
        if not isinstance(obj, dict) or not isinstance(obj.get("prompt"), str):
            raise BadInputError(f'line {i}: expected an object with a "prompt" string', path)
        out.append(obj["prompt"].strip())
    return out


def _from_csv(text: str, path: str) -> list[str]:
    try:
        rows = list(csv.DictReader(io.StringIO(text)))
    except csv.Error as e:
        raise BadInputError(f"malformed CSV ({e})", path) from None
    fields = {f.strip().lower(): f for f in (rows[0].keys() if rows else []) if f}
    column = fields.get("prompt") or fields.get("caption")
    if column is None:
        raise BadInputError("CSV needs a 'prompt' or 'caption' column", path)
    return [(r.get(column) or "").strip() for r in rows if (r.get(column) or "").strip()]


READERS = {".txt": _from_txt, ".jsonl": _from_jsonl, ".csv": _from_csv}


def load_prompts(path: str | None, num: int | None = None) -> list[str]:
    """Prompts from `path` (or the built-in set), the first `num` of them."""
    if path is None:
        prompts, where = builtin_prompts(), BUILTIN
    else:
        ext = os.path.splitext(path)[1].lower()
        if ext not in READERS:
            raise BadInputError(f"unknown prompts format {ext or '(none)'} (use .txt, .jsonl or .csv)", path)
        try:
            with open(path, encoding="utf-8") as f:
                text = f.read()
        except FileNotFoundError:
            raise BadInputError("no such file", path) from None
        except (OSError, UnicodeDecodeError) as e:
            raise BadInputError(f"cannot read prompts: {e}", path) from None
        prompts, where = READERS[ext](text, path), path
    if not prompts:
        raise BadInputError("no prompts in the file", where)
    if num is not None:
        if num < 1:
            raise BadInputError(f"--num-prompts must be >= 1, got {num}")
        prompts = prompts[:num]
    return prompts


def prompt_set_sha256(prompts: list[str]) -> str:
    return hashlib.sha256("\n".join(prompts).encode("utf-8")).hexdigest()
