"""Open any input: one tensor file, an official release folder, an A14B release
(high_noise_model/ + low_noise_model/), or a diffusers pipeline folder.

Every tensor file is identified by its keys, never by its name; file names are
only used to group shards and to find tokenizer folders.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass, field

from wan_export.components import Component, load_component
from wan_export.errors import BadInputError
from wan_export.sources import find_model_file
from wan_export.variants import EXPERTS, Variant, guess_variant

TENSOR_SUFFIXES = (".safetensors", ".pth", ".pt", ".bin", ".ckpt", ".gguf")
# diffusers pipeline subfolders -> our component slot (transformer is the high-noise expert)
DIFFUSERS_SLOTS = {"transformer": "dit", "transformer_2": "dit.low_noise", "vae": "vae",
                   "text_encoder": "t5", "image_encoder": "clip"}


@dataclass
class Release:
    """The components found at a path, keyed dit | dit.high_noise | dit.low_noise | vae | t5 | clip."""

    path: str
    components: dict[str, Component] = field(default_factory=dict)
    tokenizer_dir: str | None = None          # UMT5 sentencepiece folder
    clip_tokenizer_dir: str | None = None
    config_json: dict = field(default_factory=dict)
    layout: str = "file"

    @property
    def dits(self) -> dict[str, Component]:
        return {k: c for k, c in self.components.items() if c.kind == "dit"}

    @property
    def variant(self) -> Variant | None:
        dits = list(self.dits.values())
        return guess_variant(dits[0].config, experts=len(dits) == 2) if dits else None

    def only(self, kind: str) -> Component:
        found = [c for c in self.components.values() if c.kind == kind]
        if not found:
            raise BadInputError(f"no {kind} component found", self.path)
        return found[0]


def read_json(path: str) -> dict:
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except (OSError, ValueError) as e:
        raise BadInputError(f"cannot read JSON ({e})", path) from None


def _shard_members(folder: str) -> set[str]:
    """Files that belong to an index.json in this folder (read as one source)."""
    members = set()
    for n in os.listdir(folder):
        if n.endswith(".safetensors.index.json"):
            wm = read_json(os.path.join(folder, n)).get("weight_map") or {}
            members |= {os.path.normpath(v) for v in wm.values() if isinstance(v, str)}
    return members


def _tensor_files(folder: str) -> list[str]:
    members = _shard_members(folder)
    out = []
    for n in sorted(os.listdir(folder)):
        p = os.path.join(folder, n)
        if not os.path.isfile(p) or n.startswith("."):
            continue
        if n.endswith(".safetensors.index.json") or (n.endswith(TENSOR_SUFFIXES) and n not in members):
            out.append(p)
    return out


def _tokenizers(folder: str, rel: Release) -> None:
    for root, dirs, files in os.walk(folder):
        dirs[:] = [d for d in dirs if not d.startswith(".")]
        if rel.tokenizer_dir is None and "spiece.model" in files:
            rel.tokenizer_dir = root
        elif rel.clip_tokenizer_dir is None and "sentencepiece.bpe.model" in files:
            rel.clip_tokenizer_dir = root


def _add(rel: Release, comp: Component, slot: str | None = None) -> None:
    slot = slot or comp.kind
    if slot in rel.components:
        raise BadInputError(f"two {slot} components: {rel.components[slot].path} and {comp.path}", rel.path)
    rel.components[slot] = comp


def open_input(path: str) -> Release:
    """Open a file or folder as a Release of stock-named components."""
    path = str(path)
    if not os.path.exists(path):
        raise BadInputError("no such file or directory", path)
    if os.path.isfile(path):
        rel = Release(path)
        _add(rel, load_component(path))
        return rel
    if os.path.exists(os.path.join(path, "model_index.json")):
        return _open_diffusers(path)
    rel = Release(path, layout="release")
    if os.path.exists(os.path.join(path, "config.json")):
        rel.config_json = read_json(os.path.join(path, "config.json"))
    if all(os.path.isdir(os.path.join(path, f"{e}_model")) for e in EXPERTS):
        rel.layout = "release (A14B experts)"
        for e in EXPERTS:
            sub = os.path.join(path, f"{e}_model")
            model = find_model_file(sub)
            if model is None:
                raise BadInputError("no DiT weights found", sub)
            hints = read_json(os.path.join(sub, "config.json")) if os.path.exists(
                os.path.join(sub, "config.json")) else rel.config_json
            _add(rel, load_component(model, expert=e, hints=hints), f"dit.{e}")
    for f in _tensor_files(path):
        _add(rel, load_component(f, hints=rel.config_json))
    _tokenizers(path, rel)
    if not rel.components:
        raise BadInputError("no Wan weights found in this folder", path)
    return rel


def _open_diffusers(path: str) -> Release:
    rel = Release(path, layout="diffusers pipeline")
    for sub, slot in DIFFUSERS_SLOTS.items():
        folder = os.path.join(path, sub)
        if not os.path.isdir(folder):
            continue
        model = find_model_file(folder)
        if model is None:
            raise BadInputError("no weights found", folder)
        expert = None
        if sub.startswith("transformer") and os.path.isdir(os.path.join(path, "transformer_2")):
            expert = "low_noise" if sub == "transformer_2" else "high_noise"
            slot = f"dit.{expert}"
        _add(rel, load_component(model, expert=expert), slot)
    _tokenizers(path, rel)
    return rel
