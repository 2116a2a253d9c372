"""`wan-export calibrate` end to end on tiny releases: every variant, determinism, torchrun, consumers, bad input."""
import hashlib
import json
import os
import subprocess
import sys

import numpy as np
import pytest

from wan_export.calibration.calibfile import read_calib
from wan_export.cli import cli
from wan_export.variants import VARIANTS

FAST = ["--num-prompts", "2", "--steps", "3", "--size", "32x32", "--frames", "5", "-q"]
IMAGE_VARIANTS = {"wan2.1-i2v-14b", "wan2.1-flf2v-14b", "wan2.2-i2v-a14b", "wan2.2-ti2v-5b"}


def sha(path) -> str:
    return hashlib.sha256(open(path, "rb").read()).hexdigest()


@pytest.fixture(scope="module")
def image(tmp_path_factory):
    from PIL import Image

    path = tmp_path_factory.mktemp("img") / "first.png"
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 255, (40, 48, 3), dtype=np.uint8)).save(path)
    return str(path)


def calibrate(runner, src, out, *extra, image=None, variant=""):
    args = ["calibrate", src, "-o", str(out), *FAST, *extra]
    if variant in IMAGE_VARIANTS:
        args += ["--image", image]
        if "flf2v" in variant:
            args += ["--last-image", image]
    return runner.invoke(cli, args, catch_exceptions=False)


DIT_VARIANTS = [v for v, spec in VARIANTS.items() if getattr(spec, "kind", "dit") == "dit"]


@pytest.mark.parametrize("variant", sorted(DIT_VARIANTS))
def test_every_variant_calibrates(variant, tiny_release, runner, tmp_path, image):
    out = tmp_path / "calib.safetensors"
    r = calibrate(runner, tiny_release(variant), out, "--json", image=image, variant=variant)
    assert r.exit_code == 0, r.output
    res = json.loads(r.stdout)
    c = read_calib(str(out))
    experts = c.experts or [None]
    for e in experts:
        layers = c.layers(e)
        assert "blocks.0.self_attn.q" in layers and "blocks.1.ffn.2" in layers
        st = c.layer("blocks.0.ffn.0", e)
        assert int(st["input_count"]) > 0 and float(st["input_amax"]) > 0
        assert st["input_channel_amax"].max() == pytest.approx(float(st["input_amax"]))
        assert 0 < int(st["input_hist"].sum()) <= int(st["input_count"]) * st["input_sum2"].shape[0]
        assert c.attention("blocks.0.self_attn", e)["softmax_amax"] <= 1.0
    if "vace" in variant:
        assert "vace_blocks.0.ffn.0" in c.layers()
    if "i2v-14b" in variant or "flf2v" in variant:
        assert "blocks.0.cross_attn.k_img" in c.layers()
    assert res["dit_forwards"] == 2 * 3 * 2
    assert c.meta["variant"] and c.meta["steps"] == 3 and c.meta["num_prompts"] == 2


def test_a14b_experts_see_their_own_steps(tiny_release, runner, tmp_path):
    out = tmp_path / "calib.safetensors"
    r = runner.invoke(cli, ["calibrate", tiny_release("wan2.2-t2v-a14b"), "-o", str(out), "--num-prompts", "1",
                            "--steps", "8", "--size", "32x32", "--frames", "5", "-q"])
    assert r.exit_code == 0, r.output
    c = read_calib(str(out))
    assert c.experts == ["high_noise_model", "low_noise_model"]
    counts = [int(c.layer("blocks.0.self_attn.q", e)["input_count"]) for e in c.experts]
    tokens = 2 * 2 * 2
    assert sum(counts) == 8 * 2 * tokens and all(n > 0 for n in counts)


def test_same_inputs_same_bytes_and_samples(tiny_release, runner, tmp_path):
    src = tiny_release("wan2.1-t2v-1.3b")
    a, b = tmp_path / "a.safetensors", tmp_path / "b.safetensors"
    for out in (a, b):
        assert calibrate(runner, src, out, "--save-activations", "5").exit_code == 0
    assert sha(a) == sha(b)
    st = read_calib(str(a)).layer("blocks.1.ffn.2")
    assert st["input_sample"].shape == (5, 32 * 4) or st["input_sample"].shape[0] == 5


def test_torchrun_two_gloo_ranks_equal_one_process(tiny_release, tmp_path):
    """Same bytes as one process with the same threads per process (torchrun sets OMP_NUM_THREADS=1)."""
    src = tiny_release("wan2.1-t2v-1.3b")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    args = [src, *FAST[:-1], "--num-prompts", "3", "--save-activations", "4", "-q"]
    one, two = tmp_path / "one.safetensors", tmp_path / "two.safetensors"
    subprocess.run([sys.executable, "-m", "wan_export", "calibrate", *args, "-o", str(one)],
                   check=True, env=env, capture_output=True)
    p = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
                        "-m", "wan_export", "calibrate", *args, "-o", str(two)], env=env, capture_output=True, text=True)
    assert p.returncode == 0, p.stderr[-2000:]
    assert sha(one) == sha(two)


