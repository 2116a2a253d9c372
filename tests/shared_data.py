"""The reference test data shipped in tests/data/, and readers for it.

`tests/data/keys/` holds the official key lists (name<TAB>[shape] per tensor of
each released module) and `tests/data/golden/ggml/` the ggml golden vectors
(see its README.md for how they were made); `tests/data/ggml_c_extreme.npz` adds rows
near float32's limits quantized by ggml's C code (benchmarks/ggml_c.py --extreme made it,
from the llama-cpp-python 0.3.36 sdist's ggml). All are part of the repository, so
a fresh clone runs every test that needs them; a missing file is an error.
"""
import functools
from pathlib import Path

import numpy as np

DATA = Path(__file__).resolve().parent / "data"
KEYS_DIR = DATA / "keys"
GOLDEN_DIR = DATA / "golden" / "ggml"

# variant -> official key list (Wan2.2 T2V-A14B experts share the 2.1 T2V-14B list)
DIT_KEY_FILES = {
    "wan2.1-t2v-1.3b": "wan21_t2v_1_3b_keys.txt", "wan2.1-t2v-14b": "wan21_t2v_14b_keys.txt",
    "wan2.1-i2v-14b": "wan21_i2v_14b_keys.txt", "wan2.1-flf2v-14b": "wan21_flf2v_14b_keys.txt",
    "wan2.2-t2v-a14b": "wan21_t2v_14b_keys.txt", "wan2.2-i2v-a14b": "wan22_i2v_a14b_keys.txt",
    "wan2.2-ti2v-5b": "wan22_ti2v_5b_keys.txt",
}


def key_list(name: str) -> list[tuple[str, tuple[int, ...]]]:
    """(key, shape) rows of an official key list, in state-dict order."""
    rows = []
    for line in (KEYS_DIR / name).read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            key, shape = line.split("\t")
            rows.append((key, tuple(int(d) for d in shape.strip("[]").split(",") if d.strip())))
    return rows


def key_shapes(name: str) -> dict[str, tuple[int, ...]]:
    return dict(key_list(name))


@functools.cache
def golden(name: str) -> dict:
    """The golden arrays of one ggml type."""
    with np.load(GOLDEN_DIR / f"{name}.npz") as z:
        return {k: z[k] for k in z.files}
