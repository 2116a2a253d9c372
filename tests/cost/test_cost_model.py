"""The cost model's invariants, schedule, formats, multi-GPU terms, outputs and bad input."""
from __future__ import annotations

import json
import math
import re
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
import pytest

from wan_export.cli import cli
from wan_export.cost import formats, run_cost
from wan_export.cost.gpus import GPUS
from wan_export.cost.ops import CLASSES
from wan_export.cost.schedule import expert_steps, timesteps
from wan_export.variants import VARIANTS, dit_shapes

README = (Path(__file__).resolve().parents[2] / "README.md").read_text()


def _official_timesteps(steps: int, shift: float) -> np.ndarray:
    """Wan2.2's FlowUniPCMultistepScheduler.set_timesteps, written out as the official code does it."""
    import torch

    alphas = np.linspace(1, 1 / 1000, 1000)[::-1].copy()
    table = torch.from_numpy(1.0 - alphas).to(dtype=torch.float32)
    sigmas = np.linspace(table[0].item(), table[-1].item(), steps + 1).copy()[:-1]
    sigmas = shift * sigmas / (1 + (shift - 1) * sigmas)
    return torch.from_numpy(sigmas * 1000).to(torch.int64).numpy()


@pytest.mark.parametrize("steps,shift", [(40, 12.0), (40, 5.0), (50, 12.0), (20, 3.0)])
def test_timesteps_are_the_official_ones(steps, shift):
    assert (timesteps(steps, shift) == _official_timesteps(steps, shift)).all()


def test_a14b_expert_split():
    # t >= 875 (T2V, shift 12) and t >= 900 (I2V, shift 5) over the official 40-step grids
    assert expert_steps(40, 12.0, 0.875) == {"high_noise": 26, "low_noise": 14}
    assert expert_steps(40, 5.0, 0.9) == {"high_noise": 15, "low_noise": 25}
    assert expert_steps(50, 5.0, None) == {"dit": 50}
    r = run_cost(variant="wan2.2-t2v-a14b")
    assert [(s["name"], s["runs"]) for s in r["stages"] if s["name"].startswith("dit")] == \
        [("dit.high_noise", 52), ("dit.low_noise", 28)]


@pytest.mark.parametrize("name", sorted(VARIANTS))
def test_stages_sum_to_the_total(name):
    r = run_cost(variant=name)
    for k in CLASSES + ("counted", "total"):
        assert r["total"]["flops"][k] == sum(s["flops"][k] for s in r["stages"]), k
    assert math.isclose(r["total"]["time_s"], sum(s["time"]["total_s"] for s in r["stages"]))
    stages = {s["name"] for s in r["stages"]}
    cfg = VARIANTS[name].config
    assert ("clip" in stages) == cfg.image_branch
    assert ("vae-encode" in stages) == (cfg.model_type != "t2v")
    assert not r["warnings"] or "resident" in r["warnings"][0]     # official settings never extrapolate


@pytest.mark.parametrize("name", ["wan2.1-t2v-1.3b", "wan2.2-i2v-a14b", "wan2.2-ti2v-5b"])
def test_totals_grow_with_size_frames_and_steps(name):
    mult = 32 if name == "wan2.2-ti2v-5b" else 16
    def total(**kw):
        r = run_cost(variant=name, **kw)
        return r["total"]["flops"]["total"], r["total"]["time_s"]
    for key, values in (("size", [f"{w * mult}x{w * mult // 2}" for w in (10, 20, 30, 40)]),
                        ("frames", [5, 33, 81, 121]), ("steps", [1, 10, 40, 50])):
        series = [total(**{key: v}) for v in values]
        assert series == sorted(series) and len(set(series)) == len(series), key


def test_cfg_doubles_the_dit_and_encodes_the_negative_prompt():
    on, off = (run_cost(variant="wan2.1-t2v-14b", cfg=c) for c in (True, False))
    def counted(r, stage):
        return next(s for s in r["stages"] if s["name"] == stage)["flops"]["counted"]
    assert counted(on, "dit") == 2 * counted(off, "dit")
    assert counted(on, "umt5") == 2 * counted(off, "umt5")


def test_extrapolation_warnings():
    r = run_cost(variant="wan2.1-t2v-14b", size="1920x1088", frames=121)
    assert any("121 frames" in w for w in r["warnings"]) and any("1920x1088" in w for w in r["warnings"])
    assert not run_cost(variant="wan2.2-ti2v-5b", frames=121)["warnings"]      # TI2V is trained on 121


def test_format_sizes():
    cfg = VARIANTS["wan2.1-t2v-14b"].config
    params = sum(math.prod(s) for s in dit_shapes(cfg).values())
    assert params == 14_288_491_584
    assert formats.weight_bytes(cfg, "bf16") == 2 * params
    from wan_export.converters.gguf import file_size
    assert formats.weight_bytes(cfg, "Q4_K_M") == file_size(cfg, "Q4_K_M")
    # quantization-svdquant.md §0.6: INT4 rank 32 with a bf16 remainder is about 7.7 GiB for 14B
    assert abs(formats.weight_bytes(cfg, "svdq-int4") / 2**30 - 7.7) < 0.1
    sizes = [formats.weight_bytes(cfg, f) for f in ("fp32", "bf16", "fp8", "Q4_K_M", "nvfp4")]
    assert sizes == sorted(sizes, reverse=True)


