"""Benchmark the streaming converters on a full-size synthetic checkpoint (not a test).

Builds a Wan2.1-T2V-1.3B-shaped bf16 checkpoint (stock names from
`variants.dit_shapes`, 2.8 GB; `--14b`: Wan2.1-T2V-14B, 28.6 GB) by streaming
one random block through the safetensors writer, then times, each in a fresh
subprocess: `cp` of the file (the anchor), `wan-export comfyui --dtype bf16`
(the rename path) and `--dtype fp16` (the cast path), `wan-export stock`, and
`wan-export diffusers` when that converter exists. Also CLI start-up
(`wan-export --help`, and time to the first tensor written) against
`python -c pass`. Prints a Markdown table.

    python benchmarks/bench_convert.py [--dir DIR] [--repeat 3] [--14b] [--keep]

Notes: the source is in the page cache after it is generated (so every row reads
from RAM, like `cp`); dirty pages are synced before each run, and each row's wall
time includes fsyncing its output files (the issue's "written and fsynced"). Steps run round-robin, so a noisy
neighbour slows all alike; wall time is reported best and median, CPU time
(user + sys, less sensitive to I/O noise) median. Peak RSS comes from
`/usr/bin/time -f %M` (ru_maxrss through wait4 would inherit the parent's).
"""
from __future__ import annotations

import argparse
import importlib.util
import math
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

import numpy as np

from wan_export.dtypes import ST_TO_NP
from wan_export.safetensors_io import SafetensorsWriter, TensorInfo
from wan_export.variants import VARIANTS, dit_shapes

SHAPES = {False: "wan2.1-t2v-1.3b", True: "wan2.1-t2v-14b"}
RSS_LIMIT_14B = 2 << 30
TIME = "/usr/bin/time"
WAN = [sys.executable, "-m", "wan_export"]
# time to the first tensor: the CLI runs until the writer receives its first tensor, then exits
FIRST_TENSOR = (
    "import os, sys\n"
    "import wan_export.safetensors_io as io\n"
    "io.SafetensorsWriter.write = lambda self, name, arr: os._exit(0)\n"
    "from wan_export.cli import main\n"
    "main(sys.argv[1:])\n"
)


def generate(path: str, variant: str) -> float:
    """Stream a bf16 checkpoint of the variant's shapes from one repeated random block; returns seconds."""
    t = time.perf_counter()
    write_source(path, dit_shapes(VARIANTS[variant].config))
    return time.perf_counter() - t


def write_source(path: str, shapes: dict[str, tuple]) -> None:
    """A bf16 file of these shapes, streamed from one repeated random block (memory: the largest tensor)."""
    biggest = max(math.prod(s) for s in shapes.values())
    rng = np.random.default_rng(0)
    block = (rng.standard_normal(1 << 20, dtype=np.float32) * 0.02).astype(ST_TO_NP["BF16"])
    data = np.resize(block, biggest)
    infos = [TensorInfo(k, s, "BF16") for k, s in shapes.items()]
    with SafetensorsWriter(path, infos, {"format": "pt"}) as w:
        for i in infos:
            w.write(i.name, data[: i.numel].reshape(i.shape))


