"""Single-thread throughput of our ggml quantizers against the C reference.

Measures MB of float32 input per CPU second (`time.process_time`, best of N) on a
0.02·N(0,1) matrix, with and without an imatrix, for every block type in the table
whose quantizer imports, one pinned core. The C column is ggml_quantize_chunk on the same
input, interleaved repeat by repeat, from a libggml-base that ggml_c.py builds here (no
-march, no FMA) and checks against the golden vectors; with `--ggml-lib none` (or no
compiler) it is the single-thread figures of the golden README (a 2-vCPU VM; ranges over runs).

    python benchmarks/bench_ggml_quant.py [--mb 8] [--repeat 3] [--types Q4_K,Q6_K] [--ggml-lib auto|PATH|none]
"""
from __future__ import annotations

import os

os.environ.setdefault("OMP_NUM_THREADS", "1")     # before numpy/torch load their pools
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
os.environ.setdefault("MKL_NUM_THREADS", "1")

import argparse
import functools
import sys
import time

import numpy as np

from wan_export.quantizers.ggml import BLOCK_TYPES, quantize

sys.path.insert(0, os.path.dirname(__file__))
import ggml_c  # noqa: E402

# C reference, single thread, CPU MB/s: (no imatrix, with imatrix), README "Speed anchor".
C_MBPS = {
    "Q8_0": ((789, 861), (700, 733)), "Q4_0": ((2007, 3278), (100, 107)),
    "Q4_1": ((3777, 3868), (20, 23)), "Q5_0": ((1272, 1493), (101, 101)),
    "Q5_1": ((1120, 2050), (22, 24)), "Q2_K": ((46, 54), (19, 20)),
    "Q3_K": ((250, 253), (78, 80)), "Q4_K": ((38, 45), (23, 27)),
    "Q5_K": ((49, 54), (23, 24)), "Q6_K": ((97, 105), (92, 105)),
    "IQ4_NL": ((14, 15), (12, 14)), "IQ4_XS": ((12, 14), (14, 14)),
}


def _importable(name: str) -> bool:
    try:
        quantize(np.zeros((1, 256), np.float32), name)
        return True
    except (ImportError, AttributeError, NotImplementedError):
        return False


def _fmt_range(lo_hi) -> str:
    lo, hi = lo_hi
    return f"{lo}" if lo == hi else f"{lo}–{hi}"


def _cpu(fn) -> float:
    t0 = time.process_time()
    fn()
    return time.process_time() - t0


def run(mb: float, repeat: int, types: list[str], c=None, cols: int = 4096) -> list[str]:
    """Ours against `c` (a ggml_c.CQuantizer, interleaved repeat by repeat) or the README's figures."""
    rows = max(1, round(mb * 2**20 / 4 / cols))
    rng = np.random.default_rng(0)
    x = (0.02 * rng.standard_normal((rows, cols))).astype(np.float32)
    imatrix = rng.chisquare(2, cols).astype(np.float32)
    size_mb = x.nbytes / 1e6
    anchor = f"ggml_quantize_chunk of {c.path}, interleaved" if c else "the golden README's C figures"
    head = (f"input {rows}×{cols} float32 = {x.nbytes / 2**20:.1f} MiB, best of {repeat}, "
            f"MB/s = 1e6 bytes of input per CPU second; C = {anchor}")
    lines = [head, "", "| type | imatrix | ours MB/s | C MB/s | ours/C |", "|---|---|---|---|---|"]
    for name in types:
        if not _importable(name):
            lines.append(f"| {name} | – | not importable yet | | |")
            continue
        for k, im in enumerate((None, imatrix)):
            ours_s, c_s = [], []
            quantize(x, name, im)                       # compile / load the JIT kernels first
            for _ in range(repeat):
                ours_s.append(_cpu(functools.partial(quantize, x, name, im)))
                if c:
                    c_s.append(c.cpu(name, x, im))
            ours = size_mb / min(ours_s)
            if c:
                c_mbps, c_txt = size_mb / min(c_s), f"{size_mb / min(c_s):.1f}"
            else:
                lo_hi = C_MBPS.get(name, ((0, 0), (0, 0)))[k]
                c_mbps, c_txt = sum(lo_hi) / 2, _fmt_range(lo_hi) + " (README)"
            ratio = f"{ours / c_mbps:.2f}" if c_mbps else "–"
            lines.append(f"| {name} | {'yes' if im is not None else 'no'} | {ours:.1f} | {c_txt} | {ratio} |")
            print(lines[-1], file=sys.stderr, flush=True)
    return lines


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--mb", type=float, default=8.0, help="MiB of float32 input (default 8)")
    ap.add_argument("--repeat", type=int, default=3, help="repeats; the best is kept")
    ap.add_argument("--types", default=",".join(BLOCK_TYPES), help="comma-separated types")
    ap.add_argument("--ggml-lib", default="auto",
                    help="libggml-base.so to compare against; 'auto' builds one (ggml_c.py); 'none': README figures")
    args = ap.parse_args()
    try:
        import torch
        torch.set_num_threads(1)
    except ImportError:
        pass
    os.sched_setaffinity(0, {sorted(os.sched_getaffinity(0))[0]})     # one core for both sides
    print("\n".join(run(args.mb, args.repeat, args.types.split(","), ggml_c.load(args.ggml_lib))))


if __name__ == "__main__":
    main()
