"""Where the shared reference data lives (../shared beside the checkout), and readers for it.

The official key lists and the ggml golden vectors are read from here by every
test that needs them; a test skips with the path when the data is absent.
"""
import functools
import os
from pathlib import Path

import numpy as np
import pytest

SHARED = Path(os.environ.get("WAN_EXPORT_SHARED") or Path(__file__).resolve().parents[1].parent / "shared")
KEYS_DIR = SHARED / "reference" / "keys"
GOLDEN_DIR = Path(os.environ.get("WAN_EXPORT_GOLDEN") or SHARED / "golden" / "ggml")

# variant -> official key list (Wan2.2 T2V-A14B experts share the 2.1 T2V-14B list)
DIT_KEY_FILES = {
    "wan2.1-t2v-1.3b": "wan21_t2v_1_3b_keys.txt", "wan2.1-t2v-14b": "wan21_t2v_14b_keys.txt",
    "wan2.1-i2v-14b": "wan21_i2v_14b_keys.txt", "wan2.1-flf2v-14b": "wan21_flf2v_14b_keys.txt",
    "wan2.2-t2v-a14b": "wan21_t2v_14b_keys.txt", "wan2.2-i2v-a14b": "wan22_i2v_a14b_keys.txt",
    "wan2.2-ti2v-5b": "wan22_ti2v_5b_keys.txt",
}


def key_list(name: str) -> list[tuple[str, tuple[int, ...]]]:
    """(key, shape) rows of an official key list, in state-dict order."""
    path = KEYS_DIR / name
    if not path.is_file():
        pytest.skip(f"reference key list {path} not available", allow_module_level=True)
    rows = []
    for line in path.read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            key, shape = line.split("\t")
            rows.append((key, tuple(int(d) for d in shape.strip("[]").split(",") if d.strip())))
    return rows


def key_shapes(name: str) -> dict[str, tuple[int, ...]]:
    return dict(key_list(name))


@functools.cache
def _golden(name: str):
    path = GOLDEN_DIR / f"{name}.npz"
    if not path.is_file():
        return None
    with np.load(path) as z:
        return {k: z[k] for k in z.files}


def golden(name: str) -> dict:
    """The golden arrays of one ggml type (skips when absent)."""
    z = _golden(name)
    if z is None:
        pytest.skip(f"no golden vectors at {GOLDEN_DIR} (set WAN_EXPORT_GOLDEN)")
    return z
