"""ggml K-types through the whole CLI, on one pinned core, against ggml's C quantizer.

Writes a bf16 DiT with Wan2.1-T2V-1.3B's dims and `--layers` blocks, then for each
K-type T (Q2_K..Q6_K), without and with an imatrix, runs `wan-export gguf --jobs 1`
pinned to one core with every block Linear weight forced to T. Our quantization
cost is the run's CPU time minus that of a `--type F32` run of the same file (so
reading, the float32 conversion, quantizing and writing all count, and the fixed
start-up is left out only as far as the F32 run has it too: the numba import and
code loading are counted). That anchor is the issue's; it also writes 4 bytes per weight, so
the difference credits us the smaller output. The strict column subtracts a `--dry-run` of the
same command instead (interpreter and CLI start-up only): reading, the float32 conversion, the
numba start-up, quantizing and writing all count. Runs alternate with the anchors, best of `--repeat`.

The C column: the same tensors go through `ggml_quantize_chunk` in this process,
interleaved with our runs, from a libggml-base that ggml_c.py builds here (CMake
`-DGGML_NATIVE=OFF`, no -march, no FMA, as tests/data/golden/ggml/README.md says;
checked against the golden vectors), or from `--ggml-lib PATH`; with `--ggml-lib none`
or no compiler, the single-thread figures of that README are used.

    python benchmarks/bench_gguf_cli.py [--layers 1] [--repeat 3] [--types Q4_K,Q6_K] [--ggml-lib auto|PATH|none]
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

import numpy as np

from wan_export.dtypes import ST_TO_NP
from wan_export.quantizers.ggml import GGML_TYPES
from wan_export.safetensors_io import SafetensorsFile, SafetensorsWriter, TensorInfo
from wan_export.variants import VARIANTS, dit_shapes

sys.path.insert(0, os.path.dirname(__file__))
import ggml_c  # noqa: E402
from bench_ggml_quant import C_MBPS  # noqa: E402  (the README's C figures)

TYPES = ("Q2_K", "Q3_K", "Q4_K", "Q5_K", "Q6_K")
QUANTIZED = r"_attn\.(q|k|v|o)\.weight$|ffn\.(0|2)\.weight$"
CHILD = ("import resource, sys\nfrom wan_export.cli import main\n"
         "try:\n    main(sys.argv[1:])\nexcept SystemExit as e:\n    assert not e.code, e.code\n"
         "r = resource.getrusage(resource.RUSAGE_SELF)\nprint(r.ru_utime + r.ru_stime)\n")


def make_source(folder: str, layers: int) -> tuple[str, str]:
    """A bf16 DiT (1.3B dims, `layers` blocks) and an imatrix .safetensors for its quantized weights."""
    cfg = replace(VARIANTS["wan2.1-t2v-1.3b"].config, num_layers=layers)
    shapes = dit_shapes(cfg)
    rng = np.random.default_rng(0)
    pool = (rng.standard_normal(1 << 22, dtype=np.float32) * 0.02).astype(ST_TO_NP["BF16"])
    data = np.resize(pool, max(math.prod(s) for s in shapes.values()))
    src = os.path.join(folder, "dit_bf16.safetensors")
    infos = [TensorInfo(k, s, "BF16") for k, s in shapes.items()]
    with SafetensorsWriter(src, infos, {"format": "pt"}) as w:
        for i in infos:
            w.write(i.name, data[: i.numel].reshape(i.shape))
    im = {k: rng.chisquare(2, s[1]).astype(np.float32) for k, s in shapes.items()
          if len(s) == 2 and k.startswith("blocks.") and k.endswith(".weight")}
    im_path = os.path.join(folder, "imatrix.safetensors")
    with SafetensorsWriter(im_path, [TensorInfo(k, v.shape, "F32") for k, v in im.items()]) as w:
        for k, v in im.items():
            w.write(k, v)
    return src, im_path


def cli_cpu(src: str, out: str, args: list[str]) -> float:
    """CPU seconds of one `wan-export gguf` run in a fresh process pinned to core 0."""
    cmd = ["taskset", "-c", "0", sys.executable, "-c", CHILD, "gguf", src, "-o", out, "--jobs", "1",
           "--overwrite", "-q"] + args
    p = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if p.returncode:
        raise SystemExit(f"failed: {' '.join(cmd)}\n{p.stderr}")
    if os.path.exists(out):
        os.remove(out)
    return float(p.stdout.split()[-1])


class CTensors:
    """The run's quantized tensors as float32, timed through a ggml_c.CQuantizer on one core."""

    def __init__(self, c: "ggml_c.CQuantizer", src: str, imatrix: str):
        import re
        self.c = c
        st, ims = SafetensorsFile(src), SafetensorsFile(imatrix)
        names = [i.name for i in st.infos() if re.search(QUANTIZED, i.name) and i.name.startswith("blocks.")]
        self.tensors = [(np.ascontiguousarray(st.read(n), dtype=np.float32), np.array(ims.read(n))) for n in names]

    def cpu(self, name: str, imatrix: bool) -> float:
        return sum(self.c.cpu(name, x, im if imatrix else None) for x, im in self.tensors)