def test_gguf_consumes_calib_and_imatrix_gguf(tiny_release, runner, tmp_path):
    import gguf

    src = tiny_release("wan2.2-t2v-a14b")
    out, im = tmp_path / "calib.safetensors", tmp_path / "imatrix.gguf"
    assert calibrate(runner, src, out, "--imatrix-gguf", str(im)).exit_code == 0
    r = runner.invoke(cli, ["gguf", src, "-t", "Q4_K_M", "--imatrix", str(out), "-o", str(tmp_path / "g"), "-q"])
    assert r.exit_code == 0, r.output
    assert len(list((tmp_path / "g").glob("*.gguf"))) == 2
    reader = gguf.GGUFReader(str(im))
    names = {t.name for t in reader.tensors}
    assert "model.high_noise_diffusion_model.blocks.0.ffn.0.weight.in_sum2" in names
    assert "model.diffusion_model.blocks.0.ffn.0.weight.counts" in names
    # the imatrix GGUF and CALIB give the same importance
    from wan_export.converters.gguf_imatrix import load_imatrix
    from wan_export.release import open_input

    comp = open_input(src).dits["dit.high_noise"]
    shapes = {i.name: i.shape for i in comp.table.infos()}
    a, b = load_imatrix(str(out), shapes, "high_noise"), load_imatrix(str(im), shapes, "high_noise")
    assert set(a) == set(b) and all(np.allclose(a[k], b[k], rtol=1e-6) for k in a)


def test_calib_from_another_model_is_refused(tiny_release, runner, tmp_path):
    out = tmp_path / "calib.safetensors"
    assert calibrate(runner, tiny_release("wan2.1-t2v-1.3b"), out).exit_code == 0
    r = runner.invoke(cli, ["gguf", tiny_release("wan2.1-i2v-14b"), "--imatrix", str(out), "-o", str(tmp_path / "x.gguf")])
    assert r.exit_code == 2
    assert "does not fit this model" in r.stderr and "k_img" in r.stderr
    assert not (tmp_path / "x.gguf").exists()


def _bad(runner, tmp_path, src, *args):
    out = tmp_path / "bad.safetensors"
    r = runner.invoke(cli, ["calibrate", src, "-o", str(out), *args])
    assert r.exit_code == 2, r.output
    assert r.stderr.startswith("Error: ") and len(r.stderr.strip().splitlines()) == 1
    assert not out.exists() and not [p for p in tmp_path.iterdir() if ".partial" in p.name]
    return r.stderr


def test_bad_input(tiny_release, runner, tmp_path):
    src = tiny_release("wan2.1-t2v-1.3b")
    empty = tmp_path / "empty.txt"
    empty.write_text("\n# nothing\n")
    assert "no prompts" in _bad(runner, tmp_path, src, "--prompts", str(empty))
    jl = tmp_path / "p.jsonl"
    jl.write_text('{"prompt": "a cat"}\n{"text": 1}\n')
    assert "line 2" in _bad(runner, tmp_path, src, "--prompts", str(jl))
    csv = tmp_path / "p.csv"
    csv.write_text("title\nx\n")
    assert "'prompt' or 'caption'" in _bad(runner, tmp_path, src, "--prompts", str(csv))
    assert "unknown prompts format" in _bad(runner, tmp_path, src, "--prompts", str(tmp_path / "p.yaml"))
    assert "--steps must be >= 1" in _bad(runner, tmp_path, src, "--steps", "0")
    assert "16" in _bad(runner, tmp_path, src, "--size", "40x32", "--steps", "1")
    i2v = tiny_release("wan2.1-i2v-14b")
    assert "image" in _bad(runner, tmp_path, i2v, *FAST)


def test_prompt_files_and_context(tiny_release, runner, tmp_path):
    from wan_export.calibration.prompts import builtin_prompts, load_prompts

    assert len(builtin_prompts()) >= 64 and len(set(builtin_prompts())) == len(builtin_prompts())
    (tmp_path / "p.csv").write_text('caption,id\n"a red fox, running",1\nrain on a window,2\n')
    assert load_prompts(str(tmp_path / "p.csv")) == ["a red fox, running", "rain on a window"]
    (tmp_path / "p.jsonl").write_text('{"prompt": "a"}\n\n{"prompt": "b"}\n')
    assert load_prompts(str(tmp_path / "p.jsonl"), 1) == ["a"]
    # precomputed embeddings instead of UMT5
    from wan_export import synthetic

    ctx = tmp_path / "ctx.safetensors"
    rng = np.random.default_rng(0)
    synthetic.write_safetensors(str(ctx), {"prompt_embeds": rng.standard_normal((2, 7, 4096)).astype(np.float32),
                                           "negative_prompt_embeds": rng.standard_normal((5, 4096)).astype(np.float32)})
    out = tmp_path / "calib.safetensors"
    r = runner.invoke(cli, ["calibrate", tiny_release("wan2.1-t2v-1.3b"), "-o", str(out), "--context", str(ctx),
                            *FAST[2:]])
    assert r.exit_code == 0, r.output
    assert read_calib(str(out)).meta["num_prompts"] == 2
