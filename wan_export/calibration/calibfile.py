"""The CALIB file: per-layer activation statistics as .safetensors under stock names.

For each Linear `L` (e.g. `blocks.3.ffn.0`; A14B names carry `high_noise_model.` or
`low_noise_model.`): `L.input_amax` F32 [], `L.input_channel_amax` F32 [K],
`L.input_sum2` F32 [K], `L.input_count` I64 [], `L.input_hist` I64 [NBINS] and, with
--save-activations, `L.input_sample` F32 [N, K]. For each attention `A`
(`blocks.3.self_attn`): `A.sdpa.{q,k,v,softmax}_amax` F32 []. One metadata key,
`wan_export.calibration`, holds the provenance as sorted JSON, so the same run gives
the same bytes.
"""
from __future__ import annotations

import json
from dataclasses import dataclass

import numpy as np

from wan_export.errors import BadInputError
from wan_export.safetensors_io import SafetensorsFile, SafetensorsWriter, TensorInfo

FORMAT = "wan-export-calib/1"
META_KEY = "wan_export.calibration"
LAYER_FIELDS = ("input_amax", "input_channel_amax", "input_sum2", "input_count", "input_hist", "input_sample")
ATTN_FIELDS = ("q_amax", "k_amax", "v_amax", "softmax_amax")
EXPERTS = ("high_noise_model", "low_noise_model")


def layer_tensors(name: str, s) -> list[tuple[str, np.ndarray]]:
    """The CALIB tensors of one LayerStats."""
    out = [(f"{name}.input_amax", np.array(s.amax, dtype=np.float32)),
           (f"{name}.input_channel_amax", s.channel_amax.numpy().astype(np.float32)),
           (f"{name}.input_sum2", s.sum2.numpy().astype(np.float32)),
           (f"{name}.input_count", np.array(s.count, dtype=np.int64)),
           (f"{name}.input_hist", s.hist.numpy().astype(np.int64))]
    sample = s.sample()
    if sample is not None:
        out.append((f"{name}.input_sample", sample.numpy().astype(np.float32)))
    return out


def attention_tensors(name: str, s) -> list[tuple[str, np.ndarray]]:
    return [(f"{name}.{f}_amax", np.array(getattr(s, f), dtype=np.float32)) for f in ("q", "k", "v", "softmax")]


def write_calib(path: str, tensors: list[tuple[str, np.ndarray]], meta: dict) -> None:
    """Write tensors in the given order with the provenance `meta` (atomic)."""
    for name, arr in tensors:
        if arr.dtype.kind == "f" and not np.isfinite(arr).all():
            raise BadInputError(f"calibration statistic {name} is not finite (NaN/Inf activations)", path)
    infos = [TensorInfo(n, tuple(a.shape), "F32" if a.dtype == np.float32 else "I64") for n, a in tensors]
    w = SafetensorsWriter(path, infos, {META_KEY: json.dumps({"format": FORMAT, **meta}, sort_keys=True)})
    try:
        for name, arr in tensors:
            w.write(name, arr)
    except BaseException:
        w.abort()
        raise
    w.close()


@dataclass
class Calib:
    """A CALIB file opened lazily; `layer(name)` reads one Linear's statistics."""

    path: str
    meta: dict
    _file: SafetensorsFile
    _names: set

    @property
    def experts(self) -> list[str]:
        return list(self.meta.get("experts") or [])

    def layers(self, expert: str | None = None) -> list[str]:
        """Linear names (without the expert prefix) that have statistics."""
        prefix = f"{expert}." if expert else ""
        suffix = ".input_amax"
        return sorted(n[len(prefix):-len(suffix)] for n in self._names
                      if n.endswith(suffix) and n.startswith(prefix)
                      and (expert or not n.startswith(tuple(f"{e}." for e in EXPERTS))))

    def layer(self, name: str, expert: str | None = None, sample: bool = True) -> dict[str, np.ndarray]:
        """One Linear's statistics; sample=False leaves out `input_sample` (the only large one)."""
        full = f"{expert}.{name}" if expert else name
        if f"{full}.input_amax" not in self._names:
            raise BadInputError(f"no calibration statistics for layer {full}", self.path)
        fields = LAYER_FIELDS if sample else tuple(f for f in LAYER_FIELDS if f != "input_sample")
        return {f: np.array(self._file.read(f"{full}.{f}")) for f in fields if f"{full}.{f}" in self._names}

    def has_sample(self, name: str, expert: str | None = None) -> bool:
        return f"{expert + '.' if expert else ''}{name}.input_sample" in self._names

    def attention(self, name: str, expert: str | None = None) -> dict[str, float] | None:
        full = f"{expert}.{name}.sdpa" if expert else f"{name}.sdpa"
        if f"{full}.q_amax" not in self._names:
            return None
        return {f: float(self._file.read(f"{full}.{f}")) for f in ATTN_FIELDS}

    def has_samples(self) -> bool:
        return any(n.endswith(".input_sample") for n in self._names)

    def check_layers(self, needed: list[str], expert: str | None = None, path: str | None = None) -> None:
        """Raise one BadInputError naming the needed layers this file lacks."""
        have = set(self.layers(expert))
        missing = [n for n in needed if n not in have]
        if missing:
            where = f" for {expert}" if expert else ""
            more = f" (and {len(missing) - 4} more)" if len(missing) > 4 else ""
            raise BadInputError(
                f"calibration file {self.path} does not fit this model{where}: no statistics for "
                f"{', '.join(missing[:4])}{more}; it was made for {self.meta.get('variant', 'another model')}",
                path or self.path)


def read_calib(path: str) -> Calib:
    """Open a CALIB file, checking that it is one."""
    f = SafetensorsFile(path)
    raw = (f.metadata or {}).get(META_KEY)
    try:
        meta = json.loads(raw) if raw else None
    except json.JSONDecodeError:
        meta = None
    if not meta or meta.get("format") != FORMAT:
        raise BadInputError(f"not a wan-export calibration file (no {META_KEY!r} metadata of format {FORMAT})",
                            path)
    return Calib(str(path), meta, f, {i.name for i in f.infos()})