def quantized_mb(src: str) -> float:
    import re
    return sum(i.numel * 4 for i in SafetensorsFile(src).infos()
               if re.search(QUANTIZED, i.name) and i.name.startswith("blocks.")) / 1e6


def measure(src: str, im: str, work: str, types, repeat: int, c: CTensors | None) -> list[dict]:
    out = os.path.join(work, "out.gguf")
    mb = quantized_mb(src)
    rows = []
    for name in types:
        for use_im in (False, True):
            extra = ["--type", "Q3_K_S", "--tensor-type", f"{QUANTIZED}={name}"] + (["--imatrix", im] if use_im else [])
            anchor, dry, ours, cc = [], [], [], []
            for _ in range(repeat):
                anchor.append(cli_cpu(src, out, ["--type", "F32"]))
                dry.append(cli_cpu(src, out, extra + ["--dry-run"]))
                ours.append(cli_cpu(src, out, extra))
                if c is not None:
                    os.sched_setaffinity(0, {0})
                    cc.append(c.cpu(name, use_im))
            q = min(o - a for o, a in zip(ours, anchor))
            strict = min(o - d for o, d in zip(ours, dry))
            c_mbps = mb / min(cc) if cc else sum(C_MBPS[name][use_im]) / 2
            rows.append({"type": name, "imatrix": use_im, "ours_s": q, "ours_mbps": mb / q,
                         "c_mbps": c_mbps, "ratio": (mb / q) / c_mbps, "c_measured": bool(cc),
                         "strict_s": strict, "strict_ratio": (mb / strict) / c_mbps})
            print(table(rows[-1:]).splitlines()[-1], file=sys.stderr, flush=True)     # progress
    return rows


def table(rows: list[dict]) -> str:
    lines = ["| type | imatrix | ours: CLI CPU s − F32 run | ours MB/s | C MB/s | ours / C "
             "| strict: CLI CPU s − dry run | strict / C |",
             "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        c = f"{r['c_mbps']:.0f}" + ("" if r["c_measured"] else " (README)")
        lines.append(f"| {r['type']} | {'yes' if r['imatrix'] else 'no'} | {r['ours_s']:.2f} | "
                     f"{r['ours_mbps']:.0f} | {c} | {r['ratio']:.2f} | {r['strict_s']:.2f} | {r['strict_ratio']:.2f} |")
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--layers", type=int, default=1, help="DiT blocks (1.3B dims; 1 = 186 MB of quantized float32)")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--types", default=",".join(TYPES))
    ap.add_argument("--ggml-lib", default="auto",
                    help="libggml-base.so built without -march (no FMA); 'auto' builds one (ggml_c.py); "
                         "'none': the golden README's figures")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="wan-gguf-cli-") as work:
        src, im = make_source(work, args.layers)
        # one untimed run compiles (or loads) the numba kernels, as any run after the first does
        cli_cpu(src, os.path.join(work, "warm.gguf"), ["--type", "Q3_K_S", "--tensor-type", f"{QUANTIZED}=Q6_K"])
        lib = ggml_c.load(args.ggml_lib)
        c = CTensors(lib, src, im) if lib else None
        print(f"# {os.path.getsize(src) / 1e6:.0f} MB bf16 source, {quantized_mb(src):.0f} MB of quantized float32; "
              f"one pinned core; best of {args.repeat}; load average {os.getloadavg()[0]:.1f}\n")
        rows = measure(src, im, work, args.types.split(","), args.repeat, c)
        print(json.dumps(rows, indent=1) if args.json else table(rows))
        print(f"\nload average after: {os.getloadavg()[0]:.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