def test_multi_gpu():
    one = run_cost(variant="wan2.1-t2v-14b")["total"]["time_s"]
    times = {mode: run_cost(variant="wan2.1-t2v-14b", gpus=8, parallel=mode)["total"]["time_s"]
             for mode in ("cfg", "ulysses", "ring")}
    for mode, t in times.items():
        assert one / 8 < t < one / 4, mode          # faster, but communication and replication cost
    two = run_cost(variant="wan2.1-t2v-14b", gpus=2, parallel="cfg")
    dit = next(s for s in two["stages"] if s["name"] == "dit")["time"]
    assert dit["comm_s"] > 0
    pcie = run_cost(variant="wan2.1-t2v-14b", gpus=8, parallel="ulysses", gpu="L40S")
    assert next(s for s in pcie["stages"] if s["name"] == "dit")["time"]["comm_s"] > 10 * dit["comm_s"]


def test_the_readme_gpu_table_is_the_code_table():
    rows = re.findall(r"^\| (H100|H200|B200|A100|L40S|RTX 4090|RTX 5090) \|(.*\| NVIDIA .*)\|$", README, re.M)
    assert [r[0] for r in rows] == list(GPUS)
    for name, rest in rows:
        g = GPUS[name]
        cells = [c.strip() for c in rest.split("|")]
        want = [g.peak[d] for d in ("bf16", "fp8", "fp4", "int4")] + [g.bandwidth_gbs, g.memory_gb]
        assert cells[:6] == ["-" if v is None else f"{v:g}" for v in want], name
    source = Path(formats.__file__).with_name("gpus.py").read_text()
    assert source.count("# checked: https://") >= len(GPUS)


def test_cli_json_and_plot(runner, tmp_path):
    plot = tmp_path / "cost.svg"
    args = ["cost", "--variant", "wan2.2-t2v-a14b", "--gpu", "B200", "--format", "fp8", "--json"]
    result = runner.invoke(cli, args + ["--plot", str(plot)])
    assert result.exit_code == 0, result.output
    report = json.loads(result.output)
    assert report["gpu"]["name"] == "B200" and report["settings"]["format"] == "fp8"
    root = ET.fromstring(plot.read_text())
    labels = "".join(root.itertext())
    assert all(n in labels for n in ("dit.high_noise", "dit.low_noise", "vae-decode", "1280x720", "121"))
    first = plot.read_bytes()
    assert runner.invoke(cli, args + ["--plot", str(plot)]).exit_code == 0
    assert plot.read_bytes() == first                                          # deterministic


@pytest.mark.parametrize("args,problem", [
    (["--gpu", "V100"], "unknown GPU 'V100' (known: H100, H200, B200, A100, L40S, RTX 4090, RTX 5090; "),
    (["--size", "1000x720"], "size 1000x720 is not patchable: width and height must be positive multiples of 16"),
    (["--format", "int3"], "unknown format 'int3' (known: fp32, bf16, "),
    (["--frames", "80"], "--frames 80: the causal VAE needs 4k+1 frames"),
    (["--gpus", "3"], "Ulysses degree 3 must divide the 40 attention heads"),
    (["--gpus", "2", "--parallel", "cfg", "--no-cfg"], "--parallel cfg splits the two CFG branches"),
])
def test_bad_input(runner, tmp_path, args, problem):
    plot = tmp_path / "cost.svg"
    result = runner.invoke(cli, ["cost", "--variant", "wan2.1-t2v-14b", "--plot", str(plot)] + args)
    assert result.exit_code == 2
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: " + problem), result.output
    assert list(tmp_path.iterdir()) == []


def test_unknown_variant_and_ti2v_multiple(runner):
    result = runner.invoke(cli, ["cost", "--variant", "wan3-t2v"])
    assert result.exit_code == 2 and "unknown variant 'wan3-t2v' (known: wan2.1-t2v-1.3b" in result.output
    result = runner.invoke(cli, ["cost", "--variant", "wan2.2-ti2v-5b", "--size", "1280x720"])
    assert result.exit_code == 2 and "multiples of 32 (VAE stride 16 x DiT patch 2)" in result.output


def test_source_shapes_and_inspect_sizes(runner, tiny_release):
    rel = tiny_release("wan2.1-i2v-14b")
    r = run_cost(rel, frames=17, size="832x480")
    assert [s["name"] for s in r["stages"]] == ["umt5", "clip", "vae-encode", "dit", "vae-decode"]
    result = runner.invoke(cli, ["inspect", rel, "--no-scan", "--json"])
    dit = next(c for c in json.loads(result.output)["components"] if c["kind"] == "dit")
    assert dit["bytes_by_format"] == formats.bytes_by_format(r_cfg := _config(rel), formats.INSPECT_FORMATS)
    assert dit["bytes_by_format"]["bf16"] == 2 * sum(math.prod(s) for s in dit_shapes(r_cfg).values())
    assert "bytes per format: bf16" in runner.invoke(cli, ["inspect", rel, "--no-scan"]).output


def _config(path):
    from wan_export.release import open_input
    return next(iter(open_input(path).dits.values())).config
