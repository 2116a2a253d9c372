"""Whole-model GGUF benchmark: wall time and peak RSS of `convert_gguf` on all cores.

Writes synthetic bf16 DiTs shaped like Wan2.1-T2V-1.3B (and the same dims with
twice the layers, to show peak memory follows the largest tensor, not the model
size) into a temp folder, converts each in a fresh subprocess and prints a
Markdown table. Weights are tiled from one random pool, so generation runs at
disk speed; the quantizers' cost does not depend on the values' provenance.

    python benchmarks/bench_gguf.py [--type Q4_K_M] [--jobs 0] [--dir /tmp/x]
"""
from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import replace

import ml_dtypes
import numpy as np

from wan_export.safetensors_io import SafetensorsWriter, TensorInfo
from wan_export.variants import VARIANTS, dit_shapes

POOL = (np.random.default_rng(0).standard_normal(1 << 24) * 0.02).astype(ml_dtypes.bfloat16)

CHILD = """
import json, resource, sys, time
from wan_export.converters.gguf import convert_gguf
t0 = time.monotonic()
r = convert_gguf(sys.argv[1], sys.argv[2], types=sys.argv[3], jobs=int(sys.argv[4]), overwrite=True)
wall = time.monotonic() - t0
me, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
cpu = me.ru_utime + me.ru_stime + kids.ru_utime + kids.ru_stime
print(json.dumps({"wall": wall, "cpu": cpu, "rss_main_kb": me.ru_maxrss, "rss_worker_kb": kids.ru_maxrss,
                  "bytes": r["outputs"][0]["bytes"]}))
"""


def write_model(path: str, layers: int) -> tuple[int, int]:
    """A T2V-1.3B-shaped bf16 DiT with `layers` blocks; returns (parameters, largest tensor)."""
    cfg = replace(VARIANTS["wan2.1-t2v-1.3b"].config, num_layers=layers)
    shapes = dit_shapes(cfg)
    infos = [TensorInfo(n, s, "BF16") for n, s in shapes.items()]
    with SafetensorsWriter(path, infos) as w:
        for k, (name, shape) in enumerate(shapes.items()):
            n = math.prod(shape)
            start = (k * 7919) % (POOL.size - 1)
            flat = np.resize(np.roll(POOL, -start)[: min(n, POOL.size)], n)
            w.write(name, flat.reshape(shape))
    return sum(math.prod(s) for s in shapes.values()), max(math.prod(s) for s in shapes.values())


def run(src: str, out: str, mix: str, jobs: int) -> dict:
    res = subprocess.run([sys.executable, "-c", CHILD, src, out, mix, str(jobs)],
                         capture_output=True, text=True, check=True)
    return json.loads(res.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--type", default="Q4_K_M")
    ap.add_argument("--jobs", type=int, default=0, help="0: every core")
    ap.add_argument("--dir", default=None, help="working folder (default: a temp folder, removed)")
    args = ap.parse_args()
    from wan_export.converters.gguf_pool import cpu_count

    work = args.dir or tempfile.mkdtemp(prefix="bench_gguf_")
    os.makedirs(work, exist_ok=True)
    rows = []
    for label, layers in (("Wan2.1-T2V-1.3B shape (30 layers)", 30), ("same dims, 60 layers", 60)):
        src = os.path.join(work, f"dit_{layers}.safetensors")
        t0 = time.monotonic()
        params, largest = write_model(src, layers)
        gen = time.monotonic() - t0
        r = run(src, os.path.join(work, f"out_{layers}.gguf"), args.type, args.jobs)
        rows.append((label, params, os.path.getsize(src), largest, gen, r))
        os.remove(src)
        os.remove(os.path.join(work, f"out_{layers}.gguf"))
    print(f"\n{args.type}, {args.jobs or cpu_count()} workers on {cpu_count()} cores, bf16 source\n")
    print("| model | parameters | source | largest tensor | output | wall | CPU (all processes) | "
          "weights per CPU-second | peak RSS main | peak RSS worker |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for label, params, size, largest, gen, r in rows:
        print(f"| {label} | {params / 1e9:.2f} B | {size / 1e9:.2f} GB | {largest * 4 / 1e6:.0f} MB f32 "
              f"| {r['bytes'] / 1e9:.2f} GB | {r['wall']:.1f} s | {r['cpu']:.1f} s | {params / r['cpu'] / 1e6:.1f} M "
              f"| {r['rss_main_kb'] / 1024:.0f} MiB | {r['rss_worker_kb'] / 1024:.0f} MiB |")
    if not args.dir:
        os.rmdir(work)


if __name__ == "__main__":
    main()