def fsync_tree(path: str) -> None:
    """fsync every file written under `path` (a file or a folder)."""
    files = [path] if os.path.isfile(path) else [os.path.join(r, f) for r, _, fs in os.walk(path) for f in fs]
    for f in files:
        fd = os.open(f, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def run(cmd: list[str], out: str | None = None) -> dict:
    """Wall seconds (incl. fsync of `out`), CPU seconds (user + sys) and peak RSS bytes of one fresh process."""
    os.sync()
    if os.path.exists(TIME):
        with tempfile.NamedTemporaryFile("r", suffix=".rss") as rss_file:
            t = time.perf_counter()
            p = subprocess.run([TIME, "-o", rss_file.name, "-f", "%U %S %M"] + cmd, stdout=subprocess.DEVNULL,
                               stderr=subprocess.PIPE, text=True, check=False)
            if out and p.returncode == 0:
                fsync_tree(out)
            wall = time.perf_counter() - t
            user, system, rss = rss_file.read().split()[-3:]
            cpu, rss = float(user) + float(system), int(rss) * 1024
    else:
        t = time.perf_counter()
        proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        _, status, usage = os.wait4(proc.pid, 0)
        if out and status == 0:
            fsync_tree(out)
        wall, cpu, rss = time.perf_counter() - t, usage.ru_utime + usage.ru_stime, usage.ru_maxrss * 1024
        p = subprocess.CompletedProcess(cmd, os.waitstatus_to_exitcode(status), "", proc.stderr.read())
    if p.returncode != 0:
        raise SystemExit(f"failed ({p.returncode}): {' '.join(cmd)}\n{p.stderr}")
    return {"wall": wall, "cpu": cpu, "rss": rss}


def steps(src: str, work: str) -> list[tuple[str, list[str], str]]:
    """(label, command, output path to delete afterwards)."""
    out = os.path.join(work, "out")
    rows = [("cp (anchor)", ["cp", src, out + ".safetensors"], out + ".safetensors"),
            ("comfyui --dtype bf16 (rename)", WAN + ["comfyui", src, "-o", out + ".safetensors", "--dtype", "bf16",
                                                     "-q"], out + ".safetensors"),
            ("comfyui --dtype fp16 (cast)", WAN + ["comfyui", src, "-o", out + ".safetensors", "--dtype", "fp16",
                                                   "-q"], out + ".safetensors"),
            ("stock", WAN + ["stock", src, "-o", out, "-q"], out)]
    if importlib.util.find_spec("wan_export.converters.diffusers"):
        rows.append(("diffusers", WAN + ["diffusers", src, "-o", out, "-q"], out))
    return rows


def remove(path: str) -> None:
    if os.path.isdir(path):
        shutil.rmtree(path)
    elif os.path.exists(path):
        os.remove(path)


def summarise(label: str, runs: list[dict]) -> dict:
    walls = [r["wall"] for r in runs]
    return {"step": label, "wall": min(walls), "median": statistics.median(walls),
            "cpu": statistics.median(r["cpu"] for r in runs), "rss": max(r["rss"] for r in runs)}


def measure(src: str, work: str, repeat: int) -> list[dict]:
    """Round-robin over the steps, so a noisy neighbour slows every step alike."""
    plan = steps(src, work)
    runs: dict[str, list[dict]] = {label: [] for label, _, _ in plan}
    for _ in range(repeat):
        for label, cmd, out in plan:
            runs[label].append(run(cmd, out))
            remove(out)
    return [summarise(label, r) for label, r in runs.items()]


def startup(src: str, work: str, repeat: int) -> list[dict]:
    out = os.path.join(work, "first")
    os.makedirs(out, exist_ok=True)
    cmds = [("python -c pass (anchor)", [sys.executable, "-c", "pass"]),
            ("wan-export --help", WAN + ["--help"]),
            ("time to first tensor (comfyui)", [sys.executable, "-c", FIRST_TENSOR, "comfyui", src, "-o",
                                                os.path.join(out, "x.safetensors"), "-q"])]
    runs: dict[str, list[dict]] = {label: [] for label, _ in cmds}
    for _ in range(max(5, repeat)):
        for label, cmd in cmds:
            runs[label].append(run(cmd))
    shutil.rmtree(out, ignore_errors=True)
    return [summarise(label, r) for label, r in runs.items()]


def table(rows: list[dict], anchor: dict, title: str) -> str:
    lines = [(f"| {title} | wall s (best) | wall s (median) | × anchor (best) | × anchor (median) "
              "| CPU s (median) | peak RSS MB |"), "|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['step']} | {r['wall']:.2f} | {r['median']:.2f} | {r['wall'] / anchor['wall']:.2f} "
                     f"| {r['median'] / anchor['median']:.2f} | {r['cpu']:.2f} | {r['rss'] / 2**20:.0f} |")
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dir", default=None, help="Work folder (default: a new temp folder).")
    ap.add_argument("--14b", dest="big", action="store_true", help="Wan2.1-T2V-14B shapes (28.6 GB, ~60 GB disk).")
    ap.add_argument("--repeat", type=int, default=None, help="Runs per step (default 3; 1 with --14b).")
    ap.add_argument("--keep", action="store_true", help="Keep the generated checkpoint.")
    args = ap.parse_args(argv)
    repeat = args.repeat or (1 if args.big else 3)
    variant = SHAPES[args.big]
    size = sum(math.prod(s) for s in dit_shapes(VARIANTS[variant].config).values()) * 2
    work = args.dir or tempfile.mkdtemp(prefix="wan-bench-")
    os.makedirs(work, exist_ok=True)
    free = shutil.disk_usage(work).free
    if free < 2.1 * size:
        print(f"skipped: {variant} needs {2.1 * size / 1e9:.0f} GB free in {work}, {free / 1e9:.0f} GB available")
        return 0
    src = os.path.join(work, f"{variant}_bf16.safetensors")
    try:
        gen = generate(src, variant) if not os.path.exists(src) else float("nan")
        print(f"# {variant} bf16, {os.path.getsize(src) / 1e9:.2f} GB, generated in {gen:.1f} s; "
              f"{os.cpu_count()} CPUs; best of {repeat}; load average {os.getloadavg()[0]:.1f}\n")
        rows = measure(src, work, repeat)
        print(table(rows, rows[0], "step") + "\n")
        print(f"load average after: {os.getloadavg()[0]:.1f}\n")
        start = startup(src, work, repeat)
        print(table(start, start[0], "start-up") + "\n")
        too_big = [r for r in rows[1:] if r["rss"] >= RSS_LIMIT_14B]
        if args.big and too_big:
            print("FAIL: peak RSS >= 2 GB: " + ", ".join(r["step"] for r in too_big))
            return 1
        return 0
    finally:
        if not args.keep:
            remove(src)
            if not args.dir:
                shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
