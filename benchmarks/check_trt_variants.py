"""Build and validate TensorRT-RTX plans for every variant's tiny synthetic release (not a test:
about a minute per variant on 2 shared cores; `tests/converters/test_trt.py` covers one of each kind).

For each variant: `wan-export trt RELEASE --component dit` (fp16, SM86+SM89; A14B: both experts)
and `--component vae-decoder` once per VAE version (2.1 and 2.2), then `wan-export validate`.
Prints one JSON row per build: variant, plans, seconds, validation result.

    python benchmarks/check_trt_variants.py [--variants a,b] [--exporter legacy|dynamo] [--dir DIR]
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PROFILE = {"wan2.2-ti2v-5b": "704p"}          # the TI2V resolution; others build the 480p preset


def run(args: list[str]) -> tuple[int, str]:
    p = subprocess.run([sys.executable, "-m", "wan_export", *args], cwd=HERE, env={**os.environ, "PYTHONPATH": HERE},
                       capture_output=True, text=True)
    return p.returncode, (p.stdout + p.stderr).strip().splitlines()[-1] if (p.stdout + p.stderr).strip() else ""


def main() -> None:
    sys.path.insert(0, HERE)
    from wan_export import synthetic
    from wan_export.variants import VARIANTS

    ap = argparse.ArgumentParser()
    ap.add_argument("--variants", default=",".join(VARIANTS))
    ap.add_argument("--exporter", default="legacy")
    ap.add_argument("--dir", default=None)
    a = ap.parse_args()
    work = a.dir or tempfile.mkdtemp(prefix="trt-variants-")
    rows, vae_done = [], set()
    try:
        for variant in a.variants.split(","):
            rel = os.path.join(work, variant)
            synthetic.write_release(rel, variant)
            jobs = [("dit", "fp16")]
            if VARIANTS[variant].vae not in vae_done:
                vae_done.add(VARIANTS[variant].vae)
                jobs.append(("vae-decoder", "fp16"))
            for component, precision in jobs:
                out = os.path.join(work, f"{variant}-{component}")
                t = time.perf_counter()
                rc, last = run(["trt", rel, "-o", out, "--component", component, "--precision", precision,
                                "--target", "sm86,sm89", "--profile", PROFILE.get(variant, "480p"),
                                "--exporter", a.exporter, "-q", "--overwrite"])
                seconds = round(time.perf_counter() - t, 1)
                plans = json.load(open(os.path.join(out, "trt.json")))["plans"] if rc == 0 else []
                vrc, vlast = run(["validate", out, "--against", rel, "--json"]) if rc == 0 else (None, "")
                rows.append({"variant": variant, "component": component, "build_rc": rc, "seconds": seconds,
                             "plans": [p["file"] for p in plans], "validate_rc": vrc,
                             "error": last if rc else (vlast if vrc else "")})
                print(json.dumps(rows[-1]), flush=True)
    finally:
        if not a.dir:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
