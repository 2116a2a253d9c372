"""ggml's C quantizer for the speed benchmarks: built here from a PyPI sdist, checked, called through ctypes.

The anchor the ggml benchmarks compare against is `ggml_quantize_chunk` from a
`ggml-base` built as the golden README describes: `-DGGML_NATIVE=OFF`, Release,
no -march (SSE2 only, so no FMA contraction). Its source comes from the one
place a CI runner can reach, the package registry: llama-cpp-python's sdist
vendors llama.cpp's `ggml/`. `build()` downloads it with pip, configures it with
CMake and builds the `ggml-base` target only (~20 s on one core), caching the
library under `~/.cache/wan-export/ggml-c/`. `CQuantizer` refuses a library that
does not reproduce the golden vectors in tests/data/golden/ggml/ byte for byte,
so the speed being compared is that of the same math.

    python benchmarks/ggml_c.py          # build (or find) it and print its path
    python benchmarks/ggml_c.py --extreme tests/data/ggml_c_extreme.npz
                                         # regenerate the extreme-magnitude vectors the tests use
"""
from __future__ import annotations

import ctypes
import glob
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time

import numpy as np

SDIST = "llama-cpp-python==0.3.36"
CACHE = os.path.join(os.path.expanduser("~"), ".cache", "wan-export", "ggml-c", SDIST.replace("==", "-"))
GOLDEN = os.path.join(os.path.dirname(__file__), "..", "tests", "data", "golden", "ggml")


def build(cache: str = CACHE) -> str | None:
    """Path of a libggml-base.so built without -march, or None where there is no compiler or no sdist."""
    lib = os.path.join(cache, "libggml-base.so")
    if os.path.exists(lib):
        return lib
    if not (shutil.which("cmake") and shutil.which("cc")):
        return None
    with tempfile.TemporaryDirectory(prefix="ggml-c-") as work:
        dl = subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:",
                             SDIST, "-d", work, "-q"], capture_output=True, text=True)
        tars = glob.glob(os.path.join(work, "*.tar.gz"))
        if dl.returncode or not tars:
            print(f"ggml_c: pip download {SDIST} failed: {dl.stderr.strip()[-300:]}", file=sys.stderr)
            return None
        with tarfile.open(tars[0]) as tf:
            members = [m for m in tf.getmembers() if "/vendor/llama.cpp/ggml/" in m.name]
            tf.extractall(work, members, filter="data")
        src = glob.glob(os.path.join(work, "*", "vendor", "llama.cpp", "ggml"))[0]
        open(os.path.join(src, "ggml.pc.in"), "a").close()    # the sdist leaves out this pkg-config template
        bdir = os.path.join(work, "build")
        for cmd in (["cmake", "-S", src, "-B", bdir, "-DGGML_NATIVE=OFF", "-DCMAKE_BUILD_TYPE=Release",
                     "-DBUILD_SHARED_LIBS=ON", "-DGGML_BUILD_TESTS=OFF", "-DGGML_BUILD_EXAMPLES=OFF"],
                    ["cmake", "--build", bdir, "--target", "ggml-base", "-j", "2"]):
            p = subprocess.run(cmd, capture_output=True, text=True)
            if p.returncode:
                print(f"ggml_c: {' '.join(cmd[:3])} failed: {p.stderr.strip()[-500:]}", file=sys.stderr)
                return None
        os.makedirs(cache, exist_ok=True)
        built = os.path.realpath(os.path.join(bdir, "src", "libggml-base.so"))
        shutil.copy(built, lib + ".tmp")
        os.replace(lib + ".tmp", lib)
    return lib


class CQuantizer:
    """ggml_quantize_chunk of one library, checked against the golden vectors on load."""

    def __init__(self, path: str):
        self.path = path
        self.lib = ctypes.CDLL(path)
        f = self.lib.ggml_quantize_chunk
        f.restype = ctypes.c_size_t
        f.argtypes = [ctypes.c_int, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int64, ctypes.c_int64,
                      ctypes.c_int64, ctypes.c_void_p]
        self._check()

    def quantize(self, name: str, x: np.ndarray, imatrix: np.ndarray | None = None) -> np.ndarray:
        from wan_export.quantizers.ggml import GGML_TYPES

        t = GGML_TYPES[name]
        x = np.ascontiguousarray(x, dtype=np.float32)
        out = np.empty((x.shape[0], t.row_bytes(x.shape[1])), np.uint8)
        im = None if imatrix is None else np.ascontiguousarray(imatrix, dtype=np.float32)
        self.lib.ggml_quantize_chunk(t.type_id, x.ctypes.data, out.ctypes.data, 0, x.shape[0], x.shape[1],
                                     None if im is None else im.ctypes.data)
        return out

    def cpu(self, name: str, x: np.ndarray, imatrix: np.ndarray | None = None) -> float:
        """CPU seconds of one ggml_quantize_chunk call (the caller pins the thread)."""
        t = time.process_time()
        self.quantize(name, x, imatrix)
        return time.process_time() - t

    def _check(self) -> None:
        for path in sorted(glob.glob(os.path.join(GOLDEN, "*.npz"))):
            name = os.path.basename(path)[:-4]
            z = np.load(path)
            for n in z["row_lengths"]:
                for key, im in ((f"chunk_{n}", None), (f"chunk_imatrix_{n}", z[f"imatrix_{n}"])):
                    if not np.array_equal(self.quantize(name, z[f"input_{n}"], im), z[key]):
                        raise SystemExit(f"{self.path}: {name} {key} differs from the golden vectors")


def load(spec: str | None) -> CQuantizer | None:
    """`--ggml-lib` values: a path, 'auto' (build() here), or 'none'/None (the README's figures)."""
    if spec in (None, "none"):
        return None
    path = build() if spec == "auto" else spec
    return CQuantizer(path) if path else None


K_TYPES = ("Q2_K", "Q3_K", "Q4_K", "Q5_K", "Q6_K")


def extreme_inputs() -> tuple[np.ndarray, np.ndarray]:
    """Rows whose squares or sums overflow float32 (finite weights the golden set does not reach)."""
    rng = np.random.default_rng(1)
    x = rng.standard_normal((6, 512)).astype(np.float32)
    x[0, ::37] = 3e38
    x[1] *= np.float32(1e30)
    x[2, ::16] = -3e38
    x[3] *= np.float32(1e-38)
    x[4, :16] = 1e20
    x[4, 16:32] = -1e-30
    x[5] = np.where(rng.random(512) < 0.5, 1e19, -1e19)
    return x, rng.chisquare(2, 512).astype(np.float32)


def write_extreme(path: str, c: CQuantizer) -> None:
    x, im = extreme_inputs()
    out = {"input": x, "imatrix": im}
    for name in K_TYPES:
        out[f"{name}_chunk"] = c.quantize(name, x)
        out[f"{name}_chunk_imatrix"] = c.quantize(name, x, im)
    np.savez_compressed(path, source=np.array(f"{SDIST} ggml-base, -DGGML_NATIVE=OFF"), **out)


if __name__ == "__main__":
    path = build()
    if path is None:
        sys.exit("no compiler or no sdist: the benchmarks fall back to the golden README's C figures")
    c = CQuantizer(path)
    if sys.argv[1:2] == ["--extreme"]:
        write_extreme(sys.argv[2], c)
    print(path)
