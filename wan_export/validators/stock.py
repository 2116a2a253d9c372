"""Back-loader for official-layout release folders (what `wan-export stock` writes).

The folder is re-read through the library's own release reader (DiT shards or A14B
experts, VAE, UMT5) and compared tensor by tensor with the source cast to the folder's
dtypes: a stock write renames nothing and casts at most the DiT, so every tensor must
match exactly. `validate --sampling` adds a sampling run through the folder's DiT.
"""
from __future__ import annotations

import os

import numpy as np

from wan_export.dtypes import cast
from wan_export.validators.report import Report, Tolerance

STOCK_CLASSES = ("WanModel", "VaceWanModel")


def is_stock_release(path: str) -> bool:
    """A folder whose DiT config.json (or an A14B expert's) is the official WanModel one."""
    from wan_export.release import read_json

    if not os.path.isdir(path) or os.path.exists(os.path.join(path, "model_index.json")):
        return False
    configs = [os.path.join(path, "config.json")] + [os.path.join(path, f"{e}_model", "config.json")
                                                    for e in ("high_noise", "low_noise")]
    return any(os.path.isfile(c) and read_json(c).get("_class_name") in STOCK_CLASSES for c in configs)


def validate_stock(path: str, against: str, **_) -> Report:
    from wan_export.release import open_input

    art, src = open_input(path), open_input(against)
    report = Report(str(path), str(against), "stock", info={"layout": art.layout})
    for slot, comp in sorted(art.components.items()):
        ref = src.components.get(slot)
        if ref is None:
            report.add(f"{slot}: in the source", {"rel_l2": "-", "cosine": "-", "max_abs": "-", "snr_db": "-"},
                       Tolerance(), note="component not in the source")
            continue
        worst, n = 0.0, 0
        names = set(ref.table.names())
        for info in comp.table.infos():
            a = np.asarray(comp.table.read(info.name))
            r = cast(np.asarray(ref.table.read(info.name)), info.dtype) if info.name in names else None
            if r is None or r.shape != a.shape:
                worst = float("inf")
                continue
            diff = np.abs(a.astype(np.float64) - r.astype(np.float64)) if a.size else np.zeros(1)
            worst = max(worst, float(diff.max()))
            n += 1
        missing = sorted(names - set(comp.table.names()))
        metrics = {"max_abs": worst if not missing else float("inf"), "rel_l2": "-", "cosine": "-", "snr_db": "-"}
        report.add(f"{slot}: {n} tensors equal to the source" + (f", {len(missing)} missing" if missing else ""),
                   metrics, Tolerance(max_abs=0.0))
    return report
